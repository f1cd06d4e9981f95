"""The image towers of the testbed's own small CLIPs, named in open_clip model configs.

open_clip's model configs cannot describe a convolutional stem or a custom CNN, but they can name
a timm model as the image tower (``vision_cfg.timm_model_name``): this module registers two
entry points with timm, each returning a module that open_clip wraps as ``TimmModel.trunk`` with
an empty head, so the testbed CLIPs are built, saved and loaded by open_clip like any other model
(``vit.unwrap_tower`` returns the trunk):

- ``clipdistill_cnn8_testbed`` (``CNN-8-testbed``, the shipped teacher): ``DenseEmbeddingCNN``, a
  BatchNorm CNN whose image embedding is the mean of per-location embeddings;
- ``clipdistill_vit8_convstem_testbed`` (``ViT-8-testbed``): open_clip's ``VisionTransformer``
  with a BatchNorm convolutional stem as patch embedding and average pooling, so every ViT code
  path (dense features, positional-embedding resampling) runs on it.

A linear patch embedding makes a tiny ViT trained from scratch for a few thousand steps very slow
to learn shape; the conv stem and the CNN learn it within a few hundred (docs/TESTBED.md).
"""

from typing import Sequence

import timm
import torch
from open_clip.transformer import VisionTransformer
from torch import nn

__all__ = [
    "ConvStem",
    "ConvStemVisionTransformer",
    "DenseEmbeddingCNN",
    "TIMM_TESTBED_VIT",
    "TIMM_TESTBED_CNN",
]

#: timm name of the testbed CLIP's image tower
TIMM_TESTBED_VIT = "clipdistill_vit8_convstem_testbed"


class ConvStem(nn.Sequential):
    """``3x3 stride-2 conv -> BatchNorm -> ReLU`` per channel count, then a 1x1 projection to the
    transformer width: a patch embedding of patch size ``2 ** len(channels)``."""

    def __init__(self, channels: Sequence[int], width: int):
        layers = []
        c_in = 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(True)]
            c_in = c
        layers.append(nn.Conv2d(c_in, width, 1))
        super().__init__(*layers)


class ConvStemVisionTransformer(VisionTransformer):
    """open_clip's ``VisionTransformer`` with ``conv1`` (the patch embedding) replaced by a
    ``ConvStem``; ``patch_size`` is the stem's total stride. Everything else is unchanged."""

    def __init__(self, *, stem_channels: Sequence[int] = (32, 64, 128), **kwargs):
        patch = 2 ** len(stem_channels)
        if kwargs.setdefault("patch_size", patch) != patch:
            raise ValueError(f"patch_size {kwargs['patch_size']} != stem stride {patch}")
        super().__init__(**kwargs)
        self.conv1 = ConvStem(stem_channels, self.class_embedding.shape[0])


# ------------------------------------------------------------------------------------------- CNN
#: timm name of the testbed CLIP's convolutional image tower
TIMM_TESTBED_CNN = "clipdistill_cnn8_testbed"


class _ResBlock(nn.Module):
    """``x + BN(conv3x3(ReLU(BN(conv3x3(x)))))``, then ReLU."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(x + y)


class DenseEmbeddingCNN(nn.Module):
    """A small CNN image tower whose image embedding is the mean of per-location embeddings.

    ``ConvStem`` (stride ``2 ** len(stem_channels)``) -> ReLU -> ``depth`` residual 3x3 blocks
    at that stride -> 1x1 projection to ``output_dim`` at every location (``dense_embeddings``,
    ``[B, output_dim, H/stride, W/stride]``); ``forward`` is their spatial mean. The embedding is
    linear in the per-location embeddings, so each location's embedding is a dense feature in
    the joint space with a bounded receptive field (a class activation map, Zhou et al., 2016),
    read by the dense method ``"tokens"``.
    """

    def __init__(
        self,
        *,
        image_size: int,
        output_dim: int,
        stem_channels: Sequence[int] = (32, 64, 128),
        width: int = 128,
        depth: int = 4,
    ):
        super().__init__()
        self.image_size = (image_size, image_size)
        self.patch_size = (2 ** len(stem_channels),) * 2
        self.output_dim = output_dim
        self.stem = ConvStem(stem_channels, width)
        self.blocks = nn.Sequential(*[_ResBlock(width) for _ in range(depth)])
        self.proj = nn.Conv2d(width, output_dim, 1)

    def dense_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, output_dim, H / stride, W / stride]``, not normalised."""
        return self.proj(self.blocks(torch.relu(self.stem(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_embeddings(x).mean(dim=(2, 3))


def _register() -> None:
    if timm.is_model(TIMM_TESTBED_VIT):
        return

    @timm.models.register_model
    def clipdistill_vit8_convstem_testbed(pretrained=False, num_classes=128, **kwargs):
        """Image tower of ``ViT-8-testbed``: 64x64 input, conv stem to 8x8 tokens, width 128,
        4 layers, 4 heads, output ``num_classes`` (open_clip passes the joint width; timm's other
        arguments, e.g. ``global_pool``, do not apply). The image embedding is the mean of the
        patch tokens' embeddings (``pool_type="avg"``), so that each token's embedding is a
        dense feature in the joint space (a class-token tower this small has patch tokens that
        MaskCLIP cannot read: docs/TESTBED.md)."""
        if pretrained:
            raise ValueError(f"{TIMM_TESTBED_VIT} has no pretrained weights")
        return ConvStemVisionTransformer(
            image_size=64,
            width=128,
            layers=4,
            heads=4,
            mlp_ratio=4.0,
            output_dim=num_classes,
            pool_type="avg",
        )

    assert clipdistill_vit8_convstem_testbed.__name__ == TIMM_TESTBED_VIT

    @timm.models.register_model
    def clipdistill_cnn8_testbed(pretrained=False, num_classes=128, **kwargs):
        """Image tower of ``CNN-8-testbed``: 64x64 input, conv stem to an 8x8 grid, 4 residual
        blocks of width 128, a per-location projection to ``num_classes`` (open_clip passes the
        joint width) whose spatial mean is the image embedding."""
        if pretrained:
            raise ValueError(f"{TIMM_TESTBED_CNN} has no pretrained weights")
        return DenseEmbeddingCNN(image_size=64, output_dim=num_classes)

    assert clipdistill_cnn8_testbed.__name__ == TIMM_TESTBED_CNN


_register()
