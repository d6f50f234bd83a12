"""ERA5 conversion throughput against a plain read of the same input.

::

    python benchmarks/bench_convert.py                                   # 0.5 deg netCDF input
    python benchmarks/bench_convert.py --h_in 721 --w_in 1440 --format zarr --times 8
    python benchmarks/bench_convert.py --workers 1 2 4 --json

Writes one ERA5-like input (``--format netcdf`` or ``zarr``; rows on the poles, ``--times`` steps
6 h apart, z and t at 3 levels and t2m: 7 fields per step) into a temporary directory, then times,
in each of ``--repeats`` rounds:

- ``plain read``: xarray opens the input and loads every field of every step into memory, one step
  and variable at a time, as the converter reads it (the floor: the converter cannot be faster);
- ``read + atomic writes``: the same, plus writing every field as one ``.npy`` with
  ``utils.atomic_io.atomic_save_npy`` (fsync and rename): the floor of any atomic converter;
- ``convert`` on the input's grid and ``convert --grid`` (default 128x256, conservative regridding)
  with each of ``--workers``, into a fresh output directory (every file fsynced and renamed).

It prints fields/s (medians over rounds) and each run's ratios to the plain read and to the read
with atomic writes of the same round.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

LEVELS = [850, 500, 250]


def make_input(directory: str, h: int, w: int, times: int, fmt: str) -> tuple[str, int]:
    """Write the benchmark input; returns its path and its number of fields."""
    import pandas as pd
    import xarray as xr

    rng = np.random.default_rng(0)
    lat, lon = np.linspace(90, -90, h), np.arange(w) * 360.0 / w
    shape = (times, len(LEVELS), h, w)
    ds = xr.Dataset(
        {
            "geopotential": (
                ("time", "level", "latitude", "longitude"),
                (5e4 + 500 * rng.standard_normal(shape)).astype(np.float32),
            ),
            "temperature": (
                ("time", "level", "latitude", "longitude"),
                (250 + 10 * rng.standard_normal(shape)).astype(np.float32),
            ),
            "2m_temperature": (
                ("time", "latitude", "longitude"),
                (280 + 10 * rng.standard_normal((times, h, w))).astype(np.float32),
            ),
        },
        coords={
            "time": pd.date_range("2020-01-01", periods=times, freq="6h"),
            "level": LEVELS,
            "latitude": lat,
            "longitude": lon,
        },
    )
    if fmt == "zarr":
        path = os.path.join(directory, "input.zarr")
        ds.chunk({"time": 1}).to_zarr(path, zarr_format=2, consolidated=True)
    else:
        path = os.path.join(directory, "input.nc")
        ds.to_netcdf(path)
    return path, times * (2 * len(LEVELS) + 1)


def plain_read(path: str, fmt: str) -> float:
    """Seconds to load every field of the input with xarray, step by step and variable by variable."""
    import xarray as xr

    start = time.perf_counter()
    ds = xr.open_zarr(path) if fmt == "zarr" else xr.open_dataset(path)
    for t in range(ds.sizes["time"]):
        for name in ds.data_vars:
            np.asarray(ds[name].isel(time=t).values)
    ds.close()
    return time.perf_counter() - start


def read_and_write(path: str, fmt: str, out: str) -> float:
    """Seconds to load every field like :func:`plain_read` and write each atomically to ``out``."""
    import xarray as xr

    from utils.atomic_io import atomic_save_npy

    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    start = time.perf_counter()
    ds = xr.open_zarr(path) if fmt == "zarr" else xr.open_dataset(path)
    count = 0
    for t in range(ds.sizes["time"]):
        for name in ds.data_vars:
            values = np.asarray(ds[name].isel(time=t).values)
            for field in values.reshape(-1, *values.shape[-2:]):
                atomic_save_npy(os.path.join(out, f"{count}.npy"), field)
                count += 1
    ds.close()
    return time.perf_counter() - start


def convert_once(path: str, out: str, grid: str | None, workers: int) -> tuple[float, int]:
    from utils.conversion.convert import convert

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    result = convert([path], out, grid=grid, workers=workers, stats=False, progress=False)
    return time.perf_counter() - start, result["written"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--h_in", type=int, default=361, help="input rows (default 361: 0.5 deg)")
    parser.add_argument("--w_in", type=int, default=720, help="input columns")
    parser.add_argument("--times", type=int, default=12, help="time steps in the input")
    parser.add_argument("--format", choices=("netcdf", "zarr"), default="netcdf")
    parser.add_argument("--grid", default="128x256", help="target of the regridding runs")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work_dir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    return parser


def measure(args, work: str, path: str, n_fields: int) -> list[dict]:
    """Time ``--repeats`` rounds (both references, then every conversion run); returns one row
    per reference and per conversion run: median fields/s and median per-round ratios."""
    runs = [(None, w) for w in args.workers] + [(args.grid, w) for w in args.workers]
    plain_rates, floor_rates = [], []
    rates: dict = {run: [] for run in runs}
    ratios: dict = {run: [] for run in runs}
    floor_ratios: dict = {run: [] for run in runs}
    plain_read(path, args.format)  # warm the page cache and the imports
    for _ in range(args.repeats):  # a round: both references, then every run
        plain = n_fields / plain_read(path, args.format)
        floor = n_fields / read_and_write(path, args.format, os.path.join(work, "floor"))
        plain_rates.append(plain)
        floor_rates.append(floor)
        for run in runs:
            seconds, written = convert_once(path, os.path.join(work, "out"), *run)
            if written != n_fields:
                raise RuntimeError(f"converter wrote {written} fields, expected {n_fields}")
            rates[run].append(n_fields / seconds)
            ratios[run].append(rates[run][-1] / plain)
            floor_ratios[run].append(rates[run][-1] / floor)
    rows = [
        {
            "measurement": "plain_read",
            "input": f"{args.format} {args.h_in}x{args.w_in}",
            "fields": n_fields,
            "fields_per_s": statistics.median(plain_rates),
            "ratio_to_plain_read": 1.0,
        },
        {
            "measurement": "read_and_atomic_write",
            "fields_per_s": statistics.median(floor_rates),
            "ratio_to_plain_read": statistics.median(
                [f / p for f, p in zip(floor_rates, plain_rates, strict=True)]
            ),
            "ratio_to_read_and_write": 1.0,
        },
    ]
    for (grid, workers), values in rates.items():
        rows.append(
            {
                "measurement": "convert",
                "grid": grid or f"{args.h_in}x{args.w_in} (input)",
                "workers": workers,
                "fields_per_s": statistics.median(values),
                "ratio_to_plain_read": statistics.median(ratios[(grid, workers)]),
                "ratio_to_read_and_write": statistics.median(floor_ratios[(grid, workers)]),
            }
        )
    return rows


def print_table(args, rows: list[dict], n_fields: int) -> None:
    print(
        f"input: {args.format}, {args.h_in} x {args.w_in}, {n_fields} fields; "
        f"medians of {args.repeats} rounds"
    )
    print(f"{'run':<40} {'fields/s':>9} {'x plain read':>13} {'x read+write':>13}")
    labels = ["plain read (xarray)", "read + atomic writes"] + [
        f"convert -> {row['grid']}, {row['workers']} worker(s)" for row in rows[2:]
    ]
    for label, row in zip(labels, rows, strict=True):
        to_floor = row.get("ratio_to_read_and_write")
        print(
            f"{label:<40} {row['fields_per_s']:>9.1f} {row['ratio_to_plain_read']:>13.2f} "
            f"{'' if to_floor is None else f'{to_floor:.2f}':>13}"
        )


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    work = tempfile.mkdtemp(prefix="bench_convert_", dir=args.work_dir)
    try:
        path, n_fields = make_input(work, args.h_in, args.w_in, args.times, args.format)
        rows = measure(args, work, path, n_fields)
        if args.json:
            for row in rows:
                print(json.dumps(row))
        else:
            print_table(args, rows, n_fields)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
