"""Synthetic ERA5 in exactly the real on-disk layout: the project's embedded default dataset.

::

    python -m tools.make_synthetic_era5 --root_dir ./data/synthetic_era5 --start 2020-01-01 --days 31
    python -m tools.make_synthetic_era5 --root_dir DIR --grid poles --h_size 61 --w_size 120 \
        --hour_step 1 --start 2020-01-01T01 --hours 6

Grids (``--grid``): ``centres`` (default; cell centres, no poles, as the 128 x 256 ERA5 set),
``poles`` (equally spaced from 90 to -90 degrees, both poles included, e.g. 61 or 121 rows) and
``gaussian`` (a regular Gaussian grid); the grid is recorded in ``statistic/grid.json``. Times run
from ``--start`` (a date, or a date-time ``YYYY-MM-DDTHH``) every ``--hour_step`` hours over
``--days`` days or ``--hours`` hours.

The fields are deterministic given the seed, smooth and physically plausible in magnitude, and
*learnable*: geopotential waves in latitude bands travel eastward at band-dependent speeds (about
6-15 degrees of longitude per 6 h) with slowly pulsing amplitudes, over a background with a seasonal
and a diurnal cycle. Temperature follows the geopotential waves (warm ridges), winds are
quasi-geostrophic from the geopotential, humidity is a relative humidity (driven by the meridional
wind) times the saturation humidity of the temperature, and the surface fields are tied to the
lowest generated level plus a fixed orography. A 6-hour forecast therefore amounts to moving the
waves, which a small ViT learns, while persistence misses it.

Besides the fields it writes ``statistic/grid.json`` (:func:`utils.grid.write_grid`),
``statistic/mean_std.json`` (null for levels not generated),
``statistic/mean_std_single.json`` (both computed from the written files by
:func:`utils.data.statistics.compute_statistics`) and a climatology (``statistic/climatology/``) that is
the generator's wave-free background state (seasonal and diurnal cycle) for the days of year
generated: the true expected state of this synthetic climate, so ACC anomalies are the waves.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

import numpy as np

from utils.channels import ERA5_LEVELS
from utils.data.npy_layout import (
    CLIMATOLOGY_DIR,
    SINGLE_DIR,
    STATISTIC_DIR,
    day_dir,
    surface_name,
    upper_name,
)
from utils.errors import ConfigError, OutputExistsError
from utils.grid import grid_latitudes, longitudes, write_grid
from utils.times import format_hours, from_hours, to_hours

UPPER_VARIABLES = ("z", "q", "u", "v", "t")
SURFACE_VARIABLES = ("t2m", "u10", "v10", "msl", "sp")
DEFAULT_LEVELS = (850, 500, 250)

_G = 9.80665
_RD = 287.05
_OMEGA = 7.292e-5
_EARTH_RADIUS = 6.371e6


class SyntheticERA5:
    """Deterministic synthetic atmosphere on an ``h_size`` x ``w_size`` grid of kind ``grid``
    (``centres``, ``poles`` or ``gaussian``; latitudes in ``lat_deg``, longitudes in ``lon_deg``).

        ``fields(time_hours)`` returns ``{name: float32 (H, W)}`` with names ``z500``-style for upper-air
        channels and ``t2m``-style for surface ones; ``waves=False`` gives the background state.
    """

    def __init__(
        self,
        h_size: int = 32,
        w_size: int = 64,
        levels: Sequence[int] = DEFAULT_LEVELS,
        seed: int = 0,
        variables: Sequence[str] = UPPER_VARIABLES,
        surface: Sequence[str] = SURFACE_VARIABLES,
        grid: str = "centres",
    ):
        bad = [p for p in levels if int(p) not in ERA5_LEVELS]
        if bad:
            raise ConfigError(f"levels {bad} are not ERA5 pressure levels")
        unknown = [v for v in variables if v not in UPPER_VARIABLES] + [
            s for s in surface if s not in SURFACE_VARIABLES
        ]
        if unknown:
            raise ConfigError(
                f"unknown variables {unknown}; supported: {UPPER_VARIABLES} and {SURFACE_VARIABLES}"
            )
        if surface and not levels:
            raise ConfigError(
                "surface fields are tied to the lowest level: give at least one level"
            )
        self.h, self.w = int(h_size), int(w_size)
        self.levels = [int(p) for p in levels]
        self.variables, self.surface = list(variables), list(surface)
        self.lat_deg = grid_latitudes(grid, self.h)
        self.lon_deg = longitudes(self.w)
        self.lat = np.deg2rad(self.lat_deg)[:, None]
        self.lon = np.deg2rad(self.lon_deg)[None, :]
        rng = np.random.default_rng(seed)
        self.components = self._wave_components(rng)  # first: the order of draws fixes the fields
        self.orography = self._orography(rng)
        # Kept away from 0 at pole rows, where the meridional wind divides by it.
        self._coslat = np.maximum(np.cos(self.lat), 1e-3)
        self._sinlat = np.sin(self.lat)
        # Regularised 1/f: sin(lat) / (2 Omega (sin^2 + s0^2)), smooth through the equator.
        s0 = np.sin(np.deg2rad(15.0))
        self._inv_f = self._sinlat / (2 * _OMEGA * (self._sinlat**2 + s0**2))
        # d/dlat along the rows (north to south): a negative spacing on the regular cell-centre
        # grid, the latitudes themselves on any other.
        self._lat_spacing = (
            -np.deg2rad(180.0 / self.h) if grid == "centres" else self.lat[:, 0].copy()
        )
        self._dlon = 2 * np.pi / self.w

    def _wave_components(self, rng: np.random.Generator) -> list[dict]:
        """Eight geopotential wave components, in four latitude bands of each hemisphere: each
        its band envelope ``env`` ``(H, 1)``, wavenumber ``m``, amplitude ``amp``, speed (rad/h),
        phase, amplitude-pulse ``period`` (h) and ``pulse`` phase. Speed peaks in mid-latitudes."""
        components = []
        for hemisphere in (1.0, -1.0):
            for centre in (20.0, 35.0, 50.0, 65.0):
                c = hemisphere * (centre + rng.uniform(-4.0, 4.0))
                speed_deg_h = (
                    1.0 + 1.6 * np.exp(-(((abs(c) - 45.0) / 15.0) ** 2)) + rng.uniform(-0.2, 0.2)
                )
                m = int(rng.integers(2, 7))
                components.append(
                    dict(
                        env=np.exp(-(((self.lat_deg[:, None] - c) / rng.uniform(9.0, 13.0)) ** 2)),
                        m=m,
                        amp=rng.uniform(500.0, 900.0) * (3.0 / m) ** 0.3,
                        speed=np.deg2rad(speed_deg_h),
                        phase=rng.uniform(0, 2 * np.pi),
                        period=24.0 * rng.uniform(2.0, 8.0),
                        pulse=rng.uniform(0, 2 * np.pi),
                    )
                )
        return components

    def _orography(self, rng: np.random.Generator) -> np.ndarray:
        """Fixed orography (m) ``(H, W)``: a few smooth mountain ranges."""
        orog = np.zeros((self.h, self.w))
        for _ in range(7):
            lat0, lon0 = np.deg2rad(rng.uniform(-60, 60)), rng.uniform(0, 2 * np.pi)
            dlon = np.angle(np.exp(1j * (self.lon - lon0)))
            orog += rng.uniform(1500, 3500) * np.exp(
                -(((self.lat - lat0) / np.deg2rad(rng.uniform(8, 18))) ** 2)
                - (dlon / np.deg2rad(rng.uniform(15, 40))) ** 2
            )
        return orog

    # ------------------------------------------------------------------------------ components
    @staticmethod
    def amplification(p: float) -> float:
        """Wave amplitude grows with height."""
        return (1000.0 / p) ** 0.55

    def wave(self, t: float, p: float) -> np.ndarray:
        """Geopotential wave anomaly (m^2/s^2) at level ``p``, westward tilt with height."""
        tilt = 0.3 * np.log(1000.0 / p)
        psi = np.zeros((self.h, self.w))
        for c in self.components:
            amp = c["amp"] * (1.0 + 0.35 * np.sin(2 * np.pi * t / c["period"] + c["pulse"]))
            # (m * speed * t) is reduced modulo 2 pi in float64 before use: exact for any epoch.
            shift = np.fmod(c["m"] * c["speed"] * t, 2 * np.pi)
            psi += amp * c["env"] * np.cos(c["m"] * self.lon - shift + c["phase"] + tilt)
        return psi * self.amplification(p)

    @staticmethod
    def season(t: float) -> float:
        """+1 near the June solstice, -1 near the December solstice."""
        days = t / 24.0
        return float(np.sin(2 * np.pi * (days - 79.5) / 365.2422))

    def diurnal(self, t: float) -> np.ndarray:
        """cos of local solar time relative to 15 h (peak mid-afternoon), shape (1, W)."""
        local = (t % 24.0) + np.rad2deg(self.lon) / 15.0
        return np.cos(2 * np.pi * (local - 15.0) / 24.0)

    def _gradients(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dz_dlat = np.gradient(z, self._lat_spacing, axis=0)
        dz_dlon = (np.roll(z, -1, axis=1) - np.roll(z, 1, axis=1)) / (2 * self._dlon)
        return dz_dlat, dz_dlon

    def level_fields(self, t: float, p: float, waves: bool = True) -> dict:
        """Upper-air fields at level ``p`` (hPa): z, t, u, v, q, and the wave term ``psi`` of z."""
        a = self.amplification(p)
        season, diurnal = self.season(t), self.diurnal(t)
        s2 = self._sinlat**2
        psi = self.wave(t, p) if waves else 0.0
        z = (
            _RD * 270.0 * np.log(1013.25 / p)
            + a * (-6000.0 * (s2 - 0.4) + 1500.0 * season * self._sinlat * np.abs(self._sinlat))
        ) + psi
        z = np.broadcast_to(z, (self.h, self.w))
        low = min(1.0, max(0.0, (p - 150.0) / 850.0)) ** 0.5
        temp = (
            max(216.65, 288.0 * (p / 1013.25) ** 0.19)
            + low * (30.0 * (self._coslat**2 - 0.55) + 10.0 * season * self._sinlat)
            + 1.2 * (p / 1000.0) ** 4 * diurnal
            + 0.006 * psi
        )
        dz_dlat, dz_dlon = self._gradients(z)
        u = -self._inv_f * dz_dlat / _EARTH_RADIUS
        v = self._inv_f * dz_dlon / (_EARTH_RADIUS * self._coslat)
        e_sat = 611.2 * np.exp(17.67 * (temp - 273.15) / (temp - 29.65))
        q_sat = 0.622 * e_sat / (p * 100.0 - 0.378 * e_sat)
        rh = 0.5 + 0.35 * np.tanh(v / 12.0) + 0.1 * self._coslat**4
        return {"z": z, "t": temp, "u": u, "v": v, "q": rh * q_sat, "psi": psi}

    def fields(self, t: float, waves: bool = True) -> dict:
        """All channels at time ``t`` (hours since epoch): ``{"z500": ..., "t2m": ...}`` float32."""
        t = float(t)
        out, lowest = {}, None
        for p in sorted(self.levels, reverse=True):
            f = self.level_fields(t, p, waves)
            if lowest is None:
                lowest = (p, f)
            for v in self.variables:
                out[f"{v}{p}"] = f[v]
        if self.surface:
            p_low, f = lowest
            psi_low = f["psi"]
            t2m = (
                f["t"] * (1013.25 / p_low) ** 0.19
                - 0.0065 * self.orography
                + 4.0 * (0.5 + 0.5 * self._coslat) * self.diurnal(t)
            )
            msl = (
                101000.0
                + 1.1 * psi_low * (1000.0 / p_low) ** 0.5
                + 800.0 * np.sin(2 * self.lat) ** 2
            )
            msl = np.broadcast_to(msl, (self.h, self.w))
            surface = {
                "t2m": t2m,
                "u10": 0.75 * f["u"],
                "v10": 0.75 * f["v"],
                "msl": msl,
                "sp": msl * np.exp(-_G * self.orography / (_RD * t2m)),
            }
            for s in self.surface:
                out[s] = surface[s]
        return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def generate(
    root_dir: str,
    start,
    days: int = 31,
    h_size: int = 32,
    w_size: int = 64,
    levels: Sequence[int] = DEFAULT_LEVELS,
    hour_step: int = 6,
    seed: int = 0,
    variables: Sequence[str] = UPPER_VARIABLES,
    surface: Sequence[str] = SURFACE_VARIABLES,
    overwrite: bool = False,
    statistics: bool = True,
    climatology: bool = True,
    progress: bool = False,
    grid: str = "centres",
    hours: int | None = None,
    data_format: str = "npy",
) -> dict:
    """Write ``days`` days (or ``hours`` hours) from ``start`` (a date, or a date-time for a
    partial day) every ``hour_step`` hours under ``root_dir``, then the grid file, the statistics
    and the climatology. Refuses a non-empty ``root_dir`` unless ``overwrite``.
    ``data_format="h5"`` converts the fields to one HDF5 file per year (``<root_dir>/all/``,
    :mod:`utils.data.npy_to_h5`) and removes the ``.npy`` files."""
    if data_format not in ("npy", "h5"):
        raise ConfigError(f"data_format must be 'npy' or 'h5', got {data_format!r}")
    span = 24 * int(days) if hours is None else int(hours)
    if span < 1 or hour_step < 1 or 24 % hour_step:
        raise ConfigError("--days / --hours must be >= 1 and --hour_step must divide 24")
    _clear_root(root_dir, overwrite)
    generator = SyntheticERA5(h_size, w_size, levels, seed, variables, surface, grid)
    t0 = to_hours(start)
    times = np.arange(t0, t0 + span, int(hour_step), dtype=np.int64)
    _write_fields(generator, root_dir, times, progress)
    first, last = format_hours(times[0]), format_hours(times[-1])
    result = {
        "root_dir": root_dir,
        "start": first,
        "end": last,
        "n_times": int(len(times)),
        "grid": write_grid(root_dir, generator.lat_deg, generator.lon_deg),
        "channels": None,
        "climatology": None,
    }
    if statistics:
        result.update(_data_statistics(generator, root_dir, first, last, progress))
    if climatology:
        result["climatology"] = write_analytic_climatology(generator, root_dir, times)
    result["channels"] = len(generator.variables) * len(generator.levels) + len(generator.surface)
    result["data_format"] = data_format
    if data_format == "h5":
        _convert_to_h5(generator, root_dir, times, hour_step)
    return result


def _clear_root(root_dir: str, overwrite: bool) -> None:
    """Refuse a non-empty ``root_dir`` unless ``overwrite``; then drop its statistics."""
    if os.path.isdir(root_dir) and os.listdir(root_dir):
        if not overwrite:
            raise OutputExistsError(
                f"{root_dir} exists and is not empty; pass --overwrite to write into it"
            )
        shutil.rmtree(os.path.join(root_dir, STATISTIC_DIR), ignore_errors=True)


def _write_fields(generator: SyntheticERA5, root_dir: str, times, progress: bool) -> None:
    """Every channel of ``generator`` at ``times`` (hours) as ``.npy`` files under ``root_dir``."""
    from utils.progress import progress_bar

    made_dirs = set()
    for t in progress_bar(times, "synthetic ERA5", unit="step", enabled=progress):
        dt = from_hours(t)
        upper_dir, single_dir = day_dir(root_dir, dt), day_dir(root_dir, dt, surface=True)
        if dt.date() not in made_dirs:
            os.makedirs(upper_dir, exist_ok=True)
            if generator.surface:
                os.makedirs(single_dir, exist_ok=True)
            made_dirs.add(dt.date())
        fields = generator.fields(t)
        for v in generator.variables:
            for p in generator.levels:
                np.save(os.path.join(upper_dir, upper_name(dt.hour, v, p)), fields[f"{v}{p}"])
        for s in generator.surface:
            np.save(os.path.join(single_dir, surface_name(dt.hour, s)), fields[s])


def _data_statistics(
    generator: SyntheticERA5, root_dir: str, first: str, last: str, progress: bool
) -> dict:
    """``{"mean_std": path, "mean_std_single": path}`` of the written fields, computed from them
    (:func:`utils.data.statistics.compute_statistics`)."""
    from utils.data.statistics import compute_statistics

    stats = compute_statistics(
        root_dir,
        first,
        last,
        upper={v: generator.levels for v in generator.variables},
        surface=generator.surface,
        climatology=False,
        overwrite=True,
        progress=progress,
    )
    return {"mean_std": stats["mean_std"], "mean_std_single": stats["mean_std_single"]}


def _convert_to_h5(generator: SyntheticERA5, root_dir: str, times, hour_step: int) -> None:
    """Replace the ``.npy`` files under ``root_dir`` by one HDF5 file per year
    (:mod:`utils.data.npy_to_h5`, ``<root_dir>/all/``)."""
    from utils.channels import ChannelLayout
    from utils.data.npy_to_h5 import convert

    layout = ChannelLayout(generator.variables, generator.levels, generator.surface)
    first, last = format_hours(times[0]), format_hours(times[-1])
    convert(root_dir, root_dir, layout, first, last, hour_step, overwrite=True)
    for year in sorted({from_hours(t).year for t in times}):
        shutil.rmtree(os.path.join(root_dir, f"{year:04d}"), ignore_errors=True)
    shutil.rmtree(os.path.join(root_dir, SINGLE_DIR), ignore_errors=True)


def write_analytic_climatology(generator: SyntheticERA5, root_dir: str, times) -> str:
    """The background state (no waves) by day of year and hour, for the days of ``times``."""
    from utils.data.climatology import ClimatologyWriter, climatology_slots

    doys, hours, slots = climatology_slots(times)
    names = list(generator.fields(int(times[0]), waves=False))
    shape = (generator.h, generator.w)
    cube = {n: np.zeros((len(doys), len(hours)) + shape, dtype=np.float32) for n in names}
    total = {n: np.zeros(shape, dtype=np.float64) for n in names}
    for t, slot in zip(times, slots, strict=False):
        fields = generator.fields(int(t), waves=False)
        for n in names:
            cube[n][slot] = fields[n]
            total[n] += fields[n]
    writer = ClimatologyWriter(
        os.path.join(root_dir, STATISTIC_DIR, CLIMATOLOGY_DIR),
        shape,
        hours,
        doys,
        overwrite=True,
        source="synthetic-analytic",
        period=[format_hours(times[0]), format_hours(times[-1])],
    )
    for n in names:
        writer.add(n, total[n] / len(times), cube[n])
    return writer.close()
