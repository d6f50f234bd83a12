"""The pending work of a resolved conversion request, in batches the writer makes durable at once.

``.npy`` output (:func:`plan_jobs`): the fields not on disk yet, as writer jobs (one input at one
time), grouped into one batch per day (:meth:`PendingWork.batches`). A field counts as on disk
only when its day directory's record of durable files names it (:mod:`utils.batch_io`), so the
files of a batch a kill interrupted are written again and the recorded batches never are. Each
day directory is listed once, and stale temporaries of a killed run are removed on the way.

HDF5 output (:func:`plan_years`): one :class:`YearJob` per year whose file is not complete yet,
with the inputs that give each of its rows; a time at which some channel has no input is left out
(and counted).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from itertools import groupby

import numpy as np

from utils.atomic_io import remove_stale_temporaries
from utils.batch_io import durable_names
from utils.channels import ERA5_LEVELS, Channel
from utils.conversion.request import InputPlan, ResolvedRequest
from utils.conversion.writer import Job, YearJob
from utils.data.h5_layout import year_path
from utils.data.h5_year_writer import complete_year_file
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
        years: with HDF5 output, the year files still to write (``jobs`` is then empty).
        incomplete: with HDF5 output, the times left out because a channel has no input there.
    """

    jobs: list[Job]
    skipped: int
    upper: dict[str, list[int]]
    surface: list[str]
    times: set[int]
    years: list[YearJob] = field(default_factory=list)
    incomplete: list[int] = field(default_factory=list)

    @property
    def first_day(self) -> str:
        """The first day converted, ``YYYY-MM-DD``."""
        return from_hours(min(self.times)).date().isoformat()

    @property
    def last_day(self) -> str:
        """The last day converted, ``YYYY-MM-DD``."""
        return from_hours(max(self.times)).date().isoformat()

    @property
    def channels(self) -> list[Channel]:
        """The channels converted, in the order of the year files: upper-air variables by
        name, each at its levels in ERA5 order (1000 hPa first), then surface variables by name."""
        upper = [Channel(v, p) for v in sorted(self.upper) for p in self.upper[v]]
        return upper + [Channel(s) for s in sorted(self.surface)]

    def batches(self) -> list[tuple[Job, ...]]:
        """The jobs grouped by day (one durable batch each), in time order."""
        ordered = sorted(self.jobs, key=lambda j: (j.hours, j.source))
        return [tuple(day) for _, day in groupby(ordered, key=lambda j: j.hours // 24)]

    def pending_times(self) -> list[int]:
        """The times (hours) some field or row of which is still to write."""
        hours = {j.hours for j in self.jobs}
        hours.update(int(t) for y in self.years for t in y.times)
        return sorted(hours)


def plan_jobs(request: ResolvedRequest, overwrite: bool = False) -> PendingWork:
    """The jobs of the fields of ``request`` not on disk yet (all of them with ``overwrite``)."""
    upper, surface = selected_variables(request.plans)
    listings = _DayListings(request.root_dir)
    jobs, skipped, times = [], 0, set()
    for plan in request.plans:
        hours = _plan_hours(request, plan)
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


def plan_years(request: ResolvedRequest, overwrite: bool = False) -> PendingWork:
    """The year files of ``request`` still to write (complete ones are skipped unless
    ``overwrite``), each with the jobs of every row; see the module doc."""
    upper, surface = selected_variables(request.plans)
    work = PendingWork([], 0, upper, surface, set())
    names = [c.name for c in work.channels]
    by_time: dict[int, list[Job]] = {}
    for plan in request.plans:
        for position, hour in zip(plan.time_index, _plan_hours(request, plan), strict=True):
            by_time.setdefault(int(hour), []).append(
                Job(plan.index, int(position), int(hour), tuple(plan.fields))
            )
    wanted = set(names)
    rows = {}
    for hour, jobs in sorted(by_time.items()):
        given = {Channel(v, p).name for job in jobs for v, p in job.fields}
        if given >= wanted:
            rows[hour] = jobs
        else:
            work.incomplete.append(hour)
    work.times = set(rows)
    grid = (request.lat, request.lon)
    for year, hours in groupby(sorted(rows), key=lambda h: from_hours(h).year):
        times = np.array(list(hours), dtype=np.int64)
        path = year_path(request.root_dir, year)
        if not overwrite and complete_year_file(path, times, names, *grid):
            work.skipped += len(times) * len(names)
            continue
        row_jobs = [tuple(rows[int(t)]) for t in times]
        work.years.append(YearJob(year, path, times, tuple(names), row_jobs, grid))
    return work


def _plan_hours(request: ResolvedRequest, plan: InputPlan) -> np.ndarray:
    """The hours (int64, since 1970) of ``plan``'s times."""
    return np.round(request.opened[plan.index].times[plan.time_index]).astype(np.int64)


def selected_variables(plans: list[InputPlan]) -> tuple[dict[str, list[int]], list[str]]:
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
    """The durable files of each day directory of the layout under ``root_dir``: those both
    present and named by the directory's record, listed once (stale temporaries removed first)."""

    def __init__(self, root_dir: str):
        self.root_dir = root_dir
        self.listed: dict = {}

    def missing(self, when: datetime.datetime, var: str, level: int | None) -> bool:
        """Whether the field of ``var`` (at ``level``; None: surface) at ``when`` is not on disk
        as a durable file."""
        surface = level is None
        key = (when.date(), surface)
        if key not in self.listed:
            directory = day_dir(self.root_dir, when, surface)
            remove_stale_temporaries(directory)
            on_disk = list_day(self.root_dir, when.date(), surface)
            self.listed[key] = on_disk & durable_names(directory)
        if surface:
            return surface_name(when.hour, var) not in self.listed[key]
        return upper_name(when.hour, var, level) not in self.listed[key]
