"""Network layers: the drop-in Single-Path layers and the plain blocks of child networks.

`SuperDepthwiseConv2d` and `SuperMBConv` can be used in any network: each owns its thresholds
and returns its decisions next to its output, so a search loop can add a latency term for them.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import spnas_ops

from .errors import SpnasError
from .space import SUPER_EXPAND, SUPER_KERNEL, Architecture, OP_SHAPE, scale_width

BN_EPS = 1e-3


def decisions_from_margins(margins: torch.Tensor, skippable: torch.Tensor) -> torch.Tensor:
    """(L, 3) 0/1 decisions on the CPU from (L, 3) indicator margins (`margins()`): on iff the
    margin is >= 0, as the op's indicator; a layer that is not `skippable` (L,) always keeps.
    One read-back for the whole supernet: on a GPU each layer's own was a host sync."""
    d = (margins >= 0).cpu()
    d[:, 2] |= ~skippable.cpu()
    return d.long()


@torch.no_grad()
def indicator_margins(weights: list[torch.Tensor], thresholds: torch.Tensor) -> torch.Tensor:
    """(L, 3) float64 margins ||.|| - t of L layers' three indicators without dropout, from their
    (C, 1, 5, 5) `weights` and (L, 3) `thresholds`: what `spnas_ops.reference.indicator_margins`
    computes layer by layer (the oracle; tests hold the two together), in ~3 ops a layer and a
    dozen for all, not ~50 a layer. A search's latency phase reads them every step (the
    lambda controller and the threshold clamp), where a step on a GPU is bound by the host.

    Each layer's squares are summed over the channels of each half (lo: e3, hi: e6) per tap,
    then over the inner 3x3 and the outer ring: the e6 and e3 norms hold the ring while the
    kernel decision is on. In float64, as the compiled op decides."""
    w = [t.detach().reshape(2, t.shape[0] // 2, 25).double() for t in weights]
    halves = torch.stack([v.sum(dim=1) for v in torch._foreach_mul(w, w)])  # (L, 2 halves, 25)
    inner = spnas_ops.reference.inner_mask(halves.device, halves.dtype).reshape(25)
    inner_sq, outer_sq = (halves * inner).sum(-1), (halves * (1 - inner)).sum(-1)  # (L, 2)
    t = thresholds.detach().to(halves.device, torch.float64)
    z_kernel = outer_sq.sum(-1).sqrt() - t[:, 0]
    ring = (z_kernel >= 0).double()[:, None]
    z_keep, z_expand = (inner_sq + ring * outer_sq).sqrt().unbind(-1)
    return torch.stack([z_kernel, z_expand - t[:, 1], z_keep - t[:, 2]], dim=1)


def compared_norms(weight: torch.Tensor, thresholds: torch.Tensor,
                   scale: torch.Tensor | None) -> torch.Tensor:
    """(3,) the norms the op's three indicators compare (the outer ring, then the e6 and e3
    halves of w1, which hold the ring as far as the kernel decision is on), differentiable in
    the weights and, through the kernel decision's straight-through gradient, in t_kernel. The
    kernel decision's own path into the weights (through the ring) is left out: the ring's
    entry carries it. dL/dz times this gradient is then exactly the share of the op's
    gradients that passes through the norms. `scale`: indicator-dropout r, or None."""
    from spnas_ops.reference import KERNEL, indicator, inner_mask
    c = weight.shape[0]
    w = weight.reshape(c, KERNEL, KERNEL)
    m3 = inner_mask(w.device, w.dtype)
    outer = w * (1 - m3)
    ring = torch.linalg.vector_norm(outer)
    d_kernel = indicator(ring.detach() - thresholds[0])
    if scale is not None:
        d_kernel = d_kernel * scale[0]
    w1 = w * m3 + d_kernel * outer
    return torch.stack([ring, torch.linalg.vector_norm(w1[c // 2:]),
                        torch.linalg.vector_norm(w1[: c // 2])])


class SuperDepthwiseConv2d(nn.Module):
    """A 5x5 depthwise superkernel with thresholds (t_kernel, t_expand, t_keep), initialised to 0.

    forward(x, scale=None) -> (y, d) where d = (d_kernel, d_expand, d_keep) are the paper's
    indicator decisions (differentiable, straight-through). `scale` is the indicator-dropout
    multiplier r of shape (3,). Channels [0, C/2) are the e3 half, [C/2, C) the extra e6 half.

    `norm_grad` (the paper's, True): the indicators' gradient dL/dz, z = ||.|| - t, reaches the
    weights through the norms as well as the thresholds. False: each indicator's own threshold
    only (z = const - t; not t_kernel through the ring's share of the e6/e3 norms either). Why
    (docs/search_quality.md): at a latency phase's start the paper's routing let the latency
    term move the norms 1.5x as far as the thresholds (RMSProp steps each of a norm's thousands
    of weights alike) and t_kernel take the e6 and e3 indicators' pull as well: the 14 px
    kernel margins fell 0.72 in 13 steps against 0.04 through the thresholds alone, decisions
    went off by price within ~15 steps, and when lambda turned negative the kept layers' norms
    grew out of the indicators' reach for the rest of the search.
    """

    def __init__(self, channels: int, stride: int = 1, skippable: bool = True,
                 op_backend: str = "auto", norm_grad: bool = True):
        super().__init__()
        if channels % 2:
            raise SpnasError(f"SuperDepthwiseConv2d: channels must be even (e3/e6 halves), got {channels}")
        if op_backend not in spnas_ops.BACKENDS:
            raise SpnasError(f"op_backend must be one of {spnas_ops.BACKENDS}, got {op_backend!r}")
        self.channels, self.stride, self.skippable = channels, stride, skippable
        self.op_backend, self.norm_grad = op_backend, norm_grad
        self.weight = nn.Parameter(torch.empty(channels, 1, SUPER_KERNEL, SUPER_KERNEL))
        self.thresholds = nn.Parameter(torch.zeros(3))
        init_conv_(self.weight, groups=channels)

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None):
        thresholds = self.thresholds.to(x.dtype)
        if scale is not None:
            scale = scale.to(device=x.device, dtype=x.dtype)
        weight = self.weight.to(x.dtype)
        if not self.norm_grad and torch.is_grad_enabled():
            # the op sees t + n - n (the same values); through it, -dL/dz * dn/d(w, t) flows
            # back and cancels the op's own terms through the norms (any backend, one graph);
            # without autograd (evaluation) there is nothing to cancel
            n = compared_norms(weight.float(), thresholds.float(), scale)
            thresholds = thresholds + (n - n.detach()).to(x.dtype)
        return spnas_ops.masked_dwconv(x, weight, thresholds, stride=self.stride,
                                       skippable=self.skippable, scale=scale, backend=self.op_backend)

    @torch.no_grad()
    def hard_decisions(self) -> tuple[int, int, int]:
        """The current decisions without dropout, computed from the weights alone (no input)."""
        d = decisions_from_margins(self.margins()[None], torch.tensor([self.skippable]))
        return tuple(d[0].tolist())

    @torch.no_grad()
    def margins(self, thresholds: torch.Tensor | None = None) -> torch.Tensor:
        """(3,) ||.|| - t of the three indicators (no dropout): a decision is on iff >= 0.
        `thresholds` instead of the layer's own: zeros give the norms with every decision on."""
        t = self.thresholds if thresholds is None else thresholds
        return indicator_margins([self.weight], t[None])[0]

    @torch.no_grad()
    def place_thresholds(self, margin: float) -> None:
        """Put each threshold `margin` below the norm its indicator compares, all decisions on.

        The indicator's gradient is sigmoid'(||w|| - t): with t = 0 and He-initialised kernels
        (||w|| ~ 1.1*sqrt(C), 10-40 in the mnasnet space) it is ~1e-5..1e-17, so no loss can move
        a decision in a search of practical length. At ||w|| - t = margin the gradient is
        sigmoid'(margin) (0.20 for 1.0): every decision starts at the largest op and responds to
        the latency and accuracy terms at once. The norms are those of `masked_weight` with all
        decisions on: the outer ring, the e6 half (5x5), the e3 half (5x5).
        """
        self.set_margins(torch.full((3,), float(margin)))

    @torch.no_grad()
    def set_margins(self, margins: torch.Tensor) -> None:
        """Thresholds that give this layer's weights the (3,) `margins`: the decisions of another
        copy of the layer (its `margins()`) with these weights. The expand and keep indicators
        compare norms that hold the outer ring only while the kernel decision is on, so that
        decision is set first."""
        margins = margins.to(self.thresholds)
        t = torch.zeros_like(self.thresholds)
        t[0] = self.margins(t)[0] - margins[0]
        t[1:] = self.margins(t)[1:] - margins[1:]  # the norms under that kernel decision
        self.thresholds.copy_(t)

    def extra_repr(self) -> str:
        return (f"{self.channels}, stride={self.stride}, skippable={self.skippable}, "
                f"op_backend={self.op_backend!r}" + ("" if self.norm_grad else ", norm_grad=False"))


class SuperMBConv(nn.Module):
    """A searchable MBConv: 1x1 expand (x6) -> BN -> ReLU -> superkernel -> BN -> ReLU -> 1x1 project
    -> BN, plus the residual when stride is 1 and widths match.

    forward(x, scale=None) -> (out, d). Beyond the masked superkernel, the decisions also gate
    the e6 half of the projection and the whole branch. Why: BN after the depthwise conv would
    otherwise turn a masked channel (all zeros) into its BN bias, so an "e3" or "skip" supernet
    layer would not compute what the derived child computes; and BN is blind to the scale of the
    masked weights, so d_expand and d_keep would get almost no accuracy gradient. Gated, a skipped
    layer is exactly the identity and an e3 layer exactly the child's e3 MBConv.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, skippable: bool = True,
                 op_backend: str = "auto", bn_eps: float = BN_EPS, norm_grad: bool = True):
        super().__init__()
        mid = in_channels * SUPER_EXPAND
        self.has_residual = stride == 1 and in_channels == out_channels
        if skippable and not self.has_residual:
            raise SpnasError(f"SuperMBConv: a skippable layer needs stride 1 and equal widths "
                             f"(got {in_channels}->{out_channels}, stride {stride})")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.skippable = skippable
        self.conv_pw = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid, eps=bn_eps)
        self.superkernel = SuperDepthwiseConv2d(mid, stride, skippable, op_backend, norm_grad)
        self.bn2 = nn.BatchNorm2d(mid, eps=bn_eps)
        self.conv_pwl = nn.Conv2d(mid, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels, eps=bn_eps)
        for conv in (self.conv_pw, self.conv_pwl):
            init_conv_(conv.weight)

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None):
        h = F.relu(self.bn1(self.conv_pw(x)))
        h, d = self.superkernel(h, scale)
        h = F.relu(self.bn2(h))
        # The gates take the indicator values 0/1: indicator dropout's 1/keep rescaling already
        # acted on the masked weights (where BN absorbs it); here it would only inflate the
        # residual branches. Dividing by r keeps the straight-through gradient of d.
        gate = d
        if scale is not None:
            scale = scale.to(d.device, d.dtype)
            gate = d * torch.where(scale > 0, 1 / scale.clamp_min(1e-12), torch.zeros_like(scale))
        # Gate the e6 half on the (small) projection weight rather than on the activation.
        half = self.conv_pwl.weight.shape[1] // 2
        w = self.conv_pwl.weight
        w = torch.cat([w[:, :half], w[:, half:] * gate[1].to(w.dtype)], dim=1)
        out = self.bn3(F.conv2d(h, w))
        if self.skippable:
            out = out * gate[2].to(out.dtype)
        if self.has_residual:
            out = out + x
        return out, d


# -- plain blocks of child networks and of the fixed parts --------------------------------------

def init_conv_(weight: torch.Tensor, groups: int = 1) -> None:
    """He-normal over fan-out (k*k*out/groups), as the MnasNet/EfficientNet family initialises."""
    out_ch, _, kh, kw = weight.shape
    fan_out = kh * kw * out_ch // groups
    nn.init.normal_(weight, 0.0, math.sqrt(2.0 / fan_out))


class ConvBnReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: bool = True, bn_eps: float = BN_EPS):
        layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(cout, eps=bn_eps)]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
        init_conv_(self[0].weight, groups)


def bn_relu(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    return F.relu(bn(x))


def depthwise_conv(channels: int, kernel: int, stride: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, kernel, stride, kernel // 2, groups=channels, bias=False)
    init_conv_(conv.weight, channels)
    return conv


def pointwise_conv(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 1, bias=False)
    init_conv_(conv.weight)
    return conv


# The plain blocks carry timm's EfficientNet names (conv_dw/bn1/conv_pw/bn2 for "ds";
# conv_pw/bn1/conv_dw/bn2/conv_pwl/bn3 for "ir"), so that a child built from an Architecture
# loads the state dict of timm's model of the same architecture (tests/spnas/test_timm_names.py).
class DepthwiseSeparable(nn.Module):
    """timm's "ds" block: depthwise kxk -> BN -> ReLU -> 1x1 -> BN (+ residual if allowed)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, noskip: bool, bn_eps: float):
        super().__init__()
        self.conv_dw = depthwise_conv(cin, kernel, stride)
        self.bn1 = nn.BatchNorm2d(cin, eps=bn_eps)
        self.conv_pw = pointwise_conv(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=bn_eps)
        self.has_residual = stride == 1 and cin == cout and not noskip

    def forward(self, x):
        out = self.bn2(self.conv_pw(bn_relu(self.bn1, self.conv_dw(x))))
        return out + x if self.has_residual else out


class MBConv(nn.Module):
    """timm's "ir" block (inverted residual, no SE): 1x1 expand -> kxk depthwise -> 1x1 project."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, noskip: bool,
                 bn_eps: float):
        super().__init__()
        mid = cin * expand
        self.conv_pw = pointwise_conv(cin, mid)
        self.bn1 = nn.BatchNorm2d(mid, eps=bn_eps)
        self.conv_dw = depthwise_conv(mid, kernel, stride)
        self.bn2 = nn.BatchNorm2d(mid, eps=bn_eps)
        self.conv_pwl = pointwise_conv(mid, cout)
        self.bn3 = nn.BatchNorm2d(cout, eps=bn_eps)
        self.has_residual = stride == 1 and cin == cout and not noskip

    def forward(self, x):
        h = bn_relu(self.bn2, self.conv_dw(bn_relu(self.bn1, self.conv_pw(x))))
        out = self.bn3(self.conv_pwl(h))
        return out + x if self.has_residual else out


def make_block(kind: str, cin: int, cout: int, kernel: int, stride: int, expand: int,
               noskip: bool, bn_eps: float) -> nn.Module:
    if kind == "ds":
        return DepthwiseSeparable(cin, cout, kernel, stride, noskip, bn_eps)
    return MBConv(cin, cout, kernel, stride, expand, noskip, bn_eps)


def make_classifier(features: int, num_classes: int) -> nn.Linear:
    classifier = nn.Linear(features, num_classes)
    # Bound from the fan-in: the fan-out bound of ImageNet recipes (1/sqrt(1000)) is far too
    # wide for a 10-class search, whose first logits would then be huge.
    bound = 1.0 / math.sqrt(features)
    nn.init.uniform_(classifier.weight, -bound, bound)
    nn.init.zeros_(classifier.bias)
    return classifier


def classify(x: torch.Tensor, classifier: nn.Linear, drop_rate: float, training: bool) -> torch.Tensor:
    """Global average pool -> (dropout) -> FC. keepdim then flatten (not mean((2, 3))):
    converters that carry an NHWC layout through the network keep it through a rank-preserving
    reduction, so the head exports to TFLite without a TRANSPOSE."""
    x = x.mean((2, 3), keepdim=True).flatten(1)
    if drop_rate > 0:
        x = F.dropout(x, drop_rate, training)
    return classifier(x)


class Head(nn.Module):
    """conv1x1 -> BN -> ReLU -> global average pool -> (dropout) -> FC (the supernet's head)."""

    def __init__(self, cin: int, features: int, num_classes: int, drop_rate: float, bn_eps: float):
        super().__init__()
        self.conv = ConvBnReLU(cin, features, 1, bn_eps=bn_eps)
        self.drop_rate = drop_rate
        self.classifier = make_classifier(features, num_classes)

    def forward(self, x):
        return classify(self.conv(x), self.classifier, self.drop_rate, self.training)


class ChildNet(nn.Module):
    """A derived network in timm's EfficientNet layout and names: conv_stem, bn1,
    blocks[stage][block], conv_head, bn2, classifier. Plain convolutions only (exports anywhere)."""

    def __init__(self, stem: int, stages: list[list[nn.Module]], head_in: int, features: int,
                 num_classes: int, drop_rate: float, bn_eps: float):
        super().__init__()
        self.conv_stem = nn.Conv2d(3, stem, 3, 2, 1, bias=False)
        init_conv_(self.conv_stem.weight)
        self.bn1 = nn.BatchNorm2d(stem, eps=bn_eps)
        self.blocks = nn.Sequential(*[nn.Sequential(*stage) for stage in stages])
        self.conv_head = pointwise_conv(head_in, features)
        self.bn2 = nn.BatchNorm2d(features, eps=bn_eps)
        self.drop_rate = drop_rate
        self.classifier = make_classifier(features, num_classes)

    def forward(self, x):
        x = self.blocks(bn_relu(self.bn1, self.conv_stem(x)))
        return classify(bn_relu(self.bn2, self.conv_head(x)), self.classifier, self.drop_rate,
                        self.training)


def build_child(arch: Architecture, num_classes: int = 1000, width_mult: float = 1.0,
                drop_rate: float = 0.0) -> ChildNet:
    from .space import BlockSpec
    space = arch.space
    eps = space.bn_eps
    stem = scale_width(space.stem, width_mult)
    stages, cin = [], stem
    for strings in arch.block_strings():  # one list of block strings per stage, as timm's
        stage = []
        for text in strings:
            spec = BlockSpec.parse(text)
            cout = scale_width(spec.out, width_mult)
            for r in range(spec.repeats):
                stage.append(make_block(spec.kind, cin, cout, spec.kernel,
                                        spec.stride if r == 0 else 1, spec.expand, spec.noskip, eps))
                cin = cout
        stages.append(stage)
    return ChildNet(stem, stages, cin, scale_width(space.head, width_mult), num_classes, drop_rate, eps)


__all__ = ["SuperDepthwiseConv2d", "SuperMBConv", "ChildNet", "MBConv", "DepthwiseSeparable",
           "build_child", "OP_SHAPE"]
