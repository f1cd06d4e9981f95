"""The open_clip model SAN is built from (MODEL.SAN.CLIP_MODEL_NAME, CLIP_PRETRAINED_NAME)."""

import logging
from typing import Callable, Tuple

import open_clip
from torch import nn

from ..teacher.clip_teacher import _create_open_clip_model, _load_open_clip_model_distributed

__all__ = ["load_san_clip"]

logger = logging.getLogger(__name__)

KEY_NAME = "MODEL.SAN.CLIP_MODEL_NAME"
KEY_WEIGHTS = "MODEL.SAN.CLIP_PRETRAINED_NAME"


def uses_quick_gelu(model_name: str, tag: str) -> bool:
    """Whether the open_clip pretrained tag ``tag`` of ``model_name`` was trained with QuickGELU
    (OpenAI's weights): known offline from open_clip's registry of tags."""
    if not tag or model_name.endswith("-quickgelu"):
        return False
    return bool(open_clip.get_pretrained_cfg(model_name, tag).get("quick_gelu", False))


def load_san_clip(
    model_name: str, weights: str, from_checkpoint: bool
) -> Tuple[nn.Module, Callable]:
    """Build the CLIP model and its tokenizer.

    Args:
        model_name: open_clip model name ("/" accepted for "-", as in "ViT-B/16").
        weights: open_clip pretrained tag, local weights file, or "" (seeded random init).
        from_checkpoint: the weights will come from a SAN checkpoint (``MODEL.WEIGHTS``): build
            the architecture only (no download), with the activation the tag implies.

    Raises:
        ValueError / FileNotFoundError / RuntimeError: naming the config keys, as the teacher's
        loader does.
    """
    model_name = model_name.replace("/", "-")
    if model_name not in open_clip.list_models():
        raise ValueError(
            f"{KEY_NAME}={model_name!r} is not an open_clip model name (see "
            f"open_clip.list_models(); SAN was published with 'ViT-B-16' and 'ViT-L-14-336')"
        )
    quick_gelu = (
        uses_quick_gelu(model_name, weights) if weights and not _is_file(weights) else False
    )
    if from_checkpoint or not weights:
        if weights:
            logger.info(
                f"SAN: CLIP weights come from MODEL.WEIGHTS; {KEY_WEIGHTS}={weights!r} only sets "
                f"the activation (QuickGELU: {quick_gelu})"
            )
        model = _create_open_clip_model(model_name, None, quick_gelu)
    else:
        model, _ = _load_open_clip_model_distributed(model_name, weights)
    return model, open_clip.get_tokenizer(model_name)


def _is_file(weights: str) -> bool:
    return "/" in weights or weights.endswith((".bin", ".pt", ".pth", ".safetensors"))
