"""SAN's two halves of the CLIP image tower (open_clip ``VisionTransformer``).

* ``CLIPFeatureExtractor``: patch embedding, class token, positional embedding (resized bicubically
  to the input's grid) and ``ln_pre``, then the first ``last_layer_idx`` blocks. It returns every
  layer's tokens (layer 0 = the embedded input) for the side adapter and the recognition.
* ``RecognitionHead``: the remaining blocks, ``ln_post`` and ``proj``, run on
  ``[Q SOS tokens | class token | patch tokens]`` of layer ``last_layer_idx`` under an additive
  attention mask built from the side adapter's attention biases: each SOS token attends to
  itself and to the patches (biased per CLIP head), nothing else attends to the SOS tokens
  (-100), and the SOS tokens do not see the class token (-100). The SOS tokens' outputs are the
  mask embeddings in CLIP's joint space.

Both modules own the tower's parameters under the tower's own names (``conv1``,
``class_embedding``, ``positional_embedding``, ``ln_pre``, ``resblocks.<i>``, ``ln_post``,
``proj``), the recognition blocks renumbered from 0; all are frozen except the names matching
``frozen_exclude``.
"""

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from timm.layers import resample_abs_pos_embed
from torch import nn

from ..clip.vit import frozen_norms_eval

__all__ = ["CLIPFeatureExtractor", "RecognitionHead", "CLIPFeatures", "SOS_TOKEN_FORMATS"]

#: how the recognition's SOS tokens are initialised
SOS_TOKEN_FORMATS = ("cls_token", "learnable_token", "pos_embedding")
#: downsampling of the attention biases to CLIP's grid
DOWNSAMPLE_METHODS = ("max", "avg", "bilinear", "bicubic", "nearest")
#: the additive mask value that keeps a token from attending to another (the published value)
BLOCKED = -100.0


def _check_vit(visual: nn.Module, what: str) -> None:
    if not isinstance(visual, VisionTransformer):
        raise ValueError(f"SAN needs a ViT CLIP ({what}); got {type(visual).__name__}")
    if (
        getattr(visual, "attn_pool", None) is not None
        or getattr(visual, "pool_type", "tok") != "tok"
    ):
        raise ValueError(
            f"SAN needs a CLIP ViT that pools its class token ({what}); this one uses "
            f"attn_pool={type(getattr(visual, 'attn_pool', None)).__name__}, "
            f"pool_type={getattr(visual, 'pool_type', None)!r}"
        )


def _freeze(module: nn.Module, exclude: Sequence[str]) -> None:
    """Freeze every parameter whose name contains none of ``exclude`` ("all": freeze none)."""
    if "all" in exclude:
        return
    for name, p in module.named_parameters():
        if not any(e in name for e in exclude):
            p.requires_grad_(False)


class CLIPFeatures(dict):
    """Layer index -> patch tokens ``[B, C, h, w]``, plus ``cls_tokens[layer]`` ``[B, 1, C]``."""

    def __init__(self, grid: Tuple[int, int]):
        super().__init__()
        self.grid = grid
        self.cls_tokens: Dict[int, torch.Tensor] = {}

    def save(self, layer: int, tokens: torch.Tensor) -> None:
        b, _, c = tokens.shape
        self[layer] = tokens[:, 1:].transpose(1, 2).reshape(b, c, *self.grid)
        self.cls_tokens[layer] = tokens[:, :1]


class CLIPFeatureExtractor(nn.Module):
    """The first ``last_layer_idx`` blocks of CLIP's image tower (see the module docstring)."""

    def __init__(
        self, visual: VisionTransformer, last_layer_idx: int, frozen_exclude: Sequence[str]
    ):
        super().__init__()
        _check_vit(visual, "MODEL.SAN.CLIP.NAME")
        blocks = visual.transformer.resblocks
        if not 0 <= last_layer_idx <= len(blocks):
            raise ValueError(
                f"MODEL.SAN.FEATURE_LAST_LAYER_IDX={last_layer_idx} must lie in [0, {len(blocks)}] "
                f"for this {len(blocks)}-block CLIP"
            )
        self.grid_size = tuple(visual.grid_size)
        self.patch_size = tuple(visual.patch_size)
        self.num_features = visual.ln_pre.normalized_shape[0]
        self.conv1 = visual.conv1
        self.class_embedding = visual.class_embedding
        self.positional_embedding = visual.positional_embedding
        self.patch_dropout = visual.patch_dropout
        self.ln_pre = visual.ln_pre
        self.resblocks = nn.ModuleList(blocks[:last_layer_idx])
        self.last_layer_idx = last_layer_idx
        _freeze(self, frozen_exclude)

    def train(self, mode: bool = True):
        """Frozen BatchNorms (the testbed ViT's conv stem) stay in eval mode."""
        super().train(mode)
        frozen_norms_eval(self)
        return self

    def forward(self, x: torch.Tensor) -> CLIPFeatures:
        x = self.conv1(x)  # [B, C, h, w]
        b, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).view(1, 1, c).expand(b, -1, -1)
        x = torch.cat([cls, x], dim=1)
        pos = self.positional_embedding.to(x.dtype)[None]
        if (h, w) != self.grid_size:
            pos = resample_abs_pos_embed(
                pos,
                new_size=[h, w],
                old_size=list(self.grid_size),
                num_prefix_tokens=1,
                interpolation="bicubic",
                antialias=False,
            )
        x = self.ln_pre(self.patch_dropout(x + pos))
        out = CLIPFeatures((h, w))
        out.save(0, x)
        for i, block in enumerate(self.resblocks, start=1):
            x = block(x)
            out.save(i, x)
        return out


class RecognitionHead(nn.Module):
    """CLIP's deeper blocks run on SOS tokens under attention biases (module docstring).

    Args:
        visual: the open_clip image tower (its blocks from ``first_layer_idx`` on, ``ln_post``
            and ``proj`` are taken).
        first_layer_idx: the layer whose tokens enter (``FEATURE_LAST_LAYER_IDX``).
        frozen_exclude: parameter-name parts that stay trainable.
        sos_token_format: "cls_token" (copies of the class token; published), "learnable_token"
            (a learned token per query) or "pos_embedding" (class token + a learned token).
        sos_token_num: Q.
        downsample_method: how the biases are brought to CLIP's grid: "max" (adaptive max
            pooling; published), "avg", or an interpolation mode.
    """

    def __init__(
        self,
        visual: VisionTransformer,
        first_layer_idx: int,
        frozen_exclude: Sequence[str],
        sos_token_format: str,
        sos_token_num: int,
        downsample_method: str,
    ):
        super().__init__()
        _check_vit(visual, "MODEL.SAN.CLIP.NAME")
        if sos_token_format not in SOS_TOKEN_FORMATS:
            raise ValueError(
                f"MODEL.SAN.SOS_TOKEN_FORMAT={sos_token_format!r}: use one of {SOS_TOKEN_FORMATS}"
            )
        if downsample_method not in DOWNSAMPLE_METHODS:
            raise ValueError(
                f"MODEL.SAN.REC_DOWNSAMPLE_METHOD={downsample_method!r}: use one of "
                f"{DOWNSAMPLE_METHODS}"
            )
        self.resblocks = nn.ModuleList(visual.transformer.resblocks[first_layer_idx:])
        if not len(self.resblocks):
            raise ValueError(
                f"MODEL.SAN.FEATURE_LAST_LAYER_IDX={first_layer_idx} leaves no CLIP block for the "
                f"recognition (the CLIP has {len(visual.transformer.resblocks)} blocks)"
            )
        self.ln_post = visual.ln_post
        self.proj = visual.proj
        self.first_layer_idx = first_layer_idx
        self.sos_token_format = sos_token_format
        self.sos_token_num = sos_token_num
        self.downsample_method = downsample_method
        self.num_heads = self.resblocks[0].attn.num_heads
        frozen_exclude = list(frozen_exclude)
        if sos_token_format != "cls_token":
            width = visual.ln_post.normalized_shape[0]
            self.sos_token = nn.Parameter(torch.empty(sos_token_num, 1, width))
            nn.init.normal_(self.sos_token, std=0.02)
            frozen_exclude.append("sos_token")
        _freeze(self, frozen_exclude)

    def forward(
        self, features: CLIPFeatures, attn_biases: List[torch.Tensor], normalize: bool = True
    ) -> torch.Tensor:
        """
        Args:
            features: ``CLIPFeatureExtractor``'s output (layer ``first_layer_idx`` is used).
            attn_biases: ``[B, heads or 1, Q, H, W]`` per recognition-layer group (one bias for
                all layers, or one per layer).
            normalize: L2-normalise the output.

        Returns:
            ``[B, Q, D]`` mask embeddings in CLIP's joint space.
        """
        cls = features.cls_tokens[self.first_layer_idx]  # [B, 1, C]
        pix = features[self.first_layer_idx]  # [B, C, h, w]
        b, c, h, w = pix.shape
        if self.sos_token_format == "cls_token":
            sos = cls.expand(-1, self.sos_token_num, -1)
        else:
            learned = self.sos_token[:, 0].to(cls.dtype)[None].expand(b, -1, -1)
            sos = learned + cls if self.sos_token_format == "pos_embedding" else learned
        masks = self.attention_masks(attn_biases, (h, w))
        x = torch.cat([sos, cls, pix.flatten(2).transpose(1, 2)], dim=1)
        for block, mask in zip(self.resblocks, masks):
            x = block(x, attn_mask=mask.to(x.dtype))
        x = self.ln_post(x[:, : self.sos_token_num])
        if self.proj is not None:
            x = x @ self.proj
        return F.normalize(x, dim=-1) if normalize else x

    def attention_masks(
        self, attn_biases: List[torch.Tensor], grid: Tuple[int, int]
    ) -> List[torch.Tensor]:
        """One additive mask ``[B * heads, Q+1+L, Q+1+L]`` per recognition block."""
        if len(attn_biases) not in (1, len(self.resblocks)):
            raise ValueError(
                f"{len(attn_biases)} attention-bias groups for {len(self.resblocks)} recognition "
                f"blocks: MODEL.SIDE_ADAPTER.ATTN_BIAS.NUM_LAYERS must be 1 or "
                f"{len(self.resblocks)}"
            )
        masks = [self._attention_mask(bias, grid) for bias in attn_biases]
        return masks * len(self.resblocks) if len(masks) == 1 else masks

    def _attention_mask(self, bias: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        b, heads, q, h, w = bias.shape
        if heads not in (1, self.num_heads):
            raise ValueError(
                f"the side adapter predicts attention biases for {heads} heads but the CLIP "
                f"blocks have {self.num_heads}: set MODEL.SIDE_ADAPTER.ATTN_BIAS.NUM_HEADS "
                f"{self.num_heads}"
            )
        bias = self._downsample(bias.reshape(b, heads * q, h, w), grid)
        bias = bias.reshape(b, heads, q, grid[0] * grid[1])
        if heads == 1:
            bias = bias.expand(-1, self.num_heads, -1, -1)
        bias = bias.reshape(b * self.num_heads, q, -1)
        n = q + 1 + bias.shape[-1]
        mask = bias.new_zeros(n, n)
        mask[:, :q] = BLOCKED  # nobody attends to the SOS tokens ...
        idx = torch.arange(q, device=bias.device)
        mask[idx, idx] = 0.0  # ... except each to itself
        mask[:q, q] = BLOCKED  # SOS tokens do not see the class token
        mask = mask[None].repeat(b * self.num_heads, 1, 1)
        mask[:, :q, q + 1 :] = bias
        return mask

    def _downsample(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        if self.downsample_method == "max":
            return F.adaptive_max_pool2d(x, grid)
        if self.downsample_method == "avg":
            return F.adaptive_avg_pool2d(x, grid)
        return F.interpolate(x, size=grid, mode=self.downsample_method, align_corners=False)
