"""How a backend of the op registers with torch: the output shape and memory-format rule, the
shape-only (fake) kernels that torch.compile traces with, and the autograd registration that
routes (dL/dy, dL/dd) to the backend's fused backward op. The formulas themselves are the
oracle's (reference.py) and csrc/superkernel.h's.

Backends register the same two-op pattern (forward + one-pass backward with the schemas of
csrc/masked_dwconv.cpp): the C++ ops in _library.py, the Triton ops in triton_op.py.
"""

from __future__ import annotations

import torch


def output_size(size: int, stride: int) -> int:
    return (size - 1) // stride + 1


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last is kept; anything else gives NCHW (csrc/masked_dwconv.h, same rule)."""
    return (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
            and not x.is_contiguous() else torch.contiguous_format)


def fake_forward(x, weight, thresholds, scale, stride, skippable):
    n, c, h, w = x.shape
    y = torch.empty((n, c, output_size(h, stride), output_size(w, stride)), dtype=x.dtype,
                    device=x.device, memory_format=memory_format(x))
    return y, thresholds.new_empty(3)


def fake_backward(grad_y, grad_d, x, weight, thresholds, scale, stride, skippable):
    return (torch.empty_like(x, memory_format=memory_format(x)), torch.empty_like(weight),
            torch.empty_like(thresholds))


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype w_eff and its gradient are kept in: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def fake_superkernel_weight(weight, thresholds, scale, skippable):
    return weight.new_empty(weight.shape, dtype=accumulation_dtype(weight.dtype)), thresholds.new_empty(3)


def fake_superkernel_weight_backward(grad_w_eff, grad_d, weight, thresholds, scale, skippable):
    return torch.empty_like(weight), torch.empty_like(thresholds)


def register_autograd(op, backward_op) -> None:
    """Autograd of `op` (x, weight, thresholds, scale, stride, skippable) -> (y, d) through its
    fused `backward_op`; scale, stride and skippable get no gradient."""

    def setup_context(ctx, inputs, output):
        x, weight, thresholds, scale, stride, skippable = inputs
        ctx.save_for_backward(x, weight, thresholds, scale)
        ctx.stride, ctx.skippable = stride, skippable

    def backward(ctx, grad_y, grad_d):
        x, weight, thresholds, scale = ctx.saved_tensors
        if grad_d is None:
            grad_d = thresholds.new_zeros(3)
        if grad_y is None:  # only the decisions were used: a stride-0 zero tensor, no memory
            n, c, h, w = x.shape
            grad_y = x.new_zeros(()).expand(n, c, output_size(h, ctx.stride),
                                            output_size(w, ctx.stride))
        dx, dw, dt = backward_op(grad_y, grad_d, x, weight, thresholds, scale, ctx.stride,
                                 ctx.skippable)
        return dx, dw, dt, None, None, None

    torch.library.register_autograd(op, backward, setup_context=setup_context)
