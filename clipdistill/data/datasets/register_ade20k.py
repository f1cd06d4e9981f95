"""ADE20K: the 150-class SceneParsing benchmark and the 847-class ADE20K-Full.

- ADE-150 reuses detectron2's builtin ``ade20k_sem_seg_{train,val}`` (20,210 / 2,000 images;
  ``<root>/ADEChallengeData2016/images/<split>`` and ``annotations_detectron2/<split>`` from
  ``datasets/prepare_ade20k_sem_seg.py``; ignore 255; names ``ADE20K_SEM_SEG_CATEGORIES`` of
  detectron2). Only the missing ``stuff_colors`` is added to their metadata.
- ADE-847: ``ade847_sem_seg_{train,val}``: images
  ``<root>/ADE20K_2021_17_01/images_detectron2/{training,validation}`` and uint16 TIFF labels
  ``annotations_detectron2/{training,validation}`` (ignore 65535), both written by
  ``datasets/prepare_ade20k_full_sem_seg.py``. Classes ``class_names/ade847.txt`` (trainId
  order); the ADE object ids ``class_names/ade847_ids.txt`` become
  ``stuff_dataset_id_to_contiguous_id``. Val has 2,000 images.
"""

import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

from ...utils.colors import deterministic_colors
from .common import (
    datasets_root,
    list_sem_seg_files,
    load_class_ids,
    load_class_names,
    register_sem_seg,
)

__all__ = ["ADE150_SUBDIR", "ADE847_SUBDIR", "register_all_ade20k"]

ADE150_SUBDIR = "ADEChallengeData2016"
ADE847_SUBDIR = "ADE20K_2021_17_01"
_SPLITS = (("train", "training"), ("val", "validation"))
_HINT_150 = (
    "Unzip ADEChallengeData2016.zip into $DETECTRON2_DATASETS and run "
    "`python datasets/prepare_ade20k_sem_seg.py` (see datasets/README.md)."
)
_HINT_847 = (
    "Unzip ADE20K_2021_17_01 into $DETECTRON2_DATASETS and run "
    "`python datasets/prepare_ade20k_full_sem_seg.py` (see datasets/README.md)."
)


def _register_ade150(root: str, prefix: str) -> None:
    base = os.path.join(root, ADE150_SUBDIR)
    for split, dirname in _SPLITS:
        name = f"{prefix}ade20k_sem_seg_{split}"
        if not prefix:
            # detectron2's builtin registration (same $DETECTRON2_DATASETS root): keep it and
            # only add what it lacks; Metadata attributes cannot be changed once set.
            if name in DatasetCatalog.list():
                meta = MetadataCatalog.get(name)
                if not hasattr(meta, "stuff_colors"):
                    meta.stuff_colors = deterministic_colors(len(meta.stuff_classes))
                continue
        image_root = os.path.join(base, "images", dirname)
        gt_root = os.path.join(base, "annotations_detectron2", dirname)
        register_sem_seg(
            name,
            lambda name=name, image_root=image_root, gt_root=gt_root: list_sem_seg_files(
                name, image_root, gt_root, prepare_hint=_HINT_150
            ),
            stuff_classes=ADE20K_SEM_SEG_CATEGORIES,
            image_root=image_root,
            sem_seg_root=gt_root,
            ignore_label=255,
        )


def _register_ade847(root: str, prefix: str) -> None:
    base = os.path.join(root, ADE847_SUBDIR)
    classes = load_class_names("ade847.txt")
    ids = load_class_ids("ade847_ids.txt")
    assert len(classes) == len(ids) == 847, (len(classes), len(ids))
    for split, dirname in _SPLITS:
        name = f"{prefix}ade847_sem_seg_{split}"
        image_root = os.path.join(base, "images_detectron2", dirname)
        gt_root = os.path.join(base, "annotations_detectron2", dirname)
        register_sem_seg(
            name,
            lambda name=name, image_root=image_root, gt_root=gt_root: list_sem_seg_files(
                name, image_root, gt_root, gt_ext="tif", prepare_hint=_HINT_847
            ),
            stuff_classes=classes,
            image_root=image_root,
            sem_seg_root=gt_root,
            ignore_label=65535,
            stuff_dataset_id_to_contiguous_id={cid: i for i, cid in enumerate(ids)},
        )


def register_all_ade20k(root: str, prefix: str = "") -> None:
    """ADE-150 (builtin names: metadata completed; with a prefix: registered anew) and ADE-847.

    Args:
        root (str): the datasets root.
        prefix (str): prepended to every name; with a non-empty prefix ADE-150 is registered
            under ``<prefix>ade20k_sem_seg_{train,val}`` instead of reusing the builtin.
    """
    _register_ade150(root, prefix)
    _register_ade847(root, prefix)


register_all_ade20k(datasets_root())
