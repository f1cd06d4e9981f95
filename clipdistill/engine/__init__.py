from .build import build_model, build_segmenter_teacher
from .checkpoint import CheckpointMismatchError, SegmenterCheckpointer
from .defaults import setup
from .trainer import Trainer, create_ddp_model

__all__ = [
    "build_model",
    "build_segmenter_teacher",
    "CheckpointMismatchError",
    "SegmenterCheckpointer",
    "Trainer",
    "create_ddp_model",
    "setup",
]
