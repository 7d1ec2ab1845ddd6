"""GPU report for the superkernel op: correctness of every GPU backend, then timings.

    python benchmarks/gpu_report.py [--quick] [--out results.json] [--device cuda|cpu]

1. Checks: each GPU backend ("cuda", "triton") against the reference oracle on fresh random
   inputs, forward and backward, with the output memory poisoned first (the caching allocator
   hands back the blocks just filled with NaN, so an element the kernel never writes shows up
   as NaN).
2. Timings (CUDA events around 4 back-to-back calls, warm-up, median, rotating inputs and
   the L2 cache flushed before each timed run, so that caches do not flatter)
   of forward and forward+backward for the five stage shapes of the Single-Path search space
   at batch 128, fp32 and bf16, NCHW and channels_last, against
     * "reference": the eager PyTorch oracle;
     * "conv2d": plain F.conv2d depthwise with a fixed 5x5 weight (what a fixed network pays);
     * the memory floor: bytes that must move / device copy bandwidth, measured in this run
       by a large tensor copy.
3. The per-call cost: forward and forward+backward of one 7x7 image at each stage's C (fp32,
   NCHW), where bytes are negligible: launches plus the (C, 25) superkernel math.
Prints markdown tables (ours / reference, ours / floor; per call) and writes every figure as JSON to
--out (default $OUT/gpu_report.json when OUT is set).

`--device cpu --quick` is a dry run of the same code path with the "cpu" backend (if built)
and wall-clock timing, so the script can be exercised without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import spnas_ops

# (N, C, H, stride) of the first searchable layer of each stage's depthwise conv (C = 6 * C_in).
STAGES = [(128, 96, 112, 2), (128, 144, 56, 1), (128, 240, 28, 1), (128, 480, 14, 1),
          (128, 1152, 7, 1)]
QUICK_STAGES = [(8, 96, 28, 2), (8, 240, 14, 1)]
# One image of 7 x 7 per stage's C: the bytes are negligible, so the time is what a call costs
# whatever its size (launches and the (C, 25) superkernel math), as a function of C.
PER_CALL = [(1, c, 7, 1) for (_, c, _, _) in STAGES]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def make_inputs(shape, dtype, layout, device, seed):
    n, c, h, stride = shape
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(n, c, h, h, generator=g).to(device=device, dtype=dtype,
                                                 memory_format=LAYOUTS[layout])
    weight = (0.1 * torch.randn(c, 1, 5, 5, generator=g)).to(device=device, dtype=dtype)
    # Thresholds below every norm: all decisions on (5x5-e6), the most work.
    thresholds = torch.zeros(3, device=device, dtype=dtype)
    ho = (h - 1) // stride + 1
    grad_y = torch.randn(n, c, ho, ho, generator=g).to(device=device, dtype=dtype,
                                                        memory_format=LAYOUTS[layout])
    return x, weight, thresholds, grad_y


def poison(device, nbytes_hint):
    """Fill freed allocator blocks with NaN so that the next allocations start poisoned."""
    if device != "cuda":
        return
    blocks = [torch.full((max(nbytes_hint // 4, 1),), float("nan"), device=device)
              for _ in range(4)]
    del blocks


# --- correctness ----------------------------------------------------------------------------

def run(backend, x, weight, thresholds, grad_y, stride, grad_d):
    x, weight, thresholds = (t.detach().clone().requires_grad_() for t in (x, weight, thresholds))
    y, d = spnas_ops.masked_dwconv(x, weight, thresholds, stride=stride, backend=backend)
    torch.autograd.backward([y, d], [grad_y, grad_d])
    return [y.detach(), d.detach(), x.grad, weight.grad, thresholds.grad]


def check_backend(backend, device, shapes, seed=1234):
    names = ("y", "d", "dx", "dweight", "dthresholds")
    results = []
    for i, shape in enumerate(shapes):
        for layout in LAYOUTS:
            for dtype_name, dtype in DTYPES.items():
                x, w, t, gy = make_inputs(shape, dtype, layout, device, seed + i)
                # Thresholds near the norms so that the decision gradients are not negligible.
                t = torch.tensor([0.5, 0.5, 0.5], device=device, dtype=dtype)
                grad_d = torch.randn(3, device=device, dtype=dtype)
                exact = run("reference", *(a.float() for a in (x, w, t, gy)), shape[3],
                            grad_d.float())
                torch_lp = run("reference", x, w, t, gy, shape[3], grad_d)
                poison(device, x.numel() * x.element_size())
                ours = run(backend, x, w, t, gy, shape[3], grad_d)
                for name, e, o, p in zip(names, exact, ours, torch_lp):
                    nan = bool(torch.isnan(o).any())
                    err = (o.float() - e).abs().max().item()
                    err_torch = (p.float() - e).abs().max().item()
                    scale = e.abs().max().item() or 1.0
                    # fp32: relative error; bf16: the flash-attention rule (<= 2x PyTorch's own).
                    ok = (not nan) and (err <= 2 * err_torch + 1e-3 * scale if dtype != torch.float32
                                        else err <= 1e-4 * scale + 1e-5)
                    results.append(dict(backend=backend, shape=list(shape), layout=layout,
                                        dtype=dtype_name, output=name, max_error=err,
                                        torch_error=err_torch, nan=nan, ok=ok))
    return results


# --- timing ---------------------------------------------------------------------------------

class Timer:
    def __init__(self, device):
        self.device = device
        # Written before every timed run, so that no run finds its inputs in the L2 cache
        # left there by the previous one (the 7 and 14 px layers fit in it): 256 MiB is over
        # four times the L2 of an H100 (50 MB) or H200 (60 MB).
        self.flush = torch.empty(1 << 26, device=device) if device == "cuda" else None

    def __call__(self, fn, inputs, warmup, reps, inner=4):
        """Median seconds per call of fn over `reps` timed runs (after `warmup` calls), a run
        being `inner` calls back to back on rotating inputs: as in a network, the host queues
        the next call while the device works, so launch costs show only where they exceed
        the device time."""
        for i in range(warmup):
            fn(inputs[i % len(inputs)])
        times = []
        for i in range(reps):
            batch = [inputs[(i * inner + j) % len(inputs)] for j in range(inner)]
            if self.device == "cuda":
                self.flush.zero_()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for args in batch:
                    fn(args)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3 / inner)
            else:
                t0 = time.perf_counter()
                for args in batch:
                    fn(args)
                times.append((time.perf_counter() - t0) / inner)
        return statistics.median(times)


def copy_bandwidth(device, timer, quick):
    """Device copy bandwidth in bytes/s (read + write), from a large tensor copy."""
    n = (1 << 24) if quick else (1 << 28)  # 64 MiB / 1 GiB of fp32
    src = torch.empty(n, device=device)
    dst = torch.empty_like(src)
    seconds = timer(lambda _: dst.copy_(src), [None], warmup=3, reps=10)
    return 2 * n * 4 / seconds


def op_bytes(shape, dtype, backward):
    """Bytes that must move: x read and y written; the backward reads x and dy and writes dx."""
    n, c, h, stride = shape
    ho = (h - 1) // stride + 1
    x = n * c * h * h
    y = n * c * ho * ho
    size = torch.tensor([], dtype=dtype).element_size()
    fwd = (x + y) * size
    return fwd + (2 * x + y) * size if backward else fwd


def time_shape(shape, dtype, layout, device, backends, timer, warmup, reps, rotate, compiled=None):
    stride = shape[3]
    sets = [make_inputs(shape, dtype, layout, device, seed) for seed in range(rotate)]
    fixed = sets[0][1].detach().clone()
    out = {}

    def forward(backend):
        def fn(a):
            with torch.no_grad():
                spnas_ops.masked_dwconv(a[0], a[1], a[2], stride=stride, backend=backend)
        return fn

    def forward_backward(backend):
        grad_d = torch.ones(3, device=device, dtype=dtype)

        def fn(a):
            x, w, t = (v.detach().requires_grad_() for v in a[:3])
            y, d = spnas_ops.masked_dwconv(x, w, t, stride=stride, backend=backend)
            torch.autograd.backward([y, d], [a[3], grad_d])
        return fn

    def conv(backward):
        def fn(a):
            x = a[0].detach().requires_grad_(backward)
            w = fixed.requires_grad_(backward)
            with torch.set_grad_enabled(backward):
                y = F.conv2d(x, w, stride=stride, padding=2, groups=x.shape[1])
                if backward:
                    y.backward(a[3])
        return fn

    for name in backends:
        out[name] = {"fwd": timer(forward(name), sets, warmup, reps),
                     "fwd_bwd": timer(forward_backward(name), sets, warmup, reps)}
    if compiled is not None and compiled.seconds_left() > 0:
        out["compiled_reference"] = compiled.time(sets, stride, dtype, timer, warmup, reps)
    out["conv2d"] = {"fwd": timer(conv(False), sets, warmup, reps),
                     "fwd_bwd": timer(conv(True), sets, warmup, reps)}
    return out


class CompiledReference:
    """torch.compile of the reference op (Inductor fuses the (C, 25) mask math), timed while a
    compile-time budget lasts; the compile seconds are recorded, not timed."""

    def __init__(self, budget_s):
        self.budget = budget_s
        self.compile_seconds = 0.0

    def seconds_left(self):
        return self.budget - self.compile_seconds

    def time(self, sets, stride, dtype, timer, warmup, reps):
        # A fresh compile per problem: one compiled function would reach Dynamo's recompile
        # limit after a few shapes and quietly fall back to eager.
        torch._dynamo.reset()
        self.fn = torch.compile(spnas_ops.reference.masked_dwconv, dynamic=False)
        grad_d = torch.ones(3, device=sets[0][0].device, dtype=dtype)
        scale = torch.ones(3, device=sets[0][0].device, dtype=dtype)

        def forward(a):
            with torch.no_grad():
                self.fn(a[0], a[1], a[2], scale, stride, True)

        def forward_backward(a):
            x, w, t = (v.detach().requires_grad_() for v in a[:3])
            y, d = self.fn(x, w, t, scale, stride, True)
            torch.autograd.backward([y, d], [a[3], grad_d])

        result = {}
        for kind, fn in (("fwd", forward), ("fwd_bwd", forward_backward)):
            t0 = time.perf_counter()
            try:
                fn(sets[0])
            except Exception as err:  # a compiler failure is a finding, not a crash
                result[kind] = None
                result[f"{kind}_error"] = f"{type(err).__name__}: {str(err)[:200]}"
                continue
            self.compile_seconds += time.perf_counter() - t0
            result[kind] = timer(fn, sets, warmup, reps)
        return result


# --- report ---------------------------------------------------------------------------------

def save(report, out_path):
    """Atomic JSON write, after every shape too: a run cut short keeps what it measured."""
    if not out_path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = out_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, out_path)


def print_report(report, backends):
    bandwidth = report["copy_bandwidth_bytes_per_s"]
    failed = [c for c in report["checks"] if not c["ok"]]
    print(f"# superkernel op on {report['device']}, torch {report['torch']}: "
          f"copy bandwidth {bandwidth / 1e9:.0f} GB/s (read + write)")
    print(f"checks against the fp64/fp32 oracle: {len(report['checks']) - len(failed)}/"
          f"{len(report['checks'])} passed")
    for c in failed:
        print(f"  FAILED {c['backend']} {c['shape']} {c['layout']} {c['dtype']} {c['output']}: "
              f"error {c['max_error']:.3g} (PyTorch {c['torch_error']:.3g}), NaN={c['nan']}")
    print("\nms = median per call; x ref = speed-up over the eager reference; "
          "floor = memory floor time / ours (1.0 = at the floor)\n")
    print("| N,C,H,s | dtype | layout | pass | " + " | ".join(
        f"{b} ms | x ref | floor" for b in backends)
        + " | compiled ref ms | conv2d ms | ref ms |")
    print("|" + "---|" * (4 + 3 * len(backends) + 3))
    worst = {b: [float("inf"), float("inf")] for b in backends}
    for t in report["timings"]:
        for kind in ("fwd", "fwd_bwd"):
            sec, floor = t["seconds"], t["floor_seconds"][kind]
            ref = sec["reference"][kind]
            cells = []
            for b in backends:
                ours = sec[b][kind]
                cells.append(f"{ours * 1e3:.3f} | {ref / ours:.2f} | {floor / ours:.2f}")
                if kind == "fwd_bwd":
                    worst[b] = [min(worst[b][0], ref / ours), min(worst[b][1], floor / ours)]
            comp = sec.get("compiled_reference", {}).get(kind)
            comp = f"{comp * 1e3:.3f}" if comp else "-"
            print(f"| {','.join(map(str, t['shape']))} | {t['dtype']} | {t['layout']} | {kind} | "
                  + " | ".join(cells)
                  + f" | {comp} | {sec['conv2d'][kind] * 1e3:.3f} | {ref * 1e3:.3f} |")
    print()
    for b, (speedup, floor) in worst.items():
        print(f"{b}: fwd+bwd worst case {speedup:.2f}x the eager reference (target >= 2), "
              f"{floor:.0%} of the memory floor's speed (target >= 60%)")
    if report.get("per_call"):
        print("\nper-call cost (one 7x7 image, fp32 NCHW: bytes negligible), ms fwd / fwd+bwd\n")
        names = [*backends, "conv2d", "reference"]
        print("| C | " + " | ".join(names) + " |")
        print("|" + "---|" * (1 + len(names)))
        for t in report["per_call"]:
            sec = t["seconds"]
            print(f"| {t['shape'][1]} | " + " | ".join(
                f"{sec[n]['fwd'] * 1e3:.3f} / {sec[n]['fwd_bwd'] * 1e3:.3f}" for n in names) + " |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, few repetitions")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--compile-budget", type=float, default=90.0, metavar="SECONDS",
                        help="time torch.compile of the reference while its compiles have taken "
                             "less than this (0: skip it; default 90)")
    parser.add_argument("--out", default=None, help="JSON results file "
                        "(default: $OUT/gpu_report.json when OUT is set)")
    args = parser.parse_args(argv)
    out_path = args.out or (os.path.join(os.environ["OUT"], "gpu_report.json")
                            if os.environ.get("OUT") else None)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device; use --device cpu --quick for a dry run")

    have = spnas_ops.available_backends()
    backends = [b for b in (("cuda", "triton") if device == "cuda" else ("cpu",)) if b in have]
    shapes = QUICK_STAGES if args.quick else STAGES
    warmup, reps, rotate = (2, 3, 2) if args.quick else (3, 12, 4)
    if device == "cpu":
        shapes = [(2, c, h // 2, s) for (_, c, h, s) in QUICK_STAGES]
    timer = Timer(device)

    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "torch": torch.__version__, "backends": backends, "quick": args.quick,
              "checks": [], "timings": []}
    check_shapes = [(2, c, min(h, 16), s) for (_, c, h, s) in shapes]
    for backend in backends:
        report["checks"] += check_backend(backend, device, check_shapes)
    save(report, out_path)

    report["copy_bandwidth_bytes_per_s"] = bandwidth = copy_bandwidth(device, timer, args.quick)
    compiled = CompiledReference(args.compile_budget) if args.compile_budget > 0 else None
    for shape in shapes:
        for dtype_name, dtype in DTYPES.items():
            for layout in LAYOUTS:
                times = time_shape(shape, dtype, layout, device, ["reference", *backends],
                                   timer, warmup, reps, rotate, compiled)
                floor = {"fwd": op_bytes(shape, dtype, False) / bandwidth,
                         "fwd_bwd": op_bytes(shape, dtype, True) / bandwidth}
                report["timings"].append(dict(shape=list(shape), dtype=dtype_name,
                                              layout=layout, seconds=times, floor_seconds=floor))
                save(report, out_path)
        print(f"  timed {shape}", file=sys.stderr, flush=True)
    report["per_call"] = []
    for shape in (PER_CALL[:2] if args.quick else PER_CALL):
        times = time_shape(shape, torch.float32, "nchw", device, ["reference", *backends],
                           timer, warmup, reps, rotate)
        report["per_call"].append(dict(shape=list(shape), seconds=times))
        save(report, out_path)
    if compiled is not None:
        report["compile_seconds"] = compiled.compile_seconds
    save(report, out_path)
    print_report(report, backends)
    if out_path:
        print(f"\nfull figures: {out_path}")
    return 1 if any(not c["ok"] for c in report["checks"]) else 0


if __name__ == "__main__":
    sys.exit(main())
