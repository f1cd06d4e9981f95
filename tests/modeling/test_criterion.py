"""The shared Hungarian matcher and set criterion against hand-computed cases."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from clipdistill.modeling.criterion import (
    HungarianMatcher,
    SetCriterion,
    batch_dice_cost,
    batch_sigmoid_bce_cost,
    batch_sigmoid_focal_cost,
    masks_from_sem_seg,
)


def _bce(x, t):
    """-[t log s(x) + (1 - t) log(1 - s(x))], written out."""
    s = 1 / (1 + math.exp(-x))
    return -(t * math.log(s) + (1 - t) * math.log(1 - s))


def test_pairwise_costs_equal_per_pair_formulas():
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(3, 5, generator=g)
    targets = (torch.rand(2, 5, generator=g) > 0.5).float()
    bce, dice = batch_sigmoid_bce_cost(inputs, targets), batch_dice_cost(inputs, targets)
    focal = batch_sigmoid_focal_cost(inputs, targets, alpha=0.25, gamma=2.0)
    for i, j in itertools.product(range(3), range(2)):
        x, t = inputs[i].tolist(), targets[j].tolist()
        s = [1 / (1 + math.exp(-v)) for v in x]
        assert bce[i, j].item() == pytest.approx(sum(map(_bce, x, t)) / 5, rel=1e-5)
        inter = sum(a * b for a, b in zip(s, t))
        assert dice[i, j].item() == pytest.approx(
            1 - (2 * inter + 1) / (sum(s) + sum(t) + 1), rel=1e-5
        )
        fl = 0.0
        for v, p, y in zip(x, s, t):
            p_t = p if y else 1 - p
            fl += (0.25 if y else 0.75) * (1 - p_t) ** 2 * _bce(v, y)
        assert focal[i, j].item() == pytest.approx(fl / 5, rel=1e-5)


def _square_masks(size=8):
    """Three disjoint target regions: left, top-right, bottom-right."""
    m = torch.zeros(3, size, size)
    m[0, :, : size // 2] = 1
    m[1, : size // 2, size // 2 :] = 1
    m[2, size // 2 :, size // 2 :] = 1
    return m


@pytest.mark.parametrize("num_points", [0, 4096])
def test_matcher_finds_the_planted_assignment(num_points):
    torch.manual_seed(0)
    tgt = _square_masks()
    # query q predicts region perm[q] (strong logits) with the right class; query 3 predicts nothing
    perm = [2, 0, 1]
    labels = torch.tensor([4, 1, 3])
    masks = torch.full((4, 8, 8), -6.0)
    logits = torch.zeros(4, 6)
    logits[3, -1] = 8.0
    for q, t in enumerate(perm):
        masks[q][tgt[t] > 0] = 6.0
        logits[q, labels[t]] = 8.0
    matcher = HungarianMatcher(cost_class=2, cost_mask=5, cost_dice=5, num_points=num_points)
    out = {"pred_logits": logits[None], "pred_masks": masks[None]}
    [(rows, cols)] = matcher(out, [{"labels": labels, "masks": tgt}])
    assert rows.tolist() == [0, 1, 2]
    assert cols.tolist() == perm


def test_matcher_minimises_the_total_cost():
    g = torch.Generator().manual_seed(3)
    logits, masks = torch.randn(1, 4, 5, generator=g), torch.randn(1, 4, 6, 6, generator=g)
    labels = torch.tensor([0, 3, 2])
    tgt = (torch.rand(3, 12, 12, generator=g) > 0.5).float()
    matcher = HungarianMatcher(cost_class=2, cost_mask=5, cost_dice=5, num_points=0)
    cost = matcher.cost_matrix(logits[0], masks[0], labels, tgt)
    # by hand: class cost -p[label], mask costs on the 6x6 grid with nearest-resized targets
    small = F.interpolate(tgt[:, None], size=(6, 6), mode="nearest")[:, 0].flatten(1)
    expected = (
        -logits[0].softmax(-1)[:, labels] * 2
        + 5 * batch_sigmoid_bce_cost(masks[0].flatten(1), small)
        + 5 * batch_dice_cost(masks[0].flatten(1), small)
    )
    torch.testing.assert_close(cost, expected)
    [(rows, cols)] = matcher(
        {"pred_logits": logits, "pred_masks": masks}, [{"labels": labels, "masks": tgt}]
    )
    best = min(
        sum(cost[q, t].item() for q, t in zip(qs, range(3)))
        for qs in itertools.permutations(range(4), 3)
    )
    assert sum(cost[r, c].item() for r, c in zip(rows, cols)) == pytest.approx(best)


def test_matcher_empty_target_and_bad_options():
    m = HungarianMatcher(num_points=16)
    out = {"pred_logits": torch.randn(1, 3, 4), "pred_masks": torch.randn(1, 3, 4, 4)}
    [(rows, cols)] = m(
        out, [{"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 8, 8)}]
    )
    assert rows.numel() == cols.numel() == 0
    with pytest.raises(ValueError, match="mask_loss"):
        HungarianMatcher(mask_loss="l2")
    with pytest.raises(ValueError, match="all 0"):
        HungarianMatcher(0, 0, 0)


class _FixedMatcher(torch.nn.Module):
    def __init__(self, indices):
        super().__init__()
        self.indices = indices

    def forward(self, outputs, targets):
        return self.indices


def test_loss_ce_is_the_weighted_cross_entropy_by_hand():
    logits = torch.tensor([[[2.0, 0.0, 1.0, 0.5], [0.1, 1.5, -1.0, 0.0], [0.0, 0.0, 0.0, 3.0]]])
    # query 1 -> class 1, query 0 -> class 2; query 2 unmatched -> no object (index 3, weight 0.1)
    matcher = _FixedMatcher([(torch.tensor([0, 1]), torch.tensor([1, 0]))])
    crit = SetCriterion(3, matcher, {"loss_ce": 1.0}, eos_coef=0.1, losses=("labels",))
    targets = [{"labels": torch.tensor([1, 2]), "masks": torch.zeros(2, 4, 4)}]
    loss = crit({"pred_logits": logits, "pred_masks": torch.zeros(1, 3, 4, 4)}, targets)["loss_ce"]
    nll = [-torch.log_softmax(logits[0, q], -1)[c].item() for q, c in ((0, 2), (1, 1), (2, 3))]
    w = [1.0, 1.0, 0.1]
    assert loss.item() == pytest.approx(sum(a * b for a, b in zip(w, nll)) / sum(w), rel=1e-6)
    assert crit.state_dict()["empty_weight"].tolist() == pytest.approx([1, 1, 1, 0.1])


def test_mask_losses_of_constant_predictions_by_hand():
    # full-mask mode: a constant logit c over a full target (all ones), upsampled to 10x10
    c = 0.7
    src = torch.full((1, 2, 5, 5), c)
    targets = [{"labels": torch.tensor([0]), "masks": torch.ones(1, 10, 10)}]
    matcher = _FixedMatcher([(torch.tensor([1]), torch.tensor([0]))])
    crit = SetCriterion(2, matcher, {}, 0.1, losses=("masks",), num_points=0)
    out = crit({"pred_logits": torch.zeros(1, 2, 3), "pred_masks": src}, targets)
    s, n = 1 / (1 + math.exp(-c)), 100
    assert out["loss_mask"].item() == pytest.approx(_bce(c, 1), rel=1e-5)
    assert out["loss_dice"].item() == pytest.approx(1 - (2 * s * n + 1) / (s * n + n + 1), rel=1e-5)
    crit_f = SetCriterion(2, matcher, {}, 0.1, losses=("masks",), num_points=0, mask_loss="focal")
    focal = crit_f({"pred_logits": torch.zeros(1, 2, 3), "pred_masks": src}, targets)["loss_mask"]
    assert focal.item() == pytest.approx(0.25 * (1 - s) ** 2 * _bce(c, 1), rel=1e-5)
    # point mode: with logit 0 the BCE is log 2 at any point, whatever the sampled target value
    crit_p = SetCriterion(2, matcher, {}, 0.1, losses=("masks",), num_points=500)
    zero = torch.zeros(1, 2, 5, 5)
    out = crit_p({"pred_logits": torch.zeros(1, 2, 3), "pred_masks": zero}, targets)
    assert out["loss_mask"].item() == pytest.approx(math.log(2), rel=1e-6)
    assert 0 < out["loss_dice"].item() < 1


def test_deep_supervision_names_weights_and_normaliser():
    torch.manual_seed(0)
    tgt = _square_masks()
    targets = [
        {"labels": torch.tensor([0, 1, 2]), "masks": tgt},
        {"labels": torch.tensor([1]), "masks": tgt[:1]},
    ]
    final = {"pred_logits": torch.randn(2, 5, 4), "pred_masks": torch.randn(2, 5, 4, 4)}
    out = dict(final, aux_outputs=[dict(final), dict(final)])
    weights = {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0, "loss_ce_0": 2.0}
    crit = SetCriterion(3, HungarianMatcher(2, 5, 5, num_points=0), weights, 0.1, num_points=0)
    losses = crit(out, targets)
    names = {"loss_ce", "loss_mask", "loss_dice"}
    assert set(losses) == names | {f"{k}_{i}" for k in names for i in (0, 1)}
    # the auxiliary outputs equal the final one: same losses
    assert losses["loss_dice_1"].item() == pytest.approx(losses["loss_dice"].item())
    weighted = crit.weighted(losses)
    assert set(weighted) == set(weights)
    assert weighted["loss_ce_0"].item() == pytest.approx(2 * losses["loss_ce_0"].item())
    # dice by hand: matched pairs, predictions upsampled to 8x8, summed, / 4 target masks
    total = 0.0
    for b, (rows, cols) in enumerate(crit.matcher(final, targets)):
        for q, t in zip(rows.tolist(), cols.tolist()):
            up = F.interpolate(final["pred_masks"][b, q][None, None], size=(8, 8), mode="bilinear")
            p, y = up.sigmoid().flatten(), targets[b]["masks"][t].flatten()
            total += 1 - (2 * (p * y).sum().item() + 1) / (p.sum().item() + y.sum().item() + 1)
    assert losses["loss_dice"].item() == pytest.approx(total / 4, rel=1e-5)


def test_no_target_in_batch_gives_zero_mask_losses_with_gradient():
    crit = SetCriterion(2, HungarianMatcher(num_points=16), {}, 0.1, num_points=16)
    masks = torch.randn(1, 3, 4, 4, requires_grad=True)
    out = crit(
        {"pred_logits": torch.randn(1, 3, 3), "pred_masks": masks},
        [{"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 8, 8)}],
    )
    assert out["loss_mask"].item() == 0 and out["loss_dice"].item() == 0
    (out["loss_mask"] + out["loss_ce"]).backward()
    assert masks.grad is not None


def test_targets_from_a_label_map():
    sem = torch.tensor([[3, 3, 255], [0, 3, 0]])
    t = masks_from_sem_seg(sem, 255, size=(3, 4))
    assert t["labels"].tolist() == [0, 3]
    expected = torch.zeros(2, 3, 4, dtype=torch.bool)
    expected[0, 1, 0] = expected[0, 1, 2] = True
    expected[1, 0, :2] = expected[1, 1, 1] = True
    assert torch.equal(t["masks"], expected)
    with pytest.raises(ValueError, match="smaller"):
        masks_from_sem_seg(sem, 255, size=(1, 4))
