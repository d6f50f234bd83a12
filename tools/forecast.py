"""A forecast from chosen starts, written in the WeatherBench 2 layout with maps.

::

    python -m tools.forecast --weights exp/vamoe/0/training_checkpoints/best_ckpt.tar \\
        --set root_dir=/data/era5 --init 2021-06-01T00 --lead_hours 120 --output fc.nc

The initial states come from the dataset (``root_dir``, either format) or, with ``--input``, from
netCDF / Zarr files read as ``tools.prepare_era5`` reads them (e.g. the one time of a Copernicus
download) and regridded conservatively onto the model's grid. They are normalised with the
training statistics of ``root_dir`` and rolled out ``--lead_hours`` hours; the output (``.nc``:
netCDF4, else Zarr) holds leads 0 (the initial state) to ``--lead_hours``, and ``--maps``
(default ``maps.png`` beside it) shows ``--map_variables`` at ``--map_leads``.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from utils.conversion.initial_state import read_initial_states
from utils.conversion.normalise_input import add_input_reading_arguments, input_options
from utils.data.statistics import load_mean_std
from utils.errors import ConfigError, OutputExistsError, cli_errors
from utils.evaluation.forecast_store import (
    StoreWriter,
    check_free_space,
    create_store,
    forecast_spec,
)
from utils.evaluation.forecasting import dataset_states, run_forecasts
from utils.evaluation.plots import plot_forecast_maps
from utils.evaluation.staging import staged_path
from utils.evaluation.stepper import Stepper, resolve_amp_dtype
from utils.evaluation.wb2_layout import WB2Layout, select_channels
from utils.grid import dataset_grid
from utils.logging_utils import setup_logging
from utils.times import format_hours, to_hours
from utils.training.checkpoint import (
    load_checkpoint,
    load_model_and_checkpoint,
    params_of_checkpoint,
)
from utils.YParams import add_override_argument

MAP_VARIABLES = ("z500", "t2m")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", required=True, help="checkpoint (best_ckpt.tar)")
    parser.add_argument("--yaml_config", default="config/vamoe.yaml")
    parser.add_argument("--config", default=None, help="config section (default: the checkpoint's)")
    parser.add_argument(
        "--init",
        nargs="+",
        default=None,
        metavar="TIME",
        help="starts, e.g. 2021-06-01T00 (default with --input: its one time)",
    )
    parser.add_argument(
        "--input",
        nargs="+",
        default=None,
        metavar="PATH",
        help="netCDF / Zarr files, folders, globs or URLs holding the initial states "
        "(default: the dataset)",
    )
    add_input_reading_arguments(parser)
    parser.add_argument(
        "--lead_hours",
        type=int,
        default=None,
        help="forecast length in hours (default: the evaluation's)",
    )
    parser.add_argument("--output", required=True, help="the forecast: .nc (netCDF4) or Zarr")
    parser.add_argument(
        "--variables",
        nargs="+",
        default=None,
        metavar="NAME",
        help="channels (z500 t2m) or whole variables (z) to write (default: all)",
    )
    parser.add_argument(
        "--maps", default=None, metavar="PNG", help="maps file (default: maps.png beside --output)"
    )
    parser.add_argument(
        "--map_variables",
        nargs="+",
        default=None,
        metavar="NAME",
        help="channels on the maps (default: z500 t2m)",
    )
    parser.add_argument(
        "--map_leads",
        nargs="+",
        type=float,
        default=None,
        metavar="HOURS",
        help="leads on the maps, in hours, 0 the initial state (default: 24 and the last)",
    )
    parser.add_argument(
        "--amp",
        choices=("bf16", "fp16"),
        default=None,
        help="autocast the model (bf16 on CPU or GPU, fp16 on GPU)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --output and --maps")
    add_override_argument(parser)
    return parser.parse_args(argv)


def _n_steps(lead_hours: int | None, params) -> int:
    """Steps of ``lead_time`` hours in ``--lead_hours`` (default: ``t_out_test`` steps)."""
    if lead_hours is None:
        return int(params.t_out_test)
    step = int(params.lead_time)
    if lead_hours < step or lead_hours % step:
        raise ConfigError(f"--lead_hours {lead_hours} must be a positive multiple of {step} h")
    return lead_hours // step


def _amp_dtype(amp: str | None, device: torch.device):
    try:
        return resolve_amp_dtype(amp, device)
    except ValueError as err:
        raise ConfigError(f"--amp {amp}: {err}") from None


def _initial_states(args, params, lat, lon) -> tuple[np.ndarray, list[int]]:
    """``(states (N, C, H, W) physical, times)`` of ``--input`` or of the dataset."""
    times = None if args.init is None else sorted({to_hours(t) for t in args.init})
    if args.input:
        return read_initial_states(args.input, params.layout, times, lat, lon, input_options(args))
    if times is None:
        raise ConfigError("give the start(s) with --init (or an analysis file with --input)")
    return dataset_states(params, times), times


def _map_choice(args, params, lead_hours: np.ndarray) -> tuple[list[str], list[int]]:
    """The channel names and lead indices of the maps."""
    names = args.map_variables or [n for n in MAP_VARIABLES if n in params.layout.names]
    names = names or params.layout.names[:1]
    select_channels(params.layout, names, "--map_variables")
    wanted = args.map_leads or [h for h in (24, lead_hours[-1]) if h in lead_hours]
    absent = [h for h in wanted if h not in lead_hours]
    if absent:
        raise ConfigError(
            f"--map_leads {absent}: not leads of this forecast (0 to {lead_hours[-1]} h every "
            f"{lead_hours[1]} h)"
        )
    return names, sorted({int(np.flatnonzero(lead_hours == h)[0]) for h in wanted})


def forecast(args, log) -> dict:
    """Run the forecast of ``args`` (see the module docstring); ``{label: path}``."""
    ckpt = load_checkpoint(args.weights)
    params = params_of_checkpoint(ckpt, args.weights, args.yaml_config, args.config, args.overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n_steps, amp = _n_steps(args.lead_hours, params), _amp_dtype(args.amp, device)
    root = str(params["root_dir"])
    lat, lon = dataset_grid(root, int(params.h_size), int(params.w_size))
    channels = select_channels(params.layout, args.variables, "--variables")
    layout = WB2Layout(params.layout, channels, lat, lon, params.get("variable_units"))
    lead_hours = np.arange(n_steps + 1) * int(params.lead_time)
    names, map_leads = _map_choice(args, params, lead_hours)
    maps = args.maps or os.path.join(os.path.dirname(os.path.abspath(args.output)), "maps.png")
    if os.path.exists(maps) and not args.overwrite:
        raise OutputExistsError(f"{maps} exists; pass --overwrite to replace it")
    mean, std = load_mean_std(root, params.layout)
    states, times = _initial_states(args, params, lat, lon)
    attrs = {"title": f"VA-MoE forecast ({params.config_name})", "weights": args.weights}
    spec = forecast_spec(layout, times, lead_hours, attrs)
    log.info("forecast: %s to %s", spec.size_text("starts"), args.output)
    check_free_space(spec.nbytes, args.output, args.output)
    model, _ = load_model_and_checkpoint(params, args.weights, device, ckpt)
    stepper = Stepper(lambda x: model(x).forecast, mean, std, device, amp)
    keep = ([params.layout.index_of_name(n) for n in names], map_leads)
    with staged_path(args.output, args.overwrite) as path:
        create_store(path, spec)
        with StoreWriter(path, spec) as writer:
            kept = run_forecasts(stepper, (mean, std), states, times, n_steps, writer, keep)
    title = f"{params.config_name}, initialised {format_hours(times[0])}"
    plot_forecast_maps(kept, lat, lon, names, lead_hours[map_leads], maps, title=title)
    log.info("wrote %s and %s", args.output, maps)
    return {"forecast": os.path.abspath(args.output), "maps": maps}


def main(argv=None) -> None:
    args = parse_args(argv)
    log = setup_logging()
    with cli_errors():
        forecast(args, log)


if __name__ == "__main__":
    main()
