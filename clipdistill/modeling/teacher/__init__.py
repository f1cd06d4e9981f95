"""Frozen CLIP teacher: a thin wrapper over the shared CLIP layer (clipdistill.modeling.clip)."""

from .clip_teacher import CLIPTeacher, build_clip_teacher
from .frozen import FrozenAuxiliary, ignore_frozen_missing_keys
from .segmenter_teacher import SegmenterTeacher

__all__ = [
    "CLIPTeacher",
    "build_clip_teacher",
    "FrozenAuxiliary",
    "ignore_frozen_missing_keys",
    "SegmenterTeacher",
]
