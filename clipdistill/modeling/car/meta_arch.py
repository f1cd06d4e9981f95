"""``CaR``: CLIP-as-RNN (Sun et al., CVPR 2024) as a training-free detectron2 META_ARCH.

Input: detectron2's ``list[dict]`` with ``"image"`` (uint8 ``[3, H, W]`` RGB), optionally
``"height"``/``"width"`` and ``"dataset_name"`` (whose ``stuff_classes`` are the vocabulary).
Output: ``[{"sem_seg": Tensor[K, height, width]}]``: 1 for the class that CaR paints at a pixel;
at pixels CaR leaves unpainted, 1 for the vocabulary's background class (``BACKGROUND_CLASSES``)
or, without one, half the refined CAM of each kept class (so the arg-max is the class with the
strongest CAM). The method and its options: docs/CAR.md.
"""

import logging
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np
import open_clip
import torch
from PIL import Image

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.postprocessing import sem_seg_postprocess

from .prompts import check_visual_prompts
from .recurrence import CaRSegmenter, CLIPHandle, paint_labels
from ..clip.loader import load_open_clip
from ..clip.text import PROMPT_TEMPLATES, template_strings
from ..segmenter import OpenVocabSegmenter, train_vocabulary_from_cfg

__all__ = ["CaR", "parse_class_name_map"]

logger = logging.getLogger(__name__)

_GRAY = {"bgr2gray": cv2.COLOR_BGR2GRAY, "rgb2gray": cv2.COLOR_RGB2GRAY}
_CRF_IMAGE = ("official", "rgb")


def parse_class_name_map(entries: Sequence[str]) -> Dict[str, str]:
    """``["bird:bird avian", ...]`` -> ``{"bird": "bird avian"}`` (MODEL.CAR.CLASS_NAME_MAP)."""
    out = {}
    for e in entries:
        name, sep, prompt = str(e).partition(":")
        if not sep or not name.strip() or not prompt.strip():
            raise ValueError(
                f"MODEL.CAR.CLASS_NAME_MAP entry {e!r} is not 'name:what CLIP reads'."
            )
        out[name.strip()] = prompt.strip()
    return out


@META_ARCH_REGISTRY.register()
class CaR(OpenVocabSegmenter):
    """CLIP-as-RNN: Grad-CAM proposals, visual prompts, a CLIP classifier and a recurrence that
    prunes the vocabulary until it stops changing (``clipdistill/modeling/car``)."""

    #: (not exportable: data-dependent loop, NumPy/OpenCV/DenseCRF steps)
    #: the text towers only embed the vocabulary (cached per vocabulary); both image towers run
    #: on every image
    inference_excluded_modules = (
        "segmenter.proposal_clip.transformer",
        "segmenter.proposal_clip.token_embedding",
        "segmenter.proposal_clip.positional_embedding",
        "segmenter.proposal_clip.ln_final",
        "segmenter.proposal_clip.text_projection",
        "segmenter.classifier_clip.transformer",
        "segmenter.classifier_clip.token_embedding",
        "segmenter.classifier_clip.positional_embedding",
        "segmenter.classifier_clip.ln_final",
        "segmenter.classifier_clip.text_projection",
    )

    @configurable
    def __init__(
        self,
        *,
        segmenter: CaRSegmenter,
        train_vocabulary: Sequence[str] = (),
        background_classes: Sequence[str] = ("background",),
        stuff_classes: Sequence[str] = (),
        class_name_map: Optional[Dict[str, str]] = None,
        background_queries: Sequence[str] = (),
        visual_prompts: Sequence[str] = ("circle",),
        stuff_visual_prompts: Sequence[str] = ("blur", "gray"),
        bg_factor: float = 1.0,
        stuff_bg_factor: float = 1.0,
        paint_threshold: float = 0.5,
    ):
        """
        Args:
            segmenter: the two CLIPs and the loop.
            train_vocabulary: vocabulary for inputs without a dataset name (none is trained).
            background_classes: vocabulary names never queried; they get unpainted pixels.
            stuff_classes: vocabulary names segmented in the stuff pass.
            class_name_map: vocabulary name -> the text CLIP reads.
            background_queries: the thing pass's background queries.
            visual_prompts, stuff_visual_prompts: prompts of the thing and stuff passes.
            bg_factor, stuff_bg_factor: CRF background exponents of the two passes.
            paint_threshold: a mask pixel above it is painted.
        """
        super().__init__(train_vocabulary=train_vocabulary)
        self.segmenter = segmenter
        self.background_classes = set(background_classes)
        self.stuff_classes = set(stuff_classes)
        self.class_name_map = dict(class_name_map or {})
        self.background_queries = list(background_queries)
        self.visual_prompts = check_visual_prompts(visual_prompts, "MODEL.CAR.VISUAL_PROMPTS")
        self.stuff_visual_prompts = check_visual_prompts(
            stuff_visual_prompts, "MODEL.CAR.STUFF_VISUAL_PROMPTS"
        )
        self.bg_factor = float(bg_factor)
        self.stuff_bg_factor = float(stuff_bg_factor)
        self.paint_threshold = float(paint_threshold)
        self._warned_sizes = set()

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.CAR
        templates = PROMPT_TEMPLATES.get(c.CLASSIFIER_TEMPLATES)
        if templates is None:
            raise ValueError(
                f"MODEL.CAR.CLASSIFIER_TEMPLATES={c.CLASSIFIER_TEMPLATES!r}: choose one of "
                f"{sorted(PROMPT_TEMPLATES)}."
            )
        if c.GRAY_CONVERSION not in _GRAY:
            raise ValueError(
                f"MODEL.CAR.GRAY_CONVERSION={c.GRAY_CONVERSION!r}: choose one of {sorted(_GRAY)}."
            )
        if c.CRF.IMAGE not in _CRF_IMAGE:
            raise ValueError(f"MODEL.CAR.CRF.IMAGE={c.CRF.IMAGE!r}: choose one of {_CRF_IMAGE}.")
        for key in ("CAM_TEMPLATE",):
            if "{}" not in c.get(key):
                raise ValueError(f"MODEL.CAR.{key}={c.get(key)!r} has no '{{}}' for the name.")
        crf = None
        if c.CRF.ENABLED:
            crf = {
                "iterations": int(c.CRF.ITERATIONS),
                "pos_xy_std": c.CRF.POS_XY_STD,
                "pos_w": c.CRF.POS_W,
                "bi_xy_std": c.CRF.BI_XY_STD,
                "bi_rgb_std": c.CRF.BI_RGB_STD,
                "bi_w": c.CRF.BI_W,
            }
        handles = {}
        for role, name, weights in (
            ("PROPOSAL", c.PROPOSAL_CLIP.NAME, c.PROPOSAL_CLIP.WEIGHTS),
            ("CLASSIFIER", c.CLASSIFIER_CLIP.NAME, c.CLASSIFIER_CLIP.WEIGHTS),
        ):
            key = f"MODEL.CAR.{role}_CLIP"
            model, identity = load_open_clip(
                name,
                weights,
                name_key=f"{key}.NAME",
                weights_key=f"{key}.WEIGHTS",
                force_quick_gelu=True if c.FORCE_QUICK_GELU else None,
            )
            handles[role] = CLIPHandle(model, open_clip.get_tokenizer(name), name, identity)
        segmenter = CaRSegmenter(
            proposal=handles["PROPOSAL"],
            classifier=handles["CLASSIFIER"],
            classifier_templates=template_strings(templates),
            cam_template=c.CAM_TEMPLATE,
            mask_threshold=c.MASK_THRESHOLD,
            confidence_threshold=c.CONFIDENCE_THRESHOLD,
            clipes_threshold=c.CLIPES_THRESHOLD,
            attention_layers=c.ATTENTION_LAYERS,
            crf=crf,
            cam_batch_size=c.CAM_BATCH_SIZE,
            classifier_all_blocks=c.CLASSIFIER_ALL_BLOCKS,
            templated_cam_text=c.TEMPLATED_CAM_TEXT,
            official_crf_image=c.CRF.IMAGE == "official",
            keep_all_crf_masks=c.CRF.KEEP_ALL_MASKS,
            gray_code=_GRAY[c.GRAY_CONVERSION],
            round_pos_embed_fp16=c.ROUND_POS_EMBED_FP16,
        )
        return {
            "segmenter": segmenter,
            "train_vocabulary": train_vocabulary_from_cfg(cfg),
            "background_classes": c.BACKGROUND_CLASSES,
            "stuff_classes": c.STUFF_CLASSES,
            "class_name_map": parse_class_name_map(c.CLASS_NAME_MAP),
            "background_queries": c.BACKGROUND_QUERIES,
            "visual_prompts": c.VISUAL_PROMPTS,
            "stuff_visual_prompts": c.STUFF_VISUAL_PROMPTS,
            "bg_factor": c.BG_FACTOR,
            "stuff_bg_factor": c.STUFF_BG_FACTOR,
            "paint_threshold": c.PAINT_THRESHOLD,
        }

    @property
    def device(self) -> torch.device:
        return self.segmenter.device

    # ---------------------------------------------------------------- inference
    def forward(self, batched_inputs: List[dict]) -> List[dict]:
        if self.training:
            raise RuntimeError("CaR is training-free: use it in eval mode (Trainer.test).")
        return [self.inference_one(x) for x in batched_inputs]

    def _warn_small(self, h: int, w: int) -> None:
        p = self.segmenter.proposal_patch_size
        if (h <= p or w <= p) and (h, w) not in self._warned_sizes:
            self._warned_sizes.add((h, w))
            logger.warning(
                f"CaR: a {h}x{w} image is at most one {p}-pixel patch high or wide; the CLIP-ES "
                "boxes of a one-patch grid are empty, so every mask proposal is empty and "
                "nothing is segmented."
            )

    def label_map(self, image: np.ndarray, vocabulary: Sequence[str]):
        """CaR on one image.

        Args:
            image: ``[H, W, 3]`` uint8 RGB.
            vocabulary: class names; background classes are not queried.

        Returns:
            ``(label, fill)``: ``label`` ``[H, W]`` int64, 0 = unpainted, ``k + 1`` = class k;
            ``fill`` ``[K, H, W]`` float32, the refined CAMs of the kept classes.
        """
        H, W = image.shape[:2]
        self._warn_small(H, W)
        vocabulary = list(vocabulary)
        prompt = [self.class_name_map.get(n, n) for n in vocabulary]
        things = [
            i for i, n in enumerate(vocabulary)
            if n not in self.background_classes and n not in self.stuff_classes
        ]  # fmt: skip
        stuff = [
            i for i, n in enumerate(vocabulary)
            if n in self.stuff_classes and n not in self.background_classes
        ]  # fmt: skip
        seg = self.segmenter
        encoded = seg.encode_image(Image.fromarray(image)) if (things or stuff) else None
        label = np.zeros((H, W), np.int64)
        fill = np.zeros((len(vocabulary), H, W), np.float32)
        passes = []
        if stuff:
            passes.append(
                (
                    stuff,
                    seg.segment(
                        image, [prompt[i] for i in stuff], [prompt[i] for i in things],
                        self.stuff_visual_prompts, self.stuff_bg_factor, encoded,
                    ),
                )
            )  # fmt: skip
        if things:
            passes.append(
                (
                    things,
                    seg.segment(
                        image, [prompt[i] for i in things], self.background_queries,
                        self.visual_prompts, self.bg_factor, encoded,
                    ),
                )
            )  # fmt: skip
        for ids, res in passes:  # stuff first, things over it
            paint_labels(label, res.masks, res.scores, ids, self.paint_threshold)
            for qi, cam in zip(res.survivors, res.proposals):
                fill[ids[qi]] = np.maximum(fill[ids[qi]], cam)
        return label, fill

    def inference_one(self, x: dict) -> dict:
        vocabulary = self.vocabulary_for(x)
        img = x["image"]
        if img.dtype != torch.uint8:
            img = img.round().clamp(0, 255).to(torch.uint8)
        image = np.ascontiguousarray(img.permute(1, 2, 0).cpu().numpy())
        label, fill = self.label_map(image, vocabulary)
        k = len(vocabulary)
        lab = torch.from_numpy(label)
        painted = lab > 0
        out = torch.from_numpy(fill) * 0.5 * (~painted)
        out.scatter_add_(0, (lab - 1).clamp_min(0)[None], painted[None].float())
        background = [i for i, n in enumerate(vocabulary) if n in self.background_classes]
        if background:
            out[background[0]][~painted] = 1.0
        h, w = image.shape[:2]
        height, width = x.get("height", h), x.get("width", w)
        if (height, width) != (h, w):
            out = sem_seg_postprocess(out, (h, w), height, width)
        assert out.shape[0] == k
        return {"sem_seg": out.to(self.device)}

    def scores_to_probs(self, sem_seg: torch.Tensor) -> torch.Tensor:
        """CaR's ``sem_seg`` are non-negative scores (1 for the painted class, half the refined
        CAM elsewhere): normalise their sum over K (uniform where all are 0)."""
        total = sem_seg.sum(dim=1, keepdim=True)
        uniform = torch.full_like(sem_seg, 1.0 / sem_seg.shape[1])
        return torch.where(total > 0, sem_seg / total.clamp_min(1e-12), uniform)
