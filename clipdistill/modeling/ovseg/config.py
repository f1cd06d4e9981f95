"""Configuration keys of OVSeg (``add_ovseg_config``): ``MODEL.OVSEG.*`` (CLIP, ensemble, demo),
MaskFormer's ``MODEL.MASK_FORMER.*`` (proposal generator and set criterion), the Swin backbone's
``MODEL.SWIN.*`` and the DeepLab ResNet keys of the R101c backbone.

Defaults are those of the official code; ``configs/ovseg/`` sets the published models.
"""

from detectron2.config import CfgNode as CN

__all__ = ["add_ovseg_config"]


def add_ovseg_config(cfg: CN) -> None:
    """Add OVSeg's keys (with their defaults) to a detectron2 config, in place."""
    cfg.MODEL.OVSEG = CN()
    # ---- CLIP (clipdistill/modeling/ovseg/clip_adapter.py); frozen, OpenAI ViT architecture ----
    cfg.MODEL.OVSEG.CLIP = CN()
    # open_clip architecture: "ViT-L-14" (Swin-B model) or "ViT-B-16" (R101c model).
    cfg.MODEL.OVSEG.CLIP.NAME = "ViT-B-16"
    # Initial CLIP weights: an open_clip tag ("openai"), a local file (e.g. a mask-adapted CLIP
    # fine-tuned with open_clip) or "" (seeded random init). Loading an OVSeg checkpoint replaces
    # them, so evaluating a released checkpoint needs no CLIP download: set "".
    cfg.MODEL.OVSEG.CLIP.WEIGHTS = "openai"
    # Build CLIP with QuickGELU, the activation of OpenAI's CLIP (needed for local files and
    # random init; open_clip only applies it automatically for its "openai" tag).
    cfg.MODEL.OVSEG.CLIP.FORCE_QUICK_GELU = True
    # Prompt templates of the text embeddings: "vild" (14, OVSeg's default), "openai" (80),
    # "simple" (7) or "single".
    cfg.MODEL.OVSEG.CLIP.TEMPLATES = "vild"
    # Mask prompt tuning: number of learned mask embeddings (input + after the first DEPTH - 1
    # blocks), and whether the region mask is given to CLIP at inference.
    cfg.MODEL.OVSEG.CLIP.MASK_PROMPT_DEPTH = 3
    cfg.MODEL.OVSEG.CLIP.MASK_PROMPT_FWD = False
    # Colour outside the region in a masked crop: "mean" (CLIP's mean colour) or "zero".
    cfg.MODEL.OVSEG.CLIP.MASK_FILL = "mean"
    # ---- inference (meta_arch.py) ----
    # Sigmoid threshold that binarises a proposal for its CLIP crop (and in the demo rule).
    cfg.MODEL.OVSEG.MASK_THR = 0.4
    # Classify the proposals with CLIP as well and ensemble p_mf^(1-w) * p_clip^w.
    cfg.MODEL.OVSEG.ENSEMBLE = True
    # w of the ensemble; 0 = CLIP only (on the non-empty proposals).
    cfg.MODEL.OVSEG.ENSEMBLE_WEIGHT = 0.7
    # The published demo's rule: each class keeps only its best proposal (binarised); a
    # one-class vocabulary is padded with "others". Use with ENSEMBLE_WEIGHT 0 as the demo does.
    cfg.MODEL.OVSEG.DEMO = False

    # ---- MaskFormer proposal generator (clipdistill/modeling/ovseg/maskformer.py) ----
    cfg.MODEL.MASK_FORMER = CN()
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 256  # transformer decoder width
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 100  # proposals per image
    cfg.MODEL.MASK_FORMER.NHEADS = 8
    cfg.MODEL.MASK_FORMER.DROPOUT = 0.1
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 2048
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 6  # decoder layers (no encoder layers)
    # Backbone feature the decoder attends to.
    cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE = "res5"
    # Pad the batch to a multiple of this (<= 0: the backbone's own requirement).
    cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY = 32
    # ---- set criterion (clipdistill/modeling/criterion), MaskFormer's losses ----
    # Losses on every decoder layer's outputs (also makes the decoder return them).
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = True
    cfg.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT = 0.1  # cross-entropy weight of the no-object class
    cfg.MODEL.MASK_FORMER.DICE_WEIGHT = 1.0  # dice loss (and matching cost) weight
    cfg.MODEL.MASK_FORMER.MASK_WEIGHT = 20.0  # sigmoid focal loss (and matching cost) weight
    # Pixel decoder output channels (the mask embeddings' width).
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 256
    # Query embeddings in the CLIP text space: width (= CLIP's joint width), MLP hidden width,
    # MLP layers.
    cfg.MODEL.SEM_SEG_HEAD.EMBEDDING_DIM = 512
    cfg.MODEL.SEM_SEG_HEAD.EMBED_HIDDEN_DIM = 1024
    cfg.MODEL.SEM_SEG_HEAD.EMBED_LAYERS = 2

    # ---- Swin backbone, MODEL.BACKBONE.NAME "build_ovseg_swin_backbone" (ovseg/swin.py) ----
    cfg.MODEL.SWIN = CN()
    cfg.MODEL.SWIN.PRETRAIN_IMG_SIZE = 224  # sizes the absolute position embedding (APE)
    cfg.MODEL.SWIN.PATCH_SIZE = 4
    cfg.MODEL.SWIN.EMBED_DIM = 96
    cfg.MODEL.SWIN.DEPTHS = [2, 2, 6, 2]
    cfg.MODEL.SWIN.NUM_HEADS = [3, 6, 12, 24]
    cfg.MODEL.SWIN.WINDOW_SIZE = 7
    cfg.MODEL.SWIN.MLP_RATIO = 4.0
    cfg.MODEL.SWIN.QKV_BIAS = True
    cfg.MODEL.SWIN.DROP_RATE = 0.0
    cfg.MODEL.SWIN.ATTN_DROP_RATE = 0.0
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.3  # stochastic depth, linearly increasing over the blocks
    cfg.MODEL.SWIN.APE = False  # absolute position embedding
    cfg.MODEL.SWIN.PATCH_NORM = True  # LayerNorm after the patch embedding
    cfg.MODEL.SWIN.OUT_FEATURES = ["res2", "res3", "res4", "res5"]

    # ---- DeepLab ResNet, MODEL.BACKBONE.NAME "build_resnet_deeplab_backbone" (R101c) ----
    # (detectron2.projects.deeplab builds it; these are the keys it needs beyond MODEL.RESNETS)
    # Stem: "deeplab" (three 3x3 convolutions, the "c" of R101c) or "basic".
    cfg.MODEL.RESNETS.STEM_TYPE = "deeplab"
    cfg.MODEL.RESNETS.RES4_DILATION = 1  # 1 (stride 16) or 2 (stride 8, dilated)
    cfg.MODEL.RESNETS.RES5_MULTI_GRID = [1, 2, 4]  # dilation multipliers of res5's three blocks
