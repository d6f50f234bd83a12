"""The README's first command, end to end, with a very small setting; then re-run, reusing everything."""

import os
import subprocess
import sys

import pytest
from conftest import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quickstart_env(tmp_path, port):
    """The environment of a quickstart run writing everything under ``tmp_path``."""
    return dict(
        os.environ,
        PYTHON=sys.executable,
        DATA_DIR=str(tmp_path / "data"),
        EXP_DIR=str(tmp_path / "exp"),
        RESULTS_DIR=str(tmp_path / "results"),
        MASTER_PORT=port,
    )


@pytest.mark.slow
def test_quickstart_runs_end_to_end_and_reuses_what_exists(tmp_path):
    env = quickstart_env(tmp_path, free_port())
    cmd = [
        "bash",
        os.path.join(REPO, "quickstart.sh"),
        "--set",
        "max_epochs=1",
        "--set",
        "max_steps_per_epoch=2",
    ]
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "writing 32 days of synthetic ERA5" in first.stdout
    assert "RMSE model" in first.stdout and "RMSE persist" in first.stdout
    assert "world size 2" in first.stdout + first.stderr
    for name in ("metrics.csv", "metrics.json", "summary.txt", "rmse_acc.png", "maps.png"):
        assert (tmp_path / "results" / name).is_file(), name
    assert f"plots:         {tmp_path / 'results'}/rmse_acc.png" in first.stdout
    ckpt = tmp_path / "exp" / "tiny" / "0" / "training_checkpoints" / "ckpt.tar"
    mtime = ckpt.stat().st_mtime

    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "reusing synthetic ERA5" in second.stdout
    assert "nothing to do" in second.stdout + second.stderr
    assert ckpt.stat().st_mtime == mtime


def test_quickstart_refuses_an_unknown_format(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, DATA_DIR=str(tmp_path / "data"))
    cmd = ["bash", os.path.join(REPO, "quickstart.sh"), "--format", "zarr"]
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 2 and "--format must be npy or h5, got 'zarr'" in run.stderr
    assert not (tmp_path / "data").exists()


def test_quickstart_format_h5_reaches_every_step(tmp_path):
    """``--format h5`` reaches the generator, train.sh and test.sh, with the h5 defaults (a stub
    interpreter records the commands; the steps themselves are tested on their own)."""
    log = tmp_path / "calls.log"
    stub = tmp_path / "python"
    stub.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n[ "$1" = -c ] && echo 0\nexit 0\n')
    stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("EXP_DIR", "RESULTS_DIR")}
    env.update(PYTHON=str(stub), DATA_DIR=str(tmp_path / "data"))
    cmd = ["bash", os.path.join(REPO, "quickstart.sh"), "--set", "max_epochs=1", "--format=h5"]
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    make, _, train, _, evaluate = log.read_text().splitlines()  # _: the GPU counts
    assert make.startswith("-m tools.make_synthetic_era5") and make.endswith("--format h5")
    assert f"--root_dir {tmp_path / 'data'}" in make
    assert "--exp_dir exp/h5 --set root_dir=" in train
    assert train.endswith("--set data_format=h5 --set max_epochs=1")
    assert "--weights exp/h5/tiny/0/" in evaluate and "--out_dir results/h5/tiny/0" in evaluate
    assert evaluate.endswith("--set data_format=h5 --overwrite")
