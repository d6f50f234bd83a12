"""The write points of a training: the files it writes as it goes, each write in one function.

- :func:`write_step_checkpoint`: ``ckpt.tar`` within an epoch (every ``checkpoint_every_steps``
  steps, and after the step at which a stop signal arrived), the replaced one kept as
  ``ckpt_prev.tar``.
- :func:`write_epoch_end`: after an epoch, in this order: ``best_ckpt.tar`` (when the validation
  loss improved), the epoch's ``metrics.jsonl`` line, the ``ckpt_epoch<N>.tar`` snapshot (every
  ``snapshot_every_epochs`` epochs, the last ``keep_snapshots`` kept) and ``ckpt.tar`` last, the
  commit point. A crash before ``ckpt.tar`` leaves a run whose resume redoes the epoch and
  rewrites the others identically.

Every write is atomic (a temporary file renamed over the target); rank 0 writes.
"""

import json
import os
from typing import Any

from utils import distributed as dist_utils
from utils.atomic_io import atomic_write_text
from utils.training.checkpoint import atomic_save
from utils.training.run_directory import RunFiles
from utils.training.training_state import TrainingState

BEST_KEYS = (
    "model",
    "epoch",
    "global_step",
    "best_valid_loss",
    "config_name",
    "channel_names",
    "params",
)


def write_step_checkpoint(
    state: TrainingState, files: RunFiles, is_main: bool, epoch: int, step_in_epoch: int
) -> None:
    """``ckpt.tar`` (previous one kept as ``ckpt_prev.tar``) after step ``step_in_epoch`` of
    epoch ``epoch`` (0-based), written by rank 0; every rank waits for it."""
    if is_main:
        atomic_save(state.checkpoint(epoch, step_in_epoch), files.ckpt, files.prev)
    dist_utils.barrier()


def write_epoch_end(
    state: TrainingState,
    files: RunFiles,
    is_main: bool,
    epoch: int,
    improved: bool,
    record: dict[str, Any],
) -> None:
    """After epoch ``epoch`` (0-based) finished (rank 0): ``best_ckpt.tar`` when ``improved``,
    the ``metrics.jsonl`` line ``record`` and the snapshot first, ``ckpt.tar`` last. Until
    ``ckpt.tar`` says the epoch is done, a resume redoes it and rewrites the others identically."""
    if not is_main:
        return
    ckpt = state.checkpoint(epoch + 1, 0)
    if improved:
        atomic_save({k: ckpt[k] for k in BEST_KEYS}, files.best)
    write_metrics_line(files.metrics, record)
    every = state.params.snapshot_every_epochs
    if every and (epoch + 1) % every == 0:
        atomic_save(ckpt, files.snapshot(epoch + 1))
        for old in files.snapshots()[: -state.params.keep_snapshots]:
            os.remove(old)
    atomic_save(ckpt, files.ckpt, files.prev)


def write_metrics_line(path: str, record: dict[str, Any]) -> None:
    """``path`` (``metrics.jsonl``) with the line of ``record``'s epoch, rewritten whole (a few
    kB) so a crash never leaves a torn line; lines of this epoch or later (from an epoch that was
    redone after a crash) are replaced."""
    lines = []
    if os.path.isfile(path):
        with open(path) as f:
            lines = [ln for ln in f if ln.strip()]
    kept = [ln for ln in lines if json.loads(ln).get("epoch", 0) < record["epoch"]]
    atomic_write_text(path, "".join(kept) + json.dumps(record) + "\n")
