"""Logging for training and evaluation: rank 0 logs to the console (through tqdm, so progress bars
stay intact) and to ``out.log``; other ranks log warnings only."""

import logging

from tqdm import tqdm

FORMAT = "%(asctime)s %(levelname)s %(message)s"


class _TqdmHandler(logging.StreamHandler):
    def emit(self, record):
        try:
            tqdm.write(self.format(record))
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def setup_logging(log_file: str | None = None, rank: int = 0) -> logging.Logger:
    """The project logger ``vamoe``; INFO on rank 0 (console + ``log_file``), WARNING elsewhere."""
    logger = logging.getLogger("vamoe")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.DEBUG if rank == 0 else logging.WARNING)
    console = _TqdmHandler()
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    console.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
    logger.addHandler(console)
    if log_file:
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(handler)
    return logger
