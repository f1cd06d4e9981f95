"""Frozen CLIP teacher: a thin wrapper over the shared CLIP layer (clipdistill.modeling.clip)."""

from .clip_teacher import CLIPTeacher, build_clip_teacher

__all__ = ["CLIPTeacher", "build_clip_teacher"]
