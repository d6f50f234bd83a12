"""Runs that survive a cluster: real kills at every checkpoint write, stop signals, checkpoint
fallback, the run-directory lock, errors on any rank, and the checks on configs and files."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import free_port, make_params, wait_until

import train
from utils.data.dataset import ERA5Dataset
from utils.data.loader import ShardedEpochSampler
from utils.data.npy_layout import channel_paths, read_field
from utils.errors import ConfigError, DataFileError
from utils.fault_injection import KILL_AT
from utils.run_lock import STALE_AFTER_S, RunLock, RunLockedError
from utils.training import losses, training_state
from utils.training.checkpoint import load_checkpoint
from utils.training.preemption import EXIT_PREEMPTED

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A small network and short epochs: every run here takes seconds.
FAST = (
    "depth=1",
    "embed_dim=32",
    "max_epochs=2",
    "max_steps_per_epoch=3",
    "max_valid_steps=1",
    "check_data_values=false",
    "num_data_workers=0",
    "drop_path=0.1",
    "snapshot_every_epochs=1",
    "keep_snapshots=1",
    "checkpoint_every_steps=2",  # mid-epoch checkpoints after global steps 2 and 4
)
TIMING = ("samples_per_s", "epoch_time_s")


def train_args(root, exp_dir, *overrides):
    argv = ["--config", "tiny", "--run_num", "0", "--exp_dir", str(exp_dir)]
    for item in (f"root_dir={root}", *FAST, *overrides):
        argv += ["--set", item]
    return argv


def run_train(root, exp_dir, *overrides):
    """``train.main`` in this process; returns the run directory."""
    train.main(train_args(root, exp_dir, *overrides))
    return os.path.join(str(exp_dir), "tiny", "0")


def train_process(root, exp_dir, kill_at=None):
    """``python train.py`` in a process of its own, killed at the kill point ``kill_at``."""
    env = {k: v for k, v in os.environ.items() if k != KILL_AT}
    if kill_at is not None:
        env[KILL_AT] = kill_at
    cmd = [sys.executable, "train.py", *train_args(root, exp_dir)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def ckpt_dir(run_dir):
    return os.path.join(run_dir, "training_checkpoints")


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(ln).items() if k not in TIMING} for ln in f]


def assert_same_value(a, b, where):
    """``a`` and ``b`` equal: tensors bit for bit, containers item by item."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same_value(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_value(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def assert_same_run(a, b):
    """The run directories ``a`` and ``b`` hold the same files and the same checkpoints (every
    tensor bit for bit: weights, optimiser state, random states) and metrics (timing aside)."""
    assert sorted(os.listdir(a)) == sorted(os.listdir(b))
    assert sorted(os.listdir(ckpt_dir(a))) == sorted(os.listdir(ckpt_dir(b)))
    for name in os.listdir(ckpt_dir(a)):
        x = load_checkpoint(os.path.join(ckpt_dir(a), name))
        y = load_checkpoint(os.path.join(ckpt_dir(b), name))
        assert_same_value(x, y, name)
    assert metrics(a) == metrics(b)


@pytest.fixture(scope="module")
def reference_run(synthetic_root, tmp_path_factory):
    """The uninterrupted run (``python train.py``) the interrupted ones must reproduce."""
    exp_dir = tmp_path_factory.mktemp("reference")
    proc = train_process(synthetic_root, exp_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = os.path.join(str(exp_dir), "tiny", "0")
    assert load_checkpoint(os.path.join(ckpt_dir(run_dir), "best_ckpt.tar"))["epoch"] == 2
    return run_dir


@pytest.mark.parametrize(
    "point",
    [
        "write:ckpt.tar@1",  # the mid-epoch checkpoint of epoch 1: nothing to resume from yet
        "write:ckpt.tar@3",  # the mid-epoch checkpoint of epoch 2
        "write:best_ckpt.tar@2",  # the end of epoch 2, in order:
        "write:metrics.jsonl@2",
        "write:ckpt_epoch2.tar",
        "write:ckpt.tar@4",  # the commit point
    ],
)
def test_a_kill_at_each_checkpoint_write_resumes_to_the_uninterrupted_run(
    synthetic_root, tmp_path, reference_run, point
):
    """``train.py`` SIGKILLed with its temporary file complete and not yet renamed; the same
    command again takes over the dead process's lock, removes the temporary and ends where the
    uninterrupted run ended."""
    killed = train_process(synthetic_root, tmp_path, kill_at=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_dir = os.path.join(str(tmp_path), "tiny", "0")
    target = point.removeprefix("write:").split("@")[0]
    folder = run_dir if target == "metrics.jsonl" else ckpt_dir(run_dir)
    assert [n for n in os.listdir(folder) if n.startswith(f".{target}.")]  # the temporary
    assert os.path.exists(os.path.join(run_dir, ".lock"))

    resumed = train_process(synthetic_root, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    said = resumed.stdout + resumed.stderr
    assert "taking over the stale lock" in said and "removed stale temporary file" in said
    assert_same_run(reference_run, run_dir)


def test_stop_signal_checkpoints_exits_75_and_the_same_command_resumes_identically(
    synthetic_root, tmp_path, monkeypatch, reference_run
):
    original, calls = losses.rollout_loss, {"n": 0}

    def signalled(stepper, inp, tar):
        calls["n"] += 1
        if calls["n"] == 2:  # during the second optimiser step of epoch 1
            os.kill(os.getpid(), signal.SIGTERM)
        return original(stepper, inp, tar)

    monkeypatch.setattr(losses, "rollout_loss", signalled)
    with pytest.raises(SystemExit) as exit_info:
        run_train(synthetic_root, tmp_path)
    assert exit_info.value.code == EXIT_PREEMPTED
    monkeypatch.setattr(losses, "rollout_loss", original)
    run_dir = os.path.join(tmp_path, "tiny", "0")
    stopped = load_checkpoint(os.path.join(ckpt_dir(run_dir), "ckpt.tar"))
    assert (stopped["epoch"], stopped["step_in_epoch"], stopped["global_step"]) == (0, 2, 2)
    assert "stop signal SIGTERM" in open(os.path.join(run_dir, "out.log")).read()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored

    run_train(synthetic_root, tmp_path)
    assert_same_run(reference_run, run_dir)


@pytest.mark.slow
def test_a_stop_signal_on_one_rank_stops_every_rank_after_the_same_step(synthetic_root, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", free_port(), os.path.join(REPO, "tests", "stop_worker.py")]
    cmd += ["--config", "tiny", "--exp_dir", str(tmp_path)]
    for item in (f"root_dir={synthetic_root}", *FAST):
        cmd += ["--set", item]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0  # torchrun reports the ranks' exit code 75 as a failure
    run_dir = os.path.join(tmp_path, "tiny", "0")
    stopped = load_checkpoint(os.path.join(ckpt_dir(run_dir), "ckpt.tar"))
    assert (stopped["epoch"], stopped["step_in_epoch"], stopped["global_step"]) == (0, 2, 2)
    log = open(os.path.join(run_dir, "out.log")).read()
    assert (
        "[rank 1]" in log and "stop signal SIGTERM: checkpoint written after global step 2" in log
    )
    assert "stop signal on another rank: checkpoint written after global step 2" in log
    assert not os.path.exists(os.path.join(run_dir, ".lock"))


def test_unreadable_ckpt_falls_back_to_the_previous_one(synthetic_root, tmp_path, capsys):
    run_dir = run_train(synthetic_root, tmp_path, "max_epochs=1", "checkpoint_every_steps=1")
    path = os.path.join(ckpt_dir(run_dir), "ckpt.tar")
    finished = load_checkpoint(path)
    previous = load_checkpoint(os.path.join(ckpt_dir(run_dir), "ckpt_prev.tar"))
    assert (previous["epoch"], previous["step_in_epoch"]) == (0, 2)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    capsys.readouterr()

    run_train(synthetic_root, tmp_path, "max_epochs=1", "checkpoint_every_steps=1")
    assert "falling back to the previous checkpoint" in capsys.readouterr().out
    redone = load_checkpoint(path)
    for key, value in finished["model"].items():
        assert torch.equal(redone["model"][key], value), key


def test_a_locked_run_directory_is_refused_naming_host_and_pid(synthetic_root, tmp_path, capsys):
    # A live holder until the test kills it (it waits for input that never comes).
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        run_dir = tmp_path / "tiny" / "0"
        os.makedirs(run_dir)
        with open(run_dir / ".lock", "w") as f:
            json.dump({"host": socket.gethostname(), "pid": holder.pid, "start": None}, f)
        with pytest.raises(SystemExit) as exit_info:
            run_train(synthetic_root, tmp_path)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"in use by pid {holder.pid} on host {socket.gethostname()}" in err
        assert "Traceback" not in err
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock(str(run_dir))  # the holder is gone: its lock is taken over
    lock.acquire()
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
        RunLock(str(run_dir)).acquire()
    lock.release()
    assert not os.path.exists(run_dir / ".lock")

    # From another host only the heartbeat tells: a lock not refreshed for long is stale.
    with open(run_dir / ".lock", "w") as f:
        json.dump({"host": "elsewhere", "pid": 1, "start": None}, f)
    with pytest.raises(RunLockedError, match="pid 1 on host elsewhere"):
        RunLock(str(run_dir)).acquire()
    old = os.path.getmtime(run_dir / ".lock") - STALE_AFTER_S - 1
    os.utime(run_dir / ".lock", (old, old))
    lock = RunLock(str(run_dir))
    lock.acquire()
    lock.release()


def _nan_file_read_only_by_rank_1(params):
    """A channel file of the first batch of rank 1 that neither rank 0's first batch nor the
    start-up check (sample 0) reads."""
    dataset = ERA5Dataset(params, "train")
    per_rank = params.batch_size // 2
    first = []
    for rank in (0, 1):
        sampler = ShardedEpochSampler(len(dataset), 2, rank, shuffle=True, seed=params.seed)
        sampler.set_epoch(0)
        first.append(list(sampler)[:per_rank])
    times = [set(np.concatenate(dataset.sample_times(i))) for i in [0, *first[0]]]
    for i in first[1]:
        for t in dataset.sample_times(i)[0]:
            if not any(t in used for used in times):
                return channel_paths(params.root_dir, params.layout, t)[0]
    raise AssertionError("no input state read by rank 1 alone")


@pytest.mark.slow
def test_a_data_error_on_rank_1_names_the_file_on_the_console_and_in_out_log(
    synthetic_root, tmp_path
):
    root = tmp_path / "era5"
    shutil.copytree(synthetic_root, root)
    params = make_params(str(root))
    victim = _nan_file_read_only_by_rank_1(params)
    field = np.load(victim)
    field[3, 4] = np.nan
    np.save(victim, field)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", free_port(), "train.py", "--config", "tiny"]
    cmd += ["--exp_dir", str(tmp_path)]
    for item in (f"root_dir={root}", *FAST, "max_epochs=1", "max_steps_per_epoch=1"):
        cmd += ["--set", item]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    message = f"error: NaN/inf values in {victim}"
    assert f"[rank 1] {message}" in proc.stderr, proc.stderr[-3000:]
    with open(os.path.join(tmp_path, "tiny", "0", "out.log")) as f:
        assert [ln for ln in f if ln.startswith("[rank 1] ") and message in ln]


def test_a_bug_keeps_its_traceback_and_a_config_error_is_one_line(
    synthetic_root, tmp_path, monkeypatch, capsys
):
    def broken(model, params):
        raise KeyError("injected")

    monkeypatch.setattr(training_state, "build_optimizer", broken)
    with pytest.raises(SystemExit) as exit_info:
        run_train(synthetic_root, tmp_path)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "KeyError: 'injected'" in err
    log = open(os.path.join(tmp_path, "tiny", "0", "out.log")).read()
    assert "Traceback (most recent call last)" in log and "KeyError: 'injected'" in log

    with pytest.raises(SystemExit) as exit_info:
        run_train(synthetic_root, tmp_path, "lr=-1")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "'lr'" in err


@pytest.mark.parametrize(
    "override, key",
    [
        ("lr=0", "'lr'"),
        ("min_lr=0.5", "'min_lr'"),
        ("weight_decay=-0.1", "'weight_decay'"),
        ("betas=[0.9, 1.0]", "'betas'"),
        ("clip_grad_norm=abc", "'clip_grad_norm'"),
        ("drop_path=1.5", "'drop_path'"),
        ("max_steps_per_epoch=0", "'max_steps_per_epoch'"),
        ("valid_period=['2020-01-20', '2020-01-27']", "'valid_period'"),
        ("test_period=['2019-12-01', '2020-01-02']", "'test_period'"),
        ("stop_signals=[SIGKILL]", "'stop_signals'"),
    ],
)
def test_bad_training_values_are_config_errors_naming_the_key(synthetic_root, override, key):
    with pytest.raises(ConfigError, match=key):
        make_params(synthetic_root, "tiny", [override])


def test_overlapping_periods_when_allowed_and_one_step_per_epoch(synthetic_root, tmp_path, capsys):
    params = make_params(
        synthetic_root,
        "tiny",
        ["valid_period=['2020-01-20', '2020-01-27']", "allow_overlapping_periods=true"],
    )
    assert params.allow_overlapping_periods
    with pytest.raises(SystemExit) as exit_info:
        run_train(synthetic_root, tmp_path, "batch_size=200")
    assert exit_info.value.code == 2
    assert "no optimiser step per epoch: 'batch_size' (200)" in capsys.readouterr().err


def test_resuming_with_changed_settings_warns_and_records_them(synthetic_root, tmp_path, capsys):
    run_dir = run_train(synthetic_root, tmp_path, "max_epochs=1", "max_steps_per_epoch=1")
    capsys.readouterr()
    run_train(synthetic_root, tmp_path, "max_epochs=1", "max_steps_per_epoch=1", "lr=1.0e-3")
    assert "resuming with changed settings: lr: 0.002 -> 0.001" in capsys.readouterr().out
    with open(os.path.join(run_dir, "config_changes.jsonl")) as f:
        record = json.loads(f.read())
    assert record["changes"] == {"lr": [0.002, 0.001]} and record["epoch"] == 1
    assert "lr: 0.001" in open(os.path.join(run_dir, "hyperparams.yaml")).read()


def test_npy_with_trailing_bytes_is_refused(tmp_path):
    path = str(tmp_path / "field.npy")
    np.save(path, np.zeros((4, 8), dtype=np.float32))
    assert read_field(path, (4, 8)).shape == (4, 8)
    with open(path, "ab") as f:
        f.write(b"garbage")
    with pytest.raises(DataFileError, match="trailing data"):
        read_field(path, (4, 8))


def _gone(pid):
    """The process has exited (a zombie nobody reaps counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_a_rank_stops_when_its_launcher_dies(tmp_path):
    """Neither process ends by itself (each waits forever): the rank is gone only if watching its
    launcher stopped it."""
    ready = str(tmp_path / "watching")
    child = (
        f"import sys, threading; sys.path.insert(0, {REPO!r}); "
        "from utils.training.preemption import watch_launcher; watch_launcher(0.05); "
        f"open({ready!r}, 'w').close(); threading.Event().wait()"
    )
    launcher = (
        "import subprocess, sys, threading; "
        f"p = subprocess.Popen([sys.executable, '-c', {child!r}]); "
        "print(p.pid, flush=True); threading.Event().wait()"
    )
    env = dict(os.environ, TORCHELASTIC_RUN_ID="test")
    proc = subprocess.Popen([sys.executable, "-c", launcher], stdout=subprocess.PIPE, env=env)
    rank = int(proc.stdout.readline())
    try:
        wait_until(lambda: os.path.exists(ready), "the rank to watch its launcher")
        assert not _gone(rank)
        proc.kill()
        proc.wait()
        wait_until(lambda: _gone(rank), "the rank to stop after its launcher died")
    finally:
        proc.kill()
        proc.wait()
        if not _gone(rank):
            os.kill(rank, signal.SIGKILL)


def test_a_truncated_statistics_file_is_named(tmp_path):
    from utils.channels import ChannelLayout
    from utils.data.statistics import load_mean_std

    os.makedirs(tmp_path / "statistic")
    (tmp_path / "statistic" / "mean_std_single.json").write_text('{"mean": {"t2m": 1.0,')
    with pytest.raises(DataFileError, match="mean_std_single.json"):
        load_mean_std(str(tmp_path), ChannelLayout([], [], ["t2m"]))
