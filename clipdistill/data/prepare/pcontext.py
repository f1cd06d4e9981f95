"""PASCAL Context: ``trainval/<id>.mat`` LabelMaps → PC-59 PNGs and PC-459 16-bit TIFFs.

Input (``$DETECTRON2_DATASETS/VOCdevkit/VOC2010``)::

    JPEGImages/                  VOCtrainval_03-May-2010.tar
    trainval/<id>.mat            trainval.tar.gz; key ``LabelMap``, 1-based indices into labels.txt
    labels.txt                   optional (trainval.tar.gz); if present, compared with our list
                                 (warning on mismatch)
    pascalcontext_val.txt        the 5104 val ids (the list OVSeg/CAT-Seg use)
    pascalcontext_train.txt      optional, one id a line; only needed for --splits train

Output (``annotations_detectron2/``):

- ``pc459_<split>/<id>.tif``: uint16 TIFF, label = LabelMap - 1 (``accordion`` = 0 ...
  ``wool`` = 458, ``class_names/pcontext459.txt``); a raw 0 → 65535 (ignore).
- ``pc59_sorted_<split>/<id>.png``: uint8 PNG, the 59 classes 0..58 in the order of their sorted
  459-ids (order A of SAN/CAT-Seg/FC-CLIP, ``class_names/pcontext59{,_ids}.txt``); everything
  else → 255. The folder is deliberately not OVSeg/CAT-Seg's ``pc59_val``: OVSeg writes that
  folder in another class order (``59_labels.txt``), and a re-run skips existing files.
"""

import functools
import os
import re
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...utils.io import atomic_save_image, remove_stale_temps
from ..datasets.common import datasets_root, load_class_ids, load_class_names
from .common import (
    PrepareError,
    base_argument_parser,
    make_lut,
    output_is_complete,
    read_id_list,
    run_cli,
    run_jobs,
)

__all__ = [
    "PC_SUBDIR",
    "load_label_map",
    "pc59_lut",
    "convert_pc459",
    "convert_pc59",
    "check_labels_txt",
    "prepare_pcontext",
    "main",
]

PC_SUBDIR = os.path.join("VOCdevkit", "VOC2010")
NUM_459 = 459
IGNORE_59 = 255
IGNORE_459 = 65535


def load_label_map(path: str) -> np.ndarray:
    """Read ``LabelMap`` from a PASCAL Context ``.mat`` file as an integer 2-D array."""
    import scipy.io

    if not os.path.isfile(path):
        raise PrepareError(f"Missing PASCAL Context annotation: {path}")
    try:
        mat = scipy.io.loadmat(path, variable_names=["LabelMap"])
    except Exception as e:
        raise PrepareError(f"Damaged or unreadable .mat file: {path} ({e})") from e
    if "LabelMap" not in mat:
        raise PrepareError(f"No 'LabelMap' variable in {path}")
    label = mat["LabelMap"]
    if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
        raise PrepareError(
            f"'LabelMap' in {path} is not a 2-D integer array ({label.dtype}, {label.shape})"
        )
    if label.size and (label.min() < 0 or label.max() > NUM_459):
        raise PrepareError(
            f"'LabelMap' in {path} has values outside 0..{NUM_459} "
            f"(min {label.min()}, max {label.max()})"
        )
    return label


def pc59_lut() -> np.ndarray:
    """uint8 LUT over raw 459-ids 0..459 → PC-59 label 0..58 (order A) or 255."""
    ids = load_class_ids("pcontext59_ids.txt")
    return make_lut({pc_id: i for i, pc_id in enumerate(ids)}, NUM_459 + 1, IGNORE_59)


def convert_pc459(label_map: np.ndarray) -> np.ndarray:
    """LabelMap (1-based, 0 = none) → uint16 0..458 with 65535 ignore."""
    out = label_map.astype(np.int64) - 1
    out[out < 0] = IGNORE_459
    return out.astype(np.uint16)


def convert_pc59(label_map: np.ndarray, lut: Optional[np.ndarray] = None) -> np.ndarray:
    """LabelMap → uint8 PC-59 labels (order A), 255 elsewhere."""
    if lut is None:
        lut = pc59_lut()
    return lut[label_map.astype(np.int64)]


def check_labels_txt(path: str) -> List[Tuple[int, Optional[str], str]]:
    """Compare ``labels.txt`` ("<idx>: <name>" lines) with the shipped PC-459 list.

    Names are compared without spaces and case (some copies write ``airconditioner``). A mismatch
    is reported as a warning, not an error: the conversion uses ids only.

    Returns:
        list: ``(id, name in labels.txt or None, expected name)`` for every mismatch.
    """
    names459 = load_class_names("pcontext459.txt")
    found = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"\s*(\d+)\s*:\s*(.+?)\s*$", line)
            if m:
                found[int(m.group(1))] = m.group(2)

    def norm(s):
        return s.replace(" ", "").lower()

    bad = [
        (i, found.get(i), n)
        for i, n in enumerate(names459, start=1)
        if i not in found or norm(found[i]) != norm(n)
    ]
    if bad:
        warnings.warn(
            f"{path} differs from class_names/pcontext459.txt in {len(bad)} entries "
            f"(id, labels.txt, expected): {bad[:5]}"
        )
    return bad


def _convert_one(job, lut, do59, do459):
    mat_path, dst59, dst459 = job
    need59 = do59 and not output_is_complete(dst59)
    need459 = do459 and not output_is_complete(dst459)
    if not (need59 or need459):
        return "skipped"
    label = load_label_map(mat_path)
    if need459:
        atomic_save_image(dst459, convert_pc459(label))
    if need59:
        atomic_save_image(dst59, convert_pc59(label, lut))
    return "written"


def prepare_pcontext(
    root: str,
    splits: Sequence[str] = ("val",),
    variants: Sequence[str] = ("59", "459"),
    workers: int = 1,
) -> Dict[str, Dict[str, int]]:
    """Write PC-59 and/or PC-459 labels for the ids in ``pascalcontext_<split>.txt``.

    Returns:
        dict: ``{split: {"written": n, "skipped": m}}``.
    """
    pc_root = os.path.join(root, PC_SUBDIR)
    labels_txt = os.path.join(pc_root, "labels.txt")
    if os.path.isfile(labels_txt):
        check_labels_txt(labels_txt)
    lut = pc59_lut()
    do59, do459 = "59" in variants, "459" in variants
    summary = {}
    for split in splits:
        ids = read_id_list(
            os.path.join(pc_root, f"pascalcontext_{split}.txt"), f"PASCAL Context {split} list"
        )
        out = os.path.join(pc_root, "annotations_detectron2")
        dir59, dir459 = os.path.join(out, f"pc59_sorted_{split}"), os.path.join(
            out, f"pc459_{split}"
        )
        for d, on in ((dir59, do59), (dir459, do459)):
            if on:
                os.makedirs(d, exist_ok=True)
                remove_stale_temps(d)
        jobs = [
            (
                os.path.join(pc_root, "trainval", f"{i}.mat"),
                os.path.join(dir59, f"{i}.png"),
                os.path.join(dir459, f"{i}.tif"),
            )
            for i in ids
        ]
        fn = functools.partial(_convert_one, lut=lut, do59=do59, do459=do459)
        res = run_jobs(fn, jobs, f"pascal-context {split}", workers)
        summary[split] = {k: res.count(k) for k in ("written", "skipped")}
    return summary


def main(argv=None) -> int:
    parser = base_argument_parser(
        "Convert PASCAL Context trainval/*.mat LabelMaps to PC-59 (uint8 PNG) and PC-459 "
        "(uint16 TIFF) labels in VOCdevkit/VOC2010/annotations_detectron2.",
        datasets_root(),
    )
    parser.add_argument(
        "--splits",
        nargs="+",
        default=["val"],
        choices=["train", "val"],
        help="each split needs VOCdevkit/VOC2010/pascalcontext_<split>.txt (default: val)",
    )
    parser.add_argument("--variants", nargs="+", default=["59", "459"], choices=["59", "459"])
    args = parser.parse_args(argv)
    return run_cli(
        prepare_pcontext, args.root, args.splits, args.variants, args.workers, debug=args.debug
    )
