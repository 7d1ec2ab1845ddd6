"""The subcommands of `spnas`, one module each (spnas/cli.py lists them), and the argument
types and run-folder arguments they share."""

from __future__ import annotations

import argparse


def int_at_least(minimum: int):
    """argparse type: a whole number >= minimum (argparse reports anything else in one line)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"  # argparse names the type in some messages
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def refuse_recipe_flags(args: argparse.Namespace, flags) -> None:
    """With --resume the run's saved recipe wins: a recipe flag given anyway is an error, not
    silently ignored. Only how the process runs (--device, --workers, ...) may change."""
    if args.resume is None:
        return
    from ..errors import SpnasError
    from ..config import PROCESS_KNOBS
    given = [flag for flag, field, _, _ in flags
             if field not in PROCESS_KNOBS and getattr(args, field) is not None]
    if given:
        allowed = ", ".join(flag for flag, field, _, _ in flags if field in PROCESS_KNOBS)
        raise SpnasError(f"{', '.join(given)}: a resumed run keeps the recipe it started with "
                         f"(only {allowed} may change); start a new run to change it")


def add_run_arguments(p: argparse.ArgumentParser, what: str, folder: str) -> None:
    """--run-dir, --resume, --no-progress (and the tests' hidden --stop-after-step) of a
    command that trains in a run folder."""
    g = p.add_argument_group("run folder")
    g.add_argument("--run-dir", help=f"output folder (default: {folder}, or the first free {folder}-N)")
    g.add_argument("--resume", metavar="RUN_DIR",
                   help=f"continue the {what} in RUN_DIR from its checkpoint (its recipe is kept)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--stop-after-step", type=int, help=argparse.SUPPRESS)


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
