"""Input checks shared by every backend: one clear error that names the argument."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_inputs(x: torch.Tensor, weight: torch.Tensor, thresholds: torch.Tensor,
                 scale: torch.Tensor | None, stride: int) -> None:
    for name, t in (("x", x), ("weight", weight), ("thresholds", thresholds), ("scale", scale)):
        if t is None and name == "scale":
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"masked_dwconv: {name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dim() != 4:
        raise ValueError(f"masked_dwconv: x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"masked_dwconv: x must be float32, float64, float16 or bfloat16, got {x.dtype}")
    c = x.shape[1]
    if weight.dim() != 4 or tuple(weight.shape[1:]) != (1, 5, 5):
        raise ValueError(f"masked_dwconv: weight must have shape (C, 1, 5, 5), got {tuple(weight.shape)}")
    if weight.shape[0] != c:
        raise ValueError(f"masked_dwconv: weight has {weight.shape[0]} channels but x has C={c}")
    if c % 2:
        raise ValueError(f"masked_dwconv: x must have an even number of channels C (lo/hi halves), got C={c}")
    if thresholds.shape != (3,):
        raise ValueError(f"masked_dwconv: thresholds must have shape (3,), got {tuple(thresholds.shape)}")
    if scale is not None and scale.shape != (3,):
        raise ValueError(f"masked_dwconv: scale must have shape (3,), got {tuple(scale.shape)}")
    if isinstance(stride, bool) or stride not in (1, 2):
        raise ValueError(f"masked_dwconv: stride must be 1 or 2, got {stride!r}")
    for name, t in (("weight", weight), ("thresholds", thresholds), ("scale", scale)):
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise TypeError(f"masked_dwconv: {name} dtype {t.dtype} does not match x dtype {x.dtype}")
        if t.device != x.device:
            raise ValueError(f"masked_dwconv: {name} is on {t.device} but x is on {x.device}")
    # NaN thresholds would turn every decision off without a word. Checked where it is free: on
    # CPU tensors (on a GPU it would stall the host on every call) and outside torch.compile.
    if (thresholds.device.type == "cpu" and not torch.compiler.is_compiling()
            and not bool(torch.isfinite(thresholds).all())):
        raise ValueError(f"masked_dwconv: thresholds must be finite, got {thresholds.tolist()}")
