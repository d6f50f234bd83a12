"""The converter's steps on a small input: the checked options (``check_options``), the resolved
request (``resolve``), the planned jobs (``plan_jobs``) and one written batch (``write_batch``)."""

import os

import numpy as np
import pytest

xr = pytest.importorskip("xarray")
pd = pytest.importorskip("pandas")
pytest.importorskip("netCDF4")

from utils.batch_io import durable_names, record_durable  # noqa: E402
from utils.conversion.convert import summary, write_batch  # noqa: E402
from utils.conversion.plan import plan_jobs  # noqa: E402
from utils.conversion.request import check_options, resolve  # noqa: E402
from utils.conversion.variable_names import ConversionError  # noqa: E402
from utils.data.npy_layout import day_dir, surface_path, upper_path  # noqa: E402
from utils.grid import latitudes, longitudes  # noqa: E402
from utils.times import to_hours  # noqa: E402

TIMES = pd.date_range("2020-01-01", periods=8, freq="6h")  # 2 days, 00/06/12/18
HOUR0 = to_hours("2020-01-01")
RNG = np.random.default_rng(3)


def cube(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """``pl.nc``: z and t at 500/850/1000 hPa plus an unrecognised ``foo`` on the 4 x 8 cell-centre
    grid; ``sfc.nc`` (t2m) and ``wind.nc`` (u10) on the same 8 x 16 grid."""
    d = tmp_path_factory.mktemp("steps")
    dims = ("time", "level", "latitude", "longitude")
    upper = {name: (dims, cube(8, 3, 4, 8)) for name in ("z", "t", "foo")}
    coarse = {"time": TIMES, "level": [500, 850, 1000], "latitude": latitudes(4)}
    coarse["longitude"] = longitudes(8)
    xr.Dataset(upper, coords=coarse).to_netcdf(d / "pl.nc")
    fine = {"time": TIMES, "latitude": latitudes(8), "longitude": longitudes(16)}
    surface = ("time", "latitude", "longitude")
    xr.Dataset({"t2m": (surface, cube(8, 8, 16))}, coords=fine).to_netcdf(d / "sfc.nc")
    xr.Dataset({"u10": (surface, cube(8, 8, 16))}, coords=fine).to_netcdf(d / "wind.nc")
    return [str(d / "pl.nc"), str(d / "sfc.nc"), str(d / "wind.nc")]


def test_check_options_gives_the_selection():
    names = ["geopotential", "z", "2m_temperature"]
    selection = check_options(names, ["850", 500], "2020-01-01", "2020-01-02", 12, workers=2)
    assert selection.variables == ["z", "t2m"]
    assert selection.levels == [850, 500]
    assert (selection.first, selection.last) == (HOUR0, HOUR0 + 47)
    assert (selection.start, selection.end, selection.hour_step) == ("2020-01-01", "2020-01-02", 12)
    everything = check_options(None, None, None, None, 6, 1)
    assert (everything.variables, everything.levels, everything.first, everything.last) == (
        (None,) * 4
    )


@pytest.mark.parametrize(
    "options, message",
    [  # where two options are wrong, the first checked is the one named
        (dict(hour_step=5, workers=0), "--hour_step 5 must divide 24"),
        (dict(workers=0, start="2020-01-01"), "--workers 0 must be at least 1"),
        (dict(start="2020-01-01", variables=["nope"]), "give both --start and --end"),
        (dict(start="2020-02-30", end="2020-03-01", variables=["nope"]), "--start/--end: "),
        (dict(variables=["nope"], levels=[4]), r"--variables: unknown variable\(s\) \['nope'\]"),
        (dict(levels=[4, 500, 6]), r"--levels \[4, 6\] are not ERA5 pressure levels"),
    ],
)
def test_check_options_reports_the_first_wrong_option(options, message):
    arguments = dict(variables=None, levels=None, start=None, end=None, hour_step=6, workers=1)
    with pytest.raises(ConversionError, match=message):
        check_options(**{**arguments, **options})


def test_time_positions_keep_whole_hours_of_the_step_inside_the_period():
    hours = HOUR0 + np.arange(-6.0, 54.0, 1.5)  # 2019-12-31 18:00 to 2020-01-03 04:30
    selection = check_options(None, None, "2020-01-01", "2020-01-02", 6, 1)
    expected = [i for i, h in enumerate(hours) if h % 6 == 0 and HOUR0 <= h <= HOUR0 + 47]
    assert selection.time_positions(hours).tolist() == expected
    assert [hours[i] - HOUR0 for i in expected] == [0, 6, 12, 18, 24, 30, 36, 42]
    anytime = check_options(None, None, None, None, 12, 1)
    assert (hours[anytime.time_positions(hours)] - HOUR0).tolist() == [0, 12, 24, 36, 48]


def test_resolve_a_small_request(inputs, tmp_path, capsys):
    selection = check_options(["z", "t2m", "u10"], [1000, 500], None, None, 12, 1)
    request = resolve(inputs, str(tmp_path), selection, grid="4x8", member=None, level=None)
    assert [s.location for s in request.sources] == inputs
    assert [o.where for o in request.opened] == inputs
    np.testing.assert_array_equal(request.lat, latitudes(4))
    np.testing.assert_array_equal(request.lon, longitudes(8))
    assert [(p.index, p.time_index.tolist(), p.fields) for p in request.plans] == [
        (0, [0, 2, 4, 6], [("z", 500), ("z", 1000)]),  # the input's level order
        (1, [0, 2, 4, 6], [("t2m", None)]),
        (2, [0, 2, 4, 6], [("u10", None)]),
    ]
    pl, sfc, wind = request.regridders
    assert pl is None and sfc is not None and sfc is wind  # one regridder per input grid
    assert capsys.readouterr().err == f"{inputs[0]}: not recognised, not converted: ['foo']\n"

    surface_only = check_options(["t2m"], None, "2020-01-02", "2020-01-02", 6, 1)
    request = resolve(inputs, str(tmp_path), surface_only)
    assert [(p.index, p.time_index.tolist()) for p in request.plans] == [(1, [4, 5, 6, 7])]
    assert request.lat.size == 8 and request.regridders == [None, None, None]


def test_plan_jobs_skips_fields_on_disk_and_removes_stale_temporaries(inputs, tmp_path):
    root = str(tmp_path)
    selection = check_options(["z", "t2m"], [850, 1000], "2020-01-02", "2020-01-02", 12, 1)
    request = resolve(inputs[:2], root, selection, grid="4x8")
    noon = HOUR0 + 36
    done = [upper_path(root, noon, "z", 850), surface_path(root, HOUR0 + 24, "t2m")]
    for path in done:  # on disk and recorded as durable: skipped
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.save(path, np.zeros((4, 8), np.float32))
        record_durable(os.path.dirname(path), [os.path.basename(path)])
    # on disk but never recorded (a batch a kill interrupted): written again
    np.save(upper_path(root, HOUR0 + 24, "z", 1000), np.zeros((4, 8), np.float32))
    # recorded but no longer on disk: written again
    record_durable(
        day_dir(root, "2020-01-02"), [os.path.basename(upper_path(root, noon, "z", 1000))]
    )
    stale = os.path.join(day_dir(root, "2020-01-02"), ".12:00:00-z-1000.0.npy.x1y2.tmp")
    open(stale, "w").close()

    work = plan_jobs(request)
    assert not os.path.exists(stale)
    assert [(j.source, j.time_index, j.hours - HOUR0, j.fields) for j in work.jobs] == [
        (0, 4, 24, (("z", 850), ("z", 1000))),
        (0, 6, 36, (("z", 1000),)),
        (1, 6, 36, (("t2m", None),)),
    ]
    assert work.skipped == 2
    assert work.upper == {"z": [1000, 850]} and work.surface == ["t2m"]
    assert sorted(work.times) == [HOUR0 + 24, HOUR0 + 36]
    assert (work.first_day, work.last_day) == ("2020-01-02", "2020-01-02")

    open(stale, "w").close()
    everything = plan_jobs(request, overwrite=True)
    assert not os.path.exists(stale)
    assert everything.skipped == 0
    assert [len(j.fields) for j in everything.jobs] == [2, 2, 1, 1]


def test_write_batch_writes_one_batch_and_the_next_plan_skips_it(inputs, tmp_path):
    root = str(tmp_path)
    selection = check_options(["z"], [500, 1000], "2020-01-01", "2020-01-01", 6, 1)
    request = resolve(inputs[:1], root, selection)
    work = plan_jobs(request)
    assert len(work.jobs) == 4
    assert write_batch(request, work.jobs[1:3], workers=1, progress=False) == 4
    assert durable_names(day_dir(root, "2020-01-01")) == {
        f"{h:02d}:00:00-z-{p}.0.npy" for h in (6, 12) for p in (500, 1000)
    }
    z = xr.open_dataset(inputs[0])["z"]
    for job in work.jobs[1:3]:
        for level in (500, 1000):
            expected = z.isel(time=job.time_index).sel(level=level).values
            np.testing.assert_array_equal(
                np.load(upper_path(root, job.hours, "z", level)), expected
            )
    again = plan_jobs(request)
    assert [j.hours - HOUR0 for j in again.jobs] == [0, 18]
    assert again.skipped == 4
    assert summary(request, again, 0) == {
        "root_dir": root,
        "inputs": 1,
        "written": 0,
        "skipped": 4,
        "times": 4,
        "first_day": "2020-01-01",
        "last_day": "2020-01-01",
        "upper": {"z": [1000, 500]},
        "surface": [],
        "grid": [4, 8],
        "regridded": False,
    }
