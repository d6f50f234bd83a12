"""Bring one opened ERA5 dataset into the converter's canonical form, lazily.

Whatever the input's names and dimension order, every recognised variable becomes a lazy
``xarray.DataArray`` named by its project name (``z``, ``t2m``, ...) with dimensions
``(time, level, lat, lon)`` (upper-air, ``level`` in hPa) or ``(time, lat, lon)`` (surface),
latitudes north to south and longitudes ascending from 0° E. A scalar time coordinate becomes a
time dimension of length 1; a size-1 extra dimension is dropped; an ensemble dimension needs a
member (``member``); any other extra dimension is an error naming it. The time coordinate is found
by name (or named by ``time_coord``, along any dimension); it holds dates, or numbers with units
such as ``hours since 1940-01-01`` on the coordinate or given as ``time_units``. Nothing is read
here but coordinates.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

from utils.channels import ERA5_LEVELS
from utils.conversion.variable_names import (
    LAT_NAMES,
    LEVEL_NAMES,
    LON_NAMES,
    MEMBER_NAMES,
    TIME_NAMES,
    ConversionError,
    find_coordinate,
    is_upper,
    recognise_variable,
)

TIME_UNITS = {"second": 1 / 3600, "minute": 1 / 60, "hour": 1.0, "day": 24.0}


@dataclass(frozen=True)
class InputOptions:
    """How inputs are read, as the command line asks.

    Attributes:
        member: the ensemble member to keep (value of the ensemble coordinate).
        level: pressure level (hPa) of upper-air variables that have neither a level dimension
            nor a level coordinate.
        time_coord: the name of the time coordinate (None: found by name).
        time_units: units of a numeric time coordinate without its own ``units`` attribute,
            ``<seconds|minutes|hours|days> since <date>``.
    """

    member: int | None = None
    level: int | None = None
    time_coord: str | None = None
    time_units: str | None = None


def add_input_reading_arguments(parser) -> None:
    """The command-line options of :class:`InputOptions` (``--member``, ``--level``,
    ``--time_coord``, ``--time_units``), shared by the tools that read ERA5 inputs."""
    parser.add_argument("--member", type=int, default=None, help="ensemble member to read")
    parser.add_argument(
        "--level",
        type=int,
        default=None,
        help="pressure level of upper-air inputs that have no level coordinate",
    )
    parser.add_argument(
        "--time_coord",
        default=None,
        help="name of the time coordinate, when not time / valid_time (e.g. time_index)",
    )
    parser.add_argument(
        "--time_units",
        default=None,
        help="units of a numeric time coordinate that carries none, e.g. 'hours since 1940-01-01'",
    )


def input_options(args) -> InputOptions:
    """:class:`InputOptions` of the arguments :func:`add_input_reading_arguments` added."""
    return InputOptions(args.member, args.level, args.time_coord, args.time_units)


@dataclass
class NormalisedInput:
    """One input in canonical form.

    Attributes:
        where: the input's path or URL (for messages).
        variables: project name -> lazy DataArray ``(time, [level,] lat, lon)``.
        times: hours since 1970-01-01 of the time dimension, shape ``(T,)``.
        lat: latitudes north to south ``(H,)``; lon: longitudes ascending in [0, 360) ``(W,)``.
        ignored: data variables with a horizontal grid that are not recognised.
        names: project name -> the variable's name in the input.
    """

    where: str
    variables: dict
    times: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    ignored: list = field(default_factory=list)
    names: dict = field(default_factory=dict)

    def levels(self, var: str) -> list[int]:
        """Pressure levels (hPa) of an upper-air variable, in the input's order."""
        return [int(p) for p in self.variables[var]["level"].values]

    def holdings(self) -> str:
        """What the input holds, for error messages: ``z@[500, 850] (geopotential), t2m, ...``."""
        parts = []
        for var, da in self.variables.items():
            levels = f"@{self.levels(var)}" if "level" in da.dims else ""
            alias = f" ({self.names[var]})" if self.names.get(var, var) != var else ""
            parts.append(f"{var}{levels}{alias}")
        parts += [f"{name} (not recognised)" for name in self.ignored[:10]]
        if len(self.ignored) > 10:
            parts.append(f"{len(self.ignored) - 10} more not recognised")
        return ", ".join(parts) or "no data variables"


def _indexer(order: np.ndarray):
    """A permutation as the cheapest equivalent indexer: a slice when it is the identity or a
    reversal (keeps reads contiguous), else the index array."""
    n = len(order)
    if np.array_equal(order, np.arange(n)):
        return slice(None)
    if np.array_equal(order, np.arange(n)[::-1]):
        return slice(None, None, -1)
    return order


def _hours(coord, name: str, where: str, units: str | None) -> np.ndarray:
    """Hours since 1970-01-01 of the time coordinate ``coord`` called ``name``: its dates, or its
    numbers in ``units`` (default: the coordinate's own ``units`` attribute)."""
    v = np.asarray(coord.values).reshape(-1)
    if np.issubdtype(v.dtype, np.datetime64):
        if units is not None:
            raise ConversionError(
                f"{where}: --time_units {units!r} given, but {name!r} already holds dates"
            )
        return v.astype("datetime64[m]").astype(np.int64) / 60.0
    if not np.issubdtype(v.dtype, np.number):
        raise ConversionError(f"{where}: the time coordinate {name!r} is not a date ({v.dtype})")
    units = units or coord.attrs.get("units")
    if not units:
        raise ConversionError(
            f"{where}: the time coordinate {name!r} holds numbers ({v.dtype}) without units; "
            "pass --time_units, e.g. 'hours since 1940-01-01'"
        )
    per_unit, origin = _time_units(str(units), where)
    return origin + v.astype(np.float64) * per_unit


def _time_units(units: str, where: str) -> tuple[float, float]:
    """``(hours per unit, origin in hours since 1970)`` of CF units such as
    ``hours since 1940-01-01`` or ``days since 1900-01-01 00:00:00``."""
    import pandas as pd

    match = re.fullmatch(r"\s*(second|minute|hour|day)s?\s+since\s+(.+?)\s*", units, re.I)
    try:
        if match is None:
            raise ValueError
        origin = pd.Timestamp(match.group(2))
    except ValueError:
        raise ConversionError(
            f"{where}: time units {units!r}: expected '<seconds|minutes|hours|days> since <date>'"
        ) from None
    if origin.tzinfo is not None:
        origin = origin.tz_convert("UTC").tz_localize(None)
    origin_hours = (origin - pd.Timestamp("1970-01-01")) / pd.Timedelta(hours=1)
    return TIME_UNITS[match.group(1).lower()], float(origin_hours)


def _levels_hpa(coord) -> np.ndarray:
    values = np.asarray(coord.values, dtype=np.float64).reshape(-1)
    units = str(coord.attrs.get("units", "")).strip().lower()
    if units in ("pa", "pascal", "pascals") or (
        units not in ("hpa", "mbar", "millibars") and values.max() > 2000
    ):
        values = values / 100.0
    return np.round(values).astype(np.int64)


def _scalar_level(da, where: str, override: int | None) -> int | None:
    """Pressure level of an upper-air variable without a level dimension (WeatherBench files
    with one level per file), from ``override``, a scalar coordinate, attributes or the name."""
    if override is not None:
        return int(override)
    for name in da.coords:
        if str(name).lower() in [n.lower() for n in LEVEL_NAMES] and da.coords[name].size == 1:
            return int(_levels_hpa(da.coords[name])[0])
    for key in ("level", "pressure_level", "GRIB_level"):
        if key in da.attrs:
            return int(float(da.attrs[key]))
    for match in re.finditer(r"_(\d{1,4})(?:hpa)?(?=[_.])", os.path.basename(where).lower()):
        if int(match.group(1)) in ERA5_LEVELS:  # skips years such as _2020_
            return int(match.group(1))
    return None


def _select_member(da, member_dim: str, member: int | None, where: str):
    size = da.sizes[member_dim]
    values = da[member_dim].values if member_dim in da.coords else np.arange(size)
    if member is None:
        if size == 1:
            return da.isel({member_dim: 0}, drop=True)
        raise ConversionError(
            f"{where}: variable {da.name!r} has an ensemble dimension {member_dim!r} of size "
            f"{size} (members {list(values)[:10]}); pick one with --member N"
        )
    hits = np.flatnonzero(values == member)
    if not hits.size:
        raise ConversionError(
            f"{where}: --member {member} is not in dimension {member_dim!r} "
            f"(members {list(values)[:10]})"
        )
    return da.isel({member_dim: int(hits[0])}, drop=True)


@dataclass(frozen=True)
class _Axes:
    """The coordinates of one dataset and how to bring its grid into canonical order.

    Attributes:
        lat, lon: names of the latitude and longitude coordinates.
        time: the time dimension (the name of a scalar time coordinate, which becomes one).
        level: name of the pressure-level dimension (None: none); member: name of the ensemble
            dimension (None: none).
        lat_order, lon_order: indexers putting latitudes north to south and longitudes ascending
            from 0° E (:func:`_indexer`).
        lat_values ``(H,)``, lon_values ``(W,)``: the latitudes and longitudes in that order.
        times: hours since 1970-01-01 of the time coordinate, shape ``(T,)``.
    """

    lat: str
    lon: str
    time: str
    level: str | None
    member: str | None
    lat_order: object
    lon_order: object
    lat_values: np.ndarray
    lon_values: np.ndarray
    times: np.ndarray

    def has_level(self, da) -> bool:
        """Whether ``da`` has the pressure-level dimension."""
        return self.level is not None and self.level in da.dims


def _axes(ds, where: str, options: InputOptions) -> _Axes:
    """The coordinates of ``ds``; an error naming the missing ones when latitude, longitude or
    time cannot be found."""
    every = {k: ds[k] for k in ds.variables}
    lat_name = find_coordinate(every, LAT_NAMES, "latitude", ("degrees_north", "degree_north"))
    lon_name = find_coordinate(every, LON_NAMES, "longitude", ("degrees_east", "degree_east"))
    time_name = options.time_coord or find_coordinate(every, TIME_NAMES, "time")
    if options.time_coord is not None and options.time_coord not in every:
        raise ConversionError(
            f"{where}: --time_coord {options.time_coord!r} is not a coordinate or variable "
            f"(has dimensions {dict(ds.sizes)} and coordinates {sorted(map(str, ds.coords))})"
        )
    if lat_name is None or lon_name is None or time_name is None:
        missing = [
            n
            for n, v in (("latitude", lat_name), ("longitude", lon_name), ("time", time_name))
            if v is None
        ]
        hint = "; name the time coordinate with --time_coord" if time_name is None else ""
        raise ConversionError(
            f"{where}: no {' / '.join(missing)} coordinate (has dimensions {dict(ds.sizes)} and "
            f"coordinates {sorted(map(str, ds.coords))}){hint}"
        )
    level_name = find_coordinate(
        {d: ds[d] for d in ds.dims if d in ds.variables}, LEVEL_NAMES, "air_pressure"
    )
    member_names = {str(n).lower(): n for n in ds.dims}
    member_dim = next((member_names[n] for n in MEMBER_NAMES if n in member_names), None)

    lat = np.asarray(ds[lat_name].values, dtype=np.float64)
    lon = np.mod(np.asarray(ds[lon_name].values, dtype=np.float64), 360.0)
    lat_order = _indexer(np.argsort(-lat, kind="stable"))
    lon_order = _indexer(np.argsort(lon, kind="stable"))
    time = ds[time_name]
    if time.ndim > 1:
        raise ConversionError(f"{where}: the time coordinate {time_name!r} has dims {time.dims}")
    times = _hours(time, time_name, where, options.time_units)
    return _Axes(
        lat_name,
        lon_name,
        time.dims[0] if time.ndim else time_name,
        level_name,
        member_dim,
        lat_order,
        lon_order,
        lat[lat_order],
        lon[lon_order],
        times,
    )


def normalise(ds, where: str, options: InputOptions = InputOptions()) -> NormalisedInput:
    """Canonical, still lazy, form of dataset ``ds`` opened from ``where`` (see module doc),
    read as ``options`` says (:class:`InputOptions`)."""
    axes = _axes(ds, where, options)
    member, level = options.member, options.level
    variables, names, ignored = {}, {}, []
    for name, da in ds.data_vars.items():
        if axes.lat not in da.dims or axes.lon not in da.dims:
            continue
        scalar = None if axes.has_level(da) else _scalar_level(da, where, level)
        project = recognise_variable(name, da.attrs, axes.has_level(da) or scalar is not None)
        if project is None:
            ignored.append(str(name))
            continue
        if project in variables:
            raise ConversionError(
                f"{where}: variables {names[project]!r} and {name!r} are both {project!r}"
            )
        variables[project] = _canonical(ds, da, project, scalar, axes, member, where)
        names[project] = str(name)
    return NormalisedInput(
        where, variables, axes.times, axes.lat_values, axes.lon_values, ignored, names
    )


def _canonical(ds, da, project: str, scalar: int | None, axes: _Axes, member, where: str):
    """Data variable ``da`` of ``ds``, recognised as ``project``, as a lazy DataArray
    ``(time, [level,] lat, lon)`` in canonical order; ``scalar``: its pressure level when it has
    no level dimension."""
    has_level_dim = axes.has_level(da)
    if axes.member is not None and axes.member in da.dims:
        da = _select_member(da, axes.member, member, where)
    if axes.time not in da.dims:
        da = da.expand_dims(axes.time)
    if is_upper(project):
        da = _with_levels(ds, da, has_level_dim, scalar, axes, where)
    elif has_level_dim:
        raise ConversionError(f"{where}: surface variable {da.name!r} has a level dimension")
    da = da.rename({axes.time: "time", axes.lat: "lat", axes.lon: "lon"})
    core = ("time", "level", "lat", "lon") if is_upper(project) else ("time", "lat", "lon")
    da = _drop_size_one_extras(da, core, where)
    da = da.drop_vars([c for c in da.coords if c not in core])
    da = da.transpose(*core).isel(lat=axes.lat_order, lon=axes.lon_order)
    return da.assign_coords(lat=axes.lat_values, lon=axes.lon_values)


def _with_levels(ds, da, has_level_dim: bool, scalar: int | None, axes: _Axes, where: str):
    """Upper-air ``da`` with a ``level`` dimension in hPa (a size-1 one from ``scalar`` when it
    has none); an error when its level is unknown or not an ERA5 pressure level."""
    if not has_level_dim:
        if scalar is None:
            raise ConversionError(
                f"{where}: cannot tell the pressure level of {da.name!r} (no level "
                "dimension, coordinate or '<name>_<level>hPa' file name); pass --level"
            )
        da = da.expand_dims({"level": [scalar]})
    else:
        da = da.rename({axes.level: "level"}).assign_coords(level=_levels_hpa(ds[axes.level]))
    bad = [int(p) for p in da["level"].values if int(p) not in ERA5_LEVELS]
    if bad:
        raise ConversionError(
            f"{where}: {da.name!r} has levels {bad} hPa that are not ERA5 pressure levels"
        )
    return da


def _drop_size_one_extras(da, core: tuple, where: str):
    """``da`` without its dimensions other than ``core``, each of which must have size 1."""
    for extra in [d for d in da.dims if d not in core]:
        if da.sizes[extra] != 1:
            raise ConversionError(
                f"{where}: variable {da.name!r} has an extra dimension {extra!r} of size "
                f"{da.sizes[extra]} (dimensions {dict(da.sizes)}); the converter takes "
                f"{list(core)} and an ensemble dimension with --member"
            )
        da = da.isel({extra: 0}, drop=True)
    return da
