"""The model a training starts from: built, given its starting weights, frozen, and wrapped.

The starting weights are, in this order of precedence, those of the checkpoint the run resumes
from, those of the initial stage (``cl_ckpt_path``, mapped onto the new variables by
:func:`utils.training.incremental.load_initial_stage`), or the fresh initialisation. The
``freeze`` patterns are applied after loading; for a new incremental stage the load report and
the frozen tensors are logged.
"""

import logging
from typing import Any

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from networks.compile import compile_model
from networks.freezing import freeze_from_params
from networks.vamoe import VAMoE
from utils.distributed import DistInfo
from utils.training.checkpoint import check_channel_names
from utils.training.incremental import load_initial_stage

logger = logging.getLogger("vamoe")


def build_model(params, lat, device) -> VAMoE:
    """A freshly initialised VA-MoE of ``params`` for the grid of latitudes ``lat`` ``(H,)``."""
    return VAMoE.from_params(params, lat=lat).to(device)


def load_starting_weights(
    model: nn.Module, params, resume: dict[str, Any] | None, resume_path: str | None
) -> list[str]:
    """Load the resumed checkpoint's weights, or the initial stage's, into ``model``, then freeze
    the ``freeze`` patterns; returns the names of the frozen parameters."""
    report = None
    if resume is not None:
        where = f"config section {params.config_name!r}"
        check_channel_names(resume, resume_path, params.layout.names, where)
        model.load_state_dict(resume["model"])
    elif params.cl_ckpt_path:
        report = load_initial_stage(model, params)
    frozen = freeze_from_params(model, params)
    if report is not None:
        logger.info(
            "incremental stage: grew %s onto %d channels",
            params.cl_ckpt_path,
            params.layout.n_channels,
        )
        for line in report.format(frozen).splitlines():
            logger.info(line)
    return frozen


def wrap_model(model: nn.Module, params, info: DistInfo) -> nn.Module:
    """The model as trained: DistributedDataParallel over ranks, compiled when configured."""
    if info.distributed:
        model = DistributedDataParallel(
            model,
            device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=params.use_moe == "moe",
            broadcast_buffers=False,
        )
    return compile_model(model) if params.compile else model
