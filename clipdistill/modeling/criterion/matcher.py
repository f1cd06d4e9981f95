"""Hungarian matching of predicted masks to ground-truth segments (MaskFormer / Mask2Former).

The cost of assigning query ``i`` to target ``j`` is

    C[i, j] = cost_class * (-p_i[label_j]) + cost_mask * mask_cost(m_i, t_j)
              + cost_dice * dice(m_i, t_j)

with ``p_i`` the softmax of the query's class logits, ``m_i`` its mask logits and ``t_j`` the
binary target mask. The mask terms are computed either on ``num_points`` points drawn uniformly
at random (the same points for every pair, Mask2Former) or, with ``num_points=0``, on the full
prediction grid with the targets resized to it by nearest neighbour (MaskFormer).
"""

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from detectron2.projects.point_rend.point_features import point_sample

__all__ = [
    "HungarianMatcher",
    "batch_dice_cost",
    "batch_sigmoid_bce_cost",
    "batch_sigmoid_focal_cost",
    "MASK_LOSSES",
]

#: mask-loss flavours understood by the matcher and the criterion
MASK_LOSSES = ("bce", "focal")


def batch_dice_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise dice loss ``1 - (2|p∩t| + 1) / (|p| + |t| + 1)``.

    Args:
        inputs: ``[N, P]`` mask logits. targets: ``[M, P]`` binary masks (float).

    Returns:
        ``[N, M]``.
    """
    prob = inputs.sigmoid().flatten(1)
    numerator = 2 * prob @ targets.t()
    denominator = prob.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def batch_sigmoid_bce_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise mean binary cross-entropy with logits.

    Args:
        inputs: ``[N, P]`` mask logits. targets: ``[M, P]`` binary masks (float).

    Returns:
        ``[N, M]``: entry ``(i, j)`` is ``mean_p BCE(inputs[i, p], targets[j, p])``.
    """
    pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    neg = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    return (pos @ targets.t() + neg @ (1 - targets).t()) / inputs.shape[1]


def batch_sigmoid_focal_cost(
    inputs: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Pairwise mean sigmoid focal loss (RetinaNet), as MaskFormer's matcher computes it.

    Args:
        inputs: ``[N, P]`` mask logits. targets: ``[M, P]`` binary masks (float).
        alpha: weight of the positives (negatives get ``1 - alpha``); < 0 disables weighting.
        gamma: focusing exponent.

    Returns:
        ``[N, M]``.
    """
    prob = inputs.sigmoid()
    pos = ((1 - prob) ** gamma) * F.binary_cross_entropy_with_logits(
        inputs, torch.ones_like(inputs), reduction="none"
    )
    neg = (prob**gamma) * F.binary_cross_entropy_with_logits(
        inputs, torch.zeros_like(inputs), reduction="none"
    )
    if alpha >= 0:
        pos = pos * alpha
        neg = neg * (1 - alpha)
    return (pos @ targets.t() + neg @ (1 - targets).t()) / inputs.shape[1]


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets minimising the weighted matching cost.

    Args:
        cost_class: weight of the classification cost ``-p[label]``.
        cost_mask: weight of the mask cost (BCE or focal, see ``mask_loss``).
        cost_dice: weight of the dice cost.
        num_points: number of uniformly sampled points the mask costs are computed on
            (Mask2Former: 112 * 112); 0 computes them on the full prediction grid with the
            targets resized to it (nearest neighbour; MaskFormer).
        mask_loss: "bce" (Mask2Former) or "focal" (MaskFormer).
        focal_alpha, focal_gamma: focal-loss parameters (``mask_loss="focal"`` only).
    """

    def __init__(
        self,
        cost_class: float = 1.0,
        cost_mask: float = 1.0,
        cost_dice: float = 1.0,
        num_points: int = 0,
        mask_loss: str = "bce",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: cost_class, cost_mask and cost_dice are all 0")
        if mask_loss not in MASK_LOSSES:
            raise ValueError(f"HungarianMatcher: mask_loss={mask_loss!r}, use one of {MASK_LOSSES}")
        if num_points < 0:
            raise ValueError(f"HungarianMatcher: num_points={num_points} must be >= 0")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points
        self.mask_loss = mask_loss
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def cost_matrix(
        self,
        logits: torch.Tensor,
        masks: torch.Tensor,
        labels: torch.Tensor,
        tgt_masks: torch.Tensor,
    ) -> torch.Tensor:
        """Matching cost of one image.

        Args:
            logits: ``[Q, K+1]`` class logits (last = no object). masks: ``[Q, h, w]`` mask logits.
            labels: ``[M]`` target classes. tgt_masks: ``[M, H, W]`` binary target masks.

        Returns:
            ``[Q, M]`` float32.
        """
        cost_class = -logits.float().softmax(-1)[:, labels]
        out = masks.float()
        tgt = tgt_masks.to(out)
        if self.num_points > 0:
            # the same random points for every pair (normalised [0, 1] coordinates)
            coords = torch.rand(1, self.num_points, 2, device=out.device)
            tgt = point_sample(
                tgt[:, None], coords.expand(tgt.shape[0], -1, -1), align_corners=False
            )
            out = point_sample(
                out[:, None], coords.expand(out.shape[0], -1, -1), align_corners=False
            )
            out, tgt = out[:, 0], tgt[:, 0]
        else:
            tgt = F.interpolate(tgt[:, None], size=out.shape[-2:], mode="nearest")[:, 0]
            out, tgt = out.flatten(1), tgt.flatten(1)
        if self.mask_loss == "bce":
            cost_mask = batch_sigmoid_bce_cost(out, tgt)
        else:
            cost_mask = batch_sigmoid_focal_cost(out, tgt, self.focal_alpha, self.focal_gamma)
        cost_dice = batch_dice_cost(out, tgt)
        return (
            self.cost_mask * cost_mask + self.cost_class * cost_class + self.cost_dice * cost_dice
        )

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, torch.Tensor], targets: Sequence[Dict[str, torch.Tensor]]
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Match every image of the batch.

        Args:
            outputs: ``"pred_logits"`` ``[B, Q, K+1]`` and ``"pred_masks"`` ``[B, Q, h, w]``.
            targets: per image ``"labels"`` ``[M]`` (int64) and ``"masks"`` ``[M, H, W]``.

        Returns:
            Per image ``(query_idx, target_idx)``, int64 tensors of length ``min(Q, M)``, with
            ``query_idx`` increasing.
        """
        logits, masks = outputs["pred_logits"], outputs["pred_masks"]
        indices = []
        device_type = masks.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            for b, target in enumerate(targets):
                labels = target["labels"]
                if labels.numel() == 0:
                    empty = torch.zeros(0, dtype=torch.int64)
                    indices.append((empty, empty.clone()))
                    continue
                cost = self.cost_matrix(logits[b], masks[b], labels, target["masks"])
                rows, cols = linear_sum_assignment(cost.cpu().numpy())
                indices.append(
                    (
                        torch.as_tensor(rows, dtype=torch.int64),
                        torch.as_tensor(cols, dtype=torch.int64),
                    )
                )
        return indices

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, "
            f"cost_dice={self.cost_dice}, "
            f"num_points={self.num_points}, mask_loss={self.mask_loss!r}"
        )
