"""The training-memory estimate (fake tensors, nothing allocated) against the peak resident memory
that the same training steps add to a process on the CPU."""

import json
import os
import subprocess
import sys

import pytest

from networks.vamoe import VAMoE
from utils.training.memory import training_memory
from utils.YParams import YParams

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = [
    (4, ["embed_dim=128", "depth=3", "num_blocks=4"]),  # channel MoE
    (4, ["embed_dim=128", "depth=3", "use_moe=false"]),  # dense MLP
    (4, ["embed_dim=128", "depth=3", "num_blocks=4", "checkpoint_blocks=true"]),
]


def test_estimate_within_15_percent_of_measured_peak_rss():
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "memory_rss_worker.py"), json.dumps(CONFIGS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    measured = json.loads(run.stdout.splitlines()[-1])
    for (batch, overrides), rss in zip(CONFIGS, measured, strict=True):
        params = YParams(os.path.join(ROOT, "config/vamoe.yaml"), "tiny", overrides)
        estimate = training_memory(params, batch)
        assert estimate["peak_bytes"] == pytest.approx(rss, rel=0.15), overrides


def test_estimate_parts_and_checkpointing():
    params = YParams(os.path.join(ROOT, "config/vamoe.yaml"), "tiny")
    n_params = sum(p.numel() for p in VAMoE.from_params(params).parameters())
    plain = training_memory(params, 2)
    params["checkpoint_blocks"] = True
    ckpt = training_memory(params, 2)
    assert plain["grads_bytes"] == 4 * n_params
    assert plain["optimizer_bytes"] >= 2 * 4 * n_params  # AdamW: two moments per parameter
    assert ckpt["params_bytes"] == plain["params_bytes"]
    assert ckpt["activations_bytes"] < plain["activations_bytes"]
