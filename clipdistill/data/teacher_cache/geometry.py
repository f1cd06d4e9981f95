"""Geometry of the cache: map an augmented image back to the original image and warp the cached
dense teacher map accordingly.

Coordinates are continuous pixel coordinates: pixel ``i`` covers ``[i, i + 1)``. Every
geometric transform the training mapper uses (resize, crop, flip, pad) is an axis-aligned affine
map, so the whole augmentation chain collapses to ``x_orig = ax * x_out + bx`` and
``y_orig = ay * y_out + by``; a flip gives a negative ``ax`` (or ``ay``).
"""

from typing import Iterable, Tuple

import torch
from torch.nn import functional as F

from detectron2.data import transforms as T
from detectron2.projects.point_rend import ColorAugSSDTransform
from fvcore.transforms import transform as FT

__all__ = ["Affine", "transforms_to_affine", "sample_dense", "dense_grid_size"]

#: ``(ax, bx, ay, by)``: output (augmented) coordinates -> original image coordinates.
Affine = Tuple[float, float, float, float]

IDENTITY: Affine = (1.0, 0.0, 1.0, 0.0)


def _inverse_of(t) -> Affine:
    """The inverse of one transform as ``(px, qx, py, qy)``: ``x_in = px * x_out + qx``."""
    if isinstance(t, (FT.NoOpTransform, ColorAugSSDTransform)):  # ColorAugSSD: photometric only
        return IDENTITY
    if isinstance(t, (T.ResizeTransform, FT.ScaleTransform)):
        return (t.w / t.new_w, 0.0, t.h / t.new_h, 0.0)
    if isinstance(t, FT.CropTransform):
        return (1.0, float(t.x0), 1.0, float(t.y0))
    if isinstance(t, FT.HFlipTransform):
        return (-1.0, float(t.width), 1.0, 0.0)
    if isinstance(t, FT.VFlipTransform):
        return (1.0, 0.0, -1.0, float(t.height))
    if isinstance(t, FT.PadTransform):
        return (1.0, -float(t.x0), 1.0, -float(t.y0))
    raise NotImplementedError(
        f"The teacher-output cache cannot follow the augmentation {type(t).__name__}: only "
        "resize, crop, flip and pad are supported (axis-aligned affine maps). Disable "
        "MODEL.CLIPDISTILL.TEACHER_CACHE.ENABLED or remove that augmentation."
    )


def transforms_to_affine(transforms: Iterable) -> Affine:
    """Collapse a detectron2 ``TransformList`` (or a list of transforms, in the order they were
    applied) into the affine map from augmented-image to original-image coordinates."""
    if isinstance(transforms, FT.TransformList):
        transforms = transforms.transforms
    ax, bx, ay, by = IDENTITY
    for t in reversed(list(transforms)):
        if isinstance(t, FT.TransformList):
            sub = transforms_to_affine(t)
            px, qx, py, qy = sub
        else:
            px, qx, py, qy = _inverse_of(t)
        ax, bx = px * ax, px * bx + qx
        ay, by = py * ay, py * by + qy
    return (ax, bx, ay, by)


def dense_grid_size(height: int, width: int, short_side: int, patch: int) -> Tuple[int, int]:
    """Grid ``(gh, gw)`` of the cached dense map of a ``height x width`` image: the image is
    resized so that its shorter side is ``short_side`` (aspect kept), sides rounded to patches."""
    scale = short_side / min(height, width)
    return (
        max(1, int(round(height * scale / patch))),
        max(1, int(round(width * scale / patch))),
    )


def sample_dense(
    dense: torch.Tensor,
    orig_hw: Tuple[int, int],
    affine: Affine,
    out_hw: Tuple[int, int],
    out_grid: Tuple[int, int],
) -> torch.Tensor:
    """Warp a cached dense map of the original image onto the augmented image.

    Args:
        dense: ``[C, gh, gw]`` cached features; cell ``(i, j)`` covers the original pixels
            ``[i * H0 / gh, (i + 1) * H0 / gh) x [j * W0 / gw, (j + 1) * W0 / gw)``.
        orig_hw: ``(H0, W0)`` size of the original image.
        affine: augmented -> original coordinates (``transforms_to_affine``).
        out_hw: ``(H1, W1)`` size of the augmented image.
        out_grid: ``(oh, ow)`` output grid; output cell ``(u, v)`` is sampled (bilinearly, in
            feature coordinates) at the centre of the augmented image's cell ``(u, v)``.

    Returns:
        ``[C, oh, ow]`` float32, L2-normalised per location (like the online teacher). A cell
        centre that falls exactly on a cached cell centre returns that cell (up to the
        re-normalisation), so a crop aligned with the cached grid is an exact crop of it.
    """
    ax, bx, ay, by = affine
    h0, w0 = orig_hw
    h1, w1 = out_hw
    oh, ow = out_grid
    dev = dense.device
    xs = (torch.arange(ow, device=dev, dtype=torch.float64) + 0.5) * (w1 / ow)
    ys = (torch.arange(oh, device=dev, dtype=torch.float64) + 0.5) * (h1 / oh)
    xn = 2.0 * (ax * xs + bx) / w0 - 1.0
    yn = 2.0 * (ay * ys + by) / h0 - 1.0
    grid = torch.stack(torch.meshgrid(yn, xn, indexing="ij")[::-1], dim=-1)  # [oh, ow, (x, y)]
    out = F.grid_sample(
        dense[None].float(),
        grid[None].float(),
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )[0]
    return F.normalize(out, dim=0)
