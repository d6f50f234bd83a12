"""ERA5 samples from the one-``.npy``-per-field layout or the one-HDF5-file-per-year layout
(``data_format``; both described in ``docs/design.md``).

``ERA5Dataset(params, mode)`` indexes the samples of ``params.<mode>_period`` in the dataset at
``<mode>_root_dir`` (``valid_root_dir`` / ``test_root_dir``; ``root_dir`` when unset or in
training). A period's ends are dates or date-times (``'2019-01-05T01'``; a bare end date includes
its whole day). The data step (hours between stored times) is ``data_step`` or, when that is null,
read from the times the period's files hold; ``lead_time`` and ``<mode>_interval`` must be
multiples of it. Input times run every ``<mode>_interval`` hours from the first stored time of the
period at which a whole sample fits, such that every input state (``t_in`` of them, ``lead_time``
hours apart, the last at the sample time) and every target state (``t_out_<mode>`` of them at
``+lead_time``, ``+2 lead_time``, ...) lies within the period. Normalisation statistics always
come from the training ``root_dir``; the grid (``lat``, ``lon`` in degrees) from the dataset's
``statistic/grid.json`` (:func:`utils.grid.dataset_grid`). Item ``i`` is
``(inp, tar, time_hours)``: ``inp`` float32 ``(C, H, W)`` (``(t_in, C, H, W)`` when ``t_in > 1``), ``tar`` ``(T, C, H, W)`` (the time axis also for T = 1),
z-score normalised per channel in the order of ``params.layout``, and the valid time of the (last)
input state in hours since 1970-01-01T00:00 UTC.

Start-up scans the period once (one ``listdir`` per day directory) and reports every missing file
in one error; with ``skip_incomplete_samples: true`` it instead indexes only the complete samples.
Every read checks the ``.npy`` header (shape ``(h_size, w_size)``, float32) and every sample is
checked for NaN/inf; ``check_data_values: true`` also scans every field of the period at start-up.
All errors name the files (and dates) at fault.

The files are read by a state reader chosen by ``data_format``: :class:`utils.data.npy_reader.NpyStateReader` (``npy``,
one ``os.preadv`` per file, scattering the 128-byte header into a scratch buffer and the data
straight into a preallocated batch array) or :class:`utils.data.h5_reader.H5StateReader` (``h5``, one
HDF5 file per year); either way each channel is normalised here while it is still in cache, so
the same sample is bit-identical from both formats. :meth:`ERA5Dataset.read_batch` reads a
whole batch at once (no per-sample collation); :mod:`utils.data.loader` batches and shards it.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.data.npy_layout import (
    DataFileError,
    MissingDataError,
    channel_paths,
    missing_files_message,
)
from utils.data.npy_reader import NpyStateReader
from utils.data.statistics import load_mean_std
from utils.errors import ConfigError
from utils.grid import GridError, dataset_grid, read_grid
from utils.times import dates_of, period_bounds, time_step

logger = logging.getLogger(__name__)

MODES = ("train", "valid", "test")


class _Batch(list):
    """A batch already assembled by ``__getitems__``; :func:`collate_batches` passes it through."""


def collate_batches(data):
    """Collate function of the loaders: batches from ``__getitems__`` as they are, otherwise
    :func:`torch.utils.data.default_collate`."""
    if isinstance(data, _Batch):
        return list(data)
    return torch.utils.data.default_collate(data)


def _empty(shape: Sequence[int], pin_memory: bool = False) -> torch.Tensor:
    """Float32 batch buffer. In a DataLoader worker process it is allocated in shared memory
    directly (the batch then crosses to the main process without a copy); with ``pin_memory`` it
    is page-locked, from the CUDA caching host allocator, which reuses freed buffers."""
    if torch.utils.data.get_worker_info() is not None:
        try:
            elem = torch.empty(0, dtype=torch.float32)
            storage = elem._typed_storage()._new_shared(math.prod(shape), device="cpu")
            return elem.new(storage).resize_(*shape)
        except Exception:  # private API changed: fall back to an ordinary allocation
            pass
    return torch.empty(*shape, dtype=torch.float32, pin_memory=pin_memory)


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


class ERA5Dataset(Dataset):
    """Samples of one mode (``train``, ``valid`` or ``test``) of a configuration (see module doc)."""

    def __init__(self, params, mode: str):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.stats_root = str(params["root_dir"])
        self.root = str(params.get(f"{mode}_root_dir") or self.stats_root)
        self.layout = params["layout"]
        self.h, self.w = int(params["h_size"]), int(params["w_size"])
        self.t_in = int(params["t_in"])
        self.t_out = int(params[f"t_out_{mode}"])
        self.lead = int(params["lead_time"])
        self.interval = int(params[f"{mode}_interval"])
        self.period = list(params[f"{mode}_period"])
        skip_incomplete = bool(params.get("skip_incomplete_samples", False))
        if not os.path.isdir(self.root):
            raise MissingDataError(
                f"data root_dir {self.root!r} does not exist (make a synthetic set with "
                "`python -m tools.make_synthetic_era5 --root_dir ...` or convert ERA5 with "
                "`python -m tools.prepare_era5 ...`)"
            )
        self.lat, self.lon = self._grid()

        first, last = period_bounds(self.period)
        self._offsets = np.arange(-(self.t_in - 1), self.t_out + 1, dtype=np.int64) * self.lead
        self.reader = make_reader(params, mode, self.root)
        start = self._first_sample_time(params, first, last)
        times = np.arange(start, last - self._offsets[-1] + 1, self.interval, dtype=np.int64)
        if len(times) == 0:
            raise ConfigError(
                f"'{mode}_period' {self.period} is too short for t_in={self.t_in} and "
                f"t_out_{mode}={self.t_out} at lead_time={self.lead} h: no sample fits"
            )

        self.mean, self.std = load_mean_std(self.stats_root, self.layout)
        self._inv_std = (1.0 / self.std.astype(np.float64)).astype(np.float32)

        needed = np.unique((times[:, None] + self._offsets[None, :]).ravel())
        missing = self.reader.missing(needed)
        if missing:
            if not skip_incomplete:
                raise MissingDataError(
                    missing_files_message(missing, f"the {mode} period {self.period}")
                    + "\n(set skip_incomplete_samples: true to index only the complete samples)"
                )
            bad = np.array(sorted({t for t, _ in missing}), dtype=np.int64)
            complete = ~np.isin(times[:, None] + self._offsets[None, :], bad).any(axis=1)
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
                    "no complete sample left:\n"
                    + missing_files_message(missing, f"the {mode} period")
                )
        self.times = times

        if params.get("check_data_values", False):
            self.check_values()
        else:  # at least the first sample's files (shape, dtype, values) before training starts
            self._load([0])

    def _grid(self) -> tuple[np.ndarray, np.ndarray]:
        """The grid of the training root; a separate data root that records its own grid must
        record the same one."""
        lat, lon = dataset_grid(self.stats_root, self.h, self.w)
        if self.root != self.stats_root and read_grid(self.root) is not None:
            own_lat, own_lon = dataset_grid(self.root, self.h, self.w)
            if not (np.allclose(own_lat, lat) and np.allclose(own_lon, lon)):
                raise GridError(
                    f"the {self.mode} data {self.root!r} and the training data "
                    f"{self.stats_root!r} record different grids"
                )
        return lat, lon

    def _first_sample_time(self, params, first: int, last: int) -> int:
        """The first sample time: the first stored time from which a sample's inputs lie in the
        period. ``lead_time`` and ``<mode>_interval`` must be multiples of the data step:
        ``data_step``, or the step of the times stored in the period's first three days (the
        whole period when those hold fewer than two)."""
        earliest = first - int(self._offsets[0])
        configured = params.get("data_step")
        where = f"the {self.mode} period {self.period} under {self.root}"
        if configured:
            self.data_step = int(configured)
            phase = earliest
        else:
            stored = self.reader.stored_times(first, min(last, first + 71))
            if len(stored) < 2:
                stored = self.reader.stored_times(first, last)
            if len(stored) < 2:
                raise MissingDataError(
                    f"{len(stored)} stored time(s) of the configured channels in {where}: "
                    "no sample fits"
                )
            self.data_step, phase = time_step(stored), int(stored[0])
        for key, value in (("lead_time", self.lead), (f"{self.mode}_interval", self.interval)):
            if value % self.data_step:
                raise ConfigError(
                    f"'{key}' ({value} h) is not a multiple of the data step "
                    f"({self.data_step} h, {'data_step' if configured else 'read from ' + where})"
                )
        return earliest + (phase - earliest) % self.data_step

    # ----------------------------------------------------------------------------- indexing
    def __len__(self) -> int:
        return len(self.times)

    def sample_times(self, i: int) -> tuple[list, list]:
        """Valid times (hours since epoch) of the input states and of the target states of item i."""
        steps = [int(self.times[i] + o) for o in self._offsets]
        return steps[: self.t_in], steps[self.t_in :]

    def paths(self, time_hours: int) -> list[str]:
        """Files of the state at ``time_hours``, in channel order."""
        return channel_paths(self.root, self.layout, int(time_hours))

    # ----------------------------------------------------------------------------- reading
    def _normalise(self, time_hours: int, c: int, out: np.ndarray) -> None:
        """z-score channel ``c`` of the state at ``time_hours`` in place, and check it is finite."""
        np.subtract(out, self.mean[c], out=out)
        np.multiply(out, self._inv_std[c], out=out)
        if not math.isfinite(float(out.sum())):  # still in cache: cheap
            raise DataFileError(f"NaN/inf values in {self.reader.source(time_hours, c)}")

    def _read_state(self, time_hours: int, dst: np.ndarray, normalise: bool = False) -> None:
        """Every channel at ``time_hours`` into ``dst`` ``(C, H, W)``, in physical units or
        z-score normalised (each channel right after its read, while it is in the CPU cache)."""
        self.reader.read(time_hours, dst, self._normalise if normalise else None)

    def _load(self, indices: Sequence[int], pin_memory: bool = False):
        b = len(indices)
        c = self.layout.n_channels
        inp_t = _empty((b, self.t_in, c, self.h, self.w), pin_memory)
        tar_t = _empty((b, self.t_out, c, self.h, self.w), pin_memory)
        inp, tar = inp_t.numpy(), tar_t.numpy()
        times = np.empty(b, dtype=np.int64)
        for j, i in enumerate(indices):
            i = int(i)
            if i < 0:
                i += len(self)
            if not 0 <= i < len(self):
                raise IndexError(f"sample {i} out of range ({len(self)} samples)")
            t = int(self.times[i])
            times[j] = t
            for k, offset in enumerate(self._offsets):
                dst = inp[j, k] if k < self.t_in else tar[j, k - self.t_in]
                self._read_state(t + int(offset), dst, normalise=True)
        return inp_t, tar_t, times

    def __getitem__(self, i: int):
        inp, tar, times = self._load([i])
        inp = inp[0, 0] if self.t_in == 1 else inp[0]
        tar = tar[0]
        return inp, tar, int(times[0])

    def __getitems__(self, indices: Sequence[int]) -> _Batch:
        """A whole batch (see :meth:`read_batch`), for a DataLoader."""
        return _Batch(self.read_batch(indices))

    def read_batch(self, indices: Sequence[int], pin_memory: bool = False) -> list:
        """``[inp (B, C, H, W) or (B, t_in, C, H, W), tar (B, T, C, H, W), time_hours int64
        (B,)]`` of the samples ``indices``, read into one buffer each."""
        inp, tar, times = self._load(indices, pin_memory)
        if self.t_in == 1:
            inp = inp[:, 0]
        return [inp, tar, torch.from_numpy(times)]

    # ----------------------------------------------------------------------------- checks
    def check_values(self) -> None:
        """Read every field the samples use; one error lists every bad file (shape, dtype, NaN/inf)."""
        needed = np.unique((self.times[:, None] + self._offsets[None, :]).ravel())
        state = np.empty((self.layout.n_channels, self.h, self.w), dtype=np.float32)
        problems = []
        for t in needed:
            try:
                self._read_state(int(t), state)
            except (DataFileError, MissingDataError) as err:
                problems.append(str(err))
                continue
            finite = np.isfinite(state).reshape(state.shape[0], -1).all(axis=1)
            if not finite.all():
                problems += [
                    f"{self.reader.source(int(t), c)}: NaN/inf values"
                    for c in np.flatnonzero(~finite)
                ]
        if problems:
            raise DataFileError(
                f"{len(problems)} bad data file(s) in the {self.mode} period "
                f"{self.period}:\n  "
                + "\n  ".join(problems[:20])
                + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
            )

    def __repr__(self) -> str:
        return (
            f"ERA5Dataset({self.mode}, {len(self)} samples, {self.layout.n_channels} "
            f"channels, {self.h}x{self.w}, root={self.root!r})"
        )
