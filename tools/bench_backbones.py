#!/usr/bin/env python
"""Time candidate timm backbones of the student on the CPU: eager, ONNX fp32 and ONNX int8
latency, GMACs and achieved GMAC/s, at --size (random weights: speed only).

    python tools/bench_backbones.py --config-file configs/voc.yaml --output out/bench_bb \
        --backbones efficientnet_b0 resnet18d --size 512 --runs 10

Writes <output>/backbones.json and prints a markdown table. Each backbone is exported with the
open-vocabulary export (text embeddings of the training vocabulary as input) and quantised with
random calibration images (--calib-images). In the same interleaved rounds as each backbone, the
config's CLIP teacher's dense path runs at --size (unless --no-teacher-dense): the second table
gives each runner's speed-up over it and its GMAC/s as a percentage of CLIP's. Timings are only
as good as the machine is idle.
KEY VALUE config overrides go last.
"""

import logging
import os
import platform
import sys

from clipdistill.config import get_clipdistill_cfg
from clipdistill.utils.cli import config_argument_parser, parse_config_args, run_tool
from clipdistill.utils.cli import non_negative_int, positive_int
from clipdistill.utils.io import atomic_save_json, ensure_writable_dir

from detectron2.utils.logger import setup_logger

PROG = "bench_backbones.py"


def build_parser():
    from clipdistill.benchmark.backbones import CANDIDATE_BACKBONES

    parser = config_argument_parser(PROG, __doc__)
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--backbones", nargs="+", default=list(CANDIDATE_BACKBONES))
    parser.add_argument("--size", type=positive_int, default=512)
    parser.add_argument("--runs", type=positive_int, default=10)
    parser.add_argument("--warmup", type=non_negative_int, default=2)
    parser.add_argument("--calib-images", type=positive_int, default=8)
    parser.add_argument("--threads", type=non_negative_int, default=0, help="0: torch's default")
    parser.add_argument(
        "--no-teacher-dense",
        action="store_true",
        help="do not time the config's CLIP teacher's dense path (encode_image_dense at --size) "
        "in the same rounds as each backbone (the speed-up and GMAC/s columns against it)",
    )
    return parser


def main(argv=None) -> int:
    args = parse_config_args(build_parser(), argv)
    setup_logger(name="clipdistill")
    return run_tool(PROG, lambda: _run(args), debug=args.debug)


def _run(args) -> int:
    import numpy as np
    import torch

    from clipdistill.benchmark.backbones import (
        build_candidate,
        format_backbone_table,
        measure_candidate,
        teacher_dense_reference,
    )
    from clipdistill.benchmark.report import TEACHER_DENSE
    from clipdistill.deploy.export import ExportableSegmenter, onnx_session
    from clipdistill.deploy.open_vocab import export_open_vocab
    from clipdistill.deploy.quantize import INT8_STUDENT, quantize_student

    logger = logging.getLogger("clipdistill.bench_backbones")
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    cfg = get_clipdistill_cfg(args.config_file, args.opts)
    ensure_writable_dir(args.output, "--output folder")
    rng = np.random.default_rng(0)
    calib = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)]
    calib = calib * max(1, args.calib_images)
    reference = None if args.no_teacher_dense else teacher_dense_reference(cfg, args.size)
    results = {}
    for name in args.backbones:
        try:
            model = build_candidate(cfg, name)
        except Exception as e:  # an unknown or unsupported timm name: reported, others go on
            results[name] = {"error": f"{type(e).__name__}: {e}"}
            logger.warning(f"{name}: {results[name]['error']}")
            continue
        folder = os.path.join(args.output, name)
        export_open_vocab(model, folder, input_format=cfg.INPUT.FORMAT)
        quantize_student(folder, iter(calib))
        names = list(model.train_vocabulary)
        results[name] = {"vocabulary_size": len(names)}
        text = model.text_embeddings(names).detach().float().cpu().numpy()
        runners = {}
        for key, file in (("onnx_fp32", "student.onnx"), ("onnx_int8", INT8_STUDENT)):
            sess = onnx_session(os.path.join(folder, file), threads=threads)
            runners[key] = lambda x, s=sess: s.run(None, {"image": x, "text": text})
        baked = ExportableSegmenter(model, names)
        results[name].update(
            measure_candidate(
                baked, args.size, runners, runs=args.runs, warmup=args.warmup, reference=reference
            )
        )
    report = {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "threads": threads,
            "torch": torch.__version__,
        },
        "reference": (
            None if reference is None else f"{TEACHER_DENSE}, {cfg.MODEL.CLIPDISTILL.TEACHER.NAME}"
        ),
        "results": results,
    }
    atomic_save_json(os.path.join(args.output, "backbones.json"), report)
    print(format_backbone_table(results, args.backbones))
    return 0


if __name__ == "__main__":
    sys.exit(main())
