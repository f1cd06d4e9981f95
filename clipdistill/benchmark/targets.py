"""What the benchmark times at inference: a segmenter built from its own config
(``segmenter_target``, its parameters counted through the ``OpenVocabSegmenter`` interface) and
the CLIP teacher's two paths (registered targets); ``register_benchmark_target`` adds others."""

from typing import Callable, Dict, Optional, Sequence

import torch
from torch import nn

from ..data.dataset_mappers import build_sem_seg_augmentation
from ..engine import SegmenterCheckpointer, build_model
from ..modeling.batch_norm import fold_for_inference
from ..modeling.segmenter import dataset_vocabulary
from ..modeling.teacher import CLIPTeacher

__all__ = [
    "BenchmarkTarget",
    "BENCHMARK_TARGETS",
    "register_benchmark_target",
    "segmenter_target",
    "inference_params",
    "deployed_model",
    "random_images",
    "resized_for_test",
]


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


def random_images(batch_size: int, size: int, device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch_size, 3, size, size), generator=g, dtype=torch.uint8)


def resized_for_test(cfg, images: torch.Tensor) -> torch.Tensor:
    """``images`` through the config's test-time geometry (``build_sem_seg_augmentation``: the
    evaluation mapper's and the predictor's ``ResizeShortestEdge``), as the model sees them."""
    from detectron2.data import transforms as T

    augs = T.AugmentationList(build_sem_seg_augmentation(cfg, is_train=False))
    out = []
    for im in images:
        aug = T.AugInput(im.permute(1, 2, 0).numpy())
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


def deployed_model(
    cfg, device, vocabulary: Optional[Sequence[str]] = None, load_weights: bool = False
) -> nn.Module:
    """The segmenter of ``cfg`` on ``device``, in eval mode, as the predictor deploys it
    (BatchNorms folded when ``MODEL.CLIPDISTILL.FOLD_BN``). ``load_weights``: load
    ``MODEL.WEIGHTS`` strictly first (timing does not need them: random weights cost the same).
    ``vocabulary``: set first when given (the fold's check runs the segmenter: a training-free one
    has no other vocabulary)."""
    c = cfg.clone()
    c.defrost()
    c.MODEL.DEVICE = str(device)
    model = build_model(c).eval()
    if load_weights and c.MODEL.WEIGHTS:
        SegmenterCheckpointer(model).load(c.MODEL.WEIGHTS)
    if vocabulary is not None:
        model.set_vocabulary(vocabulary)
    if c.MODEL.CLIPDISTILL.FOLD_BN:
        fold_for_inference(model)
    return model


def segmenter_target(cfg, name: Optional[str] = None, test_resize: bool = False) -> BenchmarkTarget:
    """A segmenter built from ``cfg`` as it is (only ``MODEL.DEVICE`` is set by the benchmark),
    timed with the vocabulary of its first test dataset (else its training vocabulary).

    Args:
        cfg: the segmenter's own config.
        name: row name (default: ``cfg.MODEL.META_ARCHITECTURE``).
        test_resize: give the model the ``size x size`` images after the config's test-time
            resize (``resized_for_test``), as the data loader would; else the images as they are.
            Either way outputs are at ``size x size``.
    """

    def build(_unused_cfg, device, size, batch_size):
        # time with the vocabulary the segmenter is evaluated on
        vocab = dataset_vocabulary(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else None
        model = deployed_model(cfg, device, vocab)
        images = random_images(batch_size, size, device)
        if test_resize:
            images = resized_for_test(cfg, images)
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
        teacher = CLIPTeacher(cfg).to(device)
        side = size if dense else teacher.image_size
        images = random_images(batch_size, side, device).to(device).float()
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
