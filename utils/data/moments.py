"""Per-channel moments that can be computed in parts and merged exactly.

:class:`RunningMoments` holds a count, a mean and the sum of squared deviations (``m2``) in
float64 and combines them with Chan et al.'s pairwise formulas::

    n = n_a + n_b,  delta = mean_b - mean_a
    mean = mean_a + delta * n_b / n,  m2 = m2_a + m2_b + delta^2 * n_a * n_b / n

so the moments of a period computed in parts (by separate jobs, each over its own times) and
merged equal those computed in one pass, to float64 rounding. A part's moments are kept in a small
JSON file (:func:`save_partial_moments`), written atomically, and :func:`merge_partial_moments`
combines the files of every part.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

import numpy as np

from utils.atomic_io import atomic_write_text
from utils.errors import DataFileError, MissingDataError

PARTIAL_FORMAT = "vamoe-partial-moments-1"


class RunningMoments:
    """Streaming mean and (population) variance of many arrays, combined exactly in float64
    (Chan et al.'s parallel update), so one pass over decades of fields is numerically safe."""

    def __init__(self, n: int = 0, mean: float = 0.0, m2: float = 0.0):
        self.n = int(n)
        self.mean = float(mean)
        self.m2 = float(m2)

    def update(self, array: np.ndarray) -> None:
        """Add the values of ``array`` (any shape)."""
        a = np.asarray(array, dtype=np.float64)
        if a.size == 0:
            return
        mean_b = float(a.mean())
        self._combine(a.size, mean_b, float(np.square(a - mean_b).sum()))

    def merge(self, other: RunningMoments) -> None:
        """Add the values ``other`` holds (the moments of another part)."""
        if other.n:
            self._combine(other.n, other.mean, other.m2)

    def _combine(self, n_b: int, mean_b: float, m2_b: float) -> None:
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.n * n_b / n
        self.n = n

    @property
    def var(self) -> float:
        return self.m2 / self.n if self.n else float("nan")

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def as_list(self) -> list:
        """``[n, mean, m2]`` (JSON keeps float64 exactly)."""
        return [self.n, self.mean, self.m2]


def save_partial_moments(path: str, moments: dict[str, RunningMoments], **about) -> str:
    """Write one part's moments (``{channel name: moments}``) and what they cover (``about``:
    the part, its period, the number of times...) to ``path``, atomically."""
    doc = {**about, "format": PARTIAL_FORMAT}
    doc["moments"] = {name: m.as_list() for name, m in moments.items()}
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return path


def load_partial_moments(path: str) -> dict:
    """One part's file as written by :func:`save_partial_moments`, ``moments`` as
    :class:`RunningMoments`; errors name the file."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise MissingDataError(f"missing partial statistics {path}") from None
    except (OSError, ValueError) as err:
        raise DataFileError(f"cannot read partial statistics {path}: {err}") from None
    if not isinstance(doc, dict) or doc.get("format") != PARTIAL_FORMAT:
        raise DataFileError(f"{path}: not a partial statistics file ({PARTIAL_FORMAT})")
    doc["moments"] = {name: RunningMoments(*v) for name, v in doc["moments"].items()}
    return doc


def merge_partial_moments(parts: Sequence[dict], names: Sequence[str]) -> dict[str, RunningMoments]:
    """The moments of channels ``names`` over every part of ``parts`` (as loaded by
    :func:`load_partial_moments`), merged in part order."""
    merged = {name: RunningMoments() for name in names}
    for part in parts:
        for name in names:
            if name in part["moments"]:
                merged[name].merge(part["moments"][name])
            elif part.get("n_times"):
                where = part.get("path", "a part")
                raise DataFileError(f"{where}: no moments of channel {name!r}")
    return merged


def partial_path(directory: str, part: int, parts: int) -> str:
    """``<directory>/part-<I>-of-<N>.json``."""
    return os.path.join(directory, f"part-{part:04d}-of-{parts:04d}.json")
