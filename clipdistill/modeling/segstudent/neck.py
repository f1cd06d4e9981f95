"""``proj`` of the student: fuse multi-scale backbone features into one map at a common stride."""

from typing import Dict, List

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm

__all__ = ["FusionNeck"]


class FusionNeck(nn.Module):
    """Lateral 1x1 conv per scale to width ``conv_dim``, bilinear resize to ``common_stride``, sum,
    then a 3x3 conv (FPN-lite; one resize per scale, no top-down chain).

    NOTE: this interface is experimental.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        in_features: List[str],
        conv_dim: int,
        common_stride: int,
        norm: str = "BN",
    ):
        super().__init__()
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES {missing} are not backbone outputs "
                f"{sorted(input_shape)}"
            )
        self.in_features = list(in_features)
        self.common_stride = common_stride
        self.lateral = nn.ModuleDict(
            {
                f: Conv2d(
                    input_shape[f].channels,
                    conv_dim,
                    1,
                    bias=not norm,
                    norm=get_norm(norm, conv_dim),
                    activation=F.relu,
                )
                for f in self.in_features
            }
        )
        self.output = Conv2d(
            conv_dim,
            conv_dim,
            3,
            padding=1,
            bias=not norm,
            norm=get_norm(norm, conv_dim),
            activation=F.relu,
        )
        self.out_channels = conv_dim

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        return {
            "input_shape": input_shape,
            "in_features": cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES,
            "conv_dim": cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM,
            "common_stride": cfg.MODEL.SEM_SEG_HEAD.COMMON_STRIDE,
            "norm": cfg.MODEL.SEM_SEG_HEAD.NORM,
        }

    def forward(self, features: Dict[str, torch.Tensor], input_hw) -> torch.Tensor:
        size = (
            -(-input_hw[0] // self.common_stride),
            -(-input_hw[1] // self.common_stride),
        )
        out = None
        for f in self.in_features:
            x = self.lateral[f](features[f])
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            out = x if out is None else out + x
        return self.output(out)
