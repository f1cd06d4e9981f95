"""ADE20K: the 150-class SceneParsing shift and the 847-class ADE20K-Full conversion.

ADE-150 (``$DETECTRON2_DATASETS/ADEChallengeData2016``, ADEChallengeData2016.zip)::

    images/{training,validation}/*.jpg
    annotations/{training,validation}/*.png       uint8, 0 = other, 1..150 = classes
    annotations_detectron2/{training,validation}  generated: uint8, k → k-1, 0 → 255 (ignore)

ADE-847 (``$DETECTRON2_DATASETS/ADE20K_2021_17_01``)::

    index_ade20k.pkl                 dict with lists 'folder' and 'filename'; folders are relative
                                     to $DETECTRON2_DATASETS (e.g. ADE20K_2021_17_01/images/ADE/...)
    images/ADE/.../<file>.jpg        image; <file>_seg.png: class id = (R/10)*256 + G
    images_detectron2/{training,validation}/<file>.jpg       generated (re-encoded, maybe resized)
    annotations_detectron2/{training,validation}/<file>.tif  generated: uint16 trainId, 65535 ignore

An image whose short side exceeds 512 is resized to short side 512 (image bilinear, label
nearest), as in MaskFormer's ``prepare_ade20k_full_sem_seg.py``; ADE-847 is evaluated at that size.
The split is ``validation`` when the file name's second ``_`` field is ``val``.
"""

import functools
import os
from typing import Dict, Sequence, Tuple

import cv2
import numpy as np

from ...utils.io import atomic_save_image, remove_stale_temps
from ...utils.safe_pickle import restricted_load
from ..datasets.common import datasets_root, load_class_ids
from .common import (
    PrepareError,
    base_argument_parser,
    make_lut,
    output_is_complete,
    read_image,
    read_label,
    run_cli,
    run_jobs,
)

__all__ = [
    "ADE150_SUBDIR",
    "ADE847_SUBDIR",
    "convert_ade150",
    "decode_ade_full_seg",
    "ade847_lut",
    "resized_shape",
    "prepare_ade20k_150",
    "prepare_ade20k_full",
    "main_150",
    "main_full",
]

ADE150_SUBDIR = "ADEChallengeData2016"
ADE847_SUBDIR = "ADE20K_2021_17_01"
ADE150_SPLITS = ("training", "validation")
MAX_SHORT_SIDE = 512
IGNORE_847 = 65535
# (R // 10) * 256 + G with R, G uint8 stays below 26 * 256
_ADE_FULL_ID_RANGE = 26 * 256


# ------------------------------------------------------------------------------------ ADE-150
def convert_ade150(raw: np.ndarray) -> np.ndarray:
    """uint8 0..150 → uint8 0..149 with 0 → 255 (the uint8 wrap of ``raw - 1``)."""
    return (raw.astype(np.int16) - 1).astype(np.uint8)


def _convert_150(job):
    src, dst = job
    if output_is_complete(dst):
        return "skipped"
    raw = read_label(src, "ADE20K annotation")
    if raw.dtype != np.uint8 or raw.max(initial=0) > 150:
        raise PrepareError(f"Expected uint8 values 0..150 in ADE20K annotation: {src}")
    atomic_save_image(dst, convert_ade150(raw))
    return "written"


def prepare_ade20k_150(
    root: str, splits: Sequence[str] = ADE150_SPLITS, workers: int = 1
) -> Dict[str, Dict[str, int]]:
    """Shift ``ADEChallengeData2016/annotations/<split>`` to ``annotations_detectron2/<split>``."""
    base = os.path.join(root, ADE150_SUBDIR)
    summary = {}
    for split in splits:
        src_dir = os.path.join(base, "annotations", split)
        dst_dir = os.path.join(base, "annotations_detectron2", split)
        if not os.path.isdir(src_dir):
            raise PrepareError(
                f"Missing folder {src_dir}: unzip ADEChallengeData2016.zip in {root}"
            )
        os.makedirs(dst_dir, exist_ok=True)
        remove_stale_temps(dst_dir)
        names = sorted(f for f in os.listdir(src_dir) if f.endswith(".png"))
        if not names:
            raise PrepareError(f"No .png files in {src_dir}")
        jobs = [(os.path.join(src_dir, n), os.path.join(dst_dir, n)) for n in names]
        res = run_jobs(_convert_150, jobs, f"ade20k-150 {split}", workers)
        summary[split] = {k: res.count(k) for k in ("written", "skipped")}
    return summary


# ------------------------------------------------------------------------------------ ADE-847
def decode_ade_full_seg(seg_rgb: np.ndarray) -> np.ndarray:
    """ADE20K ``*_seg.png`` (H,W,3 uint8) → int32 object-class ids, ``(R/10)*256 + G``."""
    r = seg_rgb[..., 0].astype(np.int32)
    g = seg_rgb[..., 1].astype(np.int32)
    return (r // 10) * 256 + g


def ade847_lut() -> np.ndarray:
    """uint16 LUT over class ids → trainId 0..846, 65535 for every other id."""
    ids = load_class_ids("ade847_ids.txt")
    return make_lut(
        {cid: i for i, cid in enumerate(ids)}, _ADE_FULL_ID_RANGE, IGNORE_847, np.uint16
    )


def resized_shape(h: int, w: int, max_short: int = MAX_SHORT_SIDE) -> Tuple[int, int]:
    """(h, w) after resizing the short side to ``max_short`` when it is larger (else unchanged)."""
    if w >= h > max_short:
        return max_short, int(round(w / float(h) * max_short))
    if h >= w > max_short:
        return int(round(h / float(w) * max_short)), max_short
    return h, w


def ade_full_split(filename: str) -> str:
    parts = filename.split("_")
    return "validation" if len(parts) > 1 and parts[1] == "val" else "training"


def _convert_847(job, lut, jpeg_quality):
    img_src, img_dst, lab_dst = job
    if output_is_complete(img_dst) and output_is_complete(lab_dst):
        return "skipped"
    seg_src = os.path.splitext(img_src)[0] + "_seg.png"
    img = read_image(img_src, "RGB", "ADE20K image")
    seg = read_image(seg_src, "RGB", "ADE20K segmentation (_seg.png)")
    if seg.shape[:2] != img.shape[:2]:
        raise PrepareError(
            f"Size mismatch: {seg_src} is {seg.shape[1]}x{seg.shape[0]}, "
            f"{img_src} is {img.shape[1]}x{img.shape[0]}"
        )
    label = lut[decode_ade_full_seg(seg)]
    h, w = img.shape[:2]
    nh, nw = resized_shape(h, w)
    if (nh, nw) != (h, w):
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, (nw, nh), interpolation=cv2.INTER_NEAREST)
    # label first: a complete label with a missing image is redone as a pair anyway
    atomic_save_image(lab_dst, np.ascontiguousarray(label, dtype=np.uint16))
    atomic_save_image(img_dst, np.ascontiguousarray(img), quality=jpeg_quality)
    return "written"


def prepare_ade20k_full(
    root: str,
    splits: Sequence[str] = ADE150_SPLITS,
    workers: int = 1,
    jpeg_quality: int = 75,
) -> Dict[str, Dict[str, int]]:
    """Convert the ADE20K-Full images listed in ``index_ade20k.pkl`` to 847-class labels.

    Args:
        jpeg_quality: quality of the re-encoded images (75 = PIL's default, as in MaskFormer).
    """
    base = os.path.join(root, ADE847_SUBDIR)
    index_path = os.path.join(base, "index_ade20k.pkl")
    if not os.path.isfile(index_path):
        raise PrepareError(f"Missing ADE20K index: {index_path}")
    try:
        with open(index_path, "rb") as f:
            # ADE20K's own index is a pickle: read with a restricted unpickler (containers and
            # numpy arrays only), so a crafted file cannot run code
            index = restricted_load(f)
        folders, filenames = list(index["folder"]), list(index["filename"])
    except Exception as e:
        raise PrepareError(f"Damaged or unreadable ADE20K index: {index_path} ({e!r})") from e
    if len(folders) != len(filenames):
        raise PrepareError(f"'folder' and 'filename' differ in length in {index_path}")
    jobs = {s: [] for s in splits}
    for folder, filename in zip(folders, filenames):
        split = ade_full_split(filename)
        if split not in jobs:
            continue
        stem = os.path.splitext(filename)[0]
        jobs[split].append(
            (
                os.path.join(root, folder, filename),
                os.path.join(base, "images_detectron2", split, stem + ".jpg"),
                os.path.join(base, "annotations_detectron2", split, stem + ".tif"),
            )
        )
    lut = ade847_lut()
    fn = functools.partial(_convert_847, lut=lut, jpeg_quality=jpeg_quality)
    summary = {}
    for split in splits:
        for kind in ("images_detectron2", "annotations_detectron2"):
            d = os.path.join(base, kind, split)
            os.makedirs(d, exist_ok=True)
            remove_stale_temps(d)
        res = run_jobs(fn, jobs[split], f"ade20k-847 {split}", workers)
        summary[split] = {k: res.count(k) for k in ("written", "skipped")}
    return summary


# ------------------------------------------------------------------------------------ CLIs
def _splits_arg(parser, default):
    parser.add_argument("--splits", nargs="+", default=list(default), choices=ADE150_SPLITS)


def main_150(argv=None) -> int:
    parser = base_argument_parser(
        "ADE20K-150: write ADEChallengeData2016/annotations_detectron2 (k → k-1, 0 → 255).",
        datasets_root(),
    )
    _splits_arg(parser, ADE150_SPLITS)
    args = parser.parse_args(argv)
    return run_cli(prepare_ade20k_150, args.root, args.splits, args.workers, debug=args.debug)


def main_full(argv=None) -> int:
    parser = base_argument_parser(
        "ADE20K-847: write ADE20K_2021_17_01/{images,annotations}_detectron2 (uint16 TIFF, "
        "65535 ignore; short side resized to 512 when larger).",
        datasets_root(),
    )
    _splits_arg(parser, ADE150_SPLITS)
    parser.add_argument("--jpeg-quality", type=int, default=75)
    args = parser.parse_args(argv)
    return run_cli(
        prepare_ade20k_full,
        args.root,
        args.splits,
        args.workers,
        args.jpeg_quality,
        debug=args.debug,
    )
