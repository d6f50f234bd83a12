"""Latitude-weighted verification metrics (WeatherBench 2 conventions).

Conventions
-----------
* **Latitude weights** come from the dataset's recorded latitudes (``statistic/grid.json``; the
  cell centres ``90 - (i + 1/2) * 180 / H`` when none is recorded): the area of each row's cells,
  normalised to mean 1 over the rows (:func:`utils.grid.latitude_weights`; ``cos(lat)`` on the
  cell-centre grid). A weighted spatial mean of a field ``f`` is
  ``mean_{h,w}(w_h * f[h, w])``.
* **MSE / RMSE** per field: ``MSE = mean_{h,w}(w_h (pred - target)^2)``, ``RMSE = sqrt(MSE)``,
  in the units of the inputs (pass physical, i.e. de-normalised, fields).
* **ACC** per field: anomalies against a climatology, ``a = pred - clim``, ``b = target - clim``,
  *without* removing their spatial mean (WB2 / the paper's code):
  ``ACC = sum(w a b) / sqrt(sum(w a^2) * sum(w b^2))``.
  When either anomaly is identically zero (e.g. the climatology forecast, ``pred == clim``) the
  correlation is undefined: the entry is **NaN** (never inf, never an exception).
* **Aggregation over initial conditions** (ICs): ``RMSE = sqrt(mean_ic MSE_ic)`` (the WB2
  convention; not the mean of per-IC RMSEs) and ``ACC = nanmean_ic ACC_ic``, reporting how many
  per-IC values were undefined (:func:`aggregate_rmse`, :func:`aggregate_acc`).

All per-field functions take ``(N, C, H, W)`` tensors (CPU or CUDA), ``lat`` in degrees of length
``H`` (tensor, array or list), and return ``(N, C)`` tensors. Reductions are computed in float64
(float32 on devices without float64 support, e.g. MPS), whatever the input dtype.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from utils.grid import latitude_weights

__all__ = [
    "accumulation_dtype",
    "latitudes_numpy",
    "lat_weights_torch",
    "weighted_mean_hw",
    "weighted_mse",
    "weighted_acc_terms",
    "weighted_mse_torch_channels",
    "weighted_rmse_torch_channels",
    "weighted_acc_terms_torch_channels",
    "weighted_acc_torch_channels",
    "acc_from_terms",
    "aggregate_rmse",
    "aggregate_acc",
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


def _check(pred: torch.Tensor, target: torch.Tensor, lat) -> tuple[torch.Tensor, torch.dtype]:
    if pred.dim() != 4:
        raise ValueError(f"expected (N, C, H, W) fields, got shape {tuple(pred.shape)}")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape"
        )
    dtype = accumulation_dtype(pred.device)
    w = lat_weights_torch(lat, pred.device, dtype)
    if w.shape[0] != pred.shape[-2]:
        raise ValueError(f"{w.shape[0]} latitudes given for fields with H = {pred.shape[-2]}")
    return w, dtype


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``mean_{h,w}(w_h (pred - target)^2)``, ``(..., H, W) -> (...)``, for fields already in the
    accumulation dtype and weights ``(H, 1)`` from :func:`lat_weights_torch`."""
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


def weighted_mse_torch_channels(pred: torch.Tensor, target: torch.Tensor, lat) -> torch.Tensor:
    """Latitude-weighted mean squared error per sample and channel, ``(N, C)``."""
    w, dtype = _check(pred, target, lat)
    return weighted_mse(pred.to(dtype), target.to(dtype), w)


def weighted_rmse_torch_channels(pred: torch.Tensor, target: torch.Tensor, lat) -> torch.Tensor:
    """Latitude-weighted RMSE per sample and channel, ``(N, C)``."""
    return weighted_mse_torch_channels(pred, target, lat).sqrt()


def weighted_acc_terms_torch_channels(
    pred: torch.Tensor, target: torch.Tensor, clim, lat
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three weighted sums of the ACC: ``(sum w a b, sum w a^2, sum w b^2)``, each ``(N, C)``.

    ``a = pred - clim`` and ``b = target - clim``; ``clim`` is anything broadcastable to the fields
    (a ``(C, H, W)`` or ``(N, C, H, W)`` tensor or array). Sums are spatial means (same ratio).
    """
    w, dtype = _check(pred, target, lat)
    clim = torch.as_tensor(clim, device=pred.device).to(dtype)
    return weighted_acc_terms(pred.to(dtype) - clim, target.to(dtype) - clim, w)


def acc_from_terms(cov: torch.Tensor, var_a: torch.Tensor, var_b: torch.Tensor) -> torch.Tensor:
    """``cov / sqrt(var_a var_b)``, NaN where either variance is zero (or not finite)."""
    denom = var_a.sqrt() * var_b.sqrt()  # product of roots: no underflow of var_a * var_b
    ok = torch.isfinite(denom) & (denom > 0)
    safe = torch.where(ok, denom, torch.ones_like(denom))
    nan = torch.full_like(cov, float("nan"))
    return torch.where(ok, (cov / safe).clamp(-1.0, 1.0), nan)


def weighted_acc_torch_channels(
    pred: torch.Tensor, target: torch.Tensor, clim, lat
) -> torch.Tensor:
    """Latitude-weighted anomaly correlation per sample and channel, ``(N, C)``; NaN: undefined."""
    return acc_from_terms(*weighted_acc_terms_torch_channels(pred, target, clim, lat))


def aggregate_rmse(mse, axis: int = 0) -> np.ndarray:
    """RMSE over initial conditions: ``sqrt(mean(mse, axis))`` (WB2), from per-IC weighted MSEs."""
    mse = mse.detach().cpu().numpy() if isinstance(mse, torch.Tensor) else np.asarray(mse)
    return np.sqrt(np.mean(mse.astype(np.float64), axis=axis))


def aggregate_acc(acc, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """ACC over initial conditions: ``(nanmean(acc, axis), number of NaN entries)``.

    Where every entry along ``axis`` is undefined the mean is NaN (no warning is raised).
    """
    acc = acc.detach().cpu().numpy() if isinstance(acc, torch.Tensor) else np.asarray(acc)
    acc = acc.astype(np.float64)
    defined = ~np.isnan(acc)
    count = defined.sum(axis=axis)
    total = np.where(defined, acc, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return mean, (~defined).sum(axis=axis)
