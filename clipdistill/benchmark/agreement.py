"""How often the label map from each pixel's candidate classes (``label_map`` with
``candidates`` > 0: ``modeling.postprocess.resample_labels``) equals the full computation
(every class upsampled to the image size, then argmax) on a registered dataset, as the predictor
sees it (the test-time resize, labels at each image's original size).
``tools/benchmark.py --label-agreement``; figures in ``docs/BENCHMARKS.md``."""

import logging
from typing import List, Optional, Sequence

import numpy as np
import torch

from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image

from ..data.dataset_mappers import build_sem_seg_augmentation
from ..modeling.postprocess import label_map
from ..modeling.segmenter import dataset_vocabulary
from .targets import deployed_model

__all__ = ["label_agreement", "padded_vocabulary"]

logger = logging.getLogger(__name__)


def padded_vocabulary(names: Sequence[str], size: int) -> List[str]:
    """``names`` then generated ones ("extra name 1", ...) up to ``size`` names: a larger
    vocabulary whose real classes are still the dataset's."""
    names = list(names)
    return names + [f"extra name {i + 1}" for i in range(max(0, size - len(names)))]


def label_agreement(
    cfg,
    dataset_name: str,
    *,
    vocabulary_sizes: Sequence[int] = (),
    candidates: Sequence[int] = (1, 2, 3, 4),
    limit: int = 0,
    device: Optional[str] = None,
) -> List[dict]:
    """Identical pixels between ``label_map(coarse, candidates=k)`` and the full computation.

    Vocabularies: the dataset's classes, then the same padded with generated names to each of
    ``vocabulary_sizes`` (``padded_vocabulary``). ``limit``: first N images (0: all).

    Returns:
        rows ``{"vocabulary", "images", "pixels", "candidates", "identical", "fraction"}``.
    """
    model = deployed_model(cfg, torch.device(device or cfg.MODEL.DEVICE))
    augs = T.AugmentationList(build_sem_seg_augmentation(cfg, is_train=False))
    dicts = DatasetCatalog.get(dataset_name)
    if limit:
        dicts = dicts[: int(limit)]
    base = dataset_vocabulary(dataset_name)
    sizes = [len(base)] + [int(k) for k in vocabulary_sizes if int(k) > len(base)]
    rows = []
    for size in sizes:
        model.set_vocabulary(padded_vocabulary(base, size))
        same = {int(k): 0 for k in candidates}
        pixels = 0
        for d in dicts:
            image = read_image(d["file_name"], format=cfg.INPUT.FORMAT)
            h, w = image.shape[:2]
            aug = T.AugInput(image)
            augs(aug)
            tensor = torch.as_tensor(np.ascontiguousarray(aug.image.transpose(2, 0, 1)))
            with torch.inference_mode():
                coarse = model.coarse_sem_seg([{"image": tensor, "height": h, "width": w}])[0]
                full = label_map(coarse, candidates=0)
                for k in same:
                    same[k] += int((label_map(coarse, candidates=k) == full).sum())
            pixels += full.numel()
        for k, n in same.items():
            rows.append(
                {
                    "vocabulary": size,
                    "images": len(dicts),
                    "pixels": pixels,
                    "candidates": k,
                    "identical": n,
                    "fraction": n / max(1, pixels),
                }
            )
        logger.info(f"label agreement, {size} names: {same} of {pixels} pixels")
    return rows
