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
from .run import sweep_names
from .targets import deployed_model

__all__ = ["label_agreement", "padded_vocabulary"]

logger = logging.getLogger(__name__)


def padded_vocabulary(names: Sequence[str], size: int) -> List[str]:
    """``names``, then the vocabulary sweep's (``sweep_names``: ADE20K-150's, then generated
    ones) up to ``size`` names: a larger vocabulary whose ground-truth classes are still the
    dataset's."""
    names = list(names)
    have = set(names)
    extra = [n for n in sweep_names(size + len(names)) if n not in have]
    return names + extra[: max(0, size - len(names))]


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

    The segmenter: ``cfg``'s, with ``MODEL.WEIGHTS`` (a trained student: what the figure is
    about). Vocabularies: the dataset's classes, then the same padded with generated names to
    each of ``vocabulary_sizes`` (``padded_vocabulary``). ``limit``: first N images (0: all).

    Returns:
        rows ``{"vocabulary", "images", "pixels", "candidates", "identical", "fraction",
        "dataset_class_misses"}`` (the last: differing pixels where either label is one of the
        dataset's classes, not a generated name: generated names are near-duplicates whose
        logits nearly tie, a harder case than a real vocabulary).
    """
    model = deployed_model(cfg, torch.device(device or cfg.MODEL.DEVICE), load_weights=True)
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
        real = {int(k): 0 for k in candidates}
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
                    got = label_map(coarse, candidates=k)
                    same[k] += int((got == full).sum())
                    # misses that change a dataset class (not one generated name for another)
                    real[k] += int(((got != full) & ((got < len(base)) | (full < len(base)))).sum())
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
                    "dataset_class_misses": real[k],
                }
            )
        logger.info(f"label agreement, {size} names: {same} of {pixels} pixels")
    return rows
