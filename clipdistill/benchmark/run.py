"""Speed benchmark of segmenters (each built from its own config) and of the CLIP teacher, in one
process and one run (so that ratios compare like with like; ``tools/benchmark.py``,
``docs/BENCHMARKS.md``):

* inference, per target (``targets``): parameters, FLOPs (``flops``), median latency and
  images/s at ``size x size`` and ``batch_size`` (``clipdistill.utils.timing``), peak memory
  (``memory``);
* training seconds per iteration (``training``);
* ``vocabulary_sweep``: latency against vocabulary size, full logits and labels only.

The report (table, ratios) is ``report``; goals are the docs' business, not the benchmark's.
"""

import logging
import os
import platform
import statistics
from typing import List, Optional, Sequence

import torch

from ..modeling.postprocess import LABEL_CANDIDATES, label_map
from ..utils.timing import time_calls
from .flops import FLOP_CONVENTION, count_flops
from .memory import PeakMemory, trim_cpu_memory
from .report import ratios
from .targets import (
    BENCHMARK_TARGETS,
    BenchmarkTarget,
    deployed_model,
    random_images,
    segmenter_target,
)
from .training import bench_cache_warp, bench_training, training_modes

__all__ = [
    "INFERENCE_FIELDS",
    "TRAINING_FIELDS",
    "bench_inference",
    "run_benchmark",
    "dataset_sweep_source",
    "sweep_names",
    "vocabulary_sweep",
]

logger = logging.getLogger(__name__)

#: keys of every row of result["inference"]
INFERENCE_FIELDS = (
    "name",
    "kind",
    "input",
    "batch_size",
    "params_m",
    "params_total_m",
    "gflops_per_image",
    "latency_ms",
    "latency_ms_min",
    "images_per_s",
    "peak_mem_mb",
)
#: keys of every row of result["training"]
TRAINING_FIELDS = (
    "name",
    "batch_size",
    "input",
    "s_per_iter",
    "s_per_iter_min",
    "peak_mem_mb",
    "losses",
)


def bench_inference(
    target: BenchmarkTarget, cfg, device, size, batch_size, iters, warmup, flops: bool = True
) -> dict:
    trim_cpu_memory()
    module, run, example, params = target.build(cfg, device, size, batch_size)
    gflops = None
    run()  # first call: per-vocabulary text embeddings... are not per-image work
    if flops:
        total = count_flops(module, example[:1])
        gflops = None if total is None else total / 1e9
    with PeakMemory(device) as mem:
        times = time_calls(run, iters, warmup, device)
    h, w = example.shape[-2:]
    row = {
        "name": target.name,
        "kind": target.kind,
        "input": f"{batch_size}x3x{h}x{w}",
        "batch_size": batch_size,
        "params_m": params["per_image"] / 1e6,
        "params_total_m": params["total"] / 1e6,
        "gflops_per_image": gflops,
        "latency_ms": 1000 * statistics.median(times),
        "latency_ms_min": 1000 * min(times),
        "images_per_s": batch_size / statistics.median(times),
        "peak_mem_mb": mem.mb,
        "peak_mem_method": mem.method,
    }
    del module, run, example
    return row


def run_benchmark(
    cfg,
    *,
    device: Optional[str] = None,
    size: int = 512,
    batch_size: int = 1,
    iters: int = 10,
    warmup: int = 3,
    train_iters: Optional[int] = None,
    train_warmup: Optional[int] = None,
    train_batch_size: Optional[int] = None,
    train_size: Optional[int] = None,
    segmenter_cfgs: Optional[Sequence] = None,
    skip_training: bool = False,
    skip_flops: bool = False,
) -> dict:
    """Run every measurement; returns the JSON-ready result (see ``INFERENCE_FIELDS``).

    Segmenters: ``cfg``'s own ``META_ARCHITECTURE`` and one per config of ``segmenter_cfgs``,
    each built from its own config (rows named ``META_ARCHITECTURE`` or, for extra configs whose
    architecture repeats, ``META_ARCHITECTURE (#i)``).
    """
    device = torch.device(device or cfg.MODEL.DEVICE)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but no CUDA device is available")
    train_batch_size = train_batch_size or cfg.SOLVER.IMS_PER_BATCH
    train_size = train_size or (cfg.INPUT.CROP.SIZE[0] if cfg.INPUT.CROP.ENABLED else size)
    train_iters = train_iters or iters
    train_warmup = warmup if train_warmup is None else train_warmup

    targets, seen = [], set()
    for i, c in enumerate([cfg] + list(segmenter_cfgs or [])):
        name = c.MODEL.META_ARCHITECTURE
        if name in seen:
            name = f"{name} (#{i})"
        seen.add(name)
        targets.append(segmenter_target(c, name))
    targets += list(BENCHMARK_TARGETS.values())
    inference = []
    for target in targets:
        logger.info(f"benchmark: inference of {target.name} ...")
        inference.append(
            bench_inference(target, cfg, device, size, batch_size, iters, warmup, not skip_flops)
        )
    training = []
    if not skip_training:
        for mode in training_modes(cfg):
            logger.info(f"benchmark: training step, {mode} ...")
            row = bench_training(
                cfg, mode, device, train_batch_size, train_size, train_iters, train_warmup
            )
            if row is None:  # nothing to train
                break
            training.append(row)
    result = {
        "meta": {
            "device": str(device),
            "device_name": (
                torch.cuda.get_device_name(device)
                if device.type == "cuda"
                else (platform.processor() or platform.machine())
            ),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "size": size,
            "batch_size": batch_size,
            "iters": iters,
            "warmup": warmup,
            "train_iters": train_iters,
            "statistic": "median over iters after warmup",
            "flop_convention": FLOP_CONVENTION,
            "segmenter": targets[0].name,
            "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        },
        "inference": inference,
        "training": training,
        "cache_warp_ms_per_image": bench_cache_warp(cfg, train_size, iters),
    }
    result["ratios"] = ratios(result)
    return result


def sweep_names(k: int, base: Optional[Sequence[str]] = None) -> List[str]:
    """``k`` class names: ``base``'s (default ADE20K-150's: real names, so that text lengths are
    realistic), then generated ones ("thing 151", ...) beyond them (ADE-847 and larger
    vocabularies)."""
    if base is None:
        from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

        base = ADE20K_SEM_SEG_CATEGORIES
    names = list(base)[:k]
    return names + [f"thing {i + 1}" for i in range(len(names), k)]


def dataset_sweep_source(cfg, dataset: str):
    """The class names and first image of a registered dataset, for a vocabulary sweep that runs
    as it does on real data (CaR's recurrence drops names by what the image shows): returns
    ``(names, image)``, image a ``[3, H, W]`` uint8 tensor in ``cfg.INPUT.FORMAT``.

    Raises:
        ConfigKeyError: the dataset has no class names; DataError: it has no images.
    """
    from detectron2.data import DatasetCatalog
    from detectron2.data.detection_utils import read_image

    from ..modeling.segmenter import dataset_vocabulary
    from ..utils.errors import DataError

    names = dataset_vocabulary(dataset)
    records = DatasetCatalog.get(dataset)
    if not records:
        raise DataError(f"dataset {dataset!r} has no images to time")
    array = read_image(records[0]["file_name"], format=cfg.INPUT.FORMAT)
    return names, torch.as_tensor(array.transpose(2, 0, 1).copy())


def vocabulary_sweep(
    cfgs: Sequence,
    *,
    device: Optional[str] = None,
    sizes: Sequence[int] = (224, 512),
    vocabulary_sizes: Sequence[int] = (5, 20, 59, 150),
    iters: int = 3,
    warmup: int = 1,
    label_candidates: int = LABEL_CANDIDATES,
    names: Optional[Sequence[str]] = None,
    image: Optional[torch.Tensor] = None,
) -> List[dict]:
    """Latency of segmenters against vocabulary size and image size (batch 1), on two paths:

    * ``logits``: ``forward``, detectron2's ``[{"sem_seg": [K, H, W]}]`` (what the evaluator
      takes): every class's logits at the image size;
    * ``labels``: the label map only, as ``SegPredictor`` computes it (``coarse_sem_seg`` then
      ``label_map``: each pixel's candidate classes, ``label_candidates`` per low-resolution
      cell, for a segmenter whose coarse scores carry their resampling; else class chunks).

    Each segmenter is built from its own config (``cfgs``; only ``MODEL.DEVICE`` is set).
    Vocabularies: ``sweep_names`` (from ``names`` when given, else ADE20K-150's); the image is
    random, or ``image`` (``[3, H, W]`` uint8, e.g. ``dataset_sweep_source``'s) resized to each
    size. A segmenter whose cost depends on its weights and the image (CaR's recurrence stops
    earlier with a random CLIP) should be timed with its real weights on a real image.

    Returns:
        rows ``{"name", "size", "vocabulary", "path", "latency_ms", "latency_ms_min"}``.
    """
    rows = []
    for cfg in cfgs:
        dev = torch.device(device or cfg.MODEL.DEVICE)
        # a vocabulary first: folding BatchNorms runs the segmenter (a training-free one has none)
        model = deployed_model(cfg, dev, sweep_names(vocabulary_sizes[0], names))
        meta_arch = cfg.MODEL.META_ARCHITECTURE
        for size in sizes:
            if image is None:
                im = random_images(1, size, dev)[0]
            else:
                im = torch.nn.functional.interpolate(
                    image[None].float(), size=(size, size), mode="bilinear", align_corners=False
                )[0].round().clamp(0, 255).to(torch.uint8).to(dev)
            inputs = [{"image": im, "height": size, "width": size}]
            for k in vocabulary_sizes:
                model.set_vocabulary(sweep_names(k, names))

                def logits():
                    with torch.inference_mode():
                        return model(inputs)

                def labels():
                    with torch.inference_mode():
                        coarse = model.coarse_sem_seg(inputs)
                        return [label_map(c, candidates=label_candidates) for c in coarse]

                for path, run in (("logits", logits), ("labels", labels)):
                    logger.info(f"vocabulary sweep: {meta_arch} {size}x{size}, {k} names, {path}")
                    times = time_calls(run, iters, warmup, dev)
                    rows.append(
                        {
                            "name": meta_arch,
                            "size": size,
                            "vocabulary": k,
                            "path": path,
                            "latency_ms": 1000 * statistics.median(times),
                            "latency_ms_min": 1000 * min(times),
                        }
                    )
    return rows
