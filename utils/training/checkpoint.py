"""Checkpoint files: atomic writes, safe loading, model state dicts without wrappers, and the
model of a configuration with a checkpoint's weights (:func:`load_model`).

Checkpoints are written to a temporary file in the destination folder and renamed over the
target (``os.replace`` is atomic on POSIX), so a crash mid-write never leaves a broken
checkpoint. They are read with ``torch.load(..., weights_only=True)``: a checkpoint holds only
tensors and plain containers, and a file from elsewhere cannot run code when loaded.
"""

import os
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from networks.vamoe import VAMoE
from utils.atomic_io import atomic_write
from utils.errors import CheckpointError, ConfigError
from utils.YParams import YParams, load_section


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes from parameter names."""
    cleaned = {}
    for name, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            while name.startswith(prefix):
                name = name[len(prefix) :]
        cleaned[name] = value
    return cleaned


def atomic_save(obj: Any, path: str, keep_previous: str | None = None) -> None:
    """``torch.save`` to ``path`` through a temporary file and an atomic rename; the file it
    replaces is kept as ``keep_previous`` when given."""
    atomic_write(path, lambda f: torch.save(obj, f), keep_previous)


def load_latest_checkpoint(path: str, previous: str, log) -> tuple[dict[str, Any], str]:
    """``(checkpoint, its path)``: ``path``, or ``previous`` with a warning when ``path`` is
    missing or cannot be read (a truncated file, a disk error)."""
    try:
        return load_checkpoint(path), path
    except CheckpointError as err:
        if not os.path.isfile(previous):
            raise
        log.warning("%s; falling back to the previous checkpoint %s", err, previous)
        return load_checkpoint(previous), previous


def load_tensors(path: str, map_location="cpu") -> Any:
    """``torch.load`` with ``weights_only`` (tensors and plain containers, never arbitrary
    pickled objects); a missing, corrupt or unsafe file is a :class:`CheckpointError` naming it."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist or is not a file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"cannot load checkpoint {path!r} (corrupt, or holds objects other "
            f"than tensors and plain containers): {' '.join(str(err).split())}"
        ) from err


def load_checkpoint(path: str, map_location="cpu") -> dict[str, Any]:
    """Load a checkpoint of this project safely; errors name the file."""
    ckpt = load_tensors(path, map_location)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(
            f"checkpoint {path!r} has no 'model' entry; keys: "
            f"{sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__}"
        )
    ckpt["model"] = clean_state_dict(ckpt["model"])
    return ckpt


def check_channel_names(ckpt: dict[str, Any], path: str, names, where: str) -> None:
    """Refuse a checkpoint trained on other channels than ``names`` (``where`` says whose)."""
    saved = ckpt.get("channel_names")
    if saved is not None and list(saved) != list(names):
        raise ConfigError(
            f"checkpoint {path!r} was trained on channels {list(saved)}, but "
            f"{where} gives {list(names)}"
        )


def load_model(params, weights: str, device) -> VAMoE:
    """The model of ``params`` with the weights of a checkpoint written by one process or DDP,
    on ``device`` in eval mode."""
    return load_model_and_checkpoint(params, weights, device)[0]


def load_model_and_checkpoint(params, weights: str, device, ckpt=None) -> tuple[VAMoE, dict]:
    """:func:`load_model` and the checkpoint's other entries (epoch, global step, ...);
    ``ckpt``: the checkpoint already loaded from ``weights``. A checkpoint trained on other
    channels, or whose parameters do not match the model's, is a :class:`ConfigError`."""
    ckpt = load_checkpoint(weights) if ckpt is None else ckpt
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
    return model.to(device).eval(), {k: v for k, v in ckpt.items() if k != "model"}


def rng_state() -> dict[str, Any]:
    """RNG states of torch (CPU and CUDA), numpy and random as weights_only-safe objects."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "python": list(_to_lists(random.getstate())),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    saved_cuda = state.get("cuda") or []
    if torch.cuda.is_available() and saved_cuda:  # possibly fewer GPUs than when saved
        for device, cuda_state in enumerate(saved_cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _to_lists(value):
    return [list(v) if isinstance(v, tuple) else v for v in value]


GRID_KEYS = ("h_size", "w_size")


def params_of_checkpoint(
    ckpt: dict[str, Any],
    path: str,
    yaml_filename: str,
    config_name: str | None = None,
    overrides=(),
) -> YParams:
    """The configuration to use a checkpoint with.

    Without ``config_name`` it is the one the checkpoint records (``params``, written by
    ``train.py``), keys it lacks filled from the ``full_field`` section of ``yaml_filename``.
    With ``config_name`` it is that section of ``yaml_filename``; a checkpoint that records other
    channels or another grid is refused, the error naming the difference. ``overrides`` are
    ``key=value`` strings applied either way.
    """
    recorded = ckpt.get("params")
    if config_name is None:
        if not isinstance(recorded, dict):
            raise ConfigError(
                f"checkpoint {path!r} records no configuration (written before checkpoints "
                "carried one): pass --config SECTION"
            )
        defaults = (
            load_section(yaml_filename, "full_field") if os.path.isfile(yaml_filename) else {}
        )
        name = str(ckpt.get("config_name") or "checkpoint")
        params = YParams.from_dict(recorded, name, overrides, defaults, source=path)
    else:
        params = YParams(yaml_filename, config_name, overrides)
    where = f"config section {params.config_name!r}"
    check_channel_names(ckpt, path, params.layout.names, where)
    if isinstance(recorded, dict):
        differ = [k for k in GRID_KEYS if k in recorded and recorded[k] != params[k]]
        if differ:
            raise ConfigError(
                f"checkpoint {path!r} was trained on a "
                + ", ".join(f"{k}={recorded[k]}" for k in differ)
                + f" grid, but {where} gives "
                + ", ".join(f"{k}={params[k]}" for k in differ)
            )
    return params
