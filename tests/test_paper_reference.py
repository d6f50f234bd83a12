"""The paper's RMSE curves: the shipped file, when they apply, and their place in the table and
the RMSE/ACC figure."""

import os
import re

import numpy as np
import pytest

import utils.evaluation.plots as plots
from utils.evaluation.paper_reference import PAPER_CURVES, paper_reference, read_paper_curves
from utils.evaluation.results import format_headline_table
from utils.evaluation.rollout import RolloutResults

NAMES = ["z500", "t850", "t2m", "u10", "q500"]


def test_shipped_curves_cover_four_variables_every_6_hours_to_5_days():
    curves = read_paper_curves()
    assert sorted(curves) == ["t2m", "t850", "u10", "z500"]
    for hours, rmse in curves.values():
        np.testing.assert_array_equal(hours, np.arange(6, 121, 6))
        assert np.all(np.diff(rmse) > 0)  # errors grow with lead time
    assert curves["z500"][1][3] == 44.5  # day 1, as in the file
    with open(PAPER_CURVES) as f:
        assert "read off the results figure" in f.read()


def test_reference_only_on_the_paper_grid_and_for_present_channels():
    assert sorted(paper_reference(NAMES, 128, 256)) == ["t2m", "t850", "u10", "z500"]
    assert sorted(paper_reference(["z500", "q500"], 128, 256)) == ["z500"]
    assert paper_reference(NAMES, 32, 64) == {}


def _results():
    leads = np.arange(0, 121, 12)
    rmse = np.tile(np.arange(len(leads), dtype=float), (len(NAMES), 1))
    return RolloutResults(
        lead_hours=leads,
        channel_names=NAMES,
        channels=[(n[0], int(n[1:])) if n[1:].isdigit() else (n, None) for n in NAMES],
        n_ics=3,
        lead_time=12,
        rmse={"model": rmse},
        rmse_ic_mean={"model": rmse},
        acc={"model": np.full_like(rmse, 0.9)},
        acc_undefined={"model": np.zeros_like(rmse, dtype=np.int64)},
    )


def test_headline_table_has_a_paper_column():
    reference = paper_reference(NAMES, 128, 256)
    table = format_headline_table(_results(), ["z500", "q500"], [1, 5], reference)
    header = next(ln for ln in table.splitlines() if ln.startswith("variable"))
    assert header.split()[2:5] == ["RMSE", "model", "RMSE"] and "RMSE paper" in header
    rows = {}  # variable -> its rows (leads in the requested order), split into words
    for ln in table.splitlines():
        if ln.split()[0] in ("z500", "q500"):
            rows.setdefault(ln.split()[0], []).append(ln.split())
    assert rows["z500"][0][-3:] == ["2", "44.5", "0.900"]  # model, paper, ACC at day 1
    assert rows["z500"][1][-3:] == ["10", "292.9", "0.900"]  # day 5
    assert rows["q500"][0][-2] == "n/a"
    assert "RMSE paper" not in format_headline_table(_results(), ["z500"], [1], None)


def test_rmse_figure_draws_the_paper_curve(monkeypatch, tmp_path):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path, dpi: figures.append(fig) or path)
    reference = paper_reference(NAMES, 128, 256)
    plots.plot_rmse_acc(_results(), ["z500", "q500"], str(tmp_path / "f.png"), reference=reference)
    lines = {
        (ax.get_title(), line.get_label()): line
        for ax in figures[0].axes
        for line in ax.get_lines()
    }
    paper = lines[("z500 RMSE", "paper")]
    np.testing.assert_allclose(paper.get_xdata(), np.arange(6, 121, 6) / 24.0)
    np.testing.assert_allclose(paper.get_ydata(), reference["z500"][1])
    assert ("q500 RMSE", "paper") not in lines and ("z500 ACC", "paper") not in lines


def test_malformed_curves_file_is_an_error(tmp_path):
    bad = tmp_path / "curves.csv"
    bad.write_text("# note\nhours,z500\n6,1.0\n")
    with pytest.raises(ValueError, match="lead_hours"):
        read_paper_curves(str(bad))


def test_evaluation_doc_paper_table_matches_the_shipped_curves():
    page = os.path.join(os.path.dirname(PAPER_CURVES), "evaluation.md")
    with open(page) as f:
        text = f.read()
    rows = re.findall(
        r"^\| (Z500|T850|T2M|U10) \| [^|]+ \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", text, re.M
    )
    assert len(rows) == 4
    curves = read_paper_curves()
    for name, *values in rows:
        hours, rmse = curves[name.lower()]
        expected = [rmse[np.nonzero(hours == 24 * d)[0][0]] for d in (1, 3, 5)]
        assert [float(v) for v in values] == expected, name
