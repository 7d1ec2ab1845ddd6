"""`spnas export`, `spnas profile` and `spnas validate`: the latency harness on the command line.

`register(subparsers)` adds the three commands to the `spnas` parser. Heavy imports (torch
exporters, litert-torch) happen inside the commands so `spnas --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

__all__ = ["register"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _cpu_list(text: str) -> list[int]:
    try:
        return sorted({int(c) for c in text.split(",") if c.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected cpu numbers like 1 or 2,3, got {text!r}") from None


def _add_backend_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("benchmark protocol")
    group.add_argument("--backend", choices=("litert", "adb"), default="litert",
                       help="litert: LiteRT interpreter on this machine; adb: benchmark_model on "
                            "an Android phone (default: %(default)s)")
    group.add_argument("--threads", type=_positive_int, default=1,
                       help="inference threads (default: %(default)s, as in the paper)")
    group.add_argument("--runs", type=_positive_int, default=100,
                       help="timed runs per model; the median is kept (default: %(default)s)")
    group.add_argument("--warmup-runs", type=_non_negative_int, default=20,
                       help="untimed runs before timing (default: %(default)s)")
    group.add_argument("--passes", type=_positive_int, default=3,
                       help="measure every model this many times, in passes over all models "
                            "spread over the run, and keep its quietest pass (default: %(default)s)")
    group.add_argument("--cpus", type=_cpu_list, default=None,
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


def _make_benchmark(args: argparse.Namespace):
    from .backends import make_benchmark

    common = dict(threads=args.threads, runs=args.runs, warmup_runs=args.warmup_runs)
    if args.backend == "adb":
        if not args.serial:
            from ..errors import SpnasError

            raise SpnasError("--serial is required with --backend adb (see `adb devices`)")
        return make_benchmark("adb", serial=args.serial, benchmark_path=args.benchmark_path,
                              cpu_mask=args.cpu_mask, adb=args.adb, **common)
    return make_benchmark("litert", cpus=args.cpus, clock=args.clock, **common)


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """User mistakes -> one line and exit 2; a failed tool or device -> one line and exit 1."""

    def run(args: argparse.Namespace) -> int:
        from .benchmark import BenchmarkError
        from .export import ExportError

        try:
            return command(args)
        except (ValueError, OSError) as e:  # SpnasError is a ValueError
            print(f"spnas {args.command_name}: error: {e}", file=sys.stderr)
            return 2
        except (BenchmarkError, ExportError) as e:
            print(f"spnas {args.command_name}: error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"spnas {args.command_name}: interrupted; finished work is kept, rerun to resume",
                  file=sys.stderr)
            return 130

    return run


# -- export ---------------------------------------------------------------------------------------

# --out's extension -> format, when --format is not given.
_EXTENSIONS = {".tflite": "tflite", ".onnx": "onnx", ".pt": "torchscript", ".pth": "torchscript",
               ".ts": "torchscript"}


def _export_format(fmt: str | None, out: str) -> str:
    """--format, or the one --out's extension names; a conflict between them is an error."""
    from ..errors import SpnasError
    named = _EXTENSIONS.get(os.path.splitext(out)[1].lower())
    if fmt is None:
        if named is None:
            raise SpnasError(f"--out {out}: cannot tell the format from the extension; give "
                             f"--format (tflite, onnx or torchscript) or name the file "
                             f"{', '.join(f'*{e}' for e in _EXTENSIONS)}")
        return named
    if named is not None and named != fmt:
        raise SpnasError(f"--format {fmt} conflicts with --out {out}, whose extension means {named}")
    return fmt


def _export_input(args: argparse.Namespace) -> tuple[int, int, list[str]]:
    """(image size, classes, where each came from): the flags, else the run the files come from
    (config.json beside ARCH.json; the classifier's rows in --weights), else 224 px and 1000."""
    import json

    notes = []
    size, classes = args.image_size, args.num_classes
    if size is None:
        config = os.path.join(os.path.dirname(os.path.abspath(args.arch)), "config.json")
        try:
            with open(config) as f:
                size = int(json.load(f).get("image_size") or 0) or None
        except (OSError, ValueError, TypeError, AttributeError):
            size = None
        notes.append(f"{size} px from {config}" if size else "224 px (default)")
        size = size or 224
    if classes is None and args.weights:
        from .export import classifier_rows
        classes = classifier_rows(args.weights)
        if classes:
            notes.append(f"{classes} classes from {args.weights}")
    if classes is None:
        classes = 1000
        notes.append("1000 classes (default)")
    return size, classes, notes


def _export(args: argparse.Namespace) -> int:
    from ..layers import build_child
    from ..space import Architecture
    from .export import export, load_weights

    fmt = _export_format(args.format, args.out)
    arch = Architecture.load(args.arch)
    size, classes, notes = _export_input(args)
    if notes:
        print(f"input: {', '.join(notes)}")
    model = build_child(arch, num_classes=classes)
    if args.weights:
        load_weights(model, args.weights)
    result = export(model, (1, 3, size, size), args.out, fmt, rtol=args.rtol)
    print(result.summary())
    return 0


# -- profile --------------------------------------------------------------------------------------

def _profile(args: argparse.Namespace) -> int:
    from ..space import get_space
    from .profile import profile

    get_space(args.space)  # a mistake in the arguments is reported before a missing runtime
    benchmark = _make_benchmark(args)
    profile(
        space=args.space,
        benchmark=benchmark,
        out=args.out,
        image_size=args.image_size,
        num_classes=args.num_classes,
        calibrate=args.calibrate,
        seed=args.seed,
        passes=args.passes,
        restart=args.restart,
        progress=not args.no_progress,
    )
    print(f"wrote {args.out}")
    return 0


# -- validate -------------------------------------------------------------------------------------

def _validate(args: argparse.Namespace) -> int:
    from ..runtime import RuntimeModel
    from .validate import validate

    RuntimeModel.resolve(args.model)  # a mistake in the arguments is reported first
    benchmark = _make_benchmark(args)
    report = validate(
        model_path=args.model,
        benchmark=benchmark,
        samples=args.samples,
        seed=args.seed,
        out_dir=args.out,
        image_size=args.image_size,
        num_classes=args.num_classes,
        passes=args.passes,
        progress=not args.no_progress,
    )
    s = report["summary"]
    print(
        f"{s['samples']} architectures: RMSE {s['rmse_ms']:.3f} ms, MAPE {100 * s['mape']:.2f}%, "
        f"within 5% {100 * s['within_5pct']:.0f}%, within 10% {100 * s['within_10pct']:.0f}% "
        f"-> {args.out}"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `export`, `profile` and `validate` to the `spnas` command."""
    p = subparsers.add_parser(
        "export",
        help="export an architecture to tflite, onnx or torchscript, checked against PyTorch",
        description="Build the network of ARCH.json and export it. The file is run back through "
                    "its runtime and compared with PyTorch's eval output (fp32 tolerance "
                    "--rtol, relative to the largest output). TFLite takes NHWC input.",
    )
    p.add_argument("arch", metavar="ARCH.json", help="architecture file (from `spnas search`/`derive`)")
    p.add_argument("--format", choices=("tflite", "onnx", "torchscript"),
                   help="default: from --out's extension (.tflite, .onnx, .pt/.pth/.ts)")
    p.add_argument("--weights", metavar="CKPT", help="checkpoint to load (weights only)")
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the model")
    p.add_argument("--image-size", type=_positive_int,
                   help="input size in px (default: the image_size in config.json beside "
                        "ARCH.json, as spnas search and train write it; else 224)")
    p.add_argument("--num-classes", type=_positive_int,
                   help="classifier outputs (default: the classifier's rows in --weights; "
                        "else 1000)")
    p.add_argument("--rtol", type=float, default=1e-4,
                   help="largest accepted error relative to the largest output (default: %(default)s)")
    p.set_defaults(func=_guarded(_export), command_name="export")

    p = subparsers.add_parser(
        "profile",
        help="measure every (layer, op) of a space and write a runtime model",
        description="Export each candidate op of each searchable layer as its own model at its "
                    "input shape, plus the fixed parts, time them, and write a runtime model "
                    "(the lookup table `spnas search --latency-model` takes) that records the "
                    "protocol. Every finished measurement is kept: rerun after a kill to resume.",
    )
    p.add_argument("--space", default="mnasnet", help="search space name (default: %(default)s)")
    p.add_argument("--image-size", type=_positive_int, default=224)
    p.add_argument("--num-classes", type=_positive_int, default=1000)
    p.add_argument("--out", required=True, metavar="LUT.json", help="runtime model to write")
    p.add_argument("--calibrate", type=_non_negative_int, default=8, metavar="K",
                   help="time K random whole networks and set the fixed-part constant from them "
                        "(the fixed part in context); 0 keeps the isolated fixed-part timings "
                        "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the calibration architectures")
    p.add_argument("--restart", action="store_true",
                   help="discard measurements of an earlier run instead of resuming")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_backend_options(p)
    p.set_defaults(func=_guarded(_profile), command_name="profile")

    p = subparsers.add_parser(
        "validate",
        help="check a runtime model against whole-network measurements",
        description="Sample random architectures of the model's space, export and time each whole "
                    "network, and compare with the runtime model's prediction: RMSE, MAPE, share "
                    "within 5% and 10%, a scatter plot and a JSON report in --out.",
    )
    p.add_argument("--model", required=True, metavar="LUT.json", help="runtime model to check")
    p.add_argument("--samples", type=_positive_int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, metavar="DIR", help="report folder")
    p.add_argument("--image-size", type=_positive_int, default=None,
                   help="default: the image size the model was profiled at")
    p.add_argument("--num-classes", type=_positive_int, default=1000)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_backend_options(p)
    p.set_defaults(func=_guarded(_validate), command_name="validate")
