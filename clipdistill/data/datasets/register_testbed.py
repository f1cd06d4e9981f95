"""The generated open-vocabulary testbed (``clipdistill/data/synthetic``), the embedded default.

Names: ``testbed_sem_seg_{train,val}`` under ``<root>/testbed`` (``tools/make_toy_dataset.py``
writes it): 64x64 images of 0-3 coloured shapes, 37 classes (``"empty background"`` + 6 colours x
6 shapes, e.g. ``"red star"``), a caption per image (``record["caption"]``), and a seen/unseen
split (``seen_classes`` / ``unseen_classes`` in the metadata; ``evaluator_type``
``"sem_seg_zero_shot"``): the 6 unseen classes are never labelled in training.
"""

import json
import os

from ...utils.errors import DataError
from ..synthetic import DEFAULT_WORLD, World
from .common import datasets_root, list_sem_seg_files, register_sem_seg

__all__ = ["TESTBED_SUBDIR", "register_testbed", "load_testbed_split"]

TESTBED_SUBDIR = "testbed"
_HINT = "Generate it with `python tools/make_toy_dataset.py` (or `make toy`)."


def load_testbed_split(name: str, root: str, split: str, world: World, hint: str = _HINT):
    """The records of one split: ``file_name``, ``sem_seg_file_name`` and ``caption``.

    Raises:
        FileNotFoundError: the split was not generated (names the file and how to create it).
        ValueError: the files were generated for another world (other class names).
        DataError: the captions file is damaged (truncated, not JSON; names it).
    """
    path = os.path.join(root, "captions", f"{split}.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Dataset '{name}': {path} does not exist "
            f"(datasets root: $DETECTRON2_DATASETS={datasets_root()}).\n{hint}"
        )
    try:
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
        if not isinstance(payload, dict) or not isinstance(payload.get("images"), dict):
            raise ValueError("not a mapping with 'images'")
    except ValueError as e:  # truncated, not UTF-8, not JSON, not the generator's layout
        raise DataError(
            f"Dataset '{name}': {path} is damaged ({type(e).__name__}: {e}). Regenerate the "
            f"testbed into an empty folder.\n{hint}"
        ) from e
    if payload.get("class_names") != world.class_names:
        raise ValueError(
            f"Dataset '{name}': {path} was generated for the classes "
            f"{payload.get('class_names')}, the registration expects {world.class_names}. "
            f"Regenerate it into an empty folder.\n{hint}"
        )
    images = payload["images"]
    records = list_sem_seg_files(
        name,
        os.path.join(root, "images", split),
        os.path.join(root, "annotations_detectron2", split),
        ids=list(images),
        image_ext="png",
        prepare_hint=hint,
    )
    for record, image_id in zip(records, images):
        record["caption"] = images[image_id]["caption"]
    return records


def register_testbed(
    prefix: str, root: str, world: World = DEFAULT_WORLD, hint: str = _HINT
) -> None:
    """Register ``<prefix>_sem_seg_{train,val}`` for a testbed written under ``root``."""
    for split in ("train", "val"):
        name = f"{prefix}_sem_seg_{split}"
        register_sem_seg(
            name,
            lambda name=name, split=split: load_testbed_split(name, root, split, world, hint),
            stuff_classes=world.class_names,
            image_root=os.path.join(root, "images", split),
            sem_seg_root=os.path.join(root, "annotations_detectron2", split),
            ignore_label=255,
            unseen_classes=world.unseen_classes,
        )


register_testbed("testbed", os.path.join(datasets_root(), TESTBED_SUBDIR))
