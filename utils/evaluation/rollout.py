"""Model-agnostic autoregressive evaluation.

:func:`evaluate_rollout` rolls a one-step forecaster out from every initial condition (IC) of a
loader with a :class:`utils.evaluation.stepper.Stepper` and scores the model and two baselines with the same
metric code (:func:`utils.evaluation.metrics.score_fields`, accumulated over ICs in a
:class:`utils.evaluation.metrics.MetricAccumulator` per forecaster; no forecast is kept in memory):

* ``model``: ``x_k = step_fn(x_{k-1})`` in normalised units, ``x_0`` = the input state;
* ``persistence``: the input state at every lead;
* ``climatology``: the climatology field at the valid time ``init + k * lead_time`` hours;
* compared forecasters (``compared``, e.g. :class:`utils.evaluation.forecast_file.ForecastFile`):
  objects with a ``name``, ``notes`` (a list of strings) and ``fields(times, lead_hours)`` giving
  ``(values (B, C, H, W), available (B, C) bool)`` in physical units for the batch's initial
  times at that lead, or None when they have nothing there. Entries that are not available are
  left out of the sums (their scores are NaN where nothing is left), not counted as zero.

With several ranks (torch.distributed initialised) each rank rolls out its own initial
conditions and the sums are added over the ranks at the end: every rank returns the scores of
all of them.

Leads: the arrays have ``T + 1`` columns, lead index ``k`` = step ``k``, ``lead_hours[k] = k *
lead_time``. Column 0 is the initial state itself (the "forecast" of the model and of persistence
is the input: RMSE 0, a check of the de-normalisation path; the climatology column 0 is the
climatology at the initial time). Headline scores use columns 1..T.

Loader contract: batches ``(inp, tar, time_hours)`` with ``inp`` ``(B, C, H, W)`` normalised (a
``(B, 1, C, H, W)`` single-input-state axis is squeezed), ``tar`` ``(B, T, C, H, W)`` normalised
targets for leads 1..T (the time axis is there for T == 1 too), ``time_hours`` ``(B,)`` int64
hours since 1970-01-01 of the input state. Result files are written by :mod:`utils.evaluation.results`; the
conventions are described in ``docs/design.md``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from utils.distributed import all_reduce_sum
from utils.evaluation.metrics import (
    MetricAccumulator,
    accumulation_dtype,
    lat_weights_torch,
    latitudes_numpy,
    weighted_mean_hw,
)
from utils.evaluation.stepper import Stepper, resolve_amp_dtype
from utils.progress import progress_bar

FORECASTERS = ("model", "persistence", "climatology")

__all__ = ["FORECASTERS", "RolloutResults", "evaluate_rollout", "channel_meta", "split_batch"]


# ------------------------------------------------------------------------------------ results
@dataclass
class RolloutResults:
    """Scores of an evaluation run; arrays are ``(C, L)``, L = ``len(lead_hours)``.

    ``rmse[f]``, ``rmse_ic_mean[f]``, ``acc[f]``, ``acc_undefined[f]`` for each scored
    forecaster ``f`` (keys of ``rmse``, in :data:`FORECASTERS` order). ``channels`` holds
    ``(variable, level)`` pairs (level None for a surface variable). ``sample``, when captured,
    holds one IC's forecasts (the model's and the compared forecasters', NaN where one has
    none) and truth: ``{"time_hours": int, "channels": [indices], "forecasts": {name: (L, c, H,
    W)}, "truth": (L, c, H, W)}`` in physical units.
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


# ------------------------------------------------------------------------------------ parts
def split_batch(batch, n_steps: int):
    """``(inp (B, C, H, W), tar (B, n_steps, C, H, W), times [int] * B)`` of a loader batch."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 3:
        raise ValueError("loader batches must be (inp, tar, time_hours)")
    inp, tar, time_hours = batch[0], batch[1], batch[2]
    inp, tar = torch.as_tensor(inp), torch.as_tensor(tar)
    if inp.dim() == 5 and inp.shape[1] == 1:
        inp = inp[:, 0]
    if inp.dim() != 4:
        raise ValueError(f"inp must be (B, C, H, W), got {tuple(inp.shape)}")
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


class ClimatologyCache:
    """Climatology fields by valid time, each read and moved to the device once.

    Consecutive ICs share most valid times; :meth:`drop_before` forgets the fields older than a
    batch's first IC. ``climatology.field(time_hours)`` gives ``(C, H, W)`` physical units.
    """

    def __init__(self, climatology, lead_time: int, device, dtype):
        self.climatology, self.lead_time = climatology, int(lead_time)
        self.device, self.dtype = device, dtype
        self.fields: dict[int, torch.Tensor] = {}

    def drop_before(self, time_hours: int) -> None:
        for t in [t for t in self.fields if t < time_hours]:
            del self.fields[t]

    def at_lead(self, times: Sequence[int], k: int) -> torch.Tensor:
        """``(B, C, H, W)`` climatology at the valid times ``times + k * lead_time``."""
        valid = [int(t) + k * self.lead_time for t in times]
        for t in valid:
            if t not in self.fields:
                self.fields[t] = torch.tensor(
                    np.asarray(self.climatology.field(t)), dtype=self.dtype, device=self.device
                )
        return torch.stack([self.fields[t] for t in valid])


class SampleCapture:
    """Keeps one IC's forecasts and truth (physical units, some channels) for the maps: those of
    ``names`` (the model and the compared forecasters)."""

    def __init__(self, capture_ic: int | None, channels: Sequence[int] | None, names=()):
        self.capture_ic, self.channels, self.names = capture_ic, channels, list(names)
        self.sample: dict | None = None
        self._row: int | None = None
        self._times: Sequence[int] = ()
        self._forecasts: dict[str, list[torch.Tensor]] = {}
        self._truth: list[torch.Tensor] = []

    def start_batch(self, first_ic: int, times: Sequence[int], n_channels: int) -> None:
        """Arm for a batch whose first IC has index ``first_ic`` (in loader order)."""
        ic = self.capture_ic
        self._row = (
            ic - first_ic if ic is not None and first_ic <= ic < first_ic + len(times) else None
        )
        if self.channels is None:
            self.channels = list(range(n_channels))
        self._times, self._truth = times, []
        self._forecasts = {name: [] for name in self.names}

    def add(self, forecasts: dict[str, torch.Tensor], truth: torch.Tensor) -> None:
        """Lead k's ``(B, C, H, W)`` forecasts by name and truth, called for k = 0..T in order
        (a name missing from ``forecasts`` has NaN at that lead)."""
        if self._row is None or not self.names:
            return
        truth = truth[self._row, self.channels].float().cpu()
        self._truth.append(truth)
        for name in self.names:
            forecast = forecasts.get(name)
            self._forecasts[name].append(
                torch.full_like(truth, float("nan"))
                if forecast is None
                else forecast[self._row, self.channels].float().cpu()
            )

    def end_batch(self) -> None:
        if self._truth:
            self.sample = {
                "time_hours": self._times[self._row],
                "channels": list(self.channels),
                "forecasts": {n: torch.stack(f).numpy() for n, f in self._forecasts.items()},
                "truth": torch.stack(self._truth).numpy(),
            }
        self._row = None


def _check_forecasters(forecasters, step_fn, climatology, compared, notes: list[str]) -> list[str]:
    """The forecasters to score, in :data:`FORECASTERS` order (notes say what was skipped)."""
    unknown = [f for f in forecasters if f not in FORECASTERS]
    if unknown or not (forecasters or compared):
        raise ValueError(
            f"forecasters must be a subset of {FORECASTERS}, got {list(forecasters)}, "
            "and something must be scored"
        )
    names = [c.name for c in compared]
    if len(set(names)) != len(names) or set(names) & set(FORECASTERS):
        raise ValueError(f"compared forecasters need distinct names not in {FORECASTERS}: {names}")
    chosen = [f for f in FORECASTERS if f in forecasters]
    if "model" in chosen and step_fn is None:
        raise ValueError("step_fn is required to score the model")
    if climatology is None:
        notes.append("no climatology given: ACC is undefined (NaN) for every forecaster")
        if "climatology" in chosen:
            chosen.remove("climatology")
            notes.append("climatology baseline skipped (no climatology given)")
            if not chosen and not compared:
                raise ValueError("no forecaster left to score without a climatology")
    return chosen


@dataclass
class _Run:
    """What one evaluation carries from batch to batch."""

    stepper: Stepper
    n_steps: int
    scores: dict[str, MetricAccumulator]
    weights: torch.Tensor  # (H, 1) latitude weights
    climatology: ClimatologyCache | None
    capture: SampleCapture
    raw_forecast_writer: Callable[[int, np.ndarray], None] | None
    lead_time: int
    compared: dict = field(default_factory=dict)  # name -> compared forecaster


def _compared_fields(run: _Run, k: int, times, like: torch.Tensor) -> tuple[dict, dict]:
    """``({name: (B, C, H, W)}, {name: (B, C) bool})`` of the compared forecasters at lead
    index ``k``, on the device and in the dtype of ``like`` (those without a field left out)."""
    fields, masks = {}, {}
    for name, forecaster in run.compared.items():
        got = forecaster.fields(times, k * run.lead_time)
        if got is None:
            continue
        values, available = got
        fields[name] = torch.as_tensor(values).to(like.device, like.dtype)
        masks[name] = torch.as_tensor(available, dtype=torch.bool).to(like.device)
        if fields[name].shape != like.shape or masks[name].shape != like.shape[:2]:
            raise ValueError(
                f"{name}: fields {tuple(fields[name].shape)} and mask "
                f"{tuple(masks[name].shape)} for a batch {tuple(like.shape)}"
            )
    return fields, masks


def _score_lead(run: _Run, k: int, truth, forecasts: dict, masks: dict, times) -> None:
    """Score every forecaster at lead index ``k`` against ``truth`` ``(B, C, H, W)`` (a
    forecaster missing from ``forecasts`` has nothing at this lead)."""
    clim = None if run.climatology is None else run.climatology.at_lead(times, k)
    var_b = None
    if clim is not None:  # the truth's anomaly variance, shared by the forecasters
        b = truth - clim
        var_b = weighted_mean_hw(b * b, run.weights)
    for name, scores in run.scores.items():
        pred = clim if name == "climatology" else forecasts.get(name)
        if pred is not None:
            scores.update(k, pred, truth, run.weights, clim, var_b, masks.get(name))


def _rollout_batch(run: _Run, inp, tar, times) -> None:
    """Roll one batch out, score leads 0..T, hand raw forecasts and the captured IC on."""
    step = run.stepper
    init = step.denormalise(inp)
    want_model = "model" in run.scores
    raw = None
    if want_model and run.raw_forecast_writer is not None:
        raw = torch.empty((inp.shape[0], run.n_steps + 1) + tuple(inp.shape[1:]))  # (B, T+1, ...)
        raw[:, 0].copy_(init)
    steps = step.rollout(inp, run.n_steps) if want_model else iter(())
    model = init
    for k in range(run.n_steps + 1):
        truth = init if k == 0 else step.denormalise(tar[:, k - 1])
        if k > 0 and want_model:
            model = step.denormalise(next(steps).forecast)
            if raw is not None:
                raw[:, k].copy_(model)
        forecasts, masks = _compared_fields(run, k, times, truth)
        forecasts.update(persistence=init, **({"model": model} if want_model else {}))
        _score_lead(run, k, truth, forecasts, masks, times)
        run.capture.add(forecasts, truth)
    if raw is not None:
        for i, t in enumerate(times):
            run.raw_forecast_writer(t, raw[i].numpy())


def _results(run: _Run, n_ics, names, meta, lead_time, climatology, notes) -> RolloutResults:
    """Read the accumulated scores into :class:`RolloutResults` (notes on undefined ACCs)."""
    results = RolloutResults(
        lead_hours=np.arange(run.n_steps + 1, dtype=np.int64) * int(lead_time),
        channel_names=names,
        channels=meta,
        n_ics=n_ics,
        lead_time=int(lead_time),
        acc_available=climatology is not None,
        notes=notes,
        sample=run.capture.sample,
    )
    for f, acc in run.scores.items():
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
                warnings.warn(note, stacklevel=3)
    if climatology is None:
        warnings.warn(notes[0], stacklevel=3)
    return results


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
    compared: Sequence = (),
) -> RolloutResults:
    """Autoregressive rollout of ``step_fn`` over ``loader``; scores model and baselines.

    Args:
        step_fn: one-step forecast in normalised units, ``(B, C, H, W) -> (B, C, H, W)``
            (e.g. ``lambda x: model(x).forecast``; put the model in eval mode first). May be None
            when ``"model"`` is not among ``forecasters``.
        loader: iterable of ``(inp, tar, time_hours)`` batches (see the module docstring).
        n_steps: T, the number of autoregressive steps.
        mean, std: ``(C,)`` physical-unit normalisation statistics (``phys = x * std + mean``).
        lat: latitudes in degrees, length H.
        climatology: object with ``.field(time_hours: int) -> ndarray (C, H, W)`` in physical
            units, or None (then every ACC is NaN, ``acc_available`` is False and the
            climatology forecaster is skipped with a note).
        device: where the model and the metric sums run.
        forecasters: which of ``"model"``, ``"persistence"``, ``"climatology"`` to score.
        compared: forecasters given as fields (see the module docstring), scored after those,
            each under its ``name``; their ``notes`` go into the results' notes.
        progress: report progress over batches (:func:`utils.progress.progress_bar`).
        amp_dtype: None, ``"bf16"``/``"fp16"`` or a torch dtype: autocast around ``step_fn``
            (bf16 or fp16 on CUDA, bf16 on CPU); forecasts are cast back to float32 before
            being fed back and scored.
        raw_forecast_writer: called once per IC as ``writer(time_hours, forecast)`` with the
            model forecast for leads 0..T (lead 0: the initial state), ``(T + 1, C, H, W)``
            float32 physical units (needs the batch's forecasts in host memory while it runs).
        lead_time: hours per step (valid time of lead k = ``init + k * lead_time``).
        channels: ChannelLayout, list of Channel or list of names (for names in the results).
        capture_ic: index (in this rank's loader order) of an IC whose forecasts (the
            model's and the compared ones) and truth, leads 0..T, are kept in
            ``results.sample`` (for map plots); ``capture_channels`` restricts them to some
            channel indices (default all).
        max_batches: stop after this many batches of this rank (quick checks).

    Returns:
        :class:`RolloutResults` with ``(C, T + 1)`` arrays, ``lead_hours = [0, lt, ..., T lt]``.
    """
    if int(n_steps) < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    n_steps, device, notes = int(n_steps), torch.device(device), []
    forecasters = _check_forecasters(forecasters, step_fn, climatology, compared, notes)
    stepper = Stepper(step_fn, mean, std, device, resolve_amp_dtype(amp_dtype, device))
    names, meta = channel_meta(channels, stepper.n_channels)
    mapped = (["model"] if "model" in forecasters else []) + [c.name for c in compared]
    lat = latitudes_numpy(lat)
    run = _start_run(stepper, n_steps, forecasters, compared, lat, climatology, lead_time)
    run.capture = SampleCapture(capture_ic, capture_channels, mapped)
    run.raw_forecast_writer = raw_forecast_writer if "model" in forecasters else None
    notes.extend(note for c in compared for note in c.notes)
    n_ics = _roll_out_loader(
        run, loader if max_batches is None else _FirstItems(loader, max_batches), progress
    )
    if raw_forecast_writer is not None and "model" not in forecasters:
        notes.append("raw_forecast_writer ignored: the model is not scored")
    if capture_ic is not None and run.capture.sample is None:
        notes.append(
            f"capture_ic {capture_ic} not captured ({n_ics} ICs, forecasts to map: {mapped})"
        )
    return _results(run, n_ics, names, meta, lead_time, climatology, notes)


def _start_run(
    stepper: Stepper,
    n_steps: int,
    forecasters: Sequence[str],
    compared: Sequence,
    lat: np.ndarray,
    climatology,
    lead_time: int,
) -> _Run:
    """A :class:`_Run` with empty score sums ``(C, n_steps + 1)`` per forecaster (``compared``
    ones under their names), the latitude weights of ``lat`` (degrees, length H), no capture
    and no writer."""
    device, dtype = stepper.device, accumulation_dtype(stepper.device)
    names = [*forecasters, *(c.name for c in compared)]
    return _Run(
        stepper=stepper,
        n_steps=n_steps,
        scores={f: MetricAccumulator(stepper.n_channels, n_steps + 1, device) for f in names},
        weights=lat_weights_torch(lat, device, dtype),
        climatology=None
        if climatology is None
        else ClimatologyCache(climatology, lead_time, device, dtype),
        capture=SampleCapture(None, None),
        raw_forecast_writer=None,
        lead_time=int(lead_time),
        compared={c.name: c for c in compared},
    )


def _roll_out_loader(run: _Run, batches: Iterable, progress: bool) -> int:
    """Roll out and score every batch of ``batches``, then add the sums over the ranks; returns
    the number of ICs of every rank together."""
    stepper, n_lat, n_ics = run.stepper, run.weights.shape[0], 0
    with torch.inference_mode():
        for batch in progress_bar(batches, "rollout", unit="batch", enabled=progress):
            inp, tar, times = split_batch(batch, run.n_steps)
            if inp.shape[1] != stepper.n_channels or inp.shape[-2] != n_lat:
                raise ValueError(
                    f"fields {tuple(inp.shape)} do not match {stepper.n_channels} channels "
                    f"(normalisation statistics) and {n_lat} latitudes"
                )
            inp = inp.to(stepper.device, torch.float32, non_blocking=True)
            tar = tar.to(stepper.device, torch.float32, non_blocking=True)
            if run.climatology is not None:
                run.climatology.drop_before(min(times))
            run.capture.start_batch(n_ics, times, stepper.n_channels)
            _rollout_batch(run, inp, tar, times)
            run.capture.end_batch()
            n_ics += inp.shape[0]
    for scores in run.scores.values():
        scores.all_reduce()
    n_ics = int(all_reduce_sum(torch.tensor([n_ics], device=stepper.device)).item())
    if n_ics == 0:
        raise ValueError("the loader gave no batches")
    return n_ics


class _FirstItems:
    """The first ``n`` items of an iterable, with a length when the iterable has one."""

    def __init__(self, iterable: Iterable, n: int):
        self.iterable, self.n = iterable, int(n)

    def __len__(self) -> int:
        return min(len(self.iterable), self.n)  # type: ignore[arg-type]

    def __iter__(self):
        for i, item in enumerate(self.iterable):
            if i >= self.n:
                return
            yield item
