"""The paper's RMSE curves, shipped as ``docs/paper_rmse_curves.csv``, as a reference for the
evaluation.

The file holds the latitude-weighted RMSE of the paper's incremental VA-MoE on ERA5 at 1.40625°
(test year 2021) for Z500, T850, T2M and U10 every 6 h to 5 days, read off the results figure of
the original repository (about ±3 %; its ``#`` lines say so). Columns: ``lead_hours`` and one per
channel name, physical units.

:func:`paper_reference` gives the curves of the channels a configuration has, and nothing when its
grid is not the paper's 128 × 256 (a curve on another grid is not comparable);
``inference.py`` draws them in ``rmse_acc.png`` and prints them as a column of the headline table
(config key ``paper_reference``).
"""

import os

import numpy as np

PAPER_CURVES = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "docs",
    "paper_rmse_curves.csv",
)
PAPER_GRID = (128, 256)


def read_paper_curves(path: str = PAPER_CURVES) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{channel name: (lead_hours (L,), rmse (L,))}`` of a curves CSV (``#`` lines skipped)."""
    with open(path) as f:
        lines = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    header = lines[0].split(",")
    if header[0] != "lead_hours":
        raise ValueError(f"{path}: first column must be 'lead_hours', got {header[0]!r}")
    table = np.array([[float(v) for v in ln.split(",")] for ln in lines[1:]], dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != len(header):
        raise ValueError(f"{path}: every row needs {len(header)} values")
    return {name: (table[:, 0], table[:, i]) for i, name in enumerate(header) if i > 0}


def paper_reference(
    channel_names, h_size: int, w_size: int, path: str = PAPER_CURVES
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The paper's curves of the channels in ``channel_names``; empty off the paper's grid."""
    if (h_size, w_size) != PAPER_GRID:
        return {}
    return {n: curve for n, curve in read_paper_curves(path).items() if n in channel_names}
