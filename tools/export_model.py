#!/usr/bin/env python
"""Export the student with a vocabulary baked in (TorchScript and/or ONNX), check it, time it.

    python tools/export_model.py --config-file configs/voc.yaml --output out/export \
        --class-names cat dog "potted plant" MODEL.WEIGHTS out/model_final.pth

Writes <output>/model.ts (torch.jit.load), <output>/model.onnx (onnxruntime) and
<output>/export.json (vocabulary, input/output contract, parity and timing). The graph maps a
float32 [B, 3, H, W] image (0..255, any H and W) to per-class logits [B, K, H, W] (or labels with
--output-kind labels). Parity: max |logit difference| to the eager model on random images of
--parity-sizes; the exit status is 1 when it exceeds --tolerance. Timing: median of --runs runs
(interleaved rounds) after --warmup runs of eager PyTorch, TorchScript and ONNX Runtime on the
CPU at --bench-size. KEY VALUE config overrides go last, as in train_net.py (the earlier "--opts
KEY VALUE" still works, with a deprecation message). A user error (bad config or class
names, missing or damaged checkpoint, full disk) is one line and exit status 2 (--debug: with its
traceback).
"""

import argparse
import logging
import os
import platform
import sys

from detectron2.utils.logger import setup_logger

from clipdistill.config import get_clipdistill_cfg
from clipdistill.modeling.postprocess import LABEL_CANDIDATES
from clipdistill.utils.cli import config_argument_parser, parse_config_args, positive_int
from clipdistill.utils.cli import report_error, run_tool
from clipdistill.utils.io import atomic_save_json, ensure_writable_dir

PROG = "export_model.py"


def _size(text: str):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 512x512, got {text!r}")
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return h, w


def build_parser() -> argparse.ArgumentParser:
    parser = config_argument_parser(PROG, __doc__)
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--class-names",
        nargs="+",
        default=None,
        metavar="NAME",
        help="vocabulary to bake in (default: the training classes)",
    )
    parser.add_argument(
        "--format",
        nargs="+",
        choices=["torchscript", "onnx"],
        default=["torchscript", "onnx"],
        help="what to export",
    )
    parser.add_argument(
        "--onnx-exporter",
        choices=["torchscript", "dynamo"],
        default="torchscript",
        help="torch.onnx exporter: TorchScript-based (dynamo=False) or dynamo",
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (TorchScript exporter)")
    parser.add_argument(
        "--output-kind",
        choices=["logits", "labels"],
        default="logits",
        help="graph output: per-class logits or the argmax label map (computed from each "
        "pixel's candidate classes, without upsampling every class)",
    )
    parser.add_argument(
        "--label-candidates",
        type=positive_int,
        default=LABEL_CANDIDATES,
        help="with --output-kind labels: the top-k classes of each low-resolution cell that "
        "make a pixel's candidates",
    )
    parser.add_argument(
        "--example-size",
        type=_size,
        default=None,
        metavar="HxW",
        help="tracing input size (default: INPUT.MIN_SIZE_TEST squared)",
    )
    parser.add_argument(
        "--parity-sizes",
        type=_size,
        nargs="+",
        default=[(64, 80), (96, 128)],
        metavar="HxW",
        help="image sizes of the parity check",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-3,
        help="largest accepted max |logit difference| to the eager model",
    )
    parser.add_argument("--bench-size", type=_size, default=(512, 512), metavar="HxW")
    parser.add_argument("--runs", type=int, default=20, help="timed runs (0: no timing)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs before timing")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for torch and onnxruntime (0: torch's default)",
    )
    parser.add_argument(
        "--json",
        default="",
        metavar="FILE",
        help="also write the parity and timing results to FILE",
    )
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parse_config_args(parser, argv)
    setup_logger(name="clipdistill")
    return run_tool(PROG, lambda: _run(args, argv), debug=args.debug)


def _run(args, argv) -> int:
    logger = logging.getLogger("clipdistill.export")

    import torch

    from clipdistill.deploy import SegPredictor
    from clipdistill.deploy import export as E

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    cfg = get_clipdistill_cfg(args.config_file, args.opts)
    predictor = SegPredictor(cfg, class_names=args.class_names)
    model = predictor.model
    module = E.ExportableSegmenter(
        model,
        predictor.class_names,
        output=args.output_kind,
        label_candidates=args.label_candidates,
    )
    ensure_writable_dir(args.output, "--output folder")
    side = cfg.INPUT.MIN_SIZE_TEST
    example_hw = args.example_size or (side, side)
    example = torch.randint(0, 256, (1, 3) + tuple(example_hw)).float()

    runners = {}
    files = {}
    if "torchscript" in args.format:
        files["torchscript"] = os.path.join(args.output, "model.ts")
        E.export_torchscript(module, files["torchscript"], example)
        traced = E.load_torchscript(files["torchscript"])  # check the saved file, not the tracer
        runners["torchscript"] = E.torch_runner(traced)
        logger.info(f"TorchScript: {files['torchscript']}")
    if "onnx" in args.format:
        files["onnx"] = os.path.join(args.output, "model.onnx")
        E.export_onnx(module, files["onnx"], example, exporter=args.onnx_exporter, opset=args.opset)
        session = E.onnx_session(files["onnx"], threads=threads)
        runners["onnxruntime"] = E.onnx_runner(session)
        logger.info(f"ONNX ({args.onnx_exporter} exporter): {files['onnx']}")

    results = {
        "command": " ".join(
            [os.path.basename(sys.executable), "tools/export_model.py"]
            + (sys.argv[1:] if argv is None else list(argv))
        ),
        "files": files,
        "class_names": module.class_names,
        "output_kind": args.output_kind,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "threads": threads,
        },
    }
    ok = True
    if args.output_kind == "logits" and runners:
        parity = E.parity_check(model, runners, args.parity_sizes)
        results["parity_max_abs_diff"] = parity
        results["tolerance"] = args.tolerance
        for name, diffs in parity.items():
            detail = ", ".join(f"{k}: {v:.2e}" for k, v in diffs.items() if k != "max")
            status = "OK" if diffs["max"] <= args.tolerance else "FAILED"
            print(
                f"parity {name:12s} max |diff| {diffs['max']:.3e} ({detail}) "
                f"tolerance {args.tolerance:g}: {status}"
            )
            ok &= diffs["max"] <= args.tolerance
    if args.runs > 0:
        bench_runners = {"eager": E.torch_runner(module)}
        bench_runners.update(runners)
        try:
            import onnxruntime

            results["machine"]["onnxruntime"] = onnxruntime.__version__
        except ImportError:
            pass
        timing = E.benchmark(bench_runners, args.bench_size, runs=args.runs, warmup=args.warmup)
        results["timing"] = {"size": list(args.bench_size), "batch": 1, **timing}
        h, w = args.bench_size
        print(
            f"CPU timing at {h}x{w}, batch 1, {threads} threads, median of {args.runs} "
            f"interleaved runs after {args.warmup} warm-up runs:"
        )
        base = timing["eager"]["median_ms"]
        for name, t in timing.items():
            print(
                f"  {name:12s} {t['median_ms']:8.1f} ms  (min {t['min_ms']:.1f}, "
                f"x{base / t['median_ms']:.2f} vs eager)"
            )
    E.write_vocabulary_file(module, os.path.join(args.output, "export.json"), results)
    if args.json:
        atomic_save_json(args.json, results)
    if not ok:
        return report_error(
            PROG,
            f"exported model differs from the eager model by more than " f"{args.tolerance:g}",
            code=1,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
