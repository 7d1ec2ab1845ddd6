"""Fakes for the harness tests: a small space, an exporter that writes no real model and a fast,
deterministic benchmark, so profiling logic runs in milliseconds. (A plain module, not a
conftest: tests/spnas has its own conftest and two would clash as `import conftest`.)"""

import json
import os

from spnas.harness.benchmark import Measurement
from spnas.space import SearchSpace, register_space

# A small space with the same structure as "mnasnet" (fixed block, 2 searchable stages, fixed
# block, head) so real TFLite conversions stay few and quick.
TINY = SearchSpace(
    name="tiny-test",
    stem=8,
    stages=("ds_r1_k3_s1_c8_noskip", "sp_r2_k5_s2_e6_c8", "sp_r1_k5_s2_e6_c16",
            "ir_r1_k3_s1_e6_c16_noskip"),
    head=32,
)
register_space(TINY)


def fake_exporter(model, input_shape, path):
    """Writes the model's parameter count instead of a TFLite graph."""
    params = sum(p.numel() for p in model.parameters())
    network = type(model).__name__ == "ChildNet"
    with open(path, "w") as f:
        json.dump({"params": params, "network": network}, f)


class FakeBenchmark:
    """Latency proportional to parameter count: additive by construction, so a runtime model
    built from pieces predicts whole networks exactly. `in_context` scales whole networks (a
    stand-in for inter-layer effects); `fail_after` raises KeyboardInterrupt (a kill)."""

    name = "fake"

    def __init__(self, in_context=1.0, fail_after=None):
        self.in_context = in_context
        self.fail_after = fail_after
        self.measured = []

    def protocol(self):
        return {"backend": "fake", "runtime_version": "0", "threads": 1, "runs": 1,
                "device": "test"}

    def measure(self, path):
        if self.fail_after is not None and len(self.measured) >= self.fail_after:
            raise KeyboardInterrupt
        with open(path) as f:
            info = json.load(f)
        ms = 1e-4 * info["params"] * (self.in_context if info["network"] else 1.0)
        self.measured.append(os.path.basename(path))
        return Measurement(ms, ms, 0.0, ms, ms, runs=1)
