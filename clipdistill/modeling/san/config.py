"""Configuration keys of SAN (``add_san_config``).

Names follow the published SAN code (``MODEL.SAN.*``, ``MODEL.SIDE_ADAPTER.*``) so its configs
translate key for key, except for which CLIP, spelled as everywhere in clipdistill
(``MODEL.SAN.CLIP.NAME``, ``.WEIGHTS``, ``.TEMPLATES``; the published ``CLIP_MODEL_NAME``,
``CLIP_PRETRAINED_NAME`` and ``CLIP_TEMPLATE_SET`` still load, converted with a warning:
``clipdistill/config/compat.py``); keys that selected between a single implementation (the
side-adapter and fusion registries, the unused cross-attention recognition) are left out.
"""

from detectron2.config import CfgNode as CN

from ..clip.config import add_clip_keys

__all__ = ["add_san_config"]


def add_san_config(cfg: CN) -> None:
    """Add SAN's keys (with the published defaults, ViT-B/16) to a detectron2 config, in place."""
    cfg.MODEL.SAN = CN()
    # ---- training vocabulary and loss (Mask2Former's set criterion) ----
    # Number of training classes: the length of the training dataset's stuff_classes, and the
    # size (+1, no object) of the criterion's class weights stored in checkpoints (171 published).
    cfg.MODEL.SAN.NUM_CLASSES = 171
    cfg.MODEL.SAN.NO_OBJECT_WEIGHT = 0.1  # cross-entropy weight of the no-object class
    cfg.MODEL.SAN.CLASS_WEIGHT = 2.0  # weight of loss_ce and of the class cost in matching
    cfg.MODEL.SAN.MASK_WEIGHT = 5.0  # weight of loss_mask (BCE) and of its matching cost
    cfg.MODEL.SAN.DICE_WEIGHT = 5.0  # weight of loss_dice and of its matching cost
    # Points per mask for the matching costs (uniform) and the mask losses (importance sampled).
    cfg.MODEL.SAN.TRAIN_NUM_POINTS = 112 * 112
    cfg.MODEL.SAN.OVERSAMPLE_RATIO = 3.0  # candidate points per sampled point
    cfg.MODEL.SAN.IMPORTANCE_SAMPLE_RATIO = 0.75  # share of points taken where most uncertain

    # ---- CLIP (open_clip) ----
    # NAME, WEIGHTS, TEMPLATES: which CLIP, as everywhere (clipdistill/modeling/clip/config.py).
    # NAME: "/" is accepted for "-" ("ViT-B/16", as the published configs say). WEIGHTS are for
    # training from scratch: not loaded when MODEL.WEIGHTS is set (a SAN checkpoint holds the
    # CLIP weights); the tag still selects the activation (the OpenAI weights use QuickGELU; with
    # a local OpenAI file use the "-quickgelu" model name). TEMPLATES: "vild" (14) is published,
    # "openai" (the 80 of CLIP) is the published code's "imagenet".
    cfg.MODEL.SAN.CLIP = CN()
    add_clip_keys(cfg.MODEL.SAN.CLIP, name="ViT-B-16", weights="openai", templates="vild")
    # CLIP blocks [0, IDX) form the feature extractor; blocks [IDX, end) the recognition head.
    cfg.MODEL.SAN.FEATURE_LAST_LAYER_IDX = 9
    # Parameter-name parts of the extractor / recognition head that stay trainable ("all": all).
    cfg.MODEL.SAN.CLIP_FROZEN_EXCLUDE = ["positional_embedding"]
    cfg.MODEL.SAN.CLIP_DEEPER_FROZEN_EXCLUDE = []
    # Downsampling of the attention biases to CLIP's grid: "max" (adaptive max pool), "avg", or
    # an interpolation mode ("bilinear", "bicubic", "nearest").
    cfg.MODEL.SAN.REC_DOWNSAMPLE_METHOD = "max"
    # Recognition tokens: "cls_token" (copies of CLIP's class token), "learnable_token",
    # "pos_embedding" (class token + a learned token).
    cfg.MODEL.SAN.SOS_TOKEN_FORMAT = "cls_token"
    cfg.MODEL.SAN.SIZE_DIVISIBILITY = 32  # the normalised images are zero-padded to a multiple
    # CLIP sees the (padded) input scaled by CLIP_RESOLUTION (bilinear), the side adapter the
    # input itself; False feeds both the same input.
    cfg.MODEL.SAN.ASYMETRIC_INPUT = True
    cfg.MODEL.SAN.CLIP_RESOLUTION = 0.5
    # Resize the mask logits to the output size before combining them with the class scores
    # (published); False combines them at the padded input size and resizes the result.
    cfg.MODEL.SAN.SEM_SEG_POSTPROCESS_BEFORE_INFERENCE = True
    # Training images are padded (bottom/right, pixel value 128 before normalisation, labels
    # ignored) to at least this square size, as the published data pipeline pads its 640 crops;
    # 0 disables.
    cfg.MODEL.SAN.TRAIN_PAD_SIZE = 640
    # Vocabulary augmentation of set vocabularies (demo, predictor): "" (none), "COCO-all" or
    # "COCO-stuff" appends the COCO-Stuff names (all, or the stuff ones) that are not in the
    # vocabulary; pixels won by an appended name go to an extra last class "other".
    cfg.MODEL.SAN.VOCABULARY_AUGMENTATION = ""

    # ---- side adapter ----
    cfg.MODEL.SIDE_ADAPTER = CN()
    # timm ViT of the adapter: "vit_w{144,192,240,288}n6d8_patch16" (SAN) or any plain timm ViT.
    cfg.MODEL.SIDE_ADAPTER.VIT_NAME = "vit_w240n6d8_patch16"
    cfg.MODEL.SIDE_ADAPTER.IMAGE_SIZE = 640  # native input size (its position-embedding grid)
    cfg.MODEL.SIDE_ADAPTER.DROP_PATH_RATE = 0.0  # stochastic depth of the adapter ViT
    cfg.MODEL.SIDE_ADAPTER.NUM_QUERIES = 100  # mask proposals (and recognition tokens)
    # "<clip layer>-><adapter block>": CLIP layer i (0 = embedded input) is added to the adapter's
    # visual tokens after block j (0 = before the first block).
    cfg.MODEL.SIDE_ADAPTER.FUSION_MAP = ["0->0", "3->1", "6->2", "9->3"]
    # 1-based adapter blocks decoded for deep supervision (the last one also at inference).
    cfg.MODEL.SIDE_ADAPTER.DEEP_SUPERVISION_IDXS = [7, 8]
    cfg.MODEL.SIDE_ADAPTER.ATTN_BIAS = CN()
    # Heads of the attention bias: CLIP's head count (12 for ViT-B, 16 for ViT-L) or 1 (shared).
    cfg.MODEL.SIDE_ADAPTER.ATTN_BIAS.NUM_HEADS = 12
    # Bias groups: 1 (one bias for every recognition block) or one per recognition block.
    cfg.MODEL.SIDE_ADAPTER.ATTN_BIAS.NUM_LAYERS = 1
    cfg.MODEL.SIDE_ADAPTER.ATTN_BIAS.EMBED_CHANNELS = 256  # width of the query/pixel embeddings
    cfg.MODEL.SIDE_ADAPTER.ATTN_BIAS.MLP_CHANNELS = 256  # hidden width of the decoder MLPs
    cfg.MODEL.SIDE_ADAPTER.ATTN_BIAS.MLP_NUM_LAYERS = 3  # layers of the decoder MLPs
    # Learn a scalar affine map (Linear(1, 1)) applied to the attention biases.
    cfg.MODEL.SIDE_ADAPTER.ATTN_BIAS.RESCALE_ATTN_BIAS = True

    # ---- optimizer (SAN.lr_factor) ----
    # lr factor of the trainable CLIP parameters (the extractor's positional embedding); the
    # side adapter's factor is SOLVER.BACKBONE_MULTIPLIER.
    cfg.SOLVER.CLIP_MULTIPLIER = 1.0
