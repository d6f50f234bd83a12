"""Climatology for anomaly correlation (ACC): by day of year and hour of day, with a time-mean fallback.

On disk it is a directory (default ``<root_dir>/statistic/climatology/``)::

    meta.json           {"format": "vamoe-climatology-1", "channels": [names], "hours": [0, 6, ...],
                         "doys": [0-based days of year stored], "shape": [H, W], "period": [...],
                         "source": "data" | "synthetic-analytic"}
    time_mean.npy       float32 (n_channels, H, W), channels in meta order
    <name>.npy          float32 (len(doys), len(hours), H, W) per channel (e.g. z500.npy, t2m.npy)

A lookup memory-maps only the channel files it needs and reads one ``(H, W)`` slice per channel, so
a 128 x 256 x 70-channel climatology (GBs) is never loaded whole. Days of year use a leap-year
calendar (Feb 29 = 59, Mar 1 = 60 in every year); the hour is the nearest stored hour. A time whose
day of year is not stored, or a channel without a per-day file, is an error naming them, unless
the climatology is opened with ``allow_fallback=True``: then the time mean stands in and each
fallback is listed in :attr:`Climatology.fallbacks`.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Sequence

import numpy as np

from utils.data.npy_layout import CLIMATOLOGY_DIR, STATISTIC_DIR
from utils.errors import DataError, DataFileError, MissingDataError
from utils.times import day_of_year_index, from_hours

FORMAT = "vamoe-climatology-1"


def default_climatology_path(params) -> str:
    """``params.climatology_path`` if set, else ``<root_dir>/statistic/climatology``."""
    path = params.get("climatology_path") if hasattr(params, "get") else None
    if path:
        return str(path)
    return os.path.join(str(params["root_dir"]), STATISTIC_DIR, CLIMATOLOGY_DIR)


def resolve_climatology_dir(path_or_root: str) -> str:
    """The climatology directory given itself, its ``meta.json`` or the dataset root."""
    path = str(path_or_root)
    for candidate in (
        path,
        os.path.dirname(path) if path.endswith("meta.json") else None,
        os.path.join(path, STATISTIC_DIR, CLIMATOLOGY_DIR),
        os.path.join(path, CLIMATOLOGY_DIR),
    ):
        if candidate and os.path.isfile(os.path.join(candidate, "meta.json")):
            return candidate
    raise MissingDataError(
        f"no climatology at {path!r}: expected {os.path.join(path, 'meta.json')} or "
        f"{os.path.join(path, STATISTIC_DIR, CLIMATOLOGY_DIR, 'meta.json')} (create it with "
        "`python -m tools.statistics` or `python -m tools.make_synthetic_era5`)"
    )


class Climatology:
    """Read a climatology for the channels of ``layout``.

    Args:
        path_or_root: the climatology directory or the dataset root.
        layout: a :class:`utils.channels.ChannelLayout`; its channels must all be stored.
        allow_fallback: use the time mean where a day of year or a channel's per-day file is
            missing (recorded in :attr:`fallbacks`) instead of raising :class:`DataError`.
    """

    def __init__(self, path_or_root: str, layout, allow_fallback: bool = False):
        self.path = resolve_climatology_dir(path_or_root)
        meta_path = os.path.join(self.path, "meta.json")
        try:
            with open(meta_path) as f:
                self.meta = json.load(f)
        except ValueError as err:
            raise DataFileError(f"cannot read {meta_path}: {err}") from None
        if self.meta.get("format") != FORMAT:
            raise DataFileError(f"{meta_path}: unknown format {self.meta.get('format')!r}")
        self.layout = layout
        self.allow_fallback = allow_fallback
        self.fallbacks: set[str] = set()
        stored = list(self.meta["channels"])
        missing = [n for n in layout.names if n not in stored]
        if missing:
            raise DataError(
                f"climatology {self.path} has no channel(s) {missing}; it holds {stored}"
            )
        self._stored_index = [stored.index(n) for n in layout.names]
        self.hours = np.asarray(self.meta.get("hours", []), dtype=np.int64)
        self._doy_row = {int(d): i for i, d in enumerate(self.meta.get("doys", []))}
        self.shape = tuple(self.meta["shape"])
        time_mean = np.load(os.path.join(self.path, "time_mean.npy"), mmap_mode="r")
        self._mean = np.ascontiguousarray(time_mean[self._stored_index], dtype=np.float32)
        self._files: list = [None] * layout.n_channels
        self._has_file = [os.path.isfile(os.path.join(self.path, f"{n}.npy")) for n in layout.names]
        # Per instance (a class-level cache would keep every instance and its memory maps alive).
        self._slot_field = functools.lru_cache(maxsize=32)(self._read_slot)

    @property
    def by_day_of_year(self) -> bool:
        """True when per-day-of-year-and-hour fields are stored (else only the time mean)."""
        return bool(self._doy_row) and len(self.hours) > 0 and any(self._has_file)

    def mean_field(self) -> np.ndarray:
        """Time mean, float32 ``(C, H, W)`` in physical units."""
        return self._mean.copy()

    def _channel(self, c: int) -> np.ndarray:
        if self._files[c] is None:
            path = os.path.join(self.path, f"{self.layout.names[c]}.npy")
            arr = np.load(path, mmap_mode="r")
            expected = (len(self._doy_row), len(self.hours)) + self.shape
            if arr.shape != expected:
                raise DataFileError(f"{path}: shape {arr.shape}, expected {expected}")
            self._files[c] = arr
        return self._files[c]

    def _slot(self, time_hours: int) -> tuple[int, int] | None:
        row = self._doy_row.get(day_of_year_index(time_hours))
        if row is None or not len(self.hours):
            return None
        hour = from_hours(time_hours).hour
        distance = np.abs(self.hours - hour)
        distance = np.minimum(distance, 24 - distance)
        return row, int(np.argmin(distance))

    def field(self, time_hours: int) -> np.ndarray:
        """Climatology at a valid time (hours since epoch), read-only float32 ``(C, H, W)``.

        The fields of the last 32 (day of year, hour) slots are cached: a rollout asks for the
        same valid times from several initial conditions.
        """
        slot = self._slot(int(time_hours))
        if slot is None:
            doy = day_of_year_index(int(time_hours))
            self._fall_back(
                f"day of year {doy} ({from_hours(time_hours):%m-%d}) is not stored", "every channel"
            )
        return self._slot_field(slot)

    def _read_slot(self, slot) -> np.ndarray:
        out = self._mean.copy()
        if slot is not None:
            for c in range(self.layout.n_channels):
                if self._has_file[c]:
                    out[c] = self._channel(c)[slot]
                else:
                    name = self.layout.names[c]
                    self._fall_back(f"no per-day file {name}.npy", name)
        out.setflags(write=False)
        return out

    def _fall_back(self, reason: str, what: str) -> None:
        note = f"{what}: time-mean climatology used ({reason})"
        if not self.allow_fallback:
            raise DataError(
                f"climatology {self.path}: {reason} for {what}; recompute it over the "
                "evaluated days, or set allow_climatology_fallback: true to use the time mean"
            )
        self.fallbacks.add(note)


def climatology_slots(times) -> tuple[list, list, list]:
    """``(doys, hours, slots)`` of times (hours since epoch): the sorted distinct days of year
    (0-based, leap-year calendar) and hours of day they cover, and each time's ``(row, column)``
    in a ``(len(doys), len(hours))`` table."""
    hours = sorted({from_hours(int(t)).hour for t in times})
    doys = sorted({day_of_year_index(int(t)) for t in times})
    row, col = {d: i for i, d in enumerate(doys)}, {h: i for i, h in enumerate(hours)}
    slots = [(row[day_of_year_index(int(t))], col[from_hours(int(t)).hour]) for t in times]
    return doys, hours, slots


class ClimatologyWriter:
    """Write a climatology directory one channel at a time (see the module docstring).

    Args:
        out_dir: directory to create.
        shape: ``(H, W)``.
        hours: hours of day stored (e.g. ``[0, 6, 12, 18]``); empty for a time-mean-only file.
        doys: 0-based days of year stored (leap-year calendar); empty for a time-mean-only file.
        overwrite: replace an existing directory.
    """

    def __init__(
        self,
        out_dir: str,
        shape: Sequence[int],
        hours: Sequence[int] = (),
        doys: Sequence[int] = (),
        overwrite: bool = False,
        **meta,
    ):
        if os.path.exists(out_dir) and not overwrite:
            raise FileExistsError(f"climatology {out_dir} exists; pass overwrite to replace it")
        # Built in a sibling folder and moved into place by close(): an existing climatology
        # stays intact until the new one is complete.
        self.final_dir = out_dir
        self.out_dir = out_dir.rstrip(os.sep) + ".partial"
        shutil.rmtree(self.out_dir, ignore_errors=True)
        os.makedirs(self.out_dir)
        self.shape = tuple(int(s) for s in shape)
        self.hours = [int(h) for h in hours]
        self.doys = [int(d) for d in doys]
        self.meta = meta
        self.channels: list[str] = []
        self.means: list[np.ndarray] = []

    def add(self, name: str, time_mean: np.ndarray, by_doy_hour: np.ndarray | None = None):
        """Add channel ``name``: its time mean ``(H, W)`` and optionally
        ``(len(doys), len(hours), H, W)`` fields."""
        time_mean = np.asarray(time_mean, dtype=np.float32)
        if time_mean.shape != self.shape:
            raise ValueError(
                f"climatology {name}: time mean shape {time_mean.shape} != {self.shape}"
            )
        if by_doy_hour is not None:
            expected = (len(self.doys), len(self.hours)) + self.shape
            if by_doy_hour.shape != expected:
                raise ValueError(f"climatology {name}: shape {by_doy_hour.shape} != {expected}")
            np.save(
                os.path.join(self.out_dir, f"{name}.npy"), np.asarray(by_doy_hour, dtype=np.float32)
            )
        self.channels.append(name)
        self.means.append(time_mean)

    def close(self) -> str:
        np.save(
            os.path.join(self.out_dir, "time_mean.npy"), np.stack(self.means).astype(np.float32)
        )
        meta = {
            "format": FORMAT,
            "channels": self.channels,
            "hours": self.hours,
            "doys": self.doys,
            "shape": list(self.shape),
        }
        meta.update(self.meta)
        with open(os.path.join(self.out_dir, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
        if os.path.exists(self.final_dir):
            old = self.final_dir.rstrip(os.sep) + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.final_dir, old)
            os.replace(self.out_dir, self.final_dir)
            shutil.rmtree(old)
        else:
            os.replace(self.out_dir, self.final_dir)
        return self.final_dir
