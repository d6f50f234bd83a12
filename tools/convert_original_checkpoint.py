"""Convert a checkpoint of the original VA-MoE code into this project's format
(:mod:`utils.training.original_checkpoint`).

::

    python -m tools.convert_original_checkpoint --input ORIG.tar --config vamoe_initial \\
        --output exp/vamoe_initial/0/training_checkpoints/best_ckpt.tar [--with_optimizer]
"""

import argparse
import os

from utils.errors import OutputExistsError, cli_errors
from utils.training.original_checkpoint import convert
from utils.YParams import YParams, add_override_argument


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="checkpoint of the original code")
    parser.add_argument("--output", required=True, help="checkpoint to write (this project's)")
    parser.add_argument("--yaml_config", default="config/vamoe.yaml")
    parser.add_argument("--config", default="vamoe", help="section the checkpoint was trained as")
    parser.add_argument(
        "--with_optimizer",
        action="store_true",
        help="also convert the optimiser state, so that training can continue from it",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --output when it already exists"
    )
    add_override_argument(parser)
    args = parser.parse_args(argv)
    with cli_errors():
        params = YParams(args.yaml_config, args.config, args.overrides)
        if os.path.exists(args.output) and not args.overwrite:
            raise OutputExistsError(f"{args.output!r} exists; pass --overwrite to replace it")
        ckpt = convert(params, args.input, args.output, args.with_optimizer)
    n_params = sum(v.numel() for v in ckpt["model"].values())
    print(
        f"wrote {args.output}: {len(ckpt['model'])} tensors, {n_params:,} parameters, "
        f"config {params.config_name!r}, epoch {ckpt['epoch']}, step {ckpt['global_step']}"
        + (", with optimiser state" if args.with_optimizer else "")
    )


if __name__ == "__main__":
    main()
