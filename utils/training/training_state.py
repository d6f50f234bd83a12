"""The state a training resumes from: weights, optimiser, learning-rate schedule, loss scaler,
counters and RNG states.

:meth:`TrainingState.checkpoint` is the content of ``ckpt.tar`` (and of the snapshots);
:meth:`TrainingState.restore` puts such a checkpoint back.
"""

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from utils.errors import CheckpointError
from utils.training.checkpoint import rng_state, set_rng_state, unwrap
from utils.training.optimizer import build_optimizer, cosine_factor

logger = logging.getLogger("vamoe")

RESUME_KEYS = ("optimizer", "scheduler", "epoch", "step_in_epoch", "global_step", "rng")


def plain_params(params) -> dict[str, Any]:
    """The resolved config with plain values only (safe for weights_only loading)."""
    return json.loads(json.dumps(params.to_dict()))


@dataclass
class Progress:
    """How far a training got.

    ``start_epoch`` (0-based) and ``start_step`` (steps of it already done): where this process
    starts; ``global_step``: optimiser steps done; ``best_valid_loss``: the lowest validation loss
    of a finished epoch; ``epoch_sums``: sums over the current epoch's steps of their global mean
    loss terms and gradient norm, with their count under ``"steps"``.
    """

    start_epoch: int = 0
    start_step: int = 0
    global_step: int = 0
    best_valid_loss: float = math.inf
    epoch_sums: dict[str, float] = field(default_factory=dict)


class TrainingState:
    """The model as trained (possibly wrapped by DDP and torch.compile), its optimiser, schedule,
    loss scaler (fp16 only, else None) and :class:`Progress`, for ``world_size`` ranks."""

    def __init__(self, model: nn.Module, optimizer, scheduler, scaler, params, world_size: int):
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.params = params
        self.world_size = world_size
        self.progress = Progress()

    def checkpoint(self, epoch: int, step_in_epoch: int) -> dict[str, Any]:
        """Everything a resume at step ``step_in_epoch`` of epoch ``epoch`` (0-based) needs, with
        the bare model's weights, the resolved config and the channel names."""
        progress = self.progress
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": progress.global_step,
            "best_valid_loss": progress.best_valid_loss,
            "epoch_sums": dict(progress.epoch_sums),
            "rng": rng_state(),
            "config_name": self.params.config_name,
            "channel_names": self.params.layout.names,
            "params": plain_params(self.params),
            "world_size": self.world_size,
        }

    def restore(self, ckpt: dict[str, Any], path: str) -> None:
        """Optimiser, schedule, scaler, progress and RNG states from ``ckpt`` (read from
        ``path``); the weights are loaded with the model. A weights-only file is refused."""
        missing = [k for k in RESUME_KEYS if k not in ckpt]
        if missing:
            raise CheckpointError(
                f"checkpoint {path!r} holds no training state ({missing}): it is a "
                "weights-only file such as best_ckpt.tar. Resume from "
                "training_checkpoints/ckpt.tar, or start a new stage from it with "
                "--set cl_ckpt_path=..."
            )
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.progress = Progress(
            start_epoch=ckpt["epoch"],
            start_step=ckpt["step_in_epoch"],
            global_step=ckpt["global_step"],
            best_valid_loss=ckpt["best_valid_loss"],
            epoch_sums=dict(ckpt.get("epoch_sums", {})),
        )
        set_rng_state(ckpt["rng"])
        logger.info(
            "resumed from %s: epoch %d, step %d of the epoch, global step %d",
            path,
            self.progress.start_epoch,
            self.progress.start_step,
            self.progress.global_step,
        )


def build_training_state(
    model: nn.Module, params, steps_per_epoch: int, amp_dtype, world_size: int
) -> TrainingState:
    """A fresh state for ``model`` (as trained): AdamW, the cosine schedule over
    ``max_epochs * steps_per_epoch`` steps, and a GradScaler when autocasting to fp16."""
    optimizer = build_optimizer(unwrap(model), params)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        cosine_factor(params.lr, params.min_lr, max(1, params.max_epochs * steps_per_epoch)),
    )
    scaler = torch.amp.GradScaler("cuda") if amp_dtype is torch.float16 else None
    return TrainingState(model, optimizer, scheduler, scaler, params, world_size)
