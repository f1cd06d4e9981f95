"""Open-vocabulary export: the vocabulary is an input of the exported graph.

``export_open_vocab(model, folder)`` writes a self-contained folder that
``clipdistill.deploy.runtime.Segmenter`` runs with numpy, onnxruntime, ``regex`` and ``ftfy``
only (no torch):

- ``student.onnx``: ``image`` float32 ``[B, 3, H, W]`` (0..255, ``INPUT.FORMAT`` order, any H, W)
  and ``text`` float32 ``[K, D]`` (K dynamic) -> ``logits`` float32 ``[B, K, H, W]`` (the path of
  ``ExportableSegmenter``: normalise, pad, ``logits``, upsample, crop); or, exported with
  ``output="labels"``, -> ``labels`` int64 ``[B, H, W]``: the argmax over each pixel's candidate
  classes (``clipdistill.modeling.postprocess.resample_labels``), whose cost grows with K at
  the feature resolution only, not with K x H x W;
- ``text.onnx``: ``tokens`` int64 ``[N, L]`` -> ``embeddings`` float32 ``[N, D]``, L2-normalised
  (the teacher's CLIP text tower, ``encode_text(tokens, normalize=True)``);
- ``bpe_simple_vocab_16e6.txt.gz``: open_clip's BPE merges (``clipdistill.deploy.tokenizer``);
- ``deploy.json``: prompt templates, context length, input format, test-time size, training
  vocabulary. The runtime ensembles templates as ``TextEncoder`` does (open_clip's
  ``build_zero_shot_classifier``): per-template normalised embeddings averaged, re-normalised.
"""

import os
import shutil
from typing import Dict, List, Optional, Sequence, Tuple
import torch
from torch import nn

from ..modeling.clip.text import template_strings
from ..modeling.postprocess import LABEL_CANDIDATES
from ..utils.errors import ConfigError
from ..utils.io import atomic_path, atomic_save_json, ensure_writable_dir
from .export import ExportableSegmenter, _quiet_export
from .runtime import format_template

__all__ = ["OpenVocabStudent", "TextTower", "export_open_vocab", "DEPLOY_JSON"]

DEPLOY_JSON = "deploy.json"
FORMAT_VERSION = 1


class OpenVocabStudent(nn.Module):
    """``(image, text [K, D]) -> logits [B, K, H, W]`` (and/or ``labels [B, H, W]``, see
    ``ExportableSegmenter``'s ``output``): ``ExportableSegmenter``'s graph with the text
    embeddings as an input instead of a constant."""

    def __init__(
        self, model: nn.Module, output: str = "logits", label_candidates: int = LABEL_CANDIDATES
    ):
        super().__init__()
        if not model.exportable or not model.open_vocabulary:
            raise ConfigError(
                f"{type(model).__name__} cannot be exported with an open vocabulary: it needs "
                "the tensor-level logits(images, text_embeddings) and an open-vocabulary head"
            )
        names = list(model.train_vocabulary)[:1]
        self.inner = ExportableSegmenter(model, names, output, label_candidates)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        m = self.inner
        self_text = m.text_embeddings
        m.text_embeddings = text  # the buffer's slot, replaced for this call (traced as input)
        try:
            return m(image)
        finally:
            m.text_embeddings = self_text


class TextTower(nn.Module):
    """``tokens [N, L] -> encode_text(tokens, normalize=True) [N, D]`` of an open_clip CLIP
    (only its text parameters end up in the export)."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        self.clip = clip_model
        self.eval()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens, normalize=True)


def _text_encoder(model: nn.Module):
    teacher = getattr(model, "teacher", None)
    encoder = getattr(teacher, "text_encoder", None)
    if encoder is None:
        raise ConfigError(
            f"{type(model).__name__} has no teacher.text_encoder: cannot export the text tower"
        )
    return encoder


def export_onnx_pair(
    model: nn.Module,
    folder: str,
    example_size=(64, 64),
    opset: int = 17,
    output: str = "logits",
    label_candidates: int = LABEL_CANDIDATES,
) -> dict:
    """Write ``student.onnx`` (its output: ``output``, ``"logits"`` or ``"labels"``) and
    ``text.onnx`` into ``folder``; returns their paths."""
    student = OpenVocabStudent(model, output, label_candidates).cpu().eval()
    encoder = _text_encoder(model)
    tower = TextTower(encoder._model).cpu().eval()
    ctx_len = int(encoder.tokenizer.context_length)
    image = torch.randint(0, 256, (1, 3) + tuple(example_size)).float()
    text = model.text_embeddings(list(model.train_vocabulary)[:2]).detach().float().cpu()
    tokens = torch.as_tensor(encoder.tokenizer(["a photo of a cat.", "dog"])).long()
    paths = {
        "student": os.path.join(folder, "student.onnx"),
        "text": os.path.join(folder, "text.onnx"),
    }
    ctx = _quiet_export()
    try:
        with torch.no_grad():
            with atomic_path(paths["student"]) as tmp:
                torch.onnx.export(
                    student,
                    (image, text),
                    tmp,
                    dynamo=False,
                    opset_version=opset,
                    input_names=["image", "text"],
                    output_names=[output],
                    dynamic_axes={
                        "image": {0: "batch", 2: "height", 3: "width"},
                        "text": {0: "classes"},
                        output: (
                            {0: "batch", 1: "classes", 2: "height", 3: "width"}
                            if output == "logits"
                            else {0: "batch", 1: "height", 2: "width"}
                        ),
                    },
                )
            with atomic_path(paths["text"]) as tmp:
                torch.onnx.export(
                    tower,
                    (tokens,),
                    tmp,
                    dynamo=False,
                    opset_version=opset,
                    input_names=["tokens"],
                    output_names=["embeddings"],
                    dynamic_axes={"tokens": {0: "prompts"}, "embeddings": {0: "prompts"}},
                )
    finally:
        ctx.__exit__(None, None, None)
    paths["context_length"] = ctx_len
    return paths


#: names that exercise a template: vowel and consonant starts, case, a multi-word name
_PROBE_NAMES = ("red star", "orange ring", "Apple", "empty background", "tv")


def portable_templates(templates) -> List[str]:
    """Each template as a string the runtime formats (``format_template``), checked on probe
    names against the template itself. A callable that puts "a"/"an" before the name (the
    testbed's caption grammar) becomes ``"{article} {}..."``.

    Raises:
        ConfigError: a callable template that neither form reproduces (naming it)."""
    out = []
    for t, plain in zip(templates, template_strings(templates)):
        candidates = [plain]
        for lead in ("a|an {}", "a {}"):  # -> "{article} {}": "a red star", "an orange ring"
            if lead in plain:
                candidates.append(plain.replace(lead, "{article} {}", 1))
        want = [t.format(n) if isinstance(t, str) else t(n) for n in _PROBE_NAMES]
        good = [c for c in candidates if [format_template(c, n) for n in _PROBE_NAMES] == want]
        if not good:
            raise ConfigError(
                f"prompt template {plain!r} ({t!r}) cannot be stored for the runtime: it is "
                "neither a str.format template nor one with an 'a'/'an' article before the name"
            )
        out.append(good[0])
    return out


def export_open_vocab(
    model: nn.Module,
    folder: str,
    *,
    input_format: str = "RGB",
    min_size_test: Optional[int] = None,
    max_size_test: Optional[int] = None,
    example_size=(64, 64),
    opset: int = 17,
    output: str = "logits",
    label_candidates: int = LABEL_CANDIDATES,
) -> str:
    """Write the self-contained open-vocabulary folder (see the module docstring); returns the
    path of its ``deploy.json``. ``output``: what ``student.onnx`` returns, ``"logits"`` or
    ``"labels"`` (the runtime's ``segment`` uses it; ``label_candidates``: the top-k per
    low-resolution cell of ``resample_labels``)."""
    from open_clip.tokenizer import default_bpe

    ensure_writable_dir(folder, "export folder")
    encoder = _text_encoder(model)
    tokenizer = encoder.tokenizer
    if getattr(tokenizer, "reduction_fn", None) is not None or not hasattr(tokenizer, "bpe"):
        raise ConfigError(
            f"text tokenizer {type(tokenizer).__name__}: only open_clip's SimpleTokenizer "
            "(clean 'lower', no reduction mask) is reproduced without torch"
        )
    paths = export_onnx_pair(
        model,
        folder,
        example_size=example_size,
        opset=opset,
        output=output,
        label_candidates=label_candidates,
    )
    shutil.copyfile(default_bpe(), os.path.join(folder, "bpe_simple_vocab_16e6.txt.gz"))
    meta = {
        "format_version": FORMAT_VERSION,
        "student": "student.onnx",
        "text": "text.onnx",
        "bpe": "bpe_simple_vocab_16e6.txt.gz",
        "context_length": paths["context_length"],
        "templates": portable_templates(encoder.templates),
        "templates_name": encoder.templates_name,
        "input_format": input_format,
        "min_size_test": min_size_test,
        "max_size_test": max_size_test,
        "train_vocabulary": list(model.train_vocabulary),
        "student_inputs": "image float32 [B, 3, H, W] 0..255 (input_format order); "
        "text float32 [K, D] L2-normalised prompt-ensembled embeddings",
        "student_output": (
            "logits float32 [B, K, H, W]"
            if output == "logits"
            else "labels int64 [B, H, W] (argmax over each pixel's top-"
            f"{int(label_candidates)} candidate classes of the low-resolution cells it reads)"
        ),
        "label_candidates": int(label_candidates) if output == "labels" else None,
        "text_graph": "tokens int64 [N, context_length] -> embeddings float32 [N, D], normalised",
    }
    path = os.path.join(folder, DEPLOY_JSON)
    atomic_save_json(path, meta)
    return path


def parity_check_folder(
    model: nn.Module,
    folder: str,
    vocabularies: Sequence[Sequence[str]],
    sizes: Sequence[Tuple[int, int]],
    seed: int = 0,
) -> Dict[str, float]:
    """Largest relative difference (max |diff| / max |reference|) between the torch-free
    runtime of ``folder`` and PyTorch, for the text embeddings and the logits of each vocabulary
    at each image size: ``{"text": ..., "logits": ...}``; for a labels export, ``"labels"``:
    the largest fraction of pixels whose label differs from the argmax of PyTorch's logits."""
    import numpy as np

    from .runtime import Segmenter

    seg = Segmenter(folder, resize=False)
    g = torch.Generator().manual_seed(seed)
    worst = {"text": 0.0, "logits" if seg.has_logits else "labels": 0.0}

    def rel(a, b):
        return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-12))

    for names in vocabularies:
        ref_text = model.text_embeddings(list(names)).detach().float().cpu().numpy()
        worst["text"] = max(worst["text"], rel(seg.text_embeddings(names), ref_text))
        baked = ExportableSegmenter(model, names).cpu()
        for h, w in sizes:
            image = torch.randint(0, 256, (3, h, w), generator=g).float()
            with torch.no_grad():
                ref = baked(image[None])[0].numpy()
            if seg.has_logits:
                worst["logits"] = max(worst["logits"], rel(seg.logits(image.numpy(), names), ref))
            else:  # the fraction of pixels whose label differs from the full argmax
                got = seg.labels(image.numpy(), names)
                worst["labels"] = max(worst["labels"], float((got != ref.argmax(0)).mean()))
    return worst
