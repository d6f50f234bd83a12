"""Result folders replaced whole: written into a staging folder, moved into place at the end.

:func:`write_staged` checks the destination ``out_dir`` (a non-empty one is replaced only with
``overwrite``), removes the staging folders that killed runs on this host left beside it, has the
caller write everything into ``.<name>.staging-<host>-<pid>`` beside ``out_dir`` and then moves
that folder to ``out_dir``. A run that fails or is killed before the move leaves the previous
results as they were. In a run of several ranks rank 0 makes the folder and moves it, and every
rank may write its own files into it.
"""

import os
import shutil
import socket
from collections.abc import Callable

from utils.distributed import DistInfo, barrier, broadcast_object
from utils.errors import OutputError, OutputExistsError
from utils.run_lock import process_alive


def staging_prefix(out_dir: str) -> str:
    """The path of ``out_dir``'s staging folders on this host, less the process id."""
    parent, name = os.path.split(os.path.abspath(out_dir))
    return os.path.join(parent, f".{name}.staging-{socket.gethostname()}-")


def remove_stale_staging(out_dir: str) -> None:
    """Remove the staging folders (and ``.old`` folders) of ``out_dir`` that processes no longer
    alive on this host left behind."""
    prefix = staging_prefix(out_dir)
    parent = os.path.dirname(prefix)
    for name in os.listdir(parent) if os.path.isdir(parent) else []:
        path = os.path.join(parent, name)
        pid = path[len(prefix) :].removesuffix(".old") if path.startswith(prefix) else ""
        if pid.isdigit() and not process_alive(int(pid), None):
            shutil.rmtree(path, ignore_errors=True)


def publish(staging: str, out_dir: str) -> None:
    """Move the finished ``staging`` folder to ``out_dir``, replacing what was there."""
    old = None
    if os.path.lexists(out_dir):
        old = staging + ".old"
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
    staging = _make_staging(out_dir, overwrite) if main else None
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


def _make_staging(out_dir: str, overwrite: bool) -> str:
    """The empty staging folder of ``out_dir`` for this process, after checking ``out_dir`` and
    clearing the staging that dead processes left."""
    check_destination(out_dir, overwrite)
    remove_stale_staging(out_dir)
    staging = staging_prefix(out_dir) + str(os.getpid())
    try:
        os.makedirs(staging)
    except OSError as err:
        raise OutputError(f"cannot create {staging}: {err.strerror or err}") from err
    return staging
