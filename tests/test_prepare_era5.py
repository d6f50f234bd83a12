"""netCDF -> layout conversion of Copernicus and WeatherBench files written by xarray; other input
shapes, Zarr, regridding and resuming are in tests/test_prepare_era5_inputs.py."""

import json
import os

import numpy as np
import pytest

# The converter's dependencies are optional (requirements-optional.txt; CI installs them).
xr = pytest.importorskip("xarray")
pd = pytest.importorskip("pandas")
pytest.importorskip("netCDF4")

from conftest import make_params  # noqa: E402

from tools.prepare_era5 import main  # noqa: E402
from utils.batch_io import durable_names  # noqa: E402
from utils.channels import ERA5_LEVELS  # noqa: E402
from utils.conversion.convert import convert  # noqa: E402
from utils.conversion.variable_names import ConversionError  # noqa: E402
from utils.data.dataset import ERA5Dataset  # noqa: E402
from utils.data.npy_layout import statistic_path, surface_path, upper_path  # noqa: E402
from utils.grid import read_grid  # noqa: E402
from utils.times import to_hours  # noqa: E402

H, W = 4, 8
LAT_N2S = np.array([67.5, 22.5, -22.5, -67.5])
LON = np.arange(W) * 45.0
TIMES = pd.date_range("2020-01-01", "2020-01-02 23:00", freq="1h")  # hourly, 48 steps
RNG = np.random.default_rng(0)


def _cube(*shape, base=0.0, scale=1.0):
    return (base + scale * RNG.standard_normal(shape)).astype(np.float32)


@pytest.fixture(scope="module")
def copernicus(tmp_path_factory):
    """New-CDS style (valid_time, pressure_level, short names, extra size-1 'number' dim) and
    old-CDS style (time, level in a second file with long names; longitudes -180..135)."""
    d = tmp_path_factory.mktemp("cds")
    levels = [1000, 850, 500]
    z = _cube(len(TIMES), 3, H, W, base=5e4, scale=500)
    q = _cube(len(TIMES), 3, H, W, base=5e-3, scale=1e-3)
    xr.Dataset(
        {
            "z": (("valid_time", "pressure_level", "latitude", "longitude"), z),
            "q": (("valid_time", "pressure_level", "latitude", "longitude"), q),
        },
        coords={
            "valid_time": TIMES,
            "pressure_level": levels,
            "latitude": LAT_N2S,
            "longitude": LON,
            "number": 0,
        },
    ).to_netcdf(d / "pl_a.nc")
    lon_west = np.arange(W) * 45.0 - 180.0
    t = _cube(len(TIMES), 3, H, W, base=260, scale=10)
    xr.Dataset(
        {"temperature": (("time", "level", "latitude", "longitude"), t)},
        coords={"time": TIMES, "level": levels, "latitude": LAT_N2S, "longitude": lon_west},
    ).to_netcdf(d / "pl_b.nc")
    t2m = _cube(len(TIMES), 1, H, W, base=285, scale=8)
    msl = _cube(len(TIMES), H, W, base=1.01e5, scale=800)
    xr.Dataset(
        {
            "t2m": (("valid_time", "number", "latitude", "longitude"), t2m),
            "mean_sea_level_pressure": (("valid_time", "latitude", "longitude"), msl),
        },
        coords={"valid_time": TIMES, "latitude": LAT_N2S, "longitude": LON, "number": [0]},
    ).to_netcdf(d / "sfc.nc")
    return d, dict(z=z, q=q, t=t, t2m=t2m[:, 0], msl=msl)


@pytest.fixture(scope="module")
def weatherbench(tmp_path_factory):
    """WeatherBench style: one file per variable (and level), lat/lon, latitudes south to north."""
    d = tmp_path_factory.mktemp("wb")
    lat_s2n = LAT_N2S[::-1]
    z500 = _cube(len(TIMES), H, W, base=5.4e4, scale=600)
    os.makedirs(d / "geopotential_500")
    xr.Dataset(
        {"z": (("time", "lat", "lon"), z500)}, coords={"time": TIMES, "lat": lat_s2n, "lon": LON}
    ).to_netcdf(d / "geopotential_500" / "geopotential_500hPa_2020_1.40625deg.nc")
    t = _cube(len(TIMES), 2, H, W, base=250, scale=10)
    os.makedirs(d / "temperature")
    xr.Dataset(
        {"t": (("time", "level", "lat", "lon"), t)},
        coords={"time": TIMES, "level": [850, 500], "lat": lat_s2n, "lon": LON},
    ).to_netcdf(d / "temperature" / "temperature_2020_1.40625deg.nc")
    u10 = _cube(len(TIMES), H, W, scale=5)
    os.makedirs(d / "10m_u_component_of_wind")
    xr.Dataset(
        {"u10": (("time", "lat", "lon"), u10)}, coords={"time": TIMES, "lat": lat_s2n, "lon": LON}
    ).to_netcdf(d / "10m_u_component_of_wind" / "10m_u_component_of_wind_2020_1.40625deg.nc")
    return d, dict(z500=z500, t=t, u10=u10)


def test_copernicus_round_trip(copernicus, tmp_path):
    src, data = copernicus
    root = str(tmp_path / "out")
    result = convert(
        [str(src / "*.nc")],
        root,
        levels=[850, 500],
        start="2020-01-01",
        end="2020-01-02",
        hour_step=6,
        progress=False,
        h_size=H,
        w_size=W,
    )
    assert result["upper"] == {"z": [850, 500], "q": [850, 500], "t": [850, 500]}
    assert sorted(result["surface"]) == ["msl", "t2m"]
    for step in (0, 6, 18, 42):  # hourly input: written every 6 h only
        t = to_hours("2020-01-01") + step
        np.testing.assert_array_equal(np.load(upper_path(root, t, "z", 500)), data["z"][step, 2])
        np.testing.assert_array_equal(np.load(upper_path(root, t, "q", 850)), data["q"][step, 1])
        # pl_b longitudes run -180..135: rolled to start at 0 degrees east
        np.testing.assert_array_equal(
            np.load(upper_path(root, t, "t", 850)), np.roll(data["t"][step, 1], W // 2, axis=1)
        )
        np.testing.assert_array_equal(np.load(surface_path(root, t, "t2m")), data["t2m"][step])
        np.testing.assert_array_equal(np.load(surface_path(root, t, "msl")), data["msl"][step])
    day = os.path.join(root, "2020", "2020-01-01")
    assert not os.path.exists(os.path.join(day, "03:00:00-z-500.0.npy"))
    assert not os.path.exists(os.path.join(day, "00:00:00-z-1000.0.npy"))
    written = sorted(f for f in os.listdir(day) if f.endswith(".npy"))
    assert len(written) == 4 * 3 * 2
    assert sorted(durable_names(day)) == written  # the day's batch is recorded as durable
    with open(statistic_path(root)) as f:
        stats = json.load(f)
    six_hourly = data["z"][::6, 2].astype(np.float64)
    np.testing.assert_allclose(
        stats["mean"]["z"][ERA5_LEVELS.index(500)], six_hourly.mean(), rtol=1e-6
    )
    np.testing.assert_allclose(
        stats["std"]["z"][ERA5_LEVELS.index(500)], six_hourly.std(), rtol=1e-6
    )
    assert stats["mean"]["z"][ERA5_LEVELS.index(1000)] is None
    with open(statistic_path(root, "mean_std_single.json")) as f:
        single = json.load(f)
    np.testing.assert_allclose(
        single["mean"]["msl"], data["msl"][::6].astype(np.float64).mean(), rtol=1e-6
    )
    assert os.path.isfile(os.path.join(root, "statistic", "climatology", "meta.json"))
    # the converted set feeds the loader
    params = make_params(
        root,
        "tiny",
        [
            f"h_size={H}",
            f"w_size={W}",
            "higher_features=[z, q, t]",
            "pressure_level=[500, 850]",
            "surface_features=[t2m, msl]",
            "num_experts=4",
            "train_period=['2020-01-01', '2020-01-02']",
            "num_data_workers=0",
        ],
    )
    ds = ERA5Dataset(params, "train")
    inp, tar, t = ds[2]
    assert t == to_hours("2020-01-01") + 12 and len(ds) == 7
    c = params.layout.index("t2m")
    np.testing.assert_allclose(inp[c].numpy() * ds.std[c] + ds.mean[c], data["t2m"][12], rtol=1e-5)


def test_weatherbench_round_trip_rerun_skips_and_overwrite(weatherbench, tmp_path, capsys):
    src, data = weatherbench
    root = str(tmp_path / "wb")
    argv = [
        "--input",
        str(src),
        "--root_dir",
        root,
        "--hour_step",
        "12",
        "--stats_start",
        "2020-01-02",
        "--stats_end",
        "2020-01-02",
        "--quiet",
    ]
    main(argv)
    for step in (0, 12, 36):
        t = to_hours("2020-01-01") + step
        np.testing.assert_array_equal(
            np.load(upper_path(root, t, "z", 500)), data["z500"][step][::-1]
        )  # flipped to north -> south
        np.testing.assert_array_equal(
            np.load(upper_path(root, t, "t", 850)), data["t"][step, 0][::-1]
        )
        np.testing.assert_array_equal(
            np.load(surface_path(root, t, "u10")), data["u10"][step][::-1]
        )
    assert not os.path.exists(upper_path(root, to_hours("2020-01-01") + 6, "z", 500))
    with open(statistic_path(root, "mean_std_single.json")) as f:
        single = json.load(f)
    np.testing.assert_allclose(
        single["mean"]["u10"], data["u10"][[24, 36]].astype(np.float64).mean(), rtol=1e-5
    )
    lat, lon = read_grid(root)  # recorded north to south, as written
    np.testing.assert_array_equal(lat, LAT_N2S)
    np.testing.assert_array_equal(lon, LON)
    capsys.readouterr()
    main(argv)  # a second run finds every file complete and writes nothing
    rerun = json.loads(capsys.readouterr().out)
    assert rerun["written"] == 0 and rerun["skipped"] == 4 * 4
    assert rerun["statistics"].startswith("kept")
    path = upper_path(root, to_hours("2020-01-01"), "z", 500)
    before = np.load(path)
    np.save(path, np.zeros_like(before))
    main(argv + ["--overwrite"])
    assert json.loads(capsys.readouterr().out)["written"] == 4 * 4
    np.testing.assert_array_equal(np.load(path), before)


def test_variable_selection_grid_check_and_unknown_level(copernicus, weatherbench, tmp_path):
    src, _ = copernicus
    root = str(tmp_path / "sel")
    result = convert(
        [str(src / "sfc.nc")],
        root,
        variables=["t2m"],
        start="2020-01-01",
        end="2020-01-01",
        stats=False,
        progress=False,
    )
    assert result["surface"] == ["t2m"] and result["times"] == 4
    assert os.listdir(os.path.join(root, "statistic")) == ["grid.json"]  # no statistics
    with pytest.raises(ConversionError, match="4 x 8, expected 8 x 16.*--grid"):
        convert(
            [str(src / "sfc.nc")],
            str(tmp_path / "g"),
            stats=False,
            progress=False,
            h_size=8,
            w_size=16,
        )
    wb, _ = weatherbench
    odd = tmp_path / "odd.nc"
    xr.open_dataset(wb / "geopotential_500" / "geopotential_500hPa_2020_1.40625deg.nc").to_netcdf(
        odd
    )
    with pytest.raises(ConversionError, match="pass --level"):
        convert([str(odd)], str(tmp_path / "o"), stats=False, progress=False)
    out = convert([str(odd)], str(tmp_path / "o2"), stats=False, progress=False, level=300)
    assert out["upper"] == {"z": [300]}
    with pytest.raises(ConversionError, match="no input matches"):
        convert([str(tmp_path / "nothing*.nc")], str(tmp_path / "n"), progress=False)
