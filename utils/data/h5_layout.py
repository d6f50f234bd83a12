"""The HDF5 layout of ERA5: one file per year, FourCastNet style (``data_format: h5``).

::

    <root>/<split>/<YYYY>.h5        split: train | valid | test | all (any other name too)
    <root>/statistic/...            the same statistics, grid and climatology as the .npy layout

Each file holds the dataset ``fields``, float32 ``(T, C, H, W)``, chunked one time step per chunk
``(1, C, H, W)``, and describes itself:

- ``time``: int64 ``(T,)``, hours since 1970-01-01T00:00 UTC, strictly increasing;
- ``channel``: ``(C,)`` channel names such as ``z500`` or ``t2m``;
- ``latitude`` ``(H,)`` (north to south) and ``longitude`` ``(W,)``, float64 degrees;
- attributes ``format`` (:data:`FORMAT`) and ``complete`` (set once every row is written).

Files written elsewhere with only ``fields`` (plain FourCastNet files) are read too: their channel
order is stated in the config (``h5_channels``) and their time axis starts at 00:00 UTC on 1
January of the year in the file name, with a step of the year's hours divided by ``T``.

:func:`describe` reads a file's metadata into an :class:`H5YearFile` (plain values, safe to send
to other processes); :func:`channel_indices` matches its channels and grid with a config.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from utils.data.npy_layout import DataFileError, MissingDataError
from utils.times import to_hours

FORMAT = "vamoe-era5-h5"
FIELDS, TIME, CHANNEL, LATITUDE, LONGITUDE = "fields", "time", "channel", "latitude", "longitude"
ALL_SPLIT = "all"
SUFFIX = ".h5"
TIME_UNITS = "hours since 1970-01-01 00:00:00"


def year_path(root: str, year: int, split: str = ALL_SPLIT) -> str:
    """``<root>/<split>/<YYYY>.h5``."""
    return os.path.join(root, split, f"{int(year):04d}{SUFFIX}")


def find_year_files(root: str, split: str) -> dict[int, str]:
    """``{year: path}`` of the year files under ``root``. A year is taken from ``<root>/<split>/``
    first, then ``<root>/all/``, then the other sub-directories in name order (FourCastNet's
    ``train``, ``test``, ``out_of_sample``)."""
    try:
        subdirs = sorted(e.name for e in os.scandir(root) if e.is_dir())
    except FileNotFoundError:
        return {}
    order = [d for d in (split, ALL_SPLIT) if d in subdirs]
    order += [d for d in subdirs if d not in order]
    found: dict[int, str] = {}
    for sub in order:
        for name in sorted(os.listdir(os.path.join(root, sub))):
            stem, ext = os.path.splitext(name)
            if ext == SUFFIX and stem.isdigit() and len(stem) == 4:
                found.setdefault(int(stem), os.path.join(root, sub, name))
    return found


def year_hours(year: int) -> tuple[int, int]:
    """First hour of ``year`` and the number of hours in it."""
    first = to_hours(_dt.date(year, 1, 1))
    return first, to_hours(_dt.date(year + 1, 1, 1)) - first


@dataclass
class H5YearFile:
    """Metadata of one year file.

    ``row_offsets`` (int64 ``(T,)``, -1 for a row never written) are the byte offsets of each time
    step's ``(C, H, W)`` block when the data is stored raw (little-endian float32, no filter,
    contiguous or one time step per chunk): such rows are read with ``os.preadv``. ``None``
    means rows go through h5py (compressed or otherwise chunked files).
    """

    path: str
    times: np.ndarray
    channels: list
    shape: tuple
    latitude: np.ndarray | None
    longitude: np.ndarray | None
    self_describing: bool
    row_offsets: np.ndarray | None

    def row(self, time_hours: int) -> int:
        """Row of ``time_hours``, or -1 when the file does not hold it."""
        i = int(np.searchsorted(self.times, time_hours))
        if i < len(self.times) and self.times[i] == time_hours:
            if self.row_offsets is None or self.row_offsets[i] >= 0:
                return i
        return -1


def _names(values) -> list:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _row_offsets(dset, n_rows: int) -> np.ndarray | None:
    """Byte offset of each row of ``dset`` (-1 when unallocated), or None if it is not raw."""
    dsid = dset.id
    if dset.dtype.str != "<f4" or dsid.get_create_plist().get_nfilters() > 0:
        return None
    row_bytes = int(np.prod(dset.shape[1:])) * 4
    if dset.chunks is None:
        base = dsid.get_offset()
        if base is None:  # nothing written yet
            return np.full(n_rows, -1, dtype=np.int64)
        return base + np.arange(n_rows, dtype=np.int64) * row_bytes
    if tuple(dset.chunks) != (1,) + tuple(dset.shape[1:]):
        return None
    offsets = np.full(n_rows, -1, dtype=np.int64)

    def record(info):
        offsets[info.chunk_offset[0]] = info.byte_offset

    dsid.chunk_iter(record)
    return offsets


def describe(path: str, declared_channels: Sequence[str] | None = None) -> H5YearFile:
    """Read the metadata of one year file (see module doc). ``declared_channels`` is the channel
    order stated in the config for files that store none. Errors name the file."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise MissingDataError(f"missing data file {path}") from None
    except OSError as err:
        raise DataFileError(f"cannot read {path} as HDF5: {err}") from None
    with f:
        if FIELDS not in f or f[FIELDS].ndim != 4:
            raise DataFileError(f"{path}: no 4-d dataset '{FIELDS}' (time, channel, lat, lon)")
        dset = f[FIELDS]
        n_rows, n_channels = dset.shape[:2]
        if dset.dtype != np.float32:
            raise DataFileError(f"{path}: '{FIELDS}' is {dset.dtype}, expected float32")
        if TIME in f:
            times = np.asarray(f[TIME][...], dtype=np.int64)
        else:
            times = _implied_times(path, n_rows)
        if len(times) != n_rows or (n_rows > 1 and not np.all(np.diff(times) > 0)):
            raise DataFileError(
                f"{path}: '{TIME}' must hold {n_rows} strictly increasing hours, one per row"
            )
        stored = _names(f[CHANNEL][...]) if CHANNEL in f else None
        if stored is not None and len(stored) != n_channels:
            raise DataFileError(
                f"{path}: '{CHANNEL}' names {len(stored)} channels, data has {n_channels}"
            )
        declared = list(declared_channels) if declared_channels else None
        if stored is not None and declared is not None and stored != declared:
            raise DataFileError(
                f"{path}: the file's channels {stored} differ from config 'h5_channels' {declared}"
            )
        channels = stored if stored is not None else declared
        if channels is None:
            raise DataFileError(
                f"{path} stores no channel names: state its channel order in the config key "
                f"'h5_channels' ({n_channels} names such as z500, t2m)"
            )
        if len(channels) != n_channels:
            raise DataFileError(
                f"{path} holds {n_channels} channels but config 'h5_channels' names "
                f"{len(channels)}: {channels}"
            )
        lat = np.asarray(f[LATITUDE][...], np.float64) if LATITUDE in f else None
        lon = np.asarray(f[LONGITUDE][...], np.float64) if LONGITUDE in f else None
        return H5YearFile(
            path=path,
            times=times,
            channels=list(channels),
            shape=tuple(dset.shape[2:]),
            latitude=lat,
            longitude=lon,
            self_describing=stored is not None,
            row_offsets=_row_offsets(dset, n_rows),
        )


def _implied_times(path: str, n_rows: int) -> np.ndarray:
    """Time axis of a file without ``time``: its year (file name) from 1 January 00:00 UTC."""
    stem = os.path.splitext(os.path.basename(path))[0]
    if not (stem.isdigit() and len(stem) == 4):
        raise DataFileError(f"{path}: no '{TIME}' dataset and no year in the file name")
    first, hours = year_hours(int(stem))
    if n_rows < 1 or hours % n_rows:
        raise DataFileError(
            f"{path}: no '{TIME}' dataset, and {n_rows} rows do not divide the {hours} hours of "
            f"{stem} into a whole-hour step"
        )
    return first + np.arange(n_rows, dtype=np.int64) * (hours // n_rows)


def channel_indices(info: H5YearFile, names: Sequence[str], grid_shape: tuple, grid=None) -> list:
    """Row positions in ``info``'s channels of the config's channel ``names``, after checking the
    grid: ``grid_shape`` ``(h_size, w_size)`` and, when given, ``grid`` ``(lat, lon)`` (the
    dataset's recorded grid). Errors name the file and both sides."""
    if tuple(info.shape) != tuple(grid_shape):
        raise DataFileError(
            f"{info.path}: grid is {info.shape[0]} x {info.shape[1]}, config h_size x w_size is "
            f"{grid_shape[0]} x {grid_shape[1]}"
        )
    if (
        info.latitude is not None
        and len(info.latitude) > 1
        and not np.all(np.diff(info.latitude) < 0)
    ):
        raise DataFileError(f"{info.path}: latitudes must run north to south")
    if grid is not None:
        for label, mine, theirs in (
            ("latitude", info.latitude, grid[0]),
            ("longitude", info.longitude, grid[1]),
        ):
            if mine is not None and (
                mine.shape != theirs.shape or not np.allclose(mine, theirs, atol=1e-6)
            ):
                raise DataFileError(
                    f"{info.path}: {label} {_span(mine)} differs from the dataset's grid "
                    f"{_span(theirs)}"
                )
    position = {n: i for i, n in enumerate(info.channels)}
    absent = [n for n in names if n not in position]
    if absent:
        raise DataFileError(
            f"{info.path}: channels {absent} of the config are not in the file; the config "
            f"orders {list(names)}, the file holds {info.channels}"
        )
    return [position[n] for n in names]


def _span(values: np.ndarray) -> str:
    return f"{len(values)} values {values[0]:g}..{values[-1]:g}" if len(values) else "(empty)"


def runs(indices: Sequence[int]) -> list[tuple[int, int, int]]:
    """``(first destination, first source, length)`` of each run of consecutive source indices,
    e.g. ``[4, 5, 6, 0]`` -> ``[(0, 4, 3), (3, 0, 1)]``."""
    out: list = []
    for k, i in enumerate(indices):
        if out and out[-1][1] + out[-1][2] == i:
            out[-1] = (out[-1][0], out[-1][1], out[-1][2] + 1)
        else:
            out.append((k, int(i), 1))
    return out


def create_year_file(path: str, times, names: Sequence[str], lat, lon):
    """A new, empty year file at ``path`` (see module doc) for ``times`` (hours) and channel
    ``names`` on the grid ``lat`` ``(H,)`` x ``lon`` ``(W,)``; returns the open ``h5py.File``."""
    import h5py

    times = np.asarray(times, dtype=np.int64)
    shape = (len(times), len(names), len(lat), len(lon))
    f = h5py.File(path, "w")
    f.attrs["format"] = FORMAT
    f.attrs["complete"] = False
    f.attrs["rows_written"] = 0
    f.create_dataset(FIELDS, shape=shape, dtype="<f4", chunks=(1,) + shape[1:])
    f.create_dataset(TIME, data=times).attrs["units"] = TIME_UNITS
    f.create_dataset(CHANNEL, data=np.array(list(names), dtype=h5py.string_dtype()))
    f.create_dataset(LATITUDE, data=np.asarray(lat, np.float64)).attrs["units"] = "degrees_north"
    f.create_dataset(LONGITUDE, data=np.asarray(lon, np.float64)).attrs["units"] = "degrees_east"
    return f


def same_contents_plan(f, times, names: Sequence[str], lat, lon) -> bool:
    """Whether the open year file ``f`` was made for these times, channels and grid."""
    try:
        return (
            f.attrs.get("format") == FORMAT
            and np.array_equal(f[TIME][...], np.asarray(times, np.int64))
            and _names(f[CHANNEL][...]) == list(names)
            and np.array_equal(f[LATITUDE][...], np.asarray(lat, np.float64))
            and np.array_equal(f[LONGITUDE][...], np.asarray(lon, np.float64))
        )
    except KeyError:
        return False
