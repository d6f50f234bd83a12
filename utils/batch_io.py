"""Files written in batches and made durable together, with a record of the durable ones.

:func:`utils.atomic_io.atomic_write` flushes every file to disk before renaming it: one ``fsync``
per file, a few milliseconds each, which at millions of small files is hours. Here a batch of files
(e.g. a day of converted fields) is written the cheap way, then made durable once:

1. every file is written to a temporary name and renamed into place without ``fsync``
   (:func:`utils.atomic_io.atomic_write` with ``durable=False``): a reader, or a killed writer,
   never sees a half-written file; its writing out to disk is started at once, without waiting
   for it;
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
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from utils.atomic_io import atomic_write
from utils.errors import OutputError

RECORD = ".durable.json"  # per directory: the names of its files known to be on disk
FSYNC_THREADS = 16  # files flushed at once: concurrent fsyncs share the file system's commits


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
    atomic_write(
        os.path.join(directory, RECORD), lambda f: f.write(text.encode("utf-8")), durable=False
    )
