"""Evaluation figures (matplotlib, Agg backend: no display needed).

* :func:`plot_rmse_acc`: RMSE and ACC against lead time for the headline variables, the model
  against the persistence and climatology baselines and the compared forecasts
  (``rmse_acc.png``).
* :func:`plot_maps`: truth, then forecast and error of each forecaster (the model and the
  compared forecasts), for a few variables at a few leads of one initial condition
  (``maps.png``); :func:`nearest_leads` picks available leads (e.g. day 1 and day 5, or the
  nearest the rollout has).
* :func:`plot_forecast_maps`: maps of a forecast alone, variables by leads (``tools.forecast``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from utils.atomic_io import atomic_write  # noqa: E402
from utils.evaluation.results import lead_label  # noqa: E402

__all__ = ["plot_rmse_acc", "plot_maps", "plot_forecast_maps", "nearest_leads"]

_STYLE = {
    "model": dict(color="C0", lw=2.0, marker="o", ms=3),
    "persistence": dict(color="C1", lw=1.2, ls="--"),
    "climatology": dict(color="C2", lw=1.2, ls=":"),
    "paper": dict(color="k", lw=1.2, ls="-.", marker="x", ms=3),
}
_COMPARED_MARKERS = ("s", "^", "v", "D", "P", "*")


def _style(forecaster: str, position: int) -> dict:
    """The line style of a forecaster; the compared ones (``position`` among them) get the
    colours after the baselines' and markers of their own."""
    if forecaster in _STYLE:
        return _STYLE[forecaster]
    marker = _COMPARED_MARKERS[position % len(_COMPARED_MARKERS)]
    return dict(color=f"C{3 + position}", lw=1.6, marker=marker, ms=3)


def _save(fig, path: str, dpi: int) -> str:
    """Render to PNG and write it atomically (temporary file, then os.replace)."""
    try:
        atomic_write(path, lambda f: fig.savefig(f, dpi=dpi, bbox_inches="tight", format="png"))
    finally:
        plt.close(fig)
    return path


def plot_rmse_acc(
    results, headline_names: Sequence[str], path: str, dpi: int = 110, reference=None
) -> str:
    """RMSE (top rows) and ACC (bottom rows) vs lead time for the headline variables present
    (lead axis in days when the rollout reaches two days, else in hours), one line per
    forecaster of the results (a line that is NaN throughout is left out).

    ``results`` is a :class:`utils.evaluation.rollout.RolloutResults`. Lead 0 is left out (it is the
    initial state). ``reference`` (``{name: (lead_hours, rmse)}``, e.g. the paper's curves of
    :func:`utils.evaluation.paper_reference.paper_reference`) is drawn beside the model's RMSE as "paper".
    Returns ``path``.
    """
    names = [n for n in headline_names if n in results.channel_names]
    if not names:
        raise ValueError(f"none of {list(headline_names)} is among the result channels")
    fcs = results.forecasters
    styles = {f: _style(f, i) for i, f in enumerate(f for f in fcs if f not in _STYLE)}
    styles.update({f: _STYLE[f] for f in fcs if f in _STYLE})
    cols = min(4, len(names))
    grid_rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(
        2 * grid_rows, cols, figsize=(3.6 * cols, 2.7 * 2 * grid_rows), squeeze=False
    )
    leads = np.asarray(results.lead_hours, dtype=float)
    sel = leads > 0
    in_days = leads.max(initial=0.0) >= 48
    x = leads[sel] / 24.0 if in_days else leads[sel]
    for block, metric in enumerate(("rmse", "acc")):
        table = results.rmse if metric == "rmse" else results.acc
        for i in range(grid_rows * cols):
            ax = axes[block * grid_rows + i // cols, i % cols]
            if i >= len(names):
                ax.set_visible(False)
                continue
            c = results.channel_index(names[i])
            for f in fcs:
                values = np.asarray(table[f][c], dtype=float)[sel]
                if np.all(np.isnan(values)):
                    continue
                ax.plot(x, values, label=f, **styles[f])
            if metric == "rmse" and reference and names[i] in reference:
                ref_hours, ref_rmse = reference[names[i]]
                ref_x = np.asarray(ref_hours, dtype=float) / (24.0 if in_days else 1.0)
                ax.plot(ref_x, ref_rmse, label="paper", **_STYLE["paper"])
            ax.set_title(f"{names[i]} {metric.upper()}", fontsize=10)
            ax.grid(alpha=0.3)
            ax.set_xlabel("lead (days)" if in_days else "lead (hours)", fontsize=8)
            ax.tick_params(labelsize=8)
            if metric == "acc":
                ax.set_ylim(top=1.02)
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=False):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(
        handles,
        labels,
        loc="upper center",
        ncol=len(labels),
        frameon=False,
        bbox_to_anchor=(0.5, 1.0),
    )
    extra = "" if results.acc_available else " (ACC unavailable: no climatology)"
    fig.suptitle(
        f"Latitude-weighted RMSE and ACC, {results.n_ics} initial conditions{extra}", y=1.03
    )
    fig.tight_layout()
    return _save(fig, path, dpi)


def nearest_leads(lead_hours: Sequence[float], wanted_hours: Sequence[float]) -> list[int]:
    """Indices of the available leads nearest each wanted lead (lead 0 excluded when possible),
    without repeats, in the wanted order."""
    leads = np.asarray(lead_hours, dtype=float)
    candidates = np.nonzero(leads > 0)[0] if np.any(leads > 0) else np.arange(len(leads))
    out: list[int] = []
    for w in wanted_hours:
        k = int(candidates[np.argmin(np.abs(leads[candidates] - float(w)))])
        if k not in out:
            out.append(k)
    return out


def plot_maps(
    forecasts,
    truth,
    lat,
    lon,
    names: Sequence[str],
    leads: Sequence[float],
    path: str,
    title: str | None = None,
    dpi: int = 100,
) -> str:
    """Truth, forecast and error maps.

    Args:
        forecasts: ``{forecaster: (L, V, H, W)}`` physical-unit fields of one initial condition
            (a single array stands for ``{"forecast": array}``), L = ``len(leads)``, V =
            ``len(names)``.
        truth: ``(L, V, H, W)``.
        lat, lon: degrees, lengths H (north to south) and W.
        names: variable names (titles), e.g. ``["z500", "t2m"]``.
        leads: lead hours of the L slices (titles).
        path: output PNG.

    One row per (variable, lead); columns truth, then forecast | error (forecast - truth) of
    each forecaster. Truth and forecasts share a colour scale per row, and so do the errors
    (symmetric about 0); NaN (a forecast file lacking the field) is left blank.
    """
    if not isinstance(forecasts, dict):
        forecasts = {"forecast": forecasts}
    forecasts = {k: np.asarray(v, dtype=float) for k, v in forecasts.items()}
    truth = np.asarray(truth, dtype=float)
    _check_map_shapes(forecasts, truth, names, leads, lat, lon)
    L, V = truth.shape[:2]
    fig, axes = plt.subplots(
        V * L,
        1 + 2 * len(forecasts),
        figsize=(4.5 * (1 + 2 * len(forecasts)), 2.9 * V * L),
        squeeze=False,
    )
    extent, origin = _map_extent(lat, lon)
    for v in range(V):
        for k in range(L):
            label = f"{names[v]} +{lead_label(leads[k])}"
            fields = {n: f[k, v] for n, f in forecasts.items()}
            _map_row(fig, axes[v * L + k], label, truth[k, v], fields, extent, origin)
            axes[v * L + k][0].set_ylabel("latitude", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("longitude (deg E)", fontsize=8)
    if title:
        fig.suptitle(title, y=1.0)
    fig.tight_layout()
    return _save(fig, path, dpi)


def _check_map_shapes(forecasts: dict, truth, names, leads, lat, lon) -> None:
    """Every forecast and the truth ``(L, V, H, W)`` with L leads, V names and the grid's H, W."""
    if truth.ndim != 4 or any(f.shape != truth.shape for f in forecasts.values()):
        shapes = {n: f.shape for n, f in forecasts.items()}
        raise ValueError(f"forecasts {shapes} and truth {truth.shape} must all be (L, V, H, W)")
    L, V, H, W = truth.shape
    if L != len(leads) or V != len(names):
        raise ValueError(
            f"fields have {L} leads and {V} variables; got {len(leads)} lead labels "
            f"and {len(names)} names"
        )
    if len(lat) != H or len(lon) != W:
        raise ValueError(f"{len(lat)} latitudes / {len(lon)} longitudes for {H} x {W} fields")


def _map_extent(lat, lon) -> tuple[tuple, str]:
    """``imshow``'s extent (cell edges) and origin for a grid in degrees."""
    lat, lon = np.asarray(lat, dtype=float), np.asarray(lon, dtype=float)
    H, W = len(lat), len(lon)
    dlon = (lon[1] - lon[0]) if W > 1 else 360.0
    dlat = abs(lat[0] - lat[1]) if H > 1 else 180.0
    extent = (lon[0] - dlon / 2, lon[-1] + dlon / 2, lat.min() - dlat / 2, lat.max() + dlat / 2)
    return extent, "upper" if H < 2 or lat[0] > lat[-1] else "lower"


def _map_row(fig, row, label: str, truth, forecasts: dict, extent, origin) -> None:
    """One row of :func:`plot_maps`: ``truth`` ``(H, W)`` and each forecaster's forecast and
    error."""
    errors = {n: f - truth for n, f in forecasts.items()}
    finite = [truth] + [f for f in forecasts.values() if np.isfinite(f).any()]
    lo = min(float(np.nanmin(f)) for f in finite)
    hi = max(float(np.nanmax(f)) for f in finite)
    emax = max([float(np.nanmax(np.abs(e))) for e in errors.values() if np.isfinite(e).any()] + [0])
    emax = emax or 1e-12
    panels = [(truth, "truth", dict(cmap="viridis", vmin=lo, vmax=hi))]
    for name, field in forecasts.items():
        panels.append((field, name, dict(cmap="viridis", vmin=lo, vmax=hi)))
        panels.append((errors[name], f"{name} error", dict(cmap="RdBu_r", vmin=-emax, vmax=emax)))
    for ax, (data, ttl, kw) in zip(row, panels, strict=True):
        if not np.isfinite(data).any():
            ttl += " (none)"
        im = ax.imshow(
            data, extent=extent, origin=origin, aspect="auto", interpolation="nearest", **kw
        )
        ax.set_title(f"{label}: {ttl}", fontsize=9)
        ax.tick_params(labelsize=7)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=7)


def plot_forecast_maps(
    fields,
    lat,
    lon,
    names: Sequence[str],
    leads: Sequence[float],
    path: str,
    title: str | None = None,
    dpi: int = 100,
) -> str:
    """Maps of a forecast without a truth to compare with (``python -m tools.forecast``).

    Args:
        fields: ``(L, V, H, W)`` physical-unit fields of one initial condition, L =
            ``len(leads)``, V = ``len(names)``.
        lat, lon: degrees, lengths H (either order) and W.
        names: variable names (row titles); leads: lead hours of the L columns.
        path: output PNG.

    One row per variable, one column per lead, one colour scale per variable. Returns ``path``.
    """
    fields = np.asarray(fields, dtype=float)
    if fields.ndim != 4 or fields.shape[:2] != (len(leads), len(names)):
        raise ValueError(f"fields {fields.shape} are not ({len(leads)} leads, {len(names)}, H, W)")
    lat, lon = np.asarray(lat, dtype=float), np.asarray(lon, dtype=float)
    extent, origin = _map_extent(lat, lon)
    n_leads, n_vars = fields.shape[:2]
    fig, axes = plt.subplots(n_vars, n_leads, figsize=(4.6 * n_leads, 2.6 * n_vars), squeeze=False)
    for v in range(n_vars):
        lo, hi = np.nanmin(fields[:, v]), np.nanmax(fields[:, v])
        for k in range(n_leads):
            ax = axes[v, k]
            style = dict(cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest")
            im = ax.imshow(fields[k, v], extent=extent, origin=origin, aspect="auto", **style)
            ax.set_title(f"{names[v]} +{lead_label(leads[k])}", fontsize=9)
            ax.tick_params(labelsize=7)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=7)
        axes[v, 0].set_ylabel("latitude", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("longitude (deg E)", fontsize=8)
    if title:
        fig.suptitle(title, y=1.0)
    fig.tight_layout()
    return _save(fig, path, dpi)
