"""The autoregressive evaluation engine, result files, headline table and plots."""

import csv
import json
import os

import numpy as np
import pytest
import torch

from utils.atomic_io import atomic_save_npy
from utils.channels import ChannelLayout
from utils.evaluation.metrics import MetricAccumulator, lat_weights_torch
from utils.evaluation.results import CSV_COLUMNS, format_headline_table, load_results, save_results
from utils.evaluation.rollout import evaluate_rollout
from utils.grid import latitudes, longitudes

H, W = 8, 16
LAYOUT = ChannelLayout(["z", "t"], [500, 850], ["t2m"])  # z500 z850 t500 t850 t2m
C = LAYOUT.n_channels
MEAN = np.array([5.0e4, 1.4e4, 250.0, 280.0, 285.0])
STD = np.array([3.0e3, 1.5e3, 10.0, 12.0, 15.0])
LAT = latitudes(H)
BASE_TIME = 438300  # 2020-01-01T12 in hours since 1970 (any int works)


class FakeClimatology:
    """Deterministic field per valid time; records the times asked for."""

    def __init__(self):
        self.calls = []

    def field(self, time_hours):
        self.calls.append(int(time_hours))
        g = np.random.default_rng(int(time_hours) % 100000)
        return MEAN[:, None, None] + STD[:, None, None] * 0.5 * g.normal(size=(C, H, W))


def constant_truth_loader(n_batches=2, batch=3, n_steps=4, seed=0, interval=12):
    """Targets equal the input at every lead (a frozen atmosphere)."""
    g = torch.Generator().manual_seed(seed)
    batches, t = [], BASE_TIME
    for _ in range(n_batches):
        inp = torch.randn(batch, C, H, W, generator=g)
        tar = inp.unsqueeze(1).repeat(1, n_steps, 1, 1, 1)
        times = torch.arange(batch, dtype=torch.int64) * interval + t
        t += batch * interval
        batches.append((inp, tar, times))
    return batches


def random_loader(n_batches=2, batch=2, n_steps=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch, C, H, W, generator=g),
            torch.randn(batch, n_steps, C, H, W, generator=g),
            torch.arange(batch, dtype=torch.int64) * 12 + BASE_TIME + 100 * i,
        )
        for i in range(n_batches)
    ]


def test_rollout_feeds_predictions_back_linear_growth():
    c, T = 0.1, 4
    calls = []

    def step(x):
        calls.append(x.clone())
        return x + c

    res = evaluate_rollout(
        step,
        constant_truth_loader(n_steps=T),
        T,
        MEAN,
        STD,
        LAT,
        FakeClimatology(),
        "cpu",
        progress=False,
        channels=LAYOUT,
    )
    assert res.n_ics == 6
    assert res.rmse["model"].shape == (C, T + 1) and res.acc["model"].shape == (C, T + 1)
    assert res.lead_hours.tolist() == [0, 6, 12, 18, 24]
    expected = c * np.arange(T + 1)[None, :] * STD[:, None]  # c * k * std
    np.testing.assert_allclose(res.rmse["model"], expected, rtol=1e-5, atol=1e-9)
    # The k-th call sees the (k-1)-th forecast: inputs drift by c per step.
    first = calls[:T]
    for k in range(1, T):
        torch.testing.assert_close(first[k] - first[0], torch.full_like(first[0], c * k))
    # Persistence is exact for a frozen atmosphere.
    np.testing.assert_allclose(res.rmse["persistence"], 0.0, atol=1e-9)
    assert res.channel_names == LAYOUT.names
    assert res.channels[-1] == ("t2m", None) and res.channels[0] == ("z", 500)


def test_persistence_lead0_zero_and_baselines():
    T = 3
    clim = FakeClimatology()
    loader = random_loader(n_steps=T)
    res = evaluate_rollout(
        lambda x: 0.5 * x,
        loader,
        T,
        MEAN,
        STD,
        LAT,
        clim,
        "cpu",
        progress=False,
        channels=LAYOUT.names,
        lead_time=6,
    )
    np.testing.assert_allclose(res.rmse["persistence"][:, 0], 0.0, atol=1e-9)
    np.testing.assert_allclose(res.rmse["model"][:, 0], 0.0, atol=1e-9)
    assert np.all(res.rmse["persistence"][:, 1:] > 0)
    np.testing.assert_allclose(res.acc["persistence"][:, 0], 1.0, atol=1e-9)
    # Climatology asked at valid times init + k * 6 h.
    inits = [int(t) for b in loader for t in b[2]]
    assert sorted(set(clim.calls)) == sorted({t + 6 * k for t in inits for k in range(T + 1)})
    # Climatology forecaster: ACC undefined everywhere (NaN, counted), no inf; RMSE finite.
    assert np.isnan(res.acc["climatology"]).all()
    assert not np.isinf(res.acc["climatology"]).any()
    assert (res.acc_undefined["climatology"] == res.n_ics).all()
    assert np.isfinite(res.rmse["climatology"]).all()
    # Climatology RMSE at lead 2 against an independent computation.
    std_w = np.cos(np.deg2rad(LAT)) / np.cos(np.deg2rad(LAT)).mean()
    mse = np.zeros(C)
    for _inp, tar, times in loader:
        for i, t in enumerate(times.tolist()):
            truth = tar[i, 1].double().numpy() * STD[:, None, None] + MEAN[:, None, None]
            err = FakeClimatology().field(t + 12) - truth
            mse += (err**2 * std_w[None, :, None]).mean(axis=(1, 2))
    np.testing.assert_allclose(res.rmse["climatology"][:, 2], np.sqrt(mse / res.n_ics), rtol=1e-9)
    assert np.all(np.abs(res.acc["model"][:, 1:]) <= 1.0)


def test_single_step_loader_and_writer_and_capture():
    seen = []
    with pytest.warns(UserWarning, match="no climatology"):
        res = evaluate_rollout(
            lambda x: x + 1.0,
            constant_truth_loader(n_steps=1),
            1,
            MEAN,
            STD,
            LAT,
            None,
            "cpu",
            progress=False,
            raw_forecast_writer=lambda t, f: seen.append((t, f)),
            capture_ic=4,
            capture_channels=[0, 4],
        )
    assert res.rmse["model"].shape == (C, 2)
    assert "climatology" not in res.rmse and not res.acc_available
    assert np.isnan(res.acc["model"]).all()
    np.testing.assert_allclose(res.rmse["model"][:, 1], STD, rtol=1e-5)
    assert len(seen) == 6 and seen[0][0] == BASE_TIME
    assert seen[0][1].shape == (2, C, H, W) and seen[0][1].dtype == np.float32  # leads 0, 1
    np.testing.assert_allclose(  # lead 0 is the initial state; the step adds 1 (normalised)
        seen[0][1][1] - seen[0][1][0], np.broadcast_to(STD[:, None, None], (C, H, W)), rtol=1e-4
    )
    assert list(res.sample["forecasts"]) == ["model"]
    assert res.sample["forecasts"]["model"].shape == (2, 2, H, W)
    assert res.sample["time_hours"] == BASE_TIME + 4 * 12
    np.testing.assert_allclose(
        res.sample["forecasts"]["model"][1] - res.sample["truth"][1],
        np.broadcast_to(STD[[0, 4], None, None], (2, H, W)),
        rtol=1e-4,
    )


def test_forecaster_selection_and_errors():
    res = evaluate_rollout(
        None,
        random_loader(),
        3,
        MEAN,
        STD,
        LAT,
        FakeClimatology(),
        "cpu",
        forecasters=["persistence"],
        progress=False,
    )
    assert list(res.rmse) == ["persistence"]
    with pytest.raises(ValueError):
        evaluate_rollout(None, random_loader(), 3, MEAN, STD, LAT, None, "cpu", progress=False)
    with pytest.raises(ValueError):
        evaluate_rollout(
            lambda x: x, random_loader(n_steps=2), 3, MEAN, STD, LAT, None, "cpu", progress=False
        )


def test_bf16_autocast_on_cpu():
    flags = []

    def step(x):
        flags.append(torch.is_autocast_enabled("cpu"))
        return x + 0.1

    with pytest.warns(UserWarning, match="no climatology"):
        res = evaluate_rollout(
            step,
            constant_truth_loader(n_batches=1, n_steps=2),
            2,
            MEAN,
            STD,
            LAT,
            None,
            "cpu",
            progress=False,
            amp_dtype="bf16",
        )
    assert flags and all(flags)
    np.testing.assert_allclose(res.rmse["model"][:, 2], 0.2 * STD, rtol=1e-4)
    with pytest.raises(ValueError):
        evaluate_rollout(
            step,
            constant_truth_loader(n_batches=1, n_steps=2),
            2,
            MEAN,
            STD,
            LAT,
            None,
            "cpu",
            progress=False,
            amp_dtype="fp16",
        )


def test_accumulator_aggregates_batches_as_sqrt_of_mean_mse():
    g = torch.Generator().manual_seed(3)
    pred, tar = torch.randn(4, C, H, W, generator=g), torch.randn(4, C, H, W, generator=g)
    acc = MetricAccumulator(C, 1)
    s, m = torch.tensor(STD).view(1, C, 1, 1), torch.tensor(MEAN).view(1, C, 1, 1)
    w = lat_weights_torch(LAT)
    for i in range(0, 4, 2):  # two batches aggregate like one
        acc.update(0, pred[i : i + 2].double() * s + m, tar[i : i + 2].double() * s + m, w)
    w = np.cos(np.deg2rad(LAT))
    w = w / w.mean()
    err = (pred.double() - tar.double()).numpy() * STD[None, :, None, None]
    mse = (err**2 * w[None, None, :, None]).mean(axis=(2, 3))  # (N, C)
    np.testing.assert_allclose(acc.rmse()[:, 0], np.sqrt(mse.mean(0)), rtol=1e-9)
    np.testing.assert_allclose(acc.rmse_ic_mean()[:, 0], np.sqrt(mse).mean(0), rtol=1e-9)
    assert np.all(acc.rmse_ic_mean()[:, 0] < acc.rmse()[:, 0])  # Jensen, unequal per-IC errors
    assert np.isnan(acc.acc()).all() and (acc.acc_undefined() == 4).all()


@pytest.fixture
def results():
    return evaluate_rollout(
        lambda x: x + 0.05,
        random_loader(n_steps=4),
        4,
        MEAN,
        STD,
        LAT,
        FakeClimatology(),
        "cpu",
        progress=False,
        channels=LAYOUT,
    )


def test_result_files(tmp_path, results):
    written = save_results(results, str(tmp_path), config_name="tiny")
    files = sorted(os.listdir(tmp_path))
    assert files == sorted(
        [
            "denormalized_lat_weight_rmse.npy",
            "lat_weight_acc.npy",
            "persistence_lat_weight_rmse.npy",
            "persistence_lat_weight_acc.npy",
            "climatology_lat_weight_rmse.npy",
            "climatology_lat_weight_acc.npy",
            "lead_hours.npy",
            "metrics.csv",
            "metrics.json",
        ]
    )  # and no temporary files
    assert set(written.values()) == {str(tmp_path / f) for f in files}
    rmse = np.load(tmp_path / "denormalized_lat_weight_rmse.npy")
    assert rmse.shape == (C, 5)
    np.testing.assert_array_equal(rmse, results.rmse["model"])
    assert np.load(tmp_path / "lat_weight_acc.npy").shape == (C, 5)
    assert np.load(tmp_path / "lead_hours.npy").tolist() == [0, 6, 12, 18, 24]
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.reader(f))
    assert (
        tuple(rows[0])
        == CSV_COLUMNS
        == ("forecaster", "variable", "level", "lead_hours", "rmse", "acc", "rmse_ic_mean")
    )
    assert len(rows) == 1 + 3 * C * 5
    t2m = [r for r in rows[1:] if r[0] == "model" and r[1] == "t2m"]
    assert len(t2m) == 5 and all(r[2] == "" for r in t2m)
    z500 = [r for r in rows[1:] if r[0] == "model" and r[1] == "z" and r[2] == "500"]
    assert float(z500[2][4]) == pytest.approx(results.rmse["model"][0, 2])
    assert float(z500[2][6]) == pytest.approx(results.rmse_ic_mean["model"][0, 2])
    assert all(r[5] == "nan" for r in rows[1:] if r[0] == "climatology")
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["config"] == "tiny" and doc["n_ics"] == 4
    assert doc["lead_hours"] == [0, 6, 12, 18, 24]
    assert set(doc["forecasters"]) == {"model", "persistence", "climatology"}
    assert len(doc["forecasters"]["model"]["rmse"]["t850"]) == 5
    assert doc["forecasters"]["climatology"]["acc"]["z500"][1] is None
    back = load_results(str(tmp_path))
    np.testing.assert_array_equal(back.rmse["persistence"], results.rmse["persistence"])
    np.testing.assert_array_equal(back.rmse_ic_mean["model"], results.rmse_ic_mean["model"])
    assert back.channels == results.channels
    # A metrics.json written before rmse_ic_mean existed still loads, with NaN in its place.
    for block in doc["forecasters"].values():
        del block["rmse_ic_mean"]
    (tmp_path / "metrics.json").write_text(json.dumps(doc))
    old = load_results(str(tmp_path))
    assert np.isnan(old.rmse_ic_mean["model"]).all()
    np.testing.assert_array_equal(old.rmse["model"], results.rmse["model"])


def test_atomic_write_failure_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "a.npy"
    atomic_save_npy(str(path), np.arange(3))

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_save_npy(str(path), np.arange(10))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["a.npy"]
    assert np.load(path).tolist() == [0, 1, 2]


def test_headline_table(results):
    names = ["z500", "t850", "t2m", "u10", "q500"]
    text = format_headline_table(results, names, [0.25, 1, 3])
    lines = text.splitlines()
    header = lines[1]
    for col in ("RMSE model", "RMSE persist", "RMSE clim", "ACC model", "ACC persist", "ACC clim"):
        assert col in header
    rows = [l for l in lines if l.split() and l.split()[0] in names]  # noqa: E741
    assert [r.split()[0] for r in rows] == ["z500", "z500", "t850", "t850", "t2m", "t2m"]
    assert rows[0].split()[1:3] == ["6", "h"] and rows[1].split()[1:3] == ["1", "d"]
    z = "{:.4g}".format(results.rmse["model"][0, 1])
    assert z in rows[0]
    assert "u10 skipped" in text and "q500 skipped" in text
    assert "lead 3 d skipped" in text


@pytest.mark.parametrize(
    "hours,label", [(1, "1 h"), (6, "6 h"), (24, "1 d"), (36, "36 h"), (120, "5 d"), (0.5, "0.5 h")]
)
def test_lead_labels_in_hours_unless_whole_days(hours, label):
    from utils.evaluation.results import lead_label

    assert lead_label(hours) == label


def test_plots(tmp_path, results):
    from utils.evaluation.plots import nearest_leads, plot_maps, plot_rmse_acc

    p = plot_rmse_acc(results, ["z500", "t850", "t2m", "u10"], str(tmp_path / "rmse_acc.png"))
    assert os.path.getsize(p) > 10000
    leads = nearest_leads(results.lead_hours, [24, 120])
    assert leads == [4]  # both wanted leads map to the last available one (24 h)
    g = np.random.default_rng(0)
    f, t = g.normal(size=(2, 2, H, W)), g.normal(size=(2, 2, H, W))
    p = plot_maps(f, t, LAT, longitudes(W), ["z500", "t2m"], [24, 120], str(tmp_path / "maps.png"))
    assert os.path.getsize(p) > 10000
    assert sorted(os.listdir(tmp_path)) == ["maps.png", "rmse_acc.png"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rollout_on_cuda_matches_cpu():
    loader = random_loader(n_steps=3)
    cpu = evaluate_rollout(
        lambda x: 0.9 * x, loader, 3, MEAN, STD, LAT, FakeClimatology(), "cpu", progress=False
    )
    gpu = evaluate_rollout(
        lambda x: 0.9 * x,
        loader,
        3,
        MEAN,
        STD,
        LAT,
        FakeClimatology(),
        "cuda",
        progress=False,
        amp_dtype="bf16",
    )
    np.testing.assert_allclose(gpu.rmse["model"], cpu.rmse["model"], rtol=1e-5)
    np.testing.assert_allclose(gpu.acc["persistence"], cpu.acc["persistence"], rtol=1e-9)


def test_target_without_time_axis_is_refused():
    inp = torch.zeros(2, C, H, W)
    batch = (inp, torch.zeros(2, C, H, W), torch.arange(2) * 12 + BASE_TIME)
    with pytest.raises(ValueError, match=r"tar must be \(B, T, C, H, W\)"):
        evaluate_rollout(lambda x: x, [batch], 1, MEAN, STD, LAT, None, "cpu", progress=False)
