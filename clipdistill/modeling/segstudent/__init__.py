"""The distilled student ``SegStudent``: ``backbone -> proj (neck.FusionNeck) -> clip_proj ->
seg_head (head)``, its losses (``losses``) and its keys (``config``: ``add_segstudent_config``,
``add_clip_teacher_config``)."""

from . import losses
from .config import add_clip_teacher_config, add_segstudent_config
from .head import ClosedSetHead, TextEmbeddingHead, build_student_head
from .meta_arch import SegStudent
from .neck import FusionNeck

__all__ = [
    "losses",
    "add_clip_teacher_config",
    "add_segstudent_config",
    "ClosedSetHead",
    "TextEmbeddingHead",
    "build_student_head",
    "SegStudent",
    "FusionNeck",
]
