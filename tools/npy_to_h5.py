"""Rewrite a dataset of the ``.npy`` layout as one HDF5 file per year
(:mod:`utils.data.npy_to_h5`).

::

    python -m tools.npy_to_h5 --root_dir /data/era5 --config vamoe --workers 4
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence

from utils.data.h5_layout import ALL_SPLIT
from utils.data.npy_to_h5 import convert
from utils.errors import cli_errors
from utils.YParams import YParams


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root_dir", required=True, help="root of the .npy layout")
    parser.add_argument("--out_dir", default=None, help="root of the h5 layout (default: root_dir)")
    parser.add_argument("--config", default=None, help="config section whose channels to write")
    parser.add_argument(
        "--yaml_config",
        default=os.path.join(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "vamoe.yaml"
        ),
    )
    parser.add_argument(
        "--start", default=None, help="first day, YYYY-MM-DD (default: first found)"
    )
    parser.add_argument("--end", default=None, help="last day, YYYY-MM-DD (default: last found)")
    parser.add_argument("--hour_step", type=int, default=6)
    parser.add_argument("--split", default=ALL_SPLIT, help="sub-directory of the year files")
    parser.add_argument("--workers", type=int, default=1, help="years converted at once")
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing year files")
    args = parser.parse_args(argv)
    with cli_errors():
        layout = None
        if args.config:
            layout = YParams(args.yaml_config, args.config).layout
        summary = convert(
            args.root_dir,
            args.out_dir,
            layout,
            args.start,
            args.end,
            args.hour_step,
            args.split,
            args.workers,
            args.overwrite,
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
