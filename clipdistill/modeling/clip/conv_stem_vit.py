"""An open_clip ``VisionTransformer`` whose patch embedding is a small convolutional stem.

A linear patch embedding makes a tiny ViT trained from scratch on a few thousand steps very slow
to learn shape; a BatchNorm convolutional stem (stride 2 x 3 = the patch size 8) learns it about
twice as fast (docs/TESTBED.md). open_clip's model configs cannot describe a stem, but they can
name a timm model as the image tower (``vision_cfg.timm_model_name``): this module registers
``clipdistill_vit8_convstem_testbed`` with timm, an entry point that returns this open_clip
``VisionTransformer`` (open_clip wraps it as ``TimmModel.trunk`` with an empty head). So the
testbed CLIP (``model_configs/ViT-8-testbed.json``) is built, saved and loaded by open_clip like
any other model, and every ViT code path (dense features, positional-embedding resampling) runs
on the trunk: see ``vit.vision_transformer_of``.
"""

from typing import Sequence

import timm
from open_clip.transformer import VisionTransformer
from torch import nn

__all__ = ["ConvStem", "ConvStemVisionTransformer", "TIMM_TESTBED_VIT"]

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


_register()
