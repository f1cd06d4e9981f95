"""Training-free CLIP segmenters: a frozen CLIP applied densely to the image.

``MaskCLIP`` is one META_ARCH for MaskCLIP and its successors: the CLIP is
``MODEL.MASKCLIP.CLIP`` (``NAME``, ``WEIGHTS``, ``TEMPLATES``), its dense method
(``MODEL.MASKCLIP.CLIP.DENSE_METHOD``: ``maskclip``, ``value_only``, ``sclip``, ``clearclip``,
``naclip``, ``tokens``) picks the paper, the rest of ``MODEL.MASKCLIP.*`` the inference protocol
(sliding windows, logit scale, background handling) of that paper's code; ``configs/maskclip/``
holds one config per method and benchmark where those codes' settings differ. On a student's
teacher CLIP it is that teacher's own zero-shot accuracy, the ceiling a distilled student is read
against.
"""

import logging
from typing import List

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ..clip.dense import dense_features
from ..segmenter import OpenVocabSegmenter, inference_context, train_vocabulary_from_cfg
from .sliding_window import sliding_window_logits
from ..teacher import CLIPTeacher

__all__ = ["MaskCLIP"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class MaskCLIP(OpenVocabSegmenter):
    """Frozen CLIP, dense features scored against the text embeddings of the vocabulary.

    Per image (``"image"``: uint8 ``[3, H, W]`` RGB, already resized by the test mapper to
    ``INPUT.MIN_SIZE_TEST``): normalise with CLIP's mean/std; for every sliding window (or the
    whole image), dense features (``dense_features`` with ``MODEL.MASKCLIP.CLIP.DENSE_METHOD``),
    L2-normalised, cosine similarity with the prompt-ensembled text embeddings, bilinearly
    upsampled to the window; overlapping windows averaged; upsampled to the input's original
    ``height x width``; ``softmax(logit_scale * cos)`` over the classes; then the optional
    background rules of SCLIP / ClearCLIP / NACLIP: classes covering too small a share of the
    non-background prediction are dropped (``area_threshold``), pixels whose best probability is
    below ``prob_threshold`` go to class 0 (the background class of VOC-21-style vocabularies).

    Output: ``[{"sem_seg": Tensor[K, height, width]}]``, probabilities over the K classes (a pixel
    sent to the background by ``prob_threshold`` gets score 1 for class 0).
    """

    @configurable
    def __init__(
        self,
        *,
        clip: CLIPTeacher,
        train_vocabulary: List[str],
        window: int = 224,
        stride: int = 112,
        logit_scale: float = 40.0,
        prob_threshold: float = 0.0,
        area_threshold: float = 0.0,
        pad_windows: bool = False,
    ):
        """
        Args:
            clip: the frozen CLIP (its ``dense_method`` is the paper's method).
            train_vocabulary: vocabulary for inputs without a ``dataset_name`` (may be empty).
            window: sliding-window side in pixels; 0 runs on the whole image.
            stride: step between windows in pixels.
            logit_scale: multiplier of the cosine similarities before the softmax.
            prob_threshold: pixels whose highest class probability is below it are assigned
                class 0 (0 disables).
            area_threshold: a class other than 0 whose predicted area is at most this fraction of
                all non-0 predicted pixels gets probability 0 (0 disables).
            pad_windows: pad each window (centred, zeros after normalisation) to a multiple of the
                patch size, as ClearCLIP does; otherwise the patch convolution drops the remainder
                and the logits are stretched over the window (MaskCLIP, SCLIP, NACLIP).
        """
        super().__init__(train_vocabulary=train_vocabulary)
        for key, value in (
            ("MODEL.MASKCLIP.PROB_THRESHOLD", prob_threshold),
            ("MODEL.MASKCLIP.AREA_THRESHOLD", area_threshold),
        ):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{key} must be in [0, 1], got {value!r}")
        if window < 0 or (window > 0 and stride <= 0):
            raise ValueError(
                f"MODEL.MASKCLIP.SLIDE_WINDOW={window} / SLIDE_STRIDE={stride}: the window must be "
                ">= 0 (0: whole image) and the stride > 0"
            )
        self.clip = clip
        self.window, self.stride = int(window), int(stride)
        self.logit_scale = float(logit_scale)
        self.prob_threshold = float(prob_threshold)
        self.area_threshold = float(area_threshold)
        self.pad_windows = bool(pad_windows)
        # per image only the image tower runs: the text side of the CLIP model is not per-image
        # cost (TextEncoder caches its output per vocabulary)
        model = clip.model
        self.inference_excluded_modules = tuple(
            f"clip.model.{n}" for n, _ in model.named_children() if n != "visual"
        ) + tuple(f"clip.model.{n}" for n, _ in model.named_parameters(recurse=False))

    @classmethod
    def from_config(cls, cfg):
        m = cfg.MODEL.MASKCLIP
        clip = CLIPTeacher(
            model_name=m.CLIP.NAME,
            weights=m.CLIP.WEIGHTS,
            image_size=None,  # the tower's native size: only the dense path is used
            dense_image_size=None,
            templates=m.CLIP.TEMPLATES,
            dense_method=m.CLIP.DENSE_METHOD,
            config_key="MODEL.MASKCLIP.CLIP",
        )
        return {
            "clip": clip,
            "train_vocabulary": train_vocabulary_from_cfg(cfg),
            "window": m.SLIDE_WINDOW,
            "stride": m.SLIDE_STRIDE,
            "logit_scale": m.LOGIT_SCALE,
            "prob_threshold": m.PROB_THRESHOLD,
            "area_threshold": m.AREA_THRESHOLD,
            "pad_windows": m.PAD_WINDOWS,
        }

    @property
    def dense_method(self) -> str:
        return self.clip.dense_method

    def prepare_vocabulary(self, class_names: List[str]) -> None:
        self.clip.encode_text(class_names)  # computed (and cached) now

    def scores_to_probs(self, sem_seg: torch.Tensor) -> torch.Tensor:
        """``sem_seg`` are probabilities already (renormalised where a threshold changed them)."""
        return sem_seg / sem_seg.sum(dim=1, keepdim=True).clamp(min=1e-12)

    # ------------------------------------------------------------------------------ inference
    def forward(self, batched_inputs: List[dict]) -> List[dict]:
        if self.training:
            raise RuntimeError(
                f"{type(self).__name__} is training-free: evaluate it (tools/train_net.py "
                "--eval-only, Trainer.test); there is nothing to train."
            )
        with inference_context(no_grad=True):
            return [self._segment(x) for x in batched_inputs]

    def _segment(self, x: dict) -> dict:
        text = self.clip.encode_text(self.vocabulary_for(x))  # [K, C], cached per vocabulary
        image = x["image"].to(self.device, torch.float32)[None]
        image = (image - self.clip.pixel_mean) / self.clip.pixel_std
        image = image.to(next(self.clip.model.visual.parameters()).dtype)
        logits = sliding_window_logits(
            image, lambda crops: self._window_logits(crops, text), self.window, self.stride
        )
        height = x.get("height", image.shape[-2])
        width = x.get("width", image.shape[-1])
        logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        return {"sem_seg": self._postprocess(logits[0])}

    def _window_logits(self, crops: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Cosine similarities ``[n, K, h, w]`` of windows ``[n, 3, h, w]`` with ``text``."""
        h, w = crops.shape[-2:]
        patch = self.clip.patch_size
        top = left = 0
        if self.pad_windows and (h % patch or w % patch):
            ph, pw = -h % patch, -w % patch
            top, left = ph // 2, pw // 2
            crops = F.pad(crops, (left, pw - left, top, ph - top))
        feats = F.normalize(
            dense_features(self.clip.model.visual, crops, self.dense_method), dim=1
        )
        logits = torch.einsum("nchw,kc->nkhw", feats.float(), text)
        logits = F.interpolate(logits, size=crops.shape[-2:], mode="bilinear", align_corners=False)
        return logits[:, :, top : top + h, left : left + w]

    def _postprocess(self, logits: torch.Tensor) -> torch.Tensor:
        """``[K, H, W]`` cosines -> probabilities with the background rules (class docstring)."""
        probs = (logits * self.logit_scale).softmax(dim=0)
        k = probs.shape[0]
        if self.area_threshold > 0 and k > 1:
            area = F.one_hot(probs.argmax(0), k)[..., 1:].sum(dim=(0, 1)).to(probs.dtype)
            keep = (area > self.area_threshold * area.sum()).to(probs.dtype)
            probs = torch.cat([probs[:1], probs[1:] * keep[:, None, None]])
        if self.prob_threshold > 0:
            low = probs.max(dim=0).values < self.prob_threshold
            probs[0] = torch.where(low, torch.ones_like(probs[0]), probs[0])
        return probs
