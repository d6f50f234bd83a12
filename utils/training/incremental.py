"""Incremental stage: grow an initial-stage checkpoint onto a larger variable set.

The new model is built for the new variables; the initial checkpoint (``cl_ckpt_path``, trained on
``old_higher_features`` x ``old_pressure_level`` + ``old_surface_features``) is loaded into it:

- channel-indexed tensors are mapped by (variable, level): the patch-embedding input channels
  (``patch_embed.proj.weight``, axis 1), the head's output rows in ``(p1 p2 c)`` order
  (``head.proj.weight``), the first layer of the variable-embedding MLP
  (``var_embed.mlp.0.weight``, axis 1) and both loss log-variance vectors; the new channels keep
  their initial values;
- experts are mapped by variable group (``experts.<j>`` of the old model goes to the expert of the
  same group in the new model, wherever the new group order puts it);
- every other tensor with the same name and shape is copied;
- the remaining tensors (the new groups' experts) keep their fresh initialisation.

The freezing policy is applied separately (:mod:`networks.freezing`).
"""

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from utils.channels import ChannelLayout
from utils.errors import CheckpointError, ConfigError
from utils.training.checkpoint import check_channel_names, load_checkpoint

_EXPERT = re.compile(r"^(blocks\.\d+\.ffn\.experts\.)(\d+)(\..+)$")


@dataclass
class LoadReport:
    """Which tensors of the new model were mapped, copied or left at their initial values."""

    mapped: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def format(self, frozen: list[str] = ()) -> str:
        """A table of the four categories (names grouped over blocks) and the frozen count."""
        rows = [
            ("mapped by channel", self.mapped),
            ("copied", self.copied),
            ("newly initialised", self.new),
            ("in checkpoint, unused", self.ignored),
            ("frozen", list(frozen)),
        ]
        lines = [f"{'category':<24}{'tensors':>8}  names (block indices collapsed)"]
        for label, names in rows:
            collapsed = sorted({re.sub(r"blocks\.\d+\.", "blocks.*.", n) for n in names})
            shown = ", ".join(collapsed[:8]) + (" ..." if len(collapsed) > 8 else "")
            lines.append(f"{label:<24}{len(names):>8}  {shown}")
        return "\n".join(lines)


def channel_map(old: ChannelLayout, new: ChannelLayout) -> list[int]:
    """``new_index[i]`` of every old channel i; error listing old channels the new set lacks."""
    missing = [c.name for c in old.channels if c not in new]
    if missing:
        raise ConfigError(f"old variables {missing} are not in the new variable set {new.names}")
    return [new.index(c.variable, c.level) for c in old.channels]


def _map_channels(
    name: str, old_value: torch.Tensor, new_value: torch.Tensor, index: list[int], patch_size: int
) -> torch.Tensor:
    """Copy of ``new_value`` with the old channels of ``old_value`` placed at ``index``."""
    out = new_value.detach().clone()
    idx = torch.as_tensor(index)
    if name == "head.proj.weight":  # rows in (p1 p2 c) order
        p = patch_size
        view_new = out.view(p, p, -1, out.shape[-1])
        view_new[:, :, idx] = old_value.view(p, p, -1, old_value.shape[-1]).to(out.dtype)
    elif name in ("patch_embed.proj.weight", "var_embed.mlp.0.weight"):
        out[:, idx] = old_value.to(out.dtype)
    else:  # loss log-variances (C,)
        out[idx] = old_value.to(out.dtype)
    return out


CHANNEL_TENSORS = (
    "patch_embed.proj.weight",
    "head.proj.weight",
    "var_embed.mlp.0.weight",
    "forecast_loss.log_var",
    "recons_loss.log_var",
)


def grow_state_dict(
    old_state: dict[str, torch.Tensor],
    model: nn.Module,
    old: ChannelLayout,
    new: ChannelLayout,
    patch_size: int,
):
    """New-model state dict built from ``old_state``; returns ``(state, LoadReport)``."""
    index = channel_map(old, new)
    new_groups, old_groups = new.group_names, old.group_names
    new_state = model.state_dict()
    state, report = dict(new_state), LoadReport()
    used = set()
    for name, value in new_state.items():
        source = name
        match = _EXPERT.match(name)
        if match:
            group = new_groups[int(match.group(2))]
            if group not in old_groups:
                report.new.append(name)
                continue
            source = f"{match.group(1)}{old_groups.index(group)}{match.group(3)}"
        if source not in old_state:
            report.new.append(name)
            continue
        used.add(source)
        if name in CHANNEL_TENSORS:
            state[name] = _map_channels(name, old_state[source], value, index, patch_size)
            report.mapped.append(name)
        elif old_state[source].shape == value.shape:
            state[name] = old_state[source].to(value.dtype)
            report.copied.append(name)
        else:
            raise CheckpointError(
                f"checkpoint tensor {source!r} has shape {tuple(old_state[source].shape)}"
                f" but the new model's {name!r} has {tuple(value.shape)}; only "
                f"channel-indexed tensors may change shape ({CHANNEL_TENSORS})"
            )
    report.ignored = sorted(set(old_state) - used)
    return state, report


def load_initial_stage(model: nn.Module, params) -> LoadReport:
    """Load ``params.cl_ckpt_path`` into ``model`` (built for the new variables)."""
    path = params["cl_ckpt_path"]
    ckpt = load_checkpoint(path)
    old = ChannelLayout.from_params(params, prefix="old_")
    check_channel_names(
        ckpt,
        path,
        old.names,
        "the config's old variable set "
        "(old_higher_features, old_pressure_level, old_surface_features)",
    )
    state, report = grow_state_dict(
        ckpt["model"], model, old, params["layout"], params["patch_size"]
    )
    model.load_state_dict(state)
    return report
