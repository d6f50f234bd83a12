"""inference.py / test.sh (torchrun, two CPU ranks): result files, baselines, checkpoint checks,
and skill on synthetic data."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import free_port

import train
from networks.vamoe import VAMoE
from utils.training.checkpoint import atomic_save, load_model
from utils.YParams import ConfigError, YParams

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "config", "vamoe.yaml")


@pytest.fixture(scope="module")
def trained_tiny(synthetic_root, tmp_path_factory):
    """The tiny model trained with its default settings (12 epochs) on the synthetic set."""
    exp = tmp_path_factory.mktemp("exp")
    train.main(
        [
            "--config",
            "tiny",
            "--exp_dir",
            str(exp),
            "--set",
            f"root_dir={synthetic_root}",
            "--set",
            "num_data_workers=0",
        ]
    )
    return os.path.join(str(exp), "tiny", "0", "training_checkpoints", "best_ckpt.tar")


def test_test_sh_writes_results_and_model_beats_persistence(trained_tiny, synthetic_root, tmp_path):
    out = tmp_path / "results"
    env = dict(
        os.environ,
        CONFIG="tiny",
        WEIGHTS=trained_tiny,
        OUT_DIR=str(out),
        PYTHON=sys.executable,
        MASTER_PORT=str(free_port()),
    )
    proc = subprocess.run(
        [
            "bash",
            os.path.join(REPO, "test.sh"),
            "--set",
            f"root_dir={synthetic_root}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RMSE model" in proc.stdout and "z500" in proc.stdout

    params = YParams(CONFIG, "tiny", [f"root_dir={synthetic_root}"])
    n_ch, n_lead = params.layout.n_channels, params.t_out_test + 1
    rmse = np.load(out / "denormalized_lat_weight_rmse.npy")
    acc = np.load(out / "lat_weight_acc.npy")
    persistence = np.load(out / "persistence_lat_weight_rmse.npy")
    assert rmse.shape == acc.shape == persistence.shape == (n_ch, n_lead)
    np.testing.assert_array_equal(np.load(out / "lead_hours.npy"), np.arange(n_lead) * 6)
    assert np.all(persistence[:, 0] == 0)  # lead 0 is the initial state itself
    for name in ("z500", "t850", "u500", "q500"):
        c = params.layout.index_of_name(name)
        assert rmse[c, 1] < persistence[c, 1], name  # skill at 6 h
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "forecaster",
        "variable",
        "level",
        "lead_hours",
        "rmse",
        "acc",
        "rmse_ic_mean",
    ]
    assert all(
        float(r["rmse_ic_mean"]) <= float(r["rmse"]) * (1 + 1e-9)
        for r in rows
        if r["rmse"] != "nan"
    )
    assert {r["forecaster"] for r in rows} == {"model", "persistence", "climatology"}
    assert len([r for r in rows if r["forecaster"] == "model"]) == n_ch * n_lead
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_ics"] == 4
    for name in ("rmse_acc.png", "maps.png", "summary.txt"):
        assert (out / name).stat().st_size > 0, name


def test_checkpoint_written_by_ddp_loads(trained_tiny, tmp_path):
    ckpt = torch.load(trained_tiny, weights_only=True)
    ckpt["model"] = {f"module.{k}": v for k, v in ckpt["model"].items()}
    path = str(tmp_path / "ddp.tar")
    atomic_save(ckpt, path)
    params = YParams(CONFIG, "tiny")
    model = load_model(params, path, torch.device("cpu"))
    reference = VAMoE.from_params(params)
    reference.load_state_dict(torch.load(trained_tiny, weights_only=True)["model"])
    x = torch.randn(1, 20, 32, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x).forecast, reference.eval()(x).forecast)


def test_checkpoint_of_other_variables_is_refused(trained_tiny):
    with pytest.raises(ConfigError, match="trained on channels"):
        load_model(YParams(CONFIG, "tiny_initial"), trained_tiny, torch.device("cpu"))


def test_checkpoint_that_can_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = str(tmp_path / "evil.tar")
    torch.save({"model": {}, "payload": Evil()}, path)
    with pytest.raises(RuntimeError, match="evil.tar"):
        load_model(YParams(CONFIG, "tiny"), path, torch.device("cpu"))
