"""PASCAL VOC 2012: raw ``SegmentationClass`` PNGs -> VOC-20 labels (background ignored).

``$DETECTRON2_DATASETS/VOCdevkit/VOC2012`` (VOCtrainval_11-May-2012.tar)::

    JPEGImages/*.jpg
    SegmentationClass/*.png                 palette PNG: 0 = background, 1..20, 255 = void
    ImageSets/Segmentation/{train,val}.txt
    annotations_detectron2/{train,val}      generated: 0 -> 255, k -> k-1, 255 -> 255

The VOC-20 convention is SAN's, OVSeg's and CAT-Seg's. VOC-21 (``voc21_*``) reads
``SegmentationClass`` as is (background = class 0, FC-CLIP's convention) and needs no conversion.
"""

import os
from typing import List, Sequence

import numpy as np
from tqdm import tqdm

from ...utils.io import atomic_save_image, remove_stale_temps
from ..datasets.common import datasets_root
from ..datasets.register_voc import VOC_SUBDIR
from .common import PrepareError, base_argument_parser, output_is_complete
from .common import read_id_list, read_label, run_cli

__all__ = ["voc_to_voc20", "read_split_ids", "prepare_voc20", "main"]


def voc_to_voc20(label: np.ndarray) -> np.ndarray:
    """Map a raw VOC label map (0 bg, 1..20, 255 void) to VOC-20 (0..19, 255 ignore)."""
    label = np.asarray(label)
    bad = np.setdiff1d(np.unique(label), np.r_[np.arange(21), 255])
    if bad.size:
        raise ValueError(f"unexpected VOC label values {bad.tolist()} (expected 0..20 or 255)")
    out = label.astype(np.int16) - 1
    out[(label == 0) | (label == 255)] = 255
    return out.astype(np.uint8)


def read_split_ids(voc_root: str, split: str) -> List[str]:
    """Image ids listed in ``ImageSets/Segmentation/<split>.txt``."""
    path = os.path.join(voc_root, "ImageSets", "Segmentation", f"{split}.txt")
    if not os.path.isfile(path):
        raise PrepareError(f"VOC split list {path} does not exist")
    return read_id_list(path, f"VOC {split} list")


def prepare_voc20(
    voc_root: str, splits: Sequence[str] = ("train", "val"), progress: bool = True
) -> int:
    """Write VOC-20 labels for ``splits``; skips finished files, writes atomically.

    Args:
        voc_root (str): the ``VOCdevkit/VOC2012`` folder.
        splits: split lists to convert.
        progress (bool): show a progress bar.
    Returns:
        int: number of files written (0 when everything was already there).
    """
    src_dir = os.path.join(voc_root, "SegmentationClass")
    if not os.path.isdir(src_dir):
        raise PrepareError(f"{src_dir} does not exist: extract VOCtrainval_11-May-2012.tar")
    written = 0
    for split in splits:
        out_dir = os.path.join(voc_root, "annotations_detectron2", split)
        os.makedirs(out_dir, exist_ok=True)
        remove_stale_temps(out_dir)
        for image_id in tqdm(
            read_split_ids(voc_root, split), desc=f"VOC-20 {split}", disable=not progress
        ):
            dst = os.path.join(out_dir, image_id + ".png")
            if output_is_complete(dst):
                continue
            src = os.path.join(src_dir, image_id + ".png")
            if not os.path.isfile(src):
                raise PrepareError(f"VOC label {src} (listed in {split}.txt) is missing")
            try:
                out = voc_to_voc20(read_label(src, "VOC label"))
            except ValueError as e:
                raise PrepareError(f"{src}: {e}") from e
            atomic_save_image(dst, out)
            written += 1
    return written


def main(argv=None) -> int:
    parser = base_argument_parser(
        "VOC 2012: write VOCdevkit/VOC2012/annotations_detectron2 (VOC-20: 0 -> 255, k -> k-1).",
        datasets_root(),
    )
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    args = parser.parse_args(argv)
    return run_cli(
        prepare_voc20, os.path.join(args.root, VOC_SUBDIR), args.splits, debug=args.debug
    )
