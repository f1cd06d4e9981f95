"""Configuration of clipdistill: the keys, loading (``get_clipdistill_cfg``, ``load.py``) and the
up-front checks (``validate_config``, ``validate.py``).

Each architecture's keys live beside its meta-architecture (``modeling/<arch>/config.py``:
``add_segstudent_config`` and ``add_clip_teacher_config``, ``add_maskclip_config``,
``add_san_config``, ``add_car_config``, ``add_ovseg_config``); the keys every architecture shares
(the Trainer's) are ``add_engine_config`` here. ``add_clipdistill_config`` applies them all: as
detectron2 projects do, every architecture's keys exist in every config and
``MODEL.META_ARCHITECTURE`` picks the one that is read.

Every key is commented and read somewhere; ``tests/test_config.py`` checks that none is dead. Core
detectron2 keys that the project reuses (``MODEL.SEM_SEG_HEAD.*``, ``INPUT.CROP``, ...) keep their
detectron2 meaning.
"""

from detectron2.config import CfgNode as CN

from ..modeling.car.config import add_car_config
from ..modeling.maskclip.config import add_maskclip_config
from ..modeling.ovseg.config import add_ovseg_config
from ..modeling.san.config import add_san_config
from ..modeling.segstudent.config import add_clip_teacher_config, add_segstudent_config
from .load import get_clipdistill_cfg
from .validate import check_datasets_registered, validate_config

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
    "add_car_config",
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
    # lr factor of a segmenter's backbone parameters (``lr_factor``: SegStudent's backbone, SAN's
    # side adapter, OVSeg's backbone)
    cfg.SOLVER.BACKBONE_MULTIPLIER = 1.0
