"""Score a VA-MoE checkpoint, and forecast files beside it: autoregressive rollout over the test
period, on one process or on every GPU of the node.

    python inference.py --weights exp/vamoe/0/training_checkpoints/best_ckpt.tar \
        --out_dir results/vamoe [--config vamoe] [--set root_dir=/data/era5]
    torchrun --nproc_per_node 8 inference.py --weights ... --out_dir ...   (what test.sh runs)
    python inference.py --config vamoe --compare other=other.zarr --out_dir results/other

Without ``--config`` the configuration recorded in the checkpoint is used (``--set`` still
applies); with it, that section of ``--yaml_config`` is used and a checkpoint trained on other
channels or another grid is refused. ``--override_dir`` is accepted for ``--out_dir`` (the
original code's name).

From every test initial condition (every ``test_interval`` hours of ``test_period``, read from
``test_root_dir`` when set) the model's ``lead_time``-hour forecast is fed back as its next input
for ``t_out_test`` steps. Latitude-weighted RMSE (physical units, row weights from the data's
recorded grid) and ACC (against the climatology of ``climatology_path``) are accumulated per
channel and lead time, for the model, the persistence and climatology baselines and every
``--compare NAME=PATH`` forecast file (WeatherBench 2 layout, read by
:mod:`utils.evaluation.forecast_file`), without keeping forecasts in memory. Without
``--weights`` only the files and the baselines are scored (the configuration then comes from
``--config``).

Under torchrun every rank rolls out its share of the initial conditions (its own starts of the
forecast files too), the sums are added over the ranks, and rank 0 writes the results. Written
to ``--out_dir``:

- ``denormalized_lat_weight_rmse.npy``, ``lat_weight_acc.npy``: model scores, channels x leads
  (column 0 is lead 0, the initial state); ``<forecaster>_lat_weight_*.npy`` likewise for
  ``persistence``, ``climatology`` and each compared file; ``lead_hours.npy``;
- ``metrics.csv`` (forecaster, variable, level, lead_hours, rmse, acc) and ``metrics.json``;
- ``rmse_acc.png`` (headline variables against lead time) and ``maps.png`` (truth, forecasts and
  errors of Z500 and T2M at days 1 and 5 of the first initial condition);
- on the paper's 128 x 256 grid (and with ``paper_reference``), the paper's RMSE curves of
  ``docs/paper_rmse_curves.csv`` in ``rmse_acc.png`` and as a column of the headline table;
- with ``--save_forecasts [PATH]``, the model's forecasts of every scored start (leads 0..T) as a
  WeatherBench 2 store, ``forecasts.zarr`` by default (``--save_variables``,
  ``--save_every_hours`` select; every rank writes its own starts; see
  :mod:`utils.evaluation.forecast_saving`).

A table of the headline variables at ``headline_days`` is printed and saved as ``summary.txt``,
with what the compared files lack (starts, leads, variables: scored on the rest). ``metrics.json``
also records the weights file, its epoch and global step, the compared files, the configuration
and the climatology fallbacks (``allow_climatology_fallback``; without it a missing climatology
day or channel is an error).

Everything is written into a staging directory beside ``--out_dir`` and moved into place at
the end, so a killed evaluation leaves the previous results intact; an existing non-empty
``--out_dir`` is replaced only with ``--overwrite``. Errors: a configuration, data, checkpoint
or output problem is one line (a configuration error said once, by rank 0) and exit code 2.
"""

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from networks.compile import compile_model
from utils import distributed as dist_utils
from utils.atomic_io import atomic_write_text
from utils.data.climatology import Climatology, default_climatology_path
from utils.data.dataset import ERA5Dataset
from utils.data.loader import get_data_loader
from utils.errors import ConfigError
from utils.evaluation.forecast_file import ForecastFile, parse_compare
from utils.evaluation.forecast_saving import ForecastSaveRequest, saved_forecasts, staged_store
from utils.evaluation.paper_reference import paper_reference
from utils.evaluation.plots import nearest_leads, plot_maps, plot_rmse_acc
from utils.evaluation.results import format_headline_table, save_results
from utils.evaluation.rollout import FORECASTERS, RolloutResults, evaluate_rollout
from utils.evaluation.staging import write_staged
from utils.logging_utils import report_entry_point_error, setup_logging
from utils.times import format_hours
from utils.training.checkpoint import (
    load_checkpoint,
    load_model_and_checkpoint,
    params_of_checkpoint,
)
from utils.training.preemption import watch_launcher
from utils.YParams import YParams, add_override_argument

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
    parser.add_argument(
        "--weights",
        default=None,
        help="checkpoint (ckpt.tar or best_ckpt.tar); leave it out to score only --compare "
        "files (then --config is needed)",
    )
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="also score this forecast file (WeatherBench 2 layout, Zarr or .nc) as forecaster "
        "NAME; repeatable",
    )
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
        help="score only the first N batches of initial conditions of each rank (quick look)",
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
        help="write the model's forecasts of the scored starts (leads 0..T) in the WeatherBench 2 "
        "layout: Zarr, or netCDF4 for a .nc PATH (default <out_dir>/forecasts.zarr)",
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
    if args.weights is None:
        raise ConfigError("--save_forecasts saves the model's forecasts: it needs --weights")
    return ForecastSaveRequest(
        args.save_forecasts or None, args.save_variables, args.save_every_hours, args.overwrite
    )


@dataclass
class _Request:
    """What one evaluation scores and how (``weights`` None: the compared files only)."""

    params: YParams
    weights: str | None
    compare: list[tuple[str, str]]
    enable_amp: bool
    max_batches: int | None
    ckpt: dict
    info: dist_utils.DistInfo
    save: ForecastSaveRequest | None = None


def evaluate(
    params,
    weights: str | None,
    out_dir: str,
    enable_amp: bool = False,
    max_batches=None,
    log=None,
    overwrite: bool = False,
    ckpt=None,
    compare=(),
    info: dist_utils.DistInfo | None = None,
    save: ForecastSaveRequest | None = None,
) -> dict:
    """Run the evaluation and write every result file; returns ``{label: path}`` (on rank 0;
    ``{}`` on the other ranks). ``ckpt``: the checkpoint already loaded from ``weights``;
    ``compare``: ``[(name, path)]`` of forecast files; ``info``: this rank (default: one
    process); ``save``: the model's forecasts to write as a store.

    The files are written into a staging directory and moved to ``out_dir`` at the end; a
    non-empty ``out_dir`` is an error unless ``overwrite``.
    """
    info = info or dist_utils.single_process()
    request = _Request(params, weights, list(compare), enable_amp, max_batches, ckpt, info, save)
    log = log or logging.getLogger("vamoe")
    return write_staged(
        out_dir, lambda staging: _evaluate_into(request, staging, out_dir, log), overwrite, info
    )


@dataclass
class _TestSetup:
    """The model (None: files only), the test data, the climatology and the compared files of
    one evaluation."""

    model: torch.nn.Module | None
    loader: Iterable  # batches (inp, tar, time_hours), see utils.evaluation.rollout
    dataset: ERA5Dataset
    climatology: Climatology | None
    device: torch.device
    compared: list[ForecastFile] = field(default_factory=list)


def _evaluate_into(request: _Request, out_dir: str, final_dir: str, log) -> dict:
    """The evaluation on this rank, writing into ``out_dir`` (the staging directory of
    ``final_dir``); rank 0 writes the results."""
    params, info = request.params, request.info
    setup = _set_up(request, log)
    log.info(
        "evaluating %s on %d initial conditions x %d steps of %d h (%s%s)",
        request.weights or "forecast files only",
        len(setup.dataset),
        params.t_out_test,
        params.lead_time,
        setup.device,
        f", {info.world_size} ranks" if info.distributed else "",
    )
    weights = request.weights and os.path.abspath(request.weights)
    attrs = {"title": f"VA-MoE forecasts ({params.config_name})", "weights": weights}
    store = dict(staging_dir=out_dir, final_dir=final_dir, attrs=attrs, log=log)
    try:
        loader, n = setup.loader, request.max_batches
        with saved_forecasts(request.save, params, setup.dataset, loader, n, **store) as saved:
            results = _rollout(request, setup, saved)
    finally:
        for forecaster in setup.compared:
            forecaster.close()
    local = sorted(setup.climatology.fallbacks) if setup.climatology is not None else []
    fallbacks = sorted(set().union(*dist_utils.gather_objects(local)))
    if not info.is_main:
        return {}
    return _write_results(request, setup, results, fallbacks, out_dir, final_dir, log)


def _write_results(request, setup, results, fallbacks, out_dir, final_dir, log) -> dict:
    """The result files, the plots and ``summary.txt`` in ``out_dir``; ``{label: path}``."""
    params = request.params
    provenance = _provenance(request, fallbacks)
    written = save_results(results, out_dir, params.config_name, provenance)
    headline = [n for n in params.headline_variables if n in params.layout.names]
    reference = (
        paper_reference(params.layout.names, params.h_size, params.w_size)
        if params.paper_reference
        else None
    )
    written.update(_plot(params, results, setup.dataset, headline, reference, out_dir))
    written.update(staged_store(request.save, out_dir, final_dir))
    summary = _summary(request, setup, results, headline, reference, fallbacks)
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


def _set_up(request: _Request, log) -> _TestSetup:
    """This rank's test loader, the model with the checkpoint's weights (compiled when
    ``params.compile``; None without weights), the climatology and the compared files."""
    params, device = request.params, request.info.device
    loader, dataset, _ = get_data_loader(params, request.info.distributed, "test")
    model = None
    if request.weights is not None:
        model, request.ckpt = load_model_and_checkpoint(
            params, request.weights, device, request.ckpt
        )
        if params.compile:
            model = compile_model(model)
    lead_hours = np.arange(params.t_out_test + 1) * params.lead_time
    compared = [
        ForecastFile(name, path, params.layout, dataset.lat, dataset.lon, dataset.times, lead_hours)
        for name, path in request.compare
    ]
    climatology = _climatology(params, log)
    return _TestSetup(model, loader, dataset, climatology, device, compared)


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


def _rollout(request: _Request, setup: _TestSetup, saved) -> RolloutResults:
    """The scored rollout of this rank's initial conditions, summed over the ranks. Rank 0
    captures the first initial condition's channels of :func:`_map_names` for the maps; ``saved``
    (a :class:`utils.evaluation.forecast_saving.SavedForecasts` or None) gets every forecast of
    this rank."""
    params, info = request.params, request.info
    layout, dataset = params.layout, setup.dataset
    model = setup.model
    return evaluate_rollout(
        None if model is None else (lambda x: model(x).forecast),
        setup.loader,
        params.t_out_test,
        dataset.mean,
        dataset.std,
        dataset.lat,
        setup.climatology,
        setup.device,
        forecasters=FORECASTERS if model is not None else ("persistence", "climatology"),
        progress=info.is_main,
        amp_dtype=params.amp_dtype if request.enable_amp else None,
        raw_forecast_writer=saved,
        lead_time=params.lead_time,
        channels=layout,
        capture_ic=0 if info.is_main else None,
        capture_channels=[layout.index_of_name(n) for n in _map_names(layout)],
        max_batches=request.max_batches,
        compared=setup.compared,
    )


def _provenance(request: _Request, fallbacks: list[str]) -> dict:
    """What ``metrics.json`` records of the weights, the compared files, the configuration and
    the climatology."""
    weights, ckpt = request.weights, request.ckpt or {}
    return {
        "weights": None if weights is None else os.path.abspath(weights),
        "weights_epoch": ckpt.get("epoch"),
        "weights_global_step": ckpt.get("global_step"),
        "compared": {name: os.path.abspath(path) for name, path in request.compare},
        "climatology_fallbacks": fallbacks,
        "config_values": json.loads(json.dumps(request.params.to_dict())),
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
            {name: forecast[leads] for name, forecast in sample["forecasts"].items()},
            sample["truth"][leads],
            dataset.lat,
            dataset.lon,
            map_names,
            [results.lead_hours[k] for k in leads],
            os.path.join(out_dir, "maps.png"),
            title=f"{params.config_name}, initialised {format_hours(sample['time_hours'])}",
        )
    return written


def _summary(request, setup, results, headline, reference, fallbacks) -> str:
    """The text of ``summary.txt``: the run, the headline table, what the compared files lack
    and the climatology fallbacks."""
    params, ckpt = request.params, request.ckpt or {}
    table = format_headline_table(results, headline, params.headline_days, reference)
    if request.weights is None:
        source = "forecast files only"
    else:
        epoch = f" (epoch {ckpt['epoch']})" if ckpt.get("epoch") is not None else ""
        source = f"{request.weights}{epoch}"
    compared = "".join(f"compared: {name} = {path}\n" for name, path in request.compare)
    summary = (
        f"{params.config_name}: {source}\n{compared}{results.n_ics} initial conditions, "
        f"{params.t_out_test} steps of {params.lead_time} h\n\n{table}\n"
    )
    lacking = [note for forecaster in setup.compared for note in forecaster.notes]
    if lacking:
        summary += "\ncompared files, scored on what they share with the evaluation:\n"
        summary += "".join(f"  {line}\n" for line in lacking)
    if fallbacks:
        summary += "\nclimatology fallbacks (allow_climatology_fallback):\n"
        summary += "".join(f"  {line}\n" for line in fallbacks)
    return summary


def _configuration(args) -> tuple[YParams, dict | None]:
    """The configuration of the evaluation and the checkpoint (None without ``--weights``)."""
    if args.weights is None:
        if not args.compare:
            raise ConfigError("nothing to score: give --weights CKPT, --compare NAME=PATH, or both")
        if args.config is None:
            raise ConfigError(
                "without --weights (scoring --compare files only) --config SECTION must name "
                "the configuration"
            )
        return YParams(args.yaml_config, args.config, args.overrides), None
    ckpt = load_checkpoint(args.weights)
    params = params_of_checkpoint(ckpt, args.weights, args.yaml_config, args.config, args.overrides)
    return params, ckpt


def main(argv=None):
    """Evaluate (one process, or one rank of torchrun); exit 2 with one line on a
    configuration, data, checkpoint or output error, 1 with a traceback on anything else."""
    args = parse_args(argv)
    info = dist_utils.init_distributed()
    log = setup_logging(None, info.rank, info.world_size)
    code = 0
    try:
        compare = parse_compare(args.compare)
        save = save_request(args)
        params, ckpt = _configuration(args)
        watch_launcher()
        evaluate(
            params,
            args.weights,
            args.out_dir,
            args.enable_amp,
            args.max_batches,
            log,
            args.overwrite,
            ckpt,
            compare,
            info,
            save,
        )
    except Exception as err:  # a ConfigError is said once; see report_entry_point_error
        code = report_entry_point_error(err, info.rank, info.world_size)
    if code == 0:
        dist_utils.cleanup()  # after an error a peer may be gone: leave the teardown to exit
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
