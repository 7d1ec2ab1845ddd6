"""`spnas profile`: every (layer, op) of a space measured on a device -> a runtime model."""

from __future__ import annotations

import argparse

from . import non_negative_int, positive_int
from .harness_options import add_backend_options, benchmark_from


def _profile(args: argparse.Namespace) -> int:
    from ..space import get_space
    from ..harness.profile import profile

    get_space(args.space)  # a mistake in the arguments is reported before a missing runtime
    benchmark = benchmark_from(args)
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


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "profile",
        help="measure every (layer, op) of a space and write a runtime model",
        description="Export each candidate op of each searchable layer as its own model at its "
                    "input shape, plus the fixed parts, time them, and write a runtime model "
                    "(the lookup table `spnas search --latency-model` takes) that records the "
                    "protocol. Every finished measurement is kept: rerun after a kill to resume.",
    )
    p.add_argument("--space", default="mnasnet", help="search space name (default: %(default)s)")
    p.add_argument("--image-size", type=positive_int, default=224)
    p.add_argument("--num-classes", type=positive_int, default=1000)
    p.add_argument("--out", required=True, metavar="LUT.json", help="runtime model to write")
    p.add_argument("--calibrate", type=non_negative_int, default=8, metavar="K",
                   help="time K random whole networks and set the fixed-part constant from them "
                        "(the fixed part in context); 0 keeps the isolated fixed-part timings "
                        "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the calibration architectures")
    p.add_argument("--restart", action="store_true",
                   help="discard measurements of an earlier run instead of resuming")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_backend_options(p)
    p.set_defaults(func=_profile)
