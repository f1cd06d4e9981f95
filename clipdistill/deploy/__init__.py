"""Deployment: a predictor for images and videos, export of the student with a baked-in vocabulary
(TorchScript / ONNX), and a web demo. Used by ``tools/demo.py``, ``tools/export_model.py`` and
``tools/web_demo.py``."""

from .demo import DemoReport, expand_inputs, run_demo
from .predictor import (
    SegPredictor,
    SegResult,
    parse_class_names,
    read_image_rgb,
)

__all__ = [
    "DemoReport",
    "SegPredictor",
    "SegResult",
    "expand_inputs",
    "parse_class_names",
    "read_image_rgb",
    "run_demo",
]
