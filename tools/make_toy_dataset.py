#!/usr/bin/env python
"""Generate the embedded default dataset (the testbed) under $DETECTRON2_DATASETS/testbed.

    python tools/make_toy_dataset.py [--num-train 2000 --num-val 500 --size 64 --seed 0]
    python tools/make_toy_dataset.py --dataset voc_toy   # the small VOC-layout set

testbed: 64x64 images of 0-3 coloured shapes with label maps and captions
(clipdistill/data/synthetic), registered as testbed_sem_seg_{train,val}. voc_toy: 128x128
textured regions in the PASCAL VOC layout, converted and registered by the VOC code as
voc20_toy_sem_seg_{train,val}. Same arguments, same files; re-running keeps existing files.
"""

import argparse
import os
import sys
import time

from clipdistill.data.datasets.common import datasets_root
from clipdistill.data.datasets.register_testbed import TESTBED_SUBDIR
from clipdistill.data.datasets.register_voc import VOC_TOY_SUBDIR
from clipdistill.data.synthetic.writer import generate_testbed
from clipdistill.data.voc20_toy import generate_toy_voc
from clipdistill.utils.cli import add_debug_argument, positive_int, run_tool

# dataset -> (generator, default root, default num_train, num_val, size)
DATASETS = {
    "testbed": (generate_testbed, TESTBED_SUBDIR, 2000, 500, 64),
    "voc_toy": (generate_toy_voc, VOC_TOY_SUBDIR, 96, 24, 128),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="testbed")
    parser.add_argument("--root", help="output folder (default: $DETECTRON2_DATASETS/<subdir>)")
    parser.add_argument("--num-train", type=positive_int)
    parser.add_argument("--num-val", type=positive_int)
    parser.add_argument("--size", type=positive_int)
    parser.add_argument("--seed", type=int, default=0)
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    generate, subdir, num_train, num_val, size = DATASETS[args.dataset]

    def run():
        start = time.perf_counter()
        root = generate(
            args.root or os.path.join(datasets_root(), subdir),
            args.num_train if args.num_train is not None else num_train,
            args.num_val if args.num_val is not None else num_val,
            args.size if args.size is not None else size,
            args.seed,
        )
        print(f"{args.dataset} dataset ready in {root} ({time.perf_counter() - start:.1f} s)")

    return run_tool("make_toy_dataset.py", run, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
