"""Progress of long loops: a tqdm bar on a terminal, plain log lines otherwise.

When the output stream is not a terminal (CI, ``nohup``, SLURM log files) a carriage-return bar
would write hundreds of updates into one line; :class:`PlainProgress` instead prints one line
each time another ``every_percent`` % of the work is done or ``every_seconds`` have passed since
the last line, and one at the end::

    epoch 1/12: 30/100 step (30 %), 12.0 s, 2.5 step/s, loss=0.9825

:func:`progress_bar` picks one of the two; both have tqdm's ``update``, ``set_postfix``, ``close``
and iteration.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from typing import IO

from tqdm import tqdm

__all__ = ["progress_bar", "PlainProgress", "EVERY_PERCENT", "EVERY_SECONDS"]

EVERY_PERCENT = 10
EVERY_SECONDS = 60.0


def _length(iterable) -> int | None:
    try:
        return len(iterable)
    except TypeError:
        return None


class PlainProgress:
    """tqdm-like progress that prints whole lines (see the module docstring).

    Args:
        iterable: what to iterate over (optional when only :meth:`update` is used).
        desc: label at the start of each line.
        total: number of units of work (default ``len(iterable)`` when it has one).
        unit: name of one unit.
        initial: units already done (a resumed epoch).
        every_percent, every_seconds: when to print a line (whichever comes first).
        stream: where the lines go.
        clock: monotonic time in seconds (``time.monotonic``).
    """

    def __init__(
        self,
        iterable: Iterable | None = None,
        desc: str = "",
        total: int | None = None,
        unit: str = "it",
        initial: int = 0,
        every_percent: float = EVERY_PERCENT,
        every_seconds: float = EVERY_SECONDS,
        stream: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.iterable, self.desc, self.unit = iterable, desc, unit
        self.total = _length(iterable) if total is None else total
        self.n = self.start = int(initial)
        self.every_percent, self.every_seconds = float(every_percent), float(every_seconds)
        self.stream = stream if stream is not None else sys.stdout
        self.clock = clock
        self.t0 = self.last_time = clock()
        self.last_n = self.n
        self.postfix = ""

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def _percent(self, n: int) -> float | None:
        return 100.0 * n / self.total if self.total else None

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        due = now - self.last_time >= self.every_seconds
        pct, last = self._percent(self.n), self._percent(self.last_n)
        if pct is not None and int(pct // self.every_percent) > int(last // self.every_percent):
            due = True
        if due:
            self._print(now)

    def _print(self, now: float) -> None:
        elapsed = now - self.t0
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        line = f"{self.desc}: {done} {self.unit}"
        if self.total:
            line += f" ({self._percent(self.n):.0f} %)"
        line += f", {elapsed:.1f} s"
        if elapsed > 0 and self.n > self.start:
            line += f", {(self.n - self.start) / elapsed:.3g} {self.unit}/s"
        if self.postfix:
            line += ", " + self.postfix
        print(line, file=self.stream, flush=True)
        self.last_time, self.last_n = now, self.n

    def close(self) -> None:
        """Print the final line unless the last one already showed the same count."""
        if self.n != self.last_n:
            self._print(self.clock())


def progress_bar(
    iterable: Iterable | None = None,
    desc: str = "",
    total: int | None = None,
    unit: str = "it",
    initial: int = 0,
    enabled: bool = True,
    stream: IO[str] | None = None,
):
    """A tqdm bar when ``stream`` (default stdout) is a terminal, else :class:`PlainProgress`;
    with ``enabled=False`` a silent tqdm (the iterable passes through)."""
    stream = stream if stream is not None else sys.stdout
    if total is None:
        total = _length(iterable)
    if enabled and not stream.isatty():
        return PlainProgress(iterable, desc, total, unit, initial, stream=stream)
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        initial=initial,
        disable=not enabled,
        dynamic_ncols=True,
        file=stream,
    )
