"""torchrun worker for tests/test_cluster.py: ``train.main`` in which only rank 1 receives SIGTERM,
during its second optimiser step. Every rank must stop after that same step."""

import os
import signal
import sys

import train
from utils.training import losses

_rollout_loss = losses.rollout_loss
_calls = {"n": 0}


def _signal_rank_1(stepper, inp, tar):
    _calls["n"] += 1
    if int(os.environ["RANK"]) == 1 and _calls["n"] == 2:
        os.kill(os.getpid(), signal.SIGTERM)
    return _rollout_loss(stepper, inp, tar)


if __name__ == "__main__":
    losses.rollout_loss = _signal_rank_1
    train.main(sys.argv[1:])
