"""Inference helpers of the student: BatchNorm folding and export detection."""

import torch
from torch import nn

__all__ = ["fold_batch_norms", "is_exporting"]


def _fold_bn_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """``bn(conv(x)) == conv'(x)`` in eval mode: scale the weights, shift the bias (in place)."""
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std if bn.affine else 1.0 / std
    shift = bn.bias if bn.affine else torch.zeros_like(std)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(std)
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    conv.weight = nn.Parameter(weight, requires_grad=False)
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + shift, requires_grad=False)


def _bn_foldable(bn) -> bool:
    return isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None


def fold_batch_norms(module: nn.Module) -> int:
    """Fold every eval-mode BatchNorm2d into the convolution that feeds it, in place.

    Handles detectron2 ``Conv2d`` with a ``norm`` and a ``Conv2d`` child directly followed by a
    ``BatchNorm2d`` sibling (timm blocks, where ``BatchNormAct2d`` keeps its activation). The
    caller must check the result numerically: sibling order is assumed to be execution order.

    Returns:
        The number of folded norms.
    """
    n = 0
    for parent in list(module.modules()):
        norm = getattr(parent, "norm", None)
        if isinstance(parent, nn.Conv2d) and _bn_foldable(norm):
            _fold_bn_into_conv(parent, norm)
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
                _fold_bn_into_conv(conv, bn)
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


def is_exporting() -> bool:
    """True while tracing/scripting/exporting/compiling: no inference_mode then (its tensors
    cannot be recorded by a tracer or saved for backward)."""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    onnx = getattr(torch, "onnx", None)
    if onnx is not None and getattr(onnx, "is_in_onnx_export", lambda: False)():
        return True
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and getattr(compiler, "is_compiling", lambda: False)())
