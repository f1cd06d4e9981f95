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
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .cam import grad_cam, refine_cams, sinkhorn_transition
from .clip_ops import (
    check_car_vit,
    official_num_blocks,
    pool_and_project,
    run_block,
    run_blocks,
    vit_tokens_bilinear,
)
from .crf import crf_image, dense_crf_masks
from .prompts import apply_visual_prompts

__all__ = ["CaRSegmenter", "CaRPassResult", "TextBank", "paint_labels"]

logger = logging.getLogger(__name__)

#: prompted images per classifier forward
_CLASSIFIER_BATCH = 16


class TextBank:
    """Normalised text embeddings of prompt strings for one CLIP, kept in memory.

    CaR embeds the same strings on every image of a vocabulary (bare names, ``CAM_TEMPLATE``
    strings, background queries, the classifier's templates), so they are computed once.
    A string longer than the tokenizer's context is truncated by it, with a warning naming it.
    """

    def __init__(self, model: nn.Module, tokenizer, max_items: int = 200_000, batch: int = 256):
        self.model, self.tokenizer = model, tokenizer
        self.max_items, self.batch = max_items, batch
        self._cache: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        self._warned = set()

    def _warn_if_truncated(self, strings: Sequence[str]) -> None:
        encode = getattr(self.tokenizer, "encode", None)
        context = getattr(self.tokenizer, "context_length", 77)
        if encode is None:
            return
        for s in strings:
            if s not in self._warned and len(encode(s)) + 2 > context:
                self._warned.add(s)
                logger.warning(
                    f"CaR: the text {s!r} has more than {context - 2} tokens and is truncated "
                    f"by the CLIP tokenizer (the official code would stop with an error); "
                    "shorten the class name."
                )

    def __call__(self, strings: Sequence[str]) -> torch.Tensor:
        strings = list(strings)
        missing = list(OrderedDict.fromkeys(s for s in strings if s not in self._cache))
        if missing:
            self._warn_if_truncated(missing)
            device = next(self.model.parameters()).device
            for i in range(0, len(missing), self.batch):
                part = missing[i : i + self.batch]
                feats = self.model.encode_text(self.tokenizer(part).to(device)).float()
                feats = feats / feats.norm(dim=-1, keepdim=True)
                for s, f in zip(part, feats):
                    self._cache[s] = f
            while len(self._cache) > self.max_items:
                self._cache.popitem(last=False)
        for s in strings:
            self._cache.move_to_end(s)
        return torch.stack([self._cache[s] for s in strings])


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
        proposal_clip: nn.Module,
        classifier_clip: nn.Module,
        proposal_tokenizer,
        classifier_tokenizer,
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
            proposal_clip, classifier_clip: open_clip CLIP models with ViT towers.
            proposal_tokenizer, classifier_tokenizer: their open_clip tokenizers.
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
        for key, model in (("proposal", proposal_clip), ("classifier", classifier_clip)):
            check_car_vit(model.visual, f"MODEL.CAR.{key.upper()}_CLIP.NAME")
        self.proposal_clip = proposal_clip
        self.classifier_clip = classifier_clip
        self.proposal_text = TextBank(proposal_clip, proposal_tokenizer)
        self.classifier_text = TextBank(classifier_clip, classifier_tokenizer)
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
    def proposal_patch_size(self) -> int:
        return int(self.proposal_clip.visual.conv1.kernel_size[0])

    # ------------------------------------------------------------------ image side
    @staticmethod
    def _normalize(visual, x: torch.Tensor) -> torch.Tensor:
        mean = getattr(visual, "image_mean", None) or OPENAI_DATASET_MEAN
        std = getattr(visual, "image_std", None) or OPENAI_DATASET_STD
        return TF.normalize(x, mean, std)

    def encode_image(self, image: Image.Image) -> _EncodedImage:
        """Proposal-CLIP encoding of ``image`` (resized with PIL bicubic so that both sides are
        the next multiple of the patch size)."""
        visual = self.proposal_clip.visual
        p = self.proposal_patch_size
        w, h = image.size
        size = (int(np.ceil(h / p) * p), int(np.ceil(w / p) * p))
        x = TF.to_tensor(TF.resize(image, list(size), interpolation=InterpolationMode.BICUBIC))
        x = self._normalize(visual, x)[None].to(self.device)
        grid = (size[0] // p, size[1] // p)
        tokens = vit_tokens_bilinear(visual, x, self.round_pos_embed_fp16)
        blocks = visual.transformer.resblocks
        n = official_num_blocks(tokens.shape[1], len(blocks))
        tokens, maps = run_blocks(blocks[:n], tokens, self.attention_layers)
        _, last = run_block(blocks[-1], tokens, need_weights=True)
        transition = sinkhorn_transition(maps + [last], self.attention_layers)
        return _EncodedImage(tokens, grid, transition)

    def _classifier_preprocess(self, image: np.ndarray) -> torch.Tensor:
        if self._classifier_transform is None:
            import open_clip

            visual = self.classifier_clip.visual
            self._classifier_transform = open_clip.image_transform(
                visual.image_size,
                is_train=False,
                mean=getattr(visual, "image_mean", None) or OPENAI_DATASET_MEAN,
                std=getattr(visual, "image_std", None) or OPENAI_DATASET_STD,
            )
        return self._classifier_transform(Image.fromarray(image))

    def classify(self, images: Sequence[np.ndarray], names: Sequence[str]) -> torch.Tensor:
        """``[N, N]`` scores of prompted images (rows) against ``names`` (columns): per
        template a softmax over the names, summed over templates, soft-maxed again."""
        visual = self.classifier_clip.visual
        feats = []
        for i in range(0, len(images), _CLASSIFIER_BATCH):
            x = torch.stack([self._classifier_preprocess(im) for im in images[i : i + _CLASSIFIER_BATCH]])
            tokens = vit_tokens_bilinear(visual, x.to(self.device), self.round_pos_embed_fp16)
            blocks = visual.transformer.resblocks
            n = len(blocks) if self.classifier_all_blocks else official_num_blocks(
                tokens.shape[1], len(blocks)
            )
            tokens, _ = run_blocks(blocks[:n], tokens)
            feats.append(pool_and_project(visual, tokens, use_class_token=True))
        f = torch.cat(feats).float()
        f = f / f.norm(dim=1, keepdim=True)
        scale = self.classifier_clip.logit_scale.exp()
        per_template = []
        for template in self.classifier_templates:
            text = self.classifier_text([template.format(n) for n in names])
            per_template.append(torch.softmax((scale * f @ text.t()).float(), dim=-1))
        return torch.softmax(torch.stack(per_template).sum(dim=0), dim=-1)

    # ------------------------------------------------------------------ proposals
    def proposals(
        self, encoded: _EncodedImage, cam_texts: Sequence[str], bg_texts: Sequence[str], hw
    ) -> np.ndarray:
        """Refined CAMs ``[N, H, W]`` of ``cam_texts`` against them plus ``bg_texts``."""
        fg = self.proposal_text(cam_texts)
        text = torch.cat([fg, self.proposal_text(bg_texts)]) if bg_texts else fg
        visual, scale = self.proposal_clip.visual, self.proposal_clip.logit_scale
        n = len(cam_texts)
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
        bg_texts = [self.cam_template.format(b) for b in bg_queries]
        alive = list(range(k))
        cam_texts = list(queries)
        last_positive, previous = 0, None
        steps = []
        while True:
            props = self.proposals(encoded, cam_texts, bg_texts, (H, W))
            prompted = [
                image
                if float(p.sum()) <= 1
                else apply_visual_prompts(
                    image, p > self.mask_threshold, visual_prompts, self.gray_code
                )
                for p in props
            ]
            scores = torch.diagonal(self.classify(prompted, [queries[i] for i in alive]))
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
            cam_texts = [
                self.cam_template.format(queries[i]) if self.templated_cam_text else queries[i]
                for i in alive
            ]
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
