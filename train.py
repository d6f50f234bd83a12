"""Train VA-MoE (one process, or DistributedDataParallel under torchrun).

    python train.py --yaml_config config/vamoe.yaml --config tiny --run_num 0 --exp_dir exp
    torchrun --nproc_per_node 4 train.py --config vamoe --run_num 0 --exp_dir exp --enable_amp

Writes ``<exp_dir>/<config>/<run_num>/``: ``out.log``, ``hyperparams.yaml``, ``metrics.jsonl``
(one line per epoch) and ``training_checkpoints/`` (``ckpt.tar`` every epoch and every
``checkpoint_every_steps`` steps, the one it replaced as ``ckpt_prev.tar``, ``best_ckpt.tar`` at
the best validation loss, and ``ckpt_epoch<N>.tar`` snapshots, the last ``keep_snapshots`` kept).
Running the same command again resumes from ``ckpt.tar`` (from ``ckpt_prev.tar``, with a warning,
when ``ckpt.tar`` cannot be read); an incremental section (``cl_ckpt_path`` set) starts from the
initial-stage checkpoint, mapped onto the new variables, with the ``freeze`` patterns frozen.

At the end of an epoch ``best_ckpt.tar``, the ``metrics.jsonl`` line and the snapshot are written
before ``ckpt.tar``, the commit point: a crash at any moment leaves a run whose resume redoes the
unfinished epoch and rewrites them. One training at a time holds the run directory (``.lock``).
A stop signal (``stop_signals``) writes ``ckpt.tar`` after the next optimiser step and exits
with code 75; errors end in one line (exit 2) for configuration, data and checkpoint problems,
in a traceback (exit 1) for anything else, on the console and in ``out.log``.
"""

import argparse
import glob
import json
import logging
import math
import os
import re
import sys
import time

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from networks.compile import compile_model
from networks.freezing import freeze_from_params
from networks.vamoe import VAMoE
from utils import distributed as dist_utils
from utils.atomic_io import atomic_write_text, remove_stale_temporaries
from utils.data.loader import get_data_loader
from utils.errors import (
    EXIT_USER_ERROR,
    CheckpointError,
    ConfigError,
    NonFiniteLossError,
    OutputError,
    VAMoEError,
)
from utils.evaluation.metrics import MetricAccumulator, accumulation_dtype, lat_weights_torch
from utils.evaluation.results import lead_label
from utils.evaluation.stepper import Stepper, resolve_amp_dtype
from utils.logging_utils import report_error, setup_logging
from utils.progress import progress_bar
from utils.run_lock import RunLock
from utils.training.checkpoint import (
    atomic_save,
    check_channel_names,
    load_checkpoint,
    load_latest_checkpoint,
    rng_state,
    set_rng_state,
    unwrap,
)
from utils.training.incremental import load_initial_stage
from utils.training.optimizer import build_optimizer, cosine_factor
from utils.training.preemption import EXIT_PREEMPTED, Preempted, StopSignals, watch_launcher
from utils.YParams import YParams, add_override_argument


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train VA-MoE.")
    parser.add_argument("--yaml_config", default="config/vamoe.yaml")
    parser.add_argument("--config", default="vamoe")
    parser.add_argument("--run_num", default="0")
    parser.add_argument("--exp_dir", default="exp")
    parser.add_argument(
        "--enable_amp",
        action="store_true",
        help="autocast to amp_dtype (bf16 by default; fp16 uses a GradScaler)",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="resume from this checkpoint instead of the run's own ckpt.tar",
    )
    add_override_argument(parser)
    return parser.parse_args(argv)


class Trainer:
    """Owns the model, data, optimisation state and run directory of one training run."""

    def __init__(self, params: YParams, args, info: dist_utils.DistInfo, stop=None):
        self.params = params
        self.info = info
        self.device = info.device
        self.stop = stop
        self.run_dir = run_directory(args, params)
        self.ckpt_dir = os.path.join(self.run_dir, "training_checkpoints")
        self.ckpt_path = os.path.join(self.ckpt_dir, "ckpt.tar")
        self.prev_path = os.path.join(self.ckpt_dir, "ckpt_prev.tar")
        self.best_path = os.path.join(self.ckpt_dir, "best_ckpt.tar")
        self.metrics_path = os.path.join(self.run_dir, "metrics.jsonl")
        self.log = setup_logging(os.path.join(self.run_dir, "out.log"), info.rank, info.world_size)
        self.amp_dtype = resolve_amp_dtype(
            params.amp_dtype if args.enable_amp else None, self.device
        )

        torch.manual_seed(params.seed)
        np.random.seed(params.seed)
        self.train_loader, self.train_set, self.train_sampler = get_data_loader(
            params, info.distributed, "train"
        )
        self.valid_loader, self.valid_set, _ = get_data_loader(params, info.distributed, "valid")
        self.layout = params.layout
        self.lat = torch.as_tensor(self.train_set.lat, device=self.device)  # the dataset's grid
        self.lat_weights = lat_weights_torch(self.lat, self.device, accumulation_dtype(self.device))
        self.headline = [n for n in params.headline_variables if n in self.layout.names]

        model = VAMoE.from_params(params, lat=self.train_set.lat).to(self.device)
        self.start_epoch, self.start_step, self.global_step = 0, 0, 0
        self.best_valid = math.inf
        self.epoch_sums = {}
        resume, resume_path = None, args.checkpoint
        if resume_path:
            resume = load_checkpoint(resume_path)
        elif os.path.isfile(self.ckpt_path) or os.path.isfile(self.prev_path):
            resume, resume_path = load_latest_checkpoint(self.ckpt_path, self.prev_path, self.log)
        report = None
        if resume is not None:
            check_channel_names(
                resume, resume_path, self.layout.names, f"config section {params.config_name!r}"
            )
            model.load_state_dict(resume["model"])
        elif params.cl_ckpt_path:
            report = load_initial_stage(model, params)
        frozen = freeze_from_params(model, params)
        if report is not None:
            self.log.info(
                "incremental stage: grew %s onto %d channels",
                params.cl_ckpt_path,
                self.layout.n_channels,
            )
            for line in report.format(frozen).splitlines():
                self.log.info(line)
        self._log_setup(model, frozen)

        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"no optimiser step per epoch: 'batch_size' ({params.batch_size}) exceeds the "
                f"{len(self.train_set)} training samples of 'train_period' {params.train_period}"
            )
        self.model = self._wrap(model)
        self.optimizer = build_optimizer(model, params)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            cosine_factor(
                params.lr, params.min_lr, max(1, params.max_epochs * self.steps_per_epoch)
            ),
        )
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype is torch.float16 else None
        changes = {}
        if resume is not None:
            self._restore(resume, resume_path)
            changes = self._changed_settings(resume)
        hyperparams = os.path.join(self.run_dir, "hyperparams.yaml")
        if info.is_main and (changes or not os.path.isfile(hyperparams)):
            params.dump(hyperparams)
        self.wandb = self._init_wandb(args) if params.log_to_wandb and info.is_main else None

    # ------------------------------------------------------------------ bookkeeping
    def _wrap(self, model):
        """The model as trained: DistributedDataParallel over ranks, compiled when configured."""
        if self.info.distributed:
            model = DistributedDataParallel(
                model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.params.use_moe == "moe",
                broadcast_buffers=False,
            )
        return compile_model(model) if self.params.compile else model

    def _log_setup(self, model, frozen) -> None:
        """Log the run's configuration, parameter counts and data sizes."""
        params, info = self.params, self.info
        n_total = sum(p.numel() for p in model.parameters())
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.log.info(
            "config %s | world size %d | device %s | amp %s",
            params.config_name,
            info.world_size,
            self.device,
            params.amp_dtype if self.amp_dtype else "off",
        )
        self.log.info(
            "parameters: %s total, %s trainable (%.1f %%), %d tensors frozen",
            f"{n_total:,}",
            f"{n_train:,}",
            100 * n_train / n_total,
            len(frozen),
        )
        self.log.info(
            "data: %d training samples (%d steps/epoch), %d validation samples, "
            "%d channels on %dx%d",
            len(self.train_set),
            self.steps_per_epoch,
            len(self.valid_set),
            self.layout.n_channels,
            params.h_size,
            params.w_size,
        )

    @property
    def steps_per_epoch(self) -> int:
        cap = self.params.max_steps_per_epoch
        return min(len(self.train_loader), cap) if cap else len(self.train_loader)

    def _init_wandb(self, args):
        try:
            import wandb
        except ImportError as err:
            raise ConfigError(
                "log_to_wandb is true but wandb is not installed "
                "(pip install -r requirements-optional.txt)"
            ) from err
        return wandb.init(
            project=self.params.wandb_project,
            group=self.params.wandb_group,
            name=f"{self.params.config_name}-{args.run_num}",
            dir=self.run_dir,
            config=self.params.to_dict(),
            resume="allow",
        )

    def _restore(self, ckpt, path):
        missing = [
            k
            for k in ("optimizer", "scheduler", "epoch", "step_in_epoch", "global_step", "rng")
            if k not in ckpt
        ]
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
        self.start_epoch = ckpt["epoch"]
        self.start_step = ckpt["step_in_epoch"]
        self.global_step = ckpt["global_step"]
        self.best_valid = ckpt["best_valid_loss"]
        self.epoch_sums = dict(ckpt.get("epoch_sums", {}))
        set_rng_state(ckpt["rng"])
        self.log.info(
            "resumed from %s: epoch %d, step %d of the epoch, global step %d",
            path,
            self.start_epoch,
            self.start_step,
            self.global_step,
        )

    def _changed_settings(self, ckpt) -> dict:
        """Settings that differ from those the checkpoint was written with: warned about and
        appended to ``config_changes.jsonl`` (``hyperparams.yaml`` then holds the new ones)."""
        saved = dict(ckpt.get("params") or {})
        if not saved:  # a checkpoint from before settings were stored
            return {}
        if "world_size" in ckpt:
            saved["world_size"] = ckpt["world_size"]
        current = {**_plain_params(self.params), "world_size": self.info.world_size}
        changes = {
            k: [saved.get(k), current.get(k)]
            for k in sorted(set(saved) | set(current))
            if saved.get(k) != current.get(k)
        }
        if changes:
            self.log.warning(
                "resuming with changed settings: %s",
                "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items()),
            )
            if self.info.is_main:
                path = os.path.join(self.run_dir, "config_changes.jsonl")
                line = {"epoch": self.start_epoch, "step_in_epoch": self.start_step}
                _append_jsonl(path, {**line, "changes": changes})
        return changes

    def _state(self, epoch, step_in_epoch):
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": self.global_step,
            "best_valid_loss": self.best_valid,
            "epoch_sums": dict(self.epoch_sums),
            "rng": rng_state(),
            "config_name": self.params.config_name,
            "channel_names": self.layout.names,
            "params": _plain_params(self.params),
            "world_size": self.info.world_size,
        }

    def save_checkpoint(self, epoch, step_in_epoch):
        if self.info.is_main:
            atomic_save(self._state(epoch, step_in_epoch), self.ckpt_path, self.prev_path)
        dist_utils.barrier()

    def _save_epoch_files(self, epoch, improved, record):
        """After epoch ``epoch`` (0-based) finished (rank 0): ``best_ckpt.tar``, the
        ``metrics.jsonl`` line and the snapshot first, ``ckpt.tar`` last. Until ``ckpt.tar`` says
        the epoch is done, a resume redoes it and rewrites the others identically."""
        if not self.info.is_main:
            return
        state = self._state(epoch + 1, 0)
        if improved:
            atomic_save(
                {
                    k: state[k]
                    for k in (
                        "model",
                        "epoch",
                        "global_step",
                        "best_valid_loss",
                        "config_name",
                        "channel_names",
                        "params",
                    )
                },
                self.best_path,
            )
        self._write_metrics_line(record)
        every = self.params.snapshot_every_epochs
        if every and (epoch + 1) % every == 0:
            atomic_save(state, os.path.join(self.ckpt_dir, f"ckpt_epoch{epoch + 1}.tar"))
            snapshots = sorted(
                glob.glob(os.path.join(self.ckpt_dir, "ckpt_epoch*.tar")),
                key=lambda p: int(re.findall(r"ckpt_epoch(\d+)", p)[-1]),
            )
            for old in snapshots[: -self.params.keep_snapshots]:
                os.remove(old)
        atomic_save(state, self.ckpt_path, self.prev_path)

    def _write_metrics_line(self, record):
        """``metrics.jsonl`` with the line of ``record``'s epoch, rewritten whole (a few kB) so a
        crash never leaves a torn line; lines of this epoch or later (from an epoch that was
        redone after a crash) are replaced."""
        lines = []
        if os.path.isfile(self.metrics_path):
            with open(self.metrics_path) as f:
                lines = [ln for ln in f if ln.strip()]
        kept = [ln for ln in lines if json.loads(ln).get("epoch", 0) < record["epoch"]]
        atomic_write_text(self.metrics_path, "".join(kept) + json.dumps(record) + "\n")

    # ------------------------------------------------------------------ steps
    def _stepper(self, model) -> Stepper:
        """``model(x, target)`` rolled out under the run's autocast (data statistics for the
        physical units of the validation scores)."""
        data = self.train_set
        return Stepper(model, data.mean, data.std, self.device, self.amp_dtype)

    def _rollout_loss(self, stepper: Stepper, inp, tar):
        """Mean loss over the target's T lead times, ``tar`` ``(B, T, C, H, W)``, forecasts fed
        back; returns the loss, the mean loss terms and the T forecasts ``(B, C, H, W)``."""
        n_steps = tar.shape[1]
        loss, terms, forecasts = 0.0, {}, []
        for step in stepper.rollout(inp, n_steps, tar):
            loss = loss + step.output.loss
            for name, value in step.output.terms.items():
                terms[name] = terms.get(name, 0.0) + value.float() / n_steps
            forecasts.append(step.forecast)
        return loss / n_steps, terms, forecasts

    def _optimizer_step(self, loss, trainable) -> torch.Tensor:
        """Backward, clip, step (through the GradScaler with fp16) and advance the schedule;
        returns the gradient norm before clipping (a device tensor: no sync)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, self.params.clip_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        return grad_norm

    def _global_step_scalars(self, loss, terms, grad_norm) -> tuple[list[float], float]:
        """The step's loss, loss terms and gradient norm as global means, and the stop flag.

        One small all-reduce and one device sync, after the step was queued: every rank sees a
        non-finite loss together (none is left waiting in a collective), and nothing has been
        written for this step yet. The stop flag rides along: every rank stops after the same
        step.
        """
        stop = float(self.stop is not None and self.stop.requested)
        scalars = torch.stack(
            [
                loss.detach().float(),
                *terms.values(),
                grad_norm.float(),
                loss.new_tensor(stop, dtype=torch.float32),
            ]
        )
        values = (dist_utils.all_reduce_sum(scalars) / self.info.world_size).tolist()
        return values[:-1], values[-1]

    def train_one_epoch(self, epoch):
        params, info = self.params, self.info
        self.model.train()
        skip = self.start_step if epoch == self.start_epoch else 0
        if skip == 0:
            self.epoch_sums = {}
        n_steps = self.steps_per_epoch
        # The sampler's order depends on (seed, epoch) only; a resumed epoch starts at its
        # first unseen batch without reading the ones before it.
        self.train_sampler.set_epoch(epoch)
        self.train_sampler.start = skip * self.train_loader.batch_size
        batches = iter(self.train_loader)
        bar = progress_bar(
            total=n_steps,
            initial=skip,
            desc=f"epoch {epoch + 1}/{params.max_epochs}",
            unit="step",
            enabled=info.is_main,
        )
        stepper = self._stepper(self.model)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        t_start, samples = time.perf_counter(), 0
        for step in range(skip, n_steps):
            inp, tar, _ = next(batches)
            inp = inp.to(self.device, non_blocking=True)
            tar = tar.to(self.device, non_blocking=True)
            # Stochastic depth draws from a seed fixed by (seed, step, rank): a resumed run
            # repeats the uninterrupted one exactly.
            torch.manual_seed(params.seed + 1_000_003 * self.global_step + info.rank)
            loss, terms, _ = self._rollout_loss(stepper, inp, tar)
            grad_norm = self._optimizer_step(loss, trainable)
            self.global_step += 1
            samples += inp.shape[0] * info.world_size
            names = ["loss", *terms, "grad_norm"]
            values, stop = self._global_step_scalars(loss, terms, grad_norm)
            loss_value = values[0]
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(
                    f"non-finite training loss {loss_value} at epoch "
                    f"{epoch + 1}, step {step}; lower lr or disable fp16"
                )
            for name, value in zip(names, values, strict=False):
                self.epoch_sums[name] = self.epoch_sums.get(name, 0.0) + value
            self.epoch_sums["steps"] = self.epoch_sums.get("steps", 0) + 1
            rate = samples / (time.perf_counter() - t_start)
            bar.set_postfix(
                loss=f"{loss_value:.4f}",
                samples_per_s=f"{rate:.1f}",
                lr=f"{self.scheduler.get_last_lr()[0]:.2e}",
            )
            bar.update()
            if params.log_every_steps and self.global_step % params.log_every_steps == 0:
                self.log.debug(
                    "step %d loss %.5f grad_norm %.3f", self.global_step, loss_value, values[-1]
                )
            if self._stop_requested(stop):
                bar.close()
                if hasattr(batches, "close"):
                    batches.close()
                self.save_checkpoint(epoch, step + 1)
                self._stopping()
            every = params.checkpoint_every_steps
            if every and self.global_step % every == 0 and step + 1 < n_steps:
                self.save_checkpoint(epoch, step + 1)
        bar.close()
        if hasattr(batches, "close"):  # stop the reader threads of an unfinished epoch
            batches.close()
        self.train_sampler.start = 0
        elapsed = time.perf_counter() - t_start
        keys = ("loss", "forecast", "recons", "aux", "grad_norm")
        steps = max(self.epoch_sums.get("steps", 0), 1)  # the sums are of global means
        means = {k: self.epoch_sums.get(k, 0.0) / steps for k in keys}
        return {
            "train_loss": means["loss"],
            "train_loss_forecast": means["forecast"],
            "train_loss_recons": means["recons"],
            "train_loss_aux": means["aux"],
            "train_grad_norm": means["grad_norm"],
            "samples_per_s": samples / elapsed if elapsed > 0 else 0.0,
            "epoch_time_s": elapsed,
        }

    @torch.no_grad()
    def validate(self):
        """Validation loss and latitude-weighted RMSE (physical units) per lead time.

        Each rank scores its own share of the validation samples with the bare model (no DDP
        collectives, so unequal shares cannot hang) and the sums are reduced at the end.
        """
        model = unwrap(self.model)
        model.eval()
        stepper = self._stepper(model)
        n_lead = self.params.t_out_valid
        scores = MetricAccumulator(self.layout.n_channels, n_lead, self.device)
        loss_sum = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, batches
        cap = self.params.max_valid_steps
        for i, (inp, tar, _) in enumerate(self.valid_loader):
            if cap and i >= cap:
                break
            inp, tar = inp.to(self.device), tar.to(self.device)
            loss, _, forecasts = self._rollout_loss(stepper, inp, tar)
            for k, forecast in enumerate(forecasts):
                truth = stepper.denormalise(tar[:, k])
                scores.update(k, stepper.denormalise(forecast), truth, self.lat_weights)
            loss_sum += torch.stack([loss.detach().double(), loss_sum.new_ones(())])
        scores.all_reduce()
        loss_sum = dist_utils.all_reduce_sum(loss_sum)
        rmse = scores.rmse()  # (C, T)
        result = {
            "valid_loss": (loss_sum[0] / loss_sum[1].clamp(min=1)).item(),
            "valid_samples": scores.n_samples(),
        }
        for k in range(n_lead):
            suffix = "" if k == 0 else f"_{(k + 1) * self.params.lead_time}h"
            result[f"valid_rmse{suffix}"] = {
                n: float(rmse[self.layout.index_of_name(n), k]) for n in self.headline
            }
        return result

    def train(self):
        params = self.params
        if self.start_epoch >= params.max_epochs:
            self.log.info(
                "nothing to do: the run already finished its %d epochs "
                "(raise max_epochs with --set to continue)",
                params.max_epochs,
            )
            return
        for epoch in range(self.start_epoch, params.max_epochs):
            train_stats = self.train_one_epoch(epoch)
            valid_stats = self.validate()
            improved = valid_stats["valid_loss"] < self.best_valid
            if improved:
                self.best_valid = valid_stats["valid_loss"]
            record = {
                "epoch": epoch + 1,
                "global_step": self.global_step,
                **train_stats,
                **valid_stats,
                "lr": self.scheduler.get_last_lr()[0],
                "best_valid_loss": self.best_valid,
            }
            self._save_epoch_files(epoch, improved, record)
            dist_utils.barrier()
            if self.wandb is not None:
                self.wandb.log(_flatten(record), step=self.global_step)
            rmse = ", ".join(f"{k} {v:.4g}" for k, v in valid_stats["valid_rmse"].items())
            self.log.info(
                "epoch %d/%d | train loss %.5f | valid loss %.5f%s | %.1f samples/s | "
                "%.1f s | lr %.2e | rmse(%s): %s",
                epoch + 1,
                params.max_epochs,
                train_stats["train_loss"],
                valid_stats["valid_loss"],
                " (best)" if improved else "",
                train_stats["samples_per_s"],
                train_stats["epoch_time_s"],
                record["lr"],
                lead_label(params.lead_time),
                rmse,
            )
            if epoch + 1 < params.max_epochs and self._stop_requested():
                self._stopping()
        if self.wandb is not None:
            self.wandb.finish()

    def _stop_requested(self, flag=None) -> bool:
        """Whether any rank received a stop signal (``flag``: already all-reduced)."""
        if flag is None:
            local = float(self.stop is not None and self.stop.requested)
            flag = dist_utils.all_reduce_sum(torch.tensor([local], device=self.device)).item()
        return flag > 0

    def _stopping(self):
        """``ckpt.tar`` holds the current state: say so and raise :class:`Preempted`."""
        signal_name = self.stop.name if self.stop is not None and self.stop.requested else ""
        self.log.warning(
            "stop signal %s: checkpoint written after global step %d; exiting with code %d, "
            "run the same command to resume",
            signal_name or "on another rank",
            self.global_step,
            EXIT_PREEMPTED,
        )
        if self.wandb is not None:
            self.wandb.finish(exit_code=EXIT_PREEMPTED)
        raise Preempted()


def _flatten(record, prefix=""):
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[prefix + key] = value
    return flat


def _plain_params(params):
    """The resolved config with plain values only (safe for weights_only loading)."""
    return json.loads(json.dumps(params.to_dict()))


def _append_jsonl(path, record):
    previous = ""
    if os.path.isfile(path):
        with open(path) as f:
            previous = f.read()
    atomic_write_text(path, previous + json.dumps(record) + "\n")


def run_directory(args, params) -> str:
    return os.path.join(args.exp_dir, params.config_name, str(args.run_num))


def claim_run_directory(run_dir: str, info: dist_utils.DistInfo) -> RunLock | None:
    """Create ``run_dir``, lock it and remove stale temporary files (rank 0); every rank raises
    when that failed, so none is left waiting for the others."""
    lock, error = None, None
    if info.is_main:
        try:
            ckpt_dir = os.path.join(run_dir, "training_checkpoints")
            try:
                os.makedirs(ckpt_dir, exist_ok=True)
            except OSError as err:
                raise OutputError(f"cannot create {ckpt_dir}: {err.strerror or err}") from err
            lock = RunLock(run_dir)
            lock.acquire()
            for path in remove_stale_temporaries(run_dir) + remove_stale_temporaries(ckpt_dir):
                logging.getLogger("vamoe").info("removed stale temporary file %s", path)
        except VAMoEError as err:
            error = err
    failed = torch.tensor([float(error is not None)], device=info.device)
    if dist_utils.all_reduce_sum(failed).item() > 0:
        if error is not None:
            raise error
        raise OutputError(f"rank 0 could not take the run directory {run_dir} (see its error)")
    return lock


def train_run(params, args, info, stop) -> None:
    """Lock the run directory, train, unlock."""
    lock = claim_run_directory(run_directory(args, params), info)
    try:
        Trainer(params, args, info, stop).train()
    finally:
        if lock is not None:
            lock.release()


def main(argv=None):
    """Train; exit 0 when done, 75 when stopped by a signal (resumable), 2 on a configuration,
    data or checkpoint error (one line), 1 on anything else (a traceback)."""
    args = parse_args(argv)
    info = dist_utils.init_distributed()
    setup_logging(None, info.rank, info.world_size)
    code = 0
    try:
        params = YParams(args.yaml_config, args.config, args.overrides)
        with StopSignals(params.stop_signals) as stop:
            watch_launcher()
            train_run(params, args, info, stop)
    except Preempted:
        code = EXIT_PREEMPTED
    except ConfigError as err:  # the same on every rank: said once
        if info.is_main:
            report_error(err, info.rank, info.world_size)
        code = EXIT_USER_ERROR
    except VAMoEError as err:
        report_error(err, info.rank, info.world_size)
        code = EXIT_USER_ERROR
    except Exception as err:
        brief = None
        if info.distributed and "Connection closed by peer" in str(err):
            brief = "another rank stopped (its error is above and in out.log); " + str(err)
        report_error(err, info.rank, info.world_size, brief)
        code = 1
    if code in (0, EXIT_PREEMPTED):
        dist_utils.cleanup()  # after an error a peer may be gone: leave the teardown to exit
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
