"""Training-free dense (patch-level) CLIP features: MaskCLIP and its successors, one function.

``dense_features(visual, x, method)`` runs a CLIP image tower on normalised images and returns a
feature map in CLIP's joint image-text space, **not normalised** (callers L2-normalise before
scoring against text embeddings; the norm carries no information the methods use). Every method
runs all blocks but the last one unchanged and differs only in what it does with the last block
(``x``: its input tokens, ``ln_1``/``ln_2``/``mlp``: the block's own modules, ``q, k, v``: its
per-head projections of ``ln_1(x)``, ``s = head_dim ** -0.5``, ``O(.)``: merge heads +
``out_proj``):

============== ========================================================== ====================
method         last block                                                  positional embedding
============== ========================================================== ====================
``maskclip``   ``v' = O(v) + x;  v' = v' + mlp(ln_2(v'))`` (MaskCLIP,      ``size``
               Zhou et al., ECCV 2022, official code: value embedding,
               residual and MLP kept)
``value_only`` ``O(v)``: no residual, no MLP (ClearCLIP's code, ``MaskCLIP``  ``size``
               with ``ignore_residual``); clipdistill's distillation teacher
``sclip``      ``x' = x + O((softmax(s q q^T) + softmax(s k k^T)) v);``     ``scale_factor``
               ``x' = x' + mlp(ln_2(x'))`` (SCLIP's correlative
               self-attention, Wang et al., ECCV 2024)
``clearclip``  ``O(softmax(s q q^T) v)``: no residual, no MLP (ClearCLIP,   ``scale_factor``
               Lan et al., ECCV 2024)
``naclip``     ``O(softmax(s k k^T + G) v)``: no residual, no MLP; ``G``    ``scale_factor``
               a Gaussian (std 5 patches) of the distance between patch
               positions, 0 for the class token (NACLIP, Hajimiri et al.,
               WACV 2025)
``tokens``     the block unchanged: ``x' = x + O(softmax(s q k^T) v);``     ``size``
               ``x' = x' + mlp(ln_2(x'))``, the tower's own patch tokens.
               Poor for class-token towers (MaskCLIP's starting point);
               exact for towers whose image embedding is the mean of their
               patch tokens (the testbed CLIP): the mean of these features
               is the image embedding
============== ========================================================== ====================

then ``ln_post`` and ``proj`` on every patch token. A tower that defines its own per-location
embeddings (``dense_embeddings``, the testbed's CNN, whose image embedding is their mean) supports
``tokens`` only, which returns them. The positional-embedding resampling of each
method is the one its authors' code uses (``vit.py``). ResNet towers support ``maskclip`` and
``value_only``, which coincide there: ``c_proj(v_proj(.))`` of the attention pool at every
location of ``layer4`` (MaskCLIP's ResNet path).

Each method is tested against a transcription of its authors' code in
``tests/modeling/test_dense.py``. Where the authors' code differs from a plain CLIP model
(MaskCLIP's mmseg port of CLIP uses GELU in the MLP and LayerNorm eps 1e-6), this module uses the
CLIP model's own modules.
"""

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from open_clip.modified_resnet import ModifiedResNet
from torch import nn

from . import vit

__all__ = ["DENSE_METHODS", "DenseMethod", "dense_features", "naclip_neighbourhood_bias"]


@dataclass(frozen=True)
class DenseMethod:
    """What a dense method does with the last block (see the module docstring).

    Attributes:
        attention: ``"value"`` (every token attends to itself only), ``"csa"`` (q-q + k-k),
            ``"qq"``, ``"kk_neighbourhood"`` (k-k plus a Gaussian neighbourhood bias), ``"qk"``
            (the block's own attention).
        residual: add the block's input back after the attention branch.
        mlp: apply the block's MLP (with its residual) after that.
        pos_resampling: ``vit.POS_EMBED_RESAMPLING`` entry used by the method's authors.
        paper: short reference.
    """

    attention: str
    residual: bool
    mlp: bool
    pos_resampling: str
    paper: str


#: The selectable methods (``MODEL.CLIPDISTILL.TEACHER.DENSE_METHOD``).
DENSE_METHODS: Dict[str, DenseMethod] = {
    "maskclip": DenseMethod("value", True, True, "size", "MaskCLIP (ECCV 2022)"),
    "value_only": DenseMethod("value", False, False, "size", "MaskCLIP w/o residual and MLP"),
    "sclip": DenseMethod("csa", True, True, "scale_factor", "SCLIP (ECCV 2024)"),
    "clearclip": DenseMethod("qq", False, False, "scale_factor", "ClearCLIP (ECCV 2024)"),
    "naclip": DenseMethod("kk_neighbourhood", False, False, "scale_factor", "NACLIP (WACV 2025)"),
    "tokens": DenseMethod("qk", True, True, "size", "the tower's own patch tokens"),
}

#: Standard deviation (in patches) of NACLIP's Gaussian neighbourhood bias (its default).
NACLIP_GAUSSIAN_STD = 5.0

_BIAS_CACHE: Dict[Tuple[int, int, float, torch.device, torch.dtype], torch.Tensor] = {}


def naclip_neighbourhood_bias(
    grid: Tuple[int, int], std: float = NACLIP_GAUSSIAN_STD, device=None, dtype=torch.float32
) -> torch.Tensor:
    """NACLIP's attention bias ``[1 + h*w, 1 + h*w]``: ``exp(-d^2 / (2 std^2))`` between patch
    positions at grid distance ``d`` (row-major), 0 in the class token's row and column."""
    key = (int(grid[0]), int(grid[1]), float(std), torch.device(device or "cpu"), dtype)
    bias = _BIAS_CACHE.get(key)
    if bias is None:
        h, w = key[0], key[1]
        ii, jj = torch.meshgrid(
            torch.arange(h, dtype=torch.float32),
            torch.arange(w, dtype=torch.float32),
            indexing="ij",
        )
        pos = torch.stack([ii.flatten(), jj.flatten()], dim=1)  # [h*w, 2]
        d2 = (pos[:, None, :] - pos[None, :, :]).pow(2).sum(-1)
        bias = torch.zeros(1 + h * w, 1 + h * w)
        bias[1:, 1:] = torch.exp(-d2 / (2.0 * std * std))
        bias = bias.to(device=key[3], dtype=dtype)
        if len(_BIAS_CACHE) > 32:
            _BIAS_CACHE.clear()
        _BIAS_CACHE[key] = bias
    return bias


def _attend(block: nn.Module, y: torch.Tensor, kind: str, grid, naclip_std: float):
    """The attention branch of the last block, modified as ``kind`` says (``[B, L, width]``)."""
    q, k, v = vit.attention_qkv(block, y)
    if kind == "value":
        return vit.attention_output(block, v)
    s = vit.attention_scale(q)
    if kind == "qk":
        return vit.attention_output(block, ((q @ k.transpose(-1, -2)) * s).softmax(-1) @ v)
    qq = (q @ q.transpose(-1, -2)) * s if kind in ("csa", "qq") else None
    kk = (k @ k.transpose(-1, -2)) * s if kind in ("csa", "kk_neighbourhood") else None
    if kind == "csa":
        attn = qq.softmax(-1) + kk.softmax(-1)
    elif kind == "qq":
        attn = qq.softmax(-1)
    elif kind == "kk_neighbourhood":
        bias = naclip_neighbourhood_bias(grid, naclip_std, device=k.device, dtype=k.dtype)
        attn = (kk + bias).softmax(-1)
    else:  # unreachable: DENSE_METHODS is closed
        raise ValueError(kind)
    return vit.attention_output(block, attn @ v)


def dense_features(
    visual: nn.Module,
    x: torch.Tensor,
    method: str,
    *,
    pos_resampling: Optional[str] = None,
    naclip_std: float = NACLIP_GAUSSIAN_STD,
) -> torch.Tensor:
    """Dense CLIP features of ``x`` with ``method`` (module docstring).

    Args:
        visual: an open_clip image tower (``model.visual``): a ``VisionTransformer`` (class token,
            no attentional pooler) or a ``ModifiedResNet`` (``maskclip`` / ``value_only``).
        x: images ``[B, 3, H, W]`` normalised with the model's mean/std, in the tower's dtype.
            ViTs floor sides that are not multiples of the patch size (pad before to keep them).
        method: a ``DENSE_METHODS`` name.
        pos_resampling: override the method's positional-embedding resampling (``vit.py``).
        naclip_std: ``naclip``'s Gaussian standard deviation in patches.

    Returns:
        ``[B, C, h, w]`` in the joint space (not normalised), ``h, w`` the patch grid
        (``H/32, W/32`` for ResNets).

    Raises:
        ValueError: unknown ``method``.
        NotImplementedError: a tower or attention module the method does not support.
    """
    if method not in DENSE_METHODS:
        raise ValueError(
            f"Unknown dense method {method!r}; choose one of {sorted(DENSE_METHODS)} "
            "(MODEL.CLIPDISTILL.TEACHER.DENSE_METHOD)."
        )
    spec = DENSE_METHODS[method]
    tower = vit.unwrap_tower(visual)
    if hasattr(tower, "dense_embeddings"):  # a tower that defines its own (testbed CNN)
        if method != "tokens":
            raise NotImplementedError(
                f"Dense method {method!r} needs a ViT tower; {type(tower).__name__} has its own "
                "per-location embeddings: use 'tokens'."
            )
        return tower.dense_embeddings(x)
    if isinstance(visual, ModifiedResNet):
        if spec.attention != "value":
            raise NotImplementedError(
                f"Dense method {method!r} needs a ViT tower; ResNet towers support 'maskclip' "
                "and 'value_only'."
            )
        return _resnet_value(visual, x)
    visual = vit.check_plain_vit(visual, f"Dense features ({method!r})")
    tokens, grid = vit.vit_tokens(visual, x, pos_resampling or spec.pos_resampling)
    blocks = visual.transformer.resblocks
    tokens = vit.run_blocks(visual, tokens, blocks[:-1])
    last = blocks[-1]
    out = _attend(last, last.ln_1(tokens), spec.attention, grid, naclip_std)
    if spec.residual:
        out = out + tokens
    if spec.mlp:
        out = out + vit.mlp_branch(last, out)
    return vit.tokens_to_map(visual, out[:, 1:], grid)


def _resnet_value(visual: ModifiedResNet, x: torch.Tensor) -> torch.Tensor:
    x = visual.stem(x)
    x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))  # [B, 32*width, h, w]
    pool = visual.attnpool
    x = pool.c_proj(pool.v_proj(x.permute(0, 2, 3, 1)))
    return x.permute(0, 3, 1, 2)
