"""Write a synthetic ERA5 dataset in the project's data layout (:mod:`utils.data.synthetic`).

::

    python -m tools.make_synthetic_era5 --root_dir ./data/synthetic_era5 --start 2020-01-01 --days 31
    python -m tools.make_synthetic_era5 --root_dir DIR --grid poles --h_size 61 --w_size 120 \\
        --hour_step 1 --format h5
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from utils.data.synthetic import (
    DEFAULT_LEVELS,
    SURFACE_VARIABLES,
    UPPER_VARIABLES,
    generate,
)
from utils.errors import cli_errors
from utils.grid import GRID_KINDS


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Write a synthetic ERA5 dataset in the project's data layout (docs/design.md)."
    )
    parser.add_argument("--root_dir", required=True)
    parser.add_argument(
        "--start", default="2020-01-01", help="first date YYYY-MM-DD or date-time YYYY-MM-DDTHH"
    )
    parser.add_argument("--days", type=int, default=31)
    parser.add_argument(
        "--hours", type=int, default=None, help="length in hours instead of --days (part of a day)"
    )
    parser.add_argument(
        "--grid",
        choices=GRID_KINDS,
        default="centres",
        help="latitudes: cell centres (no poles), poles (both included) or a Gaussian grid",
    )
    parser.add_argument("--h_size", type=int, default=32)
    parser.add_argument("--w_size", type=int, default=64)
    parser.add_argument(
        "--levels",
        type=int,
        nargs="+",
        default=list(DEFAULT_LEVELS),
        help="pressure levels in hPa (ERA5 levels)",
    )
    parser.add_argument("--variables", nargs="*", default=list(UPPER_VARIABLES))
    parser.add_argument("--surface", nargs="*", default=list(SURFACE_VARIABLES))
    parser.add_argument("--hour_step", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty root_dir")
    parser.add_argument(
        "--no_statistics",
        action="store_true",
        help="fields and grid only (e.g. a held-out test folder: statistics come from training)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--format",
        choices=["npy", "h5"],
        default="npy",
        help="npy: one file per field; h5: one HDF5 file per year under <root_dir>/all/",
    )
    args = parser.parse_args(argv)
    with cli_errors():
        result = generate(
            args.root_dir,
            args.start,
            args.days,
            args.h_size,
            args.w_size,
            args.levels,
            args.hour_step,
            args.seed,
            args.variables,
            args.surface,
            args.overwrite,
            statistics=not args.no_statistics,
            climatology=not args.no_statistics,
            progress=not args.quiet,
            grid=args.grid,
            hours=args.hours,
            data_format=args.format,
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
