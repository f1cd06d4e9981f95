"""Evaluate an open-vocabulary export (fp32 or int8 student) on a registered dataset with the
project's evaluator (``build_sem_seg_evaluator``: mIoU, and seen/unseen mIoU for a zero-shot
dataset), and read calibration images from a registered dataset. Uses torch/detectron2 for the
dataset and the evaluator only; the predictions come from the torch-free runtime."""

import itertools
import logging
from typing import Iterator, Optional
import numpy as np
import torch

from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image

from ..evaluation import build_sem_seg_evaluator
from ..modeling.segmenter import dataset_vocabulary
from .runtime import Segmenter

__all__ = ["dataset_images", "evaluate_export"]

logger = logging.getLogger(__name__)


def dataset_images(dataset_name: str, limit: int) -> Iterator[np.ndarray]:
    """The first ``limit`` images (RGB uint8 ``[H, W, 3]``) of a registered dataset."""
    for d in itertools.islice(DatasetCatalog.get(dataset_name), int(limit)):
        yield read_image(d["file_name"], format="RGB")


def evaluate_export(
    folder: str,
    dataset_name: str,
    student: Optional[str] = None,
    output_dir: Optional[str] = None,
    limit: int = 0,
    threads: int = 0,
) -> dict:
    """The evaluator's results of the export in ``folder`` on ``dataset_name`` (its
    ``stuff_classes`` as the vocabulary; images resized as ``deploy.json`` says, labels brought
    back to the image size). ``limit``: first N images only (0: all)."""
    seg = Segmenter(folder, student=student, threads=threads)
    names = dataset_vocabulary(dataset_name)
    evaluator = build_sem_seg_evaluator(dataset_name, output_dir, distributed=False)
    evaluator.reset()
    dicts = DatasetCatalog.get(dataset_name)
    if limit:
        dicts = dicts[:limit]
    for d in dicts:
        labels = seg.segment(read_image(d["file_name"], format="RGB"), names)
        # the evaluator takes argmax over classes: a one-hot map gives it the runtime's labels
        one_hot = torch.nn.functional.one_hot(torch.from_numpy(labels), len(names))
        evaluator.process([d], [{"sem_seg": one_hot.permute(2, 0, 1)}])
    logger.info(f"evaluated {len(dicts)} images of {dataset_name} with {folder}")
    return evaluator.evaluate()
