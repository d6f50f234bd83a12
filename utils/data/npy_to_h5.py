"""Convert the one-``.npy``-per-field layout to one HDF5 file per year (``data_format: h5``).

::

    python -m tools.npy_to_h5 --root_dir /data/era5 --config vamoe --workers 4

writes ``<out_dir>/<split>/<YYYY>.h5`` (default: ``<root_dir>/all/``, beside the ``.npy`` tree, so
the same ``root_dir`` serves both formats) with the channels of ``--config`` (default: every
variable found in the ``.npy`` tree) at every ``--hour_step`` hours of ``--start`` .. ``--end``
(default: the days found), and copies ``statistic/`` when ``out_dir`` is elsewhere. Time steps
with a missing file are left out of the year file (the loader reports them as missing).

Resumable: a year whose file is complete is skipped; a year is written into
``.<YYYY>.h5.partial`` beside its final name in durable blocks of rows, and renamed to
``<YYYY>.h5`` once complete (:mod:`utils.data.h5_year_writer`), so an interrupted run continues
where it stopped. ``--workers`` converts that many years at once, in separate processes.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from utils.channels import ChannelLayout
from utils.data.h5_layout import ALL_SPLIT, year_path
from utils.data.h5_year_writer import write_year_file
from utils.data.npy_layout import (
    SINGLE_DIR,
    STATISTIC_DIR,
    DataFileError,
    channel_path,
    discover_variables,
    read_field,
    scan_missing,
)
from utils.grid import latitudes, longitudes, read_grid
from utils.times import dates_of, from_hours, period_times


def discovered_layout(root: str) -> ChannelLayout:
    """Every variable of the ``.npy`` tree (upper-air ones must share their levels)."""
    upper, surface = discover_variables(root)
    level_sets = {tuple(levels) for levels in upper.values()}
    if len(level_sets) > 1:
        raise DataFileError(
            f"{root}: upper-air variables have different levels ({upper}); choose the channels "
            "with --config"
        )
    levels = list(level_sets.pop()) if level_sets else []
    return ChannelLayout(list(upper), levels, surface)


def day_span(root: str) -> tuple[str, str]:
    """First and last day directory of the ``.npy`` tree (upper-air, else surface)."""
    for base in (root, os.path.join(root, SINGLE_DIR)):
        years = sorted(d for d in os.listdir(base) if d.isdigit()) if os.path.isdir(base) else []
        days = [d for y in years for d in sorted(os.listdir(os.path.join(base, y)))]
        if days:
            return days[0], days[-1]
    raise FileNotFoundError(f"no <YYYY>/<YYYY-MM-DD> directories under {root}")


def convert_year(
    root: str,
    out_dir: str,
    split: str,
    year: int,
    times: np.ndarray,
    layout: ChannelLayout,
    lat: np.ndarray,
    lon: np.ndarray,
    overwrite: bool = False,
) -> dict:
    """Write (or finish) ``<out_dir>/<split>/<year>.h5`` from the ``.npy`` tree at ``root``
    (:func:`utils.data.h5_year_writer.write_year_file`).

    Returns ``{"year", "path", "rows", "status"}`` with status ``written``, ``resumed`` (a partial
    file was continued) or ``skipped`` (complete already)."""
    from utils.data.npy_reader import NpyStateReader

    final = year_path(out_dir, year, split)
    reader = NpyStateReader(root, layout, (len(lat), len(lon)))

    def rows(start: int):
        state = np.empty((layout.n_channels, len(lat), len(lon)), dtype=np.float32)
        for t in times[start:]:
            reader.read(int(t), state)
            yield state

    status = write_year_file(final, times, layout.names, (lat, lon), rows, overwrite)
    return {"year": int(year), "path": final, "rows": int(len(times)), "status": status}


def convert(
    root: str,
    out_dir: str | None = None,
    layout: ChannelLayout | None = None,
    start=None,
    end=None,
    hour_step: int = 6,
    split: str = ALL_SPLIT,
    workers: int = 1,
    overwrite: bool = False,
) -> dict:
    """Convert every year of ``start`` .. ``end`` (see module doc); returns a summary."""
    out_dir = out_dir or root
    layout = layout or discovered_layout(root)
    if start is None or end is None:
        first, last = day_span(root)
        start, end = start or first, end or last
    times = period_times(start, end, hour_step)
    missing = scan_missing(root, layout.channels, times)
    incomplete = np.array(sorted({t for t, _ in missing}), dtype=np.int64)
    times = times[~np.isin(times, incomplete)]
    if len(times) == 0:
        raise DataFileError(f"{root}: no complete time step between {start} and {end}")
    shape = read_field(channel_path(root, int(times[0]), layout.channels[0])).shape
    grid = read_grid(root)
    lat, lon = grid if grid is not None else (latitudes(shape[0]), longitudes(shape[1]))
    years = np.array([from_hours(t).year for t in times])
    jobs = [(y, times[years == y]) for y in sorted(set(years.tolist()))]
    args = [(root, out_dir, split, y, t, layout, lat, lon, overwrite) for y, t in jobs]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(workers, len(jobs))) as pool:
            results = list(pool.map(convert_year, *zip(*args, strict=True)))
    else:
        results = [convert_year(*a) for a in args]
    if os.path.abspath(out_dir) != os.path.abspath(root):
        source = os.path.join(root, STATISTIC_DIR)
        if os.path.isdir(source):
            shutil.copytree(source, os.path.join(out_dir, STATISTIC_DIR), dirs_exist_ok=True)
    return {
        "out_dir": out_dir,
        "channels": layout.names,
        "years": results,
        "time_steps": int(len(times)),
        "incomplete_time_steps_left_out": int(len(incomplete)),
        "incomplete_dates": dates_of(incomplete)[:20],
    }
