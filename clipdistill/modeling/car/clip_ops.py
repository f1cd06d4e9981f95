"""The open_clip ViT operations CaR needs, written against open_clip's module layout.

CaR runs CLIP in three unusual ways (see docs/CAR.md, "How CaR runs CLIP"):

* tokens at any input size, with the positional embedding resampled *bilinearly* (no
  anti-aliasing) and, as in the official code, rounded through float16;
* all blocks but the last one (``official_num_blocks``), with the head-averaged attention maps of
  the blocks whose maps the CLIP-ES refinement uses;
* the last block re-run from ``ln_1``'s output, so that Grad-CAM can take gradients there.
"""

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import nn

__all__ = [
    "check_car_vit",
    "official_num_blocks",
    "vit_tokens_bilinear",
    "run_block",
    "run_blocks",
    "block_from_ln1",
    "pool_and_project",
]

#: The text context length of OpenAI CLIP. The official image path runs all blocks when the token
#: count happens to equal it (its block-count test is meant to tell text from image inputs).
_CONTEXT_LENGTH = 77


def check_car_vit(visual: nn.Module, key: str) -> None:
    """CaR needs an open_clip ``VisionTransformer`` with square patches and no attention pooler.

    Args:
        visual: the vision tower.
        key: the config key that chose the model, named in the error.
    """
    if not isinstance(visual, VisionTransformer):
        raise ValueError(
            f"{key}: CaR needs a ViT CLIP (open_clip VisionTransformer), got "
            f"{type(visual).__name__}."
        )
    if getattr(visual, "attn_pool", None) is not None or getattr(
        visual, "final_ln_after_pool", False
    ):
        raise ValueError(f"{key}: CaR needs a ViT without attention pooling / post-pool norm.")
    ph, pw = visual.conv1.kernel_size
    if ph != pw:
        raise ValueError(f"{key}: CaR needs square patches, got {ph}x{pw}.")
    for block in visual.transformer.resblocks:
        if not isinstance(block.attn, nn.MultiheadAttention):
            raise ValueError(
                f"{key}: CaR needs blocks with nn.MultiheadAttention (attention maps), got "
                f"{type(block.attn).__name__}."
            )


def official_num_blocks(num_tokens: int, num_layers: int) -> int:
    """Blocks the official image path runs before its last step: all but the last one, except
    when the token count equals the text context length (77), where it runs all of them."""
    return num_layers if num_tokens == _CONTEXT_LENGTH else num_layers - 1


def vit_tokens_bilinear(
    visual: VisionTransformer, x: torch.Tensor, round_pos_fp16: bool = True
) -> torch.Tensor:
    """Patch embedding + class token + positional embedding + ``ln_pre``, batch-first.

    Args:
        visual: an open_clip ViT tower.
        x: normalised images ``[B, 3, H, W]``, H and W multiples of the patch size.
        round_pos_fp16: round the resampled positional embedding through float16, as the
            official code does (its resampled embedding is stored as a half-precision parameter).

    Returns:
        ``[B, 1 + h*w, width]`` tokens.
    """
    x = visual.conv1(x)
    b, width, gh, gw = x.shape
    x = x.reshape(b, width, gh * gw).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(b, -1, -1)
    x = torch.cat([cls, x], dim=1)
    pos = visual.positional_embedding
    patch = pos[1:]
    side = int(round(math.sqrt(patch.shape[0])))
    if side * side != patch.shape[0]:
        raise ValueError(f"positional embedding of {patch.shape[0]} patches is not a square grid")
    patch = patch.t().reshape(1, width, side, side)
    patch = F.interpolate(patch, size=(gh, gw), mode="bilinear", align_corners=False)
    patch = patch.reshape(width, gh * gw).t()
    pos = torch.cat([pos[:1], patch], dim=0)
    if round_pos_fp16:
        pos = pos.half()
    x = x + pos.to(x.dtype)
    return visual.ln_pre(x)


def _attention(
    block: nn.Module, y: torch.Tensor, need_weights: bool
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Self-attention of batch-first ``y`` through ``block.attn``; head-averaged weights."""
    attn: nn.MultiheadAttention = block.attn
    if not attn.batch_first:
        y = y.transpose(0, 1)
    out, weights = attn(y, y, y, need_weights=need_weights)
    if not attn.batch_first:
        out = out.transpose(0, 1)
    return out, weights


def block_from_ln1(block: nn.Module, x: torch.Tensor, y: torch.Tensor, need_weights: bool = False):
    """The rest of an open_clip ``ResidualAttentionBlock`` given ``y = block.ln_1(x)``.

    Returns:
        ``(x_out, attention weights [B, L, L] or None)``.
    """
    out, weights = _attention(block, y, need_weights)
    x = x + block.ls_1(out)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, weights


def run_block(block: nn.Module, x: torch.Tensor, need_weights: bool = False):
    """One block on batch-first tokens; ``(x_out, head-averaged attention or None)``."""
    return block_from_ln1(block, x, block.ln_1(x), need_weights)


def run_blocks(
    blocks, x: torch.Tensor, keep_attention_of_last: int = 0
) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """Run ``blocks``; return the tokens and the attention maps of the last
    ``keep_attention_of_last`` of them (in order)."""
    maps = []
    n = len(blocks)
    for i, block in enumerate(blocks):
        need = i >= n - keep_attention_of_last
        x, w = run_block(block, x, need)
        if need:
            maps.append(w)
    return x, maps


def pool_and_project(visual: VisionTransformer, x: torch.Tensor, use_class_token: bool):
    """``ln_post`` on every token, then the class token or the mean of the patch tokens, then
    ``proj`` (the official ``forward_last_layer``'s image side, before normalisation)."""
    x = visual.ln_post(x)
    x = x[:, 0] if use_class_token else x[:, 1:].mean(dim=1)
    if visual.proj is not None:
        x = x @ visual.proj
    return x
