"""OVSeg: the meta-architecture ``OVSeg`` (``meta_arch.py``), its keys (``config``) and its
building blocks: the Swin backbone, the MaskFormer proposal generator, the mask-prompted CLIP and
the inference rules. Importing it registers the backbones ``build_ovseg_swin_backbone`` and
(detectron2's) ``build_resnet_deeplab_backbone``."""

from .clip_adapter import MaskPromptCLIP, crop_regions, mask_prompt_encode, patch_keep_mask
from .config import add_ovseg_config
from .inference import (
    clip_class_probs,
    demo_scores,
    ensemble_probs,
    mask_class_probs,
    semantic_scores,
)
from .maskformer import BasePixelDecoder, OpenVocabPredictor, OVSegHead
from .meta_arch import OVSeg
from .resnet import check_deeplab_resnet_cfg
from .swin import build_ovseg_swin_backbone, SwinBackbone

__all__ = [
    "OVSeg",
    "MaskPromptCLIP",
    "crop_regions",
    "mask_prompt_encode",
    "patch_keep_mask",
    "add_ovseg_config",
    "clip_class_probs",
    "demo_scores",
    "ensemble_probs",
    "mask_class_probs",
    "semantic_scores",
    "BasePixelDecoder",
    "OpenVocabPredictor",
    "OVSegHead",
    "check_deeplab_resnet_cfg",
    "build_ovseg_swin_backbone",
    "SwinBackbone",
]
