#!/usr/bin/env python
"""Run the frozen CLIP teacher once over a registered dataset and store its outputs.

    python tools/cache_teacher.py --config-file configs/voc.yaml --dataset voc20_sem_seg_train
    python tools/cache_teacher.py --config-file configs/voc.yaml --dataset voc20_sem_seg_train \\
        --num-gpus 8 MODEL.CLIPDISTILL.TEACHER_CACHE.DIR /data/cache
    python tools/cache_teacher.py --config-file configs/voc.yaml --dataset voc20_sem_seg_train \\
        --verify

Shards are float16 safetensors files under MODEL.CLIPDISTILL.TEACHER_CACHE.DIR/<dataset>/ with a
manifest of sha256 checksums and of the images' sizes, times and hashes; an interrupted build
resumes where it stopped. ``--num-gpus N`` starts N processes (gloo on a CPU-only machine), each
handling every N-th shard. Train from the cache with ``MODEL.CLIPDISTILL.TEACHER_CACHE.ENABLED
True`` (e.g. configs/segstudent/segstudent_effb0_toyclip_voc20toy_300_cached.yaml). Format and
semantics: docs/CACHE.md. A user error is one line and exit status 2 (``--debug``: with its
traceback).
"""

import logging
import sys

from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from clipdistill.config import get_clipdistill_cfg
from clipdistill.config import check_datasets_registered
from clipdistill.data.teacher_cache import TeacherCache, cache_key, dataset_cache_dir
from clipdistill.engine.teacher_cache import build_teacher_cache
from clipdistill.utils.cli import config_argument_parser, launch_tool, parse_config_args

PROG = "cache_teacher.py"


def main(args):
    setup_logger(distributed_rank=comm.get_rank(), name="clipdistill")
    setup_logger(distributed_rank=comm.get_rank(), name="detectron2")
    cfg = get_clipdistill_cfg(args.config_file, args.opts)
    cfg.freeze()
    check_datasets_registered(args.dataset, "--dataset")
    log = logging.getLogger("clipdistill")
    cc = cfg.MODEL.CLIPDISTILL.TEACHER_CACHE
    for name in args.dataset:
        directory = dataset_cache_dir(cc.DIR, name)
        if args.verify:
            if comm.is_main_process():
                cache = TeacherCache(directory, cache_key(cfg, name), verify=True)
                cache.verify_all()
                cache.check_images(rehash=True)
                log.info(
                    f"Teacher cache {directory}: {len(cache)} images re-hashed and unchanged, "
                    "all shards verified."
                )
            continue
        res = build_teacher_cache(cfg, name, cache_dir=directory, overwrite=args.overwrite)
        # printed by every process (detectron2 logs to the console from rank 0 only)
        print(
            f"rank {comm.get_rank()}: {name}: computed shards {res['computed']}, skipped "
            f"(already finished) {res['skipped']}",
            flush=True,
        )
        if comm.is_main_process() and res["complete"]:
            log.info(f"Teacher cache ready: {directory}")


def invoke_main(argv=None) -> int:
    parser = config_argument_parser(PROG, __doc__)
    parser.add_argument(
        "--dataset", action="append", required=True, help="registered dataset (repeat for more)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a stale, damaged or changed-images cache (keeps nothing of it)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check every shard's sha256 and re-hash every image against the build's",
    )
    args = parse_config_args(parser, argv)
    return launch_tool(PROG, main, args)


if __name__ == "__main__":
    sys.exit(invoke_main())  # pragma: no cover
