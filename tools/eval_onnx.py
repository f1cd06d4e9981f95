#!/usr/bin/env python
"""Evaluate an open-vocabulary export (tools/export_open_vocab.py) on a registered dataset with
the project's evaluator (mIoU; seen/unseen mIoU on a zero-shot dataset), e.g. fp32 against int8:

    python tools/eval_onnx.py --folder out/deploy --dataset testbed_val
    python tools/eval_onnx.py --folder out/deploy --dataset testbed_val --student student.int8.onnx

The dataset must be registered (``import clipdistill`` registers the project's).
"""

import argparse
import json
import sys

from detectron2.utils.logger import setup_logger


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="eval_onnx.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--folder", required=True)
    parser.add_argument("--dataset", required=True, help="a registered dataset name")
    parser.add_argument("--student", default=None, help="student graph in FOLDER (default fp32)")
    parser.add_argument("--limit", type=int, default=0, help="first N images only (0: all)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--output-dir", default=None)
    args = parser.parse_args(argv)
    setup_logger(name="clipdistill")
    import clipdistill  # noqa: F401  (registers the datasets)
    from clipdistill.deploy.onnx_eval import evaluate_export

    try:
        results = evaluate_export(
            args.folder, args.dataset, args.student, args.output_dir, args.limit, args.threads
        )
    except (OSError, KeyError, ValueError) as e:
        print(f"eval_onnx.py: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
