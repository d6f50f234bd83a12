"""The project's own errors: bad configuration, bad data, unusable checkpoints.

Each entry point (``train.py``, ``inference.py``, ``python -m tools.summary``,
``python -m tools.statistics``, ``python -m tools.make_synthetic_era5``, ...) runs inside
:func:`cli_errors`: a :class:`VAMoEError` prints one line, ``error: <message>`` (the message names
the file, key or value at fault), and exits with :data:`EXIT_USER_ERROR`. Any other exception is a
bug and keeps its traceback.

The classes also derive from the built-in exception a caller would have caught before
(``ConfigError`` is a ``ValueError``, ``MissingDataError`` a ``FileNotFoundError``, ...), so code
catching those keeps working.
"""

from __future__ import annotations

import contextlib
import sys

EXIT_USER_ERROR = 2


class VAMoEError(Exception):
    """Base of the project's errors: the message says what is wrong and where (file, key, value)."""


class ConfigError(VAMoEError, ValueError):
    """An inconsistent, unknown or out-of-range configuration value; names the keys at fault."""


class DataError(VAMoEError):
    """Input data (fields, statistics, climatology) missing or unusable; names the file."""


class MissingDataError(DataError, FileNotFoundError):
    """Files of the requested period are missing; the message lists them and their dates."""


class DataFileError(DataError, ValueError):
    """A data file has the wrong shape, dtype or size, is unreadable or holds NaN/inf."""


class CheckpointError(VAMoEError, RuntimeError):
    """A checkpoint that cannot be read, or does not fit the run; names the file."""


class OutputError(VAMoEError, OSError):
    """A result, log or checkpoint file cannot be written (read-only or full disk, existing
    output); names the path."""


@contextlib.contextmanager
def cli_errors(report=None):
    """Turn a :class:`VAMoEError` into ``error: <message>`` on stderr and exit code 2.

    ``report(err)``, when given, is called first (e.g. to log the error to ``out.log``). Other
    exceptions pass through with their traceback.
    """
    try:
        yield
    except VAMoEError as err:
        if report is not None:
            report(err)
        else:
            print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


class OutputExistsError(OutputError, FileExistsError):
    """The output (dataset, statistics, results) exists and overwriting was not asked for."""


class NonFiniteLossError(VAMoEError, FloatingPointError):
    """Training diverged (NaN/inf loss); the message gives the epoch and step."""
