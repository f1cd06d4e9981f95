#!/usr/bin/env python
"""Render sem_seg_predictions.json (written by SemSegEvaluator) next to the ground truth.

    python tools/visualize_json_results.py --input out/inference/sem_seg_predictions.json \
        --output viz --dataset voc20_sem_seg_val [--limit 20] [--min-area 0]

Writes one PNG per image: input | prediction | ground truth | legend, in the dataset's colours
(stuff_colors); the legend lists the classes present (unseen ones marked) with their shares of
the prediction and the ground truth; images smaller than --min-side are enlarged. Category ids are mapped back through the dataset's
stuff_dataset_id_to_contiguous_id when it has one (COCO-Stuff). Missing images are reported and
skipped; the exit status is 1 when no image could be rendered, 2 for a bad --input or --dataset
(one line; --debug shows the traceback).
"""

import argparse
import logging
import sys

from detectron2.utils.logger import setup_logger

import clipdistill  # noqa: F401  (registers datasets)
from clipdistill.utils.cli import add_debug_argument, report_error, run_tool
from clipdistill.evaluation.visualize import render_prediction_file

PROG = "visualize_json_results.py"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    parser.add_argument("--input", required=True, help="sem_seg_predictions.json")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--dataset", required=True, help="registered dataset name")
    parser.add_argument("--limit", type=int, default=0, help="render at most N images (0: all)")
    parser.add_argument(
        "--min-area",
        type=int,
        default=0,
        help="do not draw connected regions smaller than this many pixels",
    )
    parser.add_argument("--alpha", type=float, default=0.6, help="opacity of the class colours")
    parser.add_argument(
        "--min-side",
        type=int,
        default=256,
        help="enlarge smaller images (integer factor, nearest neighbour) to at least this side",
    )
    add_debug_argument(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logger(name="clipdistill")
    return run_tool(PROG, lambda: _run(args), debug=args.debug)


def _run(args) -> int:
    logger = logging.getLogger("clipdistill.visualize")
    written, failed = render_prediction_file(
        args.input,
        args.dataset,
        args.output,
        limit=args.limit,
        min_area=args.min_area,
        alpha=args.alpha,
        min_side=args.min_side,
    )
    for file_name, why in failed:
        logger.warning(f"Skipped {file_name}: {why}")
    total = len(written) + len(failed)
    logger.info(
        f"Rendered {len(written)} of {total} images into {args.output}; " f"{len(failed)} failed"
    )
    if failed and not written:
        return report_error(PROG, f"none of the {total} images could be rendered", code=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
