"""inference.evaluate's output directory: staged and moved into place, --overwrite, provenance in
metrics.json, and the climatology fallback (an error unless allowed, then listed)."""

import json
import os
import shutil

import pytest
from conftest import FAST_EVALUATION, make_params

import inference
from networks.vamoe import VAMoE
from utils.errors import DataError, OutputExistsError
from utils.training.checkpoint import atomic_save

FAST = FAST_EVALUATION


class _Killed(BaseException):
    """Stands for SIGKILL."""


def _killed(*args, **kwargs):
    raise _Killed()


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
    synthetic_root, weights, tmp_path, monkeypatch
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

    # A killed evaluation leaves the previous results whole and no staging directory.
    (out / "stale_marker").write_text("from the first evaluation")
    before = (out / "metrics.json").read_text()
    monkeypatch.setattr(inference, "plot_rmse_acc", _killed)
    with pytest.raises(_Killed):
        evaluate(synthetic_root, weights, out, "t_out_test=1", overwrite=True)
    monkeypatch.setattr(inference, "plot_rmse_acc", _placeholder_plot)
    assert (out / "metrics.json").read_text() == before and (out / "stale_marker").exists()
    assert sorted(os.listdir(tmp_path)) == ["results"]

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
