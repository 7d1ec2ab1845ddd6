"""One interface for every way spnas times a model: `Benchmark.measure(path) -> Measurement`.

A runtime model is only as good as the protocol behind its numbers, so every backend also
describes itself (`protocol()`): which runtime, which version, how many threads and runs, on
which device. `spnas profile` stores that description in the runtime-model file it writes.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any, Protocol, runtime_checkable

from ..errors import SpnasError, ToolError

__all__ = [
    "Measurement",
    "Benchmark",
    "BenchmarkError",
    "DeviceLostError",
    "summarize_ms",
    "best_of_passes",
]


class BenchmarkError(ToolError):
    """A model could not be timed (runtime missing, tool failed, output not understood)."""


class DeviceLostError(BenchmarkError):
    """The device went away (unplugged, offline, unauthorized) in the middle of a run."""


@dataclasses.dataclass(frozen=True)
class Measurement:
    """Latency of one model in milliseconds.

    `median_ms` is the figure runtime models use: on a shared or thermally throttled CPU the
    median is far more repeatable than the mean. Backends whose tool reports no median (older
    `benchmark_model` builds) fill it with the mean and say so in `statistic`.
    """

    median_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    runs: int
    warmup_runs: int = 0
    statistic: str = "median"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Measurement":
        names = {f.name for f in dataclasses.fields(cls)}
        missing = {"median_ms", "runs"} - set(data)
        if missing:
            raise SpnasError(f"measurement lacks field {sorted(missing)[0]!r}")
        return cls(**{k: v for k, v in data.items() if k in names})


def summarize_ms(samples_ms: list[float], warmup_runs: int = 0) -> Measurement:
    """Measurement of a list of per-run latencies (ms)."""
    if not samples_ms:
        raise BenchmarkError("no timed runs")
    return Measurement(
        median_ms=statistics.median(samples_ms),
        mean_ms=statistics.fmean(samples_ms),
        std_ms=statistics.pstdev(samples_ms) if len(samples_ms) > 1 else 0.0,
        min_ms=min(samples_ms),
        max_ms=max(samples_ms),
        runs=len(samples_ms),
        warmup_runs=warmup_runs,
    )


def best_of_passes(passes: list[dict[str, Any]]) -> Measurement:
    """The pass with the lowest median, marked with how many passes it was chosen from.

    On a shared machine interference only ever adds time, and it comes and goes over seconds to
    minutes; a model measured in passes spread over the whole run and kept at its quietest pass
    is compared with other models at comparable (low) interference, whenever each was timed.
    """
    if not passes:
        raise BenchmarkError("no measurement passes")
    best = Measurement.from_dict(min(passes, key=lambda m: m["median_ms"]))
    if len(passes) == 1:
        return best
    return dataclasses.replace(best, statistic=f"{best.statistic}, best of {len(passes)} passes")


@runtime_checkable
class Benchmark(Protocol):
    """What `profile` and `validate` need from a backend."""

    name: str

    def measure(self, model_path: str) -> Measurement:
        """Time the .tflite file at `model_path`."""
        ...

    def protocol(self) -> dict[str, Any]:
        """JSON-able description: backend, runtime, runtime_version, threads, runs, device."""
        ...


def check_positive(name: str, value: int, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise SpnasError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value
