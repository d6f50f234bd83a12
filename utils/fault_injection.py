"""Named kill points: a process SIGKILLs itself at a chosen write point, for the kill tests.

Every write whose interruption must be safe (a checkpoint, the end-of-epoch files, the
evaluation's publish step, a converter batch) passes a named point, ``kill_point("<name>")``. When
the environment variable ``VAMOE_KILL_AT`` is unset, as in every normal run, a point costs one
dictionary lookup and does nothing. ``VAMOE_KILL_AT=<name>`` makes the process kill itself with
SIGKILL the first time it passes ``<name>``; ``<name>@<n>`` the ``n``-th time. SIGKILL runs no
cleanup (no ``finally``, no ``atexit``, no signal handler): what the process leaves is what a
killed job on a cluster leaves, and the tests then run the same command again and require the
result of an uninterrupted run.

The points are listed where they are defined (``grep -rn 'kill_point("' utils train.py``) and in
``docs/cluster.md``.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

KILL_AT = "VAMOE_KILL_AT"

_passes: Counter = Counter()  # passes of each named point in this process (test runs only)


def parse_kill_at(spec: str) -> tuple[str, int]:
    """``'<name>'`` or ``'<name>@<n>'`` to ``(name, n)``; n counts from 1."""
    name, _, nth = spec.partition("@")
    try:
        n = int(nth) if nth else 1
    except ValueError:
        n = 0
    if not name or n < 1:
        raise ValueError(f"{KILL_AT}={spec!r}: expected '<point name>' or '<point name>@<n>'")
    return name, n


def kill_point(name: str) -> None:
    """Kill this process with SIGKILL if ``VAMOE_KILL_AT`` names this point and pass."""
    spec = os.environ.get(KILL_AT)
    if spec is None:
        return
    wanted, n = parse_kill_at(spec)
    if wanted != name:
        return
    _passes[name] += 1
    if _passes[name] == n:
        os.kill(os.getpid(), signal.SIGKILL)
