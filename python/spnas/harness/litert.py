"""The "litert" backend: the LiteRT interpreter in this process, on this machine's CPU.

Only `invoke()` is inside the timer: the input is set once, so copying it in (and the Python
call overhead of set_tensor) is not counted. The process is pinned, because a single-thread run
that migrates between cores mid-inference is a large source of noise.

The clock. With one thread, XNNPACK runs the whole inference in the calling thread, so that
thread's CPU time is the inference's latency on an otherwise idle core. On a shared host the
wall clock is not: an inference longer than a scheduler time slice gets preempted by the other
processes, so a 12 ms network reads 40 ms while a 0.3 ms layer (one slice) reads 0.3 ms, and no
additive model could hold. clock="auto" therefore uses the thread's CPU time for one thread and
the wall clock for more (the CPU time of several threads adds up, it is not latency).
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any, Iterable

import numpy as np

from ..errors import SpnasError
from .benchmark import BenchmarkError, Measurement, check_positive, summarize_ms

__all__ = ["CLOCKS", "LiteRTBenchmark", "load_interpreter_class", "runtime_version", "run_tflite"]


def load_interpreter_class():
    """(Interpreter class, runtime name): ai-edge-litert, or tflite-runtime when that is installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite-runtime"
    except ImportError:
        raise BenchmarkError(
            "no TFLite interpreter: install ai-edge-litert (pip install ai-edge-litert)"
        ) from None


def runtime_version(runtime: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(runtime)
    except metadata.PackageNotFoundError:
        return "unknown"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_interpreter(model_path: str, threads: int = 1):
    interpreter_class, _ = load_interpreter_class()
    if not os.path.isfile(model_path):
        raise BenchmarkError(f"model file not found: {model_path}")
    try:
        interpreter = interpreter_class(model_path=model_path, num_threads=threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise BenchmarkError(f"{model_path}: not a loadable TFLite model ({e})") from None
    return interpreter


def run_tflite(model_path: str, inputs: Iterable[np.ndarray], threads: int = 1) -> list[np.ndarray]:
    """Outputs of the .tflite model for the given inputs (in signature order)."""
    interpreter = make_interpreter(model_path, threads)
    for detail, value in zip(interpreter.get_input_details(), inputs):
        interpreter.set_tensor(detail["index"], np.ascontiguousarray(value, dtype=detail["dtype"]))
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"]).copy() for d in interpreter.get_output_details()]


CLOCKS = ("auto", "cpu", "wall")


class LiteRTBenchmark:
    """Median latency of `invoke()` over `runs` runs after `warmup_runs`, on pinned CPUs.

    cpus: the cores to pin to; default the last `threads` cores this process may use (core 0
    tends to take the interrupts). Pinning is undone after each measurement.
    clock: "cpu" (the thread's CPU time, one thread only), "wall", or "auto" (see module doc).
    """

    name = "litert"

    def __init__(
        self,
        threads: int = 1,
        warmup_runs: int = 20,
        runs: int = 100,
        cpus: Iterable[int] | None = None,
        seed: int = 0,
        clock: str = "auto",
    ):
        self.threads = check_positive("threads", threads)
        self.warmup_runs = check_positive("warmup_runs", warmup_runs, minimum=0)
        self.runs = check_positive("runs", runs)
        self.seed = seed
        if clock not in CLOCKS:
            raise SpnasError(f"clock must be one of {CLOCKS}, got {clock!r}")
        if clock == "auto":
            clock = "cpu" if threads == 1 else "wall"
        if clock == "cpu" and threads != 1:
            raise SpnasError("clock 'cpu' times the calling thread only; use 'wall' with threads > 1")
        self.clock = clock
        _, self.runtime = load_interpreter_class()
        if cpus is None:
            allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
            cpus = allowed[-threads:]
        self.cpus = sorted(set(cpus))

    def protocol(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "runtime": self.runtime,
            "runtime_version": runtime_version(self.runtime),
            "threads": self.threads,
            "warmup_runs": self.warmup_runs,
            "runs": self.runs,
            "statistic": "median",
            "clock": {"cpu": "thread CPU time", "wall": "wall clock"}[self.clock],
            "cpus": self.cpus,
            "device": f"{platform.node()} ({_cpu_name()}, {os.cpu_count()} cpus)",
        }

    def measure(self, model_path: str) -> Measurement:
        interpreter = make_interpreter(model_path, self.threads)
        rng = np.random.default_rng(self.seed)
        for detail in interpreter.get_input_details():
            value = rng.standard_normal(detail["shape"]).astype(detail["dtype"])
            interpreter.set_tensor(detail["index"], value)
        with _pinned(self.cpus):
            for _ in range(self.warmup_runs):
                interpreter.invoke()
            samples = []
            clock = time.thread_time_ns if self.clock == "cpu" else time.perf_counter_ns
            for _ in range(self.runs):
                start = clock()
                interpreter.invoke()
                samples.append((clock() - start) / 1e6)
        return summarize_ms(samples, self.warmup_runs)


class _pinned:
    """Context manager: restrict this process to `cpus`, restore the old mask afterwards."""

    def __init__(self, cpus: list[int]):
        self.cpus = cpus
        self.saved = None

    def __enter__(self):
        if self.cpus and hasattr(os, "sched_setaffinity"):
            self.saved = os.sched_getaffinity(0)
            try:
                os.sched_setaffinity(0, self.cpus)
            except OSError as e:
                raise BenchmarkError(f"cannot pin to cpus {self.cpus}: {e}") from None
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            os.sched_setaffinity(0, self.saved)
        return False
