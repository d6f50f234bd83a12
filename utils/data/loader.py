"""Batches of :class:`utils.data.dataset.ERA5Dataset` for training, validation and test.

``get_data_loader(params, distributed, mode)`` gives ``(loader, dataset, sampler)``. The sampler
(:class:`ShardedEpochSampler`) orders the samples as a pure function of ``(seed, epoch)`` and
shards them over ranks; the loader reads ahead with threads (:class:`ThreadedBatchLoader`, the
default ``loader_backend: threads``) or DataLoader worker processes (``processes``; the batch
array then lives in shared memory, so it crosses to the main process without a copy).
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.utils.data import DataLoader, Sampler

from utils.data.dataset import ERA5Dataset, collate_batches
from utils.data.samples import MODES
from utils.errors import ConfigError


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
        dataset: ERA5Dataset,
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

    Per-rank batch = the global batch size (``batch_size`` or ``valid_batch_size``) // world
    size, which must divide it; in evaluation (``test``) ``eval_batch_size`` / world size rounded
    up (at least 1: any number of ranks can evaluate). The sampler is a :class:`ShardedEpochSampler` in every
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
    if global_batch % world and run_mode != "test":
        raise ConfigError(f"'{key}' ({global_batch}) must be divisible by the world size ({world})")
    batch = -(-global_batch // world)
    dataset = ERA5Dataset(params, run_mode)
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
