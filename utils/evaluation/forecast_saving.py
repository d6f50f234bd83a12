"""``inference.py --save_forecasts``: the model's forecasts of the scored starts, in the WeatherBench
2 layout (:mod:`utils.evaluation.wb2_layout`), written while the rollout runs.

Every scored initial condition whose hour of day is a multiple of ``--save_every_hours``, every
lead from 0 (the initial state) to the last, the channels of ``--save_variables`` (all by
default). The store (Zarr by default, ``<out_dir>/forecasts.zarr``; netCDF4 for a ``.nc`` path)
is created before the rollout from the known starts and leads, and filled one start at a time by
the rollout's ``raw_forecast_writer`` hook. Its size is logged first
(:meth:`utils.evaluation.forecast_store.StoreSpec.size_text`), and a disk without room for it is
an error before the rollout starts.

A store inside ``out_dir`` is written in the evaluation's staging folder and published with the
results; a store elsewhere is staged beside its own path and moved into place when the rollout
has finished. With several ranks every rank writes the starts of its own share of the loader into
the one store that rank 0 created (Zarr only).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np
import torch.distributed as dist

from utils.distributed import barrier, broadcast_object, gather_objects
from utils.errors import ConfigError
from utils.evaluation.forecast_store import (
    StoreWriter,
    check_free_space,
    create_store,
    forecast_spec,
    is_netcdf,
)
from utils.evaluation.staging import staged_path
from utils.evaluation.wb2_layout import WB2Layout, select_channels

DEFAULT_STORE = "forecasts.zarr"


@dataclass(frozen=True)
class ForecastSaveRequest:
    """What ``--save_forecasts`` asks for.

    Attributes:
        path: the store (None: ``<out_dir>/forecasts.zarr``); ``.nc``: a netCDF4 file.
        variables: channel names (``z500``) or whole upper-air variables (``z``); None: all.
        every_hours: keep only starts whose hour of day is a multiple of it (None: all).
        overwrite: replace an existing store at ``path`` outside ``out_dir`` (``--overwrite``).
    """

    path: str | None = None
    variables: Sequence[str] | None = None
    every_hours: int | None = None
    overwrite: bool = False


class SavedForecasts:
    """The rollout's ``raw_forecast_writer``: writes the selected channels of this rank's starts.

    ``path`` is where the store ends up; ``writer`` the open :class:`StoreWriter`.
    """

    def __init__(self, writer: StoreWriter, channels: list[int], path: str):
        self.writer, self.channels, self.path = writer, channels, path
        self._own = set(writer.own)

    def __call__(self, time_hours: int, forecast: np.ndarray) -> None:
        """Write ``forecast`` ``(T + 1, C, H, W)`` (physical units, lead 0 first) of the start
        ``time_hours`` when it is one of the saved starts."""
        if int(time_hours) in self._own:
            self.writer.write(int(time_hours), forecast[:, self.channels])


def _world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def store_path(request: ForecastSaveRequest, final_dir: str) -> str:
    """Where the store of ``request`` ends up (absolute): its path, or ``forecasts.zarr`` in the
    evaluation's ``final_dir``."""
    return os.path.abspath(request.path or os.path.join(final_dir, DEFAULT_STORE))


def _inside(path: str, folder: str) -> bool:
    folder = os.path.abspath(folder)
    return os.path.commonpath([path, folder]) == folder


def staged_store(request: ForecastSaveRequest | None, staging_dir: str, final_dir: str) -> dict:
    """``{"forecasts": path in staging_dir}`` when the store of ``request`` is one of the files of
    ``final_dir`` (written in its staging folder ``staging_dir``), else ``{}``."""
    if request is None or not _inside(store_path(request, final_dir), final_dir):
        return {}
    relative = os.path.relpath(store_path(request, final_dir), final_dir)
    return {"forecasts": os.path.join(staging_dir, relative)}


def own_starts(times: np.ndarray, loader, max_batches: int | None, every_hours: int | None):
    """This rank's starts to save: the times of its loader's samples (the first ``max_batches``
    batches of them), those whose hour of day is a multiple of ``every_hours``."""
    indices = list(loader.sampler)
    if max_batches is not None:
        indices = indices[: int(max_batches) * int(loader.batch_size)]
    starts = np.asarray(times, dtype=np.int64)[indices]
    if every_hours:
        starts = starts[(starts % 24) % int(every_hours) == 0]
    return starts.tolist()


def _check_request(request: ForecastSaveRequest, path: str, world: int) -> None:
    every = request.every_hours
    if every is not None and (every < 1 or 24 % every):
        raise ConfigError(f"--save_every_hours {every} must divide 24 (e.g. 6, 12 or 24)")
    if is_netcdf(path) and world > 1:
        raise ConfigError(
            f"--save_forecasts {path}: a netCDF file is written by one process; with {world} "
            "ranks give a Zarr path (any name not ending in .nc)"
        )


def _forecast_spec(request, params, dataset, loader, max_batches, attrs):
    """``(channels, spec, own starts)`` of the store ``request`` asks for (every rank's starts,
    gathered)."""
    channels = select_channels(params.layout, request.variables, "--save_variables")
    own = own_starts(dataset.times, loader, max_batches, request.every_hours)
    starts = sorted(t for part in gather_objects(own) for t in part)
    if not starts:
        raise ConfigError(
            f"--save_every_hours {request.every_hours}: none of the scored starts is at such an "
            "hour of day"
        )
    units = params.get("variable_units")
    layout = WB2Layout(params.layout, channels, dataset.lat, dataset.lon, units)
    leads = np.arange(int(params.t_out_test) + 1) * int(params.lead_time)
    return channels, forecast_spec(layout, starts, leads, attrs), own


def _created_store(final: str, final_dir: str, staging_dir: str, spec, overwrite, stack) -> str:
    """Create the store whose final path is ``final`` on rank 0 and return where every rank
    writes it: in ``staging_dir`` when ``final`` lies in ``final_dir``, else in a staging folder
    of its own that ``stack`` publishes when it closes."""
    path = None
    if _world()[0] == 0:
        if _inside(final, final_dir):
            path = os.path.join(staging_dir, os.path.relpath(final, final_dir))
        else:
            path = stack.enter_context(staged_path(final, overwrite))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        create_store(path, spec)
    path = broadcast_object(path)
    barrier()
    return path


@contextmanager
def saved_forecasts(
    request: ForecastSaveRequest | None,
    params,
    dataset,
    loader,
    max_batches: int | None,
    staging_dir: str,
    final_dir: str,
    attrs: dict,
    log=None,
) -> Iterator[SavedForecasts | None]:
    """The ``raw_forecast_writer`` of the evaluation's rollout (None without ``request``); the
    store is complete, and in place when it lies outside ``final_dir``, when the block ends.

    ``dataset``: the test dataset (``times``, ``lat``, ``lon``); ``loader``: this rank's test
    loader (``sampler``, ``batch_size``); ``staging_dir``: where the evaluation writes the files
    of ``final_dir`` (its ``--out_dir``); ``attrs``: the store's global attributes.
    """
    if request is None:
        yield None
        return
    final = store_path(request, final_dir)
    _check_request(request, final, _world()[1])
    channels, spec, own = _forecast_spec(request, params, dataset, loader, max_batches, attrs)
    if log is not None and _world()[0] == 0:
        log.info("saving forecasts: %s to %s", spec.size_text("starts"), final)
    check_free_space(spec.nbytes, final, f"--save_forecasts {final}")
    with ExitStack() as stack:
        path = _created_store(final, final_dir, staging_dir, spec, request.overwrite, stack)
        writer = stack.enter_context(StoreWriter(path, spec, own))
        yield SavedForecasts(writer, channels, final)
        if writer.missing():
            raise RuntimeError(f"starts {writer.missing()[:5]} of {final} were not written")
        writer.close()
        barrier()
