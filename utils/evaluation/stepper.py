"""The autoregressive stepper shared by training, validation and evaluation.

A :class:`Stepper` wraps a one-step forecaster that works in normalised units and rolls it out:
``x_k = step(x_{k-1})`` with ``x_0`` the normalised input state, each forecast fed back as the
next input, and gives the states back in physical units (``phys = x * std + mean``, the data's
per-channel z-score statistics) for scoring. Shapes: states ``(B, C, H, W)``, targets
``(B, T, C, H, W)``; see ``docs/design.md`` (evaluation) for the lead convention.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext

import numpy as np
import torch

from utils.evaluation.metrics import accumulation_dtype

__all__ = ["Stepper", "StepOutput", "resolve_amp_dtype", "autocast_context"]


def resolve_amp_dtype(amp_dtype, device) -> torch.dtype | None:
    """``None``/``"bf16"``/``"fp16"``/torch dtype -> autocast dtype; fp16 is CUDA-only here."""
    if amp_dtype is None or amp_dtype is False:
        return None
    table = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "half": torch.float16,
    }
    dtype = table.get(amp_dtype, amp_dtype) if isinstance(amp_dtype, str) else amp_dtype
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"amp_dtype must be bf16 or fp16, got {amp_dtype!r}")
    kind = torch.device(device).type
    if kind == "cpu" and dtype == torch.float16:
        raise ValueError("fp16 autocast is not supported on CPU; use bf16")
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"autocast is only supported on cpu and cuda, not {kind!r}")
    return dtype


def autocast_context(device, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device`` (from :func:`resolve_amp_dtype`); a no-op
    context for ``None``."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def _per_channel(values, device, dtype) -> torch.Tensor:
    """Per-channel statistics ``(C,)`` (tensor, array or list) as a ``(1, C, 1, 1)`` tensor."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
    t = torch.as_tensor(np.asarray(values, dtype=np.float64), dtype=dtype, device=device)
    return t.reshape(1, -1, 1, 1)


class StepOutput:
    """One step of a rollout: ``forecast`` ``(B, C, H, W)`` float32 normalised (what is fed back)
    and ``output``, whatever the step function returned (e.g. a model output with its loss)."""

    __slots__ = ("forecast", "output")

    def __init__(self, forecast: torch.Tensor, output):
        self.forecast, self.output = forecast, output


class Stepper:
    """Normalised one-step forecaster rolled out autoregressively, with physical-unit views.

    Args:
        step_fn: ``step_fn(x)`` or, when targets are given to :meth:`rollout`,
            ``step_fn(x, target)``: ``x`` ``(B, C, H, W)`` normalised; returns the forecast
            ``(B, C, H, W)`` or an object with a ``.forecast`` tensor (e.g. the model's output).
        mean, std: ``(C,)`` physical-unit normalisation statistics.
        device: where the model runs and the physical fields are made.
        amp_dtype: autocast dtype from :func:`resolve_amp_dtype` (None: full precision).
    """

    def __init__(self, step_fn: Callable, mean, std, device, amp_dtype: torch.dtype | None = None):
        self.step_fn = step_fn
        self.device = torch.device(device)
        self.amp_dtype = amp_dtype
        self.dtype = accumulation_dtype(self.device)
        self._mean = _per_channel(mean, self.device, self.dtype)
        self._std = _per_channel(std, self.device, self.dtype)
        if self._mean.shape != self._std.shape:
            raise ValueError(f"{self._mean.numel()} means for {self._std.numel()} stds")
        self.n_channels = self._mean.shape[1]

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(B, C, H, W)`` -> physical units, in the accumulation dtype."""
        return x.to(self.dtype) * self._std + self._mean

    def step(self, x: torch.Tensor, target: torch.Tensor | None = None) -> StepOutput:
        """One step from ``x`` ``(B, C, H, W)`` (normalised), under autocast when configured."""
        with autocast_context(self.device, self.amp_dtype):
            out = self.step_fn(x) if target is None else self.step_fn(x, target)
        forecast = out if isinstance(out, torch.Tensor) else getattr(out, "forecast", None)
        if not isinstance(forecast, torch.Tensor):
            raise TypeError(
                "step_fn must return a tensor (B, C, H, W) or an object with a .forecast tensor, "
                f"got {type(out).__name__}"
            )
        if forecast.shape != x.shape:
            raise ValueError(f"step_fn returned {tuple(forecast.shape)} for input {tuple(x.shape)}")
        return StepOutput(forecast.float(), out)

    def rollout(
        self, x0: torch.Tensor, n_steps: int, targets: torch.Tensor | None = None
    ) -> Iterator[StepOutput]:
        """Steps 1..n_steps from ``x0`` ``(B, C, H, W)``, each forecast fed back as the next input.

        ``targets`` ``(B, T, C, H, W)`` with ``T >= n_steps``: step k gets ``targets[:, k - 1]``
        (for a loss). Yields one :class:`StepOutput` per step.
        """
        x = x0
        for k in range(int(n_steps)):
            out = self.step(x, None if targets is None else targets[:, k])
            x = out.forecast
            yield out
