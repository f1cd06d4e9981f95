#!/usr/bin/env python
"""Train or evaluate a clipdistill model, the detectron2 way.

    python tools/train_net.py --config-file configs/voc_toy.yaml
    python tools/train_net.py --config-file configs/voc.yaml --num-gpus 8
    python tools/train_net.py --config-file configs/voc.yaml --eval-only \
        MODEL.WEIGHTS out/model_final.pth

``--num-gpus N`` starts N processes (NCCL on GPUs, gloo on a CPU-only machine).
"""

from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from clipdistill.engine import SegmenterCheckpointer, Trainer, setup


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


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()  # pragma: no cover
