"""The benchmark-protocol options that `spnas profile` and `spnas validate` share, and the
benchmark they describe."""

from __future__ import annotations

import argparse

from . import non_negative_int, positive_int


def cpu_list(text: str) -> list[int]:
    try:
        return sorted({int(c) for c in text.split(",") if c.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected cpu numbers like 1 or 2,3, got {text!r}") from None


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("benchmark protocol")
    group.add_argument("--backend", choices=("litert", "adb"), default="litert",
                       help="litert: LiteRT interpreter on this machine; adb: benchmark_model on "
                            "an Android phone (default: %(default)s)")
    group.add_argument("--threads", type=positive_int, default=1,
                       help="inference threads (default: %(default)s, as in the paper)")
    group.add_argument("--runs", type=positive_int, default=100,
                       help="timed runs per model; the median is kept (default: %(default)s)")
    group.add_argument("--warmup-runs", type=non_negative_int, default=20,
                       help="untimed runs before timing (default: %(default)s)")
    group.add_argument("--passes", type=positive_int, default=3,
                       help="measure every model this many times, in passes over all models "
                            "spread over the run, and keep its quietest pass (default: %(default)s)")
    group.add_argument("--cpus", type=cpu_list, default=None,
                       help="litert: cores to pin to, e.g. 1 or 2,3 (default: the last --threads "
                            "cores this process may use)")
    group.add_argument("--clock", choices=("auto", "cpu", "wall"), default="auto",
                       help="litert: 'cpu' = CPU time of the inference thread (one thread only; "
                            "immune to preemption on shared hosts), 'wall' = wall clock, 'auto' = "
                            "cpu for one thread, wall for more (default: %(default)s)")
    group.add_argument("--serial", default=None, help="adb: device serial (see `adb devices`)")
    group.add_argument("--benchmark-path", default="/data/local/tmp/benchmark_model",
                       help="adb: path of the benchmark_model binary on the phone "
                            "(default: %(default)s)")
    group.add_argument("--cpu-mask", default="auto",
                       help="adb: taskset hex mask, or 'auto' for the fastest --threads cores "
                            "(default: %(default)s)")
    group.add_argument("--adb", default="adb", help="adb: the adb executable (default: %(default)s)")


def benchmark_from(args: argparse.Namespace):
    from ..harness.backends import make_benchmark

    common = dict(threads=args.threads, runs=args.runs, warmup_runs=args.warmup_runs)
    if args.backend == "adb":
        if not args.serial:
            from ..errors import SpnasError

            raise SpnasError("--serial is required with --backend adb (see `adb devices`)")
        return make_benchmark("adb", serial=args.serial, benchmark_path=args.benchmark_path,
                              cpu_mask=args.cpu_mask, adb=args.adb, **common)
    return make_benchmark("litert", cpus=args.cpus, clock=args.clock, **common)
