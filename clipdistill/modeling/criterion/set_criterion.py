"""Set criterion of mask-classification models (MaskFormer / Mask2Former style).

For every output (the final one and each auxiliary one of deep supervision) the queries are
matched to the targets by a ``HungarianMatcher``; then

* ``loss_ce``: cross-entropy of every query's class logits against its matched target's class,
  unmatched queries against the no-object class (index ``num_classes``, weight ``eos_coef``);
* ``loss_mask`` / ``loss_dice``: mask losses of the matched pairs, summed over pairs and divided
  by the number of target masks (averaged over processes, at least 1).

Auxiliary outputs' losses carry the suffix ``_<i>`` (``loss_ce_0``, ...). The returned losses are
unweighted; ``weight_dict`` holds the weight of each name and ``weighted()`` applies it.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from detectron2.utils import comm

from .matcher import MASK_LOSSES, HungarianMatcher

__all__ = ["SetCriterion", "dice_loss", "sigmoid_bce_loss", "masks_from_sem_seg"]


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Sum over masks of ``1 - (2|p∩t| + 1) / (|p| + |t| + 1)``, divided by ``num_masks``.

    Args:
        inputs: ``[N, P]`` mask logits. targets: ``[N, P]`` binary masks (float).
    """
    prob = inputs.sigmoid().flatten(1)
    numerator = 2 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def sigmoid_bce_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Per-mask mean binary cross-entropy with logits, summed over masks, / ``num_masks``."""
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def _uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Mask2Former's point uncertainty: ``-|logit|`` (most uncertain where the logit is 0)."""
    return -torch.abs(logits)


def masks_from_sem_seg(
    sem_seg: torch.Tensor, ignore_value: int, size: Optional[Tuple[int, int]] = None
) -> Dict[str, torch.Tensor]:
    """Targets of one image from its label map: one binary mask per class present.

    Args:
        sem_seg: ``[H, W]`` int64 labels. ignore_value: label of ignored pixels (in no mask).
        size: ``(H', W')`` >= ``(H, W)``: the masks are zero-padded at the bottom/right to it
            (the padded image's size).

    Returns:
        ``{"labels": [M] int64 (sorted), "masks": [M, H', W'] bool}``.
    """
    labels = torch.unique(sem_seg)
    labels = labels[labels != ignore_value]
    masks = sem_seg[None] == labels[:, None, None]
    if size is not None and tuple(size) != tuple(sem_seg.shape):
        h, w = sem_seg.shape
        if size[0] < h or size[1] < w:
            raise ValueError(f"cannot pad a {h}x{w} label map to the smaller size {tuple(size)}")
        masks = F.pad(masks, (0, size[1] - w, 0, size[0] - h), value=False)
    return {"labels": labels.to(torch.int64), "masks": masks}


class SetCriterion(nn.Module):
    """Matching-based losses of a mask-classification model.

    Args:
        num_classes: number of (training) classes K; the no-object class is index K.
        matcher: the ``HungarianMatcher``.
        weight_dict: loss name -> weight (names missing from it are dropped by ``weighted``).
        eos_coef: cross-entropy weight of the no-object class.
        losses: which losses to compute: "labels" (``loss_ce``) and/or "masks"
            (``loss_mask``, ``loss_dice``).
        num_points: points per mask for the point-sampled losses (Mask2Former: 112 * 112);
            0 computes the mask losses on the full target resolution, the predictions
            upsampled bilinearly to it (MaskFormer).
        oversample_ratio, importance_sample_ratio: Mask2Former's importance sampling of the
            loss points (``get_uncertain_point_coords_with_randomness``).
        mask_loss: "bce" (binary cross-entropy, Mask2Former) or "focal" (sigmoid focal loss,
            MaskFormer; ``focal_alpha``, ``focal_gamma``).

    The buffer ``empty_weight`` (``[K+1]``, the class weights of the cross-entropy) is part of
    the state dict, as in the published checkpoints that use this criterion.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: Dict[str, float],
        eos_coef: float,
        losses: Sequence[str] = ("labels", "masks"),
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        mask_loss: str = "bce",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        super().__init__()
        unknown = [x for x in losses if x not in ("labels", "masks")]
        if unknown:
            raise ValueError(f"SetCriterion: unknown losses {unknown}; use 'labels' and/or 'masks'")
        if mask_loss not in MASK_LOSSES:
            raise ValueError(f"SetCriterion: mask_loss={mask_loss!r}, use one of {MASK_LOSSES}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.eos_coef = eos_coef
        self.losses = tuple(losses)
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.mask_loss = mask_loss
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    # ------------------------------------------------------------------------------ losses
    def loss_labels(self, outputs, targets, indices, num_masks) -> Dict[str, torch.Tensor]:
        logits = outputs["pred_logits"].float()
        if logits.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"SetCriterion was built for {self.num_classes} classes (+ no object) but the "
                f"logits have {logits.shape[-1]} entries: the training vocabulary and the number "
                f"of classes (e.g. MODEL.SAN.NUM_CLASSES) disagree"
            )
        batch_idx, src_idx = self._src_permutation(indices)
        matched = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        target_classes[batch_idx, src_idx] = matched.to(logits.device)
        loss = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)
        return {"loss_ce": loss}

    def loss_masks(self, outputs, targets, indices, num_masks) -> Dict[str, torch.Tensor]:
        batch_idx, src_idx = self._src_permutation(indices)
        src = outputs["pred_masks"][batch_idx, src_idx]  # [N, h, w]
        tgt = _stack_padded([t["masks"][j] for t, (_, j) in zip(targets, indices)]).to(src)
        if src.shape[0] == 0:  # no target in the batch: the mask losses are zero (with a graph)
            zero = outputs["pred_masks"].sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero.clone()}
        if self.num_points > 0:
            src, tgt = src[:, None], tgt[:, None]
            with torch.no_grad():
                coords = get_uncertain_point_coords_with_randomness(
                    src,
                    _uncertainty,
                    self.num_points,
                    self.oversample_ratio,
                    self.importance_sample_ratio,
                )
                tgt = point_sample(tgt, coords, align_corners=False)[:, 0]
            src = point_sample(src, coords, align_corners=False)[:, 0]
        else:
            src = F.interpolate(
                src[:, None], size=tgt.shape[-2:], mode="bilinear", align_corners=False
            )
            src, tgt = src.flatten(1), tgt.flatten(1)
        if self.mask_loss == "bce":
            loss_mask = sigmoid_bce_loss(src, tgt, num_masks)
        else:
            loss_mask = (
                sigmoid_focal_loss(src, tgt, self.focal_alpha, self.focal_gamma, reduction="none")
                .mean(1)
                .sum()
                / num_masks
            )
        return {"loss_mask": loss_mask, "loss_dice": dice_loss(src, tgt, num_masks)}

    @staticmethod
    def _src_permutation(indices) -> Tuple[torch.Tensor, torch.Tensor]:
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for src, _ in indices])
        return batch_idx, src_idx

    def _num_masks(self, targets, device) -> float:
        """Target masks per process (all-reduced), at least 1: the normaliser of every loss."""
        n = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        world = comm.get_world_size()
        if world > 1:
            torch.distributed.all_reduce(n)
        return torch.clamp(n / world, min=1).item()

    def _losses(self, outputs, targets, indices, num_masks) -> Dict[str, torch.Tensor]:
        out = {}
        if "labels" in self.losses:
            out.update(self.loss_labels(outputs, targets, indices, num_masks))
        if "masks" in self.losses:
            out.update(self.loss_masks(outputs, targets, indices, num_masks))
        return out

    def forward(
        self, outputs: Dict[str, object], targets: List[Dict[str, torch.Tensor]]
    ) -> Dict[str, torch.Tensor]:
        """Unweighted losses.

        Args:
            outputs: ``"pred_logits"`` ``[B, Q, K+1]``, ``"pred_masks"`` ``[B, Q, h, w]`` and
                optionally ``"aux_outputs"``: a list of dicts with the same two keys.
            targets: per image ``"labels"`` ``[M]`` and ``"masks"`` ``[M, H, W]`` (binary).
        """
        num_masks = self._num_masks(targets, outputs["pred_logits"].device)
        final = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        losses = self._losses(final, targets, self.matcher(final, targets), num_masks)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            aux_losses = self._losses(aux, targets, self.matcher(aux, targets), num_masks)
            losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        return losses

    def weighted(self, losses: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """``losses`` multiplied by ``weight_dict``; names without a weight are dropped."""
        return {k: v * self.weight_dict[k] for k, v in losses.items() if k in self.weight_dict}

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, eos_coef={self.eos_coef}, losses={self.losses}, "
            f"num_points={self.num_points}, oversample_ratio={self.oversample_ratio}, "
            f"importance_sample_ratio={self.importance_sample_ratio}, "
            f"mask_loss={self.mask_loss!r}, "
            f"weight_dict={self.weight_dict}"
        )


def _stack_padded(masks: List[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-image ``[M_i, H_i, W_i]`` masks, zero-padded to the largest size."""
    h = max(m.shape[-2] for m in masks)
    w = max(m.shape[-1] for m in masks)
    return torch.cat(
        [
            F.pad(m, (0, w - m.shape[-1], 0, h - m.shape[-2])) if m.shape[-2:] != (h, w) else m
            for m in masks
        ]
    )
