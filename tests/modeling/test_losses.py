"""Losses against values computed by hand on small tensors."""

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn import functional as F

from clipdistill.modeling.segstudent import losses as L


def test_info_nce_closed_form():
    # identity similarities: each row's CE = log(1 + (n-1) e^{-1/t})
    a = torch.eye(3)
    for t in (1.0, 0.5):
        expected = math.log(1 + 2 * math.exp(-1 / t))
        assert L.info_nce(a, a.clone(), t).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_is_symmetric_average():
    torch.manual_seed(0)
    a = F.normalize(torch.randn(4, 8), dim=1)
    b = F.normalize(torch.randn(4, 8), dim=1)
    t = 0.1
    s = a @ b.t() / t
    manual = 0.0
    for i in range(4):
        manual += -(s[i, i] - torch.logsumexp(s[i], 0)) / 8  # a -> b rows
        manual += -(s[i, i] - torch.logsumexp(s[:, i], 0)) / 8  # b -> a columns
    assert L.info_nce(a, b, t).item() == pytest.approx(manual.item(), rel=1e-5)


def test_info_nce_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        L.info_nce(torch.zeros(2, 3), torch.zeros(3, 3), 0.1)


def test_attention_pool_by_hand():
    f = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # [B=1, C=2, L=2]: l0=(1,0), l1=(0,1)
    cg = torch.tensor([[1.0, 0.0]])
    w0, w1 = math.e / (math.e + 1), 1 / (math.e + 1)  # softmax([1, 0])
    n = math.hypot(w0, w1)
    out = L.attention_pool(f, cg, attn_temperature=1.0)
    assert out[0].tolist() == pytest.approx([w0 / n, w1 / n], rel=1e-6)
    # a masked location gets no weight
    out = L.attention_pool(f, cg, 1.0, mask=torch.tensor([[False, True]]))
    assert out[0].tolist() == pytest.approx([0.0, 1.0], abs=1e-7)


def test_global_loss_masked_mean():
    # image 0: valid location points at e0, padding at e1; with the mask, pooled == e0 exactly
    f = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 1.0]]])
    cg = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mask = torch.tensor([[True, False], [True, True]])
    expected = math.log(1 + math.exp(-1 / 0.5))
    assert L.global_loss(f, cg, 0.5, mask).item() == pytest.approx(expected, rel=1e-6)
    # without the mask image 0 pools to (1,1)/sqrt2 and the loss changes
    assert L.global_loss(f, cg, 0.5).item() != pytest.approx(expected, rel=1e-3)


def test_local_loss_equals_info_nce_of_pooled():
    torch.manual_seed(1)
    f = F.normalize(torch.randn(3, 4, 5), dim=1)
    cg = F.normalize(torch.randn(3, 4), dim=1)
    pooled = L.attention_pool(f, cg, 0.2)
    assert L.local_loss(f, cg, 0.07, 0.2).item() == pytest.approx(
        L.info_nce(pooled, cg, 0.07).item(), rel=1e-6
    )


def test_dense_loss_values():
    td = F.normalize(torch.randn(2, 4, 3, 3), dim=1)
    assert L.dense_loss(td, td).item() == pytest.approx(0.0, abs=1e-6)
    assert L.dense_loss(-td, td).item() == pytest.approx(2.0, abs=1e-6)
    # a constant map upsampled from a smaller grid stays constant
    f = td[:, :, :1, :1].expand(-1, -1, 2, 2).contiguous()
    expected = 1 - (td * td[:, :, :1, :1]).sum(1).mean()
    assert L.dense_loss(f, td).item() == pytest.approx(expected.item(), abs=1e-5)


def test_ce_loss_uniform_and_ignore():
    logits = torch.zeros(1, 4, 2, 2)
    target = torch.tensor([[[0, 1], [2, 255]]])
    assert L.ce_loss(logits, target, 255).item() == pytest.approx(math.log(4), rel=1e-6)
    # upsampling to the label size: a 1x1 logit map confident in class 2
    logits = torch.tensor([0.0, 0.0, 10.0, 0.0]).view(1, 4, 1, 1)
    target = torch.full((1, 3, 3), 2)
    expected = -torch.log_softmax(torch.tensor([0.0, 0.0, 10.0, 0.0]), 0)[2].item()
    assert L.ce_loss(logits, target, 255).item() == pytest.approx(expected, rel=1e-5)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gather_worker(rank, world, port, a_all, b_all, out):
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    n = a_all.shape[0] // world
    a = a_all[rank * n : (rank + 1) * n].clone().requires_grad_(True)
    b = b_all[rank * n : (rank + 1) * n]
    loss = L.info_nce(a, b, 0.1, gather=True)
    loss.backward()
    out[rank] = torch.cat([loss.detach().view(1), a.grad.flatten()])
    dist.destroy_process_group()


def test_info_nce_gather_matches_global_batch():
    """Two gloo processes with half the batch each give the full batch's loss (mean over ranks)."""
    torch.manual_seed(0)
    a_all = F.normalize(torch.randn(6, 5), dim=1)
    b_all = F.normalize(torch.randn(6, 5), dim=1)
    out = mp.Manager().dict()
    mp.spawn(_gather_worker, args=(2, _free_port(), a_all, b_all, out), nprocs=2, join=True)
    full = L.info_nce(a_all, b_all, 0.1).item()
    assert (out[0][0].item() + out[1][0].item()) / 2 == pytest.approx(full, rel=1e-5)
    # without gathering, each rank would only see 3 negatives: a different value
    local = (L.info_nce(a_all[:3], b_all[:3], 0.1) + L.info_nce(a_all[3:], b_all[3:], 0.1)) / 2
    assert local.item() != pytest.approx(full, rel=1e-3)


def test_seg_kd_loss_by_hand():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 2, 2, generator=g)
    # teacher at twice the resolution: area-averaged to the logits' grid first
    t = torch.rand(2, 3, 4, 4, generator=g)
    t = t / t.sum(dim=1, keepdim=True)
    mask = torch.tensor([[True, True, False, True], [True, False, False, False]])
    got = L.seg_kd_loss(logits, t, mask)
    pt = torch.nn.functional.avg_pool2d(t, 2)
    kl = (pt * (pt.log() - logits.log_softmax(1))).sum(1).flatten(1)
    expected = kl[mask].mean()
    torch.testing.assert_close(got, expected)
    # equal distributions: zero loss
    assert L.seg_kd_loss(pt.log(), pt).abs().item() < 1e-6
