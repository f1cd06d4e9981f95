"""Configuration keys of the distilled student ``SegStudent`` (``add_segstudent_config``) and of
its frozen CLIP teacher (``add_clip_teacher_config``, ``MODEL.CLIPDISTILL.TEACHER``).

Every key is commented and read somewhere; ``tests/test_config.py`` checks that none is dead.
"""

from typing import List

from detectron2.config import CfgNode as CN

from ...utils.checks import Problems, is_int, is_num
from ..clip.config import add_clip_keys

__all__ = ["add_segstudent_config", "add_clip_teacher_config", "check_segstudent_config"]

#: the loss weights (``MODEL.CLIPDISTILL.LOSS.<key>``) by loss name
LOSS_WEIGHT_KEYS = {
    "loss_ce": "CE_WEIGHT",
    "loss_global": "GLOBAL_WEIGHT",
    "loss_local": "LOCAL_WEIGHT",
    "loss_dense": "DENSE_WEIGHT",
    "loss_seg_kd": "SEG_KD_WEIGHT",
}


def add_clip_teacher_config(cfg: CN) -> None:
    """The student's frozen CLIP teacher (clipdistill/modeling/teacher): its distillation
    targets and the text embeddings of its head."""
    cfg.MODEL.CLIPDISTILL = CN()
    cfg.MODEL.CLIPDISTILL.TEACHER = CN()
    # NAME, WEIGHTS, TEMPLATES: which CLIP, as everywhere (clipdistill/modeling/clip/config.py)
    add_clip_keys(
        cfg.MODEL.CLIPDISTILL.TEACHER, name="ViT-B-16", weights="openai", templates="openai"
    )
    cfg.MODEL.CLIPDISTILL.TEACHER.IMAGE_SIZE = 224  # input side for the global embedding Cg
    cfg.MODEL.CLIPDISTILL.TEACHER.DENSE_IMAGE_SIZE = 448  # input side for dense features Td
    # On-disk cache of text embeddings; "" means $XDG_CACHE_HOME/clipdistill/text_embeddings.
    cfg.MODEL.CLIPDISTILL.TEACHER.TEXT_CACHE_DIR = ""
    # How the distillation target Td is computed (clipdistill/modeling/clip/dense.py): one of
    # DENSE_METHODS, see MODEL.MASKCLIP.CLIP.DENSE_METHOD; "value_only" by default (last block's
    # value path, no residual, no MLP).
    cfg.MODEL.CLIPDISTILL.TEACHER.DENSE_METHOD = "value_only"


def add_segstudent_config(cfg: CN) -> None:
    """The distilled student ``SegStudent`` (``meta_arch.py`` beside this file)."""
    # ---- student backbone: any `features_only` timm model (clipdistill/modeling/backbone) ----
    cfg.MODEL.TIMM = CN()
    cfg.MODEL.TIMM.NAME = "efficientnet_b0"  # timm model name
    # "timm": timm's pretrained (ImageNet) weights for NAME; a path: a local timm checkpoint
    # (.pth/.bin/.safetensors); "": random init (only the toy config does this).
    cfg.MODEL.TIMM.WEIGHTS = "timm"
    # timm feature levels to expose, named res2..res5 for levels 1..4 (strides 4..32).
    cfg.MODEL.TIMM.OUT_INDICES = [1, 2, 3, 4]

    # ---- the student's open-vocabulary head (head.py) ----
    # Initial value of the learnable logit scale s in logits = s * <F, T_k> + b.
    cfg.MODEL.SEM_SEG_HEAD.LOGIT_SCALE_INIT = 10.0

    # Compute dtype of the student at inference on CUDA: "float32", "float16" or "bfloat16"
    # (autocast around backbone -> head; logits are upsampled in float32). Ignored on the CPU,
    # where inference always runs in float32 (SegStudent.inference).
    cfg.MODEL.CLIPDISTILL.INFERENCE_DTYPE = "float32"
    # Keep the student's convolutions (weights and inputs) in channels-last memory format, in
    # training and inference (faster with oneDNN on CPU and with cuDNN on tensor-core GPUs;
    # results equal within float tolerance).
    cfg.MODEL.CLIPDISTILL.CHANNELS_LAST = True
    # Deployment (the predictor behind the demo and the web demo, the benchmark and the
    # comparison's timings) folds the student's BatchNorms into the preceding convolutions
    # (clipdistill/modeling/batch_norm.py; checked numerically against the model). Evaluation
    # (Trainer.test) runs the model as trained.
    cfg.MODEL.CLIPDISTILL.FOLD_BN = True

    # ---- teacher-output cache (data/teacher_cache, tools/cache_teacher.py, docs/CACHE.md) ----
    cfg.MODEL.CLIPDISTILL.TEACHER_CACHE = CN()
    # Train from the cache instead of running the teacher on every step (global + dense targets
    # are read by SemSegDatasetMapper and warped with the same crop/flip as the image).
    cfg.MODEL.CLIPDISTILL.TEACHER_CACHE.ENABLED = False
    # Root folder of the cache; each dataset lives in DIR/<dataset name>/ (manifest.json + shards).
    cfg.MODEL.CLIPDISTILL.TEACHER_CACHE.DIR = "output/teacher_cache"
    # Images per safetensors shard when building (the unit of resume and of checksumming).
    cfg.MODEL.CLIPDISTILL.TEACHER_CACHE.SHARD_SIZE = 256
    # Global target Cg of an augmented crop: "image" = the cached embedding of the whole image
    # (CLIP's class-token path, as the online teacher but before the crop), "crop_pool" = the
    # normalised mean of the cached dense features inside the crop (follows the crop).
    cfg.MODEL.CLIPDISTILL.TEACHER_CACHE.GLOBAL_TARGET = "image"
    # Check every shard's sha256 against the manifest when a process first opens it.
    cfg.MODEL.CLIPDISTILL.TEACHER_CACHE.VERIFY = True

    # ---- distillation losses (losses.py), already-weighted when logged ----
    cfg.MODEL.CLIPDISTILL.LOSS = CN()
    cfg.MODEL.CLIPDISTILL.LOSS.CE_WEIGHT = 1.0
    cfg.MODEL.CLIPDISTILL.LOSS.GLOBAL_WEIGHT = 1.0
    cfg.MODEL.CLIPDISTILL.LOSS.LOCAL_WEIGHT = 1.0
    cfg.MODEL.CLIPDISTILL.LOSS.DENSE_WEIGHT = 0.0  # 0 disables loss_dense (and the dense teacher)
    # loss_seg_kd: KL from the segmenter teacher's per-pixel class probabilities over the training
    # vocabulary (MODEL.CLIPDISTILL.SEGMENTER_TEACHER); 0 disables it (and the segmenter teacher).
    cfg.MODEL.CLIPDISTILL.LOSS.SEG_KD_WEIGHT = 0.0
    cfg.MODEL.CLIPDISTILL.LOSS.TEMPERATURE = 0.07  # tau of the InfoNCE losses
    cfg.MODEL.CLIPDISTILL.LOSS.ATTN_TEMPERATURE = 0.07  # T_attn of loss_local's attention pooling
    # Gather embeddings from all processes so InfoNCE sees the global batch as negatives.
    cfg.MODEL.CLIPDISTILL.LOSS.GATHER = True

    # ---- another clipdistill segmenter as teacher (modeling/teacher/segmenter_teacher.py) ----
    cfg.MODEL.CLIPDISTILL.SEGMENTER_TEACHER = CN()
    # Config file of the teacher segmenter (e.g. configs/san/...yaml, configs/maskclip/...yaml).
    cfg.MODEL.CLIPDISTILL.SEGMENTER_TEACHER.CONFIG_FILE = ""
    # Its checkpoint, loaded strictly (official SAN/OVSeg releases load through their conversion
    # hook); "" keeps what its config builds (training-free segmenters need nothing).
    cfg.MODEL.CLIPDISTILL.SEGMENTER_TEACHER.WEIGHTS = ""
    # Overrides of the teacher's config, as KEY VALUE pairs (MODEL.DEVICE follows the student's).
    cfg.MODEL.CLIPDISTILL.SEGMENTER_TEACHER.OPTS = []


def check_segstudent_config(cfg: CN, training: bool) -> List[str]:
    """The problems of ``SegStudent``'s keys that its constructors do not check (the teacher's
    are checked by ``CLIPTeacher``): ``SegStudent.config_problems``."""
    p = Problems()
    c = cfg.MODEL.CLIPDISTILL
    for key in ("TEMPERATURE", "ATTN_TEMPERATURE"):
        v = c.LOSS[key]
        p.need(is_num(v) and v > 0, f"MODEL.CLIPDISTILL.LOSS.{key}", v, "a number > 0")
    for key in LOSS_WEIGHT_KEYS.values():
        v = c.LOSS[key]
        p.need(is_num(v) and v >= 0, f"MODEL.CLIPDISTILL.LOSS.{key}", v, "a number >= 0")
    v = c.TEACHER_CACHE.SHARD_SIZE
    p.need(is_int(v) and v > 0, "MODEL.CLIPDISTILL.TEACHER_CACHE.SHARD_SIZE", v, "an integer > 0")
    if training:
        weights = [c.LOSS[key] for key in LOSS_WEIGHT_KEYS.values()]
        p.need(
            any(is_num(w) and w > 0 for w in weights),
            "MODEL.CLIPDISTILL.LOSS.*_WEIGHT",
            weights,
            "at least one loss weight > 0 (" + ", ".join(LOSS_WEIGHT_KEYS.values()) + ")",
        )
    return p
