"""Classifier heads of the student, in detectron2's ``SEM_SEG_HEADS_REGISTRY``.

Both take the student's CLIP-space feature map ``F`` (``[B, C, H', W']``, L2-normalised per
location) and return per-class logits ``[B, K, H', W']`` at the same stride. Losses are computed by
the meta-architecture (``losses.py``), since the cross-entropy is one of
several distillation terms.
"""

import math
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import Conv2d, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

__all__ = ["TextEmbeddingHead", "ClosedSetHead", "build_student_head"]


@SEM_SEG_HEADS_REGISTRY.register()
class TextEmbeddingHead(nn.Module):
    """Open-vocabulary head: ``logits_k = s * <F, T_k> + b`` with learnable ``s`` and ``b``.

    The classifier is the vocabulary's text embeddings ``T`` (``[K, C]``), passed at call time, so
    any vocabulary works at inference.
    """

    open_vocabulary = True

    @configurable
    def __init__(self, *, logit_scale_init: float = 10.0):
        """
        Args:
            logit_scale_init (float): initial ``s`` (``MODEL.SEM_SEG_HEAD.LOGIT_SCALE_INIT``);
                stored as a log so it stays positive, clamped to at most 100 as in CLIP.
        """
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(logit_scale_init)))
        self.bias = nn.Parameter(torch.zeros(()))

    @classmethod
    def from_config(cls, cfg, input_shape=None):
        return {"logit_scale_init": cfg.MODEL.SEM_SEG_HEAD.LOGIT_SCALE_INIT}

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=100.0)

    def forward(self, features: torch.Tensor, text_embeddings: Optional[torch.Tensor]):
        if text_embeddings is None:
            raise ValueError("TextEmbeddingHead needs the vocabulary's text embeddings")
        text = text_embeddings.to(features.dtype)
        if torch.onnx.is_in_onnx_export():
            # the same product as a MatMul: onnxruntime's Einsum ran it at about 0.5 GMAC/s
            # (85-90 ms of a 512x512 ResNet-18-D student's 480 ms); eager PyTorch keeps einsum,
            # so training's numbers do not move
            b, c, h, w = features.shape
            logits = torch.matmul(text, features.reshape(b, c, h * w)).reshape(b, -1, h, w)
        else:
            logits = torch.einsum("bchw,kc->bkhw", features, text)
        return logits * self.logit_scale + self.bias


@SEM_SEG_HEADS_REGISTRY.register()
class ClosedSetHead(nn.Module):
    """Closed-set alternative: 3x3 conv + 1x1 classifier over ``MODEL.SEM_SEG_HEAD.NUM_CLASSES``."""

    open_vocabulary = False

    @configurable
    def __init__(
        self, *, in_channels: int, num_classes: int, conv_dim: int = 256, norm: str = "BN"
    ):
        super().__init__()
        self.conv = Conv2d(
            in_channels,
            conv_dim,
            3,
            padding=1,
            bias=not norm,
            norm=get_norm(norm, conv_dim),
            activation=F.relu,
        )
        self.predictor = Conv2d(conv_dim, num_classes, 1)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.zeros_(self.predictor.bias)

    @classmethod
    def from_config(cls, cfg, input_shape=None):
        return {
            "in_channels": input_shape,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "conv_dim": cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM,
            "norm": cfg.MODEL.SEM_SEG_HEAD.NORM,
        }

    def forward(self, features: torch.Tensor, text_embeddings: Optional[torch.Tensor] = None):
        return self.predictor(self.conv(features))


def build_student_head(cfg, embed_dim: int) -> nn.Module:
    """Build ``MODEL.SEM_SEG_HEAD.NAME`` for features of width ``embed_dim``."""
    return SEM_SEG_HEADS_REGISTRY.get(cfg.MODEL.SEM_SEG_HEAD.NAME)(cfg, embed_dim)
