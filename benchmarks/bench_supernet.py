"""Supernet training-step throughput, and what an 8-epoch ImageNet search would cost.

Times, side by side in one process (interleaved rounds: a load spike hits every variant alike),
one training step (forward, cross-entropy, backward, RMSProp update) of

  * the Single-Path supernet with the fused superkernel op ("cpu" or "cuda", and "triton" on a GPU),
  * the same supernet with op_backend="reference" (masks + F.conv2d, PyTorch autograd),
  * the child with every searchable layer a plain 5x5-e6 depthwise conv (the cost floor: what the
    supernet would cost if its masking were free),
  * the authors' final Pixel 1 network (SPNASNET_100),

for every precision (fp32; bf16 autocast) and memory format (NCHW; channels_last) asked for.
Then, separately:

  * the search loop itself: `--search-steps` latency-phase steps of the fused supernet on
    synthetic batches already on the device (loader out of the picture), with everything a
    search step does (latency loss, EMA update, derive);
  * a profile of a few of those steps, by where the device time goes;
  * the image-folder loader's own images/s (synthetic JPEGs, `--workers` processes);

and prints the projected device-hours of an 8-epoch ImageNet search (1,281,167 images an epoch)
from the slower of the loop and the loader.

    python benchmarks/bench_supernet.py --device cuda --batch 128      # one H100/H200 call
    python benchmarks/bench_supernet.py --quick                         # a CPU dry run
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

import spnas_ops
from spnas import Architecture, SinglePathSuperNet
from spnas.layers import build_child
from spnas.optim import EMA, RMSpropTF, add_weight_decay
from spnas.runs import decay_parameters
from spnas.runtime import RuntimeModel
from spnas.space import SPNASNET_100
from spnas.bench import parse_script_args, script_parser

IMAGENET_IMAGES = 1_281_167
SEARCH_EPOCHS = 8
LAYOUTS = {"channels_last": torch.channels_last, "nchw": torch.contiguous_format}
DTYPES = {"bf16": torch.bfloat16, "fp32": None}


class Clock:
    """Seconds of a region: CUDA events on a GPU (after a synchronize), perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    @contextlib.contextmanager
    def __call__(self, result: list):
        if self.cuda:
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            torch.cuda.synchronize()
            start.record()
            yield
            end.record()
            end.synchronize()
            result.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            yield
            result.append(time.perf_counter() - t0)


def autocast(device: torch.device, dtype):
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def make_step(model, x, y, device, dtype):
    opt = RMSpropTF(model.parameters(), lr=1e-4)

    def step():
        with autocast(device, dtype):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def networks(device: torch.device, classes: int, width: float, compile_: bool) -> dict:
    """name -> a function that builds the network (a fresh one per memory format)."""
    fused = [b for b in ("cpu", "cuda", "triton") if b in spnas_ops.available_backends()
             and (b == "cpu") == (device.type == "cpu")]
    nets = {f"supernet, fused op ({b})": (lambda b=b: SinglePathSuperNet(
        num_classes=classes, width_mult=width, op_backend=b)) for b in fused}
    if compile_ and fused:
        nets[f"supernet, fused op ({fused[0]}), torch.compile"] = lambda: torch.compile(
            SinglePathSuperNet(num_classes=classes, width_mult=width, op_backend=fused[0]))
    nets["supernet, reference op"] = lambda: SinglePathSuperNet(
        num_classes=classes, width_mult=width, op_backend="reference")
    nets["plain network, all 5x5-e6"] = lambda: build_child(
        Architecture(["k5_e6"] * 20), num_classes=classes, width_mult=width)
    nets["authors' network (SPNASNET_100)"] = lambda: build_child(
        Architecture(list(SPNASNET_100)), num_classes=classes, width_mult=width)
    return nets


def time_steps(args, device, clock, rows: list, save) -> None:
    """Appends one row per network, dtype and layout to `rows`, saving after each group."""
    for layout, fmt in LAYOUTS.items():
        if layout not in args.layouts:
            continue
        torch.manual_seed(0)
        x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
        x = x.contiguous(memory_format=fmt)
        y = torch.randint(0, 1000, (args.batch,), device=device)
        models = {name: build().to(device, memory_format=fmt)
                  for name, build in networks(device, 1000, args.width_mult, args.compile).items()}
        for dtype_name, dtype in DTYPES.items():
            if dtype_name not in args.dtypes:
                continue
            steps = {name: make_step(m, x, y, device, dtype) for name, m in models.items()}
            first = {}
            for name, step in steps.items():
                for i in range(args.warmup):
                    t0 = time.perf_counter()
                    step()
                    first.setdefault(name, time.perf_counter() - t0)  # compile time included
            times = {name: [] for name in steps}
            for _ in range(args.repeats):
                for name, step in steps.items():
                    with clock(times[name]):
                        step()
            for name, ts in times.items():
                rows.append(dict(network=name, dtype=dtype_name, layout=layout,
                                 median_s=statistics.median(ts), min_s=min(ts), max_s=max(ts),
                                 first_step_s=first.get(name)))
                print(f"  {name}, {dtype_name}, {layout}: {statistics.median(ts) * 1e3:.1f} ms",
                      file=sys.stderr, flush=True)
            save()
        del models


def search_loop(args, device, clock, dtype, fmt, backend):
    """Latency-phase search steps of the fused supernet on device-resident synthetic data."""
    torch.manual_seed(0)
    net = SinglePathSuperNet(num_classes=1000, width_mult=args.width_mult,
                             op_backend=backend).to(device, memory_format=fmt)
    net.place_thresholds(1.0)
    runtime = RuntimeModel.resolve("pixel1")
    opt = RMSpropTF(net.parameters(), lr=1e-4)
    ema = EMA(net, 0.9999)
    decay = decay_parameters(net)
    batches = [(torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
                .contiguous(memory_format=fmt), torch.randint(0, 1000, (args.batch,), device=device))
               for _ in range(2)]

    def step(i):
        x, y = batches[i % 2]
        with autocast(device, dtype):
            logits = net(x)
            loss = F.cross_entropy(logits, y, label_smoothing=0.1)
        loss = loss + 0.02 * torch.log(net.runtime(runtime))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        add_weight_decay(decay, 4e-5)
        opt.step()
        ema.update(net)
        runtime.predict(net.derive())  # the --target-ms controller's read-back, every step

    for i in range(args.warmup):
        step(i)
    seconds = []
    with clock(seconds):
        for i in range(args.search_steps):
            step(i)
    profile = profile_steps(step, device, args.profile_steps)
    return args.batch * args.search_steps / seconds[0], profile


CATEGORIES = (  # first match wins; names of ATen ops and device kernels, lower case
    ("superkernel op", ("spnas", "superkernel", "masked_dwconv", "sum_partials")),
    ("depthwise conv (plain)", ("depthwise", "conv_depthwise")),
    ("1x1 / stem convs (cuDNN, GEMM)", ("conv", "cudnn", "gemm", "mm", "xmma", "sm90", "cutlass")),
    ("batch norm", ("batch_norm", "bn_", "batchnorm")),
    ("optimizer + EMA", ("foreach", "multi_tensor", "lerp", "addcmul", "sqrt")),
    ("activations, adds, copies", ("relu", "clamp", "add", "copy", "elementwise", "mul", "fill")),
)


def profile_steps(step, device, n) -> dict:
    """Device time (CPU time on the CPU) by category over n steps, and the wall time."""
    if n <= 0:
        return {}
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for i in range(n):
            step(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    totals, kernels = {}, []
    for evt in prof.key_averages():
        us = evt.self_device_time_total if device.type == "cuda" else evt.self_cpu_time_total
        if us <= 0 or (device.type == "cuda"
                       and getattr(evt, "device_type", None) != torch.autograd.DeviceType.CUDA):
            continue
        name = evt.key.lower()
        cat = next((c for c, keys in CATEGORIES if any(k in name for k in keys)), "other")
        totals[cat] = totals.get(cat, 0.0) + us / 1e6 / n
        kernels.append((us / 1e6 / n, evt.key[:90]))
    kernels.sort(reverse=True)
    return {"wall_s_per_step": wall / n, "busy_s_per_step": sum(totals.values()),
            "by_category_s_per_step": totals, "top_kernels": kernels[:12]}


def loader_throughput(args) -> float:
    """Images/s of the image-folder dataset (decode, resize, centre crop) through a DataLoader."""
    import numpy as np
    from PIL import Image

    from spnas.data import FolderImages
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as root:
        samples = []
        for i in range(args.loader_images):
            # Smooth random pictures the size of an average ImageNet photo (500x375): JPEGs
            # of white noise would be several times larger than photos and slower to decode.
            small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
            im = Image.fromarray(small).resize((500, 375), Image.BICUBIC)
            path = os.path.join(root, f"{i}.jpg")
            im.save(path, quality=90)
            samples.append((path, i % 10))
        data = FolderImages(samples, args.image_size)
        batches = [list(range(i, i + args.batch))
                   for i in range(0, len(samples) - args.batch + 1, args.batch)]
        loader = torch.utils.data.DataLoader(data, batch_sampler=batches * 2,
                                             num_workers=args.workers)
        it = iter(loader)
        next(it)  # workers started, first batch decoded
        t0 = time.perf_counter()
        count = sum(len(b[1]) for b in it)
        return count / (time.perf_counter() - t0)


def eager_step_s(report, row) -> float:
    """Median step seconds of the eager fused supernet in the same dtype and layout as row."""
    eager = row["network"].replace(", torch.compile", "")
    return next(r["median_s"] for r in report["steps"] if r["network"] == eager
                and r["dtype"] == row["dtype"] and r["layout"] == row["layout"])


def main(argv=None) -> int:
    p = script_parser(__doc__)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--batch", type=int, default=32, help="images per step (default 32)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per variant (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    p.add_argument("--dtypes", default="bf16,fp32", help="comma list of fp32, bf16")
    p.add_argument("--layouts", default="channels_last,nchw", help="comma list of nchw, channels_last")
    p.add_argument("--search-steps", type=int, default=100, help="steps of the timed search loop")
    p.add_argument("--loop-dtype", choices=tuple(DTYPES),
                   help="precision of the search loop (default: bf16 on a GPU, fp32 on the CPU)")
    p.add_argument("--loop-layout", choices=tuple(LAYOUTS), default="channels_last",
                   help="memory format of the search loop (default channels_last)")
    p.add_argument("--profile-steps", type=int, default=5, help="profiled search steps (0: none)")
    p.add_argument("--loader-images", type=int, default=1024, help="synthetic JPEGs for the loader")
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1),
                   help="loader processes (default: min(16, CPUs))")
    p.add_argument("--compile", action="store_true",
                   help="also time the fused supernet under torch.compile (its first step, "
                        "compile included, is reported apart)")
    p.add_argument("--quick", action="store_true",
                   help="a dry run: batch 2, 64 px, 1 repeat, 3 search steps, 64 loader images")
    p.add_argument("--out", help="JSON results file (default: $OUT/bench_supernet.json when OUT is set)")
    args = parse_script_args(p, argv)
    if args.quick:
        args.batch, args.image_size, args.repeats, args.warmup = 2, 64, 1, 1
        args.search_steps, args.profile_steps, args.loader_images = 3, 1, 64
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    args.layouts = [l for l in args.layouts.split(",") if l]
    for name, values, allowed in (("--dtypes", args.dtypes, DTYPES), ("--layouts", args.layouts, LAYOUTS)):
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            p.error(f"{name}: {bad or 'empty'}; choose from {', '.join(allowed)}")
    if args.batch < 1 or args.repeats < 1 or args.search_steps < 1 or args.image_size < 32:
        p.error("--batch, --repeats and --search-steps must be >= 1, --image-size >= 32")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its algorithms
    out_path = args.out or (os.path.join(os.environ["OUT"], "bench_supernet.json")
                            if os.environ.get("OUT") else None)
    clock = Clock(device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report = {"device": card, "torch": torch.__version__, "args": vars(args)}

    def save():  # after every part: a run cut short keeps what it measured
        if out_path:
            os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
            with open(out_path + ".tmp", "w") as f:
                json.dump(report, f, indent=1)
            os.replace(out_path + ".tmp", out_path)

    fused = "cuda" if device.type == "cuda" else "cpu"
    if fused not in spnas_ops.available_backends():
        fused = "reference"
    dtype_name = args.loop_dtype or ("bf16" if device.type == "cuda" else "fp32")
    layout = args.loop_layout
    loop_ips, profile = search_loop(args, device, clock, DTYPES[dtype_name], LAYOUTS[layout], fused)
    report["search_loop"] = {"images_per_s": loop_ips, "dtype": dtype_name, "layout": layout,
                             "op_backend": fused, "profile": profile}
    save()
    report["loader_images_per_s"] = loader_ips = (
        loader_throughput(args) if args.loader_images >= args.batch else None)
    ips = min(loop_ips, loader_ips or float("inf"))
    report["projected_hours_8_epochs"] = hours = SEARCH_EPOCHS * IMAGENET_IMAGES / ips / 3600
    print(f"search loop {loop_ips:.0f} images/s, loader {loader_ips or 0:.0f} images/s: "
          f"{hours:.2f} device-hours for 8 ImageNet epochs", file=sys.stderr, flush=True)
    report["steps"] = []
    save()
    time_steps(args, device, clock, report["steps"], save)

    print(f"\n# Supernet training step on {card}, torch {torch.__version__}: batch {args.batch}, "
          f"{args.image_size} px, width x{args.width_mult}, median of {args.repeats} interleaved rounds\n")
    print("| network | dtype | layout | step ms (min-max) | images/s | vs plain 5x5-e6 |")
    print("|---|---|---|---:|---:|---:|")
    for r in report["steps"]:
        base = next(b for b in report["steps"] if b["network"] == "plain network, all 5x5-e6"
                    and b["dtype"] == r["dtype"] and b["layout"] == r["layout"])
        print(f"| {r['network']} | {r['dtype']} | {r['layout']} | {r['median_s'] * 1e3:.1f} "
              f"({r['min_s'] * 1e3:.1f}-{r['max_s'] * 1e3:.1f}) | {args.batch / r['median_s']:.0f} "
              f"| {base['median_s'] / r['median_s']:.2f}x |")
    for r in report["steps"]:
        if "torch.compile" in r["network"] and r.get("first_step_s"):
            print(f"\n{r['network']}, {r['dtype']}, {r['layout']}: first step {r['first_step_s']:.1f} s "
                  f"(compile included); each later step saves "
                  f"{(eager_step_s(report, r) - r['median_s']):.3f} s against the eager fused supernet")
    if profile:
        print(f"\nSearch step profile ({fused} op, {dtype_name}, {layout}): wall "
              f"{profile['wall_s_per_step'] * 1e3:.1f} ms/step, device busy "
              f"{profile['busy_s_per_step'] * 1e3:.1f} ms/step")
        for cat, s in sorted(profile["by_category_s_per_step"].items(), key=lambda kv: -kv[1]):
            print(f"  {cat:32s} {s * 1e3:8.2f} ms/step  {s / profile['busy_s_per_step']:5.1%}")
    print(f"\nsearch loop ({args.search_steps} steps, {fused} op, {dtype_name}, {layout}, data on "
          f"the device): {loop_ips:.0f} images/s")
    if loader_ips:
        print(f"image-folder loader, {args.workers} workers: {loader_ips:.0f} images/s")
    print(f"projected 8-epoch ImageNet search: {hours:.2f} device-hours on {card} "
          f"(bound by the {'loader' if loader_ips and loader_ips < loop_ips else 'search loop'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
