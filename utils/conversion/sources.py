"""Find and open the converter's inputs: netCDF files and Zarr stores, local or in the cloud.

An input is a netCDF file, a glob pattern, a directory (a Zarr store when it holds Zarr metadata,
otherwise searched for ``*.nc``) or a URL of a Zarr store (``gs://``, ``s3://`` or any other
fsspec protocol). Cloud stores are read anonymously (``token='anon'`` for Google Cloud Storage,
``anon=True`` for S3), as the public ARCO-ERA5 and WeatherBench 2 stores allow. Every dataset is
opened lazily (xarray's lazily indexed arrays, no dask), so selecting times, variables and levels
afterwards reads only what is selected: a hyperslab of a netCDF file, the chunks of a Zarr store
that hold it.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

from utils.conversion.variable_names import ConversionError

ZARR_MARKERS = (".zmetadata", ".zgroup", ".zattrs", "zarr.json")
NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf")


def storage_options_for(url: str) -> dict:
    """fsspec options for anonymous access to the store at ``url`` (empty for other protocols)."""
    protocol = url.split("://", 1)[0].lower() if "://" in url else "file"
    if protocol in ("gs", "gcs"):
        return {"token": "anon"}
    if protocol in ("s3", "s3a"):
        return {"anon": True}
    return {}


@dataclass(frozen=True)
class InputSource:
    """One input dataset: ``kind`` is ``netcdf`` or ``zarr``; ``location`` a path or URL."""

    location: str
    kind: str
    storage_options: dict = field(default_factory=dict, hash=False, compare=False)

    def open(self):
        """The dataset, lazily indexed (nothing read but coordinates); errors name the input."""
        import xarray as xr

        try:
            if self.kind == "zarr":
                return xr.open_zarr(
                    self.location,
                    storage_options=self.storage_options or None,
                    chunks=None,
                    decode_timedelta=False,
                )
            return xr.open_dataset(self.location, chunks=None, decode_timedelta=False)
        except (OSError, ValueError, KeyError) as err:
            raise ConversionError(f"cannot open {self.location} as {self.kind}: {err}") from None


def _is_zarr_dir(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, m)) for m in ZARR_MARKERS)


def _local_sources(path: str) -> list[InputSource]:
    if _is_zarr_dir(path):
        return [InputSource(path, "zarr")]
    if os.path.isdir(path):
        found = []
        for dirpath, dirnames, filenames in os.walk(path):
            zarr_dirs = [d for d in dirnames if _is_zarr_dir(os.path.join(dirpath, d))]
            found += [InputSource(os.path.join(dirpath, d), "zarr") for d in zarr_dirs]
            dirnames[:] = sorted(d for d in dirnames if d not in zarr_dirs)
            found += [
                InputSource(os.path.join(dirpath, f), "netcdf")
                for f in filenames
                if f.lower().endswith(NETCDF_SUFFIXES)
            ]
        return sorted(found, key=lambda s: s.location)
    if os.path.isfile(path):
        return [InputSource(path, "netcdf")]
    return []


def find_inputs(inputs: list[str]) -> list[InputSource]:
    """Every dataset named by ``inputs`` (paths, glob patterns, directories, URLs), in order."""
    sources: list[InputSource] = []
    for item in inputs:
        if "://" in item and not item.startswith("file://"):
            sources.append(InputSource(item, "zarr", storage_options_for(item)))
            continue
        item = item.removeprefix("file://")
        matches = sorted(glob.glob(item, recursive=True)) if glob.has_magic(item) else [item]
        found = [s for m in matches for s in _local_sources(m)]
        if not found:
            raise ConversionError(
                f"no input matches {item!r} (expected netCDF files, a directory of them, "
                "a Zarr store or a gs:// / s3:// URL)"
            )
        sources += found
    return sources
