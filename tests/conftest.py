"""Shared fixtures: a small synthetic ERA5 set in the real layout, generated once per session.

``synthetic_root`` is the root of a ``tiny``-config dataset (32 x 64 grid, levels 850/500/250,
z q u v t + t2m u10 v10 msl sp, 2020-01-01 .. 2020-01-31 every 6 h, with statistics and climatology)
made by ``utils.data.synthetic``; treat it as read-only. ``make_params(root, ...)`` builds a
``YParams`` of a config section pointing at a root, with extra ``--set``-style overrides;
``random_tiny_weights`` is a checkpoint of the ``tiny`` model with seeded random weights.
``free_port()`` is a TCP port for a torchrun test (never a fixed one: suites may run side by side);
``wait_until(condition, what)`` waits for an event, not for a number of seconds.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

CONFIG = os.path.join(REPO, "config", "vamoe.yaml")
SYNTHETIC_START, SYNTHETIC_DAYS = "2020-01-01", 31


# A small network, two steps and no reader threads: evaluations of the file handling, not of skill.
FAST_EVALUATION = (
    "depth=1",
    "embed_dim=32",
    "t_out_test=2",
    "eval_batch_size=1",
    "num_data_workers=0",
    "check_data_values=false",
)


def make_params(root_dir, name: str = "tiny", overrides=()):
    """``YParams`` of section ``name`` with ``root_dir`` set and ``key=value`` overrides applied."""
    from utils.YParams import YParams

    return YParams(CONFIG, name, [f"root_dir={root_dir}", *overrides])


def free_port() -> str:
    """A TCP port on this host that no socket is bound to (the system's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 300.0) -> None:
    """Return as soon as ``condition()`` holds (polled every 10 ms); fail naming ``what`` if it
    still does not after ``timeout_s`` seconds, a bound far above the time the event needs on a
    busy machine."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        threading.Event().wait(0.01)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> str:
    from utils.data.synthetic import generate

    root = str(tmp_path_factory.mktemp("synthetic") / "era5")
    generate(
        root,
        SYNTHETIC_START,
        SYNTHETIC_DAYS,
        h_size=32,
        w_size=64,
        levels=(850, 500, 250),
        hour_step=6,
        seed=0,
    )
    return root


@pytest.fixture
def tiny_params(synthetic_root):
    """Fresh ``tiny`` params on the synthetic set (no worker processes)."""
    return make_params(synthetic_root, "tiny", ["num_data_workers=0"])


@pytest.fixture(scope="session")
def random_tiny_weights(synthetic_root, tmp_path_factory) -> str:
    """A checkpoint of the ``tiny`` model with seeded random weights, recording its configuration
    on the synthetic set as training does (for tests where skill does not matter)."""
    import torch

    from networks.vamoe import VAMoE
    from utils.training.checkpoint import atomic_save
    from utils.training.training_state import plain_params

    params = make_params(synthetic_root, "tiny")
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("weights") / "tiny.tar")
    ckpt = {
        "model": VAMoE.from_params(params).state_dict(),
        "params": plain_params(params),
        "config_name": "tiny",
        "channel_names": params.layout.names,
    }
    atomic_save(ckpt, path)
    return path
