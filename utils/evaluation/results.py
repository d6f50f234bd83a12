"""Result files of an evaluation run and the printed headline table.

:func:`save_results` writes, into an output directory (every file atomically: a temporary file in
the same directory, then ``os.replace``, so a crash never leaves a half-written result):

============================================  =============================================
``denormalized_lat_weight_rmse.npy``           model RMSE, physical units, ``(C, L)`` float64
``lat_weight_acc.npy``                         model ACC, ``(C, L)`` float64 (NaN: undefined)
``<name>_lat_weight_rmse.npy``                 same for ``persistence``, ``climatology`` and
``<name>_lat_weight_acc.npy``                  each compared forecaster (``--compare NAME=...``)
``lead_hours.npy``                             ``(L,)`` int64, the columns' lead times
``metrics.csv``                                ``forecaster,variable,level,lead_hours,rmse,acc,``
                                               ``rmse_ic_mean``
``metrics.json``                               everything above, structured (see below)
============================================  =============================================

``C`` channels in layout order, ``L = T + 1`` lead columns with column 0 the initial state (lead 0
h) and column k the k-th autoregressive step. In ``metrics.csv`` the level is empty for surface
variables and an undefined ACC is ``nan``.

``rmse`` is the square root of the mean latitude-weighted MSE over initial conditions
(WeatherBench 2's definition, the headline everywhere here). ``rmse_ic_mean`` is the mean of the
per-IC RMSEs, which FourCastNet-derived code (the paper's included) reports; it is never larger,
so compare a paper figure with this column. ``metrics.json``::

    {"config": str | null, "n_ics": int, "lead_time_hours": int, "lead_hours": [int],
     "acc_available": bool, "notes": [str],
     "channels": [{"name": "z500", "variable": "z", "level": 500}, ...],
     "forecasters": {"model": {"rmse": {"z500": [float, ...]}, "rmse_ic_mean": {...},
                               "acc": {...}, "acc_undefined": {"z500": [int, ...]}}, ...}}

(NaN is written as JSON ``null``.) :func:`load_results` reads it back into a
:class:`utils.evaluation.rollout.RolloutResults`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Sequence

import numpy as np

from utils.atomic_io import atomic_save_npy, atomic_write_text
from utils.evaluation.rollout import RolloutResults

MODEL_RMSE_FILE = "denormalized_lat_weight_rmse.npy"
MODEL_ACC_FILE = "lat_weight_acc.npy"
CSV_COLUMNS = ("forecaster", "variable", "level", "lead_hours", "rmse", "acc", "rmse_ic_mean")
SHORT_NAMES = {"model": "model", "persistence": "persist", "climatology": "clim"}

__all__ = [
    "result_file_names",
    "save_results",
    "load_results",
    "format_headline_table",
    "MODEL_RMSE_FILE",
    "MODEL_ACC_FILE",
    "CSV_COLUMNS",
]


# ------------------------------------------------------------------------------------ writing
def result_file_names(forecaster: str) -> dict[str, str]:
    """``{"rmse": file, "acc": file}`` for a forecaster (the model keeps the historical names)."""
    if forecaster == "model":
        return {"rmse": MODEL_RMSE_FILE, "acc": MODEL_ACC_FILE}
    return {"rmse": f"{forecaster}_lat_weight_rmse.npy", "acc": f"{forecaster}_lat_weight_acc.npy"}


def _num(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def _csv_num(x) -> str:
    x = float(x)
    return "nan" if math.isnan(x) else repr(x)


def _to_json(results: RolloutResults, config_name: str | None) -> dict:
    forecasters = {}
    for f in results.forecasters:
        forecasters[f] = {
            key: {
                name: [(int(v) if key == "acc_undefined" else _num(v)) for v in row]
                for name, row in zip(results.channel_names, arrays[f], strict=False)
            }
            for key, arrays in (
                ("rmse", results.rmse),
                ("rmse_ic_mean", results.rmse_ic_mean),
                ("acc", results.acc),
                ("acc_undefined", results.acc_undefined),
            )
        }
    return {
        "config": config_name,
        "n_ics": int(results.n_ics),
        "lead_time_hours": int(results.lead_time),
        "lead_hours": [int(h) for h in results.lead_hours],
        "acc_available": bool(results.acc_available),
        "notes": list(results.notes),
        "channels": [
            {"name": n, "variable": v, "level": lev}
            for n, (v, lev) in zip(results.channel_names, results.channels, strict=False)
        ],
        "forecasters": forecasters,
    }


def _to_csv(results: RolloutResults) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for f in results.forecasters:
        for c, (variable, level) in enumerate(results.channels):
            for k, hours in enumerate(results.lead_hours):
                writer.writerow(
                    [
                        f,
                        variable,
                        "" if level is None else level,
                        int(hours),
                        _csv_num(results.rmse[f][c, k]),
                        _csv_num(results.acc[f][c, k]),
                        _csv_num(results.rmse_ic_mean[f][c, k]),
                    ]
                )
    return out.getvalue()


def save_results(
    results: RolloutResults,
    out_dir: str,
    config_name: str | None = None,
    provenance: dict | None = None,
) -> dict[str, str]:
    """Write every result file of ``results`` into ``out_dir``; returns ``{label: path}``.

    ``provenance`` (plain JSON values: weights file, its epoch, the configuration, ...) is added
    to ``metrics.json`` as top-level keys."""
    os.makedirs(out_dir, exist_ok=True)
    written: dict[str, str] = {}
    for f in results.forecasters:
        for metric, name in result_file_names(f).items():
            path = os.path.join(out_dir, name)
            array = results.rmse[f] if metric == "rmse" else results.acc[f]
            atomic_save_npy(path, np.asarray(array, dtype=np.float64))
            written[f"{f}_{metric}"] = path
    path = os.path.join(out_dir, "lead_hours.npy")
    atomic_save_npy(path, np.asarray(results.lead_hours, dtype=np.int64))
    written["lead_hours"] = path
    path = os.path.join(out_dir, "metrics.csv")
    atomic_write_text(path, _to_csv(results))
    written["csv"] = path
    path = os.path.join(out_dir, "metrics.json")
    atomic_write_text(
        path,
        json.dumps(
            {**_to_json(results, config_name), **(provenance or {})}, indent=1, allow_nan=False
        )
        + "\n",
    )
    written["json"] = path
    return written


def load_results(path: str) -> RolloutResults:
    """Read ``metrics.json`` (or a directory holding it) back into a RolloutResults."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.json")
    with open(path) as fh:
        doc = json.load(fh)
    names = [c["name"] for c in doc["channels"]]
    res = RolloutResults(
        lead_hours=np.asarray(doc["lead_hours"], dtype=np.int64),
        channel_names=names,
        channels=[(c["variable"], c["level"]) for c in doc["channels"]],
        n_ics=int(doc["n_ics"]),
        lead_time=int(doc["lead_time_hours"]),
        acc_available=bool(doc["acc_available"]),
        notes=list(doc["notes"]),
    )

    def nan(rows):
        return np.array(
            [[np.nan if v is None else v for v in rows[n]] for n in names], dtype=np.float64
        )

    for f, block in doc["forecasters"].items():
        res.rmse[f] = nan(block["rmse"])
        # NaN for files written before the column existed.
        res.rmse_ic_mean[f] = (
            nan(block["rmse_ic_mean"])
            if "rmse_ic_mean" in block
            else np.full_like(res.rmse[f], np.nan)
        )
        res.acc[f] = nan(block["acc"])
        res.acc_undefined[f] = np.array([block["acc_undefined"][n] for n in names], dtype=np.int64)
    return res


# ------------------------------------------------------------------------------------ table
def _fmt(x: float, kind: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.3f}" if kind == "acc" else f"{x:.4g}"


def lead_label(hours: float) -> str:
    """A lead time for people: whole days as ``'1 d'``, ``'5 d'``; anything under a day or not a
    whole number of days in hours (``'1 h'``, ``'6 h'``, ``'36 h'``)."""
    hours = float(hours)
    if hours >= 24 and (hours / 24).is_integer():
        return f"{hours / 24:g} d"
    return f"{hours:g} h"


def format_headline_table(
    results: RolloutResults,
    headline_names: Sequence[str],
    days: Iterable[float],
    reference=None,
) -> str:
    """Text table: headline variables x requested lead days, RMSE and ACC per forecaster.

    Forecasters appear in the order of the results (model, persistence, climatology, then the
    compared ones, each under its name). Variables
    absent from the results and days that are not a lead of the rollout (beyond it, or not a
    multiple of the step) are skipped, each with a note under the table. With ``reference``
    (``{name: (lead_hours, rmse)}``, the paper's curves) a column ``RMSE paper`` follows the
    RMSE columns (``n/a`` where the reference has no value at that lead).
    """
    fcs = results.forecasters
    short = {f: SHORT_NAMES.get(f, f) for f in fcs}
    paper = ["RMSE paper"] if reference else []
    header = (
        ["variable", "lead"]
        + [f"RMSE {short[f]}" for f in fcs]
        + paper
        + [f"ACC {short[f]}" for f in fcs]
    )
    rows: list[list[str]] = []
    notes: list[str] = []
    leads = []
    for d in days:
        k = results.lead_index(float(d) * 24.0)
        if k is None:
            notes.append(
                f"lead {lead_label(24.0 * float(d))} skipped: not in the rollout "
                f"(leads {int(results.lead_hours[0])}..{int(results.lead_hours[-1])} h "
                f"every {results.lead_time} h)"
            )
        else:
            leads.append((float(d), k))
    for name in headline_names:
        if name not in results.channel_names:
            notes.append(f"{name} skipped: not in this configuration's channels")
            continue
        c = results.channel_index(name)
        for d, k in leads:
            rows.append(
                [name, lead_label(24.0 * d)]
                + [_fmt(float(results.rmse[f][c, k]), "rmse") for f in fcs]
                + (
                    [_fmt(_reference_at(reference, name, float(results.lead_hours[k])), "rmse")]
                    if paper
                    else []
                )
                + [_fmt(float(results.acc[f][c, k]), "acc") for f in fcs]
            )
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def line(r):
        return "  ".join(
            v.ljust(w) if i < 2 else v.rjust(w)
            for i, (v, w) in enumerate(zip(r, widths, strict=False))
        ).rstrip()

    out = [
        f"Latitude-weighted RMSE (physical units) and ACC over {results.n_ics} initial conditions",
        line(header),
        line(["-" * w for w in widths]),
    ]
    out += [line(r) for r in rows]
    if not rows:
        out.append("(no rows: no headline variable at a requested lead)")
    if not results.acc_available:
        notes.append("ACC unavailable: no climatology")
    elif "climatology" in fcs:
        notes.append("climatology ACC is undefined (zero anomaly) by construction")
    if paper:
        notes.append(
            "RMSE paper: the paper's curve (docs/paper_rmse_curves.csv, read off its figure, "
            "about 3 %); compare it with rmse_ic_mean of metrics.csv"
        )
    out += [f"note: {n}" for n in notes]
    return "\n".join(out)


def _reference_at(reference, name: str, hours: float) -> float:
    """The reference RMSE of ``name`` at a lead (hours), NaN where it has none."""
    if name not in reference:
        return math.nan
    lead_hours, rmse = reference[name]
    hits = np.nonzero(np.isclose(np.asarray(lead_hours, dtype=float), hours, atol=1e-6))[0]
    return float(rmse[hits[0]]) if len(hits) else math.nan
