"""The WeatherBench 2 layout (utils/evaluation/wb2_layout.py) and its store writer
(utils/evaluation/forecast_store.py): names, coordinates, round trips through Zarr and netCDF,
sizes, the free-disk check, staging, and several ranks writing one store."""

import os
import subprocess
import sys
from collections import namedtuple

import numpy as np
import pytest
from conftest import free_port

from utils.channels import ChannelLayout
from utils.conversion.variable_names import project_name
from utils.errors import ConfigError, OutputError, OutputExistsError
from utils.evaluation import forecast_store
from utils.evaluation.forecast_store import (
    StoreWriter,
    check_free_space,
    create_store,
    forecast_spec,
)
from utils.evaluation.staging import staged_path
from utils.evaluation.wb2_layout import WB2_VARIABLES, WB2Layout, select_channels
from utils.grid import latitudes, longitudes

xr = pytest.importorskip("xarray")
pytest.importorskip("zarr")
pytest.importorskip("netCDF4")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUT = ChannelLayout(["z", "q", "t"], [850, 500, 250], ["t2m", "tcc"])
H, W = 6, 8


def test_table_names_are_weatherbench2_names_the_reader_maps_back():
    expected = {
        "z": ("geopotential", "m2 s-2"),
        "t": ("temperature", "K"),
        "q": ("specific_humidity", "kg kg-1"),
        "u": ("u_component_of_wind", "m s-1"),
        "v": ("v_component_of_wind", "m s-1"),
        "r": ("relative_humidity", "%"),
        "t2m": ("2m_temperature", "K"),
        "u10": ("10m_u_component_of_wind", "m s-1"),
        "v10": ("10m_v_component_of_wind", "m s-1"),
        "msl": ("mean_sea_level_pressure", "Pa"),
        "sp": ("surface_pressure", "Pa"),
    }
    assert {k: (v.name, v.units) for k, v in WB2_VARIABLES.items()} == expected
    for variable, entry in WB2_VARIABLES.items():
        assert project_name(entry.name) == variable
        assert entry.standard_name and entry.long_name


def test_selection_by_channel_or_whole_variable():
    assert select_channels(LAYOUT, None, "--x") == list(range(11))
    assert select_channels(LAYOUT, ["t2m", "z", "t500"], "--x") == [0, 1, 2, 7, 9]
    with pytest.raises(ConfigError, match=r"--save_variables: \['z300', 'w'\] not in"):
        select_channels(LAYOUT, ["z300", "w", "q850"], "--save_variables")


def test_layout_flips_rows_pads_unselected_levels_and_keeps_unknown_variables():
    lat = latitudes(H)  # north to south, as the project stores rows
    layout = WB2Layout(LAYOUT, [0, 1, 7, 9, 10], lat, longitudes(W), {"tcc": "1"})
    assert np.all(np.diff(layout.lat) > 0) and layout.levels.tolist() == [500, 850]
    assert [v.name for v in layout.variables] == [
        "geopotential",
        "temperature",
        "2m_temperature",
        "tcc",
    ]
    assert layout.variables[-1].attrs == {"long_name": "tcc", "units": "1"}
    assert layout.n_stored_channels == 2 + 2 + 1 + 1  # levels: those selected of any variable
    fields = np.random.default_rng(0).standard_normal((2, 5, H, W)).astype(np.float32)
    out = layout.to_variables(fields)
    z, t = out["geopotential"], out["temperature"]
    assert z.shape == (2, 2, H, W) and z.dtype == np.float32
    np.testing.assert_array_equal(z[:, 1], fields[:, 0, ::-1])  # z850: levels ascend
    np.testing.assert_array_equal(z[:, 0], fields[:, 1, ::-1])
    np.testing.assert_array_equal(t[:, 0], fields[:, 2, ::-1])
    assert np.isnan(t[:, 1]).all()  # t850 not selected
    np.testing.assert_array_equal(out["tcc"], fields[:, 4, ::-1])
    with pytest.raises(ConfigError, match="fixed units"):
        WB2Layout(LAYOUT, None, lat, longitudes(W), {"t2m": "degC"})
    surface = WB2Layout(LAYOUT, [9], lat, longitudes(W))
    assert surface.levels is None and "level" not in surface.grid_coordinates()


def _spec(channels=None, starts=(0, 12, 24)):
    layout = WB2Layout(LAYOUT, channels, latitudes(H), longitudes(W), {"tcc": "1"})
    return forecast_spec(layout, np.asarray(starts) + 438_000, [0, 6, 12], {"title": "test"})


@pytest.mark.parametrize("name", ["fc.zarr", "fc.nc"])
def test_store_round_trip_coordinates_and_attributes(tmp_path, name):
    spec = _spec([0, 1, 2, 7, 9, 10])
    path = str(tmp_path / name)
    create_store(path, spec)
    rng = np.random.default_rng(1)
    data = {k: rng.standard_normal((3, 6, H, W)).astype(np.float32) for k in spec.keys[[2, 0]]}
    with StoreWriter(path, spec) as writer:
        for key, fields in data.items():
            writer.write(key, fields)
        assert writer.missing() == [int(spec.keys[1])]
        with pytest.raises(ValueError, match="written already"):
            writer.write(spec.keys[0], data[spec.keys[0]])
    with xr.open_dataset(path, engine="zarr" if name.endswith("zarr") else None) as ds:
        assert (
            ds.time.dtype == "datetime64[ns]" and ds.prediction_timedelta.dtype == "timedelta64[ns]"
        )
        assert str(ds.time.values[0]) == "2019-12-20T00:00:00.000000000"
        assert (ds.prediction_timedelta.values // np.timedelta64(1, "h")).tolist() == [0, 6, 12]
        assert ds.level.values.tolist() == [250, 500, 850] and ds.level.dtype == np.int64
        assert np.all(np.diff(ds.latitude.values) > 0) and ds.longitude.values[0] == 0
        assert ds.latitude.attrs["units"] == "degrees_north" and ds.level.attrs["units"] == "hPa"
        assert ds.time.attrs["standard_name"] == "forecast_reference_time"
        z = ds.geopotential
        assert z.dims == ("time", "prediction_timedelta", "level", "latitude", "longitude")
        assert z.dtype == np.float32 and z.attrs["units"] == "m2 s-2"
        assert z.attrs["standard_name"] == "geopotential" and ds.attrs["title"] == "test"
        first = data[spec.keys[0]]
        np.testing.assert_array_equal(z.sel(level=500).isel(time=0).values, first[:, 1, ::-1])
        np.testing.assert_array_equal(ds["2m_temperature"][0].values, first[:, 4, ::-1])
        assert np.isnan(z.isel(time=1).values).all()  # never written
        assert ds.tcc.attrs["units"] == "1"
    if name.endswith("zarr"):  # one chunk per start and variable: all leads, levels, the grid
        assert sorted(os.listdir(os.path.join(path, "geopotential"))) == [
            ".zarray",
            ".zattrs",
            "0.0.0.0.0",
            "2.0.0.0.0",
        ]


def test_writer_refuses_keys_of_other_ranks(tmp_path):
    spec = _spec([9])
    create_store(str(tmp_path / "s.zarr"), spec)
    with pytest.raises(ValueError, match="not in the store"):
        StoreWriter(str(tmp_path / "s.zarr"), spec, [5])
    writer = StoreWriter(str(tmp_path / "s.zarr"), spec, spec.keys[:1])
    with pytest.raises(ValueError, match="not one of this writer's keys"):
        writer.write(spec.keys[1], np.zeros((3, 1, H, W), np.float32))


def test_size_arithmetic_of_a_paper_year():
    layout = ChannelLayout(
        ["z", "q", "u", "v", "t"],
        [1000, 925, 850, 700, 600, 500, 400, 300, 250, 200, 150, 100, 50],
        ["t2m", "u10", "v10", "msl", "sp"],
    )
    wb2 = WB2Layout(layout, None, latitudes(128), longitudes(256))
    spec = forecast_spec(wb2, np.arange(1460) * 6, np.arange(21) * 6)
    assert spec.nbytes == 1460 * 21 * 70 * 128 * 256 * 4
    assert spec.size_text("starts") == (
        "1,460 starts x 21 leads x 70 channels x 128 x 256 x 4 B = 281.3 GB"
    )


def test_free_disk_check_names_size_and_folder(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(forecast_store.shutil, "disk_usage", lambda p: usage(10**9, 0, 5 * 10**6))
    check_free_space(4 * 10**6, str(tmp_path / "a" / "fc.zarr"), "x")
    with pytest.raises(OutputError) as err:
        check_free_space(281_306_726_400, str(tmp_path / "a" / "fc.zarr"), "--save_forecasts")
    assert f"281.3 GB (281,306,726,400 bytes) to write in {tmp_path}," in str(err.value)
    assert "5.0 MB free" in str(err.value)


def test_staged_path_replaces_only_when_complete(tmp_path):
    target = tmp_path / "fc.nc"
    target.write_text("previous")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        with staged_path(str(target)):
            pass
    with pytest.raises(RuntimeError):
        with staged_path(str(target), overwrite=True) as path:
            with open(path, "w") as f:
                f.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "previous" and os.listdir(tmp_path) == ["fc.nc"]
    with staged_path(str(target), overwrite=True) as path:
        with open(path, "w") as f:
            f.write("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["fc.nc"]


def _run_worker(ranks: int, store: str, final_dir: str) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(ranks),
        "--master_port",
        str(free_port()),
        os.path.join(REPO, "tests", "store_ranks_worker.py"),
        store,
        final_dir,
    ]
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    subprocess.run(cmd, check=True, cwd=REPO, env=env, timeout=300, capture_output=True)


def test_two_ranks_write_the_store_of_one(tmp_path):
    """One rank writes the store in its results folder; two ranks write it elsewhere, staged by
    rank 0 and published when both are done. The arrays are bit-identical."""
    one = tmp_path / "one"
    _run_worker(1, str(one / "forecasts.zarr"), str(one))
    two = tmp_path / "two"
    _run_worker(2, str(two / "store" / "forecasts.zarr"), str(two / "results"))
    assert os.listdir(two / "store") == ["forecasts.zarr"]  # staging gone
    with (
        xr.open_zarr(one / "forecasts.zarr") as a,
        xr.open_zarr(two / "store" / "forecasts.zarr") as b,
    ):
        assert a.time.size == 5 and list(a.data_vars) == list(b.data_vars)
        assert [str(t)[11:13] for t in a.time.values] == ["00", "12", "00", "12", "00"]
        for name in a.data_vars:
            assert not np.isnan(a[name].values).all()
            np.testing.assert_array_equal(a[name].values, b[name].values)
        xr.testing.assert_identical(a, b)
