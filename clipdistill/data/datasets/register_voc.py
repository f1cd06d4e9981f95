"""PASCAL VOC 2012 semantic segmentation (VOCdevkit layout), plus a generated VOC-layout set.

Names (none collides with detectron2's ``voc_2012_*`` *detection* datasets):

- ``voc20_sem_seg_{train,val}``: 20 classes, background ignored (255); labels from
  ``annotations_detectron2/<split>`` written by ``datasets/prepare_voc_sem_seg.py``.
- ``voc21_sem_seg_{train,val}``: 21 classes, ``background`` is class 0 (the raw VOC encoding, as in
  FC-CLIP); labels read directly from ``SegmentationClass``.
- ``voc20_zs_sem_seg_{train,val}``: VOC-20 (same files) with the zero-shot split of SPNet,
  ZegFormer and ZegCLIP: 15 seen classes, 5 unseen (``class_names/voc20_unseen.txt``: potted
  plant, sheep, sofa, train, tv monitor); unseen pixels are ignored in training, evaluation
  reports seen / unseen mIoU and hIoU.
- ``voc20_toy_sem_seg_{train,val}``: a small generated set in the VOC layout
  (``tools/make_toy_dataset.py --dataset voc_toy``), read by the same code, under
  ``<root>/voc_toy``; the tests and the small configs of the other architectures use it.
"""

import os

from ...utils.errors import DataError
from .common import datasets_root, list_sem_seg_files, load_class_names, register_sem_seg

__all__ = ["register_voc", "register_all_voc", "voc_split_ids", "VOC_SUBDIR", "VOC_TOY_SUBDIR"]

VOC_SUBDIR = os.path.join("VOCdevkit", "VOC2012")
VOC_TOY_SUBDIR = os.path.join("voc_toy", "VOCdevkit", "VOC2012")
#: the 5 unseen classes of the zero-shot split (SPNet, ZegFormer, ZegCLIP)
UNSEEN_FILE = "voc20_unseen.txt"


def voc_split_ids(voc_root: str, split: str, dataset_name: str, hint: str):
    """Ids in ``ImageSets/Segmentation/<split>.txt``; a missing list names the dataset and file."""
    path = os.path.join(voc_root, "ImageSets", "Segmentation", f"{split}.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Dataset '{dataset_name}': split list {path} does not exist "
            f"(datasets root: $DETECTRON2_DATASETS={datasets_root()}).\n{hint}"
        )
    with open(path) as f:
        ids = [line.strip() for line in f if line.strip()]
    if not ids:
        raise DataError(
            f"Dataset '{dataset_name}': split list {path} is empty (it should name one image id "
            f"per line).\n{hint}"
        )
    return ids


def register_voc(prefix: str, voc_root: str, prepare_hint: str) -> None:
    """Register ``voc20_sem_seg_{train,val}``, ``voc21_sem_seg_{train,val}`` and
    ``voc20_zs_sem_seg_{train,val}`` for the prefix ``"voc"``; any other prefix (the toy set,
    the tests' copies) registers the 20-class variant only, as ``<prefix>_sem_seg_{train,val}``.

    Args:
        prefix (str): ``"voc"``, ``"voc20_toy"`` or a test's own prefix.
        voc_root (str): the ``VOC2012`` folder (JPEGImages, SegmentationClass, ImageSets).
        prepare_hint (str): how to create the data, shown when it is missing.
    """
    voc20 = load_class_names("voc20.txt")
    image_root = os.path.join(voc_root, "JPEGImages")
    variants = [("20", voc20, "annotations_detectron2/{split}", None)]
    if prefix == "voc":
        variants += [
            ("21", ["background"] + voc20, "SegmentationClass", None),
            ("20_zs", voc20, "annotations_detectron2/{split}", load_class_names(UNSEEN_FILE)),
        ]
    for suffix, classes, gt_pattern, unseen in variants:
        for split in ("train", "val"):
            name = (
                f"{prefix}{suffix}_sem_seg_{split}"
                if prefix == "voc"
                else f"{prefix}_sem_seg_{split}"
            )
            gt_root = os.path.join(voc_root, gt_pattern.format(split=split))

            def load(name=name, split=split, gt_root=gt_root):
                ids = voc_split_ids(voc_root, split, name, prepare_hint)
                return list_sem_seg_files(
                    name, image_root, gt_root, ids=ids, prepare_hint=prepare_hint
                )

            register_sem_seg(
                name,
                load,
                stuff_classes=classes,
                image_root=image_root,
                sem_seg_root=gt_root,
                ignore_label=255,
                unseen_classes=unseen,
            )


def register_all_voc(root: str) -> None:
    register_voc(
        "voc",
        os.path.join(root, VOC_SUBDIR),
        "Extract VOCtrainval_11-May-2012.tar into $DETECTRON2_DATASETS and run "
        "`python datasets/prepare_voc_sem_seg.py` (see datasets/README.md).",
    )
    register_voc(
        "voc20_toy",
        os.path.join(root, VOC_TOY_SUBDIR),
        "Generate it with `python tools/make_toy_dataset.py --dataset voc_toy`.",
    )


register_all_voc(datasets_root())
