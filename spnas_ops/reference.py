"""The reference superkernel: plain PyTorch autograd of the formulas in SPEC section 1.

This is the oracle every compiled backend is tested against. It is written for clarity,
not speed: the masked weight, the decisions and the convolution are ordinary autograd ops,
so PyTorch derives every gradient (x, weight, thresholds; from y and from d).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KERNEL = 5
PADDING = 2


def inner_mask(device=None, dtype=torch.float32) -> torch.Tensor:
    """M3: 1 on the inner 3x3 taps of a 5x5 kernel, 0 on the outer ring, shape (5, 5)."""
    m = torch.zeros(KERNEL, KERNEL, device=device, dtype=dtype)
    m[1:4, 1:4] = 1
    return m


def indicator(z: torch.Tensor) -> torch.Tensor:
    """Ind(z) = 1 if z >= 0 else 0, with the straight-through gradient sigmoid'(z).

    The value is exactly the step: s - s.detach() is 0 in the forward pass, and its
    gradient is sigmoid's, s * (1 - s).
    """
    s = torch.sigmoid(z)
    return (z >= 0).to(z.dtype) + (s - s.detach())


def masked_weight(weight: torch.Tensor, thresholds: torch.Tensor, scale: torch.Tensor,
                  skippable: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The effective depthwise weight w_eff (C, 1, 5, 5) and the decisions d = (kernel, expand, keep).

    `scale` (the indicator-dropout multipliers r) is a constant: it receives no gradient.
    """
    scale = scale.detach()
    c = weight.shape[0]
    m3 = inner_mask(weight.device, weight.dtype)
    m5 = 1 - m3
    w = weight.reshape(c, KERNEL, KERNEL)
    outer = w * m5
    d_kernel = indicator(torch.linalg.vector_norm(outer) - thresholds[0]) * scale[0]
    w1 = w * m3 + d_kernel * outer
    lo, hi = w1[: c // 2], w1[c // 2:]
    d_expand = indicator(torch.linalg.vector_norm(hi) - thresholds[1]) * scale[1]
    if skippable:
        d_keep = indicator(torch.linalg.vector_norm(lo) - thresholds[2]) * scale[2]
    else:
        d_keep = torch.ones((), device=weight.device, dtype=weight.dtype)
    w_eff = torch.cat([d_keep * lo, (d_keep * d_expand) * hi], dim=0)
    return w_eff.reshape(c, 1, KERNEL, KERNEL), torch.stack([d_kernel, d_expand, d_keep])


def masked_dwconv(x: torch.Tensor, weight: torch.Tensor, thresholds: torch.Tensor,
                  scale: torch.Tensor, stride: int = 1,
                  skippable: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """y = depthwise_conv2d(x, w_eff, stride, padding=2) and the decisions d."""
    w_eff, d = masked_weight(weight, thresholds, scale, skippable)
    y = F.conv2d(x, w_eff.to(x.dtype), stride=stride, padding=PADDING, groups=x.shape[1])
    return y, d
