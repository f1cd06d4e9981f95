"""The CLIP layer shared by every architecture: open_clip loading (``loader``), the text side
(``text``: templates, vocabulary checks, the cached ``TextEncoder``), ViT helpers (``vit``) and the
training-free dense features (``dense``: MaskCLIP and its successors)."""

from .dense import DENSE_METHODS, dense_features
from .loader import MODEL_CONFIG_DIR, TOY_MODEL_NAME, load_open_clip
from .text import PROMPT_TEMPLATES, TextEncoder, check_class_names

__all__ = [
    "DENSE_METHODS",
    "dense_features",
    "MODEL_CONFIG_DIR",
    "TOY_MODEL_NAME",
    "load_open_clip",
    "PROMPT_TEMPLATES",
    "TextEncoder",
    "check_class_names",
]
