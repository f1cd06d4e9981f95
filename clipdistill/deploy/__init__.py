"""Deployment: a predictor for images and videos, export of the student with a baked-in vocabulary
(TorchScript / ONNX), an open-vocabulary export (``open_vocab``: the vocabulary an input of
the graph) with its torch-free runtime (``runtime``, ``tokenizer``; importable without torch
installed), and a web demo. Used by ``tools/demo.py``, ``tools/export_model.py`` and
``tools/web_demo.py``."""

try:
    import torch  # noqa: F401
except ImportError:  # a deployment machine: only .runtime and .tokenizer (no torch) are usable
    torch = None

if torch is not None:
    from .demo import DemoReport, expand_inputs, run_demo
    from .predictor import SegPredictor, SegResult, parse_class_names, read_image_rgb

__all__ = [
    "DemoReport",
    "SegPredictor",
    "SegResult",
    "expand_inputs",
    "parse_class_names",
    "read_image_rgb",
    "run_demo",
]
