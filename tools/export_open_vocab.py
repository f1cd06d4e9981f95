#!/usr/bin/env python
"""Export the student with an open vocabulary (the class names an input at run time), check it
against PyTorch, and optionally quantise it to int8.

    python tools/export_open_vocab.py --config-file configs/voc.yaml --output out/deploy \
        --int8-images 64 MODEL.WEIGHTS out/model_final.pth

Writes a self-contained folder (student.onnx, text.onnx, the BPE vocabulary, deploy.json; with
--int8-images N also student.int8.onnx, calibrated on the first N images of --calib-dataset,
default DATASETS.TRAIN[0]) that ``python -m clipdistill.deploy.runtime`` runs without torch.
Parity: max relative difference of text embeddings and logits to PyTorch for two vocabularies
(--class-names and the training vocabulary) at --parity-sizes; exit status 1 above --tolerance.
KEY VALUE config overrides go last. A user error is one line and exit status 2 (--debug: with
its traceback).
"""

import logging
import sys

from clipdistill.config import get_clipdistill_cfg
from clipdistill.modeling.postprocess import LABEL_CANDIDATES
from clipdistill.utils.cli import config_argument_parser, parse_config_args, positive_int
from clipdistill.utils.cli import report_error, run_tool

from detectron2.utils.logger import setup_logger

PROG = "export_open_vocab.py"


def build_parser():
    parser = config_argument_parser(PROG, __doc__)
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--class-names",
        nargs="+",
        default=["cat", "potted plant", "sky"],
        metavar="NAME",
        help="a vocabulary of the parity check (besides the training one)",
    )
    parser.add_argument("--parity-sizes", nargs="+", default=["64x80", "96x128"], metavar="HxW")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest relative difference")
    parser.add_argument(
        "--int8-images", type=int, default=0, help="calibration images (0: no int8)"
    )
    parser.add_argument("--calib-dataset", default="", help="default: DATASETS.TRAIN[0]")
    parser.add_argument(
        "--output-kind",
        choices=["logits", "labels"],
        default="logits",
        help="student.onnx's output: per-class logits, or the label map computed from each "
        "pixel's candidate classes (its cost grows with the vocabulary at the feature "
        "resolution only; what the runtime's segment() needs)",
    )
    parser.add_argument(
        "--label-candidates",
        type=positive_int,
        default=LABEL_CANDIDATES,
        help="with --output-kind labels: the top-k classes of each low-resolution cell that "
        "make a pixel's candidates",
    )
    parser.add_argument(
        "--label-tolerance",
        type=float,
        default=1e-3,
        help="with --output-kind labels: largest fraction of pixels whose label may differ "
        "from the argmax of PyTorch's logits",
    )
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parse_config_args(parser, argv)
    setup_logger(name="clipdistill")
    return run_tool(PROG, lambda: _run(args), debug=args.debug)


def _run(args) -> int:
    from clipdistill.deploy import SegPredictor
    from clipdistill.deploy.open_vocab import export_open_vocab, parity_check_folder

    logger = logging.getLogger("clipdistill.export")
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.parity_sizes]
    cfg = get_clipdistill_cfg(args.config_file, args.opts)
    model = SegPredictor(cfg).model
    export_open_vocab(
        model,
        args.output,
        input_format=cfg.INPUT.FORMAT,
        min_size_test=cfg.INPUT.MIN_SIZE_TEST,
        max_size_test=cfg.INPUT.MAX_SIZE_TEST,
        output=args.output_kind,
        label_candidates=args.label_candidates,
    )
    worst = parity_check_folder(
        model, args.output, [args.class_names, model.train_vocabulary], sizes
    )
    if "labels" in worst:
        print(
            f"parity: text max relative difference to PyTorch {worst['text']:.2e} (tolerance "
            f"{args.tolerance:g}); labels differing from the argmax of PyTorch's logits "
            f"{100 * worst['labels']:.4f}% of pixels (tolerance {100 * args.label_tolerance:g}%)"
        )
        ok = worst["text"] <= args.tolerance and worst["labels"] <= args.label_tolerance
    else:
        print(
            f"parity (max relative difference to PyTorch): text {worst['text']:.2e}, "
            f"logits {worst['logits']:.2e}, tolerance {args.tolerance:g}"
        )
        ok = max(worst.values()) <= args.tolerance
    if args.int8_images > 0:
        from clipdistill.deploy.onnx_eval import dataset_images
        from clipdistill.deploy.quantize import quantize_student

        name = args.calib_dataset or cfg.DATASETS.TRAIN[0]
        path = quantize_student(args.output, dataset_images(name, args.int8_images))
        logger.info(f"int8 student calibrated on {args.int8_images} images of {name}: {path}")
    if not ok:
        return report_error(PROG, "export differs from PyTorch by more than the tolerance", code=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
