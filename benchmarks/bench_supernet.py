"""Supernet training-step throughput: fused superkernel op vs the reference vs a plain network.

Times one full training step (forward, cross-entropy, backward, RMSProp update) of

  * the Single-Path supernet with op_backend="cpu" (the fused C++ superkernel),
  * the same supernet with op_backend="reference" (pure PyTorch masks + conv2d),
  * the child network with every searchable layer fixed to a plain 5x5-e6 depthwise conv
    (the cost floor: what the supernet would cost if masking were free),

side by side in one process (interleaved rounds, so machine load hits all alike), and prints
the median images/s of each and its ratio to the plain network as a markdown table.

    python benchmarks/bench_supernet.py                      # batch 32, 224 px
    python benchmarks/bench_supernet.py --image-size 128 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "python")]

import spnas_ops  # noqa: E402
from spnas import Architecture, SinglePathSuperNet  # noqa: E402
from spnas.optim import RMSpropTF  # noqa: E402


def make_step(model, x, y):
    opt = RMSpropTF(model.parameters(), lr=1e-4)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per variant (median)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--width-mult", type=float, default=1.0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size)
    y = torch.randint(0, 1000, (args.batch,))
    have = spnas_ops.available_backends()
    variants, notes = {}, []
    for backend in ("cpu", "reference"):
        if backend not in have:
            notes.append(f"op_backend={backend!r} is not available in this build (have: {have}); skipped")
            continue
        net = SinglePathSuperNet(num_classes=1000, width_mult=args.width_mult, op_backend=backend)
        variants[f"supernet, op_backend={backend!r}"] = make_step(net, x, y)
    fixed = Architecture(["k5_e6"] * 20).build(num_classes=1000, width_mult=args.width_mult)
    variants["plain network, fixed 5x5-e6 depthwise"] = make_step(fixed, x, y)

    for step in variants.values():
        for _ in range(args.warmup):
            step()
    times = {name: [] for name in variants}
    for _ in range(args.repeats):  # interleaved: a load spike hits every variant alike
        for name, step in variants.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)

    base = "plain network, fixed 5x5-e6 depthwise"
    base_ips = args.batch / statistics.median(times[base])
    print(f"\nSupernet training step, batch {args.batch}, {args.image_size} px, width x{args.width_mult}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, median of {args.repeats}\n")
    print("| variant | step (ms) | images/s | vs plain 5x5-e6 |")
    print("|---|---:|---:|---:|")
    for name, ts in times.items():
        med = statistics.median(ts)
        ips = args.batch / med
        print(f"| {name} | {med * 1e3:.1f} | {ips:.1f} | {ips / base_ips:.2f}x |")
    if "supernet, op_backend='cpu'" in times and "supernet, op_backend='reference'" in times:
        ratio = statistics.median(times["supernet, op_backend='reference'"]) / \
            statistics.median(times["supernet, op_backend='cpu'"])
        print(f"\nfused 'cpu' vs 'reference': {ratio:.2f}x the throughput")
    for note in notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
