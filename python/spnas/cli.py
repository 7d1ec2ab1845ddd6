"""The `spnas` command: one subcommand per module, each module adding its own subparser.

A module in COMMANDS exposes `register(subparsers)`, which adds its subparser(s) and binds the
handler with `set_defaults(func=...)`; the handler takes the parsed args and returns an exit code.
User mistakes raise SpnasError and end as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import SpnasError, ToolError

COMMANDS = (
    "spnas.commands.search",
    "spnas.commands.derive",
    "spnas.commands.latency",
    "spnas.commands.plot",
    "spnas.commands.train",
    "spnas.commands.bench",
    "spnas.commands.export",
    "spnas.commands.profile",
    "spnas.commands.validate",
)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (exit code 2), without the usage dump."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="spnas", description=(
        "Single-Path NAS for PyTorch: search a latency-constrained ConvNet with a one-shot "
        "superkernel supernet, derive and inspect the result, and measure latency."),
        epilog="Run 'spnas COMMAND --help' for a command's options.")
    parser.add_argument("--version", action="version", version="spnas 0.1.0")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND",
                                       parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            # A command whose optional dependencies are missing must not break the others.
            if err.name and (err.name == name or name.startswith(err.name + ".")
                             or not err.name.startswith("spnas")):
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, or a bad flag (already reported in one line)
        return int(done.code or 0)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    # One error policy for every command (errors.py): a line on stderr, never a traceback.
    try:
        return int(args.func(args) or 0)
    except SpnasError as err:
        print(f"spnas {args.command}: error: {err}", file=sys.stderr)
        return 2
    except ToolError as err:
        print(f"spnas {args.command}: error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    except OSError as err:  # a file or folder the system refused: the user's to fix
        where = f": {err.filename}" if err.filename else ""
        print(f"spnas {args.command}: error: {err.strerror or err}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spnas {args.command}: interrupted; finished work is kept (rerun or --resume "
              f"to continue)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
