"""Convert ERA5 (netCDF files or Zarr stores, local or in the cloud) into the project's ``.npy``
layout or its HDF5 year files, optionally regridded, then compute the statistics and the
climatology (:func:`utils.conversion.convert.convert`).

::

    python -m tools.prepare_era5 --input INPUT [INPUT ...] --root_dir ./data/era5 \\
        [--format npy|h5] [--variables z q u v t t2m u10 v10 msl sp] [--levels 1000 925 850 ...] \\
        [--start 1979-01-01 --end 2021-12-31] [--hour_step 6] [--grid 128x256] \\
        [--member N] [--level P] [--time_coord NAME] [--time_units UNITS] [--workers N] \\
        [--part I/N | --finalize] [--download DIR] \\
        [--stats_start ... --stats_end ...] [--no_stats] [--no_climatology] [--overwrite] [--debug]

Errors about the inputs or the request (``ConversionError``, and the project's other errors)
print one line and exit with status 2 (``--debug``: the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Sequence

from utils.conversion.convert import convert
from utils.conversion.normalise_input import add_input_reading_arguments
from utils.conversion.request import project_variables
from utils.conversion.variable_names import ConversionError
from utils.errors import cli_errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--input",
        nargs="+",
        default=[],
        help="netCDF files, glob patterns, directories, Zarr stores or gs:// / s3:// Zarr URLs",
    )
    parser.add_argument("--root_dir", required=True, help="output root of the layout")
    parser.add_argument(
        "--format",
        choices=("npy", "h5"),
        default="npy",
        help="npy: one file per field (default); h5: one HDF5 file per year (<root_dir>/all/)",
    )
    _add_selection(parser)
    add_input_reading_arguments(parser)
    parser.add_argument("--workers", type=int, default=1, help="writer processes (default 1)")
    parser.add_argument(
        "--part",
        metavar="I/N",
        default=None,
        help="convert only part I of N (contiguous whole days; whole years with --format h5); "
        "the N parts may run at once into the same --root_dir, then run --finalize",
    )
    parser.add_argument(
        "--finalize",
        action="store_true",
        help="after the parts: report any part not finished, else merge their statistics and "
        "compute the climatology",
    )
    parser.add_argument(
        "--download",
        metavar="DIR",
        default=None,
        help="first download --variables/--levels/--start/--end from the Copernicus store "
        "into DIR with cdsapi (needs CDS credentials), then convert them",
    )
    parser.add_argument("--h_size", type=int, default=None, help="expected latitudes (check)")
    parser.add_argument("--w_size", type=int, default=None, help="expected longitudes (check)")
    parser.add_argument("--no_stats", action="store_true", help="skip statistics and climatology")
    parser.add_argument("--stats_start", default=None, help="first date of the statistics")
    parser.add_argument("--stats_end", default=None, help="last date of the statistics")
    parser.add_argument("--no_climatology", action="store_true")
    parser.add_argument(
        "--overwrite", action="store_true", help="rewrite files that exist (default: skip them)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="full tracebacks on errors")
    return parser


def _add_selection(parser: argparse.ArgumentParser) -> None:
    """What to convert: variables, levels, period, hours, grid."""
    parser.add_argument(
        "--variables",
        nargs="+",
        default=None,
        help="variables to convert, e.g. z q u v t t2m u10 v10 msl sp (default: all recognised)",
    )
    parser.add_argument(
        "--levels", type=int, nargs="+", default=None, help="pressure levels in hPa (default: all)"
    )
    parser.add_argument("--start", default=None, help="first date to convert, YYYY-MM-DD")
    parser.add_argument("--end", default=None, help="last date to convert, YYYY-MM-DD")
    parser.add_argument(
        "--hour_step",
        type=int,
        default=6,
        help="keep hours of day divisible by this (default 6: 00/06/12/18)",
    )
    parser.add_argument(
        "--grid",
        default=None,
        help="regrid conservatively to HxW cell centres (128x256) or a spacing in degrees "
        "(1.40625); default: the inputs' grid",
    )


def run(args: argparse.Namespace) -> dict:
    """The command line's work: optional download, then :func:`convert`."""
    inputs = list(args.input)
    if args.download is not None:
        from utils.conversion.download import cds_requests, download

        if not args.variables or args.start is None or args.end is None:
            raise ConversionError("--download needs --variables, --start and --end")
        requests = cds_requests(
            project_variables(args.variables),
            args.levels,
            args.start,
            args.end,
            args.hour_step,
            args.download,
        )
        inputs += download(requests)
    if not inputs:
        raise ConversionError("no --input given (and no --download)")
    return convert(
        inputs,
        args.root_dir,
        args.levels,
        args.variables,
        args.start,
        args.end,
        args.hour_step,
        stats=not args.no_stats,
        stats_start=args.stats_start,
        stats_end=args.stats_end,
        climatology=not args.no_climatology,
        overwrite=args.overwrite,
        h_size=args.h_size,
        w_size=args.w_size,
        grid=args.grid,
        workers=args.workers,
        progress=not args.quiet,
        data_format=args.format,
        part=args.part,
        finalize=args.finalize,
        level=args.level,
        member=args.member,
        time_coord=args.time_coord,
        time_units=args.time_units,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """The command line; the project's errors print one line and exit 2 unless ``--debug``."""
    args = build_parser().parse_args(argv)
    with contextlib.nullcontext() if args.debug else cli_errors():
        result = run(args)
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
