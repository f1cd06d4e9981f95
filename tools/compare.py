#!/usr/bin/env python
"""Compare segmenters in one run: mIoU per evaluated dataset, parameters, GMACs, latency,
images/s and peak memory, as a Markdown table, JSON, CSV and a plot (accuracy vs images/s).

    python tools/compare.py --output-dir out/compare --size 512 \\
        --entry "student=configs/voc.yaml MODEL.WEIGHTS output/voc/model_final.pth" \\
        --entry configs/maskclip/sclip_vitb16.yaml \\
        --entry configs/maskclip/clearclip_vitb16.yaml

Each --entry is "[LABEL=]CONFIG_FILE [KEY VALUE ...]": the segmenter is built from its own config
and overrides; trailing KEY VALUE pairs, as in train_net.py, apply to every entry first (the
earlier "--opts KEY VALUE" still works, with a deprecation message). Accuracy is read
from each config's OUTPUT_DIR/inference/results.json (written by tools/train_net.py --eval-only);
--evaluate missing (default) evaluates the entries that have none, --evaluate always re-evaluates,
--evaluate never only reads. Writes comparison.{md,json,csv,png} in --output-dir.

An entry "train [LABEL=]CONFIG_FILE ..." is first trained and evaluated by tools/train_net.py
--resume once per --seeds seed into --runs-dir/LABEL/seed<k> (finished runs are reused,
interrupted ones resume); its row shows the mean ± std over the seeds. --entries-file reads
entries from a file, one per line; the testbed comparison (docs/COMPARISON.md):

    python tools/compare.py --entries-file configs/compare/testbed.txt \
        --output-dir output/compare_testbed --runs-dir output/compare_testbed/runs \
        --size 64 512 --no-test-resize-at 512 --seeds 0 1 2 --device cpu
"""

import argparse
import logging
import os
import sys

import torch

from detectron2.utils.logger import setup_logger

from clipdistill.benchmark.compare import (
    EVALUATE_CHOICES,
    format_markdown,
    parse_entry,
    read_entries_file,
    run_comparison,
    write_comparison,
)
from clipdistill.utils.cli import add_debug_argument, positive_int, run_tool, split_config_overrides
from clipdistill.utils.errors import ConfigError

PROG = "compare.py"


def build_parser() -> argparse.ArgumentParser:
    lines = __doc__.splitlines()
    p = argparse.ArgumentParser(
        prog=PROG,
        description=lines[0],
        epilog="\n".join(lines[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--entry",
        action="append",
        default=[],
        metavar="SPEC",
        help='a segmenter: "[train] [LABEL=]CONFIG_FILE [KEY VALUE ...]" (repeat for each)',
    )
    p.add_argument(
        "--entries-file",
        action="append",
        default=[],
        metavar="FILE",
        help="a file of entries, one SPEC per line (# comments); before the --entry ones",
    )
    p.add_argument(
        "--runs-dir",
        default=None,
        metavar="DIR",
        help="where 'train' entries train (default: OUTPUT_DIR/runs)",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of every 'train' entry")
    p.add_argument(
        "--train-threads",
        type=positive_int,
        default=None,
        help="OMP_NUM_THREADS of the training runs (default: inherited)",
    )
    p.add_argument("--output-dir", required=True, metavar="DIR")
    p.add_argument("--evaluate", choices=EVALUATE_CHOICES, default="missing")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: each MODEL.DEVICE)")
    p.add_argument(
        "--size",
        type=positive_int,
        nargs="+",
        default=[512],
        help="square test image side(s); each is measured, the first is the table's main one",
    )
    p.add_argument("--batch-size", type=positive_int, default=1)
    p.add_argument(
        "--iters", type=positive_int, default=10, help="timed iterations (median reported)"
    )
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--skip-flops", action="store_true")
    p.add_argument(
        "--no-test-resize",
        action="store_true",
        help="time every segmenter on --size images as they are (default: after each config's "
        "own test-time resize, as its evaluation sees them)",
    )
    p.add_argument(
        "--no-test-resize-at",
        type=positive_int,
        nargs="+",
        default=[],
        metavar="SIZE",
        help="sizes (of --size) at which every segmenter gets the image as it is",
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    add_debug_argument(p)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # the KEY VALUE overrides common to every entry trail the options (train_net.py's
    # convention); the entries themselves are one word each
    words, common = split_config_overrides(argv, PROG)
    parser = build_parser()
    args = parser.parse_args(words)
    if len(common) % 2:
        parser.error(f"config overrides must be KEY VALUE pairs, got {common}")
    setup_logger(name="clipdistill")
    setup_logger(name="detectron2")
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    return run_tool(PROG, lambda: _run(args, common, argv), debug=args.debug)


def _run(args, common, argv) -> int:
    entries = [e for path in args.entries_file for e in read_entries_file(path)]
    entries += [parse_entry(spec) for spec in args.entry]
    if not entries:
        raise ConfigError("no segmenter to compare: give --entry or --entries-file")
    result = run_comparison(
        entries,
        common,
        evaluate_mode=args.evaluate,
        device=args.device,
        size=args.size,
        batch_size=args.batch_size,
        iters=args.iters,
        warmup=args.warmup,
        flops=not args.skip_flops,
        test_resize=not args.no_test_resize,
        seeds=args.seeds,
        runs_dir=args.runs_dir or os.path.join(args.output_dir, "runs"),
        train_threads=args.train_threads,
        raw_sizes=args.no_test_resize_at,
    )
    result["meta"]["command"] = " ".join(["python", "tools/compare.py"] + argv)
    paths = write_comparison(result, args.output_dir)
    print(format_markdown(result))
    print("written: " + ", ".join(paths[k] for k in ("md", "json", "csv", "png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
