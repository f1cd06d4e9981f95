"""Speed benchmark of every segmenter the package registers and of the CLIP teacher.

Measured in one process and one run (so that ratios compare like with like):

* inference, per target: parameters, FLOPs (fvcore), median latency and images/s at
  ``size x size`` and ``batch_size``, peak memory;
* training seconds per iteration of the student for (a) cross-entropy only, (b) distillation with
  the online teacher, (c) distillation from the teacher-output cache.

Targets are pluggable: a segmenter (detectron2 inputs in, ``[{"sem_seg"}]`` out) is benchmarked
from its own config (``segmenter_target(cfg)``: the config's ``META_ARCHITECTURE`` built by
``build_model``, its parameters counted through the ``OpenVocabSegmenter`` interface);
``register_benchmark_target`` adds other kinds (the CLIP teacher's paths).

FLOP convention: fvcore counts one fused multiply-add as one flop, so "GFLOPs" here are GMACs
(papers quoting GFLOPs = 2 x MACs report twice these numbers).
"""

import contextlib
import ctypes
import gc
import logging
import math
import os
import platform
import statistics
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from ..modeling.segmenter import dataset_vocabulary

__all__ = [
    "BenchmarkTarget",
    "BENCHMARK_TARGETS",
    "register_benchmark_target",
    "segmenter_target",
    "inference_params",
    "run_benchmark",
    "vocabulary_sweep",
    "format_table",
    "FLOP_CONVENTION",
    "INFERENCE_FIELDS",
    "TRAINING_FIELDS",
]

logger = logging.getLogger(__name__)

FLOP_CONVENTION = (
    "fvcore FlopCountAnalysis: one fused multiply-add counts as one flop (GFLOPs here = GMACs; "
    "element-wise ops, softmax and resampling are not counted)"
)
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


# ------------------------------------------------------------------------------------ targets
class BenchmarkTarget:
    """Something to time at inference.

    ``build(cfg, device, size, batch_size)`` returns ``(module, run, example, params)``:
    ``module(example[:1])`` is what fvcore counts, ``run()`` is one timed inference of the batch,
    ``params`` ``{"total": ..., "per_image": ...}`` parameter counts (``inference_params``).
    """

    def __init__(self, name: str, kind: str, build: Callable):
        self.name, self.kind, self.build = name, kind, build


BENCHMARK_TARGETS: Dict[str, BenchmarkTarget] = {}


def register_benchmark_target(target: BenchmarkTarget) -> BenchmarkTarget:
    BENCHMARK_TARGETS[target.name] = target
    return target


def _random_images(batch_size: int, size: int, device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch_size, 3, size, size), generator=g, dtype=torch.uint8)


def _test_resize(cfg, images: torch.Tensor) -> torch.Tensor:
    """``images`` through the config's test-time augmentation (detectron2's
    ``build_augmentation``: ``ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)``), as
    the data loader gives them to the model."""
    from detectron2.data import transforms as T
    from detectron2.data.detection_utils import build_augmentation

    augs = T.AugmentationList(build_augmentation(cfg, False))
    out = []
    for im in images:
        arr = im.permute(1, 2, 0).numpy()
        aug = T.AugInput(arr)
        augs(aug)
        out.append(torch.from_numpy(aug.image.copy()).permute(2, 0, 1))
    return torch.stack(out)


class _SegmenterFlops(nn.Module):
    """Tensor-in wrapper of a detectron2 segmenter for fvcore's tracer."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        out = self.model([{"image": im} for im in images])
        return torch.stack([o["sem_seg"] for o in out])


def inference_params(model: nn.Module) -> Dict[str, int]:
    """``{"total", "per_image"}`` parameter counts of a segmenter; ``per_image`` leaves out its
    ``inference_excluded_modules`` (e.g. a text encoder whose output is cached per vocabulary)."""
    skip = tuple(model.inference_excluded_modules)
    total = per_image = 0
    for n, p in model.named_parameters():
        total += p.numel()
        if not any(n == s or n.startswith(s + ".") for s in skip):
            per_image += p.numel()
    return {"total": total, "per_image": per_image}


def segmenter_target(cfg, name: Optional[str] = None, test_resize: bool = False) -> BenchmarkTarget:
    """A segmenter built from ``cfg`` as it is (only ``MODEL.DEVICE`` is set by the benchmark),
    timed with the vocabulary of its first test dataset (else its training vocabulary).

    Args:
        cfg: the segmenter's own config.
        name: row name (default: ``cfg.MODEL.META_ARCHITECTURE``).
        test_resize: give the model the ``size x size`` images after the config's test-time
            resize (``_test_resize``), as the data loader would; else the images as they are.
            Either way outputs are at ``size x size``.
    """

    def build(_unused_cfg, device, size, batch_size):
        c = cfg.clone()
        c.defrost()
        c.MODEL.DEVICE = str(device)
        model = build_model(c).eval()
        if c.DATASETS.TEST:  # time with the vocabulary the segmenter is evaluated on
            model.set_vocabulary(dataset_vocabulary(c.DATASETS.TEST[0]))
        images = _random_images(batch_size, size, device)
        if test_resize:
            images = _test_resize(c, images)
        inputs = [{"image": im, "height": size, "width": size} for im in images]

        def run():
            with torch.inference_mode():
                return model(inputs)

        return _SegmenterFlops(model), run, images, inference_params(model)

    return BenchmarkTarget(name or cfg.MODEL.META_ARCHITECTURE, "segmenter", build)


class _TeacherCall(nn.Module):
    def __init__(self, teacher, dense: bool, size: int):
        super().__init__()
        self.teacher, self.dense, self.size = teacher, dense, size

    def forward(self, x):
        if self.dense:
            return self.teacher.encode_image_dense(x, size=(self.size, self.size))
        return self.teacher.encode_image(x)


def _teacher_builder(dense: bool) -> Callable:
    def build(cfg, device, size, batch_size):
        from ..modeling.teacher import CLIPTeacher

        teacher = CLIPTeacher(cfg).to(device)
        side = size if dense else teacher.image_size
        images = _random_images(batch_size, side, device).to(device).float()
        module = _TeacherCall(teacher, dense, side)

        def run():
            with torch.inference_mode():
                return module(images)

        n = sum(p.numel() for p in teacher.model.visual.parameters())
        return module, run, images, {"total": n, "per_image": n}

    return build


register_benchmark_target(
    BenchmarkTarget("CLIP teacher global (encode_image)", "teacher", _teacher_builder(False))
)
register_benchmark_target(
    BenchmarkTarget("CLIP teacher dense (encode_image_dense)", "teacher", _teacher_builder(True))
)


# ------------------------------------------------------------------------------------ FLOPs
def _mha_flop(inputs, outputs):
    """``aten::_native_multi_head_attention`` (nn.MultiheadAttention's fused inference path):
    q/k/v and output projections plus the two attention products, in MACs."""
    from fvcore.nn.jit_handles import get_shape

    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    b, lq, e = q[0], q[1], q[2]
    lk = k[1]
    return b * (lq * e * e + 2 * lk * e * e + lq * e * e + 2 * lq * lk * e)


def _sdpa_flop(inputs, outputs):
    """``aten::scaled_dot_product_attention``: ``Q K^T`` and ``A V``, in MACs."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(i) for i in inputs[:3])
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


class _EagerFlops(TorchDispatchMode):
    """Sum of ``torch.utils.flop_counter``'s formulas over the aten ops dispatched while active
    (no module tracking: ``FlopCounterMode``'s module hooks break ``torch.autograd.grad``)."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


def count_flops(module: nn.Module, example) -> Optional[float]:
    """Total FLOPs (fvcore convention) of ``module(example)``, or None when tracing fails."""
    from fvcore.nn import FlopCountAnalysis

    try:
        with torch.no_grad():
            fa = FlopCountAnalysis(module, (example,))
            fa.set_op_handle(
                "aten::_native_multi_head_attention",
                _mha_flop,
                "aten::scaled_dot_product_attention",
                _sdpa_flop,
            )
            fa.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            fa.tracer_warnings("none")
            return float(fa.total())
    except Exception as e:  # not traceable (data-dependent loop, NumPy steps, autograd: CaR)
        traced_error = e
    # eager fallback: count every aten op that runs (including a backward pass inside the model)
    # with PyTorch's flop formulas, which count 2 flops per multiply-add, so halve the total
    try:
        with torch.no_grad(), _EagerFlops() as counter:
            module(example)
        return counter.total / 2.0
    except Exception as e:
        logger.warning(
            f"FLOP count failed for {type(module).__name__}: {type(traced_error).__name__}: "
            f"{traced_error}; eager count: {type(e).__name__}: {e}"
        )
        return None


# ------------------------------------------------------------------------------------ memory
def _read_status_kb(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _trim_cpu_memory() -> None:
    gc.collect()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # return freed heap to the OS (glibc)


class PeakMemory:
    """Peak memory of the code inside the ``with`` block, in MiB, above the level at entry.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only). CPU: the resident-set high-water
    mark (Linux ``VmHWM``, reset by writing 5 to ``/proc/self/clear_refs``); where that reset is
    not allowed, a 2 ms sampling thread of ``VmRSS``. CPU numbers include allocator caching and
    one-off buffers (oneDNN primitives, thread pools), so they are upper bounds of activations.
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.mb: float = float("nan")
        self.method = ""

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda.max_memory_allocated"
            return self
        _trim_cpu_memory()
        self._base = _read_status_kb("VmRSS") or 0
        self._thread = None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "VmHWM (reset via /proc/self/clear_refs) - VmRSS at start"
        except OSError:
            self.method = "max sampled VmRSS (2 ms) - VmRSS at start"
            self._peak, self._stop = self._base, threading.Event()

            def sample():
                while not self._stop.is_set():
                    self._peak = max(self._peak, _read_status_kb("VmRSS") or 0)
                    time.sleep(0.002)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - self._base
            self.mb = peak / 2**20
            return False
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            peak_kb = self._peak
        else:
            peak_kb = _read_status_kb("VmHWM") or 0
        self.mb = max(0, peak_kb - self._base) / 1024
        return False


# ------------------------------------------------------------------------------------ timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable, iters: int, warmup: int, device) -> List[float]:
    """Seconds of ``iters`` calls of ``fn`` after ``warmup`` untimed ones."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def bench_inference(
    target: BenchmarkTarget, cfg, device, size, batch_size, iters, warmup, flops: bool = True
) -> dict:
    _trim_cpu_memory()
    module, run, example, params = target.build(cfg, device, size, batch_size)
    gflops = None
    run()  # first call: per-vocabulary text embeddings, folded-BN copy... are not per-image work
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


# ------------------------------------------------------------------------------------ training
TRAIN_MODES = {
    "ce_only": "cross-entropy only (no teacher)",
    "distill_online": "distillation, teacher run online every step",
    "distill_cached": "distillation, teacher targets from the cache (as the mapper gives them)",
}


def _train_cfg(cfg, mode: str, device):
    c = cfg.clone()
    c.defrost()
    c.MODEL.DEVICE = str(device)
    lw = c.MODEL.CLIPDISTILL.LOSS
    if mode == "ce_only":
        lw.GLOBAL_WEIGHT = lw.LOCAL_WEIGHT = lw.DENSE_WEIGHT = 0.0
    c.MODEL.CLIPDISTILL.TEACHER_CACHE.ENABLED = mode == "distill_cached"
    return c


def _train_inputs(model, batch_size: int, size: int, num_classes: int, cached: bool, seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(batch_size):
        x = {
            "image": torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8),
            "sem_seg": torch.randint(0, num_classes, (size, size), generator=g),
        }
        if cached:
            c, grid = (
                model.teacher.embed_dim,
                model.teacher.dense_image_size // model.teacher.patch_size,
            )
            dense = torch.nn.functional.normalize(torch.randn(c, grid, grid, generator=g), dim=0)
            x["teacher_dense"] = dense.half()
            x["teacher_global"] = torch.nn.functional.normalize(
                torch.randn(c, generator=g), dim=0
            ).half()
        inputs.append(x)
    return inputs


def bench_training(
    cfg, mode: str, device, batch_size: int, size: int, iters: int, warmup: int
) -> dict:
    from ..engine.trainer import Trainer

    _trim_cpu_memory()
    c = _train_cfg(cfg, mode, device)
    torch.manual_seed(0)
    model = build_model(c)
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
        "description": TRAIN_MODES[mode],
        "batch_size": batch_size,
        "input": f"{batch_size}x3x{size}x{size}",
        "s_per_iter": statistics.median(times),
        "s_per_iter_min": min(times),
        "peak_mem_mb": mem.mb,
        "losses": last,
    }


def bench_cache_warp(cfg, train_size: int, iters: int) -> Optional[float]:
    """Milliseconds to warp one cached dense map onto a crop (the mapper's per-image work)."""
    import open_clip
    from detectron2.data import transforms as T

    from ..modeling.teacher import CLIPTeacher  # noqa: F401  (registers the toy model config)
    from ..data.teacher_cache import dense_grid_size, sample_dense, transforms_to_affine

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
    times = time_calls(lambda: sample_dense(dense, (h0, w0), aff, (s, s), (g, g)), iters, 2, "cpu")
    return 1000 * statistics.median(times)


# ------------------------------------------------------------------------------------ driver
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
        for mode in TRAIN_MODES:
            logger.info(f"benchmark: training step, {mode} ...")
            training.append(
                bench_training(
                    cfg, mode, device, train_batch_size, train_size, train_iters, train_warmup
                )
            )
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
            "teacher": cfg.MODEL.CLIPDISTILL.TEACHER.NAME,
            "student_backbone": cfg.MODEL.TIMM.NAME,
            "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        },
        "inference": inference,
        "training": training,
        "cache_warp_ms_per_image": bench_cache_warp(cfg, train_size, iters),
    }
    result["ratios"] = _ratios(result)
    return result


def vocabulary_sweep(
    cfgs: Sequence,
    *,
    device: Optional[str] = None,
    sizes: Sequence[int] = (224, 512),
    vocabulary_sizes: Sequence[int] = (5, 20, 59, 150),
    iters: int = 3,
    warmup: int = 1,
) -> List[dict]:
    """Latency of segmenters against vocabulary size and image size (batch 1).

    Each segmenter is built from its own config (``cfgs``; only ``MODEL.DEVICE`` is set).
    Vocabularies are the first K ADE20K-150 class names (real names, so that text lengths are
    realistic); images are random. A segmenter whose cost depends on its weights (CaR's
    recurrence stops earlier with a random CLIP) should be timed with its real weights.

    Returns:
        rows ``{"name", "size", "vocabulary", "latency_ms", "latency_ms_min"}``.
    """
    from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

    names = list(ADE20K_SEM_SEG_CATEGORIES)
    if max(vocabulary_sizes) > len(names):
        raise ValueError(f"vocabulary sizes up to {len(names)} (ADE20K-150 names)")
    rows = []
    for cfg in cfgs:
        dev = torch.device(device or cfg.MODEL.DEVICE)
        c = cfg.clone()
        c.defrost()
        c.MODEL.DEVICE = str(dev)
        model = build_model(c).eval()
        meta_arch = c.MODEL.META_ARCHITECTURE
        for size in sizes:
            image = _random_images(1, size, dev)[0]
            inputs = [{"image": image, "height": size, "width": size}]
            for k in vocabulary_sizes:
                model.set_vocabulary(names[:k])

                def run():
                    with torch.inference_mode():
                        return model(inputs)

                logger.info(f"vocabulary sweep: {meta_arch} {size}x{size}, {k} names ...")
                times = time_calls(run, iters, warmup, dev)
                rows.append(
                    {
                        "name": meta_arch,
                        "size": size,
                        "vocabulary": k,
                        "latency_ms": 1000 * statistics.median(times),
                        "latency_ms_min": 1000 * min(times),
                    }
                )
    return rows


def _ratios(result: dict) -> dict:
    rows = {r["name"]: r for r in result["inference"]}
    ratios = {}
    student = rows.get("SegStudent")
    dense = rows.get("CLIP teacher dense (encode_image_dense)")
    if student and dense:
        ratios["student_vs_teacher_dense_throughput"] = (
            student["images_per_s"] / dense["images_per_s"]
        )
        ratios["goal_student_vs_teacher_dense_throughput"] = 15.0
    train = {r["name"]: r for r in result["training"]}
    if "ce_only" in train:
        for mode in ("distill_cached", "distill_online"):
            if mode in train:
                ratios[f"{mode}_vs_ce_step"] = (
                    train[mode]["s_per_iter"] / train["ce_only"]["s_per_iter"]
                )
        ratios["goal_distill_cached_vs_ce_step"] = 1.3
    return ratios


def _fmt(v, spec):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_table(result: dict) -> str:
    from tabulate import tabulate

    m = result["meta"]
    lines = [
        f"device: {m['device']} ({m['device_name']}), torch {m['torch']}, "
        f"{m['torch_threads']} threads; {m['statistic']} (iters={m['iters']}, "
        f"warmup={m['warmup']}); {m['flop_convention']}",
        "",
        tabulate(
            [
                [
                    r["name"],
                    r["input"],
                    _fmt(r["params_m"], ".2f"),
                    _fmt(r["gflops_per_image"], ".2f"),
                    _fmt(r["latency_ms"], ".1f"),
                    _fmt(r["images_per_s"], ".2f"),
                    _fmt(r["peak_mem_mb"], ".0f"),
                ]
                for r in result["inference"]
            ],
            headers=[
                "inference",
                "input",
                "params (M)",
                "GFLOPs/img (=GMACs)",
                "latency ms",
                "images/s",
                "peak mem MiB",
            ],
        ),
    ]
    if result["training"]:
        lines += [
            "",
            tabulate(
                [
                    [
                        r["name"],
                        r["input"],
                        _fmt(r["s_per_iter"], ".3f"),
                        _fmt(r["peak_mem_mb"], ".0f"),
                        ", ".join(f"{k}={v:.3f}" for k, v in r["losses"].items()),
                    ]
                    for r in result["training"]
                ],
                headers=["training step", "batch", "s/iter", "peak mem MiB", "losses"],
            ),
        ]
    if result.get("cache_warp_ms_per_image") is not None:
        lines += [
            "",
            f"cache: warp of one cached dense map onto a crop: "
            f"{result['cache_warp_ms_per_image']:.2f} ms/image (data-loader side)",
        ]
    if result["ratios"]:
        lines += [""] + [f"{k}: {v:.2f}" for k, v in result["ratios"].items()]
    return "\n".join(lines)
