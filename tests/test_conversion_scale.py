"""The converter at scale: year files straight from the inputs (bit-identical to ``.npy`` then
HDF5), statistics and climatology from either format (plain FourCastNet files included), a
conversion in parts run by concurrent processes (one of them SIGKILLed and run again) put
together by ``--finalize``, and time coordinates under other names."""

import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

xr = pytest.importorskip("xarray")
pd = pytest.importorskip("pandas")
pytest.importorskip("netCDF4")
pytest.importorskip("zarr")
h5py = pytest.importorskip("h5py")

from tools import npy_to_h5 as npy_to_h5_tool  # noqa: E402
from tools import statistics as statistics_tool  # noqa: E402
from tools.prepare_era5 import main as prepare  # noqa: E402
from utils.batch_io import durable_names  # noqa: E402
from utils.channels import ERA5_LEVELS  # noqa: E402
from utils.conversion.convert import convert  # noqa: E402
from utils.conversion.variable_names import ConversionError  # noqa: E402
from utils.data.h5_layout import year_path  # noqa: E402
from utils.data.h5_year_writer import partial_path  # noqa: E402
from utils.data.npy_layout import statistic_path, surface_path  # noqa: E402
from utils.errors import MissingDataError  # noqa: E402
from utils.times import to_hours  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMES = pd.date_range("2019-12-28", "2020-01-05 18:00", freq="6h")  # 9 days, across two years
LAT, LON = np.linspace(90, -90, 9), np.arange(16) * 22.5  # rows on the poles
RNG = np.random.default_rng(7)


def cube(*shape, base=0.0, scale=1.0):
    return (base + scale * RNG.standard_normal(shape)).astype(np.float32)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A pressure-level file (z, t at 850/500 hPa) and a surface file (t2m, msl) on a 9 x 16
    grid, converted everywhere below to 4 x 8 cell centres."""
    d = tmp_path_factory.mktemp("scale_inputs")
    pl_dims = ("time", "level", "latitude", "longitude")
    shape = (len(TIMES), 2, len(LAT), len(LON))
    coords = {"time": TIMES, "latitude": LAT, "longitude": LON}
    xr.Dataset(
        {
            "z": (pl_dims, cube(*shape, base=5e4, scale=300)),
            "t": (pl_dims, cube(*shape, base=260, scale=8)),
        },
        coords={**coords, "level": [850, 500]},
    ).to_netcdf(d / "pl.nc")
    sfc_dims = ("time", "latitude", "longitude")
    xr.Dataset(
        {
            "t2m": (sfc_dims, cube(len(TIMES), len(LAT), len(LON), base=280, scale=6)),
            "msl": (sfc_dims, cube(len(TIMES), len(LAT), len(LON), base=1e5, scale=700)),
        },
        coords=coords,
    ).to_netcdf(d / "sfc.nc")
    return [str(d / "pl.nc"), str(d / "sfc.nc")]


def run(inputs, root, *args, **kw):
    """``convert`` of ``inputs`` onto 4 x 8 into ``root``, quietly."""
    return convert(inputs, str(root), *args, grid="4x8", progress=False, **kw)


@pytest.fixture(scope="module")
def npy_root(inputs, tmp_path_factory):
    """The reference: one conversion into the .npy layout, statistics and climatology included."""
    root = tmp_path_factory.mktemp("npy") / "era5"
    result = run(inputs, root)
    assert result["written"] == len(TIMES) * 6 and result["batches_written"] == 9
    return str(root)


def npy_tree(root):
    """``{relative path: array}`` of every field file under ``root``."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.endswith(".npy") and "statistic" not in dirpath:
                path = os.path.join(dirpath, name)
                out[os.path.relpath(path, root)] = np.load(path)
    return out


def file_stats(root):
    """``{relative path: (inode, mtime_ns)}`` of every field file under ``root``."""
    out = {}
    for path in npy_tree(root):
        st = os.stat(os.path.join(root, path))
        out[path] = (st.st_ino, st.st_mtime_ns)
    return out


def read_stats(root):
    with open(statistic_path(root)) as f:
        upper = json.load(f)
    with open(statistic_path(root, "mean_std_single.json")) as f:
        return upper, json.load(f)


def assert_same_statistics(root, reference, rtol):
    (upper, single), (ref_upper, ref_single) = read_stats(root), read_stats(reference)
    for kind in ("mean", "std"):
        assert upper[kind].keys() == ref_upper[kind].keys() == {"z", "t"}
        for var in ("z", "t"):
            for level in (850, 500):
                i = ERA5_LEVELS.index(level)
                np.testing.assert_allclose(
                    upper[kind][var][i], ref_upper[kind][var][i], rtol=rtol, atol=0
                )
        assert single[kind].keys() == ref_single[kind].keys() == {"t2m", "msl"}
        for var in ("t2m", "msl"):
            np.testing.assert_allclose(single[kind][var], ref_single[kind][var], rtol=rtol, atol=0)


def assert_same_climatology(root, reference, rtol=0.0):
    """The same climatology, channel by channel (the channels may be listed in another order)."""
    metas, means = [], []
    for where in (root, reference):
        clim = os.path.join(where, "statistic", "climatology")
        with open(os.path.join(clim, "meta.json")) as f:
            metas.append(json.load(f))
        time_mean = np.load(os.path.join(clim, "time_mean.npy"))
        means.append(dict(zip(metas[-1]["channels"], time_mean, strict=True)))
    channels = metas[1].pop("channels")
    assert sorted(metas[0].pop("channels")) == sorted(channels) and "z500" in channels
    assert metas[0] == metas[1]
    for name in channels:
        np.testing.assert_allclose(means[0][name], means[1][name], rtol=rtol, atol=0)
        np.testing.assert_allclose(
            np.load(os.path.join(root, "statistic", "climatology", f"{name}.npy")),
            np.load(os.path.join(reference, "statistic", "climatology", f"{name}.npy")),
            rtol=rtol,
            atol=0,
        )


def test_h5_straight_from_the_inputs_is_bit_identical_to_npy_then_h5(inputs, npy_root, tmp_path):
    via_npy = str(tmp_path / "via_npy")
    npy_to_h5_tool.main(["--root_dir", npy_root, "--out_dir", via_npy])
    direct = str(tmp_path / "direct")
    result = run(inputs, direct, data_format="h5", workers=2)
    assert result["written"] == len(TIMES) * 6 and result["batches_written"] == 2  # 2 years
    assert not os.path.exists(os.path.join(direct, "2019"))  # no .npy tree
    for year in (2019, 2020):
        with open(year_path(direct, year), "rb") as f, open(year_path(via_npy, year), "rb") as g:
            assert f.read() == g.read(), year  # the same bytes
    with h5py.File(year_path(direct, 2019), "r") as f:
        assert [n.decode() for n in f["channel"][...]] == [
            "t850",
            "t500",
            "z850",
            "z500",
            "msl",
            "t2m",
        ]
        assert f["fields"].shape == (16, 6, 4, 8) and bool(f.attrs["complete"])
    # the statistics and climatology computed from the year files equal those from the .npy files
    assert result["statistics"]["format"] == "h5" and result["statistics"]["n_times"] == 36
    assert_same_statistics(direct, npy_root, rtol=1e-6)
    assert_same_climatology(direct, npy_root, rtol=1e-6)
    again = run(inputs, direct, data_format="h5")  # complete years are skipped
    assert again["written"] == 0 and again["skipped"] == len(TIMES) * 6
    assert again["statistics"].startswith("kept")


def test_statistics_command_on_an_h5_only_dataset(inputs, npy_root, tmp_path, capsys):
    root = str(tmp_path / "h5only")
    run(inputs, root, data_format="h5", stats=False)
    argv = ["--root_dir", root, "--start", "2019-12-28", "--end", "2020-01-05"]
    statistics_tool.main(argv)  # the format is found: year files only
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == "h5" and out["n_times"] == 36
    assert_same_statistics(root, npy_root, rtol=1e-6)
    assert_same_climatology(root, npy_root, rtol=1e-6)


def test_statistics_of_plain_fourcastnet_files_with_h5_channels(tmp_path, capsys):
    """Plain FourCastNet files (only ``fields``, a whole year of 6-hourly rows) under train/:
    the statistics over January 2019 equal numpy's, with the channel order from --h5_channels."""
    root = tmp_path / "fcn"
    os.makedirs(root / "train")
    fields = cube(1460, 3, 4, 8, base=100.0, scale=5.0)
    with h5py.File(root / "train" / "2019.h5", "w") as f:
        f.create_dataset("fields", data=fields)
    argv = ["--root_dir", str(root), "--start", "2019-01-01", "--end", "2019-01-31"]
    with pytest.raises(SystemExit) as stop:
        statistics_tool.main(argv + ["--format", "h5"])
    assert stop.value.code == 2 and "h5_channels" in capsys.readouterr().err
    statistics_tool.main(argv + ["--format", "h5", "--h5_channels", "u10", "z500", "t2m"])
    assert json.loads(capsys.readouterr().out)["n_times"] == 124
    upper, single = read_stats(str(root))
    january = fields[:124].astype(np.float64)
    np.testing.assert_allclose(upper["mean"]["z"][ERA5_LEVELS.index(500)], january[:, 1].mean())
    np.testing.assert_allclose(upper["std"]["z"][ERA5_LEVELS.index(500)], january[:, 1].std())
    for c, name in ((0, "u10"), (2, "t2m")):  # u10: the 10 m wind, a surface channel
        np.testing.assert_allclose(single["mean"][name], january[:, c].mean(), rtol=1e-12)
        np.testing.assert_allclose(single["std"][name], january[:, c].std(), rtol=1e-12)
    clim = root / "statistic" / "climatology"
    np.testing.assert_allclose(np.load(clim / "z500.npy")[0, 0], january[0, 1], rtol=1e-6)
    with open(clim / "meta.json") as f:
        z500 = json.load(f)["channels"].index("z500")
    np.testing.assert_allclose(np.load(clim / "time_mean.npy")[z500], january[:, 1].mean(0), 1e-6)


def _part(inputs, root, part, kill_at=None, *extra):
    """A ``python -m tools.prepare_era5 --part`` process (killed at ``kill_at`` when given)."""
    cmd = [sys.executable, "-m", "tools.prepare_era5", "--input", *inputs, "--root_dir", root]
    cmd += ["--grid", "4x8", "--part", part, "--quiet", *extra]
    env = dict(os.environ)
    env.pop("VAMOE_KILL_AT", None)
    if kill_at:
        env["VAMOE_KILL_AT"] = kill_at
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_three_concurrent_parts_one_killed_then_finalized_equal_one_conversion(
    inputs, npy_root, tmp_path
):
    root = str(tmp_path / "parts")
    # three processes at once into one root; part 2 (days 4-6) SIGKILLs itself once its second
    # day is recorded durable
    procs = [
        _part(inputs, root, f"{k}/3", "convert_batch@2" if k == 2 else None) for k in (1, 2, 3)
    ]
    codes = [p.wait(timeout=600) for p in procs]
    assert codes == [0, -signal.SIGKILL, 0], [p.stderr.read().decode() for p in procs]
    recorded = sorted(
        day
        for year in ("2019", "2020")
        for day in os.listdir(os.path.join(root, year))
        if durable_names(os.path.join(root, year, day))
    )
    assert recorded == [f"2019-12-{d}" for d in range(28, 32)] + ["2020-01-01"] + [
        f"2020-01-0{d}" for d in (3, 4, 5)
    ]  # part 2 recorded 2019-12-31 and 2020-01-01, not 2020-01-02
    with pytest.raises(MissingDataError, match=r"part\(s\) 2/3 not finished: 4 time\(s\) on 1"):
        run(inputs, root, finalize=True)
    before = file_stats(root)

    rerun = run(inputs, root, part="2/3")
    assert rerun["batches_written"] == 1 and rerun["written"] == 4 * 6  # only 2020-01-02
    assert rerun["skipped"] == 2 * 4 * 6
    after = file_stats(root)
    untouched = {k: v for k, v in before.items() if "2020-01-02" not in k}
    assert {k: after[k] for k in untouched} == untouched  # nothing outside that day rewritten

    final = run(inputs, root, finalize=True)
    assert final["parts"] == 3 and final["statistics"]["n_times"] == 36
    reference, got = npy_tree(npy_root), npy_tree(root)
    assert got.keys() == reference.keys() and len(got) == len(TIMES) * 6
    for name, value in reference.items():
        np.testing.assert_array_equal(got[name], value)
    assert_same_statistics(root, npy_root, rtol=1e-12)  # the parts' moments merged exactly
    assert_same_climatology(root, npy_root)
    for k in (1, 2, 3):
        with open(os.path.join(root, "statistic", "parts", f"part-000{k}-of-0003.json")) as f:
            assert json.load(f)["n_times"] == 12


def test_an_h5_part_killed_after_a_row_block_resumes_and_the_parts_equal_one_conversion(
    inputs, tmp_path
):
    root = str(tmp_path / "h5parts")
    # 2019 is part 1 of 2; its 16 rows are one block, killed once recorded, before the rename
    killed = _part(inputs, root, "1/2", "h5_row_block@1", "--format", "h5")
    assert killed.wait(timeout=600) == -signal.SIGKILL
    final, partial = year_path(root, 2019), partial_path(year_path(root, 2019))
    assert not os.path.exists(final)
    with h5py.File(partial, "r") as f:
        assert f.attrs["rows_written"] == 16 and not f.attrs["complete"]
    resumed = run(inputs, root, data_format="h5", part="1/2")
    assert resumed["written"] == 0 and resumed["batches_written"] == 1  # no row written again
    assert os.path.exists(final) and not os.path.exists(partial)
    assert not os.path.exists(year_path(root, 2020))  # part 2's year
    reference = str(tmp_path / "whole")
    run(inputs, reference, data_format="h5")
    with h5py.File(final, "r") as f, h5py.File(year_path(reference, 2019), "r") as g:
        assert np.array_equal(f["fields"][...], g["fields"][...]) and bool(f.attrs["complete"])
    with pytest.raises(MissingDataError, match=r"part\(s\) 2/2 not finished: 20 time\(s\)"):
        run(inputs, root, data_format="h5", finalize=True)
    run(inputs, root, data_format="h5", part="2/2")
    final = run(inputs, root, data_format="h5", finalize=True)
    assert final["parts"] == 2 and final["statistics"]["format"] == "h5"
    for year in (2019, 2020):
        with open(year_path(root, year), "rb") as f, open(year_path(reference, year), "rb") as g:
            assert f.read() == g.read()
    assert_same_statistics(root, reference, rtol=1e-12)
    assert_same_climatology(root, reference)


def test_part_and_format_errors(inputs, tmp_path):
    for bad in ("0/3", "4/3", "2", "a/b"):
        with pytest.raises(ConversionError, match="--part"):
            run(inputs, tmp_path / "e", part=bad)
    with pytest.raises(ConversionError, match="separate runs"):
        run(inputs, tmp_path / "e", part="1/2", finalize=True)
    with pytest.raises(ConversionError, match="--format 'zarr'"):
        run(inputs, tmp_path / "e", data_format="zarr")


def test_zarr_store_with_an_integer_time_index_and_dataset_level_units(tmp_path, capsys):
    """Time as ``time_index``, integer hours since 1940, its units only in the dataset's
    attributes: refused with the way through named, converted with --time_coord/--time_units."""
    hours = (pd.Timestamp("2020-03-01") - pd.Timestamp("1940-01-01")) // pd.Timedelta("1h")
    index = hours + 6 * np.arange(8)
    msl = cube(8, 4, 8, base=1e5, scale=500)
    ds = xr.Dataset(
        {"mean_sea_level_pressure": (("time_index", "latitude", "longitude"), msl)},
        coords={
            "time_index": index.astype(np.int64),
            "latitude": np.array([67.5, 22.5, -22.5, -67.5]),
            "longitude": np.arange(8) * 45.0,
        },
        attrs={"time_units": "hours since 1940-01-01"},
    )
    store = str(tmp_path / "indexed.zarr")
    ds.chunk({"time_index": 1}).to_zarr(store, zarr_format=2, consolidated=True)
    root = str(tmp_path / "out")
    argv = ["--input", store, "--root_dir", root, "--no_stats", "--quiet"]
    for extra, message in (
        ([], "no time coordinate .*name the time coordinate with --time_coord"),
        (["--time_coord", "time_index"], "'time_index' holds numbers .* pass --time_units"),
        (["--time_coord", "level"], "--time_coord 'level' is not a coordinate"),
        (["--time_coord", "time_index", "--time_units", "weeks since 1940"], "time units"),
    ):
        with pytest.raises(SystemExit) as stop:
            prepare(argv + extra)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.count("\n") == 1, err
        assert re.search(message, err), err
    prepare(argv + ["--time_coord", "time_index", "--time_units", "hours since 1940-01-01"])
    result = json.loads(capsys.readouterr().out)
    assert result["times"] == 8 and (result["first_day"], result["last_day"]) == (
        "2020-03-01",
        "2020-03-02",
    )
    for k in range(8):
        got = np.load(surface_path(root, to_hours("2020-03-01") + 6 * k, "msl"))
        np.testing.assert_array_equal(got, msl[k])
