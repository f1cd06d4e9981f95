"""The VOC-layout toy set (``voc20_toy``; ``tools/make_toy_dataset.py --dataset voc_toy``): small
images with labelled regions, in the PASCAL VOC 2012 layout. (The embedded default of
``configs/voc_toy.yaml`` is the testbed world, ``clipdistill/data/synthetic``.)

It is written exactly like the real data (``JPEGImages``, palette ``SegmentationClass`` PNGs with
0 = background and 255 = void boundaries, ``ImageSets/Segmentation/{train,val}.txt``), then
converted by the same code as VOC (``clipdistill.data.prepare.voc.prepare_voc20``) and registered
by the same code (``voc20_toy_sem_seg_{train,val}``). Each toy class has its own colour and
texture, so a small model learns it in minutes on a CPU.
"""

import os
from typing import Dict

import cv2
import numpy as np
from PIL import Image

from ..utils.io import atomic_write, claim_generated_folder
from .prepare.voc import prepare_voc20

__all__ = ["TOY_CLASSES", "generate_toy_voc"]

# raw VOC ids (1-based) of the classes drawn in the toy images -> (RGB colour, stripe period, angle)
TOY_CLASSES: Dict[int, tuple] = {
    3: ((230, 200, 40), 6, 0),  # bird
    4: ((40, 120, 230), 10, 90),  # boat
    7: ((220, 40, 40), 0, 0),  # car: flat
    8: ((240, 140, 30), 8, 45),  # cat
    12: ((120, 70, 30), 5, 135),  # dog
    15: ((60, 200, 90), 12, 0),  # person
}


def _voc_palette() -> list:
    """The standard PASCAL VOC colour map (bit-interleaved), 256 entries flattened."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def _texture(h, w, color, period, angle, rng):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.array(color, np.float32)[None, None] * rng.uniform(0.8, 1.1)
    if period:
        t = np.deg2rad(angle)
        phase = (xx * np.cos(t) + yy * np.sin(t)) * (2 * np.pi / period)
        base = base * (0.75 + 0.25 * np.sign(np.sin(phase)))[..., None]
    return np.broadcast_to(base, (h, w, 3))


def _make_sample(size, rng):
    h = w = size
    img = rng.normal(128, 25, (h, w, 3)).astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), 3) + rng.normal(0, 8, (h, w, 3))
    label = np.zeros((h, w), np.uint8)
    class_ids = list(TOY_CLASSES)
    for k in rng.choice(class_ids, size=rng.integers(1, 4), replace=False):
        mask = np.zeros((h, w), np.uint8)
        cx, cy = rng.integers(size // 6, size - size // 6, 2)
        ax, ay = rng.integers(size // 8, size // 3, 2)
        if rng.random() < 0.5:
            cv2.ellipse(
                mask,
                (int(cx), int(cy)),
                (int(ax), int(ay)),
                float(rng.uniform(0, 180)),
                0,
                360,
                1,
                -1,
            )
        else:
            cv2.rectangle(mask, (int(cx - ax), int(cy - ay)), (int(cx + ax), int(cy + ay)), 1, -1)
        color, period, angle = TOY_CLASSES[int(k)]
        tex = _texture(h, w, color, period, angle, rng)
        m = mask.astype(bool)
        img[m] = tex[m] + rng.normal(0, 6, (int(m.sum()), 3))
        label[m] = k
    # VOC marks object boundaries as void (255)
    edges = cv2.morphologyEx(label, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    label[edges] = 255
    return np.clip(img, 0, 255).astype(np.uint8), label


def generate_toy_voc(
    voc_root: str, num_train: int = 96, num_val: int = 24, size: int = 128, seed: int = 0
) -> str:
    """Write the toy dataset under ``voc_root`` (a ``VOC2012``-like folder) and convert it.

    Idempotent: existing files are kept, so an interrupted run can simply be re-run. Every file is
    written to a temporary name and renamed. The parameters are recorded in ``toy_dataset.json``;
    re-running into the same folder with other parameters (e.g. another ``seed``) is an error
    rather than a mix of two datasets.

    Args:
        voc_root (str): destination, e.g. ``$DETECTRON2_DATASETS/voc_toy/VOCdevkit/VOC2012``.
        num_train, num_val (int): number of images per split.
        size (int): image side in pixels.
        seed (int): random seed; the same seed gives the same dataset.
    Returns:
        str: ``voc_root``.
    """
    params = {"num_train": num_train, "num_val": num_val, "size": size, "seed": seed}
    claim_generated_folder(voc_root, "toy_dataset.json", params, "toy dataset")
    rng = np.random.default_rng(seed)
    dirs = {d: os.path.join(voc_root, d) for d in ("JPEGImages", "SegmentationClass")}
    sets_dir = os.path.join(voc_root, "ImageSets", "Segmentation")
    for d in list(dirs.values()) + [sets_dir]:
        os.makedirs(d, exist_ok=True)
    palette = _voc_palette()
    splits = {"train": num_train, "val": num_val}
    for split, n in splits.items():
        ids = [f"toy_{split}_{i:04d}" for i in range(n)]
        for image_id in ids:
            img, label = _make_sample(size, rng)  # always drawn: keeps the stream deterministic
            jpg = os.path.join(dirs["JPEGImages"], image_id + ".jpg")
            png = os.path.join(dirs["SegmentationClass"], image_id + ".png")
            if not os.path.isfile(jpg):
                with atomic_write(jpg, fsync=False) as f:
                    Image.fromarray(img).save(f, format="JPEG", quality=95)
            if not os.path.isfile(png):
                lab = Image.fromarray(label, mode="P")
                lab.putpalette(palette)
                with atomic_write(png, fsync=False) as f:
                    lab.save(f, format="PNG")
        with atomic_write(os.path.join(sets_dir, f"{split}.txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
    prepare_voc20(voc_root, splits=tuple(splits), progress=False)
    return voc_root
