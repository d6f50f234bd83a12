"""Normalisation statistics (``mean_std*.json``) and the climatology of a dataset in either
format (:func:`utils.data.statistics.compute_statistics`).

::

    python -m tools.statistics --root_dir DIR --start 1979-01-01 --end 2020-12-31 [--hour_step 6]
    python -m tools.statistics --root_dir DIR --format h5 --h5_channels u10 v10 t2m ... \
        --start 1979-01-01 --end 2015-12-31      # plain FourCastNet year files
"""

from __future__ import annotations

import argparse
import json

from utils.data.dataset_fields import FORMATS, DatasetFields
from utils.data.h5_layout import ALL_SPLIT
from utils.data.statistics import compute_statistics
from utils.errors import cli_errors
from utils.times import period_bounds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root_dir", required=True)
    parser.add_argument(
        "--start",
        required=True,
        help="first date YYYY-MM-DD or date-time YYYY-MM-DDTHH (inclusive)",
    )
    parser.add_argument(
        "--end", required=True, help="last date (whole day) or date-time YYYY-MM-DDTHH (inclusive)"
    )
    parser.add_argument(
        "--hour_step",
        type=int,
        default=None,
        help="use only hours of day that are multiples of it (default: every stored time)",
    )
    parser.add_argument(
        "--variables", nargs="*", default=None, help="upper-air variables (default: all found)"
    )
    parser.add_argument(
        "--levels",
        nargs="*",
        type=int,
        default=None,
        help="pressure levels in hPa (default: all found)",
    )
    parser.add_argument(
        "--surface", nargs="*", default=None, help="surface variables (default: all found)"
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="the dataset's layout (default: npy when <root_dir>/<YYYY>/ exists, else h5)",
    )
    parser.add_argument(
        "--split",
        default=ALL_SPLIT,
        help="h5: the sub-directory searched first for a year (then all/, then any other)",
    )
    parser.add_argument(
        "--h5_channels",
        nargs="+",
        default=None,
        help="h5: channel order of files that store no channel names (plain FourCastNet "
        "files), e.g. u10 v10 t2m sp msl t850 z500",
    )
    parser.add_argument("--no_climatology", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    with cli_errors():
        _run(args)


def _run(args) -> None:
    data = DatasetFields(args.root_dir, args.format, args.split, args.h5_channels)
    upper = None
    if args.variables is not None or args.levels is not None:
        found: dict = {}
        for channel in data.discover(*period_bounds([args.start, args.end])):
            if channel.level is not None:
                found.setdefault(channel.variable, []).append(channel.level)
        variables = args.variables if args.variables is not None else list(found)
        upper = {
            v: (args.levels if args.levels is not None else found.get(v, [])) for v in variables
        }
    result = compute_statistics(
        args.root_dir,
        args.start,
        args.end,
        args.hour_step,
        upper,
        args.surface,
        climatology=not args.no_climatology,
        overwrite=args.overwrite,
        data=data,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
