"""The subcommands of `spnas` that drive a search: search, derive, latency, plot."""

from __future__ import annotations

import argparse


def add_run_arguments(p: argparse.ArgumentParser, what: str, folder: str) -> None:
    """--run-dir, --resume, --no-progress (and the tests' hidden --stop-after-step) of a
    command that trains in a run folder."""
    p.add_argument("--run-dir", help=f"output folder (default: {folder}, or the first free {folder}-N)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help=f"continue the {what} in RUN_DIR from its checkpoint (its recipe is kept)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--stop-after-step", type=int, help=argparse.SUPPRESS)


def config_from_args(cfg, args: argparse.Namespace, flags) -> None:
    """Set on `cfg` every flag of the (flag, field, type, help) table that was given ("off"
    means None), and the run-folder arguments of `add_run_arguments`."""
    for _, field, _, _ in flags:
        value = getattr(args, field)
        if value is not None:
            setattr(cfg, field, None if value == "off" else value)
    cfg.run_dir = args.resume or args.run_dir
    cfg.progress = not args.no_progress
    cfg.stop_after_step = args.stop_after_step
