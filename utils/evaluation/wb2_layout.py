"""The WeatherBench 2 layout of the project's fields: names, units, coordinates, array shapes.

WeatherBench 2 (WB2) stores ERA5 and the forecasts it scores as one variable per physical
quantity, named as in :data:`WB2_VARIABLES` (``geopotential``, ``2m_temperature``, ...), with the
dimensions

* ``time``: datetime64[ns], the initialisation time of a forecast (the valid time of a truth
  store); ``prediction_timedelta``: timedelta64[ns] from 0 (lead 0 is the initial state itself);
* ``level``: pressure in hPa, int64, ascending, only when upper-air variables are stored;
* ``latitude``: degrees, **ascending** (south to north), ``longitude``: degrees in [0, 360),
  ascending.

Upper-air variables are ``(..., level, latitude, longitude)``, surface variables
``(..., latitude, longitude)``. The project's states are ``(C, H, W)`` channel arrays in the order
of a :class:`utils.channels.ChannelLayout` with rows north to south; :class:`WB2Layout` converts
between the two (rows flipped on the way out). A variable the table does not know (a user's new
variable) keeps its project name, with the units the config's ``variable_units`` gives it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from utils.channels import ChannelLayout
from utils.errors import ConfigError


@dataclass(frozen=True)
class WB2Variable:
    """A variable of the table: its WB2 name, CF ``units``, ``long_name`` and ``standard_name``."""

    name: str
    units: str
    long_name: str
    standard_name: str | None = None


# Project name -> WeatherBench 2 variable (ERA5 names of WB2's stores).
WB2_VARIABLES = {
    "z": WB2Variable("geopotential", "m2 s-2", "Geopotential", "geopotential"),
    "t": WB2Variable("temperature", "K", "Temperature", "air_temperature"),
    "q": WB2Variable("specific_humidity", "kg kg-1", "Specific humidity", "specific_humidity"),
    "u": WB2Variable("u_component_of_wind", "m s-1", "U component of wind", "eastward_wind"),
    "v": WB2Variable("v_component_of_wind", "m s-1", "V component of wind", "northward_wind"),
    "r": WB2Variable("relative_humidity", "%", "Relative humidity", "relative_humidity"),
    "t2m": WB2Variable("2m_temperature", "K", "2 metre temperature", "air_temperature"),
    "u10": WB2Variable(
        "10m_u_component_of_wind", "m s-1", "10 metre U wind component", "eastward_wind"
    ),
    "v10": WB2Variable(
        "10m_v_component_of_wind", "m s-1", "10 metre V wind component", "northward_wind"
    ),
    "msl": WB2Variable(
        "mean_sea_level_pressure", "Pa", "Mean sea level pressure", "air_pressure_at_mean_sea_level"
    ),
    "sp": WB2Variable("surface_pressure", "Pa", "Surface pressure", "surface_air_pressure"),
}

COORDINATE_ATTRS = {
    "latitude": {"units": "degrees_north", "long_name": "latitude", "standard_name": "latitude"},
    "longitude": {
        "units": "degrees_east",
        "long_name": "longitude",
        "standard_name": "longitude",
    },
    "level": {
        "units": "hPa",
        "long_name": "pressure level",
        "standard_name": "air_pressure",
        "positive": "down",
    },
    "prediction_timedelta": {"long_name": "lead time", "standard_name": "forecast_period"},
    "dayofyear": {"long_name": "day of year (1 = 1 January)"},
    "hour": {"long_name": "hour of day (UTC)", "units": "hours"},
}


def hours_to_datetime64(hours) -> np.ndarray:
    """Hours since 1970-01-01T00 (int) as datetime64[ns], shape kept."""
    return np.asarray(hours, dtype=np.int64).astype("datetime64[h]").astype("datetime64[ns]")


def hours_to_timedelta64(hours) -> np.ndarray:
    """Lead times in hours (int) as timedelta64[ns], shape kept."""
    return np.asarray(hours, dtype=np.int64).astype("timedelta64[h]").astype("timedelta64[ns]")


def select_channels(layout: ChannelLayout, names: Sequence[str] | None, option: str) -> list[int]:
    """Channel indices (in layout order) of ``names``: channel names (``z500``, ``t2m``) or whole
    upper-air variables (``z``: every level); None selects every channel. ``option`` names the
    setting in the error a name the layout lacks raises."""
    if names is None:
        return list(range(layout.n_channels))
    chosen, unknown = set(), []
    for name in names:
        if name in layout.higher_features:
            chosen.update(layout.channels_of_group(name))
            continue
        try:
            chosen.add(layout.index_of_name(name))
        except KeyError:
            unknown.append(name)
    if unknown:
        raise ConfigError(
            f"{option}: {unknown} not in this configuration; channels: {layout.names}; "
            f"whole variables: {layout.higher_features}"
        )
    return sorted(chosen)


@dataclass(frozen=True)
class StoredVariable:
    """One variable of a store: its store ``name``, project ``variable``, ``attrs`` and, for
    each selected channel, ``(channel position in the selection, level position or None)``."""

    name: str
    variable: str
    upper: bool
    attrs: dict
    channels: tuple[tuple[int, int | None], ...]


def _axis_order(values: np.ndarray, what: str):
    """Indexer that sorts ``values`` ascending (a slice when it is the identity or a reversal)."""
    order = np.argsort(values, kind="stable")
    if np.any(np.diff(values[order]) <= 0):
        raise ValueError(f"{what} are not strictly monotonic: {values.tolist()[:8]} ...")
    n = len(values)
    if np.array_equal(order, np.arange(n)):
        return slice(None)
    if np.array_equal(order, np.arange(n)[::-1]):
        return slice(None, None, -1)
    return order


class WB2Layout:
    """Some channels of a configuration, in the WeatherBench 2 layout.

    Args:
        layout: the configuration's channels (``params.layout``).
        channels: indices of the channels stored, in layout order (None: all).
        lat, lon: the project's grid in degrees, ``(H,)`` (any monotonic order, north to south in
            the project) and ``(W,)``.
        variable_units: units of variables the table does not know (config ``variable_units``).
    """

    def __init__(
        self,
        layout: ChannelLayout,
        channels: Sequence[int] | None,
        lat,
        lon,
        variable_units: Mapping[str, str] | None = None,
    ):
        self.channel_layout = layout
        self.channel_indices = list(range(layout.n_channels) if channels is None else channels)
        self.channel_names = [layout.names[c] for c in self.channel_indices]
        lat = np.asarray(lat, dtype=np.float64).reshape(-1)
        lon = np.mod(np.asarray(lon, dtype=np.float64).reshape(-1), 360.0)
        self._lat_order = _axis_order(lat, "latitudes")
        self._lon_order = _axis_order(lon, "longitudes")
        self.lat, self.lon = lat[self._lat_order], lon[self._lon_order]
        units = dict(variable_units or {})
        known = sorted(set(units) & set(WB2_VARIABLES))
        if known:
            raise ConfigError(
                f"variable_units: {known} have fixed units in the WeatherBench 2 table; list "
                "only variables it does not know"
            )
        picked = [layout.channels[c] for c in self.channel_indices]
        levels = sorted({c.level for c in picked if c.level is not None})
        self.levels = np.asarray(levels, dtype=np.int64) if levels else None
        self.variables = self._variables(picked, units)

    def _variables(self, picked, units: Mapping[str, str]) -> list[StoredVariable]:
        """The stored variables in channel order, each with its channels' positions."""
        by_variable: dict[str, list] = {}
        for position, channel in enumerate(picked):
            level = (
                None if channel.level is None else int(np.searchsorted(self.levels, channel.level))
            )
            by_variable.setdefault(channel.variable, []).append((position, level))
        out = []
        for variable, channels in by_variable.items():
            entry = WB2_VARIABLES.get(variable)
            if entry is None:
                attrs = {"long_name": variable}
                if variable in units:
                    attrs["units"] = str(units[variable])
                name = variable
            else:
                attrs = {"units": entry.units, "long_name": entry.long_name}
                if entry.standard_name:
                    attrs["standard_name"] = entry.standard_name
                name = entry.name
            upper = channels[0][1] is not None
            out.append(StoredVariable(name, variable, upper, attrs, tuple(channels)))
        return out

    @property
    def grid_shape(self) -> tuple[int, int]:
        return len(self.lat), len(self.lon)

    @property
    def n_stored_channels(self) -> int:
        """Fields per time and lead the store holds: every level of each upper-air variable
        (NaN where a level of it was not selected) and one per surface variable."""
        n_levels = 0 if self.levels is None else len(self.levels)
        return sum(n_levels if v.upper else 1 for v in self.variables)

    def dims(self, variable: StoredVariable) -> tuple[str, ...]:
        """The grid dimensions of a variable, after the leading ones."""
        grid = ("latitude", "longitude")
        return ("level", *grid) if variable.upper else grid

    def grid_coordinates(self) -> dict:
        """``{name: (dims, values, attrs)}`` of ``level`` (when upper-air variables are stored),
        ``latitude`` and ``longitude``."""
        coords = {
            "latitude": (("latitude",), self.lat, COORDINATE_ATTRS["latitude"]),
            "longitude": (("longitude",), self.lon, COORDINATE_ATTRS["longitude"]),
        }
        if self.levels is not None:
            coords["level"] = (("level",), self.levels, COORDINATE_ATTRS["level"])
        return coords

    def to_variables(self, fields) -> dict[str, np.ndarray]:
        """Fields ``(..., c, H, W)`` of the selected channels (selection order, rows as the
        project stores them) as ``{store name: float32 array}``: ``(..., level, lat, lon)`` for
        an upper-air variable (NaN at levels not selected), ``(..., lat, lon)`` for a surface
        one, latitudes ascending."""
        fields = np.asarray(fields)
        if fields.shape[-3:] != (len(self.channel_indices), *self.grid_shape):
            raise ValueError(
                f"fields {fields.shape} do not match {len(self.channel_indices)} channels on a "
                f"{self.grid_shape} grid"
            )
        grid = fields[..., self._lat_order, :][..., self._lon_order]
        lead = fields.shape[:-3]
        out = {}
        for variable in self.variables:
            if variable.upper:
                array = np.full((*lead, len(self.levels), *self.grid_shape), np.nan, np.float32)
                for position, level in variable.channels:
                    array[..., level, :, :] = grid[..., position, :, :]
            else:
                array = grid[..., variable.channels[0][0], :, :].astype(np.float32)
            out[variable.name] = array
        return out
