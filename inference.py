"""Score a VA-MoE checkpoint: autoregressive rollout over the test period.

    python inference.py --weights exp/vamoe/0/training_checkpoints/best_ckpt.tar \
        --out_dir results/vamoe [--config vamoe] [--set root_dir=/data/era5]

Without ``--config`` the configuration recorded in the checkpoint is used (``--set`` still
applies); with it, that section of ``--yaml_config`` is used and a checkpoint trained on other
channels or another grid is refused. ``--override_dir`` is accepted for ``--out_dir`` (the
original code's name).

From every test initial condition (every ``test_interval`` hours of ``test_period``, read from
``test_root_dir`` when set) the model's ``lead_time``-hour forecast is fed back as its next input
for ``t_out_test`` steps. Latitude-weighted RMSE (physical units, row weights from the data's
recorded grid) and ACC (against the climatology of ``climatology_path``) are accumulated per
channel and lead time, for the model and for the persistence and climatology baselines, without
keeping forecasts in memory. Written to ``--out_dir``:

- ``denormalized_lat_weight_rmse.npy``, ``lat_weight_acc.npy``: model scores, channels x leads
  (column 0 is lead 0, the initial state); ``persistence_*`` and ``climatology_*`` likewise;
  ``lead_hours.npy``;
- ``metrics.csv`` (forecaster, variable, level, lead_hours, rmse, acc) and ``metrics.json``;
- ``rmse_acc.png`` (headline variables against lead time) and ``maps.png`` (forecast, truth and
  error of Z500 and T2M at days 1 and 5 of the first initial condition);
- on the paper's 128 x 256 grid (and with ``paper_reference``), the paper's RMSE curves of
  ``docs/paper_rmse_curves.csv`` in ``rmse_acc.png`` and as a column of the headline table;
- with ``--save_forecasts [PATH]``, the model's forecasts of every scored start (leads 0..T) as a
  WeatherBench 2 store, ``forecasts.zarr`` by default (``--save_variables``,
  ``--save_every_hours`` select; see :mod:`utils.evaluation.forecast_saving`).

A table of the headline variables at ``headline_days`` is printed and saved as ``summary.txt``.
``metrics.json`` also records the weights file, its epoch and global step, the configuration and
the climatology fallbacks (``allow_climatology_fallback``; without it a missing climatology day or
channel is an error).

Everything is written into a staging directory beside ``--out_dir`` and moved into place at
the end, so a killed evaluation leaves the previous results intact; an existing non-empty
``--out_dir`` is replaced only with ``--overwrite``.
"""

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from networks.compile import compile_model
from utils.atomic_io import atomic_write_text
from utils.data.climatology import Climatology, default_climatology_path
from utils.data.dataset import ERA5Dataset
from utils.data.loader import get_data_loader
from utils.errors import EXIT_USER_ERROR, ConfigError, VAMoEError
from utils.evaluation.forecast_saving import ForecastSaveRequest, saved_forecasts
from utils.evaluation.paper_reference import paper_reference
from utils.evaluation.plots import nearest_leads, plot_maps, plot_rmse_acc
from utils.evaluation.results import format_headline_table, save_results
from utils.evaluation.rollout import RolloutResults, evaluate_rollout
from utils.evaluation.staging import write_staged
from utils.logging_utils import report_error, setup_logging
from utils.times import from_hours
from utils.training.checkpoint import (
    load_checkpoint,
    load_model_and_checkpoint,
    params_of_checkpoint,
)
from utils.YParams import add_override_argument

MAP_VARIABLES = ("z500", "t2m")
MAP_DAYS = (1, 5)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Evaluate VA-MoE by autoregressive rollout.")
    parser.add_argument("--yaml_config", default="config/vamoe.yaml")
    parser.add_argument(
        "--config",
        default=None,
        help="config section (default: the configuration recorded in the checkpoint)",
    )
    parser.add_argument("--weights", required=True, help="checkpoint (ckpt.tar or best_ckpt.tar)")
    parser.add_argument(
        "--out_dir",
        "--override_dir",
        dest="out_dir",
        required=True,
        help="folder for the result files (--override_dir: the original code's name)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the results in a non-empty --out_dir"
    )
    parser.add_argument("--enable_amp", action="store_true", help="autocast to amp_dtype")
    parser.add_argument(
        "--max_batches",
        type=int,
        default=None,
        help="score only the first N batches of initial conditions (quick look)",
    )
    _add_save_arguments(parser)
    add_override_argument(parser)
    return parser.parse_args(argv)


def _add_save_arguments(parser) -> None:
    """``--save_forecasts [PATH]``, ``--save_variables``, ``--save_every_hours``."""
    parser.add_argument(
        "--save_forecasts",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="write the forecasts of the scored starts (leads 0..T) in the WeatherBench 2 layout: "
        "Zarr, or netCDF4 for a .nc PATH (default <out_dir>/forecasts.zarr)",
    )
    parser.add_argument(
        "--save_variables",
        nargs="+",
        default=None,
        metavar="NAME",
        help="with --save_forecasts: only these channels (z500 t850 t2m) or whole variables (z)",
    )
    parser.add_argument(
        "--save_every_hours",
        type=int,
        default=None,
        metavar="N",
        help="with --save_forecasts: only starts whose hour of day is a multiple of N (12: 00 and "
        "12 UTC)",
    )


def save_request(args) -> ForecastSaveRequest | None:
    """The ``--save_*`` options as a request (None without ``--save_forecasts``)."""
    if args.save_forecasts is None:
        if args.save_variables or args.save_every_hours:
            raise ConfigError("--save_variables and --save_every_hours need --save_forecasts")
        return None
    return ForecastSaveRequest(
        args.save_forecasts or None, args.save_variables, args.save_every_hours, args.overwrite
    )


def _init_time_name(time_hours: int) -> str:
    return from_hours(int(time_hours)).strftime("%Y-%m-%dT%H")


def evaluate(
    params,
    weights: str,
    out_dir: str,
    enable_amp: bool = False,
    max_batches=None,
    log=None,
    overwrite: bool = False,
    ckpt=None,
    save: ForecastSaveRequest | None = None,
) -> dict:
    """Run the evaluation and write every result file; returns ``{label: path}`` (``ckpt``: the
    checkpoint already loaded from ``weights``; ``save``: the forecasts to write as a store).

    The files are written into a staging directory and moved to ``out_dir`` at the end; a
    non-empty ``out_dir`` is an error unless ``overwrite``.
    """
    return write_staged(
        out_dir,
        lambda staging: _evaluate_into(
            params, weights, staging, out_dir, enable_amp, max_batches, log, ckpt, save
        ),
        overwrite,
    )


@dataclass
class _TestSetup:
    """The model, the test data and the climatology of one evaluation."""

    model: torch.nn.Module
    loader: Iterable  # batches (inp, tar, time_hours), see utils.evaluation.rollout
    dataset: ERA5Dataset
    climatology: Climatology | None
    device: torch.device


def _evaluate_into(
    params, weights, out_dir, final_dir, enable_amp, max_batches, log, ckpt=None, save=None
) -> dict:
    """The evaluation, writing into ``out_dir`` (the staging directory of ``final_dir``)."""
    log = log or logging.getLogger("vamoe")
    setup, ckpt = _set_up(params, weights, ckpt, log)
    log.info(
        "evaluating %s on %d initial conditions x %d steps of %d h (%s)",
        weights,
        len(setup.dataset),
        params.t_out_test,
        params.lead_time,
        setup.device,
    )
    attrs = {
        "title": f"VA-MoE forecasts ({params.config_name})",
        "weights": os.path.abspath(weights),
    }
    store = dict(staging_dir=out_dir, final_dir=final_dir, attrs=attrs, log=log)
    with saved_forecasts(save, params, setup.dataset, setup.loader, max_batches, **store) as saved:
        results = _rollout(params, setup, enable_amp, max_batches, saved)
    fallbacks = sorted(setup.climatology.fallbacks) if setup.climatology is not None else []
    provenance = _provenance(params, weights, ckpt, fallbacks)
    written = save_results(results, out_dir, params.config_name, provenance)
    headline = [n for n in params.headline_variables if n in params.layout.names]
    reference = (
        paper_reference(params.layout.names, params.h_size, params.w_size)
        if params.paper_reference
        else None
    )
    written.update(_plot(params, results, setup.dataset, headline, reference, out_dir))
    if saved is not None and saved.path.startswith(os.path.abspath(final_dir) + os.sep):
        written["forecasts"] = os.path.join(out_dir, os.path.relpath(saved.path, final_dir))
    summary = _summary(params, weights, ckpt, results, headline, reference, fallbacks)
    atomic_write_text(os.path.join(out_dir, "summary.txt"), summary)
    written["summary"] = os.path.join(out_dir, "summary.txt")
    print(summary)
    for note in results.notes:
        log.info("note: %s", note)
    log.info(
        "results in %s: %s",
        final_dir,
        ", ".join(sorted(os.path.basename(p) for p in written.values())),
    )
    return written


def _set_up(params, weights: str, ckpt, log) -> tuple[_TestSetup, dict]:
    """The test loader, the model with the checkpoint's weights (compiled when
    ``params.compile``) and the climatology; and the checkpoint's other entries."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loader, dataset, _ = get_data_loader(params, False, "test")
    model, ckpt = load_model_and_checkpoint(params, weights, device, ckpt)
    if params.compile:
        model = compile_model(model)
    return _TestSetup(model, loader, dataset, _climatology(params, log), device), ckpt


def _climatology(params, log) -> Climatology | None:
    """The climatology of ``params``, or None (with a warning) when its file is missing."""
    clim_path = default_climatology_path(params)
    if os.path.exists(clim_path):
        return Climatology(
            clim_path, params.layout, allow_fallback=bool(params.get("allow_climatology_fallback"))
        )
    log.warning("no climatology at %s: ACC and the climatology baseline are skipped", clim_path)
    return None


def _map_names(layout) -> list[str]:
    """The variables of :data:`MAP_VARIABLES` that ``layout`` has."""
    return [n for n in MAP_VARIABLES if n in layout.names]


def _rollout(params, setup: _TestSetup, enable_amp, max_batches, saved) -> RolloutResults:
    """The scored rollout over the test period. The first initial condition's channels of
    :func:`_map_names` are captured for the maps; ``saved`` (a
    :class:`utils.evaluation.forecast_saving.SavedForecasts` or None) gets every forecast."""
    layout, dataset = params.layout, setup.dataset
    return evaluate_rollout(
        lambda x: setup.model(x).forecast,
        setup.loader,
        params.t_out_test,
        dataset.mean,
        dataset.std,
        dataset.lat,
        setup.climatology,
        setup.device,
        amp_dtype=params.amp_dtype if enable_amp else None,
        raw_forecast_writer=saved,
        lead_time=params.lead_time,
        channels=layout,
        capture_ic=0,
        capture_channels=[layout.index_of_name(n) for n in _map_names(layout)],
        max_batches=max_batches,
    )


def _provenance(params, weights: str, ckpt: dict, fallbacks: list[str]) -> dict:
    """What ``metrics.json`` records of the weights, the configuration and the climatology."""
    return {
        "weights": os.path.abspath(weights),
        "weights_epoch": ckpt.get("epoch"),
        "weights_global_step": ckpt.get("global_step"),
        "climatology_fallbacks": fallbacks,
        "config_values": json.loads(json.dumps(params.to_dict())),
    }


def _plot(params, results, dataset, headline, reference, out_dir) -> dict:
    """``rmse_acc.png`` and, when a sample was captured, ``maps.png``; ``{label: path}``."""
    map_names = _map_names(params.layout)
    written = {
        "rmse_acc": plot_rmse_acc(
            results, headline, os.path.join(out_dir, "rmse_acc.png"), reference=reference
        )
    }
    if results.sample is not None and map_names:
        leads = nearest_leads(results.lead_hours, [24 * d for d in MAP_DAYS])
        sample = results.sample
        written["maps"] = plot_maps(
            sample["forecast"][leads],
            sample["truth"][leads],
            dataset.lat,
            dataset.lon,
            map_names,
            [results.lead_hours[k] for k in leads],
            os.path.join(out_dir, "maps.png"),
            title=f"{params.config_name}, initialised {_init_time_name(sample['time_hours'])}",
        )
    return written


def _summary(params, weights, ckpt, results, headline, reference, fallbacks) -> str:
    """The text of ``summary.txt``: the run, the headline table and the climatology fallbacks."""
    table = format_headline_table(results, headline, params.headline_days, reference)
    epoch = f" (epoch {ckpt['epoch']})" if ckpt.get("epoch") is not None else ""
    summary = (
        f"{params.config_name}: {weights}{epoch}\n{results.n_ics} initial conditions, "
        f"{params.t_out_test} steps of {params.lead_time} h\n\n{table}\n"
    )
    if fallbacks:
        summary += "\nclimatology fallbacks (allow_climatology_fallback):\n"
        summary += "".join(f"  {line}\n" for line in fallbacks)
    return summary


def main(argv=None):
    """Evaluate; exit 2 with one line on a configuration, data, checkpoint or output error."""
    args = parse_args(argv)
    log = setup_logging()
    try:
        save = save_request(args)
        ckpt = load_checkpoint(args.weights)
        params = params_of_checkpoint(
            ckpt, args.weights, args.yaml_config, args.config, args.overrides
        )
        evaluate(
            params,
            args.weights,
            args.out_dir,
            args.enable_amp,
            args.max_batches,
            log,
            args.overwrite,
            ckpt,
            save,
        )
    except VAMoEError as err:
        report_error(err)
        sys.exit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()
