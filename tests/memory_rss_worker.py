"""Measures the peak resident memory that training steps add to a process (run as a script).

    python tests/memory_rss_worker.py '[[BATCH, ["KEY=VALUE", ...]], ...]'   (``tiny`` overrides)

Prints a JSON list with one ``rss_increase_bytes`` per configuration: the peak resident set size
during two training steps (model, AdamW, batch built inside the window) minus the resident size
before them. The caller sets
``MALLOC_MMAP_THRESHOLD_`` so that glibc returns freed large blocks to the system at once and the
resident size follows the live tensors. A warm-up step of a small model first loads the kernels'
one-time state (thread pools, oneDNN), which the window must not count.
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from networks.vamoe import VAMoE  # noqa: E402
from utils.training.optimizer import build_optimizer  # noqa: E402
from utils.YParams import YParams  # noqa: E402


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def train_steps(params, batch: int, steps: int) -> None:
    model = VAMoE.from_params(params)
    model.train()
    optimizer = build_optimizer(model, params)
    x = torch.randn(batch, params.layout.n_channels, params.h_size, params.w_size)
    y = torch.randn_like(x)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        model(x, y).loss.backward()
        optimizer.step()


def main() -> None:
    config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config")
    config = os.path.join(config, "vamoe.yaml")
    train_steps(YParams(config, "tiny"), 1, 1)
    increases = []
    for batch, overrides in json.loads(sys.argv[1]):
        baseline = status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (the peak) to the current resident size
        train_steps(YParams(config, "tiny", overrides), batch, 2)
        increases.append((status_kib("VmHWM") - baseline) * 1024)
    print(json.dumps(increases))


if __name__ == "__main__":
    main()
