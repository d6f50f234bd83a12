"""Convert ERA5 netCDF files into the project's layout (SPEC.md section 5), then compute the
statistics and the climatology.

::

    python -m utils.prepare_era5 --input 'era5/*.nc' --root_dir ./data/era5 \\
        [--levels 1000 925 850 ...] [--variables z q u v t t2m u10 v10 msl sp] \\
        [--start 1979-01-01 --end 2021-12-31] [--hour_step 6] \\
        [--stats_start 1979-01-01 --stats_end 2020-12-31] [--no_stats] [--no_climatology] [--overwrite]

Accepted inputs: pressure-level and single-level files from the Copernicus Climate Data Store (long
names such as ``geopotential`` / ``2m_temperature`` or short names ``z`` / ``t2m``; dimensions
``time`` or ``valid_time``, ``level`` or ``pressure_level``, ``latitude``/``longitude``) and
WeatherBench files (``lat``/``lon``, latitudes south to north, one file per variable or per variable
and level such as ``geopotential_500hPa_1979_1.40625deg.nc``). Fields are written north to south with
longitudes from 0 degrees east. Regridding is out of scope: the grid of the files is the grid of the
output (``--h_size``/``--w_size`` check it). Levels and times can be subset. Existing output is
never overwritten unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from utils.channels import ERA5_LEVELS
from utils.era5_layout import (
    STATISTIC_DIR,
    day_dir,
    from_hours,
    list_day,
    period_bounds,
    surface_name,
    upper_name,
)

# Project name -> names found in ERA5 / WeatherBench files.
UPPER_ALIASES = {
    "z": ("z", "geopotential"),
    "q": ("q", "specific_humidity"),
    "u": ("u", "u_component_of_wind"),
    "v": ("v", "v_component_of_wind"),
    "t": ("t", "temperature"),
    "r": ("r", "relative_humidity"),
    "w": ("w", "vertical_velocity"),
    "vo": ("vo", "vorticity"),
    "d": ("d", "divergence"),
}
SURFACE_ALIASES = {
    "t2m": ("t2m", "2t", "2m_temperature"),
    "u10": ("u10", "10u", "10m_u_component_of_wind"),
    "v10": ("v10", "10v", "10m_v_component_of_wind"),
    "msl": ("msl", "mean_sea_level_pressure"),
    "sp": ("sp", "surface_pressure"),
    "tp": ("tp", "total_precipitation"),
    "tcwv": ("tcwv", "total_column_water_vapour"),
}
TIME_DIMS = ("valid_time", "time")
LEVEL_DIMS = ("pressure_level", "level", "isobaricInhPa", "plev", "lev")
LAT_DIMS = ("latitude", "lat")
LON_DIMS = ("longitude", "lon")


def _lookup(name: str) -> tuple[str | None, bool]:
    """Project name of a file variable and whether it is upper-air."""
    key = name.lower()
    for project, aliases in UPPER_ALIASES.items():
        if key in aliases:
            return project, True
    for project, aliases in SURFACE_ALIASES.items():
        if key in aliases:
            return project, False
    return None, False


def _find(names, candidates, what: str, path: str, required: bool = True) -> str | None:
    for c in candidates:
        if c in names:
            return c
    if required:
        raise ValueError(
            f"{path}: no {what} dimension (looked for {list(candidates)}; has {sorted(names)})"
        )
    return None


@dataclass
class _Item:
    """One variable of one file to convert."""

    name: str  # name in the file
    var: str  # project name
    upper: bool
    levels: list = field(default_factory=list)  # hPa levels written (upper-air)
    level_index: list = field(default_factory=list)  # their indices along the level dim, if any


@dataclass
class _Plan:
    path: str
    time_dim: str
    lat_dim: str
    lon_dim: str
    level_dim: str | None
    time_index: np.ndarray
    times: np.ndarray  # hours since epoch of the kept steps
    items: list
    flip_lat: bool
    lon_order: np.ndarray | None
    squeeze: dict


def _minutes(values) -> np.ndarray:
    """Decoded datetimes as minutes since 1970-01-01."""
    v = np.asarray(values)
    if not np.issubdtype(v.dtype, np.datetime64):
        raise ValueError("time coordinate is not decoded to datetimes")
    return v.astype("datetime64[m]").astype(np.int64)


def plan_file(
    path: str,
    levels: Sequence[int] | None,
    variables: Sequence[str] | None,
    first: int | None,
    last: int | None,
    hour_step: int,
    level_override: int | None = None,
) -> _Plan:
    """Inspect one netCDF file (metadata only) and decide what to write from it."""
    import xarray as xr

    with xr.open_dataset(path) as ds:
        dims = set(ds.dims)
        time_dim = _find(dims, TIME_DIMS, "time", path)
        lat_dim = _find(dims, LAT_DIMS, "latitude", path)
        lon_dim = _find(dims, LON_DIMS, "longitude", path)
        level_dim = _find(dims, LEVEL_DIMS, "level", path, required=False)
        squeeze = {}
        for d in dims - {time_dim, lat_dim, lon_dim, level_dim}:
            if ds.sizes[d] != 1:
                raise ValueError(f"{path}: unsupported extra dimension {d!r} of size {ds.sizes[d]}")
            squeeze[d] = 0
        minutes = _minutes(ds[time_dim].values)
        keep = minutes % 60 == 0
        hours = minutes // 60
        keep &= (hours % 24) % hour_step == 0
        if first is not None:
            keep &= (hours >= first) & (hours <= last)
        time_index = np.flatnonzero(keep)
        file_levels = None
        if level_dim is not None:
            lv = np.asarray(ds[level_dim].values, dtype=np.float64)
            units = str(ds[level_dim].attrs.get("units", "")).strip().lower()
            if units in ("pa", "pascal", "pascals") or level_dim == "plev" or lv.max() > 2000:
                lv = lv / 100.0
            file_levels = [int(round(x)) for x in lv]
        items = []
        for name, da in ds.data_vars.items():
            var, upper = _lookup(name)
            if var is None or (variables is not None and var not in variables):
                continue
            if time_dim not in da.dims or lat_dim not in da.dims or lon_dim not in da.dims:
                continue
            item = _Item(name, var, upper)
            if upper:
                if level_dim is not None and level_dim in da.dims:
                    avail = file_levels
                    idx = [i for i, p in enumerate(avail) if levels is None or p in levels]
                    item.levels = [avail[i] for i in idx]
                    item.level_index = idx
                else:
                    level = _scalar_level(ds, da, path, level_override)
                    if levels is not None and level not in levels:
                        continue
                    item.levels = [level]
                bad = [p for p in item.levels if p not in ERA5_LEVELS]
                if bad:
                    raise ValueError(
                        f"{path}: variable {name!r} has levels {bad} that are not "
                        "ERA5 pressure levels"
                    )
                if not item.levels:
                    continue
            elif level_dim is not None and level_dim in da.dims:
                raise ValueError(f"{path}: surface variable {name!r} has a level dimension")
            items.append(item)
        lat = np.asarray(ds[lat_dim].values, dtype=np.float64)
        lon = np.asarray(ds[lon_dim].values, dtype=np.float64)
        flip = bool(len(lat) > 1 and lat[0] < lat[-1])
        lon_mod = np.mod(lon, 360.0)
        order = np.argsort(lon_mod, kind="stable")
        lon_order = None if np.array_equal(order, np.arange(len(lon))) else order
        return _Plan(
            path,
            time_dim,
            lat_dim,
            lon_dim,
            level_dim,
            time_index,
            hours[time_index],
            items,
            flip,
            lon_order,
            squeeze,
        )


def _scalar_level(ds, da, path: str, override: int | None) -> int:
    """Level of an upper-air variable without a level dimension (WeatherBench single-level files)."""
    if override is not None:
        return int(override)
    for name in LEVEL_DIMS:
        if name in da.coords and np.size(da.coords[name].values) == 1:
            value = float(np.asarray(da.coords[name].values).ravel()[0])
            return int(round(value / 100.0 if value > 2000 else value))
    for key in ("level", "pressure_level", "GRIB_level"):
        if key in da.attrs:
            return int(float(da.attrs[key]))
    match = re.search(r"_(\d{1,4})(?:hpa)?(?=[_.])", os.path.basename(path).lower())
    if match:
        return int(match.group(1))
    raise ValueError(
        f"{path}: cannot tell the pressure level of {da.name!r} (no level dimension, "
        "coordinate or '<name>_<level>hPa' file name); pass --level"
    )


def _planned_outputs(plan: _Plan):
    for t in plan.times:
        dt = from_hours(int(t))
        for item in plan.items:
            if item.upper:
                for p in item.levels:
                    yield dt, False, upper_name(dt.hour, item.var, p)
            else:
                yield dt, True, surface_name(dt.hour, item.var)


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
    progress: bool = True,
) -> dict:
    """Convert ``inputs`` (paths or glob patterns) into ``root_dir``; see the module docstring."""
    import xarray as xr
    from tqdm import tqdm

    paths = []
    for pattern in inputs:
        found = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        if os.path.isdir(pattern):
            found = sorted(glob.glob(os.path.join(pattern, "**", "*.nc"), recursive=True))
        if not found:
            raise FileNotFoundError(f"no input files match {pattern!r}")
        paths += found
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"input file(s) not found: {missing}")
    if hour_step < 1 or 24 % hour_step:
        raise ValueError("--hour_step must divide 24")
    first = last = None
    if start is not None or end is not None:
        if start is None or end is None:
            raise ValueError("give both --start and --end")
        first, last = period_bounds([start, end])
    levels = None if levels is None else [int(p) for p in levels]

    plans = [plan_file(p, levels, variables, first, last, hour_step, level) for p in paths]
    plans = [p for p in plans if p.items and len(p.times)]
    if not plans:
        raise ValueError(
            "nothing to convert: no recognised variable at the requested levels and "
            f"times in {paths}"
        )
    # Refuse to overwrite: one listdir per day directory.
    if not overwrite:
        existing, listing = [], {}
        for plan in plans:
            for dt, surface, name in _planned_outputs(plan):
                key = (dt.date(), surface)
                if key not in listing:
                    listing[key] = list_day(root_dir, dt.date(), surface)
                if name in listing[key]:
                    existing.append(os.path.join(day_dir(root_dir, dt, surface), name))
        if stats and os.path.exists(os.path.join(root_dir, STATISTIC_DIR)):
            existing.append(os.path.join(root_dir, STATISTIC_DIR))
        if existing:
            raise FileExistsError(
                f"{len(existing)} output file(s) exist, e.g. {existing[:5]}; "
                "pass --overwrite to replace them"
            )

    shape = (h_size, w_size) if h_size and w_size else None
    written: dict = {}
    total = sum(len(p.times) for p in plans)
    bar = tqdm(total=total, desc="convert", unit="step", disable=not progress)
    all_times = set()
    made = set()
    for plan in plans:
        with xr.open_dataset(plan.path) as ds:
            for ti, t in zip(plan.time_index, plan.times, strict=False):
                dt = from_hours(int(t))
                all_times.add(int(t))
                for item in plan.items:
                    dims = ds[item.name].dims
                    index = {plan.time_dim: int(ti), **{d: 0 for d in plan.squeeze if d in dims}}
                    if plan.level_dim in dims:  # read only the levels that are written
                        index[plan.level_dim] = item.level_index
                    da = ds[item.name].isel(index)
                    order = ([plan.level_dim] if plan.level_dim in da.dims else []) + [
                        plan.lat_dim,
                        plan.lon_dim,
                    ]
                    data = np.asarray(da.transpose(*order).values, dtype=np.float32)
                    if data.ndim == 2:
                        data = data[None]
                    if plan.flip_lat:
                        data = data[:, ::-1]
                    if plan.lon_order is not None:
                        data = data[:, :, plan.lon_order]
                    if shape is None:
                        shape = data.shape[1:]
                    if data.shape[1:] != tuple(shape):
                        raise ValueError(
                            f"{plan.path}: {item.name!r} has grid {data.shape[1:]}, "
                            f"expected {tuple(shape)} (regridding is out of scope)"
                        )
                    out_dir = day_dir(root_dir, dt, surface=not item.upper)
                    if out_dir not in made:
                        os.makedirs(out_dir, exist_ok=True)
                        made.add(out_dir)
                    if item.upper:
                        for field_, p in zip(data, item.levels, strict=False):
                            np.save(
                                os.path.join(out_dir, upper_name(dt.hour, item.var, p)),
                                np.ascontiguousarray(field_),
                            )
                            written.setdefault(item.var, set()).add(p)
                    else:
                        np.save(
                            os.path.join(out_dir, surface_name(dt.hour, item.var)),
                            np.ascontiguousarray(data[0]),
                        )
                        written.setdefault(item.var, None)
                bar.update(1)
    bar.close()
    upper = {v: sorted(ls, key=ERA5_LEVELS.index) for v, ls in written.items() if ls is not None}
    surface = [v for v, ls in written.items() if ls is None]
    first_day = from_hours(min(all_times)).date().isoformat()
    last_day = from_hours(max(all_times)).date().isoformat()
    result = {
        "root_dir": root_dir,
        "files": len(plans),
        "times": len(all_times),
        "first_day": first_day,
        "last_day": last_day,
        "upper": upper,
        "surface": surface,
        "grid": list(shape),
    }
    if levels is not None:
        absent = sorted({p for p in levels} - {p for ls in upper.values() for p in ls})
        if absent:
            result["levels_not_found"] = absent
    if stats:
        from utils.statistics import compute_statistics

        result["statistics"] = compute_statistics(
            root_dir,
            stats_start or first_day,
            stats_end or last_day,
            hour_step,
            upper,
            surface,
            climatology=climatology,
            overwrite=overwrite,
            progress=progress,
        )
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        help="netCDF files, glob patterns or directories (searched for *.nc)",
    )
    parser.add_argument("--root_dir", required=True, help="output root of the layout")
    parser.add_argument(
        "--levels",
        type=int,
        nargs="+",
        default=None,
        help="pressure levels (hPa) to keep (default: all in the files)",
    )
    parser.add_argument(
        "--variables",
        nargs="+",
        default=None,
        help="project variable names to keep, e.g. z q u v t t2m u10 v10 msl sp",
    )
    parser.add_argument("--start", default=None, help="first date to convert, YYYY-MM-DD")
    parser.add_argument("--end", default=None, help="last date to convert, YYYY-MM-DD")
    parser.add_argument(
        "--hour_step",
        type=int,
        default=6,
        help="keep hours of day divisible by this (default 6: 00/06/12/18)",
    )
    parser.add_argument(
        "--level",
        type=int,
        default=None,
        help="pressure level of upper-air files that have no level coordinate",
    )
    parser.add_argument("--h_size", type=int, default=None, help="expected latitudes (check)")
    parser.add_argument("--w_size", type=int, default=None, help="expected longitudes (check)")
    parser.add_argument("--no_stats", action="store_true", help="skip statistics and climatology")
    parser.add_argument(
        "--stats_start",
        default=None,
        help="first date of the statistics period (default: first converted day)",
    )
    parser.add_argument(
        "--stats_end",
        default=None,
        help="last date of the statistics period (default: last converted day)",
    )
    parser.add_argument("--no_climatology", action="store_true")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    result = convert(
        args.input,
        args.root_dir,
        args.levels,
        args.variables,
        args.start,
        args.end,
        args.hour_step,
        stats=not args.no_stats,
        stats_start=args.stats_start,
        stats_end=args.stats_end,
        climatology=not args.no_climatology,
        overwrite=args.overwrite,
        h_size=args.h_size,
        w_size=args.w_size,
        level=args.level,
        progress=not args.quiet,
    )
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    from utils.errors import cli_errors

    with cli_errors():  # the project's errors as one line, exit 2
        main()
