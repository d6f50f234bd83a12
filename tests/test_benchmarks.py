"""The model benchmark runs end to end on a tiny configuration and reports consistent figures."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_model_json_reports_every_measurement():
    cmd = [
        sys.executable,
        "benchmarks/bench_model.py",
        "--config",
        "tiny",
        "--batch",
        "1",
        "--steps",
        "1",
        "--moe-reps",
        "1",
        "--rollout-steps",
        "1",
        "--json",
        "--compile",
        "--compile-backend",
        "aot_eager",  # traces forward and backward like Inductor, without generating kernels
    ]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr
    rows = {}
    for line in run.stdout.splitlines():
        row = json.loads(line)
        rows[row.pop("measurement") + row.pop("label", "")] = row
    assert set(rows) == {
        "env",
        "peak_matmul",
        "train_stepplain",
        "memoryplain",
        "train_stepplain+compile",
        "memoryplain+compile",
        "compileplain",
        "moe",
        "rollout",
        "total",
    }
    moe = rows["moe"]
    assert moe["tokens"] == (32 // 2) * (64 // 2) and moe["max_abs_output_diff"] < 1e-4
    assert moe["speedup"] == pytest.approx(moe["loop_ms"] / moe["fast_ms"])
    assert moe["speedup_ceiling"] == pytest.approx(
        moe["loop_ms"] / (moe["matmul_floor_ms"] + moe["topk_ms"])
    )
    step = rows["train_stepplain"]
    peak = rows["peak_matmul"]["peak_gflops"]
    assert step["mfu"] == pytest.approx(step["achieved_gflops"] / peak)
    assert 0 < step["mfu"] < 1.5 and rows["memoryplain"]["peak_rss_gib"] > 0
    assert rows["rollout"]["steps"] == 1 and rows["rollout"]["steps_per_s"] > 0
    comp, compiled = rows["compileplain"], rows["train_stepplain+compile"]
    assert compiled["compile"] == comp["backend"] == "aot_eager"
    assert comp["ratio_compiled_eager"] == pytest.approx(compiled["step_ms"] / step["step_ms"])
    assert comp["compiled_mfu"] == pytest.approx(compiled["mfu"])
    assert comp["compile_s"] == pytest.approx(compiled["first_step_s"] - step["step_ms"] / 1e3)


@pytest.mark.slow
def test_bench_convert_reports_consistent_ratios(capsys):
    pytest.importorskip("xarray")
    pytest.importorskip("netCDF4")
    pytest.importorskip("scipy")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_convert
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    bench_convert.main(
        ["--h_in", "9", "--w_in", "16", "--times", "2", "--grid", "4x8", "--workers", "1"]
        + ["--repeats", "1", "--json"]
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["measurement"] for r in rows] == [
        "plain_read",
        "read_and_atomic_write",
        "durable_writes",
        "convert",
        "convert",
    ]
    assert rows[0]["fields"] == 2 * 7
    assert [r["grid"] for r in rows[3:]] == ["9x16 (input)", "4x8"]
    plain, durable = rows[0]["fields_per_s"], rows[2]["fields_per_s"]
    for row in rows:  # one round: each ratio is the quotient of the reported rates
        assert row["ratio_to_plain_read"] == pytest.approx(row["fields_per_s"] / plain)
        assert row["ratio_to_durable_writes"] == pytest.approx(row["fields_per_s"] / durable)


def test_bench_loader_times_only_the_formats_a_dataset_holds(synthetic_root):
    """An .npy-only dataset: h5 is named as missing in one line, with the command that makes it,
    and npy is timed against the raw np.load loop."""
    cmd = [sys.executable, "benchmarks/bench_loader.py", "--root_dir", synthetic_root]
    cmd += ["--repeats", "1", "--samples", "4", "--workers", "0", "--backends", "threads", "--json"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines() == [
        f"h5 not timed: no year files (*/<YYYY>.h5) under {synthetic_root}; make them with "
        f"`python -m tools.npy_to_h5 --root_dir {synthetic_root}`"
    ]
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    assert [(r["reader"], r["format"]) for r in rows] == [
        ("raw np.load", "npy"),
        ("dataset[i]", "npy"),
        ("loader threads=0", "npy"),
    ]
    assert all(r["samples_per_s"] > 0 for r in rows)
