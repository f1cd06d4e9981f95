"""COCO-Stuff-164k (171 classes): ``stuffthingmaps`` → contiguous ``stuffthingmaps_detectron2``.

Input (``$DETECTRON2_DATASETS/coco``)::

    train2017/ val2017/                  images (train2017.zip, val2017.zip)
    stuffthingmaps/{train2017,val2017}/  stuffthingmaps_trainval2017.zip; uint8,
                                         value = COCO id - 1, 255 = unlabeled

Output: ``stuffthingmaps_detectron2/{train2017,val2017}/<stem>.png`` (uint8): the 171 used COCO ids
renumbered 0..170 in ascending id order (``class_names/coco_stuff171{,_ids}.txt``); the 11 unused
ids, 255, and anything else → 255 (ignore). Masks that are entirely 255 are kept.
"""

import functools
import os
from typing import Dict, Optional, Sequence

import numpy as np

from ...utils.io import atomic_save_image, remove_stale_temps
from ..datasets.common import datasets_root, load_class_ids
from .common import (
    PrepareError,
    base_argument_parser,
    make_lut,
    output_is_complete,
    read_label,
    run_cli,
    run_jobs,
)

__all__ = ["coco_stuff_lut", "convert_coco_stuff", "prepare_coco_stuff", "main"]

SPLITS = ("train2017", "val2017")
IGNORE = 255


def coco_stuff_lut() -> np.ndarray:
    """uint8 LUT of length 256: raw value (COCO id - 1) → contiguous 0..170, or 255."""
    ids = load_class_ids("coco_stuff171_ids.txt")
    return make_lut({cid - 1: i for i, cid in enumerate(ids)}, 256, IGNORE)


def convert_coco_stuff(raw: np.ndarray, lut: Optional[np.ndarray] = None) -> np.ndarray:
    """Map a raw stuffthingmaps mask (uint8) to contiguous 171-class labels (uint8, 255 ignore)."""
    if lut is None:
        lut = coco_stuff_lut()
    if raw.dtype != np.uint8:
        raise ValueError(f"expected a uint8 mask, got {raw.dtype}")
    return lut[raw]


def _convert_one(job, lut):
    src, dst = job
    if output_is_complete(dst):
        return "skipped"
    raw = read_label(src, "COCO-Stuff stuffthingmap")
    if raw.dtype != np.uint8:
        raise PrepareError(f"Expected an 8-bit stuffthingmap, got {raw.dtype}: {src}")
    atomic_save_image(dst, convert_coco_stuff(raw, lut))
    return "written"


def prepare_coco_stuff(
    root: str, splits: Sequence[str] = SPLITS, workers: int = 1
) -> Dict[str, Dict[str, int]]:
    """Convert every ``coco/stuffthingmaps/<split>/*.png`` under ``root``.

    Returns:
        dict: ``{split: {"written": n, "skipped": m}}``.
    """
    coco = os.path.join(root, "coco")
    lut = coco_stuff_lut()
    summary = {}
    for split in splits:
        src_dir = os.path.join(coco, "stuffthingmaps", split)
        dst_dir = os.path.join(coco, "stuffthingmaps_detectron2", split)
        if not os.path.isdir(src_dir):
            raise PrepareError(
                f"Missing folder {src_dir}: unzip stuffthingmaps_trainval2017.zip into "
                f"{os.path.join(coco, 'stuffthingmaps')}"
            )
        os.makedirs(dst_dir, exist_ok=True)
        remove_stale_temps(dst_dir)
        stems = sorted(f[:-4] for f in os.listdir(src_dir) if f.endswith(".png"))
        if not stems:
            raise PrepareError(f"No .png files in {src_dir}")
        jobs = [
            (os.path.join(src_dir, s + ".png"), os.path.join(dst_dir, s + ".png")) for s in stems
        ]
        res = run_jobs(
            functools.partial(_convert_one, lut=lut), jobs, f"coco-stuff {split}", workers
        )
        summary[split] = {k: res.count(k) for k in ("written", "skipped")}
    return summary


def main(argv=None) -> int:
    parser = base_argument_parser(
        "Convert COCO-Stuff-164k stuffthingmaps to 171 contiguous classes "
        "(coco/stuffthingmaps_detectron2).",
        datasets_root(),
    )
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    args = parser.parse_args(argv)
    return run_cli(prepare_coco_stuff, args.root, args.splits, args.workers, debug=args.debug)
