"""Loader throughput of the npy and h5 formats against a raw ``np.load`` loop over the same files.

::

    python benchmarks/bench_loader.py                        # 32 x 64, levels 850/500/250 (20 ch)
    python benchmarks/bench_loader.py --h_size 128 --w_size 256 --paper_levels --days 4   # 70 ch
    python benchmarks/bench_loader.py --root_dir DIR --config tiny --format npy --json

Measures samples/s (a sample = the input state and the target state(s)) of (1) raw ``np.load`` of
the sample's ``.npy`` files in a tight loop, and, for each ``--format`` (``npy``: one file per
field; ``h5``: one HDF5 file per year, converted from the same ``.npy`` files with
``utils.data.npy_to_h5``, so both read the same data), (2) ``ERA5Dataset.__getitem__``, (3) the
training loader of ``get_data_loader`` with 0, 1 and 2 reader threads (``loader_backend:
threads``) and 1 and 2 worker processes (``processes``), timed after the first batch so that
start-up is excluded. Each of ``--repeats`` rounds times the raw loop right before every reader
of every format, the formats of one reader back to back; the table gives median rates, the
median of the per-round ratios to raw and, per reader, the median per-round ratio h5 / npy.
Files are read once before timing so that every measurement sees a warm page cache. With
``--root_dir``, only the formats the dataset holds are timed (one line says which is missing and
how to make it); without ``.npy`` files the raw reference reads the sample's rows of the year
files with h5py instead.

Like train.sh and test.sh, the benchmark enables transparent huge pages for PyTorch's large CPU
allocations (``THP_MEM_ALLOC_ENABLE=1``): a fresh 70 MB batch buffer then costs a few dozen page
faults instead of ~17,000.
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

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # read by PyTorch at import

import numpy as np  # noqa: E402

CONFIG = os.path.join(REPO, "config", "vamoe.yaml")


def _params(args, root, levels):
    from utils.data.synthetic import SURFACE_VARIABLES, UPPER_VARIABLES
    from utils.times import from_hours
    from utils.YParams import YParams

    overrides = [f"root_dir={root}", "num_data_workers=0", f"batch_size={args.batch_size}"]
    if not args.root_dir:
        end = from_hours(_start_hours(args) + 24 * args.days - 1).date().isoformat()
        overrides += [
            f"h_size={args.h_size}",
            f"w_size={args.w_size}",
            f"pressure_level={levels}",
            f"higher_features={list(UPPER_VARIABLES)}",
            f"surface_features={list(SURFACE_VARIABLES)}",
            f"num_experts={len(UPPER_VARIABLES) + 1}",
            f"train_period=['{args.start}', '{end}']",
            "check_data_values=false",
        ]
    return YParams(CONFIG, args.config, overrides)


def _start_hours(args):
    from utils.times import to_hours

    return to_hours(args.start)


def _rate(n, seconds):
    return n / seconds if seconds > 0 else float("inf")


def _time_raw(files) -> float:
    """Samples/s of ``np.load`` of every file of every sample (``files``: a path list per sample)."""
    start = time.perf_counter()
    for sample in files:
        for p in sample:
            np.load(p)
    return _rate(len(files), time.perf_counter() - start)


def _time_raw_rows(rows) -> float:
    """Samples/s of h5py reads of every row of every sample (``rows``: ``(path, row)`` lists)."""
    import h5py

    paths = sorted({p for sample in rows for p, _ in sample})
    start = time.perf_counter()
    files = {p: h5py.File(p, "r") for p in paths}
    for sample in rows:
        for p, row in sample:
            files[p]["fields"][row]
    for f in files.values():
        f.close()
    return _rate(len(rows), time.perf_counter() - start)


def _raw_reference(reference, indices, data_format):
    """``(label, timer)`` of the raw loop over the samples
    ``indices`` of ``reference`` (a dataset of ``data_format``): ``np.load`` of its ``.npy``
    files, or h5py reads of its rows."""
    states = []
    for i in indices:
        ins, outs = reference.sample_times(i)
        states.append(ins + outs)
    if data_format == "npy":
        files = [[p for t in sample for p in reference.paths(t)] for sample in states]
        return "raw np.load", lambda: _time_raw(files)
    rows = [[reference.reader.location(t) for t in sample] for sample in states]
    return "raw h5py rows", lambda: _time_raw_rows(rows)


def present_formats(args, root: str) -> list[str]:
    """The formats of ``--format`` that ``root`` holds; one line on stderr for each missing one,
    saying how to make it."""
    from utils.data.h5_layout import find_year_files

    held = {
        "npy": os.path.isdir(root) and any(d.isdigit() and len(d) == 4 for d in os.listdir(root)),
        "h5": bool(find_year_files(root, "train")),
    }
    how = {
        "npy": "convert ERA5 with `python -m tools.prepare_era5 --format npy`",
        "h5": f"make them with `python -m tools.npy_to_h5 --root_dir {root}`",
    }
    what = {
        "npy": "no .npy layout (<YYYY>/<YYYY-MM-DD>/*.npy)",
        "h5": "no year files (*/<YYYY>.h5)",
    }
    for f in args.format:
        if not held[f]:
            print(f"{f} not timed: {what[f]} under {root}; {how[f]}", file=sys.stderr)
    return [f for f in args.format if held[f]]


def _time_dataset(dataset, indices) -> float:
    """Samples/s of ``dataset[i]`` for every ``i`` of ``indices``."""
    start = time.perf_counter()
    for i in indices:
        dataset[i]
    return _rate(len(indices), time.perf_counter() - start)


def _time_loader(loader, n) -> float:
    """Samples/s of ``n // batch_size`` batches of ``loader`` (cycled), after its first batch."""
    batches = max(1, n // loader.batch_size)
    iterator = iter(loader)
    next(iterator)  # start-up (workers, first prefetch) excluded
    count, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            inp, _, _ = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            inp, _, _ = next(iterator)
        count += inp.shape[0]
    return _rate(count, time.perf_counter() - start)


def _readers(args, params, data_format, indices):
    """``[(name, timer)]`` of one format: ``dataset[i]`` and every loader setting asked for."""
    from utils.data.dataset import ERA5Dataset
    from utils.data.loader import get_data_loader

    params["data_format"] = data_format
    dataset = ERA5Dataset(params, "train")
    readers = [("dataset[i]", lambda: _time_dataset(dataset, indices))]
    for backend in args.backends:
        for workers in args.workers:
            if backend == "processes" and workers == 0:
                continue  # the same as threads with 0 readers
            params["num_data_workers"], params["loader_backend"] = workers, backend
            loader = get_data_loader(params, False, "train")[0]
            readers.append(
                (
                    f"loader {backend}={workers}",
                    lambda loader=loader: _time_loader(loader, len(indices)),
                )
            )
    return readers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root_dir", default=None, help="existing dataset (default: generate one)")
    parser.add_argument("--config", default="tiny")
    parser.add_argument(
        "--format",
        nargs="+",
        default=["npy", "h5"],
        choices=["npy", "h5"],
        help="data formats to time (h5 is converted from the npy files when generating)",
    )
    parser.add_argument("--h_size", type=int, default=32)
    parser.add_argument("--w_size", type=int, default=64)
    parser.add_argument("--levels", type=int, nargs="+", default=[850, 500, 250])
    parser.add_argument("--paper_levels", action="store_true", help="the 13 levels (70 channels)")
    parser.add_argument("--start", default="2020-01-01")
    parser.add_argument("--days", type=int, default=17)
    parser.add_argument(
        "--samples",
        type=int,
        default=128,
        help="samples per measurement (the period is cycled if shorter)",
    )
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--backends",
        nargs="+",
        default=["threads", "processes"],
        choices=["threads", "processes"],
        help="loader_backend values to time",
    )
    parser.add_argument("--repeats", type=int, default=5, help="rounds of measurements")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    return parser


def _levels(args) -> list[int]:
    if args.paper_levels:
        from utils.YParams import YParams

        return list(YParams(CONFIG, "vamoe").pressure_level)
    return args.levels


def _generate(args, levels, root) -> None:
    """Write the synthetic dataset under ``root`` (and its h5 form when timed)."""
    from utils.data.synthetic import generate

    t = time.perf_counter()
    generate(root, args.start, args.days, args.h_size, args.w_size, levels, climatology=False)
    if not args.json:
        print(
            f"generated {args.days} days at {args.h_size}x{args.w_size} in "
            f"{time.perf_counter() - t:.1f} s under {root}"
        )
    if "h5" in args.format:
        from utils.data.npy_to_h5 import convert

        t = time.perf_counter()
        convert(root, root, _params(args, root, levels).layout, hour_step=6)
        if not args.json:
            print(f"converted to h5 (<root>/all/<YYYY>.h5) in {time.perf_counter() - t:.1f} s")


def _measure(args, params, raw, indices):
    """``(reader names, raw rates, {(format, name): rates}, {(format, name): ratios to raw})``;
    ``raw()`` times the raw loop.

    Each round times the raw loop right before every reader, so a ratio compares two rates
    measured seconds apart; the medians over rounds are robust to a busy machine's noise."""
    raw()  # warm the page cache
    by_format = {f: _readers(args, params, f, indices) for f in args.format}
    for readers in by_format.values():
        for _, reader in readers[:1]:
            reader()  # warm the page cache of this format's files
    names = [name for name, _ in next(iter(by_format.values()))]
    raw_rates = []
    rates = {(f, name): [] for f in args.format for name in names}
    ratios = {key: [] for key in rates}
    for _ in range(args.repeats):
        for k, name in enumerate(names):
            for f in args.format:
                reference_rate = raw()
                rate = by_format[f][k][1]()
                raw_rates.append(reference_rate)
                rates[f, name].append(rate)
                ratios[f, name].append(rate / reference_rate)
    return names, raw_rates, rates, ratios


def _rows(args, names, raw_rates, rates, ratios, raw_label):
    """``[(reader, format, median rate, median ratio to raw, median h5 / npy or None)]``."""
    raw_format = "npy" if raw_label == "raw np.load" else "h5"
    rows = [(raw_label, raw_format, float(np.median(raw_rates)), 1.0, None)]
    for name in names:
        h5_vs_npy = None
        if {"npy", "h5"} <= set(args.format):
            h5_vs_npy = float(np.median(np.array(rates["h5", name]) / np.array(rates["npy", name])))
        for f in args.format:
            rows.append(
                (
                    name,
                    f,
                    float(np.median(rates[f, name])),
                    float(np.median(ratios[f, name])),
                    h5_vs_npy if f == "h5" else None,
                )
            )
    return rows


def _print_json(args, header, rows) -> None:
    for name, f, rate, ratio, h5_vs_npy in rows:
        row = dict(
            header,
            reader=name,
            format=f,
            samples_per_s=round(rate, 2),
            ratio_to_raw=round(ratio, 3),
            repeats=args.repeats,
        )
        if h5_vs_npy is not None:
            row["h5_over_npy"] = round(h5_vs_npy, 3)
        print(json.dumps(row))


def _print_table(args, header, rows, raw_rates, mb) -> None:
    print(", ".join(f"{k}={v}" for k, v in header.items()))
    print(f"{'reader':<24}{'format':>7}{'samples/s':>12}{'MB/s':>10}{'x raw':>8}{'h5/npy':>8}")
    for name, f, rate, ratio, h5_vs_npy in rows:
        tail = f"{h5_vs_npy:>8.2f}" if h5_vs_npy is not None else ""
        print(f"{name:<24}{f:>7}{rate:>12.1f}{rate * mb:>10.0f}{ratio:>8.2f}{tail}")
    print(
        f"(medians over {args.repeats} rounds; x raw and h5/npy are medians of per-round "
        f"ratios; {rows[0][0]} ranged {min(raw_rates):.1f}-{max(raw_rates):.1f} samples/s)"
    )


def main(argv=None):
    args = build_parser().parse_args(argv)

    import torch

    from utils.data.dataset import ERA5Dataset

    torch.set_num_threads(1)
    levels = _levels(args)
    tmp = None
    root = args.root_dir
    if root is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_loader_")
        root = os.path.join(tmp.name, "era5")
        _generate(args, levels, root)
    else:
        args.format = present_formats(args, root)
        if not args.format:
            raise SystemExit(f"error: no dataset to time under {root}")
    params = _params(args, root, levels)
    params["data_format"] = args.format[0]
    reference = ERA5Dataset(params, "train")
    n = args.samples
    indices = [i % len(reference) for i in range(n)]
    raw_label, raw = _raw_reference(reference, indices, args.format[0])
    names, raw_rates, rates, ratios = _measure(args, params, raw, indices)
    rows = _rows(args, names, raw_rates, rates, ratios, raw_label)
    states = reference.t_in + reference.t_out
    mb = states * reference.layout.n_channels * reference.h * reference.w * 4 / 2**20
    header = dict(
        grid=f"{reference.h}x{reference.w}",
        channels=reference.layout.n_channels,
        npy_files_opened_per_sample=states * reference.layout.n_channels,
        h5_reads_per_sample=states,
        mb_per_sample=round(mb, 2),
        samples=n,
        batch_size=args.batch_size,
        cpus=os.cpu_count(),
    )
    if args.json:
        _print_json(args, header, rows)
    else:
        _print_table(args, header, rows, raw_rates, mb)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
