"""Search spaces as data, and the architectures found in them.

A search space is a stem width, a list of stages written as block strings, and a head width.
Block strings follow timm's notation (`ir_r1_k5_s2_e6_c40`: inverted residual, 1 repeat,
kernel 5, stride 2, expansion 6, 40 output channels), so a found network prints in a form a timm
user can rebuild. One extra block kind marks what is searched:

    sp_r4_k5_s2_e6_c24   a stage of 4 searchable Single-Path layers, each a superkernel MBConv
                         (5x5 kernel, expansion 6 at most); the first has stride 2 and cannot be
                         skipped, the other three can.

Every searchable layer chooses one of `OPS`. The superkernel encodes exactly these: the inner
3x3 taps vs all 5x5 taps, and the lower half (e3) vs all (e6) of the expanded channels.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Iterable, Iterator, NamedTuple, Sequence

from .errors import SpnasError

# The candidate ops of a searchable layer, in the order the runtime model stores them.
# "skip" drops the layer (its residual carries the signal) and is not allowed for the first
# layer of a stage, whose stride or width change cannot be skipped.
OPS = ("k3_e3", "k3_e6", "k5_e3", "k5_e6", "skip")
CONV_OPS = OPS[:4]
SUPER_KERNEL = 5
SUPER_EXPAND = 6

# op -> (kernel, expansion); the decisions (d_kernel, d_expand) of the paper pick one of these.
OP_SHAPE = {"k3_e3": (3, 3), "k3_e6": (3, 6), "k5_e3": (5, 3), "k5_e6": (5, 6)}


def op_from_decisions(d_kernel: float, d_expand: float, d_keep: float) -> str:
    """Hard decisions (as in the paper: nonzero = on) -> op name."""
    if d_keep == 0:
        return "skip"
    return f"k{5 if d_kernel != 0 else 3}_e{6 if d_expand != 0 else 3}"


@dataclass(frozen=True)
class BlockSpec:
    """One decoded block string: `kind` is "ds" (depthwise separable), "ir" (MBConv) or "sp"
    (a stage of searchable superkernel MBConvs)."""
    kind: str
    repeats: int = 1
    kernel: int = 3
    stride: int = 1
    expand: int = 1
    out: int = 16
    noskip: bool = False

    @staticmethod
    def parse(text: str) -> "BlockSpec":
        if not isinstance(text, str) or not text:
            raise SpnasError(f"block string must be a non-empty string, got {text!r}")
        parts = text.split("_")
        kind = parts[0]
        if kind not in ("ds", "ir", "sp"):
            raise SpnasError(f"block string {text!r}: kind must be ds, ir or sp, got {kind!r}")
        values = {"r": 1, "k": 3, "s": 1, "e": 1, "c": None}
        noskip = False
        for token in parts[1:]:
            if token == "noskip":
                noskip = True
                continue
            key, num = token[:1], token[1:]
            if key not in values or not num.isdigit():
                raise SpnasError(f"block string {text!r}: cannot read option {token!r} "
                                 f"(expected r<int>, k<int>, s<int>, e<int>, c<int> or noskip)")
            values[key] = int(num)
        if values["c"] is None:
            raise SpnasError(f"block string {text!r}: missing output channels c<int>")
        if values["s"] not in (1, 2):
            raise SpnasError(f"block string {text!r}: stride must be 1 or 2")
        if values["r"] < 1 or values["c"] < 1 or values["e"] < 1 or values["k"] % 2 == 0:
            raise SpnasError(f"block string {text!r}: repeats, channels and expansion must be >= 1 "
                             f"and the kernel odd")
        if kind == "sp":
            if "k" in text and values["k"] not in (3, SUPER_KERNEL):
                raise SpnasError(f"block string {text!r}: a searchable stage uses the 5x5 superkernel")
            values["k"], values["e"] = SUPER_KERNEL, SUPER_EXPAND
        if kind == "ds":
            values["e"] = 1
        return BlockSpec(kind, values["r"], values["k"], values["s"], values["e"], values["c"], noskip)

    def __str__(self) -> str:
        e = "" if self.kind == "ds" else f"_e{self.expand}"
        tail = "_noskip" if self.noskip else ""
        return f"{self.kind}_r{self.repeats}_k{self.kernel}_s{self.stride}{e}_c{self.out}{tail}"


class Layer(NamedTuple):
    """A block of a space as `SearchSpace.walk` yields it."""
    stage: int                  # index into the space's stages
    position: int               # repeat index within the stage
    spec: BlockSpec
    stride: int                 # the stage's stride on its first block, else 1
    cin: int
    cout: int
    in_size: int | None         # input height = width, when walked at an image size
    index: int | None           # searchable layer index (the runtime model's), None if fixed
    skippable: bool             # a searchable layer that may be skipped (not a stage's first)


@dataclass(frozen=True)
class SearchSpace:
    """A network skeleton: stem conv3x3 s2 -> stages (block strings) -> conv1x1 head -> pool -> FC.

    `stages` holds one block string per stage; "sp" stages are searched. Register your own with
    `register_space`, or load one from JSON with `SearchSpace.load` (keys: name, stem, stages, head).
    """
    name: str
    stem: int
    stages: tuple[str, ...]
    head: int
    bn_eps: float = 1e-3
    blocks: tuple[BlockSpec, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not self.stages:
            raise SpnasError(f"search space {self.name!r}: needs at least one stage")
        object.__setattr__(self, "stages", tuple(self.stages))
        object.__setattr__(self, "blocks", tuple(BlockSpec.parse(s) for s in self.stages))
        if not any(b.kind == "sp" for b in self.blocks):
            raise SpnasError(f"search space {self.name!r}: no searchable (sp_...) stage")

    @property
    def searchable_stages(self) -> list[int]:
        return [i for i, b in enumerate(self.blocks) if b.kind == "sp"]

    @property
    def num_layers(self) -> int:
        """Number of searchable layers (20 in "mnasnet")."""
        return sum(b.repeats for b in self.blocks if b.kind == "sp")

    def walk(self, image_size: int | None = None, width_mult: float = 1.0) -> Iterator["Layer"]:
        """Every block after the stem, in order: the one walk over a space that the supernet, the
        child builder's checks, the runtime model and the harness all use."""
        cin = scale_width(self.stem, width_mult)
        size = downsample(image_size, 2) if image_size else None
        index = 0
        for stage, spec in enumerate(self.blocks):
            cout = scale_width(spec.out, width_mult)
            for position in range(spec.repeats):
                stride = spec.stride if position == 0 else 1
                searchable = spec.kind == "sp"
                yield Layer(stage, position, spec, stride, cin, cout, size,
                            index if searchable else None, searchable and position > 0)
                index += searchable
                cin = cout
                size = downsample(size, stride) if size else None

    def layers(self) -> list[dict]:
        """One entry per searchable layer: stage, position in the stage, stride, in/out channels,
        skippable, at width 1.0. This is also what the runtime model's layer index refers to."""
        return [{"index": l.index, "stage": l.stage, "position": l.position, "stride": l.stride,
                 "in": l.cin, "out": l.cout, "skippable": l.skippable}
                for l in self.walk() if l.index is not None]

    def to_json(self) -> dict:
        return {"name": self.name, "stem": self.stem, "stages": list(self.stages), "head": self.head,
                "bn_eps": self.bn_eps}

    @staticmethod
    def from_json(obj: dict, where: str = "search space") -> "SearchSpace":
        if not isinstance(obj, dict):
            raise SpnasError(f"{where}: must be a JSON object")
        for key, typ in (("name", str), ("stem", int), ("stages", list), ("head", int)):
            if key not in obj:
                raise SpnasError(f"{where}: missing field {key!r}")
            if not isinstance(obj[key], typ) or isinstance(obj[key], bool):
                raise SpnasError(f"{where}: field {key!r} must be a {typ.__name__}")
        return SearchSpace(obj["name"], obj["stem"], tuple(obj["stages"]), obj["head"],
                           float(obj.get("bn_eps", 1e-3)))

    @staticmethod
    def load(path: str) -> "SearchSpace":
        from .io import read_json
        return SearchSpace.from_json(read_json(path, "search space"), where=path)


# The paper's space (SPEC section 2): MnasNet's skeleton with 5 searchable stages of 4 layers.
# The fixed first and last MBConvs are written exactly as timm writes them for spnasnet_100.
MNASNET = SearchSpace(
    name="mnasnet",
    stem=32,
    stages=(
        "ds_r1_k3_s1_c16_noskip",
        "sp_r4_k5_s2_e6_c24",
        "sp_r4_k5_s2_e6_c40",
        "sp_r4_k5_s2_e6_c80",
        "sp_r4_k5_s1_e6_c96",
        "sp_r4_k5_s2_e6_c192",
        "ir_r1_k3_s1_e6_c320_noskip",
    ),
    head=1280,
)

# The same skeleton for small images (28-32 px, e.g. Fashion-MNIST, CIFAR-10): three searchable
# stages at 1/2, 1/4 and 1/8 of the input instead of MnasNet's five down to 1/32, where a 32 px
# image would be 1x1 by the last stage and a 5x5 kernel no different from a 3x3. Also an example
# of a user's own space; its latency model comes from `spnas profile --space mnasnet-small`.
MNASNET_SMALL = SearchSpace(
    name="mnasnet-small",
    stem=16,
    stages=(
        "ds_r1_k3_s1_c16_noskip",
        "sp_r4_k5_s1_e6_c24",
        "sp_r4_k5_s2_e6_c40",
        "sp_r4_k5_s2_e6_c80",
        "ir_r1_k3_s1_e6_c128_noskip",
    ),
    head=512,
)

_SPACES: dict[str, SearchSpace] = {s.name: s for s in (MNASNET, MNASNET_SMALL)}


def register_space(space: SearchSpace) -> None:
    _SPACES[space.name] = space


def get_space(space: "str | SearchSpace") -> SearchSpace:
    """A registered name, a SearchSpace, or a path to a JSON space file."""
    if isinstance(space, SearchSpace):
        return space
    if space in _SPACES:
        return _SPACES[space]
    if isinstance(space, str) and space.endswith(".json") and os.path.exists(space):
        return SearchSpace.load(space)
    raise SpnasError(f"unknown search space {space!r} (known: {', '.join(sorted(_SPACES))}; "
                     f"or pass a .json space file)")


def make_divisible(channels: float, divisor: int = 8) -> int:
    """Round a scaled width to a multiple of `divisor`, never losing more than 10% (as MobileNets do)."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * channels:
        rounded += divisor
    return rounded


def scale_width(channels: int, width_mult: float) -> int:
    return channels if width_mult == 1.0 else make_divisible(channels * width_mult)


def downsample(size: int, stride: int) -> int:
    """Spatial size after a "same"-padded (k // 2, odd k) stride: ceil(size / stride)."""
    return -(-size // stride)


def layer_input_shapes(space: "str | SearchSpace", image_size: int) -> list[tuple[int, int, int, int]]:
    """NCHW input shape (batch 1) of each searchable layer, in the index order of `space.layers()`.

    Skipped layers keep the shape (a skippable layer has stride 1 and equal widths), so the
    shape does not depend on the other layers' choices.
    """
    return [(1, l.cin, l.in_size, l.in_size) for l in get_space(space).walk(image_size)
            if l.index is not None]


ARCH_FORMAT = "spnas-architecture"


class Architecture:
    """A point in a search space: one op per searchable layer.

        arch = Architecture(["k3_e3", ...], space="mnasnet")
        arch.block_strings()          # timm arch_def: a list of block strings per stage
        spnas.layers.build_child(arch)  # the plain network (an Architecture is data only)
    """

    def __init__(self, ops: Sequence[str], space: "str | SearchSpace" = "mnasnet"):
        self.space = get_space(space)
        ops = list(ops)
        layers = self.space.layers()
        if len(ops) != len(layers):
            raise SpnasError(f"architecture: space {self.space.name!r} has {len(layers)} searchable "
                             f"layers, got {len(ops)} ops")
        for layer, op in zip(layers, ops):
            if op not in OPS:
                raise SpnasError(f"architecture: layer {layer['index']}: unknown op {op!r} "
                                 f"(choose from {', '.join(OPS)})")
            if op == "skip" and not layer["skippable"]:
                raise SpnasError(f"architecture: layer {layer['index']} is the first of its stage "
                                 f"and cannot be 'skip'")
        self.ops = ops

    def __eq__(self, other) -> bool:
        return isinstance(other, Architecture) and self.ops == other.ops and \
            self.space.to_json() == other.space.to_json()

    def __repr__(self) -> str:
        return f"Architecture({self.ops!r}, space={self.space.name!r})"

    # -- timm block strings ---------------------------------------------------------------------
    def block_strings(self) -> list[list[str]]:
        """The child network in timm's arch_def form: per stage, runs of equal ops become one
        block string with repeats; skipped layers vanish; the stride stays on the stage's first."""
        stages, it = [], iter(self.ops)
        for b in self.space.blocks:
            if b.kind != "sp":
                stages.append([str(b)])
                continue
            stage_ops = [next(it) for _ in range(b.repeats)]
            kept = [op for op in stage_ops if op != "skip"]
            strings: list[str] = []
            i = 0
            while i < len(kept):
                j = i
                while j < len(kept) and kept[j] == kept[i]:
                    j += 1
                k, e = OP_SHAPE[kept[i]]
                stride = b.stride if i == 0 else 1
                strings.append(str(BlockSpec("ir", j - i, k, stride, e, b.out)))
                i = j
            stages.append(strings)
        return stages

    @staticmethod
    def from_block_strings(stages: Iterable[Iterable[str]], space: "str | SearchSpace" = "mnasnet"
                           ) -> "Architecture":
        """Inverse of `block_strings`: the searched stages must be ir blocks with k3/k5, e3/e6 and
        the stage's width; missing layers at the end of a stage are skips."""
        space = get_space(space)
        stages = [list(s) for s in stages]
        if len(stages) != len(space.blocks):
            raise SpnasError(f"block strings: space {space.name!r} has {len(space.blocks)} stages, "
                             f"got {len(stages)}")
        ops: list[str] = []
        for si, (b, strings) in enumerate(zip(space.blocks, stages)):
            if b.kind != "sp":
                continue
            stage_ops = []
            for text in strings:
                spec = BlockSpec.parse(text)
                op = f"k{spec.kernel}_e{spec.expand}"
                if spec.kind != "ir" or op not in OP_SHAPE or spec.out != b.out:
                    raise SpnasError(f"block strings: stage {si}: {text!r} is not a k3/k5, e3/e6 "
                                     f"ir block with c{b.out}")
                stage_ops += [op] * spec.repeats
            if not 1 <= len(stage_ops) <= b.repeats:
                raise SpnasError(f"block strings: stage {si} needs 1..{b.repeats} layers, "
                                 f"got {len(stage_ops)}")
            ops += stage_ops + ["skip"] * (b.repeats - len(stage_ops))
        return Architecture(ops, space)

    # -- JSON ---------------------------------------------------------------------------------
    def to_json(self, **extra) -> dict:
        obj = {"format": ARCH_FORMAT, "version": 1, "space": self.space.to_json(), "ops": self.ops,
               "block_strings": self.block_strings()}
        obj.update(extra)
        return obj

    @staticmethod
    def from_json(obj: dict, where: str = "architecture") -> "Architecture":
        if not isinstance(obj, dict):
            raise SpnasError(f"{where}: must be a JSON object")
        if obj.get("format", ARCH_FORMAT) != ARCH_FORMAT:
            raise SpnasError(f"{where}: field 'format' must be {ARCH_FORMAT!r}, got {obj.get('format')!r}")
        if "ops" not in obj:
            raise SpnasError(f"{where}: missing field 'ops'")
        if not isinstance(obj["ops"], list) or not all(isinstance(o, str) for o in obj["ops"]):
            raise SpnasError(f"{where}: field 'ops' must be a list of op names")
        space = obj.get("space", "mnasnet")
        if isinstance(space, dict):
            space = SearchSpace.from_json(space, where=f"{where}: field 'space'")
            if space.name in _SPACES and _SPACES[space.name].to_json() == space.to_json():
                space = _SPACES[space.name]
        elif not isinstance(space, str):
            raise SpnasError(f"{where}: field 'space' must be a name or an object")
        try:
            return Architecture(obj["ops"], space)
        except SpnasError as err:
            raise SpnasError(f"{where}: {err}") from None

    def save(self, path: str, **extra) -> None:
        from .io import atomic_write_json
        atomic_write_json(path, self.to_json(**extra))

    @staticmethod
    def load(path: str) -> "Architecture":
        from .io import read_json
        return Architecture.from_json(read_json(path, "architecture"), where=path)

    def with_op(self, layer: int, op: str) -> "Architecture":
        ops = list(self.ops)
        ops[layer] = op
        return Architecture(ops, self.space)


# The authors' final Pixel 1 network (timm's spnasnet_100), as ops in the "mnasnet" space.
SPNASNET_100 = ("k3_e3", "k3_e3", "k3_e3", "skip",
                "k5_e6", "k3_e3", "k3_e3", "k3_e3",
                "k5_e6", "k3_e3", "k3_e3", "k3_e3",
                "k5_e6", "k5_e3", "k5_e3", "k5_e3",
                "k5_e6", "k5_e6", "k5_e6", "k5_e6")


def random_architecture(space: "str | SearchSpace", rng: random.Random) -> Architecture:
    """Each layer's op uniformly among those it allows ("skip" only where skippable)."""
    space = get_space(space)
    ops = [rng.choice(OPS if layer["skippable"] else CONV_OPS) for layer in space.layers()]
    return Architecture(ops, space)


__all__ = ["OPS", "CONV_OPS", "OP_SHAPE", "BlockSpec", "SearchSpace", "MNASNET", "MNASNET_SMALL", "register_space",
           "downsample", "Layer", "layer_input_shapes", "random_architecture",
           "get_space", "Architecture", "SPNASNET_100", "op_from_decisions", "make_divisible",
           "scale_width"]
