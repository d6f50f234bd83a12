"""Files written in batches and made durable together, with a record of the durable ones.

:func:`utils.atomic_io.atomic_write` flushes every file to disk before renaming it: one ``fsync``
per file, a few milliseconds each, which at millions of small files is hours. Here a batch of files
(e.g. a day of converted fields) is written the cheap way, then made durable once:

1. every file is written to a temporary name and renamed into place without ``fsync``
   (:func:`write_unsynced`): a reader, or a killed writer, never sees a half-written file; its
   writing out to disk is started at once, without waiting for it;
2. the batch is flushed at once (:func:`make_durable`): every file is ``fsync``-ed by a pool of
   threads (the file system commits them together), then every directory that gained an entry;
3. only then are the files' names added to their directory's record, :data:`RECORD`
   (:func:`record_durable`, replaced atomically).

A file is complete only when its directory's record names it (:func:`durable_names`). A kill, or a
power cut, at any moment leaves at worst files that no record names yet, which the next run
writes again; the batches already recorded are never redone. The record itself is not flushed
(the file system commits it within seconds): a record lost to a power cut, or cut short (it then
reads as no record), only makes the next run write its batches again, and it never names a file
that is not durable, since it is written after them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

from utils.errors import OutputError

RECORD = ".durable.json"  # per directory: the names of its files known to be on disk
FSYNC_THREADS = 16  # files flushed at once: concurrent fsyncs share the file system's commits


def write_unsynced(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it to ``path``, without
    flushing it to disk (:func:`make_durable` does that for the whole batch). The temporary file
    is ``.<name>.<random>.tmp``, a name :func:`utils.atomic_io.remove_stale_temporaries` clears;
    the file gets the usual permissions (0o666 less the umask)."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.urandom(6).hex()}.tmp")
    try:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from err
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            _start_writeback(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(err, OSError) and not isinstance(err, OutputError):
            raise OutputError(f"cannot write {path}: {err.strerror or err}") from err
        raise


def _start_writeback(fd: int) -> None:
    """Ask the kernel to start writing the file's data out now, without waiting: on Linux,
    ``POSIX_FADV_DONTNEED`` starts the writeback of dirty pages (and drops only pages already
    clean, none of a file just written), so the disk works while the next files are prepared and
    the batch's flush finds most of its data written. Elsewhere, nothing."""
    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:  # a file system without it: the flush does all the work
            pass


def fsync_path(path: str) -> None:
    """Flush the file or directory ``path`` to disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        raise OutputError(f"cannot flush {path} to disk: {err.strerror or err}") from err


def make_durable(paths: Iterable[str], top: str, pool: ThreadPoolExecutor | None = None) -> None:
    """Flush the files ``paths`` to disk, with their directories and every directory above them
    up to ``top`` (included), so that new files and new directories survive a power cut; all at
    once, by ``pool`` (default: a pool of :data:`FSYNC_THREADS` for this call)."""
    paths = [os.path.abspath(p) for p in paths]
    top = os.path.abspath(top)
    directories: set[str] = set()
    for path in paths:
        directory = os.path.dirname(path)
        while directory not in directories:
            directories.add(directory)
            if directory == top or os.path.dirname(directory) == directory:
                break
            directory = os.path.dirname(directory)
    own = pool is None
    pool = pool or ThreadPoolExecutor(FSYNC_THREADS)
    try:
        list(pool.map(fsync_path, paths + sorted(directories)))
    finally:
        if own:
            pool.shutdown()


def durable_names(directory: str) -> set[str]:
    """The names :func:`record_durable` recorded in ``directory`` (empty when none; a record that
    cannot be read counts as none, so its files are written again)."""
    try:
        with open(os.path.join(directory, RECORD), encoding="utf-8") as f:
            names = json.load(f)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return set()
    return set(names) if isinstance(names, list) else set()


def record_durable(directory: str, names: Iterable[str]) -> None:
    """Add ``names`` (files of ``directory`` already made durable) to the directory's record,
    replaced atomically (not flushed: see the module doc). One writer per directory at a time."""
    _write_record(directory, durable_names(directory) | set(names))


def forget_durable(directory: str, names: Iterable[str]) -> None:
    """Remove ``names`` from ``directory``'s record (files about to be rewritten)."""
    recorded = durable_names(directory)
    names = set(names)
    if recorded & names:
        _write_record(directory, recorded - names)


def _write_record(directory: str, names: set[str]) -> None:
    text = json.dumps(sorted(names)) + "\n"
    write_unsynced(os.path.join(directory, RECORD), lambda f: f.write(text.encode("utf-8")))
