from .checkpoint import CheckpointMismatchError, SegmenterCheckpointer
from .setup import setup
from .trainer import Trainer, create_ddp_model

__all__ = [
    "CheckpointMismatchError",
    "SegmenterCheckpointer",
    "Trainer",
    "create_ddp_model",
    "setup",
]
