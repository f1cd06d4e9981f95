"""Any clipdistill segmenter (SAN, OVSeg, CaR, MaskCLIP, another student...) as a frozen teacher
whose per-pixel class probabilities a student distils (``loss_seg_kd``). It is built from its own
config file and checkpoint by ``clipdistill.engine.build_segmenter_teacher``."""

from typing import Sequence

import torch
from torch import nn

from .frozen import FrozenAuxiliary

__all__ = ["SegmenterTeacher"]


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
