"""CaR's stages against hand-computed cases: Grad-CAM of a linear block, the Sinkhorn transition,
the CLIP-ES boxes, every visual prompt's pixels, the DenseCRF mask encoding and label painting."""

import cv2
import numpy as np
import pytest
import torch
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

from clipdistill.modeling.car.cam import box_mask, grad_cam, refine_cams, sinkhorn_transition
from clipdistill.modeling.car.crf import crf_image, dense_crf_masks
from clipdistill.modeling.car.prompts import apply_visual_prompts, check_visual_prompts
from clipdistill.modeling.car.recurrence import paint_labels

RED = np.array([255, 0, 0], np.uint8)


# ------------------------------------------------------------------------- Grad-CAM
class _LinearVisual(nn.Module):
    """A one-block 'ViT' whose last block is linear in ln_1's output: q = k = 0 (uniform
    attention), v = identity, out_proj = M, MLP zero; ln_post = identity; proj = P."""

    def __init__(self, width=8, out=4, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        block = ResidualAttentionBlock(width, 1)
        with torch.no_grad():
            w = torch.zeros(3 * width, width)
            w[2 * width :] = torch.eye(width)
            block.attn.in_proj_weight.copy_(w)
            block.attn.in_proj_bias.zero_()
            block.attn.out_proj.weight.copy_(torch.randn(width, width, generator=g))
            block.attn.out_proj.bias.zero_()
            block.mlp.c_proj.weight.zero_()
            block.mlp.c_proj.bias.zero_()
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList([block])
        self.ln_post = nn.Identity()
        self.proj = nn.Parameter(torch.randn(width, out, generator=g))
        self.M = block.attn.out_proj.weight.detach().clone()


def test_grad_cam_of_a_linear_block_matches_the_hand_derivation():
    torch.manual_seed(0)
    visual = _LinearVisual()
    h, w, width = 2, 3, 8
    x = torch.randn(1, 1 + h * w, width)
    text = torch.randn(5, 4)  # 3 foreground + 2 background texts
    scale = torch.tensor(2.0)  # log logit scale
    cams = grad_cam(visual, x, (h, w), text, [0, 2], scale, batch_size=1)

    # hand derivation: out_i = x_i + M @ mean_j(y_j) for every token i (uniform attention), so
    # f = mean_p(x_p) + M mean_j(y_j), f @ P -> normalise -> logits -> softmax; the gradient of
    # prob_k wrt every token y_j is (1/L) M^T P g_k with g_k = d prob_k / d (f @ P) via autograd
    # on the small head only.
    y = torch.nn.functional.layer_norm(x, (width,))
    L = x.shape[1]
    f0 = (x[0, 1:].mean(0) + visual.M @ y[0].mean(0)).detach()
    t = text / text.norm(dim=1, keepdim=True)
    expected = []
    for k in (0, 2):
        e = (f0 @ visual.proj).detach().requires_grad_(True)
        prob = torch.softmax(scale.exp() * (e / e.norm()) @ t.t(), dim=-1)[k]
        (g_e,) = torch.autograd.grad(prob, e)
        grad_token = (visual.M.t() @ (visual.proj.detach() @ g_e)) / L  # the same for all tokens
        cam = (y[0, 1:] @ grad_token).clamp_min(0).view(h, w)
        cam = cam - cam.min()
        cam = cam / (1e-15 + cam.max())
        expected.append(cam)
    torch.testing.assert_close(cams, torch.stack(expected), atol=1e-5, rtol=1e-4)
    # batching over texts gives the same maps
    torch.testing.assert_close(
        grad_cam(visual, x, (h, w), text, [0, 2], scale, batch_size=8), cams, atol=1e-6, rtol=0
    )


# ------------------------------------------------------------------------- CLIP-ES refinement
def _maps(mats):
    """[n, n] patch affinities -> [1, 1 + n, 1 + n] attention maps with a class token."""
    out = []
    for m in mats:
        n = m.shape[0]
        full = torch.full((1, n + 1, n + 1), 7.0)  # class-token row/column: must be ignored
        full[0, 1:, 1:] = m
        out.append(full)
    return out


def test_sinkhorn_of_a_rank_one_matrix_is_uniform():
    u, v = torch.tensor([1.0, 2.0, 5.0]), torch.tensor([3.0, 1.0, 0.5])
    t = sinkhorn_transition(_maps([torch.outer(u, v)]))
    # column-normalising u v^T gives u_i / sum(u) in every column; row-normalising: 1/n
    torch.testing.assert_close(t, torch.full((3, 3), 1 / 3))


def test_sinkhorn_keeps_a_symmetric_doubly_stochastic_matrix_and_squares_it():
    a = torch.tensor([[0.5, 0.3, 0.2], [0.3, 0.4, 0.3], [0.2, 0.3, 0.5]])
    torch.testing.assert_close(sinkhorn_transition(_maps([a])), a @ a)


def test_sinkhorn_averages_only_the_last_layers():
    a = torch.tensor([[0.5, 0.3, 0.2], [0.3, 0.4, 0.3], [0.2, 0.3, 0.5]])
    junk = torch.rand(3, 3) + 0.1
    # the oldest map falls outside the last 2; the mean of two copies of `a` is `a`
    torch.testing.assert_close(sinkhorn_transition(_maps([junk, a, a]), num_layers=2), a @ a)


def test_box_mask_thresholds_and_clips_at_the_border():
    s = np.zeros((6, 7), np.float32)
    s[1:3, 2:5] = 1.0
    s[4, 1] = 0.3  # below 0.4 * max: no box
    m = box_mask(s, 0.4)
    expected = np.zeros_like(m)
    expected[1:3, 2:5] = True
    np.testing.assert_array_equal(m, expected)
    s2 = np.zeros((6, 7), np.float32)
    s2[2:6, 4:7] = 1.0  # touches the bottom and right border: last row/column lost
    expected2 = np.zeros((6, 7), bool)
    expected2[2:5, 4:6] = True
    np.testing.assert_array_equal(box_mask(s2, 0.4), expected2)
    assert not box_mask(np.zeros((4, 4), np.float32), 0.4).any()


def test_refine_uses_only_columns_inside_the_box():
    h, w = 2, 3
    n = h * w
    t = torch.rand(n, n) + 0.1
    cam = torch.zeros(1, h, w)
    cam[0, 0, 0], cam[0, 0, 1] = 1.0, 0.6
    out = refine_cams(t, cam, 0.4, (h, w))  # same size: no resize
    box = torch.zeros(n)
    box[[0, 1]] = 1.0  # the region {(0,0),(0,1)}: its bounding box, not clipped
    r = t @ (box * cam.reshape(n))
    r = (r - r.min()) / (1e-15 + (r - r.min()).max())
    np.testing.assert_allclose(out[0], r.reshape(h, w).numpy(), atol=1e-6)


# ------------------------------------------------------------------------- visual prompts
@pytest.fixture(scope="module")
def image_and_mask():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)
    mask = np.zeros((24, 30), bool)
    mask[4:12, 6:16] = True  # rows 4..11, cols 6..15
    return image, mask


def test_blur_gray_black_outside_the_mask_only(image_and_mask):
    image, mask = image_and_mask
    out = apply_visual_prompts(image, mask, ["blur"])
    np.testing.assert_array_equal(out[mask], image[mask])
    np.testing.assert_array_equal(out[~mask], cv2.GaussianBlur(image, (15, 15), 0)[~mask])

    out = apply_visual_prompts(image, mask, ["gray"])
    np.testing.assert_array_equal(out[mask], image[mask])
    # official: COLOR_BGR2GRAY on RGB data, i.e. 0.114 R + 0.587 G + 0.299 B
    r, g, b = (image[..., i].astype(float) for i in range(3))
    swapped = 0.114 * r + 0.587 * g + 0.299 * b
    assert np.abs(out[..., 0].astype(float) - swapped)[~mask].max() <= 1
    assert (out[~mask] == out[~mask][:, :1]).all()  # three equal channels outside
    fixed = apply_visual_prompts(image, mask, ["gray"], gray_code=cv2.COLOR_RGB2GRAY)
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    assert np.abs(fixed[..., 0].astype(float) - luma)[~mask].max() <= 1

    out = apply_visual_prompts(image, mask, ["black"])
    np.testing.assert_array_equal(out[mask], image[mask])
    assert (out[~mask] == 0).all()


def test_circle_and_rectangle_geometry(image_and_mask):
    image, mask = image_and_mask
    flat = np.full_like(image, 40)
    # centre: int(mean row) = int(7.5) = 7, int(mean col) = int(10.5) = 10; size 8 x 10
    cy, cx, half_h, half_w = 7, 10, 4, 5
    out = apply_visual_prompts(flat, mask, ["circle"])
    changed = (out != flat).any(-1)
    for y, x in ((cy, cx + half_w), (cy, cx - half_w), (cy + half_h, cx), (cy - half_h, cx)):
        np.testing.assert_array_equal(out[y, x], RED)  # the ellipse's four extreme points
    assert not changed[cy, cx] and (out[changed] == RED).all()
    assert not changed[:, : cx - half_w].any() and not changed[:, cx + half_w + 1 :].any()

    out = apply_visual_prompts(flat, mask, ["rectangle"])
    changed = (out != flat).any(-1)
    ys, xs = np.nonzero(changed)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (cy - half_h, cy + half_h, cx - half_w,
                                                        cx + half_w)  # fmt: skip
    assert changed[cy - half_h, cx - half_w : cx + half_w + 1].all()  # top edge drawn
    assert not changed[cy, cx]


def test_contour_follows_the_filled_mask(image_and_mask):
    image, mask = image_and_mask
    flat = np.full_like(image, 40)
    holed = mask.copy()
    holed[7:9, 9:12] = False  # a hole: filled before drawing, so no inner contour
    out = apply_visual_prompts(flat, holed, ["contour"])
    changed = (out != flat).any(-1)
    border = mask & ~cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    np.testing.assert_array_equal(changed, border)
    assert (out[changed] == RED).all()


def test_prompts_are_applied_in_a_fixed_order(image_and_mask):
    image, mask = image_and_mask
    a = apply_visual_prompts(image, mask, check_visual_prompts(["circle", "blur"], "k"))
    b = apply_visual_prompts(image, mask, check_visual_prompts(["blur", "circle"], "k"))
    np.testing.assert_array_equal(a, b)
    # blur is applied before the circle is drawn: the red ring is not blurred
    assert (a == RED).all(-1).sum() > 0
    with pytest.raises(ValueError, match="MODEL.CAR.VISUAL_PROMPTS.*'glow'"):
        check_visual_prompts(["glow"], "MODEL.CAR.VISUAL_PROMPTS")


# ------------------------------------------------------------------------- CRF and painting
def test_crf_image_official_and_rgb():
    image = np.array([[[200, 150, 250]]], np.uint8)
    np.testing.assert_array_equal(crf_image(image, official=False), image)
    # official: BGR (250, 150, 200) minus (104.008, 116.669, 122.675), truncated to uint8
    np.testing.assert_array_equal(crf_image(image, official=True)[0, 0], [145, 33, 77])


def test_crf_one_hot_drops_trailing_masks_unless_kept():
    h, w = 12, 12
    image = np.full((h, w, 3), 128, np.uint8)
    cams = np.zeros((3, h, w), np.float32)
    cams[0, :, :6] = 0.95  # mask 1 wins the left half
    cams[1, :, 6:] = 0.95  # mask 2 the right half; mask 3 (all zero) never wins a pixel
    official = dense_crf_masks(image, cams)
    assert official.shape == (2, h, w)  # one_hot without num_classes: the trailing mask is gone
    assert official[0][:, :6].all() and official[1][:, 6:].all()
    kept = dense_crf_masks(image, cams, keep_all_masks=True)
    assert kept.shape == (3, h, w) and not kept[2].any()
    np.testing.assert_array_equal(kept[:2], official)


def test_painting_order_highest_score_wins():
    label = np.zeros((2, 3), np.int64)
    masks = np.zeros((3, 2, 3), np.float32)
    masks[0, :, :2] = 1  # score 0.7, class 4
    masks[1, :, 1:] = 1  # score 0.9, class 7 -> wins the overlap column 1
    masks[2] = 1  # score 0: never painted
    paint_labels(label, masks, np.array([0.7, 0.9, 0.0]), [4, 7, 9])
    np.testing.assert_array_equal(label, [[5, 8, 8], [5, 8, 8]])
