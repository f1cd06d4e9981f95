"""PASCAL VOC 2012 train-aug (SBD-augmented masks, DeepLab's ``SegmentationClassAug``).

Input (``$DETECTRON2_DATASETS/VOCdevkit/VOC2012``)::

    JPEGImages/                              VOCtrainval_11-May-2012.tar
    ImageSets/Segmentation/val.txt           VOCtrainval_11-May-2012.tar
    SegmentationClassAug/<id>.png            SegmentationClassAug.zip; 0 background, 1..20, 255 void
    ImageSets/Segmentation/trainaug.txt      optional; written by this script when absent

Output:

- ``ImageSets/Segmentation/trainaug.txt`` (only when absent): every ``SegmentationClassAug`` id
  that is not in ``val.txt`` (sorted). An existing list (e.g. the usual 10,582-id one) is used
  as is, after checking that it shares no id with ``val.txt``.
- ``annotations_detectron2/trainaug/<id>.png``: VOC-20 labels, 0 → 255, k → k-1, 255 → 255.

VOC-21 train-aug (background = class 0) reads ``SegmentationClassAug`` directly.
"""

import os
from typing import Dict


from ..datasets.common import datasets_root
from ..datasets.register_voc import VOC_SUBDIR
from .voc import voc_to_voc20
from ...utils.io import atomic_save_image, atomic_write, remove_stale_temps
from .common import (
    PrepareError,
    base_argument_parser,
    output_is_complete,
    read_id_list,
    read_label,
    run_cli,
    run_jobs,
)

__all__ = ["TRAINAUG_LIST", "prepare_voc_aug", "main"]

TRAINAUG_LIST = os.path.join("ImageSets", "Segmentation", "trainaug.txt")


def _convert_one(job):
    src, dst = job
    if output_is_complete(dst):
        return "skipped"
    raw = read_label(src, "SegmentationClassAug mask")
    try:
        out = voc_to_voc20(raw)
    except ValueError as e:
        raise PrepareError(f"{src}: {e}") from e
    atomic_save_image(dst, out)
    return "written"


def prepare_voc_aug(root: str, workers: int = 1) -> Dict[str, int]:
    """Write (if absent) ``trainaug.txt`` and the VOC-20 train-aug masks; returns counts."""
    voc = os.path.join(root, VOC_SUBDIR)
    aug_dir = os.path.join(voc, "SegmentationClassAug")
    if not os.path.isdir(aug_dir):
        raise PrepareError(f"Missing folder {aug_dir}: unzip SegmentationClassAug.zip into {voc}")
    val_ids = set(
        read_id_list(os.path.join(voc, "ImageSets", "Segmentation", "val.txt"), "VOC val list")
    )
    list_path = os.path.join(voc, TRAINAUG_LIST)
    if os.path.isfile(list_path):
        ids = read_id_list(list_path, "VOC train-aug list")
        overlap = sorted(val_ids.intersection(ids))
        if overlap:
            raise PrepareError(
                f"{list_path} shares {len(overlap)} ids with val.txt (e.g. {overlap[:3]})"
            )
    else:
        stems = sorted(f[:-4] for f in os.listdir(aug_dir) if f.endswith(".png"))
        ids = [s for s in stems if s not in val_ids]
        if not ids:
            raise PrepareError(f"No train-aug masks in {aug_dir}")
        with atomic_write(list_path, "w") as f:
            f.writelines(f"{i}\n" for i in ids)
    missing = [i for i in ids if not os.path.isfile(os.path.join(voc, "JPEGImages", f"{i}.jpg"))]
    if missing:
        raise PrepareError(
            f"{len(missing)} train-aug ids have no image, e.g. "
            f"{os.path.join(voc, 'JPEGImages', missing[0] + '.jpg')}"
        )
    dst_dir = os.path.join(voc, "annotations_detectron2", "trainaug")
    os.makedirs(dst_dir, exist_ok=True)
    remove_stale_temps(dst_dir)
    jobs = [(os.path.join(aug_dir, f"{i}.png"), os.path.join(dst_dir, f"{i}.png")) for i in ids]
    res = run_jobs(_convert_one, jobs, "voc trainaug", workers)
    return {k: res.count(k) for k in ("written", "skipped")}


def main(argv=None) -> int:
    parser = base_argument_parser(
        "VOC 2012 train-aug: write ImageSets/Segmentation/trainaug.txt (if absent) and the VOC-20 "
        "masks in VOCdevkit/VOC2012/annotations_detectron2/trainaug.",
        datasets_root(),
    )
    args = parser.parse_args(argv)
    return run_cli(prepare_voc_aug, args.root, args.workers, debug=args.debug)
