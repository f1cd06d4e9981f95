"""CLIP-as-RNN (CaR): training-free recurrent open-vocabulary segmentation (docs/CAR.md).

``CaRSegmenter`` holds the two frozen CLIPs and runs the loop on one image; the detectron2
META_ARCH ``CaR`` (``meta_arch.py``) wraps it; ``add_car_config`` adds its keys.
"""
from .config import add_car_config
from .meta_arch import CaR
from .recurrence import CaRPassResult, CaRSegmenter, paint_labels

__all__ = ["add_car_config", "CaR", "CaRSegmenter", "CaRPassResult", "paint_labels"]
