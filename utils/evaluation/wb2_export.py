"""The dataset's states and its climatology in the WeatherBench 2 layout (``python -m
tools.export_wb2``), so that WeatherBench 2's own evaluation scores the project's forecasts
against the user's ERA5.

* truth: the states of a period, read by the dataset's reader (``.npy`` or HDF5 layout, from
  ``test_root_dir`` or else ``root_dir``), as a store with ``time`` = valid times and no
  ``prediction_timedelta``;
* climatology: the project's climatology (:mod:`utils.data.climatology`) in WeatherBench 2's
  climatology layout, ``dayofyear`` 1..366 x ``hour`` x (``level``) x ``latitude`` x
  ``longitude``.

WeatherBench 2 looks a valid time up by its ``dayofyear`` in its own year, so from 1 March on the
same calendar date has another ``dayofyear`` in a leap year than in other years, while the project
indexes its climatology by calendar date. The export therefore follows the years of the exported
period: their dates when they are all leap years, the dates of a common year otherwise (in a
period mixing both, leap-year days from 1 March on are looked up one day late; a note says so).
"""

from __future__ import annotations

import calendar
import datetime as dt

import numpy as np

from utils.data.climatology import Climatology, default_climatology_path
from utils.data.npy_layout import MissingDataError, missing_files_message
from utils.data.samples import make_reader
from utils.evaluation.forecast_store import (
    StoreSpec,
    StoreWriter,
    climatology_spec,
    create_store,
    truth_spec,
)
from utils.evaluation.wb2_layout import WB2Layout
from utils.grid import dataset_grid
from utils.progress import progress_bar
from utils.times import day_of_year_index, format_hours, from_hours, to_hours


def export_layout(params, channels) -> WB2Layout:
    """The WeatherBench 2 layout of some channel indices of ``params`` on its dataset's grid."""
    lat, lon = dataset_grid(str(params["root_dir"]), int(params.h_size), int(params.w_size))
    return WB2Layout(params.layout, channels, lat, lon, params.get("variable_units"))


def truth_times(params, first: int, last: int, hour_step: int | None) -> np.ndarray:
    """The stored times (hours since 1970) in ``[first, last]``, those whose hour of day is a
    multiple of ``hour_step`` when given; an error listing the files missing at them."""
    reader = make_reader(params, "test", _states_root(params))
    times = np.asarray(reader.stored_times(first, last), dtype=np.int64)
    if hour_step:
        times = times[(times % 24) % int(hour_step) == 0]
    if not len(times):
        raise MissingDataError(
            f"no stored state between {format_hours(first)} and {format_hours(last)} under "
            f"{_states_root(params)}"
        )
    missing = reader.missing(times)
    if missing:
        raise MissingDataError(missing_files_message(missing, "the exported period"))
    return times


def _states_root(params) -> str:
    return str(params.get("test_root_dir") or params["root_dir"])


def truth_store_spec(params, layout: WB2Layout, times) -> StoreSpec:
    attrs = {"title": f"ERA5 states of {_states_root(params)}", "source": "tools.export_wb2"}
    return truth_spec(layout, times, attrs)


def write_truth(params, path: str, spec: StoreSpec, progress: bool = True) -> None:
    """Write the states of ``spec``'s times into a new store at ``path``, one time at a time."""
    create_store(path, spec)
    reader = make_reader(params, "test", _states_root(params))
    layout = spec.layout
    state = np.empty((params.layout.n_channels, *layout.grid_shape), dtype=np.float32)
    with StoreWriter(path, spec) as writer:
        for t in progress_bar(spec.keys, "truth", unit="state", enabled=progress):
            reader.read(int(t), state)
            writer.write(int(t), state[layout.channel_indices])


def period_calendar(first: int, last: int) -> tuple[bool, str | None]:
    """``(leap, note)``: whether the years of ``[first, last]`` (hours) are all leap years, and a
    note when they mix leap and common years (see the module docstring)."""
    years = range(from_hours(first).year, from_hours(last).year + 1)
    leap = [calendar.isleap(y) for y in years]
    if all(leap):
        return True, None
    note = None
    if any(leap):
        note = (
            "the period mixes leap and common years: the climatology follows the common-year "
            "calendar, so WeatherBench 2 looks leap-year days from 1 March on up one day late"
        )
    return False, note


def wb2_day_date(day_of_year: int, leap: bool) -> dt.date:
    """The calendar date of WeatherBench 2's ``dayofyear`` (1-based) in a leap or common year
    (day 366 of a common year, which never occurs, is 31 December)."""
    year = 2000 if leap else 2001
    last = 366 if leap else 365
    return dt.date(year, 1, 1) + dt.timedelta(days=min(int(day_of_year), last) - 1)


def open_climatology(params) -> Climatology:
    """The configuration's climatology (``climatology_path``), its fallbacks as configured."""
    return Climatology(
        default_climatology_path(params),
        params.layout,
        allow_fallback=bool(params.get("allow_climatology_fallback")),
    )


def climatology_store_spec(layout: WB2Layout, climatology: Climatology, hours) -> StoreSpec:
    attrs = {"title": f"climatology of {climatology.path}", "source": "tools.export_wb2"}
    hours = climatology.hours if hours is None else hours
    return climatology_spec(layout, hours, attrs)


def write_climatology(
    climatology: Climatology, path: str, spec: StoreSpec, leap: bool, progress: bool = True
) -> int:
    """Write ``climatology`` at every ``dayofyear`` and ``hour`` of ``spec`` into a new store at
    ``path`` with the project's lookup (nearest stored hour; the time mean where allowed). A day
    the climatology does not store stays NaN unless ``allow_climatology_fallback`` is set, as
    the evaluation would not score it either; returns the number of such days."""
    create_store(path, spec)
    channels = spec.layout.channel_indices
    hours = spec.inner[0][1]
    stored = {int(d) for d in climatology.meta.get("doys", [])}
    skipped = 0
    with StoreWriter(path, spec) as writer:
        for day in progress_bar(spec.keys, "climatology", unit="day", enabled=progress):
            midnight = to_hours(wb2_day_date(int(day), leap))
            if day_of_year_index(midnight) not in stored and not climatology.allow_fallback:
                skipped += 1
                continue
            fields = np.stack([climatology.field(midnight + int(h))[channels] for h in hours])
            writer.write(int(day), fields)
    return skipped
