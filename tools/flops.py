"""Forward and training-step FLOPs of a configuration, per component (:mod:`networks.flops`).

::

    python -m tools.flops --config vamoe [--batch 1]
"""

import argparse
import json

from networks.flops import forward_flops_by_component, training_step_flops
from utils.errors import cli_errors
from utils.YParams import YParams, add_override_argument


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--yaml_config", default="config/vamoe.yaml")
    parser.add_argument("--config", default="vamoe")
    parser.add_argument("--batch", type=int, default=1)
    add_override_argument(parser)
    args = parser.parse_args(argv)
    with cli_errors():
        cfg = YParams(args.yaml_config, args.config, args.overrides)
    parts = forward_flops_by_component(cfg, args.batch)
    print(
        json.dumps(
            {
                "config": args.config,
                "batch": args.batch,
                "forward_flops": sum(parts.values()),
                "train_step_flops": training_step_flops(cfg, args.batch),
                "components": parts,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
