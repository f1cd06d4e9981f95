"""Label maps and score maps at the image size in bounded memory, whatever the vocabulary.

A segmenter's ``forward`` returns ``sem_seg`` ``[K, H, W]`` at the image size (detectron2's
contract), so a 1024x768 image with 1,000 class names holds 3 GB of float32 logits, and
softmax/argmax on it as much again. ``OpenVocabSegmenter.coarse_sem_seg`` returns instead the
scores at the model's own resolution and how to bring any slice of classes to the image size
(:class:`CoarseSemSeg`); the functions here then work through the classes in chunks:

* :func:`label_map`: from each pixel's candidate classes when the upsampling is known as
  separable bilinear tables (``CoarseSemSeg.axes``, :func:`resample_labels`: time and memory
  grow with K at the model's resolution only), else a running max/argmax over class chunks
  (ties go to the first class, like ``argmax``);
* :func:`iter_probs`: softmax probabilities chunk by chunk, after a first pass computing the
  per-pixel log-sum-exp over all classes.

Memory bound (float32): the coarse scores ``K x h x w`` (1/64 of ``K x H x W`` for the student's
stride 8) plus a few ``C x H x W`` chunks, with ``C = max(1, CHUNK_ELEMENTS // (H * W))`` classes
(``CHUNK_ELEMENTS`` = 2^22: 16 MB per chunk tensor, 5 classes of a 1024x768 image). Beyond the
coarse scores, memory does not grow with the number of classes.
"""

from typing import Callable, Iterator, List, NamedTuple, Optional, Tuple

import torch
from torch.nn import functional as F

__all__ = [
    "CHUNK_ELEMENTS",
    "LABEL_CANDIDATES",
    "AxisResample",
    "CoarseSemSeg",
    "bilinear_axis",
    "class_chunk",
    "compose_axis",
    "iter_probs",
    "label_map",
    "resample",
    "resample_labels",
]

#: elements (``classes x H x W``) of one class chunk at the image size
CHUNK_ELEMENTS = 1 << 22

#: candidate classes per low-resolution cell of ``resample_labels`` (its top-k)
LABEL_CANDIDATES = 4

#: a class score no real logit reaches (padding classes of ``resample_labels`` when K <= k)
_NO_CLASS = -1e30


class CoarseSemSeg:
    """One image's class scores at the model's resolution.

    Args:
        scores: ``[K, h, w]`` (logits, or whatever ``sem_seg`` holds).
        output_size: ``(H, W)`` of the image.
        upsample: ``f(scores[k0:k1]) -> [k1 - k0, H, W]``, the model's own way to bring scores to
            the image size (None: ``scores`` are already at ``output_size``).
        to_probs: ``f(scores [K, H, W]) -> probabilities`` when they are not a softmax of the
            scores (then computed on the whole ``K x H x W``); None: softmax, in class chunks.
        axes: ``upsample`` as separable tables ``(rows, columns)`` (``AxisResample``), when it
            is a (chained, cropped) bilinear resampling: ``label_map`` then resamples only each
            pixel's candidate classes (``resample_labels``).
    """

    def __init__(
        self,
        scores: torch.Tensor,
        output_size: Tuple[int, int],
        upsample: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        to_probs: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        axes: Optional[Tuple["AxisResample", "AxisResample"]] = None,
    ):
        self.scores = scores
        self.axes = axes
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self._upsample = upsample
        self.to_probs = to_probs

    @property
    def num_classes(self) -> int:
        return int(self.scores.shape[0])

    def chunk(self, k0: int, k1: int) -> torch.Tensor:
        """``[k1 - k0, H, W]`` float32 scores of classes ``k0..k1-1`` at the image size."""
        part = self.scores[k0:k1].float()
        return part if self._upsample is None else self._upsample(part).float()


def class_chunk(output_size: Tuple[int, int], budget: int = CHUNK_ELEMENTS) -> int:
    """Classes per chunk so that a chunk at ``output_size`` holds at most ``budget`` elements."""
    return max(1, int(budget) // max(1, output_size[0] * output_size[1]))


def label_map(
    coarse: CoarseSemSeg,
    budget: int = CHUNK_ELEMENTS,
    candidates: int = LABEL_CANDIDATES,
    exact: bool = False,
) -> torch.Tensor:
    """``[H, W]`` int64 index of the highest score per pixel (the first one on ties).

    With ``coarse.axes`` and ``candidates`` > 0: ``resample_labels`` (only each pixel's
    candidate classes are resampled; the winner is missed only when no cell the pixel reads has
    it in its top ``candidates``; ``exact``: never, see ``resample_labels``). Otherwise every
    class is brought to the image size, in class chunks."""
    if coarse.axes is not None and candidates > 0:
        rows, cols = coarse.axes
        return resample_labels(coarse.scores[None], rows, cols, candidates, budget, exact)[0]
    step = class_chunk(coarse.output_size, budget)
    best_val: Optional[torch.Tensor] = None
    best_idx: Optional[torch.Tensor] = None
    for k0 in range(0, coarse.num_classes, step):
        part = coarse.chunk(k0, min(k0 + step, coarse.num_classes))
        val, idx = part.max(dim=0)
        idx = idx + k0
        if best_val is None:
            best_val, best_idx = val, idx
        else:
            better = val > best_val
            best_val = torch.where(better, val, best_val)
            best_idx = torch.where(better, idx, best_idx)
    return best_idx


def iter_probs(
    coarse: CoarseSemSeg, budget: int = CHUNK_ELEMENTS
) -> Iterator[Tuple[int, torch.Tensor]]:
    """Yield ``(k0, probs[k0:k1])`` (float32 ``[k, H, W]``): the softmax over all classes,
    class chunk by class chunk (two passes over the chunks); or ``coarse.to_probs`` of all the
    scores, cut in chunks."""
    step = class_chunk(coarse.output_size, budget)
    k = coarse.num_classes
    if coarse.to_probs is not None:
        probs = coarse.to_probs(coarse.chunk(0, k)).float()
        for k0 in range(0, k, step):
            yield k0, probs[k0 : k0 + step]
        return
    m: Optional[torch.Tensor] = None
    s: Optional[torch.Tensor] = None
    for k0 in range(0, k, step):  # running log-sum-exp
        part = coarse.chunk(k0, min(k0 + step, k))
        pm = part.max(dim=0).values
        if m is None:
            m = pm
            s = (part - m).exp().sum(dim=0)
        else:
            new_m = torch.maximum(m, pm)
            s = s * (m - new_m).exp() + (part - new_m).exp().sum(dim=0)
            m = new_m
    lse = m + s.log()
    for k0 in range(0, k, step):
        yield k0, (coarse.chunk(k0, min(k0 + step, k)) - lse).exp()


# ---------------------------------------------------------------------------------------------
# Label maps without upsampling every class: candidate classes per pixel
# ---------------------------------------------------------------------------------------------


class AxisResample(NamedTuple):
    """One axis of a separable linear resampling (bilinear, possibly cropped or chained):
    output index ``i`` reads the input cells ``min(base[i] + s, n_in - 1)``, ``s < S``, with
    weights ``weights[i, s]`` (non-negative, summing to 1).

    Attributes:
        base: int64 ``[N_out]``, non-decreasing.
        weights: float32 ``[N_out, S]``.
    """

    base: torch.Tensor
    weights: torch.Tensor

    def crop(self, n: int) -> "AxisResample":
        """The first ``n`` outputs (``x[..., :n]`` after the resampling)."""
        return AxisResample(self.base[:n], self.weights[:n])


def bilinear_axis(n_in, n_out, device=None) -> AxisResample:
    """``F.interpolate(mode="bilinear", align_corners=False, size=...)`` along one axis from
    ``n_in`` to ``n_out`` samples (PyTorch's ``area_pixel_compute_source_index`` and
    ``guard_index_and_lambda``: source ``(i + 0.5) * n_in / n_out - 0.5`` clamped at 0; the same
    size is a copy). Sizes may be traced values (the ONNX export, dynamic height and width)."""
    dst = torch.arange(n_out, device=device, dtype=torch.float64)
    src = ((dst + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    base = src.floor().long().clamp(max=n_in - 1)
    lam = (src - base.double()).clamp(0, 1).float()
    return AxisResample(base, torch.stack([1 - lam, lam], dim=1))


def compose_axis(first: AxisResample, second: AxisResample, n_mid: int) -> AxisResample:
    """``second`` applied after ``first`` (``first``: ``n_in -> n_mid``; ``second``:
    ``n_mid -> N``) as one resampling of the input: each output reads the union of the cells its
    intermediate samples read, with the products of the weights (computed in float64)."""
    s1, s2 = first.weights.shape[1], second.weights.shape[1]
    n_out = second.base.shape[0]
    mid = (second.base[:, None] + torch.arange(s2, device=second.base.device)).clamp(max=n_mid - 1)
    b1 = first.base[mid]  # [N, s2]
    base = b1[:, 0]
    off = b1 - base[:, None]
    width = (int(off.max()) if n_out else 0) + s1
    w = torch.zeros(n_out, width, dtype=torch.float64, device=base.device)
    w1 = first.weights.double()[mid]  # [N, s2, s1]
    w2 = second.weights.double()
    for t in range(s2):
        for s in range(s1):
            w.scatter_add_(1, (off[:, t] + s)[:, None], (w2[:, t] * w1[:, t, s])[:, None])
    return AxisResample(base, w.float())


def resample(logits: torch.Tensor, rows: AxisResample, cols: AxisResample) -> torch.Tensor:
    """``[B, K, h, w]`` -> ``[B, K, H, W]`` float32 by the tables, in the order
    ``resample_labels`` uses (along the columns first, then the rows), so that its labels are
    exactly the argmax of this. The reference of the tests (``F.interpolate`` rounds
    differently, by about 1e-7 relative)."""
    x = logits.float()
    h, w = x.shape[-2:]
    iy = _cells(rows, h)
    ix = _cells(cols, w)
    out = None
    for sy in range(len(iy)):
        r = x.index_select(2, iy[sy])
        a = None
        for sx in range(len(ix)):
            term = r.index_select(3, ix[sx]) * cols.weights[:, sx]
            a = term if a is None else a + term
        term = a * rows.weights[:, sy, None]
        out = term if out is None else out + term
    return out


def _cells(axis: AxisResample, n_in) -> List[torch.Tensor]:
    """Per offset ``s``, the input cell of every output: ``min(base + s, n_in - 1)``."""
    return [(axis.base + s).clamp(max=n_in - 1) for s in range(axis.weights.shape[1])]


def _shift(t: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``t[:, :, rows][:, :, :, cols]``."""
    return t.index_select(2, rows).index_select(3, cols)


def _quad_cells(n_in, width: int, device) -> List[torch.Tensor]:
    """Per offset ``s``, the cell ``min(q + s, n_in - 1)`` of every low-resolution "quad" ``q``
    (the block of outputs whose ``base`` is ``q``)."""
    q = torch.arange(n_in, device=device)
    return [(q + s).clamp(max=n_in - 1) for s in range(width)]


def resample_labels(
    logits: torch.Tensor,
    rows: AxisResample,
    cols: AxisResample,
    candidates: int = LABEL_CANDIDATES,
    budget: int = CHUNK_ELEMENTS,
    exact: bool = False,
    stats: Optional[dict] = None,
) -> torch.Tensor:
    """``argmax`` over K of ``resample(logits, rows, cols)`` (int64 ``[B, H, W]``, the first
    class on ties), without resampling every class.

    Each output pixel reads a few low-resolution cells (2x2 for one bilinear upsampling, 3x3 for
    two chained ones). Its candidates are the union of the top-``candidates`` classes of those
    cells; only their logits are resampled, and the best candidate wins. That is the full
    argmax whenever the pixel's winner is among its candidates (measured agreement:
    docs/BENCHMARKS.md). ``exact=True`` (eager only) makes it the full argmax always: a class
    outside the candidates is at most the ``candidates + 1``-th largest logit of every cell it
    reads, so its resampled logit is at most the resampling of that map (floating-point rounding
    is monotone, and both are computed the same way); pixels whose best candidate does not beat
    that bound strictly are recomputed with every class (few on a network's smooth logits; most
    on noise logits).

    Cost: ``O(K h w)`` at low resolution plus ``O(candidates H W)``, instead of the
    ``O(K H W)`` of resampling every class. Works traced (the open-vocabulary ONNX export: K,
    H and W dynamic). ``budget``: elements of the per-row-chunk buffers (eager only).
    ``stats``: a dict that receives ``pixels`` and ``recomputed`` (with ``exact``).
    """
    k = int(candidates)
    if k < 1:
        raise ValueError(f"label candidates must be >= 1, got {candidates}")
    x = logits.float()
    B, K, h, w = x.shape
    tracing = is_tracing()
    if exact and tracing:
        raise ValueError("resample_labels(exact=True) is eager only (not in an exported graph)")
    if tracing or K <= k:  # so that top-(k + 1) exists whatever K (dynamic in a traced graph)
        x = F.pad(x, (0, 0, 0, 0, 0, k + 1), value=_NO_CLASS)
    kp = x.shape[1]
    vals, idx = x.topk(k + 1, dim=1)  # [B, k + 1, h, w]
    cand, bound = idx[:, :k], vals[:, k:]
    dev = x.device
    sy_n, sx_n = rows.weights.shape[1], cols.weights.shape[1]
    qy, qx = _quad_cells(h, sy_n, dev), _quad_cells(w, sx_n, dev)
    # candidates of each quad: the top-k of every cell its pixels read, sorted by class index
    # (argmax then takes the first class on ties, like argmax over all K; duplicates are equal)
    quad = torch.cat([_shift(cand, qy[sy], qx[sx]) for sy in range(sy_n) for sx in range(sx_n)], 1)
    quad = quad.sort(dim=1).values  # [B, M, h, w]
    m = quad.shape[1]
    hw = h * w
    flat = x.reshape(B, kp * hw)
    # corner values of each quad's candidates (and of the bound, for exact): [B, M (+ 1), h, w]
    # per (sy, sx)
    corners = []
    for sy in range(sy_n):
        row = []
        for sx in range(sx_n):
            pos = (qy[sy][:, None] * w + qx[sx][None, :])[None, None]  # [1, 1, h, w]
            v = torch.gather(flat, 1, (quad * hw + pos).reshape(B, m * hw)).reshape(B, m, h, w)
            row.append(torch.cat([v, _shift(bound, qy[sy], qx[sx])], 1) if exact else v)
        corners.append(row)
    H, W = rows.base.shape[0], cols.base.shape[0]
    if tracing:
        step = H
    else:
        step = max(1, int(budget) // max(1, (m + 1) * sy_n * W * B))
    labels, worst = [], []
    for y0 in range(0, H, step) if not tracing else [0]:
        y1 = H if tracing else min(H, y0 + step)
        ry = AxisResample(rows.base[y0:y1], rows.weights[y0:y1]) if not tracing else rows
        q0 = 0 if tracing else int(ry.base[0])
        q1 = h if tracing else int(ry.base[-1]) + 1
        out = None
        for sy in range(sy_n):
            a = None
            for sx in range(sx_n):
                part = corners[sy][sx][:, :, q0:q1].index_select(3, cols.base)
                term = part * cols.weights[:, sx]
                a = term if a is None else a + term
            term = a.index_select(2, ry.base - q0) * ry.weights[:, sy, None]
            out = term if out is None else out + term
        best, pick = out[:, :m].max(dim=1)  # [B, rows, W]
        cls = torch.gather(
            quad.reshape(B, m * hw),
            1,
            (pick * hw + (ry.base[:, None] * w + cols.base[None, :])[None]).reshape(B, -1),
        ).reshape(pick.shape)
        labels.append(cls)
        if exact:
            worst.append(best <= out[:, m])  # not certified: recomputed with every class
    labels = labels[0] if len(labels) == 1 else torch.cat(labels, 1)
    if not exact:
        return labels
    worst = worst[0] if len(worst) == 1 else torch.cat(worst, 1)
    n = int(worst.sum())
    if stats is not None:
        stats["pixels"] = stats.get("pixels", 0) + worst.numel()
        stats["recomputed"] = stats.get("recomputed", 0) + n
    return labels if n == 0 else _recompute(x, labels, worst, rows, cols)


def _recompute(x, labels, mask, rows: AxisResample, cols: AxisResample) -> torch.Tensor:
    """``labels`` with the pixels of ``mask`` replaced by the argmax over every class of
    ``x`` (padded logits ``[B, K', h, w]``), resampled as ``resample`` does."""
    B, kp, h, w = x.shape
    H, W = labels.shape[-2:]
    where = mask.reshape(-1).nonzero()[:, 0]  # [n] flat positions in [B, H, W]
    b = where // (H * W)
    y = (where // W) % H
    xx = where % W
    table = x.permute(0, 2, 3, 1).reshape(B * h * w, kp)  # a row of logits per cell
    iy, ix = _cells(rows, h), _cells(cols, w)
    out = None
    for sy in range(len(iy)):
        a = None
        for sx in range(len(ix)):
            cell = b * (h * w) + iy[sy][y] * w + ix[sx][xx]
            term = table[cell] * cols.weights[xx, sx][:, None]
            a = term if a is None else a + term
        term = a * rows.weights[y, sy][:, None]
        out = term if out is None else out + term
    best = out.argmax(dim=1)
    return labels.reshape(-1).scatter(0, where, best).reshape(labels.shape)


def is_tracing() -> bool:
    """True while ``torch.jit.trace`` / ``torch.onnx.export`` records the computation."""
    onnx = getattr(torch, "onnx", None)
    in_export = onnx is not None and getattr(onnx, "is_in_onnx_export", lambda: False)()
    return bool(torch.jit.is_tracing() or in_export)
