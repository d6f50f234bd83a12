"""Stores of fields in the WeatherBench 2 layout, written region by region while they are made.

One writer for every store the project writes: forecasts (``time`` x ``prediction_timedelta``),
truth (``time``) and climatology (``dayofyear`` x ``hour``), each a :class:`StoreSpec`. The store
is a Zarr store (format 2, which every WeatherBench 2 installation reads) or, for a path ending in
``.nc``, a netCDF4 file. Every variable is float32 and chunked one chunk per entry of the first
dimension (one initial time, one valid time, one day of year), holding everything else: all leads
and levels and the whole grid.

:func:`create_store` writes the coordinates and empty (NaN) variables up front, from the known
keys; a :class:`StoreWriter` then fills the chunk of one key at a time, so only one key's fields
are ever in memory. With several ranks, rank 0 creates the store, the ranks wait at a barrier, and
each rank opens a writer for its own keys (Zarr only: every chunk is its own file; a netCDF file
has one writer). :func:`utils.evaluation.staging.staged_path` has a store written beside its final path and moves it into
place when it is complete, so a killed run leaves no half store there.
"""

from __future__ import annotations

import importlib
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from utils.errors import OutputError
from utils.evaluation.wb2_layout import (
    COORDINATE_ATTRS,
    WB2Layout,
    hours_to_datetime64,
    hours_to_timedelta64,
)
from utils.fault_injection import kill_point

NETCDF_SUFFIXES = (".nc", ".nc4")
ZARR_FORMAT = 2


def is_netcdf(path: str) -> bool:
    """Whether a store path is a netCDF file (``.nc``/``.nc4``) rather than a Zarr store."""
    return str(path).lower().endswith(NETCDF_SUFFIXES)


@dataclass(frozen=True)
class StoreSpec:
    """What a store holds.

    Attributes:
        layout: the variables and the grid.
        region_dim: the first dimension; one chunk per entry.
        keys: int64 ``(N,)`` entries of ``region_dim``: hours since 1970 when it is ``time``,
            else the coordinate values themselves (days of year).
        inner: the other leading dimensions as ``(name, values)``, e.g. the lead times of a
            forecast as ``("prediction_timedelta", timedelta64[ns] (L,))``.
        region_attrs: attributes of the ``region_dim`` coordinate.
        attrs: the store's global attributes.
    """

    layout: WB2Layout
    region_dim: str
    keys: np.ndarray
    inner: tuple = ()
    region_attrs: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)

    @property
    def leading_shape(self) -> tuple[int, ...]:
        """Sizes of the inner leading dimensions (what one key's fields have before ``C``)."""
        return tuple(len(values) for _, values in self.inner)

    @property
    def nbytes(self) -> int:
        """Bytes of the float32 variables: keys x inner sizes x stored channels x H x W x 4."""
        h, w = self.layout.grid_shape
        per_key = int(np.prod(self.leading_shape, dtype=np.int64))
        return len(self.keys) * per_key * self.layout.n_stored_channels * h * w * 4

    def size_text(self, key_label: str) -> str:
        """The size arithmetic, e.g. ``1,460 starts x 21 leads x 70 channels x 128 x 256 x 4 B
        = 281.3 GB`` (``key_label``: what a key is; the inner dimensions are labelled by name)."""
        labels = {"prediction_timedelta": "leads", "hour": "hours"}
        parts = [f"{len(self.keys):,} {key_label}"]
        parts += [f"{len(v):,} {labels.get(n, n)}" for n, v in self.inner]
        parts.append(f"{self.layout.n_stored_channels} channels")
        h, w = self.layout.grid_shape
        return " x ".join(parts) + f" x {h} x {w} x 4 B = {format_bytes(self.nbytes)}"

    def region_coordinate(self) -> np.ndarray:
        return hours_to_datetime64(self.keys) if self.region_dim == "time" else self.keys

    def coordinates(self) -> dict:
        """``{name: (dims, values, attrs)}`` of every coordinate."""
        coords = {
            self.region_dim: ((self.region_dim,), self.region_coordinate(), self.region_attrs)
        }
        for name, values in self.inner:
            coords[name] = ((name,), values, COORDINATE_ATTRS.get(name, {}))
        coords.update(self.layout.grid_coordinates())
        return coords

    def variable_shape(self, variable) -> tuple[int, ...]:
        """Shape of a stored variable: keys, inner leading sizes, then its grid dimensions."""
        levels = (len(self.layout.levels),) if variable.upper else ()
        return (len(self.keys), *self.leading_shape, *levels, *self.layout.grid_shape)

    def dims(self, variable) -> tuple[str, ...]:
        return (self.region_dim, *(n for n, _ in self.inner), *self.layout.dims(variable))


def forecast_spec(layout: WB2Layout, init_hours, lead_hours, attrs=None) -> StoreSpec:
    """A forecast store: initial times (hours since 1970) x leads (hours, from 0)."""
    return StoreSpec(
        layout,
        "time",
        np.asarray(init_hours, dtype=np.int64),
        (("prediction_timedelta", hours_to_timedelta64(lead_hours)),),
        {"long_name": "initialisation time", "standard_name": "forecast_reference_time"},
        dict(attrs or {}),
    )


def truth_spec(layout: WB2Layout, valid_hours, attrs=None) -> StoreSpec:
    """A truth store: the states at ``valid_hours`` (hours since 1970)."""
    return StoreSpec(
        layout,
        "time",
        np.asarray(valid_hours, dtype=np.int64),
        (),
        {"long_name": "valid time", "standard_name": "time"},
        dict(attrs or {}),
    )


def climatology_spec(layout: WB2Layout, hours_of_day, attrs=None) -> StoreSpec:
    """A climatology store in WeatherBench 2's layout: ``dayofyear`` 1..366 x ``hour``."""
    return StoreSpec(
        layout,
        "dayofyear",
        np.arange(1, 367, dtype=np.int64),
        (("hour", np.asarray(hours_of_day, dtype=np.int64)),),
        COORDINATE_ATTRS["dayofyear"],
        dict(attrs or {}),
    )


def format_bytes(n: int) -> str:
    """A byte count in decimal units (``281.3 GB``)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def check_free_space(nbytes: int, path: str, what: str) -> None:
    """Refuse to start writing ``nbytes`` at ``path`` when its file system has less free space;
    the :class:`OutputError` names ``what``, the size and the folder."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    free = shutil.disk_usage(folder).free
    if free < nbytes:
        raise OutputError(
            f"not enough free disk for {what}: {format_bytes(nbytes)} ({nbytes:,} bytes) to "
            f"write in {folder}, which has {format_bytes(free)} free"
        )


def require_store_libraries(path: str):
    """Import what a store at ``path`` needs (xarray and dask, zarr or netCDF4); returns
    xarray. A missing one is an :class:`OutputError` naming it and the optional requirements."""
    names = ("xarray", "netCDF4") if is_netcdf(path) else ("xarray", "dask", "zarr")
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            raise OutputError(
                f"{path}: writing it needs {name} (pip install -r requirements-optional.txt)"
            ) from None
    return importlib.import_module("xarray")


def create_store(path: str, spec: StoreSpec) -> None:
    """Create the store at ``path`` (must not exist): its coordinates, attributes and empty
    float32 variables (NaN until written), one chunk per key."""
    xr = require_store_libraries(path)
    coords = spec.coordinates()
    if is_netcdf(path):
        xr.Dataset(coords=coords, attrs=spec.attrs).to_netcdf(path, format="NETCDF4")
        _add_netcdf_variables(path, spec)
        return
    import dask.array

    data_vars, encoding = {}, {}
    for variable in spec.layout.variables:
        shape = spec.variable_shape(variable)
        chunks = (1, *shape[1:])
        empty = dask.array.full(shape, np.nan, dtype=np.float32, chunks=chunks)
        data_vars[variable.name] = (spec.dims(variable), empty, variable.attrs)
        encoding[variable.name] = {"chunks": chunks, "_FillValue": np.float32(np.nan)}
    dataset = xr.Dataset(data_vars, coords=coords, attrs=spec.attrs)
    dataset.to_zarr(
        path,
        mode="w-",
        compute=False,
        zarr_format=ZARR_FORMAT,
        consolidated=True,
        encoding=encoding,
    )


def _add_netcdf_variables(path: str, spec: StoreSpec) -> None:
    """The empty float32 variables of ``spec`` added to the netCDF file at ``path``."""
    import netCDF4

    with netCDF4.Dataset(path, "a") as nc:
        for variable in spec.layout.variables:
            shape = spec.variable_shape(variable)
            var = nc.createVariable(
                variable.name,
                "f4",
                spec.dims(variable),
                chunksizes=(1, *shape[1:]),
                fill_value=np.float32(np.nan),
            )
            var.setncatts(variable.attrs)


class StoreWriter:
    """Fills the chunks of some keys of a store :func:`create_store` made.

    Args:
        path: the store.
        spec: the spec it was created with.
        own_keys: the keys this process writes (None: any key of the store). Writing another
            key, or a key twice, is an error.
    """

    def __init__(self, path: str, spec: StoreSpec, own_keys: Sequence[int] | None = None):
        self.path, self.spec = path, spec
        self._position = {int(k): i for i, k in enumerate(spec.keys)}
        own = spec.keys if own_keys is None else np.asarray(own_keys, dtype=np.int64)
        strangers = sorted(set(int(k) for k in own) - set(self._position))
        if strangers:
            raise ValueError(f"keys {strangers[:5]} are not in the store {path}")
        self.own = [int(k) for k in own]
        self.written: set[int] = set()
        if is_netcdf(path):
            import netCDF4

            self._file = netCDF4.Dataset(path, "a")
            self._arrays = {v.name: self._file[v.name] for v in spec.layout.variables}
        else:
            import zarr

            self._file = None
            group = zarr.open_group(path, mode="r+", zarr_format=ZARR_FORMAT)
            self._arrays = {v.name: group[v.name] for v in spec.layout.variables}

    def write(self, key: int, fields) -> None:
        """Write the fields of ``key``: ``(*inner sizes, c, H, W)`` in the project's channel
        order and row order (see :meth:`WB2Layout.to_variables`)."""
        key = int(key)
        if key not in self.own or key in self.written:
            why = "written already" if key in self.written else "not one of this writer's keys"
            raise ValueError(f"key {key} of {self.path}: {why}")
        fields = np.asarray(fields)
        if fields.shape[: len(self.spec.leading_shape)] != self.spec.leading_shape:
            raise ValueError(
                f"fields {fields.shape} do not start with {self.spec.leading_shape} "
                f"({[n for n, _ in self.spec.inner]})"
            )
        position = self._position[key]
        for name, array in self.spec.layout.to_variables(fields).items():
            self._arrays[name][position] = array
        self.written.add(key)
        kill_point("forecast_store.write")

    def missing(self) -> list[int]:
        """This writer's keys not written yet."""
        return [k for k in self.own if k not in self.written]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
