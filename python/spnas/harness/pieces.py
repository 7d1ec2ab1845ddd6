"""The networks a runtime model is measured from: each (searchable layer, op) as its own model at
its real input shape, and the fixed parts of the space (stem, fixed blocks, head).

Every module here is built from the same blocks `Architecture.build` uses (spnas.layers), so a
layer timed alone is, op for op, the layer inside the child network.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from torch import nn

from ..layers import ConvBnReLU, Head, make_block
from ..space import (CONV_OPS, OP_SHAPE, SearchSpace, downsample, get_space,
                     layer_input_shapes)

__all__ = ["Piece", "layer_pieces", "fixed_pieces"]


@dataclasses.dataclass(frozen=True)
class Piece:
    """One model to time. `key` names it in measurement files: "layer<i>/<op>" or "fixed<j>"."""

    key: str
    input_shape: tuple[int, int, int, int]  # NCHW, batch 1
    build: Callable[[], nn.Module]
    layer: int | None = None
    op: str | None = None


def layer_pieces(space: "str | SearchSpace", image_size: int) -> list[Piece]:
    """Every (searchable layer, conv op) as a single MBConv at its input shape ("skip" costs 0)."""
    space = get_space(space)
    layers = space.layers()
    shapes = layer_input_shapes(space, image_size)
    pieces = []
    for layer, shape in zip(layers, shapes):
        for op in CONV_OPS:
            kernel, expand = OP_SHAPE[op]

            def build(layer=layer, kernel=kernel, expand=expand):
                return make_block("ir", layer["in"], layer["out"], kernel, layer["stride"], expand,
                                  False, space.bn_eps)

            pieces.append(Piece(f"layer{layer['index']}/{op}", shape, build, layer["index"], op))
    return pieces


class _Chain(nn.Sequential):
    """Consecutive fixed blocks timed as one model."""


def fixed_pieces(space: "str | SearchSpace", image_size: int, num_classes: int = 1000) -> list[Piece]:
    """The fixed parts: each maximal run of non-searchable blocks, the stem joined to the first
    run and the head (conv1x1, pool, FC) to the last, as one model at its input shape."""
    space = get_space(space)
    runs: list[dict] = []  # {"start": (cin, size), "blocks": [...]} per run of fixed blocks
    current = None
    last_size = image_size
    for layer in space.walk(image_size):
        last_size = downsample(layer.in_size, layer.stride)
        if layer.spec.kind == "sp":
            current = None
            continue
        if current is None:
            current = {"cin": layer.cin, "size": layer.in_size, "blocks": []}
            runs.append(current)
        current["blocks"].append((layer.spec, layer.cin, layer.stride))
    last_out = space.blocks[-1].out
    first_is_fixed = space.blocks[0].kind != "sp"
    last_is_fixed = space.blocks[-1].kind != "sp"
    if not first_is_fixed:
        runs.insert(0, {"cin": space.stem, "size": downsample(image_size, 2), "blocks": []})
    if not last_is_fixed:
        runs.append({"cin": last_out, "size": last_size, "blocks": []})

    pieces = []
    for j, run in enumerate(runs):
        with_stem = j == 0
        with_head = j == len(runs) - 1

        def build(run=run, with_stem=with_stem, with_head=with_head):
            modules = []
            if with_stem:
                modules.append(ConvBnReLU(3, space.stem, 3, 2, bn_eps=space.bn_eps))
            cout = run["cin"]
            for spec, cin, stride in run["blocks"]:
                modules.append(make_block(spec.kind, cin, spec.out, spec.kernel, stride,
                                          spec.expand, spec.noskip, space.bn_eps))
                cout = spec.out
            if with_head:
                modules.append(Head(cout, space.head, num_classes, 0.0, space.bn_eps))
            return _Chain(*modules)

        shape = (1, 3, image_size, image_size) if with_stem else (1, run["cin"], run["size"], run["size"])
        pieces.append(Piece(f"fixed{j}", shape, build))
    return pieces
