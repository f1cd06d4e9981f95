"""``SegStudent``: the distilled open-vocabulary segmenter (student + its frozen CLIP teacher)."""

import contextlib
import logging
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage

from ...utils.errors import ConfigError
from . import losses as L
from .config import check_segstudent_config
from .head import build_student_head
from .neck import FusionNeck
from ..postprocess import AxisResample, CoarseSemSeg, bilinear_axis, compose_axis
from ..segmenter import OpenVocabSegmenter, inference_context, train_vocabulary_from_cfg
from ..teacher import CLIPTeacher, SegmenterTeacher, ignore_frozen_missing_keys

__all__ = ["SegStudent"]

logger = logging.getLogger(__name__)

_INFERENCE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@META_ARCH_REGISTRY.register()
class SegStudent(OpenVocabSegmenter):
    """Student ``backbone -> proj -> clip_proj -> seg_head`` distilled from a frozen CLIP teacher.

    Input: detectron2's ``list[dict]`` with ``"image"`` (uint8 ``[3, H, W]``, 0..255 RGB,
    ``INPUT.FORMAT: "RGB"``), in training ``"sem_seg"`` (int64 ``[H, W]``), at inference optionally
    ``"height"``/``"width"`` and ``"dataset_name"`` (whose ``stuff_classes`` are the vocabulary).
    Output: training, a dict of weighted losses ``loss_ce/loss_global/loss_local/loss_dense``;
    inference, ``[{"sem_seg": Tensor[K, height, width]}]``.

    The teacher is only used for its text embeddings at inference (cached per vocabulary) and is
    never part of the checkpoint (see ``CLIPTeacher.state_dict``).
    """

    #: the teacher only gives cached text embeddings at inference
    inference_excluded_modules = ("teacher", "seg_teacher")
    distills_clip_teacher = True

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        proj: FusionNeck,
        clip_proj: nn.Module,
        seg_head: nn.Module,
        teacher: CLIPTeacher,
        train_vocabulary: Sequence[str],
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        ignore_value: int = 255,
        loss_weights: Dict[str, float],
        temperature: float = 0.07,
        attn_temperature: float = 0.07,
        gather: bool = True,
        use_teacher_cache: bool = False,
        inference_dtype: str = "float32",
        channels_last: bool = False,
        backbone_multiplier: float = 1.0,
        seg_teacher: Optional[SegmenterTeacher] = None,
    ):
        """
        Args:
            backbone: multi-scale feature extractor. proj: fuses the scales (width D).
            clip_proj: 1x1 projection D -> C (CLIP joint space). seg_head: classifier head.
            teacher: frozen CLIP teacher. train_vocabulary: class names of the training labels
                (the training set's ``seen_classes`` when it has a seen/unseen split).
            pixel_mean, pixel_std: the student's normalisation, 0..255 RGB.
            ignore_value: ignored label value in ``"sem_seg"``.
            loss_weights: ``{"loss_ce", "loss_global", "loss_local", "loss_dense"} -> weight``;
                a loss with weight 0 is not computed.
            temperature: InfoNCE temperature. attn_temperature: ``loss_local`` pooling temperature.
            gather: gather embeddings across processes for InfoNCE negatives.
            use_teacher_cache: take the teacher targets from the inputs (``"teacher_global"``,
                ``"teacher_dense"``, written by ``SemSegDatasetMapper`` from the teacher-output
                cache) instead of running the teacher; inputs without them are an error.
            inference_dtype: "float32", "float16" or "bfloat16": autocast dtype of the student
                at inference on CUDA (ignored on other devices).
            channels_last: keep the student's weights and inputs in channels-last memory format.
            backbone_multiplier: learning-rate factor of the backbone's parameters.
            seg_teacher: a frozen segmenter whose class probabilities the student distils
                (``loss_seg_kd``); needed iff that loss has a weight.
        """
        if inference_dtype not in _INFERENCE_DTYPES:
            raise ConfigError(
                f"MODEL.CLIPDISTILL.INFERENCE_DTYPE={inference_dtype!r}: use one of "
                f"{sorted(_INFERENCE_DTYPES)}"
            )
        super().__init__(train_vocabulary=train_vocabulary)
        self.backbone = backbone
        self.proj = proj
        self.clip_proj = clip_proj
        self.seg_head = seg_head
        self.teacher = teacher
        if (seg_teacher is None) != (loss_weights.get("loss_seg_kd", 0) <= 0):
            raise ConfigError(
                "MODEL.CLIPDISTILL.LOSS.SEG_KD_WEIGHT > 0 needs a segmenter teacher "
                "(MODEL.CLIPDISTILL.SEGMENTER_TEACHER.CONFIG_FILE; clipdistill.engine.build_model "
                "builds it), and a segmenter teacher is only used with SEG_KD_WEIGHT > 0"
            )
        self.seg_teacher = seg_teacher
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.ignore_value = ignore_value
        self.loss_weights = dict(loss_weights)
        self.temperature = temperature
        self.attn_temperature = attn_temperature
        self.gather = gather
        self.use_teacher_cache = use_teacher_cache
        self.inference_dtype = _INFERENCE_DTYPES[inference_dtype]
        self.channels_last = channels_last
        self.backbone_multiplier = backbone_multiplier
        # without loss_ce the head's scale and bias get no gradient
        self.find_unused_parameters = self.loss_weights["loss_ce"] == 0
        if channels_last:
            for m in (self.backbone, self.proj, self.clip_proj, self.seg_head):
                m.to(memory_format=torch.channels_last)
        self.register_load_state_dict_post_hook(ignore_frozen_missing_keys)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        proj = FusionNeck(cfg, backbone.output_shape())
        teacher = CLIPTeacher(cfg)
        lc = cfg.MODEL.CLIPDISTILL.LOSS
        return {
            "backbone": backbone,
            "proj": proj,
            "clip_proj": nn.Conv2d(proj.out_channels, teacher.embed_dim, 1),
            "seg_head": build_student_head(cfg, teacher.embed_dim),
            "teacher": teacher,
            "train_vocabulary": train_vocabulary_from_cfg(cfg),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "loss_weights": {
                "loss_ce": lc.CE_WEIGHT,
                "loss_global": lc.GLOBAL_WEIGHT,
                "loss_local": lc.LOCAL_WEIGHT,
                "loss_dense": lc.DENSE_WEIGHT,
                "loss_seg_kd": lc.SEG_KD_WEIGHT,
            },  # config.LOSS_WEIGHT_KEYS
            "temperature": lc.TEMPERATURE,
            "attn_temperature": lc.ATTN_TEMPERATURE,
            "gather": lc.GATHER,
            "use_teacher_cache": cfg.MODEL.CLIPDISTILL.TEACHER_CACHE.ENABLED,
            "inference_dtype": cfg.MODEL.CLIPDISTILL.INFERENCE_DTYPE,
            "channels_last": cfg.MODEL.CLIPDISTILL.CHANNELS_LAST,
            "backbone_multiplier": cfg.SOLVER.BACKBONE_MULTIPLIER,
        }

    @classmethod
    def config_problems(cls, cfg, training: bool) -> List[str]:
        return check_segstudent_config(cfg, training)

    @classmethod
    def wants_segmenter_teacher(cls, cfg) -> bool:
        """``loss_seg_kd`` is on (``MODEL.CLIPDISTILL.LOSS.SEG_KD_WEIGHT > 0``)."""
        return cfg.MODEL.CLIPDISTILL.LOSS.SEG_KD_WEIGHT > 0

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def open_vocabulary(self) -> bool:
        return bool(self.seg_head.open_vocabulary)

    def lr_factor(self, param_name: str) -> float:
        return self.backbone_multiplier if param_name.startswith("backbone.") else 1.0

    @property
    def size_divisibility(self) -> int:
        return int(max(1, self.backbone.size_divisibility))

    # ---------------------------------------------------------------- vocabulary
    def prepare_vocabulary(self, class_names: List[str]) -> None:
        if self.open_vocabulary:
            self.text_embeddings(class_names)

    def text_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        """``[K, C]`` text embeddings of ``class_names`` on the student's device, from the
        teacher's text encoder (cached per vocabulary, in memory and on disk)."""
        return self.teacher.encode_text(list(class_names)).to(self.device)

    # ---------------------------------------------------------------- student
    def preprocess(self, batched_inputs: List[dict]) -> ImageList:
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def student_features(self, images: torch.Tensor) -> torch.Tensor:
        """``F``: ``[B, C, H/s, W/s]`` CLIP-space features, L2-normalised per location."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        fused = self.proj(self.backbone(images), images.shape[-2:])
        return F.normalize(self.clip_proj(fused), dim=1)

    def logits(
        self, images: torch.Tensor, text_embeddings: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """The head's logits ``[B, K, H/s, W/s]`` of normalised, padded ``images``: the
        tensor-level path of inference and export (``OpenVocabSegmenter.logits``)."""
        feats = self.student_features(images)
        if text_embeddings is not None:
            text_embeddings = text_embeddings.to(feats.dtype)
        return self.seg_head(feats, text_embeddings)

    def forward(self, batched_inputs: List[dict]):
        if self.training:
            images = self.preprocess(batched_inputs)
            return self.losses(batched_inputs, images, self.student_features(images.tensor))
        with inference_context():
            images = self.preprocess(batched_inputs)
            return self.inference(batched_inputs, images)

    def coarse_sem_seg(self, batched_inputs: List[dict]) -> List[CoarseSemSeg]:
        """The head's logits at the feature resolution (stride 8) with the upsampling of
        ``inference``: label and score maps (a softmax of the logits, as ``scores_to_probs``)
        in bounded memory (``modeling.postprocess``)."""
        with inference_context():
            images = self.preprocess(batched_inputs)
            return [
                CoarseSemSeg(logits, size, up, axes=up.axes(logits.shape[-2:], logits.device))
                for logits, up, size in self._logits_per_input(batched_inputs, images)
            ]

    def _inference_autocast(self):
        """Autocast to ``INFERENCE_DTYPE`` on CUDA; a no-op elsewhere or for float32."""
        if self.device.type != "cuda" or self.inference_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.inference_dtype)

    # ---------------------------------------------------------------- training
    @staticmethod
    def _valid_extents(images: ImageList, feat_hw) -> List[Tuple[int, int]]:
        """Per image, the ``(rows, cols)`` of feature cells that cover its unpadded area."""
        h, w = feat_hw
        ph, pw = images.tensor.shape[-2:]
        return [
            (max(1, -(-ih * h // ph)), max(1, -(-iw * w // pw))) for ih, iw in images.image_sizes
        ]

    def _valid_mask(self, images: ImageList, feat_hw) -> torch.Tensor:
        """``[B, h*w]`` bool: feature locations that cover the unpadded image."""
        mask = torch.zeros(len(images), *feat_hw, dtype=torch.bool, device=self.device)
        for i, (rows, cols) in enumerate(self._valid_extents(images, feat_hw)):
            mask[i, :rows, :cols] = True
        return mask.flatten(1)

    def _teacher_batch(self, batched_inputs, size) -> torch.Tensor:
        """Unpadded 0..255 images resized to ``size`` and stacked for the teacher."""
        out = []
        for x in batched_inputs:
            img = x["image"].to(self.device).float()[None]
            out.append(F.interpolate(img, size=size, mode="bilinear", align_corners=False))
        return torch.cat(out)

    def _seg_teacher_probs(self, batched_inputs, images: ImageList) -> torch.Tensor:
        """The segmenter teacher's class probabilities over the training vocabulary, each image
        at its own (unpadded) size, zero in the padding: ``[B, K, H_pad, W_pad]``."""
        probs = None
        for i, x in enumerate(batched_inputs):
            p = self.seg_teacher.probs(x["image"][None].to(self.device), self.train_vocabulary)
            if probs is None:
                probs = p.new_zeros(len(batched_inputs), p.shape[1], *images.tensor.shape[-2:])
            probs[i, :, : p.shape[-2], : p.shape[-1]] = p[0]
        return probs

    def losses(
        self, batched_inputs, images: ImageList, feats: torch.Tensor
    ) -> Dict[str, torch.Tensor]:
        w = self.loss_weights
        losses = {}
        logits = None
        if w["loss_ce"] > 0 or w["loss_seg_kd"] > 0:
            text = None
            if self.seg_head.open_vocabulary:
                text = self.text_embeddings(self.train_vocabulary).to(feats.dtype)
            logits = self.seg_head(feats, text)
        if w["loss_ce"] > 0:
            if "sem_seg" not in batched_inputs[0]:
                raise ValueError("loss_ce needs 'sem_seg' in the training inputs")
            targets = [x["sem_seg"].to(self.device) for x in batched_inputs]
            targets = ImageList.from_tensors(
                targets, self.backbone.size_divisibility, self.ignore_value
            ).tensor
            losses["loss_ce"] = L.ce_loss(logits, targets, self.ignore_value) * w["loss_ce"]
        f = feats.flatten(2)
        mask = self._valid_mask(images, feats.shape[-2:])
        if self.use_teacher_cache:
            needed = [
                k
                for k, on in (
                    ("teacher_global", w["loss_global"] > 0 or w["loss_local"] > 0),
                    ("teacher_dense", w["loss_dense"] > 0),
                )
                if on
            ]
            for k in needed:
                if k not in batched_inputs[0]:
                    raise ValueError(
                        f"MODEL.CLIPDISTILL.TEACHER_CACHE.ENABLED but the training inputs have no "
                        f"{k!r}: build the train loader with SemSegDatasetMapper(cfg, True), which "
                        "reads the cache (tools/cache_teacher.py builds it)."
                    )
        if w["loss_global"] > 0 or w["loss_local"] > 0:
            if self.use_teacher_cache:
                cg = torch.stack([x["teacher_global"] for x in batched_inputs])
                cg = F.normalize(cg.to(self.device, torch.float32), dim=1)
            else:
                size = self.teacher.image_size
                cg = self.teacher.encode_image(self._teacher_batch(batched_inputs, (size, size)))
            if w["loss_global"] > 0:
                losses["loss_global"] = w["loss_global"] * L.global_loss(
                    f, cg, self.temperature, mask, self.gather
                )
            if w["loss_local"] > 0:
                losses["loss_local"] = w["loss_local"] * L.local_loss(
                    f, cg, self.temperature, self.attn_temperature, mask, self.gather
                )
        if w["loss_dense"] > 0:
            if self.use_teacher_cache:
                td = torch.stack([x["teacher_dense"] for x in batched_inputs])
                td = td.to(self.device, torch.float32)
            else:
                size = self.teacher.dense_image_size
                td = self.teacher.encode_image_dense(
                    self._teacher_batch(batched_inputs, (size, size)), size=(size, size)
                )
            crops = [
                F.interpolate(
                    feats[i : i + 1, :, :rows, :cols],
                    size=td.shape[-2:],
                    mode="bilinear",
                    align_corners=False,
                )
                for i, (rows, cols) in enumerate(self._valid_extents(images, feats.shape[-2:]))
            ]
            losses["loss_dense"] = w["loss_dense"] * L.dense_loss(torch.cat(crops), td)
        if w["loss_seg_kd"] > 0:
            losses["loss_seg_kd"] = w["loss_seg_kd"] * L.seg_kd_loss(
                logits, self._seg_teacher_probs(batched_inputs, images), mask
            )
        if self.seg_head.open_vocabulary:
            get_event_storage().put_scalar("logit_scale", float(self.seg_head.logit_scale.detach()))
        return losses

    # ---------------------------------------------------------------- inference
    def inference(self, batched_inputs, images: ImageList) -> List[dict]:
        """Per-class logits at each input's original size.

        Images sharing a vocabulary go through one ``logits`` call.
        """
        per_input = self._logits_per_input(batched_inputs, images)
        return [{"sem_seg": up(logits)} for logits, up, _ in per_input]

    def _logits_per_input(self, batched_inputs, images: ImageList):
        """Per input: ``(logits [K, h, w] at the feature resolution, upsample, (H, W))`` where
        ``upsample`` brings any slice of classes of the logits to the input's original size
        (bilinear to the padded size, crop, then ``sem_seg_postprocess``)."""
        groups: "OrderedDict[Tuple[str, ...], List[int]]" = OrderedDict()
        for i, x in enumerate(batched_inputs):
            vocab = tuple(self.vocabulary_for(x)) if self.seg_head.open_vocabulary else ()
            groups.setdefault(vocab, []).append(i)
        padded_hw = tuple(images.tensor.shape[-2:])
        results: List[Optional[tuple]] = [None] * len(batched_inputs)
        for vocab, idx in groups.items():
            text = self.text_embeddings(vocab) if vocab else None
            x = images.tensor if len(idx) == len(batched_inputs) else images.tensor[idx]
            with self._inference_autocast():
                logits = self.logits(x, text)
            for j, i in enumerate(idx):
                x, image_size = batched_inputs[i], tuple(images.image_sizes[i])
                out_hw = (x.get("height", image_size[0]), x.get("width", image_size[1]))
                results[i] = (logits[j], _Upsample(padded_hw, image_size, out_hw), out_hw)
        return results


class _Upsample:
    """Logits ``[k, h, w]`` at the feature resolution -> ``[k, H, W]`` at the original size."""

    def __init__(self, padded_hw, image_size, out_hw):
        self.padded_hw, self.image_size, self.out_hw = padded_hw, image_size, out_hw

    def axes(self, coarse_hw, device=None) -> Tuple[AxisResample, AxisResample]:
        """This upsampling of ``[k, *coarse_hw]`` logits as separable tables (rows, columns):
        what ``resample_labels`` needs for the label map without upsampling every class."""
        out = []
        for n, padded, crop, final in zip(coarse_hw, self.padded_hw, self.image_size, self.out_hw):
            axis = bilinear_axis(int(n), int(padded), device).crop(int(crop))
            if int(final) != int(crop):
                axis = compose_axis(axis, bilinear_axis(int(crop), int(final), device), int(crop))
            out.append(axis)
        return out[0], out[1]

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(
            logits[None].float(), size=self.padded_hw, mode="bilinear", align_corners=False
        )[0]
        (ih, iw), (h, w) = self.image_size, self.out_hw
        if (h, w) == (ih, iw):
            # what sem_seg_postprocess returns, minus its same-size (identity) resize
            return x[:, :ih, :iw]
        return sem_seg_postprocess(x, self.image_size, h, w)
