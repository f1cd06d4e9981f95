"""``OVSeg``: open-vocabulary semantic segmentation with mask-adapted CLIP (Liang et al., 2023).

Two stages:

1. A MaskFormer proposes ``Q`` class-agnostic masks; each query also gets an embedding in the
   CLIP text space, classified against the prompt-ensembled text embeddings of the vocabulary
   plus a learnable no-object embedding (cosine similarity times a fixed 100).
2. At inference each proposal that is non-empty at ``MASK_THR`` is cut out of the image (masked
   bounding-box crop, CLIP mean colour outside the mask, 224x224 bicubic) and classified by CLIP,
   with mask prompt tuning (the region mask replaces the patch tokens outside the region by
   learned embeddings). The two class distributions are ensembled geometrically,
   ``p = p_mf^(1-w) * p_clip^w``, and ``sem_seg = einsum("qk,qhw->khw", p, sigmoid(masks))``.

Only the proposal generator (backbone, pixel decoder, transformer decoder, embedding MLP) and the
no-object embedding are trained; CLIP is frozen and its image tower is used at inference only.
With ``MODEL.OVSEG.DEMO`` the published demo's rule is used instead (see :func:`demo_scores`).
"""

import logging
import math
from typing import Dict, List, Sequence

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from timm.models.swin_transformer import get_relative_position_index
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList

from ..criterion import HungarianMatcher, SetCriterion, masks_from_sem_seg
from .clip_adapter import MaskPromptCLIP
from .inference import (
    clip_class_probs,
    demo_scores,
    ensemble_probs,
    mask_class_probs,
    semantic_scores,
)
from .maskformer import OVSegHead, legacy_head_keys
from .resnet import check_deeplab_resnet_cfg
from ..segmenter import OpenVocabSegmenter, train_vocabulary_from_cfg

__all__ = ["OVSeg"]

logger = logging.getLogger(__name__)


def build_ovseg_criterion(cfg, num_classes: int) -> SetCriterion:
    """MaskFormer's matcher and criterion from ``MODEL.MASK_FORMER``: cross-entropy (no-object
    weight ``NO_OBJECT_WEIGHT``), sigmoid focal (``MASK_WEIGHT``) and dice (``DICE_WEIGHT``) on the
    full masks, the same weights as matching costs, deep supervision over every decoder layer."""
    mf = cfg.MODEL.MASK_FORMER
    matcher = HungarianMatcher(
        cost_class=1.0,
        cost_mask=mf.MASK_WEIGHT,
        cost_dice=mf.DICE_WEIGHT,
        num_points=0,
        mask_loss="focal",
    )
    weights = {"loss_ce": 1.0, "loss_mask": mf.MASK_WEIGHT, "loss_dice": mf.DICE_WEIGHT}
    if mf.DEEP_SUPERVISION:
        weights.update(
            {f"{k}_{i}": v for i in range(mf.DEC_LAYERS - 1) for k, v in list(weights.items())}
        )
    return SetCriterion(
        num_classes, matcher, weights, eos_coef=mf.NO_OBJECT_WEIGHT, num_points=0, mask_loss="focal"
    )


#: Constants the official code stores in its checkpoints (0..255 scale).
_CLIP_CONSTANTS = {
    "clip_adapter.pixel_mean": torch.tensor(OPENAI_DATASET_MEAN) * 255,
    "clip_adapter.pixel_std": torch.tensor(OPENAI_DATASET_STD) * 255,
}

#: The demo appends this class to a one-class vocabulary (classification is contrastive).
DEMO_OTHERS = "others"


@META_ARCH_REGISTRY.register()
class OVSeg(OpenVocabSegmenter):
    """OVSeg meta-architecture.

    Input: detectron2's ``list[dict]`` with ``"image"`` (``[3, H, W]``, 0..255 RGB), in training
    ``"sem_seg"`` (int64 ``[H, W]``) or ``"instances"`` (``gt_classes``, ``gt_masks``), at
    inference optionally ``"height"``/``"width"`` and ``"dataset_name"`` (its ``stuff_classes``
    are the vocabulary). Output: training, the weighted MaskFormer losses (``loss_ce``,
    ``loss_mask``, ``loss_dice`` and their ``_<i>`` auxiliary versions); inference,
    ``[{"sem_seg": Tensor[K, height, width]}]``.

    The checkpoint holds the whole model, CLIP included (OVSeg releases a fine-tuned, mask-prompt
    tuned CLIP inside its checkpoints); official checkpoints load through
    :meth:`convert_checkpoint`.
    """

    #: CLIP's text tower: its output is cached per vocabulary (the image tower runs per proposal)
    inference_excluded_modules = (
        "clip_adapter.clip_model.transformer",
        "clip_adapter.clip_model.token_embedding",
        "clip_adapter.clip_model.ln_final",
    )

    #: trained with ``SOLVER.WEIGHT_DECAY_EMBED`` (0 in the recipe): Swin's relative position
    #: tables and absolute position embedding (parameter names, as detectron2's optimizer
    #: ``overrides`` match them)
    no_weight_decay_names = ("relative_position_bias_table", "absolute_pos_embed")

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: OVSegHead,
        clip_adapter: MaskPromptCLIP,
        criterion: nn.Module,
        train_vocabulary: Sequence[str],
        size_divisibility: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        clip_ensemble: bool = True,
        clip_ensemble_weight: float = 0.7,
        demo: bool = False,
        ignore_value: int = 255,
        backbone_multiplier: float = 1.0,
    ):
        """
        Args:
            backbone, sem_seg_head: the MaskFormer proposal generator.
            clip_adapter: frozen CLIP with mask prompt embeddings and the no-object embedding.
            criterion: the set criterion (matcher + MaskFormer losses), with ``weight_dict``.
            train_vocabulary: class names of the training set.
            size_divisibility: pad the batch to a multiple of it (``<= 0``: the backbone's).
            pixel_mean, pixel_std: normalisation of the proposal generator's input (0..255 RGB).
            clip_ensemble: classify the proposals with CLIP too and ensemble.
            clip_ensemble_weight: ``w`` of the ensemble; 0 means CLIP-only classification of the
                valid proposals (queries with empty masks are dropped).
            demo: the demo's rule (one query per class, binarised masks).
            ignore_value: ignored label in ``"sem_seg"`` (training targets).
            backbone_multiplier: lr factor of the backbone's parameters.
        """
        super().__init__(train_vocabulary=train_vocabulary)
        if not 0.0 <= clip_ensemble_weight <= 1.0:
            raise ValueError(
                f"MODEL.OVSEG.ENSEMBLE_WEIGHT={clip_ensemble_weight} must lie in [0, 1]"
            )
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.clip_adapter = clip_adapter
        self.criterion = criterion
        if size_divisibility <= 0:
            size_divisibility = backbone.size_divisibility
        self.size_divisibility = size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.clip_ensemble = clip_ensemble
        self.clip_ensemble_weight = clip_ensemble_weight
        self.demo = demo
        self.ignore_value = ignore_value
        self.backbone_multiplier = backbone_multiplier

    @classmethod
    def from_config(cls, cfg):
        check_deeplab_resnet_cfg(cfg)
        backbone = build_backbone(cfg)
        head = OVSegHead.from_config(cfg, backbone.output_shape())
        clip_adapter = MaskPromptCLIP.from_config(cfg)
        emb = clip_adapter.embed_dim
        if cfg.MODEL.SEM_SEG_HEAD.EMBEDDING_DIM != emb:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.EMBEDDING_DIM={cfg.MODEL.SEM_SEG_HEAD.EMBEDDING_DIM} must "
                f"equal the joint-space width of MODEL.OVSEG.CLIP.NAME="
                f"{cfg.MODEL.OVSEG.CLIP.NAME!r} ({emb})"
            )
        train_vocab = train_vocabulary_from_cfg(cfg)
        mf = cfg.MODEL.MASK_FORMER
        return {
            "backbone": backbone,
            "sem_seg_head": head,
            "clip_adapter": clip_adapter,
            "criterion": build_ovseg_criterion(cfg, num_classes=len(train_vocab)),
            "train_vocabulary": train_vocab,
            "size_divisibility": mf.SIZE_DIVISIBILITY,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "clip_ensemble": cfg.MODEL.OVSEG.ENSEMBLE,
            "clip_ensemble_weight": cfg.MODEL.OVSEG.ENSEMBLE_WEIGHT,
            "demo": cfg.MODEL.OVSEG.DEMO,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "backbone_multiplier": cfg.SOLVER.BACKBONE_MULTIPLIER,
        }

    # ---------------------------------------------------------------- interface
    def lr_factor(self, param_name: str) -> float:
        return self.backbone_multiplier if param_name.startswith("backbone.") else 1.0

    def vocabulary_for(self, input_dict: dict) -> List[str]:
        """The output classes of ``input_dict``; the demo rule contrasts a single class with
        ``"others"``, which then is a second output class (as in the published demo)."""
        names = super().vocabulary_for(input_dict)
        if self.demo and len(names) == 1:
            names = names + [DEMO_OTHERS]
        return names

    def prepare_vocabulary(self, class_names: List[str]) -> None:
        self.clip_adapter.class_text_features(class_names)

    # ---------------------------------------------------------------- forward
    def preprocess(self, batched_inputs: List[dict]) -> ImageList:
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
        return ImageList.from_tensors(images, self.size_divisibility)

    def classify_queries(self, outputs: Dict, text_features: torch.Tensor) -> None:
        """Turn the query embeddings (``pred_logits``) into class logits ``[B, Q, K + 1]``, in
        place, for the final and the auxiliary outputs."""
        for out in [outputs] + list(outputs.get("aux_outputs", [])):
            out["pred_logits"] = self.clip_adapter.logits(
                F.normalize(out["pred_logits"], dim=-1), text_features
            )

    def forward(self, batched_inputs: List[dict]):
        images = self.preprocess(batched_inputs)
        outputs = self.sem_seg_head(self.backbone(images.tensor))
        if self.training:
            return self.losses(batched_inputs, images, outputs)
        return self.inference(batched_inputs, images, outputs)

    def losses(self, batched_inputs, images: ImageList, outputs: Dict) -> Dict[str, torch.Tensor]:
        """MaskFormer's weighted losses against the training vocabulary's text embeddings."""
        if not self.train_vocabulary:
            raise ValueError(
                "OVSeg training needs a training vocabulary: set DATASETS.TRAIN to a registered "
                "dataset with stuff_classes"
            )
        self.classify_queries(outputs, self.clip_adapter.text_features(self.train_vocabulary))
        targets = self.prepare_targets(batched_inputs, images)
        return self.criterion.weighted(self.criterion(outputs, targets))

    def prepare_targets(self, batched_inputs, images: ImageList) -> List[Dict[str, torch.Tensor]]:
        """Per image ``{"labels": [M], "masks": [M, Hp, Wp]}`` at the padded batch size, from
        ``"instances"`` (MaskFormer's mapper) or, one mask per class present, from
        ``"sem_seg"``."""
        size = tuple(images.tensor.shape[-2:])
        targets = []
        for x in batched_inputs:
            if "instances" in x:
                inst = x["instances"].to(self.device)
                masks = getattr(inst.gt_masks, "tensor", inst.gt_masks)
                padded = masks.new_zeros((masks.shape[0],) + size)
                padded[:, : masks.shape[1], : masks.shape[2]] = masks
                targets.append({"labels": inst.gt_classes.long(), "masks": padded})
            elif "sem_seg" in x:
                targets.append(
                    masks_from_sem_seg(x["sem_seg"].to(self.device), self.ignore_value, size)
                )
            else:
                raise ValueError("OVSeg training inputs need 'sem_seg' (or 'instances')")
        return targets

    @torch.no_grad()
    def inference(
        self,
        batched_inputs: List[dict],
        images: ImageList,
        outputs: Dict,
    ) -> List[dict]:
        """``[{"sem_seg": [K, height, width]}]`` per input, scored against ``vocabulary_for``."""
        masks = F.interpolate(
            outputs["pred_masks"],
            size=images.tensor.shape[-2:],
            mode="bilinear",
            align_corners=False,
        )
        results = []
        for i, (x, size) in enumerate(zip(batched_inputs, images.image_sizes)):
            names = self.vocabulary_for(x)
            text = self.clip_adapter.text_features(names)
            logits = self.clip_adapter.logits(F.normalize(outputs["pred_logits"][i], dim=-1), text)
            mask_probs = sem_seg_postprocess(masks[i], size, size[0], size[1]).sigmoid()
            r = self.semantic_inference(logits, mask_probs, x["image"].to(self.device), text, names)
            height, width = x.get("height", size[0]), x.get("width", size[1])
            results.append({"sem_seg": sem_seg_postprocess(r, size, height, width)})
        return results

    def scores_to_probs(self, sem_seg: torch.Tensor) -> torch.Tensor:
        """OVSeg's ``sem_seg`` are non-negative sums of probability-weighted masks: normalised to
        sum 1 over the classes (a pixel that no proposal covers gets a uniform distribution)."""
        scores = sem_seg.clamp_min(0) + 1e-12
        return scores / scores.sum(dim=1, keepdim=True)

    def semantic_inference(
        self,
        logits: torch.Tensor,
        mask_probs: torch.Tensor,
        image: torch.Tensor,
        text_features: torch.Tensor,
        class_names: Sequence[str],
    ) -> torch.Tensor:
        """``[K, H, W]`` scores of one image.

        Args:
            logits: ``[Q, K + 1]`` query class logits (last column: no object).
            mask_probs: ``[Q, H, W]`` proposal probabilities at the image's (unpadded) size.
            image: ``[3, H, W]`` the input image (0..255), for the CLIP crops.
            text_features: ``[K + 1, E]`` (for CLIP's classification of the crops).
            class_names: the K names (the demo rule treats a trailing ``'others'`` specially).
        """
        probs = mask_class_probs(logits)
        if self.clip_ensemble:
            clip_logits, valid = self.clip_adapter.classify_regions(
                image, mask_probs, text_features
            )
            p_clip = clip_class_probs(clip_logits)
            if self.clip_ensemble_weight > 0:
                probs = ensemble_probs(probs, p_clip, valid, self.clip_ensemble_weight)
            else:  # CLIP only, on the valid proposals
                probs, mask_probs = p_clip, mask_probs[valid]
        if self.demo:
            k = len(class_names)
            selectable = k - 1 if k == 2 and class_names[-1] == DEMO_OTHERS else k
            return demo_scores(probs, mask_probs, self.clip_adapter.mask_thr, selectable)
        return semantic_scores(probs, mask_probs)

    # ---------------------------------------------------------------- checkpoints
    @classmethod
    def convert_checkpoint(cls, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Map an official OVSeg checkpoint (``facebookresearch/ov-seg``) onto this model; our own
        checkpoints pass unchanged.

        * MaskFormer's pre-version-2 head layout (pixel-decoder keys directly under
          ``sem_seg_head.``) is moved under ``sem_seg_head.pixel_decoder.``. (The official head
          decides this from the state dict's version metadata, which is lost when a state dict
          is copied into a plain dict; then it would rename already-converted keys a second
          time. Here the decision is per key.)
        * ``clip_adapter.clip_model.visual.mask_embedding`` -> ``clip_adapter.mask_embedding``.
        * Constants stored by the official code and recomputed here are checked and dropped:
          Swin's ``relative_position_index`` and ``clip_adapter.pixel_mean/pixel_std``.

        Raises:
            ValueError: a dropped constant differs from the value this implementation uses.
        """
        renames = legacy_head_keys(list(state_dict))
        out = {}
        for key, value in state_dict.items():
            key = renames.get(key, key)
            if key.endswith(".relative_position_index"):
                win = math.isqrt(value.shape[0])
                expected = get_relative_position_index(win, win)
                if value.shape != expected.shape or not torch.equal(value.cpu().long(), expected):
                    raise ValueError(
                        f"checkpoint key {key}: not the relative position index of a "
                        f"{win}x{win} window"
                    )
                continue
            if key in _CLIP_CONSTANTS:
                expected = _CLIP_CONSTANTS[key]
                if tuple(value.shape) != (1, 3, 1, 1) or not torch.allclose(
                    value.float().cpu().flatten(), expected, rtol=1e-5
                ):
                    raise ValueError(
                        f"checkpoint key {key}={value.flatten().tolist()}: expected "
                        f"CLIP's normalisation {expected.tolist()}"
                    )
                continue
            if key == "clip_adapter.clip_model.visual.mask_embedding":
                key = "clip_adapter.mask_embedding"
            out[key] = value
        return out
