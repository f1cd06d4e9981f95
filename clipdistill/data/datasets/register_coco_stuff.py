"""COCO-Stuff-164k, 171 classes (80 things + 91 stuff), as in SAN/OVSeg/CAT-Seg.

Names: ``coco_stuff_sem_seg_train`` (118,287 images) and ``coco_stuff_sem_seg_val`` (5,000):
images ``<root>/coco/{train2017,val2017}``, labels ``<root>/coco/stuffthingmaps_detectron2/
{train2017,val2017}`` (uint8 PNG, ignore 255) written by ``datasets/prepare_coco_stuff_sem_seg.py``.
Classes ``class_names/coco_stuff171.txt``; the COCO ids (1..182 minus 11 unused) are
``class_names/coco_stuff171_ids.txt`` and become ``stuff_dataset_id_to_contiguous_id``, which the
evaluator uses for the ``category_id`` of ``sem_seg_predictions.json``.

``coco_stuff_zs_sem_seg_{train,val}``: the same files with the zero-shot split of ZegFormer and
ZegCLIP, 156 seen and 15 unseen classes (``class_names/coco_stuff171_unseen.txt``: cow, giraffe,
suitcase, frisbee, skateboard, carrot, scissors, cardboard, clouds, grass, playingfield, river,
road, tree, wall-concrete); unseen pixels are ignored in training (ZegFormer writes them as 255,
ZegCLIP maps them out of the loss; here the mapper does it), evaluation reports seen / unseen
mIoU and hIoU over all 171 classes. Class order stays the standard 171 order (ZegFormer's
evaluation set lists the 15 unseen last; the metrics do not depend on the order).
"""

import itertools
import os

from .common import (
    datasets_root,
    list_sem_seg_files,
    load_class_ids,
    load_class_names,
    register_sem_seg,
)

__all__ = ["COCO_SUBDIR", "register_all_coco_stuff"]

COCO_SUBDIR = "coco"
_HINT = (
    "Unzip train2017.zip, val2017.zip and stuffthingmaps_trainval2017.zip into "
    "$DETECTRON2_DATASETS/coco and run `python datasets/prepare_coco_stuff_sem_seg.py` "
    "(see datasets/README.md)."
)


def register_all_coco_stuff(root: str, prefix: str = "") -> None:
    """Register ``<prefix>coco_stuff_sem_seg_{train,val}`` and
    ``<prefix>coco_stuff_zs_sem_seg_{train,val}`` under ``<root>/coco``.

    Args:
        root (str): the datasets root.
        prefix (str): prepended to every name (tests register temporary copies this way).
    """
    classes = load_class_names("coco_stuff171.txt")
    ids = load_class_ids("coco_stuff171_ids.txt")
    assert len(classes) == len(ids) == 171, (len(classes), len(ids))
    unseen = load_class_names("coco_stuff171_unseen.txt")
    coco = os.path.join(root, COCO_SUBDIR)
    for (split, dirname), (variant, unseen_classes) in itertools.product(
        (("train", "train2017"), ("val", "val2017")), (("", None), ("_zs", unseen))
    ):
        name = f"{prefix}coco_stuff{variant}_sem_seg_{split}"
        image_root = os.path.join(coco, dirname)
        gt_root = os.path.join(coco, "stuffthingmaps_detectron2", dirname)
        register_sem_seg(
            name,
            lambda name=name, image_root=image_root, gt_root=gt_root: list_sem_seg_files(
                name, image_root, gt_root, prepare_hint=_HINT
            ),
            stuff_classes=classes,
            image_root=image_root,
            sem_seg_root=gt_root,
            ignore_label=255,
            stuff_dataset_id_to_contiguous_id={cid: i for i, cid in enumerate(ids)},
            unseen_classes=unseen_classes,
        )


register_all_coco_stuff(datasets_root())
