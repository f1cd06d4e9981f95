"""BatchNorm folding for deployment: where deployment asks for it (``MODEL.CLIPDISTILL.FOLD_BN``:
the predictor behind the demo and the web demo, and the benchmark), the eval-mode BatchNorms of a
segmenter are folded into the convolutions before them with ``torch.nn.utils.fusion``. The model
itself never folds; TorchScript freezing and the ONNX exporters fold on their own.

``fold_batch_norms(module)`` folds in place every ``BatchNorm2d`` that directly follows a
convolution: detectron2's ``Conv2d`` with a ``norm``, and a ``Conv2d`` child directly followed by
a ``BatchNorm2d`` sibling (timm blocks, where ``BatchNormAct2d`` keeps its activation). Sibling
order is assumed to be execution order, so ``fold_for_inference(segmenter)`` checks the folded
segmenter's output on a random image against the original's and keeps the original when they
differ. Frozen auxiliaries (teachers) are never folded.
"""

import copy
import logging
from typing import Iterator, List, Tuple

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .teacher.frozen import FrozenAuxiliary

__all__ = ["fold_batch_norms", "fold_for_inference"]

logger = logging.getLogger(__name__)


def _bn_foldable(bn) -> bool:
    return isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """``conv`` becomes ``bn(conv(x))`` (eval mode), in place, in the weights' memory format."""
    weight, bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    if conv.weight.dim() == 4 and conv.weight.is_contiguous(memory_format=torch.channels_last):
        weight = nn.Parameter(weight.detach().contiguous(memory_format=torch.channels_last))
    conv.weight, conv.bias = weight.requires_grad_(False), bias.requires_grad_(False)


def _modules(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` and its submodules, frozen auxiliaries (and what they hold) left out."""
    if isinstance(module, FrozenAuxiliary):
        return
    yield module
    for child in module.children():
        yield from _modules(child)


def fold_batch_norms(module: nn.Module) -> int:
    """Fold every eval-mode BatchNorm2d of ``module`` into the convolution that feeds it, in
    place (see the module docstring; the caller checks the result). Returns how many."""
    n = 0
    for parent in list(_modules(module)):
        norm = getattr(parent, "norm", None)
        if isinstance(parent, nn.Conv2d) and _bn_foldable(norm):
            _fold_into(parent, norm)
            parent.norm = None
            n += 1
            continue
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = parent._modules[a], parent._modules[b]
            if (
                type(conv) is nn.Conv2d
                and _bn_foldable(bn)
                and bn.num_features == conv.out_channels
            ):
                _fold_into(conv, bn)
                if type(bn) is nn.BatchNorm2d:
                    parent._modules[b] = nn.Identity()
                elif hasattr(bn, "act") and hasattr(bn, "drop"):  # timm BatchNormAct2d
                    parent._modules[b] = nn.Sequential(bn.drop, bn.act)
                else:  # unknown BatchNorm2d subclass: neutralise it
                    bn.running_mean.zero_()
                    bn.running_var.fill_(1.0 - bn.eps)
                    if bn.affine:
                        bn.weight.data.fill_(1.0)
                        bn.bias.data.zero_()
                n += 1
    return n


def _foldable_children(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    return [
        (name, child)
        for name, child in model.named_children()
        if any(_bn_foldable(m) for m in _modules(child))
    ]


def fold_for_inference(segmenter: nn.Module, tolerance: float = 1e-3) -> int:
    """Fold the BatchNorms of an eval-mode segmenter, in place: its children that hold some are
    replaced by folded copies (the segmenter can no longer train), unless the segmenter's output
    on a random 64x64 image then differs from the original's by more than ``tolerance``
    (relative), in which case nothing changes (a warning says so). Returns how many were folded."""
    if segmenter.training:
        raise ValueError("fold_for_inference: the segmenter must be in eval mode")
    children = _foldable_children(segmenter)
    if not children:
        return 0
    g = torch.Generator().manual_seed(0)  # leaves the global RNG untouched
    probe = [{"image": torch.randint(0, 256, (3, 64, 64), generator=g, dtype=torch.uint8)}]

    def run() -> torch.Tensor:
        with torch.no_grad():
            return segmenter(probe)[0]["sem_seg"].float()

    reference = run()
    n = 0
    for name, child in children:
        folded = copy.deepcopy(child)
        n += fold_batch_norms(folded)
        setattr(segmenter, name, folded)
    got = run()
    err = float((reference - got).abs().max() / reference.abs().max().clamp(min=1e-6))
    if err > tolerance:
        for name, child in children:
            setattr(segmenter, name, child)
        logger.warning(
            f"MODEL.CLIPDISTILL.FOLD_BN: the folded {type(segmenter).__name__} differs from the "
            f"model (relative error {err:.2e}); it runs without folding."
        )
        return 0
    logger.debug(f"Folded {n} BatchNorms into convolutions for inference.")
    return n
