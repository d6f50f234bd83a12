"""Parameter counts of a configuration per component (``python -m tools.summary``).

The model is built on the meta device (no weights are allocated), so the paper-size network is
summarised in seconds. ``trainable_params`` counts what remains trainable after the section's
``freeze`` patterns (the incremental stage); ``recipe`` lists the section's training recipe.
"""

from collections import OrderedDict

import torch

from networks.freezing import freeze_from_params
from networks.vamoe import VAMoE

RECIPE_KEYS = (
    "batch_size",
    "max_epochs",
    "lr",
    "min_lr",
    "betas",
    "weight_decay",
    "weight_decay_all",
    "clip_grad_norm",
    "drop_path",
    "loss",
    "loss_weight",
    "recons_target",
    "attn_padding",
    "train_period",
)


def component_of(name: str) -> str:
    """Component a parameter belongs to, with block and expert indices removed.

    ``blocks.3.ffn.experts.2.w_gate.weight`` -> ``blocks.ffn.experts``;
    ``patch_embed.proj.weight`` -> ``patch_embed``.
    """
    parts = name.split(".")
    if parts[0] != "blocks":
        return parts[0]
    return ".".join((["blocks"] + parts[2:-1])[:3])


def summarize(params) -> dict:
    with torch.device("meta"):
        model = VAMoE.from_params(params)
    frozen = set(freeze_from_params(model, params))
    components = OrderedDict()
    for name, p in model.named_parameters():
        entry = components.setdefault(component_of(name), {"params": 0, "trainable": 0})
        entry["params"] += p.numel()
        entry["trainable"] += 0 if name in frozen else p.numel()
    total = sum(c["params"] for c in components.values())
    trainable = sum(c["trainable"] for c in components.values())
    layout = params["layout"]
    return {
        "config": params.config_name,
        "channels": layout.n_channels,
        "experts": params["num_experts"] if params["use_moe"] else 0,
        "variable_groups": layout.group_names,
        "embed_dim": params["embed_dim"],
        "depth": params["depth"],
        "use_moe": params["use_moe"],
        "total_params": total,
        "trainable_params": trainable,
        "trainable_fraction": round(trainable / total, 4),
        "frozen_params": total - trainable,
        "components": components,
        "recipe": {key: params[key] for key in RECIPE_KEYS},
    }
