"""Score a VA-MoE checkpoint: autoregressive rollout over the test period.

    python inference.py --yaml_config config/vamoe.yaml --config vamoe \
        --weights exp/vamoe/0/training_checkpoints/best_ckpt.tar --override_dir results/vamoe

From every test initial condition (every ``test_interval`` hours of ``test_period``) the model's
6-hour forecast is fed back as its next input for ``t_out_test`` steps. Latitude-weighted RMSE
(physical units) and ACC (against the climatology of ``climatology_path``) are accumulated per
channel and lead time, for the model and for the persistence and climatology baselines, without
keeping forecasts in memory. Written to ``--override_dir``:

- ``denormalized_lat_weight_rmse.npy``, ``lat_weight_acc.npy``: model scores, channels x leads
  (column 0 is lead 0, the initial state); ``persistence_*`` and ``climatology_*`` likewise;
  ``lead_hours.npy``;
- ``metrics.csv`` (forecaster, variable, level, lead_hours, rmse, acc) and ``metrics.json``;
- ``rmse_acc.png`` (headline variables against lead time) and ``maps.png`` (forecast, truth and
  error of Z500 and T2M at days 1 and 5 of the first initial condition);
- ``forecasts/<init time>.npy`` (``T x C x H x W``, physical units) with ``save_raw_forecasts``.

A table of the headline variables at ``headline_days`` is printed and saved as ``summary.txt``.
"""

import argparse
import logging
import os
import sys

import numpy as np
import torch

from networks.compile import compile_model
from networks.vamoe import VAMoE
from utils.atomic_io import atomic_save_npy, atomic_write_text
from utils.checkpoint import check_channel_names, load_checkpoint
from utils.climatology import Climatology, default_climatology_path
from utils.data_loader_npyfiles import get_data_loader
from utils.era5_layout import from_hours
from utils.grid import latitudes, longitudes
from utils.logging_utils import setup_logging
from utils.plots import nearest_leads, plot_maps, plot_rmse_acc
from utils.results import format_headline_table, save_results
from utils.rollout import evaluate_rollout
from utils.YParams import ConfigError, YParams

MAP_VARIABLES = ("z500", "t2m")
MAP_DAYS = (1, 5)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Evaluate VA-MoE by autoregressive rollout.")
    parser.add_argument("--yaml_config", default="config/vamoe.yaml")
    parser.add_argument("--config", default="vamoe")
    parser.add_argument("--weights", required=True, help="checkpoint (ckpt.tar or best_ckpt.tar)")
    parser.add_argument("--override_dir", required=True, help="folder for the result files")
    parser.add_argument("--enable_amp", action="store_true", help="autocast to amp_dtype")
    parser.add_argument(
        "--max_batches",
        type=int,
        default=None,
        help="score only the first N batches of initial conditions (quick look)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (parsed as YAML)",
    )
    return parser.parse_args(argv)


def load_model(params, weights: str, device) -> VAMoE:
    """The model of ``params`` with the weights of a checkpoint written by one process or DDP."""
    ckpt = load_checkpoint(weights)
    check_channel_names(
        ckpt, weights, params.layout.names, f"config section {params.config_name!r}"
    )
    model = VAMoE.from_params(params)
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"checkpoint {weights!r} does not match config section "
            f"{params.config_name!r}: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]} (is it the right --config?)"
        )
    return model.to(device).eval()


def _init_time_name(time_hours: int) -> str:
    return from_hours(int(time_hours)).strftime("%Y-%m-%dT%H")


def evaluate(
    params, weights: str, out_dir: str, enable_amp: bool = False, max_batches=None, log=None
) -> dict:
    """Run the evaluation and write every result file; returns ``{label: path}``."""
    log = log or logging.getLogger("vamoe")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loader, dataset, _ = get_data_loader(params, False, "test")
    layout = params.layout
    model = load_model(params, weights, device)
    if params.compile:
        model = compile_model(model)
    clim_path = default_climatology_path(params)
    climatology = None
    if os.path.exists(clim_path):
        climatology = Climatology(clim_path, layout)
    else:
        log.warning("no climatology at %s: ACC and the climatology baseline are skipped", clim_path)
    log.info(
        "evaluating %s on %d initial conditions x %d steps of %d h (%s)",
        weights,
        len(dataset),
        params.t_out_test,
        params.lead_time,
        device,
    )

    map_names = [n for n in MAP_VARIABLES if n in layout.names]
    raw_dir = os.path.join(out_dir, "forecasts")

    def write_raw(time_hours, forecast):
        atomic_save_npy(
            os.path.join(raw_dir, _init_time_name(time_hours) + ".npy"),
            forecast.astype(np.float32, copy=False),
        )

    results = evaluate_rollout(
        lambda x: model(x).forecast,
        loader,
        params.t_out_test,
        dataset.mean,
        dataset.std,
        latitudes(params.h_size),
        climatology,
        device,
        amp_dtype=params.amp_dtype if enable_amp else None,
        raw_forecast_writer=write_raw if params.save_raw_forecasts else None,
        lead_time=params.lead_time,
        channels=layout,
        capture_ic=0,
        capture_channels=[layout.index_of_name(n) for n in map_names],
        max_batches=max_batches,
    )
    written = save_results(results, out_dir, params.config_name)
    headline = [n for n in params.headline_variables if n in layout.names]
    written["rmse_acc"] = plot_rmse_acc(results, headline, os.path.join(out_dir, "rmse_acc.png"))
    if results.sample is not None and map_names:
        leads = nearest_leads(results.lead_hours, [24 * d for d in MAP_DAYS])
        sample = results.sample
        written["maps"] = plot_maps(
            sample["forecast"][leads],
            sample["truth"][leads],
            latitudes(params.h_size),
            longitudes(params.w_size),
            map_names,
            [results.lead_hours[k] for k in leads],
            os.path.join(out_dir, "maps.png"),
            title=f"{params.config_name}, initialised {_init_time_name(sample['time_hours'])}",
        )
    table = format_headline_table(results, headline, params.headline_days)
    summary = (
        f"{params.config_name}: {weights}\n{results.n_ics} initial conditions, "
        f"{params.t_out_test} steps of {params.lead_time} h\n\n{table}\n"
    )
    atomic_write_text(os.path.join(out_dir, "summary.txt"), summary)
    written["summary"] = os.path.join(out_dir, "summary.txt")
    print(summary)
    for note in results.notes:
        log.info("note: %s", note)
    log.info(
        "results in %s: %s",
        out_dir,
        ", ".join(sorted(os.path.basename(p) for p in written.values())),
    )
    return written


def main(argv=None):
    args = parse_args(argv)
    log = setup_logging()
    try:
        params = YParams(args.yaml_config, args.config, args.overrides)
        os.makedirs(args.override_dir, exist_ok=True)
        evaluate(params, args.weights, args.override_dir, args.enable_amp, args.max_batches, log)
    except (ConfigError, FileNotFoundError, ValueError, LookupError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
