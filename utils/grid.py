"""The regular latitude-longitude grid of the data (cell centres, no poles).

For ``H`` latitudes the centres are ``90 - (i + 0.5) * 180 / H`` degrees, north to south
(±89.296875° for the 128-row 1.40625° ERA5 grid, as in WeatherBench); longitudes are ``j * 360 / W`` degrees east of
Greenwich.
"""

import json
import os

import numpy as np

from utils.atomic_io import atomic_write_text


def latitudes(h_size: int) -> np.ndarray:
    """Latitude of each row's cell centre in degrees, north to south, shape ``(H,)``."""
    return 90.0 - (np.arange(h_size, dtype=np.float64) + 0.5) * 180.0 / h_size


def longitudes(w_size: int) -> np.ndarray:
    """Longitude of each column in degrees east, starting at 0, shape ``(W,)``."""
    return np.arange(w_size, dtype=np.float64) * 360.0 / w_size


def latitude_weights(lat_deg) -> np.ndarray:
    """``cos(lat)`` normalised to mean 1 over the given latitudes, shape ``(H,)``."""
    w = np.cos(np.deg2rad(np.asarray(lat_deg, dtype=np.float64)))
    return w / w.mean()


GRID_FILE = "grid.json"


def grid_path(root_dir: str) -> str:
    """Where a dataset records its grid: ``<root_dir>/statistic/grid.json``."""
    return os.path.join(root_dir, "statistic", GRID_FILE)


def write_grid(root_dir: str, lat_deg, lon_deg) -> str:
    """Record a dataset's grid: latitudes ``(H,)`` north to south and longitudes ``(W,)`` in
    degrees, as the converted fields are stored. Written atomically; returns the path."""
    lat = np.asarray(lat_deg, dtype=np.float64).reshape(-1)
    lon = np.asarray(lon_deg, dtype=np.float64).reshape(-1)
    if lat.size > 1 and not np.all(np.diff(lat) < 0):
        raise ValueError("grid latitudes must be strictly decreasing (north to south)")
    path = grid_path(root_dir)
    doc = {"latitude": lat.tolist(), "longitude": lon.tolist()}
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return path


def read_grid(root_dir: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The grid recorded by :func:`write_grid` as ``(lat (H,), lon (W,))`` in degrees, or ``None``
    when the dataset records none (datasets converted before grids were recorded)."""
    path = grid_path(root_dir)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    return np.asarray(doc["latitude"], np.float64), np.asarray(doc["longitude"], np.float64)
