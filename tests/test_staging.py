"""utils.evaluation.staging: results written into a staging folder and moved into place whole,
with the previous results whole at every instant, real kills included."""

import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from utils.errors import OutputError, OutputExistsError
from utils.evaluation import staging
from utils.evaluation.staging import (
    publish,
    recover_interrupted_publish,
    rename_exchange,
    staged_path,
    staging_prefix,
    write_staged,
)
from utils.fault_injection import KILL_AT

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dead_pid() -> int:
    """The id of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _folder(path, **files) -> str:
    os.makedirs(path)
    for name, text in files.items():
        with open(os.path.join(path, name), "w") as f:
            f.write(text)
    return str(path)


def _contents(path) -> dict[str, str]:
    contents = {}
    for name in sorted(os.listdir(path)):
        with open(os.path.join(path, name)) as f:
            contents[name] = f.read()
    return contents


def test_staging_prefix_is_a_hidden_sibling_named_after_the_host(tmp_path):
    prefix = staging_prefix(str(tmp_path / "results"))
    assert prefix == str(tmp_path / f".results.staging-{socket.gethostname()}-")
    assert staging_prefix(str(tmp_path / "results") + "/") == prefix


def test_stale_staging_of_dead_processes_is_removed_and_the_rest_kept(tmp_path):
    """``out_dir`` is there: a dead process's ``.old`` is a second copy of old results."""
    out = str(tmp_path / "results")
    prefix = staging_prefix(out)
    dead, live = _dead_pid(), os.getpid()
    _folder(out, **{"metrics.json": "{}"})
    _folder(f"{prefix}{dead}")
    _folder(f"{prefix}{dead}.old")
    _folder(f"{prefix}{live}")
    _folder(f"{prefix}{live}.old")
    _folder(tmp_path / f".results.staging-elsewhere-{dead}")  # another host's
    _folder(tmp_path / f".other.staging-{socket.gethostname()}-{dead}")  # another out_dir's
    _folder(f"{prefix}notapid")
    recover_interrupted_publish(out)
    assert sorted(os.listdir(tmp_path)) == sorted(
        [
            "results",
            os.path.basename(f"{prefix}{live}"),
            os.path.basename(f"{prefix}{live}.old"),
            f".results.staging-elsewhere-{dead}",
            f".other.staging-{socket.gethostname()}-{dead}",
            os.path.basename(f"{prefix}notapid"),
        ]
    )
    assert _contents(out) == {"metrics.json": "{}"}


def test_moved_aside_results_of_a_dead_process_are_restored_when_out_dir_is_missing(
    tmp_path, caplog
):
    out = str(tmp_path / "results")
    prefix = staging_prefix(out)
    dead = _dead_pid()
    _folder(f"{prefix}{dead}", **{"metrics.json": "new"})  # staged, never moved in
    _folder(f"{prefix}{dead}.old", **{"metrics.json": "previous"})
    recover_interrupted_publish(out)
    assert os.listdir(tmp_path) == ["results"]
    assert _contents(out) == {"metrics.json": "previous"}
    assert f"restored the previous results {out}" in caplog.text

    live = _folder(f"{prefix}{os.getpid()}.old", **{"metrics.json": "in use"})
    os.rename(out, str(tmp_path / "elsewhere"))
    recover_interrupted_publish(out)  # a live process's folder is its own business
    assert not os.path.exists(out) and os.path.isdir(live)


def test_stale_staging_beside_a_missing_parent_is_nothing_to_do(tmp_path):
    recover_interrupted_publish(str(tmp_path / "missing" / "results"))
    assert os.listdir(tmp_path) == []


def _use_publish_path(path, tmp_path, monkeypatch) -> None:
    """Make :func:`publish` take ``path``: the atomic exchange (skipped where the file system
    lacks it) or the two-rename fallback (forced)."""
    if path == "exchange":
        a, b = _folder(tmp_path / "probe_a"), _folder(tmp_path / "probe_b", b="b")
        if not rename_exchange(a, b):
            pytest.skip("no RENAME_EXCHANGE on this system")
        assert os.listdir(a) == ["b"] and os.listdir(b) == []
        shutil.rmtree(a)
        os.rmdir(b)
    else:
        monkeypatch.setattr(staging, "rename_exchange", lambda a, b: False)


@pytest.fixture(params=["exchange", "two_renames"])
def swap(request, monkeypatch, tmp_path):
    """Each publish path in turn."""
    _use_publish_path(request.param, tmp_path, monkeypatch)
    return request.param


def test_publish_replaces_the_old_results_whole(tmp_path, swap):
    out = _folder(tmp_path / "results", old="previous", shared="previous")
    new = _folder(tmp_path / ".results.staging-h-1", new="fresh", shared="fresh")
    publish(new, out)
    assert _contents(out) == {"new": "fresh", "shared": "fresh"}
    assert os.listdir(tmp_path) == ["results"]


def test_publish_creates_a_missing_destination(tmp_path, swap):
    new = _folder(tmp_path / ".results.staging-h-1", new="fresh")
    publish(new, str(tmp_path / "results"))
    assert _contents(tmp_path / "results") == {"new": "fresh"}
    assert os.listdir(tmp_path) == ["results"]


def test_a_failed_second_rename_puts_the_old_results_back(tmp_path, monkeypatch):
    out = _folder(tmp_path / "results", old="previous")
    new = _folder(tmp_path / ".results.staging-h-1", new="fresh")
    monkeypatch.setattr(staging, "rename_exchange", lambda a, b: False)
    replace = os.replace

    def failing_replace(src, dst):
        if src == new:
            raise PermissionError(13, "Permission denied", src)
        replace(src, dst)

    monkeypatch.setattr(staging.os, "replace", failing_replace)
    with pytest.raises(PermissionError):
        publish(new, out)
    assert _contents(out) == {"old": "previous"}
    assert sorted(os.listdir(tmp_path)) == [".results.staging-h-1", "results"]


def _writer(**files):
    """A ``write`` for :func:`write_staged` that writes ``files`` and records its folder."""
    seen = []

    def write(staging):
        seen.append(staging)
        _folder(os.path.join(staging, "sub"))
        written = {}
        for name, text in files.items():
            written[name] = os.path.join(staging, "sub", name)
            with open(written[name], "w") as f:
                f.write(text)
        return written

    return write, seen


def test_write_staged_moves_the_results_into_place_and_names_their_final_paths(tmp_path):
    out = str(tmp_path / "results")
    write, seen = _writer(a="1", b="2")
    written = write_staged(out, write)
    assert seen == [staging_prefix(out) + str(os.getpid())]
    assert written == {"a": os.path.join(out, "sub", "a"), "b": os.path.join(out, "sub", "b")}
    assert _contents(os.path.join(out, "sub")) == {"a": "1", "b": "2"}
    assert os.listdir(tmp_path) == ["results"]

    with pytest.raises(OutputExistsError, match="is not empty; pass --overwrite"):
        write_staged(out, _writer(c="3")[0])
    write_staged(out, _writer(c="3")[0], overwrite=True)
    assert _contents(os.path.join(out, "sub")) == {"c": "3"}


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failed_write_leaves_the_old_results_and_removes_staging(tmp_path, error):
    out = _folder(tmp_path / "results", old="previous")

    def write(staging):
        _folder(os.path.join(staging, "sub"), partial="half")
        raise error("stopped")

    with pytest.raises(error, match="stopped"):
        write_staged(out, write, overwrite=True)
    assert _contents(out) == {"old": "previous"}
    assert os.listdir(tmp_path) == ["results"]


def test_write_staged_refuses_a_file_and_an_unwritable_place(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OutputExistsError, match="exists and is not a directory"):
        write_staged(str(tmp_path / "file"), _writer()[0], overwrite=True)
    with pytest.raises(OutputError, match="cannot create .*/file/.out.staging-"):
        write_staged(str(tmp_path / "file" / "out"), _writer()[0])
    assert os.listdir(tmp_path) == ["file"]


def test_write_staged_clears_stale_staging_first(tmp_path):
    out = str(tmp_path / "results")
    stale = _folder(f"{staging_prefix(out)}{_dead_pid()}", leftover="x")
    write_staged(out, _writer(a="1")[0])
    assert not os.path.exists(stale)
    assert os.listdir(tmp_path) == ["results"]


# A process that stages two files and publishes them with --overwrite semantics; argv: out_dir,
# "exchange" or "two_renames" (the fallback forced), the text the files get.
PUBLISHER = """
import os, sys
from utils.evaluation import staging
out_dir, path, text = sys.argv[1:]
if path == "two_renames":
    staging.rename_exchange = lambda a, b: False
def write(folder):
    for name in ("metrics.json", "summary.txt"):
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)
    return {}
staging.write_staged(out_dir, write, overwrite=True)
"""


def _publish_in_a_process(out, path, text, kill_at=None):
    env = {k: v for k, v in os.environ.items() if k != KILL_AT}
    if kill_at is not None:
        env[KILL_AT] = kill_at
    cmd = [sys.executable, "-c", PUBLISHER, out, path, text]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "path, point, after_the_kill",
    [
        ("exchange", "publish:ready", "previous"),  # staged, nothing moved yet
        ("exchange", "publish:swapped", "new"),  # the staging name holds the old results
        ("two_renames", "publish:ready", "previous"),
        ("two_renames", "publish:moved_aside", None),  # no out_dir, the old results in .old
        ("two_renames", "publish:moved_in", "new"),  # .old not yet removed
    ],
)
def test_a_kill_at_every_instant_of_the_publish_step_loses_nothing(
    tmp_path, monkeypatch, path, point, after_the_kill
):
    _use_publish_path(path, tmp_path, monkeypatch)
    out = str(tmp_path / "results")
    assert _publish_in_a_process(out, path, "previous").returncode == 0
    killed = _publish_in_a_process(out, path, "new", kill_at=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    leftovers = [n for n in os.listdir(tmp_path) if n != "results"]
    assert leftovers and all(n.startswith(".results.staging-") for n in leftovers)
    if after_the_kill is None:
        assert not os.path.exists(out)
        (old,) = [n for n in leftovers if n.endswith(".old")]
        assert _contents(tmp_path / old) == {"metrics.json": "previous", "summary.txt": "previous"}
    else:
        assert _contents(out) == {"metrics.json": after_the_kill, "summary.txt": after_the_kill}

    # The next start: the results that were whole are whole at out_dir, nothing else is left,
    # and the restored ones still need --overwrite to be replaced.
    with pytest.raises(OutputExistsError):
        write_staged(out, _writer()[0])
    expected = after_the_kill or "previous"
    assert _contents(out) == {"metrics.json": expected, "summary.txt": expected}
    assert os.listdir(tmp_path) == ["results"]
    assert _publish_in_a_process(out, path, "new").returncode == 0
    assert _contents(out) == {"metrics.json": "new", "summary.txt": "new"}
    assert os.listdir(tmp_path) == ["results"]


# A process that writes one file through staged_path (--overwrite); argv as PUBLISHER's.
FILE_PUBLISHER = """
import sys
from utils.evaluation import staging
dest, path, text = sys.argv[1:]
if path == "two_renames":
    staging.rename_exchange = lambda a, b: False
with staging.staged_path(dest, overwrite=True) as staged:
    assert staged.endswith(".nc"), staged  # the extension, which names the format, is kept
    with open(staged, "w") as f:
        f.write(text)
"""


@pytest.mark.parametrize(
    "path, point, after_the_kill",
    [
        ("exchange", "publish:swapped", "new"),
        ("two_renames", "publish:moved_aside", None),
        ("two_renames", "publish:moved_in", "new"),
    ],
)
def test_a_staged_file_killed_while_published_loses_nothing(tmp_path, path, point, after_the_kill):
    dest = str(tmp_path / "fc.nc")

    def run(text, kill_at=None):
        env = {k: v for k, v in os.environ.items() if k != KILL_AT}
        if kill_at is not None:
            env[KILL_AT] = kill_at
        cmd = [sys.executable, "-c", FILE_PUBLISHER, dest, path, text]
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    assert run("previous").returncode == 0
    assert run("new", kill_at=point).returncode == -signal.SIGKILL
    assert os.path.exists(dest) == (after_the_kill is not None)
    with pytest.raises(OutputExistsError):  # the next start restores, then refuses to replace
        with staged_path(dest):
            pass
    with open(dest) as f:
        assert f.read() == (after_the_kill or "previous")
    assert os.listdir(tmp_path) == ["fc.nc"]
