"""The open-vocabulary segmenter interface every META_ARCH of clipdistill implements.

Tools (Trainer, predictor, demo, web demo, export, benchmark, comparison) talk to a segmenter only
through this class, never by probing attributes:

* vocabulary: ``train_vocabulary``; ``set_vocabulary(names)`` for inputs without a dataset;
  ``vocabulary_for(input)`` (the input's ``dataset_name`` -> its ``stuff_classes``, else the set
  vocabulary, else the training vocabulary); ``open_vocabulary`` (False for a closed-set model);
* cost accounting: ``inference_excluded_modules`` (submodules that are not per-image inference
  cost, e.g. a text tower whose output is cached per vocabulary), ``distills_clip_teacher``
  (the benchmark's distillation modes apply);
* deployment: the tensor-level path ``logits(images, text_embeddings)`` with
  ``text_embeddings(names)``, ``pixel_mean``/``pixel_std`` and ``size_divisibility``, which
  inference and export share; ``exportable``: whether a segmenter has it (``tools/export_model.py``
  traces it);
* training: ``lr_factor(name)`` (per-parameter lr multiplier), ``find_unused_parameters`` (DDP),
  ``no_weight_decay_names`` (parameters trained with ``SOLVER.WEIGHT_DECAY_EMBED``),
  ``wants_segmenter_teacher(cfg)`` (a frozen segmenter teacher built by the engine);
* configuration: ``config_problems(cfg, training)`` (its keys' values checked up front);
* bounded-memory inference: ``coarse_sem_seg(inputs)`` (scores before the final upsampling);
* checkpoints: ``convert_checkpoint(state_dict)`` (rename an official checkpoint's keys into this
  implementation's; called by the strict ``SegmenterCheckpointer``);
* distillation: ``dense_class_probs(images, class_names)`` (per-pixel class probabilities, what a
  student distils from any segmenter used as its teacher).

Inference follows detectron2's contract: ``model(list[dict]) -> [{"sem_seg": Tensor[K, H, W]}]``
at each input's ``height``/``width``.
"""

import contextlib
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.data import MetadataCatalog
from torch import nn

from ..data.datasets.common import training_class_names
from ..utils.errors import ConfigError, ConfigKeyError
from .clip.text import check_class_names
from .postprocess import CoarseSemSeg

__all__ = [
    "OpenVocabSegmenter",
    "train_vocabulary_from_cfg",
    "dataset_vocabulary",
    "is_exporting",
    "inference_context",
]


def is_exporting() -> bool:
    """True while tracing/scripting/exporting/compiling: no inference_mode then (its tensors
    cannot be recorded by a tracer or saved for backward)."""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    onnx = getattr(torch, "onnx", None)
    if onnx is not None and getattr(onnx, "is_in_onnx_export", lambda: False)():
        return True
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and getattr(compiler, "is_compiling", lambda: False)())


def inference_context(no_grad: bool = False):
    """``torch.inference_mode`` where it is valid (no gradient requested, nothing traces or
    exports); elsewhere ``torch.no_grad()`` when ``no_grad``, else nothing (gradients flow)."""
    if not torch.is_grad_enabled() and not is_exporting():
        return torch.inference_mode()
    return torch.no_grad() if no_grad else contextlib.nullcontext()


def dataset_vocabulary(dataset_name: str) -> List[str]:
    """The class names (``stuff_classes``) of a registered dataset.

    Raises:
        KeyError: the dataset's metadata has no ``stuff_classes`` (naming the dataset).
    """
    meta = MetadataCatalog.get(dataset_name)
    names = meta.get("stuff_classes", None)
    if not names:
        raise ConfigKeyError(
            f"dataset {dataset_name!r} has no 'stuff_classes' in its metadata: register it with "
            "its class names (see datasets/README.md)"
        )
    return list(names)


def train_vocabulary_from_cfg(cfg) -> List[str]:
    """The class names the labels of ``DATASETS.TRAIN[0]`` train ([] when there is no training
    set): its ``seen_classes`` when it has a seen/unseen split (unseen names are never trained),
    else all its ``stuff_classes``."""
    if not cfg.DATASETS.TRAIN:
        return []
    return training_class_names(MetadataCatalog.get(cfg.DATASETS.TRAIN[0]))


class OpenVocabSegmenter(nn.Module):
    """Base class of clipdistill's segmenters (see the module docstring for the contract).

    Subclasses call ``super().__init__(train_vocabulary=...)`` and implement ``forward``.
    """

    #: submodule names whose parameters are not per-image inference cost
    inference_excluded_modules: Tuple[str, ...] = ()
    #: whether it trains against the frozen CLIP teacher's outputs (``MODEL.CLIPDISTILL.LOSS``,
    #: ``TEACHER_CACHE``), that teacher (a ``CLIPTeacher``) being its ``teacher``: the student
    distills_clip_teacher: bool = False
    #: whether some trainable parameters may get no gradient in a step (DDP needs to know)
    find_unused_parameters: bool = False
    #: parameter names (the last component, e.g. "pos_embed") trained with
    #: ``SOLVER.WEIGHT_DECAY_EMBED`` instead of ``SOLVER.WEIGHT_DECAY`` (embeddings, queries)
    no_weight_decay_names: Tuple[str, ...] = ()

    def __init__(self, *, train_vocabulary: Sequence[str] = ()):
        super().__init__()
        self.train_vocabulary: List[str] = list(train_vocabulary)
        self.vocabulary: Optional[List[str]] = None

    # ------------------------------------------------------------------------------ vocabulary
    @property
    def open_vocabulary(self) -> bool:
        """False for a model that can only predict its training classes."""
        return True

    def set_vocabulary(self, class_names: Optional[Sequence[str]]) -> None:
        """Use ``class_names`` for inputs without a ``"dataset_name"``; None restores the training
        vocabulary. Names are checked now (``check_class_names``); a closed-set model accepts its
        training vocabulary only."""
        if class_names is None:
            self.vocabulary = None
            return
        names = check_class_names(class_names)
        if not self.open_vocabulary and names != self.train_vocabulary:
            raise ConfigError(
                f"{type(self).__name__} is closed-set: it only predicts its "
                f"{len(self.train_vocabulary)} training classes {self.train_vocabulary[:5]}..."
            )
        self.prepare_vocabulary(names)
        self.vocabulary = names

    def prepare_vocabulary(self, class_names: List[str]) -> None:
        """Hook: do the once-per-vocabulary work now (e.g. embed the text); default nothing."""

    def vocabulary_for(self, input_dict: dict) -> List[str]:
        """The class names to score ``input_dict`` against."""
        name = input_dict.get("dataset_name")
        if name is not None:
            return dataset_vocabulary(name)
        vocab = self.vocabulary if self.vocabulary is not None else self.train_vocabulary
        if not vocab:
            raise ConfigError(
                f"{type(self).__name__} has no vocabulary: give inputs a 'dataset_name', call "
                "set_vocabulary(names), or set DATASETS.TRAIN to a registered dataset"
            )
        return list(vocab)

    # ------------------------------------------------------------------------------ misc
    @property
    def device(self) -> torch.device:
        for t in self.buffers():
            return t.device
        for t in self.parameters():
            return t.device
        return torch.device("cpu")

    def lr_factor(self, param_name: str) -> float:
        """Learning-rate multiplier of parameter ``param_name`` (default 1)."""
        return 1.0

    @classmethod
    def config_problems(cls, cfg, training: bool) -> List[str]:
        """The problems of this architecture's own config keys that its constructors do not
        check, each ``"KEY=VALUE: what works"`` (``clipdistill.config.validate_config`` reports
        them before anything is built; ``training``: the keys read only by training too).
        Default: none."""
        return []

    @classmethod
    def wants_segmenter_teacher(cls, cfg) -> bool:
        """Whether ``cfg`` asks this architecture for a frozen segmenter teacher
        (``MODEL.CLIPDISTILL.SEGMENTER_TEACHER``): ``clipdistill.engine.build_model`` then builds
        it from its own config and checkpoint and passes it as ``seg_teacher``. Default False."""
        return False

    # ------------------------------------------------------------------------------ tensor level
    def logits(
        self, images: torch.Tensor, text_embeddings: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """The tensor-level path shared by inference and export: ``images`` float
        ``[B, 3, H, W]``, normalised with ``pixel_mean``/``pixel_std`` and zero-padded to a
        multiple of ``size_divisibility``; ``text_embeddings`` ``[K, C]`` of the vocabulary
        (``text_embeddings(names)``; None for a closed-set model) -> logits ``[B, K, h, w]`` at
        the segmenter's output stride, which callers upsample bilinearly to ``H, W``.
        Segmenters that have one are ``exportable``."""
        raise NotImplementedError(f"{type(self).__name__} has no tensor-level logits()")

    def text_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        """``[K, C]`` text embeddings of ``class_names`` for ``logits``."""
        raise NotImplementedError(f"{type(self).__name__} has no tensor-level logits()")

    @property
    def exportable(self) -> bool:
        """Whether ``tools/export_model.py`` can trace this segmenter: it has the tensor-level
        ``logits``."""
        return type(self).logits is not OpenVocabSegmenter.logits

    @torch.no_grad()
    def dense_class_probs(self, images: torch.Tensor, class_names: Sequence[str]) -> torch.Tensor:
        """Per-pixel class probabilities ``[B, K, H, W]`` (summing to 1 over K) of ``images``
        (float or uint8 ``[B, 3, H, W]``, 0..255 RGB, at the size they are given) for the
        vocabulary ``class_names``: the target when this segmenter teaches a student.

        The default runs ``forward`` in eval mode and turns each ``sem_seg`` into probabilities
        with ``scores_to_probs``.
        """
        was_training = self.training
        previous = self.vocabulary
        self.eval()
        try:
            self.set_vocabulary(class_names)
            h, w = images.shape[-2:]
            inputs = [{"image": im, "height": h, "width": w} for im in images]
            out = torch.stack([o["sem_seg"] for o in self(inputs)])
        finally:
            self.vocabulary = previous
            self.train(was_training)
        return self.scores_to_probs(out.float())

    def coarse_sem_seg(self, batched_inputs: List[dict]) -> List[CoarseSemSeg]:
        """Per input, its class scores before they are brought to the image size, with the way
        to bring any slice of classes there: the label and score maps of the predictor are then
        computed in class chunks, in memory bounded whatever the vocabulary
        (``clipdistill.modeling.postprocess``). The default wraps ``forward``'s ``sem_seg``
        (already at the image size: no saving) with ``scores_to_probs``; a segmenter whose last
        step is an upsampling of logits overrides it."""

        def to_probs(sem_seg: torch.Tensor) -> torch.Tensor:
            return self.scores_to_probs(sem_seg[None])[0]

        return [
            CoarseSemSeg(o["sem_seg"], tuple(o["sem_seg"].shape[-2:]), to_probs=to_probs)
            for o in self(batched_inputs)
        ]

    def scores_to_probs(self, sem_seg: torch.Tensor) -> torch.Tensor:
        """``sem_seg`` ``[B, K, H, W]`` as returned by ``forward`` -> probabilities over K.
        Default: softmax (``sem_seg`` are logits); a segmenter whose ``sem_seg`` are already
        non-negative scores (mask-classification models) overrides this (e.g. normalise sums)."""
        return sem_seg.softmax(dim=1)

    @classmethod
    def convert_checkpoint(cls, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Map a checkpoint's keys onto this implementation's (e.g. an official release's);
        the default is the identity. Must leave a clipdistill checkpoint unchanged."""
        return state_dict
