"""train.py: run files, resumption, DDP gradients and errors, on the tiny config and synthetic data."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import free_port

import train
from networks.vamoe import VAMoE
from utils.training import losses
from utils.training.checkpoint import atomic_save, load_checkpoint
from utils.training.optimizer import build_optimizer, cosine_factor
from utils.YParams import YParams

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_train(root, exp_dir, *overrides, config="tiny", extra=()):
    argv = [
        "--config",
        config,
        "--run_num",
        "0",
        "--exp_dir",
        str(exp_dir),
        "--set",
        f"root_dir={root}",
        "--set",
        "num_data_workers=0",
        *extra,
    ]
    for item in overrides:
        argv += ["--set", item]
    train.main(argv)
    return os.path.join(str(exp_dir), config, "0")


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_training_writes_run_files_and_loss_falls(synthetic_root, tmp_path):
    run_dir = run_train(
        synthetic_root, tmp_path, "max_epochs=3", "snapshot_every_epochs=1", "keep_snapshots=2"
    )
    ckpt_dir = os.path.join(run_dir, "training_checkpoints")
    for name in ("out.log", "hyperparams.yaml", "metrics.jsonl"):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    assert sorted(os.listdir(ckpt_dir)) == [
        "best_ckpt.tar",
        "ckpt.tar",
        "ckpt_epoch2.tar",
        "ckpt_epoch3.tar",
        "ckpt_prev.tar",
    ]
    records = read_metrics(run_dir)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for key in ("train_loss", "valid_loss", "lr", "samples_per_s", "epoch_time_s"):
        assert all(isinstance(r[key], float) for r in records), key
    assert set(records[0]["valid_rmse"]) == {
        "z500",
        "t850",
        "t2m",
        "u10",
        "q500",
        "u500",
        "v500",
        "t500",
    }
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert records[-1]["lr"] < records[0]["lr"]
    ckpt = load_checkpoint(os.path.join(ckpt_dir, "ckpt.tar"))
    assert ckpt["epoch"] == 3 and ckpt["step_in_epoch"] == 0
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "scaler", "rng", "global_step"}
    log = open(os.path.join(run_dir, "out.log")).read()
    assert "trainable" in log and "world size 1" in log
    hyper = YParams(os.path.join(run_dir, "hyperparams.yaml"), "tiny")
    assert hyper.max_epochs == 3 and hyper.root_dir == synthetic_root

    # Running the same command again resumes: nothing left to do, files untouched.
    before = os.path.getmtime(os.path.join(ckpt_dir, "ckpt.tar"))
    run_train(
        synthetic_root, tmp_path, "max_epochs=3", "snapshot_every_epochs=1", "keep_snapshots=2"
    )
    assert os.path.getmtime(os.path.join(ckpt_dir, "ckpt.tar")) == before
    assert len(read_metrics(run_dir)) == 3


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(
    synthetic_root, tmp_path, monkeypatch, capsys
):
    settings = ("max_epochs=2", "checkpoint_every_steps=4")
    run_train(synthetic_root, tmp_path, "max_epochs=1", "checkpoint_every_steps=4")
    ckpt_path = os.path.join(tmp_path, "tiny", "0", "training_checkpoints", "ckpt.tar")
    before = load_checkpoint(ckpt_path)
    original = losses.rollout_loss

    def nan_loss(stepper, inp, tar):
        loss, terms, forecasts = original(stepper, inp, tar)
        return loss * float("nan"), terms, forecasts

    monkeypatch.setattr(losses, "rollout_loss", nan_loss)
    with pytest.raises(SystemExit) as exit_info:
        run_train(synthetic_root, tmp_path, *settings)
    assert exit_info.value.code == 2
    assert "non-finite training loss nan at epoch 2, step 0" in capsys.readouterr().err
    after = load_checkpoint(ckpt_path)
    assert after["global_step"] == before["global_step"]
    for name, value in before["model"].items():
        assert torch.equal(after["model"][name], value), name


def test_ddp_gradients_equal_single_process_gradients(tmp_path):
    torch.manual_seed(1)
    batch = {"x": torch.randn(4, 20, 32, 64), "y": torch.randn(4, 20, 32, 64)}
    torch.save(batch, tmp_path / "batch.pt")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        free_port(),
        os.path.join(REPO, "tests", "ddp_grad_worker.py"),
        str(tmp_path / "batch.pt"),
        str(tmp_path / "grads.pt"),
    ]
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    subprocess.run(cmd, check=True, cwd=REPO, env=env, timeout=300)
    ddp_grads = torch.load(tmp_path / "grads.pt", weights_only=True)

    torch.manual_seed(0)
    model = VAMoE.from_params(YParams(os.path.join(REPO, "config", "vamoe.yaml"), "tiny"))
    model(batch["x"], batch["y"]).loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(ddp_grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
def test_torchrun_two_ranks_trains_validates_and_checkpoints(synthetic_root, tmp_path):
    env = dict(
        os.environ,
        PYTHONPATH=REPO,
        CONFIG="tiny",
        EXP_DIR=str(tmp_path),
        CPU_RANKS="2",
        MASTER_PORT=free_port(),
        PYTHON=sys.executable,
    )
    cmd = [
        "bash",
        os.path.join(REPO, "train.sh"),
        "--set",
        f"root_dir={synthetic_root}",
        "--set",
        "max_epochs=2",
        "--set",
        "num_data_workers=0",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = os.path.join(tmp_path, "tiny", "0")
    records = read_metrics(run_dir)
    assert [r["epoch"] for r in records] == [1, 2]
    assert "world size 2" in open(os.path.join(run_dir, "out.log")).read()
    assert os.path.isfile(os.path.join(run_dir, "training_checkpoints", "best_ckpt.tar"))
    # Each rank sees half of the global batch: 95 training samples // 8 = 11 steps either way.
    assert records[-1]["global_step"] == 2 * 11


def test_set_errors_and_typing(synthetic_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_train(synthetic_root, tmp_path, "max_epoch=3")
    assert exit_info.value.code == 2
    assert "unknown config key 'max_epoch'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_train(synthetic_root, tmp_path, "num_heads=5")
    assert "'num_heads'" in capsys.readouterr().err


def test_missing_file_stops_training_with_its_name(synthetic_root, tmp_path, capsys):
    root = tmp_path / "era5"
    shutil.copytree(synthetic_root, root)
    victim = os.path.join(root, "2020", "2020-01-05", "06:00:00-t-500.0.npy")
    os.remove(victim)
    with pytest.raises(SystemExit) as exit_info:
        run_train(root, tmp_path / "exp", "max_epochs=1")
    assert exit_info.value.code == 2
    assert victim in capsys.readouterr().err
    assert not os.path.exists(
        os.path.join(tmp_path, "exp", "tiny", "0", "training_checkpoints", "ckpt.tar")
    )


def test_bf16_autocast_and_multistep_finetuning_train(synthetic_root, tmp_path):
    run_dir = run_train(
        synthetic_root,
        tmp_path,
        "max_epochs=1",
        "max_steps_per_epoch=2",
        "t_out_train=2",
        "t_out_valid=2",
        extra=["--enable_amp"],
    )
    record = read_metrics(run_dir)[0]
    assert record["global_step"] == 2 and np.isfinite(record["train_loss"])
    assert set(record["valid_rmse_12h"]) == set(record["valid_rmse"])  # rmse per lead
    assert "amp bf16" in open(os.path.join(run_dir, "out.log")).read()


def test_wandb_logging_offline(synthetic_root, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = run_train(
        synthetic_root, tmp_path, "max_epochs=1", "max_steps_per_epoch=1", "log_to_wandb=true"
    )
    runs = [d for d in os.listdir(os.path.join(run_dir, "wandb")) if d.startswith("offline-run")]
    assert len(runs) == 1


def test_resuming_from_a_checkpoint_of_other_variables_is_refused(synthetic_root, tmp_path, capsys):
    params = YParams(os.path.join(REPO, "config", "vamoe.yaml"), "tiny_initial")
    path = str(tmp_path / "other.tar")
    atomic_save(
        {"model": VAMoE.from_params(params).state_dict(), "channel_names": params.layout.names},
        path,
    )
    with pytest.raises(SystemExit):
        run_train(synthetic_root, tmp_path / "exp", "max_epochs=1", extra=["--checkpoint", path])
    err = capsys.readouterr().err
    assert "other.tar" in err and "trained on channels" in err


def test_cosine_schedule_is_closed_form_and_holds_at_the_end():
    factor = cosine_factor(1e-3, 1e-5, 100)
    values = [factor(s) * 1e-3 for s in range(0, 130)]
    assert values[0] == pytest.approx(1e-3) and values[50] == pytest.approx((1e-3 + 1e-5) / 2)
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))  # never climbs back up
    assert values[100] == values[129] == pytest.approx(1e-5)


def test_resuming_from_a_weights_only_checkpoint_is_explained(synthetic_root, tmp_path, capsys):
    run_dir = run_train(synthetic_root, tmp_path, "max_epochs=1", "max_steps_per_epoch=1")
    best = os.path.join(run_dir, "training_checkpoints", "best_ckpt.tar")
    assert oct(os.stat(best).st_mode & 0o777) == oct(0o666 & ~_umask())
    with pytest.raises(SystemExit):
        run_train(synthetic_root, tmp_path / "other", "max_epochs=2", extra=["--checkpoint", best])
    assert "weights-only" in capsys.readouterr().err


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("decay_all", [False, True])
def test_weight_decay_of_vectors_follows_weight_decay_all(decay_all):
    params = YParams(
        os.path.join(REPO, "config", "vamoe.yaml"),
        "tiny",
        ["weight_decay=0.01", f"weight_decay_all={decay_all}"],
    )
    model = VAMoE.from_params(params)
    optimizer = build_optimizer(model, params)
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decay[id(model.blocks[0].attn.qkv.weight)] == 0.01
    assert decay[id(model.blocks[0].attn.qkv.bias)] == (0.01 if decay_all else 0.0)
    assert decay[id(model.forecast_loss.log_var)] == (0.01 if decay_all else 0.0)
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.95)  # tiny keeps its fast betas
