"""Building a segmenter from its config, with what modeling cannot build itself: a frozen
segmenter teacher, which is another segmenter read from its own config file and checkpoint."""

import logging

import torch
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.logger import _log_api_usage

from ..config import get_clipdistill_cfg
from ..modeling.segmenter import OpenVocabSegmenter
from ..modeling.teacher import SegmenterTeacher
from ..utils.errors import ConfigError
from .checkpoint import SegmenterCheckpointer

__all__ = ["build_model", "build_segmenter_teacher"]

logger = logging.getLogger(__name__)

_KEY = "MODEL.CLIPDISTILL.SEGMENTER_TEACHER"


def build_model(cfg) -> torch.nn.Module:
    """detectron2's ``build_model`` (``MODEL.META_ARCHITECTURE`` built from ``cfg``, moved to
    ``MODEL.DEVICE``), with the frozen segmenter teacher built here and passed as ``seg_teacher``
    when the architecture asks for one (``OpenVocabSegmenter.wants_segmenter_teacher``)."""
    arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    kwargs = {}
    if isinstance(arch, type) and issubclass(arch, OpenVocabSegmenter):
        if arch.wants_segmenter_teacher(cfg):
            kwargs["seg_teacher"] = build_segmenter_teacher(cfg)
    model = arch(cfg, **kwargs)
    model.to(torch.device(cfg.MODEL.DEVICE))
    _log_api_usage("modeling.meta_arch." + cfg.MODEL.META_ARCHITECTURE)
    return model


def build_segmenter_teacher(cfg) -> SegmenterTeacher:
    """Build ``MODEL.CLIPDISTILL.SEGMENTER_TEACHER.CONFIG_FILE`` (+ ``OPTS``), load its
    ``WEIGHTS`` strictly, and wrap it frozen on the student's device."""
    t = cfg.MODEL.CLIPDISTILL.SEGMENTER_TEACHER
    if not t.CONFIG_FILE:
        raise ConfigError(
            f"MODEL.CLIPDISTILL.LOSS.SEG_KD_WEIGHT > 0 needs a teacher segmenter: set "
            f"{_KEY}.CONFIG_FILE to its config (e.g. configs/maskclip/...yaml) and {_KEY}.WEIGHTS"
        )
    opts = list(t.OPTS) + ["MODEL.DEVICE", cfg.MODEL.DEVICE]
    if t.WEIGHTS:  # what the teacher is built for: e.g. SAN then skips downloading its CLIP
        opts += ["MODEL.WEIGHTS", t.WEIGHTS]
    if len(opts) % 2:
        raise ConfigError(f"{_KEY}.OPTS must be KEY VALUE pairs, got {list(t.OPTS)}")
    tcfg = get_clipdistill_cfg(t.CONFIG_FILE, opts)
    segmenter = build_model(tcfg)
    if not isinstance(segmenter, OpenVocabSegmenter):
        raise TypeError(
            f"{_KEY}.CONFIG_FILE={t.CONFIG_FILE} does not build a clipdistill segmenter"
        )
    if t.WEIGHTS:
        SegmenterCheckpointer(segmenter).load(t.WEIGHTS)
    else:
        logger.warning(
            f"{_KEY}.WEIGHTS is empty: the {type(segmenter).__name__} teacher keeps the weights "
            "its config builds (fine for training-free segmenters; random for trained ones)"
        )
    return SegmenterTeacher(segmenter)
