"""Helpers on open_clip's ``VisionTransformer``: tokens, positional embeddings, blocks, attention.

Used by the dense-feature methods (``dense.py``) and by everything that runs a CLIP ViT on an
input of any size. Every function takes the tower (``model.visual``) and works with
**batch-first** tokens ``[B, L, width]`` (``L = 1 + h*w``, class token first), whatever layout
the transformer stack runs in: open_clip 3.x runs it batch-first, older releases sequence-first;
``run_blocks`` converts where needed.

Positional embeddings of an input whose patch grid differs from the tower's native grid are
resampled, in one of two ways (``POS_EMBED_RESAMPLING``):

* ``"size"``: bicubic to the target grid, ``align_corners=False``, no antialiasing
  (``timm.layers.resample_abs_pos_embed``). This is what MaskCLIP's code does (mmseg's
  ``resize_pos_embed``) and what clipdistill's teacher has always done.
* ``"scale_factor"``: bicubic with ``scale_factor = (n + 0.1) / n0`` per axis (DINO's recipe), the
  resampling of SCLIP's, ClearCLIP's and NACLIP's code. PyTorch then maps output to input
  coordinates with that scale factor rather than with the ratio of the sizes, so the result
  differs slightly from ``"size"``.
* ``"bilinear"``: bilinear to the target grid, ``align_corners=False``, no antialiasing:
  CLIP-as-RNN's code (``F.upsample(..., mode="bilinear")``).
"""

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from open_clip.timm_model import TimmModel
from open_clip.transformer import Attention as OpenClipAttention
from open_clip.transformer import VisionTransformer
from timm.layers import resample_abs_pos_embed
from torch import nn

__all__ = [
    "POS_EMBED_RESAMPLING",
    "unwrap_tower",
    "patch_side",
    "frozen_norms_eval",
    "check_plain_vit",
    "resample_pos_embed",
    "vit_tokens",
    "run_blocks",
    "attention_qkv",
    "attention_output",
    "attention_scale",
    "mlp_branch",
    "tokens_to_map",
]

#: Ways of resampling positional embeddings to a new patch grid (module docstring).
POS_EMBED_RESAMPLING = ("size", "scale_factor", "bilinear")


def unwrap_tower(visual: nn.Module) -> nn.Module:
    """The network of an image tower: the trunk of a ``TimmModel`` whose head is empty (how an
    open_clip model config names a custom tower, such as the testbed CLIP's conv-stem ViT or
    CNN), else the tower itself."""
    if isinstance(visual, TimmModel) and len(visual.head) == 0:
        return visual.trunk
    return visual


def patch_side(visual: nn.Module) -> int:
    """The patch side of a ViT tower: its ``patch_size`` (open_clip records it; the testbed's
    conv-stem ViT has a stem, not a single strided convolution, as ``conv1``)."""
    size = getattr(visual, "patch_size", None)
    if size is None:
        size = visual.conv1.kernel_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def frozen_norms_eval(module: nn.Module) -> nn.Module:
    """Put every BatchNorm of ``module`` whose parameters are all frozen in eval mode (in place):
    a frozen CLIP keeps its running statistics while the model around it trains (the testbed
    ViT's conv stem; OpenAI's ViTs have no BatchNorm). Returns ``module``."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in m.parameters()
        ):
            m.eval()
    return module


def check_plain_vit(visual: nn.Module, what: str = "Dense features") -> VisionTransformer:
    """Return the open_clip ``VisionTransformer`` of ``visual`` (``unwrap_tower``) if it
    has a class token and no attentional pooler (the towers the token-level helpers support);
    else raise.

    Raises:
        NotImplementedError: naming the tower's type and ``what`` is unsupported.
    """
    visual = unwrap_tower(visual)
    if not isinstance(visual, VisionTransformer):
        raise NotImplementedError(
            f"{what}: the vision tower is a {type(visual).__name__}, not an open_clip "
            "VisionTransformer."
        )
    if getattr(visual, "attn_pool", None) is not None:
        raise NotImplementedError(
            f"{what} are not implemented for towers with an attentional pooler (CoCa)."
        )
    return visual


def resample_pos_embed(
    visual: VisionTransformer, grid: Sequence[int], mode: str = "size"
) -> torch.Tensor:
    """The tower's positional embedding ``[1 + h*w, width]`` for a patch ``grid = (h, w)``.

    The class-token position is kept; the patch positions are resampled (``mode``: see the
    module docstring) unless ``grid`` is the native grid.

    Raises:
        ValueError: unknown ``mode``.
    """
    if mode not in POS_EMBED_RESAMPLING:
        raise ValueError(
            f"Unknown positional-embedding resampling {mode!r}; choose one of "
            f"{POS_EMBED_RESAMPLING}."
        )
    pos = visual.positional_embedding
    native = tuple(int(g) for g in visual.grid_size)
    grid = (int(grid[0]), int(grid[1]))
    if grid == native:
        return pos
    if mode in ("size", "bilinear"):
        out = resample_abs_pos_embed(
            pos.unsqueeze(0),
            new_size=list(grid),
            old_size=list(native),
            num_prefix_tokens=1,
            interpolation="bicubic" if mode == "size" else "bilinear",
            antialias=False,
        )
        return out[0]
    # "scale_factor": DINO's recipe as in SCLIP/ClearCLIP/NACLIP (computed in float32)
    width = pos.shape[-1]
    patch = pos[1:].float().reshape(1, native[0], native[1], width).permute(0, 3, 1, 2)
    patch = F.interpolate(
        patch,
        scale_factor=((grid[0] + 0.1) / native[0], (grid[1] + 0.1) / native[1]),
        mode="bicubic",
        align_corners=False,
        recompute_scale_factor=False,
    )
    if tuple(patch.shape[-2:]) != grid:  # cannot happen for grids below ~10^4 patches
        raise RuntimeError(f"scale_factor resampling gave {tuple(patch.shape[-2:])}, not {grid}")
    patch = patch.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], width).to(pos.dtype)
    return torch.cat([pos[:1], patch], dim=0)


def vit_tokens(
    visual: VisionTransformer,
    x: torch.Tensor,
    pos_resampling: str = "size",
    pos_round_dtype: Optional[torch.dtype] = None,
) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Patch embedding + class token + (resampled) positional embedding + ``ln_pre``.

    Args:
        visual: the tower (``check_plain_vit``).
        x: normalised images ``[B, 3, H, W]`` in the tower's dtype; sides that are not multiples
            of the patch size are floored by the patch convolution (as in open_clip).
        pos_resampling: ``POS_EMBED_RESAMPLING`` entry.
        pos_round_dtype: round the (resampled) positional embedding through this dtype before
            adding it (CLIP-as-RNN's code keeps it as a float16 parameter); None: no rounding.

    Returns:
        Batch-first tokens ``[B, 1 + h*w, width]`` and the patch grid ``(h, w)``.
    """
    x = visual.conv1(x)  # [B, width, h, w]
    grid = (x.shape[-2], x.shape[-1])
    x = x.flatten(2).transpose(1, 2)  # [B, h*w, width]
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    pos = resample_pos_embed(visual, grid, pos_resampling)
    if pos_round_dtype is not None:
        pos = pos.to(pos_round_dtype)
    x = x + pos.to(x.dtype)
    x = visual.patch_dropout(x)  # identity in eval mode
    return visual.ln_pre(x), grid


def _stack_is_batch_first(visual: VisionTransformer) -> bool:
    transformer = visual.transformer
    if hasattr(transformer, "batch_first"):  # open_clip >= 2.24
        return bool(transformer.batch_first)
    # older open_clip ran every stack sequence-first; the attention module says so too
    attn = transformer.resblocks[0].attn
    return bool(getattr(attn, "batch_first", False))


def run_blocks(
    visual: VisionTransformer, x: torch.Tensor, blocks: Optional[Sequence[nn.Module]] = None
) -> torch.Tensor:
    """Run ``blocks`` (default: all) of the tower on batch-first tokens; returns batch-first."""
    if blocks is None:
        blocks = visual.transformer.resblocks
    batch_first = _stack_is_batch_first(visual)
    if not batch_first:
        x = x.transpose(0, 1)
    for block in blocks:
        x = block(x)
    if not batch_first:
        x = x.transpose(0, 1)
    return x


def attention_qkv(block: nn.Module, y: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Per-head queries, keys and values of ``block``'s attention for batch-first inputs ``y``
    (already through ``ln_1``).

    Returns:
        ``q, k, v`` each ``[B, heads, L, head_dim]`` (open_clip's ``qk_norm`` applied to q, k).

    Raises:
        NotImplementedError: an attention module other than ``nn.MultiheadAttention`` and
            open_clip's ``Attention`` without scaled-cosine logits.
    """
    attn = block.attn
    b, length, e = y.shape
    if isinstance(attn, nn.MultiheadAttention):
        if not attn._qkv_same_embed_dim:
            w = torch.cat([attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight])
        else:
            w = attn.in_proj_weight
        heads = attn.num_heads
        qkv = F.linear(y, w, attn.in_proj_bias)
    elif isinstance(attn, OpenClipAttention):
        if attn.logit_scale is not None:
            raise NotImplementedError(
                "Dense attention variants are not implemented for scaled-cosine attention."
            )
        heads = attn.num_heads
        qkv = F.linear(y, attn.in_proj_weight, attn.in_proj_bias)
    else:
        raise NotImplementedError(f"Unsupported attention module {type(attn).__name__}.")
    q, k, v = (t.reshape(b, length, heads, e // heads).transpose(1, 2) for t in qkv.chunk(3, -1))
    if isinstance(attn, OpenClipAttention):
        q, k = attn.ln_q(q), attn.ln_k(k)
    return q, k, v


def attention_output(block: nn.Module, o: torch.Tensor) -> torch.Tensor:
    """The attention branch's output for per-head attended values ``o`` ``[B, heads, L, hd]``:
    merge heads, ``out_proj`` (and open_clip's head scale, inner / post-attention norms and
    layer scale when the block has them). Returns batch-first ``[B, L, width]``, the quantity
    the block adds to its residual stream."""
    attn = block.attn
    if isinstance(attn, OpenClipAttention) and attn.head_scale is not None:
        o = o * attn.head_scale
    b, heads, length, hd = o.shape
    o = o.transpose(1, 2).reshape(b, length, heads * hd)
    if isinstance(attn, OpenClipAttention):
        o = attn.ln_inner(o)
    o = attn.out_proj(o)
    if hasattr(block, "ln_attn"):  # CustomResidualAttentionBlock
        o = block.ln_attn(o)
    return block.ls_1(o) if hasattr(block, "ls_1") else o


def mlp_branch(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``ls_2(mlp(ln_2(x)))``: what the block's MLP adds to its residual stream."""
    out = block.mlp(block.ln_2(x))
    return block.ls_2(out) if hasattr(block, "ls_2") else out


def tokens_to_map(
    visual: VisionTransformer, tokens: torch.Tensor, grid: Tuple[int, int]
) -> torch.Tensor:
    """``ln_post`` and ``proj`` on patch tokens ``[B, h*w, width]`` -> ``[B, C, h, w]``."""
    tokens = visual.ln_post(tokens)
    if visual.proj is not None:
        tokens = tokens @ visual.proj
    b = tokens.shape[0]
    return tokens.reshape(b, grid[0], grid[1], -1).permute(0, 3, 1, 2)


def attention_scale(q: torch.Tensor) -> float:
    """``head_dim ** -0.5``."""
    return 1.0 / math.sqrt(q.shape[-1])
