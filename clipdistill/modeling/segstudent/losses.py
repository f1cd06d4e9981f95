"""Distillation losses: plain functions on tensors, no config.

Notation (docs/METHOD.md): ``F`` student features ``[B, C, L]`` (L locations, L2-normalised per
location), ``Cg`` teacher global embeddings ``[B, C]``, ``Td`` teacher dense features.
"""

from typing import Optional

import torch
import torch.distributed as dist
from torch.nn import functional as F

__all__ = [
    "gather_with_local_grad",
    "info_nce",
    "global_loss",
    "attention_pool",
    "local_loss",
    "dense_loss",
    "ce_loss",
]


def gather_with_local_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all processes (rank order); only the local slice keeps gradients.

    Every process must hold the same number of rows. Returns ``x`` unchanged when not distributed.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts, dim=0)


def info_nce(
    a: torch.Tensor, b: torch.Tensor, temperature: float, gather: bool = False
) -> torch.Tensor:
    """Symmetric InfoNCE between matched rows of ``a`` and ``b`` (both ``[B, C]``, normalised).

    Row ``i`` of ``a`` is positive with row ``i`` of ``b``; every other row is a negative. With
    ``gather``, the negatives come from the whole global batch (all processes).

    Returns:
        scalar: ``(CE(a b_all^T / t, pos) + CE(b a_all^T / t, pos)) / 2``.
    """
    if a.shape != b.shape:
        raise ValueError(f"info_nce: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    n = a.shape[0]
    offset = 0
    a_all, b_all = a, b
    if gather and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        a_all, b_all = gather_with_local_grad(a), gather_with_local_grad(b)
        offset = dist.get_rank() * n
    target = torch.arange(n, device=a.device) + offset
    loss_a = F.cross_entropy(a @ b_all.t() / temperature, target)
    loss_b = F.cross_entropy(b @ a_all.t() / temperature, target)
    return (loss_a + loss_b) / 2


def _masked_mean(f: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    if mask is None:
        return f.mean(dim=2)
    m = mask.to(f.dtype).unsqueeze(1)
    return (f * m).sum(dim=2) / m.sum(dim=2).clamp(min=1)


def global_loss(
    f: torch.Tensor,
    cg: torch.Tensor,
    temperature: float,
    mask: Optional[torch.Tensor] = None,
    gather: bool = False,
) -> torch.Tensor:
    """``loss_global``: InfoNCE between ``normalize(mean_l F)`` and ``Cg``.

    Args:
        f: ``[B, C, L]`` student features. cg: ``[B, C]``. mask: optional ``[B, L]`` bool of valid
        (non-padding) locations.
    """
    pooled = F.normalize(_masked_mean(f, mask), dim=1)
    return info_nce(pooled, cg, temperature, gather)


def attention_pool(
    f: torch.Tensor, cg: torch.Tensor, attn_temperature: float, mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """The seed's attention pooling: ``W = softmax_l(<Cg, F_l> / T)``, ``Fg = normalize(sum W F)``.

    Returns:
        ``[B, C]`` normalised pooled features.
    """
    scores = torch.einsum("bc,bcl->bl", cg, f) / attn_temperature
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    w = scores.softmax(dim=1)
    return F.normalize(torch.einsum("bl,bcl->bc", w, f), dim=1)


def local_loss(
    f: torch.Tensor,
    cg: torch.Tensor,
    temperature: float,
    attn_temperature: float,
    mask: Optional[torch.Tensor] = None,
    gather: bool = False,
) -> torch.Tensor:
    """``loss_local``: InfoNCE between the attention-pooled ``Fg`` and ``Cg``."""
    return info_nce(attention_pool(f, cg, attn_temperature, mask), cg, temperature, gather)


def dense_loss(f: torch.Tensor, td: torch.Tensor) -> torch.Tensor:
    """``loss_dense``: mean ``1 - cos`` between ``F`` (``[B, C, H, W]``) bilinearly resampled to
    the teacher's grid and ``Td`` (``[B, C, h, w]``)."""
    f = F.interpolate(f, size=td.shape[-2:], mode="bilinear", align_corners=False)
    return (1 - F.cosine_similarity(f, td.to(f.dtype), dim=1)).mean()


def seg_kd_loss(
    logits: torch.Tensor, teacher_probs: torch.Tensor, mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``loss_seg_kd``: ``KL(p_teacher || softmax(logits))`` per location, averaged over the valid
    locations; ``teacher_probs`` ``[B, K, H, W]`` are area-averaged to the logits' ``[B, K, h, w]``
    grid first. ``mask``: optional ``[B, h*w]`` bool of valid (non-padding) locations."""
    if teacher_probs.shape[-2:] != logits.shape[-2:]:
        teacher_probs = F.interpolate(teacher_probs, size=logits.shape[-2:], mode="area")
    log_p = F.log_softmax(logits.float(), dim=1)
    p_t = teacher_probs.to(log_p.dtype)
    kl = (p_t * (torch.log(p_t.clamp(min=1e-8)) - log_p)).sum(dim=1).flatten(1)  # [B, h*w]
    if mask is None:
        return kl.mean()
    m = mask.to(kl.dtype)
    return (kl * m).sum() / m.sum().clamp(min=1)


def ce_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """``loss_ce``: pixel cross-entropy; ``logits`` ``[B, K, h, w]`` are bilinearly upsampled to
    the target's ``[B, H, W]`` size first."""
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(
            logits.float(), size=target.shape[-2:], mode="bilinear", align_corners=False
        )
    return F.cross_entropy(logits, target, ignore_index=ignore_index)
