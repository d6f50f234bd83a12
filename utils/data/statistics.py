"""Per-channel normalisation statistics (``statistic/mean_std*.json``) and their streaming computation.

``mean_std.json`` holds ``{"mean": {var: [37 values]}, "std": {var: [37 values]}}`` with values in
ERA5's level order (``utils.channels.ERA5_LEVELS``, 1000 hPa first); ``null`` marks a level that was
not computed. ``mean_std_single.json`` holds ``{"mean": {var: value}, "std": {var: value}}``.

Computing them streams over a period one time at a time (never the whole period in memory), from
either format (:mod:`utils.data.dataset_fields`: the ``.npy`` layout, year files, plain FourCastNet
files), and also writes the data climatology (by day of year and hour, plus the time mean). The
period's ends are dates (whole days) or date-times (``2019-01-05T01``); the times used are exactly
those the dataset holds in the period (hourly, 3-, 6-, 12-hourly, or part of a day), read from its
files, never an assumed calendar; their count is reported (``n_times``). The moments of a period
can also be computed in parts and merged (:func:`partial_statistics`, :mod:`utils.data.moments`)::

    python -m tools.statistics --root_dir DIR --start 1979-01-01 --end 2020-12-31 [--hour_step 6]
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence

import numpy as np

from utils.atomic_io import atomic_write_text
from utils.channels import ERA5_LEVELS, Channel
from utils.data.dataset_fields import DatasetFields
from utils.data.moments import RunningMoments
from utils.data.npy_layout import (
    CLIMATOLOGY_DIR,
    MEAN_STD_FILE,
    MEAN_STD_SINGLE_FILE,
    STATISTIC_DIR,
    statistic_path,
)
from utils.errors import (
    ConfigError,
    DataError,
    DataFileError,
    MissingDataError,
    OutputExistsError,
)
from utils.times import format_hours, period_bounds

__all__ = [
    "GROUP_BYTES",
    "RunningMoments",
    "StatisticsError",
    "compute_statistics",
    "load_mean_std",
    "partial_statistics",
    "stream_channels",
    "write_mean_std",
]

GROUP_BYTES = 2 << 30  # climatology accumulators in memory at once (float64 sums by slot)


class StatisticsError(DataError, KeyError):
    """A missing or invalid statistics entry; the message names the file and the key."""

    def __str__(self):  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise MissingDataError(
            f"statistics file {path} does not exist (compute it with "
            "`python -m tools.statistics --root_dir ...`)"
        )
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as err:
        raise DataFileError(f"cannot read statistics file {path}: {err}") from None
    if not isinstance(data, dict):
        raise StatisticsError(f"{path}: expected a JSON object, got {type(data).__name__}")
    for key in ("mean", "std"):
        if not isinstance(data.get(key), dict):
            raise StatisticsError(f"{path}: no '{key}' dictionary")
    return data


def _checked(path: str, kind: str, where: str, value) -> float:
    if value is None:
        raise StatisticsError(f"{path}: {kind} of {where} is null (not computed for this level)")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise StatisticsError(f"{path}: {kind} of {where} is not a number: {value!r}") from None
    if not math.isfinite(value) or (kind == "std" and value <= 0):
        raise StatisticsError(f"{path}: {kind} of {where} is invalid: {value!r}")
    return value


def load_mean_std(root_dir: str, layout) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of every channel of ``layout``, float32 ``(C,)`` in physical units."""
    upper = single = None
    mean = np.empty(layout.n_channels, dtype=np.float64)
    std = np.empty(layout.n_channels, dtype=np.float64)
    for c, ch in enumerate(layout.channels):
        for kind, out in (("mean", mean), ("std", std)):
            if ch.level is None:
                path = statistic_path(root_dir, MEAN_STD_SINGLE_FILE)
                single = single or _read_json(path)
                if ch.variable not in single[kind]:
                    raise StatisticsError(
                        f"{path}: no '{kind}' entry for surface variable "
                        f"'{ch.variable}' (has {sorted(single[kind])})"
                    )
                value = single[kind][ch.variable]
                if isinstance(value, list) and len(value) == 1:
                    value = value[0]
                out[c] = _checked(path, kind, f"'{ch.variable}'", value)
            else:
                path = statistic_path(root_dir, MEAN_STD_FILE)
                upper = upper or _read_json(path)
                values = upper[kind].get(ch.variable)
                if values is None:
                    raise StatisticsError(
                        f"{path}: no '{kind}' entry for variable '{ch.variable}' "
                        f"(has {sorted(upper[kind])})"
                    )
                level = ERA5_LEVELS.index(ch.level)
                if not isinstance(values, list) or len(values) != len(ERA5_LEVELS):
                    raise StatisticsError(
                        f"{path}: '{kind}' of '{ch.variable}' must list {len(ERA5_LEVELS)} values "
                        f"(ERA5 levels 1000..1 hPa), got {values!r:.80}"
                    )
                out[c] = _checked(
                    path, kind, f"'{ch.variable}' at level {ch.level} hPa", values[level]
                )
    return mean.astype(np.float32), std.astype(np.float32)


def write_mean_std(
    root_dir: str,
    upper_mean: dict,
    upper_std: dict,
    surface_mean: dict,
    surface_std: dict,
    overwrite: bool = False,
) -> tuple[str, str]:
    """Write both json files. ``upper_*``: ``{var: {level_hPa: value}}``; ``surface_*``: ``{var: value}``."""
    paths = statistic_path(root_dir, MEAN_STD_FILE), statistic_path(root_dir, MEAN_STD_SINGLE_FILE)
    if not overwrite:
        existing = [p for p in paths if os.path.exists(p)]
        if existing:
            raise OutputExistsError(
                f"statistics {existing} exist; pass --overwrite to replace them"
            )
    os.makedirs(os.path.dirname(paths[0]), exist_ok=True)

    def as37(per_level: dict) -> list:
        return [None if per_level.get(p) is None else float(per_level[p]) for p in ERA5_LEVELS]

    upper = {
        "mean": {v: as37(d) for v, d in upper_mean.items()},
        "std": {v: as37(d) for v, d in upper_std.items()},
    }
    single = {
        "mean": {v: float(x) for v, x in surface_mean.items()},
        "std": {v: float(x) for v, x in surface_std.items()},
    }
    for path, data in zip(paths, (upper, single), strict=False):
        atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return paths


def compute_statistics(
    root_dir: str,
    start,
    end,
    hour_step: int | None = None,
    upper: dict | None = None,
    surface: Sequence[str] | None = None,
    climatology: bool = True,
    climatology_dir: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    *,
    data: DatasetFields | None = None,
    moments: dict[str, RunningMoments] | None = None,
) -> dict:
    """Stream over the times the dataset holds in ``[start, end]`` (dates or date-times, see
    :func:`utils.times.period_bounds`) and write ``mean_std.json``, ``mean_std_single.json``
    and (``climatology``) the data climatology.

    Args:
        hour_step: use only the times whose hour of day is a multiple of it (default: all).
        upper: ``{var: [levels]}`` to compute (default: discovered from the first day's files).
        surface: surface variables (default: discovered).
        data: the dataset's fields (default: ``root_dir`` in the format found there).
        moments: ``{channel name: moments}`` already computed (merged from the parts of a
            conversion): written as they are; the data are then read only for the climatology.
    Returns ``{"mean_std": path, "mean_std_single": path, "climatology": dir or None, "n_times": N,
    "format": "npy" | "h5"}``. Every field is read once; the accumulators of only as many
    channels as fit in :data:`GROUP_BYTES` are in memory at a time.
    """
    data = data or DatasetFields(root_dir)
    first, last = period_bounds([start, end])
    channels = _channels_to_compute(data, first, last, upper, surface)
    what = f"statistics over {start}..{end}" + (f" every {hour_step} h" if hour_step else "")
    times = data.complete_times(channels, first, last, hour_step, what)
    stat_paths = [
        statistic_path(root_dir, MEAN_STD_FILE),
        statistic_path(root_dir, MEAN_STD_SINGLE_FILE),
    ]
    clim_dir = climatology_dir or os.path.join(root_dir, STATISTIC_DIR, CLIMATOLOGY_DIR)
    if not overwrite:
        _refuse_existing(stat_paths + ([clim_dir] if climatology else []))
    shape = data.shape(channels, first, last)
    writer = _data_climatology_writer(clim_dir, shape, times, overwrite) if climatology else None
    if moments is None or writer is not None:
        streamed = stream_channels(data, channels, times, shape, writer, progress)
        moments = streamed if moments is None else moments
    paths = write_mean_std(root_dir, *_mean_std_dicts(channels, moments), overwrite=True)
    return {
        "mean_std": paths[0],
        "mean_std_single": paths[1],
        "climatology": writer.close() if climatology else None,
        "n_times": len(times),
        "format": data.format,
    }


def partial_statistics(
    data: DatasetFields,
    first: int,
    last: int,
    hour_step: int | None,
    channels: Sequence[Channel],
    progress: bool = True,
) -> tuple[dict[str, RunningMoments], int]:
    """``({channel name: moments}, number of times)`` over the times stored in ``[first, last]``
    (hours; none when ``first > last``): one part of a period, to merge with the others
    (:mod:`utils.data.moments`). Every channel must be stored at each of those times."""
    empty = {c.name: RunningMoments() for c in channels}
    if first > last or not len(data.stored_times(channels, first, last, hour_step)):
        return empty, 0
    what = f"statistics over {format_hours(first)}..{format_hours(last)}"
    times = data.complete_times(channels, first, last, hour_step, what)
    shape = data.shape(channels, first, last)
    return stream_channels(data, channels, times, shape, None, progress), len(times)


def channels_of(upper: dict, surface: Sequence[str]) -> list[Channel]:
    """The channels of ``{var: [levels]}`` and ``[surface vars]``, upper-air first."""
    return [Channel(v, int(p)) for v, levels in upper.items() for p in levels] + [
        Channel(s) for s in surface
    ]


def _channels_to_compute(
    data: DatasetFields, first: int, last: int, upper: dict | None, surface: Sequence[str] | None
) -> list[Channel]:
    """The channels of ``upper`` and ``surface`` as given, or as discovered in the first day or
    year of ``[first, last]`` (hours) that holds data."""
    if upper is None or surface is None:
        found = data.discover(first, last)
        if upper is None:
            upper = {}
            for c in found:
                if c.level is not None:
                    upper.setdefault(c.variable, []).append(c.level)
        if surface is None:
            surface = [c.variable for c in found if c.level is None]
    channels = channels_of(upper, surface)
    if not channels:
        raise ConfigError(f"no variables to compute statistics for under {data.root}")
    return channels


def _mean_std_dicts(channels: Sequence[Channel], moments: dict) -> tuple[dict, dict, dict, dict]:
    """``(upper_mean, upper_std, surface_mean, surface_std)`` for :func:`write_mean_std`."""
    upper_mean: dict = {}
    upper_std: dict = {}
    surface_mean, surface_std = {}, {}
    for ch in channels:
        m = moments[ch.name]
        if ch.level is None:
            surface_mean[ch.variable], surface_std[ch.variable] = m.mean, m.std
        else:
            upper_mean.setdefault(ch.variable, {})[ch.level] = m.mean
            upper_std.setdefault(ch.variable, {})[ch.level] = m.std
    return upper_mean, upper_std, surface_mean, surface_std


def _refuse_existing(outputs: list[str]) -> None:
    existing = [p for p in outputs if os.path.exists(p)]
    if existing:
        raise OutputExistsError(f"{existing} exist; pass overwrite (--overwrite) to replace them")


def _data_climatology_writer(clim_dir: str, shape: tuple, times: np.ndarray, overwrite: bool):
    """A :class:`utils.data.climatology.ClimatologyWriter` of the days of year and hours of
    ``times`` (which it records as its period)."""
    from utils.data.climatology import ClimatologyWriter, climatology_slots

    doys, hours, _ = climatology_slots(times)
    return ClimatologyWriter(
        clim_dir,
        shape,
        hours,
        doys,
        overwrite=overwrite,
        source="data",
        period=[format_hours(times[0]), format_hours(times[-1])],
        n_times=int(len(times)),
    )


class _SlotSums:
    """Float64 sums of one channel's fields ``(H, W)`` by climatology slot (day of year, hour),
    with their counts, and over all times."""

    def __init__(self, table: tuple[int, int], shape: tuple):
        self.sums = np.zeros(table + shape, dtype=np.float64)
        self.counts = np.zeros(table, dtype=np.int64)
        self.total = np.zeros(shape, dtype=np.float64)

    def add(self, slot: tuple[int, int], field: np.ndarray) -> None:
        self.sums[slot] += field
        self.counts[slot] += 1
        self.total += field

    def means(self, n_times: int) -> tuple[np.ndarray, np.ndarray]:
        """``(time mean (H, W), mean by slot (D, K, H, W))``; a slot without data holds the time
        mean. Divides the sums in place."""
        time_mean = self.total / n_times
        empty = self.counts == 0
        self.sums /= np.maximum(self.counts, 1)[:, :, None, None]
        self.sums[empty] = time_mean
        return time_mean, self.sums


def stream_channels(
    data: DatasetFields,
    channels: Sequence[Channel],
    times: np.ndarray,
    shape: tuple,
    writer=None,
    progress: bool = True,
) -> dict[str, RunningMoments]:
    """``{channel name: moments}`` of ``channels`` over ``times``, reading every field once, a
    group of channels at a time; with a climatology ``writer``, each channel's climatology is
    added to it too, in channel order."""
    from utils.data.climatology import climatology_slots
    from utils.progress import progress_bar

    _, _, slots = climatology_slots(times)
    table = (len(writer.doys), len(writer.hours)) if writer is not None else (0, 0)
    per_channel = (table[0] * table[1] + 1) * int(np.prod(shape)) * 8 if writer else 0
    group = max(1, GROUP_BYTES // per_channel) if per_channel else len(channels)
    bar = progress_bar(  # on stderr: the commands print their result on stdout
        total=len(channels) * len(times),
        desc="statistics",
        unit="field",
        enabled=progress,
        stream=sys.stderr,
    )
    moments: dict[str, RunningMoments] = {}
    for g in range(0, len(channels), group):
        chs = list(channels[g : g + group])
        sums = [_SlotSums(table, tuple(shape)) for _ in chs] if writer is not None else None
        found = _read_group(data.reader(chs, shape), len(chs), times, slots, shape, sums, bar)
        for k, ch in enumerate(chs):
            moments[ch.name] = found[k]
            if writer is not None:
                writer.add(ch.name, *sums[k].means(len(times)))
    bar.close()
    return moments


def _read_group(reader, n: int, times, slots, shape, sums, bar) -> list[RunningMoments]:
    """The moments of the ``n`` channels of ``reader`` over ``times``, each time read once
    (also added into ``sums[k]`` at its slot of ``slots`` when given); NaN/inf values are an
    error naming the file."""
    moments = [RunningMoments() for _ in range(n)]
    state = np.empty((n, *shape), dtype=np.float32)
    for t, slot in zip(times, slots, strict=True):
        reader.read(int(t), state)
        for k in range(n):
            field = state[k]
            if not np.isfinite(field).all():
                raise DataFileError(
                    f"{reader.source(int(t), k)}: {int((~np.isfinite(field)).sum())} NaN/inf "
                    "value(s)"
                )
            moments[k].update(field)
            if sums is not None:
                sums[k].add(slot, field)
        bar.update(n)
    return moments
