"""OVSeg's CLIP side: text classifier of the query embeddings and masked-region classifier with
mask prompt tuning, on an open_clip ``CLIP`` model (OpenAI ViT, QuickGELU).

Mask prompt tuning (MPT): the region is given to CLIP as a binary mask next to its crop. The
mask is average-pooled to the patch grid and ceiled (a patch is "inside" if any of its pixels
is); the patch tokens outside the region are replaced by a learned ``mask_embedding[0]`` before
the class token and the positional embedding are added, and by ``mask_embedding[d]`` after
transformer block ``d - 1`` for ``0 < d < depth``.

Masked crop: each region's binary mask gives its bounding box; the box is cut from the
un-normalised image, pixels outside the mask are set to the CLIP mean colour, the crop is
normalised with CLIP's mean/std and resized to the CLIP input size (bicubic; the mask nearest).
"""

from typing import Optional, Sequence, Tuple

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

from detectron2.structures import BitMasks

from ..clip import TextEncoder, load_open_clip
from ..clip.vit import patch_side, unwrap_tower

__all__ = ["MaskPromptCLIP", "mask_prompt_encode", "crop_regions", "patch_keep_mask"]

#: Logit temperature of every OVSeg classification (fixed; CLIP's ``logit_scale`` is not used).
LOGIT_TEMPERATURE = 100.0


def patch_keep_mask(region_masks: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[N, 1, S, S]`` region masks -> ``[N, grid², 1]``: 1 for patches that hold any region
    pixel (average pool over the patch, then ceil), else 0."""
    pooled = F.avg_pool2d(region_masks.float(), patch_size, stride=patch_size)
    return torch.ceil(pooled.flatten(1)).unsqueeze(-1)


def mask_prompt_encode(
    visual: nn.Module,
    images: torch.Tensor,
    region_masks: Optional[torch.Tensor] = None,
    mask_embedding: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Image embeddings ``[N, E]`` (not normalised) of an open_clip ``VisionTransformer``, with the
    patch tokens outside ``region_masks`` replaced by ``mask_embedding`` (``[depth, grid² or 1,
    width]``) at the input and after the first ``depth - 1`` blocks. Without masks this is
    ``visual(images)``.
    """
    x = visual.conv1(images)
    x = x.flatten(2).transpose(1, 2)  # N, grid², width
    keep = None
    if region_masks is not None:
        if mask_embedding is None or mask_embedding.shape[0] == 0:
            raise ValueError("mask prompt forward needs a mask embedding of depth >= 1")
        keep = patch_keep_mask(region_masks, patch_side(visual)).to(x.dtype)
        emb = mask_embedding.to(x.dtype)
        if emb.shape[1] == 1:
            emb = emb.expand(-1, x.shape[1], -1)
        x = x * keep + emb[0].unsqueeze(0) * (1 - keep)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    x = visual.ln_pre(x)
    transformer = visual.transformer
    if not transformer.batch_first:
        x = x.transpose(0, 1)
    for i, block in enumerate(transformer.resblocks):
        x = block(x)
        d = i + 1
        if keep is not None and d < emb.shape[0]:
            if transformer.batch_first:
                x = torch.cat([x[:, :1], x[:, 1:] * keep + emb[d].unsqueeze(0) * (1 - keep)], dim=1)
            else:
                k = keep.transpose(0, 1)
                x = torch.cat([x[:1], x[1:] * k + emb[d].unsqueeze(1) * (1 - k)], dim=0)
    if not transformer.batch_first:
        x = x.transpose(0, 1)
    x = visual.ln_post(x[:, 0])
    return x @ visual.proj if visual.proj is not None else x


def crop_regions(
    image: torch.Tensor,
    masks: torch.Tensor,
    fill: Sequence[float],
    mean: torch.Tensor,
    std: torch.Tensor,
    size: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Masked crops of ``image`` (``[3, H, W]``, 0..255) for binary ``masks`` (``[V, H, W]``, each
    non-empty): bounding-box crop, outside-mask pixels set to ``fill``, normalised with
    ``mean``/``std`` (``[1, 3, 1, 1]``, 0..255 scale), resized to ``size`` (bicubic).

    Returns:
        crops ``[V, 3, size, size]`` and the cropped masks resized (nearest) ``[V, 1, size, size]``.
    """
    masks = masks.to(image.dtype)
    boxes = BitMasks(masks > 0).get_bounding_boxes().tensor
    H, W = image.shape[-2:]
    fill_t = torch.tensor(fill, dtype=image.dtype, device=image.device).view(3, 1, 1)
    crops, crop_masks = [], []
    for (x0, y0, x1, y1), m in zip(boxes.tolist(), masks):
        l, t, r, b = max(int(x0), 0), max(int(y0), 0), min(int(x1), W), min(int(y1), H)
        mm = m[None, t:b, l:r]
        region = image[:, t:b, l:r] * mm + (1 - mm) * fill_t
        region = (region.unsqueeze(0) - mean) / std
        crops.append(F.interpolate(region, size=(size, size), mode="bicubic"))
        crop_masks.append(F.interpolate(mm.unsqueeze(0), size=(size, size), mode="nearest"))
    return torch.cat(crops), torch.cat(crop_masks)


class MaskPromptCLIP(nn.Module):
    """``clip_adapter`` of OVSeg: a frozen open_clip model, the mask-prompt embeddings, the
    learnable no-object text embedding, and the text encoder (cached per vocabulary).

    Args:
        clip_model: an open_clip ``CLIP`` with a ViT image tower (frozen here).
        text_encoder: ``TextEncoder`` over ``clip_model`` (prompt-ensembled class embeddings).
        mask_prompt_depth: number of mask embeddings (0 disables mask prompt tuning).
        mask_prompt_fwd: give the region masks to CLIP at inference (mask prompt tuning on).
        mask_thr: sigmoid threshold that binarises a proposal for its crop.
        mask_fill: ``"mean"`` (CLIP mean colour) or ``"zero"`` outside the region.
    """

    def __init__(
        self,
        clip_model: nn.Module,
        text_encoder: TextEncoder,
        *,
        mask_prompt_depth: int,
        mask_prompt_fwd: bool,
        mask_thr: float,
        mask_fill: str = "mean",
    ):
        super().__init__()
        # the open_clip VisionTransformer, also where a model config names it as a timm tower
        # (the testbed's ViT-8-testbed)
        visual = unwrap_tower(clip_model.visual)
        if not hasattr(visual, "conv1") or not hasattr(visual, "class_embedding"):
            raise ValueError(
                "MODEL.OVSEG.CLIP.NAME must be a ViT CLIP (mask prompt tuning needs patch tokens)"
            )
        if (
            getattr(visual, "attn_pool", None) is not None
            or getattr(visual, "pool_type", "tok") != "tok"
        ):
            raise ValueError(
                "MODEL.OVSEG.CLIP.NAME must be an OpenAI-style ViT CLIP (class-token pooling, no "
                "attention pooling)"
            )
        if mask_prompt_fwd and mask_prompt_depth < 1:
            raise ValueError(
                "MODEL.OVSEG.CLIP.MASK_PROMPT_FWD needs MODEL.OVSEG.CLIP.MASK_PROMPT_DEPTH >= 1 "
                f"(got {mask_prompt_depth})"
            )
        self.clip_model = clip_model
        for p in self.clip_model.parameters():
            p.requires_grad_(False)
        self.text_encoder = text_encoder
        grid = visual.positional_embedding.shape[0] - 1
        width = visual.class_embedding.shape[0]
        self.mask_embedding = nn.Parameter(
            torch.zeros(mask_prompt_depth, grid, width), requires_grad=False
        )
        self.embed_dim = clip_model.text_projection.shape[-1]
        self.non_object_embedding = nn.Parameter(torch.empty(1, self.embed_dim))
        nn.init.normal_(self.non_object_embedding, std=clip_model.transformer.width**-0.5)
        if mask_fill == "mean":
            self.fill = [255.0 * c for c in OPENAI_DATASET_MEAN]
        elif mask_fill == "zero":
            self.fill = [0.0, 0.0, 0.0]
        else:
            raise ValueError(f"MODEL.OVSEG.CLIP.MASK_FILL={mask_fill!r}: use 'mean' or 'zero'")
        self.mask_prompt_fwd = mask_prompt_fwd
        self.mask_thr = mask_thr
        self.image_size = int(visual.image_size[0]) if hasattr(visual, "image_size") else 224
        mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1) * 255
        std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1) * 255
        self.register_buffer("clip_mean", mean, False)
        self.register_buffer("clip_std", std, False)
        self._text_signature = self._weights_signature()

    @classmethod
    def from_config(cls, cfg) -> "MaskPromptCLIP":
        c = cfg.MODEL.OVSEG.CLIP
        model, _ = load_open_clip(
            c.NAME,
            c.WEIGHTS,
            name_key="MODEL.OVSEG.CLIP.NAME",
            weights_key="MODEL.OVSEG.CLIP.WEIGHTS",
            force_quick_gelu=c.FORCE_QUICK_GELU,
        )
        # No disk cache: an OVSeg checkpoint replaces the CLIP weights after construction, so
        # the identity of MODEL.OVSEG.CLIP.WEIGHTS does not identify the text tower (the text
        # embeddings are computed once per vocabulary and process).
        text = TextEncoder(
            model,
            open_clip.get_tokenizer(c.NAME),
            model_name=c.NAME,
            identity=None,
            templates=c.TEMPLATES,
        )
        return cls(
            model,
            text,
            mask_prompt_depth=c.MASK_PROMPT_DEPTH,
            mask_prompt_fwd=c.MASK_PROMPT_FWD,
            mask_thr=cfg.MODEL.OVSEG.MASK_THR,
            mask_fill=c.MASK_FILL,
        )

    # ---- text ----------------------------------------------------------------------------
    def _weights_signature(self) -> tuple:
        return tuple((id(t), t._version, t.device) for t in self.clip_model.parameters())

    def class_text_features(self, class_names: Sequence[str]) -> torch.Tensor:
        """Prompt-ensembled text embeddings ``[K, E]`` (per template normalised, averaged,
        normalised again), cached per vocabulary in memory; the cache is dropped whenever a CLIP
        weight changes (a checkpoint loaded, a weight edited in place)."""
        signature = self._weights_signature()
        if signature != self._text_signature:
            self._text_signature = signature
            self.text_encoder.clear()
        # float32 even inside an AMP training step: the embeddings are cached for evaluation
        device = self.non_object_embedding.device
        with torch.autocast(device_type=device.type, enabled=False):
            return self.text_encoder(class_names).to(device)

    def text_features(self, class_names: Sequence[str]) -> torch.Tensor:
        """``[K + 1, E]``: the class embeddings and the (learnable) normalised no-object
        embedding as last row."""
        no_object = F.normalize(self.non_object_embedding, dim=-1)
        return torch.cat([self.class_text_features(class_names), no_object], dim=0)

    @staticmethod
    def logits(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """Cosine similarities times the fixed temperature 100 (inputs already normalised)."""
        return LOGIT_TEMPERATURE * image_features @ text_features.t()

    # ---- image ---------------------------------------------------------------------------
    def encode_regions(
        self, crops: torch.Tensor, crop_masks: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Normalised CLIP embeddings ``[V, E]`` of the crops (mask prompt when enabled)."""
        feats = mask_prompt_encode(
            unwrap_tower(self.clip_model.visual),
            crops,
            crop_masks if self.mask_prompt_fwd else None,
            self.mask_embedding,
        )
        return F.normalize(feats, dim=-1)

    @torch.no_grad()
    def classify_regions(
        self, image: torch.Tensor, mask_probs: torch.Tensor, text_features: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """CLIP logits of the masked crops of the proposals that are non-empty at ``mask_thr``.

        Args:
            image: ``[3, H, W]`` un-normalised RGB (0..255).
            mask_probs: ``[Q, H, W]`` proposal probabilities (sigmoid) at the image's size.
            text_features: ``[K + 1, E]`` from :meth:`text_features`.

        Returns:
            ``(logits [V, K + 1], valid [Q] bool)``: one row per valid proposal, in query order
            (``V`` may be 0 or 1; both are handled).
        """
        bin_masks = mask_probs > self.mask_thr
        valid = bin_masks.flatten(1).any(dim=1)
        if not bool(valid.any()):
            return mask_probs.new_zeros((0, text_features.shape[0])), valid
        crops, crop_masks = crop_regions(
            image.to(mask_probs.dtype),
            bin_masks[valid],
            self.fill,
            self.clip_mean,
            self.clip_std,
            self.image_size,
        )
        return self.logits(self.encode_regions(crops, crop_masks), text_features), valid

    def train(self, mode: bool = True):
        """CLIP stays in eval mode (it is frozen)."""
        super().train(mode)
        self.clip_model.eval()
        return self
