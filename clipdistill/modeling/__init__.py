"""Modeling: one package per architecture (``segstudent``, ``maskclip``, ``san``, ``ovseg``,
``car``: its meta-architecture, parts and config keys) on shared layers (``segmenter``: the
interface; ``clip``: open_clip loading, text, dense features; ``teacher``: frozen teachers;
``backbone``, ``criterion``, ``postprocess``). Importing it registers the backbones, heads and
meta-architectures."""
from .backbone import TimmBackbone, build_timm_backbone
from .car import CaR
from .maskclip import MaskCLIP
from .ovseg import OVSeg
from .san import SAN
from .segstudent import SegStudent
from .teacher import CLIPTeacher

__all__ = [
    "TimmBackbone",
    "build_timm_backbone",
    "CaR",
    "MaskCLIP",
    "OVSeg",
    "SAN",
    "SegStudent",
    "CLIPTeacher",
]
