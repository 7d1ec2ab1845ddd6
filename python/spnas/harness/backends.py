"""The benchmark backends by name: the factory the CLI and runtime-model protocols use. Apart
from benchmark.py (the interface the backends implement), so that no module imports its own
importers."""

from __future__ import annotations

from typing import Any

from ..errors import SpnasError
from .adb import AdbBenchmark
from .benchmark import Benchmark
from .litert import LiteRTBenchmark

# Backends by the name the CLI and the runtime-model protocol use.
BACKENDS = {"litert": LiteRTBenchmark, "adb": AdbBenchmark}


def make_benchmark(name: str, **options: Any) -> Benchmark:
    """Backend `name` ("litert" or "adb") built with its keyword options."""
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise SpnasError(f"backend must be one of {sorted(BACKENDS)}, got {name!r}") from None
    return factory(**options)
