"""Write one year file of the HDF5 layout (:mod:`utils.data.h5_layout`) resumably and durably.

A year is written into ``.<YYYY>.h5.partial`` beside its final name, in blocks of
:data:`FLUSH_EVERY` rows: the rows of a block are written, flushed and ``fsync``-ed, and only then
is the count of rows done recorded in the file (attribute ``rows_written``). Once every row is
there the file is marked complete, flushed to disk and renamed to ``<YYYY>.h5`` (and the directory
flushed), so a year file is complete or absent. A run that stops continues the partial file at its
last recorded block; a partial file that cannot be opened, or was made for other times, channels
or grid, is started again. Rows come from any source: the ``.npy`` layout
(:mod:`utils.data.npy_to_h5`) or the ERA5 converter (:mod:`utils.conversion.writer`), which
therefore write the same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from utils.batch_io import fsync_path
from utils.data.h5_layout import FIELDS, create_year_file, same_contents_plan
from utils.errors import OutputExistsError
from utils.fault_injection import kill_point

FLUSH_EVERY = 16  # rows per durable block of a partial file

RowSource = Callable[[int], Iterator[np.ndarray]]  # first row -> the rows (C, H, W) from there


def partial_path(final: str) -> str:
    """The temporary name a year file is written under: ``.<YYYY>.h5.partial`` beside it."""
    return os.path.join(os.path.dirname(final), "." + os.path.basename(final) + ".partial")


def complete_year_file(final: str, times, names: Sequence[str], lat, lon) -> bool:
    """Whether ``final`` is a complete year file of these times, channels and grid. False when it
    does not exist; an error when it exists with other contents (``--overwrite`` replaces it)."""
    import h5py

    if not os.path.exists(final):
        return False
    with h5py.File(final, "r") as f:
        if f.attrs.get("complete") and same_contents_plan(f, times, names, lat, lon):
            return True
    raise OutputExistsError(
        f"{final} exists but holds other times, channels or grid; pass --overwrite to replace it"
    )


def write_year_file(
    final: str,
    times: np.ndarray,
    names: Sequence[str],
    grid: tuple[np.ndarray, np.ndarray],
    rows: RowSource,
    overwrite: bool = False,
) -> str:
    """Write (or finish) the year file ``final`` of ``times`` (int64 hours ``(T,)``), channels
    ``names`` ``(C,)`` and ``grid`` ``(lat (H,), lon (W,))``; ``rows(start)`` yields the rows
    ``(C, H, W)`` float32 from row ``start`` on. Returns ``written``, ``resumed`` (a partial
    file was continued) or ``skipped`` (complete already, and not ``overwrite``)."""
    lat, lon = grid
    if not overwrite and complete_year_file(final, times, names, lat, lon):
        return "skipped"
    os.makedirs(os.path.dirname(final), exist_ok=True)
    partial = partial_path(final)
    f, start = _open_partial(partial, times, names, grid, overwrite)
    try:
        dset = f[FIELDS]
        done = start
        for i, row in enumerate(rows(start), start):
            dset.write_direct(np.ascontiguousarray(row, dtype=np.float32), dest_sel=np.s_[i])
            done = i + 1
            if done % FLUSH_EVERY == 0 or done == len(times):
                _record_block(f, partial, done)
        if done != len(times):
            raise ValueError(f"{final}: the row source gave {done} of {len(times)} rows")
        f.attrs["complete"] = True
    finally:
        f.close()
    fsync_path(partial)
    os.replace(partial, final)
    fsync_path(os.path.dirname(final))
    return "resumed" if start else "written"


def _record_block(f, partial: str, done: int) -> None:
    """Make the rows written so far durable, then record their count (``rows_written``)."""
    f.flush()
    fsync_path(partial)
    f.attrs["rows_written"] = done
    f.flush()
    kill_point("h5_row_block")


def _open_partial(partial: str, times, names: Sequence[str], grid: tuple, overwrite: bool):
    """``(open h5py file, rows already written)`` of the partial file ``partial``: continued
    when it plans the same times, channels and grid (``(lat, lon)``) and not ``overwrite``,
    else created anew."""
    import h5py

    lat, lon = grid
    if os.path.exists(partial) and not overwrite:
        f = None
        try:
            f = h5py.File(partial, "r+")
            if same_contents_plan(f, times, names, lat, lon):
                return f, int(f.attrs["rows_written"])
        except (OSError, KeyError):
            pass
        if f is not None:
            f.close()
    return create_year_file(partial, times, names, lat, lon), 0
