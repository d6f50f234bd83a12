"""The samples of one mode of a configuration, resolved once from ``(params, mode)``.

:func:`resolve_samples` reads what the configuration asks for, looks at the dataset on disk once
and returns a :class:`SampleDescription`: where the files are, the channels and the grid, the data
step, the time of every sample, the offsets of its input and target states and the normalisation
statistics. :class:`utils.data.dataset.ERA5Dataset` reads the samples it describes.

The samples of ``params.<mode>_period`` are read from ``<mode>_root_dir`` (``valid_root_dir`` /
``test_root_dir``; ``root_dir`` when unset or in training). A period's ends are dates or
date-times (``'2019-01-05T01'``; a bare end date includes its whole day). The data step (hours
between stored times) is ``data_step`` or, when that is null, read from the times the period's
files hold; ``lead_time`` and ``<mode>_interval`` must be multiples of it. Sample times run every
``<mode>_interval`` hours from the first stored time of the period at which a whole sample fits,
such that every input state (``t_in`` of them, ``lead_time`` hours apart, the last at the sample
time) and every target state (``t_out_<mode>`` of them at ``+lead_time``, ``+2 lead_time``, ...)
lies within the period. Normalisation statistics always come from the training ``root_dir``; the
grid (``lat``, ``lon`` in degrees) from the dataset's ``statistic/grid.json``
(:func:`utils.grid.dataset_grid`).

Resolving scans the period once (one ``listdir`` per day directory) and reports every missing
file in one error; with ``skip_incomplete_samples: true`` it instead keeps only the complete
samples. All errors name the files (and dates) at fault.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from utils.channels import ChannelLayout
from utils.data.npy_layout import MissingDataError, missing_files_message
from utils.data.npy_reader import NpyStateReader
from utils.data.statistics import load_mean_std
from utils.errors import ConfigError, DataError
from utils.grid import GridError, dataset_grid, read_grid
from utils.times import dates_of, format_hours, period_bounds, time_step

if TYPE_CHECKING:
    from utils.data.h5_reader import H5StateReader

logger = logging.getLogger(__name__)

MODES = ("train", "valid", "test")


@dataclass(frozen=True, eq=False, repr=False)
class SampleDescription:
    """The samples of one mode. Sample ``i`` is the states at ``times[i] + offsets`` (hours since
    1970-01-01T00:00 UTC): the ``t_in`` input states, then the ``t_out`` target states.

    Attributes:
        mode: ``train``, ``valid`` or ``test``.
        root: the dataset the states are read from.
        stats_root: the training dataset, whose statistics and grid are used.
        period: ``<mode>_period`` as configured (``[start, end]``).
        layout: the :class:`utils.channels.ChannelLayout`; its channel order is the ``C`` axis.
        h, w: the grid size ``(H, W)``.
        lat, lon: the grid in degrees, ``(H,)`` and ``(W,)``.
        t_in, t_out: input and target states per sample.
        lead: ``lead_time``, hours between consecutive states of a sample.
        interval: ``<mode>_interval``, hours between consecutive sample times.
        data_step: hours between stored times.
        times: int64 ``(N,)``, the valid time of each sample's (last) input state.
        offsets: int64 ``(t_in + t_out,)``, hours from the sample time to each state:
            ``-(t_in - 1) lead, ..., 0, lead, ..., t_out lead``.
        mean, std: float32 ``(C,)``, per-channel statistics in physical units.
        reader: the state reader the description was resolved with (its file index and
            metadata are read once, here, and reused by the dataset).
    """

    mode: str
    root: str
    stats_root: str
    period: list
    layout: ChannelLayout
    h: int
    w: int
    lat: np.ndarray
    lon: np.ndarray
    t_in: int
    t_out: int
    lead: int
    interval: int
    data_step: int
    times: np.ndarray
    offsets: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    reader: NpyStateReader | H5StateReader

    def sample_times(self, i: int) -> tuple[list, list]:
        """Valid times (hours since epoch) of the input states and of the target states of
        sample ``i``."""
        steps = [int(self.times[i] + o) for o in self.offsets]
        return steps[: self.t_in], steps[self.t_in :]

    def state_times(self) -> np.ndarray:
        """Sorted distinct times (int64 hours) of every state of every sample."""
        return _state_times(self.times, self.offsets)

    def __repr__(self) -> str:
        span = (
            f"{format_hours(self.times[0])}..{format_hours(self.times[-1])} "
            if len(self.times)
            else ""
        )
        return (
            f"SampleDescription({self.mode}, {len(self.times)} samples {span}"
            f"every {self.interval} h, states at {self.offsets.tolist()} h "
            f"({self.t_in} in, {self.t_out} out), data step {self.data_step} h, "
            f"{self.layout.n_channels} channels, {self.h}x{self.w}, root={self.root!r}, "
            f"stats_root={self.stats_root!r})"
        )


def resolve_samples(params, mode: str) -> SampleDescription:
    """The samples ``params`` configures for ``mode`` (see the module docstring), checked
    against the dataset on disk."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    stats_root = str(params["root_dir"])
    root = str(params.get(f"{mode}_root_dir") or stats_root)
    layout = params["layout"]
    h, w = int(params["h_size"]), int(params["w_size"])
    t_in, t_out = int(params["t_in"]), int(params[f"t_out_{mode}"])
    lead, interval = int(params["lead_time"]), int(params[f"{mode}_interval"])
    period = list(params[f"{mode}_period"])
    skip_incomplete = bool(params.get("skip_incomplete_samples", False))
    _require_root(root)
    lat, lon = _grid(mode, root, stats_root, h, w)

    first, last = period_bounds(period)
    offsets = np.arange(-(t_in - 1), t_out + 1, dtype=np.int64) * lead
    reader = make_reader(params, mode, root)
    data_step, start = _first_sample_time(
        reader,
        params.get("data_step"),
        (first, last),
        first - int(offsets[0]),
        {"lead_time": lead, f"{mode}_interval": interval},
        f"the {mode} period {period} under {root}",
    )
    times = np.arange(start, last - offsets[-1] + 1, interval, dtype=np.int64)
    if len(times) == 0:
        raise ConfigError(
            f"'{mode}_period' {period} is too short for t_in={t_in} and "
            f"t_out_{mode}={t_out} at lead_time={lead} h: no sample fits"
        )

    mean, std = load_mean_std(stats_root, layout)
    times = _complete_samples(reader, times, offsets, mode, period, skip_incomplete)
    return SampleDescription(
        mode=mode,
        root=root,
        stats_root=stats_root,
        period=period,
        layout=layout,
        h=h,
        w=w,
        lat=lat,
        lon=lon,
        t_in=t_in,
        t_out=t_out,
        lead=lead,
        interval=interval,
        data_step=data_step,
        times=times,
        offsets=offsets,
        mean=mean,
        std=std,
        reader=reader,
    )


def make_reader(params, mode: str, root: str):
    """The state reader of ``params``' ``data_format`` for the dataset at ``root``:
    :class:`NpyStateReader` (``npy``) or :class:`utils.data.h5_reader.H5StateReader` (``h5``, files
    under ``<root>/<mode>/`` first)."""
    shape = (int(params["h_size"]), int(params["w_size"]))
    data_format = params.get("data_format", "npy")
    if data_format == "npy":
        return NpyStateReader(root, params["layout"], shape)
    if data_format == "h5":
        from utils.data.h5_reader import H5StateReader

        return H5StateReader(root, params["layout"], shape, mode, params.get("h5_channels"))
    raise ValueError(f"'data_format' is {data_format!r}; expected 'npy' or 'h5'")


def _require_root(root: str) -> None:
    if not os.path.isdir(root):
        raise MissingDataError(
            f"data root_dir {root!r} does not exist (make a synthetic set with "
            "`python -m tools.make_synthetic_era5 --root_dir ...` or convert ERA5 with "
            "`python -m tools.prepare_era5 ...`)"
        )


def _grid(mode: str, root: str, stats_root: str, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The grid of the training root; a separate data root that records its own grid must
    record the same one."""
    lat, lon = dataset_grid(stats_root, h, w)
    if root != stats_root and read_grid(root) is not None:
        own_lat, own_lon = dataset_grid(root, h, w)
        if not (np.allclose(own_lat, lat) and np.allclose(own_lon, lon)):
            raise GridError(
                f"the {mode} data {root!r} and the training data "
                f"{stats_root!r} record different grids"
            )
    return lat, lon


def _first_sample_time(
    reader, configured, bounds: tuple[int, int], earliest: int, multiples: dict, where: str
) -> tuple[int, int]:
    """``(data step, first sample time)``. The data step is ``configured`` (``data_step``) or
    the step of the times stored in the first three days of the period (``bounds``: its first
    and last hour; the whole period when those days hold fewer than two); each of ``multiples`` (``{key: hours}``)
    must be a multiple of it. The first sample time is the first time from ``earliest`` (the
    first time whose inputs lie in the period) on the grid of stored times."""
    first, last = bounds
    if configured:
        data_step, phase = int(configured), earliest
    else:
        stored = reader.stored_times(first, min(last, first + 71))
        if len(stored) < 2:
            stored = reader.stored_times(first, last)
        if len(stored) < 2:
            raise MissingDataError(
                f"{len(stored)} stored time(s) of the configured channels in {where}: "
                "no sample fits"
            )
        data_step, phase = time_step(stored), int(stored[0])
        _check_regular(stored, data_step, where)
    for key, value in multiples.items():
        if value % data_step:
            raise ConfigError(
                f"'{key}' ({value} h) is not a multiple of the data step "
                f"({data_step} h, {'data_step' if configured else 'read from ' + where})"
            )
    return data_step, earliest + (phase - earliest) % data_step


def _check_regular(stored: np.ndarray, data_step: int, where: str) -> None:
    """An error when the ``stored`` times step irregularly: no step between them equals their
    common divisor ``data_step`` (7 h, 8 h, 7 h, ... has a divisor of 1 h that no step takes),
    naming the steps found; gaps in a regular series (6 h, 12 h, 6 h) are missing data instead."""
    steps = np.diff(stored)
    if steps.min() == data_step:
        return
    found, counts = np.unique(steps, return_counts=True)
    listed = ", ".join(f"{int(h)} h (x{int(n)})" for h, n in zip(found, counts, strict=True))
    shown = " -> ".join(format_hours(t) for t in stored[:4])
    raise DataError(
        f"the stored times of {where} step irregularly: steps of {listed} ({shown} ...); set "
        f"'data_step' to the step the samples should have (e.g. data_step: {int(found[0])}) "
        "with 'skip_incomplete_samples: true' to index only the samples whose states are all "
        "stored"
    )


def _state_times(times: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sorted distinct ``times[i] + offsets[k]`` over all ``i``, ``k`` (int64)."""
    return np.unique((times[:, None] + offsets[None, :]).ravel())


def _complete_samples(
    reader, times: np.ndarray, offsets: np.ndarray, mode: str, period: list, skip: bool
) -> np.ndarray:
    """``times`` if every file of every sample exists; else an error listing the missing files
    or, with ``skip`` (``skip_incomplete_samples``), the times of the complete samples."""
    missing = reader.missing(_state_times(times, offsets))
    if not missing:
        return times
    if not skip:
        raise MissingDataError(
            missing_files_message(missing, f"the {mode} period {period}")
            + "\n(set skip_incomplete_samples: true to index only the complete samples)"
        )
    bad = np.array(sorted({t for t, _ in missing}), dtype=np.int64)
    complete = ~np.isin(times[:, None] + offsets[None, :], bad).any(axis=1)
    logger.warning(
        "%s: %d file(s) missing on %s; skipping %d of %d samples",
        mode,
        len(missing),
        ", ".join(dates_of(bad)[:10]),
        int((~complete).sum()),
        len(times),
    )
    times = times[complete]
    if len(times) == 0:
        raise MissingDataError(
            "no complete sample left:\n" + missing_files_message(missing, f"the {mode} period")
        )
    return times
