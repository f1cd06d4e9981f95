"""CaR's mask proposals: Grad-CAM on CLIP's last block, refined CLIP-ES style.

For an image and a set of texts (foreground queries followed by background queries):

1. **Grad-CAM** (one map per foreground text): the last block of the ViT is re-run from the
   output of its ``ln_1``; the image embedding is the *mean of the patch tokens* after
   ``ln_post`` and ``proj``; the target is the softmax probability of the text among all texts
   (logit scale of the model). The map is ``relu(sum_d mean_p(dP/dA[p, d]) * A[:, d])`` over the
   patch tokens ``A`` of ``ln_1``'s output, min-max scaled (twice, as the official code does).
   Texts whose map is all zero are redone with the foreground texts only.
2. **Refinement** (CLIP-ES): the head-averaged attention maps of the last 8 blocks (the 7 before
   the last and the re-run last block), averaged, patch-to-patch part; three alternating
   column/row normalisations (Sinkhorn), symmetrised, squared; its columns outside the boxes of
   the map's thresholded regions are zeroed; ``refined = T @ cam``, min-max scaled and resized
   bilinearly to the image.

Every function here works on one image; texts are batched.
"""

from typing import List, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer

from .clip_ops import block_from_ln1, pool_and_project

__all__ = [
    "scale_min_max",
    "grad_cam",
    "sinkhorn_transition",
    "box_mask",
    "refine_cams",
]

#: the epsilon of the official min-max scaling
_EPS = 1e-15


def scale_min_max(cam: torch.Tensor) -> torch.Tensor:
    """Min-max scale each map of ``[..., h, w]``: ``(x - min) / (1e-15 + max(x - min))``."""
    flat = cam.flatten(-2)
    flat = flat - flat.min(dim=-1, keepdim=True).values
    flat = flat / (_EPS + flat.max(dim=-1, keepdim=True).values)
    return flat.view_as(cam)


def grad_cam(
    visual: VisionTransformer,
    x: torch.Tensor,
    grid: Sequence[int],
    text_features: torch.Tensor,
    targets: Sequence[int],
    logit_scale: torch.Tensor,
    batch_size: int = 8,
) -> torch.Tensor:
    """Grad-CAM of the texts ``targets`` at the last block's ``ln_1``, batched over texts.

    Args:
        visual: the proposal CLIP's ViT.
        x: ``[1, 1 + h*w, width]`` tokens entering the last block (no gradient needed).
        grid: ``(h, w)`` patch grid.
        text_features: ``[T, C]`` text embeddings (normalised here) of all texts in the softmax.
        targets: indices into ``text_features`` whose maps are wanted.
        logit_scale: the model's (log) logit scale parameter.
        batch_size: texts per backward pass (memory: ``batch_size`` copies of the last block).

    Returns:
        ``[len(targets), h, w]`` float32 maps in [0, 1].
    """
    block = visual.transformer.resblocks[-1]
    h, w = int(grid[0]), int(grid[1])
    text = text_features / text_features.norm(dim=1, keepdim=True)
    scale = logit_scale.exp()
    with torch.no_grad():
        y0 = block.ln_1(x)
    maps = []
    targets = list(targets)
    for start in range(0, len(targets), batch_size):
        chunk = torch.as_tensor(targets[start : start + batch_size], device=x.device)
        c = len(chunk)
        with torch.enable_grad():
            y = y0.detach().expand(c, -1, -1).clone().requires_grad_(True)
            out, _ = block_from_ln1(block, x.detach().expand(c, -1, -1), y)
            f = pool_and_project(visual, out, use_class_token=False)
            f = f / f.norm(dim=1, keepdim=True)
            probs = F.softmax((scale * f @ text.t()).float(), dim=-1)
            (grad,) = torch.autograd.grad(probs[torch.arange(c), chunk].sum(), y)
        weights = grad[:, 1:].float().mean(dim=1)  # [c, width]
        cam = (y0[:, 1:].float() * weights[:, None, :]).sum(dim=-1)  # [c, h*w]
        maps.append(cam.view(c, h, w))
    cam = torch.cat(maps).clamp_min(0)
    return scale_min_max(scale_min_max(cam).clamp_min(0))


def sinkhorn_transition(attention_maps: List[torch.Tensor], num_layers: int = 8) -> torch.Tensor:
    """CLIP-ES's transition matrix from attention maps.

    Args:
        attention_maps: head-averaged attention ``[1, L, L]`` of consecutive blocks, in order.
        num_layers: how many of the last maps to average.

    Returns:
        ``[n, n]`` float32 (``n = L - 1`` patches): the mean map's patch part, normalised by
        columns then rows three times, symmetrised and squared.
    """
    a = torch.stack([m[:, 1:, 1:] for m in attention_maps], dim=0)[-num_layers:]
    t = a.mean(dim=0)[0].float()
    for _ in range(3):
        t = t / t.sum(dim=0, keepdim=True)
        t = t / t.sum(dim=1, keepdim=True)
    t = (t + t.t()) / 2
    return t @ t


def box_mask(scoremap: np.ndarray, threshold: float) -> np.ndarray:
    """Union of the bounding boxes of the regions of ``scoremap`` above ``threshold * max``.

    As the official ``scoremap2bbox``: the map is quantised to uint8, the threshold is lowered by
    0.1 until some pixel passes (or it reaches 0), every contour (outer and inner) gives a box,
    and a box's right/bottom edge is clipped to ``width - 1`` / ``height - 1`` (so a region
    touching the right or bottom border loses its last column or row).

    Args:
        scoremap: ``[h, w]`` float map in [0, 1].
        threshold: the CLIP-ES threshold (``MODEL.CAR.CLIPES_THRESHOLD``).

    Returns:
        ``[h, w]`` bool.
    """
    h, w = scoremap.shape
    image = (scoremap * 255).astype(np.uint8)
    while True:
        _, binary = cv2.threshold(image, int(threshold * np.max(image)), 255, cv2.THRESH_BINARY)
        if binary.max() > 0 or threshold <= 0:
            break
        threshold -= 0.1
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    mask = np.zeros((h, w), dtype=bool)
    for contour in contours:
        x0, y0, bw, bh = cv2.boundingRect(contour)
        mask[y0 : min(y0 + bh, h - 1), x0 : min(x0 + bw, w - 1)] = True
    return mask


def refine_cams(
    transition: torch.Tensor, cams: torch.Tensor, threshold: float, image_hw: Sequence[int]
) -> np.ndarray:
    """Refine patch-grid CAMs with the transition matrix inside their boxes.

    Args:
        transition: ``[n, n]`` from ``sinkhorn_transition``.
        cams: ``[T, h, w]`` Grad-CAM maps.
        threshold: the box threshold.
        image_hw: ``(H, W)`` of the original image.

    Returns:
        ``[T, H, W]`` float32 maps in [0, 1] (min-max scaled, bilinearly resized with OpenCV).
    """
    t_count, h, w = cams.shape
    H, W = int(image_hw[0]), int(image_hw[1])
    cams_np = cams.detach().cpu().float().numpy()
    boxes = np.stack([box_mask(c, threshold) for c in cams_np]).reshape(t_count, h * w)
    boxes = torch.from_numpy(boxes.astype(np.float32)).to(transition.device)
    # (T * box_j) @ cam == T @ (box * cam): the box zeroes columns of T
    masked = (boxes * cams.reshape(t_count, h * w).float()).t()  # [n, T]
    refined = (transition @ masked).t().reshape(t_count, h, w).cpu().numpy()
    out = np.empty((t_count, H, W), dtype=np.float32)
    for i, r in enumerate(refined):
        r = r - np.min(r)
        r = r / (_EPS + np.max(r))
        out[i] = cv2.resize(r, (W, H))
    return out
