"""`spnas bench`: the superkernel op against its baselines (the measuring is spnas.bench)."""

from __future__ import annotations

import argparse

from . import positive_int

STAGES = 5  # spnas.bench.STAGE_SHAPES: the five searchable stages of the mnasnet space
DESCRIPTION = """`spnas bench`: the superkernel op against its baselines, side by side in one run.

For each supernet stage shape and memory format it times, interleaved round by round so that
machine noise hits every contender alike:
  * the fused op (`backend`, default the best compiled one here),
  * the reference oracle (eager PyTorch autograd of the formulas),
  * plain `F.conv2d` depthwise with a fixed 5x5 weight (what an unmasked network pays),
forward only and forward+backward, and reports medians and the ratios ours/baseline.
`--memory` adds the peak memory of one forward+backward of each (torch allocations).

Freed memory is kept mapped (glibc's heap is never trimmed; `--trim-heap` restores glibc's
default) so that, after the warm-up round, every contender's outputs come from memory already
mapped and the repeats time the kernels, not the page faults of freshly mapped memory, which
on a VM cost up to several ms per MB and fall on whichever contender happens to allocate
after a trim. Outputs of 32 MiB or more are fresh mappings whatever this setting (glibc maps
them one by one), for every contender alike.
"""


def _run(args) -> int:
    from ..bench import main  # torch: only when the benchmark runs

    return main(args)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="time the superkernel op against the reference and plain conv2d",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend",
                   help="op backend to time as 'ours' (default: the first of cpu, cuda, triton "
                        "this build and machine have)")
    p.add_argument("--layout", choices=["nchw", "channels_last", "both"], default="both")
    p.add_argument("--shapes", type=int, nargs="+", metavar="I", choices=range(STAGES),
                   help=f"indices 0-{STAGES - 1} into the five stage shapes (default: all)")
    p.add_argument("--batch", type=positive_int, help="batch size instead of 32")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed rounds per case (median)")
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's choice)")
    p.add_argument("--memory", action="store_true",
                   help="also measure the peak memory of fwd+bwd")
    p.add_argument("--trim-heap", action="store_true",
                   help="leave glibc's malloc at its default (freed memory given back to the "
                        "system, so repeats may pay page faults again)")
    p.add_argument("--json", metavar="FILE", help="write the raw figures here")
    p.set_defaults(func=_run)
