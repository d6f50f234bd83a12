"""Result folders replaced whole: written into a staging folder, moved into place at the end.

:func:`write_staged` first recovers what killed runs on this host left beside the destination
``out_dir`` (:func:`recover_interrupted_publish`), then checks ``out_dir`` (a non-empty one is
replaced only with ``overwrite``), has the caller write everything into
``.<name>.staging-<host>-<pid>`` beside ``out_dir`` and moves that folder into place
(:func:`publish`). In a run of several ranks rank 0 makes the folder and moves it, and every
rank may write its own files into it.

At every instant the old results or the new ones are whole on disk:

- on Linux the two folders are swapped in one step (``renameat2`` with ``RENAME_EXCHANGE``), and
  the staging name, which then holds the old results, is removed;
- where that is not available (another OS, a file system without it) ``out_dir`` is renamed to
  ``<staging>.old``, the staging folder renamed to ``out_dir`` and ``.old`` removed. A kill between
  the two renames leaves the old results under ``.old`` and no ``out_dir``; the next start renames
  ``.old`` back (the only copy of the previous results is never deleted).

A run that fails or is killed before the publish leaves the previous results as they were. The
publish step passes the kill points ``publish:ready``, ``publish:swapped`` (exchange),
``publish:moved_aside`` and ``publish:moved_in`` (two renames) of :mod:`utils.fault_injection`.
"""

import ctypes
import errno
import logging
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from utils.distributed import DistInfo, barrier, broadcast_object
from utils.errors import OutputError, OutputExistsError
from utils.fault_injection import kill_point
from utils.run_lock import process_alive

logger = logging.getLogger("vamoe")
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP}


def rename_exchange(a: str, b: str) -> bool:
    """Swap the existing paths ``a`` and ``b`` atomically (Linux ``renameat2`` with
    ``RENAME_EXCHANGE``); False, with nothing changed, where the OS, its C library or the file
    system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError, TypeError):  # not Linux, or a C library older than glibc 2.28
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), a, None, b)


def staging_prefix(out_dir: str) -> str:
    """The path of ``out_dir``'s staging folders on this host, less the process id."""
    parent, name = os.path.split(os.path.abspath(out_dir))
    return os.path.join(parent, f".{name}.staging-{socket.gethostname()}-")


def recover_interrupted_publish(out_dir: str) -> None:
    """Clear what runs killed on this host left beside ``out_dir``: their staging folders are
    removed; a ``.old`` folder (the previous results, moved aside by a publish that was killed
    before the new results arrived) is renamed back to ``out_dir`` when ``out_dir`` is missing,
    removed otherwise."""
    prefix = staging_prefix(out_dir)
    parent = os.path.dirname(prefix)
    for name in sorted(os.listdir(parent)) if os.path.isdir(parent) else []:
        path = os.path.join(parent, name)
        # <prefix><pid>, then the destination's extension (staged_path) and ".old" (publish)
        pid = path[len(prefix) :].split(".", 1)[0] if path.startswith(prefix) else ""
        if not pid.isdigit() or process_alive(int(pid), None):
            continue
        if path.endswith(".old") and not os.path.lexists(out_dir):
            os.replace(path, out_dir)
            logger.warning(
                "restored the previous results %s (a killed run moved them aside)", out_dir
            )
        else:
            remove(path)


def publish(staging: str, out_dir: str) -> None:
    """Move the finished ``staging`` folder to ``out_dir``, replacing what was there; the old
    results or the new ones are whole at ``out_dir`` at every instant, or (two-rename fallback)
    under ``<staging>.old`` until :func:`recover_interrupted_publish` restores them."""
    kill_point("publish:ready")
    if not os.path.lexists(out_dir):
        os.replace(staging, out_dir)
    elif rename_exchange(staging, out_dir):
        kill_point("publish:swapped")
        remove(staging)  # the old results now
    else:
        old = staging + ".old"
        os.replace(out_dir, old)
        kill_point("publish:moved_aside")
        try:
            os.replace(staging, out_dir)
        except BaseException:
            os.replace(old, out_dir)
            raise
        kill_point("publish:moved_in")
        remove(old)


def check_destination(out_dir: str, overwrite: bool) -> None:
    """Refuse a non-empty ``out_dir`` without ``overwrite``, and an ``out_dir`` that is a file."""
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise OutputExistsError(
            f"output directory {out_dir} is not empty; pass --overwrite to replace its results"
        )
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise OutputExistsError(f"output path {out_dir} exists and is not a directory")


def write_staged(
    out_dir: str,
    write: Callable[[str], dict[str, str]],
    overwrite: bool = False,
    info: DistInfo | None = None,
) -> dict[str, str]:
    """Call ``write(staging)``, which writes the results into the folder ``staging`` and returns
    ``{label: path}`` of the files it wrote, then move ``staging`` to ``out_dir``.

    Returns the same labels with the paths the files have under ``out_dir``. Whatever ``write``
    raises (a keyboard interrupt too) removes ``staging`` and leaves ``out_dir`` untouched.

    With several ranks (``info`` of a distributed run) rank 0 checks ``out_dir`` and makes the
    staging folder, every rank calls ``write`` with its path (each writes its own files into
    it), and rank 0 moves it into place once every rank has returned; the other ranks return
    ``{}``.
    """
    main = info is None or info.is_main
    staging = make_staging(out_dir, overwrite) if main else None
    if info is not None and info.distributed:
        staging = broadcast_object(staging)
    try:
        written = write(staging)
        barrier()
        if main:
            publish(staging, out_dir)
    except BaseException:
        if main:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if not main:
        return {}
    return {k: os.path.join(out_dir, os.path.relpath(p, staging)) for k, p in written.items()}


def make_staging(out_dir: str, overwrite: bool) -> str:
    """The empty staging folder of ``out_dir`` for this process, after recovering what killed
    runs left beside ``out_dir`` and checking ``out_dir`` (:func:`check_destination`)."""
    recover_interrupted_publish(out_dir)
    check_destination(out_dir, overwrite)
    staging = staging_prefix(out_dir) + str(os.getpid())
    try:
        os.makedirs(staging)
    except OSError as err:
        raise OutputError(f"cannot create {staging}: {err.strerror or err}") from err
    return staging


@contextmanager
def staged_path(path: str, overwrite: bool = False) -> Iterator[str]:
    """Give the staging path of ``path`` (a file or a folder, e.g. a netCDF file or a Zarr store;
    the staging path keeps its extension, which may say the format) to write at; when the block
    ends normally, publish it to ``path`` (:func:`publish`: replacing what was there only with
    ``overwrite``). What killed runs left beside ``path`` is recovered first; a failure or a kill
    before the publish leaves ``path`` as it was."""
    path = os.path.abspath(path)
    recover_interrupted_publish(path)
    if os.path.lexists(path) and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")
    staging = staging_prefix(path) + str(os.getpid()) + os.path.splitext(path)[1]
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create {os.path.dirname(path)}: {err.strerror or err}") from err
    remove(staging)
    try:
        yield staging
        publish(staging, path)
    except BaseException:
        remove(staging)
        raise


def remove(path: str) -> None:
    """Remove a file or a folder tree, if it is there."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
