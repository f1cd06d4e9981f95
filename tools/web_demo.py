#!/usr/bin/env python
"""Web demo: upload an image, type class names, see the segmentation overlay and its legend.

    python tools/web_demo.py --config-file configs/voc.yaml MODEL.WEIGHTS out/model_final.pth
    # then open http://127.0.0.1:7860

Serves a Gradio app on 127.0.0.1 (--host/--port to change). Uploads over --max-upload-bytes
are refused (HTTP 413), images over --max-pixels with a message, before they are decoded; uploads
are kept in a temporary folder removed when the server stops. KEY VALUE config overrides go last,
as in train_net.py (the earlier "--opts KEY VALUE" still works, with a deprecation message). Bad
input (no image, an unreadable image, empty or duplicated class names) is answered with a message
on the page.
"""

import argparse
import logging
import sys

from clipdistill.config import get_clipdistill_cfg
from clipdistill.utils.cli import config_argument_parser, parse_config_args, run_tool
from clipdistill.utils.cli import non_negative_int, port_number, positive_int

from detectron2.utils.logger import setup_logger

PROG = "web_demo.py"


def build_parser() -> argparse.ArgumentParser:
    parser = config_argument_parser(PROG, __doc__)
    parser.add_argument(
        "--class-names",
        nargs="+",
        default=None,
        metavar="NAME",
        help="initial vocabulary shown on the page (default: every class of the config's test "
        "set, seen and unseen; else its training classes)",
    )
    parser.add_argument(
        "--onnx",
        default="",
        metavar="FOLDER",
        help="run on an open-vocabulary export (tools/export_open_vocab.py) with the torch-free "
        "runtime instead of the PyTorch model (the config then only names the vocabulary)",
    )
    parser.add_argument(
        "--onnx-student",
        default=None,
        metavar="FILE",
        help="student graph in the --onnx folder (e.g. student.int8.onnx; default the fp32 one)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=port_number, default=7860, help="port to listen on")
    parser.add_argument(
        "--max-upload-bytes",
        type=positive_int,
        default=20 * 1024 * 1024,
        help="largest upload accepted (default 20 MiB; larger: HTTP 413)",
    )
    parser.add_argument(
        "--examples",
        type=non_negative_int,
        default=4,
        metavar="N",
        help="offer the first N images of the config's test set as examples to click (default 4; "
        "0: none; none either when that data set is not on disk)",
    )
    parser.add_argument(
        "--max-pixels",
        type=positive_int,
        default=40_000_000,
        help="largest image decoded, width x height (default 40 million)",
    )
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parse_config_args(parser, argv)
    setup_logger(name="clipdistill")
    return run_tool(PROG, lambda: _run(args), debug=args.debug)


def _run(args) -> int:
    logger = logging.getLogger("clipdistill.web_demo")

    from clipdistill.deploy.web import private_upload_folder

    with private_upload_folder():  # before Gradio is imported: it reads GRADIO_TEMP_DIR then
        return _serve(args, logger)


def _serve(args, logger) -> int:
    from clipdistill.deploy import SegPredictor
    from clipdistill.deploy.predictor import evaluation_vocabulary, example_images
    from clipdistill.deploy.runtime import load_deploy_json
    from clipdistill.deploy.web import OnnxPredictor, build_app, launch

    cfg = get_clipdistill_cfg(args.config_file, args.opts)
    names = args.class_names or evaluation_vocabulary(cfg)
    if args.onnx:
        names = names or load_deploy_json(args.onnx).get("train_vocabulary")
        predictor = OnnxPredictor(args.onnx, names, student=args.onnx_student)
    else:
        predictor = SegPredictor(cfg, class_names=names)
    examples = example_images(cfg, args.examples)
    app = build_app(predictor, max_pixels=args.max_pixels, examples=examples)
    logger.info(f"serving on http://{args.host}:{args.port}")
    launch(app, host=args.host, port=args.port, block=True, max_upload_bytes=args.max_upload_bytes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
