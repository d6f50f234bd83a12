"""Latitude-weighted verification metrics (WeatherBench 2 conventions), one implementation each.

Per field (pure functions, ``(..., H, W) -> (...)``):

* **latitude weights** ``w_h``: the area of each row's cells at the dataset's recorded latitudes,
  normalised to mean 1, from :func:`utils.grid.latitude_weights` (the only definition), as an
  ``(H, 1)`` tensor (:func:`lat_weights_torch`); a weighted spatial mean of ``f`` is
  ``mean_{h,w}(w_h f[h, w])`` (:func:`weighted_mean_hw`);
* **MSE** ``mean_{h,w}(w_h (pred - truth)^2)`` in the units of the inputs (:func:`weighted_mse`);
* **ACC** of the anomalies ``a = pred - clim`` and ``b = truth - clim`` *without* removing their
  spatial mean: ``mean(w a b) / sqrt(mean(w a^2) mean(w b^2))``, NaN when either anomaly is
  identically zero (e.g. the climatology forecast itself) or not finite
  (:func:`weighted_acc_terms`, :func:`acc_from_terms`).

:func:`score_fields` gives both scores of a batch of forecasts; it is what the evaluation, the
training validation and :meth:`MetricAccumulator.update` call.

Over initial conditions (ICs), :class:`MetricAccumulator` keeps running sums per channel and lead:

* ``rmse()`` = ``sqrt(mean_ic MSE_ic)`` (WeatherBench 2; the headline everywhere here);
* ``rmse_ic_mean()`` = ``mean_ic sqrt(MSE_ic)`` (what FourCastNet-derived code, the paper's
  included, reports; never larger than ``rmse()``);
* ``acc()`` = mean of the defined per-IC ACCs, ``acc_undefined()`` = how many were NaN.

Reductions run in float64 (float32 on devices without float64, e.g. MPS). The conventions are
described in ``docs/design.md`` (evaluation).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from utils.distributed import all_reduce_sum
from utils.grid import latitude_weights

__all__ = [
    "accumulation_dtype",
    "latitudes_numpy",
    "lat_weights_torch",
    "weighted_mean_hw",
    "weighted_mse",
    "weighted_acc_terms",
    "acc_from_terms",
    "score_fields",
    "RunningMean",
    "MetricAccumulator",
]


def accumulation_dtype(device) -> torch.dtype:
    """float64 wherever the device supports it (CPU, CUDA), else float32."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def latitudes_numpy(lat) -> np.ndarray:
    """Latitudes (tensor, array or list) as a 1-D float64 numpy array."""
    if isinstance(lat, torch.Tensor):
        lat = lat.detach().to("cpu", torch.float64).numpy()
    lat = np.asarray(lat, dtype=np.float64)
    if lat.ndim != 1:
        raise ValueError(f"lat must be a 1-D array of latitudes in degrees, got shape {lat.shape}")
    return lat


def lat_weights_torch(lat, device=None, dtype=torch.float64) -> torch.Tensor:
    """Row area weights normalised to mean 1 (:func:`utils.grid.latitude_weights`), shape
    ``(H, 1)`` (broadcasts over W), on ``device`` (default: the device of a tensor ``lat``).

    The weights of the last few grids are cached per device and dtype: callers scoring every
    batch move them to the device once (read-only: do not modify the returned tensor).
    """
    if isinstance(lat, torch.Tensor):
        device = lat.device if device is None else device
        if lat.dim() != 1:
            raise ValueError(f"lat must be 1-D latitudes in degrees, got shape {tuple(lat.shape)}")
    lat = latitudes_numpy(lat)
    return _cached_weights(lat.tobytes(), torch.device(device or "cpu"), dtype)


@functools.lru_cache(maxsize=16)
def _cached_weights(lat_bytes: bytes, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    w = latitude_weights(np.frombuffer(lat_bytes, dtype=np.float64))
    return torch.as_tensor(w, dtype=dtype, device=device).reshape(-1, 1)


def weighted_mean_hw(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``mean_{h,w}(w_h * x[..., h, w])`` for ``x`` ``(..., H, W)`` and weights ``(H, 1)``."""
    return (x.sum(dim=-1) @ w[:, 0].to(x.dtype)) / (x.shape[-2] * x.shape[-1])


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``mean_{h,w}(w_h (pred - target)^2)``, ``(..., H, W) -> (...)``, weights ``(H, 1)``."""
    diff = pred - target
    return weighted_mean_hw(diff * diff, w)


def weighted_acc_terms(
    a: torch.Tensor, b: torch.Tensor, w: torch.Tensor, var_b: torch.Tensor | None = None
):
    """``(mean w a b, mean w a^2, mean w b^2)`` of the anomalies ``a`` (forecast) and ``b``
    (truth), ``(..., H, W) -> (...)`` each; ``var_b`` when already known (shared truth)."""
    if var_b is None:
        var_b = weighted_mean_hw(b * b, w)
    return weighted_mean_hw(a * b, w), weighted_mean_hw(a * a, w), var_b


def acc_from_terms(cov: torch.Tensor, var_a: torch.Tensor, var_b: torch.Tensor) -> torch.Tensor:
    """``cov / sqrt(var_a var_b)``, NaN where either variance is zero (or not finite)."""
    denom = var_a.sqrt() * var_b.sqrt()  # product of roots: no underflow of var_a * var_b
    ok = torch.isfinite(denom) & (denom > 0)
    safe = torch.where(ok, denom, torch.ones_like(denom))
    nan = torch.full_like(cov, float("nan"))
    return torch.where(ok, (cov / safe).clamp(-1.0, 1.0), nan)


def score_fields(
    pred: torch.Tensor,
    truth: torch.Tensor,
    w: torch.Tensor,
    clim: torch.Tensor | None = None,
    var_b: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted MSE and ACC of forecasts ``pred`` against ``truth``, both ``(B, C, H, W)``.

    Args:
        pred, truth: fields in physical units and the accumulation dtype.
        w: latitude weights ``(H, 1)`` from :func:`lat_weights_torch`.
        clim: climatology ``(B, C, H, W)`` (or broadcastable); None: every ACC is NaN.
        var_b: ``mean(w (truth - clim)^2)`` ``(B, C)`` when already computed (shared by several
            forecasters of the same truth).

    Returns:
        ``(mse, acc)``, each ``(B, C)``; ACC is NaN where undefined.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and truth {tuple(truth.shape)} differ")
    if w.shape[0] != pred.shape[-2]:
        raise ValueError(f"{w.shape[0]} latitude weights for fields with H = {pred.shape[-2]}")
    mse = weighted_mse(pred, truth, w)
    if clim is None:
        return mse, torch.full_like(mse, float("nan"))
    terms = weighted_acc_terms(pred - clim, truth - clim, w, var_b)
    return mse, acc_from_terms(*terms)


class RunningMean:
    """Running mean per (channel, lead) of per-IC values ``(B, C)``, summed where they live.

    ``skip_nan``: NaN values are counted in ``n_nan`` and left out of the mean (ACC); otherwise
    they propagate into it (a non-finite forecast error must show).
    """

    def __init__(self, n_channels: int, n_leads: int, device, skip_nan: bool = False):
        dtype = accumulation_dtype(device)
        self.n_leads = int(n_leads)
        self.skip_nan = skip_nan
        self.total = torch.zeros(int(n_channels), self.n_leads, dtype=dtype, device=device)
        self.count = torch.zeros_like(self.total)
        self.n_nan = torch.zeros_like(self.total)

    def add(self, lead: int, values: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Add per-IC values ``(B, C)`` at lead index ``lead``; with ``mask`` (bool ``(B, C)``)
        only the entries where it is true (the others are neither summed nor counted)."""
        if not 0 <= lead < self.n_leads:
            raise IndexError(f"lead index {lead} outside 0..{self.n_leads - 1}")
        values = values.to(self.total)
        if mask is None and not self.skip_nan:
            self.total[:, lead] += values.sum(0)
            self.count[:, lead] += values.shape[0]
            return
        keep = torch.ones_like(values, dtype=torch.bool) if mask is None else mask.to(values.device)
        if self.skip_nan:
            nan = torch.isnan(values) & keep
            self.n_nan[:, lead] += nan.sum(0).to(values)
            keep = keep & ~nan
        self.total[:, lead] += torch.where(keep, values, torch.zeros_like(values)).sum(0)
        self.count[:, lead] += keep.sum(0).to(values)

    def all_reduce(self) -> None:
        """Sum over ranks (no-op unless torch.distributed is initialised)."""
        for buf in (self.total, self.count, self.n_nan):
            all_reduce_sum(buf)

    def mean(self) -> np.ndarray:
        """``(C, n_leads)`` float64; NaN where nothing was added."""
        s, n = self.total.cpu().numpy(), self.count.cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, s / np.maximum(n, 1), np.nan)


class MetricAccumulator:
    """Scores of one forecaster over initial conditions, per channel and lead.

    Args:
        n_channels: C.
        n_leads: number of lead columns (``T + 1`` with lead 0 in evaluation, T in validation).
        device: where the sums live (the fields' device; no host sync per update).

    :meth:`update` scores a batch of fields with :func:`score_fields`; :meth:`add` takes per-IC
    scores already computed. The scores are ``(C, n_leads)`` float64 numpy arrays, NaN where
    nothing was accumulated. Call :meth:`all_reduce` before reading them in data-parallel runs.
    """

    def __init__(self, n_channels: int, n_leads: int, device="cpu"):
        self.n_channels, self.n_leads = int(n_channels), int(n_leads)
        self.device = torch.device(device)
        self.mse_ = RunningMean(n_channels, n_leads, self.device)
        self.rmse_ = RunningMean(n_channels, n_leads, self.device)
        self.acc_ = RunningMean(n_channels, n_leads, self.device, skip_nan=True)

    def add(self, lead: int, mse: torch.Tensor, acc: torch.Tensor, mask=None) -> None:
        """Add per-IC MSEs and ACCs (NaN: undefined), each ``(B, C)``, at lead index ``lead``;
        ``mask`` (bool ``(B, C)``, optional): only the entries that exist (a forecast file
        lacking a start or a variable), the others are left out, not counted as zero."""
        self.mse_.add(lead, mse, mask)
        self.rmse_.add(lead, mse.sqrt(), mask)
        self.acc_.add(lead, acc, mask)

    def update(self, lead, pred, truth, w, clim=None, var_b=None, mask=None) -> None:
        """Score ``(B, C, H, W)`` physical-unit fields (arguments of :func:`score_fields`;
        ``mask`` as in :meth:`add`)."""
        self.add(lead, *score_fields(pred, truth, w, clim, var_b), mask)

    def all_reduce(self) -> None:
        for part in (self.mse_, self.rmse_, self.acc_):
            part.all_reduce()

    def n_samples(self) -> int:
        """ICs accumulated at lead index 0."""
        return int(self.mse_.count[0, 0].item())

    def rmse(self) -> np.ndarray:
        """``sqrt(mean_ic MSE)`` (WeatherBench 2)."""
        return np.sqrt(self.mse_.mean())

    def rmse_ic_mean(self) -> np.ndarray:
        """``mean_ic RMSE`` (FourCastNet-style; never larger than :meth:`rmse`)."""
        return self.rmse_.mean()

    def acc(self) -> np.ndarray:
        """Mean of the defined per-IC ACCs."""
        return self.acc_.mean()

    def acc_undefined(self) -> np.ndarray:
        """Number of per-IC ACCs that were NaN, int64."""
        return self.acc_.n_nan.cpu().numpy().astype(np.int64)
