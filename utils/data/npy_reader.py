"""States of the one-``.npy``-per-field layout (``data_format: npy``).

:class:`NpyStateReader` reads every channel of one time with one ``os.preadv`` per file: the
128-byte header into a scratch buffer, the data straight into the destination array (a slice of a
preallocated batch). A header that is not the expected one, or a file of another length, is read
again through :func:`utils.data.npy_layout.read_field`, which names what is wrong.
"""

from __future__ import annotations

import os

import numpy as np

from utils.data.npy_layout import (
    DataFileError,
    MissingDataError,
    available_times,
    channel_paths,
    npy_header,
    read_field,
    scan_missing,
)
from utils.times import from_hours

_HAS_PREADV = hasattr(os, "preadv")


class NpyStateReader:
    """States ``(C, H, W)`` of ``layout``'s channels from the one-``.npy``-per-field layout
    (``data_format: npy``): one ``os.preadv`` per file, the 128-byte header into a scratch
    buffer and the data straight into the destination."""

    def __init__(self, root: str, layout, shape: tuple):
        self.root, self.layout, self.shape = root, layout, tuple(shape)
        self._header = npy_header(self.shape, np.float32)
        self._expected = len(self._header) + int(np.prod(self.shape)) * 4

    def missing(self, times) -> list[tuple[int, str]]:
        """``(time_hours, path)`` of every missing file at ``times``, in time then channel order."""
        return scan_missing(self.root, self.layout.channels, times)

    def stored_times(self, first: int, last: int) -> np.ndarray:
        """Sorted times (hours) in ``[first, last]`` at which any channel has a file."""
        return available_times(self.root, self.layout.channels, first, last)

    def source(self, time_hours: int, channel: int) -> str:
        """The file of one field and its time, for error messages."""
        path = channel_paths(self.root, self.layout, int(time_hours))[channel]
        return f"{path} ({from_hours(time_hours):%Y-%m-%d %H:%M})"

    def read(self, time_hours: int, dst: np.ndarray, each=None) -> None:
        """Write the state at ``time_hours`` into ``dst`` (float32 ``(C, H, W)``), calling
        ``each(time_hours, c, dst[c])`` right after channel ``c`` is read."""
        scratch = bytearray(len(self._header))
        for c, path in enumerate(channel_paths(self.root, self.layout, int(time_hours))):
            out = dst[c]
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise MissingDataError(
                    f"missing data file {path} ({from_hours(time_hours):%Y-%m-%d %H:%M})"
                ) from None
            except OSError as err:
                raise DataFileError(f"cannot read {path}: {err.strerror}") from None
            try:
                if _HAS_PREADV:
                    n = os.preadv(fd, [scratch, out, _TAIL], 0)
                else:  # pragma: no cover - platforms without preadv
                    with os.fdopen(os.dup(fd), "rb") as f:
                        n = f.readinto(scratch) + f.readinto(memoryview(out).cast("B"))
                        n += len(f.read(1))
            except OSError as err:  # a directory, an I/O error
                raise DataFileError(f"cannot read {path}: {err.strerror}") from None
            finally:
                os.close(fd)
            if n != self._expected or scratch != self._header:
                # another header layout, or a wrong file: check it fully
                out[...] = read_field(path, self.shape, check_finite=False)
            if each is not None:
                each(time_hours, c, out)


_TAIL = bytearray(1)  # a byte past the expected end: a longer file reads into it and is rechecked
