#!/usr/bin/env python
"""Segment images or videos with a trained student and any vocabulary.

    python tools/demo.py --config-file configs/voc.yaml --input img.jpg imgs/ "more/*.png" \
        --output out/demo --class-names cat "potted plant" grass \
        MODEL.WEIGHTS out/model_final.pth

Per image: <stem>_label.png (palette PNG, pixel = class index), <stem>_overlay.png (blend with a
legend), with --save-scores <stem>_scores.npz (per-class probabilities); a video gives
<stem>_overlay.mp4. Without --class-names the training vocabulary (DATASETS.TRAIN[0]) is used.
KEY VALUE config overrides go last, as in train_net.py (the earlier "--opts KEY VALUE" still
works, with a deprecation message). Unreadable inputs are reported and skipped; the exit
status is 1 when every input failed, 2 for a user error (bad config or class names, missing or
damaged checkpoint, full disk: one line; --debug shows the traceback).
"""

import argparse
import logging
import sys

from detectron2.utils.logger import setup_logger

from clipdistill.config import get_clipdistill_cfg
from clipdistill.utils.cli import config_argument_parser, parse_config_args, report_error, run_tool
from clipdistill.utils.cli import positive_int, unit_float

PROG = "demo.py"


def build_parser() -> argparse.ArgumentParser:
    parser = config_argument_parser(PROG, __doc__)
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="PATH",
        help="image files, glob patterns, folders, or video files",
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--class-names",
        nargs="+",
        default=None,
        metavar="NAME",
        help="the vocabulary (words or quoted phrases); default: the training classes",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=1, help="images per forward pass"
    )
    parser.add_argument(
        "--save-scores", action="store_true", help="also write per-class score maps (.npz)"
    )
    parser.add_argument("--alpha", type=unit_float, default=0.5, help="overlay opacity")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parse_config_args(parser, argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    setup_logger(name="clipdistill")
    setup_logger(name="detectron2")
    return run_tool(PROG, lambda: _run(args), debug=args.debug)


def _run(args) -> int:
    logger = logging.getLogger("clipdistill.demo")
    from clipdistill.deploy import SegPredictor, run_demo

    cfg = get_clipdistill_cfg(args.config_file, args.opts)
    predictor = SegPredictor(cfg, class_names=args.class_names)
    logger.info(f"vocabulary ({len(predictor.class_names)}): {predictor.class_names}")
    report = run_demo(
        predictor,
        args.input,
        args.output,
        batch_size=args.batch_size,
        save_scores=args.save_scores,
        alpha=args.alpha,
        progress=not args.no_progress,
    )
    if report.failed:
        names = "\n  ".join(f"{p}: {why}" for p, why in report.failed)
        logger.warning(f"{len(report.failed)} of {report.total} inputs failed:\n  {names}")
    logger.info(f"{len(report.done)} of {report.total} inputs segmented into {args.output}")
    if report.stopped is not None:
        done = "\n  ".join(report.done) if report.done else "(none)"
        logger.warning(f"inputs done before the stop ({len(report.done)}):\n  {done}")
        raise report.stopped
    if not report.done:
        return report_error(PROG, f"all {report.total} inputs failed", code=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
