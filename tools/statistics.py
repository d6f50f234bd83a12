"""Normalisation statistics (``mean_std*.json``) and the climatology of a dataset
(:func:`utils.data.statistics.compute_statistics`).

::

    python -m tools.statistics --root_dir DIR --start 1979-01-01 --end 2020-12-31 [--hour_step 6]
"""

from __future__ import annotations

import argparse
import json

from utils.data.npy_layout import discover_variables
from utils.data.statistics import compute_statistics
from utils.errors import cli_errors


def main(argv=None) -> None:
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
    parser.add_argument("--no_climatology", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    with cli_errors():
        _run(args)


def _run(args) -> None:
    upper = None
    if args.variables is not None or args.levels is not None:
        found, _ = discover_variables(args.root_dir, args.start)
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
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
