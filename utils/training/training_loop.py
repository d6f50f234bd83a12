"""One epoch of optimiser steps.

Each step: the rollout loss of a batch (:func:`utils.training.losses.rollout_loss`), backward,
gradient clipping, the optimiser step (through the GradScaler with fp16) and the schedule's step;
then one all-reduce of the step's loss terms, gradient norm and stop flag, so every rank sees a
non-finite loss, and a stop signal received by any rank, after the same step. ``ckpt.tar`` is
written every ``checkpoint_every_steps`` steps and after the step at which a stop signal arrived
(then :class:`~utils.training.preemption.Preempted` is raised). A resumed epoch starts at its first
unseen batch; stochastic depth draws from a seed fixed by (seed, global step, rank), so a resumed
run repeats the uninterrupted one exactly.
"""

import logging
import math
import time

import torch

from utils import distributed as dist_utils
from utils.distributed import DistInfo
from utils.errors import NonFiniteLossError
from utils.evaluation.stepper import Stepper
from utils.progress import progress_bar
from utils.training import losses
from utils.training.checkpoint_writes import write_step_checkpoint
from utils.training.preemption import Preempted, StopSignals, stop_flag
from utils.training.run_directory import RunFiles
from utils.training.training_data import TrainingData
from utils.training.training_state import TrainingState

logger = logging.getLogger("vamoe")

EPOCH_MEANS = ("loss", "forecast", "recons", "aux", "grad_norm")


class TrainingLoop:
    """Trains ``state.model`` on ``data``'s training batches, one epoch per :meth:`run_epoch`.

    Args:
        state: the model as trained, optimiser, schedule, scaler and progress (updated in place).
        data: the training loader and sampler, and the steps per epoch.
        files: the run's files (for the mid-epoch ``ckpt.tar``).
        params: the run's config.
        info: this rank.
        amp_dtype: the autocast dtype (None: full precision).
        stop: the process's StopSignals (None: never stops early).
    """

    def __init__(
        self,
        state: TrainingState,
        data: TrainingData,
        files: RunFiles,
        params,
        info: DistInfo,
        amp_dtype=None,
        stop: StopSignals | None = None,
    ):
        self.state, self.data, self.files = state, data, files
        self.params, self.info = params, info
        self.amp_dtype, self.stop = amp_dtype, stop

    def run_epoch(self, epoch: int) -> dict[str, float]:
        """Train epoch ``epoch`` (0-based) from its first step not yet done; returns the epoch's
        mean loss, loss terms and gradient norm (``train_*``), ``samples_per_s`` and
        ``epoch_time_s``."""
        state, progress, info = self.state, self.state.progress, self.info
        state.model.train()
        skip = progress.start_step if epoch == progress.start_epoch else 0
        if skip == 0:
            progress.epoch_sums = {}
        n_steps = self.data.steps_per_epoch
        batches = self._batches(epoch, skip)
        bar = progress_bar(
            total=n_steps,
            initial=skip,
            desc=f"epoch {epoch + 1}/{self.params.max_epochs}",
            unit="step",
            enabled=info.is_main,
        )
        data = self.data.train_set
        stepper = Stepper(state.model, data.mean, data.std, info.device, self.amp_dtype)
        trainable = [p for p in state.model.parameters() if p.requires_grad]
        t_start, samples = time.perf_counter(), 0
        for step in range(skip, n_steps):
            inp, tar, _ = next(batches)
            inp = inp.to(info.device, non_blocking=True)
            tar = tar.to(info.device, non_blocking=True)
            values, stop = self._step(stepper, trainable, inp, tar, epoch, step)
            samples += inp.shape[0] * info.world_size
            self._report_step(bar, values, samples / (time.perf_counter() - t_start))
            if stop > 0:
                bar.close()
                _close(batches)
                write_step_checkpoint(state, self.files, info.is_main, epoch, step + 1)
                raise Preempted()
            every = self.params.checkpoint_every_steps
            if every and progress.global_step % every == 0 and step + 1 < n_steps:
                write_step_checkpoint(state, self.files, info.is_main, epoch, step + 1)
        bar.close()
        _close(batches)  # stop the reader threads of an unfinished epoch
        self.data.train_sampler.start = 0
        return self._epoch_means(samples, time.perf_counter() - t_start)

    def _batches(self, epoch: int, skip: int):
        """The epoch's batches from batch ``skip`` on. The sampler's order depends on (seed,
        epoch) only; the ones before ``skip`` are not read."""
        self.data.train_sampler.set_epoch(epoch)
        self.data.train_sampler.start = skip * self.data.train_loader.batch_size
        return iter(self.data.train_loader)

    def _step(self, stepper: Stepper, trainable, inp, tar, epoch: int, step: int):
        """One optimiser step on ``inp`` ``(B, C, H, W)``, ``tar`` ``(B, T, C, H, W)``; adds the
        step's global means to the epoch sums and returns them (loss first, gradient norm last)
        and the stop flag (> 0: some rank received a stop signal)."""
        progress = self.state.progress
        torch.manual_seed(self.params.seed + 1_000_003 * progress.global_step + self.info.rank)
        loss, terms, _ = losses.rollout_loss(stepper, inp, tar)
        grad_norm = self._optimizer_step(loss, trainable)
        progress.global_step += 1
        names = ["loss", *terms, "grad_norm"]
        values, stop = self._global_step_scalars(loss, terms, grad_norm)
        loss_value = values[0]
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(
                f"non-finite training loss {loss_value} at epoch "
                f"{epoch + 1}, step {step}; lower lr or disable fp16"
            )
        for name, value in zip(names, values, strict=False):
            progress.epoch_sums[name] = progress.epoch_sums.get(name, 0.0) + value
        progress.epoch_sums["steps"] = progress.epoch_sums.get("steps", 0) + 1
        return values, stop

    def _report_step(self, bar, values: list[float], samples_per_s: float) -> None:
        """The progress bar's step, loss, throughput and learning rate; every
        ``log_every_steps`` steps a debug line (``out.log``)."""
        every, global_step = self.params.log_every_steps, self.state.progress.global_step
        bar.set_postfix(
            loss=f"{values[0]:.4f}",
            samples_per_s=f"{samples_per_s:.1f}",
            lr=f"{self.state.scheduler.get_last_lr()[0]:.2e}",
        )
        bar.update()
        if every and global_step % every == 0:
            logger.debug("step %d loss %.5f grad_norm %.3f", global_step, values[0], values[-1])

    def _optimizer_step(self, loss: torch.Tensor, trainable) -> torch.Tensor:
        """Backward, clip, step (through the GradScaler with fp16) and advance the schedule;
        returns the gradient norm before clipping (a device tensor: no sync)."""
        state = self.state
        state.optimizer.zero_grad(set_to_none=True)
        if state.scaler is not None:
            state.scaler.scale(loss).backward()
            state.scaler.unscale_(state.optimizer)
        else:
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, self.params.clip_grad_norm)
        if state.scaler is not None:
            state.scaler.step(state.optimizer)
            state.scaler.update()
        else:
            state.optimizer.step()
        state.scheduler.step()
        return grad_norm

    def _global_step_scalars(self, loss, terms, grad_norm) -> tuple[list[float], float]:
        """The step's loss, loss terms and gradient norm as global means, and the stop flag.

        One small all-reduce and one device sync, after the step was queued: every rank sees a
        non-finite loss together (none is left waiting in a collective), and nothing has been
        written for this step yet. The stop flag rides along: every rank stops after the same
        step.
        """
        scalars = torch.stack(
            [
                loss.detach().float(),
                *terms.values(),
                grad_norm.float(),
                loss.new_tensor(stop_flag(self.stop), dtype=torch.float32),
            ]
        )
        values = (dist_utils.all_reduce_sum(scalars) / self.info.world_size).tolist()
        return values[:-1], values[-1]

    def _epoch_means(self, samples: int, elapsed: float) -> dict[str, float]:
        """The epoch's record from its sums (of global step means) and its throughput."""
        sums = self.state.progress.epoch_sums
        steps = max(sums.get("steps", 0), 1)
        means = {k: sums.get(k, 0.0) / steps for k in EPOCH_MEANS}
        return {
            "train_loss": means["loss"],
            "train_loss_forecast": means["forecast"],
            "train_loss_recons": means["recons"],
            "train_loss_aux": means["aux"],
            "train_grad_norm": means["grad_norm"],
            "samples_per_s": samples / elapsed if elapsed > 0 else 0.0,
            "epoch_time_s": elapsed,
        }


def _close(batches) -> None:
    """Stop the reader threads of a loader iterator (those that have any)."""
    if hasattr(batches, "close"):
        batches.close()
