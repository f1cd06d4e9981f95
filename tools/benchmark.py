#!/usr/bin/env python
"""Measure the segmenter of --config-file (and of each --segmenter-config file, each built from
its own config) and the CLIP teacher (global + dense) in one process: parameters, FLOPs (fvcore:
1 fused multiply-add = 1 flop, i.e. MACs), median latency and images/s, peak memory, and the
training seconds per iteration of the --config-file segmenter (the student: with cross-entropy
only, with the online teacher and with the teacher-output cache; another architecture: as
configured).

    python tools/benchmark.py \\
        --config-file configs/segstudent/segstudent_effb0_toyclip_voc20toy_300.yaml \\
        --size 512 --batch-size 1 --output out/bench.json MODEL.CLIPDISTILL.TEACHER.NAME ViT-B-16 \\
        MODEL.CLIPDISTILL.TEACHER.WEIGHTS ""

Trailing KEY VALUE pairs override the config, as in train_net.py. Random weights cost the same
as trained ones, so no download is needed for timing.
"""

import contextlib
import logging
import os
import sys

import torch

from detectron2.utils.logger import setup_logger

from clipdistill.benchmark import (
    dataset_sweep_source,
    format_table,
    run_benchmark,
    vocabulary_sweep,
)
from clipdistill.config import get_clipdistill_cfg
from clipdistill.modeling.postprocess import LABEL_CANDIDATES
from clipdistill.utils.cli import config_argument_parser, parse_config_args, run_tool
from clipdistill.utils.cli import positive_int, positive_int_list
from clipdistill.utils.io import atomic_save_json, ensure_writable_dir

PROG = "benchmark.py"


def parse_args(argv=None):
    p = config_argument_parser(PROG, __doc__)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: MODEL.DEVICE)")
    p.add_argument("--size", type=positive_int, default=512, help="square inference input side")
    p.add_argument("--batch-size", type=positive_int, default=1, help="inference batch size")
    p.add_argument(
        "--iters", type=positive_int, default=10, help="timed iterations (median reported)"
    )
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    p.add_argument("--train-iters", type=positive_int, default=None, help="default: --iters")
    p.add_argument(
        "--train-batch-size", type=int, default=None, help="default: SOLVER.IMS_PER_BATCH"
    )
    p.add_argument("--train-size", type=positive_int, default=None, help="default: INPUT.CROP.SIZE")
    p.add_argument(
        "--segmenter-config",
        action="append",
        default=[],
        metavar="FILE",
        help="one more segmenter, built from its own config file (+ the trailing overrides); "
        "repeat for several",
    )
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--skip-flops", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument(
        "--autocast",
        choices=["none", "float16", "bfloat16"],
        default="none",
        help="measure under torch.autocast with this dtype (mixed precision, as SOLVER.AMP "
        "trains; default: float32)",
    )
    p.add_argument("--output", default=None, help="write the results as JSON here")
    p.add_argument(
        "--vocabulary-sweep",
        default=[],
        type=positive_int_list,
        metavar="K1,K2,...",
        help="instead: latency of the segmenter of --config-file (and of each "
        "--segmenter-config) against vocabulary size (e.g. 5,20,150,847,1000: ADE20K-150's "
        "names, then generated ones) at each --sweep-sizes, for the full logits (detectron2's "
        "sem_seg) and for the label map only (the predictor's path)",
    )
    p.add_argument(
        "--label-candidates",
        type=positive_int,
        default=LABEL_CANDIDATES,
        help="--vocabulary-sweep's labels path: top-k classes of each low-resolution cell that "
        "make a pixel's candidates",
    )
    p.add_argument(
        "--sweep-dataset",
        default="",
        metavar="DATASET",
        help="--vocabulary-sweep's names and image: this registered dataset's class names (then "
        "generated ones) and its first image, resized to each --sweep-sizes (default: ADE20K-150's "
        "names, a random image)",
    )
    p.add_argument(
        "--sweep-sizes",
        default=[224, 512],
        type=positive_int_list,
        help="image sides of --vocabulary-sweep",
    )
    p.add_argument(
        "--label-agreement",
        default="",
        metavar="DATASET",
        help="instead: on this registered dataset, the fraction of pixels whose label from "
        "each pixel's candidate classes equals the full computation's, for each "
        "--agreement-candidates, with the dataset's vocabulary and padded to each "
        "--agreement-vocabularies size",
    )
    p.add_argument("--agreement-candidates", default=[1, 2, 3, 4], type=positive_int_list)
    p.add_argument(
        "--agreement-vocabularies",
        default=[],
        type=positive_int_list,
        metavar="K1,K2,...",
        help="--label-agreement: also the dataset's names padded with generated ones to K",
    )
    p.add_argument("--limit", type=int, default=0, help="--label-agreement: first N images")
    return parse_config_args(p, argv, require_config=False)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command the results record
    return run_tool(PROG, lambda: _run(args), debug=args.debug)


def _run(args) -> int:
    setup_logger(name="clipdistill")
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = get_clipdistill_cfg(args.config_file, args.opts)
    cfg.freeze()
    if args.vocabulary_sweep:
        _sweep(cfg, args)
        return 0
    if args.label_agreement:
        _agreement(cfg, args)
        return 0
    device = args.device or cfg.MODEL.DEVICE
    amp = (
        contextlib.nullcontext()
        if args.autocast == "none"
        else torch.autocast(device.split(":")[0], dtype=getattr(torch, args.autocast))
    )
    with amp:
        result = _measure(cfg, args)
    result["meta"]["autocast"] = args.autocast
    result["meta"]["command"] = " ".join(["python", "tools/benchmark.py"] + args.argv)
    result["meta"]["config_file"] = args.config_file
    result["meta"]["opts"] = list(args.opts)
    print(format_table(result))
    if args.output:
        ensure_writable_dir(os.path.dirname(os.path.abspath(args.output)), "--output folder")
        atomic_save_json(args.output, result)
        print(f"results written to {args.output}")
    return 0


def _measure(cfg, args) -> dict:
    return run_benchmark(
        cfg,
        device=args.device,
        size=args.size,
        batch_size=args.batch_size,
        iters=args.iters,
        warmup=args.warmup,
        train_iters=args.train_iters,
        train_batch_size=args.train_batch_size,
        train_size=args.train_size,
        segmenter_cfgs=[get_clipdistill_cfg(f, args.opts) for f in args.segmenter_config],
        skip_training=args.skip_training,
        skip_flops=args.skip_flops,
    )


def _sweep(cfg, args) -> list:
    from tabulate import tabulate

    names = image = None
    if args.sweep_dataset:
        names, image = dataset_sweep_source(cfg, args.sweep_dataset)
    rows = vocabulary_sweep(
        [cfg] + [get_clipdistill_cfg(f, args.opts) for f in args.segmenter_config],
        device=args.device,
        sizes=args.sweep_sizes,
        vocabulary_sizes=args.vocabulary_sweep,
        iters=args.iters,
        warmup=args.warmup,
        label_candidates=args.label_candidates,
        names=names,
        image=image,
    )
    print(tabulate(rows, headers="keys", floatfmt=".1f"))
    if args.output:
        ensure_writable_dir(os.path.dirname(os.path.abspath(args.output)), "--output folder")
        command = " ".join(["python", "tools/benchmark.py"] + args.argv)
        atomic_save_json(args.output, {"command": command, "vocabulary_sweep": rows})
        print(f"results written to {args.output}")
    return rows


def _agreement(cfg, args) -> list:
    from tabulate import tabulate

    from clipdistill.benchmark.agreement import label_agreement

    rows = label_agreement(
        cfg,
        args.label_agreement,
        vocabulary_sizes=args.agreement_vocabularies,
        candidates=args.agreement_candidates,
        limit=args.limit,
        device=args.device,
    )
    print(tabulate(rows, headers="keys", floatfmt=".7f"))
    if args.output:
        ensure_writable_dir(os.path.dirname(os.path.abspath(args.output)), "--output folder")
        command = " ".join(["python", "tools/benchmark.py"] + args.argv)
        atomic_save_json(args.output, {"command": command, "label_agreement": rows})
        print(f"results written to {args.output}")
    return rows


if __name__ == "__main__":
    sys.exit(main())
