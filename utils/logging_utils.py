"""Logging for training and evaluation: rank 0 logs to the console (through tqdm, so progress bars
stay intact) and to ``out.log``; other ranks log warnings and errors to both, every line prefixed
with ``[rank N]`` when there is more than one rank.

:func:`report_error` is how entry points end on an exception: the project's own errors
(:class:`utils.errors.VAMoEError`) as one line, anything else (a bug) with its traceback, on the
console (stderr) and in ``out.log``.
"""

import logging
import sys
import traceback

from tqdm import tqdm

from utils.errors import EXIT_USER_ERROR, ConfigError, VAMoEError

FORMAT = "%(asctime)s %(levelname)s %(message)s"


class _TqdmHandler(logging.StreamHandler):
    def emit(self, record):
        try:
            tqdm.write(self.format(record))
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def rank_prefix(rank: int, world_size: int) -> str:
    return f"[rank {rank}] " if world_size > 1 else ""


def setup_logging(
    log_file: str | None = None, rank: int = 0, world_size: int = 1
) -> logging.Logger:
    """The project logger ``vamoe``: INFO on rank 0 (console + ``log_file``), WARNING elsewhere
    (console + ``log_file`` too, appended)."""
    logger = logging.getLogger("vamoe")
    for handler in logger.handlers:
        handler.close()
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.DEBUG if rank == 0 else logging.WARNING)
    prefix = rank_prefix(rank, world_size)
    console = _TqdmHandler()
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    console.setFormatter(logging.Formatter(prefix + FORMAT, "%H:%M:%S"))
    logger.addHandler(console)
    if log_file:
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter(prefix + FORMAT))
        logger.addHandler(handler)
    return logger


def report_error(
    err: BaseException, rank: int = 0, world_size: int = 1, brief: str | None = None
) -> None:
    """Print ``err`` on stderr and log it to the ``vamoe`` logger's files: one line for a
    :class:`VAMoEError` (or ``brief`` when given), the traceback for anything else."""
    prefix = rank_prefix(rank, world_size)
    if brief is not None:
        text = f"error: {brief}"
    elif isinstance(err, VAMoEError):
        text = f"error: {err}"
    else:
        text = "".join(traceback.format_exception(err)).rstrip()
    print("\n".join(prefix + line for line in text.splitlines()), file=sys.stderr, flush=True)
    for handler in logging.getLogger("vamoe").handlers:
        if isinstance(handler, logging.FileHandler):
            record = logging.LogRecord("vamoe", logging.ERROR, __file__, 0, text, None, None)
            handler.handle(record)
            handler.flush()


def report_entry_point_error(
    err: Exception, rank: int = 0, world_size: int = 1, where: str = "above"
) -> int:
    """Report an exception that ended an entry point on this rank; returns the exit code.

    A :class:`ConfigError` is the same on every rank, so rank 0 alone says it; other project
    errors are said by every rank that hit them (one line each, ``[rank N]`` prefixed); both
    exit :data:`utils.errors.EXIT_USER_ERROR`. Anything else is a bug: its traceback, exit 1
    (a rank whose peer stopped first says so in one line instead, pointing to ``where`` the
    peer's error is).
    """
    if isinstance(err, VAMoEError):
        if rank == 0 or not isinstance(err, ConfigError):
            report_error(err, rank, world_size)
        return EXIT_USER_ERROR
    brief = None
    if world_size > 1 and "Connection closed by peer" in str(err):
        brief = f"another rank stopped (its error is {where}); {err}"
    report_error(err, rank, world_size, brief)
    return 1
