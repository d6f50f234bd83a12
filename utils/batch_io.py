"""Files written in batches and made durable together, with a record of the durable ones.

:func:`utils.atomic_io.atomic_write` flushes every file to disk before renaming it: one ``fsync``
per file, a few milliseconds each, which at millions of small files is hours. Here a batch of files
(e.g. a day of converted fields) is written the cheap way, then made durable once:

1. every file is written to a temporary name and renamed into place without ``fsync``
   (:func:`write_unsynced`): a reader, or a killed writer, never sees a half-written file;
2. the batch is flushed at once (:func:`make_durable`): every file is ``fsync``-ed by a pool of
   threads (the file system commits them together), then every directory that gained an entry;
3. only then are the files' names added to their directory's record, :data:`RECORD`
   (:func:`record_durable`, written atomically).

A file is complete only when its directory's record names it (:func:`durable_names`). A kill, or a
power cut, at any moment leaves at worst files that no record names yet, which the next run
writes again; the batches already recorded are never redone.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

from utils.atomic_io import atomic_write_text
from utils.errors import OutputError

RECORD = ".durable.json"  # per directory: the names of its files known to be on disk
FSYNC_THREADS = 16  # files flushed at once: concurrent fsyncs share the file system's commits

_UMASK = os.umask(0)  # read once, at import, while nothing else creates files
os.umask(_UMASK)


def write_unsynced(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it to ``path``, without
    flushing it to disk (:func:`make_durable` does that for the whole batch). The temporary file
    is ``.<name>.<random>.tmp``, the name :func:`utils.atomic_io.remove_stale_temporaries` clears.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp"
        )
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from err
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0o600
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(err, OSError) and not isinstance(err, OutputError):
            raise OutputError(f"cannot write {path}: {err.strerror or err}") from err
        raise


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
    """Flush the files ``paths`` to disk, then their directories and every directory above them up
    to ``top`` (included), so that new files and new directories survive a power cut. ``pool``:
    the threads that flush the files (default: a pool of :data:`FSYNC_THREADS` for this call)."""
    paths = [os.path.abspath(p) for p in paths]
    own = pool is None
    pool = pool or ThreadPoolExecutor(FSYNC_THREADS)
    try:
        list(pool.map(fsync_path, paths))
    finally:
        if own:
            pool.shutdown()
    top = os.path.abspath(top)
    directories: set[str] = set()
    for path in paths:
        directory = os.path.dirname(path)
        while directory not in directories:
            directories.add(directory)
            if directory == top or os.path.dirname(directory) == directory:
                break
            directory = os.path.dirname(directory)
    for directory in sorted(directories, key=len, reverse=True):  # deepest first
        fsync_path(directory)


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
    atomically, and flush the directory. One writer per directory at a time."""
    record = sorted(durable_names(directory) | set(names))
    atomic_write_text(os.path.join(directory, RECORD), json.dumps(record) + "\n")
    fsync_path(directory)


def forget_durable(directory: str, names: Iterable[str]) -> None:
    """Remove ``names`` from ``directory``'s record (files about to be rewritten)."""
    recorded = durable_names(directory)
    names = set(names)
    if recorded & names:
        atomic_write_text(
            os.path.join(directory, RECORD), json.dumps(sorted(recorded - names)) + "\n"
        )
