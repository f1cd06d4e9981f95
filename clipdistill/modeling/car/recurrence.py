"""CaR's recurrent loop on one image (``CaRSegmenter``) and its label painting.

One *pass* segments a list of queries (class names as CLIP reads them):

1. step ``t`` holds the texts still alive (all queries at ``t = 1``);
2. mask proposals ``f``: Grad-CAM + CLIP-ES refinement of every alive text against the alive
   texts plus the background queries (``cam.py``); the CAM text is the bare name at step 1 and,
   as in the official code, ``CAM_TEMPLATE`` filled with the name from step 2 on;
3. visual prompting ``v``: each proposal, binarised at ``mask_threshold``, is drawn on the image
   (``prompts.py``); a proposal summing to at most 1 leaves the image unprompted;
4. mask classification ``g``: the classifier CLIP embeds each prompted image (once; the official
   code re-encodes them for every template, which gives the same numbers) and, for each of the
   templates, takes the softmax over the alive texts; the per-template probabilities are summed
   and soft-maxed again; the score of mask ``i`` is the entry of text ``i``. A single alive text
   therefore always scores 1.0;
5. texts scoring at most ``confidence_threshold`` die; if none survives, the best one is kept;
6. stop when the number of survivors equals the previous step's; the survivors' last proposals
   (or, if they are all zero, the previous step's) go through the DenseCRF, and the masks are
   paired with the survivors by position (official behaviour, see ``keep_all_crf_masks``).

``paint_labels`` turns the masks into a label map as the official evaluation does: masks are
painted in ascending score order (the best score wins), stuff first and things over it.
"""

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from ..clip.loader import clip_mean_std
from ..clip.text import TextEncoder
from ..clip.vit import patch_side, unwrap_tower
from .cam import grad_cam, refine_cams, sinkhorn_transition
from .clip_ops import (
    car_vit_tokens,
    check_car_vit,
    official_num_blocks,
    pool_and_project,
    run_block,
    run_blocks,
)
from .crf import crf_image, dense_crf_masks
from .prompts import apply_visual_prompts

__all__ = ["CaRSegmenter", "CaRPassResult", "CLIPHandle", "paint_labels", "warn_truncated"]

logger = logging.getLogger(__name__)

#: prompted images per classifier forward
_CLASSIFIER_BATCH = 16


@dataclass
class CLIPHandle:
    """A CLIP model with what its text encoders need: tokenizer, open_clip name, weights
    identity (``load_open_clip``'s; keys the on-disk text cache)."""

    model: nn.Module
    tokenizer: Any
    name: str
    identity: str = ""


def warn_truncated(tokenizer, strings: Sequence[str], warned: set) -> None:
    """Warn (once per string) about texts longer than the tokenizer's context: it truncates them
    silently (the official code, with OpenAI's tokenizer, stops with an error)."""
    encode = getattr(tokenizer, "encode", None)
    context = getattr(tokenizer, "context_length", 77)
    if encode is None:
        return
    for s in strings:
        if s not in warned and len(encode(s)) + 2 > context:
            warned.add(s)
            logger.warning(
                f"CaR: the text {s!r} has more than {context - 2} tokens and is truncated by the "
                "CLIP tokenizer; shorten the class name (MODEL.CAR.CLASS_NAME_MAP can rename it)."
            )


@dataclass
class CaRPassResult:
    """Output of one pass over ``queries``.

    Attributes:
        masks: ``[K, H, W]`` float32: CRF masks (0/1), or the refined CAMs with the CRF off;
            zero for the queries that did not survive.
        scores: ``[K]`` float32 survivor scores (0 for the others).
        proposals: ``[N, H, W]`` the refined CAMs that went into the CRF.
        survivors: the query indices paired by position with ``proposals`` and the CRF masks.
        steps: per step, ``{"texts": query indices, "scores": their scores, "kept": ...}``.
    """

    masks: np.ndarray
    scores: np.ndarray
    proposals: np.ndarray
    survivors: List[int] = field(default_factory=list)
    steps: List[Dict] = field(default_factory=list)


def paint_labels(
    label: np.ndarray,
    masks: np.ndarray,
    scores: np.ndarray,
    class_ids: Sequence[int],
    threshold: float = 0.5,
) -> np.ndarray:
    """Paint ``masks`` into ``label`` (in place) in ascending score order.

    Pixels of mask ``i`` above ``threshold`` get ``class_ids[i] + 1`` if ``scores[i] > 0``, so
    a higher score paints over a lower one; 0 stays "unlabelled". The order is numpy's default
    ``argsort`` of the scores, as in the official evaluation.
    """
    for i in np.argsort(scores):
        if scores[i] > 0:
            label[masks[i] > threshold] = class_ids[i] + 1
    return label


class _EncodedImage:
    """What the proposal CLIP computes once per image: tokens before the last block, the grid,
    and CLIP-ES's transition matrix."""

    def __init__(self, tokens, grid, transition):
        self.tokens, self.grid, self.transition = tokens, grid, transition


class CaRSegmenter(nn.Module):
    """The two frozen CLIPs and CaR's loop (``segment``)."""

    def __init__(
        self,
        *,
        proposal: CLIPHandle,
        classifier: CLIPHandle,
        classifier_templates: Sequence[str],
        cam_template: str = "a clean origami {}.",
        mask_threshold: float = 0.5,
        confidence_threshold: float = 0.45,
        clipes_threshold: float = 0.4,
        attention_layers: int = 8,
        crf: Optional[dict] = None,
        cam_batch_size: int = 8,
        classifier_all_blocks: bool = False,
        templated_cam_text: bool = True,
        official_crf_image: bool = True,
        keep_all_crf_masks: bool = False,
        gray_code: int = cv2.COLOR_BGR2GRAY,
        round_pos_embed_fp16: bool = True,
    ):
        """
        Args:
            proposal, classifier: the two open_clip CLIPs (ViT towers) and their tokenizers.
            classifier_templates: the classifier's prompt templates (``{}`` = the name).
            cam_template: template of the background queries and, from step 2 on, of the CAM
                texts.
            mask_threshold: binarisation of a proposal for the visual prompt (eta).
            confidence_threshold: survival score (theta).
            clipes_threshold: box threshold of the CLIP-ES refinement (lambda).
            attention_layers: attention maps averaged for the refinement.
            crf: DenseCRF keyword arguments (``dense_crf_masks``), or None for no CRF.
            cam_batch_size: texts per Grad-CAM backward.
            classifier_all_blocks: classify from the class token after all blocks (the official
                code reads it after all but the last one).
            templated_cam_text: from step 2 on, the CAM text is ``cam_template`` filled with the
                name (official); False keeps the bare name at every step.
            official_crf_image: the CRF sees the official mean-subtracted, uint8-wrapped BGR
                image; False gives it the RGB image.
            keep_all_crf_masks: one CRF mask per survivor; False reproduces the official one-hot
                encoding that drops trailing masks winning no pixel.
            gray_code: OpenCV conversion of the ``gray`` prompt (official: BGR2GRAY on RGB).
            round_pos_embed_fp16: round resampled positional embeddings through float16 (official).
        """
        super().__init__()
        for key, handle in (("proposal", proposal), ("classifier", classifier)):
            check_car_vit(handle.model.visual, f"MODEL.CAR.{key.upper()}_CLIP.NAME")
        self.proposal_clip = proposal.model
        self.classifier_clip = classifier.model
        proposal_clip, classifier_clip = proposal.model, classifier.model

        def encoder(handle, template):
            return TextEncoder(
                handle.model,
                handle.tokenizer,
                model_name=handle.name,
                identity=handle.identity,
                templates=(template,),
            )

        # text embeddings, one encoder per template (each caches per vocabulary); a step's
        # alive texts are rows of the whole vocabulary's embeddings
        self._name_text = encoder(proposal, "{}")
        self._cam_text = encoder(proposal, cam_template)
        self._classifier_text = [encoder(classifier, t) for t in classifier_templates]
        self._tokenizers = (proposal.tokenizer, classifier.tokenizer)
        self._warned: set = set()
        self.classifier_templates = tuple(classifier_templates)
        self.cam_template = cam_template
        self.mask_threshold = float(mask_threshold)
        self.confidence_threshold = float(confidence_threshold)
        self.clipes_threshold = float(clipes_threshold)
        self.attention_layers = int(attention_layers)
        self.crf = crf
        self.cam_batch_size = int(cam_batch_size)
        self.classifier_all_blocks = classifier_all_blocks
        self.templated_cam_text = templated_cam_text
        self.official_crf_image = official_crf_image
        self.keep_all_crf_masks = keep_all_crf_masks
        self.gray_code = gray_code
        self.round_pos_embed_fp16 = round_pos_embed_fp16
        for model in (proposal_clip, classifier_clip):
            model.requires_grad_(False)
            model.eval()
        self._classifier_transform = None

    def train(self, mode: bool = True):
        """The CLIPs stay in eval mode (CaR has nothing to train)."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.proposal_clip.logit_scale.device

    @property
    def proposal_visual(self) -> nn.Module:
        """The proposal CLIP's ViT (``unwrap_tower``: also a timm-named tower, the testbed's)."""
        return unwrap_tower(self.proposal_clip.visual)

    @property
    def classifier_visual(self) -> nn.Module:
        """The classifier CLIP's ViT (``unwrap_tower``)."""
        return unwrap_tower(self.classifier_clip.visual)

    @property
    def proposal_patch_size(self) -> int:
        return patch_side(self.proposal_visual)

    # ------------------------------------------------------------------ image side
    @staticmethod
    def _normalize(visual, x: torch.Tensor) -> torch.Tensor:
        mean, std = clip_mean_std(visual)
        return TF.normalize(x, list(mean), list(std))

    def encode_image(self, image: Image.Image) -> _EncodedImage:
        """Proposal-CLIP encoding of ``image`` (resized with PIL bicubic so that both sides are
        the next multiple of the patch size). Normal tensors even under ``inference_mode``:
        Grad-CAM later differentiates through the last block from them."""
        with torch.inference_mode(False), torch.no_grad():
            return self._encode_image(image)

    def _encode_image(self, image: Image.Image) -> _EncodedImage:
        visual = self.proposal_visual
        p = self.proposal_patch_size
        w, h = image.size
        size = (int(np.ceil(h / p) * p), int(np.ceil(w / p) * p))
        x = TF.to_tensor(TF.resize(image, list(size), interpolation=InterpolationMode.BICUBIC))
        x = self._normalize(self.proposal_clip.visual, x)[None].to(self.device)
        grid = (size[0] // p, size[1] // p)
        tokens, _ = car_vit_tokens(visual, x, self.round_pos_embed_fp16)
        blocks = visual.transformer.resblocks
        n = official_num_blocks(tokens.shape[1], len(blocks))
        tokens, maps = run_blocks(blocks[:n], tokens, self.attention_layers)
        _, last = run_block(blocks[-1], tokens, need_weights=True)
        transition = sinkhorn_transition(maps + [last], self.attention_layers)
        return _EncodedImage(tokens, grid, transition)

    def _classifier_preprocess(self, image: np.ndarray) -> torch.Tensor:
        if self._classifier_transform is None:
            import open_clip

            mean, std = clip_mean_std(self.classifier_clip.visual)
            self._classifier_transform = open_clip.image_transform(
                self.classifier_visual.image_size, is_train=False, mean=mean, std=std
            )
        return self._classifier_transform(Image.fromarray(image))

    def classify(self, images: Sequence[np.ndarray], text: torch.Tensor) -> torch.Tensor:
        """``[N, N]`` scores of prompted images (rows) against texts (columns): per template a
        softmax over the texts (``text``: ``[templates, N, C]`` normalised embeddings), summed
        over templates, soft-maxed again."""
        visual = self.classifier_visual
        feats = []
        for i in range(0, len(images), _CLASSIFIER_BATCH):
            batch = images[i : i + _CLASSIFIER_BATCH]
            x = torch.stack([self._classifier_preprocess(im) for im in batch])
            tokens, _ = car_vit_tokens(visual, x.to(self.device), self.round_pos_embed_fp16)
            blocks = visual.transformer.resblocks
            n = len(blocks) if self.classifier_all_blocks else official_num_blocks(
                tokens.shape[1], len(blocks)
            )
            tokens, _ = run_blocks(blocks[:n], tokens)
            feats.append(pool_and_project(visual, tokens, use_class_token=True))
        f = torch.cat(feats).float()
        f = f / f.norm(dim=1, keepdim=True)
        scale = self.classifier_clip.logit_scale.exp()
        per_template = [torch.softmax((scale * f @ t.t()).float(), dim=-1) for t in text]
        return torch.softmax(torch.stack(per_template).sum(dim=0), dim=-1)

    # ------------------------------------------------------------------ proposals
    def proposals(
        self, encoded: _EncodedImage, fg: torch.Tensor, bg: Optional[torch.Tensor], hw
    ) -> np.ndarray:
        """Refined CAMs ``[N, H, W]`` of the texts ``fg`` ``[N, C]`` against them plus ``bg``."""
        bg_texts = bg is not None and len(bg) > 0
        text = torch.cat([fg, bg]) if bg_texts else fg
        visual, scale = self.proposal_visual, self.proposal_clip.logit_scale
        n = len(fg)
        cams = grad_cam(
            visual, encoded.tokens, encoded.grid, text, range(n), scale, self.cam_batch_size
        )
        if bg_texts:
            zero = [i for i in range(n) if float(cams[i].max()) == 0]
            if zero:  # all-zero map: redo it against the foreground texts only
                redo = grad_cam(
                    visual, encoded.tokens, encoded.grid, fg, zero, scale, self.cam_batch_size
                )
                cams[zero] = redo
        return refine_cams(encoded.transition, cams, self.clipes_threshold, hw)

    # ------------------------------------------------------------------ the loop
    @torch.no_grad()
    def segment(
        self,
        image: np.ndarray,
        queries: Sequence[str],
        background_queries: Sequence[str] = (),
        visual_prompts: Sequence[str] = ("circle",),
        bg_factor: float = 1.0,
        encoded: Optional[_EncodedImage] = None,
    ) -> CaRPassResult:
        """One CaR pass.

        Args:
            image: ``[H, W, 3]`` uint8 RGB.
            queries: K distinct names (as CLIP should read them).
            background_queries: names competing in the Grad-CAM softmax, never segmented
                (filled into ``cam_template``).
            visual_prompts: prompt names in application order (``check_visual_prompts``).
            bg_factor: exponent of the CRF's background score.
            encoded: ``encode_image``'s result for this image, to share it between passes.

        Returns:
            ``CaRPassResult`` over ``queries``.
        """
        with torch.inference_mode(False):
            return self._segment(image, list(queries), list(background_queries),
                                 tuple(visual_prompts), float(bg_factor), encoded)

    def _segment(self, image, queries, bg_queries, visual_prompts, bg_factor, encoded):
        H, W = image.shape[:2]
        k = len(queries)
        if k == 0:
            empty = np.zeros((0, H, W), np.float32)
            return CaRPassResult(empty, np.zeros(0, np.float32), empty)
        if encoded is None:
            encoded = self.encode_image(Image.fromarray(image))
        warn_truncated(self._tokenizers[0], list(queries) + list(bg_queries), self._warned)
        warn_truncated(
            self._tokenizers[1],
            [t.format(q) for q in queries for t in self.classifier_templates],
            self._warned,
        )
        bare = self._name_text(queries)  # [K, C]: the CAM texts of step 1
        templated = self._cam_text(queries) if self.templated_cam_text else bare
        bg = self._cam_text(bg_queries) if bg_queries else None
        cls_text = torch.stack([enc(queries) for enc in self._classifier_text])  # [T, K, C]
        alive = list(range(k))
        cam = bare
        last_positive, previous = 0, None
        steps = []
        while True:
            idx = torch.as_tensor(alive, device=cam.device)
            props = self.proposals(encoded, cam[idx], bg, (H, W))
            prompted = [
                image
                if float(p.sum()) <= 1
                else apply_visual_prompts(
                    image, p > self.mask_threshold, visual_prompts, self.gray_code
                )
                for p in props
            ]
            scores = torch.diagonal(self.classify(prompted, cls_text[:, idx]))
            scores = scores.cpu().numpy().astype(np.float32)
            kept = [i for i, s in enumerate(scores) if s > self.confidence_threshold]
            if not kept:  # nothing survives: keep the best (official behaviour)
                kept = [int(np.argmax(scores))]
            step_scores = np.zeros_like(scores)
            step_scores[kept] = scores[kept]
            steps.append({"texts": list(alive), "scores": scores.copy(), "kept": list(kept)})
            if props.max() == 0 and previous is not None:
                props = previous  # all-zero proposals: keep the previous step's
            previous = props
            alive = [alive[i] for i in kept]
            cam = templated  # from step 2 on (official): the CAM_TEMPLATE texts
            positive = int((step_scores > 0).sum())
            if positive == last_positive:
                break
            last_positive = positive
        if self.crf is not None:
            masks = dense_crf_masks(
                crf_image(image, self.official_crf_image),
                props,
                bg_factor=bg_factor,
                keep_all_masks=self.keep_all_crf_masks,
                **self.crf,
            )
        else:
            masks = props
        out_masks = np.zeros((k, H, W), np.float32)
        out_scores = np.zeros(k, np.float32)
        # masks and scores are paired with the survivors by position (official zip)
        for qi, m, s in zip(alive, masks, step_scores):
            out_masks[qi] = m
            out_scores[qi] = s
        return CaRPassResult(out_masks, out_scores, props, list(alive), steps)
