"""A conversion split into parts run by separate jobs at once (``--part I/N``), and put back
together (``--finalize``).

The selected times are cut into ``N`` contiguous blocks of whole days (``.npy`` output) or whole
years (HDF5 output), as even as the days or years allow; part ``I`` converts block ``I`` into the
same root as every other part. No two parts write the same day directory or year file, and the
grid file, shared, is written atomically with the same contents by each, so ``N`` parts may run
concurrently (e.g. as the tasks of a SLURM array). Each part also computes the moments of its
piece of the statistics period (:func:`save_part_statistics`: the pieces of the ``N`` parts
partition the period) into ``statistic/parts/part-<I>-of-<N>.json``.

:func:`finalize` checks that every part finished, and otherwise names the parts (and days) still
to convert; then it merges the parts' moments exactly (:mod:`utils.data.moments`) into
``mean_std*.json`` and computes the climatology, so the result equals that of one conversion.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, replace

import numpy as np

from utils.conversion.request import InputPlan, ResolvedRequest
from utils.conversion.variable_names import ConversionError
from utils.data.moments import load_partial_moments, partial_path, save_partial_moments
from utils.data.npy_layout import STATISTIC_DIR
from utils.errors import DataFileError, MissingDataError
from utils.times import dates_of, from_hours, to_hours

PARTS_DIR = "parts"  # under statistic/
BEFORE, AFTER = -(2**62), 2**62  # hours before and after any time


@dataclass(frozen=True)
class Part:
    """Part ``index`` (from 1) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_part(text: str) -> Part:
    """``--part I/N`` as a :class:`Part`; an error unless ``1 <= I <= N``."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise ConversionError(f"--part {text!r}: expected I/N with 1 <= I <= N, e.g. 3/16")
    return Part(int(match.group(1)), int(match.group(2)))


def unit_start(hours: np.ndarray, unit: str) -> np.ndarray:
    """The first hour of the day (``unit`` ``day``) or year (``year``) of each of ``hours``."""
    hours = np.asarray(hours, dtype=np.int64)
    if unit == "day":
        return hours - hours % 24
    return np.array([to_hours(f"{from_hours(h).year:04d}-01-01") for h in hours], np.int64)


@dataclass(frozen=True)
class PartSplit:
    """The selected times cut into ``count`` parts of whole ``unit`` (``day`` or ``year``):
    ``starts`` (int64, sorted) are the first hours of the units, and part ``I`` holds the units
    ``starts[bounds[I - 1]:bounds[I]]``."""

    unit: str
    count: int
    starts: np.ndarray
    bounds: np.ndarray

    def hours(self, index: int) -> tuple[int, int]:
        """The inclusive range of hours of part ``index``: from its first unit (the first part:
        from any earlier time) to just before the next part's first unit (the last part: to any
        later time). The ranges of all parts partition time; an empty part's range is empty."""
        lo = BEFORE if index == 1 else self._start(self.bounds[index - 1])
        hi = AFTER if index == self.count else self._start(self.bounds[index]) - 1
        if self.bounds[index - 1] == self.bounds[index]:  # no unit: nothing
            return AFTER, BEFORE
        return lo, hi

    def _start(self, position: int) -> int:
        return int(self.starts[position]) if position < len(self.starts) else AFTER

    def part_of(self, hours: int) -> int:
        """The part (from 1) whose range holds ``hours``."""
        position = int(np.searchsorted(self.starts, unit_start([hours], self.unit)[0]))
        return int(np.searchsorted(self.bounds, position, side="right"))


def split_parts(hours: np.ndarray, count: int, unit: str) -> PartSplit:
    """The split of the times ``hours`` into ``count`` parts of whole ``unit``."""
    starts = np.unique(unit_start(hours, unit))
    sizes = [len(b) for b in np.array_split(np.arange(len(starts)), count)]
    return PartSplit(unit, count, starts, np.concatenate([[0], np.cumsum(sizes)]).astype(int))


def restrict(request: ResolvedRequest, split: PartSplit, index: int) -> ResolvedRequest:
    """``request`` with only the times of part ``index`` of ``split``."""
    lo, hi = split.hours(index)
    plans = []
    for plan in request.plans:
        hours = np.round(request.opened[plan.index].times[plan.time_index])
        keep = (hours >= lo) & (hours <= hi)
        if keep.any():
            plans.append(InputPlan(plan.index, plan.time_index[keep], plan.fields))
    return replace(request, plans=plans)


def parts_dir(root_dir: str) -> str:
    """``<root_dir>/statistic/parts``: the parts' moments."""
    return os.path.join(root_dir, STATISTIC_DIR, PARTS_DIR)


def part_statistics(data, split: PartSplit, index: int, stats: dict, reuse: bool) -> dict:
    """The moments of part ``index``'s piece of the statistics period, from ``data`` (a
    :class:`utils.data.dataset_fields.DatasetFields`), saved in its file of :func:`parts_dir`
    and returned as loaded. ``stats``: ``first``, ``last`` (hours), ``hour_step`` and
    ``channels`` of the statistics. With ``reuse``, a file already made for the same piece is
    kept."""
    from utils.data.statistics import partial_statistics

    lo, hi = split.hours(index)
    about = {
        "part": index,
        "parts": split.count,
        "unit": split.unit,
        "first": max(lo, stats["first"]),
        "last": min(hi, stats["last"]),
        "hour_step": stats["hour_step"],
        "channels": [c.name for c in stats["channels"]],
        "data_format": data.format,
    }
    path = partial_path(parts_dir(data.root), index, split.count)
    if reuse and os.path.exists(path):
        try:
            found = load_partial_moments(path)
            if all(found.get(k) == v for k, v in about.items()):
                return dict(found, path=path)
        except DataFileError:
            pass
    moments, n_times = partial_statistics(
        data, about["first"], about["last"], stats["hour_step"], stats["channels"], False
    )
    save_partial_moments(path, moments, **about, n_times=n_times)
    return dict(load_partial_moments(path), path=path)


def recorded_part_count(root_dir: str) -> int | None:
    """The ``N`` of the parts' moment files under ``root_dir`` (None when there are none); an
    error when files of different ``N`` are there."""
    counts = {
        int(m.group(1))
        for p in glob.glob(os.path.join(parts_dir(root_dir), "part-*-of-*.json"))
        if (m := re.search(r"-of-(\d+)\.json$", p))
    }
    if len(counts) > 1:
        raise DataFileError(
            f"{parts_dir(root_dir)} holds the moments of conversions in {sorted(counts)} parts; "
            "remove the files of the split no longer used"
        )
    return counts.pop() if counts else None


def unfinished_error(pending: list[int], split: PartSplit | None, command: str) -> MissingDataError:
    """The error of :func:`finalize` when times are still to convert: the parts (when known)
    and the days they fall on."""
    days = dates_of(pending)
    shown = ", ".join(days[:10]) + (" ..." if len(days) > 10 else "")
    if split is None:
        return MissingDataError(
            f"the conversion is not finished: {len(pending)} time(s) on {len(days)} day(s) still "
            f"to convert ({shown}); run the parts again, then {command}"
        )
    parts = sorted({split.part_of(t) for t in pending})
    names = ", ".join(f"{p}/{split.count}" for p in parts)
    return MissingDataError(
        f"part(s) {names} not finished: {len(pending)} time(s) on {len(days)} day(s) still to "
        f"convert ({shown}); run them again (--part {parts[0]}/{split.count} ...), then {command}"
    )
