"""A conversion request, checked and resolved against its inputs.

:func:`check_options` checks what the command line asks for (hour step, workers, period,
variables, levels) and gives a :class:`Selection`; :func:`resolve` opens the inputs, checks that
they hold the selection, finds what each input contributes (:class:`InputPlan`), the output grid
and the regridder of each input, and gives a :class:`ResolvedRequest`. Nothing is read here but
coordinates.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from utils.channels import ERA5_LEVELS
from utils.conversion.normalise_input import InputOptions, NormalisedInput, normalise
from utils.conversion.regrid import ConservativeRegridder
from utils.conversion.sources import InputSource, find_inputs
from utils.conversion.variable_names import (
    PROJECT_VARIABLES,
    ConversionError,
    is_upper,
    project_name,
)
from utils.grid import latitudes, longitudes, read_grid
from utils.times import from_hours, period_bounds

IGNORED_SHOWN = 20  # unrecognised variables named per input in the warning


@dataclass(frozen=True)
class Selection:
    """What to convert, checked.

    Attributes:
        variables: project names (None: every recognised variable).
        levels: pressure levels in hPa (None: every level of the inputs).
        start, end: the period as given (None: any time).
        first, last: the period's first and last hour since 1970 (None: any time).
        hour_step: the hours of day kept are multiples of it (a divisor of 24).
    """

    variables: list[str] | None
    levels: list[int] | None
    start: object
    end: object
    first: int | None
    last: int | None
    hour_step: int

    def time_positions(self, hours: np.ndarray) -> np.ndarray:
        """Positions in ``hours`` ``(T,)`` (since 1970) of the whole hours to keep: hour of day a
        multiple of ``hour_step``, inside ``[first, last]`` when a period is given."""
        mask = np.isclose(hours, np.round(hours))
        whole = np.round(hours).astype(np.int64)
        mask &= (whole % 24) % self.hour_step == 0
        if self.first is not None:
            mask &= (whole >= self.first) & (whole <= self.last)
        return np.flatnonzero(mask)


class InputPlan(NamedTuple):
    """What one input contributes: the input's ``index``, the positions ``time_index`` ``(T,)``
    of the times to convert and the ``fields``, ``(variable, level)`` pairs (level None for a
    surface variable)."""

    index: int
    time_index: np.ndarray
    fields: list


@dataclass
class ResolvedRequest:
    """A request checked against its inputs.

    Attributes:
        root_dir: the output root of the layout.
        selection: what to convert.
        sources: every input found; opened: each one normalised (same order).
        plans: the inputs with something to convert, in input order.
        lat, lon: the output grid, latitudes ``(H,)`` north to south, longitudes ``(W,)``.
        regridders: per input, its regridder onto the output grid (None: already on it, or
            nothing to convert).
        options: how the inputs are read (:class:`InputOptions`).
    """

    root_dir: str
    selection: Selection
    sources: list[InputSource]
    opened: list[NormalisedInput]
    plans: list[InputPlan]
    lat: np.ndarray
    lon: np.ndarray
    regridders: list
    options: InputOptions = InputOptions()

    def selected_hours(self) -> np.ndarray:
        """Every time to convert (int64 hours since 1970), sorted, over all inputs."""
        hours = [np.round(self.opened[p.index].times[p.time_index]) for p in self.plans]
        return np.unique(np.concatenate(hours).astype(np.int64)) if hours else np.zeros(0, int)


def parse_grid(text: str) -> tuple[np.ndarray, np.ndarray]:
    """``--grid``: ``HxW`` (e.g. ``128x256``) or a spacing in degrees (``1.40625``) to the
    cell-centre grid's latitudes (north to south) and longitudes (from 0° E)."""
    try:
        if "x" in text.lower():
            h, w = (int(v) for v in text.lower().split("x"))
        else:
            step = float(text)
            h, w = round(180.0 / step), round(360.0 / step)
            if not np.isclose(h * step, 180.0) or not np.isclose(w * step, 360.0):
                raise ValueError
    except ValueError:
        raise ConversionError(
            f"--grid {text!r}: expected HxW (e.g. 128x256) or a spacing in degrees dividing 180 "
            "(e.g. 1.40625)"
        ) from None
    if h < 2 or w < 2:
        raise ConversionError(f"--grid {text!r}: needs at least 2 x 2 cells")
    return latitudes(h), longitudes(w)


def project_variables(variables: Sequence[str] | None) -> list[str] | None:
    """``--variables`` (any recognised spelling) as project names, duplicates dropped."""
    if variables is None:
        return None
    names = [project_name(v) for v in variables]
    unknown = [v for v, n in zip(variables, names, strict=True) if n is None]
    if unknown:
        raise ConversionError(
            f"--variables: unknown variable(s) {unknown}; known: {list(PROJECT_VARIABLES)}"
        )
    return list(dict.fromkeys(names))


def check_options(
    variables: Sequence[str] | None,
    levels: Sequence[int] | None,
    start,
    end,
    hour_step: int,
    workers: int,
) -> Selection:
    """The command line's options checked in this order: hour step, workers, period, variables,
    levels; the first wrong one raises :class:`ConversionError`."""
    if hour_step < 1 or 24 % hour_step:
        raise ConversionError(f"--hour_step {hour_step} must divide 24")
    if workers < 1:
        raise ConversionError(f"--workers {workers} must be at least 1")
    first = last = None
    if start is not None or end is not None:
        if start is None or end is None:
            raise ConversionError("give both --start and --end")
        try:
            first, last = period_bounds([start, end])
        except ValueError as err:
            raise ConversionError(f"--start/--end: {err}") from None
    variables = project_variables(variables)
    levels = None if levels is None else [int(p) for p in levels]
    bad = [p for p in levels or [] if p not in ERA5_LEVELS]
    if bad:
        raise ConversionError(f"--levels {bad} are not ERA5 pressure levels {list(ERA5_LEVELS)}")
    return Selection(variables, levels, start, end, first, last, hour_step)


def resolve(
    inputs: Sequence[str],
    root_dir: str,
    selection: Selection,
    *,
    grid: str | None = None,
    h_size: int | None = None,
    w_size: int | None = None,
    member: int | None = None,
    level: int | None = None,
    time_coord: str | None = None,
    time_units: str | None = None,
    overwrite: bool = False,
) -> ResolvedRequest:
    """Open ``inputs`` and check them against ``selection`` and against what ``root_dir``
    already holds; ``grid``, ``h_size``, ``w_size``, ``member``, ``level``, ``time_coord``,
    ``time_units`` and ``overwrite`` are the command line's options of those names."""
    sources = find_inputs(list(inputs))
    options = InputOptions(member, level, time_coord, time_units)
    opened = [normalise(s.open(), s.location, options) for s in sources]
    for inp in opened:
        _warn_ignored(inp)
    _check_holdings(opened, selection.variables, selection.levels)
    plans = _input_plans(opened, selection)
    lat, lon = _output_grid([opened[p.index] for p in plans], grid)
    _check_output_grid(lat, lon, root_dir, h_size, w_size, overwrite)
    regridders = input_regridders(opened, [p.index for p in plans], lat, lon)
    return ResolvedRequest(
        root_dir, selection, sources, opened, plans, lat, lon, regridders, options
    )


def _warn_ignored(inp: NormalisedInput) -> None:
    """Name on stderr the data variables of ``inp`` that are not recognised."""
    if inp.ignored:
        extra = len(inp.ignored) - IGNORED_SHOWN
        more = f" and {extra} more" if extra > 0 else ""
        print(
            f"{inp.where}: not recognised, not converted: {inp.ignored[:IGNORED_SHOWN]}{more}",
            file=sys.stderr,
        )


def _holdings(inputs, show: int = 5) -> str:
    lines = [f"  {i.where}: {i.holdings()}" for i in inputs[:show]]
    if len(inputs) > show:
        lines.append(f"  ... and {len(inputs) - show} more input(s)")
    return "\n".join(lines)


def _check_holdings(inputs, variables, levels) -> None:
    """Every requested variable, and every requested level of each upper-air variable, exists in
    some input; otherwise an error naming what is missing and what the inputs hold."""
    available: dict = {}
    for inp in inputs:
        for var, da in inp.variables.items():
            found = available.setdefault(var, set())
            if "level" in da.dims:
                found.update(inp.levels(var))
    wanted = variables if variables is not None else list(available)
    missing = [v for v in wanted if v not in available]
    if missing:
        raise ConversionError(
            f"variable(s) {missing} not found in the input(s); they hold:\n{_holdings(inputs)}"
        )
    if levels is not None:
        for var in wanted:
            if is_upper(var):
                absent = [p for p in levels if p not in available[var]]
                if absent:
                    raise ConversionError(
                        f"level(s) {absent} hPa of {var!r} not found in the input(s) (found "
                        f"{sorted(available[var], reverse=True)}); they hold:\n{_holdings(inputs)}"
                    )


def _input_plans(opened, selection: Selection) -> list[InputPlan]:
    """The plan of every input with something to convert; an error when none has any."""
    plans = []
    for index, inp in enumerate(opened):
        fields = []
        for var in inp.variables:
            if selection.variables is not None and var not in selection.variables:
                continue
            if is_upper(var):
                wanted = selection.levels
                fields += [(var, p) for p in inp.levels(var) if wanted is None or p in wanted]
            else:
                fields.append((var, None))
        time_index = selection.time_positions(inp.times)
        if fields and time_index.size:
            plans.append(InputPlan(index, time_index, fields))
    if not plans:
        raise _nothing_to_convert(opened, selection)
    return plans


def _nothing_to_convert(opened, selection: Selection) -> ConversionError:
    span = ", ".join(
        f"{from_hours(i.times.min()).date()}..{from_hours(i.times.max()).date()}"
        for i in opened[:5]
        if i.times.size
    )
    return ConversionError(
        f"nothing to convert at the requested variables, levels and times "
        f"({selection.start or 'any'}..{selection.end or 'any'} every {selection.hour_step} h; "
        f"inputs cover {span}); the input(s) hold:\n{_holdings(opened)}"
    )


def same_grid(lat_a, lon_a, lat_b, lon_b) -> bool:
    """Whether two latitude-longitude grids have the same shape and (nearly) equal values."""
    return (
        lat_a.shape == lat_b.shape
        and lon_a.shape == lon_b.shape
        and np.allclose(lat_a, lat_b)
        and np.allclose(lon_a, lon_b)
    )


def _output_grid(inputs, grid: str | None):
    if grid is not None:
        return parse_grid(grid)
    first = inputs[0]
    for inp in inputs[1:]:
        if not same_grid(inp.lat, inp.lon, first.lat, first.lon):
            raise ConversionError(
                f"inputs on different grids: {first.where} is {first.lat.size} x {first.lon.size},"
                f" {inp.where} is {inp.lat.size} x {inp.lon.size}; pass --grid to regrid them"
            )
    return first.lat, first.lon


def _check_output_grid(lat, lon, root_dir: str, h_size, w_size, overwrite: bool) -> None:
    """The output grid is the expected ``h_size x w_size`` (when given) and the one ``root_dir``
    records (unless ``overwrite``)."""
    if (h_size and h_size != lat.size) or (w_size and w_size != lon.size):
        raise ConversionError(
            f"the output grid is {lat.size} x {lon.size}, expected {h_size} x {w_size} "
            "(--h_size/--w_size); pass --grid to regrid"
        )
    recorded = read_grid(root_dir)
    if recorded is not None and not overwrite and not same_grid(*recorded, lat, lon):
        raise ConversionError(
            f"{root_dir} holds data on a {recorded[0].size} x {recorded[1].size} grid "
            f"(statistic/grid.json); this conversion writes {lat.size} x {lon.size}"
        )


def input_regridders(opened, used: list[int], lat, lon) -> list:
    """Regridder of each input onto ``(lat, lon)`` (None for inputs already on it or unused);
    inputs on the same grid share one."""
    regridders: list = [None] * len(opened)
    by_grid: dict = {}
    for index in used:
        inp = opened[index]
        if same_grid(inp.lat, inp.lon, lat, lon):
            continue
        key = (inp.lat.tobytes(), inp.lon.tobytes())
        if key not in by_grid:
            try:
                by_grid[key] = ConservativeRegridder(inp.lat, inp.lon, lat, lon)
            except ValueError as err:
                raise ConversionError(f"{inp.where}: cannot regrid: {err}") from None
        regridders[index] = by_grid[key]
    return regridders
