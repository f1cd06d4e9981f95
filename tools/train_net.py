#!/usr/bin/env python
"""Train or evaluate a clipdistill model, the detectron2 way.

    python tools/train_net.py --config-file configs/voc_toy.yaml
    python tools/train_net.py --config-file configs/voc.yaml --num-gpus 8
    python tools/train_net.py --config-file configs/voc.yaml --eval-only \
        MODEL.WEIGHTS out/model_final.pth

``--num-gpus N`` starts N processes (NCCL on GPUs, gloo on a CPU-only machine). A user error (bad
config value, missing or damaged file, full disk...) is one line and exit status 2; ``--debug``
shows its traceback.
"""

import sys

from detectron2.evaluation import verify_results
from detectron2.utils import comm

from clipdistill.engine import SegmenterCheckpointer, Trainer, setup
from clipdistill.utils.cli import config_argument_parser, launch_tool, parse_config_args

PROG = "train_net.py"


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        SegmenterCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def invoke_main(argv=None) -> int:
    args = parse_config_args(config_argument_parser(PROG, __doc__), argv)
    return launch_tool(PROG, main, args)


if __name__ == "__main__":
    sys.exit(invoke_main())  # pragma: no cover
