"""PASCAL VOC 2012 train-aug: VOC2012 images + SBD-augmented masks (``SegmentationClassAug``).

Names (images ``<root>/VOCdevkit/VOC2012/JPEGImages``; ids from
``ImageSets/Segmentation/trainaug.txt``, which ``datasets/prepare_voc_aug_sem_seg.py`` writes
when absent as every ``SegmentationClassAug`` id not in ``val.txt``):

- ``voc20_sem_seg_trainaug``: labels ``annotations_detectron2/trainaug/*.png`` (written by the
  same script), 20 classes (``class_names/voc20.txt``), background ignored (255).
- ``voc21_sem_seg_trainaug``: labels ``SegmentationClassAug/*.png`` as they are, 21 classes with
  ``background`` = 0 (the ``voc21_sem_seg_*`` convention of ``register_voc.py``), ignore 255.

Evaluate on ``voc20_sem_seg_val`` / ``voc21_sem_seg_val`` (``register_voc.py``).
"""

import os

from .common import datasets_root, list_sem_seg_files, load_class_names, register_sem_seg
from .register_voc import VOC_SUBDIR, voc_split_ids

__all__ = ["register_all_voc_aug"]

_HINT = (
    "Extract VOCtrainval_11-May-2012.tar, unzip SegmentationClassAug.zip into "
    "VOCdevkit/VOC2012 and run `python datasets/prepare_voc_aug_sem_seg.py` "
    "(see datasets/README.md)."
)


def register_all_voc_aug(root: str, prefix: str = "") -> None:
    """Register ``<prefix>voc20_sem_seg_trainaug`` and ``<prefix>voc21_sem_seg_trainaug``."""
    voc_root = os.path.join(root, VOC_SUBDIR)
    image_root = os.path.join(voc_root, "JPEGImages")
    voc20 = load_class_names("voc20.txt")
    variants = (
        ("voc20", voc20, os.path.join(voc_root, "annotations_detectron2", "trainaug")),
        ("voc21", ["background"] + voc20, os.path.join(voc_root, "SegmentationClassAug")),
    )
    for key, classes, gt_root in variants:
        name = f"{prefix}{key}_sem_seg_trainaug"
        register_sem_seg(
            name,
            lambda name=name, gt_root=gt_root: list_sem_seg_files(
                name,
                image_root,
                gt_root,
                ids=voc_split_ids(voc_root, "trainaug", name, _HINT),
                prepare_hint=_HINT,
            ),
            stuff_classes=classes,
            image_root=image_root,
            sem_seg_root=gt_root,
            ignore_label=255,
        )


register_all_voc_aug(datasets_root())
