"""Layers shared by several architectures."""

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLP"]


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
