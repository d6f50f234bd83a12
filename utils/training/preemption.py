"""Stopping a training cleanly: on a stop signal, checkpoint at the next step and exit 75.

Schedulers announce the end of a job with a signal (SLURM: SIGTERM at preemption, ``scancel`` and
the time limit; a chosen signal some minutes earlier with ``--signal``). :class:`StopSignals`
turns the configured ``stop_signals`` into a flag; the training loop shares the flag between
ranks in the all-reduce it does every step anyway, so all ranks stop after the same optimiser
step, write ``ckpt.tar`` and exit with :data:`EXIT_PREEMPTED`. Running the same command again
resumes from there. A second signal stops the process at once (the default action).

Under ``torchrun`` each rank also watches its launcher: when the launcher dies (killed without
passing the signal on), the rank signals itself with SIGTERM and stops as above.
"""

from __future__ import annotations

import os
import signal
import threading

import torch

from utils import distributed as dist_utils

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on request, resumable


class Preempted(Exception):
    """Raised after the stop checkpoint was written; the entry point exits with code 75."""


class StopSignals:
    """Record the first of ``names`` (e.g. ``["SIGTERM", "SIGUSR1"]``) that arrives.

    Use as a context manager: the previous handlers are restored on exit.
    """

    def __init__(self, names):
        self.signals = [getattr(signal, n) for n in names]
        self.received: int | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""

    def _handle(self, signum, frame) -> None:
        if self.received is not None:  # the second one: stop now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False


def stop_flag(stop: StopSignals | None) -> float:
    """1.0 when ``stop`` recorded a signal in this process, else 0.0 (also for no ``stop``)."""
    return float(stop is not None and stop.requested)


def stop_requested_on_any_rank(stop: StopSignals | None, device) -> bool:
    """Whether any rank recorded a stop signal (one all-reduce on ``device``)."""
    flag = torch.tensor([stop_flag(stop)], device=device)
    return dist_utils.all_reduce_sum(flag).item() > 0


def watch_launcher(interval_s: float = 1.0) -> threading.Thread | None:
    """Under torchrun, SIGTERM this process when its parent (the launcher) is gone (a parent
    that is already init means the launcher died before the watch began)."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    parent = os.getppid()

    def watch():
        while os.getppid() == parent and parent != 1:
            threading.Event().wait(interval_s)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="launcher-watch", daemon=True)
    thread.start()
    return thread
