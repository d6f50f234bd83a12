"""The parts of a training, each on its own (tiny config, synthetic data, one process): the
training loop, validation, the training state and its resume, the write points, the run
directory, the model set-up of an incremental stage, the data and the log."""

import json
import logging
import os
import re

import numpy as np
import pytest
import torch
from conftest import make_params

import utils.atomic_io
from networks.vamoe import VAMoE
from utils.distributed import DistInfo
from utils.errors import CheckpointError, ConfigError, NonFiniteLossError
from utils.run_lock import RunLockedError
from utils.training import losses
from utils.training.checkpoint import atomic_save, load_checkpoint
from utils.training.checkpoint_writes import (
    BEST_KEYS,
    write_epoch_end,
    write_metrics_line,
    write_step_checkpoint,
)
from utils.training.model_setup import build_model, load_starting_weights, wrap_model
from utils.training.preemption import Preempted, stop_requested_on_any_rank
from utils.training.resume import changed_settings, find_resume_checkpoint, record_changed_settings
from utils.training.run_directory import RunFiles, claim_run_directory, run_directory
from utils.training.training_data import TrainingData, load_training_data
from utils.training.training_log import WandbRun, flatten, log_epoch
from utils.training.training_loop import TrainingLoop
from utils.training.training_state import Progress, build_training_state
from utils.training.validation import Validation

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
SMALL = ("num_data_workers=0", "depth=1", "embed_dim=32", "check_data_values=false")


class _Stop:
    """Stands for StopSignals after a signal arrived."""

    requested, name = True, "SIGTERM"


def _params(root, *overrides, name="tiny"):
    return make_params(root, name, [*SMALL, *overrides])


def _parts(root, tmp_path, *overrides, stop=None):
    """``(params, data, state, files, loop)`` of a fresh tiny run in ``tmp_path``."""
    params = _params(root, *overrides)
    torch.manual_seed(params.seed)
    data = load_training_data(params, distributed=False)
    model = build_model(params, data.train_set.lat, CPU.device)
    state = build_training_state(
        wrap_model(model, params, CPU), params, data.steps_per_epoch, None, 1
    )
    files = RunFiles(str(tmp_path / "run"))
    loop = TrainingLoop(state, data, files, params, CPU, None, stop)
    return params, data, state, files, loop


# ------------------------------------------------------------------ training loop
def test_an_epoch_takes_its_steps_and_checkpoints_on_its_cadence(synthetic_root, tmp_path):
    _, _, state, files, loop = _parts(
        synthetic_root, tmp_path, "max_steps_per_epoch=3", "checkpoint_every_steps=2"
    )
    before = {n: p.detach().clone() for n, p in state.model.named_parameters()}
    stats = loop.run_epoch(0)
    assert state.progress.global_step == 3 and state.progress.epoch_sums["steps"] == 3
    assert stats["train_loss"] == pytest.approx(state.progress.epoch_sums["loss"] / 3)
    assert np.isfinite(stats["train_grad_norm"]) and stats["samples_per_s"] > 0
    assert any(not torch.equal(before[n], p) for n, p in state.model.named_parameters())
    # Step 2 of 3 is the only mid-epoch checkpoint (the last step is left to the epoch's end).
    ckpt = load_checkpoint(files.ckpt)
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]) == (0, 2, 2)
    assert not os.path.exists(files.prev)


def test_a_stop_signal_writes_ckpt_after_the_step_and_raises_preempted(synthetic_root, tmp_path):
    _, _, state, files, loop = _parts(
        synthetic_root, tmp_path, "max_steps_per_epoch=3", stop=_Stop()
    )
    with pytest.raises(Preempted):
        loop.run_epoch(0)
    ckpt = load_checkpoint(files.ckpt)
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]) == (0, 1, 1)
    assert state.progress.global_step == 1


def test_a_non_finite_loss_names_epoch_and_step(synthetic_root, tmp_path, monkeypatch):
    _, _, state, files, loop = _parts(synthetic_root, tmp_path, "max_steps_per_epoch=2")
    original = losses.rollout_loss

    def nan_loss(stepper, inp, tar):
        loss, terms, forecasts = original(stepper, inp, tar)
        return loss * float("inf"), terms, forecasts

    monkeypatch.setattr(losses, "rollout_loss", nan_loss)
    with pytest.raises(NonFiniteLossError, match="non-finite training loss inf at epoch 1, step 0"):
        loop.run_epoch(0)
    assert not os.path.exists(files.ckpt)


def test_a_resumed_epoch_repeats_the_uninterrupted_one(synthetic_root, tmp_path):
    """Two steps straight equal one step, a save, a restore into fresh parts and one step."""
    overrides = ("max_steps_per_epoch=2", "drop_path=0.2")
    _, _, full, _, loop = _parts(synthetic_root, tmp_path / "a", *overrides)
    loop.run_epoch(0)

    _, _, first, files, loop = _parts(synthetic_root, tmp_path / "b", *overrides, stop=_Stop())
    with pytest.raises(Preempted):
        loop.run_epoch(0)
    _, _, second, _, loop = _parts(synthetic_root, tmp_path / "b", *overrides)
    ckpt = load_checkpoint(files.ckpt)
    second.model.load_state_dict(ckpt["model"])
    second.restore(ckpt, files.ckpt)
    loop.run_epoch(0)
    assert second.progress.global_step == full.progress.global_step == 2
    for (name, a), b in zip(
        full.model.state_dict().items(), second.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


# ------------------------------------------------------------------ validation
def _area_weights(lat_deg):
    """Cell areas of rows at ``lat_deg`` (edges half-way between rows), normalised to mean 1."""
    lat = np.asarray(lat_deg, dtype=np.float64)
    edges = np.concatenate(
        [
            [lat[0] - (lat[1] - lat[0]) / 2],
            (lat[:-1] + lat[1:]) / 2,
            [lat[-1] + (lat[-1] - lat[-2]) / 2],
        ]
    )
    area = np.abs(np.diff(np.sin(np.deg2rad(np.clip(edges, -90, 90)))))
    return area / area.mean()


def test_validation_rmse_equals_a_numpy_computation_on_the_same_batches(synthetic_root):
    overrides = ("t_out_valid=2", "max_valid_steps=2", "valid_batch_size=2", "lead_time=6")
    params = _params(synthetic_root, *overrides)
    data = load_training_data(params, distributed=False)
    model = build_model(params, data.train_set.lat, CPU.device)
    mean, std = data.train_set.mean, data.train_set.std
    result = Validation(data.valid_loader, params, data.train_set.lat, mean, std, CPU.device).run(
        model
    )

    w = _area_weights(data.train_set.lat)[:, None]  # (H, 1)
    mean = np.asarray(mean, np.float64)[None, :, None, None]
    std = np.asarray(std, np.float64)[None, :, None, None]
    mse_sum, count, batch_losses = np.zeros((2, params.layout.n_channels)), 0, []
    with torch.no_grad():
        for i, (inp, tar, _) in enumerate(data.valid_loader):
            if i == 2:
                break
            x, loss = inp, 0.0
            for k in range(2):
                out = model(x, tar[:, k])
                x, loss = out.forecast.float(), loss + out.loss.item()
                pred = x.double().numpy() * std + mean
                truth = tar[:, k].double().numpy() * std + mean
                mse_sum[k] += (w * (pred - truth) ** 2).mean(axis=(2, 3)).sum(axis=0)
            count += inp.shape[0]
            batch_losses.append(loss / 2)
    rmse = np.sqrt(mse_sum / count)  # (T, C)

    assert result["valid_samples"] == count == 4  # 2 batches of 2 of the 5 validation samples
    assert result["valid_loss"] == pytest.approx(np.mean(batch_losses), rel=1e-5)
    names = [n for n in params.headline_variables if n in params.layout.names]
    assert set(result["valid_rmse"]) == set(result["valid_rmse_12h"]) == set(names)
    for k, key in enumerate(("valid_rmse", "valid_rmse_12h")):
        for name in names:
            expected = rmse[k, params.layout.index_of_name(name)]
            assert result[key][name] == pytest.approx(expected, rel=1e-9), (key, name)


# ------------------------------------------------------------------ training state and resume
def test_the_training_state_round_trips_through_a_checkpoint_file(synthetic_root, tmp_path):
    _, _, state, files, loop = _parts(synthetic_root, tmp_path, "max_steps_per_epoch=2")
    loop.run_epoch(0)
    state.progress.best_valid_loss = 0.5
    write_step_checkpoint(state, files, True, 3, 1)
    expected_draw = torch.rand(4)

    _, _, fresh, _, _ = _parts(synthetic_root, tmp_path / "fresh", "max_steps_per_epoch=2")
    ckpt = load_checkpoint(files.ckpt)
    fresh.restore(ckpt, files.ckpt)
    assert fresh.progress == Progress(3, 1, 2, 0.5, state.progress.epoch_sums)
    assert fresh.scheduler.state_dict() == state.scheduler.state_dict()
    assert fresh.scheduler.get_last_lr() == state.scheduler.get_last_lr()
    saved, restored = state.optimizer.state_dict(), fresh.optimizer.state_dict()
    assert saved["param_groups"] == restored["param_groups"]
    for index, moments in saved["state"].items():
        for key, value in moments.items():
            assert torch.equal(value, restored["state"][index][key]), (index, key)
    assert torch.equal(torch.rand(4), expected_draw)  # the RNG continues where it was saved
    assert ckpt["channel_names"] == state.params.layout.names and ckpt["world_size"] == 1


def test_a_weights_only_checkpoint_is_refused_for_resuming(synthetic_root, tmp_path):
    _, _, state, files, _ = _parts(synthetic_root, tmp_path)
    ckpt = state.checkpoint(1, 0)
    with pytest.raises(CheckpointError, match="weights-only"):
        state.restore({k: ckpt[k] for k in BEST_KEYS}, files.best)


def test_resume_prefers_the_given_checkpoint_then_ckpt_then_ckpt_prev(tmp_path, caplog):
    files = RunFiles(str(tmp_path))
    assert find_resume_checkpoint(None, files) == (None, None)
    for path, epoch in ((files.prev, 1), (str(tmp_path / "other.tar"), 7)):
        atomic_save({"model": {}, "epoch": epoch}, path)
    assert find_resume_checkpoint(None, files)[0]["epoch"] == 1  # no ckpt.tar: the previous one
    with open(files.ckpt, "wb") as f:
        f.write(b"torn")
    with caplog.at_level(logging.WARNING, logger="vamoe"):
        ckpt, path = find_resume_checkpoint(None, files)
    assert (ckpt["epoch"], path) == (1, files.prev) and "falling back" in caplog.text
    ckpt, path = find_resume_checkpoint(str(tmp_path / "other.tar"), files)
    assert (ckpt["epoch"], path) == (7, str(tmp_path / "other.tar"))


def test_changed_settings_are_listed_and_appended(synthetic_root, tmp_path):
    params = _params(synthetic_root)
    saved = {"params": {**json.loads(json.dumps(params.to_dict())), "lr": 1.0}, "world_size": 2}
    changes = changed_settings(saved, params, world_size=1)
    assert changes == {"lr": [1.0, params.lr], "world_size": [2, 1]}
    assert changed_settings({"model": {}}, params, 1) == {}  # written before settings were kept
    files = RunFiles(str(tmp_path))
    for step in (3, 5):
        record_changed_settings(changes, files, Progress(start_epoch=1, start_step=step), True)
    record_changed_settings({}, files, Progress(), True)
    with open(files.config_changes) as f:
        lines = [json.loads(ln) for ln in f]
    assert [(ln["epoch"], ln["step_in_epoch"]) for ln in lines] == [(1, 3), (1, 5)]
    assert lines[0]["changes"] == changes


# ------------------------------------------------------------------ write points
def test_the_epoch_end_writes_come_in_their_commit_order(synthetic_root, tmp_path, monkeypatch):
    _, _, state, files, _ = _parts(
        synthetic_root, tmp_path, "snapshot_every_epochs=2", "keep_snapshots=1"
    )
    atomic_save({"model": {}}, files.snapshot(2))
    atomic_save({"model": {}}, files.ckpt)
    replace, written = os.replace, []

    def recording_replace(src, dst):
        written.append(os.path.basename(dst))
        return replace(src, dst)

    monkeypatch.setattr(utils.atomic_io.os, "replace", recording_replace)
    write_epoch_end(state, files, False, 3, True, {"epoch": 4})  # not rank 0: nothing
    assert written == []
    write_epoch_end(state, files, True, 3, True, {"epoch": 4, "valid_loss": 1.0})
    assert written == [
        "best_ckpt.tar",
        "metrics.jsonl",
        "ckpt_epoch4.tar",
        "ckpt_prev.tar",
        "ckpt.tar",
    ]
    assert files.snapshots() == [files.snapshot(4)]  # the older one removed
    assert set(load_checkpoint(files.best)) == set(BEST_KEYS)
    ckpt = load_checkpoint(files.ckpt)
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (4, 0)

    written.clear()
    write_epoch_end(state, files, True, 4, False, {"epoch": 5})  # no improvement, no snapshot
    assert written == ["metrics.jsonl", "ckpt_prev.tar", "ckpt.tar"]


def test_a_redone_epoch_replaces_its_metrics_line_and_later_ones(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    for epoch in (1, 2, 3):
        write_metrics_line(path, {"epoch": epoch, "loss": epoch})
    write_metrics_line(path, {"epoch": 2, "loss": 20})
    with open(path) as f:
        assert [json.loads(ln) for ln in f] == [{"epoch": 1, "loss": 1}, {"epoch": 2, "loss": 20}]


# ------------------------------------------------------------------ run directory
def test_the_run_directory_is_claimed_once_and_lists_snapshots_by_epoch(tmp_path):
    run_dir = run_directory(str(tmp_path), "tiny", 3)
    assert run_dir == os.path.join(str(tmp_path), "tiny", "3")
    lock = claim_run_directory(run_dir, CPU)
    try:
        files = RunFiles(run_dir)
        assert os.path.isdir(files.ckpt_dir) and os.path.exists(os.path.join(run_dir, ".lock"))
        with pytest.raises(RunLockedError):
            claim_run_directory(run_dir, CPU)
        for epoch in (10, 9, 100):
            open(files.snapshot(epoch), "wb").close()
        assert [os.path.basename(p) for p in files.snapshots()] == [
            "ckpt_epoch9.tar",
            "ckpt_epoch10.tar",
            "ckpt_epoch100.tar",
        ]
    finally:
        lock.release()


# ------------------------------------------------------------------ model set-up
def test_an_incremental_stage_loads_the_initial_one_and_freezes_exactly_the_patterns(
    synthetic_root, tmp_path, caplog
):
    initial = _params(synthetic_root, name="tiny_initial")
    old = VAMoE.from_params(initial)
    path = str(tmp_path / "initial.tar")
    atomic_save({"model": old.state_dict(), "channel_names": initial.layout.names}, path)
    params = _params(synthetic_root, f"cl_ckpt_path={path}", name="tiny_incremental")
    model = build_model(params, None, CPU.device)
    with caplog.at_level(logging.INFO, logger="vamoe"):
        frozen = load_starting_weights(model, params, None, None)

    groups = params.layout.group_names
    old_experts = "|".join(str(groups.index(g)) for g in initial.layout.group_names)
    pattern = re.compile(
        rf"blocks\.\d+\.(norm1|norm2|attn|ffn\.shared_expert|ffn\.experts\.({old_experts}))\..+"
    )
    expected = {n for n, _ in model.named_parameters() if pattern.fullmatch(n)}
    assert expected and set(frozen) == expected
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == expected
    new_state, old_state = model.state_dict(), old.state_dict()
    for name in frozen:
        if "experts" not in name:
            assert torch.equal(new_state[name], old_state[name]), name
    assert f"incremental stage: grew {path} onto {params.layout.n_channels} channels" in caplog.text
    assert "newly initialised" in caplog.text


def test_resumed_weights_win_and_other_channels_are_refused(synthetic_root):
    params = _params(synthetic_root)
    source = build_model(params, None, CPU.device)
    model = build_model(params, None, CPU.device)
    resume = {"model": source.state_dict(), "channel_names": params.layout.names}
    assert load_starting_weights(model, params, resume, "ckpt.tar") == []  # tiny freezes nothing
    for name, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    with pytest.raises(ConfigError, match="trained on channels"):
        load_starting_weights(model, params, {**resume, "channel_names": ["z500"]}, "x.tar")


# ------------------------------------------------------------------ data, stop, log
def test_steps_per_epoch_follow_the_cap_and_an_empty_epoch_is_refused(synthetic_root):
    data = load_training_data(_params(synthetic_root), distributed=False)
    assert data.steps_per_epoch == len(data.train_loader) == 95 // 8
    capped = TrainingData(data.train_loader, data.train_set, None, None, None, 4)
    assert capped.steps_per_epoch == 4
    params = _params(synthetic_root, "batch_size=1000", "valid_batch_size=8")
    with pytest.raises(ConfigError, match=r"'batch_size' \(1000\) exceeds the 95 training"):
        load_training_data(params, distributed=False).require_a_step(params)


def test_a_stop_is_seen_only_when_a_signal_arrived():
    assert stop_requested_on_any_rank(_Stop(), "cpu")
    assert not stop_requested_on_any_rank(None, "cpu")


def test_the_epoch_line_and_the_wandb_record(synthetic_root, caplog):
    params = _params(synthetic_root, "max_epochs=5")
    record = {
        "epoch": 2,
        "train_loss": 0.5,
        "valid_loss": 0.25,
        "samples_per_s": 12.0,
        "epoch_time_s": 3.0,
        "lr": 1e-3,
        "valid_rmse": {"z500": 123.456},
    }
    with caplog.at_level(logging.INFO, logger="vamoe"):
        log_epoch(params, record, improved=True)
    assert (
        "epoch 2/5 | train loss 0.50000 | valid loss 0.25000 (best) | 12.0 samples/s | 3.0 s | "
        "lr 1.00e-03 | rmse(6 h): z500 123.5"
    ) in caplog.text
    assert flatten({"a": 1, "b": {"c": 2, "d": {"e": 3}}}) == {"a": 1, "b/c": 2, "b/d/e": 3}
    disabled = WandbRun.open(params, 0, "unused", CPU)  # log_to_wandb is off
    assert disabled.run is None
    disabled.log(record, step=1)
    disabled.finish()
