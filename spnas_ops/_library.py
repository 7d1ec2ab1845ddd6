"""Loads the compiled kernels (spnas_ops._C) and registers their fake and autograd formulas.

The C++ library defines the ops `spnas::masked_dwconv` and `spnas::masked_dwconv_backward`
(schema in csrc/masked_dwconv.cpp) with CPU and, where built, CUDA kernels; the dispatcher
picks the kernel from the tensors' device. This module adds what torch.compile and autograd
need on top: shape-only fake kernels and the backward formula.
"""

from __future__ import annotations

import torch

try:
    from ._build_info import BUILD_CUDA, BUILD_TORCH_VERSION
except ImportError:  # a source tree that was never built: only the reference backend
    BUILD_TORCH_VERSION = None
    BUILD_CUDA = False

_LOADED = False

if BUILD_TORCH_VERSION is not None:
    if BUILD_TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"spnas_ops was compiled against torch {BUILD_TORCH_VERSION} but torch "
            f"{torch.__version__} is installed; the C++ ABI differs. Rebuild it: "
            f"pip install --no-build-isolation -e .")
    try:
        from . import _C  # noqa: F401  (loading it registers the ops)
    except ImportError as err:
        raise ImportError(f"spnas_ops: the compiled library failed to load ({err}); "
                          f"rebuild it: pip install --no-build-isolation -e .") from err
    _LOADED = True


def compiled_backends() -> list[str]:
    if not _LOADED:
        return []
    names = ["cpu"]
    if BUILD_CUDA and torch.cuda.is_available():
        names.append("cuda")
    return names


def _output_size(size: int, stride: int) -> int:
    return (size - 1) // stride + 1


if _LOADED:
    @torch.library.register_fake("spnas::masked_dwconv")
    def _(x, weight, thresholds, scale, stride, skippable):
        n, c, h, w = x.shape
        y = torch.empty((n, c, _output_size(h, stride), _output_size(w, stride)),
                        dtype=x.dtype, device=x.device, memory_format=_memory_format(x))
        return y, thresholds.new_empty(3)

    @torch.library.register_fake("spnas::masked_dwconv_backward")
    def _(grad_y, grad_d, x, weight, thresholds, scale, stride, skippable):
        return (torch.empty_like(x, memory_format=_memory_format(x)),
                torch.empty_like(weight), torch.empty_like(thresholds))

    def _setup_context(ctx, inputs, output):
        x, weight, thresholds, scale, stride, skippable = inputs
        ctx.save_for_backward(x, weight, thresholds, scale)
        ctx.stride, ctx.skippable = stride, skippable

    def _backward(ctx, grad_y, grad_d):
        x, weight, thresholds, scale = ctx.saved_tensors
        if grad_d is None:
            grad_d = thresholds.new_zeros(3)
        if grad_y is None:  # only the decisions were used: dy = 0
            n, c, h, w = x.shape
            grad_y = x.new_zeros((n, c, _output_size(h, ctx.stride), _output_size(w, ctx.stride)))
        dx, dw, dt = torch.ops.spnas.masked_dwconv_backward(
            grad_y, grad_d, x, weight, thresholds, scale, ctx.stride, ctx.skippable)
        return dx, dw, dt, None, None, None

    torch.library.register_autograd("spnas::masked_dwconv", _backward, setup_context=_setup_context)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(
        memory_format=torch.channels_last) and not x.is_contiguous() else torch.contiguous_format
