"""Set-prediction losses shared by the mask-classification architectures (SAN, OVSeg).

``HungarianMatcher`` assigns predicted masks to ground-truth segments (one-to-one, by
``scipy.optimize.linear_sum_assignment``); ``SetCriterion`` computes the classification and mask
losses of the matched pairs, with deep supervision over auxiliary outputs. Two mask-loss
flavours are selectable:

* Mask2Former (SAN): binary cross-entropy + dice on ``num_points`` sampled points
  (uniform for matching, importance-sampled around uncertain predictions for the loss);
* MaskFormer (OVSeg): sigmoid focal + dice on the full masks (``num_points=0``,
  ``mask_loss="focal"``).
"""

from .matcher import (
    HungarianMatcher,
    batch_dice_cost,
    batch_sigmoid_bce_cost,
    batch_sigmoid_focal_cost,
)
from .set_criterion import SetCriterion, dice_loss, masks_from_sem_seg, sigmoid_bce_loss

__all__ = [
    "HungarianMatcher",
    "SetCriterion",
    "batch_dice_cost",
    "batch_sigmoid_bce_cost",
    "batch_sigmoid_focal_cost",
    "dice_loss",
    "sigmoid_bce_loss",
    "masks_from_sem_seg",
]
