"""Wall time of one iteration of the real `spnas search` loop: batch, training step, logging and
progress bar, as a user's run pays it (bench_supernet.py times a stand-in step on synthetic
data; this one runs `run_search` itself and times the gaps between consecutive steps).

    python benchmarks/bench_search_step.py                          # built-in digits, 10 epochs
    python benchmarks/bench_search_step.py --target-ms 70 --epochs 6

Prints the median iteration over the run (the first 5 and every epoch's last, which carries
the evaluation, left out), p10-p90 and the steps' count. Compare code versions by running it
on each, interleaved, and reading the ratio of the medians.
"""

from __future__ import annotations

import statistics
import tempfile
import time

import torch

import spnas.loop
from spnas.config import SearchConfig
from spnas.search import run_search
from spnas.bench import parse_script_args, script_parser


def main(argv=None) -> int:
    p = script_parser(__doc__)
    p.add_argument("--data", help="as spnas search --data (default: the built-in digits)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--dropout-epochs", type=float, default=2)
    p.add_argument("--target-ms", type=float, help="a latency budget (the controller's per-step read-back)")
    p.add_argument("--no-progress", action="store_true", help="without the progress bar")
    args = parse_script_args(p, argv)
    cfg = SearchConfig(data=args.data, epochs=args.epochs, dropout_epochs=args.dropout_epochs,
                       target_ms=args.target_ms, progress=not args.no_progress,
                       run_dir=tempfile.mkdtemp(prefix="bench_search_step-") + "/run")
    starts: list[float] = []
    epoch_ends: list[int] = []
    run = spnas.loop.Loop.run

    def timed_run(loop, train_set, steps_done, metrics, step, end_epoch, save, out):
        # the loop takes its step and end-of-epoch work as functions: wrap them to time the gaps
        def timed_step(*a):
            starts.append(time.perf_counter())
            return step(*a)

        def timed_end_epoch(*a):
            epoch_ends.append(len(starts))
            return end_epoch(*a)
        return run(loop, train_set, steps_done, metrics, timed_step, timed_end_epoch, save, out)

    spnas.loop.Loop.run = timed_run
    try:
        run_search(cfg)
    finally:
        spnas.loop.Loop.run = run
    gaps = [(b - a) * 1e3 for i, (a, b) in enumerate(zip(starts, starts[1:]))
            if i >= 5 and i + 1 not in epoch_ends]
    deciles = statistics.quantiles(gaps, n=10)
    print(f"search iteration: median {statistics.median(gaps):.1f} ms (p10-p90 "
          f"{deciles[0]:.1f}-{deciles[-1]:.1f}) over {len(gaps)} of {len(starts)} steps, "
          f"{torch.get_num_threads()} threads, progress bar {'off' if args.no_progress else 'on'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
