"""The image towers of the testbed's own small CLIPs, named in open_clip model configs.

open_clip's model configs cannot describe a convolutional stem or a custom CNN, but they can name
a timm model as the image tower (``vision_cfg.timm_model_name``): this module registers two
entry points with timm, each returning a module that open_clip wraps as ``TimmModel.trunk`` with
an empty head, so the testbed CLIPs are built, saved and loaded by open_clip like any other model
(``vit.unwrap_tower`` returns the trunk):

- ``clipdistill_cnn4_testbed`` (``CNN-4-testbed``, the shipped teacher): ``DenseEmbeddingCNN``, a
  BatchNorm CNN with a 15-pixel receptive field whose image embedding pools per-location
  embeddings by attention;
- ``clipdistill_vit8_convstem_testbed`` (``ViT-8-testbed``): open_clip's ``VisionTransformer``
  in OpenAI CLIP's layout (class token, ``ln_pre``, ``ln_post``, ``proj``) with a BatchNorm
  convolutional stem as patch embedding, so every ViT code path (dense methods, positional-
  embedding resampling, SAN/OVSeg/CaR's use of the class token) runs on it.

A linear patch embedding makes a tiny ViT trained from scratch for a few thousand steps very slow
to learn shape; the conv stem and the CNN learn it within a few hundred (docs/TESTBED.md).
"""

from typing import Sequence

import timm
import torch
import torch.nn.functional as F
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
TIMM_TESTBED_CNN = "clipdistill_cnn4_testbed"


class _PointwiseBlock(nn.Module):
    """``x + BN(conv1x1(ReLU(BN(conv1x1(x)))))``, then ReLU: depth without a wider view."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(x + y)


class DenseEmbeddingCNN(nn.Module):
    """A small CNN image tower with a bounded receptive field and an embedding at every location.

    ``ConvStem`` (stride ``2 ** len(stem_channels)``, its last 1x1 projection to ``width``) ->
    ReLU -> ``context`` 3x3 convolutions at that stride (the only spatial context beyond the
    stem) -> ``depth`` pointwise residual blocks -> a 1x1 projection to ``output_dim`` at every
    location (``dense_embeddings``, ``[B, output_dim, H/stride, W/stride]``).

    The image embedding pools the per-location embeddings:

    - ``pool="attention"`` (the shipped tower): a convex combination of the L2-normalised
      per-location embeddings, weighted by a softmax over locations of a learnt 1x1 score.
      Every location's own normalised embedding is thereby a point of the joint space that the
      contrastive loss compares with captions, and the score learns where the caption's content
      is: the per-location embedding of an object is pulled towards its name, the background's
      towards nothing in particular (it is weighted down), not towards the image's caption;
    - ``pool="mean"``: their spatial mean (a class activation map, Zhou et al., 2016).

    Either way the dense method ``"tokens"`` reads ``dense_embeddings``.
    """

    def __init__(
        self,
        *,
        image_size: int,
        output_dim: int,
        stem_channels: Sequence[int] = (32, 64),
        width: int = 128,
        context: int = 1,
        depth: int = 2,
        pool: str = "attention",
    ):
        super().__init__()
        if pool not in ("attention", "mean"):
            raise ValueError(f"pool {pool!r}: use 'attention' or 'mean'")
        self.image_size = (image_size, image_size)
        self.patch_size = (2 ** len(stem_channels),) * 2
        self.output_dim = output_dim
        self.pool = pool
        self.stem = ConvStem(stem_channels, width)
        layers = []
        for _ in range(context):
            layers += [nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)]
            layers.append(nn.ReLU(True))
        self.context = nn.Sequential(*layers)
        self.blocks = nn.Sequential(*[_PointwiseBlock(width) for _ in range(depth)])
        self.proj = nn.Conv2d(width, output_dim, 1)
        self.score = nn.Conv2d(width, 1, 1) if pool == "attention" else None

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.context(torch.relu(self.stem(x))))

    def dense_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, output_dim, H / stride, W / stride]``, not normalised."""
        return self.proj(self._trunk(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self._trunk(x)
        dense = self.proj(feats).flatten(2)  # [B, D, N]
        if self.score is None:
            return dense.mean(dim=2)
        weights = torch.softmax(self.score(feats).flatten(2), dim=2)  # [B, 1, N]
        return (F.normalize(dense, dim=1) * weights).sum(dim=2)


def _register() -> None:
    if timm.is_model(TIMM_TESTBED_VIT):
        return

    @timm.models.register_model
    def clipdistill_vit8_convstem_testbed(pretrained=False, num_classes=128, **kwargs):
        """Image tower of ``ViT-8-testbed``: 64x64 input, conv stem to 8x8 tokens, width 128,
        4 layers, 4 heads, output ``num_classes`` (open_clip passes the joint width; timm's other
        arguments, e.g. ``global_pool``, do not apply). OpenAI CLIP's layout: a class token
        whose ``ln_post`` and ``proj`` are the image embedding (``pool_type="tok"``), ``ln_pre``,
        so that SAN, OVSeg, CaR and the training-free dense methods read it as they read
        OpenAI's ViTs."""
        if pretrained:
            raise ValueError(f"{TIMM_TESTBED_VIT} has no pretrained weights")
        return ConvStemVisionTransformer(
            image_size=64,
            width=128,
            layers=4,
            heads=4,
            mlp_ratio=4.0,
            output_dim=num_classes,
            pool_type="tok",
        )

    assert clipdistill_vit8_convstem_testbed.__name__ == TIMM_TESTBED_VIT

    @timm.models.register_model
    def clipdistill_cnn4_testbed(pretrained=False, num_classes=128, **kwargs):
        """Image tower of ``CNN-4-testbed``: 64x64 input, a two-layer conv stem to a 16x16 grid,
        one 3x3 convolution and two pointwise blocks of width 128 (a 15-pixel receptive field),
        a per-location projection to ``num_classes`` (open_clip passes the joint width), pooled
        by attention over the normalised per-location embeddings."""
        if pretrained:
            raise ValueError(f"{TIMM_TESTBED_CNN} has no pretrained weights")
        return DenseEmbeddingCNN(image_size=64, output_dim=num_classes)

    assert clipdistill_cnn4_testbed.__name__ == TIMM_TESTBED_CNN


_register()
