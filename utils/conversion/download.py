"""Optional download of ERA5 from the Copernicus Climate Data Store with ``cdsapi``.

Needs a CDS account and its key in ``~/.cdsapirc`` (see the CDS "How to API" page). One netCDF
file per month and dataset (pressure levels, single levels) is requested at the native 0.25°
grid, holding the requested variables, levels and hours; files already downloaded are skipped.
The files are then converted like any other input.
"""

from __future__ import annotations

import calendar
import datetime as _dt
import os
from collections.abc import Sequence

from utils.conversion.variable_names import SURFACE_NAMES, UPPER_NAMES, ConversionError, is_upper
from utils.times import parse_date

PRESSURE_DATASET = "reanalysis-era5-pressure-levels"
SINGLE_DATASET = "reanalysis-era5-single-levels"


def _cds_name(var: str) -> str:
    """The CDS name of a project variable: its first name longer than four characters."""
    table = UPPER_NAMES if is_upper(var) else SURFACE_NAMES
    return [n for n in table[var] if "_" in n or len(n) > 4][0]


def _months(start: _dt.date, end: _dt.date):
    year, month = start.year, start.month
    while (year, month) <= (end.year, end.month):
        yield year, month
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)


def cds_requests(
    variables: Sequence[str],
    levels: Sequence[int] | None,
    start,
    end,
    hour_step: int,
    target_dir: str,
) -> list[tuple[str, dict, str]]:
    """``(dataset, request, target file)`` of every month from ``start`` to ``end`` (inclusive
    dates) for the project ``variables`` at ``levels`` (hPa) every ``hour_step`` hours."""
    unknown = [v for v in variables if v not in UPPER_NAMES and v not in SURFACE_NAMES]
    if unknown:
        raise ConversionError(
            f"--download: unknown variable(s) {unknown}; known: {list(UPPER_NAMES) + list(SURFACE_NAMES)}"
        )
    upper = [_cds_name(v) for v in variables if is_upper(v)]
    surface = [_cds_name(v) for v in variables if not is_upper(v)]
    if upper and not levels:
        raise ConversionError("--download of upper-air variables needs --levels")
    first, last = parse_date(start), parse_date(end)
    hours = [f"{h:02d}:00" for h in range(0, 24, hour_step)]
    requests = []
    for year, month in _months(first, last):
        n_days = calendar.monthrange(year, month)[1]
        days = [
            f"{d:02d}" for d in range(1, n_days + 1) if first <= _dt.date(year, month, d) <= last
        ]
        common = {
            "product_type": ["reanalysis"],
            "year": [f"{year:04d}"],
            "month": [f"{month:02d}"],
            "day": days,
            "time": hours,
            "data_format": "netcdf",
            "download_format": "unarchived",
        }
        for dataset, names, tag in (
            (PRESSURE_DATASET, upper, "pl"),
            (SINGLE_DATASET, surface, "sfc"),
        ):
            if not names:
                continue
            request = {**common, "variable": names}
            if dataset == PRESSURE_DATASET:
                request["pressure_level"] = [str(int(p)) for p in levels]
            target = os.path.join(target_dir, f"era5_{tag}_{year:04d}{month:02d}.nc")
            requests.append((dataset, request, target))
    return requests


def download(requests: list[tuple[str, dict, str]], client=None) -> list[str]:
    """Retrieve every request whose target file does not exist yet; returns all target paths.

    Each file is retrieved to a temporary name and renamed, so an interrupted download is
    retried on the next run."""
    pending = [r for r in requests if not os.path.exists(r[2])]
    if pending and client is None:
        try:
            import cdsapi
        except ImportError:
            raise ConversionError(
                "--download needs cdsapi (pip install -r requirements-optional.txt)"
            ) from None
        try:
            client = cdsapi.Client()
        except Exception as err:
            raise ConversionError(f"--download: no CDS credentials ({err})") from None
    for dataset, request, target in pending:
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        partial = target + ".part"
        client.retrieve(dataset, request, partial)
        os.replace(partial, target)
    return [r[2] for r in requests]
