"""Forecasts read from files in the WeatherBench 2 layout, scored beside the model (``--compare``).

A forecast file is a Zarr directory or a netCDF file (``.nc``) holding

- the dimensions ``time`` (initialisation time, datetime64), ``prediction_timedelta``
  (timedelta64; 0 is the initial state), ``level`` (hPa; for upper-air variables), ``latitude``
  (ascending, as WeatherBench 2 stores it, or descending) and ``longitude`` (degrees east);
- variables named as in WeatherBench 2 (``geopotential``, ``2m_temperature``, ...) or as in the
  project (``z``, ``t2m``, ...), recognised by
  :func:`utils.conversion.variable_names.project_name`, in ERA5's units (the project's).

:class:`ForecastFile` is a forecaster for :func:`utils.evaluation.rollout.evaluate_rollout`:
:meth:`ForecastFile.fields` gives the ``(B, C, H, W)`` physical-unit forecast of a batch of
initial times at one lead, in the configuration's channel order with rows north to south, and
which ``(B, C)`` entries the file has. A grid other than the dataset's is an error naming both;
starts, leads and channels the file lacks are left out (their scores are NaN) and listed in
:attr:`ForecastFile.notes`. The file is opened lazily and read one initial time at a time (all
its leads and channels, ``L x C x H x W``); only the current batch's initial times are kept.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np

from utils.conversion.variable_names import LAT_NAMES, LON_NAMES, project_name
from utils.errors import ConfigError, DataError
from utils.times import format_hours

TIME_DIM = "time"
LEAD_DIM = "prediction_timedelta"
LEVEL_NAMES = ("level", "pressure_level")
RESERVED_NAMES = ("model", "persistence", "climatology", "paper")
GRID_TOLERANCE_DEG = 1e-3
LISTED = 10  # starts listed by name in a note; the rest are counted

__all__ = ["ForecastFile", "parse_compare", "RESERVED_NAMES"]


def parse_compare(items: Sequence[str]) -> list[tuple[str, str]]:
    """``[(name, path)]`` of ``--compare NAME=PATH`` values; a name is a letter followed by
    letters, digits, ``_``, ``.`` or ``-`` (it names result files), unique and none of
    :data:`RESERVED_NAMES`."""
    pairs: list[tuple[str, str]] = []
    for item in items:
        name, sep, path = str(item).partition("=")
        if not sep or not path:
            raise ConfigError(f"--compare {item!r}: expected NAME=PATH")
        if not re.fullmatch(r"[A-Za-z][\w.-]*", name):
            raise ConfigError(
                f"--compare {item!r}: the name must be a letter followed by letters, digits, "
                "'_', '.' or '-'"
            )
        if name in RESERVED_NAMES or name in [n for n, _ in pairs]:
            taken = "used twice" if name not in RESERVED_NAMES else "reserved"
            raise ConfigError(f"--compare {item!r}: the name {name!r} is {taken}")
        pairs.append((name, path))
    return pairs


def open_forecast_dataset(path: str):
    """The forecast file at ``path`` opened lazily with xarray (Zarr directory or netCDF)."""
    try:
        import xarray as xr
    except ImportError:
        raise ConfigError(
            "scoring forecast files (--compare) needs xarray with zarr or netCDF4 "
            "(pip install -r requirements-optional.txt)"
        ) from None
    if not os.path.exists(path):
        raise DataError(f"forecast file {path} does not exist")
    try:
        if not os.path.isdir(path):
            return xr.open_dataset(path, chunks=None, decode_timedelta=True)
        try:  # consolidated metadata when the store has it (one read), else every array's
            return xr.open_zarr(path, chunks=None, decode_timedelta=True, consolidated=True)
        except (KeyError, ValueError):
            return xr.open_zarr(path, chunks=None, decode_timedelta=True, consolidated=False)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"cannot open forecast file {path}: {err}") from None


def _dim(ds, names: Sequence[str], path: str, what: str) -> str | None:
    """The name among ``names`` that ``ds`` has as a dimension (None when it has none)."""
    found = [n for n in ds.dims if str(n).lower() in names]
    if len(found) > 1:
        raise DataError(f"forecast file {path} has several {what} dimensions: {found}")
    return found[0] if found else None


def _hours(values, unit: str, path: str, what: str) -> np.ndarray:
    """datetime64 (since 1970) or timedelta64 ``values`` as int64 hours; other than whole hours
    is an error naming the file."""
    values = np.asarray(values)
    if values.dtype.kind not in "mM":
        raise DataError(f"forecast file {path}: {what} is not a {unit} coordinate ({values.dtype})")
    seconds = values.astype(f"{unit}[s]").astype(np.int64)
    if np.any(seconds % 3600):
        raise DataError(f"forecast file {path}: {what} values are not whole hours")
    return seconds // 3600


def _describe_grid(lat: np.ndarray, lon: np.ndarray) -> str:
    return (
        f"{len(lat)} x {len(lon)} (latitude {lat[0]:g} .. {lat[-1]:g}, "
        f"longitude {lon[0]:g} .. {lon[-1]:g})"
    )


def grid_order(file_lat, file_lon, lat, lon, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays putting the file's latitudes north to south and its longitudes eastwards from
    0 (``lon % 360`` ascending); a grid that then differs from the dataset's ``lat``, ``lon``
    (degrees) is an error naming both grids."""
    file_lat, file_lon = np.asarray(file_lat, float), np.asarray(file_lon, float) % 360.0
    lat_order, lon_order = np.argsort(-file_lat, kind="stable"), np.argsort(file_lon, kind="stable")
    got_lat, got_lon = file_lat[lat_order], file_lon[lon_order]
    want_lat, want_lon = np.asarray(lat, float), np.asarray(lon, float) % 360.0
    same = got_lat.shape == want_lat.shape and got_lon.shape == want_lon.shape
    if same:
        gap = max(np.abs(got_lat - want_lat).max(), np.abs(got_lon - want_lon).max())
        same = gap <= GRID_TOLERANCE_DEG
    if not same:
        raise DataError(
            f"{where} is on the grid {_describe_grid(got_lat, got_lon)}, the dataset on "
            f"{_describe_grid(want_lat, want_lon)}: regrid the forecast onto the dataset's grid"
        )
    return lat_order, lon_order


class ForecastFile:
    """A forecast file as a forecaster of the evaluation (see the module docstring).

    Args:
        name: the forecaster's name in the results (``--compare NAME=PATH``).
        path: the Zarr directory or netCDF file.
        layout: the configuration's :class:`utils.channels.ChannelLayout`.
        lat, lon: the dataset's grid in degrees, ``(H,)`` north to south and ``(W,)``.
        init_times: the evaluation's initial times, hours since 1970 (for the notes).
        lead_hours: the evaluation's leads in hours, ``(T + 1,)`` from 0.
    """

    def __init__(self, name: str, path: str, layout, lat, lon, init_times, lead_hours):
        self.name, self.path = name, path
        self._ds = open_forecast_dataset(path)
        where = f"forecast file {path} ({name})"
        self._dims = self._find_dims(where)
        self._lat_order, self._lon_order = grid_order(
            self._ds[self._dims["lat"]].values, self._ds[self._dims["lon"]].values, lat, lon, where
        )
        times = _hours(self._ds[TIME_DIM].values, "datetime64", path, TIME_DIM)
        leads = _hours(self._ds[LEAD_DIM].values, "timedelta64", path, LEAD_DIM)
        self._time_index = {int(t): i for i, t in enumerate(times)}
        wanted = [int(h) for h in lead_hours]
        file_leads = {int(h): j for j, h in enumerate(leads)}
        self._leads = [h for h in wanted if h in file_leads]  # the block's lead order
        self._lead_positions = [file_leads[h] for h in self._leads]
        self._shape = (layout.n_channels, len(lat), len(lon))
        self._variables = self._channel_sources(layout, where)
        self._dtype = np.result_type(np.float32, *[self._ds[v].dtype for v in self._variables])
        self._has_channel = np.zeros(layout.n_channels, dtype=bool)
        for channels, _ in self._variables.values():
            self._has_channel[channels] = True
        self.notes = self._notes(layout, [int(t) for t in init_times], wanted, where)
        self._batch: tuple[int, ...] = ()
        self._blocks: dict[int, np.ndarray] = {}

    # ------------------------------------------------------------------------------- set-up
    def _find_dims(self, where: str) -> dict[str, str | None]:
        """The file's dimension names: time, lead, level (None without), lat, lon."""
        dims = {
            "time": _dim(self._ds, (TIME_DIM,), self.path, "time"),
            "lead": _dim(self._ds, (LEAD_DIM,), self.path, "lead"),
            "level": _dim(self._ds, LEVEL_NAMES, self.path, "level"),
            "lat": _dim(self._ds, LAT_NAMES, self.path, "latitude"),
            "lon": _dim(self._ds, LON_NAMES, self.path, "longitude"),
        }
        missing = [k for k, v in dims.items() if v is None and k != "level"]
        if missing:
            raise DataError(
                f"{where} lacks the dimension(s) {missing} of the WeatherBench 2 layout "
                f"({TIME_DIM}, {LEAD_DIM}, level, latitude, longitude); it has {list(self._ds.dims)}"
            )
        return dims

    def _channel_sources(self, layout, where: str) -> dict[str, tuple[list[int], list | None]]:
        """``{file variable: (channel indices, level indices in the file or None)}`` for the
        configuration's channels that the file holds (the first file variable of a project
        variable counts)."""
        level_dim = self._dims["level"]
        levels = {}
        if level_dim is not None:
            levels = {int(v): i for i, v in enumerate(np.asarray(self._ds[level_dim].values))}
        sources: dict[str, tuple[list[int], list | None]] = {}
        mapped: set[str] = set()
        for var in map(str, self._ds.data_vars):
            project = project_name(var)
            wanted = [(c, ch) for c, ch in enumerate(layout.channels) if ch.variable == project]
            if not wanted or project in mapped:
                continue
            upper = wanted[0][1].level is not None
            self._check_dims(var, upper, where)
            level_index = None
            if upper:
                wanted = [(c, ch) for c, ch in wanted if ch.level in levels]
                level_index = [levels[ch.level] for _, ch in wanted]
            if wanted:
                sources[var] = ([c for c, _ in wanted], level_index)
                mapped.add(project)
        return sources

    def _check_dims(self, var: str, upper: bool, where: str) -> None:
        """A variable must have exactly the layout's dimensions (``level`` when ``upper``)."""
        d = self._dims
        needed = [d["time"], d["lead"]] + ([d["level"]] if upper else []) + [d["lat"], d["lon"]]
        have = [str(n) for n in self._ds[var].dims]
        if None in needed or sorted(have) != sorted(map(str, needed)):
            wanted = [str(n) if n is not None else "level" for n in needed]
            raise DataError(f"{where}: variable {var} has the dimensions {have}, expected {wanted}")

    def _notes(self, layout, init_times: list[int], leads: list[int], where: str) -> list[str]:
        """What the file lacks of the evaluation (starts, leads, channels), one note each; an
        error when it shares no start, lead or channel with it."""
        no_starts = [t for t in init_times if t not in self._time_index]
        no_leads = [h for h in leads if h not in self._leads]
        no_channels = [n for n, ok in zip(layout.names, self._has_channel, strict=True) if not ok]
        if len(no_starts) == len(init_times) or not self._leads or self._has_channel.sum() == 0:
            raise DataError(
                f"{where} shares no initial time, lead or channel with the evaluation "
                f"(it has {len(self._time_index)} initial times, leads "
                f"{sorted(self._leads) or 'none in common'} h, "
                f"{int(self._has_channel.sum())} of the {layout.n_channels} channels)"
            )
        notes = []
        if no_starts:
            listed = ", ".join(format_hours(t) for t in no_starts[:LISTED])
            more = f" and {len(no_starts) - LISTED} more" if len(no_starts) > LISTED else ""
            notes.append(
                f"{self.name}: {self.path} lacks {len(no_starts)} of the {len(init_times)} "
                f"initial times ({listed}{more}): scored on the other "
                f"{len(init_times) - len(no_starts)}"
            )
        if no_leads:
            notes.append(
                f"{self.name}: {self.path} lacks the leads {', '.join(map(str, no_leads))} h: "
                "no scores there (NaN)"
            )
        if no_channels:
            notes.append(
                f"{self.name}: {self.path} lacks {', '.join(no_channels)}: no scores for them (NaN)"
            )
        return notes

    def close(self) -> None:
        """Close the file (the forecaster reads nothing more)."""
        self._ds.close()
        self._batch, self._blocks = (), {}

    # ------------------------------------------------------------------------------- reading
    def fields(self, times: Sequence[int], lead_hours: int):
        """``(values (B, C, H, W), available (B, C) bool)`` at ``lead_hours`` of the initial
        times ``times`` (hours since 1970), physical units, rows north to south; NaN where
        ``available`` is false. None when the file lacks the lead."""
        if int(lead_hours) not in self._leads:
            return None
        self._load(times)
        k = self._leads.index(int(lead_hours))
        values = np.full((len(times),) + self._shape, np.nan, dtype=self._dtype)
        available = np.zeros((len(times), self._shape[0]), dtype=bool)
        for b, t in enumerate(times):
            block = self._blocks.get(int(t))
            if block is not None:
                values[b] = block[k]
                available[b] = self._has_channel
        return values, available

    def _load(self, times: Sequence[int]) -> None:
        """Read the initial times of a new batch, one at a time (the previous batch's are
        dropped first)."""
        batch = tuple(int(t) for t in times)
        if batch == self._batch:
            return
        self._batch, self._blocks = batch, {}
        for t in batch:
            if t in self._time_index:
                self._blocks[t] = self._read(self._time_index[t])

    def _read(self, i: int) -> np.ndarray:
        """All leads and channels of the file's ``i``-th initial time, ``(L, C, H, W)``."""
        d = self._dims
        block = np.full((len(self._leads),) + self._shape, np.nan, dtype=self._dtype)
        for var, (channels, level_index) in self._variables.items():
            field = self._ds[var].isel({d["time"]: i, d["lead"]: self._lead_positions})
            order = [d["lead"], d["lat"], d["lon"]]
            if level_index is not None:
                field = field.isel({d["level"]: level_index})
                order.insert(1, d["level"])
            values = np.asarray(field.transpose(*order).values)
            values = values[..., self._lat_order, :][..., self._lon_order]
            block[:, channels] = values if level_index is not None else values[:, None]
        return block
