"""Seconds per training step (forward, backward, optimizer step on a fixed random batch).

A segmenter that distils the CLIP teacher (``OpenVocabSegmenter.distills_clip_teacher``: the
student) is measured in three modes: (a) ``ce_only``, cross-entropy only; (b) ``distill_online``,
its distillation losses with the teacher run on every image of every step; (c)
``distill_cached``, the same losses with the teacher targets given in the inputs, as
``SemSegDatasetMapper`` reads them from the teacher-output cache. Any other trainable
architecture is measured once, as its config trains it (``configured``); a training-free one
(no trainable parameter) is skipped.
"""

import logging
import statistics
from typing import Dict, List, Optional

import torch
from torch.nn import functional as F

from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.events import EventStorage

from ..engine import Trainer, build_model
from ..modeling.segmenter import OpenVocabSegmenter
from ..utils.timing import time_calls
from .memory import PeakMemory, trim_cpu_memory

__all__ = ["TRAIN_MODES", "CONFIGURED_MODE", "training_modes", "bench_training", "bench_cache_warp"]

logger = logging.getLogger(__name__)

#: the modes of a segmenter that distils the CLIP teacher
TRAIN_MODES = {
    "ce_only": "cross-entropy only (no teacher)",
    "distill_online": "distillation, teacher run online every step",
    "distill_cached": "distillation, teacher targets from the cache (as the mapper gives them)",
}
#: the one mode of any other trainable architecture
CONFIGURED_MODE = {"configured": "the architecture's training step, as its config sets it"}


def _distills_clip_teacher(cfg) -> bool:
    arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    return isinstance(arch, type) and issubclass(arch, OpenVocabSegmenter) and (
        arch.distills_clip_teacher
    )


def training_modes(cfg) -> Dict[str, str]:
    """The modes measured for ``cfg``'s architecture, name -> description."""
    return dict(TRAIN_MODES if _distills_clip_teacher(cfg) else CONFIGURED_MODE)


def _train_cfg(cfg, mode: str, device):
    c = cfg.clone()
    c.defrost()
    c.MODEL.DEVICE = str(device)
    if mode in TRAIN_MODES:
        lw = c.MODEL.CLIPDISTILL.LOSS
        if mode == "ce_only":
            lw.GLOBAL_WEIGHT = lw.LOCAL_WEIGHT = lw.DENSE_WEIGHT = 0.0
        c.MODEL.CLIPDISTILL.TEACHER_CACHE.ENABLED = mode == "distill_cached"
    return c


def _train_inputs(
    model, batch_size: int, size: int, num_classes: int, cached: bool, seed=0
) -> List[dict]:
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(batch_size):
        x = {
            "image": torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8),
            "sem_seg": torch.randint(0, num_classes, (size, size), generator=g),
        }
        if cached:  # what the mapper reads from the cache: the shapes of the model's teacher
            teacher = model.teacher
            c, grid = teacher.embed_dim, teacher.dense_image_size // teacher.patch_size
            dense = F.normalize(torch.randn(c, grid, grid, generator=g), dim=0)
            x["teacher_dense"] = dense.half()
            x["teacher_global"] = F.normalize(torch.randn(c, generator=g), dim=0).half()
        inputs.append(x)
    return inputs


def bench_training(
    cfg, mode: str, device, batch_size: int, size: int, iters: int, warmup: int
) -> Optional[dict]:
    """One row of ``TRAINING_FIELDS`` for ``mode`` (of ``training_modes(cfg)``); None for a
    segmenter without trainable parameters."""
    description = training_modes(cfg)[mode]
    trim_cpu_memory()
    c = _train_cfg(cfg, mode, device)
    torch.manual_seed(0)
    model = build_model(c)
    if not any(p.requires_grad for p in model.parameters()):
        logger.info(f"benchmark: {c.MODEL.META_ARCHITECTURE} has nothing to train; no training row")
        return None
    model.train()
    trainer_log = logging.getLogger("clipdistill.engine.trainer")
    level = trainer_log.level
    trainer_log.setLevel(logging.WARNING)  # the parameter-group table, once per mode: noise here
    try:
        optimizer = Trainer.build_optimizer(c, model)
    finally:
        trainer_log.setLevel(level)
    num_classes = max(1, len(model.train_vocabulary))
    inputs = _train_inputs(model, batch_size, size, num_classes, mode == "distill_cached")
    last = {}

    def step():
        with EventStorage():
            losses = model(inputs)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        last.update({k: float(v.detach()) for k, v in losses.items()})

    with PeakMemory(device) as mem:
        times = time_calls(step, iters, warmup, device)
    return {
        "name": mode,
        "description": description,
        "batch_size": batch_size,
        "input": f"{batch_size}x3x{size}x{size}",
        "s_per_iter": statistics.median(times),
        "s_per_iter_min": min(times),
        "peak_mem_mb": mem.mb,
        "losses": last,
    }


def bench_cache_warp(cfg, train_size: int, iters: int) -> Optional[float]:
    """Milliseconds to warp one cached dense map onto a crop (the mapper's per-image work); None
    for an architecture that does not distil the CLIP teacher, or a teacher whose open_clip
    config has no patch size."""
    import open_clip
    from detectron2.data import transforms as T

    from ..data.teacher_cache import dense_grid_size, sample_dense, transforms_to_affine

    if not _distills_clip_teacher(cfg):
        return None
    t = cfg.MODEL.CLIPDISTILL.TEACHER
    try:
        mcfg = open_clip.get_model_config(t.NAME)
        c, patch = mcfg["embed_dim"], mcfg["vision_cfg"]["patch_size"]
    except Exception:
        return None
    h0, w0 = 375, 500  # a typical VOC image
    gh, gw = dense_grid_size(h0, w0, t.DENSE_IMAGE_SIZE, patch)
    dense = torch.randn(c, gh, gw).half()
    s = train_size
    tf = [
        T.ResizeTransform(h0, w0, 2 * h0, 2 * w0),
        T.CropTransform(10, 20, s, s),
        T.HFlipTransform(s),
    ]
    aff = transforms_to_affine(tf)
    g = t.DENSE_IMAGE_SIZE // patch
    times = time_calls(lambda: sample_dense(dense, (h0, w0), aff, (s, s), (g, g)), iters, 2)
    return 1000 * statistics.median(times)
