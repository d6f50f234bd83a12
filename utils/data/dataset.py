"""ERA5 samples read from the one-``.npy``-per-field layout or the one-HDF5-file-per-year layout
(``data_format``; both described in ``docs/design.md``).

``ERA5Dataset(params, mode)`` reads the samples of ``params.<mode>_period`` that
:func:`utils.data.samples.resolve_samples` resolves (data root, grid, data step, sample times,
statistics: see :mod:`utils.data.samples`); :meth:`ERA5Dataset.from_description` reads an already
resolved :class:`utils.data.samples.SampleDescription`. Item ``i`` is ``(inp, tar, time_hours)``:
``inp`` float32 ``(C, H, W)`` (``(t_in, C, H, W)`` when ``t_in > 1``), ``tar`` ``(T, C, H, W)``
(the time axis also for T = 1), z-score normalised per channel in the order of ``params.layout``,
and the valid time of the (last) input state in hours since 1970-01-01T00:00 UTC.

Every read checks the ``.npy`` header (shape ``(h_size, w_size)``, float32) and every sample is
checked for NaN/inf; ``check_data_values: true`` also scans every field of the period at start-up
(otherwise the first sample is read). All errors name the files (and dates) at fault.

The files are read by the description's state reader, chosen by ``data_format``:
:class:`utils.data.npy_reader.NpyStateReader` (``npy``, one ``os.preadv`` per file, scattering the
128-byte header into a scratch buffer and the data straight into a preallocated batch array) or
:class:`utils.data.h5_reader.H5StateReader` (``h5``, one HDF5 file per year); either way each
channel is normalised here while it is still in cache, so the same sample is bit-identical from
both formats. :meth:`ERA5Dataset.read_batch` reads a whole batch at once (no per-sample
collation); :mod:`utils.data.loader` batches and shards it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.data.npy_layout import DataFileError, MissingDataError, channel_paths
from utils.data.samples import SampleDescription, resolve_samples


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


def _described(name: str, doc: str) -> property:
    """A read-only dataset attribute that is the field ``name`` of its sample description."""
    return property(lambda self: getattr(self.samples, name), doc=doc)


class ERA5Dataset(Dataset):
    """Reads the samples of one mode (``train``, ``valid`` or ``test``) of a configuration, as
    resolved by :func:`utils.data.samples.resolve_samples` (see the module doc).

    ``ERA5Dataset(params, mode)`` resolves the samples and reads them;
    :meth:`from_description` reads an already resolved :class:`SampleDescription`.
    """

    mode = _described("mode", "``train``, ``valid`` or ``test``.")
    root = _described("root", "The dataset the states are read from.")
    stats_root = _described("stats_root", "The training dataset (statistics and grid).")
    period = _described("period", "``<mode>_period`` as configured.")
    layout = _described("layout", "The channel layout; its order is the ``C`` axis.")
    h = _described("h", "Grid rows ``H``.")
    w = _described("w", "Grid columns ``W``.")
    lat = _described("lat", "Latitudes in degrees, ``(H,)``.")
    lon = _described("lon", "Longitudes in degrees, ``(W,)``.")
    t_in = _described("t_in", "Input states per sample.")
    t_out = _described("t_out", "Target states per sample.")
    lead = _described("lead", "``lead_time``: hours between consecutive states of a sample.")
    interval = _described("interval", "Hours between consecutive sample times.")
    data_step = _described("data_step", "Hours between stored times.")
    times = _described("times", "int64 ``(N,)``: the valid time of each sample's (last) input.")
    _offsets = _described(
        "offsets", "int64 ``(t_in + t_out,)``: hours from a sample's time to its states."
    )
    mean = _described("mean", "float32 ``(C,)`` channel means in physical units.")
    std = _described("std", "float32 ``(C,)`` channel standard deviations in physical units.")
    reader = _described("reader", "The state reader of the configured ``data_format``.")

    def __init__(self, params, mode: str):
        self._open(resolve_samples(params, mode), bool(params.get("check_data_values", False)))

    @classmethod
    def from_description(cls, samples: SampleDescription, check_values: bool = False):
        """A dataset reading the samples ``samples`` describes; ``check_values`` reads every
        field they use first (``check_data_values``), otherwise the first sample's files."""
        dataset = cls.__new__(cls)
        dataset._open(samples, check_values)
        return dataset

    def _open(self, samples: SampleDescription, check_values: bool) -> None:
        self.samples = samples
        self._inv_std = (1.0 / samples.std.astype(np.float64)).astype(np.float32)
        if check_values:
            self.check_values()
        else:  # at least the first sample's files (shape, dtype, values) before training starts
            self._load([0])

    # ----------------------------------------------------------------------------- indexing
    def __len__(self) -> int:
        return len(self.times)

    def sample_times(self, i: int) -> tuple[list, list]:
        """Valid times (hours since epoch) of the input states and of the target states of item i."""
        return self.samples.sample_times(i)

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
        needed = self.samples.state_times()
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
