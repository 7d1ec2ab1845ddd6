"""Loads the compiled kernels (spnas_ops._C) and registers their fake kernels and autograd.

The C++ library defines the ops `spnas::masked_dwconv` and `spnas::masked_dwconv_backward`,
and the (C, 25) part alone, `spnas::superkernel_weight` and `spnas::superkernel_weight_backward`
(for the Triton backend; schemas in csrc/masked_dwconv.cpp), with CPU and, where built, CUDA
kernels; the dispatcher picks the kernel from the tensors' device. This module adds what
torch.compile and autograd need on top: shape-only fake kernels and the autograd registration
(registration.py).
"""

from __future__ import annotations

import torch

from . import registration

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


if _LOADED:
    torch.library.register_fake("spnas::masked_dwconv")(registration.fake_forward)
    torch.library.register_fake("spnas::masked_dwconv_backward")(registration.fake_backward)
    registration.register_autograd("spnas::masked_dwconv", torch.ops.spnas.masked_dwconv_backward)
    torch.library.register_fake("spnas::superkernel_weight")(registration.fake_superkernel_weight)
    torch.library.register_fake("spnas::superkernel_weight_backward")(
        registration.fake_superkernel_weight_backward)
