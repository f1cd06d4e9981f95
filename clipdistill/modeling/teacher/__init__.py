"""Frozen CLIP teacher on open_clip (importing it registers the ``ViT-T-16-toy`` architecture)."""

from .clip_teacher import (
    MODEL_CONFIG_DIR,
    PROMPT_TEMPLATES,
    TOY_MODEL_NAME,
    CLIPTeacher,
    build_clip_teacher,
)

__all__ = [
    "CLIPTeacher",
    "build_clip_teacher",
    "PROMPT_TEMPLATES",
    "MODEL_CONFIG_DIR",
    "TOY_MODEL_NAME",
]
