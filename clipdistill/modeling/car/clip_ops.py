"""The open_clip ViT operations CaR needs, written against open_clip's module layout.

CaR runs CLIP in three unusual ways (see docs/CAR.md, "How CaR runs CLIP"):

* tokens at any input size (``clip.vit.vit_tokens``), with the positional embedding resampled
  *bilinearly* (no anti-aliasing) and, as in the official code, rounded through float16;
* all blocks but the last one (``official_num_blocks``), with the head-averaged attention maps of
  the blocks whose maps the CLIP-ES refinement uses;
* the last block re-run from ``ln_1``'s output, so that Grad-CAM can take gradients there.
"""

from typing import List, Optional, Tuple

import torch
from open_clip.transformer import VisionTransformer
from torch import nn

from ..clip.vit import check_plain_vit, vit_tokens

__all__ = [
    "check_car_vit",
    "official_num_blocks",
    "car_vit_tokens",
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
    try:
        visual = check_plain_vit(visual, "CaR")
    except NotImplementedError as e:
        raise ValueError(f"{key}: {e}") from e
    if getattr(visual, "final_ln_after_pool", False):
        raise ValueError(f"{key}: CaR needs a ViT whose ln_post comes before the pooling.")
    ph, pw = visual.patch_size
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


def car_vit_tokens(visual: VisionTransformer, x: torch.Tensor, round_pos_fp16: bool = True):
    """Tokens as the official code computes them: positional embedding resampled bilinearly
    (``clip.vit``'s ``"bilinear"``) and, by default, rounded through float16.

    Returns:
        ``[B, 1 + h*w, width]`` batch-first tokens and the grid ``(h, w)``.
    """
    return vit_tokens(visual, x, "bilinear", torch.float16 if round_pos_fp16 else None)


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
