"""Any clipdistill segmenter (SAN, OVSeg, CaR, MaskCLIP, another student...) as a frozen teacher
whose per-pixel class probabilities a student distils (``loss_seg_kd``)."""

import logging
from typing import Sequence

import torch
from torch import nn

from ...utils.errors import ConfigError
from .frozen import FrozenAuxiliary

__all__ = ["SegmenterTeacher", "build_segmenter_teacher"]

logger = logging.getLogger(__name__)

_KEY = "MODEL.CLIPDISTILL.SEGMENTER_TEACHER"


class SegmenterTeacher(FrozenAuxiliary):
    """A frozen ``OpenVocabSegmenter`` giving ``probs(images, class_names) -> [B, K, H, W]``.

    Args:
        segmenter: the segmenter, with its weights loaded.
    """

    def __init__(self, segmenter: nn.Module):
        super().__init__()
        self.segmenter = segmenter.requires_grad_(False)
        super().train(False)

    @torch.no_grad()
    def probs(self, images: torch.Tensor, class_names: Sequence[str]) -> torch.Tensor:
        """Class probabilities of ``images`` (``[B, 3, H, W]`` 0..255 RGB) at their size."""
        return self.segmenter.dense_class_probs(images, list(class_names)).float()


def build_segmenter_teacher(cfg) -> SegmenterTeacher:
    """Build ``MODEL.CLIPDISTILL.SEGMENTER_TEACHER.CONFIG_FILE`` (+ ``OPTS``), load its
    ``WEIGHTS`` strictly, and wrap it frozen on the student's device."""
    from detectron2.modeling import build_model

    from ...engine.checkpoint import SegmenterCheckpointer
    from ...engine.setup import get_clipdistill_cfg
    from ..segmenter import OpenVocabSegmenter

    t = cfg.MODEL.CLIPDISTILL.SEGMENTER_TEACHER
    if not t.CONFIG_FILE:
        raise ConfigError(
            f"MODEL.CLIPDISTILL.LOSS.SEG_KD_WEIGHT > 0 needs a teacher segmenter: set "
            f"{_KEY}.CONFIG_FILE to its config (e.g. configs/maskclip/...yaml) and {_KEY}.WEIGHTS"
        )
    opts = list(t.OPTS) + ["MODEL.DEVICE", cfg.MODEL.DEVICE]
    if t.WEIGHTS:  # what the teacher is built for: e.g. SAN then skips downloading its CLIP
        opts += ["MODEL.WEIGHTS", t.WEIGHTS]
    if len(opts) % 2:
        raise ConfigError(f"{_KEY}.OPTS must be KEY VALUE pairs, got {list(t.OPTS)}")
    tcfg = get_clipdistill_cfg(t.CONFIG_FILE, opts)
    segmenter = build_model(tcfg)
    if not isinstance(segmenter, OpenVocabSegmenter):
        raise TypeError(
            f"{_KEY}.CONFIG_FILE={t.CONFIG_FILE} does not build a clipdistill segmenter"
        )
    if t.WEIGHTS:
        SegmenterCheckpointer(segmenter).load(t.WEIGHTS)
    else:
        logger.warning(
            f"{_KEY}.WEIGHTS is empty: the {type(segmenter).__name__} teacher keeps the weights "
            "its config builds (fine for training-free segmenters; random for trained ones)"
        )
    return SegmenterTeacher(segmenter)
