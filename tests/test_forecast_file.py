"""utils.evaluation.forecast_file: forecast files in the WeatherBench 2 layout scored by the
rollout beside the model (the same metric code), what they lack left out, other grids refused."""

import numpy as np
import pytest
import torch
from forecast_files import write_forecast

from utils.channels import ChannelLayout
from utils.errors import ConfigError, DataError
from utils.evaluation.forecast_file import ForecastFile, parse_compare
from utils.evaluation.rollout import evaluate_rollout
from utils.grid import latitude_weights, latitudes, longitudes
from utils.times import format_hours

pytest.importorskip("xarray")
pytest.importorskip("zarr")

H, W, T, LEAD = 8, 16, 3, 6
LAYOUT = ChannelLayout(["z", "t"], [500, 850], ["t2m"])  # z500 z850 t500 t850 t2m
C = LAYOUT.n_channels
MEAN = np.array([5.0e4, 1.4e4, 250.0, 280.0, 285.0], dtype=np.float32)
STD = np.array([3.0e3, 1.5e3, 10.0, 12.0, 15.0], dtype=np.float32)
LAT, LON = latitudes(H), longitudes(W)
BASE_TIME = 438300  # 2020-01-01T12, hours since 1970
LEADS = np.arange(T + 1) * LEAD


class Climatology:
    def field(self, time_hours):
        g = np.random.default_rng(int(time_hours) % 1000)
        return MEAN[:, None, None] + STD[:, None, None] * 0.5 * g.normal(size=(C, H, W))


def loader(n_batches=3, batch=2, seed=0):
    """Batches ``(inp, tar, times)`` of random normalised states, initial times every 12 h."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(n_batches):
        times = torch.arange(batch, dtype=torch.int64) * 12 + BASE_TIME + 12 * batch * b
        out.append(
            (torch.randn(batch, C, H, W, generator=g), torch.randn(batch, T, C, H, W), times)
        )
    return out


def physical(x):
    """Normalised float32 states to physical units, as the evaluation does (float64)."""
    x = np.asarray(x, dtype=np.float64)
    return x * STD.astype(np.float64)[:, None, None] + MEAN.astype(np.float64)[:, None, None]


def persistence_file(path, batches, **kwargs):
    """Every initial state of ``batches`` as its forecast at every lead (float64 values)."""
    times = [int(t) for _, _, ts in batches for t in ts]
    states = np.concatenate([physical(inp) for inp, _, _ in batches])
    states = np.repeat(states[:, None], T + 1, axis=1)  # (N, L, C, H, W)
    return write_forecast(path, states, LAYOUT, LAT, LON, times, LEADS, **kwargs), times


def run(batches, compared=(), forecasters=("persistence", "climatology"), step_fn=None, **kwargs):
    return evaluate_rollout(
        step_fn,
        batches,
        T,
        MEAN,
        STD,
        LAT,
        Climatology(),
        "cpu",
        forecasters=forecasters,
        progress=False,
        lead_time=LEAD,
        channels=LAYOUT,
        compared=compared,
        **kwargs,
    )


def scores(res, name):
    return [res.rmse[name], res.rmse_ic_mean[name], res.acc[name], res.acc_undefined[name]]


def test_parse_compare_takes_name_path_pairs_and_refuses_bad_names():
    assert parse_compare(["a=x.zarr", "b-2.v=/p/y.nc"]) == [("a", "x.zarr"), ("b-2.v", "/p/y.nc")]
    for bad, why in [
        ("noequals", "expected NAME=PATH"),
        ("a=", "expected NAME=PATH"),
        ("model=x.zarr", "reserved"),
        ("1a=x.zarr", "must be a letter"),
        ("a/b=x.zarr", "must be a letter"),
    ]:
        with pytest.raises(ConfigError, match=why):
            parse_compare([bad])
    with pytest.raises(ConfigError, match="'a' is used twice"):
        parse_compare(["a=x", "a=y"])


@pytest.mark.parametrize("suffix", ["zarr", "nc"])
def test_a_persistence_file_reproduces_the_persistence_scores(tmp_path, suffix):
    batches = loader()
    path, times = persistence_file(tmp_path / f"persistence.{suffix}", batches)
    compared = ForecastFile("file", path, LAYOUT, LAT, LON, times, LEADS)
    res = run(batches, [compared])
    assert res.forecasters == ["persistence", "climatology", "file"]
    assert compared.notes == [] and res.n_ics == 6
    for got, want in zip(scores(res, "file"), scores(res, "persistence"), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    assert np.isfinite(res.acc["file"][:, 1:]).all()


def test_project_names_descending_latitudes_and_longitudes_from_minus_180(tmp_path):
    batches = loader(n_batches=1)

    def project_layout(ds):
        ds = ds.rename({"geopotential": "z", "temperature": "t", "2m_temperature": "t2m"})
        ds = ds.isel(latitude=slice(None, None, -1))
        return ds.assign_coords(longitude=((ds.longitude + 180) % 360) - 180).sortby("longitude")

    path, times = persistence_file(tmp_path / "p.zarr", batches, edit=project_layout)
    res = run(batches, [ForecastFile("file", path, LAYOUT, LAT, LON, times, LEADS)])
    np.testing.assert_allclose(res.rmse["file"], res.rmse["persistence"], rtol=1e-12, atol=0)


def test_what_a_file_lacks_is_left_out_and_noted(tmp_path):
    batches = loader()
    missing_start = int(batches[1][2][0])

    def lacking(ds):
        ds = ds.drop_sel(time=np.datetime64(missing_start, "h"))
        ds = ds.isel(prediction_timedelta=slice(0, T), level=[0])  # no last lead, no 850 hPa
        return ds.drop_vars("2m_temperature")

    path, times = persistence_file(tmp_path / "p.zarr", batches, edit=lacking)
    compared = ForecastFile("partial", path, LAYOUT, LAT, LON, times, LEADS)
    res = run(batches, [compared], forecasters=("persistence",))
    assert compared.notes == [
        f"partial: {path} lacks 1 of the 6 initial times ({format_hours(missing_start)}): "
        "scored on the other 5",
        f"partial: {path} lacks the leads {T * LEAD} h: no scores there (NaN)",
        f"partial: {path} lacks z850, t850, t2m: no scores for them (NaN)",
    ]
    assert all(note in res.notes for note in compared.notes)
    have = [LAYOUT.index_of_name(n) for n in ("z500", "t500")]
    lack = [LAYOUT.index_of_name(n) for n in ("z850", "t850", "t2m")]
    rmse = res.rmse["partial"]
    assert np.isnan(rmse[lack]).all() and np.isnan(rmse[:, T]).all()
    assert (res.acc_undefined["partial"] == 0).all()
    # The rest: persistence over the five starts the file has, computed independently.
    w = latitude_weights(LAT)[:, None]
    mse = np.zeros((C, T))
    for inp, tar, ts in batches:
        for i, t in enumerate(ts.tolist()):
            if t != missing_start:
                for k in range(T):
                    err = physical(inp[i]) - physical(tar[i, k])
                    mse[:, k] += (w * err**2).mean(axis=(1, 2))
    np.testing.assert_allclose(rmse[have, 1:T], np.sqrt(mse[have, : T - 1] / 5), rtol=1e-10)
    assert (rmse[have, 0] == 0).all()


def test_a_file_on_another_grid_is_refused_naming_both_grids(tmp_path):
    batches = loader(n_batches=1)
    times = [int(t) for t in batches[0][2]]
    states = np.zeros((len(times), T + 1, C, 2 * H, 2 * W))
    path = write_forecast(
        tmp_path / "fine.zarr", states, LAYOUT, latitudes(2 * H), longitudes(2 * W), times, LEADS
    )
    with pytest.raises(DataError) as err:
        ForecastFile("fine", path, LAYOUT, LAT, LON, times, LEADS)
    message = str(err.value)
    assert "\n" not in message and path in message
    assert "on the grid 16 x 32 (latitude 84.375 .. -84.375" in message
    assert "the dataset on 8 x 16 (latitude 78.75 .. -78.75, longitude 0 .. 337.5)" in message

    states = np.zeros((len(times), T + 1, C, H, W))
    shifted = write_forecast(tmp_path / "shifted.zarr", states, LAYOUT, LAT, LON + 1, times, LEADS)
    with pytest.raises(DataError, match="longitude 1 .. 338.5"):
        ForecastFile("shifted", shifted, LAYOUT, LAT, LON, times, LEADS)


def test_a_file_sharing_nothing_or_with_other_dimensions_is_refused(tmp_path):
    batches = loader(n_batches=1)
    times = [int(t) for t in batches[0][2]]
    states = np.zeros((len(times), T + 1, C, H, W))
    later = write_forecast(
        tmp_path / "later.zarr", states, LAYOUT, LAT, LON, [t + 10_000 for t in times], LEADS
    )
    with pytest.raises(DataError, match="shares no initial time, lead or channel"):
        ForecastFile("later", later, LAYOUT, LAT, LON, times, LEADS)
    members = write_forecast(
        tmp_path / "members.zarr",
        states,
        LAYOUT,
        LAT,
        LON,
        times,
        LEADS,
        edit=lambda ds: ds.expand_dims(number=2),
    )
    with pytest.raises(DataError, match=r"has the dimensions \[.number., .time."):
        ForecastFile("members", members, LAYOUT, LAT, LON, times, LEADS)
    with pytest.raises(DataError, match="does not exist"):
        ForecastFile("gone", str(tmp_path / "gone.zarr"), LAYOUT, LAT, LON, times, LEADS)


def test_the_map_sample_holds_the_compared_forecast(tmp_path):
    batches = loader(n_batches=1)
    path, times = persistence_file(tmp_path / "p.zarr", batches)
    res = run(
        batches,
        [ForecastFile("file", path, LAYOUT, LAT, LON, times, LEADS)],
        ("model", "persistence"),
        step_fn=lambda x: x,
        capture_ic=1,
        capture_channels=[0, 4],
    )
    sample = res.sample
    assert list(sample["forecasts"]) == ["model", "file"]
    assert sample["forecasts"]["file"].shape == (T + 1, 2, H, W)
    want = physical(batches[0][0][1])[[0, 4]].astype(np.float32)
    for k in range(T + 1):
        np.testing.assert_array_equal(sample["forecasts"]["file"][k], want)


def test_each_initial_time_is_read_once_and_only_when_asked(tmp_path, monkeypatch):
    batches = loader()
    path, times = persistence_file(tmp_path / "p.zarr", batches)
    compared = ForecastFile("file", path, LAYOUT, LAT, LON, times, LEADS)
    read = []
    original = compared._read
    monkeypatch.setattr(compared, "_read", lambda i: read.append(i) or original(i))
    run(batches[1:], [compared])  # this rank's batches: the first is another rank's
    assert read == [2, 3, 4, 5]  # once per initial time, not once per lead
