"""Export the dataset's states and climatology in the WeatherBench 2 layout, to score forecasts
with WeatherBench 2's own evaluation (docs/forecasts.md, "Scoring with WeatherBench 2").

::

    python -m tools.export_wb2 --config vamoe --set root_dir=/data/era5 --out_dir exports/2021

writes ``<out_dir>/truth.zarr`` (the states of ``--start`` .. ``--end``, by default the config's
``test_period``) and ``<out_dir>/climatology.zarr`` (``dayofyear`` x ``hour``), replacing
``--out_dir`` whole at the end (``--overwrite``), so a killed export leaves the previous one.
"""

from __future__ import annotations

import argparse
import os

from utils.errors import cli_errors
from utils.evaluation.forecast_store import check_free_space, format_bytes
from utils.evaluation.staging import write_staged
from utils.evaluation.wb2_export import (
    climatology_store_spec,
    export_layout,
    open_climatology,
    period_calendar,
    truth_store_spec,
    truth_times,
    write_climatology,
    write_truth,
)
from utils.evaluation.wb2_layout import select_channels
from utils.logging_utils import setup_logging
from utils.times import period_bounds
from utils.YParams import YParams, add_override_argument


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--yaml_config", default="config/vamoe.yaml")
    parser.add_argument("--config", default="vamoe", help="config section (channels, data)")
    parser.add_argument("--out_dir", required=True, help="folder for truth.zarr, climatology.zarr")
    parser.add_argument("--start", default=None, help="first date or date-time (test_period)")
    parser.add_argument("--end", default=None, help="last date or date-time (test_period)")
    parser.add_argument(
        "--hour_step",
        type=int,
        default=None,
        help="only states whose hour of day is a multiple of it (default: every stored time)",
    )
    parser.add_argument(
        "--variables",
        nargs="+",
        default=None,
        metavar="NAME",
        help="channels (z500 t2m) or whole variables (z) to export (default: all)",
    )
    parser.add_argument(
        "--climatology_hours",
        nargs="+",
        type=int,
        default=None,
        metavar="H",
        help="hours of day of the climatology (default: the hours it stores)",
    )
    parser.add_argument("--no_climatology", action="store_true", help="export the truth only")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out_dir")
    add_override_argument(parser)
    return parser.parse_args(argv)


def export(args, log) -> dict:
    """Write the export of ``args`` (see the module docstring); ``{label: path}``."""
    params = YParams(args.yaml_config, args.config, args.overrides)
    period = params.test_period
    first, last = period_bounds([args.start or period[0], args.end or period[1]])
    layout = export_layout(params, select_channels(params.layout, args.variables, "--variables"))
    times = truth_times(params, first, last, args.hour_step)
    specs = {"truth": truth_store_spec(params, layout, times)}
    climatology = None if args.no_climatology else open_climatology(params)
    if climatology is not None:
        specs["climatology"] = climatology_store_spec(layout, climatology, args.climatology_hours)
    for name, spec in specs.items():
        what = "states" if name == "truth" else "days of year"
        log.info("%s: %s", name, spec.size_text(what))
    total = sum(spec.nbytes for spec in specs.values())
    check_free_space(total, args.out_dir, f"the export ({format_bytes(total)})")
    leap, note = period_calendar(first, last)
    if note and climatology is not None:
        log.warning("note: %s", note)

    def write(staging: str) -> dict:
        paths = {name: os.path.join(staging, f"{name}.zarr") for name in specs}
        write_truth(params, paths["truth"], specs["truth"])
        if climatology is not None:
            skipped = write_climatology(
                climatology, paths["climatology"], specs["climatology"], leap
            )
            if skipped:
                log.warning(
                    "note: %d days of year are not in the climatology and stay NaN "
                    "(allow_climatology_fallback: true writes the time mean there)",
                    skipped,
                )
        return paths

    written = write_staged(args.out_dir, write, args.overwrite)
    log.info("exported %s", ", ".join(sorted(written.values())))
    return written


def main(argv=None) -> None:
    args = parse_args(argv)
    log = setup_logging()
    with cli_errors():
        export(args, log)


if __name__ == "__main__":
    main()
