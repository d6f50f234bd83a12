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
  ``utils.atomic_io.atomic_save_npy`` (one fsync per file, then a rename);
- ``durable writes alone``: no reading; the same fields, already in memory, each written to a
  temporary name and renamed (``utils.atomic_io.atomic_write(durable=False)``), a day of them (4 steps) flushed
  to disk at once (``utils.batch_io.make_durable``), as the converter writes them: the disk's rate
  of durable writes, which no converter that keeps its output on disk can pass;
- ``convert`` on the input's grid and ``convert --grid`` (default 128x256, conservative regridding)
  with each of ``--workers``, into a fresh output directory.

Each run starts once the file system has written out what the previous one left (``sync``). It
prints fields/s (medians over rounds) and each run's ratios to the plain read and to the durable
writes of the same round.
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


def _settled() -> float:
    """``time.perf_counter()`` once the file system has written out everything pending (the
    previous run's files and the deletion of its output), so that each run starts alike."""
    os.sync()
    return time.perf_counter()


def plain_read(path: str, fmt: str) -> float:
    """Seconds to load every field of the input with xarray, step by step and variable by variable."""
    import xarray as xr

    start = _settled()
    ds = xr.open_zarr(path) if fmt == "zarr" else xr.open_dataset(path)
    for t in range(ds.sizes["time"]):
        for name in ds.data_vars:
            np.asarray(ds[name].isel(time=t).values)
    ds.close()
    return time.perf_counter() - start


def read_fields(path: str, fmt: str) -> list:
    """Every ``(step, variable, field)`` of the input, read as :func:`plain_read` reads them."""
    import xarray as xr

    ds = xr.open_zarr(path) if fmt == "zarr" else xr.open_dataset(path)
    fields = []
    for t in range(ds.sizes["time"]):
        for name in ds.data_vars:
            values = np.asarray(ds[name].isel(time=t).values)
            fields += [(t, name, f) for f in values.reshape(-1, *values.shape[-2:])]
    ds.close()
    return fields


def read_and_write(path: str, fmt: str, out: str) -> float:
    """Seconds to load every field like :func:`plain_read` and write each atomically to ``out``
    (``utils.atomic_io``: one fsync per file)."""
    from utils.atomic_io import atomic_save_npy

    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    start = _settled()
    for k, (_, _, field) in enumerate(read_fields(path, fmt)):
        atomic_save_npy(os.path.join(out, f"{k}.npy"), field)
    return time.perf_counter() - start


def durable_writes(fields: list, out: str) -> float:
    """Seconds to write ``fields`` (from :func:`read_fields`) into ``out`` as the converter
    does: each unsynced to a temporary name and renamed, a day (4 steps) flushed at once."""
    from utils.atomic_io import atomic_write
    from utils.batch_io import make_durable

    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    start = _settled()
    day: list = []
    for k, (t, name, field) in enumerate(fields):
        target = os.path.join(out, str(t // 4), f"{t}-{name}-{k}.npy")
        atomic_write(target, lambda f, a=field: np.save(f, a), durable=False)
        day.append(target)
        if k + 1 == len(fields) or fields[k + 1][0] // 4 != t // 4:
            make_durable(day, out)
            day = []
    return time.perf_counter() - start


def convert_once(path: str, out: str, grid: str | None, workers: int) -> tuple[float, int]:
    from utils.conversion.convert import convert

    shutil.rmtree(out, ignore_errors=True)
    start = _settled()
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


REFERENCES = (
    ("plain_read", "plain read (xarray)"),
    ("read_and_atomic_write", "read + atomic writes"),
    ("durable_writes", "durable writes alone (no read)"),
)


def _references(args, work: str, path: str, fields: list) -> tuple[float, float, float]:
    """Seconds of the three references of one round (see the module doc)."""
    return (
        plain_read(path, args.format),
        read_and_write(path, args.format, os.path.join(work, "atomic")),
        durable_writes(fields, os.path.join(work, "durable")),
    )


def measure(args, work: str, path: str, n_fields: int) -> list[dict]:
    """Time ``--repeats`` rounds (the references, then every conversion run); returns one row
    per reference and per conversion run: median fields/s and median per-round ratios to the
    plain read and to the durable writes alone."""
    runs = [(None, w) for w in args.workers] + [(args.grid, w) for w in args.workers]
    references: list = [[] for _ in REFERENCES]  # fields/s per round
    rates: dict = {run: [] for run in runs}
    fields = read_fields(path, args.format)  # also warms the page cache and the imports
    for _ in range(args.repeats):  # a round: the references, then every run
        for found, seconds in zip(references, _references(args, work, path, fields), strict=True):
            found.append(n_fields / seconds)
        for run in runs:
            seconds, written = convert_once(path, os.path.join(work, "out"), *run)
            if written != n_fields:
                raise RuntimeError(f"converter wrote {written} fields, expected {n_fields}")
            rates[run].append(n_fields / seconds)
    plain, durable = references[0], references[2]

    def ratio(values: list, to: list) -> float:  # the median of the per-round ratios
        return statistics.median([v / r for v, r in zip(values, to, strict=True)])

    def row(measurement: str, values: list, **extra) -> dict:
        return dict(
            measurement=measurement,
            **extra,
            fields_per_s=statistics.median(values),
            ratio_to_plain_read=ratio(values, plain),
            ratio_to_durable_writes=ratio(values, durable),
        )

    rows = [
        row(
            REFERENCES[0][0], plain, input=f"{args.format} {args.h_in}x{args.w_in}", fields=n_fields
        )
    ]
    rows += [
        row(name, values) for (name, _), values in zip(REFERENCES[1:], references[1:], strict=True)
    ]
    for (grid, workers), values in rates.items():
        grid = grid or f"{args.h_in}x{args.w_in} (input)"
        rows.append(row("convert", values, grid=grid, workers=workers))
    return rows


def print_table(args, rows: list[dict], n_fields: int) -> None:
    print(
        f"input: {args.format}, {args.h_in} x {args.w_in}, {n_fields} fields; "
        f"medians of {args.repeats} rounds"
    )
    print(f"{'run':<40} {'fields/s':>9} {'x plain read':>13} {'x durable writes':>17}")
    labels = [label for _, label in REFERENCES] + [
        f"convert -> {row['grid']}, {row['workers']} worker(s)" for row in rows[len(REFERENCES) :]
    ]
    for label, row in zip(labels, rows, strict=True):
        print(
            f"{label:<40} {row['fields_per_s']:>9.1f} {row['ratio_to_plain_read']:>13.2f} "
            f"{row['ratio_to_durable_writes']:>17.2f}"
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
