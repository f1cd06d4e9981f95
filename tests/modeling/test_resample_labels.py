"""Label maps from each pixel's candidate classes (``modeling.postprocess.resample_labels``)
against the full computation: bilinear upsampling of every class, then argmax."""

import torch
from torch.nn import functional as F

import pytest
from clipdistill.modeling.postprocess import (
    bilinear_axis,
    compose_axis,
    resample,
    resample_labels,
)


def _axes(h, w, H, W):
    return bilinear_axis(h, H), bilinear_axis(w, W)


def _smooth(logits, scale=4.0):
    """Spatially correlated logits (a 5x5 box filter), as a network's are."""
    return F.avg_pool2d(F.pad(logits, (2, 2, 2, 2), mode="replicate"), 5, 1) * scale


@pytest.mark.parametrize("hw", [(8, 8, 64, 64), (9, 11, 50, 70), (5, 7, 5, 7), (6, 4, 3, 9)])
def test_tables_reproduce_f_interpolate(hw):
    """Up, down and same size: the tables are F.interpolate's (up to float rounding)."""
    h, w, H, W = hw
    x = torch.randn(2, 5, h, w) * 10
    ref = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)
    torch.testing.assert_close(resample(x, *_axes(h, w, H, W)), ref, atol=1e-4, rtol=1e-5)


def test_chained_and_cropped_tables_reproduce_two_interpolations():
    """The segmenter's upsampling: to the padded size, crop, then to the output size (detectron2's
    sem_seg_postprocess) as one table per axis."""
    x = torch.randn(1, 4, 8, 10) * 10
    padded, crop, out = (64, 80), (60, 75), (90, 47)
    ref = F.interpolate(x, size=padded, mode="bilinear", align_corners=False)[..., :60, :75]
    ref = F.interpolate(ref, size=out, mode="bilinear", align_corners=False)
    axes = [
        compose_axis(bilinear_axis(n, p).crop(c), bilinear_axis(c, o), c)
        for n, p, c, o in zip(x.shape[-2:], padded, crop, out)
    ]
    assert axes[0].weights.shape[1] == 3  # two chained bilinear steps read 3 cells per axis
    torch.testing.assert_close(axes[0].weights.sum(1), torch.ones(90))
    torch.testing.assert_close(resample(x, *axes), ref, atol=1e-4, rtol=1e-5)
    got = resample_labels(x, *axes, candidates=4)
    assert torch.equal(got, resample_labels(x, *axes, candidates=4, exact=True))


def test_constructed_cases_are_exact():
    """A clear winner per cell (so the candidates hold every pixel's winner), ties, and fewer
    classes than candidates: the labels equal F.interpolate's argmax exactly."""
    g = torch.Generator().manual_seed(0)
    k, h, w = 12, 6, 7
    winners = torch.randint(0, k, (h, w), generator=g)
    x = torch.rand(1, k, h, w, generator=g) + 5 * F.one_hot(winners, k).permute(2, 0, 1)[None]
    for candidates in (1, 2, 3):
        for H, W in ((48, 56), (37, 61)):
            ref = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False).argmax(1)
            assert torch.equal(resample_labels(x, *_axes(h, w, H, W), candidates), ref)
    # ties: the first class wins, as with argmax over every class
    tie = torch.zeros(1, 7, 4, 5)
    tie[:, 3:5] = 1.0
    assert (resample_labels(tie, *_axes(4, 5, 32, 40), 2) == 3).all()
    # K = 1 and K <= candidates (padded with classes that never win)
    one = torch.randn(1, 1, 4, 4)
    assert (resample_labels(one, *_axes(4, 4, 16, 16), 3) == 0).all()
    two = torch.randn(2, 2, 4, 4)
    ref = F.interpolate(two, size=(16, 16), mode="bilinear", align_corners=False).argmax(1)
    assert torch.equal(resample_labels(two, *_axes(4, 4, 16, 16), 3), ref)
    with pytest.raises(ValueError, match="candidates"):
        resample_labels(two, *_axes(4, 4, 16, 16), 0)


@pytest.mark.parametrize("K", [3, 40, 300])
def test_exact_mode_equals_the_full_argmax_on_random_logits(K):
    """exact=True (pixels whose best candidate does not beat the bound on every other class are
    recomputed) equals the argmax of resampling every class, even on noise logits."""
    x = torch.randn(2, K, 9, 11) * 3
    axes = _axes(9, 11, 72, 88)
    ref = resample(x, *axes).argmax(1)
    stats = {}
    got = resample_labels(x, *axes, 2, exact=True, stats=stats)
    assert torch.equal(got, ref)
    assert stats["pixels"] == ref.numel() and 0 <= stats["recomputed"] <= ref.numel()
    # budget: row chunks give the same labels
    assert torch.equal(resample_labels(x, *axes, 2, budget=1, exact=True), ref)


KS = (1, 2, 3, 4)


def test_agreement_with_the_full_argmax_on_random_logits():
    """Without exact: the fraction of identical pixels (documented in docs/BENCHMARKS.md).
    Spatially smooth logits (a network's): >= 99 % at 3 candidates, 847 classes; iid noise
    logits, the worst case, where a pixel between cells is often won by a class in no cell's
    top-k: far less, and more candidates help."""
    torch.manual_seed(0)
    axes = _axes(16, 16, 128, 128)
    smooth = _smooth(torch.randn(1, 847, 16, 16) * 3)
    ref = resample(smooth, *axes).argmax(1)
    agree = {k: (resample_labels(smooth, *axes, k) == ref).float().mean().item() for k in KS}
    print("smooth logits, 847 classes: identical pixels per candidates", agree)
    assert agree[3] >= 0.99 and agree[4] >= agree[3] > agree[1]
    noise = torch.randn(1, 150, 16, 16) * 3
    ref = resample(noise, *axes).argmax(1)
    agree = {k: (resample_labels(noise, *axes, k) == ref).float().mean().item() for k in KS}
    print("iid noise logits, 150 classes: identical pixels per candidates", agree)
    assert 0.3 < agree[1] < agree[4] < 1.0
    # every miss is a pixel whose winner is in none of its cells' top-k: exact mode fixes it
    assert torch.equal(resample_labels(noise, *axes, 4, exact=True), ref)
