"""The regular latitude-longitude grid of the data (cell centres, no poles).

For ``H`` latitudes the centres are ``90 - (i + 0.5) * 180 / H`` degrees, north to south
(±89.296875° for the 128-row 1.40625° ERA5 grid, as in WeatherBench); longitudes are ``j * 360 / W`` degrees east of
Greenwich.
"""
import numpy as np


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
