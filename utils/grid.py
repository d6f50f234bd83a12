"""The latitude-longitude grid of a dataset and the area weights of its rows.

A dataset records its grid in ``<root_dir>/statistic/grid.json`` (:func:`write_grid`): latitudes
in degrees north to south, as the fields are stored, and longitudes in degrees east. Every tool
that creates a dataset writes it (the synthetic generator, the converter) and everything that
weights or draws the fields reads it (:func:`dataset_grid`): the loader, the loss, validation,
evaluation and the plots. A dataset without the file (written before grids were recorded) is taken
to be the regular cell-centre grid, ``90 - (i + 0.5) * 180 / H`` degrees (±89.296875° for the
128-row 1.40625° ERA5 grid, as in WeatherBench), with longitudes ``j * 360 / W``, and a notice is
logged once.

Row weights are the areas of the grid cells on the sphere (:func:`latitude_weights`): a row's cell
spans from half-way to the row above to half-way to the row below, the outer edges clipped to
±90°, and its area is proportional to the difference of the sines of its edge latitudes. On the
cell-centre grid this equals ``cos(lat)`` normalised to mean 1; on a grid with pole rows the pole
cells get their true (tiny) area, and a Gaussian grid is weighted by its actual latitudes.
"""

import json
import logging
import os

import numpy as np

from utils.atomic_io import atomic_write_text
from utils.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

GRID_FILE = "grid.json"
GRID_KINDS = ("centres", "poles", "gaussian")


class GridError(DataError, ValueError):
    """A recorded grid that is unreadable or does not match the configured ``h_size``/``w_size``."""


def latitudes(h_size: int) -> np.ndarray:
    """Latitude of each row's cell centre in degrees, north to south, shape ``(H,)``."""
    return 90.0 - (np.arange(h_size, dtype=np.float64) + 0.5) * 180.0 / h_size


def pole_latitudes(h_size: int) -> np.ndarray:
    """Equally spaced latitudes from 90 to -90 degrees, both poles included, shape ``(H,)``
    (e.g. 721 rows for ERA5 at 0.25 degrees, 121 at 1.5 degrees)."""
    if h_size < 2:
        raise ConfigError(f"a grid with both poles needs at least 2 rows, got {h_size}")
    return np.linspace(90.0, -90.0, h_size, dtype=np.float64)


def gaussian_latitudes(h_size: int) -> np.ndarray:
    """Latitudes of a regular Gaussian grid (roots of the Legendre polynomial of degree ``H``),
    north to south in degrees, shape ``(H,)``."""
    roots, _ = np.polynomial.legendre.leggauss(int(h_size))
    return np.rad2deg(np.arcsin(roots[::-1]))


def grid_latitudes(kind: str, h_size: int) -> np.ndarray:
    """Latitudes of a grid ``kind`` (``centres``, ``poles`` or ``gaussian``), shape ``(H,)``."""
    makers = {"centres": latitudes, "poles": pole_latitudes, "gaussian": gaussian_latitudes}
    if kind not in makers:
        raise ConfigError(f"grid kind must be one of {GRID_KINDS}, got {kind!r}")
    return makers[kind](h_size)


def longitudes(w_size: int) -> np.ndarray:
    """Longitude of each column in degrees east, starting at 0, shape ``(W,)``."""
    return np.arange(w_size, dtype=np.float64) * 360.0 / w_size


def latitude_edges(lat_deg) -> np.ndarray:
    """Cell edges of rows at ``lat_deg``, shape ``(H + 1,)`` in the rows' order: half-way between
    neighbouring rows, the outer edges half a row beyond the first and last rows, clipped to
    ±90 degrees (one row spans the whole sphere)."""
    lat = np.asarray(lat_deg, dtype=np.float64).reshape(-1)
    if lat.size == 1:
        return np.array([90.0, -90.0]) if lat[0] >= 0 else np.array([-90.0, 90.0])
    inner = 0.5 * (lat[:-1] + lat[1:])
    first = lat[0] - 0.5 * (lat[1] - lat[0])
    last = lat[-1] + 0.5 * (lat[-1] - lat[-2])
    return np.clip(np.concatenate([[first], inner, [last]]), -90.0, 90.0)


def latitude_weights(lat_deg) -> np.ndarray:
    """Area weight of each row, normalised to mean 1, shape ``(H,)``.

    ``w_i`` is proportional to ``|sin(edge_i) - sin(edge_{i+1})|`` with the edges of
    :func:`latitude_edges` (the area of a cell on the sphere; WeatherBench 2's convention). On the
    regular cell-centre grid this equals ``cos(lat_i)`` normalised to mean 1.
    """
    sines = np.sin(np.deg2rad(latitude_edges(lat_deg)))
    w = np.abs(np.diff(sines))
    return w / w.mean()


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
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        return np.asarray(doc["latitude"], np.float64), np.asarray(doc["longitude"], np.float64)
    except (ValueError, KeyError, TypeError) as err:
        raise GridError(f"{path}: not a grid file ({err})") from None


_NOTIFIED: set = set()


def dataset_grid(root_dir: str, h_size: int, w_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The grid ``(lat (H,), lon (W,))`` in degrees of the dataset at ``root_dir``.

    Read from ``statistic/grid.json``; a dataset without one falls back to the cell-centre grid
    (one notice per root). A recorded grid of another size than ``h_size`` x ``w_size`` raises
    :class:`GridError` naming both.
    """
    grid = read_grid(root_dir)
    if grid is None:
        if root_dir not in _NOTIFIED:
            _NOTIFIED.add(root_dir)
            logger.warning(
                "%s records no grid: assuming the regular cell-centre grid of %d x %d "
                "(latitudes 90 - (i + 0.5) * 180 / %d)",
                grid_path(root_dir),
                h_size,
                w_size,
                h_size,
            )
        return latitudes(h_size), longitudes(w_size)
    lat, lon = grid
    if (lat.size, lon.size) != (int(h_size), int(w_size)):
        raise GridError(
            f"{grid_path(root_dir)} records a {lat.size} x {lon.size} grid but the config has "
            f"h_size: {h_size}, w_size: {w_size}"
        )
    return lat, lon
