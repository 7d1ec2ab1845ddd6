"""The (C, 25) part of one fwd+bwd call of the Triton backend, both ways it can run: the compiled
ops `spnas::superkernel_weight(_backward)` (csrc/superkernel.h) and the oracle's
`reference.masked_weight` with its `torch.func.vjp` pullback (the fallback where the compiled
library has no kernels for the device). No convolution: only what a call pays whatever its
batch, at the channel counts of the paper's stages.

    python benchmarks/bench_superkernel_part.py                  # CPU, fp32
    python benchmarks/bench_superkernel_part.py --device cuda    # on a GPU (synchronised)

Rounds interleave the two ways; the table gives the median microseconds per call, p10-p90,
and the ratio of the medians, all from this one run.
"""

from __future__ import annotations

import contextlib
import statistics
import time

import torch

from spnas_ops import triton_op
from spnas.bench import parse_script_args, script_parser

STAGE_CHANNELS = (96, 144, 240, 480, 1152)  # the depthwise widths at 112, 56, 28, 14 and 7 px


def one_call(device: torch.device, channels: int):
    """What the Triton op's forward and backward do around their kernels, for one layer."""
    g = torch.Generator().manual_seed(channels)
    weight = (0.3 * torch.randn(channels, 1, 5, 5, generator=g)).to(device)
    thresholds, scale = torch.full((3,), 0.5, device=device), torch.ones(3, device=device)
    grad_w_eff = torch.randn(channels, 1, 5, 5, generator=g).to(device)
    grad_d = torch.randn(3, generator=g).to(device)

    def run():
        triton_op.superkernel_weight(weight, thresholds, scale, True)
        _, pullback = triton_op.superkernel_vjp(weight, thresholds, scale, True)
        pullback(grad_w_eff, grad_d)
    return run


@contextlib.contextmanager
def way(compiled: bool):
    """The Triton op's (C, 25) part the compiled way or the oracle's, while inside."""
    real = triton_op._compiled_superkernel
    triton_op._compiled_superkernel = lambda _: compiled
    try:
        yield
    finally:
        triton_op._compiled_superkernel = real


def per_call_us(run, calls: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def main(argv=None) -> int:
    p = script_parser(__doc__)
    p.add_argument("--device", default="cpu")
    p.add_argument("--calls", type=int, default=50, help="calls timed per round")
    p.add_argument("--rounds", type=int, default=9)
    args = parse_script_args(p, argv)
    device = torch.device(args.device)
    if not triton_op._compiled_superkernel(device):
        raise SystemExit(f"bench_superkernel_part: the compiled library has no {device.type} "
                         f"kernels here; build it: pip install --no-build-isolation -e .")
    print(f"# (C, 25) part of one fwd+bwd call, fp32, {device}, {args.rounds} rounds of "
          f"{args.calls} calls, {torch.get_num_threads()} threads")
    print("| C | compiled ops us (p10-p90) | oracle + torch.func.vjp us (p10-p90) | ratio |")
    print("|---:|---:|---:|---:|")
    for channels in STAGE_CHANNELS:
        run = one_call(device, channels)
        times = {True: [], False: []}  # compiled: per-call us of each round
        for compiled in times:
            with way(compiled):
                run()  # warm-up
        for _ in range(args.rounds):
            for compiled in times:
                with way(compiled):
                    times[compiled].append(per_call_us(run, args.calls, device))
        cells = []
        for compiled in (True, False):
            ts = sorted(times[compiled])
            deciles = statistics.quantiles(ts, n=10) if len(ts) > 1 else [ts[0]] * 9
            cells.append(f"{statistics.median(ts):.0f} ({deciles[0]:.0f}-{deciles[-1]:.0f})")
        ratio = statistics.median(times[False]) / statistics.median(times[True])
        print(f"| {channels} | {cells[0]} | {cells[1]} | {ratio:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
