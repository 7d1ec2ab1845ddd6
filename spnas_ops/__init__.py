"""spnas_ops: the fused masked superkernel depthwise convolution of Single-Path NAS.

    y, d = spnas_ops.masked_dwconv(x, weight, thresholds, stride=1, skippable=True,
                                   scale=None, backend="auto")

Backends: "reference" (pure PyTorch autograd, the oracle), "cpu" (C++), "cuda" (CUDA C++)
and "triton"; `available_backends()` says which this build and machine have.
"""

from __future__ import annotations

import torch

from . import reference
from ._library import BUILD_TORCH_VERSION, compiled_backends
from .checks import check_inputs

__all__ = ["masked_dwconv", "available_backends", "BACKENDS", "BUILD_TORCH_VERSION"]

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")


def _triton_available() -> bool:
    try:
        from . import triton_op  # imports triton itself lazily
    except ImportError:
        return False
    return triton_op.is_available()


def available_backends() -> list[str]:
    """The backends usable here: "reference" always; "cpu"/"cuda" if compiled in; "triton" if
    Triton imports and can run (a CUDA device, or TRITON_INTERPRET=1 on the CPU)."""
    names = ["reference", *compiled_backends()]
    if _triton_available():
        names.append("triton")
    return names


def _resolve(backend: str, x: torch.Tensor) -> str:
    # Written so that torch.compile traces it without graph breaks: Triton is looked at only
    # when it can be the answer.
    if backend not in BACKENDS:
        raise ValueError(f"masked_dwconv: backend must be one of {BACKENDS}, got {backend!r}")
    compiled = compiled_backends()
    if backend == "auto":
        if x.device.type == "cuda":
            if "cuda" in compiled:
                return "cuda"
            return "triton" if _triton_available() else "reference"
        return "cpu" if x.device.type == "cpu" and "cpu" in compiled else "reference"
    if backend == "reference":
        return backend
    if backend in ("cpu", "cuda") and backend not in compiled or (
            backend == "triton" and not _triton_available()):
        raise RuntimeError(f"masked_dwconv: backend {backend!r} is not available in this build "
                           f"(available: {available_backends()})")
    wanted = "cuda" if backend == "triton" else backend
    interpreted = backend == "triton" and x.device.type == "cpu"  # TRITON_INTERPRET=1
    if x.device.type != wanted and not interpreted:
        raise ValueError(f"masked_dwconv: backend {backend!r} needs x on a {wanted} device, "
                         f"got x on {x.device}")
    return backend


def masked_dwconv(x: torch.Tensor, weight: torch.Tensor, thresholds: torch.Tensor, *,
                  stride: int = 1, skippable: bool = True, scale: torch.Tensor | None = None,
                  backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Masked superkernel depthwise convolution (SPEC section 1).

    Args:
        x: (N, C, H, W) input, C even; float32/float64/float16/bfloat16; NCHW or channels_last
            (the output keeps the memory format).
        weight: (C, 1, 5, 5) superkernel, same dtype and device as x.
        thresholds: (3,) = (t_kernel, t_expand, t_keep).
        stride: 1 or 2 (padding is always 2).
        skippable: if False, d_keep is 1 and the layer cannot be skipped.
        scale: (3,) indicator-dropout multipliers r, default ones; receives no gradient.
        backend: "auto", "reference", "cpu", "cuda" or "triton".

    Returns:
        y: (N, C, H_out, W_out) with H_out = (H - 1) // stride + 1.
        d: (3,) decisions (d_kernel, d_expand, d_keep), differentiable (straight-through).
    """
    check_inputs(x, weight, thresholds, scale, stride)
    if scale is None:
        scale = torch.ones(3, dtype=x.dtype, device=x.device)
    backend = _resolve(backend, x)
    if backend == "reference":
        return reference.masked_dwconv(x, weight, thresholds, scale, stride, skippable)
    if backend == "triton":
        from . import triton_op
        return triton_op.masked_dwconv(x, weight, thresholds, scale, stride, skippable)
    return torch.ops.spnas.masked_dwconv(x, weight, thresholds, scale, stride, skippable)
