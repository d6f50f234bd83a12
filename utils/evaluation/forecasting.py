"""Forecasts from chosen initial states (``python -m tools.forecast``): each state normalised with
the training statistics as the dataset normalises it, rolled out by the same
:class:`utils.evaluation.stepper.Stepper` as the evaluation, and written to a store of the
WeatherBench 2 layout (:mod:`utils.evaluation.forecast_store`) one start at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from utils.data.samples import make_reader
from utils.evaluation.forecast_store import StoreWriter
from utils.evaluation.stepper import Stepper
from utils.progress import progress_bar


def dataset_states(params, times: Sequence[int]) -> np.ndarray:
    """The states at ``times`` (hours since 1970) of the dataset at ``root_dir`` (``data_format``
    ``npy`` or ``h5``): float32 ``(N, C, H, W)``, physical units."""
    reader = make_reader(params, "test", str(params["root_dir"]))
    shape = (len(times), params.layout.n_channels, int(params.h_size), int(params.w_size))
    states = np.empty(shape, dtype=np.float32)
    for i, t in enumerate(times):
        reader.read(int(t), states[i])
    return states


def normalise_states(states: np.ndarray, mean, std) -> np.ndarray:
    """``(N, C, H, W)`` physical states z-scored per channel in float32, as
    :class:`utils.data.dataset.ERA5Dataset` does (``(x - mean) * (1 / std)``)."""
    mean = np.asarray(mean, dtype=np.float32)[:, None, None]
    inv_std = (1.0 / np.asarray(std, dtype=np.float64)).astype(np.float32)[:, None, None]
    return (np.asarray(states, dtype=np.float32) - mean) * inv_std


def run_forecasts(
    stepper: Stepper,
    statistics: tuple[np.ndarray, np.ndarray],
    states: np.ndarray,
    times: Sequence[int],
    n_steps: int,
    writer: StoreWriter,
    keep: tuple[list[int], list[int]] | None = None,
    progress: bool = True,
) -> np.ndarray | None:
    """Roll every state of ``states`` ``(N, C, H, W)`` (physical units, starts ``times``) out
    ``n_steps`` steps of ``stepper`` and write its leads 0..n_steps (lead 0: the state itself)
    to ``writer``. ``statistics``: the ``(mean, std)`` ``(C,)`` the stepper de-normalises with.

    ``keep``: ``(channels, lead indices)`` of the first start to return, ``(L, V, H, W)`` (for
    maps); None returns nothing.
    """
    kept = None
    normalised = normalise_states(states, *statistics)
    channels = writer.spec.layout.channel_indices
    for i in progress_bar(range(len(times)), "forecast", unit="start", enabled=progress):
        forecast = np.empty((n_steps + 1, *states.shape[1:]), dtype=np.float32)
        forecast[0] = states[i]
        x0 = torch.from_numpy(normalised[i : i + 1]).to(stepper.device)
        with torch.inference_mode():
            for k, step in enumerate(stepper.rollout(x0, n_steps), start=1):
                forecast[k] = stepper.denormalise(step.forecast)[0].float().cpu().numpy()
        writer.write(int(times[i]), forecast[:, channels])
        if i == 0 and keep is not None:
            kept = forecast[keep[1]][:, keep[0]]
    return kept
