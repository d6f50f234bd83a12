"""Print the parameter counts of a configuration as one JSON object, or its training memory.

    python -m networks.summary --yaml_config config/vamoe.yaml --config vamoe
    python -m networks.summary --config vamoe --memory --batch 1 2 3 4 [--amp bf16] [--checkpoint_blocks]

The model is built on the meta device (no weights are allocated), so the paper-size network is
summarised in seconds. ``trainable_params`` counts what remains trainable after the section's
``freeze`` patterns (the incremental stage); ``recipe`` lists the section's training recipe.

``--memory`` estimates the peak training memory per device at each per-device batch
(:mod:`networks.memory`: one training step on fake tensors, nothing allocated; about 20 s per
batch at paper size) and prints a table, or JSON lines with ``--json``. ``fits`` compares the
estimate plus DDP gradient buckets with 90 % of 40 and 80 GB (the rest left to the CUDA context
and allocator fragmentation).
"""

import argparse
import json
from collections import OrderedDict

import torch

from networks.memory import training_memory
from networks.vamoe import VAMoE
from utils.errors import cli_errors
from utils.freezing import freeze_from_params
from utils.YParams import YParams, add_override_argument

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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--yaml_config", default="config/vamoe.yaml")
    parser.add_argument("--config", default="vamoe")
    add_override_argument(parser)
    parser.add_argument("--memory", action="store_true", help="estimate peak training memory")
    parser.add_argument("--batch", type=int, nargs="+", default=[1], help="per-device batch(es)")
    parser.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="autocast dtype")
    parser.add_argument("--checkpoint_blocks", action="store_true", help="activation checkpointing")
    parser.add_argument("--json", action="store_true", help="--memory: one JSON line per batch")
    args = parser.parse_args(argv)
    with cli_errors():
        params = YParams(args.yaml_config, args.config, args.overrides)
        summary = None if args.memory else summarize(params)
    if summary is not None:
        print(json.dumps(summary, indent=2))
        return
    if args.checkpoint_blocks:
        params["checkpoint_blocks"] = True
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[args.amp]
    for batch in args.batch:
        row = memory_row(params, batch, amp)
        print(json.dumps(row) if args.json else format_memory_row(row), flush=True)


GIB = 2**30
CAPACITIES_GB = (40, 80)


def memory_row(params, batch: int, amp) -> dict:
    """:func:`networks.memory.training_memory` in GiB with the 40/80 GB verdicts."""
    est = training_memory(params, batch, amp)
    row = {"config": params.config_name, **est}
    row.update(
        {
            k.replace("_bytes", "_gib"): round(v / GIB, 2)
            for k, v in est.items()
            if k.endswith("_bytes")
        }
    )
    ddp_total = est["peak_bytes"] + est["ddp_buckets_bytes"]
    row["peak_ddp_gib"] = round(ddp_total / GIB, 2)
    for gb in CAPACITIES_GB:
        row[f"fits_{gb}gb"] = ddp_total <= 0.9 * gb * 1e9
    return row


def format_memory_row(row: dict) -> str:
    fits = ", ".join(f"{gb} GB {'yes' if row[f'fits_{gb}gb'] else 'no'}" for gb in CAPACITIES_GB)
    return (
        f"{row['config']} batch {row['batch']} amp {row['amp'] or 'fp32'} checkpoint_blocks "
        f"{row['checkpoint_blocks']}: peak {row['peak_gib']:.2f} GiB (params {row['params_gib']:.2f}, "
        f"grads {row['grads_gib']:.2f}, AdamW {row['optimizer_gib']:.2f}, activations "
        f"{row['activations_gib']:.2f}); with DDP buckets {row['peak_ddp_gib']:.2f} GiB; fits: {fits}"
    )


if __name__ == "__main__":
    main()
