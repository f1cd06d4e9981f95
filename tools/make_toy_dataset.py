#!/usr/bin/env python
"""Generate the embedded toy dataset (PASCAL VOC layout) under $DETECTRON2_DATASETS/voc_toy.

    python tools/make_toy_dataset.py [--num-train 96 --num-val 24 --size 128 --seed 0]

Registered as voc20_toy_sem_seg_{train,val}. Re-running keeps existing files.
"""

import argparse
import os
import sys

from clipdistill.data.datasets.common import datasets_root
from clipdistill.data.datasets.register_voc import VOC_TOY_SUBDIR
from clipdistill.data.toy import generate_toy_voc
from clipdistill.utils.cli import add_debug_argument, run_tool


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.path.join(datasets_root(), VOC_TOY_SUBDIR))
    parser.add_argument("--num-train", type=int, default=96)
    parser.add_argument("--num-val", type=int, default=24)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    add_debug_argument(parser)
    args = parser.parse_args(argv)

    def run():
        root = generate_toy_voc(args.root, args.num_train, args.num_val, args.size, args.seed)
        print(f"toy dataset ready in {root}")

    return run_tool("make_toy_dataset.py", run, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
