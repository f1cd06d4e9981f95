"""Config validation up front: values that cannot work are named before anything is built.

Without it, ``SOLVER.MAX_ITER -5`` trains nothing and writes evaluation results of a random
model, ``SOLVER.MAX_ITER 0`` dies in a ``ZeroDivisionError`` deep in the scheduler, and
``INPUT.FORMAT XYZ`` is reported as an unreadable image. ``validate_config`` checks the keys that
detectron2 and clipdistill read and raises one :class:`~clipdistill.utils.errors.ConfigError`
listing every bad key with its value and what would work; ``get_clipdistill_cfg`` calls it for
every tool, ``setup`` (``train_net.py``) with ``training=True`` for the training-only keys.

An architecture with keys of its own adds its checks with :func:`register_config_check`.
"""

import math
from typing import Callable, List, Optional

from ..utils.errors import ConfigError, ConfigKeyError

__all__ = ["validate_config", "register_config_check", "check_datasets_registered"]

#: extra checks ``fn(cfg, training) -> list of problems`` (architectures add theirs)
_EXTRA_CHECKS: List[Callable] = []

_LR_SCHEDULERS = (
    "WarmupMultiStepLR",
    "WarmupCosineLR",
    "WarmupStepWithFixedGammaLR",
    "WarmupPolyLR",
)
_CROP_TYPES = ("relative_range", "relative", "absolute", "absolute_range")
_SAMPLING = ("choice", "range")
_FLIP = ("none", "horizontal", "vertical")
_FORMATS = ("RGB", "BGR")


def register_config_check(fn: Callable) -> Callable:
    """Add ``fn(cfg, training: bool) -> list[str]`` (each string names a key, its value and
    what works) to the checks of :func:`validate_config`; usable as a decorator."""
    if fn not in _EXTRA_CHECKS:
        _EXTRA_CHECKS.append(fn)
    return fn


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class _Problems(list):
    def need(self, ok: bool, key: str, value, expected: str) -> None:
        if not ok:
            self.append(f"{key}={value!r}: {expected}")


def _common_problems(cfg) -> List[str]:
    p = _Problems()
    fmt = cfg.INPUT.FORMAT
    p.need(fmt in _FORMATS, "INPUT.FORMAT", fmt, f"use one of {list(_FORMATS)}")
    mean, std = list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD)
    p.need(
        len(mean) == 3 and all(_is_num(v) for v in mean),
        "MODEL.PIXEL_MEAN",
        mean,
        "3 numbers (one per channel)",
    )
    p.need(
        len(std) == 3 and all(_is_num(v) and v > 0 for v in std),
        "MODEL.PIXEL_STD",
        std,
        "3 positive numbers (one per channel)",
    )
    try:
        import torch

        torch.device(cfg.MODEL.DEVICE)
        dev_ok = True
    except (RuntimeError, TypeError, ValueError):
        dev_ok = False
    p.need(dev_ok, "MODEL.DEVICE", cfg.MODEL.DEVICE, "a torch device such as 'cpu' or 'cuda'")
    size, max_size = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
    p.need(_is_int(size) and size >= 0, "INPUT.MIN_SIZE_TEST", size, "an integer >= 0")
    p.need(_is_int(max_size) and max_size > 0, "INPUT.MAX_SIZE_TEST", max_size, "an integer > 0")
    ign = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
    p.need(_is_int(ign) and ign >= 0, "MODEL.SEM_SEG_HEAD.IGNORE_VALUE", ign, "an integer >= 0")
    p.need(
        _is_int(cfg.DATALOADER.NUM_WORKERS) and cfg.DATALOADER.NUM_WORKERS >= 0,
        "DATALOADER.NUM_WORKERS",
        cfg.DATALOADER.NUM_WORKERS,
        "an integer >= 0",
    )
    p.need(
        _is_int(cfg.TEST.EVAL_PERIOD) and cfg.TEST.EVAL_PERIOD >= 0,
        "TEST.EVAL_PERIOD",
        cfg.TEST.EVAL_PERIOD,
        "an integer >= 0 (0: evaluate only at the end)",
    )
    from detectron2.modeling import META_ARCH_REGISTRY

    arch = cfg.MODEL.META_ARCHITECTURE
    known = sorted(k for k, _ in META_ARCH_REGISTRY)
    clipdistill_archs = [k for k, v in META_ARCH_REGISTRY if v.__module__.startswith("clipdistill")]
    p.need(
        arch in known,
        "MODEL.META_ARCHITECTURE",
        arch,
        f"a registered meta-architecture, e.g. {sorted(clipdistill_archs) or known[:5]}",
    )
    if "CLIPDISTILL" in cfg.MODEL:
        c = cfg.MODEL.CLIPDISTILL
        for key in ("TEMPERATURE", "ATTN_TEMPERATURE"):
            v = c.LOSS[key]
            p.need(_is_num(v) and v > 0, f"MODEL.CLIPDISTILL.LOSS.{key}", v, "a number > 0")
        for key in ("CE_WEIGHT", "GLOBAL_WEIGHT", "LOCAL_WEIGHT", "DENSE_WEIGHT"):
            v = c.LOSS[key]
            p.need(_is_num(v) and v >= 0, f"MODEL.CLIPDISTILL.LOSS.{key}", v, "a number >= 0")
        for key in ("IMAGE_SIZE", "DENSE_IMAGE_SIZE"):
            v = c.TEACHER[key]
            p.need(_is_int(v) and v > 0, f"MODEL.CLIPDISTILL.TEACHER.{key}", v, "an integer > 0")
        v = c.TEACHER_CACHE.SHARD_SIZE
        p.need(
            _is_int(v) and v > 0, "MODEL.CLIPDISTILL.TEACHER_CACHE.SHARD_SIZE", v, "an integer > 0"
        )
    return p


def _training_problems(cfg) -> List[str]:
    p = _Problems()
    s = cfg.SOLVER
    p.need(
        _is_int(s.MAX_ITER) and s.MAX_ITER > 0,
        "SOLVER.MAX_ITER",
        s.MAX_ITER,
        "an integer > 0 (to evaluate a checkpoint without training use --eval-only)",
    )
    p.need(
        _is_int(s.IMS_PER_BATCH) and s.IMS_PER_BATCH > 0,
        "SOLVER.IMS_PER_BATCH",
        s.IMS_PER_BATCH,
        "an integer > 0 (images per step over all processes)",
    )
    p.need(
        _is_int(s.CHECKPOINT_PERIOD) and s.CHECKPOINT_PERIOD > 0,
        "SOLVER.CHECKPOINT_PERIOD",
        s.CHECKPOINT_PERIOD,
        "an integer > 0 (iterations between checkpoints)",
    )
    p.need(_is_num(s.BASE_LR) and s.BASE_LR >= 0, "SOLVER.BASE_LR", s.BASE_LR, "a number >= 0")
    p.need(
        _is_int(s.WARMUP_ITERS) and s.WARMUP_ITERS >= 0,
        "SOLVER.WARMUP_ITERS",
        s.WARMUP_ITERS,
        "an integer >= 0",
    )
    p.need(
        s.LR_SCHEDULER_NAME in _LR_SCHEDULERS,
        "SOLVER.LR_SCHEDULER_NAME",
        s.LR_SCHEDULER_NAME,
        f"use one of {list(_LR_SCHEDULERS)}",
    )
    if s.LR_SCHEDULER_NAME == "WarmupCosineLR" and _is_num(s.BASE_LR) and s.BASE_LR > 0:
        ratio = s.BASE_LR_END / s.BASE_LR
        p.need(
            0 <= ratio <= 1, "SOLVER.BASE_LR_END", s.BASE_LR_END, "between 0 and SOLVER.BASE_LR"
        )
    if "OPTIMIZER" in s:
        p.need(
            str(s.OPTIMIZER).upper() in ("ADAMW", "SGD"),
            "SOLVER.OPTIMIZER",
            s.OPTIMIZER,
            "use 'ADAMW' or 'SGD'",
        )
    sizes = cfg.INPUT.MIN_SIZE_TRAIN
    sizes = [sizes] if _is_int(sizes) else list(sizes)
    p.need(
        bool(sizes) and all(_is_int(v) and v > 0 for v in sizes),
        "INPUT.MIN_SIZE_TRAIN",
        cfg.INPUT.MIN_SIZE_TRAIN,
        "one or more integers > 0",
    )
    sampling = cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
    p.need(
        sampling in _SAMPLING,
        "INPUT.MIN_SIZE_TRAIN_SAMPLING",
        sampling,
        f"use one of {list(_SAMPLING)}",
    )
    if sampling == "range":
        p.need(len(sizes) == 2, "INPUT.MIN_SIZE_TRAIN", sizes, "two sizes (min, max) for 'range'")
    v = cfg.INPUT.MAX_SIZE_TRAIN
    p.need(_is_int(v) and v > 0, "INPUT.MAX_SIZE_TRAIN", v, "an integer > 0")
    flip = cfg.INPUT.RANDOM_FLIP
    p.need(flip in _FLIP, "INPUT.RANDOM_FLIP", flip, f"one of {list(_FLIP)}")
    crop = cfg.INPUT.CROP
    if crop.ENABLED:
        p.need(
            crop.TYPE in _CROP_TYPES, "INPUT.CROP.TYPE", crop.TYPE, f"one of {list(_CROP_TYPES)}"
        )
        size = list(crop.SIZE)
        ok = len(size) == 2 and all(_is_num(v) and v > 0 for v in size)
        if ok and crop.TYPE in ("relative", "relative_range"):
            ok = all(v <= 1 for v in size)
        p.need(ok, "INPUT.CROP.SIZE", size, f"two sizes > 0 (fractions <= 1 for {crop.TYPE!r})")
    train = cfg.DATASETS.TRAIN
    p.need(len(train) > 0, "DATASETS.TRAIN", train, "a registered dataset to train on")
    if "CLIPDISTILL" in cfg.MODEL:
        lw = cfg.MODEL.CLIPDISTILL.LOSS
        weights = [lw.CE_WEIGHT, lw.GLOBAL_WEIGHT, lw.LOCAL_WEIGHT, lw.DENSE_WEIGHT]
        p.need(
            any(_is_num(w) and w > 0 for w in weights),
            "MODEL.CLIPDISTILL.LOSS.*_WEIGHT",
            weights,
            "at least one loss weight > 0 (CE, GLOBAL, LOCAL, DENSE)",
        )
    return p


def check_datasets_registered(names, key: str) -> None:
    """Raise ``ConfigKeyError`` naming ``key`` when a dataset in ``names`` is not registered."""
    from detectron2.data import DatasetCatalog

    registered = set(DatasetCatalog.list())
    unknown = [n for n in names if n not in registered]
    if unknown:
        prefixes = {u.split("_")[0] for u in unknown if u.split("_")[0]}
        like = sorted(r for r in registered if any(r.startswith(p) for p in prefixes))
        raise ConfigKeyError(
            f"{key}: dataset(s) {unknown} not registered"
            + (f"; registered names like it: {like[:10]}" if like else "")
            + " (see datasets/README.md)"
        )


def validate_config(cfg, training: bool = False, world_size: Optional[int] = None) -> None:
    """Raise :class:`ConfigError` naming every key of ``cfg`` whose value cannot work.

    Args:
        training: also check the keys read only by training (``SOLVER.*``, ``INPUT.*_TRAIN``,
            ``INPUT.CROP``, ``DATASETS.TRAIN`` non-empty).
        world_size: number of processes; ``SOLVER.IMS_PER_BATCH`` must be divisible by it.
    """
    problems = _common_problems(cfg)
    if training:
        problems += _training_problems(cfg)
        b = cfg.SOLVER.IMS_PER_BATCH
        if world_size and _is_int(b) and b > 0 and b % world_size:
            problems.append(
                f"SOLVER.IMS_PER_BATCH={b}: must be divisible by the number of processes "
                f"({world_size})"
            )
    for fn in _EXTRA_CHECKS:
        problems += list(fn(cfg, training))
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))
    check_datasets_registered(cfg.DATASETS.TEST, "DATASETS.TEST")
    if training:
        check_datasets_registered(cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
