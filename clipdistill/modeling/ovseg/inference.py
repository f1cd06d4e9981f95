"""OVSeg's inference rules as plain functions (the meta-architecture composes them).

``p_mf``: the proposal generator's class probabilities per query: softmax over the K classes
and the no-object class, then the no-object column dropped (rows do not sum to 1).
``p_clip``: CLIP's class probabilities of each query's masked crop: the no-object column is
dropped *before* the softmax over the K classes.
"""

import torch
import torch.nn.functional as F

__all__ = [
    "mask_class_probs",
    "clip_class_probs",
    "ensemble_probs",
    "semantic_scores",
    "demo_scores",
]


def mask_class_probs(logits: torch.Tensor) -> torch.Tensor:
    """``[..., K + 1]`` logits (last = no object) -> ``[..., K]``: softmax over all K + 1,
    no-object column dropped."""
    return F.softmax(logits, dim=-1)[..., :-1]


def clip_class_probs(logits: torch.Tensor) -> torch.Tensor:
    """``[V, K + 1]`` CLIP logits of the valid crops -> ``[V, K]``: no-object column dropped,
    then softmax over the K classes."""
    return F.softmax(logits[:, :-1], dim=-1)


def ensemble_probs(
    p_mf: torch.Tensor, p_clip: torch.Tensor, valid: torch.Tensor, weight: float
) -> torch.Tensor:
    """Geometric ensemble ``p_mf^(1-w) * p_clip^w`` per query (``[Q, K]``).

    Queries without a valid crop (``valid`` False: their mask is empty at the threshold) take
    ``p_clip = 1``, i.e. keep ``p_mf^(1-w)``.
    """
    full = p_mf.new_ones(p_mf.shape)
    full[valid] = p_clip.to(p_mf.dtype)
    return torch.pow(p_mf, 1 - weight) * torch.pow(full, weight)


def semantic_scores(probs: torch.Tensor, mask_probs: torch.Tensor) -> torch.Tensor:
    """``sem_seg[k] = sum_q probs[q, k] * mask_probs[q]`` (``[K, H, W]``; not normalised)."""
    return torch.einsum("qc,qhw->chw", probs, mask_probs)


def demo_scores(
    probs: torch.Tensor, mask_probs: torch.Tensor, mask_thr: float, num_selectable: int
) -> torch.Tensor:
    """The demo rule: each of the first ``num_selectable`` classes picks its highest-probability
    query; each picked query adds its whole probability row on its binarised mask.

    Args:
        probs: ``[V, K]`` class probabilities of the candidate queries.
        mask_probs: ``[V, H, W]`` their mask probabilities.
        mask_thr: binarisation threshold.
        num_selectable: classes that select a query (the demo's padding class ``'others'`` does
            not).
    """
    picked = probs.new_zeros(probs.shape)
    if probs.shape[0]:
        idx = probs.argmax(dim=0)[:num_selectable]
        picked[idx] = probs[idx]
    return torch.einsum("qc,qhw->chw", picked, (mask_probs > mask_thr).to(probs.dtype))
