"""Configuration keys of the training-free ``MaskCLIP`` segmenters (``add_maskclip_config``)."""

from detectron2.config import CfgNode as CN

from ..clip.config import add_clip_keys

__all__ = ["add_maskclip_config"]


def add_maskclip_config(cfg: CN) -> None:
    """The training-free ``MaskCLIP`` segmenters (``meta_arch.py`` beside this file): the CLIP
    and its dense method (``MODEL.MASKCLIP.CLIP``) and the inference protocol. Defaults: SCLIP's
    and NACLIP's code (configs/maskclip/ sets each paper's)."""
    cfg.MODEL.MASKCLIP = CN()
    cfg.MODEL.MASKCLIP.CLIP = CN()
    # NAME, WEIGHTS, TEMPLATES: which CLIP, as everywhere (clipdistill/modeling/clip/config.py)
    add_clip_keys(cfg.MODEL.MASKCLIP.CLIP, name="ViT-B-16", weights="openai", templates="openai")
    # How dense features are computed (clipdistill/modeling/clip/dense.py): "value_only" (last
    # block's value path, no residual, no MLP), "maskclip" (MaskCLIP's official form, residual
    # and MLP kept), "sclip", "clearclip", "naclip", or "tokens" (the tower's own patch tokens,
    # the last block unchanged: the dense features of towers whose image embedding is the mean
    # of per-location embeddings, such as the testbed CLIPs; docs/TESTBED.md).
    cfg.MODEL.MASKCLIP.CLIP.DENSE_METHOD = "value_only"
    # Sliding-window side in pixels on the test-resized image (INPUT.MIN_SIZE_TEST); 0: one pass
    # over the whole image.
    cfg.MODEL.MASKCLIP.SLIDE_WINDOW = 224
    cfg.MODEL.MASKCLIP.SLIDE_STRIDE = 112  # step between windows in pixels
    # Class probabilities are softmax(LOGIT_SCALE * cosine(dense feature, text embedding)).
    cfg.MODEL.MASKCLIP.LOGIT_SCALE = 40.0
    # Background rules for vocabularies whose class 0 is the background (VOC-21): pixels whose
    # best probability is below PROB_THRESHOLD go to class 0; a class other than 0 predicted on at
    # most AREA_THRESHOLD of the non-background pixels is dropped. 0 disables each.
    cfg.MODEL.MASKCLIP.PROB_THRESHOLD = 0.0
    cfg.MODEL.MASKCLIP.AREA_THRESHOLD = 0.0
    # Pad each window to a multiple of the patch size (ClearCLIP) instead of letting the patch
    # convolution drop the remainder (MaskCLIP, SCLIP, NACLIP).
    cfg.MODEL.MASKCLIP.PAD_WINDOWS = False
