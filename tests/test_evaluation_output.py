"""inference.evaluate's output directory: staged and moved into place, --overwrite, provenance in
metrics.json, the climatology fallback (an error unless allowed, then listed), and real kills of
``python inference.py`` at every instant of writing and publishing its results."""

import filecmp
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from conftest import FAST_EVALUATION, make_params

import inference
from networks.vamoe import VAMoE
from utils.errors import DataError, OutputExistsError
from utils.fault_injection import KILL_AT
from utils.training.checkpoint import atomic_save

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = FAST_EVALUATION


def _placeholder_plot(*args, **kwargs):
    """Stands in for the (slow) plots: an empty file where the plot would go."""
    path = next(a for a in args if isinstance(a, str) and a.endswith(".png"))
    open(path, "wb").close()
    return path


@pytest.fixture(autouse=True)
def no_plots(monkeypatch):
    monkeypatch.setattr(inference, "plot_rmse_acc", _placeholder_plot)
    monkeypatch.setattr(inference, "plot_maps", _placeholder_plot)


@pytest.fixture(scope="module")
def weights(synthetic_root, tmp_path_factory):
    """An untrained checkpoint of the small network (the files, not the skill, are tested)."""
    params = make_params(synthetic_root, "tiny", FAST)
    path = str(tmp_path_factory.mktemp("weights") / "ckpt.tar")
    model = VAMoE.from_params(params)
    atomic_save(
        {
            "model": model.state_dict(),
            "epoch": 7,
            "global_step": 70,
            "channel_names": params.layout.names,
        },
        path,
    )
    return path


def evaluate(root, weights, out_dir, *overrides, overwrite=False):
    params = make_params(root, "tiny", [*FAST, *overrides])
    return inference.evaluate(params, weights, str(out_dir), max_batches=1, overwrite=overwrite)


def test_results_are_staged_replaced_only_with_overwrite_and_record_their_source(
    synthetic_root, weights, tmp_path
):
    out = tmp_path / "results"
    written = evaluate(synthetic_root, weights, out)
    assert all(p.startswith(str(out)) and os.path.exists(p) for p in written.values())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["weights"] == os.path.abspath(weights)
    assert (metrics["weights_epoch"], metrics["weights_global_step"]) == (7, 70)
    assert metrics["config_values"]["t_out_test"] == 2 and metrics["climatology_fallbacks"] == []
    assert "(epoch 7)" in (out / "summary.txt").read_text()

    with pytest.raises(OutputExistsError, match="--overwrite"):
        evaluate(synthetic_root, weights, out)

    (out / "stale_marker").write_text("from the first evaluation")
    evaluate(synthetic_root, weights, out, "t_out_test=1", overwrite=True)
    assert not (out / "stale_marker").exists()  # replaced whole, nothing mixed in
    assert json.loads((out / "metrics.json").read_text())["lead_hours"] == [0, 6]
    assert sorted(os.listdir(tmp_path)) == ["results"]


def test_climatology_fallback_is_an_error_unless_allowed_then_listed(
    synthetic_root, weights, tmp_path
):
    clim = tmp_path / "climatology"
    shutil.copytree(os.path.join(synthetic_root, "statistic", "climatology"), clim)
    os.remove(clim / "t2m.npy")
    with pytest.raises(DataError, match="no per-day file t2m.npy"):
        evaluate(synthetic_root, weights, tmp_path / "strict", f"climatology_path={clim}")
    assert not (tmp_path / "strict").exists()

    out = tmp_path / "lenient"
    evaluate(
        synthetic_root,
        weights,
        out,
        f"climatology_path={clim}",
        "allow_climatology_fallback=true",
    )
    note = "t2m: time-mean climatology used (no per-day file t2m.npy)"
    assert json.loads((out / "metrics.json").read_text())["climatology_fallbacks"] == [note]
    assert note in (out / "summary.txt").read_text()


def test_entry_points_print_one_line_naming_the_culprit(synthetic_root, tmp_path, capsys):
    from tools import summary

    missing = str(tmp_path / "missing.tar")
    cases = [
        (
            inference.main,
            ["--config", "tiny", "--weights", missing, "--override_dir", str(tmp_path / "out")],
            [f"root_dir={synthetic_root}", *FAST],
            missing,
        ),
        (summary.main, ["--config", "tiny"], ["num_heads_typo=4"], "'num_heads_typo'"),
    ]
    for main, argv, overrides, culprit in cases:
        for item in overrides:
            argv += ["--set", item]
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and culprit in err, err
    assert not (tmp_path / "out").exists()


# ``python inference.py`` with the fallback publish (two renames) forced.
TWO_RENAMES = (
    "import runpy, sys; from utils.evaluation import staging; "
    "staging.rename_exchange = lambda a, b: False; "
    "sys.argv[0] = 'inference.py'; runpy.run_path('inference.py', run_name='__main__')"
)


def inference_process(root, weights, out_dir, *overrides, kill_at=None, publish="exchange"):
    """``python inference.py --overwrite`` (plots included) in a process of its own, killed at
    the kill point ``kill_at``; ``publish="two_renames"`` forces the fallback publish."""
    env = {k: v for k, v in os.environ.items() if k != KILL_AT}
    if kill_at is not None:
        env[KILL_AT] = kill_at
    program = ["inference.py"] if publish == "exchange" else ["-c", TWO_RENAMES]
    cmd = [sys.executable, *program, "--config", "tiny", "--weights", weights]
    cmd += ["--out_dir", str(out_dir), "--max_batches", "1", "--overwrite"]
    for item in (f"root_dir={root}", *FAST, *overrides):
        cmd += ["--set", item]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def assert_same_files(a, b):
    """The folders ``a`` and ``b`` hold the same files, byte for byte."""
    assert sorted(os.listdir(a)) == sorted(os.listdir(b))
    match, mismatch, errors = filecmp.cmpfiles(a, b, os.listdir(a), shallow=False)
    assert not mismatch and not errors, (mismatch, errors)


@pytest.fixture(scope="module")
def evaluations(synthetic_root, weights, tmp_path_factory):
    """The previous results (one lead time) and those of the uninterrupted evaluation that
    replaces them (two lead times)."""
    folder = tmp_path_factory.mktemp("evaluations")
    for name, t_out in (("previous", 1), ("reference", 2)):
        proc = inference_process(synthetic_root, weights, folder / name, f"t_out_test={t_out}")
        assert proc.returncode == 0, proc.stderr[-3000:]
    return folder / "previous", folder / "reference"


@pytest.mark.parametrize(
    "publish, point, whole_after_the_kill",
    [
        ("exchange", "write:metrics.csv", "previous"),  # writing into the staging folder
        ("exchange", "publish:swapped", "reference"),  # the staging name holds the old results
        ("two_renames", "publish:moved_aside", None),  # out_dir missing, old results in .old
        ("two_renames", "publish:moved_in", "reference"),  # .old not yet removed
    ],
)
def test_a_killed_evaluation_loses_nothing_and_the_same_command_finishes_it(
    synthetic_root, weights, tmp_path, evaluations, publish, point, whole_after_the_kill
):
    """SIGKILL while writing and at each instant of publishing (``publish:ready``, the same state
    as a kill after the last write, is in tests/test_staging.py): the previous results (or the new
    ones once swapped in) stay whole, and running the same command again gives the results of the
    uninterrupted evaluation and leaves nothing else beside them."""
    previous, reference = evaluations
    out = tmp_path / "results"
    shutil.copytree(previous, out)
    run = (synthetic_root, weights, out, "t_out_test=2")
    killed = inference_process(*run, kill_at=point, publish=publish)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert len(os.listdir(tmp_path)) > 1  # what the kill left beside the results
    if whole_after_the_kill is None:
        assert not out.exists()
        (old,) = [n for n in os.listdir(tmp_path) if n.endswith(".old")]
        assert_same_files(tmp_path / old, previous)
    else:
        assert_same_files(out, dict(previous=previous, reference=reference)[whole_after_the_kill])

    again = inference_process(*run, publish=publish)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_files(out, reference)
    assert os.listdir(tmp_path) == ["results"]
