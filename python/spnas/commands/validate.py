"""`spnas validate`: a runtime model against whole-network measurements."""

from __future__ import annotations

import argparse

from . import positive_int
from .harness_options import add_backend_options, benchmark_from


def _validate(args: argparse.Namespace) -> int:
    from ..runtime import RuntimeModel
    from ..harness.validate import validate

    RuntimeModel.resolve(args.model)  # a mistake in the arguments is reported first
    benchmark = benchmark_from(args)
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


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "validate",
        help="check a runtime model against whole-network measurements",
        description="Sample random architectures of the model's space, export and time each whole "
                    "network, and compare with the runtime model's prediction: RMSE, MAPE, share "
                    "within 5% and 10%, a scatter plot and a JSON report in --out.",
    )
    p.add_argument("--model", required=True, metavar="LUT.json", help="runtime model to check")
    p.add_argument("--samples", type=positive_int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, metavar="DIR", help="report folder")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="default: the image size the model was profiled at")
    p.add_argument("--num-classes", type=positive_int, default=1000)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_backend_options(p)
    p.set_defaults(func=_validate)
