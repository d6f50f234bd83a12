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
import logging
import os
import random
import sys

import numpy as np
import torch

from utils import distributed as dist_utils
from utils.evaluation.stepper import resolve_amp_dtype
from utils.logging_utils import report_entry_point_error, setup_logging
from utils.training.checkpoint_writes import write_epoch_end
from utils.training.model_setup import build_model, load_starting_weights, wrap_model
from utils.training.preemption import (
    EXIT_PREEMPTED,
    Preempted,
    StopSignals,
    stop_requested_on_any_rank,
    watch_launcher,
)
from utils.training.resume import changed_settings, find_resume_checkpoint, record_changed_settings
from utils.training.run_directory import RunFiles, claim_run_directory, run_directory
from utils.training.training_data import load_training_data
from utils.training.training_log import WandbRun, log_epoch, log_setup, log_stop
from utils.training.training_loop import TrainingLoop
from utils.training.training_state import build_training_state
from utils.training.validation import Validation
from utils.YParams import YParams, add_override_argument

logger = logging.getLogger("vamoe")


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
    """One training run, composed of its parts: the data (:mod:`utils.training.training_data`),
    the model (:mod:`utils.training.model_setup`), the training state and its resume
    (:mod:`utils.training.training_state`, :mod:`utils.training.resume`), the epoch loop
    (:mod:`utils.training.training_loop`), validation (:mod:`utils.training.validation`), the
    run's files (:mod:`utils.training.checkpoint_writes`) and its log
    (:mod:`utils.training.training_log`)."""

    def __init__(self, params: YParams, args, info: dist_utils.DistInfo, stop=None):
        self.params, self.info, self.stop = params, info, stop
        self.files = RunFiles(run_directory(args.exp_dir, params.config_name, args.run_num))
        setup_logging(self.files.log, info.rank, info.world_size)
        amp_dtype = resolve_amp_dtype(params.amp_dtype if args.enable_amp else None, info.device)

        torch.manual_seed(params.seed)
        np.random.seed(params.seed)
        random.seed(params.seed)  # unused by the model, but checkpointed: the same in every run
        self.data = load_training_data(params, info.distributed)
        stats = self.data.train_set  # the dataset's grid and normalisation statistics
        self.validation = Validation(
            self.data.valid_loader, params, stats.lat, stats.mean, stats.std, info.device, amp_dtype
        )
        model = build_model(params, stats.lat, info.device)
        resume, resume_path = find_resume_checkpoint(args.checkpoint, self.files)
        frozen = load_starting_weights(model, params, resume, resume_path)
        log_setup(params, info, amp_dtype, model, frozen, self.data)
        self.data.require_a_step(params)

        self.state = build_training_state(
            wrap_model(model, params, info),
            params,
            self.data.steps_per_epoch,
            amp_dtype,
            info.world_size,
        )
        self._resume(resume, resume_path)
        self.loop = TrainingLoop(self.state, self.data, self.files, params, info, amp_dtype, stop)
        self.wandb = WandbRun.open(params, args.run_num, self.files.run_dir, info)

    def _resume(self, resume, resume_path) -> None:
        """Restore the training state from ``resume`` (None: a new run), record changed
        settings, and write ``hyperparams.yaml`` when it is new or the settings changed."""
        changes = {}
        if resume is not None:
            self.state.restore(resume, resume_path)
            changes = changed_settings(resume, self.params, self.info.world_size)
            record_changed_settings(changes, self.files, self.state.progress, self.info.is_main)
        if self.info.is_main and (changes or not os.path.isfile(self.files.hyperparams)):
            self.params.dump(self.files.hyperparams)

    def train(self) -> None:
        """The remaining epochs; on a stop signal (``ckpt.tar`` written) raise :class:`Preempted`."""
        progress, max_epochs = self.state.progress, self.params.max_epochs
        if progress.start_epoch >= max_epochs:
            logger.info(
                "nothing to do: the run already finished its %d epochs "
                "(raise max_epochs with --set to continue)",
                max_epochs,
            )
            return
        try:
            for epoch in range(progress.start_epoch, max_epochs):
                self._epoch(epoch)
                if epoch + 1 < max_epochs and stop_requested_on_any_rank(
                    self.stop, self.info.device
                ):
                    raise Preempted()
        except Preempted:
            log_stop(self.stop, progress.global_step)
            self.wandb.finish(exit_code=EXIT_PREEMPTED)
            raise
        self.wandb.finish()

    def _epoch(self, epoch: int) -> None:
        """Train and validate epoch ``epoch`` (0-based), write its files, log it."""
        progress = self.state.progress
        train_stats = self.loop.run_epoch(epoch)
        valid_stats = self.validation.run(self.state.model)
        improved = valid_stats["valid_loss"] < progress.best_valid_loss
        if improved:
            progress.best_valid_loss = valid_stats["valid_loss"]
        record = {
            "epoch": epoch + 1,
            "global_step": progress.global_step,
            **train_stats,
            **valid_stats,
            "lr": self.state.scheduler.get_last_lr()[0],
            "best_valid_loss": progress.best_valid_loss,
        }
        write_epoch_end(self.state, self.files, self.info.is_main, epoch, improved, record)
        dist_utils.barrier()
        self.wandb.log(record, step=progress.global_step)
        log_epoch(self.params, record, improved)


def train_run(params, args, info, stop) -> None:
    """Lock the run directory, train, unlock."""
    lock = claim_run_directory(run_directory(args.exp_dir, params.config_name, args.run_num), info)
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
    except Exception as err:  # a ConfigError is said once; see report_entry_point_error
        code = report_entry_point_error(err, info.rank, info.world_size, "above and in out.log")
    if code in (0, EXIT_PREEMPTED):
        dist_utils.cleanup()  # after an error a peer may be gone: leave the teardown to exit
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
