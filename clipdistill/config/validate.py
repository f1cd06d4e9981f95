"""Config validation up front: values that cannot work are named before anything is built.

Without it, ``SOLVER.MAX_ITER -5`` trains nothing and writes evaluation results of a random
model, ``SOLVER.MAX_ITER 0`` dies in a ``ZeroDivisionError`` deep in the scheduler, and
``INPUT.FORMAT XYZ`` is reported as an unreadable image. ``validate_config`` checks the keys that
detectron2 and the engine read, and asks the architecture of ``MODEL.META_ARCHITECTURE`` for
the problems of its own keys (``OpenVocabSegmenter.config_problems``, defined beside its keys);
it raises one :class:`~clipdistill.utils.errors.ConfigError` listing every bad key with its value
and what would work. ``get_clipdistill_cfg`` calls it for every tool, ``setup``
(``train_net.py``) with ``training=True`` for the training-only keys.

Each key is checked in one place. Values that detectron2 decides (schedulers, crop types,
resize sampling, flips) are checked by building detectron2's own objects from the config, not
against copies of its lists.
"""

import logging
from typing import List, Optional

from ..utils.checks import Problems, is_int, is_num
from ..utils.errors import ConfigError, ConfigKeyError

__all__ = ["validate_config", "check_datasets_registered"]

#: ``INPUT.FORMAT`` values: clipdistill's models take RGB images (BGR files are flipped on read)
_FORMATS = ("RGB", "BGR")


def _refusal(fn) -> Optional[str]:
    """None when ``fn()`` succeeds, else what the failure said."""
    try:
        fn()
    except (AssertionError, ValueError, TypeError, KeyError, ZeroDivisionError) as e:
        return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return None


def _common_problems(cfg) -> List[str]:
    p = Problems()
    fmt = cfg.INPUT.FORMAT
    p.need(fmt in _FORMATS, "INPUT.FORMAT", fmt, f"use one of {list(_FORMATS)}")
    mean, std = list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD)
    p.need(
        len(mean) == 3 and all(is_num(v) for v in mean),
        "MODEL.PIXEL_MEAN",
        mean,
        "3 numbers (one per channel)",
    )
    p.need(
        len(std) == 3 and all(is_num(v) and v > 0 for v in std),
        "MODEL.PIXEL_STD",
        std,
        "3 positive numbers (one per channel)",
    )
    import torch

    try:
        torch.device(cfg.MODEL.DEVICE)
        dev_ok = True
    except (RuntimeError, TypeError, ValueError):
        dev_ok = False
    p.need(dev_ok, "MODEL.DEVICE", cfg.MODEL.DEVICE, "a torch device such as 'cpu' or 'cuda'")
    size, max_size = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
    p.need(is_int(size) and size >= 0, "INPUT.MIN_SIZE_TEST", size, "an integer >= 0")
    p.need(is_int(max_size) and max_size > 0, "INPUT.MAX_SIZE_TEST", max_size, "an integer > 0")
    ign = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
    p.need(is_int(ign) and ign >= 0, "MODEL.SEM_SEG_HEAD.IGNORE_VALUE", ign, "an integer >= 0")
    dim = cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM
    p.need(
        is_int(dim) and dim > 0,
        "MODEL.SEM_SEG_HEAD.CONVS_DIM",
        dim,
        "an integer > 0 (channels of the head's convolutions)",
    )
    p.need(
        is_int(cfg.DATALOADER.NUM_WORKERS) and cfg.DATALOADER.NUM_WORKERS >= 0,
        "DATALOADER.NUM_WORKERS",
        cfg.DATALOADER.NUM_WORKERS,
        "an integer >= 0",
    )
    p.need(
        is_int(cfg.TEST.EVAL_PERIOD) and cfg.TEST.EVAL_PERIOD >= 0,
        "TEST.EVAL_PERIOD",
        cfg.TEST.EVAL_PERIOD,
        "an integer >= 0 (0: evaluate only at the end)",
    )
    return p


def _architecture_problems(cfg, training: bool) -> List[str]:
    """``MODEL.META_ARCHITECTURE`` must be registered; a clipdistill architecture checks its own
    keys (``config_problems``)."""
    from detectron2.modeling import META_ARCH_REGISTRY

    from ..modeling.segmenter import OpenVocabSegmenter

    p = Problems()
    arch = cfg.MODEL.META_ARCHITECTURE
    known = sorted(k for k, _ in META_ARCH_REGISTRY)
    clipdistill_archs = [k for k, v in META_ARCH_REGISTRY if v.__module__.startswith("clipdistill")]
    p.need(
        arch in known,
        "MODEL.META_ARCHITECTURE",
        arch,
        f"a registered meta-architecture, e.g. {sorted(clipdistill_archs) or known[:5]}",
    )
    if arch in known:
        cls = META_ARCH_REGISTRY.get(arch)
        if isinstance(cls, type) and issubclass(cls, OpenVocabSegmenter):
            p += list(cls.config_problems(cfg, training))
    return p


def _scheduler_problems(cfg) -> List[str]:
    """``SOLVER.LR_SCHEDULER_NAME`` and its keys, by building the schedule the Trainer builds
    (DeepLab's ``build_lr_scheduler``: detectron2's schedules and ``WarmupPolyLR``)."""
    import torch
    from detectron2.projects.deeplab import build_lr_scheduler

    s = cfg.SOLVER
    if not (is_int(s.MAX_ITER) and s.MAX_ITER > 0 and is_num(s.BASE_LR)):
        return []  # reported already; the schedule cannot be built without them
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    quiet = logging.getLogger("detectron2.solver.build")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its warnings (e.g. STEPS past MAX_ITER) come again in training
    try:
        refused = _refusal(lambda: build_lr_scheduler(cfg, optimizer))
    finally:
        quiet.setLevel(level)
    if refused is None:
        return []
    return [
        f"SOLVER.LR_SCHEDULER_NAME={s.LR_SCHEDULER_NAME!r}: detectron2 cannot build this schedule "
        f"from SOLVER.* ({refused})"
    ]


def _augmentation_problems(cfg) -> List[str]:
    """``INPUT.*`` of training: clipdistill's value rules, then detectron2's own augmentations
    built from them (``build_sem_seg_augmentation``, what the training mapper builds)."""
    from detectron2.data import transforms as T

    from ..data.dataset_mappers import build_sem_seg_augmentation

    p = Problems()
    sizes = cfg.INPUT.MIN_SIZE_TRAIN
    sizes = [sizes] if is_int(sizes) else list(sizes)
    sizes_ok = bool(sizes) and all(is_int(v) and v > 0 for v in sizes)
    p.need(sizes_ok, "INPUT.MIN_SIZE_TRAIN", cfg.INPUT.MIN_SIZE_TRAIN, "one or more integers > 0")
    v = cfg.INPUT.MAX_SIZE_TRAIN
    p.need(is_int(v) and v > 0, "INPUT.MAX_SIZE_TRAIN", v, "an integer > 0")
    sampling = cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
    if sizes_ok and is_int(v) and v > 0:
        refused = _refusal(lambda: T.ResizeShortestEdge(sizes, v, sampling))
        p.need(
            refused is None,
            "INPUT.MIN_SIZE_TRAIN_SAMPLING",
            sampling,
            f"detectron2's ResizeShortestEdge refuses it with INPUT.MIN_SIZE_TRAIN={sizes} "
            f"({refused})",
        )
    crop = cfg.INPUT.CROP
    if crop.ENABLED:
        refused = _refusal(lambda: T.RandomCrop(crop.TYPE, tuple(crop.SIZE)))
        p.need(refused is None, "INPUT.CROP.TYPE", crop.TYPE, f"detectron2 refuses it ({refused})")
        size = list(crop.SIZE)
        ok = len(size) == 2 and all(is_num(v) and v > 0 for v in size)
        if ok and str(crop.TYPE).startswith("relative"):
            ok = all(v <= 1 for v in size)
        p.need(ok, "INPUT.CROP.SIZE", size, f"two sizes > 0 (fractions <= 1 for {crop.TYPE!r})")
    if not p:  # the rest of the chain: the flip (detectron2's build_augmentation) and the crop
        refused = _refusal(lambda: build_sem_seg_augmentation(cfg, True))
        p.need(
            refused is None,
            "INPUT.RANDOM_FLIP",
            cfg.INPUT.RANDOM_FLIP,
            f"detectron2 cannot build the training augmentation ({refused})",
        )
    return p


def _training_problems(cfg) -> List[str]:
    p = Problems()
    s = cfg.SOLVER
    p.need(
        is_int(s.MAX_ITER) and s.MAX_ITER > 0,
        "SOLVER.MAX_ITER",
        s.MAX_ITER,
        "an integer > 0 (to evaluate a checkpoint without training use --eval-only)",
    )
    p.need(
        is_int(s.IMS_PER_BATCH) and s.IMS_PER_BATCH > 0,
        "SOLVER.IMS_PER_BATCH",
        s.IMS_PER_BATCH,
        "an integer > 0 (images per step over all processes)",
    )
    p.need(
        is_int(s.CHECKPOINT_PERIOD) and s.CHECKPOINT_PERIOD > 0,
        "SOLVER.CHECKPOINT_PERIOD",
        s.CHECKPOINT_PERIOD,
        "an integer > 0 (iterations between checkpoints)",
    )
    p.need(is_num(s.BASE_LR) and s.BASE_LR >= 0, "SOLVER.BASE_LR", s.BASE_LR, "a number >= 0")
    p.need(
        is_int(s.WARMUP_ITERS) and s.WARMUP_ITERS >= 0,
        "SOLVER.WARMUP_ITERS",
        s.WARMUP_ITERS,
        "an integer >= 0",
    )
    p.need(
        str(s.OPTIMIZER).upper() in ("ADAMW", "SGD"),
        "SOLVER.OPTIMIZER",
        s.OPTIMIZER,
        "use 'ADAMW' or 'SGD'",
    )
    p += _scheduler_problems(cfg)
    p += _augmentation_problems(cfg)
    train = cfg.DATASETS.TRAIN
    p.need(len(train) > 0, "DATASETS.TRAIN", train, "a registered dataset to train on")
    return p


def _ignore_value_problems(cfg, training: bool) -> List[str]:
    """In training, ``MODEL.SEM_SEG_HEAD.IGNORE_VALUE`` must not be the id of a class of a
    training dataset (registered with its classes): that class's pixels would be dropped from
    the loss without a word. (At test time the evaluator reads the dataset's own
    ``ignore_label``: an open-vocabulary test set may have more than 255 classes.) The training
    mapper makes the same check for code that builds it without this function."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    ign = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
    if not (is_int(ign) and ign >= 0):
        return []  # reported already
    if not training:
        return []
    registered = set(DatasetCatalog.list())
    names = list(cfg.DATASETS.TRAIN)
    hits = []
    for name in dict.fromkeys(names):
        classes = MetadataCatalog.get(name).get("stuff_classes") if name in registered else None
        if classes and ign < len(classes):
            hits.append(f"{name}'s {classes[ign]!r} (ids 0..{len(classes) - 1})")
    if not hits:
        return []
    return [
        f"MODEL.SEM_SEG_HEAD.IGNORE_VALUE={ign}: is the id of a class, which would be ignored: "
        f"{', '.join(hits)}; use an id outside the classes, e.g. 255"
    ]


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
            ``INPUT.CROP``, ``DATASETS.TRAIN`` non-empty, the architecture's training keys).
        world_size: number of processes; ``SOLVER.IMS_PER_BATCH`` must be divisible by it.
    """
    problems = _common_problems(cfg) + _architecture_problems(cfg, training)
    problems += _ignore_value_problems(cfg, training)
    if training:
        problems += _training_problems(cfg)
        b = cfg.SOLVER.IMS_PER_BATCH
        if world_size and is_int(b) and b > 0 and b % world_size:
            problems.append(
                f"SOLVER.IMS_PER_BATCH={b}: must be divisible by the number of processes "
                f"({world_size})"
            )
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))
    check_datasets_registered(cfg.DATASETS.TEST, "DATASETS.TEST")
    if training:
        check_datasets_registered(cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
