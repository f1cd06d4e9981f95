"""Small building blocks of SAN: the MLP of the mask decoder and the CLIP -> side-adapter fusion."""

from typing import Callable, Tuple

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

__all__ = ["MLP", "AddFusion"]


class MLP(nn.Module):
    """``num_layers`` affine layers (``nn.Linear``, or any ``affine(in, out)`` factory such as a
    1x1 convolution) with ReLU between them (not after the last). Parameters: ``layers.<i>``."""

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        affine: Callable[[int, int], nn.Module] = nn.Linear,
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MLP: num_layers={num_layers} must be >= 1")
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(affine(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return x


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
