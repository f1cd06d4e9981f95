"""PASCAL Context (VOC2010 images): PC-59 and PC-459.

Names (images ``<root>/VOCdevkit/VOC2010/JPEGImages``; labels in
``<root>/VOCdevkit/VOC2010/annotations_detectron2/`` written by
``datasets/prepare_pcontext_sem_seg.py``; the image folder holds every VOC2010 image, the
dataset is the set of label files, each of which must have its image):

- ``pcontext59_sem_seg_{train,val}``: labels ``pc59_sorted_<split>/*.png``, uint8, ignore 255;
  classes ``class_names/pcontext59.txt`` in the order of their sorted 459-ids (SAN/CAT-Seg/
  FC-CLIP; not OVSeg's ``59_labels.txt`` order).
- ``pcontext459_sem_seg_{train,val}``: labels ``pc459_<split>/*.tif``, uint16, ignore 65535;
  classes ``class_names/pcontext459.txt`` (``labels.txt`` order, spaced names as in SAN/OVSeg).

Val has 5,104 images; train needs a user-provided ``pascalcontext_train.txt`` (see README).
"""

import os

from .common import datasets_root, list_sem_seg_files, load_class_names, register_sem_seg

__all__ = ["PC_SUBDIR", "register_all_pcontext"]

PC_SUBDIR = os.path.join("VOCdevkit", "VOC2010")
_HINT = (
    "Extract VOCtrainval_03-May-2010.tar and trainval.tar.gz, add pascalcontext_val.txt, and run "
    "`python datasets/prepare_pcontext_sem_seg.py` (see datasets/README.md)."
)


def register_all_pcontext(root: str, prefix: str = "") -> None:
    """Register ``<prefix>pcontext59_sem_seg_{train,val}`` and ``<prefix>pcontext459_...``."""
    pc_root = os.path.join(root, PC_SUBDIR)
    image_root = os.path.join(pc_root, "JPEGImages")
    variants = (
        ("pcontext59", "pcontext59.txt", "pc59_sorted", "png", 255),
        ("pcontext459", "pcontext459.txt", "pc459", "tif", 65535),
    )
    for key, class_file, gt_dir, gt_ext, ignore in variants:
        classes = load_class_names(class_file)
        for split in ("train", "val"):
            name = f"{prefix}{key}_sem_seg_{split}"
            gt_root = os.path.join(pc_root, "annotations_detectron2", f"{gt_dir}_{split}")
            register_sem_seg(
                name,
                lambda name=name, gt_root=gt_root, gt_ext=gt_ext: list_sem_seg_files(
                    name, image_root, gt_root, gt_ext=gt_ext, prepare_hint=_HINT
                ),
                stuff_classes=classes,
                image_root=image_root,
                sem_seg_root=gt_root,
                ignore_label=ignore,
            )


register_all_pcontext(datasets_root())
