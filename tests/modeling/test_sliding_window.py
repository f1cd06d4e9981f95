"""Sliding-window inference (clipdistill/modeling/maskclip/sliding_window.py) against a
transcription of SCLIP's ``forward_slide`` (the same loop in ClearCLIP and NACLIP, after mmseg)."""

import pytest
import torch
import torch.nn.functional as F

from clipdistill.modeling.maskclip.sliding_window import sliding_window_logits, window_boxes


def _fn(crops):
    """A position-dependent per-crop function (so misplaced windows show): 4 'classes'."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 3, 3, 3, generator=g, dtype=crops.dtype)
    out = F.conv2d(crops, w, padding=1)
    ramp = torch.linspace(0, 1, crops.shape[-1], dtype=crops.dtype)
    return out * (1 + ramp) + crops.shape[-2] * 0.01


def _official_forward_slide(img, fn, stride, crop_size):
    h_stride, w_stride = stride, stride
    h_crop, w_crop = crop_size, crop_size
    batch_size, _, h_img, w_img = img.shape
    out_channels = 4
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = img.new_zeros((batch_size, out_channels, h_img, w_img))
    count_mat = img.new_zeros((batch_size, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1 = h_idx * h_stride
            x1 = w_idx * w_stride
            y2 = min(y1 + h_crop, h_img)
            x2 = min(x1 + w_crop, w_img)
            y1 = max(y2 - h_crop, 0)
            x1 = max(x2 - w_crop, 0)
            crop_img = img[:, :, y1:y2, x1:x2]
            crop_seg_logit = fn(crop_img)
            preds += F.pad(
                crop_seg_logit,
                (int(x1), int(preds.shape[3] - x2), int(y1), int(preds.shape[2] - y2)),
            )
            count_mat[:, :, y1:y2, x1:x2] += 1
    assert (count_mat == 0).sum() == 0
    return preds / count_mat


@pytest.mark.parametrize(
    "h, w, window, stride",
    [
        (336, 500, 224, 112),
        (448, 597, 448, 224),
        (100, 300, 224, 112),
        (224, 224, 224, 112),
        (50, 70, 16, 7),
    ],
)
def test_matches_official_loop(h, w, window, stride):
    img = torch.randn(1, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = sliding_window_logits(img, _fn, window, stride, max_batch=3)
    torch.testing.assert_close(ours, _official_forward_slide(img, _fn, stride, window))


def test_whole_image_and_boxes():
    img = torch.randn(1, 3, 40, 60, dtype=torch.float64)
    torch.testing.assert_close(sliding_window_logits(img, _fn, 0, 0), _fn(img))
    boxes = window_boxes(336, 500, 224, 112)
    assert len(boxes) == 2 * 4 and boxes[-1] == (112, 336, 276, 500)
    with pytest.raises(ValueError, match="stride"):
        window_boxes(10, 10, 4, 0)
