"""Forecast files in the WeatherBench 2 layout for the tests, written with xarray directly.

``write_forecast(path, states, layout, lat, lon, init_times, lead_hours)`` writes
``states[i, k]`` ``(C, H, W)`` (rows north to south, the project's channel order) as the forecast
of initial time ``init_times[i]`` (hours since 1970) at lead ``lead_hours[k]``: dimensions
``time``, ``prediction_timedelta``, ``level``, ``latitude`` (ascending, so the rows are flipped),
``longitude``; WeatherBench 2 variable names. A ``.nc`` path is written as netCDF, anything else
as a Zarr directory.
"""

from __future__ import annotations

import warnings

import numpy as np

WB2_NAMES = {
    "z": "geopotential",
    "q": "specific_humidity",
    "u": "u_component_of_wind",
    "v": "v_component_of_wind",
    "t": "temperature",
    "t2m": "2m_temperature",
    "u10": "10m_u_component_of_wind",
    "v10": "10m_v_component_of_wind",
    "msl": "mean_sea_level_pressure",
    "sp": "surface_pressure",
}


def forecast_dataset(states, layout, lat, lon, init_times, lead_hours):
    """The xarray Dataset of :func:`write_forecast` (see the module docstring)."""
    import xarray as xr

    states = np.asarray(states)[..., ::-1, :]  # latitude ascending
    coords = {
        "time": np.asarray(init_times, dtype="int64").astype("datetime64[h]").astype("<M8[ns]"),
        "prediction_timedelta": np.asarray(lead_hours, dtype="int64")
        .astype("timedelta64[h]")
        .astype("<m8[ns]"),
        "latitude": np.asarray(lat, dtype=float)[::-1],
        "longitude": np.asarray(lon, dtype=float),
    }
    dims = ("time", "prediction_timedelta")
    data = {}
    if layout.higher_features:
        coords["level"] = np.asarray(layout.pressure_level, dtype="int64")
    for var in layout.higher_features:
        channels = [layout.index(var, level) for level in layout.pressure_level]
        data[WB2_NAMES[var]] = (dims + ("level", "latitude", "longitude"), states[:, :, channels])
    for var in layout.surface_features:
        data[WB2_NAMES[var]] = (dims + ("latitude", "longitude"), states[:, :, layout.index(var)])
    return xr.Dataset(data, coords=coords)


def write_forecast(path, states, layout, lat, lon, init_times, lead_hours, edit=None) -> str:
    """Write the forecast file (``edit(ds) -> ds`` changes the dataset first); returns ``path``."""
    ds = forecast_dataset(states, layout, lat, lon, init_times, lead_hours)
    if edit is not None:
        ds = edit(ds)
    if str(path).endswith(".nc"):
        ds.to_netcdf(path)
    else:
        with warnings.catch_warnings():  # zarr 3: consolidated metadata is not in its spec yet
            warnings.simplefilter("ignore")
            ds.to_zarr(path, mode="w")
    return str(path)
