"""utils.evaluation.staging: results written into a staging folder and moved into place whole."""

import os
import socket
import subprocess
import sys

import pytest

from utils.errors import OutputError, OutputExistsError
from utils.evaluation.staging import publish, remove_stale_staging, staging_prefix, write_staged


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
    remove_stale_staging(out)
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


def test_stale_staging_beside_a_missing_parent_is_nothing_to_do(tmp_path):
    remove_stale_staging(str(tmp_path / "missing" / "results"))
    assert os.listdir(tmp_path) == []


def test_publish_replaces_the_old_results_whole(tmp_path):
    out = _folder(tmp_path / "results", old="previous", shared="previous")
    staging = _folder(tmp_path / ".results.staging-h-1", new="fresh", shared="fresh")
    publish(staging, out)
    assert _contents(out) == {"new": "fresh", "shared": "fresh"}
    assert os.listdir(tmp_path) == ["results"]


def test_publish_creates_a_missing_destination(tmp_path):
    staging = _folder(tmp_path / ".results.staging-h-1", new="fresh")
    publish(staging, str(tmp_path / "results"))
    assert _contents(tmp_path / "results") == {"new": "fresh"}
    assert os.listdir(tmp_path) == ["results"]


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
