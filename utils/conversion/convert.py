"""Convert ERA5 (netCDF files or Zarr stores, local or in the cloud) into the project's ``.npy``
layout, optionally regridded, then compute the statistics and the climatology.

::

    python -m tools.prepare_era5 --input INPUT [INPUT ...] --root_dir ./data/era5 \\
        [--variables z q u v t t2m u10 v10 msl sp] [--levels 1000 925 850 ...] \\
        [--start 1979-01-01 --end 2021-12-31] [--hour_step 6] [--grid 128x256] \\
        [--member N] [--level P] [--workers N] [--download DIR] \\
        [--stats_start ... --stats_end ...] [--no_stats] [--no_climatology] [--overwrite] [--debug]

Inputs (``utils.conversion.sources``): netCDF files, glob patterns, directories, Zarr stores and
``gs://`` / ``s3://`` URLs of Zarr stores (read anonymously). Names, dimension order, latitude
direction, longitude range, scalar time and ensemble members are handled by
``utils.conversion.normalise_input``; only the selected times, variables and levels are read. ``--grid``
regrids conservatively (``utils.conversion.regrid``). Files already converted are skipped, so an
interrupted run continues when started again (``--overwrite`` rewrites them); files are written
atomically by ``--workers`` processes (``utils.conversion.writer``). The grid of the output is recorded
in ``<root_dir>/statistic/grid.json``.

The steps: the request is checked and resolved against its inputs (``utils.conversion.request``),
the fields not on disk yet are planned as jobs (``utils.conversion.plan``), the jobs are written
(:func:`write_batch`), then the statistics and climatology are computed.

Errors about the inputs or the request (``ConversionError``, and the project's other errors)
print one line and exit with status 2 (``--debug``: the traceback).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from utils.conversion.plan import PendingWork, plan_jobs
from utils.conversion.request import ResolvedRequest, check_options, resolve
from utils.conversion.writer import Job, WriteContext, run_jobs
from utils.data.npy_layout import MEAN_STD_FILE, statistic_path
from utils.grid import write_grid


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
) -> dict:
    """Convert ``inputs`` (paths, patterns, directories, Zarr stores/URLs) into ``root_dir``.

    Returns a summary: fields written and skipped (already complete), times, first and last
    day, ``{upper var: levels}``, surface variables, output grid and statistics paths."""
    selection = check_options(variables, levels, start, end, hour_step, workers)
    request = resolve(
        inputs,
        root_dir,
        selection,
        grid=grid,
        h_size=h_size,
        w_size=w_size,
        member=member,
        level=level,
        overwrite=overwrite,
    )
    work = plan_jobs(request, overwrite)
    write_grid(root_dir, request.lat, request.lon)
    written = write_batch(request, work.jobs, workers, progress)
    result = summary(request, work, written)
    if stats:
        if written or overwrite or not os.path.exists(statistic_path(root_dir, MEAN_STD_FILE)):
            result["statistics"] = _statistics(
                request, work, stats_start, stats_end, climatology, progress
            )
        else:
            result["statistics"] = "kept (nothing new converted)"
    return result


def write_batch(
    request: ResolvedRequest, jobs: Sequence[Job], workers: int = 1, progress: bool = True
) -> int:
    """Write the fields of ``jobs`` of ``request`` with ``workers`` processes; returns the number
    of files written."""
    context = WriteContext(
        request.sources, request.regridders, request.root_dir, request.member, request.level
    )
    return run_jobs(context, jobs, workers, progress)


def summary(request: ResolvedRequest, work: PendingWork, written: int) -> dict:
    """The conversion's result (without statistics), as :func:`convert` returns it."""
    return {
        "root_dir": request.root_dir,
        "inputs": len(request.sources),
        "written": written,
        "skipped": work.skipped,
        "times": len(work.times),
        "first_day": work.first_day,
        "last_day": work.last_day,
        "upper": work.upper,
        "surface": work.surface,
        "grid": [int(request.lat.size), int(request.lon.size)],
        "regridded": any(r is not None for r in request.regridders),
    }


def _statistics(
    request: ResolvedRequest,
    work: PendingWork,
    stats_start,
    stats_end,
    climatology: bool,
    progress: bool,
) -> dict:
    """Statistics (and climatology) of the converted variables over ``stats_start`` ..
    ``stats_end`` (default: the days converted), recomputed from scratch."""
    from utils.data.statistics import compute_statistics

    return compute_statistics(
        request.root_dir,
        stats_start or work.first_day,
        stats_end or work.last_day,
        request.selection.hour_step,
        work.upper,
        work.surface,
        climatology=climatology,
        overwrite=True,
        progress=progress,
    )
