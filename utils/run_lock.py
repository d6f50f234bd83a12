"""One training per run directory: a lock file naming the holder's host and process.

``<run_dir>/.lock`` holds ``{"host": ..., "pid": ..., "start": ...}`` (``start``: the process's
start time from ``/proc``, so a recycled pid is not mistaken for the holder). It is created
complete and atomically (a hard link of a finished temporary file), removed on a clean exit, and
left behind by a killed process: a lock whose process is gone from this host is taken over with a
warning. A process on another host cannot be checked from here, so the holder touches the lock
every :data:`HEARTBEAT_S` seconds and a lock from another host untouched for :data:`STALE_AFTER_S`
seconds (a job requeued elsewhere after its node died) is taken over too.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

from utils.errors import OutputError, VAMoEError

LOCK_NAME = ".lock"
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0
logger = logging.getLogger("vamoe")


class RunLockedError(VAMoEError):
    """The run directory is locked by another training; names its host and pid."""


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, from /proc), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def process_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    current = _start_time(pid)
    return start is None or current is None or current == start


class RunLock:
    """The lock of ``directory``: :meth:`acquire` it (or raise :class:`RunLockedError`),
    :meth:`release` it on exit."""

    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, LOCK_NAME)
        self.owner = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "start": _start_time(os.getpid()),
        }
        self.held = False
        self._stop_heartbeat = threading.Event()

    def acquire(self) -> None:
        for _ in range(3):
            if self._create():
                self.held = True
                threading.Thread(target=self._heartbeat, name="run-lock", daemon=True).start()
                return
            holder = self._read()
            if holder == {}:  # released meanwhile
                continue
            if holder is None or self._is_stale(holder):
                self._take_over(holder)
                continue
            raise RunLockedError(
                f"run directory {self.directory} is in use by pid {holder.get('pid')} on host "
                f"{holder.get('host')} (lock {self.path}); stop that training first, or delete "
                "the lock file if that process is gone"
                + (
                    ""
                    if holder.get("host") == self.owner["host"]
                    else f"; it is taken over once not refreshed for {STALE_AFTER_S:.0f} s"
                )
            )
        raise RunLockedError(f"could not lock {self.directory}: {self.path} keeps changing")

    def release(self) -> None:
        self._stop_heartbeat.set()
        if self.held and self._read() == self.owner:
            os.remove(self.path)
        self.held = False

    def _heartbeat(self) -> None:
        while not self._stop_heartbeat.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:  # removed or unreachable: the next start decides
                pass

    def _create(self) -> bool:
        tmp = f"{self.path}.{self.owner['pid']}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(self.owner, f)
            try:
                os.link(tmp, self.path)
                return True
            except FileExistsError:
                return False
            finally:
                os.remove(tmp)
        except OSError as err:
            raise OutputError(f"cannot lock {self.directory}: {err.strerror or err}") from err

    def _read(self) -> dict | None:
        try:
            with open(self.path) as f:
                holder = json.load(f)
        except FileNotFoundError:
            return {}
        except ValueError:
            return None
        return holder if isinstance(holder, dict) else None

    def _is_stale(self, holder: dict) -> bool:
        if holder.get("host") != self.owner["host"]:
            try:
                return time.time() - os.path.getmtime(self.path) > STALE_AFTER_S
            except FileNotFoundError:
                return False
        if not isinstance(holder.get("pid"), int):
            return False
        return not process_alive(holder["pid"], holder.get("start"))

    def _take_over(self, holder: dict | None) -> None:
        logger.warning(
            "taking over the stale lock %s of pid %s on %s (process gone or lock not refreshed)",
            self.path,
            (holder or {}).get("pid", "?"),
            (holder or {}).get("host", "?"),
        )
        stale = f"{self.path}.stale.{self.owner['pid']}"
        try:
            os.replace(self.path, stale)
            os.remove(stale)
        except FileNotFoundError:
            pass
