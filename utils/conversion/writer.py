"""Write converted fields: ``.npy`` files in durable day batches, or HDF5 year files.

The ``.npy`` work is a list of batches, one per day, of :class:`Job` (the fields of one input at
one time that are not on disk yet). A batch's fields are read (only the selected time and levels,
by parallel threads, so a Zarr store's chunks are decompressed at once), regridded, checked and
written each to a temporary name renamed into place, without flushing; then the batch is made
durable at once and recorded in its day directories (:mod:`utils.batch_io`), and the named
kill point ``convert_batch`` is passed. In one process the next day is read and written while the
previous one is flushed. HDF5 work is a list of :class:`YearJob`, written resumably in durable
blocks of rows by :func:`utils.data.h5_year_writer.write_year_file`.

Work runs in the calling process (``workers=1``) or in a pool of ``workers`` processes, each of
which opens every input once and keeps it open (one day or one year per task). A progress bar
counts fields.
"""

from __future__ import annotations

import functools
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np

from utils.atomic_io import atomic_write
from utils.batch_io import (
    FSYNC_THREADS,
    forget_durable,
    make_durable,
    record_durable,
)
from utils.channels import Channel
from utils.conversion.normalise_input import InputOptions, NormalisedInput, normalise
from utils.conversion.sources import InputSource
from utils.conversion.variable_names import ConversionError
from utils.data.h5_year_writer import write_year_file
from utils.data.npy_layout import surface_path, upper_path
from utils.fault_injection import kill_point
from utils.times import from_hours

READ_BYTES = 256 << 20  # input bytes of the rows of a year file read at once
READ_THREADS = 4  # threads reading (decompressing, regridding, writing) fields in one process
COMMITS_IN_FLIGHT = 3  # days being flushed while the next one is written (one process)


@dataclass(frozen=True)
class Job:
    """Fields of input ``source`` at position ``time_index`` (``hours`` since 1970) to write:
    ``fields`` holds ``(variable, level)`` pairs, level None for a surface variable."""

    source: int
    time_index: int
    hours: int
    fields: tuple


@dataclass(frozen=True)
class YearJob:
    """One year file to write: ``path``, its ``times`` (int64 hours ``(T,)``), channel ``names``
    ``(C,)`` in file order, the jobs giving each row's channels (``rows``, ``T`` tuples) and the
    ``grid`` ``(lat (H,), lon (W,))``."""

    year: int
    path: str
    times: np.ndarray
    names: tuple
    rows: list
    grid: tuple


@dataclass
class WriteContext:
    """What every task needs: the inputs and how to open them (``options``), the regridder of
    each input (None: written on its own grid), the output root, and whether to rewrite
    complete year files (``overwrite``). ``opened``: the inputs already opened in this process
    (not sent to worker processes, which open their own)."""

    sources: Sequence[InputSource]
    regridders: Sequence
    root_dir: str
    options: InputOptions = InputOptions()
    overwrite: bool = False
    parallel: bool = False
    opened: Sequence[NormalisedInput] | None = None


_context: WriteContext | None = None
_opened: dict = {}
_arrays: dict = {}
_reader: ThreadPoolExecutor | None = None


def _set_context(context: WriteContext) -> None:
    global _context
    _context = context
    _opened.clear()
    _arrays.clear()
    if context.opened is not None:
        _opened.update(enumerate(context.opened))


def _input(index: int) -> NormalisedInput:
    if index not in _opened:
        source = _context.sources[index]
        _opened[index] = normalise(source.open(), source.location, _context.options)
    return _opened[index]


def _variable(index: int, var: str) -> tuple:
    """``(lazy xarray Variable (time, [level,] lat, lon), {level: position})`` of ``var`` in
    input ``index``, made once per process."""
    key = (index, var)
    if key not in _arrays:
        data = _input(index)
        da = data.variables[var]
        levels = {p: i for i, p in enumerate(data.levels(var))} if "level" in da.dims else {}
        _arrays[key] = (da.variable, levels)
    return _arrays[key]


def _by_variable(fields) -> dict:
    """``{var: [levels]}`` of ``(var, level)`` pairs, in order (level None: surface)."""
    by_var: dict = {}
    for var, level in fields:
        by_var.setdefault(var, []).append(level)
    return by_var


def _read_variable(item: tuple) -> list[tuple]:
    """The checked fields of ``item`` = ``(job, variable, levels)``: read (only that time and
    those levels), regridded, float32."""
    job, var, levels = item
    variable, positions = _variable(job.source, var)
    if levels[0] is None:
        values = variable[job.time_index].values
    else:
        wanted = [positions[p] for p in levels]
        run = list(range(wanted[0], wanted[0] + len(wanted)))
        index = slice(run[0], run[-1] + 1) if wanted == run else wanted
        values = variable[job.time_index, index].values
    return _checked_fields(job, var, levels, np.asarray(values))


def read_jobs(jobs: Sequence[Job]) -> list[list[tuple]]:
    """Read, regrid and check the fields of ``jobs`` (by :data:`READ_THREADS` threads in this
    process, one at a time in a worker process); per job, its ``(variable, level, field float32
    (H, W))`` in the job's variable order."""
    items = [(job, var, levels) for job in jobs for var, levels in _by_variable(job.fields).items()]
    found = list(_map(_read_variable, items))
    out: dict = {job: [] for job in jobs}
    for (job, _, _), fields in zip(items, found, strict=True):
        out[job] += fields
    return [out[job] for job in jobs]


def _map(function: Callable, items: Sequence) -> Iterator:
    """``function`` over ``items``: by :data:`READ_THREADS` threads in this process, one after
    the other in a worker process (its siblings use the other cores)."""
    global _reader
    if _context.parallel or len(items) < 2:
        return map(function, items)
    if _reader is None:
        _reader = ThreadPoolExecutor(READ_THREADS)
    return _reader.map(function, items)


def _checked_fields(job: Job, var: str, levels: list, values: np.ndarray) -> list[tuple]:
    """``values`` (``(L, H, W)`` or ``(H, W)``) regridded, as float32 fields, each checked to be
    finite."""
    regridder = _context.regridders[job.source]
    if regridder is not None:
        values = regridder(values)
    values = values.astype(np.float32, copy=False)
    if not np.isfinite(values).all():
        data, when = _input(job.source), from_hours(job.hours).isoformat(sep=" ")
        raise ConversionError(
            f"{data.where}: {data.names[var]!r} at {when} has "
            f"{int((~np.isfinite(values)).sum())} NaN/inf value(s)"
        )
    fields = values if levels[0] is not None else values[None]
    return [(var, level, f) for level, f in zip(levels, fields, strict=True)]


def _job_bytes(job: Job) -> int:
    """Input bytes (at most 8 per value) that ``job`` reads."""
    data = _input(job.source)
    return len(job.fields) * data.lat.size * data.lon.size * 8


def _blocks(items: Sequence, cost: Callable) -> Iterator[list]:
    """``items`` in consecutive blocks of at most :data:`READ_BYTES` of input by ``cost(item)``
    (one item at least)."""
    block, size = [], 0
    for item in items:
        if block and size + cost(item) > READ_BYTES:
            yield block
            block, size = [], 0
        block.append(item)
        size += cost(item)
    if block:
        yield block


def _field_path(hours: int, var: str, level: int | None) -> str:
    if level is None:
        return surface_path(_context.root_dir, hours, var)
    return upper_path(_context.root_dir, hours, var, level)


def write_day(batch: Sequence[Job]) -> list[str]:
    """Write the fields of one day's ``batch`` into place, not yet flushed (their names are first
    dropped from the directory records, for ``--overwrite``); returns their paths."""
    paths = [_field_path(j.hours, v, p) for j in batch for v, p in j.fields]
    by_dir: dict = {}
    for path in paths:
        by_dir.setdefault(os.path.dirname(path), []).append(os.path.basename(path))
    for directory, names in by_dir.items():
        forget_durable(directory, names)
    items = [
        (job, var, levels) for job in batch for var, levels in _by_variable(job.fields).items()
    ]
    list(_map(_read_and_write, items))
    return paths


def _read_and_write(item: tuple) -> None:
    """Read the fields of ``item`` = ``(job, variable, levels)`` (:func:`_read_variable`) and
    write each into place, unsynced."""
    job = item[0]
    for var, level, field in _read_variable(item):
        path = _field_path(job.hours, var, level)
        atomic_write(path, lambda f, a=field: np.save(f, a, allow_pickle=False), durable=False)


def commit_day(paths: Sequence[str], pool: ThreadPoolExecutor | None = None) -> int:
    """Flush the files ``paths`` of one day and record them as durable; returns their count.
    Passes the kill point ``convert_batch`` once the day is recorded."""
    make_durable(paths, _context.root_dir, pool)
    by_dir: dict = {}
    for path in paths:
        by_dir.setdefault(os.path.dirname(path), []).append(os.path.basename(path))
    for directory, names in by_dir.items():
        record_durable(directory, names)
    kill_point("convert_batch")
    return len(paths)


def write_and_commit_day(batch: Sequence[Job]) -> int:
    """:func:`write_day`, then :func:`commit_day` (a worker process's task)."""
    return commit_day(write_day(batch))


def write_year(job: YearJob) -> int:
    """Write (or finish) one year file; returns the number of fields written."""
    written: list = []
    rows = functools.partial(_year_rows, job, written=written)
    write_year_file(job.path, job.times, job.names, job.grid, rows, _context.overwrite)
    return len(written) * len(job.names)


def _year_rows(job: YearJob, start: int, written: list) -> Iterator[np.ndarray]:
    """The rows ``(C, H, W)`` of ``job`` from row ``start`` on, read a block of rows at a time;
    appends each row's time to ``written``."""
    position = {name: c for c, name in enumerate(job.names)}
    shape = (len(job.names), len(job.grid[0]), len(job.grid[1]))
    for block in _blocks(job.rows[start:], lambda row: sum(map(_job_bytes, row))):
        jobs = [j for row in block for j in row]
        states: dict = {}
        for part, fields in zip(jobs, read_jobs(jobs), strict=True):
            state = states.setdefault(part.hours, np.empty(shape, np.float32))
            for var, level, field in fields:
                state[position[Channel(var, level).name]] = field
        for row in block:
            written.append(row[0].hours)
            yield states[row[0].hours]


def run_batches(
    context: WriteContext, batches: Sequence[Sequence[Job]], workers: int = 1, progress=True
) -> tuple[int, int]:
    """Write and commit the day ``batches`` with ``workers`` processes (1: in this process,
    flushing each day while the next is written); returns ``(fields, batches)`` written."""
    total = sum(len(j.fields) for batch in batches for j in batch)
    with _progress(total, progress) as bar:
        if workers > 1 and len(batches) > 1:
            counts = _in_pool(context, write_and_commit_day, batches, workers)
        else:
            counts = _pipelined(context, batches)
        written = 0
        for count in counts:
            written += count
            bar.update(count)
    return written, len(batches)


def run_years(
    context: WriteContext, years: Sequence[YearJob], workers: int = 1, progress=True
) -> int:
    """Write the year files ``years`` with ``workers`` processes; returns fields written."""
    total = sum(len(y.times) * len(y.names) for y in years)
    with _progress(total, progress) as bar:
        if workers > 1 and len(years) > 1:
            counts = _in_pool(context, write_year, years, workers)
        else:
            _set_context(context)
            counts = map(write_year, years)
        written = 0
        for count in counts:
            written += count
            bar.update(count)
    return written


def _pipelined(context: WriteContext, batches) -> Iterator[int]:
    """Write the ``batches`` in this process; each day is flushed and recorded by a background
    thread while the next one is written (at most :data:`COMMITS_IN_FLIGHT` at once)."""
    _set_context(context)
    with (
        ThreadPoolExecutor(1) as committer,
        ThreadPoolExecutor(FSYNC_THREADS) as fsyncs,
    ):
        in_flight: deque = deque()
        for batch in batches:
            paths = write_day(batch)
            if len(in_flight) >= COMMITS_IN_FLIGHT:
                yield in_flight.popleft().result()
            in_flight.append(committer.submit(commit_day, paths, fsyncs))
        while in_flight:
            yield in_flight.popleft().result()


def _in_pool(context: WriteContext, task: Callable, items: Sequence, workers: int):
    """``task`` over ``items`` in a pool of ``workers`` processes; yields the results in order."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    parallel = replace(context, parallel=True, opened=None)
    # Workers start from a clean process (no inherited HDF5/netCDF handles); with forkserver
    # the heavy imports happen once in the server rather than once per worker.
    if "forkserver" in multiprocessing.get_all_start_methods():
        mp_context = multiprocessing.get_context("forkserver")
        mp_context.set_forkserver_preload(["xarray", "utils.conversion.writer"])
    else:
        mp_context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(items)),
        mp_context=mp_context,
        initializer=_set_context,
        initargs=(parallel,),
    )
    try:
        yield from pool.map(task, items)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    bar = tqdm(
        total=total,
        desc="convert",
        unit="field",
        disable=not enabled,
        mininterval=0.5 if sys.stderr.isatty() else 30.0,
    )
    try:
        yield bar
    finally:
        bar.close()
