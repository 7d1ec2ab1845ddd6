"""The measurements behind `spnas bench` (what they time and how: spnas/commands/bench.py)."""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import platform
import statistics
import sys
import time
from datetime import date

import torch
import torch.nn.functional as F

import spnas_ops

from .errors import SpnasError

# The five searchable stages of the mnasnet space at 224 px: (N, C, H, stride), C = 6 * C_in
# of each stage's first (largest) superkernel.
STAGE_SHAPES = [(32, 96, 112, 2), (32, 144, 56, 1), (32, 240, 28, 1), (32, 480, 14, 1),
                (32, 1152, 7, 1)]
CONTENDERS = ("ours", "reference", "conv2d")


def script_parser(doc: str) -> argparse.ArgumentParser:
    """The parser of a script under benchmarks/: `doc`'s first paragraph as its description, the
    rest as written after the options, and --threads (the torch threads a run uses;
    `parse_script_args` applies it)."""
    description, _, rest = doc.partition("\n\n")
    p = argparse.ArgumentParser(description=description, epilog=rest or None,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, help="torch threads on the CPU (default: torch's)")
    return p


def parse_script_args(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """`p`'s arguments, with --threads (if given) already in effect."""
    args = p.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            p.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    return args


def keep_heap_mapped() -> bool:
    """Tells glibc's malloc never to give freed heap memory back to the system (M_TRIM_THRESHOLD)
    and to serve requests under 32 MiB from the heap (M_MMAP_THRESHOLD). Returns whether it
    took effect (False off glibc)."""
    name = ctypes.util.find_library("c")
    if not sys.platform.startswith("linux") or name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_trim_threshold, 2**31 - 1)) and bool(mallopt(m_mmap_threshold, 32 << 20))


def make_inputs(shape, channels_last, dtype=torch.float32, seed=0):
    """x, weight, thresholds, stride and the upstream gradient of y (made once per shape, as
    it comes from the rest of a network: its allocation is not the op's cost)."""
    n, c, h, stride = shape
    g = torch.Generator().manual_seed(seed)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    # Drawn in place, in their final layout: no input-sized temporary raises the memory peak.
    x = torch.empty(n, c, h, h, dtype=dtype, memory_format=layout).normal_(generator=g)
    ho = (h - 1) // stride + 1
    grad_y = torch.empty(n, c, ho, ho, dtype=dtype, memory_format=layout).normal_(generator=g)
    weight = torch.randn(c, 1, 5, 5, generator=g, dtype=dtype) * 0.1
    return x, weight, torch.zeros(3, dtype=dtype), stride, grad_y


def step(contender, x, weight, thresholds, stride, backward, backend, grad_y):
    """One forward (and backward, with upstream gradient grad_y) of a contender; returns
    nothing, it is timed."""
    with torch.set_grad_enabled(backward):
        xg = x.requires_grad_(backward)
        wg = weight.requires_grad_(backward)
        tg = thresholds.requires_grad_(backward)
        if contender == "conv2d":
            y = F.conv2d(xg, wg, stride=stride, padding=2, groups=x.shape[1])
        else:
            y, _ = spnas_ops.masked_dwconv(
                xg, wg, tg, stride=stride,
                backend=backend if contender == "ours" else "reference")
        if backward:
            y.backward(grad_y)
            for t in (xg, wg, tg):
                t.grad = None


def time_shape(shape, channels_last, backend, repeats, warmup=1):
    """Median seconds per contender and pass, measured round-robin."""
    x, weight, thresholds, stride, grad_y = make_inputs(shape, channels_last)
    times = {(c, b): [] for c in CONTENDERS for b in (False, True)}
    for r in range(warmup + repeats):
        for (contender, backward), samples in times.items():
            start = time.perf_counter()
            step(contender, x, weight, thresholds, stride, backward, backend, grad_y)
            elapsed = time.perf_counter() - start
            if r >= warmup:
                samples.append(elapsed)
    return {k: statistics.median(v) for k, v in times.items()}


def peak_memory_mib(shape, channels_last, contender, backend):
    """Peak of the bytes held by torch's allocator during one forward+backward, above what
    was held before (from the profiler's allocation events). Thread-local scratch of the
    compiled kernels (O(threads x channel block x plane), never activation-sized) is not
    counted."""
    x, weight, thresholds, stride, grad_y = make_inputs(shape, channels_last)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        step(contender, x, weight, thresholds, stride, True, backend, grad_y)
    # Each event's own net allocation, in time order ("[memory]" events are allocations
    # outside any op): the running sum is what torch holds.
    held = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        held += e.self_cpu_memory_usage
        peak = max(peak, held)
    return peak / 2**20


def run(shapes, layouts, backend, repeats, memory, progress=True):
    rows = []
    for channels_last in layouts:
        for shape in shapes:
            if progress:
                print(f"  timing {shape} {'channels_last' if channels_last else 'NCHW'} ...",
                      file=sys.stderr, flush=True)
            t = time_shape(shape, channels_last, backend, repeats)
            row = {"shape": list(shape), "channels_last": channels_last,
                   "seconds": {f"{c}/{'fwd+bwd' if b else 'fwd'}": v for (c, b), v in t.items()}}
            if memory:
                row["peak_mib"] = {c: peak_memory_mib(shape, channels_last, c, backend)
                                   for c in CONTENDERS}
            rows.append(row)
    return rows


def markdown(rows, backend, threads, memory, kept_heap=False):
    s = lambda r, k: r["seconds"][k]  # noqa: E731
    head = ("| shape (N,C,H,s) | layout | fwd+bwd ms: ours / reference / conv2d "
            "| speed-up vs reference | vs conv2d | fwd speed-up vs reference | vs conv2d |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    if memory:
        lines[0] += " peak MiB fwd+bwd: ours / reference / conv2d |"
        lines[1] += "---|"
    for r in rows:
        ours, ref, conv = (s(r, f"{c}/fwd+bwd") for c in CONTENDERS)
        line = (f"| {tuple(r['shape'])} | {'channels_last' if r['channels_last'] else 'NCHW'} "
                f"| {ours * 1e3:.1f} / {ref * 1e3:.1f} / {conv * 1e3:.1f} "
                f"| {ref / ours:.2f}x | {conv / ours:.2f}x "
                f"| {s(r, 'reference/fwd') / s(r, 'ours/fwd'):.2f}x "
                f"| {s(r, 'conv2d/fwd') / s(r, 'ours/fwd'):.2f}x |")
        if memory:
            m = r["peak_mib"]
            line += f" {m['ours']:.0f} / {m['reference']:.0f} / {m['conv2d']:.0f} |"
        lines.append(line)
    cpu = platform.processor() or platform.machine()
    lines.append("")
    lines.append(f"{date.today()}, {cpu}, {threads} threads, torch {torch.__version__}, "
                 f"backend {backend!r}, fp32, medians of interleaved repeats"
                 f"{', heap kept mapped' if kept_heap else ''}.")
    return "\n".join(lines)


def default_backend():
    have = spnas_ops.available_backends()
    return next((b for b in ("cpu", "cuda", "triton") if b in have), "reference")


def main(args) -> int:
    args.backend = args.backend or default_backend()
    if args.backend not in spnas_ops.available_backends():
        raise SpnasError(f"--backend {args.backend!r} is not available here "
                         f"(available: {', '.join(spnas_ops.available_backends())})")
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = not args.trim_heap and keep_heap_mapped()
    shapes = STAGE_SHAPES if args.batch is None else [(args.batch, *s[1:]) for s in STAGE_SHAPES]
    if args.shapes:
        shapes = [shapes[i] for i in args.shapes]
    layouts = {"nchw": [False], "channels_last": [True], "both": [False, True]}[args.layout]
    rows = run(shapes, layouts, args.backend, args.repeats, args.memory)
    print(markdown(rows, args.backend, torch.get_num_threads(), args.memory, kept))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0
