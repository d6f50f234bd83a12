"""inference.py --compare NAME=PATH: forecast files scored beside the model, with and without a
checkpoint; and the evaluation on two torchrun ranks, which must give the metrics of one."""

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import FAST_EVALUATION, free_port, make_params
from forecast_files import write_forecast

import inference
from networks.vamoe import VAMoE
from utils.data.dataset import ERA5Dataset
from utils.times import format_hours
from utils.training.checkpoint import atomic_save

pytest.importorskip("xarray")
pytest.importorskip("zarr")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = FAST_EVALUATION


@pytest.fixture(scope="module")
def params(synthetic_root):
    return make_params(synthetic_root, "tiny", FAST)


@pytest.fixture(scope="module")
def weights(params, tmp_path_factory):
    """An untrained checkpoint of the small network (the numbers, not the skill, are tested)."""
    path = str(tmp_path_factory.mktemp("weights") / "ckpt.tar")
    model = VAMoE.from_params(params)
    atomic_save({"model": model.state_dict(), "channel_names": params.layout.names}, path)
    return path


def initial_states(params):
    """``(times, states (N, C, H, W) float64)``: the test initial conditions in physical units as
    the evaluation computes them (the normalised float32 input times std plus mean, float64)."""
    dataset = ERA5Dataset(params, "test")
    mean, std = (
        np.asarray(a, dtype=np.float64)[:, None, None] for a in (dataset.mean, dataset.std)
    )
    items = [dataset[i] for i in range(len(dataset))]
    states = np.stack([inp.numpy().astype(np.float64) * std + mean for inp, _, _ in items])
    return [t for _, _, t in items], states, dataset


@pytest.fixture(scope="module")
def persistence_file(params, tmp_path_factory):
    """The persistence forecast of every test initial condition in the WeatherBench 2 layout."""
    return _persistence_file(params, tmp_path_factory.mktemp("forecasts") / "persistence.zarr")


def _persistence_file(params, path, edit=None) -> str:
    times, states, dataset = initial_states(params)
    leads = np.arange(params.t_out_test + 1) * params.lead_time
    states = np.repeat(states[:, None], len(leads), axis=1)
    return write_forecast(path, states, params.layout, dataset.lat, dataset.lon, times, leads, edit)


def run_inference(root, out_dir, *args):
    argv = ["--config", "tiny", "--out_dir", str(out_dir), *args]
    for item in (f"root_dir={root}", *FAST):
        argv += ["--set", item]
    inference.main(argv)


def read_csv(out_dir) -> dict:
    """``{(forecaster, variable, level, lead_hours): (rmse, acc, rmse_ic_mean)}``."""
    with open(os.path.join(out_dir, "metrics.csv")) as f:
        return {
            (r["forecaster"], r["variable"], r["level"], r["lead_hours"]): tuple(
                float(r[k]) for k in ("rmse", "acc", "rmse_ic_mean")
            )
            for r in csv.DictReader(f)
        }


def rows_of(table: dict, forecaster: str) -> dict:
    return {key[1:]: values for key, values in table.items() if key[0] == forecaster}


def assert_rows_close(got: dict, want: dict, rtol: float) -> None:
    assert got.keys() == want.keys()
    for key, values in want.items():
        for a, b in zip(got[key], values, strict=True):
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=rtol, abs=0), key


def test_a_persistence_file_is_scored_as_persistence_with_and_without_weights(
    synthetic_root, weights, persistence_file, tmp_path
):
    with_model, files_only = tmp_path / "with_model", tmp_path / "files_only"
    compare = ["--compare", f"persist_file={persistence_file}"]
    run_inference(synthetic_root, with_model, "--weights", weights, *compare)
    run_inference(synthetic_root, files_only, *compare)

    scored = read_csv(with_model)
    assert {key[0] for key in scored} == {"model", "persistence", "climatology", "persist_file"}
    assert_rows_close(rows_of(scored, "persist_file"), rows_of(scored, "persistence"), 1e-12)
    alone = read_csv(files_only)
    assert {key[0] for key in alone} == {"persistence", "climatology", "persist_file"}
    assert_rows_close(alone, {k: v for k, v in scored.items() if k[0] != "model"}, rtol=0)

    metrics = json.loads((with_model / "metrics.json").read_text())
    assert metrics["compared"] == {"persist_file": os.path.abspath(persistence_file)}
    assert list(metrics["forecasters"])[-1] == "persist_file"
    assert json.loads((files_only / "metrics.json").read_text())["weights"] is None
    summary = (with_model / "summary.txt").read_text()
    assert f"compared: persist_file = {persistence_file}" in summary
    assert "RMSE persist_file" in summary and "ACC persist_file" in summary
    assert "forecast files only" in (files_only / "summary.txt").read_text()
    for out in (with_model, files_only):
        assert (out / "rmse_acc.png").stat().st_size > 0 and (out / "maps.png").stat().st_size > 0
        assert np.load(out / "persist_file_lat_weight_rmse.npy").shape == (20, 3)


def test_a_file_lacking_a_variable_a_lead_and_a_start_is_scored_on_the_rest(
    synthetic_root, params, tmp_path
):
    times = initial_states(params)[0]
    gone = times[2]

    def lacking(ds):
        ds = ds.drop_sel(time=np.datetime64(gone, "h")).drop_vars("2m_temperature")
        return ds.isel(prediction_timedelta=[0, 1])

    path = _persistence_file(params, tmp_path / "partial.nc", lacking)
    out = tmp_path / "results"
    run_inference(synthetic_root, out, "--compare", f"partial={path}")
    notes = [
        f"partial: {path} lacks 1 of the {len(times)} initial times ({format_hours(gone)}): "
        f"scored on the other {len(times) - 1}",
        f"partial: {path} lacks the leads 12 h: no scores there (NaN)",
        f"partial: {path} lacks t2m: no scores for them (NaN)",
    ]
    assert all(n in json.loads((out / "metrics.json").read_text())["notes"] for n in notes)
    summary = (out / "summary.txt").read_text()
    assert all(f"  {n}\n" in summary for n in notes)
    rows = rows_of(read_csv(out), "partial")
    assert all(math.isnan(rows[("t2m", "", "6")][i]) for i in range(3))  # NaN, not zero
    assert all(math.isnan(v) for key, row in rows.items() if key[2] == "12" for v in row)
    assert rows[("z", "500", "0")][0] == 0.0 and rows[("z", "500", "6")][0] > 0
    # One start fewer: the mean differs from persistence over all of them.
    persistence = rows_of(read_csv(out), "persistence")
    assert rows[("z", "500", "6")][0] != pytest.approx(persistence[("z", "500", "6")][0])


def test_a_forecast_on_another_grid_is_one_line_naming_both_grids(
    synthetic_root, params, tmp_path, capsys
):
    coarse = make_params(synthetic_root, "tiny", (*FAST, "h_size=16", "w_size=32"))
    times = initial_states(params)[0]
    states = np.zeros((len(times), 3, params.layout.n_channels, 16, 32))
    lat = np.linspace(84.375, -84.375, 16)
    lon = np.arange(32) * 11.25
    path = write_forecast(
        tmp_path / "coarse.zarr", states, coarse.layout, lat, lon, times, [0, 6, 12]
    )
    with pytest.raises(SystemExit) as exit_info:
        run_inference(synthetic_root, tmp_path / "out", "--compare", f"coarse={path}")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "on the grid 16 x 32 (latitude 84.375 .. -84.375, longitude 0 .. 348.75)" in err
    assert "the dataset on 32 x 64 (latitude" in err and path in err
    assert not (tmp_path / "out").exists()


def test_nothing_to_score_and_a_bad_name_are_one_line_errors(synthetic_root, tmp_path, capsys):
    for args, message in [
        ((), "nothing to score: give --weights CKPT, --compare NAME=PATH, or both"),
        (("--compare", "model=x.zarr"), "--compare 'model=x.zarr': the name 'model' is reserved"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            run_inference(synthetic_root, tmp_path / "out", *args)
        assert exit_info.value.code == 2
        assert capsys.readouterr().err == f"error: {message}\n"


def _inference_command(root, out_dir, weights, compare_path):
    command = ["inference.py", "--config", "tiny", "--weights", weights, "--out_dir", str(out_dir)]
    command += ["--compare", f"partial={compare_path}"]
    for item in (f"root_dir={root}", *FAST):
        command += ["--set", item]
    return command


def _torchrun(n_ranks: int):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n_ranks)]


@pytest.mark.slow
def test_two_torchrun_ranks_give_the_metrics_of_one_process(
    synthetic_root, params, weights, tmp_path
):
    """Rank r takes the initial conditions r, r + 2, ... (per-rank batch 1 in both runs, so each
    forecast is computed alike); only the order of the float64 sums differs, which moves them by
    a few units in the 16th digit: rtol 1e-12 leaves that room and nothing more (an initial
    condition scored twice or lost, or a float32 difference of the forecasts, is far above)."""
    gone = initial_states(params)[0][1]  # a start of rank 1: the note must reach rank 0
    path = _persistence_file(
        params, tmp_path / "partial.zarr", lambda ds: ds.drop_sel(time=np.datetime64(gone, "h"))
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one, two = tmp_path / "one", tmp_path / "two"
    single = [sys.executable, *_inference_command(synthetic_root, one, weights, path)]
    ranks = _torchrun(2) + ["--master_port", str(free_port())]
    ranks += _inference_command(synthetic_root, two, weights, path)
    for command in (single, ranks):
        proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Latitude-weighted RMSE") == 1  # rank 0 alone prints the summary
    assert "[rank 0] " in proc.stdout and " ranks)" in proc.stdout  # rank-prefixed log lines

    assert_rows_close(read_csv(two), read_csv(one), 1e-12)
    m1, m2 = (json.loads((out / "metrics.json").read_text()) for out in (one, two))
    assert m2["n_ics"] == m1["n_ics"] == 7 and m2["notes"] == m1["notes"]
    assert any(format_hours(gone) in note for note in m2["notes"])
    assert sorted(os.listdir(two)) == sorted(os.listdir(one))
    assert sorted(os.listdir(tmp_path)) == ["one", "partial.zarr", "two"]  # no staging left


@pytest.mark.slow
def test_a_configuration_error_under_torchrun_is_said_once(synthetic_root, weights, tmp_path):
    command = _torchrun(2) + ["--master_port", str(free_port())]
    command += _inference_command(synthetic_root, tmp_path / "out", weights, "x.zarr")
    command[command.index("partial=x.zarr")] = "model=x.zarr"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    said = [ln for ln in proc.stderr.splitlines() if ln.startswith("[rank")]  # not torchrun's
    assert said == ["[rank 0] error: --compare 'model=x.zarr': the name 'model' is reserved"]
