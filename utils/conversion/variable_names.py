"""How ERA5 inputs name things, and the converter's error class.

Variables are recognised by their name in the file (short ERA5 names such as ``z`` / ``t2m``, the
long names of the Copernicus store, ARCO-ERA5 and WeatherBench 2 such as ``geopotential`` /
``2m_temperature``, or CMIP-style names such as ``ta`` / ``tas``), then by their ``long_name``
and finally by their CF ``standard_name`` (``air_temperature``, ``eastward_wind``, ...; a CF name
shared by an upper-air and a surface variable, such as ``air_temperature``, means the upper-air
one when the variable has pressure levels and the surface one otherwise).

Dimensions and coordinates are recognised by name or by their CF ``standard_name`` / ``units``.
"""

from __future__ import annotations

from collections.abc import Mapping

from utils.errors import DataError


class ConversionError(DataError, ValueError):
    """An input the converter cannot use, or a request it cannot meet; the message names the input
    and what it holds. A project error: entry points print it as one line and exit 2."""


# Project name -> names used for it in files (compared case-insensitively).
UPPER_NAMES = {
    "z": ("z", "geopotential"),
    "q": ("q", "specific_humidity", "hus"),
    "u": ("u", "u_component_of_wind", "ua"),
    "v": ("v", "v_component_of_wind", "va"),
    "t": ("t", "temperature", "ta"),
    "r": ("r", "relative_humidity", "hur"),
    "w": ("w", "vertical_velocity", "wap"),
    "vo": ("vo", "vorticity"),
    "d": ("d", "divergence"),
}
SURFACE_NAMES = {
    "t2m": ("t2m", "2t", "2m_temperature", "tas"),
    "u10": ("u10", "10u", "10m_u_component_of_wind", "uas"),
    "v10": ("v10", "10v", "10m_v_component_of_wind", "vas"),
    "msl": ("msl", "mean_sea_level_pressure", "psl"),
    "sp": ("sp", "surface_pressure", "ps"),
    "tp": ("tp", "total_precipitation"),
    "tcwv": ("tcwv", "total_column_water_vapour", "prw"),
}
# CF standard names: (upper-air project name or None, surface project name or None).
STANDARD_NAMES = {
    "geopotential": ("z", None),
    "specific_humidity": ("q", None),
    "relative_humidity": ("r", None),
    "air_temperature": ("t", "t2m"),
    "eastward_wind": ("u", "u10"),
    "northward_wind": ("v", "v10"),
    "lagrangian_tendency_of_air_pressure": ("w", None),
    "atmosphere_relative_vorticity": ("vo", None),
    "divergence_of_wind": ("d", None),
    "air_pressure_at_mean_sea_level": (None, "msl"),
    "surface_air_pressure": (None, "sp"),
    "precipitation_amount": (None, "tp"),
    "atmosphere_mass_content_of_water_vapor": (None, "tcwv"),
}
PROJECT_VARIABLES = tuple(UPPER_NAMES) + tuple(SURFACE_NAMES)

TIME_NAMES = ("time", "valid_time", "date")
LEVEL_NAMES = ("pressure_level", "level", "isobaricInhPa", "plev", "lev", "air_pressure")
LAT_NAMES = ("latitude", "lat")
LON_NAMES = ("longitude", "lon")
MEMBER_NAMES = ("number", "member", "realization", "ensemble", "ensemble_member")


def is_upper(project: str) -> bool:
    """Whether a project variable name is an upper-air (pressure-level) variable."""
    return project in UPPER_NAMES


def project_name(name: str) -> str | None:
    """Project name of a variable name such as ``t``, ``temperature`` or ``ta`` (None if unknown)."""
    key = str(name).lower()
    for table in (UPPER_NAMES, SURFACE_NAMES):
        for project, names in table.items():
            if key in names:
                return project
    return None


def recognise_variable(name: str, attrs: Mapping, has_levels: bool) -> str | None:
    """Project name of a data variable called ``name`` with attributes ``attrs``, or None.

    ``has_levels``: the variable has a pressure-level dimension or a scalar pressure-level
    coordinate (decides between e.g. ``t`` and ``t2m`` for ``standard_name: air_temperature``).
    """
    found = project_name(name)
    if found is None and attrs.get("long_name"):
        found = project_name(str(attrs["long_name"]).strip().replace(" ", "_"))
    if found is None:
        upper, surface = STANDARD_NAMES.get(
            str(attrs.get("standard_name", "")).lower(), (None,) * 2
        )
        found = upper if has_levels else surface
        if found is None:
            found = upper or surface
    return found


def find_coordinate(variables: Mapping, names: tuple, standard_name: str, units=()) -> str | None:
    """Name of the coordinate or dimension among ``variables`` (name -> object with ``.attrs``)
    called one of ``names`` (case-insensitive), or carrying CF ``standard_name`` / ``units``."""
    lowered = {str(k).lower(): k for k in variables}
    for candidate in names:
        if candidate.lower() in lowered:
            return lowered[candidate.lower()]
    for key, var in variables.items():
        attrs = getattr(var, "attrs", {})
        if attrs.get("standard_name") == standard_name or str(attrs.get("units", "")) in units:
            return key
    return None
