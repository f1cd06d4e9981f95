"""CaR's visual prompts: draw a binary mask onto the image before classifying it with CLIP.

Each prompt acts on an RGB uint8 image ``[H, W, 3]`` and a binary mask ``[H, W]``:

==========  ===================================================================================
blur        outside the mask: Gaussian blur, 15x15 kernel, sigma from the kernel size (OpenCV)
gray        outside the mask: grey level (``cv2.COLOR_BGR2GRAY`` on the RGB data, as the
            official code, i.e. the blue weight applied to red; ``gray_code`` can correct it)
black       outside the mask: 0
circle      a red ellipse, 1 px, centred on the mask's mean pixel (truncated to int), axes half
            the mask's bounding-box width and height (integer halves)
rectangle   a red rectangle, 1 px, centre +- half the bounding-box size
contour     the red 1-px contours of the mask with its holes filled
==========  ===================================================================================

They are applied in that fixed order, whatever order the configuration lists them in (the
official code tests membership in the list in this order).
"""

from typing import Sequence

import cv2
import numpy as np
from scipy.ndimage import binary_fill_holes

__all__ = ["VISUAL_PROMPTS", "check_visual_prompts", "apply_visual_prompts"]

#: every visual prompt, in the order in which they are applied
VISUAL_PROMPTS = ("blur", "gray", "black", "circle", "rectangle", "contour")

_RED = (255, 0, 0)  # red in RGB
_THICKNESS = 1
_BLUR_KERNEL = (15, 15)


def check_visual_prompts(names: Sequence[str], key: str) -> tuple:
    """Validate a list of prompt names; returns them in application order."""
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in VISUAL_PROMPTS]
    if unknown:
        raise ValueError(
            f"{key}: unknown visual prompt(s) {unknown}; choose from {VISUAL_PROMPTS}."
        )
    if not names:
        raise ValueError(f"{key} is empty; give at least one of {VISUAL_PROMPTS}.")
    return tuple(n for n in VISUAL_PROMPTS if n in names)


def _center_and_size(mask: np.ndarray):
    rows, cols = np.nonzero(mask)
    cy, cx = int(np.mean(rows)), int(np.mean(cols))
    height = int(rows.max() - rows.min() + 1)
    width = int(cols.max() - cols.min() + 1)
    return cx, cy, width, height


def apply_visual_prompts(
    image: np.ndarray,
    mask: np.ndarray,
    prompts: Sequence[str],
    gray_code: int = cv2.COLOR_BGR2GRAY,
) -> np.ndarray:
    """Draw ``prompts`` for ``mask`` on a copy of ``image``.

    Args:
        image: ``[H, W, 3]`` uint8 RGB.
        mask: ``[H, W]`` bool or 0/1 (empty: no circle or rectangle is drawn).
        prompts: names from ``VISUAL_PROMPTS`` (applied in that order).
        gray_code: the OpenCV conversion used by ``gray`` (``cv2.COLOR_RGB2GRAY`` for true luma).

    Returns:
        ``[H, W, 3]`` uint8 RGB.
    """
    inside = np.asarray(mask).astype(bool)
    out = np.ascontiguousarray(image).copy()
    keep = inside[:, :, None]
    if "blur" in prompts:
        out = np.where(keep, out, cv2.GaussianBlur(out, _BLUR_KERNEL, 0))
    if "gray" in prompts:
        gray = cv2.cvtColor(out, gray_code)
        out = np.where(keep, out, gray[:, :, None])
    if "black" in prompts:
        out = np.where(keep, out, 0).astype(np.uint8)
    out = np.ascontiguousarray(out)
    # an empty mask has no centre: the shapes are skipped (the official code stops with an error
    # when a proposal sums to more than 1 but no pixel passes MASK_THRESHOLD)
    if ("circle" in prompts or "rectangle" in prompts) and inside.any():
        cx, cy, width, height = _center_and_size(inside)
        if "circle" in prompts:
            cv2.ellipse(out, (cx, cy), (width // 2, height // 2), 0, 0, 360, _RED, _THICKNESS)
        if "rectangle" in prompts:
            start = (cx - width // 2, cy - height // 2)
            end = (cx + width // 2, cy + height // 2)
            cv2.rectangle(out, start, end, _RED, _THICKNESS)
    if "contour" in prompts:
        filled = binary_fill_holes(inside).astype(np.uint8)
        contours, _ = cv2.findContours(filled, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, _RED, _THICKNESS)
    return out
