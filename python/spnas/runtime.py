"""Runtime models: per-layer, per-op latencies of a search space, and the search's latency term.

File format (JSON, one object; `docs/runtime_model.md` has the full description)::

    {
      "format": "spnas-runtime-model",     # required, this exact string
      "version": 1,                        # required, 1
      "unit": "ms",                        # required, "ms"
      "space": "mnasnet",                  # required, name of the search space the layers index
      "constant_ms": 19.5999,              # required, >= 0: everything not searched (stem, fixed
                                           #   blocks, head), added once to every prediction
      "layers": [                          # required, one entry per searchable layer, in order
        {"index": 0,                       #   required, its position (0-based)
         "ms": {"k3_e3": 4.4905, "k3_e6": 9.2015, "k5_e3": 5.9248, "k5_e6": 11.5892},
                                           #   required, every conv op; "skip" optional (default 0)
         ...any other keys (shapes, spread) are kept as they are},
        ...
      ],
      "protocol": {                        # required: how the figures were measured
        "backend": "tflite",               #   required, string (e.g. "litert", "adb")
        "runtime_version": "2.16.1",       #   string or null when unknown
        "threads": 1,                      #   int >= 1 or null
        "runs": 50,                        #   int >= 1 or null (timed runs per figure)
        "device": "Google Pixel 1",        #   string or null
        "date": "2024-05-01",              #   string (ISO 8601) or null
        ...any other keys (warmup_runs, statistic, host) are kept
      },
      "source": "free text", ...           # any other top-level keys are kept as they are
    }

Every problem with a file is one SpnasError line that names the file and the field.
"""

from __future__ import annotations

import copy
import json
import math
import os
from importlib import resources
from typing import Any

import torch

from .config import FORMULAS
from .errors import SpnasError
from .space import CONV_OPS, OPS, Architecture

FORMAT = "spnas-runtime-model"
VERSION = 1
PRESETS = ("pixel1",)
PROTOCOL_FIELDS = {  # field -> (types allowed, required)
    "backend": ((str,), True),
    "runtime_version": ((str, type(None)), False),
    "threads": ((int, type(None)), False),
    "runs": ((int, type(None)), False),
    "device": ((str, type(None)), False),
    "date": ((str, type(None)), False),
}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class RuntimeModel:
    """Latency of every (searchable layer, op) plus a constant for the fixed parts.

        model = RuntimeModel.preset("pixel1")
        model.predict(arch)              # ms, hard decisions summed
        model.expected(decisions)        # differentiable ms for the search loss
    """

    def __init__(self, layers: list[dict[str, float]], constant_ms: float, space: str = "mnasnet",
                 protocol: dict | None = None, layer_extra: list[dict] | None = None,
                 extra: dict | None = None):
        self.layers = [dict(ms) for ms in layers]
        for ms in self.layers:
            ms.setdefault("skip", 0.0)
        self.constant_ms = float(constant_ms)
        self.space = space
        self.protocol = dict(protocol or {"backend": "unknown"})
        self.layer_extra = [dict(e) for e in (layer_extra or [{} for _ in layers])]
        self.extra = dict(extra or {})
        # (L, 5) table in OPS order; the differentiable formulas index it.
        self.table = torch.tensor([[ms[op] for op in OPS] for ms in self.layers], dtype=torch.float64)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    # -- files ----------------------------------------------------------------------------------
    @staticmethod
    def from_json(obj: Any, where: str = "runtime model") -> "RuntimeModel":
        def fail(field: str, what: str):
            raise SpnasError(f"{where}: field {field!r} {what}")

        if not isinstance(obj, dict):
            raise SpnasError(f"{where}: must be a JSON object")
        for key in ("format", "version", "unit", "space", "constant_ms", "layers", "protocol"):
            if key not in obj:
                fail(key, "is missing")
        if obj["format"] != FORMAT:
            fail("format", f"must be {FORMAT!r}, got {obj['format']!r}")
        if obj["version"] != VERSION:
            fail("version", f"must be {VERSION}, got {obj['version']!r}")
        if obj["unit"] != "ms":
            fail("unit", f"must be 'ms', got {obj['unit']!r}")
        if not isinstance(obj["space"], str):
            fail("space", "must be a search-space name (string)")
        if not _number(obj["constant_ms"]) or obj["constant_ms"] < 0:
            fail("constant_ms", f"must be a number >= 0, got {obj['constant_ms']!r}")
        protocol = obj["protocol"]
        if not isinstance(protocol, dict):
            fail("protocol", "must be an object")
        for name, (types, required) in PROTOCOL_FIELDS.items():
            if name not in protocol:
                if required:
                    fail(f"protocol.{name}", "is missing")
                continue
            value = protocol[name]
            if not isinstance(value, types) or isinstance(value, bool):
                fail(f"protocol.{name}", f"has the wrong type ({type(value).__name__})")
            if name in ("threads", "runs") and value is not None and value < 1:
                fail(f"protocol.{name}", f"must be >= 1, got {value}")
        layers = obj["layers"]
        if not isinstance(layers, list) or not layers:
            fail("layers", "must be a non-empty list")
        tables, extras = [], []
        for i, layer in enumerate(layers):
            at = f"layers[{i}]"
            if not isinstance(layer, dict):
                fail(at, "must be an object")
            if layer.get("index") != i:
                fail(f"{at}.index", f"must be {i} (layers in order), got {layer.get('index')!r}")
            ms = layer.get("ms")
            if not isinstance(ms, dict):
                fail(f"{at}.ms", "must be an object {op: milliseconds}")
            for op in ms:
                if op not in OPS:
                    fail(f"{at}.ms.{op}", f"is not an op (ops: {', '.join(OPS)})")
            for op in CONV_OPS:
                if op not in ms:
                    fail(f"{at}.ms.{op}", "is missing")
            for op, value in ms.items():
                if not _number(value) or value < 0:
                    fail(f"{at}.ms.{op}", f"must be a number >= 0, got {value!r}")
            tables.append({op: float(v) for op, v in ms.items()})
            extras.append({k: v for k, v in layer.items() if k not in ("index", "ms")})
        known = {"format", "version", "unit", "space", "constant_ms", "layers", "protocol"}
        return RuntimeModel(tables, obj["constant_ms"], obj["space"], protocol, extras,
                            {k: v for k, v in obj.items() if k not in known})

    def to_json(self) -> dict:
        layers = []
        for i, (ms, extra) in enumerate(zip(self.layers, self.layer_extra)):
            entry = {"index": i, "ms": {op: ms[op] for op in OPS if op in ms and
                                        (op != "skip" or ms[op] != 0.0)}}
            entry.update(extra)
            layers.append(entry)
        obj = {"format": FORMAT, "version": VERSION, "unit": "ms", "space": self.space,
               "constant_ms": self.constant_ms, "protocol": self.protocol, "layers": layers}
        obj.update(self.extra)
        return copy.deepcopy(obj)  # callers may edit it without touching this model

    @staticmethod
    def load(path: str) -> "RuntimeModel":
        from .io import read_json
        return RuntimeModel.from_json(read_json(path, "runtime model"), where=path)

    def save(self, path: str) -> None:
        """Atomic: a temp file beside `path`, then a rename over it."""
        from .io import atomic_write_json
        atomic_write_json(path, self.to_json())

    @staticmethod
    def preset(name: str) -> "RuntimeModel":
        """A runtime model shipped with the package: "pixel1" = the authors' Pixel 1 figures."""
        if name not in PRESETS:
            raise SpnasError(f"unknown runtime-model preset {name!r} (presets: {', '.join(PRESETS)})")
        text = resources.files("spnas").joinpath("presets").joinpath(f"{name}.json").read_text()
        return RuntimeModel.from_json(json.loads(text), where=f"preset {name}")

    @staticmethod
    def resolve(spec: "str | RuntimeModel") -> "RuntimeModel":
        """A preset name or a file path (what the CLI's --model takes)."""
        if isinstance(spec, RuntimeModel):
            return spec
        if spec in PRESETS:
            return RuntimeModel.preset(spec)
        if not os.path.exists(spec):
            raise SpnasError(f"--model {spec!r}: not a preset ({', '.join(PRESETS)}) and no such file")
        return RuntimeModel.load(spec)

    # -- predictions ----------------------------------------------------------------------------
    def _check(self, arch: Architecture) -> None:
        if arch.space.name != self.space or arch.space.num_layers != self.num_layers:
            raise SpnasError(f"runtime model is for space {self.space!r} with {self.num_layers} layers; "
                             f"the architecture is in {arch.space.name!r} with "
                             f"{arch.space.num_layers}")

    def breakdown(self, arch: Architecture) -> list[dict]:
        """Per searchable layer: index, stage, op, ms."""
        self._check(arch)
        layers = arch.space.layers()
        return [{"index": i, "stage": layers[i]["stage"], "op": op, "ms": self.layers[i][op]}
                for i, op in enumerate(arch.ops)]

    def predict(self, arch: Architecture) -> float:
        """Latency (ms) of an architecture: the constant plus each layer's chosen op."""
        return self.constant_ms + sum(row["ms"] for row in self.breakdown(arch))

    def expected(self, decisions: torch.Tensor, formula: str = "lut") -> torch.Tensor:
        """Differentiable latency (ms) of (num_layers, 3) decisions (d_kernel, d_expand, d_keep).

        "lut": d_keep * the multilinear interpolation of the four conv ops in (d_kernel, d_expand)
               (+ (1 - d_keep) * skip): for 0/1 decisions it is exactly the table entry.
        "paper": R = Rch*q + Rch*(1-q)*d_kernel with Rch = d_keep*(R[k5e3] + d_expand*(R[k5e6] -
               R[k5e3])) and q = R[k3e6]/R[k5e6] (the authors' formula; approximate for k3 ops).
        """
        if formula not in FORMULAS:
            raise SpnasError(f"formula must be one of {FORMULAS}, got {formula!r}")
        if decisions.shape != (self.num_layers, 3):
            raise SpnasError(f"decisions must have shape ({self.num_layers}, 3), "
                             f"got {tuple(decisions.shape)}")
        t = self.table.to(device=decisions.device, dtype=decisions.dtype)
        r33, r36, r53, r56, rskip = t.unbind(1)
        dk, de, dkeep = decisions.unbind(1)
        if formula == "lut":
            conv = ((1 - dk) * ((1 - de) * r33 + de * r36) + dk * ((1 - de) * r53 + de * r56))
            per_layer = dkeep * conv + (1 - dkeep) * rskip
        else:
            q = r36 / r56
            rch = dkeep * (r53 + de * (r56 - r53))
            per_layer = rch * q + rch * (1 - q) * dk
        return per_layer.sum() + self.constant_ms


__all__ = ["RuntimeModel", "FORMAT", "PRESETS", "FORMULAS"]
