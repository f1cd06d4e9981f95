"""The testbed dataset on disk, in the layout the registration reads (``list_sem_seg_files``).

``<root>/images/<split>/<id>.png`` (RGB; lossless, the colours are the classes),
``<root>/annotations_detectron2/<split>/<id>.png`` (uint8: 0 = background, ``1 + c * P + p`` =
colour ``c`` and pattern ``p``), and ``<root>/captions/<split>.json``:
``{"class_names": [...], "unseen_classes": [...], "images": {id: {"caption", "objects"}}}``.
Registered as ``testbed_sem_seg_{train,val}`` (``clipdistill/data/datasets/register_testbed.py``).
"""

import os
from typing import Sequence

import numpy as np
from PIL import Image

from ...utils.io import atomic_path, atomic_save_json, claim_generated_folder
from .render import DEFAULT_NUM_OBJECTS_P, render_scenes, sample_scenes
from .world import DEFAULT_WORLD, World, caption_of

__all__ = ["SPLITS", "generate_testbed", "split_seed"]

#: split name -> index in the seed sequence (each split has its own random stream)
SPLITS = {"train": 0, "val": 1}
_CHUNK = 500


def split_seed(seed: int, split: str) -> np.random.Generator:
    """The random generator of ``split`` for dataset seed ``seed``."""
    return np.random.default_rng([seed, SPLITS[split]])


def _write_png(path: str, array: np.ndarray) -> None:
    # no fsync per image: a file is complete after a kill, and a re-run checks them all
    with atomic_path(path, fsync=False) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def generate_testbed(
    root: str,
    num_train: int = 2000,
    num_val: int = 500,
    size: int = 64,
    seed: int = 0,
    world: World = DEFAULT_WORLD,
    num_objects_p: Sequence[float] = DEFAULT_NUM_OBJECTS_P,
) -> str:
    """Write the testbed dataset under ``root``.

    Deterministic: the same arguments give the same files, byte for byte. Resumable: existing
    image and label files are kept (every scene is still drawn, so the stream does not shift);
    every file is written to a temporary name and renamed. The arguments are recorded in
    ``testbed.json``; re-running into the same folder with others (e.g. another ``seed``) is an
    error rather than a mix of two datasets.

    Args:
        root: destination folder (``$DETECTRON2_DATASETS/testbed`` for the registered dataset).
        num_train, num_val: images per split.
        size: image side in pixels (even, 32 or more).
        seed: the dataset seed.
        world: colours, patterns, silhouettes and split (the registered datasets use ``DEFAULT_WORLD``).
        num_objects_p: probabilities of 0, 1, 2, 3 objects per image.
    Returns:
        ``root``.

    Raises:
        DataError: ``root`` holds a testbed generated with other arguments.
    """
    for split, n in (("train", num_train), ("val", num_val)):
        if n <= 0:
            raise ValueError(f"num_{split}={n}: need at least one image")
    params = {
        "num_train": num_train,
        "num_val": num_val,
        "size": size,
        "seed": seed,
        "class_names": world.class_names,
        "unseen_classes": world.unseen_classes,
        "num_objects_p": [float(p) for p in num_objects_p],
    }
    claim_generated_folder(root, "testbed.json", params, "testbed")
    for split, n in (("train", num_train), ("val", num_val)):
        rng = split_seed(seed, split)
        image_dir = os.path.join(root, "images", split)
        label_dir = os.path.join(root, "annotations_detectron2", split)
        for d in (image_dir, label_dir, os.path.join(root, "captions")):
            os.makedirs(d, exist_ok=True)
        records = {}
        for start in range(0, n, _CHUNK):
            scenes = sample_scenes(rng, min(_CHUNK, n - start), world, num_objects_p)
            images, labels = render_scenes(rng, scenes, size)
            for j in range(len(images)):
                image_id = f"{split}_{start + j:06d}"
                names = scenes.names(j)
                records[image_id] = {"caption": caption_of(names), "objects": names}
                image_path = os.path.join(image_dir, image_id + ".png")
                label_path = os.path.join(label_dir, image_id + ".png")
                if not os.path.isfile(image_path):
                    _write_png(image_path, images[j])
                if not os.path.isfile(label_path):
                    _write_png(label_path, labels[j])
        payload = {
            "class_names": world.class_names,
            "unseen_classes": world.unseen_classes,
            "size": size,
            "seed": seed,
            "images": records,
        }
        atomic_save_json(os.path.join(root, "captions", f"{split}.json"), payload, indent=0)
    return root
