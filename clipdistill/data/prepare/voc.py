"""PASCAL VOC 2012: raw ``SegmentationClass`` PNGs -> VOC-20 labels (background ignored).

Raw encoding: 0 = background, 1..20 = classes, 255 = void. VOC-20 (SAN/OVSeg/CAT-Seg convention):
0 -> 255, k -> k - 1, 255 -> 255, written to ``annotations_detectron2/<split>/<id>.png``.
"""
import os
from typing import List

import numpy as np
from PIL import Image
from tqdm import tqdm

__all__ = ["voc_to_voc20", "read_split_ids", "prepare_voc20"]


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
        raise FileNotFoundError(f"VOC split list {path} does not exist")
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def _read_label(path: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except Exception as e:  # PIL raises several types for truncated/garbage files
        raise ValueError(f"cannot read VOC label {path}: {e}") from e


def prepare_voc20(voc_root: str, splits=("train", "val"), progress: bool = True) -> int:
    """Write VOC-20 labels for ``splits``; skips finished files, writes atomically.

    Args:
        voc_root (str): the ``VOCdevkit/VOC2012`` folder.
    Returns:
        int: number of files written (0 when everything was already there).
    """
    src_dir = os.path.join(voc_root, "SegmentationClass")
    if not os.path.isdir(src_dir):
        raise FileNotFoundError(f"{src_dir} does not exist: extract VOCtrainval_11-May-2012.tar")
    written = 0
    for split in splits:
        out_dir = os.path.join(voc_root, "annotations_detectron2", split)
        os.makedirs(out_dir, exist_ok=True)
        ids = read_split_ids(voc_root, split)
        for image_id in tqdm(ids, desc=f"VOC-20 {split}", disable=not progress):
            dst = os.path.join(out_dir, image_id + ".png")
            if os.path.isfile(dst):
                continue
            src = os.path.join(src_dir, image_id + ".png")
            if not os.path.isfile(src):
                raise FileNotFoundError(f"VOC label {src} (listed in {split}.txt) is missing")
            try:
                out = voc_to_voc20(_read_label(src))
            except ValueError as e:
                raise ValueError(f"{src}: {e}") from e
            tmp = dst + ".tmp.png"
            Image.fromarray(out).save(tmp)
            os.replace(tmp, dst)
            written += 1
    return written
