"""Atomic file writes: a temporary file in the destination folder, flushed to disk, then renamed
over the target with ``os.replace``. Readers see the old file or the new one, never a partial
one, and a failed write leaves no temporary file behind. New files get the usual permissions
(0o666 less the umask); an existing file keeps its mode.
"""

import os
import tempfile
from collections.abc import Callable
from typing import BinaryIO

import numpy as np

_UMASK = os.umask(0)  # read once, at import, while nothing else creates files
os.umask(_UMASK)


def _file_mode(path: str) -> int:
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_UMASK


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temporary binary file, then move it to ``path`` atomically."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode(path))  # mkstemp creates 0o600
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npy(path: str, array) -> None:
    """``np.save`` streamed into the temporary file (no in-memory copy of the array)."""
    atomic_write(path, lambda f: np.save(f, np.asarray(array), allow_pickle=False))
