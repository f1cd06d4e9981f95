"""Seen / unseen mIoU and their harmonic mean hIoU: the zero-shot segmentation protocol.

ZS3Net, SPNet, ZegFormer and ZegCLIP score every class of the test set (seen and unseen names in
one vocabulary, "generalised zero-shot"), then report the mean IoU over the seen classes, over the
unseen classes, and ``hIoU = 2 * mIoU(seen) * mIoU(unseen) / (mIoU(seen) + mIoU(unseen))``.
"""

import json
import logging
import os
from typing import Dict, Sequence, Tuple

import numpy as np
import torch

from detectron2.data import MetadataCatalog
from detectron2.evaluation import SemSegEvaluator

from ..data.datasets.common import ZERO_SHOT_EVALUATOR_TYPE
from ..utils.io import atomic_write

__all__ = [
    "ZERO_SHOT_METRICS",
    "class_iou",
    "AtomicSemSegEvaluator",
    "ZeroShotSemSegEvaluator",
    "build_sem_seg_evaluator",
    "seen_unseen_miou",
]

#: the metrics ``ZeroShotSemSegEvaluator`` adds to ``SemSegEvaluator``'s
ZERO_SHOT_METRICS = ("mIoU-seen", "mIoU-unseen", "hIoU")

logger = logging.getLogger(__name__)


def class_iou(conf_matrix: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-class IoU ``[K]`` from detectron2's confusion matrix (``[prediction, ground truth]``,
    ignored pixels last), and which classes count in a mean (present in the ground truth), as
    detectron2's ``SemSegEvaluator`` defines them."""
    conf = np.asarray(conf_matrix, dtype=np.float64)[:-1, :-1]
    tp = np.diag(conf)
    pos_gt = conf.sum(axis=0)
    union = pos_gt + conf.sum(axis=1) - tp
    valid = (pos_gt > 0) & (union > 0)
    return np.divide(tp, union, out=np.zeros_like(tp), where=valid), valid


def seen_unseen_miou(conf_matrix: np.ndarray, unseen: Sequence[bool]) -> Dict[str, float]:
    """Seen / unseen mIoU and hIoU (in %) from detectron2's confusion matrix.

    Args:
        conf_matrix: ``[K+1, K+1]`` counts indexed ``[prediction, ground truth]``, the last row
            and column being the ignored pixels (``SemSegEvaluator._conf_matrix``).
        unseen: ``[K]`` bool, True for unseen classes.
    Returns:
        ``{"mIoU-seen", "mIoU-unseen", "hIoU"}``. As detectron2's mIoU, each mean runs over the
        classes present in the ground truth; a group with no such class gives NaN (and so does
        hIoU).
    """
    unseen = np.asarray(unseen, dtype=bool)
    if np.shape(conf_matrix) != (len(unseen) + 1, len(unseen) + 1):
        raise ValueError(f"confusion matrix {np.shape(conf_matrix)} vs {len(unseen)} classes")
    iou, valid = class_iou(conf_matrix)

    def mean(group):
        sel = valid & group
        return 100.0 * float(iou[sel].mean()) if sel.any() else float("nan")

    seen_miou, unseen_miou = mean(~unseen), mean(unseen)
    total = seen_miou + unseen_miou
    if np.isnan(total):
        h = float("nan")
    else:
        h = 2 * seen_miou * unseen_miou / total if total > 0 else 0.0
    return dict(zip(ZERO_SHOT_METRICS, (seen_miou, unseen_miou, h)))


class AtomicSemSegEvaluator(SemSegEvaluator):
    """detectron2's ``SemSegEvaluator`` whose output files (``sem_seg_predictions.json``,
    ``sem_seg_evaluation.pth``) are written to a temporary name and renamed
    (``clipdistill.utils.io.atomic_write``): a kill during a re-evaluation leaves the earlier
    files, never an empty one. Subclasses add metrics in ``_add_metrics``."""

    def evaluate(self):
        output_dir, self._output_dir = self._output_dir, None  # detectron2 writes in place
        try:
            results = super().evaluate()
        finally:
            self._output_dir = output_dir
        if results is None:  # not the main process
            return results
        self._add_metrics(results["sem_seg"])
        if output_dir:
            with atomic_write(os.path.join(output_dir, "sem_seg_predictions.json"), "w") as f:
                f.write(json.dumps(self._predictions))
            with atomic_write(os.path.join(output_dir, "sem_seg_evaluation.pth")) as f:
                # plain floats: readable by a weights-only load (no numpy scalars to unpickle)
                torch.save({k: float(v) for k, v in results["sem_seg"].items()}, f)
        return results

    def _add_metrics(self, res: Dict[str, float]) -> None:
        """Add metrics to ``res`` (detectron2's) before it is written."""


class ZeroShotSemSegEvaluator(AtomicSemSegEvaluator):
    """``SemSegEvaluator`` plus ``mIoU-seen``, ``mIoU-unseen`` and ``hIoU`` in its results.

    The split comes from the dataset's metadata (``unseen_classes``, set by ``register_sem_seg``);
    everything else (predictions JSON, per-class IoU, mIoU over all classes) is detectron2's.
    """

    def __init__(self, dataset_name: str, distributed: bool = True, output_dir=None, **kwargs):
        super().__init__(dataset_name, distributed=distributed, output_dir=output_dir, **kwargs)
        unseen = MetadataCatalog.get(dataset_name).get("unseen_classes", None)
        if not unseen:
            raise ValueError(
                f"Dataset '{dataset_name}' has no 'unseen_classes' in its metadata: the "
                f"seen/unseen evaluator needs a split (register it with unseen_classes=...)"
            )
        self._unseen = np.array([name in set(unseen) for name in self._class_names])

    def _add_metrics(self, res: Dict[str, float]) -> None:
        extra = seen_unseen_miou(self._conf_matrix, self._unseen)
        res.update(extra)
        logger.info(
            f"{self._dataset_name}: mIoU seen {extra['mIoU-seen']:.2f}, unseen "
            f"{extra['mIoU-unseen']:.2f}, hIoU {extra['hIoU']:.2f} "
            f"({int((~self._unseen).sum())} seen / {int(self._unseen.sum())} unseen classes)"
        )


def build_sem_seg_evaluator(dataset_name: str, output_dir=None, distributed: bool = True):
    """The evaluator of a dataset, chosen by its ``evaluator_type``: ``"sem_seg"`` ->
    detectron2's ``SemSegEvaluator`` (``AtomicSemSegEvaluator``), ``"sem_seg_zero_shot"`` -> ``ZeroShotSemSegEvaluator``.
    """
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type == "sem_seg":
        return AtomicSemSegEvaluator(dataset_name, distributed=distributed, output_dir=output_dir)
    if evaluator_type == ZERO_SHOT_EVALUATOR_TYPE:
        return ZeroShotSemSegEvaluator(dataset_name, distributed=distributed, output_dir=output_dir)
    raise NotImplementedError(
        f"Dataset '{dataset_name}' has evaluator_type={evaluator_type!r}; clipdistill evaluates "
        f"semantic segmentation ('sem_seg', '{ZERO_SHOT_EVALUATOR_TYPE}') datasets only"
    )
