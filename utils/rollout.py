"""Model-agnostic autoregressive evaluation (SPEC section 6).

:func:`evaluate_rollout` runs a one-step forecaster ``step_fn`` autoregressively from every initial
condition (IC) of a loader, feeding each forecast back as the next input, and scores the model and
two baselines from the same code path:

* ``model``: ``x_{k} = step_fn(x_{k-1})`` in normalised units, ``x_0`` = the input state;
* ``persistence``: the input state at every lead;
* ``climatology``: the climatology field at the valid time ``init + k * lead_time`` hours.

Scores are latitude-weighted RMSE and ACC in physical units (conventions in
:mod:`utils.weighted_acc_rmse`), accumulated on the fly in :class:`MetricAccumulator` (per channel
and lead, sums of weighted MSE and of per-IC ACC): no forecast is kept in memory.

Leads: the arrays have ``T + 1`` columns, lead index ``k`` = step ``k``, ``lead_hours[k] = k *
lead_time``. Column 0 is the initial state itself (the "forecast" of the model and of persistence
is the input: RMSE 0, a sanity check of the de-normalisation path; the climatology column 0 is the
climatology at the initial time). Headline scores use columns 1..T.

Loader contract: batches ``(inp, tar, time_hours)`` with ``inp`` ``(B, C, H, W)`` normalised (a
``(B, 1, C, H, W)`` single-input-state axis is squeezed), ``tar`` ``(B, T, C, H, W)`` normalised
targets for leads 1..T (``(B, C, H, W)`` when T == 1), ``time_hours`` ``(B,)`` int64 hours since
1970-01-01 of the input state.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from utils.distributed import all_reduce_sum
from utils.weighted_acc_rmse import (
    acc_from_terms,
    accumulation_dtype,
    lat_weights_torch,
    latitudes_numpy,
    weighted_acc_terms,
    weighted_acc_terms_torch_channels,
    weighted_mean_hw,
    weighted_mse,
    weighted_mse_torch_channels,
)

FORECASTERS = ("model", "persistence", "climatology")

__all__ = [
    "FORECASTERS",
    "MetricAccumulator",
    "RolloutResults",
    "evaluate_rollout",
    "resolve_amp_dtype",
    "autocast_context",
    "channel_meta",
]


# ------------------------------------------------------------------------------------ accumulator
class MetricAccumulator:
    """Running per-(channel, lead) sums of latitude-weighted MSE and ACC for one forecaster.

    Args:
        n_channels: C.
        n_leads: number of lead columns (e.g. ``T + 1`` with lead 0, or 1 for one-step validation).
        lat: latitudes in degrees, length H.
        device: where the sums live (the fields' device; no host sync per update).

    ``update(lead, pred, target, clim)`` adds a batch of ``(B, C, H, W)`` physical-unit fields;
    ``rmse()`` gives ``sqrt(mean_ic MSE)`` (WeatherBench 2), ``rmse_ic_mean()`` the mean of per-IC
    RMSEs (FourCastNet-style code, the paper's; never larger than ``rmse()``) and ``acc()`` the
    nan-aware mean of per-IC ACCs, all ``(C, n_leads)`` float64 numpy arrays (NaN where nothing was
    accumulated).
    ``acc_undefined()`` counts per-IC ACC values that were NaN (zero anomaly or non-finite fields).
    For data-parallel validation call :meth:`all_reduce` before reading the scores.
    """

    def __init__(self, n_channels: int, n_leads: int, lat, device="cpu"):
        self.n_channels, self.n_leads = int(n_channels), int(n_leads)
        self.device = torch.device(device)
        self.lat = latitudes_numpy(lat)
        dtype = accumulation_dtype(self.device)

        def z():
            return torch.zeros(self.n_channels, self.n_leads, dtype=dtype, device=self.device)

        self.mse_sum = z()
        self.rmse_sum = z()  # per-IC RMSEs, for rmse_ic_mean
        self.count = z()  # samples per (channel, lead) contributing to mse_sum
        self.acc_sum = z()
        self.acc_count = z()  # defined per-IC ACC values
        self.acc_nan = z()  # undefined per-IC ACC values

    def _buffers(self) -> list[torch.Tensor]:
        return [self.mse_sum, self.rmse_sum, self.count, self.acc_sum, self.acc_count, self.acc_nan]

    def _check_lead(self, lead: int) -> None:
        if not 0 <= lead < self.n_leads:
            raise IndexError(f"lead index {lead} outside 0..{self.n_leads - 1}")

    def update_mse(self, lead: int, mse: torch.Tensor) -> None:
        """Add per-sample weighted MSEs ``(B, C)`` at lead index ``lead``."""
        self._check_lead(lead)
        mse = mse.to(self.mse_sum)
        self.mse_sum[:, lead] += mse.sum(0)
        self.rmse_sum[:, lead] += mse.sqrt().sum(0)
        self.count[:, lead] += mse.shape[0]

    def update_acc(self, lead: int, acc: torch.Tensor) -> None:
        """Add per-sample ACCs ``(B, C)`` (NaN = undefined) at lead index ``lead``."""
        self._check_lead(lead)
        acc = acc.to(self.acc_sum)
        nan = torch.isnan(acc)
        self.acc_sum[:, lead] += torch.where(nan, torch.zeros_like(acc), acc).sum(0)
        self.acc_count[:, lead] += (~nan).sum(0).to(acc)
        self.acc_nan[:, lead] += nan.sum(0).to(acc)

    def update(self, lead: int, pred: torch.Tensor, target: torch.Tensor, clim=None) -> None:
        """Score physical-unit fields ``(B, C, H, W)``; ``clim`` None: ACC counted undefined."""
        self.update_mse(lead, weighted_mse_torch_channels(pred, target, self.lat))
        if clim is None:
            self.update_acc(lead, torch.full(pred.shape[:2], float("nan"), device=pred.device))
        else:
            terms = weighted_acc_terms_torch_channels(pred, target, clim, self.lat)
            self.update_acc(lead, acc_from_terms(*terms))

    def all_reduce(self) -> None:
        """Sum the buffers over ranks (no-op unless torch.distributed is initialised)."""
        for buf in self._buffers():
            all_reduce_sum(buf)

    @staticmethod
    def _mean(total: torch.Tensor, count: torch.Tensor) -> np.ndarray:
        s, n = total.cpu().numpy(), count.cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, s / np.maximum(n, 1), np.nan)

    def mse(self) -> np.ndarray:
        return self._mean(self.mse_sum, self.count)

    def rmse_ic_mean(self) -> np.ndarray:
        return self._mean(self.rmse_sum, self.count)

    def rmse(self) -> np.ndarray:
        return np.sqrt(self.mse())

    def acc(self) -> np.ndarray:
        return self._mean(self.acc_sum, self.acc_count)

    def acc_undefined(self) -> np.ndarray:
        return self.acc_nan.cpu().numpy().astype(np.int64)


# ------------------------------------------------------------------------------------ results
@dataclass
class RolloutResults:
    """Scores of an evaluation run; arrays are ``(C, L)``, L = ``len(lead_hours)``.

    ``rmse[f]``, ``rmse_ic_mean[f]``, ``acc[f]``, ``acc_undefined[f]`` for each scored
    forecaster ``f`` (keys of ``rmse``, in :data:`FORECASTERS` order). ``channels`` holds
    ``(variable, level)`` pairs (level None for a surface variable). ``sample``, when captured,
    holds one IC's model forecast and truth: ``{"time_hours": int, "channels": [indices],
    "forecast": (L, c, H, W), "truth": (L, c, H, W)}`` in physical units.
    """

    lead_hours: np.ndarray
    channel_names: list[str]
    channels: list[tuple[str, int | None]]
    n_ics: int
    lead_time: int
    rmse: dict[str, np.ndarray] = field(default_factory=dict)
    rmse_ic_mean: dict[str, np.ndarray] = field(default_factory=dict)
    acc: dict[str, np.ndarray] = field(default_factory=dict)
    acc_undefined: dict[str, np.ndarray] = field(default_factory=dict)
    acc_available: bool = True
    notes: list[str] = field(default_factory=list)
    sample: dict | None = None

    @property
    def forecasters(self) -> list[str]:
        return list(self.rmse)

    def lead_index(self, hours: float) -> int | None:
        """Column of a lead given in hours, or None when it is not in the rollout."""
        hits = np.nonzero(np.isclose(self.lead_hours, hours, atol=1e-6))[0]
        return int(hits[0]) if len(hits) else None

    def channel_index(self, name: str) -> int:
        return self.channel_names.index(name)


def channel_meta(channels, n_channels: int) -> tuple[list[str], list[tuple[str, int | None]]]:
    """Names and ``(variable, level)`` pairs of a ChannelLayout, Channel list, name list or None."""
    if channels is None:
        names = [f"c{i}" for i in range(n_channels)]
        return names, [(n, None) for n in names]
    items = getattr(channels, "channels", channels)
    names, meta = [], []
    for c in items:
        if isinstance(c, str):
            names.append(c)
            meta.append((c, None))
        else:
            names.append(c.name)
            meta.append((c.variable, c.level))
    if len(names) != n_channels:
        raise ValueError(f"{len(names)} channel names for {n_channels} channels")
    return names, meta


# ------------------------------------------------------------------------------------ helpers
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


def _stats(values, n_channels: int, device, dtype) -> torch.Tensor:
    t = torch.as_tensor(
        np.asarray(
            values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64
        ),
        dtype=dtype,
        device=device,
    )
    if t.numel() != n_channels:
        raise ValueError(
            f"normalisation statistics have {t.numel()} values for {n_channels} channels"
        )
    return t.reshape(1, n_channels, 1, 1)


def _split_batch(batch, n_steps: int):
    if not isinstance(batch, (tuple, list)) or len(batch) < 3:
        raise ValueError("loader batches must be (inp, tar, time_hours)")
    inp, tar, time_hours = batch[0], batch[1], batch[2]
    inp, tar = torch.as_tensor(inp), torch.as_tensor(tar)
    if inp.dim() == 5 and inp.shape[1] == 1:
        inp = inp[:, 0]
    if inp.dim() != 4:
        raise ValueError(f"inp must be (B, C, H, W), got {tuple(inp.shape)}")
    if tar.dim() == 4:
        tar = tar.unsqueeze(1)
    if tar.dim() != 5 or tar.shape[0] != inp.shape[0] or tar.shape[2:] != inp.shape[1:]:
        raise ValueError(
            f"tar must be (B, T, C, H, W) matching inp {tuple(inp.shape)}, got {tuple(tar.shape)}"
        )
    if tar.shape[1] < n_steps:
        raise ValueError(f"the loader gives {tar.shape[1]} target steps, n_steps is {n_steps}")
    times = [int(t) for t in torch.as_tensor(time_hours).reshape(-1).tolist()]
    if len(times) != inp.shape[0]:
        raise ValueError(f"{len(times)} times for a batch of {inp.shape[0]}")
    return inp, tar[:, :n_steps], times


# ------------------------------------------------------------------------------------ engine
def evaluate_rollout(
    step_fn: Callable[[torch.Tensor], torch.Tensor] | None,
    loader: Iterable,
    n_steps: int,
    mean,
    std,
    lat,
    climatology,
    device,
    forecasters: Sequence[str] = FORECASTERS,
    progress: bool = True,
    amp_dtype=None,
    raw_forecast_writer: Callable[[int, np.ndarray], None] | None = None,
    *,
    lead_time: int = 6,
    channels=None,
    capture_ic: int | None = None,
    capture_channels: Sequence[int] | None = None,
    max_batches: int | None = None,
) -> RolloutResults:
    """Autoregressive rollout of ``step_fn`` over ``loader``; scores model and baselines.

    Args:
        step_fn: one-step forecast in normalised units, ``(B, C, H, W) -> (B, C, H, W)``
            (e.g. ``lambda x: model(x)[0]``; put the model in eval mode first). May be None when
            ``"model"`` is not among ``forecasters``.
        loader: iterable of ``(inp, tar, time_hours)`` batches (see the module docstring).
        n_steps: T, the number of autoregressive steps.
        mean, std: ``(C,)`` physical-unit normalisation statistics (``phys = x * std + mean``).
        lat: latitudes in degrees, length H.
        climatology: object with ``.field(time_hours: int) -> ndarray (C, H, W)`` in physical
            units, or None (then every ACC is NaN, ``acc_available`` is False and the
            climatology forecaster is skipped with a note).
        device: where the model and the metric sums run.
        forecasters: which of ``"model"``, ``"persistence"``, ``"climatology"`` to score.
        progress: show a tqdm progress bar over batches.
        amp_dtype: None, ``"bf16"``/``"fp16"`` or a torch dtype: autocast around ``step_fn``
            (bf16 or fp16 on CUDA, bf16 on CPU); forecasts are cast back to float32 before
            being fed back and scored.
        raw_forecast_writer: called once per IC as ``writer(time_hours, forecast)`` with the
            model forecast for leads 1..T, ``(T, C, H, W)`` float32 physical units (needs the
            batch's T forecasts in host memory while it runs).
        lead_time: hours per step (valid time of lead k = ``init + k * lead_time``).
        channels: ChannelLayout, list of Channel or list of names (for names in the results).
        capture_ic: index (in loader order) of an IC whose model forecast and truth, leads
            0..T, are kept in ``results.sample`` (for map plots); ``capture_channels`` restricts
            them to some channel indices (default all).
        max_batches: stop after this many batches (quick checks).

    Returns:
        :class:`RolloutResults` with ``(C, T + 1)`` arrays, ``lead_hours = [0, lt, ..., T lt]``.
    """
    unknown = [f for f in forecasters if f not in FORECASTERS]
    if unknown or not forecasters:
        raise ValueError(
            f"forecasters must be a non-empty subset of {FORECASTERS}, got {list(forecasters)}"
        )
    if int(n_steps) < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    n_steps = int(n_steps)
    device = torch.device(device)
    notes: list[str] = []
    forecasters = [f for f in FORECASTERS if f in forecasters]
    if "model" in forecasters and step_fn is None:
        raise ValueError("step_fn is required to score the model")
    if climatology is None:
        notes.append("no climatology given: ACC is undefined (NaN) for every forecaster")
        if "climatology" in forecasters:
            forecasters.remove("climatology")
            notes.append("climatology baseline skipped (no climatology given)")
            if not forecasters:
                raise ValueError("no forecaster left to score without a climatology")
    autocast_dtype = resolve_amp_dtype(amp_dtype, device)
    lat = latitudes_numpy(lat)
    want_model = "model" in forecasters

    from tqdm import tqdm

    try:
        total = len(loader)  # type: ignore[arg-type]
        if max_batches is not None:
            total = min(total, max_batches)
    except TypeError:
        total = max_batches
    bar = tqdm(
        loader, total=total, desc="rollout", unit="batch", disable=not progress, dynamic_ncols=True
    )

    accs: dict[str, MetricAccumulator] = {}
    mean_t = std_t = None
    names: list[str] = []
    meta: list[tuple[str, int | None]] = []
    n_ics = 0
    sample = None
    work_dtype = accumulation_dtype(device)
    clim_cache: dict[int, torch.Tensor] = {}  # valid time (hours) -> (C, H, W) on device

    with torch.inference_mode():
        for b_idx, batch in enumerate(bar):
            if max_batches is not None and b_idx >= max_batches:
                break
            inp, tar, times = _split_batch(batch, n_steps)
            B, C = inp.shape[:2]
            if mean_t is None:
                if inp.shape[-2] != len(lat):
                    raise ValueError(f"{len(lat)} latitudes for fields with H = {inp.shape[-2]}")
                names, meta = channel_meta(channels, C)
                mean_t = _stats(mean, C, device, work_dtype)
                std_t = _stats(std, C, device, work_dtype)
                accs = {f: MetricAccumulator(C, n_steps + 1, lat, device) for f in forecasters}
                w = lat_weights_torch(lat, device, work_dtype)
            inp = inp.to(device, torch.float32, non_blocking=True)
            tar = tar.to(device, torch.float32, non_blocking=True)

            def phys(x):
                return x.to(work_dtype) * std_t + mean_t  # noqa: B023

            # Consecutive initial conditions share most valid times: each climatology field is
            # read and moved to the device once, and dropped once it is older than this batch.
            for t in [t for t in clim_cache if t < min(times)]:
                del clim_cache[t]

            def clim_at(k: int):
                if climatology is None:
                    return None
                valid = [int(t) + k * lead_time for t in times]  # noqa: B023
                for t in valid:
                    if t not in clim_cache:
                        clim_cache[t] = torch.tensor(
                            np.asarray(climatology.field(t)), dtype=work_dtype, device=device
                        )
                return torch.stack([clim_cache[t] for t in valid])

            capture_here = capture_ic is not None and n_ics <= capture_ic < n_ics + B
            cap_row = capture_ic - n_ics if capture_here else None
            cap_ch = list(range(C)) if capture_channels is None else list(capture_channels)
            cap_fc, cap_truth = [], []
            raw = (
                torch.empty((B, n_steps) + tuple(inp.shape[1:]), dtype=torch.float32)
                if want_model and raw_forecast_writer is not None
                else None
            )  # (B, T, C, H, W)

            x = inp
            init_phys = phys(inp)
            for k in range(n_steps + 1):
                if k == 0:
                    truth = init_phys
                else:
                    truth = phys(tar[:, k - 1])
                    if want_model:
                        with autocast_context(device, autocast_dtype):
                            out = step_fn(x)
                        if not isinstance(out, torch.Tensor):
                            raise TypeError(
                                "step_fn must return a tensor (B, C, H, W), got "
                                f"{type(out).__name__}"
                            )
                        if out.shape != x.shape:
                            raise ValueError(
                                f"step_fn returned {tuple(out.shape)} for input {tuple(x.shape)}"
                            )
                        x = out.float()
                clim = clim_at(k)
                model_phys = phys(x) if want_model else None
                if clim is not None:  # truth anomaly: shared by all forecasters
                    b = truth - clim
                    var_b = weighted_mean_hw(b * b, w)
                for f, acc in accs.items():
                    if f == "climatology":  # pred - truth = -b; zero anomaly: no ACC
                        mse = var_b
                        corr = torch.full_like(var_b, float("nan"))
                    else:
                        pred = model_phys if f == "model" else init_phys
                        mse = weighted_mse(pred, truth, w)
                        if clim is None:
                            corr = torch.full_like(mse, float("nan"))
                        else:
                            corr = acc_from_terms(*weighted_acc_terms(pred - clim, b, w, var_b))
                    acc.update_mse(k, mse)
                    acc.update_acc(k, corr)
                if raw is not None and k > 0:
                    raw[:, k - 1].copy_(model_phys)
                if capture_here and want_model:
                    cap_fc.append(model_phys[cap_row, cap_ch].float().cpu())
                    cap_truth.append(truth[cap_row, cap_ch].float().cpu())

            if raw is not None:
                for i, t in enumerate(times):
                    raw_forecast_writer(t, raw[i].numpy())
            if cap_fc:
                sample = {
                    "time_hours": times[cap_row],
                    "channels": cap_ch,
                    "forecast": torch.stack(cap_fc).numpy(),
                    "truth": torch.stack(cap_truth).numpy(),
                }
            n_ics += B

    if n_ics == 0:
        raise ValueError("the loader gave no batches")
    if raw_forecast_writer is not None and not want_model:
        notes.append("raw_forecast_writer ignored: the model is not scored")
    if capture_ic is not None and sample is None:
        notes.append(
            f"capture_ic {capture_ic} not captured ({n_ics} ICs, model scored: {want_model})"
        )
    results = RolloutResults(
        lead_hours=np.arange(n_steps + 1, dtype=np.int64) * int(lead_time),
        channel_names=names,
        channels=meta,
        n_ics=n_ics,
        lead_time=int(lead_time),
        acc_available=climatology is not None,
        notes=notes,
        sample=sample,
    )
    for f, acc in accs.items():
        results.rmse[f] = acc.rmse()
        results.rmse_ic_mean[f] = acc.rmse_ic_mean()
        results.acc[f] = acc.acc()
        results.acc_undefined[f] = acc.acc_undefined()
        undefined = int(results.acc_undefined[f].sum())
        if undefined and climatology is not None:
            if f == "climatology":
                notes.append("climatology: ACC undefined (zero anomaly) by construction")
            else:
                note = (
                    f"{f}: {undefined} per-IC ACC values undefined (zero anomaly or "
                    "non-finite forecast), excluded from the mean"
                )
                notes.append(note)
                warnings.warn(note, stacklevel=2)
    if climatology is None:
        warnings.warn(notes[0], stacklevel=2)
    return results
