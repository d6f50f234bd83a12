"""Loader throughput against a raw ``np.load`` loop over the same files.

::

    python benchmarks/bench_loader.py                        # 32 x 64, levels 850/500/250 (20 ch)
    python benchmarks/bench_loader.py --h_size 128 --w_size 256 --paper_levels --days 4   # 70 ch
    python benchmarks/bench_loader.py --root_dir DIR --config tiny --json

Measures samples/s (a sample = the input state and the target state(s), i.e. every file of them) of
(1) raw ``np.load`` of the same files in a tight loop (run before and after the others; the mean is
the reference), (2) ``ERA5NpyDataset.__getitem__``, (3) the training ``DataLoader`` with 0, 1 and 2
workers (timed after the first batch, so worker start-up is excluded), and prints each rate and its
ratio to the raw rate measured in this run. Files are read once before timing so that every
measurement sees a warm page cache.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

PAPER_LEVELS = [1000, 925, 850, 700, 600, 500, 400, 300, 250, 200, 150, 100, 50]


def _params(args, root, levels):
    from utils.YParams import YParams
    from utils.era5_layout import from_hours
    from utils.make_synthetic_era5 import SURFACE_VARIABLES, UPPER_VARIABLES
    overrides = [f"root_dir={root}", f"num_data_workers=0", f"batch_size={args.batch_size}"]
    if not args.root_dir:
        end = from_hours(_start_hours(args) + 24 * args.days - 1).date().isoformat()
        overrides += [f"h_size={args.h_size}", f"w_size={args.w_size}",
                      f"pressure_level={levels}", f"higher_features={list(UPPER_VARIABLES)}",
                      f"surface_features={list(SURFACE_VARIABLES)}", "num_experts=6",
                      f"train_period=['{args.start}', '{end}']", "check_data_values=false"]
    return YParams(os.path.join(REPO, "config", "vamoe.yaml"), args.config, overrides)


def _start_hours(args):
    from utils.era5_layout import to_hours
    return to_hours(args.start)


def _rate(n, seconds):
    return n / seconds if seconds > 0 else float("inf")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root_dir", default=None, help="existing dataset (default: generate one)")
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--h_size", type=int, default=32)
    parser.add_argument("--w_size", type=int, default=64)
    parser.add_argument("--levels", type=int, nargs="+", default=[850, 500, 250])
    parser.add_argument("--paper_levels", action="store_true", help="the 13 levels (70 channels)")
    parser.add_argument("--start", default="2020-01-01")
    parser.add_argument("--days", type=int, default=17)
    parser.add_argument("--samples", type=int, default=128,
                        help="samples per measurement (the period is cycled if shorter)")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)

    import torch
    from utils.data_loader_npyfiles import ERA5NpyDataset, get_data_loader

    torch.set_num_threads(1)
    levels = PAPER_LEVELS if args.paper_levels else args.levels
    tmp = None
    root = args.root_dir
    if root is None:
        from utils.make_synthetic_era5 import generate
        tmp = tempfile.TemporaryDirectory(prefix="bench_loader_")
        root = os.path.join(tmp.name, "era5")
        t = time.perf_counter()
        generate(root, args.start, args.days, args.h_size, args.w_size, levels)
        if not args.json:
            print(f"generated {args.days} days at {args.h_size}x{args.w_size} in "
                  f"{time.perf_counter() - t:.1f} s under {root}")
    params = _params(args, root, levels)
    dataset = ERA5NpyDataset(params, "train")
    n = args.samples
    indices = [i % len(dataset) for i in range(n)]
    files = []
    for i in indices:
        ins, outs = dataset.sample_times(i)
        files.append([p for t in ins + outs for p in dataset.paths(t)])

    def raw():
        start = time.perf_counter()
        for sample in files:
            for p in sample:
                np.load(p)
        return _rate(n, time.perf_counter() - start)

    raw()  # warm the page cache
    results = []
    raw_before = raw()

    start = time.perf_counter()
    for i in indices:
        dataset[i]
    results.append(("dataset[i]", _rate(n, time.perf_counter() - start)))

    for workers in args.workers:
        params["num_data_workers"] = workers
        loader, _, _ = get_data_loader(params, False, "train")
        batches = max(1, n // loader.batch_size)
        iterator = iter(loader)
        next(iterator)  # start-up (workers, first prefetch) excluded
        count, start = 0, time.perf_counter()
        for _ in range(batches):
            try:
                inp, tar, _ = next(iterator)
            except StopIteration:
                iterator = iter(loader)
                inp, tar, _ = next(iterator)
            count += inp.shape[0]
        results.append((f"DataLoader workers={workers}", _rate(count, time.perf_counter() - start)))
        del iterator, loader
    raw_after = raw()
    raw_rate = 0.5 * (raw_before + raw_after)
    files_per_sample = len(files[0])
    mb = files_per_sample * dataset.h * dataset.w * 4 / 2 ** 20
    header = dict(grid=f"{dataset.h}x{dataset.w}", channels=dataset.layout.n_channels,
                  files_per_sample=files_per_sample, mb_per_sample=round(mb, 2), samples=n,
                  batch_size=args.batch_size, cpus=os.cpu_count())
    rows = [("raw np.load", raw_rate)] + results
    if args.json:
        for name, rate in rows:
            print(json.dumps(dict(header, reader=name, samples_per_s=round(rate, 2),
                                  ratio_to_raw=round(rate / raw_rate, 3),
                                  raw_before=round(raw_before, 2), raw_after=round(raw_after, 2))))
    else:
        print(", ".join(f"{k}={v}" for k, v in header.items()))
        print(f"{'reader':<24}{'samples/s':>12}{'MB/s':>10}{'x raw':>8}")
        for name, rate in rows:
            print(f"{name:<24}{rate:>12.1f}{rate * mb:>10.0f}{rate / raw_rate:>8.2f}")
        print(f"(raw np.load: {raw_before:.1f} samples/s before, {raw_after:.1f} after)")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
