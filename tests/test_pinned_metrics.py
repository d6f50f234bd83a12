"""The evaluation's ``metrics.csv`` pinned: a fixed-seed ``tiny`` model scored on the synthetic set.

The run is the quickstart's evaluation (``inference.evaluate``: rollout, three forecasters, result
files) at a smaller size: an untrained model initialised with seed 0, the first two batches of test
initial conditions. ``tests/data/pinned_metrics.csv`` was written by the code before the rollout
was split into stepper, metrics and result writing; a change of behaviour shows up here.

Text fields must match exactly; numbers to a tolerance that follows the quantity, since the model
runs in float32 and its last bits depend on the CPU's kernels and the thread count:

- RMSE (physical units, tens to thousands) to 1e-5 relative;
- ACC lives in [-1, 1] and is near 0 for an untrained model: a difference of nearly equal sums,
  whose *relative* value is noise. It is compared to 1e-6 absolute.
"""

import csv
import math
import os

import pytest
import torch

import inference
from networks.vamoe import VAMoE
from tests.conftest import make_params
from utils.training.checkpoint import atomic_save

TOLERANCE = {
    "rmse": {"rel": 1e-5, "abs": 1e-9},
    "rmse_ic_mean": {"rel": 1e-5, "abs": 1e-9},
    "acc": {"rel": 0, "abs": 1e-6},
}
PINNED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "pinned_metrics.csv")


def pinned_run(synthetic_root, out_dir) -> str:
    """Write a seed-0 tiny checkpoint, evaluate it on two batches; returns the metrics.csv path."""
    params = make_params(synthetic_root, "tiny", ["num_data_workers=0"])
    torch.manual_seed(0)
    model = VAMoE.from_params(params)
    weights = os.path.join(out_dir, "seed0.tar")
    atomic_save({"model": model.state_dict(), "channel_names": params.layout.names}, weights)
    results = os.path.join(out_dir, "results")
    os.makedirs(results)
    inference.evaluate(params, weights, results, max_batches=2)
    return os.path.join(results, "metrics.csv")


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_metrics_csv_matches_the_pinned_run(synthetic_root, tmp_path):
    got, want = _rows(pinned_run(synthetic_root, str(tmp_path))), _rows(PINNED)
    assert got[0] == want[0]
    assert len(got) == len(want)
    for g, w in zip(got[1:], want[1:], strict=True):
        for column, a, b in zip(want[0], g, w, strict=True):
            if column in TOLERANCE and b != "nan":
                assert float(a) == pytest.approx(float(b), **TOLERANCE[column]), (column, g, w)
            else:
                assert a == b, (column, g, w)
    assert any(math.isnan(float(r[5])) for r in want[1:])  # the climatology's undefined ACC
