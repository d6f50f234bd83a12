"""The run directory of a training, ``<exp_dir>/<config>/<run_num>/``: where its files are, and
claiming it for one training at a time.

It holds ``out.log``, ``hyperparams.yaml``, ``metrics.jsonl``, ``config_changes.jsonl`` and
``training_checkpoints/`` (``ckpt.tar``, ``ckpt_prev.tar``, ``best_ckpt.tar`` and the
``ckpt_epoch<N>.tar`` snapshots). The lock (``.lock``) is taken by rank 0.
"""

import glob
import logging
import os
import re
from dataclasses import dataclass

import torch

from utils import distributed as dist_utils
from utils.atomic_io import remove_stale_temporaries
from utils.errors import OutputError, VAMoEError
from utils.run_lock import RunLock

logger = logging.getLogger("vamoe")


def run_directory(exp_dir: str, config_name: str, run_num) -> str:
    """``<exp_dir>/<config_name>/<run_num>``."""
    return os.path.join(exp_dir, config_name, str(run_num))


@dataclass(frozen=True)
class RunFiles:
    """The paths of the files of the run in ``run_dir``."""

    run_dir: str

    @property
    def ckpt_dir(self) -> str:
        return os.path.join(self.run_dir, "training_checkpoints")

    @property
    def ckpt(self) -> str:
        """The training state after the last finished epoch or checkpointed step."""
        return os.path.join(self.ckpt_dir, "ckpt.tar")

    @property
    def prev(self) -> str:
        """The ``ckpt.tar`` that the last write of ``ckpt.tar`` replaced."""
        return os.path.join(self.ckpt_dir, "ckpt_prev.tar")

    @property
    def best(self) -> str:
        """The weights of the best validation loss so far."""
        return os.path.join(self.ckpt_dir, "best_ckpt.tar")

    @property
    def metrics(self) -> str:
        return os.path.join(self.run_dir, "metrics.jsonl")

    @property
    def config_changes(self) -> str:
        return os.path.join(self.run_dir, "config_changes.jsonl")

    @property
    def hyperparams(self) -> str:
        return os.path.join(self.run_dir, "hyperparams.yaml")

    @property
    def log(self) -> str:
        return os.path.join(self.run_dir, "out.log")

    def snapshot(self, epochs_done: int) -> str:
        """The snapshot written after ``epochs_done`` epochs."""
        return os.path.join(self.ckpt_dir, f"ckpt_epoch{epochs_done}.tar")

    def snapshots(self) -> list[str]:
        """The snapshots on disk, oldest first."""
        return sorted(
            glob.glob(os.path.join(self.ckpt_dir, "ckpt_epoch*.tar")),
            key=lambda p: int(re.findall(r"ckpt_epoch(\d+)", p)[-1]),
        )


def claim_run_directory(run_dir: str, info: dist_utils.DistInfo) -> RunLock | None:
    """Create ``run_dir``, lock it and remove stale temporary files (rank 0); every rank raises
    when that failed, so none is left waiting for the others."""
    lock, error = None, None
    if info.is_main:
        try:
            ckpt_dir = RunFiles(run_dir).ckpt_dir
            try:
                os.makedirs(ckpt_dir, exist_ok=True)
            except OSError as err:
                raise OutputError(f"cannot create {ckpt_dir}: {err.strerror or err}") from err
            lock = RunLock(run_dir)
            lock.acquire()
            for path in remove_stale_temporaries(run_dir) + remove_stale_temporaries(ckpt_dir):
                logger.info("removed stale temporary file %s", path)
        except VAMoEError as err:
            error = err
    failed = torch.tensor([float(error is not None)], device=info.device)
    if dist_utils.all_reduce_sum(failed).item() > 0:
        if error is not None:
            raise error
        raise OutputError(f"rank 0 could not take the run directory {run_dir} (see its error)")
    return lock
