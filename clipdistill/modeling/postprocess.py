"""Label maps and score maps at the image size in bounded memory, whatever the vocabulary.

A segmenter's ``forward`` returns ``sem_seg`` ``[K, H, W]`` at the image size (detectron2's
contract), so a 1024x768 image with 1,000 class names holds 3 GB of float32 logits, and
softmax/argmax on it as much again. ``OpenVocabSegmenter.coarse_sem_seg`` returns instead the
scores at the model's own resolution and how to bring any slice of classes to the image size
(:class:`CoarseSemSeg`); the functions here then work through the classes in chunks:

* :func:`label_map`: running max/argmax over class chunks (ties go to the first class, like
  ``argmax``);
* :func:`iter_probs`: softmax probabilities chunk by chunk, after a first pass computing the
  per-pixel log-sum-exp over all classes.

Memory bound (float32): the coarse scores ``K x h x w`` (1/64 of ``K x H x W`` for the student's
stride 8) plus a few ``C x H x W`` chunks, with ``C = max(1, CHUNK_ELEMENTS // (H * W))`` classes
(``CHUNK_ELEMENTS`` = 2^22: 16 MB per chunk tensor, 5 classes of a 1024x768 image). Beyond the
coarse scores, memory does not grow with the number of classes.
"""

from typing import Callable, Iterator, Optional, Tuple

import torch

__all__ = ["CHUNK_ELEMENTS", "CoarseSemSeg", "class_chunk", "label_map", "iter_probs"]

#: elements (``classes x H x W``) of one class chunk at the image size
CHUNK_ELEMENTS = 1 << 22


class CoarseSemSeg:
    """One image's class scores at the model's resolution.

    Args:
        scores: ``[K, h, w]`` (logits, or whatever ``sem_seg`` holds).
        output_size: ``(H, W)`` of the image.
        upsample: ``f(scores[k0:k1]) -> [k1 - k0, H, W]``, the model's own way to bring scores to
            the image size (None: ``scores`` are already at ``output_size``).
        to_probs: ``f(scores [K, H, W]) -> probabilities`` when they are not a softmax of the
            scores (then computed on the whole ``K x H x W``); None: softmax, in class chunks.
    """

    def __init__(
        self,
        scores: torch.Tensor,
        output_size: Tuple[int, int],
        upsample: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        to_probs: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ):
        self.scores = scores
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


def label_map(coarse: CoarseSemSeg, budget: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """``[H, W]`` int64 index of the highest score per pixel (the first one on ties)."""
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
