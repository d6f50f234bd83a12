"""Atomic file writes: a temporary file in the destination folder, flushed to disk, then renamed
over the target with ``os.replace``. Readers see the old file or the new one, never a partial
one, and a failed write leaves no temporary file behind (a killed one leaves ``.<name>.*.tmp``,
which :func:`remove_stale_temporaries` clears). A write the file system refuses (read-only, full
disk) raises :class:`utils.errors.OutputError` naming the path. New files get the usual permissions
(0o666 less the umask); an existing file keeps its mode.

Every write passes the kill point ``write:<file name>`` (:mod:`utils.fault_injection`) at the
instant a kill tests the most: the temporary file complete, the target not yet replaced.
"""

import os
import tempfile
from collections.abc import Callable
from typing import BinaryIO

import numpy as np

from utils.errors import OutputError
from utils.fault_injection import kill_point

_UMASK = os.umask(0)  # read once, at import, while nothing else creates files
os.umask(_UMASK)


def _file_mode(path: str) -> int:
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_UMASK


def atomic_write(
    path: str,
    write: Callable[[BinaryIO], None],
    keep_previous: str | None = None,
    durable: bool = True,
) -> None:
    """Call ``write(f)`` on a temporary binary file, then move it to ``path`` atomically.

    ``keep_previous``: a path where the file being replaced is kept (a hard link made just before
    the rename, so ``path`` never goes missing; a rename where links are not supported).
    ``durable``: the file is flushed to disk (``fsync``) before the rename; False only starts its
    writing out (:func:`start_writeback`), for files that :mod:`utils.batch_io` makes durable as
    a batch.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=_tmp_prefix(path), suffix=".tmp")
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from err
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
            else:
                start_writeback(f.fileno())
        os.chmod(tmp, _file_mode(path))  # mkstemp creates 0o600
        if keep_previous is not None and os.path.exists(path):
            _keep(path, keep_previous)
        kill_point("write:" + os.path.basename(path))
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(err, OSError) and not isinstance(err, OutputError):
            raise OutputError(f"cannot write {path}: {err.strerror or err}") from err
        raise


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing the file's data out now, without waiting: on Linux,
    ``POSIX_FADV_DONTNEED`` starts the writeback of dirty pages (and drops only pages already
    clean, none of a file just written), so the disk works while the next files are prepared and
    the batch's flush finds most of its data written. Elsewhere, nothing."""
    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:  # a file system without it: the flush does all the work
            pass


def _keep(path: str, previous: str) -> None:
    """Make ``previous`` a copy of the current ``path`` atomically (hard link, else rename)."""
    if os.path.exists(previous) and os.path.samefile(path, previous):
        return  # already one (a killed write left both names on one file)
    link = os.path.join(
        os.path.dirname(os.path.abspath(previous)), _tmp_prefix(previous) + "link.tmp"
    )
    try:
        if os.path.lexists(link):
            os.remove(link)
        os.link(path, link)
    except OSError:  # no hard links here: the rename leaves path missing until the next one
        os.replace(path, previous)
    else:
        os.replace(link, previous)


def _tmp_prefix(path: str) -> str:
    return "." + os.path.basename(path) + "."


def remove_stale_temporaries(directory: str) -> list[str]:
    """Delete the temporary files that killed atomic writes left in ``directory``; returns them.

    Only call this while no other process writes into ``directory`` (e.g. under the run lock).
    """
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    stale = [
        os.path.join(directory, n)
        for n in names
        if n.startswith(".") and n.endswith(".tmp") and len(n.split(".")) >= 4
    ]
    for path in stale:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
    return stale


def atomic_write_bytes(path: str, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npy(path: str, array) -> None:
    """``np.save`` streamed into the temporary file (no in-memory copy of the array)."""
    atomic_write(path, lambda f: np.save(f, np.asarray(array), allow_pickle=False))
