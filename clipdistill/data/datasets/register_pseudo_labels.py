"""Pseudo-label datasets written by ``tools/make_pseudo_labels.py``.

Each ``$DETECTRON2_DATASETS/pseudo_labels/<name>/manifest.json`` (written last, atomically, by
``clipdistill.engine.pseudo_labels``) registers the dataset ``<name>``: the source dataset's
images and classes, with the pseudo-labels as ``sem_seg_file_name``. Registration reads only the
small manifest; no image is opened.
"""

import json
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from .common import datasets_root, register_sem_seg

__all__ = ["PSEUDO_LABEL_SUBDIR", "register_pseudo_label_dataset", "register_all_pseudo_labels"]

PSEUDO_LABEL_SUBDIR = "pseudo_labels"


def register_pseudo_label_dataset(manifest_path: str) -> str:
    """Register the dataset described by ``manifest_path``; returns its name (re-registering a
    name replaces it)."""
    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    name = manifest["name"]
    records = [dict(r) for r in manifest["records"]]
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    folder = os.path.dirname(os.path.abspath(manifest_path))
    register_sem_seg(
        name,
        lambda: [dict(r) for r in records],
        stuff_classes=manifest["stuff_classes"],
        image_root=os.path.dirname(records[0]["file_name"]) if records else folder,
        sem_seg_root=os.path.join(folder, "labels"),
        ignore_label=manifest["ignore_label"],
        pseudo_label_source=manifest["source"],
    )
    return name


def register_all_pseudo_labels(root: str) -> None:
    base = os.path.join(root, PSEUDO_LABEL_SUBDIR)
    if not os.path.isdir(base):
        return
    for entry in sorted(os.listdir(base)):
        manifest = os.path.join(base, entry, "manifest.json")
        if os.path.isfile(manifest):
            register_pseudo_label_dataset(manifest)


register_all_pseudo_labels(datasets_root())
