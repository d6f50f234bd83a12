"""Per-channel normalisation statistics (``statistic/mean_std*.json``) and their streaming computation.

``mean_std.json`` holds ``{"mean": {var: [37 values]}, "std": {var: [37 values]}}`` with values in
ERA5's level order (``utils.channels.ERA5_LEVELS``, 1000 hPa first); ``null`` marks a level that was
not computed. ``mean_std_single.json`` holds ``{"mean": {var: value}, "std": {var: value}}``.

Computing them streams over a period one file at a time (never the whole period in memory) and
also writes the data climatology (by day of year and hour, plus the time mean). The period's ends
are dates (whole days) or date-times (``2019-01-05T01``); the times used are exactly those the
dataset holds in the period (hourly, 3-, 6-, 12-hourly, or part of a day), read from its file
names, never an assumed calendar; their count is reported (``n_times``)::

    python -m tools.statistics --root_dir DIR --start 1979-01-01 --end 2020-12-31 [--hour_step 6]
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Sequence

import numpy as np

from utils.atomic_io import atomic_write_text
from utils.channels import ERA5_LEVELS, Channel
from utils.data.npy_layout import (
    CLIMATOLOGY_DIR,
    MEAN_STD_FILE,
    MEAN_STD_SINGLE_FILE,
    STATISTIC_DIR,
    available_times,
    channel_path,
    discover_variables,
    list_day,
    missing_files_message,
    read_field,
    scan_missing,
    statistic_path,
)
from utils.errors import (
    ConfigError,
    DataError,
    DataFileError,
    MissingDataError,
    OutputExistsError,
)
from utils.times import format_hours, from_hours, period_bounds


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


class RunningMoments:
    """Streaming mean and (population) variance of many arrays, combined exactly in float64
    (Chan et al.'s parallel update), so one pass over decades of fields is numerically safe."""

    def __init__(self):
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0

    def update(self, array: np.ndarray) -> None:
        a = np.asarray(array, dtype=np.float64)
        n_b = a.size
        if n_b == 0:
            return
        mean_b = float(a.mean())
        m2_b = float(np.square(a - mean_b).sum())
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.n * n_b / n
        self.n = n

    @property
    def var(self) -> float:
        return self.m2 / self.n if self.n else float("nan")

    @property
    def std(self) -> float:
        return math.sqrt(self.var)


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
) -> dict:
    """Stream over the times the dataset holds in ``[start, end]`` (dates or date-times, see
    :func:`utils.times.period_bounds`) and write ``mean_std.json``, ``mean_std_single.json``
    and (``climatology``) the data climatology.

    Args:
        hour_step: use only the times whose hour of day is a multiple of it (default: all).
        upper: ``{var: [levels]}`` to compute (default: discovered from the first day's files).
        surface: surface variables (default: discovered).
    Returns ``{"mean_std": path, "mean_std_single": path, "climatology": dir or None, "n_times": N}``.
    Every file is read once; only one channel's accumulators are in memory at a time.
    """
    from utils.data.climatology import climatology_slots

    first, last = period_bounds([start, end])
    upper, channels = _channels_to_compute(root_dir, first, last, upper, surface)
    what = f"statistics over {start}..{end}" + (f" every {hour_step} h" if hour_step else "")
    times = _complete_times(root_dir, channels, first, last, hour_step, what)
    stat_paths = [
        statistic_path(root_dir, MEAN_STD_FILE),
        statistic_path(root_dir, MEAN_STD_SINGLE_FILE),
    ]
    clim_dir = climatology_dir or os.path.join(root_dir, STATISTIC_DIR, CLIMATOLOGY_DIR)
    if not overwrite:
        _refuse_existing(stat_paths + ([clim_dir] if climatology else []))

    shape = read_field(channel_path(root_dir, int(times[0]), channels[0])).shape
    doys, hours, slots = climatology_slots(times)
    writer = None
    if climatology:
        writer = _data_climatology_writer(clim_dir, shape, doys, hours, times, overwrite)
    upper_mean, upper_std, surface_mean, surface_std = _stream_moments(
        root_dir, upper, channels, times, slots, shape, writer, progress
    )
    paths = write_mean_std(
        root_dir, upper_mean, upper_std, surface_mean, surface_std, overwrite=True
    )
    return {
        "mean_std": paths[0],
        "mean_std_single": paths[1],
        "climatology": writer.close() if climatology else None,
        "n_times": len(times),
    }


def _channels_to_compute(
    root_dir: str, first: int, last: int, upper: dict | None, surface: Sequence[str] | None
) -> tuple[dict, list[Channel]]:
    """``(upper, channels)``: ``upper`` and ``surface`` as given, or discovered from the first
    day of ``[first, last]`` (hours) that holds files, and the channels they make."""
    if upper is None or surface is None:
        found_upper, found_surface = discover_variables(
            root_dir, _first_day_with_data(root_dir, first, last)
        )
        upper = found_upper if upper is None else upper
        surface = found_surface if surface is None else surface
    channels = [Channel(v, int(p)) for v, levels in upper.items() for p in levels]
    channels += [Channel(s) for s in surface]
    if not channels:
        raise ConfigError(f"no variables to compute statistics for under {root_dir}")
    return upper, channels


def _complete_times(
    root_dir: str, channels: list, first: int, last: int, hour_step: int | None, what: str
) -> np.ndarray:
    """The times (int64 hours) in ``[first, last]`` at which the dataset holds files, those
    whose hour is a multiple of ``hour_step`` when given; an error unless every channel has a
    file at each of them."""
    times = available_times(root_dir, channels, first, last)
    if hour_step:
        times = times[times % 24 % int(hour_step) == 0]
    if not len(times):
        raise MissingDataError(f"no data files under {root_dir} for the {what}")
    missing = scan_missing(root_dir, channels, times)
    if missing:
        raise MissingDataError(missing_files_message(missing, what))
    return times


def _refuse_existing(outputs: list[str]) -> None:
    existing = [p for p in outputs if os.path.exists(p)]
    if existing:
        raise OutputExistsError(f"{existing} exist; pass overwrite (--overwrite) to replace them")


def _data_climatology_writer(
    clim_dir: str, shape: tuple, doys: list, hours: list, times: np.ndarray, overwrite: bool
):
    """A :class:`utils.data.climatology.ClimatologyWriter` of the days of year ``doys`` and
    hours ``hours`` (those of ``times``, which it records as its period)."""
    from utils.data.climatology import ClimatologyWriter

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


def _read_channel(
    root_dir: str, ch: Channel, times, slots, shape: tuple, sums: _SlotSums | None, bar
) -> RunningMoments:
    """The moments of channel ``ch`` over ``times``, reading each field once (also into
    ``sums`` at its slot of ``slots`` when given)."""
    moments = RunningMoments()
    for t, slot in zip(times, slots, strict=False):
        field = read_field(channel_path(root_dir, int(t), ch), shape)
        moments.update(field)
        if sums is not None:
            sums.add(slot, field)
        bar.update(1)
    return moments


def _stream_moments(
    root_dir: str, upper: dict, channels: list, times, slots, shape: tuple, writer, progress: bool
) -> tuple[dict, dict, dict, dict]:
    """``(upper_mean, upper_std, surface_mean, surface_std)`` for :func:`write_mean_std` over
    ``times``, one channel at a time; with a climatology ``writer``, each channel's climatology
    (each time's ``(day of year, hour)`` slot in ``slots``) is added to it too."""
    from utils.progress import progress_bar

    upper_mean: dict = {v: {} for v in upper}
    upper_std: dict = {v: {} for v in upper}
    surface_mean, surface_std = {}, {}
    bar = progress_bar(
        total=len(channels) * len(times), desc="statistics", unit="file", enabled=progress
    )
    for ch in channels:
        sums = None
        if writer is not None:
            sums = _SlotSums((len(writer.doys), len(writer.hours)), shape)
        moments = _read_channel(root_dir, ch, times, slots, shape, sums, bar)
        if ch.level is None:
            surface_mean[ch.variable], surface_std[ch.variable] = moments.mean, moments.std
        else:
            upper_mean[ch.variable][ch.level] = moments.mean
            upper_std[ch.variable][ch.level] = moments.std
        if writer is not None:
            writer.add(ch.name, *sums.means(len(times)))
    bar.close()
    return upper_mean, upper_std, surface_mean, surface_std


def _first_day_with_data(root_dir: str, first: int, last: int):
    """The first day of ``[first, last]`` (hours) whose upper-air or surface directory holds
    files (the first day when none does, for the error that follows)."""
    day, end = from_hours(first).date(), from_hours(last).date()
    while day <= end:
        if list_day(root_dir, day) or list_day(root_dir, day, surface=True):
            return day
        day += _dt.timedelta(days=1)
    return from_hours(first).date()
