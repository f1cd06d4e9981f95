from .timm_backbone import TimmBackbone, build_timm_backbone

__all__ = ["TimmBackbone", "build_timm_backbone"]
