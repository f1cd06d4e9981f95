"""Evaluators: detectron2's ``SemSegEvaluator`` and its seen/unseen (zero-shot) extension."""

from .zero_shot import (
    AtomicSemSegEvaluator,
    ZeroShotSemSegEvaluator,
    build_sem_seg_evaluator,
    seen_unseen_miou,
)

__all__ = [
    "AtomicSemSegEvaluator",
    "ZeroShotSemSegEvaluator",
    "build_sem_seg_evaluator",
    "seen_unseen_miou",
]
