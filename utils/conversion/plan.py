"""The pending work of a resolved conversion request: the fields not on disk yet, as writer jobs.

A field already in the layout is skipped (unless ``overwrite``), so a killed conversion continues
where it stopped; each day directory is listed once, and stale temporaries of a killed run are
removed on the way.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import numpy as np

from utils.atomic_io import remove_stale_temporaries
from utils.channels import ERA5_LEVELS
from utils.conversion.request import InputPlan, ResolvedRequest
from utils.conversion.writer import Job
from utils.data.npy_layout import day_dir, list_day, surface_name, upper_name
from utils.times import from_hours


@dataclass
class PendingWork:
    """What a conversion writes and what the layout then holds.

    Attributes:
        jobs: the fields still to write, one :class:`Job` per input and time.
        skipped: fields already on disk (not rewritten).
        upper: upper-air variable -> its levels (hPa, in ERA5 order); surface: surface variables.
        times: every time converted (hours since 1970), written now or before.
    """

    jobs: list[Job]
    skipped: int
    upper: dict[str, list[int]]
    surface: list[str]
    times: set[int]

    @property
    def first_day(self) -> str:
        """The first day converted, ``YYYY-MM-DD``."""
        return from_hours(min(self.times)).date().isoformat()

    @property
    def last_day(self) -> str:
        """The last day converted, ``YYYY-MM-DD``."""
        return from_hours(max(self.times)).date().isoformat()


def plan_jobs(request: ResolvedRequest, overwrite: bool = False) -> PendingWork:
    """The jobs of the fields of ``request`` not on disk yet (all of them with ``overwrite``)."""
    upper, surface = _variables(request.plans)
    listings = _DayListings(request.root_dir)
    jobs, skipped, times = [], 0, set()
    for plan in request.plans:
        hours = np.round(request.opened[plan.index].times[plan.time_index]).astype(np.int64)
        for position, hour in zip(plan.time_index, hours, strict=True):
            when = from_hours(int(hour))
            times.add(int(hour))
            # listed first even with overwrite, so that stale temporaries are removed
            todo = [
                (var, p) for var, p in plan.fields if listings.missing(when, var, p) or overwrite
            ]
            skipped += len(plan.fields) - len(todo)
            if todo:
                jobs.append(Job(plan.index, int(position), int(hour), tuple(todo)))
    return PendingWork(jobs, skipped, upper, surface, times)


def _variables(plans: list[InputPlan]) -> tuple[dict[str, list[int]], list[str]]:
    """``({upper var: levels in ERA5 order}, [surface vars])`` of the fields of ``plans``, each
    variable where it first appears."""
    upper: dict = {}
    surface: list = []
    for plan in plans:
        for var, p in plan.fields:
            if p is None and var not in surface:
                surface.append(var)
            elif p is not None:
                upper.setdefault(var, set()).add(p)
    return {v: sorted(levels, key=ERA5_LEVELS.index) for v, levels in upper.items()}, surface


class _DayListings:
    """The files of each day directory of the layout under ``root_dir``, listed once (stale
    temporaries removed first)."""

    def __init__(self, root_dir: str):
        self.root_dir = root_dir
        self.listed: dict = {}

    def missing(self, when: datetime.datetime, var: str, level: int | None) -> bool:
        """Whether the field of ``var`` (at ``level``; None: surface) at ``when`` is not on disk."""
        surface = level is None
        key = (when.date(), surface)
        if key not in self.listed:
            remove_stale_temporaries(day_dir(self.root_dir, when, surface))
            self.listed[key] = list_day(self.root_dir, when.date(), surface)
        if surface:
            return surface_name(when.hour, var) not in self.listed[key]
        return upper_name(when.hour, var, level) not in self.listed[key]
