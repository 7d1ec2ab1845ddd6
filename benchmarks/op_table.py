"""Prints the op benchmark table of the README: the fused op vs the reference vs plain
depthwise conv2d on the five stage shapes, measured side by side in one run.

    python benchmarks/op_table.py [--layout both] [--repeats 5] [--memory] [--json FILE]

Same as `spnas bench` (spnas/commands/bench.py says what is measured).
"""

import argparse
import sys

from spnas.commands import bench

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="op_table")
    bench.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *sys.argv[1:]])
    sys.exit(args.func(args))
