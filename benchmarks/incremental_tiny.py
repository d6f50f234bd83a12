"""Incremental forecasting on synthetic data, end to end, on a CPU in a few minutes.

    python benchmarks/incremental_tiny.py [--root_dir data/synthetic_era5] [--work_dir DIR]

1. trains ``tiny_initial`` (15 upper-air channels, 5 experts) on the full training period;
2. grows it with ``tiny_incremental`` (+ 5 surface channels, one new expert, the paper's freezing)
   on the second half of the training period;
3. trains ``tiny`` (all 20 channels) from scratch on that same half, for the same number of steps.

Each model is scored on the test period by the evaluation code of ``inference.py``. The script
prints, for the old (upper-air) variables, RMSE before and after the incremental stage
(forgetting), for the new (surface) variables the incremental model next to the from-scratch
model, and the trainable fractions; everything also goes to ``<work_dir>/incremental_tiny.json``.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train  # noqa: E402
from inference import evaluate  # noqa: E402
from networks.summary import summarize  # noqa: E402
from utils.data.synthetic import generate  # noqa: E402
from utils.evaluation.results import load_results  # noqa: E402
from utils.YParams import YParams  # noqa: E402

CONFIG = "config/vamoe.yaml"
LEADS = (6, 24)


def stage(name, root, work_dir, epochs, extra=()):
    """Train section ``name`` and evaluate its best checkpoint; returns (results, run_dir)."""
    overrides = [f"root_dir={root}", f"max_epochs={epochs}", "num_data_workers=0", *extra]
    argv = ["--yaml_config", CONFIG, "--config", name, "--exp_dir", work_dir]
    for item in overrides:
        argv += ["--set", item]
    train.main(argv)
    run_dir = os.path.join(work_dir, name, "0")
    weights = os.path.join(run_dir, "training_checkpoints", "best_ckpt.tar")
    out_dir = os.path.join(run_dir, "results")
    params = YParams(CONFIG, name, overrides)
    if not os.path.isfile(os.path.join(out_dir, "metrics.json")):
        evaluate(params, weights, out_dir)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        steps = [json.loads(line) for line in f][-1]["global_step"]
    return load_results(out_dir), steps


def rmse_at(results, name, hours):
    return float(results.rmse["model"][results.channel_index(name), results.lead_index(hours)])


def print_old_variables(report, initial, incremental, old_names, hours) -> None:
    """RMSE of the old variables at ``hours`` before and after the incremental stage."""
    print(
        f"\nold variables, RMSE at {hours} h{'before':>12}{'after':>12}{'change':>10}"
        f"{'persistence':>13}"
    )
    changes = []
    for name in old_names:
        before, after = rmse_at(initial, name, hours), rmse_at(incremental, name, hours)
        persist = float(
            initial.rmse["persistence"][initial.channel_index(name), initial.lead_index(hours)]
        )
        changes.append(after / before - 1)
        report["old"][f"{name}@{hours}h"] = {"before": before, "after": after}
        print(
            f"  {name:<25}{before:>12.4g}{after:>12.4g}{100 * changes[-1]:>+8.1f} %{persist:>13.4g}"
        )
    print(f"  mean relative change {100 * np.mean(changes):+.1f} % (positive = forgetting)")
    report[f"old_mean_change_{hours}h"] = float(np.mean(changes))


def print_new_variables(report, incremental, scratch, new_names, hours) -> None:
    """RMSE of the new variables at ``hours``: the incremental model and the one from scratch."""
    print(
        f"new variables, RMSE at {hours} h{'incremental':>12}{'scratch':>12}"
        f"{'':>10}{'persistence':>13}"
    )
    for name in new_names:
        inc, scr = rmse_at(incremental, name, hours), rmse_at(scratch, name, hours)
        persist = float(
            scratch.rmse["persistence"][scratch.channel_index(name), scratch.lead_index(hours)]
        )
        report["new"][f"{name}@{hours}h"] = {"incremental": inc, "scratch": scr}
        print(f"  {name:<25}{inc:>12.4g}{scr:>12.4g}{'':>10}{persist:>13.4g}")


def run_stages(args):
    """The three stages (initial, incremental, from scratch): their results and their steps."""
    initial, steps_initial = stage(
        "tiny_initial", args.root_dir, args.work_dir, args.epochs_initial
    )
    ckpt = os.path.join(args.work_dir, "tiny_initial", "0", "training_checkpoints", "best_ckpt.tar")
    incremental, steps_incremental = stage(
        "tiny_incremental",
        args.root_dir,
        args.work_dir,
        args.epochs_incremental,
        [f"cl_ckpt_path={ckpt}"],
    )
    half = YParams(CONFIG, "tiny_incremental").train_period
    scratch, steps_scratch = stage(
        "tiny",
        args.root_dir,
        args.work_dir,
        args.epochs_incremental,
        [f"train_period=[{half[0]}, {half[1]}]"],
    )
    steps = {"initial": steps_initial, "incremental": steps_incremental, "scratch": steps_scratch}
    return (initial, incremental, scratch), steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root_dir", default="data/synthetic_era5")
    parser.add_argument("--work_dir", default="exp/incremental_tiny")
    parser.add_argument("--epochs_initial", type=int, default=8)
    parser.add_argument("--epochs_incremental", type=int, default=8)
    args = parser.parse_args(argv)

    if not os.path.isfile(os.path.join(args.root_dir, "statistic", "mean_std.json")):
        generate(
            args.root_dir,
            "2020-01-01",
            32,
            h_size=32,
            w_size=64,
            levels=(850, 500, 250),
            hour_step=6,
            seed=0,
        )
    (initial, incremental, scratch), steps = run_stages(args)
    old_names = YParams(CONFIG, "tiny_initial").layout.names
    new_names = [n for n in YParams(CONFIG, "tiny").layout.names if n not in old_names]
    report = {"steps": steps, "old": {}, "new": {}}
    print(
        f"\nsteps: initial {steps['initial']}, incremental {steps['incremental']}, "
        f"from scratch {steps['scratch']}"
    )
    for hours in LEADS:
        print_old_variables(report, initial, incremental, old_names, hours)
        print_new_variables(report, incremental, scratch, new_names, hours)
    fractions = {
        name: summarize(YParams(CONFIG, name))["trainable_fraction"]
        for name in ("tiny_incremental", "vamoe_incremental")
    }
    report["trainable_fraction"] = fractions
    print(
        "\ntrainable fraction: " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in fractions.items())
    )
    with open(os.path.join(args.work_dir, "incremental_tiny.json"), "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
