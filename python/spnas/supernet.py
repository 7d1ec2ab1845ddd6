"""The Single-Path supernet: one network whose superkernels encode every architecture of a space."""

from __future__ import annotations

import torch
import torch.nn as nn

from .layers import (ConvBnReLU, Head, SuperMBConv, build_child, decisions_from_margins,
                     indicator_margins, make_block)
from .space import Architecture, SearchSpace, get_space, op_from_decisions, scale_width


class SinglePathSuperNet(nn.Module):
    """stem -> fixed and searchable stages of the space -> head.

    forward(x, scale=None) -> logits. `scale` (num_layers, 3) holds the indicator-dropout
    multipliers r, one row per searchable layer. After a forward, `decisions()` holds the
    (num_layers, 3) decisions (d_kernel, d_expand, d_keep) of that pass, differentiable, and
    `runtime(model)` turns them into an expected latency for the loss.
    """

    def __init__(self, space: "str | SearchSpace" = "mnasnet", num_classes: int = 1000,
                 width_mult: float = 1.0, op_backend: str = "auto", drop_rate: float = 0.0,
                 norm_grad: bool = True):
        super().__init__()
        self.space = get_space(space)
        self.num_classes, self.width_mult, self.op_backend = num_classes, width_mult, op_backend
        eps = self.space.bn_eps
        self.stem = ConvBnReLU(3, scale_width(self.space.stem, width_mult), 3, 2, bn_eps=eps)
        blocks: list[nn.Module] = []
        self._searchable: list[int] = []  # indices into self.blocks of the SuperMBConvs
        for layer in self.space.walk(width_mult=width_mult):
            spec = layer.spec
            if layer.index is not None:
                self._searchable.append(len(blocks))
                blocks.append(SuperMBConv(layer.cin, layer.cout, layer.stride, layer.skippable,
                                          op_backend=op_backend, bn_eps=eps, norm_grad=norm_grad))
            else:
                blocks.append(make_block(spec.kind, layer.cin, layer.cout, spec.kernel, layer.stride,
                                         spec.expand, spec.noskip, eps))
        cin = layer.cout
        self.blocks = nn.ModuleList(blocks)
        self.head = Head(cin, scale_width(self.space.head, width_mult), num_classes, drop_rate, eps)
        self._decisions: list[torch.Tensor] | None = None

    @property
    def searchable(self) -> list[SuperMBConv]:
        return [self.blocks[i] for i in self._searchable]

    def thresholds(self) -> list[nn.Parameter]:
        return [b.superkernel.thresholds for b in self.searchable]

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        x = self.stem(x)
        decisions, k = [], 0
        for i, block in enumerate(self.blocks):
            if isinstance(block, SuperMBConv):
                x, d = block(x, None if scale is None else scale[k])
                decisions.append(d)
                k += 1
            else:
                x = block(x)
        self._decisions = decisions
        return self.head(x)

    def decisions(self) -> torch.Tensor:
        """(num_layers, 3) decisions of the last forward, in the autograd graph."""
        if self._decisions is None:
            raise RuntimeError("SinglePathSuperNet.decisions(): run a forward pass first")
        return torch.stack([d.float() for d in self._decisions])

    def runtime(self, model, formula: str = "lut") -> torch.Tensor:
        """Expected latency (ms) of the last forward's decisions under a RuntimeModel."""
        return model.expected(self.decisions(), formula=formula)

    def place_thresholds(self, margin: float) -> None:
        """Every searchable layer's thresholds `margin` below their norms (see
        `SuperDepthwiseConv2d.place_thresholds`); the search does this when the latency term starts."""
        for b in self.searchable:
            b.superkernel.place_thresholds(margin)

    @torch.no_grad()
    def copy_decisions(self, other: "SinglePathSuperNet") -> None:
        """Thresholds that make this supernet's weights take `other`'s decisions, at `other`'s
        margins. Evaluating a search's EMA weights needs this: the averaged thresholds jump at
        placement and lag every decision, and even the live thresholds against the averaged
        weights' norms flip decisions near their threshold."""
        self.set_margins(other.margins())

    def margins(self) -> torch.Tensor:
        """(num_layers, 3) margins ||.|| - t of every indicator (`SuperDepthwiseConv2d.margins`)."""
        layers = [b.superkernel for b in self.searchable]
        return indicator_margins([k.weight for k in layers], torch.stack([k.thresholds for k in layers]))

    @torch.no_grad()
    def set_margins(self, margins: torch.Tensor) -> None:
        """Thresholds that give these weights the (num_layers, 3) `margins`, and so their
        decisions (`SuperDepthwiseConv2d.set_margins`)."""
        for block, m in zip(self.searchable, margins):
            block.superkernel.set_margins(m)

    def skippable(self) -> torch.Tensor:
        """(num_layers,) bool: which searchable layers may be skipped (the others always keep)."""
        return torch.tensor([b.superkernel.skippable for b in self.searchable])

    @torch.no_grad()
    def hard_decisions(self, margins: torch.Tensor | None = None) -> torch.Tensor:
        """(num_layers, 3) 0/1 decisions from the current weights and thresholds (no dropout),
        or from `margins` (`margins()`) already read back."""
        return decisions_from_margins(self.margins() if margins is None else margins, self.skippable())

    def derive(self, margins: torch.Tensor | None = None) -> Architecture:
        """The architecture the thresholds currently select (the paper's final step), or the
        one `margins` select."""
        ops = [op_from_decisions(*d) for d in self.hard_decisions(margins).tolist()]
        return Architecture(ops, self.space)

    @torch.no_grad()
    def child(self, arch: Architecture | None = None) -> nn.Module:
        """The derived child network (or `arch`'s) holding this supernet's weights: every kept
        layer gets the inner taps of its superkernel and the lower half of its channels where
        it chose 3x3 or e3, so in eval mode it computes what the supernet computes in that
        state. A search can so warm-start its child's training."""
        arch = arch or self.derive()
        child = build_child(arch, num_classes=self.num_classes, width_mult=self.width_mult)
        child.conv_stem.load_state_dict(self.stem[0].state_dict())
        child.bn1.load_state_dict(self.stem[1].state_dict())
        child.conv_head.load_state_dict(self.head.conv[0].state_dict())
        child.bn2.load_state_dict(self.head.conv[1].state_dict())
        child.classifier.load_state_dict(self.head.classifier.state_dict())
        child_blocks = iter([block for stage in child.blocks for block in stage])
        ops = iter(arch.ops)
        for block in self.blocks:
            if not isinstance(block, SuperMBConv):
                next(child_blocks).load_state_dict(block.state_dict())
                continue
            op = next(ops)
            if op == "skip":
                continue
            c = next(child_blocks)
            mid, k = c.conv_pw.out_channels, c.conv_dw.kernel_size[0]
            off = (5 - k) // 2
            c.conv_pw.weight.copy_(block.conv_pw.weight[:mid])
            c.conv_dw.weight.copy_(block.superkernel.weight[:mid, :, off:off + k, off:off + k])
            c.conv_pwl.weight.copy_(block.conv_pwl.weight[:, :mid])
            for dst, src in ((c.bn1, block.bn1), (c.bn2, block.bn2), (c.bn3, block.bn3)):
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(dst, name).copy_(getattr(src, name)[:getattr(dst, name).shape[0]])
        return child


__all__ = ["SinglePathSuperNet"]
