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


def _decide(weight: torch.Tensor, thresholds: torch.Tensor, scale: torch.Tensor,
            skippable: bool, norm_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w1 = w*M3 + d_kernel * w*M5 (C, 5, 5), the margins z = ||.|| - t (3,) that the three
    indicators compare, and the decisions d = (kernel, expand, keep) (3,). With `norm_grad`
    False the norms are constants of the margins: each indicator's gradient reaches its own
    threshold only (not the weights, nor t_kernel through the e6/e3 norms' share of the ring);
    the weights keep their gradient through w_eff."""
    c = weight.shape[0]
    m3 = inner_mask(weight.device, weight.dtype)
    w = weight.reshape(c, KERNEL, KERNEL)
    outer = w * (1 - m3)

    def norm(v: torch.Tensor) -> torch.Tensor:
        n = torch.linalg.vector_norm(v)
        return n if norm_grad else n.detach()

    z_kernel = norm(outer) - thresholds[0]
    d_kernel = indicator(z_kernel) * scale[0]
    w1 = w * m3 + d_kernel * outer
    z_expand = norm(w1[c // 2:]) - thresholds[1]
    z_keep = norm(w1[: c // 2]) - thresholds[2]
    d_expand = indicator(z_expand) * scale[1]
    if skippable:
        d_keep = indicator(z_keep) * scale[2]
    else:
        d_keep = torch.ones((), device=weight.device, dtype=weight.dtype)
    return w1, torch.stack([z_kernel, z_expand, z_keep]), torch.stack([d_kernel, d_expand, d_keep])


def masked_weight(weight: torch.Tensor, thresholds: torch.Tensor, scale: torch.Tensor,
                  skippable: bool = True, norm_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The effective depthwise weight w_eff (C, 1, 5, 5) and the decisions d = (kernel, expand, keep).

    `scale` (the indicator-dropout multipliers r) is a constant: it receives no gradient.
    `norm_grad`: see `_decide` (the op is the paper's, True).
    """
    c = weight.shape[0]
    w1, _, d = _decide(weight, thresholds, scale.detach(), skippable, norm_grad)
    d_expand, d_keep = d[1], d[2]
    lo, hi = w1[: c // 2], w1[c // 2:]
    w_eff = torch.cat([d_keep * lo, (d_keep * d_expand) * hi], dim=0)
    return w_eff.reshape(c, 1, KERNEL, KERNEL), d


@torch.no_grad()
def indicator_margins(weight: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """(3,) the margins ||.|| - t of the three indicators without dropout: the kernel's outer
    ring, then the e6 and e3 halves of w1 (which hold the outer ring only while the kernel
    decision is on). A decision is on iff its margin is >= 0 (keep: when skippable). With
    zero thresholds the margins are the norms compared when every decision is on."""
    ones = torch.ones(3, device=weight.device, dtype=weight.dtype)
    return _decide(weight, thresholds, ones, True)[1]


def masked_dwconv(x: torch.Tensor, weight: torch.Tensor, thresholds: torch.Tensor,
                  scale: torch.Tensor, stride: int = 1, skippable: bool = True,
                  norm_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """y = depthwise_conv2d(x, w_eff, stride, padding=2) and the decisions d."""
    w_eff, d = masked_weight(weight, thresholds, scale, skippable, norm_grad)
    y = F.conv2d(x, w_eff.to(x.dtype), stride=stride, padding=PADDING, groups=x.shape[1])
    return y, d
