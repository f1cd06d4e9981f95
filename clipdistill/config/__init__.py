"""Configuration of clipdistill: the keys (one ``add_<arch>_config`` per architecture, all applied
by ``add_clipdistill_config``; as detectron2 projects do, every architecture's keys exist in every
config and ``MODEL.META_ARCHITECTURE`` picks the one that is read), loading
(``get_clipdistill_cfg``) and the up-front checks (``validate_config``).

Every key is commented and read somewhere; ``tests/test_config.py`` checks that none is dead. Core
detectron2 keys that the project reuses (``MODEL.SEM_SEG_HEAD.*``, ``INPUT.CROP``, ...) keep their
detectron2 meaning.
"""

from detectron2.config import CfgNode as CN

from ..modeling.car.config import add_car_config
from ..modeling.ovseg.config import add_ovseg_config
from ..modeling.san.config import add_san_config

__all__ = [
    "get_clipdistill_cfg",
    "validate_config",
    "check_datasets_registered",
    "add_clipdistill_config",
    "add_engine_config",
    "add_clip_teacher_config",
    "add_segstudent_config",
    "add_maskclip_config",
    "add_san_config",
    "add_ovseg_config",
]


def add_clipdistill_config(cfg: CN) -> None:
    """Add every architecture's keys (with their defaults) to a detectron2 config, in place."""
    add_engine_config(cfg)
    add_clip_teacher_config(cfg)
    add_segstudent_config(cfg)
    add_maskclip_config(cfg)
    add_san_config(cfg)
    add_car_config(cfg)
    add_ovseg_config(cfg)


def add_engine_config(cfg: CN) -> None:
    """Keys of the Trainer shared by every architecture (clipdistill/engine)."""
    cfg.SOLVER.OPTIMIZER = "ADAMW"  # "ADAMW" or "SGD"
    # Weight decay of the parameters a model lists in `no_weight_decay_names` (SAN: position
    # embeddings and queries).
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    # LR_SCHEDULER_NAME "WarmupPolyLR" (DeepLab's poly schedule, as SAN trains):
    # lr = base_lr * (1 - iter / MAX_ITER) ** POLY_LR_POWER, never below
    # base_lr * POLY_LR_CONSTANT_ENDING (0: no floor).
    cfg.SOLVER.POLY_LR_POWER = 0.9
    cfg.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0
    # Photometric distortion of SSD (brightness, contrast, saturation, hue; detectron2's
    # ColorAugSSDTransform) on training images, after the crop (SAN's and Mask2Former's recipe;
    # clipdistill/data/dataset_mappers).
    cfg.INPUT.COLOR_AUG_SSD = False
    # ---- evaluation (clipdistill/engine/prediction_cache.py) ----
    cfg.TEST.PREDICTION_CACHE = CN()
    # Keep each image's arg-max prediction in OUTPUT_DIR/inference/prediction_cache/ and reuse
    # it on a re-run with the same MODEL/INPUT config: an interrupted long evaluation resumes.
    cfg.TEST.PREDICTION_CACHE.ENABLED = False


def add_clip_teacher_config(cfg: CN) -> None:
    """The frozen CLIP teacher (clipdistill/modeling/teacher): the student's distillation target
    and the CLIP that the training-free segmenters apply densely."""
    cfg.MODEL.CLIPDISTILL = CN()
    cfg.MODEL.CLIPDISTILL.TEACHER = CN()
    cfg.MODEL.CLIPDISTILL.TEACHER.NAME = "ViT-B-16"  # open_clip model name
    # open_clip pretrained tag ("openai", "laion2b_s34b_b88k", ...), a local weights file, or
    # "" for a randomly initialised teacher (tests and the toy config only).
    cfg.MODEL.CLIPDISTILL.TEACHER.WEIGHTS = "openai"
    cfg.MODEL.CLIPDISTILL.TEACHER.IMAGE_SIZE = 224  # input side for the global embedding Cg
    cfg.MODEL.CLIPDISTILL.TEACHER.DENSE_IMAGE_SIZE = 448  # input side for dense features Td
    # Prompt templates: "openai" (80), "simple" (7), "single" ("a photo of a {}."), "vild" (14),
    # "car" (CLIP-as-RNN's 15) or "caption" (the testbed world's caption grammar: "a red star.").
    cfg.MODEL.CLIPDISTILL.TEACHER.TEMPLATES = "openai"
    # On-disk cache of text embeddings; "" means $XDG_CACHE_HOME/clipdistill/text_embeddings.
    cfg.MODEL.CLIPDISTILL.TEACHER.TEXT_CACHE_DIR = ""
    # How dense features are computed (clipdistill/modeling/clip/dense.py), for the distillation
    # target Td and for the training-free segmenters: "value_only" (last block's value path, no
    # residual, no MLP: the distillation default), "maskclip" (MaskCLIP's official form, residual
    # and MLP kept), "sclip", "clearclip", "naclip", or "tokens" (the tower's own patch tokens,
    # the last block unchanged: the dense features of towers whose image embedding is the mean
    # of per-location embeddings, such as the testbed CLIPs; docs/TESTBED.md).
    cfg.MODEL.CLIPDISTILL.TEACHER.DENSE_METHOD = "value_only"


def add_segstudent_config(cfg: CN) -> None:
    """The distilled student ``SegStudent`` (clipdistill/modeling/meta_arch/seg_student.py)."""
    # ---- student backbone: any `features_only` timm model (clipdistill/modeling/backbone) ----
    cfg.MODEL.TIMM = CN()
    cfg.MODEL.TIMM.NAME = "efficientnet_b0"  # timm model name
    # "timm": timm's pretrained (ImageNet) weights for NAME; a path: a local timm checkpoint
    # (.pth/.bin/.safetensors); "": random init (only the toy config does this).
    cfg.MODEL.TIMM.WEIGHTS = "timm"
    # timm feature levels to expose, named res2..res5 for levels 1..4 (strides 4..32).
    cfg.MODEL.TIMM.OUT_INDICES = [1, 2, 3, 4]

    # ---- the student's open-vocabulary head (clipdistill/modeling/heads) ----
    # Initial value of the learnable logit scale s in logits = s * <F, T_k> + b.
    cfg.MODEL.SEM_SEG_HEAD.LOGIT_SCALE_INIT = 10.0

    # Compute dtype of the student at inference on CUDA: "float32", "float16" or "bfloat16"
    # (autocast around backbone -> head; logits are upsampled in float32). Ignored on the CPU,
    # where inference always runs in float32 (SegStudent.inference).
    cfg.MODEL.CLIPDISTILL.INFERENCE_DTYPE = "float32"
    # Run the student's convolutions in channels-last memory format at inference (faster with
    # oneDNN on CPU and with cuDNN on tensor-core GPUs; results equal within float tolerance).
    cfg.MODEL.CLIPDISTILL.CHANNELS_LAST = True
    # At inference, fold the student's BatchNorms into the preceding convolutions (a cached copy
    # of backbone + proj, rebuilt when a weight changes; checked numerically against the model).
    cfg.MODEL.CLIPDISTILL.FOLD_BN = True

    # ---- teacher-output cache (clipdistill/teacher_cache, tools/cache_teacher.py, docs/CACHE.md)
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

    # ---- distillation losses (clipdistill/modeling/losses.py), already-weighted when logged ----
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

    # lr factor of the (pretrained) backbone parameters (SegStudent.lr_factor; SAN.lr_factor
    # applies it to its side adapter, as the published SAN does)
    cfg.SOLVER.BACKBONE_MULTIPLIER = 1.0

    # ---- another clipdistill segmenter as teacher (modeling/teacher/segmenter_teacher.py) ----
    cfg.MODEL.CLIPDISTILL.SEGMENTER_TEACHER = CN()
    # Config file of the teacher segmenter (e.g. configs/san/...yaml, configs/maskclip/...yaml).
    cfg.MODEL.CLIPDISTILL.SEGMENTER_TEACHER.CONFIG_FILE = ""
    # Its checkpoint, loaded strictly (official SAN/OVSeg releases load through their conversion
    # hook); "" keeps what its config builds (training-free segmenters need nothing).
    cfg.MODEL.CLIPDISTILL.SEGMENTER_TEACHER.WEIGHTS = ""
    # Overrides of the teacher's config, as KEY VALUE pairs (MODEL.DEVICE follows the student's).
    cfg.MODEL.CLIPDISTILL.SEGMENTER_TEACHER.OPTS = []


def add_maskclip_config(cfg: CN) -> None:
    """The training-free ``MaskCLIP`` segmenters (clipdistill/modeling/meta_arch/training_free.py):
    the CLIP model and dense method are ``MODEL.CLIPDISTILL.TEACHER.*``; these keys are the
    inference protocol. Defaults: SCLIP's and NACLIP's code (configs/maskclip/ sets each paper's).
    """
    cfg.MODEL.MASKCLIP = CN()
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


from .load import get_clipdistill_cfg  # noqa: E402  (after add_clipdistill_config: it uses it)
from .validate import check_datasets_registered, validate_config  # noqa: E402
