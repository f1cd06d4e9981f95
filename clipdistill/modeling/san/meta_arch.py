"""``SAN``: Side Adapter Network (Xu et al., CVPR 2023) as a clipdistill META_ARCH.

A frozen CLIP ViT is split at ``FEATURE_LAST_LAYER_IDX``. Its first half embeds the image (at
``CLIP_RESOLUTION`` of the input when ``ASYMETRIC_INPUT``); a small side-adapter ViT sees the full
input, receives CLIP's features by ``AddFusion`` and predicts Q mask proposals and per-head
attention biases; CLIP's second half runs Q copies of its class token ("SOS" tokens) under those
biases, giving one CLIP embedding per mask, classified against the prompt-ensembled text
embeddings of the vocabulary plus a learned background. Semantic scores:
``sem_seg[k] = sum_q softmax(cls_q)[k] * sigmoid(mask_q)`` (background dropped).

State-dict names and shapes are those of the published checkpoints (``san_vit_b_16.pth``,
``san_vit_large_14.pth``), which load strictly with ``MODEL.WEIGHTS``.
"""

import logging
from typing import Dict, List, Sequence, Tuple

import open_clip
import torch
import torch.nn.functional as F

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from detectron2.utils.memory import retry_if_cuda_oom

from ..clip.loader import clip_mean_std, load_open_clip
from ..clip.text import PROMPT_TEMPLATES
from ..clip.vit import unwrap_tower
from ..criterion import HungarianMatcher, SetCriterion, masks_from_sem_seg
from .classifier import LearnableBgOvClassifier
from .recognition import CLIPFeatureExtractor, RecognitionHead
from .side_adapter import SideAdapterNetwork, parse_fusion_map
from .vocabulary import OTHER, augment_vocabulary
from ..segmenter import OpenVocabSegmenter, dataset_vocabulary, train_vocabulary_from_cfg

__all__ = ["SAN"]

logger = logging.getLogger(__name__)


_KEY_NAME = "MODEL.SAN.CLIP.NAME"
_KEY_WEIGHTS = "MODEL.SAN.CLIP.WEIGHTS"


def _tag_uses_quick_gelu(model_name: str, tag: str) -> bool:
    """Whether the open_clip pretrained tag ``tag`` was trained with QuickGELU (the OpenAI
    weights), from open_clip's registry (offline); False for files and unknown tags."""
    if not tag:
        return False
    return bool(open_clip.get_pretrained_cfg(model_name, tag).get("quick_gelu", False))


@META_ARCH_REGISTRY.register()
class SAN(OpenVocabSegmenter):
    """Side Adapter Network (see the module docstring).

    Input: detectron2's ``list[dict]`` with ``"image"`` (uint8 ``[3, H, W]``, RGB), in training
    ``"sem_seg"`` (int64 ``[H, W]``), at inference optionally ``"height"``/``"width"`` and
    ``"dataset_name"``. Output: training, the weighted losses (``loss_ce``, ``loss_mask``,
    ``loss_dice`` and their deep-supervision copies ``*_<i>``); inference,
    ``[{"sem_seg": Tensor[K, height, width]}]``.
    """

    #: the text tower gives cached embeddings, not per-image work
    inference_excluded_modules = ("ov_classifier",)
    find_unused_parameters = False
    #: parameter names (last component) trained with SOLVER.WEIGHT_DECAY_EMBED
    no_weight_decay_names = ("positional_embedding", "pos_embed", "query_embed", "query_pos_embed")

    @configurable
    def __init__(
        self,
        *,
        clip_visual_extractor: CLIPFeatureExtractor,
        clip_rec_head: RecognitionHead,
        side_adapter_network: SideAdapterNetwork,
        ov_classifier: LearnableBgOvClassifier,
        criterion: SetCriterion,
        train_vocabulary: Sequence[str],
        size_divisibility: int,
        asymetric_input: bool = True,
        clip_resolution: float = 0.5,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        sem_seg_postprocess_before_inference: bool = True,
        ignore_value: int = 255,
        train_pad_size: int = 0,
        vocabulary_augmentation: str = "",
        side_adapter_lr_factor: float = 1.0,
        clip_lr_factor: float = 1.0,
    ):
        """
        Args:
            clip_visual_extractor, clip_rec_head, side_adapter_network, ov_classifier: the parts.
            criterion: the set criterion (its ``empty_weight`` is part of the state dict).
            train_vocabulary: class names of the training set (K = ``criterion.num_classes``).
            size_divisibility: the normalised batch is zero-padded to a multiple of it.
            asymetric_input, clip_resolution: CLIP sees the padded input scaled by
                ``clip_resolution`` (bilinear) when ``asymetric_input``.
            pixel_mean, pixel_std: CLIP's normalisation, 0..255 RGB.
            sem_seg_postprocess_before_inference: resize the mask logits to the output size
                before combining them with the class scores.
            ignore_value: label of ignored pixels in ``"sem_seg"``.
            train_pad_size: pad training images (value 128, labels ignored) to at least this
                square size; 0: no padding.
            vocabulary_augmentation: "", "COCO-all" or "COCO-stuff" (``vocabulary.py``), applied
                to vocabularies set by ``set_vocabulary``.
            side_adapter_lr_factor, clip_lr_factor: lr factors of ``lr_factor``.
        """
        super().__init__(train_vocabulary=train_vocabulary)
        # registration order of the published model (so state dicts list keys the same way)
        self.asymetric_input = asymetric_input
        self.clip_resolution = clip_resolution
        self.sem_seg_postprocess_before_inference = sem_seg_postprocess_before_inference
        self.size_divisibility = size_divisibility
        self.criterion = criterion
        self.side_adapter_network = side_adapter_network
        self.clip_visual_extractor = clip_visual_extractor
        self.clip_rec_head = clip_rec_head
        self.ov_classifier = ov_classifier
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        if self.train_vocabulary and len(self.train_vocabulary) != criterion.num_classes:
            raise ValueError(
                f"MODEL.SAN.NUM_CLASSES={criterion.num_classes} but the training dataset has "
                f"{len(self.train_vocabulary)} classes: set MODEL.SAN.NUM_CLASSES "
                f"{len(self.train_vocabulary)}"
            )
        self.ignore_value = ignore_value
        self.train_pad_size = train_pad_size
        augment_vocabulary(["x"], vocabulary_augmentation)  # validates the option now
        self.vocabulary_augmentation = vocabulary_augmentation
        self.side_adapter_lr_factor = side_adapter_lr_factor
        self.clip_lr_factor = clip_lr_factor

    @classmethod
    def from_config(cls, cfg):
        san = cfg.MODEL.SAN
        sa = cfg.MODEL.SIDE_ADAPTER
        ab = cfg.MODEL.SIDE_ADAPTER.ATTN_BIAS
        name = san.CLIP.NAME.replace("/", "-")  # the published configs say "ViT-B/16"
        tag = san.CLIP.WEIGHTS
        weights_file = cfg.MODEL.WEIGHTS
        if weights_file:
            # a SAN checkpoint holds the CLIP weights: build the architecture only (no download),
            # with the activation the tag implies (QuickGELU for the OpenAI weights)
            clip_model, identity = load_open_clip(
                name,
                "",
                name_key=_KEY_NAME,
                weights_key=_KEY_WEIGHTS,
                force_quick_gelu=_tag_uses_quick_gelu(name, tag),
            )
        else:
            clip_model, identity = load_open_clip(
                name, tag, name_key=_KEY_NAME, weights_key=_KEY_WEIGHTS
            )
        if san.CLIP.TEMPLATES not in PROMPT_TEMPLATES:
            raise ValueError(
                f"MODEL.SAN.CLIP.TEMPLATES={san.CLIP.TEMPLATES!r}: use one of "
                f"{sorted(PROMPT_TEMPLATES)}"
            )
        ov_classifier = LearnableBgOvClassifier(
            clip_model,
            open_clip.get_tokenizer(name),
            model_name=name,
            templates=san.CLIP.TEMPLATES,
            identity=identity,
            weights_file=weights_file,
        )
        # the open_clip VisionTransformer, also where a model config names it as a timm tower
        # (the testbed's ViT-8-testbed)
        visual = unwrap_tower(clip_model.visual)
        extractor = CLIPFeatureExtractor(
            visual, san.FEATURE_LAST_LAYER_IDX, san.CLIP_FROZEN_EXCLUDE
        )
        rec_head = RecognitionHead(
            visual,
            first_layer_idx=san.FEATURE_LAST_LAYER_IDX,
            frozen_exclude=san.CLIP_DEEPER_FROZEN_EXCLUDE,
            sos_token_format=san.SOS_TOKEN_FORMAT,
            sos_token_num=sa.NUM_QUERIES,
            downsample_method=san.REC_DOWNSAMPLE_METHOD,
        )
        fusion_map = parse_fusion_map(sa.FUSION_MAP)
        too_deep = [src for src in fusion_map.values() if src > san.FEATURE_LAST_LAYER_IDX]
        if too_deep:
            raise ValueError(
                f"MODEL.SIDE_ADAPTER.FUSION_MAP reads CLIP layers {too_deep} but the feature "
                f"extractor stops at MODEL.SAN.FEATURE_LAST_LAYER_IDX={san.FEATURE_LAST_LAYER_IDX}"
            )
        side_adapter = SideAdapterNetwork(
            vit_name=sa.VIT_NAME,
            image_size=sa.IMAGE_SIZE,
            drop_path_rate=sa.DROP_PATH_RATE,
            num_queries=sa.NUM_QUERIES,
            fusion_map=fusion_map,
            clip_channels=extractor.num_features,
            deep_supervision_idxs=list(sa.DEEP_SUPERVISION_IDXS),
            attn_bias=dict(
                total_heads=ab.NUM_HEADS,
                total_layers=ab.NUM_LAYERS,
                embed_channels=ab.EMBED_CHANNELS,
                mlp_channels=ab.MLP_CHANNELS,
                mlp_num_layers=ab.MLP_NUM_LAYERS,
                rescale_attn_bias=ab.RESCALE_ATTN_BIAS,
            ),
        )
        matcher = HungarianMatcher(
            cost_class=san.CLASS_WEIGHT,
            cost_mask=san.MASK_WEIGHT,
            cost_dice=san.DICE_WEIGHT,
            num_points=san.TRAIN_NUM_POINTS,
        )
        base = {
            "loss_ce": san.CLASS_WEIGHT,
            "loss_mask": san.MASK_WEIGHT,
            "loss_dice": san.DICE_WEIGHT,
        }
        weights = dict(base)
        for i in range(len(sa.DEEP_SUPERVISION_IDXS) - 1):  # the auxiliary (earlier) outputs
            weights.update({f"{k}_{i}": v for k, v in base.items()})
        criterion = SetCriterion(
            num_classes=san.NUM_CLASSES,
            matcher=matcher,
            weight_dict=weights,
            eos_coef=san.NO_OBJECT_WEIGHT,
            losses=("labels", "masks"),
            num_points=san.TRAIN_NUM_POINTS,
            oversample_ratio=san.OVERSAMPLE_RATIO,
            importance_sample_ratio=san.IMPORTANCE_SAMPLE_RATIO,
        )
        train_vocab = train_vocabulary_from_cfg(cfg)
        mean, std = clip_mean_std(clip_model.visual)  # CLIP's own normalisation
        return {
            "clip_visual_extractor": extractor,
            "clip_rec_head": rec_head,
            "side_adapter_network": side_adapter,
            "ov_classifier": ov_classifier,
            "criterion": criterion,
            "train_vocabulary": train_vocab,
            "size_divisibility": san.SIZE_DIVISIBILITY,
            "asymetric_input": san.ASYMETRIC_INPUT,
            "clip_resolution": san.CLIP_RESOLUTION,
            "pixel_mean": [255.0 * x for x in mean],
            "pixel_std": [255.0 * x for x in std],
            "sem_seg_postprocess_before_inference": san.SEM_SEG_POSTPROCESS_BEFORE_INFERENCE,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "train_pad_size": san.TRAIN_PAD_SIZE,
            "vocabulary_augmentation": san.VOCABULARY_AUGMENTATION,
            "side_adapter_lr_factor": cfg.SOLVER.BACKBONE_MULTIPLIER,
            "clip_lr_factor": cfg.SOLVER.CLIP_MULTIPLIER,
        }

    # ------------------------------------------------------------------------------ optimizer
    def lr_factor(self, param_name: str) -> float:
        """lr multiplier: SOLVER.BACKBONE_MULTIPLIER for the side adapter, SOLVER.CLIP_MULTIPLIER
        for the trainable CLIP parameters (both, multiplied, where both apply)."""
        factor = 1.0
        module = param_name.rsplit(".", 1)[0] if "." in param_name else ""
        if "side_adapter_network" in module:
            factor *= self.side_adapter_lr_factor
        if "clip" in module:
            factor *= self.clip_lr_factor
        return factor

    # ------------------------------------------------------------------------------ vocabulary
    def prepare_vocabulary(self, class_names: List[str]) -> None:
        """Embed the vocabulary (with its augmentation, ``MODEL.SAN.VOCABULARY_AUGMENTATION``)."""
        self.ov_classifier.text_embeddings(self._recognised_names(class_names))

    def vocabulary_for(self, input_dict: dict) -> List[str]:
        """The class names of the output channels for ``input_dict``: its dataset's
        ``stuff_classes``, else the set vocabulary (+ ``"other"`` when augmented), else the
        training vocabulary."""
        names = super().vocabulary_for(input_dict)
        if input_dict.get("dataset_name") is None and self.vocabulary is not None:
            extra = self._recognised_names(self.vocabulary)[len(self.vocabulary) :]
            names = names + ([OTHER] if extra else [])
        return names

    def _recognised_names(self, names: Sequence[str]) -> List[str]:
        return augment_vocabulary(list(names), self.vocabulary_augmentation)

    def _classifier_names(self, input_dict: dict) -> Tuple[List[str], int]:
        """Names the recognition scores and how many of them are output channels."""
        if input_dict.get("dataset_name") is not None:
            names = dataset_vocabulary(input_dict["dataset_name"])
            return names, len(names)
        if self.vocabulary is not None:
            return self._recognised_names(self.vocabulary), len(self.vocabulary)
        names = self.vocabulary_for(input_dict)
        return names, len(names)

    # ------------------------------------------------------------------------------ forward
    def forward(self, batched_inputs: List[dict]):
        if self.training:
            return self.losses(batched_inputs)
        return self.inference(batched_inputs)

    def _preprocess(self, batched_inputs: List[dict], pad_to: int = 0) -> ImageList:
        images = []
        for x in batched_inputs:
            image = x["image"].to(self.device, torch.float32)
            if pad_to:
                h, w = image.shape[-2:]
                image = F.pad(image, (0, max(pad_to - w, 0), 0, max(pad_to - h, 0)), value=128.0)
            images.append((image - self.pixel_mean) / self.pixel_std)
        return ImageList.from_tensors(images, self.size_divisibility)

    def _predict(
        self, images: torch.Tensor, classifier: torch.Tensor
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Mask logits ``[B, Q, H/16, W/16]`` and class logits ``[B, Q, K+1]``, per decoded
        output of the side adapter."""
        clip_input = images
        if self.asymetric_input:
            clip_input = F.interpolate(images, scale_factor=self.clip_resolution, mode="bilinear")
        clip_features = self.clip_visual_extractor(clip_input)
        mask_preds, attn_biases = self.side_adapter_network(images, clip_features)
        logits = [
            torch.einsum(
                "bqc,nc->bqn", self.clip_rec_head(clip_features, bias, normalize=True), classifier
            )
            for bias in attn_biases
        ]
        return mask_preds, logits

    def losses(self, batched_inputs: List[dict]) -> Dict[str, torch.Tensor]:
        if any("sem_seg" not in x for x in batched_inputs):
            raise ValueError("SAN training inputs need a 'sem_seg' label map")
        images = self._preprocess(batched_inputs, self.train_pad_size)
        if not self.train_vocabulary:
            raise ValueError("SAN training needs DATASETS.TRAIN[0] with stuff_classes")
        classifier = self.ov_classifier(self.train_vocabulary)
        mask_preds, logits = self._predict(images.tensor, classifier)
        size = tuple(images.tensor.shape[-2:])
        targets = [
            masks_from_sem_seg(x["sem_seg"].to(self.device), self.ignore_value, size)
            for x in batched_inputs
        ]
        outputs = {
            "pred_logits": logits[-1],
            "pred_masks": mask_preds[-1],
            "aux_outputs": [
                {"pred_logits": a, "pred_masks": b} for a, b in zip(logits[:-1], mask_preds[:-1])
            ],
        }
        return self.criterion.weighted(self.criterion(outputs, targets))

    def inference(self, batched_inputs: List[dict]) -> List[Dict[str, torch.Tensor]]:
        names, num_out = self._classifier_names(batched_inputs[0])
        for x in batched_inputs[1:]:
            if self._classifier_names(x)[0] != names:
                raise ValueError("all images of a SAN batch must share one vocabulary (dataset)")
        images = self._preprocess(batched_inputs)
        mask_preds, logits = self._predict(images.tensor, self.ov_classifier(names))
        mask_preds = F.interpolate(
            mask_preds[-1], size=images.tensor.shape[-2:], mode="bilinear", align_corners=False
        )
        results = []
        for cls, masks, x, size in zip(logits[-1], mask_preds, batched_inputs, images.image_sizes):
            height, width = x.get("height", size[0]), x.get("width", size[1])
            if self.sem_seg_postprocess_before_inference:
                masks = retry_if_cuda_oom(sem_seg_postprocess)(masks, size, height, width)
                cls = cls.to(masks)
            r = retry_if_cuda_oom(self.semantic_inference)(cls, masks)
            if not self.sem_seg_postprocess_before_inference:
                r = retry_if_cuda_oom(sem_seg_postprocess)(r, size, height, width)
            results.append({"sem_seg": _merge_augmented(r, num_out)})
        return results

    @staticmethod
    def semantic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
        """``[K, H, W]`` = ``einsum(softmax(mask_cls)[:, :K], sigmoid(mask_pred))``."""
        probs = F.softmax(mask_cls, dim=-1)[..., :-1]
        return torch.einsum("qc,qhw->chw", probs, mask_pred.sigmoid())

    # ------------------------------------------------------------------------------ teacher
    @torch.no_grad()
    def dense_class_probs(self, images: torch.Tensor, class_names: Sequence[str]) -> torch.Tensor:
        """Per-pixel class probabilities of SAN, for distillation.

        Args:
            images: ``[B, 3, H, W]`` float or uint8, 0..255 RGB (one size; no resizing).
            class_names: the K classes.

        Returns:
            ``[B, K, H, W]`` float32: SAN's semantic scores normalised to sum 1 over the K
            classes at every pixel.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"dense_class_probs expects images [B, 3, H, W], got {tuple(images.shape)}"
            )
        was_training = self.training
        self.eval()
        try:
            h, w = images.shape[-2:]
            batch = [{"image": im, "height": h, "width": w} for im in images]
            images_ = self._preprocess(batch)
            mask_preds, logits = self._predict(
                images_.tensor, self.ov_classifier(list(class_names))
            )
            masks = F.interpolate(
                mask_preds[-1], size=images_.tensor.shape[-2:], mode="bilinear", align_corners=False
            )[..., :h, :w]
            probs = F.softmax(logits[-1].float(), dim=-1)[..., :-1]
            scores = torch.einsum("bqc,bqhw->bchw", probs, masks.float().sigmoid())
            return self.scores_to_probs(scores)
        finally:
            self.train(was_training)

    def scores_to_probs(self, sem_seg: torch.Tensor) -> torch.Tensor:
        """SAN's ``sem_seg`` are non-negative scores: normalised to sum 1 over the classes."""
        return sem_seg / sem_seg.sum(dim=1, keepdim=True).clamp_min(1e-12)


def _merge_augmented(sem_seg: torch.Tensor, num_out: int) -> torch.Tensor:
    """Scores of the first ``num_out`` classes, plus one ``"other"`` channel holding the best
    score of the augmentation's extra classes (so the argmax maps them to "other")."""
    if sem_seg.shape[0] == num_out:
        return sem_seg
    return torch.cat([sem_seg[:num_out], sem_seg[num_out:].amax(dim=0, keepdim=True)], dim=0)
