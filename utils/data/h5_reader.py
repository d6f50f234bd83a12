"""Reads states from the one-HDF5-file-per-year layout (see :mod:`utils.data.h5_layout`).

:class:`H5StateReader` is the ``data_format: h5`` counterpart of the ``.npy`` reader of
:mod:`utils.data.dataset`: the dataset asks it for the state at a time, written into a
``(C, H, W)`` buffer in the config's channel order, and does everything else (periods,
normalisation, checks) itself.

Each file's metadata is read once, in the process that builds the dataset, with a handle that is
closed again, so no HDF5 handle ever crosses a fork. Rows stored raw (float32, no filter,
contiguous or one time step per chunk: every file this project writes) are then read with
``os.preadv``, a block of consecutive channels of at most :data:`BLOCK_BYTES` at a time (each
block normalised by the dataset while it is in the CPU cache), from a file descriptor opened
lazily, once per file in each reader process; ``preadv`` releases the GIL and keeps no file
position, so the reader threads of a process share it. Other files (compressed, chunked
otherwise) are read through h5py, with one handle per file opened lazily in each reader thread
of each process; h5py serialises its calls, so prefer ``loader_backend: processes`` for those.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence

import numpy as np

from utils.data.h5_layout import (
    H5YearFile,
    channel_indices,
    describe,
    find_year_files,
    runs,
    year_path,
)
from utils.data.npy_layout import DataFileError, MissingDataError
from utils.grid import read_grid
from utils.times import from_hours

BLOCK_BYTES = 1 << 19  # channels read at once: normalised while they are in the CPU cache


class H5StateReader:
    """States ``(C, H, W)`` of ``layout``'s channels from the year files under ``root``.

    Args:
        root: dataset root (``<root>/<split>/<YYYY>.h5``, ``<root>/statistic/``).
        layout: the config's :class:`utils.channels.ChannelLayout`.
        shape: ``(h_size, w_size)`` of the config.
        split: preferred sub-directory (the mode: ``train``, ``valid`` or ``test``).
        declared_channels: config ``h5_channels``, the channel order of files that store none.
    """

    def __init__(
        self,
        root: str,
        layout,
        shape: tuple,
        split: str,
        declared_channels: Sequence[str] | None = None,
    ):
        self.root, self.layout, self.shape, self.split = root, layout, tuple(shape), split
        self.declared = list(declared_channels) if declared_channels else None
        self._paths = find_year_files(root, split)
        self._grid = read_grid(root)
        self._files: dict[int, tuple[H5YearFile, list, list]] = {}
        self._row_bytes = int(np.prod(self.shape)) * 4
        self._reset_handles()

    # ------------------------------------------------------------------------ metadata
    def _year(self, year: int) -> tuple[H5YearFile, list, list] | None:
        """``(metadata, channel positions, channel runs)`` of ``year``'s file, None if absent."""
        if year not in self._files:
            path = self._paths.get(year)
            if path is None:
                return None
            info = describe(path, self.declared)
            index = channel_indices(info, self.layout.names, self.shape, self._grid)
            self._files[year] = (info, index, runs(index))
        return self._files[year]

    def _locate(self, time_hours: int) -> tuple[H5YearFile, int, list, list]:
        entry = self._year(from_hours(time_hours).year)
        row = -1 if entry is None else entry[0].row(time_hours)
        if row < 0:
            raise MissingDataError(f"missing data: {self.describe_missing(time_hours)}")
        info, index, channel_runs = entry
        return info, row, index, channel_runs

    def describe_missing(self, time_hours: int) -> str:
        """Where the state at ``time_hours`` should be, for error messages."""
        year = from_hours(time_hours).year
        when = f"{from_hours(time_hours):%Y-%m-%d %H:%M}"
        if year not in self._paths:
            expected = year_path(self.root, year, self.split)
            return f"{expected} (or under any sub-directory): no file for {when}"
        return f"{self._paths[year]}: no time step {when}"

    def missing(self, times) -> list[tuple[int, str]]:
        """``(time_hours, where)`` of every time in ``times`` that no file holds, in time order."""
        out = []
        for t in sorted({int(t) for t in times}):
            entry = self._year(from_hours(t).year)
            if entry is None or entry[0].row(t) < 0:
                out.append((t, self.describe_missing(t)))
        return out

    def stored_times(self, first: int, last: int) -> np.ndarray:
        """Sorted times (hours) in ``[first, last]`` that the year files hold."""
        found = []
        for year in range(from_hours(first).year, from_hours(last).year + 1):
            entry = self._year(year)
            if entry is not None:
                info = entry[0]
                rows = [i for i, t in enumerate(info.times) if first <= t <= last]
                found += [int(info.times[i]) for i in rows if info.row(int(info.times[i])) == i]
        return np.array(sorted(found), dtype=np.int64)

    def location(self, time_hours: int) -> tuple[str, int]:
        """``(year file, row)`` of the state at ``time_hours``."""
        info, row, _, _ = self._locate(time_hours)
        return info.path, row

    def source(self, time_hours: int, channel: int) -> str:
        """The file, row and channel of one field, for error messages."""
        info, row, index, _ = self._locate(time_hours)
        return (
            f"{info.path} row {row} channel {index[channel]} ({self.layout.names[channel]}, "
            f"{from_hours(time_hours):%Y-%m-%d %H:%M})"
        )

    # ------------------------------------------------------------------------ reading
    def read(
        self,
        time_hours: int,
        dst: np.ndarray,
        each: Callable[[int, int, np.ndarray], None] | None = None,
    ) -> None:
        """Write the state at ``time_hours`` into ``dst`` (float32 ``(C, H, W)``, C-contiguous),
        then call ``each(time_hours, c, dst[c])`` for every channel ``c``."""
        info, row, _, channel_runs = self._locate(time_hours)
        raw = info.row_offsets is not None
        if raw:
            fd, base = self._descriptor(info.path), int(info.row_offsets[row])
        else:
            dset = self._dataset(info.path)
        for first, source, count in self._blocks(channel_runs):
            if raw:
                want = count * self._row_bytes
                got = os.preadv(fd, [dst[first : first + count]], base + source * self._row_bytes)
                if got != want:
                    raise DataFileError(
                        f"{info.path}: row {row} is truncated ({got} of {want} bytes read)"
                    )
            else:
                dset.read_direct(
                    dst, np.s_[row, source : source + count], np.s_[first : first + count]
                )
            if each is not None:  # while the block is still in the CPU cache
                for c in range(first, first + count):
                    each(time_hours, c, dst[c])

    def _blocks(self, channel_runs: list) -> list:
        """The runs cut into blocks of at most :data:`BLOCK_BYTES` (at least one channel)."""
        per_block = max(1, BLOCK_BYTES // self._row_bytes)
        return [
            (first + k, source + k, min(per_block, count - k))
            for first, source, count in channel_runs
            for k in range(0, count, per_block)
        ]

    # ------------------------------------------------------------------------ handles
    def _reset_handles(self) -> None:
        self._pid = os.getpid()
        self._descriptors: dict[str, int] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    def _check_process(self) -> None:
        if self._pid != os.getpid():  # a forked reader process: open its own files
            self._reset_handles()

    def _descriptor(self, path: str) -> int:
        self._check_process()
        fd = self._descriptors.get(path)
        if fd is None:
            with self._lock:
                fd = self._descriptors.get(path)
                if fd is None:
                    fd = self._descriptors[path] = os.open(path, os.O_RDONLY)
        return fd

    def _dataset(self, path: str):
        import h5py

        self._check_process()
        handles = getattr(self._local, "handles", None)
        if handles is None:
            handles = self._local.handles = {}
        if path not in handles:
            handles[path] = h5py.File(path, "r")["fields"]
        return handles[path]

    def close(self) -> None:
        """Close this process's file descriptors (h5py handles close with their threads)."""
        if self._pid == os.getpid():
            for fd in self._descriptors.values():
                os.close(fd)
        self._descriptors = {}

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for key in ("_descriptors", "_lock", "_local", "_pid"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset_handles()
