"""FLOP counting: fvcore's tracer, with handlers for the fused attention ops, and an eager count
(PyTorch's flop formulas) for what does not trace.

FLOP convention: fvcore counts one fused multiply-add as one flop, so "GFLOPs" here are GMACs
(papers quoting GFLOPs = 2 x MACs report twice these numbers).
"""

import logging
import math
from typing import Optional

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

__all__ = ["FLOP_CONVENTION", "count_flops"]

logger = logging.getLogger(__name__)

FLOP_CONVENTION = (
    "fvcore FlopCountAnalysis: one fused multiply-add counts as one flop (GFLOPs here = GMACs; "
    "element-wise ops, softmax and resampling are not counted)"
)


def _mha_flop(inputs, outputs):
    """``aten::_native_multi_head_attention`` (nn.MultiheadAttention's fused inference path):
    q/k/v and output projections plus the two attention products, in MACs."""
    from fvcore.nn.jit_handles import get_shape

    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    b, lq, e = q[0], q[1], q[2]
    lk = k[1]
    return b * (lq * e * e + 2 * lk * e * e + lq * e * e + 2 * lq * lk * e)


def _sdpa_flop(inputs, outputs):
    """``aten::scaled_dot_product_attention``: ``Q K^T`` and ``A V``, in MACs."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(i) for i in inputs[:3])
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


class _EagerFlops(TorchDispatchMode):
    """Sum of ``torch.utils.flop_counter``'s formulas over the aten ops dispatched while active
    (no module tracking: ``FlopCounterMode``'s module hooks break ``torch.autograd.grad``)."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


def count_flops(module: nn.Module, example) -> Optional[float]:
    """Total FLOPs (fvcore convention) of ``module(example)``, or None when tracing fails."""
    from fvcore.nn import FlopCountAnalysis

    try:
        with torch.no_grad():
            fa = FlopCountAnalysis(module, (example,))
            fa.set_op_handle(
                "aten::_native_multi_head_attention",
                _mha_flop,
                "aten::scaled_dot_product_attention",
                _sdpa_flop,
            )
            fa.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            fa.tracer_warnings("none")
            return float(fa.total())
    except Exception as e:  # not traceable (data-dependent loop, NumPy steps, autograd: CaR)
        traced_error = e
    # eager fallback: count every aten op that runs (including a backward pass inside the model)
    # with PyTorch's flop formulas, which count 2 flops per multiply-add, so halve the total
    try:
        with torch.no_grad(), _EagerFlops() as counter:
            module(example)
        return counter.total / 2.0
    except Exception as e:
        logger.warning(
            f"FLOP count failed for {type(module).__name__}: {type(traced_error).__name__}: "
            f"{traced_error}; eager count: {type(e).__name__}: {e}"
        )
        return None
