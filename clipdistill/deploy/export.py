"""Export of a segmenter with a vocabulary baked in: TorchScript and ONNX.

``ExportableSegmenter`` wraps a segmenter that has the tensor-level path
(``OpenVocabSegmenter.logits``; ``exportable``: the student) into a plain ``image -> logits``
module: the text embeddings of the vocabulary are computed once (``text_embeddings``) and stored
as a buffer, the ``inference_excluded_modules`` (the teacher) are left out, and the graph is

    float32 [B, 3, H, W] (0..255, cfg.INPUT.FORMAT channel order)
      -> normalise -> zero-pad H, W to the segmenter's size divisibility
      -> logits(images, text) -> bilinear upsampling -> crop to H, W
      -> float32 logits [B, K, H, W]   (or int64 labels [B, H, W] with output="labels")

which is the path ``forward`` takes for an image given at the size it is fed (its test-time
resizing, ``ResizeShortestEdge``, stays outside the graph). Height and width are dynamic in both
exports.
"""

import copy
import logging
import warnings
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..modeling.clip.text import check_class_names
from ..modeling.postprocess import LABEL_CANDIDATES, bilinear_axis, resample_labels
from ..utils.errors import ConfigError
from ..utils.io import atomic_path, atomic_save_json
from ..utils.timing import summarize, time_interleaved
from .runtime import onnx_session  # the torch-free runtime's (re-exported here)

__all__ = [
    "ExportableSegmenter",
    "export_torchscript",
    "export_onnx",
    "load_torchscript",
    "onnx_session",
    "eager_reference",
    "parity_check",
    "benchmark",
]

logger = logging.getLogger(__name__)

#: what an exported graph outputs (``ExportableSegmenter``'s ``output``)
OUTPUTS = ("logits", "labels")


def _without_excluded_modules(model: nn.Module) -> nn.Module:
    """A shallow copy of ``model`` sharing every submodule except its
    ``inference_excluded_modules`` (e.g. the teacher: not needed once the text embeddings are
    computed; it must not end up in an exported file)."""
    student = copy.copy(model)
    skip = set(model.inference_excluded_modules)
    student._modules = OrderedDict((k, v) for k, v in model._modules.items() if k not in skip)
    return student


class ExportableSegmenter(nn.Module):
    """``image -> per-class logits`` (or label map) of an exportable segmenter, vocabulary baked
    in.

    Args:
        model: a segmenter with the tensor-level ``logits`` (``SegStudent``; eval mode is set on
            the wrapper).
        class_names: the vocabulary; None: the model's training vocabulary.
        output: ``"logits"`` (float32 ``[B, K, H, W]``), ``"labels"`` (int64 ``[B, H, W]``,
            the argmax over each pixel's candidate classes: ``resample_labels``).
        label_candidates: the top-k of each low-resolution cell that makes the candidates.
    """

    def __init__(
        self,
        model: nn.Module,
        class_names: Optional[Sequence[str]] = None,
        output: str = "logits",
        label_candidates: int = LABEL_CANDIDATES,
    ):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if int(label_candidates) < 1:
            raise ValueError(f"label candidates must be >= 1, got {label_candidates}")
        self.label_candidates = int(label_candidates)
        if not model.exportable:
            raise ConfigError(
                f"{type(model).__name__} cannot be exported: it has no tensor-level "
                "logits(images, text_embeddings) (OpenVocabSegmenter.logits; SegStudent has one)"
            )
        if class_names is None:
            class_names = list(model.train_vocabulary)
        self.class_names: List[str] = list(class_names)
        self.output = output
        text = None
        if model.open_vocabulary:
            self.class_names = check_class_names(self.class_names)
            text = model.text_embeddings(self.class_names).detach().float().cpu()
        self.student = _without_excluded_modules(model)
        self.has_text = text is not None
        self.register_buffer("text_embeddings", text if text is not None else torch.zeros(0))
        self.register_buffer("pixel_mean", model.pixel_mean.detach().clone().view(1, -1, 1, 1))
        self.register_buffer("pixel_std", model.pixel_std.detach().clone().view(1, -1, 1, 1))
        self.size_divisibility = int(max(1, model.size_divisibility))
        self.to(model.pixel_mean.device)
        self.eval()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2], image.shape[-1]
        d = self.size_divisibility
        x = (image - self.pixel_mean) / self.pixel_std
        pad_h = (h + d - 1) // d * d - h
        pad_w = (w + d - 1) // d * d - w
        x = F.pad(x, (0, pad_w, 0, pad_h))  # zeros after normalisation, like ImageList
        coarse = self.student.logits(x, self.text_embeddings if self.has_text else None)
        if self.output == "labels":
            # the label map without upsampling every class (exact when each pixel's candidates
            # hold its winner): its cost grows with K at the feature resolution only
            rows = bilinear_axis(coarse.shape[-2], x.shape[-2], coarse.device).crop(h)
            cols = bilinear_axis(coarse.shape[-1], x.shape[-1], coarse.device).crop(w)
            return resample_labels(coarse, rows, cols, self.label_candidates)
        logits = F.interpolate(coarse, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits[:, :, :h, :w]


def _quiet_export():
    """Silence the expected tracer/deprecation warnings of the exporters."""
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("ignore", torch.jit.TracerWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    return ctx


def export_torchscript(module: ExportableSegmenter, path: str, example: torch.Tensor):
    """``torch.jit.trace`` ``module`` on ``example`` (``[B, 3, H, W]`` float), freeze it
    (weights become constants, unused attributes are dropped; ``text_embeddings`` is kept) and
    save it to ``path``. Sizes are read from the input at run time, so other batch sizes, heights
    and widths work (checked by ``parity_check``). Returns the frozen module."""
    ctx = _quiet_export()
    try:
        with torch.no_grad(), atomic_path(path) as tmp:
            traced = torch.jit.trace(module, example, check_trace=False)
            frozen = torch.jit.freeze(traced.eval(), preserved_attrs=["text_embeddings"])
    finally:
        ctx.__exit__(None, None, None)
    with atomic_path(path) as tmp:
        frozen.save(tmp)
    return frozen


def load_torchscript(path: str):
    """``torch.jit.load`` without its deprecation warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        return torch.jit.load(path, map_location="cpu")


def export_onnx(
    module: ExportableSegmenter,
    path: str,
    example: torch.Tensor,
    exporter: str = "torchscript",
    opset: int = 17,
) -> str:
    """Export ``module`` to ONNX with dynamic batch, height and width.

    Args:
        exporter: ``"torchscript"``: the TorchScript-based exporter (``dynamo=False``; fast, and
            deprecated by PyTorch but working in torch 2.15); ``"dynamo"``: the
            ``torch.export``-based default of recent PyTorch (needs ``onnxscript``; slower).
        opset: ONNX opset of the TorchScript-based exporter (the dynamo exporter picks its own).
    """
    out_name = module.output
    axes = {0: "batch", 2: "height", 3: "width"}
    out_axes = (
        {0: "batch", 2: "height", 3: "width"}
        if out_name == "logits"
        else {0: "batch", 1: "height", 2: "width"}
    )
    ctx = _quiet_export()
    try:
        with torch.no_grad(), atomic_path(path) as tmp:
            if exporter == "torchscript":
                torch.onnx.export(
                    module,
                    (example,),
                    tmp,
                    dynamo=False,
                    opset_version=opset,
                    input_names=["image"],
                    output_names=[out_name],
                    dynamic_axes={"image": axes, out_name: out_axes},
                )
            elif exporter == "dynamo":
                dims = {i: torch.export.Dim(n, min=1, max=8192) for i, n in axes.items()}
                dims[0] = torch.export.Dim("batch", min=1, max=1024)
                prog = torch.onnx.export(
                    module,
                    (example,),
                    dynamo=True,
                    input_names=["image"],
                    output_names=[out_name],
                    dynamic_shapes={"image": dims},
                    verbose=False,
                )
                prog.save(tmp)
            else:
                raise ValueError(f"exporter must be 'torchscript' or 'dynamo', got {exporter!r}")
    finally:
        ctx.__exit__(None, None, None)
    return path


def eager_reference(model: nn.Module, image_uint8: torch.Tensor) -> torch.Tensor:
    """The segmenter's ``forward`` on one ``[3, H, W]`` uint8 image at its own size (no
    resizing): logits ``[K, H, W]`` -- the reference the exports are compared with."""
    with torch.no_grad():
        return model([{"image": image_uint8}])[0]["sem_seg"].float().cpu()


def parity_check(
    model: nn.Module,
    runners: Dict[str, Callable[[np.ndarray], np.ndarray]],
    sizes: Sequence[Tuple[int, int]],
    seed: int = 0,
) -> Dict[str, Dict[str, float]]:
    """Max absolute logit difference between each exported runner and the eager model.

    Args:
        model: the exported segmenter (its vocabulary set to the exported one).
        runners: ``name -> f(float32 [1, 3, H, W] numpy) -> [1, K, H, W]`` logits.
        sizes: ``(H, W)`` of the random test images.

    Returns:
        ``{runner: {"HxW": max |diff|, ..., "max": overall}}``.
    """
    g = torch.Generator().manual_seed(seed)
    out = {name: {} for name in runners}
    for h, w in sizes:
        image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
        ref = eager_reference(model, image).numpy()
        batch = image[None].float().numpy()
        for name, run in runners.items():
            got = np.asarray(run(batch))[0]
            if got.shape != ref.shape:
                raise AssertionError(
                    f"{name}: output {got.shape} for {h}x{w}, expected {ref.shape}"
                )
            out[name][f"{h}x{w}"] = float(np.abs(got - ref).max())
    for name in runners:
        out[name]["max"] = max(out[name].values())
    return out


def benchmark(
    runners: Dict[str, Callable[[np.ndarray], object]],
    size: Tuple[int, int],
    runs: int = 20,
    warmup: int = 3,
    batch: int = 1,
    seed: int = 0,
) -> Dict[str, Dict[str, float]]:
    """Median / min / mean wall time (ms) of each runner on one random input
    (``clipdistill.utils.timing.time_interleaved``: ``warmup`` untimed runs each, then ``runs``
    interleaved rounds, so that a change in the machine's load affects all of them alike)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (batch, 3) + tuple(size)).astype(np.float32)
    calls = {name: (lambda run=run: run(x)) for name, run in runners.items()}
    times = time_interleaved(calls, runs, warmup)
    res = {}
    for name, t in times.items():
        res[name] = {**summarize(t), "runs": runs, "warmup": warmup}
        logger.info(f"{name}: median {res[name]['median_ms']:.1f} ms over {runs} runs")
    return res


def torch_runner(module) -> Callable[[np.ndarray], np.ndarray]:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).cpu().numpy()

    return run


def onnx_runner(session) -> Callable[[np.ndarray], np.ndarray]:
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: x})[0]

    return run


def write_vocabulary_file(module: ExportableSegmenter, path: str, extra: Optional[dict] = None):
    """A JSON side file with what a user of the exported graph needs to know."""
    data = {
        "class_names": module.class_names,
        "input": "float32 [B, 3, H, W], 0..255, channel order of INPUT.FORMAT, any H and W",
        "output": (
            "float32 logits [B, K, H, W] (K = len(class_names))"
            if module.output == "logits"
            else "int64 labels [B, H, W] (indices into class_names)"
        ),
        "resize_hint": "resize the shorter side to INPUT.MIN_SIZE_TEST (at most "
        "INPUT.MAX_SIZE_TEST) before, and the output back to the image size after, as the "
        "test-time mapper does",
    }
    data.update(extra or {})
    atomic_save_json(path, data)
    return path
