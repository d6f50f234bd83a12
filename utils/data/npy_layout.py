"""Paths of the one-``.npy``-per-field ERA5 layout (docs/design.md), shared by the loader, the
synthetic generator, the netCDF converter and the statistics tools.

::

    <root>/<YYYY>/<YYYY-MM-DD>/<HH>:00:00-<var>-<level>.npy     upper-air, level written as 500.0
    <root>/single/<YYYY>/<YYYY-MM-DD>/<HH>:00:00-<var>.npy      surface
    <root>/statistic/mean_std.json                              37 values per variable
    <root>/statistic/mean_std_single.json                       one value per variable
    <root>/statistic/climatology/                               see utils/data/climatology.py

Times are integers: hours since 1970-01-01T00:00 UTC ("time_hours", :mod:`utils.times`).
"""

from __future__ import annotations

import datetime as _dt
import functools
import os
from collections.abc import Iterable, Sequence

import numpy as np

from utils.errors import DataFileError, MissingDataError
from utils.times import dates_of, from_hours, parse_date, to_hours

STATISTIC_DIR = "statistic"
SINGLE_DIR = "single"
MEAN_STD_FILE = "mean_std.json"
MEAN_STD_SINGLE_FILE = "mean_std_single.json"
CLIMATOLOGY_DIR = "climatology"


# ------------------------------------------------------------------------------------------ paths
def level_token(level) -> str:
    """Pressure level as written in file names: ``500`` -> ``'500.0'``."""
    return f"{float(level)}"


def upper_name(hour: int, var: str, level) -> str:
    return f"{int(hour):02d}:00:00-{var}-{level_token(level)}.npy"


def surface_name(hour: int, var: str) -> str:
    return f"{int(hour):02d}:00:00-{var}.npy"


def day_dir(root: str, date, surface: bool = False) -> str:
    """Directory of one day: ``<root>/<YYYY>/<YYYY-MM-DD>`` (under ``single/`` for surface)."""
    d = parse_date(date)
    base = os.path.join(root, SINGLE_DIR) if surface else root
    return os.path.join(base, f"{d.year:04d}", d.isoformat())


def upper_path(root: str, hours: int, var: str, level) -> str:
    dt = from_hours(hours)
    return os.path.join(day_dir(root, dt), upper_name(dt.hour, var, level))


def surface_path(root: str, hours: int, var: str) -> str:
    dt = from_hours(hours)
    return os.path.join(day_dir(root, dt, surface=True), surface_name(dt.hour, var))


def channel_path(root: str, hours: int, channel) -> str:
    """File of one channel (``.variable``, ``.level``; level None: surface) at time ``hours``."""
    if channel.level is None:
        return surface_path(root, hours, channel.variable)
    return upper_path(root, hours, channel.variable, channel.level)


def statistic_path(root: str, name: str = MEAN_STD_FILE) -> str:
    return os.path.join(root, STATISTIC_DIR, name)


@functools.lru_cache(maxsize=256)
def file_names(channels: tuple, hour: int) -> tuple[tuple[bool, str], ...]:
    """``(is_surface, file name)`` of each channel (``.variable``, ``.level``; level None for a
    surface variable) at hour of day ``hour``; cached, as the loader asks for every sample."""
    return tuple(
        (
            c.level is None,
            surface_name(hour, c.variable)
            if c.level is None
            else upper_name(hour, c.variable, c.level),
        )
        for c in channels
    )


def channel_paths(root: str, layout, hours: int) -> list[str]:
    """Paths of every channel of ``layout`` at time ``hours``, in channel order."""
    dt = from_hours(hours)
    upper_dir, single_dir = day_dir(root, dt), day_dir(root, dt, surface=True)
    return [
        os.path.join(single_dir if surface else upper_dir, name)
        for surface, name in file_names(layout.channels, dt.hour)
    ]


def read_field(path: str, shape=None, check_finite: bool = True) -> np.ndarray:
    """One field of the layout: float32 ``(H, W)`` (``shape`` when given), finite unless
    ``check_finite`` is False. Errors name the file."""
    try:
        arr = np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise MissingDataError(f"missing data file {path}") from None
    except Exception as err:
        raise DataFileError(f"cannot read {path} as .npy: {err}") from None
    if (
        arr.dtype != np.float32
        or arr.ndim != 2
        or (shape is not None and arr.shape != tuple(shape))
    ):
        raise DataFileError(
            f"{path}: array is {arr.dtype} {arr.shape}, expected float32 "
            f"{tuple(shape) if shape else '(H, W)'} (h_size, w_size)"
        )
    size = os.path.getsize(path)
    if size != arr.offset + arr.nbytes:
        raise DataFileError(
            f"{path}: {size} bytes, expected {arr.offset + arr.nbytes} (a {arr.offset}-byte "
            f"header and {arr.dtype} {arr.shape}): truncated or trailing data"
        )
    arr = np.asarray(arr)
    if check_finite and not np.isfinite(arr).all():
        raise DataFileError(f"{path}: {int((~np.isfinite(arr)).sum())} NaN/inf value(s)")
    return arr


def list_day(root: str, date, surface: bool = False) -> set:
    """File names of one day directory (empty set when it does not exist)."""
    try:
        return set(os.listdir(day_dir(root, date, surface)))
    except (FileNotFoundError, NotADirectoryError):
        return set()


def discover_variables(root: str, date=None) -> tuple[dict, list]:
    """Variables present in the layout, read from the file names of one day.

    Returns ``({upper var: sorted levels (hPa, int)}, [surface vars])``. ``date`` defaults to the
    first day directory found.
    """
    if date is None:
        years = sorted(d for d in os.listdir(root) if d.isdigit())
        if not years:
            raise MissingDataError(f"no <YYYY> directories under {root}")
        days = sorted(os.listdir(os.path.join(root, years[0])))
        if not days:
            raise MissingDataError(f"no day directories under {os.path.join(root, years[0])}")
        date = days[0]
    upper: dict = {}
    for name in list_day(root, date):
        if not name.endswith(".npy"):
            continue
        parts = name[:-4].split("-")
        if len(parts) >= 3:
            var, level = "-".join(parts[1:-1]), parts[-1]
            upper.setdefault(var, set()).add(int(float(level)))
    surface = set()
    for name in list_day(root, date, surface=True):
        if name.endswith(".npy") and "-" in name:
            surface.add(name[:-4].split("-", 1)[1])
    return (
        {v: sorted(levels, reverse=True) for v, levels in sorted(upper.items())},
        sorted(surface),
    )


def npy_header(shape: tuple, dtype=np.float32) -> bytes:
    """The exact bytes :func:`numpy.save` writes before the data of a C-order array."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf,
        {
            "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
            "fortran_order": False,
            "shape": tuple(int(s) for s in shape),
        },
    )
    return buf.getvalue()


def scan_missing(root: str, channels: Sequence, times: Iterable[int]) -> list[tuple[int, str]]:
    """Every missing file of ``channels`` (objects with ``.variable`` and ``.level``, level None
    for surface) at ``times``, as ``(time_hours, path)`` in time then channel order.

    Lists each day directory once and checks set membership, so a scan of decades of 6-hourly
    data costs one ``listdir`` per day directory rather than one ``stat`` per file.
    """
    by_day: dict = {}
    for t in sorted({int(t) for t in times}):
        dt = from_hours(t)
        by_day.setdefault(dt.date(), []).append((t, dt.hour))
    channels = tuple(channels)
    missing = []
    for date, entries in by_day.items():
        upper_files = surface_files = None
        upper_dir, single_dir = day_dir(root, date), day_dir(root, date, surface=True)
        for t, hour in entries:
            for surface, name in file_names(channels, hour):
                if surface:
                    if surface_files is None:
                        surface_files = list_day(root, date, surface=True)
                    if name not in surface_files:
                        missing.append((t, os.path.join(single_dir, name)))
                else:
                    if upper_files is None:
                        upper_files = list_day(root, date)
                    if name not in upper_files:
                        missing.append((t, os.path.join(upper_dir, name)))
    return missing


def available_times(root: str, channels: Sequence, first: int, last: int) -> np.ndarray:
    """Sorted times (hours) in ``[first, last]`` at which at least one of ``channels`` has a file,
    read from the file names (one ``listdir`` per day directory): the times a dataset holds,
    whatever its step."""
    upper_suffix = {f"-{c.variable}-{level_token(c.level)}.npy" for c in channels if c.level}
    surface_suffix = {f"-{c.variable}.npy" for c in channels if c.level is None}
    found = []
    day = from_hours(first).date()
    while day <= from_hours(last).date():
        hours = set()
        for surface, suffixes in ((False, upper_suffix), (True, surface_suffix)):
            if suffixes:
                hours.update(
                    int(name[:2])
                    for name in list_day(root, day, surface)
                    if name[2:8] == ":00:00" and name[:2].isdigit() and name[8:] in suffixes
                )
        base = to_hours(day)
        found += [base + h for h in hours if first <= base + h <= last]
        day += _dt.timedelta(days=1)
    return np.array(sorted(found), dtype=np.int64)


def missing_files_message(
    missing: Sequence[tuple[int, str]], what: str = "", show: int = 20
) -> str:
    """One error message listing the first ``show`` missing paths, their count and their dates."""
    dates = dates_of(t for t, _ in missing)
    lines = [
        f"{len(missing)} data file(s) missing{(' for ' + what) if what else ''} on "
        f"{len(dates)} date(s): {', '.join(dates[:10])}{' ...' if len(dates) > 10 else ''}"
    ]
    lines += [f"  {path}" for _, path in missing[:show]]
    if len(missing) > show:
        lines.append(f"  ... and {len(missing) - show} more")
    return "\n".join(lines)
