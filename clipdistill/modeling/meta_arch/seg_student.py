"""``SegStudent``: the distilled open-vocabulary segmenter (student + its frozen CLIP teacher)."""
import logging
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage

from .. import losses as L
from ..fusion import FusionNeck
from ..heads import build_student_head
from ..teacher import CLIPTeacher

__all__ = ["SegStudent"]

logger = logging.getLogger(__name__)


def _teacher_keys_are_not_expected(module, incompatible_keys) -> None:
    # The frozen teacher is not part of the student's state (CLIPTeacher.state_dict is empty), so
    # its keys are never "missing" from a student checkpoint: strict loading stays meaningful.
    missing = incompatible_keys.missing_keys
    missing[:] = [k for k in missing if not k.startswith("teacher.")]


@META_ARCH_REGISTRY.register()
class SegStudent(nn.Module):
    """Student ``backbone -> proj -> clip_proj -> seg_head`` distilled from a frozen CLIP teacher.

    Input: detectron2's ``list[dict]`` with ``"image"`` (uint8 ``[3, H, W]``, 0..255 RGB,
    ``INPUT.FORMAT: "RGB"``), in training ``"sem_seg"`` (int64 ``[H, W]``), at inference optionally
    ``"height"``/``"width"`` and ``"dataset_name"`` (whose ``stuff_classes`` are the vocabulary).
    Output: training, a dict of weighted losses ``loss_ce/loss_global/loss_local/loss_dense``;
    inference, ``[{"sem_seg": Tensor[K, height, width]}]``.

    The teacher is only used for its text embeddings at inference (cached per vocabulary) and is
    never part of the checkpoint (see ``CLIPTeacher.state_dict``).
    """

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
    ):
        """
        Args:
            backbone: multi-scale feature extractor. proj: fuses the scales (width D).
            clip_proj: 1x1 projection D -> C (CLIP joint space). seg_head: classifier head.
            teacher: frozen CLIP teacher. train_vocabulary: class names of the training set.
            pixel_mean, pixel_std: the student's normalisation, 0..255 RGB.
            ignore_value: ignored label value in ``"sem_seg"``.
            loss_weights: ``{"loss_ce", "loss_global", "loss_local", "loss_dense"} -> weight``;
                a loss with weight 0 is not computed.
            temperature: InfoNCE temperature. attn_temperature: ``loss_local`` pooling temperature.
            gather: gather embeddings across processes for InfoNCE negatives.
        """
        super().__init__()
        self.backbone = backbone
        self.proj = proj
        self.clip_proj = clip_proj
        self.seg_head = seg_head
        self.teacher = teacher
        self.train_vocabulary = list(train_vocabulary)
        self.vocabulary: Optional[List[str]] = None  # set_vocabulary() overrides the default
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.ignore_value = ignore_value
        self.loss_weights = dict(loss_weights)
        self.temperature = temperature
        self.attn_temperature = attn_temperature
        self.gather = gather
        self.register_load_state_dict_post_hook(_teacher_keys_are_not_expected)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        proj = FusionNeck(cfg, backbone.output_shape())
        teacher = CLIPTeacher(cfg)
        train_vocab = []
        if cfg.DATASETS.TRAIN:
            train_vocab = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("stuff_classes", [])
        lc = cfg.MODEL.CLIPDISTILL.LOSS
        return {
            "backbone": backbone,
            "proj": proj,
            "clip_proj": nn.Conv2d(proj.out_channels, teacher.embed_dim, 1),
            "seg_head": build_student_head(cfg, teacher.embed_dim),
            "teacher": teacher,
            "train_vocabulary": train_vocab,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "loss_weights": {
                "loss_ce": lc.CE_WEIGHT,
                "loss_global": lc.GLOBAL_WEIGHT,
                "loss_local": lc.LOCAL_WEIGHT,
                "loss_dense": lc.DENSE_WEIGHT,
            },
            "temperature": lc.TEMPERATURE,
            "attn_temperature": lc.ATTN_TEMPERATURE,
            "gather": lc.GATHER,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ---------------------------------------------------------------- vocabulary
    def set_vocabulary(self, class_names: Optional[Sequence[str]]) -> None:
        """Use ``class_names`` at inference for inputs without a ``"dataset_name"``; ``None``
        restores the training vocabulary."""
        if class_names is not None:
            self.text_embeddings(class_names)  # validates (empty / duplicated names) now
        self.vocabulary = None if class_names is None else list(class_names)

    def vocabulary_for(self, input_dict: dict) -> List[str]:
        name = input_dict.get("dataset_name")
        if name is not None:
            return list(MetadataCatalog.get(name).stuff_classes)
        vocab = self.vocabulary if self.vocabulary is not None else self.train_vocabulary
        if not vocab:
            raise ValueError(
                "SegStudent has no vocabulary: give inputs a 'dataset_name', call "
                "set_vocabulary(names), or set DATASETS.TRAIN to a registered dataset"
            )
        return vocab

    def text_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        """``[K, C]`` text embeddings of ``class_names`` (cached by the teacher)."""
        return self.teacher.encode_text(list(class_names)).to(self.device)

    # ---------------------------------------------------------------- student
    def preprocess(self, batched_inputs: List[dict]) -> ImageList:
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std
                  for x in batched_inputs]
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def student_features(self, images: torch.Tensor) -> torch.Tensor:
        """``F``: ``[B, C, H/s, W/s]`` CLIP-space features, L2-normalised per location."""
        fused = self.proj(self.backbone(images), images.shape[-2:])
        return F.normalize(self.clip_proj(fused), dim=1)

    def forward(self, batched_inputs: List[dict]):
        images = self.preprocess(batched_inputs)
        feats = self.student_features(images.tensor)
        if self.training:
            return self.losses(batched_inputs, images, feats)
        return self.inference(batched_inputs, images, feats)

    # ---------------------------------------------------------------- training
    def _valid_mask(self, images: ImageList, feat_hw) -> torch.Tensor:
        """``[B, h*w]`` bool: feature locations that cover the unpadded image."""
        h, w = feat_hw
        ph, pw = images.tensor.shape[-2:]
        mask = torch.zeros(len(images), h, w, dtype=torch.bool, device=self.device)
        for i, (ih, iw) in enumerate(images.image_sizes):
            mask[i, : max(1, -(-ih * h // ph)), : max(1, -(-iw * w // pw))] = True
        return mask.flatten(1)

    def _teacher_batch(self, batched_inputs, images: ImageList, size) -> torch.Tensor:
        """Unpadded 0..255 images resized to ``size`` and stacked for the teacher."""
        out = []
        for x in batched_inputs:
            img = x["image"].to(self.device).float()[None]
            out.append(F.interpolate(img, size=size, mode="bilinear", align_corners=False))
        return torch.cat(out)

    def losses(self, batched_inputs, images: ImageList, feats: torch.Tensor) -> Dict[str, torch.Tensor]:
        w = self.loss_weights
        losses = {}
        if w["loss_ce"] > 0:
            if "sem_seg" not in batched_inputs[0]:
                raise ValueError("loss_ce needs 'sem_seg' in the training inputs")
            targets = [x["sem_seg"].to(self.device) for x in batched_inputs]
            targets = ImageList.from_tensors(
                targets, self.backbone.size_divisibility, self.ignore_value
            ).tensor
            names = self.train_vocabulary
            text = self.text_embeddings(names) if self.seg_head.open_vocabulary else None
            logits = self.seg_head(feats, text)
            losses["loss_ce"] = L.ce_loss(logits, targets, self.ignore_value) * w["loss_ce"]
        f = feats.flatten(2)
        mask = self._valid_mask(images, feats.shape[-2:])
        if w["loss_global"] > 0 or w["loss_local"] > 0:
            size = self.teacher.image_size
            cg = self.teacher.encode_image(self._teacher_batch(batched_inputs, images, (size, size)))
            if w["loss_global"] > 0:
                losses["loss_global"] = w["loss_global"] * L.global_loss(
                    f, cg, self.temperature, mask, self.gather
                )
            if w["loss_local"] > 0:
                losses["loss_local"] = w["loss_local"] * L.local_loss(
                    f, cg, self.temperature, self.attn_temperature, mask, self.gather
                )
        if w["loss_dense"] > 0:
            size = self.teacher.dense_image_size
            td = self.teacher.encode_image_dense(
                self._teacher_batch(batched_inputs, images, (size, size)), size=(size, size)
            )
            ph, pw = images.tensor.shape[-2:]
            h, wd = feats.shape[-2:]
            crops = []
            for i, (ih, iw) in enumerate(images.image_sizes):
                fi = feats[i : i + 1, :, : max(1, -(-ih * h // ph)), : max(1, -(-iw * wd // pw))]
                crops.append(F.interpolate(fi, size=td.shape[-2:], mode="bilinear",
                                           align_corners=False))
            losses["loss_dense"] = w["loss_dense"] * L.dense_loss(torch.cat(crops), td)
        if self.seg_head.open_vocabulary:
            get_event_storage().put_scalar("logit_scale", float(self.seg_head.logit_scale.detach()))
        return losses

    # ---------------------------------------------------------------- inference
    def inference(self, batched_inputs, images: ImageList, feats: torch.Tensor) -> List[dict]:
        results = []
        padded_hw = images.tensor.shape[-2:]
        for i, (x, image_size) in enumerate(zip(batched_inputs, images.image_sizes)):
            text = None
            if self.seg_head.open_vocabulary:
                text = self.text_embeddings(self.vocabulary_for(x))
            logits = self.seg_head(feats[i : i + 1], text)
            logits = F.interpolate(logits, size=padded_hw, mode="bilinear", align_corners=False)[0]
            height = x.get("height", image_size[0])
            width = x.get("width", image_size[1])
            results.append({"sem_seg": sem_seg_postprocess(logits, image_size, height, width)})
        return results
