"""Convert a checkpoint written by the original VA-MoE code into this project's format.

    python -m tools.convert_original_checkpoint --input ORIG.tar --config vamoe_initial \
        --output exp/vamoe_initial/0/training_checkpoints/best_ckpt.tar [--with_optimizer]

The original saves ``{"model_state", "optimizer_state_dict", "epoch", "iters"}``, the model state
of a DistributedDataParallel model (every name prefixed ``module.``). Its parameters map one to one
onto this project's (:data:`NAME_TABLE`); the two loss log-variances are stored ``(1, C, 1, 1)``
there and ``(C,)`` here. Every mapped tensor is checked against the model of the chosen config
section; an unmapped, missing or mis-shaped tensor is an error that lists each of them.

The output holds ``model`` (the mapped state dict, tensors unchanged), ``epoch``, ``global_step``
(the original's ``iters``), ``config_name``, ``channel_names`` and ``params`` (the resolved
section): ``inference.py``/``test.sh`` evaluate it, and an incremental section takes it as
``cl_ckpt_path``. With ``--with_optimizer`` the original's AdamW moments are mapped onto this
project's optimiser (parameter order: the order of ``model_state``, which is the original model's
``parameters()`` order its optimiser was built from), with a scheduler state at ``iters`` steps,
so that ``train.py --checkpoint OUT.tar`` continues training.
"""

import json
import math
import re

import torch

from networks.freezing import freeze_from_params
from networks.vamoe import VAMoE
from utils.errors import CheckpointError
from utils.training.checkpoint import atomic_save, clean_state_dict, load_tensors, rng_state
from utils.training.optimizer import build_optimizer

# (original name, this project's name); a ``{field}`` stands for one dot-free part of the name
# (block, expert and layer indices, weight/bias), which carries over unchanged.
NAME_TABLE = (
    ("patch_embed.proj.{p}", "patch_embed.proj.{p}"),
    ("pos_embed", "pos_embed"),
    ("posembedder.mlp.{k}.{p}", "var_embed.mlp.{k}.{p}"),
    ("blocks.{i}.{norm}.{p}", "blocks.{i}.{norm}.{p}"),
    ("blocks.{i}.attn.{linear}.{p}", "blocks.{i}.attn.{linear}.{p}"),
    ("blocks.{i}.moe.PosEmbedder.{p}", "blocks.{i}.ffn.pos_proj.{p}"),
    ("blocks.{i}.moe.GateEmbedder.{p}", "blocks.{i}.ffn.gate_proj.{p}"),
    ("blocks.{i}.moe.experts.{j}.{w}_proj.weight", "blocks.{i}.ffn.experts.{j}.w_{w}.weight"),
    ("blocks.{i}.moe.shared_experts.{w}_proj.weight", "blocks.{i}.ffn.shared_expert.w_{w}.weight"),
    ("blocks.{i}.moe.norm.{p}", "blocks.{i}.ffn.out_norm.{p}"),
    ("blocks.{i}.moe.mlp.{k}.{p}", "blocks.{i}.ffn.out_mlp.{k}.{p}"),
    ("head.weight", "head.proj.weight"),
    ("loss_gen.logvar", "forecast_loss.log_var"),
    ("loss_recons.logvar", "recons_loss.log_var"),
)


def _pattern(template: str) -> re.Pattern:
    """Regular expression of a ``NAME_TABLE`` template (each ``{field}`` a named group)."""
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(
        re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^.]+)" for i, part in enumerate(parts)
    )
    return re.compile(regex + r"\Z")


_FORWARD = tuple((_pattern(orig), ours) for orig, ours in NAME_TABLE)
_BACKWARD = tuple((_pattern(ours), orig) for orig, ours in NAME_TABLE)


def _translate(name: str, rules) -> str | None:
    for pattern, template in rules:
        match = pattern.match(name)
        if match:
            return template.format(**match.groupdict())
    return None


def project_name(original: str) -> str | None:
    """This project's parameter name of an original one (without ``module.``), or None."""
    return _translate(original, _FORWARD)


def original_name(name: str) -> str | None:
    """The original code's name of one of this project's parameters, or None."""
    return _translate(name, _BACKWARD)


# Stored (1, C, 1, 1) by the original, (C,) here.
LOG_VARIANCES = ("forecast_loss.log_var", "recons_loss.log_var")


class ConversionError(CheckpointError):
    """An original checkpoint that does not fit the chosen config section (names each tensor)."""


def _as_project_tensor(name: str, value: torch.Tensor) -> torch.Tensor:
    """The log-variances ``(1, C, 1, 1) -> (C,)``; every other tensor unchanged."""
    return value.reshape(-1) if name in LOG_VARIANCES and value.ndim == 4 else value


def convert_state_dict(
    original: dict[str, torch.Tensor], expected: dict[str, torch.Size], source: str
) -> dict[str, torch.Tensor]:
    """Map an original model state (``module.`` prefixes allowed) onto this project's names.

    ``expected`` gives every parameter name of the target model with its shape. Raises
    :class:`ConversionError` listing every unmapped, duplicated, missing or mis-shaped tensor.
    """
    state, seen, problems = {}, set(), []
    for orig_name, value in clean_state_dict(original).items():
        name = project_name(orig_name)
        if name is None or name not in expected:
            problems.append(f"unmapped tensor {orig_name!r} {tuple(value.shape)}")
            continue
        if name in seen:
            problems.append(f"tensor {orig_name!r} maps onto {name!r} a second time")
            continue
        seen.add(name)
        value = _as_project_tensor(name, value)
        if value.shape != expected[name]:
            problems.append(
                f"tensor {orig_name!r} has shape {tuple(value.shape)} but {name!r} of the "
                f"model is {tuple(expected[name])}"
            )
            continue
        state[name] = value
    problems += [
        f"missing tensor {original_name(name)!r} (here {name!r}, shape {tuple(shape)})"
        for name, shape in expected.items()
        if name not in seen
    ]
    if problems:
        raise ConversionError(f"checkpoint {source!r} does not fit: " + "; ".join(problems))
    return state


def convert_optimizer(
    original_optimizer: dict,
    original_names: list[str],
    model: torch.nn.Module,
    params,
    steps: int,
    source: str,
) -> tuple[dict, dict]:
    """This project's optimiser and scheduler states (``utils.training.optimizer.build_optimizer`` groups, a
    ``LambdaLR`` at ``steps``, the original's step count) from the original's AdamW state.

    The original optimiser was built over the model's ``parameters()``, whose order is the order
    of ``original_names`` (the keys of its model state). Moments of parameters that this project
    keeps frozen are dropped. The learning rate of every group is the original's current one; the
    scheduler's lambda is rebuilt by the trainer from the config, only its step count is kept.
    """
    indices = [i for group in original_optimizer["param_groups"] for i in group["params"]]
    if len(indices) != len(original_names):
        raise ConversionError(
            f"checkpoint {source!r}: its optimiser holds {len(indices)} parameters but its model "
            f"state {len(original_names)} tensors, so they cannot be matched in order"
        )
    by_name = {
        project_name(n): original_optimizer["state"].get(i, {})
        for i, n in zip(indices, original_names, strict=True)
    }
    optimizer = build_optimizer(model, params)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    names = {id(p): name for name, p in model.named_parameters()}
    ordered = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for position, p in enumerate(ordered):
        entry = {
            key: torch.as_tensor(value, dtype=torch.float32)
            if key == "step"
            else value.reshape(p.shape)
            for key, value in by_name[names[id(p)]].items()
        }
        if entry:
            state[position] = entry
    lr = float(original_optimizer["param_groups"][0]["lr"])
    groups = optimizer.state_dict()["param_groups"]
    for group in groups:
        group["lr"] = lr
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    scheduler_state = scheduler.state_dict()
    scheduler_state.update(last_epoch=steps, _last_lr=[lr] * len(groups))
    return optimizer.state_dict(), scheduler_state


def read_original(path: str) -> dict:
    """The original checkpoint, loaded safely (tensors and plain containers only)."""
    ckpt = load_tensors(path)
    if not isinstance(ckpt, dict) or "model_state" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ConversionError(
            f"checkpoint {path!r} has no 'model_state' entry (keys: {keys}); is it a checkpoint "
            "of the original code?"
        )
    return ckpt


def convert(params, source: str, output: str, with_optimizer: bool = False) -> dict:
    """Convert ``source`` for the model of ``params`` and write it to ``output``; returns the
    written checkpoint."""
    original = read_original(source)
    with torch.device("meta"):
        meta_model = VAMoE.from_params(params)
    expected = {name: p.shape for name, p in meta_model.named_parameters()}
    state = convert_state_dict(original["model_state"], expected, source)
    steps = int(original.get("iters", 0))
    ckpt = {
        "model": state,
        "epoch": int(original.get("epoch", 0)),
        "global_step": steps,
        "best_valid_loss": math.inf,
        "config_name": params.config_name,
        "channel_names": params.layout.names,
        "params": json.loads(json.dumps(params.to_dict())),
        "converted_from": source,
    }
    if with_optimizer:
        if "optimizer_state_dict" not in original:
            raise ConversionError(f"checkpoint {source!r} has no 'optimizer_state_dict'")
        model = VAMoE.from_params(params)
        freeze_from_params(model, params)
        names = list(clean_state_dict(original["model_state"]))
        optimizer, scheduler = convert_optimizer(
            original["optimizer_state_dict"], names, model, params, steps, source
        )
        ckpt.update(
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=None,
            step_in_epoch=0,
            epoch_sums={},
            rng=rng_state(),
        )
    atomic_save(ckpt, output)
    return ckpt
