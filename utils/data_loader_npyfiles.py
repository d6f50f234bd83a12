"""ERA5 samples from the one-``.npy``-per-variable-level-and-hour layout (SPEC.md section 5).

``ERA5NpyDataset(params, mode)`` indexes the samples of ``params.<mode>_period``: input times every
``<mode>_interval`` hours from the period's first day 00:00, such that every input state
(``t_in`` of them, ``lead_time`` hours apart, the last at the sample time) and every target state
(``t_out_<mode>`` of them at ``+lead_time``, ``+2 lead_time``, ...) lies within the period (first
day 00:00 to last day 23:00). Item ``i`` is ``(inp, tar, time_hours)``: ``inp`` float32 ``(C, H, W)``
(``(t_in, C, H, W)`` when ``t_in > 1``), ``tar`` ``(C, H, W)`` (``(T, C, H, W)`` when ``T > 1``),
z-score normalised per channel in the order of ``params.layout``, and the valid time of the (last)
input state in hours since 1970-01-01T00:00 UTC.

Start-up scans the period once (one ``listdir`` per day directory) and reports every missing file
in one error; with ``skip_incomplete_samples: true`` it instead indexes only the complete samples.
Every read checks the ``.npy`` header (shape ``(h_size, w_size)``, float32) and every sample is
checked for NaN/inf; ``check_data_values: true`` also scans every field of the period at start-up.
All errors name the files (and dates) at fault.

Reading is done with one ``os.preadv`` per file, scattering the 128-byte header into a scratch
buffer and the data straight into a preallocated batch array, each channel normalised while it is
still in cache. :meth:`ERA5NpyDataset.read_batch` reads a whole batch at once (no per-sample
collation). ``get_data_loader`` reads ahead with threads (:class:`ThreadedBatchLoader`, the
default ``loader_backend: threads``) or DataLoader worker processes (``processes``; the batch
array then lives in shared memory, so it crosses to the main process without a copy).
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from utils.era5_layout import (
    DataFileError,
    MissingDataError,
    channel_paths,
    dates_of,
    from_hours,
    missing_files_message,
    npy_header,
    period_bounds,
    read_field,
    scan_missing,
)
from utils.errors import ConfigError
from utils.statistics import load_mean_std

logger = logging.getLogger(__name__)

MODES = ("train", "valid", "test")
_HAS_PREADV = hasattr(os, "preadv")


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


class ERA5NpyDataset(Dataset):
    """Samples of one mode (``train``, ``valid`` or ``test``) of a configuration (see module doc)."""

    def __init__(self, params, mode: str):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.root = str(params["root_dir"])
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
                "`python -m utils.make_synthetic_era5 --root_dir ...` or convert ERA5 with "
                "`python -m utils.prepare_era5 ...`)"
            )

        first, last = period_bounds(self.period)
        self._offsets = np.arange(-(self.t_in - 1), self.t_out + 1, dtype=np.int64) * self.lead
        times = np.arange(
            first - self._offsets[0], last - self._offsets[-1] + 1, self.interval, dtype=np.int64
        )
        if len(times) == 0:
            raise ConfigError(
                f"'{mode}_period' {self.period} is too short for t_in={self.t_in} and "
                f"t_out_{mode}={self.t_out} at lead_time={self.lead} h: no sample fits"
            )

        self.mean, self.std = load_mean_std(self.root, self.layout)
        self._inv_std = (1.0 / self.std.astype(np.float64)).astype(np.float32)

        needed = np.unique((times[:, None] + self._offsets[None, :]).ravel())
        missing = scan_missing(self.root, self.layout.channels, needed)
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

        self._header = npy_header((self.h, self.w), np.float32)
        self._nbytes = self.h * self.w * 4
        if params.get("check_data_values", False):
            self.check_values()
        else:  # at least the first sample's files (shape, dtype, values) before training starts
            self._load([0])

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
    def _read_slow(self, path: str, dst: np.ndarray) -> None:
        dst[...] = read_field(path, (self.h, self.w), check_finite=False)  # checked once normalised

    def _read_state(
        self, time_hours: int, dst: np.ndarray, scratch: bytearray, normalise: bool = False
    ) -> None:
        """Read every channel at ``time_hours`` into ``dst`` ``(C, H, W)``, in physical units or
        z-score normalised. Each channel is normalised right after its read, while it is still in
        the CPU cache, so the batch is written to memory once."""
        header, expected = self._header, len(self._header) + self._nbytes
        for c, path in enumerate(self.paths(time_hours)):
            out = dst[c]
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise MissingDataError(
                    f"missing data file {path} ({from_hours(time_hours):%Y-%m-%d %H:%M})"
                ) from None
            except OSError as err:
                raise DataFileError(f"cannot read {path}: {err.strerror}") from None
            try:
                if _HAS_PREADV:
                    n = os.preadv(fd, [scratch, out, _TAIL], 0)
                else:  # pragma: no cover - platforms without preadv
                    with os.fdopen(os.dup(fd), "rb") as f:
                        n = f.readinto(scratch) + f.readinto(memoryview(out).cast("B"))
                        n += len(f.read(1))
            except OSError as err:  # a directory, an I/O error
                raise DataFileError(f"cannot read {path}: {err.strerror}") from None
            finally:
                os.close(fd)
            if n != expected or scratch != header:
                self._read_slow(path, out)  # other header layout, or a wrong file: check it fully
            if normalise:
                np.subtract(out, self.mean[c], out=out)
                np.multiply(out, self._inv_std[c], out=out)
                if not math.isfinite(float(out.sum())):  # still in cache: cheap
                    raise DataFileError(
                        f"NaN/inf values in {path} ({from_hours(time_hours):%Y-%m-%d %H:%M})"
                    )

    def _load(self, indices: Sequence[int], pin_memory: bool = False):
        b = len(indices)
        c = self.layout.n_channels
        inp_t = _empty((b, self.t_in, c, self.h, self.w), pin_memory)
        tar_t = _empty((b, self.t_out, c, self.h, self.w), pin_memory)
        inp, tar = inp_t.numpy(), tar_t.numpy()
        scratch = bytearray(len(self._header))
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
                self._read_state(t + int(offset), dst, scratch, normalise=True)
        return inp_t, tar_t, times

    def __getitem__(self, i: int):
        inp, tar, times = self._load([i])
        inp = inp[0, 0] if self.t_in == 1 else inp[0]
        tar = tar[0, 0] if self.t_out == 1 else tar[0]
        return inp, tar, int(times[0])

    def __getitems__(self, indices: Sequence[int]) -> _Batch:
        """A whole batch (see :meth:`read_batch`), for a DataLoader."""
        return _Batch(self.read_batch(indices))

    def read_batch(self, indices: Sequence[int], pin_memory: bool = False) -> list:
        """``[inp (B, C, H, W) or (B, t_in, C, H, W), tar (B, C, H, W) or (B, T, C, H, W),
        time_hours int64 (B,)]`` of the samples ``indices``, read into one buffer each."""
        inp, tar, times = self._load(indices, pin_memory)
        if self.t_in == 1:
            inp = inp[:, 0]
        if self.t_out == 1:
            tar = tar[:, 0]
        return [inp, tar, torch.from_numpy(times)]

    # ----------------------------------------------------------------------------- checks
    def check_values(self) -> None:
        """Read every field the samples use; one error lists every bad file (shape, dtype, NaN/inf)."""
        needed = np.unique((self.times[:, None] + self._offsets[None, :]).ravel())
        state = np.empty((self.layout.n_channels, self.h, self.w), dtype=np.float32)
        scratch = bytearray(len(self._header))
        problems = []
        for t in needed:
            try:
                self._read_state(int(t), state, scratch)
            except (DataFileError, MissingDataError) as err:
                problems.append(str(err))
                continue
            finite = np.isfinite(state).reshape(state.shape[0], -1).all(axis=1)
            if not finite.all():
                paths = self.paths(int(t))
                problems += [f"{paths[c]}: NaN/inf values" for c in np.flatnonzero(~finite)]
        if problems:
            raise DataFileError(
                f"{len(problems)} bad data file(s) in the {self.mode} period "
                f"{self.period}:\n  "
                + "\n  ".join(problems[:20])
                + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
            )

    def __repr__(self) -> str:
        return (
            f"ERA5NpyDataset({self.mode}, {len(self)} samples, {self.layout.n_channels} "
            f"channels, {self.h}x{self.w}, root={self.root!r})"
        )


_TAIL = bytearray(1)  # a byte past the expected end: a longer file reads into it and is rechecked


def _world(distributed: bool) -> tuple[int, int]:
    if not distributed:
        return 1, 0
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))


class ShardedEpochSampler(Sampler):
    """Sample order that is a pure function of ``(seed, epoch)``, sharded over ranks, resumable.

    Training (``shuffle=True``) permutes the indices with a generator seeded by ``seed + epoch``
    and drops the tail that does not split evenly, so every rank gets the same number of samples
    (equal step counts keep DDP's collectives in step). Evaluation keeps the order and gives rank
    r the indices ``r, r + world, ...`` without padding (no sample is scored twice).
    ``start`` skips the first samples of this rank's share: a run resumed mid-epoch continues
    with exactly the samples an uninterrupted run would have seen.
    """

    def __init__(
        self, n_samples: int, world: int = 1, rank: int = 0, shuffle: bool = False, seed: int = 0
    ):
        self.n_samples, self.world, self.rank = n_samples, world, rank
        self.shuffle, self.seed = shuffle, seed
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> list:
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n_samples, generator=generator).tolist()
            order = order[: self.n_samples // self.world * self.world]
        else:
            order = list(range(self.n_samples))
        return order[self.rank :: self.world][self.start :]

    def __iter__(self):
        return iter(self._indices())

    def __len__(self) -> int:
        n = self.n_samples // self.world * self.world if self.shuffle else self.n_samples
        return max(0, len(range(self.rank, n, self.world)) - self.start)


class ThreadedBatchLoader:
    """Batches read ahead by a pool of threads in the training process (``loader_backend:
    threads``).

    Reading is ``os.preadv`` and numpy arithmetic, both of which release the GIL, so threads
    overlap like worker processes do, without their cost: a worker process must put every batch
    in fresh shared memory (tens of thousands of page faults per 70 MB batch), while a thread
    reads into ordinary memory (huge pages with ``THP_MEM_ALLOC_ENABLE=1``) or, on a GPU
    machine, straight into pinned memory from the CUDA caching host allocator, which reuses a
    buffer once its batch is no longer referenced. Same interface as the DataLoader the trainer
    uses: ``batch_size``, ``sampler``, ``dataset``, ``len()`` and iteration.
    """

    def __init__(
        self,
        dataset: ERA5NpyDataset,
        batch_size: int,
        sampler: Sampler,
        drop_last: bool,
        num_threads: int,
        prefetch_factor: int,
        pin_memory: bool,
    ):
        self.dataset, self.batch_size, self.sampler = dataset, batch_size, sampler
        self.drop_last, self.pin_memory = drop_last, pin_memory
        self.num_threads = num_threads
        self.ahead = max(1, num_threads * prefetch_factor)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _batches(self) -> list:
        indices = list(self.sampler)
        batches = [
            indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)
        ]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def __iter__(self):
        batches = self._batches()
        if self.num_threads == 0:
            for indices in batches:
                yield self.dataset.read_batch(indices, self.pin_memory)
            return
        pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="era5-reader")
        pending = deque()
        try:
            for indices in batches:
                pending.append(pool.submit(self.dataset.read_batch, indices, self.pin_memory))
                if len(pending) > self.ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def get_data_loader(params, distributed: bool, run_mode: str):
    """``(loader, dataset, sampler)`` for ``run_mode`` in train/valid/test.

    Per-rank batch = the global batch size (``batch_size``, ``valid_batch_size`` or
    ``eval_batch_size``) // world size. The sampler is a :class:`ShardedEpochSampler` in every
    case (call ``sampler.set_epoch`` each epoch): training shuffles deterministically per epoch
    and drops the last incomplete batch; validation and test keep the order.
    ``num_data_workers`` reader threads (``loader_backend: threads``, the default) or worker
    processes (``processes``) read ahead; 0 reads in the calling thread.
    """
    if run_mode not in MODES:
        raise ValueError(f"run_mode must be one of {MODES}, got {run_mode!r}")
    key = {"train": "batch_size", "valid": "valid_batch_size", "test": "eval_batch_size"}[run_mode]
    world, rank = _world(distributed)
    global_batch = int(params[key])
    if global_batch % world:
        raise ConfigError(f"'{key}' ({global_batch}) must be divisible by the world size ({world})")
    batch = global_batch // world
    dataset = ERA5NpyDataset(params, run_mode)
    train = run_mode == "train"
    sampler = ShardedEpochSampler(
        len(dataset), world, rank, shuffle=train, seed=int(params.get("seed", 0) or 0)
    )
    workers = int(params.get("num_data_workers", 0) or 0)
    prefetch = int(params.get("prefetch_factor", 2) or 2)
    pin = torch.cuda.is_available()
    backend = params.get("loader_backend", "threads")
    if backend not in ("threads", "processes"):
        raise ConfigError(f"'loader_backend' is {backend!r}; expected 'threads' or 'processes'")
    if backend == "threads":
        loader = ThreadedBatchLoader(dataset, batch, sampler, train, workers, prefetch, pin)
        return loader, dataset, sampler
    extra = {}
    if workers > 0:
        extra.update(prefetch_factor=prefetch, persistent_workers=True)
    loader = DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        drop_last=train,
        num_workers=workers,
        pin_memory=pin,
        collate_fn=collate_batches,
        **extra,
    )
    return loader, dataset, sampler
