"""`spnas plot RUN_DIR`: a PNG of a search's latency, cross-entropy and per-layer decisions."""

from __future__ import annotations

from ..plotting import plot_run


def _run(args) -> int:
    print(f"wrote {plot_run(args.run_dir, args.out)}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plot", help="plot a search's progress (PNG)",
        description="Read RUN_DIR/metrics.jsonl and draw predicted latency and cross-entropy per "
                    "step, and each searchable layer's op per epoch.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by spnas search")
    p.add_argument("--out", help="PNG path (default: RUN_DIR/progress.png)")
    p.set_defaults(func=_run)
