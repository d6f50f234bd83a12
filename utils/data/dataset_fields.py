"""The fields a dataset on disk holds, in either format, for its statistics and climatology.

:class:`DatasetFields` answers, for the ``.npy`` layout (:mod:`utils.data.npy_layout`) and the
one-HDF5-file-per-year layout (:mod:`utils.data.h5_layout`, plain FourCastNet files included,
their channel order given as ``h5_channels``) alike: which channels the dataset holds, at which
times every one of them is stored, and a reader of any group of channels at a time (the loaders'
state readers, :class:`utils.data.npy_reader.NpyStateReader` and
:class:`utils.data.h5_reader.H5StateReader`). The statistics therefore read exactly what the
loader reads, whatever the format.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from utils.channels import Channel, channel_from_name
from utils.data.h5_layout import ALL_SPLIT, describe, find_year_files
from utils.data.npy_layout import (
    channel_path,
    discover_variables,
    list_day,
    missing_files_message,
    read_field,
)
from utils.errors import ConfigError, MissingDataError
from utils.times import from_hours

FORMATS = ("npy", "h5")


@dataclass(frozen=True)
class ChannelList:
    """Any list of channels, used where the readers take a layout (``channels``, ``names``,
    ``n_channels``); unlike :class:`utils.channels.ChannelLayout`, variables may have different
    levels."""

    channels: tuple[Channel, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.channels]

    @property
    def n_channels(self) -> int:
        return len(self.channels)


def detect_format(root: str) -> str:
    """``npy`` when ``root`` holds a ``.npy`` tree (``<YYYY>/`` directories), else ``h5`` when
    it holds year files (``<split>/<YYYY>.h5``); an error naming both layouts otherwise."""
    if os.path.isdir(root):
        if any(d.isdigit() and len(d) == 4 for d in os.listdir(root)):
            return "npy"
        if find_year_files(root, ALL_SPLIT):
            return "h5"
    raise MissingDataError(
        f"{root} holds neither the .npy layout (<root>/<YYYY>/<YYYY-MM-DD>/*.npy) nor year files "
        "(<root>/<split>/<YYYY>.h5)"
    )


class DatasetFields:
    """The fields of the dataset at ``root``.

    Args:
        root: the dataset root.
        data_format: ``npy`` or ``h5`` (None: :func:`detect_format`).
        split: with ``h5``, the sub-directory searched first for a year (then ``all``, then any).
        h5_channels: with ``h5``, the channel order of files that store no channel names.
    """

    def __init__(
        self,
        root: str,
        data_format: str | None = None,
        split: str = ALL_SPLIT,
        h5_channels: Sequence[str] | None = None,
    ):
        self.root = root
        self.format = data_format or detect_format(root)
        if self.format not in FORMATS:
            raise ConfigError(f"data format {self.format!r}: expected one of {FORMATS}")
        self.split = split
        self.h5_channels = list(h5_channels) if h5_channels else None

    def discover(self, first: int, last: int) -> list[Channel]:
        """The channels of the first day (``npy``) or year file (``h5``) of ``[first, last]``
        (hours) that holds data."""
        if self.format == "h5":
            info = describe(self._year_files(first, last)[0], self.h5_channels)
            return [channel_from_name(n) for n in info.channels]
        upper, surface = discover_variables(self.root, _first_day_with_data(self.root, first, last))
        return [Channel(v, int(p)) for v, levels in upper.items() for p in levels] + [
            Channel(s) for s in surface
        ]

    def shape(self, channels: Sequence[Channel], first: int, last: int) -> tuple[int, int]:
        """``(H, W)`` of the fields (of the first year file, or of the first stored field)."""
        if self.format == "h5":
            return tuple(describe(self._year_files(first, last)[0], self.h5_channels).shape)
        times = self._npy_reader(channels, None).stored_times(first, last)
        if not len(times):
            raise MissingDataError(f"no data files under {self.root} between {_span(first, last)}")
        return read_field(channel_path(self.root, int(times[0]), channels[0])).shape

    def reader(self, channels: Sequence[Channel], shape: tuple[int, int]):
        """A state reader of ``channels``: ``read(time, dst)`` fills ``dst`` ``(len(channels),
        H, W)``; also ``stored_times(first, last)`` and ``missing(times)``."""
        if self.format == "h5":
            from utils.data.h5_reader import H5StateReader

            return H5StateReader(
                self.root, ChannelList(tuple(channels)), shape, self.split, self.h5_channels
            )
        return self._npy_reader(channels, shape)

    def _npy_reader(self, channels, shape):
        from utils.data.npy_reader import NpyStateReader

        return NpyStateReader(self.root, ChannelList(tuple(channels)), shape or (1, 1))

    def stored_times(
        self, channels: Sequence[Channel], first: int, last: int, hour_step: int | None = None
    ) -> np.ndarray:
        """Sorted times (int64 hours) in ``[first, last]`` at which the dataset holds data, those
        whose hour of day is a multiple of ``hour_step`` when given (empty when none)."""
        if self.format == "h5" and not self._year_files(first, last, required=False):
            return np.zeros(0, dtype=np.int64)
        shape = self.shape(channels, first, last) if self.format == "h5" else None
        times = self.reader(channels, shape).stored_times(first, last)
        if hour_step:
            times = times[times % 24 % int(hour_step) == 0]
        return times

    def complete_times(
        self, channels: Sequence[Channel], first: int, last: int, hour_step, what: str
    ) -> np.ndarray:
        """:meth:`stored_times`, checked: an error when there are none, or when a channel is
        missing at one of them (all listed at once)."""
        times = self.stored_times(channels, first, last, hour_step)
        if not len(times):
            raise MissingDataError(f"no data under {self.root} for the {what}")
        shape = self.shape(channels, first, last)
        missing = self.reader(channels, shape).missing(times)
        if missing:
            raise MissingDataError(missing_files_message(missing, what))
        return times

    def _year_files(self, first: int, last: int, required: bool = True) -> list[str]:
        """Paths of the year files of the years of ``[first, last]``, in year order."""
        found = find_year_files(self.root, self.split)
        years = range(from_hours(first).year, from_hours(last).year + 1)
        paths = [found[y] for y in years if y in found]
        if not paths and required:
            raise MissingDataError(
                f"no year file under {self.root} for {_span(first, last)} "
                f"(expected <root>/{self.split}/<YYYY>.h5 or any other sub-directory)"
            )
        return paths


def _span(first: int, last: int) -> str:
    return f"{from_hours(first):%Y-%m-%dT%H}..{from_hours(last):%Y-%m-%dT%H}"


def _first_day_with_data(root_dir: str, first: int, last: int):
    """The first day of ``[first, last]`` (hours) whose upper-air or surface directory holds
    files (the first day when none does, for the error that follows)."""
    day, end = from_hours(first).date(), from_hours(last).date()
    while day <= end:
        if list_day(root_dir, day) or list_day(root_dir, day, surface=True):
            return day
        day += _dt.timedelta(days=1)
    return from_hours(first).date()
