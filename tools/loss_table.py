#!/usr/bin/env python
"""Train students with subsets of the losses and several seeds; tabulate seen / unseen mIoU and
hIoU beside the teacher's own zero-shot segmentation (docs/TESTBED.md).

    python tools/loss_table.py --config-file configs/voc_toy.yaml --output output/loss_table
    python tools/loss_table.py --config-file configs/voc_toy.yaml --variants config ce \
        --seeds 0 --output output/voc_toy          # what `make toy` runs

Variants are '+'-joined losses (ce, global, local, dense; 'ce+dense@<method>' picks the teacher's
dense method) or 'config' (the config file's own weights). Finished runs are reused: re-running
resumes. Trailing KEY VALUE pairs override the config of every run (as in train_net.py);
--num-gpus is the processes of each student run.
"""

import logging
import sys

from detectron2.utils.logger import setup_logger

from clipdistill.testbed.loss_table import DEFAULT_VARIANTS, run_table
from clipdistill.utils.cli import config_argument_parser, parse_config_args, run_tool

PROG = "loss_table.py"


def main(argv=None) -> int:
    parser = config_argument_parser(PROG, __doc__)
    parser.add_argument("--output", required=True, help="output folder of the runs and the table")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--no-teacher", action="store_true", help="skip the teacher's own row")
    parser.add_argument("--jobs", type=int, default=1, help="student runs at once")
    args = parse_config_args(parser, argv)
    return run_tool(PROG, lambda: _run(args), debug=args.debug)


def _run(args) -> None:
    setup_logger(name="clipdistill")
    setup_logger(name="detectron2", abbrev_name="d2").setLevel(logging.WARNING)
    result = run_table(
        args.config_file,
        args.variants,
        args.seeds,
        args.output,
        teacher=not args.no_teacher,
        opts=args.opts,
        num_gpus=args.num_gpus,
        jobs=args.jobs,
    )
    print(result["table"])


if __name__ == "__main__":
    sys.exit(main())
