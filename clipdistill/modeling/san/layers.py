"""Small building blocks of SAN: the CLIP -> side-adapter fusion."""

from typing import Tuple

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

__all__ = ["AddFusion", "conv1x1"]


def conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1)


class AddFusion(nn.Module):
    """Add projected CLIP features to the side adapter's visual tokens.

    ``input_proj`` = channel LayerNorm (eps 1e-6) + 1x1 convolution (Caffe2 Xavier init) maps the
    CLIP feature map ``[B, C_clip, h, w]`` to the adapter's width; it is resized bilinearly to
    the adapter's token grid and added to the tokens ``[B, H*W, C]``.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.input_proj = nn.Sequential(
            LayerNorm2d(in_channels, eps=1e-6), conv1x1(in_channels, out_channels)
        )
        weight_init.c2_xavier_fill(self.input_proj[-1])

    def forward(self, x: torch.Tensor, y: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        y = F.interpolate(self.input_proj(y), size=grid, mode="bilinear", align_corners=False)
        return x + y.flatten(2).transpose(1, 2)
