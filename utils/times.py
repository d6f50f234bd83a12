"""Times as the project counts them: integers, hours since 1970-01-01T00:00 UTC ("time_hours").

Dates and date-times of the config (periods, initial conditions) are parsed here; a bare date
``'YYYY-MM-DD'`` is its 00:00, or its 23:00 when it ends a period.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Sequence

import numpy as np

from utils.errors import ConfigError

EPOCH = _dt.datetime(1970, 1, 1)


def parse_date(value) -> _dt.date:
    """``'YYYY-MM-DD'`` (or a date/datetime) to a :class:`datetime.date`."""
    if isinstance(value, _dt.datetime):
        return value.date()
    if isinstance(value, _dt.date):
        return value
    try:
        return _dt.date.fromisoformat(str(value).strip()[:10])
    except ValueError:
        raise ConfigError(f"expected a date 'YYYY-MM-DD', got {value!r}") from None


def _is_bare_date(value) -> bool:
    if isinstance(value, _dt.datetime):
        return False
    return isinstance(value, _dt.date) or len(str(value).strip()) == 10


def to_hours(value, end_of_day: bool = False) -> int:
    """A date or date-time to hours since the epoch.

    Accepts ``date``/``datetime`` objects and ISO strings: ``'YYYY-MM-DD'`` (a bare date is its
    00:00, or its 23:00 with ``end_of_day``) and date-times such as ``'2019-01-05T01'``,
    ``'2019-01-05T01:00'`` or ``'2019-01-05 01:00:00'``. A time that is not a whole hour is an
    error.
    """
    if isinstance(value, _dt.datetime):
        dt = value
    elif _is_bare_date(value):
        d = parse_date(value)
        dt = _dt.datetime(d.year, d.month, d.day, 23 if end_of_day else 0)
    else:
        try:
            dt = _dt.datetime.fromisoformat(str(value).strip())
        except ValueError:
            raise ConfigError(
                f"expected a date 'YYYY-MM-DD' or a date-time 'YYYY-MM-DDTHH', got {value!r}"
            ) from None
    if dt.tzinfo is not None:
        dt = dt.astimezone(_dt.timezone.utc).replace(tzinfo=None)
    if (dt.minute, dt.second, dt.microsecond) != (0, 0, 0):
        raise ConfigError(f"times must be whole hours, got {value!r}")
    return int((dt - EPOCH) // _dt.timedelta(hours=1))


def from_hours(hours) -> _dt.datetime:
    """Hours since the epoch to a naive UTC :class:`datetime.datetime`."""
    return EPOCH + _dt.timedelta(hours=int(hours))


def format_hours(hours) -> str:
    """Hours since the epoch as ``'YYYY-MM-DDTHH'``."""
    return from_hours(hours).strftime("%Y-%m-%dT%H")


def period_bounds(period: Sequence) -> tuple[int, int]:
    """Inclusive period ``[start, end]`` to ``(first hour, last hour)``. Each end is a date or a
    date-time (:func:`to_hours`); a bare end date includes its whole day (to 23:00)."""
    if len(period) != 2:
        raise ConfigError(f"a period is [start, end] (dates or date-times), got {period!r}")
    first, last = to_hours(period[0]), to_hours(period[1], end_of_day=True)
    if last < first:
        raise ConfigError(f"period {list(period)} ends before it starts")
    return first, last


def period_times(start, end, step_hours: int = 6) -> np.ndarray:
    """Hours from ``start`` to ``end`` (:func:`period_bounds`) every ``step_hours``."""
    first, last = period_bounds([start, end])
    return np.arange(first, last + 1, int(step_hours), dtype=np.int64)


def time_step(times) -> int | None:
    """The step of a sorted sequence of times (hours): the greatest common divisor of their
    differences, or None for fewer than two times."""
    diffs = np.diff(np.asarray(times, dtype=np.int64))
    return int(np.gcd.reduce(diffs)) if diffs.size else None


def day_of_year_index(hours) -> int:
    """0-based day of year in a leap-year calendar (Feb 29 = 59, Mar 1 = 60 every year)."""
    dt = from_hours(hours)
    return _dt.date(2000, dt.month, dt.day).timetuple().tm_yday - 1


def dates_of(times: Iterable[int]) -> list[str]:
    """Sorted distinct ``YYYY-MM-DD`` strings of some times."""
    return sorted({from_hours(t).date().isoformat() for t in times})
