"""Frozen CLIP teacher: a thin wrapper over the shared CLIP layer (clipdistill.modeling.clip)."""

from .clip_teacher import CLIPTeacher
from .frozen import FrozenAuxiliary, ignore_frozen_missing_keys
from .segmenter_teacher import SegmenterTeacher

__all__ = [
    "CLIPTeacher",
    "FrozenAuxiliary",
    "ignore_frozen_missing_keys",
    "SegmenterTeacher",
]
