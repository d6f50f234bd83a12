"""Any grid, any time step: recorded grids, area weights, date-time periods, data steps, separate
roots, and tiny end-to-end runs (train one epoch, evaluate) on grids with poles, Gaussian grids and
the recordless cell-centre layout, scored against an independent numpy computation."""

import csv
import json
import os

import numpy as np
import pytest
import torch
from conftest import CONFIG, make_params

import inference
import train
from networks.vamoe import VAMoE
from utils.channels import ERA5_LEVELS, Channel
from utils.data.dataset import ERA5Dataset
from utils.data.npy_layout import MissingDataError, channel_path, statistic_path
from utils.data.statistics import compute_statistics
from utils.data.synthetic import generate
from utils.grid import (
    GridError,
    dataset_grid,
    gaussian_latitudes,
    grid_path,
    latitude_weights,
    latitudes,
    pole_latitudes,
)
from utils.times import period_bounds, to_hours


def independent_area_weights(lat):
    """Row areas on the unit sphere from latitudes (degrees, north to south), one row at a time:
    edges half-way to the neighbouring rows, half a row beyond the outer rows, clipped to ±90."""
    lat = [float(x) for x in lat]
    w = []
    for i, x in enumerate(lat):
        up = (x + lat[i - 1]) / 2 if i > 0 else x + (x - lat[1]) / 2
        down = (x + lat[i + 1]) / 2 if i + 1 < len(lat) else x - (lat[-2] - x) / 2
        up, down = min(up, 90.0), max(down, -90.0)
        w.append(np.sin(np.radians(up)) - np.sin(np.radians(down)))
    w = np.array(w)
    return w / w.mean()


def test_area_weights_are_cos_lat_on_the_cell_centre_grid():
    lat = latitudes(128)
    cos = np.cos(np.radians(lat))
    np.testing.assert_allclose(latitude_weights(lat), cos / cos.mean(), rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "lat", [pole_latitudes(61), pole_latitudes(91), gaussian_latitudes(32), latitudes(17)]
)
def test_area_weights_match_cell_areas(lat):
    w = latitude_weights(lat)
    np.testing.assert_allclose(w, independent_area_weights(lat), rtol=1e-12)
    assert w.mean() == pytest.approx(1.0, abs=1e-12)


def test_pole_rows_get_their_true_small_area():
    lat = pole_latitudes(61)  # 3 degree rows
    w = latitude_weights(lat)
    # The pole cell is the cap above 88.5 degrees; the whole sphere has area 2 (unit radius / 2 pi).
    cap = 1 - np.sin(np.radians(88.5))
    assert w[0] == pytest.approx(cap / (2 / 61), rel=1e-12) and w[0] < 0.011
    assert w[0] == w[-1]


def test_grid_latitudes_poles_and_gaussian():
    assert pole_latitudes(121)[[0, 60, 120]].tolist() == [90.0, 0.0, -90.0]
    g = gaussian_latitudes(32)
    assert np.all(np.diff(g) < 0) and g[0] == pytest.approx(85.7605871204, abs=1e-8)
    np.testing.assert_allclose(g, -g[::-1], atol=1e-12)


def test_dataset_grid_falls_back_to_cell_centres_and_checks_the_size(tmp_path, caplog):
    root = str(tmp_path)
    lat, lon = dataset_grid(root, 16, 32)
    np.testing.assert_array_equal(lat, latitudes(16))
    assert "records no grid" in caplog.text
    from utils.grid import write_grid

    write_grid(root, pole_latitudes(17), np.arange(32) * 11.25)
    with pytest.raises(GridError, match=r"17 x 32 grid .* h_size: 16, w_size: 32"):
        dataset_grid(root, 16, 32)
    np.testing.assert_array_equal(dataset_grid(root, 17, 32)[0], pole_latitudes(17))


def test_periods_take_date_times():
    day = to_hours("2019-01-05")
    assert period_bounds(["2019-01-05T01", "2019-01-05T06"]) == (day + 1, day + 6)
    assert period_bounds(["2019-01-05", "2019-01-05"]) == (day, day + 23)
    assert period_bounds(["2019-01-05 03:00", "2019-01-06"]) == (day + 3, day + 47)
    with pytest.raises(ValueError, match="whole hours"):
        period_bounds(["2019-01-05T01:30", "2019-01-06"])


@pytest.fixture(scope="module")
def twelve_hourly(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("twelve") / "era5")
    generate(root, "2020-01-01", 3, h_size=8, w_size=16, hour_step=12, climatology=False)
    return root


def test_data_step_is_read_from_the_data(twelve_hourly):
    common = ["num_data_workers=0", "h_size=8", "w_size=16"]
    p = make_params(twelve_hourly, "tiny", [*common, "lead_time=12", "train_interval=12"])
    p["train_period"] = ["2020-01-01T06", "2020-01-03"]
    ds = ERA5Dataset(p, "train")
    assert ds.data_step == 12
    assert ds.times[0] == to_hours("2020-01-01") + 12  # first stored time in the period
    with pytest.raises(ValueError, match=r"'lead_time' \(6 h\) is not a multiple of the data step"):
        ERA5Dataset(make_params(twelve_hourly, "tiny", common), "train")


def test_statistics_use_the_times_that_exist(tmp_path):
    root = str(tmp_path / "era5")
    generate(
        root, "2020-01-01T01", 1, 8, 16, (500,), 1, variables=("z",), surface=(), hours=4,
        statistics=False, climatology=False,
    )  # fmt: skip
    result = compute_statistics(root, "2020-01-01", "2020-01-01", progress=False)
    assert result["n_times"] == 4
    fields = [
        np.load(channel_path(root, to_hours("2020-01-01") + h, Channel("z", 500)))
        for h in (1, 2, 3, 4)
    ]
    with open(statistic_path(root)) as f:
        stats = json.load(f)
    k = ERA5_LEVELS.index(500)
    assert stats["mean"]["z"][k] == pytest.approx(np.mean(np.float64(fields)), rel=1e-12)
    with open(os.path.join(root, "statistic", "climatology", "meta.json")) as f:
        assert json.load(f)["hours"] == [1, 2, 3, 4]


# ------------------------------------------------------------------------------ end to end
def _read_stats(root, layout):
    with open(statistic_path(root)) as f:
        upper = json.load(f)
    with open(statistic_path(root, "mean_std_single.json")) as f:
        single = json.load(f)
    mean, std = [], []
    for ch in layout.channels:
        if ch.level is None:
            mean.append(single["mean"][ch.variable])
            std.append(single["std"][ch.variable])
        else:
            mean.append(upper["mean"][ch.variable][ERA5_LEVELS.index(ch.level)])
            std.append(upper["std"][ch.variable][ERA5_LEVELS.index(ch.level)])
    return np.array(mean)[:, None, None], np.array(std)[:, None, None]


def _independent_rmse(params, weights, data_root, stats_root):
    """Model RMSE ``(C, T)`` from the checkpoint, the raw files and the stored latitudes."""
    layout = params.layout
    model = VAMoE.from_params(params)
    model.load_state_dict(torch.load(weights, weights_only=True)["model"])
    model.eval()
    ds = ERA5Dataset(params, "test")
    inp, _, times = ds.read_batch(list(range(len(ds))))
    mean, std = _read_stats(stats_root, layout)
    if os.path.exists(grid_path(data_root)):
        with open(grid_path(data_root)) as f:
            lat = json.load(f)["latitude"]
    else:
        h = params.h_size
        lat = [90 - (i + 0.5) * 180 / h for i in range(h)]
    w = independent_area_weights(lat)[:, None]
    sq_err = np.zeros((layout.n_channels, params.t_out_test))
    x = inp
    with torch.no_grad():
        for k in range(params.t_out_test):
            x = model(x).forecast
            pred = x.double().numpy() * std + mean
            for b, t in enumerate(times.tolist()):
                valid = t + (k + 1) * params.lead_time
                truth = np.stack(
                    [np.load(channel_path(data_root, valid, ch)) for ch in layout.channels]
                ).astype(np.float64)
                sq_err[:, k] += (w * (pred[b] - truth) ** 2).mean(axis=(1, 2))
    return np.sqrt(sq_err / len(times)), len(times)


def _csv_rmse(out_dir, layout, n_leads, lead_time):
    with open(os.path.join(out_dir, "metrics.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r["forecaster"] == "model"]
    table = {(r["variable"], r["level"], int(r["lead_hours"])): float(r["rmse"]) for r in rows}
    return np.array(
        [
            [
                table[(ch.variable, "" if ch.level is None else str(ch.level), k * lead_time)]
                for k in range(1, n_leads + 1)
            ]
            for ch in layout.channels
        ]
    )


def _placeholder_plot(*args, **kwargs):
    """An empty file where a (slow) figure would go."""
    path = next(a for a in args if isinstance(a, str) and a.endswith(".png"))
    open(path, "wb").close()
    return path


def _train_and_evaluate(tmp_path, overrides, monkeypatch=None):
    """Train one epoch and evaluate, each with its command's entry point; with ``monkeypatch`` the
    evaluation skips drawing its figures (tested once, on the grid with poles)."""
    if monkeypatch is not None:
        monkeypatch.setattr(inference, "plot_rmse_acc", _placeholder_plot)
        monkeypatch.setattr(inference, "plot_maps", _placeholder_plot)
    sets = [a for o in overrides for a in ("--set", o)]
    exp = str(tmp_path / "exp")
    train.main(["--config", "tiny", "--exp_dir", exp, *sets])
    weights = os.path.join(exp, "tiny", "0", "training_checkpoints", "best_ckpt.tar")
    out = str(tmp_path / "results")
    inference.main(["--config", "tiny", "--weights", weights, "--override_dir", out, *sets])
    return weights, out


GRIDS = {
    # name: (grid kind, h, w, hour_step, lead_time, periods train / valid / test, intervals)
    "poles_odd_hourly": (
        "poles", 17, 32, 1, 1,
        (["2020-01-01T00", "2020-01-01T11"], ["2020-01-01T12", "2020-01-01T15"],
         ["2020-01-01T16", "2020-01-01T23"]),
        (1, 1, 2),
    ),
    "gaussian": (
        "gaussian", 16, 32, 6, 6,
        (["2020-01-01", "2020-01-02"], ["2020-01-03T00", "2020-01-03T06"],
         ["2020-01-03", "2020-01-03"]),
        (6, 6, 6),
    ),
    "centres_unrecorded": (
        "centres", 128, 32, 6, 6,
        (["2020-01-01", "2020-01-02"], ["2020-01-03T00", "2020-01-03T06"],
         ["2020-01-03", "2020-01-03"]),
        (6, 6, 6),
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(GRIDS))
def test_train_and_evaluate_on_any_grid(tmp_path, monkeypatch, name):
    kind, h, w, step, lead, periods, intervals = GRIDS[name]
    root = str(tmp_path / "era5")
    days = 1 if step == 1 else 3
    generate(root, "2020-01-01", days, h, w, hour_step=step, grid=kind)
    if name == "centres_unrecorded":
        os.remove(grid_path(root))  # the layout of datasets written before grids were recorded
    t_out = 3
    overrides = [
        f"root_dir={root}",
        f"h_size={h}",
        f"w_size={w}",
        "patch_size=2",
        "max_epochs=1",
        "num_data_workers=0",
        "batch_size=4",
        "valid_batch_size=4",
        "eval_batch_size=8",
        f"lead_time={lead}",
        f"train_period={periods[0]}",
        f"valid_period={periods[1]}",
        f"test_period={periods[2]}",
        f"train_interval={intervals[0]}",
        f"valid_interval={intervals[1]}",
        f"test_interval={intervals[2]}",
        "t_out_test=2" if step == 6 else f"t_out_test={t_out}",
    ]
    weights, out = _train_and_evaluate(
        tmp_path, overrides, None if kind == "poles" else monkeypatch
    )
    params = make_params(root, "tiny", overrides)
    expected, n_ics = _independent_rmse(params, weights, root, root)
    got = _csv_rmse(out, params.layout, params.t_out_test, lead)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    with open(os.path.join(out, "metrics.json")) as f:
        assert json.load(f)["n_ics"] == n_ics >= 2
    if kind == "poles":
        assert os.path.getsize(os.path.join(out, "maps.png")) > 0


def test_hold_out_part_of_a_day(tmp_path, monkeypatch):
    train_root, test_root = str(tmp_path / "train"), str(tmp_path / "test")
    generate(train_root, "2020-01-01T01", 1, 16, 32, hour_step=1, hours=6)
    generate(
        test_root, "2020-01-01T07", 1, 16, 32, hour_step=1, hours=4,
        statistics=False, climatology=False,
    )  # fmt: skip
    assert not os.path.exists(statistic_path(test_root))  # statistics come from training
    overrides = [
        f"root_dir={train_root}",
        f"valid_root_dir={test_root}",
        f"test_root_dir={test_root}",
        "h_size=16",
        "w_size=32",
        "max_epochs=1",
        "num_data_workers=0",
        "batch_size=4",
        "eval_batch_size=4",
        "lead_time=1",
        "train_interval=1",
        "valid_interval=1",
        "test_interval=1",
        "t_out_test=2",
        "headline_days=[0.125]",
        "train_period=['2020-01-01T01', '2020-01-01T06']",
        "valid_period=['2020-01-01T07', '2020-01-01T08']",
        "test_period=['2020-01-01T07', '2020-01-01T10']",
    ]
    weights, out = _train_and_evaluate(tmp_path, overrides, monkeypatch)
    params = make_params(train_root, "tiny", overrides)
    assert len(ERA5Dataset(params, "train")) == 5  # inputs 01..05, targets to 06
    expected, n_ics = _independent_rmse(params, weights, test_root, train_root)
    assert n_ics == 2  # initial conditions 07 and 08 (+2 h <= 10)
    np.testing.assert_allclose(_csv_rmse(out, params.layout, 2, 1), expected, rtol=1e-6)
    with open(os.path.join(out, "summary.txt")) as f:
        assert "3 h" in f.read()
    log = open(os.path.join(tmp_path, "exp", "tiny", "0", "out.log")).read()
    assert "rmse(1 h)" in log


def test_a_period_without_data_is_named(tmp_path, twelve_hourly):
    p = make_params(twelve_hourly, "tiny", ["num_data_workers=0", "h_size=8", "w_size=16"])
    p["test_period"] = ["2021-01-01", "2021-01-02"]
    with pytest.raises(MissingDataError, match="test period"):
        ERA5Dataset(p, "test")


def test_a_separate_root_must_record_the_training_grid(tmp_path, twelve_hourly):
    other = str(tmp_path / "gauss")
    generate(other, "2020-01-01", 1, 8, 16, hour_step=12, grid="gaussian", statistics=False)
    common = ["num_data_workers=0", "h_size=8", "w_size=16", "lead_time=12", "test_interval=12"]
    p = make_params(twelve_hourly, "tiny", [*common, f"test_root_dir={other}", "t_out_test=1"])
    p["test_period"] = ["2020-01-01", "2020-01-01"]
    with pytest.raises(GridError, match="record different grids"):
        ERA5Dataset(p, "test")
    os.remove(grid_path(other))  # a folder without a grid file is read on the training grid
    ds = ERA5Dataset(p, "test")
    np.testing.assert_array_equal(ds.lat, latitudes(8))
    assert ds.stats_root == twelve_hourly and ds.root == other


def test_configured_data_step_is_checked():
    from utils.YParams import ConfigError, YParams

    with pytest.raises(ConfigError, match=r"'lead_time' \(6\) is not a multiple of 'data_step'"):
        YParams(CONFIG, "tiny", ["data_step=12"])
