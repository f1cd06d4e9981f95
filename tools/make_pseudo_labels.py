#!/usr/bin/env python
"""Label a registered dataset with a segmenter (e.g. CaR) and register the result as a dataset.

    python tools/make_pseudo_labels.py --config-file configs/car/car_vit_b16_l14_voc21.yaml \\
        --dataset voc21_sem_seg_train --name voc21_car_pseudo_train
    python tools/make_pseudo_labels.py ... --num-gpus 8            # one process per GPU
    python tools/train_net.py --config-file configs/voc.yaml \\
        DATASETS.TRAIN "('voc21_car_pseudo_train',)"                # train the student on them

Labels go to $DETECTRON2_DATASETS/pseudo_labels/<name>/labels/ (or --output-dir), one PNG per
image, written atomically; a re-run skips the images already labelled. The dataset <name> is
registered whenever clipdistill is imported. Logic: clipdistill/engine/pseudo_labels.py. A user
error is one line and exit status 2 (``--debug``: with its traceback).
"""

import sys

from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from clipdistill.config import check_datasets_registered, get_clipdistill_cfg
from clipdistill.engine import SegmenterCheckpointer, Trainer
from clipdistill.engine.pseudo_labels import make_pseudo_labels
from clipdistill.utils.cli import config_argument_parser, launch_tool, parse_config_args

PROG = "make_pseudo_labels.py"


def main(args):
    setup_logger(distributed_rank=comm.get_rank(), name="clipdistill")
    cfg = get_clipdistill_cfg(args.config_file, args.opts)
    cfg.freeze()
    check_datasets_registered([args.dataset], "--dataset")  # before the model is built
    model = Trainer.build_model(cfg)
    SegmenterCheckpointer(model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    manifest = make_pseudo_labels(cfg, model, args.dataset, args.name, args.output_dir or None)
    if manifest:
        print(f"pseudo-label dataset {args.name!r} registered from {manifest}", flush=True)


def invoke_main(argv=None) -> int:
    parser = config_argument_parser(PROG, __doc__)
    parser.add_argument("--dataset", required=True, help="registered dataset to label")
    parser.add_argument("--name", required=True, help="name of the new (pseudo-label) dataset")
    parser.add_argument(
        "--output-dir", default="", help="default: $DETECTRON2_DATASETS/pseudo_labels/<name>"
    )
    args = parse_config_args(parser, argv)
    return launch_tool(PROG, main, args)


if __name__ == "__main__":
    sys.exit(invoke_main())  # pragma: no cover
