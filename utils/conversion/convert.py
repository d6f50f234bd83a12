"""Convert ERA5 (netCDF files or Zarr stores, local or in the cloud) into the project's ``.npy``
layout or its HDF5 year files, optionally regridded, then compute the statistics and the
climatology.

The command is ``python -m tools.prepare_era5`` (its options: ``tools/prepare_era5.py``).

Inputs (``utils.conversion.sources``): netCDF files, glob patterns, directories, Zarr stores and
``gs://`` / ``s3://`` URLs of Zarr stores (read anonymously). Names, dimension order, latitude
direction, longitude range, time coordinates and ensemble members are handled by
``utils.conversion.normalise_input``; only the selected times, variables and levels are read.
``--grid`` regrids conservatively (``utils.conversion.regrid``). What is on disk already is
skipped, so an interrupted run continues when started again (``--overwrite`` rewrites it); the
``.npy`` files are written in durable day batches, the year files in durable blocks of rows
(``utils.conversion.writer``). ``--part I/N`` converts one of N parts, which may run at once, and
``--finalize`` puts them together (``utils.conversion.parts``). The grid of the output is
recorded in ``<root_dir>/statistic/grid.json``.

The steps: the request is checked and resolved against its inputs (``utils.conversion.request``),
the work not on disk yet is planned (``utils.conversion.plan``), written (:func:`write_work`),
then the statistics and climatology are computed.

Errors about the inputs or the request are ``ConversionError`` (and the project's other errors),
which the command prints in one line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from utils.conversion.parts import (
    Part,
    PartSplit,
    parse_part,
    part_statistics,
    recorded_part_count,
    restrict,
    split_parts,
    unfinished_error,
)
from utils.conversion.plan import PendingWork, plan_jobs, plan_years, selected_variables
from utils.conversion.request import ResolvedRequest, check_options, resolve
from utils.conversion.variable_names import ConversionError
from utils.conversion.writer import Job, WriteContext, run_batches, run_years
from utils.data.npy_layout import MEAN_STD_FILE, statistic_path
from utils.grid import write_grid
from utils.times import from_hours, period_bounds

OUTPUT_FORMATS = ("npy", "h5")
PART_UNIT = {"npy": "day", "h5": "year"}


def convert(
    inputs: Sequence[str],
    root_dir: str,
    levels: Sequence[int] | None = None,
    variables: Sequence[str] | None = None,
    start=None,
    end=None,
    hour_step: int = 6,
    stats: bool = True,
    stats_start=None,
    stats_end=None,
    climatology: bool = True,
    overwrite: bool = False,
    h_size: int | None = None,
    w_size: int | None = None,
    level: int | None = None,
    member: int | None = None,
    grid: str | None = None,
    workers: int = 1,
    progress: bool = True,
    *,
    data_format: str = "npy",
    part: str | Part | None = None,
    finalize: bool = False,
    time_coord: str | None = None,
    time_units: str | None = None,
) -> dict:
    """Convert ``inputs`` (paths, patterns, directories, Zarr stores/URLs) into ``root_dir``
    (``data_format``: ``npy`` or ``h5``); ``part`` (``"I/N"``) converts one part only and
    ``finalize`` puts the parts together (see the module doc).

    Returns a summary: fields written and skipped (already complete), day batches or year files
    written, times, first and last day, ``{upper var: levels}``, surface variables, output grid
    and statistics paths."""
    selection = check_options(variables, levels, start, end, hour_step, workers)
    if data_format not in OUTPUT_FORMATS:
        raise ConversionError(f"--format {data_format!r}: expected one of {OUTPUT_FORMATS}")
    part = parse_part(part) if isinstance(part, str) else part
    if part is not None and finalize:
        raise ConversionError("--part and --finalize go to separate runs")
    request = resolve(
        inputs,
        root_dir,
        selection,
        grid=grid,
        h_size=h_size,
        w_size=w_size,
        member=member,
        level=level,
        time_coord=time_coord,
        time_units=time_units,
        overwrite=overwrite,
    )
    stats_request = _stats_request(request, stats_start, stats_end, data_format)
    if finalize:
        stats_request = stats_request if stats else None
        return finalize_parts(request, data_format, stats_request, climatology, progress)
    split = None
    if part is not None:
        split = split_parts(request.selected_hours(), part.count, PART_UNIT[data_format])
        request = restrict(request, split, part.index)
    write_grid(root_dir, request.lat, request.lon)
    work = _plan(request, data_format, overwrite)
    written, batches = write_work(request, work, data_format, workers, progress, overwrite)
    result = summary(request, work, written)
    result.update(format=data_format, batches_written=batches)
    if part is not None:
        result["part"] = str(part)
    if stats:
        fresh = bool(written or overwrite)
        result["statistics"] = _after_writing(
            stats_request, split, part, fresh, climatology, progress
        )
    return result


def _after_writing(
    stats: dict, split: PartSplit | None, part: Part | None, fresh: bool, climatology, progress
) -> dict | str:
    """The statistics once the fields are written: a part's moments (``split``, ``part``), or
    the statistics and climatology, recomputed when anything was written (``fresh``) or they
    are missing."""
    if split is not None:
        found = part_statistics(stats["data"], split, part.index, stats, reuse=not fresh)
        return {"partial": found["path"], "n_times": found["n_times"]}
    if fresh or not os.path.exists(statistic_path(stats["data"].root, MEAN_STD_FILE)):
        return _statistics(stats, climatology, progress)
    return "kept (nothing new converted)"


def _plan(request: ResolvedRequest, data_format: str, overwrite: bool = False) -> PendingWork:
    """The pending work of ``request`` in ``data_format``."""
    return (plan_years if data_format == "h5" else plan_jobs)(request, overwrite)


def write_work(
    request: ResolvedRequest,
    work: PendingWork,
    data_format: str,
    workers: int = 1,
    progress: bool = True,
    overwrite: bool = False,
) -> tuple[int, int]:
    """Write the pending ``work`` of ``request``; returns ``(fields written, day batches or
    year files written)``."""
    context = WriteContext(
        request.sources,
        request.regridders,
        request.root_dir,
        request.options,
        overwrite,
        opened=request.opened,
    )
    if data_format == "h5":
        return run_years(context, work.years, workers, progress), len(work.years)
    return run_batches(context, work.batches(), workers, progress)


def write_batch(
    request: ResolvedRequest, jobs: Sequence[Job], workers: int = 1, progress: bool = True
) -> int:
    """Write the fields of ``jobs`` of ``request`` (``.npy``) in durable day batches with
    ``workers`` processes; returns the number of files written."""
    work = PendingWork(list(jobs), 0, {}, [], set())
    return write_work(request, work, "npy", workers, progress)[0]


def summary(request: ResolvedRequest, work: PendingWork, written: int) -> dict:
    """The conversion's result (without statistics), as :func:`convert` returns it."""
    return {
        "root_dir": request.root_dir,
        "inputs": len(request.sources),
        "written": written,
        "skipped": work.skipped,
        "times": len(work.times),
        "first_day": work.first_day if work.times else None,
        "last_day": work.last_day if work.times else None,
        "upper": work.upper,
        "surface": work.surface,
        "grid": [int(request.lat.size), int(request.lon.size)],
        "regridded": any(r is not None for r in request.regridders),
    }


def _stats_request(request: ResolvedRequest, stats_start, stats_end, data_format: str) -> dict:
    """What the statistics cover: ``start``, ``end`` (``--stats_start`` / ``--stats_end``,
    default: the days of the whole selection), their ``first`` and ``last`` hours, the
    ``hour_step``, ``upper``, ``surface`` and ``channels`` of the selection and the output's
    fields (``data``)."""
    from utils.data.dataset_fields import DatasetFields
    from utils.data.statistics import channels_of

    hours = request.selected_hours()
    upper, surface = selected_variables(request.plans)
    start = stats_start or from_hours(hours[0]).date().isoformat()
    end = stats_end or from_hours(hours[-1]).date().isoformat()
    first, last = period_bounds([start, end])
    return {
        "start": start,
        "end": end,
        "first": first,
        "last": last,
        "hour_step": request.selection.hour_step,
        "upper": upper,
        "surface": surface,
        "channels": channels_of(upper, surface),
        "data": DatasetFields(request.root_dir, data_format),
    }


def _statistics(stats: dict, climatology: bool, progress: bool, moments=None) -> dict:
    """Statistics (and climatology) of the converted variables over the statistics period,
    recomputed from scratch (``moments``: merged from the parts, read only for the climatology)."""
    from utils.data.statistics import compute_statistics

    return compute_statistics(
        stats["data"].root,
        stats["start"],
        stats["end"],
        stats["hour_step"],
        stats["upper"],
        stats["surface"],
        climatology=climatology,
        overwrite=True,
        progress=progress,
        data=stats["data"],
        moments=moments,
    )


def finalize_parts(
    request: ResolvedRequest, data_format: str, stats: dict | None, climatology: bool, progress
) -> dict:
    """After the parts of a conversion: an error naming the parts not finished, if any; else
    (unless ``stats`` is None: ``--no_stats``) the statistics from the parts' moments (a part
    without them, or with moments of another period, is computed here) and the climatology."""
    from utils.data.moments import merge_partial_moments

    whole = _plan(request, data_format)
    count = recorded_part_count(request.root_dir)
    split: PartSplit | None = None
    if count is not None:
        split = split_parts(request.selected_hours(), count, PART_UNIT[data_format])
    pending = whole.pending_times()
    if pending:
        raise unfinished_error(pending, split, "--finalize")
    result = summary(request, whole, 0)
    result.update(format=data_format, parts=count)
    if stats is None:
        return result
    if split is None:  # the parts kept no moments (--no_stats): everything at once
        result["statistics"] = _statistics(stats, climatology, progress)
        return result
    parts = [part_statistics(stats["data"], split, k, stats, True) for k in range(1, count + 1)]
    merged = merge_partial_moments(parts, [c.name for c in stats["channels"]])
    result["statistics"] = _statistics(stats, climatology, progress, merged)
    return result
