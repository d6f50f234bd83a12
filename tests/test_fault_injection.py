"""The kill points of ``utils.fault_injection``: a real SIGKILL at the named pass, nothing when unset."""

import os
import signal
import subprocess
import sys

import pytest

from utils.fault_injection import KILL_AT, parse_kill_at

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Passes point "a" three times and "b" once, printing (and flushing) before each pass.
SCRIPT = """
from utils.fault_injection import kill_point
for name in ["a", "a", "b", "a"]:
    print("before", name, flush=True)
    kill_point(name)
print("done", flush=True)
"""


def run(spec):
    env = {k: v for k, v in os.environ.items() if k != KILL_AT}
    if spec is not None:
        env[KILL_AT] = spec
    return subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True
    )


@pytest.mark.parametrize(
    "spec, printed",
    [
        ("a", ["before a"]),
        ("a@2", ["before a", "before a"]),
        ("b", ["before a", "before a", "before b"]),
        ("a@3", ["before a", "before a", "before b", "before a"]),
    ],
)
def test_the_process_is_killed_at_the_named_pass(spec, printed):
    result = run(spec)
    assert result.returncode == -signal.SIGKILL
    assert result.stdout.splitlines() == printed


@pytest.mark.parametrize("spec", [None, "c", "a@4"])
def test_no_kill_when_unset_or_not_reached(spec):
    result = run(spec)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "done"


@pytest.mark.parametrize("spec", ["", "@2", "a@0", "a@x"])
def test_a_malformed_setting_names_the_variable(spec):
    with pytest.raises(ValueError, match=KILL_AT):
        parse_kill_at(spec)
