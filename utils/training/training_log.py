"""What a training reports: its set-up, each epoch and a stop in the log (``out.log`` and the
console), and each epoch's record in Weights & Biases (``log_to_wandb``, rank 0)."""

import logging
from typing import Any

from torch import nn

from utils.distributed import DistInfo
from utils.errors import ConfigError
from utils.evaluation.results import lead_label
from utils.training.preemption import EXIT_PREEMPTED
from utils.training.training_data import TrainingData

logger = logging.getLogger("vamoe")


def log_setup(
    params, info: DistInfo, amp_dtype, model: nn.Module, frozen: list[str], data: TrainingData
) -> None:
    """Log the run's configuration, parameter counts and data sizes."""
    n_total = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        "config %s | world size %d | device %s | amp %s",
        params.config_name,
        info.world_size,
        info.device,
        params.amp_dtype if amp_dtype else "off",
    )
    logger.info(
        "parameters: %s total, %s trainable (%.1f %%), %d tensors frozen",
        f"{n_total:,}",
        f"{n_train:,}",
        100 * n_train / n_total,
        len(frozen),
    )
    logger.info(
        "data: %d training samples (%d steps/epoch), %d validation samples, %d channels on %dx%d",
        len(data.train_set),
        data.steps_per_epoch,
        len(data.valid_set),
        params.layout.n_channels,
        params.h_size,
        params.w_size,
    )


def log_epoch(params, record: dict[str, Any], improved: bool) -> None:
    """One line for the epoch of ``record`` (a ``metrics.jsonl`` line)."""
    rmse = ", ".join(f"{k} {v:.4g}" for k, v in record["valid_rmse"].items())
    logger.info(
        "epoch %d/%d | train loss %.5f | valid loss %.5f%s | %.1f samples/s | "
        "%.1f s | lr %.2e | rmse(%s): %s",
        record["epoch"],
        params.max_epochs,
        record["train_loss"],
        record["valid_loss"],
        " (best)" if improved else "",
        record["samples_per_s"],
        record["epoch_time_s"],
        record["lr"],
        lead_label(params.lead_time),
        rmse,
    )


def log_stop(stop, global_step: int) -> None:
    """Say that a stop signal (``stop``: the run's StopSignals, or None) ended the run after
    ``ckpt.tar`` was written at ``global_step``."""
    signal_name = stop.name if stop is not None and stop.requested else ""
    logger.warning(
        "stop signal %s: checkpoint written after global step %d; exiting with code %d, "
        "run the same command to resume",
        signal_name or "on another rank",
        global_step,
        EXIT_PREEMPTED,
    )


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``, at any depth."""
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[prefix + key] = value
    return flat


class WandbRun:
    """The run's Weights & Biases run, or nothing (``run`` None) on other ranks or when
    ``log_to_wandb`` is off."""

    def __init__(self, run=None):
        self.run = run

    @classmethod
    def open(cls, params, run_num, run_dir: str, info: DistInfo) -> "WandbRun":
        """Start (or resume) the W&B run ``<config>-<run_num>`` on rank 0 when configured."""
        if not (params.log_to_wandb and info.is_main):
            return cls()
        try:
            import wandb
        except ImportError as err:
            raise ConfigError(
                "log_to_wandb is true but wandb is not installed "
                "(pip install -r requirements-optional.txt)"
            ) from err
        return cls(
            wandb.init(
                project=params.wandb_project,
                group=params.wandb_group,
                name=f"{params.config_name}-{run_num}",
                dir=run_dir,
                config=params.to_dict(),
                resume="allow",
            )
        )

    def log(self, record: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log(flatten(record), step=step)

    def finish(self, exit_code: int | None = None) -> None:
        if self.run is None:
            return
        if exit_code is None:
            self.run.finish()
        else:
            self.run.finish(exit_code=exit_code)
