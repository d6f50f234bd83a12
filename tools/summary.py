"""Parameter counts of a configuration per component, and what stays trainable after its
``freeze`` patterns (:func:`networks.summary.summarize`); with ``--memory``, the estimated peak
training memory per device (:mod:`utils.training.memory`).

::

    python -m tools.summary --config vamoe
    python -m tools.summary --config vamoe --memory --batch 1 2 3 4 [--amp bf16] [--checkpoint_blocks]

``--memory`` estimates the peak training memory per device at each per-device batch
(:mod:`utils.training.memory`: one training step on fake tensors, nothing allocated; about 20 s per
batch at paper size) and prints a table, or JSON lines with ``--json``. ``fits`` compares the
estimate plus DDP gradient buckets with 90 % of 40 and 80 GB (the rest left to the CUDA context
and allocator fragmentation).
"""

import argparse
import json

import torch

from networks.summary import summarize
from utils.errors import cli_errors
from utils.training.memory import format_memory_row, memory_row
from utils.YParams import YParams, add_override_argument


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


if __name__ == "__main__":
    main()
