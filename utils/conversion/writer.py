"""Write converted fields into the ``.npy`` layout: in parallel, resumable, one atomic file each.

The work is a list of :class:`Job`: the fields of one input at one time that are not on disk yet
(the planner skips complete files, so a killed conversion continues where it stopped; every file
is written to a temporary name and renamed, so a file on disk is always complete). Jobs run in
the calling process (``workers=1``) or in a pool of ``workers`` processes, each of which opens
every input once and keeps it open. A progress bar counts time steps.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from utils.atomic_io import atomic_save_npy
from utils.conversion.normalise_input import NormalisedInput, normalise
from utils.conversion.sources import InputSource
from utils.conversion.variable_names import ConversionError
from utils.data.npy_layout import surface_path, upper_path
from utils.times import from_hours


@dataclass(frozen=True)
class Job:
    """Fields of input ``source`` at position ``time_index`` (``hours`` since 1970) to write:
    ``fields`` holds ``(variable, level)`` pairs, level None for a surface variable."""

    source: int
    time_index: int
    hours: int
    fields: tuple


@dataclass
class WriteContext:
    """What every job needs: the inputs and how to open them, the regridder of each input
    (None: written on its own grid) and the output root."""

    sources: Sequence[InputSource]
    regridders: Sequence
    root_dir: str
    member: int | None = None
    level: int | None = None
    parallel: bool = False


_context: WriteContext | None = None
_opened: dict = {}


def _set_context(context: WriteContext) -> None:
    global _context
    _context = context
    _opened.clear()


def _input(index: int) -> NormalisedInput:
    if index not in _opened:
        source = _context.sources[index]
        _opened[index] = normalise(source.open(), source.location, _context.member, _context.level)
    return _opened[index]


def write_job(job: Job) -> int:
    """Read, regrid and write the fields of ``job``; returns the number of files written."""
    import dask

    data = _input(job.source)
    by_var: dict = {}
    for var, level in job.fields:
        by_var.setdefault(var, []).append(level)
    names = list(by_var)
    lazy = []
    for var in names:
        da = data.variables[var].isel(time=job.time_index)
        if by_var[var][0] is not None:
            da = da.sel(level=by_var[var])
        lazy.append(da.data)
    scheduler = "synchronous" if _context.parallel else "threads"
    arrays = dask.compute(*lazy, scheduler=scheduler)
    regridder = _context.regridders[job.source]
    when = from_hours(job.hours).isoformat(sep=" ")
    written = 0
    for var, values in zip(names, arrays, strict=True):
        values = np.asarray(values)
        if regridder is not None:
            values = regridder(values)
        values = values.astype(np.float32)
        if not np.isfinite(values).all():
            raise ConversionError(
                f"{data.where}: {data.names[var]!r} at {when} has "
                f"{int((~np.isfinite(values)).sum())} NaN/inf value(s)"
            )
        levels = by_var[var]
        fields = values if levels[0] is not None else values[None]
        for level, field in zip(levels, fields, strict=True):
            if level is None:
                path = surface_path(_context.root_dir, job.hours, var)
            else:
                path = upper_path(_context.root_dir, job.hours, var, level)
            atomic_save_npy(path, np.ascontiguousarray(field))
            written += 1
    return written


def run_jobs(
    context: WriteContext, jobs: Sequence[Job], workers: int = 1, progress: bool = True
) -> int:
    """Run ``jobs`` with ``workers`` processes (1: in this process); returns files written."""
    from tqdm import tqdm

    bar = tqdm(
        total=len(jobs),
        desc="convert",
        unit="step",
        disable=not progress,
        mininterval=0.5 if sys.stderr.isatty() else 30.0,
    )
    written = 0
    try:
        if workers <= 1 or len(jobs) <= 1:
            _set_context(context)
            for job in jobs:
                written += write_job(job)
                bar.update(1)
                bar.set_postfix(fields=written, refresh=False)
            return written
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        parallel = WriteContext(**{**context.__dict__, "parallel": True})
        # Workers start from a clean process (no inherited HDF5/netCDF handles); with forkserver
        # the heavy imports happen once in the server rather than once per worker.
        if "forkserver" in multiprocessing.get_all_start_methods():
            mp_context = multiprocessing.get_context("forkserver")
            mp_context.set_forkserver_preload(["xarray", "dask.array", "utils.conversion.writer"])
        else:
            mp_context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=mp_context,
            initializer=_set_context,
            initargs=(parallel,),
        )
        try:
            chunk = max(1, min(16, len(jobs) // (4 * workers)))
            for count in pool.map(write_job, jobs, chunksize=chunk):
                written += count
                bar.update(1)
                bar.set_postfix(fields=written, refresh=False)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return written
    finally:
        bar.close()
