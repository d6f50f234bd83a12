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

Errors about the inputs or the request (``ConversionError``, and the project's other errors)
print one line and exit with status 2 (``--debug``: the traceback).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import numpy as np

from utils.atomic_io import remove_stale_temporaries
from utils.channels import ERA5_LEVELS
from utils.conversion.normalise_input import normalise
from utils.conversion.regrid import ConservativeRegridder
from utils.conversion.sources import find_inputs
from utils.conversion.variable_names import (
    PROJECT_VARIABLES,
    ConversionError,
    is_upper,
    project_name,
)
from utils.conversion.writer import Job, WriteContext, run_jobs
from utils.data.npy_layout import (
    MEAN_STD_FILE,
    day_dir,
    list_day,
    statistic_path,
    surface_name,
    upper_name,
)
from utils.grid import latitudes, longitudes, read_grid, write_grid
from utils.times import from_hours, period_bounds


def parse_grid(text: str) -> tuple[np.ndarray, np.ndarray]:
    """``--grid``: ``HxW`` (e.g. ``128x256``) or a spacing in degrees (``1.40625``) to the
    cell-centre grid's latitudes (north to south) and longitudes (from 0° E)."""
    try:
        if "x" in text.lower():
            h, w = (int(v) for v in text.lower().split("x"))
        else:
            step = float(text)
            h, w = round(180.0 / step), round(360.0 / step)
            if not np.isclose(h * step, 180.0) or not np.isclose(w * step, 360.0):
                raise ValueError
    except ValueError:
        raise ConversionError(
            f"--grid {text!r}: expected HxW (e.g. 128x256) or a spacing in degrees dividing 180 "
            "(e.g. 1.40625)"
        ) from None
    if h < 2 or w < 2:
        raise ConversionError(f"--grid {text!r}: needs at least 2 x 2 cells")
    return latitudes(h), longitudes(w)


def project_variables(variables: Sequence[str] | None) -> list[str] | None:
    if variables is None:
        return None
    names = [project_name(v) for v in variables]
    unknown = [v for v, n in zip(variables, names, strict=True) if n is None]
    if unknown:
        raise ConversionError(
            f"--variables: unknown variable(s) {unknown}; known: {list(PROJECT_VARIABLES)}"
        )
    return list(dict.fromkeys(names))


def _holdings(inputs, show: int = 5) -> str:
    lines = [f"  {i.where}: {i.holdings()}" for i in inputs[:show]]
    if len(inputs) > show:
        lines.append(f"  ... and {len(inputs) - show} more input(s)")
    return "\n".join(lines)


def _check_request(inputs, variables, levels) -> None:
    """Every requested variable, and every requested level of each upper-air variable, exists in
    some input; otherwise an error naming what is missing and what the inputs hold."""
    available: dict = {}
    for inp in inputs:
        for var, da in inp.variables.items():
            found = available.setdefault(var, set())
            if "level" in da.dims:
                found.update(inp.levels(var))
    wanted = variables if variables is not None else list(available)
    missing = [v for v in wanted if v not in available]
    if missing:
        raise ConversionError(
            f"variable(s) {missing} not found in the input(s); they hold:\n{_holdings(inputs)}"
        )
    if levels is not None:
        for var in wanted:
            if is_upper(var):
                absent = [p for p in levels if p not in available[var]]
                if absent:
                    raise ConversionError(
                        f"level(s) {absent} hPa of {var!r} not found in the input(s) (found "
                        f"{sorted(available[var], reverse=True)}); they hold:\n{_holdings(inputs)}"
                    )


def _output_grid(inputs, grid: str | None):
    if grid is not None:
        return parse_grid(grid)
    first = inputs[0]
    for inp in inputs[1:]:
        if (
            inp.lat.shape != first.lat.shape
            or inp.lon.shape != first.lon.shape
            or not (np.allclose(inp.lat, first.lat) and np.allclose(inp.lon, first.lon))
        ):
            raise ConversionError(
                f"inputs on different grids: {first.where} is {first.lat.size} x {first.lon.size},"
                f" {inp.where} is {inp.lat.size} x {inp.lon.size}; pass --grid to regrid them"
            )
    return first.lat, first.lon


def _same_grid(lat_a, lon_a, lat_b, lon_b) -> bool:
    return (
        lat_a.shape == lat_b.shape
        and lon_a.shape == lon_b.shape
        and np.allclose(lat_a, lat_b)
        and np.allclose(lon_a, lon_b)
    )


def _time_filter(first, last, hour_step: int):
    """Function of hours ``(T,)`` giving the positions of the whole hours to keep: hour of day a
    multiple of ``hour_step``, between ``first`` and ``last`` (hours since 1970) when given."""

    def keep(hours: np.ndarray) -> np.ndarray:
        mask = np.isclose(hours, np.round(hours))
        whole = np.round(hours).astype(np.int64)
        mask &= (whole % 24) % hour_step == 0
        if first is not None:
            mask &= (whole >= first) & (whole <= last)
        return np.flatnonzero(mask)

    return keep


def _field_name(hour: int, var: str, level) -> str:
    return surface_name(hour, var) if level is None else upper_name(hour, var, level)


def _plans(opened, variables, levels, keep_times) -> list:
    """``(input index, time indices, fields)`` of every input with something to convert;
    ``fields`` are ``(variable, level)`` pairs (level None for surface variables)."""
    plans = []
    for index, inp in enumerate(opened):
        fields = []
        for var in inp.variables:
            if variables is not None and var not in variables:
                continue
            if is_upper(var):
                fields += [(var, p) for p in inp.levels(var) if levels is None or p in levels]
            else:
                fields.append((var, None))
        time_index = keep_times(inp.times)
        if fields and time_index.size:
            plans.append((index, time_index, fields))
    return plans


def _regridders(opened, used: list[int], lat, lon) -> list:
    """Regridder of each input onto ``(lat, lon)`` (None for inputs already on it or unused);
    inputs on the same grid share one."""
    regridders: list = [None] * len(opened)
    by_grid: dict = {}
    for index in used:
        inp = opened[index]
        if _same_grid(inp.lat, inp.lon, lat, lon):
            continue
        key = (inp.lat.tobytes(), inp.lon.tobytes())
        if key not in by_grid:
            try:
                by_grid[key] = ConservativeRegridder(inp.lat, inp.lon, lat, lon)
            except ValueError as err:
                raise ConversionError(f"{inp.where}: cannot regrid: {err}") from None
        regridders[index] = by_grid[key]
    return regridders


def _pending_jobs(opened, plans, root_dir: str, overwrite: bool):
    """The jobs of the fields not on disk yet (all with ``overwrite``), one listing per day
    directory (stale temporaries of a killed run are removed on the way).

    Returns ``(jobs, fields skipped, {upper var: levels}, [surface vars], set of times)``."""
    jobs, skipped, listings = [], 0, {}
    upper: dict = {}
    surface: list = []
    all_times = set()
    for index, time_index, fields in plans:
        times = np.round(opened[index].times[time_index]).astype(np.int64)
        for var, p in fields:
            if p is None and var not in surface:
                surface.append(var)
            elif p is not None:
                upper.setdefault(var, set()).add(p)
        for ti, t in zip(time_index, times, strict=True):
            dt = from_hours(int(t))
            all_times.add(int(t))
            todo = []
            for var, p in fields:
                key = (dt.date(), p is None)
                if key not in listings:
                    remove_stale_temporaries(day_dir(root_dir, dt, p is None))
                    listings[key] = list_day(root_dir, dt.date(), p is None)
                if overwrite or _field_name(dt.hour, var, p) not in listings[key]:
                    todo.append((var, p))
            skipped += len(fields) - len(todo)
            if todo:
                jobs.append(Job(index, int(ti), int(t), tuple(todo)))
    upper = {v: sorted(levels, key=ERA5_LEVELS.index) for v, levels in upper.items()}
    return jobs, skipped, upper, surface, all_times


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
    if hour_step < 1 or 24 % hour_step:
        raise ConversionError(f"--hour_step {hour_step} must divide 24")
    if workers < 1:
        raise ConversionError(f"--workers {workers} must be at least 1")
    first = last = None
    if start is not None or end is not None:
        if start is None or end is None:
            raise ConversionError("give both --start and --end")
        try:
            first, last = period_bounds([start, end])
        except ValueError as err:
            raise ConversionError(f"--start/--end: {err}") from None
    variables = project_variables(variables)
    levels = None if levels is None else [int(p) for p in levels]
    bad = [p for p in levels or [] if p not in ERA5_LEVELS]
    if bad:
        raise ConversionError(f"--levels {bad} are not ERA5 pressure levels {list(ERA5_LEVELS)}")

    sources = find_inputs(list(inputs))
    opened = [normalise(s.open(), s.location, member, level) for s in sources]
    for inp in opened:
        if inp.ignored:
            more = f" and {len(inp.ignored) - 20} more" if len(inp.ignored) > 20 else ""
            print(
                f"{inp.where}: not recognised, not converted: {inp.ignored[:20]}{more}",
                file=sys.stderr,
            )
    _check_request(opened, variables, levels)

    plans = _plans(opened, variables, levels, _time_filter(first, last, hour_step))
    if not plans:
        span = ", ".join(
            f"{from_hours(i.times.min()).date()}..{from_hours(i.times.max()).date()}"
            for i in opened[:5]
            if i.times.size
        )
        raise ConversionError(
            f"nothing to convert at the requested variables, levels and times "
            f"({start or 'any'}..{end or 'any'} every {hour_step} h; inputs cover {span}); "
            f"the input(s) hold:\n{_holdings(opened)}"
        )

    lat, lon = _output_grid([opened[i] for i, _, _ in plans], grid)
    if (h_size and h_size != lat.size) or (w_size and w_size != lon.size):
        raise ConversionError(
            f"the output grid is {lat.size} x {lon.size}, expected {h_size} x {w_size} "
            "(--h_size/--w_size); pass --grid to regrid"
        )
    recorded = read_grid(root_dir)
    if recorded is not None and not overwrite and not _same_grid(*recorded, lat, lon):
        raise ConversionError(
            f"{root_dir} holds data on a {recorded[0].size} x {recorded[1].size} grid "
            f"(statistic/grid.json); this conversion writes {lat.size} x {lon.size}"
        )
    regridders = _regridders(opened, [i for i, _, _ in plans], lat, lon)
    jobs, skipped, upper, surface, all_times = _pending_jobs(opened, plans, root_dir, overwrite)
    write_grid(root_dir, lat, lon)
    context = WriteContext(sources, regridders, root_dir, member, level)
    written = run_jobs(context, jobs, workers, progress)

    first_day = from_hours(min(all_times)).date().isoformat()
    last_day = from_hours(max(all_times)).date().isoformat()
    result = {
        "root_dir": root_dir,
        "inputs": len(sources),
        "written": written,
        "skipped": skipped,
        "times": len(all_times),
        "first_day": first_day,
        "last_day": last_day,
        "upper": upper,
        "surface": surface,
        "grid": [int(lat.size), int(lon.size)],
        "regridded": any(r is not None for r in regridders),
    }
    if stats:
        if written or overwrite or not os.path.exists(statistic_path(root_dir, MEAN_STD_FILE)):
            from utils.data.statistics import compute_statistics

            result["statistics"] = compute_statistics(
                root_dir,
                stats_start or first_day,
                stats_end or last_day,
                hour_step,
                upper,
                surface,
                climatology=climatology,
                overwrite=True,
                progress=progress,
            )
        else:
            result["statistics"] = "kept (nothing new converted)"
    return result
