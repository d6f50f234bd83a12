"""Forecasts, truth and climatology in the WeatherBench 2 layout, end to end: ``inference.py
--save_forecasts`` and ``python -m tools.export_wb2`` on the synthetic set, read back with xarray
and scored independently of the project's metric code; the free-disk check; kills."""

import csv
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import free_port, make_params

import inference
from networks.vamoe import VAMoE
from tools import export_wb2
from utils.conversion.variable_names import project_name
from utils.data.dataset import ERA5Dataset
from utils.evaluation import forecast_store
from utils.evaluation.stepper import Stepper
from utils.evaluation.wb2_layout import WB2_VARIABLES

xr = pytest.importorskip("xarray")
pytest.importorskip("zarr")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _inference_args(weights, root, out_dir, *extra):
    return [
        "--weights",
        weights,
        "--out_dir",
        str(out_dir),
        "--set",
        f"root_dir={root}",
        "--set",
        "num_data_workers=0",
        *extra,
    ]


@pytest.fixture(scope="module")
def scored(random_tiny_weights, synthetic_root, tmp_path_factory):
    """An evaluation with every forecast saved, and the export of its period."""
    work = tmp_path_factory.mktemp("wb2")
    inference.main(
        _inference_args(random_tiny_weights, synthetic_root, work / "results", "--save_forecasts")
    )
    export_wb2.main(
        [
            "--config",
            "tiny",
            "--set",
            f"root_dir={synthetic_root}",
            "--out_dir",
            str(work / "export"),
        ]
    )
    return work


def _metrics(path) -> dict:
    """``{(variable, level, lead_hours): (rmse, acc)}`` of the model rows of ``metrics.csv``."""
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if r["forecaster"] == "model"]
    return {
        (r["variable"], int(r["level"]) if r["level"] else None, int(r["lead_hours"])): (
            float(r["rmse"]),
            float(r["acc"]),
        )
        for r in rows
    }


def _cell_area_weights(lat_deg: np.ndarray) -> np.ndarray:
    """Row weights from ascending latitudes: the band between the midpoints (the poles at the
    ends), area proportional to the difference of sines; mean 1."""
    bounds = np.concatenate([[-90.0], (lat_deg[1:] + lat_deg[:-1]) / 2, [90.0]])
    area = np.diff(np.sin(np.deg2rad(bounds)))
    return area / area.mean()


def test_store_holds_the_rollout_float32_exactly(scored, synthetic_root, random_tiny_weights):
    params = make_params(synthetic_root, "tiny", ["num_data_workers=0"])
    dataset = ERA5Dataset(params, "test")
    inp, tar, times = dataset.read_batch(list(range(len(dataset))))  # the evaluation's one batch
    torch.manual_seed(0)
    model = VAMoE.from_params(params).eval()
    stepper = Stepper(lambda x: model(x).forecast, dataset.mean, dataset.std, "cpu")
    with torch.inference_mode():
        leads = [stepper.denormalise(inp)] + [
            stepper.denormalise(s.forecast) for s in stepper.rollout(inp, params.t_out_test)
        ]
    expected = torch.stack(leads, 1).float().numpy()  # (B, T + 1, C, H, W)
    with xr.open_zarr(scored / "results" / "forecasts.zarr") as store:
        assert (store.time.values.astype("datetime64[h]").astype(np.int64) == times.numpy()).all()
        lead_hours = store.prediction_timedelta.values // np.timedelta64(1, "h")
        assert lead_hours.tolist() == list(range(0, 49, 6))
        assert store.latitude.values.tolist() == dataset.lat[::-1].tolist()
        assert store.attrs["weights"] == os.path.abspath(random_tiny_weights)
        for c, channel in enumerate(params.layout.channels):
            name = WB2_VARIABLES[channel.variable].name
            stored = store[name]
            if channel.level is not None:
                stored = stored.sel(level=channel.level)
            got = stored.values[..., ::-1, :]  # back to north to south
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, expected[:, :, c], err_msg=channel.name)


def test_independent_rmse_and_acc_of_the_export_equal_metrics_csv(scored):
    """RMSE and ACC computed with xarray from the stored forecasts, the exported truth and the
    exported climatology, as WeatherBench 2 defines them, equal metrics.csv to 1e-5."""
    metrics = _metrics(scored / "results" / "metrics.csv")
    fc = xr.open_zarr(scored / "results" / "forecasts.zarr").astype("float64")
    truth = xr.open_zarr(scored / "export" / "truth.zarr").astype("float64")
    clim = xr.open_zarr(scored / "export" / "climatology.zarr").astype("float64")
    fc = fc.rename(time="init_time", prediction_timedelta="lead_time")
    valid = fc.init_time + fc.lead_time
    truth = truth.sel(time=valid)
    clim = clim.sel(dayofyear=valid.dt.dayofyear, hour=valid.dt.hour)
    weights = xr.DataArray(_cell_area_weights(fc.latitude.values), dims="latitude")

    def mean(x):
        return (x * weights).mean(["latitude", "longitude"])

    rmse = np.sqrt(mean((fc - truth) ** 2).mean("init_time"))
    fa, ta = fc - clim, truth - clim
    acc = (mean(fa * ta) / np.sqrt(mean(fa**2) * mean(ta**2))).mean("init_time")
    checked = 0
    for name in fc.data_vars:  # every variable, named back as the readers do
        variable = project_name(name)
        for level in fc.level.values.tolist() if "level" in fc[name].dims else [None]:
            pick = {} if level is None else {"level": level}
            for k, lead in enumerate(fc.lead_time.values // np.timedelta64(1, "h")):
                want_rmse, want_acc = metrics[(variable, level, int(lead))]
                got_rmse = float(rmse[name].sel(pick).isel(lead_time=k))
                if k == 0:  # the initial state: 0 in the project, float32 rounding here
                    assert want_rmse == 0 and got_rmse < 1e-5 * float(rmse[name].sel(pick)[1])
                else:
                    assert got_rmse == pytest.approx(want_rmse, rel=1e-5), (name, level, lead)
                got_acc = float(acc[name].sel(pick).isel(lead_time=k))
                # |ACC| <= 1, near 0 for random weights: 1e-5 relative or 1e-6 absolute
                assert got_acc == pytest.approx(want_acc, rel=1e-5, abs=1e-6), (name, lead)
                checked += 1
    assert checked == (5 * 3 + 5) * 9


def test_export_is_the_datasets_states_from_either_format(scored, synthetic_root, tmp_path):
    params = make_params(synthetic_root, "tiny")
    from utils.data import npy_to_h5

    h5_root = str(tmp_path / "h5")
    npy_to_h5.convert(synthetic_root, h5_root, params.layout)
    export_wb2.main(
        [
            "--config",
            "tiny",
            "--set",
            f"root_dir={h5_root}",
            "--set",
            "data_format=h5",
            "--out_dir",
            str(tmp_path / "export"),
            "--variables",
            "z500",
            "t2m",
            "--no_climatology",
        ]
    )
    with (
        xr.open_zarr(scored / "export" / "truth.zarr") as npy,
        xr.open_zarr(tmp_path / "export" / "truth.zarr") as h5,
    ):
        assert list(h5.data_vars) == ["2m_temperature", "geopotential"]
        assert h5.level.values.tolist() == [500] and "prediction_timedelta" not in h5.dims
        np.testing.assert_array_equal(
            h5.geopotential.values, npy.geopotential.sel(level=[500]).values
        )
        np.testing.assert_array_equal(h5["2m_temperature"].values, npy["2m_temperature"].values)
        assert str(npy.time.values[0])[:13] == "2020-01-28T00" and npy.time.size == 16


def _digest(folder) -> dict:
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _killed(args, point: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO, VAMOE_KILL_AT=point, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


def test_kill_during_the_export_leaves_the_previous_export_whole(scored, synthetic_root):
    export = scored / "export"
    before = _digest(export)
    args = [
        "-m",
        "tools.export_wb2",
        "--config",
        "tiny",
        "--set",
        f"root_dir={synthetic_root}",
        "--out_dir",
        str(export),
        "--overwrite",
    ]
    proc = _killed(args, "forecast_store.write@20")  # in the climatology, after the truth
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert _digest(export) == before
    staging = [n for n in os.listdir(scored) if n.startswith(".export.staging-")]
    assert len(staging) == 1  # the killed run's, removed by the next run


def test_kill_while_saving_forecasts_leaves_the_previous_results_whole(
    scored, synthetic_root, random_tiny_weights
):
    results = scored / "results"
    before = _digest(results)
    args = [
        "inference.py",
        *_inference_args(
            random_tiny_weights, synthetic_root, results, "--save_forecasts", "--overwrite"
        ),
    ]
    proc = _killed(args, "forecast_store.write@2")
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert _digest(results) == before


def test_not_enough_disk_stops_before_the_rollout(
    random_tiny_weights, synthetic_root, tmp_path, monkeypatch, capsys
):
    def no_rollout(*args, **kwargs):
        raise AssertionError("the rollout started")

    monkeypatch.setattr(inference, "_rollout", no_rollout)
    usage = forecast_store.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(forecast_store.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    args = _inference_args(
        random_tiny_weights,
        synthetic_root,
        tmp_path / "out",
        "--save_forecasts",
        str(tmp_path / "big" / "fc.zarr"),
        "--save_variables",
        "z",
        "t2m",
        "--save_every_hours",
        "24",
    )
    with pytest.raises(SystemExit) as exit_code:
        inference.main(args)
    assert exit_code.value.code == 2
    err = capsys.readouterr().err
    size = 2 * 9 * 4 * 32 * 64 * 4  # 2 starts at 00 UTC, 9 leads, z at 3 levels + t2m
    assert f"({size:,} bytes) to write in {tmp_path}, which has 1.0 kB free" in err
    assert not os.path.exists(tmp_path / "out") and not os.path.exists(tmp_path / "big")


def test_selection_errors_are_one_line(random_tiny_weights, synthetic_root, tmp_path, capsys):
    for extra, message in [
        (["--save_forecasts", "--save_variables", "z300"], "--save_variables: ['z300'] not in"),
        (["--save_forecasts", "--save_every_hours", "5"], "--save_every_hours 5 must divide 24"),
        (["--save_variables", "z"], "need --save_forecasts"),
    ]:
        with pytest.raises(SystemExit):
            inference.main(
                _inference_args(random_tiny_weights, synthetic_root, tmp_path / "o", *extra)
            )
        assert message in capsys.readouterr().err


def test_exported_truth_is_an_input_of_the_forecast_tool(
    scored, synthetic_root, random_tiny_weights
):
    from tools import forecast as forecast_tool

    out = scored / "from_truth" / "fc.zarr"
    forecast_tool.main(
        [
            "--weights",
            random_tiny_weights,
            "--set",
            f"root_dir={synthetic_root}",
            "--input",
            str(scored / "export" / "truth.zarr"),
            "--init",
            "2020-01-28T06",
            "--lead_hours",
            "6",
            "--output",
            str(out),
        ]
    )
    with xr.open_zarr(out) as fc, xr.open_zarr(scored / "export" / "truth.zarr") as truth:
        state = truth.sel(time="2020-01-28T06")
        for name in ("geopotential", "2m_temperature", "surface_pressure"):
            np.testing.assert_array_equal(
                fc[name].isel(time=0, prediction_timedelta=0), state[name]
            )


def test_saved_forecasts_compared_reproduce_the_model_rows(scored, synthetic_root, tmp_path):
    """The store --save_forecasts writes, scored as a --compare file without the model, gives
    the model's RMSE and ACC (float32 storage: 1e-5)."""
    store = scored / "results" / "forecasts.zarr"
    args = ["--config", "tiny", "--compare", f"saved={store}", "--out_dir", str(tmp_path / "cmp")]
    inference.main([*args, "--set", f"root_dir={synthetic_root}", "--set", "num_data_workers=0"])
    model = _metrics(scored / "results" / "metrics.csv")
    with open(tmp_path / "cmp" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["forecaster"] == "saved"]
    assert len(rows) == len(model) == 20 * 9
    for r in rows:
        key = (r["variable"], int(r["level"]) if r["level"] else None, int(r["lead_hours"]))
        if key[2] > 0:
            assert float(r["rmse"]) == pytest.approx(model[key][0], rel=1e-5), key
        assert float(r["acc"]) == pytest.approx(model[key][1], rel=1e-5, abs=1e-6), key


def test_two_ranks_of_test_sh_save_the_store_of_one(
    scored, synthetic_root, random_tiny_weights, tmp_path
):
    """test.sh with 2 gloo ranks: each rank writes its starts into the one store, which holds
    what the one-process evaluation saved (the ranks roll out batches of 2 instead of 4)."""
    out = tmp_path / "ranks"
    env = dict(
        os.environ,
        CONFIG="tiny",
        WEIGHTS=random_tiny_weights,
        OUT_DIR=str(out),
        PYTHON=sys.executable,
        CPU_RANKS="2",
        MASTER_PORT=str(free_port()),
        PYTHONPATH=REPO,
    )
    args = ["--set", f"root_dir={synthetic_root}", "--set", "num_data_workers=0"]
    proc = subprocess.run(
        ["bash", os.path.join(REPO, "test.sh"), *args, "--save_forecasts"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = xr.open_zarr(scored / "results" / "forecasts.zarr")
    with xr.open_zarr(out / "forecasts.zarr") as two:
        assert two.time.values.tolist() == one.time.values.tolist()
        for name in one.data_vars:
            assert not np.isnan(two[name].values).any(), name
            np.testing.assert_array_equal(two[name][:, 0].values, one[name][:, 0].values)
            scale = float(np.abs(one[name].values).max())
            np.testing.assert_allclose(
                two[name].values, one[name].values, rtol=1e-5, atol=1e-6 * scale
            )
