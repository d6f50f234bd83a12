"""Train VA-MoE (one process, or DistributedDataParallel under torchrun).

    python train.py --yaml_config config/vamoe.yaml --config tiny --run_num 0 --exp_dir exp
    torchrun --nproc_per_node 4 train.py --config vamoe --run_num 0 --exp_dir exp --enable_amp

Writes ``<exp_dir>/<config>/<run_num>/``: ``out.log``, ``hyperparams.yaml``, ``metrics.jsonl``
(one line per epoch) and ``training_checkpoints/`` (``ckpt.tar`` every epoch and every
``checkpoint_every_steps`` steps, ``best_ckpt.tar`` at the best validation loss, and
``ckpt_epoch<N>.tar`` snapshots, the last ``keep_snapshots`` kept). Running the same command
again resumes from ``ckpt.tar``; an incremental section (``cl_ckpt_path`` set) starts from the
initial-stage checkpoint, mapped onto the new variables, with the ``freeze`` patterns frozen.
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
from tqdm import tqdm

from networks.compile import compile_model
from networks.vamoe import VAMoE
from utils import distributed as dist_utils
from utils.atomic_io import atomic_write_text
from utils.checkpoint import (
    atomic_save,
    check_channel_names,
    load_checkpoint,
    rng_state,
    set_rng_state,
    unwrap,
)
from utils.data_loader_npyfiles import get_data_loader
from utils.freezing import freeze_from_params
from utils.grid import latitudes
from utils.incremental import load_initial_stage
from utils.logging_utils import setup_logging
from utils.rollout import MetricAccumulator, autocast_context, resolve_amp_dtype
from utils.weighted_acc_rmse import weighted_mse_torch_channels
from utils.YParams import ConfigError, YParams


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
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (parsed as YAML)",
    )
    return parser.parse_args(argv)


def build_optimizer(model, params) -> torch.optim.AdamW:
    """Fused AdamW (one kernel per step, CUDA and CPU) over the trainable parameters; matrices
    decay, vectors (biases, norms, log-variances) and the position embedding do not."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith("pos_embed") else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": params.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=params.lr, betas=tuple(params.betas), fused=True)


class Trainer:
    """Owns the model, data, optimisation state and run directory of one training run."""

    def __init__(self, params: YParams, args, info: dist_utils.DistInfo):
        self.params = params
        self.info = info
        self.device = info.device
        self.run_dir = os.path.join(args.exp_dir, params.config_name, str(args.run_num))
        self.ckpt_dir = os.path.join(self.run_dir, "training_checkpoints")
        self.ckpt_path = os.path.join(self.ckpt_dir, "ckpt.tar")
        self.best_path = os.path.join(self.ckpt_dir, "best_ckpt.tar")
        self.metrics_path = os.path.join(self.run_dir, "metrics.jsonl")
        if info.is_main:
            os.makedirs(self.ckpt_dir, exist_ok=True)
        dist_utils.barrier()
        self.log = setup_logging(
            os.path.join(self.run_dir, "out.log") if info.is_main else None, info.rank
        )
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
        self.std2 = (
            torch.as_tensor(self.train_set.std, dtype=torch.float64, device=self.device) ** 2
        )
        self.lat = torch.as_tensor(latitudes(params.h_size), device=self.device)
        self.headline = [n for n in params.headline_variables if n in self.layout.names]

        model = VAMoE.from_params(params).to(self.device)
        self.start_epoch, self.start_step, self.global_step = 0, 0, 0
        self.best_valid = math.inf
        self.epoch_sums = {}
        resume_path = args.checkpoint or (
            self.ckpt_path if os.path.isfile(self.ckpt_path) else None
        )
        resume = load_checkpoint(resume_path) if resume_path else None
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

        self.model = model
        if info.distributed:
            self.model = DistributedDataParallel(
                model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=params.use_moe == "moe",
                broadcast_buffers=False,
            )
        if params.compile:
            self.model = compile_model(self.model)
        self.optimizer = build_optimizer(model, params)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            _cosine_factor(
                params.lr, params.min_lr, max(1, params.max_epochs * self.steps_per_epoch)
            ),
        )
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype is torch.float16 else None
        if resume is not None:
            self._restore(resume, resume_path)
        if info.is_main and resume is None:
            params.dump(os.path.join(self.run_dir, "hyperparams.yaml"))
        self.wandb = self._init_wandb(args) if params.log_to_wandb and info.is_main else None

    # ------------------------------------------------------------------ bookkeeping
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
            raise ConfigError(
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
        }

    def save_checkpoint(self, epoch, step_in_epoch):
        if self.info.is_main:
            atomic_save(self._state(epoch, step_in_epoch), self.ckpt_path)
        dist_utils.barrier()

    def _save_epoch_files(self, epoch, improved):
        """After epoch ``epoch`` (0-based) finished: ckpt.tar, best and snapshots (rank 0)."""
        if not self.info.is_main:
            return
        state = self._state(epoch + 1, 0)
        atomic_save(state, self.ckpt_path)
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
        every = self.params.snapshot_every_epochs
        if every and (epoch + 1) % every == 0:
            atomic_save(state, os.path.join(self.ckpt_dir, f"ckpt_epoch{epoch + 1}.tar"))
            snapshots = sorted(
                glob.glob(os.path.join(self.ckpt_dir, "ckpt_epoch*.tar")),
                key=lambda p: int(re.findall(r"ckpt_epoch(\d+)", p)[-1]),
            )
            for old in snapshots[: -self.params.keep_snapshots]:
                os.remove(old)

    # ------------------------------------------------------------------ steps
    def _autocast(self):
        return autocast_context(self.device, self.amp_dtype)

    def _rollout_loss(self, inp, tar, model=None):
        """Mean loss over the target's lead times, feeding forecasts back; returns the loss, the
        mean loss terms and the forecasts ``(B, T, C, H, W)``."""
        model = self.model if model is None else model
        if tar.ndim == 4:
            tar = tar.unsqueeze(1)
        x, loss, terms, forecasts = inp, 0.0, {}, []
        for k in range(tar.shape[1]):
            out = model(x, tar[:, k])
            loss = loss + out.loss
            for name, value in out.terms.items():
                terms[name] = terms.get(name, 0.0) + value.float() / tar.shape[1]
            forecasts.append(out.forecast)
            x = out.forecast
        return loss / tar.shape[1], terms, torch.stack(forecasts, 1)

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
        bar = tqdm(
            total=n_steps,
            initial=skip,
            desc=f"epoch {epoch + 1}/{params.max_epochs}",
            disable=not info.is_main,
            dynamic_ncols=True,
            file=sys.stdout,
        )
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        t_start, samples = time.perf_counter(), 0
        for step in range(skip, n_steps):
            inp, tar, _ = next(batches)
            inp = inp.to(self.device, non_blocking=True)
            tar = tar.to(self.device, non_blocking=True)
            # Stochastic depth draws from a seed fixed by (seed, step, rank): a resumed run
            # repeats the uninterrupted one exactly.
            torch.manual_seed(params.seed + 1_000_003 * self.global_step + info.rank)
            with self._autocast():
                loss, terms, _ = self._rollout_loss(inp, tar)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
            else:
                loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, params.clip_grad_norm)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.scheduler.step()
            self.global_step += 1
            samples += inp.shape[0] * info.world_size
            # The step's scalars as global means in one small all-reduce and one device sync,
            # after the step was queued: every rank sees a non-finite loss together (none is
            # left waiting in a collective), and nothing has been written for this step yet.
            names = ["loss", *terms, "grad_norm"]
            scalars = torch.stack([loss.detach().float(), *terms.values(), grad_norm.float()])
            values = (dist_utils.all_reduce_sum(scalars) / info.world_size).tolist()
            loss_value = values[0]
            if not math.isfinite(loss_value):
                raise FloatingPointError(
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
        n_lead = self.params.t_out_valid
        scores = MetricAccumulator(self.layout.n_channels, n_lead, self.lat, self.device)
        loss_sum = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, batches
        cap = self.params.max_valid_steps
        for i, (inp, tar, _) in enumerate(self.valid_loader):
            if cap and i >= cap:
                break
            inp, tar = inp.to(self.device), tar.to(self.device)
            with self._autocast():
                loss, _, forecasts = self._rollout_loss(inp, tar, model)
            tar = tar.unsqueeze(1) if tar.ndim == 4 else tar
            for k in range(n_lead):
                mse = weighted_mse_torch_channels(
                    forecasts[:, k].float(), tar[:, k].float(), self.lat
                )
                scores.update_mse(k, mse * self.std2)  # physical units
            loss_sum += torch.stack([loss.detach().double(), loss_sum.new_ones(())])
        scores.all_reduce()
        loss_sum = dist_utils.all_reduce_sum(loss_sum)
        rmse = scores.rmse()  # (C, T)
        result = {
            "valid_loss": (loss_sum[0] / loss_sum[1].clamp(min=1)).item(),
            "valid_samples": int(scores.count[0, 0].item()),
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
            self._save_epoch_files(epoch, improved)
            dist_utils.barrier()
            record = {
                "epoch": epoch + 1,
                "global_step": self.global_step,
                **train_stats,
                **valid_stats,
                "lr": self.scheduler.get_last_lr()[0],
                "best_valid_loss": self.best_valid,
            }
            if self.info.is_main:
                previous = ""
                if os.path.isfile(self.metrics_path):
                    with open(self.metrics_path) as f:
                        previous = f.read()
                # Rewritten whole (a few kB) so a crash never leaves a torn line.
                atomic_write_text(self.metrics_path, previous + json.dumps(record) + "\n")
                if self.wandb is not None:
                    self.wandb.log(_flatten(record), step=self.global_step)
            rmse = ", ".join(f"{k} {v:.4g}" for k, v in valid_stats["valid_rmse"].items())
            self.log.info(
                "epoch %d/%d | train loss %.5f | valid loss %.5f%s | %.1f samples/s | "
                "%.1f s | lr %.2e | rmse(6h): %s",
                epoch + 1,
                params.max_epochs,
                train_stats["train_loss"],
                valid_stats["valid_loss"],
                " (best)" if improved else "",
                train_stats["samples_per_s"],
                train_stats["epoch_time_s"],
                record["lr"],
                rmse,
            )
        if self.wandb is not None:
            self.wandb.finish()


def _cosine_factor(lr, min_lr, total_steps):
    """LR multiplier of a cosine annealing from ``lr`` to ``min_lr`` over ``total_steps`` steps.

    Closed form in the step count (held at ``min_lr`` past the end): a run resumed with a larger
    ``max_epochs`` follows the longer schedule instead of climbing back up as the recursive
    ``CosineAnnealingLR`` would past its end.
    """

    def factor(step):
        progress = min(step, total_steps) / total_steps
        return (min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))) / lr

    return factor


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


def main(argv=None):
    args = parse_args(argv)
    info = dist_utils.init_distributed()
    setup_logging(None, info.rank)
    try:
        params = YParams(args.yaml_config, args.config, args.overrides)
        Trainer(params, args, info).train()
    except (ValueError, LookupError, FileNotFoundError, FloatingPointError) as err:
        # Configuration, data and checkpoint errors: their messages name the key or file at
        # fault; the traceback goes to out.log only.
        logging.getLogger("vamoe").debug("error: %s", err, exc_info=True)
        if info.is_main:
            print(f"error: {err}", file=sys.stderr)
        dist_utils.cleanup()
        sys.exit(2)
    dist_utils.cleanup()


if __name__ == "__main__":
    main()
