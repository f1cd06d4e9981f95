"""Modeling: importing it registers the backbone, heads and meta-architectures."""
from . import losses
from .backbone import TimmBackbone, build_timm_backbone
from .fusion import FusionNeck
from .heads import ClosedSetHead, TextEmbeddingHead
from .meta_arch import SAN, OVSeg, SegStudent
from .teacher import CLIPTeacher

__all__ = [
    "losses",
    "TimmBackbone",
    "build_timm_backbone",
    "FusionNeck",
    "ClosedSetHead",
    "TextEmbeddingHead",
    "OVSeg",
    "SAN",
    "SegStudent",
    "CLIPTeacher",
]
