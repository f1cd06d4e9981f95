"""Sliding-window inference: per-class logits of a large image from overlapping square windows.

The window grid is mmsegmentation's ``slide_inference`` (also SCLIP's, ClearCLIP's and NACLIP's
``forward_slide``): ``n = ceil((size - window) / stride) + 1`` windows per axis, starting at
``i * stride``, the last ones shifted back so that they end at the border; a window never leaves
the image (an image smaller than the window gives one window of the image's own size). Logits
of overlapping windows are averaged.
"""

from typing import Callable, List, Tuple

import torch

__all__ = ["window_boxes", "sliding_window_logits"]


def _starts(size: int, window: int, stride: int) -> List[Tuple[int, int]]:
    n = max(size - window + stride - 1, 0) // stride + 1
    spans = []
    for i in range(n):
        end = min(i * stride + window, size)
        spans.append((max(end - window, 0), end))
    return spans


def window_boxes(height: int, width: int, window: int, stride: int) -> List[Tuple[int, ...]]:
    """``(y1, y2, x1, x2)`` of every window, row-major; ``window <= 0``: the whole image.

    Raises:
        ValueError: ``window > 0`` with ``stride <= 0``.
    """
    if window <= 0:
        return [(0, height, 0, width)]
    if stride <= 0:
        raise ValueError(f"sliding-window stride must be positive, got {stride}")
    return [
        (y1, y2, x1, x2)
        for y1, y2 in _starts(height, window, stride)
        for x1, x2 in _starts(width, window, stride)
    ]


def sliding_window_logits(
    image: torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor],
    window: int,
    stride: int,
    max_batch: int = 16,
) -> torch.Tensor:
    """Logits of ``image`` ``[1, 3, H, W]`` averaged over sliding windows.

    Args:
        image: one (normalised) image, batch of 1.
        fn: ``crops [n, 3, h, w] -> logits [n, K, h, w]`` at the crops' own resolution (all
            crops of one image have the same size).
        window: window side in pixels; ``<= 0`` runs ``fn`` once on the whole image.
        stride: step between windows in pixels.
        max_batch: windows per call of ``fn``.

    Returns:
        ``[1, K, H, W]``.
    """
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"sliding_window_logits takes one image [1, 3, H, W], got {image.shape}")
    h, w = image.shape[-2:]
    boxes = window_boxes(h, w, window, stride)
    if len(boxes) == 1 and boxes[0] == (0, h, 0, w):
        return fn(image)
    out = count = None
    for i in range(0, len(boxes), max_batch):
        chunk = boxes[i : i + max_batch]
        crops = torch.cat([image[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])
        logits = fn(crops)
        if out is None:
            out = logits.new_zeros((1, logits.shape[1], h, w))
            count = logits.new_zeros((1, 1, h, w))
        for (y1, y2, x1, x2), lg in zip(chunk, logits):
            out[0, :, y1:y2, x1:x2] += lg
            count[0, :, y1:y2, x1:x2] += 1
    return out / count
