"""ERA5 inputs as they come: ensemble members, CF names in any dimension order, ascending
latitudes, a scalar time, Zarr stores (local, fsspec URLs) with lazy selection and regridding,
resumable parallel writing, one-line errors, and the Copernicus download requests."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

xr = pytest.importorskip("xarray")
pd = pytest.importorskip("pandas")
pytest.importorskip("netCDF4")
pytest.importorskip("zarr")

from tools.prepare_era5 import main  # noqa: E402
from utils.batch_io import durable_names  # noqa: E402
from utils.conversion.convert import convert  # noqa: E402
from utils.conversion.download import cds_requests, download  # noqa: E402
from utils.conversion.sources import find_inputs, storage_options_for  # noqa: E402
from utils.conversion.variable_names import ConversionError  # noqa: E402
from utils.data.npy_layout import surface_path, upper_path  # noqa: E402
from utils.grid import latitudes, longitudes, read_grid  # noqa: E402
from utils.times import to_hours  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 4, 8
LAT_N2S = np.array([67.5, 22.5, -22.5, -67.5])
LON = np.arange(W) * 45.0
TIMES = pd.date_range("2020-01-01", periods=8, freq="6h")
RNG = np.random.default_rng(1)


def cube(*shape, base=0.0, scale=1.0):
    return (base + scale * RNG.standard_normal(shape)).astype(np.float32)


def quiet(**kw):
    return dict(stats=False, progress=False, **kw)


def test_ensemble_member_selection(tmp_path):
    t2m = cube(len(TIMES), 3, H, W, base=280, scale=5)
    path = tmp_path / "ens.nc"
    xr.Dataset(
        {"t2m": (("valid_time", "number", "latitude", "longitude"), t2m)},
        coords={"valid_time": TIMES, "number": [0, 1, 2], "latitude": LAT_N2S, "longitude": LON},
    ).to_netcdf(path)
    with pytest.raises(ConversionError, match="ensemble dimension 'number' of size 3.*--member"):
        convert([str(path)], str(tmp_path / "a"), **quiet())
    with pytest.raises(ConversionError, match="--member 7 is not in dimension 'number'"):
        convert([str(path)], str(tmp_path / "a"), member=7, **quiet())
    root = str(tmp_path / "b")
    convert([str(path)], root, member=2, **quiet())
    for i, t in enumerate(TIMES):
        got = np.load(surface_path(root, to_hours(t.to_pydatetime()), "t2m"))
        np.testing.assert_array_equal(got, t2m[i, 2])


def test_cf_standard_names_any_order_ascending_latitudes(tmp_path):
    """Variables named only by CF standard_name, dims (lon, lat, level, time), lat south-north,
    longitudes -180..135; an unknown variable is reported, not silently dropped."""
    lat_s2n, lon_west = LAT_N2S[::-1], LON - 180.0
    dims = ("lon", "lat", "level", "time")
    data = {
        name: cube(W, H, 2, len(TIMES), base=base, scale=5)
        for name, base in (("ta", 250), ("ua", 0), ("va", 0), ("foo", 0))
    }
    attrs = {
        "ta": {"standard_name": "air_temperature"},
        "ua": {"standard_name": "eastward_wind"},
        "va": {"standard_name": "northward_wind"},
        "foo": {"long_name": "something else"},
    }
    path = tmp_path / "cf.nc"
    xr.Dataset(
        {f"x_{k}": (dims, v, attrs[k]) for k, v in data.items()},
        coords={
            "lon": ("lon", lon_west, {"standard_name": "longitude"}),
            "lat": ("lat", lat_s2n, {"units": "degrees_north"}),
            "level": ("level", [85000.0, 50000.0], {"units": "Pa"}),
            "time": TIMES,
        },
    ).to_netcdf(path)
    root = str(tmp_path / "out")
    result = convert([str(path)], root, **quiet())
    assert result["upper"] == {"t": [850, 500], "u": [850, 500], "v": [850, 500]}
    for var, name in (("t", "ta"), ("u", "ua"), ("v", "va")):
        for li, level in enumerate((850, 500)):
            for ti in (0, 7):
                got = np.load(upper_path(root, to_hours(TIMES[ti].to_pydatetime()), var, level))
                # (lon, lat) -> (lat, lon), south-north -> north-south, -180.. -> 0..
                expected = np.roll(data[name][:, ::-1, li, ti].T, W // 2, axis=1)
                np.testing.assert_array_equal(got, expected)
    with pytest.raises(ConversionError, match=r"(?s)\['q'\] not found.*t@\[850, 500\].*x_foo"):
        convert([str(path)], str(tmp_path / "q"), variables=["t", "q"], **quiet())
    with pytest.raises(ConversionError, match=r"level\(s\) \[700\] hPa of 't' not found"):
        convert([str(path)], str(tmp_path / "l"), levels=[850, 700], **quiet())
    with pytest.raises(ConversionError, match="nothing to convert.*2020-01-01..2020-01-02"):
        convert([str(path)], str(tmp_path / "n"), start="2021-01-01", end="2021-01-02", **quiet())
    odd = tmp_path / "odd_levels_2020.nc"
    xr.Dataset(
        {"z": (("time", "level", "lat", "lon"), cube(1, 2, H, W))},
        coords={"time": TIMES[:1], "level": [850, 123], "lat": LAT_N2S, "lon": LON},
    ).to_netcdf(odd)
    with pytest.raises(ConversionError, match=r"'z' has levels \[123\] hPa that are not ERA5"):
        convert([str(odd)], str(tmp_path / "o"), **quiet())


def test_scalar_time_and_one_line_errors(tmp_path, capsys):
    msl = cube(H, W, base=1e5, scale=500)
    path = tmp_path / "one_time.nc"
    xr.Dataset(
        {"msl": (("latitude", "longitude"), msl)},
        coords={"time": pd.Timestamp("2020-03-04 18:00"), "latitude": LAT_N2S, "longitude": LON},
    ).to_netcdf(path)
    root = str(tmp_path / "out")
    main(["--input", str(path), "--root_dir", root, "--no_stats", "--quiet"])
    assert json.loads(capsys.readouterr().out)["times"] == 1
    np.testing.assert_array_equal(
        np.load(surface_path(root, to_hours("2020-03-04") + 18, "msl")), msl
    )
    argv = ["--input", str(path), "--root_dir", root, "--variables", "t2m", "--quiet"]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert err.startswith("error: variable(s) ['t2m'] not found") and "msl" in err
    with pytest.raises(ConversionError):
        main(argv + ["--debug"])


@pytest.fixture(scope="module")
def arco_store(tmp_path_factory):
    """An ARCO-ERA5-like Zarr store: long names, 5-degree grid with rows on the poles, one chunk
    per time step and variable."""
    d = tmp_path_factory.mktemp("arco")
    lat, lon = np.linspace(90, -90, 37), np.arange(72) * 5.0
    times = pd.date_range("2020-01-01", periods=8, freq="6h")
    la = np.deg2rad(lat)[:, None]
    z = np.stack(
        [
            np.stack([5e4 + 1e3 * np.cos(la) ** 2 + 10 * k + p + 0 * lon for p in (0, 1)])
            for k in range(8)
        ]
    )
    t2m = cube(8, 37, 72, base=280, scale=10).astype(np.float64)
    ds = xr.Dataset(
        {
            "geopotential": (("time", "level", "latitude", "longitude"), z),
            "2m_temperature": (("time", "latitude", "longitude"), t2m),
            "land_sea_mask": (("latitude", "longitude"), np.zeros((37, 72))),
        },
        coords={"time": times, "level": [500, 850], "latitude": lat, "longitude": lon},
    ).chunk({"time": 1})
    store = str(d / "arco.zarr")
    ds.to_zarr(store, zarr_format=2, consolidated=True)
    return store, ds


def _chunk_files(store, var):
    return sorted(f for f in os.listdir(os.path.join(store, var)) if not f.startswith("."))


def test_zarr_selection_reads_only_the_selected_chunks(arco_store, tmp_path):
    src, ds = arco_store
    store = str(tmp_path / "partial.zarr")
    shutil.copytree(src, store)
    # keep only the chunks of geopotential at 2020-01-01 00:00 and 12:00: a missing chunk reads as
    # NaN, which the converter refuses, so reading anything else would fail
    for var in ("geopotential", "2m_temperature"):
        for name in _chunk_files(store, var):
            if var == "2m_temperature" or name.split(".")[0] not in ("0", "2"):
                os.remove(os.path.join(store, var, name))
    root = str(tmp_path / "out")
    result = convert(
        [store],
        root,
        variables=["z"],
        levels=[850],
        start="2020-01-01",
        end="2020-01-01",
        hour_step=12,
        **quiet(),
    )
    assert result["written"] == 2 and result["upper"] == {"z": [850]}
    for ti in (0, 2):
        got = np.load(upper_path(root, to_hours("2020-01-01") + 6 * ti, "z", 850))
        np.testing.assert_array_equal(got, ds["geopotential"].values[ti, 1].astype(np.float32))
    with pytest.raises(
        ConversionError, match="'2m_temperature' at 2020-01-01 00:00:00 has 2664 NaN"
    ):
        convert([store], str(tmp_path / "t"), variables=["t2m"], **quiet())


def test_zarr_url_regridded_to_cell_centres(arco_store, tmp_path):
    """A memory:// URL goes through fsspec like gs:// and s3:// do; 37 x 72 -> 16 x 32."""
    src, ds = arco_store
    url = "memory://stores/arco.zarr"
    ds.to_zarr(url, zarr_format=2, consolidated=True, mode="w")
    assert [s.kind for s in find_inputs([url])] == ["zarr"]
    root = str(tmp_path / "out")
    result = convert([url], root, grid="16x32", **quiet(hour_step=12))
    assert result["regridded"] and result["grid"] == [16, 32]
    lat, lon = read_grid(root)
    np.testing.assert_array_equal(lat, latitudes(16))
    np.testing.assert_array_equal(lon, longitudes(32))
    src_area = np.diff(
        np.sin(np.deg2rad(np.clip(np.r_[90, np.arange(87.5, -90, -5), -90], -90, 90)))
    )
    dst_area = np.diff(np.sin(np.deg2rad(np.r_[90 - np.arange(17) * 11.25])))
    for ti in (0, 2, 6):
        t = to_hours("2020-01-01") + ti * 6
        for var, level, values in (
            ("z", 500, ds["geopotential"].values[ti, 0]),
            ("t2m", None, ds["2m_temperature"].values[ti]),
        ):
            got = np.load(
                surface_path(root, t, var) if level is None else upper_path(root, t, var, level)
            )
            assert got.shape == (16, 32) and got.dtype == np.float32
            mean_in = (values.mean(axis=1) * src_area).sum() / src_area.sum()
            mean_out = (got.astype(np.float64).mean(axis=1) * dst_area).sum() / dst_area.sum()
            assert abs(mean_out - mean_in) < 1e-6 * abs(mean_in)
        z = np.load(upper_path(root, t, "z", 500))
        assert np.ptp(z, axis=1).max() < 1e-2  # zonally constant in, zonally constant out
    with pytest.raises(ConversionError, match=r"--grid '1\.3'"):
        convert([url], str(tmp_path / "bad"), grid="1.3", **quiet())


def test_storage_options_are_anonymous():
    assert storage_options_for("gs://gcp-public-data-arco-era5/ar/x.zarr") == {"token": "anon"}
    assert storage_options_for("s3://bucket/era5.zarr") == {"anon": True}
    assert storage_options_for("/data/era5.zarr") == {}
    (source,) = find_inputs(["gs://weatherbench2/datasets/era5/x.zarr"])
    assert source.kind == "zarr" and source.storage_options == {"token": "anon"}


@pytest.fixture(scope="module")
def many_times(tmp_path_factory):
    d = tmp_path_factory.mktemp("many")
    times = pd.date_range("2020-01-01", periods=40, freq="6h")
    z = cube(len(times), 2, H, W, base=5e4, scale=100)
    sp = cube(len(times), H, W, base=1e5, scale=100)
    path = d / "many.nc"
    xr.Dataset(
        {
            "z": (("time", "level", "latitude", "longitude"), z),
            "sp": (("time", "latitude", "longitude"), sp),
        },
        coords={"time": times, "level": [850, 500], "latitude": LAT_N2S, "longitude": LON},
    ).to_netcdf(path)
    reference = str(d / "reference")
    convert([str(path)], reference, **quiet())
    return str(path), reference


def _count(root):
    return sum(f.endswith(".npy") for _, _, files in os.walk(root) for f in files)


def _tree(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith(".npy"):
                out[os.path.relpath(os.path.join(dirpath, f), root)] = np.load(
                    os.path.join(dirpath, f)
                )
    return out


def test_parallel_resume_after_partial_output(many_times, tmp_path):
    path, reference = many_times
    expected = _tree(reference)
    assert len(expected) == 40 * 3
    root = str(tmp_path / "out")
    shutil.copytree(reference, root)
    removed = sorted(expected)[::7]
    for name in removed:
        os.remove(os.path.join(root, name))
    day = os.path.dirname(os.path.join(root, removed[0]))
    stale = os.path.join(day, "." + os.path.basename(removed[0]) + ".x1y2.tmp")
    with open(stale, "wb") as f:
        f.write(b"\x93NUMPY half a file")
    result = convert([path], root, workers=2, **quiet())
    assert result["written"] == len(removed) and result["skipped"] == len(expected) - len(removed)
    assert not os.path.exists(stale)
    got = _tree(root)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value)


def _stats(root):
    """``{relative path: (inode, mtime_ns)}`` of every ``.npy`` file under ``root``."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith(".npy"):
                st = os.stat(os.path.join(dirpath, f))
                out[os.path.relpath(os.path.join(dirpath, f), root)] = (st.st_ino, st.st_mtime_ns)
    return out


def test_killed_conversion_resumes_redoing_only_unfinished_days(tmp_path):
    """SIGKILLed (kill point ``convert_batch``) right after its third day is recorded durable,
    while later days are being written; the same command then writes every other day and leaves
    the three recorded days untouched."""
    times = pd.date_range("2020-01-01", periods=100, freq="6h")  # 25 days of 4 x 2 fields
    z = cube(len(times), 2, H, W, base=5e4, scale=100)
    path = str(tmp_path / "long.nc")
    xr.Dataset(
        {"z": (("time", "level", "latitude", "longitude"), z)},
        coords={"time": times, "level": [850, 500], "latitude": LAT_N2S, "longitude": LON},
    ).to_netcdf(path)
    root = str(tmp_path / "out")
    cmd = [sys.executable, "-m", "tools.prepare_era5", "--input", path, "--root_dir", root]
    env = dict(os.environ, VAMOE_KILL_AT="convert_batch@3")
    run = subprocess.run(
        cmd + ["--no_stats", "--quiet"], cwd=REPO, env=env, capture_output=True, timeout=300
    )
    assert run.returncode == -signal.SIGKILL
    recorded = [
        d
        for d in sorted(os.listdir(os.path.join(root, "2020")))
        if durable_names(os.path.join(root, "2020", d))
    ]
    assert recorded == ["2020-01-01", "2020-01-02", "2020-01-03"]
    before = _stats(root)
    kept = {k: v for k, v in before.items() if k.split(os.sep)[1] in recorded}
    assert len(kept) == 3 * 8
    result = convert([path], root, **quiet())
    assert result["skipped"] == 24 and result["written"] == 200 - 24
    assert result["batches_written"] == 22  # only the 22 unfinished days
    after = _stats(root)
    assert {k: after[k] for k in kept} == kept  # same inode, same mtime: not rewritten
    unrecorded = set(before) - set(kept)  # written by the killed run, never made durable
    assert all(after[k] != before[k] for k in unrecorded)  # written again
    got = _tree(root)
    assert len(got) == 200
    for ti, t in enumerate(times):
        hours = to_hours(t.to_pydatetime())
        for li, level in enumerate((850, 500)):
            name = os.path.relpath(upper_path(root, hours, "z", level), root)
            np.testing.assert_array_equal(got[name], z[ti, li])


class FakeClient:
    def __init__(self):
        self.calls = []

    def retrieve(self, dataset, request, target):
        self.calls.append((dataset, request))
        with open(target, "wb") as f:
            f.write(b"netcdf")


def test_download_requests(tmp_path):
    requests = cds_requests(
        ["z", "t", "t2m", "msl"], [500, 850], "2020-01-30", "2020-02-02", 6, str(tmp_path)
    )
    assert [(d, os.path.basename(t)) for d, _, t in requests] == [
        ("reanalysis-era5-pressure-levels", "era5_pl_202001.nc"),
        ("reanalysis-era5-single-levels", "era5_sfc_202001.nc"),
        ("reanalysis-era5-pressure-levels", "era5_pl_202002.nc"),
        ("reanalysis-era5-single-levels", "era5_sfc_202002.nc"),
    ]
    pl_jan, sfc_feb = requests[0][1], requests[3][1]
    assert pl_jan["variable"] == ["geopotential", "temperature"]
    assert pl_jan["pressure_level"] == ["500", "850"]
    assert (
        pl_jan["year"] == ["2020"] and pl_jan["month"] == ["01"] and pl_jan["day"] == ["30", "31"]
    )
    assert pl_jan["time"] == ["00:00", "06:00", "12:00", "18:00"]
    assert pl_jan["data_format"] == "netcdf" and pl_jan["product_type"] == ["reanalysis"]
    assert sfc_feb["variable"] == ["2m_temperature", "mean_sea_level_pressure"]
    assert sfc_feb["day"] == ["01", "02"] and "pressure_level" not in sfc_feb
    client = FakeClient()
    os.makedirs(tmp_path, exist_ok=True)
    with open(requests[0][2], "wb") as f:  # already downloaded: skipped
        f.write(b"x")
    paths = download(requests, client)
    assert paths == [t for _, _, t in requests] and len(client.calls) == 3
    assert all(os.path.exists(p) for p in paths)
    with pytest.raises(ConversionError, match="needs --levels"):
        cds_requests(["z"], None, "2020-01-01", "2020-01-01", 6, str(tmp_path))
