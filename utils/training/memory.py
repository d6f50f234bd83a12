"""Peak training memory of a configuration, estimated without allocating it.

The training step (forward with target, backward, AdamW step, twice so that the optimiser state
exists) runs on *fake* tensors (``torch._subclasses.FakeTensorMode``: shapes, dtypes and
devices, no data) under a dispatch mode that records the bytes of every tensor storage the step
creates and releases. The peak of the live bytes is the estimate; it is split into parameters,
gradients, optimiser state and the rest (activations saved for backward, transient buffers, the
input batch).

What it models: every tensor the autograd graph keeps, the bf16 copies autocast makes, the
recomputation of ``checkpoint_blocks``, the CPU kernels' choice of attention (the flash kernel:
no ``L x L`` matrix is stored, as with the flash/efficient CUDA kernels). What it does not:
the CUDA context (about 0.5-1 GiB), the caching allocator's rounding and fragmentation, cuBLAS /
cuDNN workspaces, and NCCL buffers. With DDP every rank additionally holds gradient buckets, one
more copy of the trainable gradients (``ddp_buckets_bytes``).
"""

from __future__ import annotations

import weakref
from contextlib import nullcontext

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from networks.vamoe import VAMoE
from utils.training.optimizer import build_optimizer


class LiveStorageBytes(TorchDispatchMode):
    """Tracks the bytes of the tensor storages created by the ops run under it and still alive.

    ``live`` is the current total and ``peak`` its maximum; ``mark()`` starts a new peak window.
    A storage counts from the op that returns it first until it is garbage collected.
    """

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen = WeakIdKeyDictionary()

    def mark(self) -> None:
        self.peak = self.live

    def track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage in self._seen:
            return
        nbytes = storage.nbytes()
        self._seen[storage] = nbytes
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._release, nbytes)

    def _release(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.track(t)
        return out


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages of ``tensors``."""
    seen = {}
    for t in tensors:
        seen[id(t.untyped_storage())] = t.untyped_storage().nbytes()
    return sum(seen.values())


def training_memory(params, batch: int, amp_dtype: torch.dtype | None = None) -> dict:
    """Peak memory of one training step of ``params`` at ``batch`` samples per device, in bytes.

    Returns ``peak_bytes`` (the estimate) and its parts ``params_bytes``, ``grads_bytes``,
    ``optimizer_bytes`` (AdamW moments and step counters) and ``activations_bytes`` (the rest at
    the peak), plus ``ddp_buckets_bytes`` (what DDP adds on every rank).
    """

    tracker = LiveStorageBytes()
    with FakeTensorMode(), tracker:
        model = VAMoE.from_params(params)
        model.train()
        optimizer = build_optimizer(model, params)
        shape = (batch, params.layout.n_channels, params.h_size, params.w_size)
        x, y = torch.randn(shape), torch.randn(shape)
        autocast = nullcontext() if amp_dtype is None else torch.autocast("cpu", dtype=amp_dtype)
        for step in range(2):
            if step == 1:
                tracker.mark()
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = model(x, y).loss
            loss.backward()
            optimizer.step()
            del loss
        trainable = [p for p in model.parameters() if p.requires_grad]
        param_bytes = storage_bytes(list(model.parameters()) + list(model.buffers()))
        grad_bytes = storage_bytes(p.grad for p in trainable)
        state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
        optimizer_bytes = storage_bytes(state)
    peak = tracker.peak
    return {
        "batch": batch,
        "amp": None if amp_dtype is None else str(amp_dtype).split(".")[-1],
        "checkpoint_blocks": bool(params.checkpoint_blocks),
        "peak_bytes": peak,
        "params_bytes": param_bytes,
        "grads_bytes": grad_bytes,
        "optimizer_bytes": optimizer_bytes,
        "activations_bytes": peak - param_bytes - grad_bytes - optimizer_bytes,
        "ddp_buckets_bytes": grad_bytes,
    }


GIB = 2**30
CAPACITIES_GB = (40, 80)


def memory_row(params, batch: int, amp) -> dict:
    """:func:`training_memory` in GiB with the 40/80 GB verdicts."""
    est = training_memory(params, batch, amp)
    row = {"config": params.config_name, **est}
    row.update(
        {
            k.replace("_bytes", "_gib"): round(v / GIB, 2)
            for k, v in est.items()
            if k.endswith("_bytes")
        }
    )
    ddp_total = est["peak_bytes"] + est["ddp_buckets_bytes"]
    row["peak_ddp_gib"] = round(ddp_total / GIB, 2)
    for gb in CAPACITIES_GB:
        row[f"fits_{gb}gb"] = ddp_total <= 0.9 * gb * 1e9
    return row


def format_memory_row(row: dict) -> str:
    fits = ", ".join(f"{gb} GB {'yes' if row[f'fits_{gb}gb'] else 'no'}" for gb in CAPACITIES_GB)
    return (
        f"{row['config']} batch {row['batch']} amp {row['amp'] or 'fp32'} checkpoint_blocks "
        f"{row['checkpoint_blocks']}: peak {row['peak_gib']:.2f} GiB (params {row['params_gib']:.2f}, "
        f"grads {row['grads_gib']:.2f}, AdamW {row['optimizer_gib']:.2f}, activations "
        f"{row['activations_gib']:.2f}); with DDP buckets {row['peak_ddp_gib']:.2f} GiB; fits: {fits}"
    )
