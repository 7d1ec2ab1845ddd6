"""The in-memory data path of search and train: batches of an array data set (Fashion-MNIST's
shape: uint8, 1 x 28 x 28, widened to 3 channels) gathered whole by `spnas.data.loader`, against
torch's DataLoader collating the same images one by one; the batch augmentation's images/s; and,
for scale, one training step (forward, cross-entropy, backward, RMSProp) of the largest and the
smallest all-layers-kept child of the `mnasnet-small` space on such a batch: whether the data
path can starve the model.

    python benchmarks/bench_data.py                 # 48,000 images, batch 256, 5 rounds
    python benchmarks/bench_data.py --threads 1 --rounds 7

Rounds interleave the two loaders; the table gives the median ms per batch, the spread
(min-max over rounds) and the ratio of the medians, all from this one run.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from spnas import Architecture, data
from spnas.layers import build_child
from spnas.optim import RMSpropTF
from spnas.bench import parse_script_args, script_parser


def per_batch_ms(make_batches, count: int) -> float:
    start = time.perf_counter()
    for _ in make_batches():
        pass
    return (time.perf_counter() - start) / count * 1e3


def training_steps(op: str, x: torch.Tensor, y: torch.Tensor, count: int):
    """`count` training steps of the mnasnet-small child with `op` in every searchable layer."""
    model = build_child(Architecture([op] * 12, space="mnasnet-small"), num_classes=10)
    model = model.to(memory_format=torch.channels_last)
    opt = RMSpropTF(model.parameters(), lr=1e-4)

    def run():
        for _ in range(count):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            yield
    return run


def main(argv=None) -> int:
    p = script_parser(__doc__)
    p.add_argument("--images", type=int, default=48_000)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--batches", type=int, default=40, help="batches timed per round")
    p.add_argument("--steps", type=int, default=4, help="training steps timed per round")
    p.add_argument("--rounds", type=int, default=5)
    args = parse_script_args(p, argv)
    g = torch.Generator().manual_seed(0)
    dataset = data.ArrayImages(
        torch.randint(0, 256, (args.images, 1, args.size, args.size), generator=g, dtype=torch.uint8),
        torch.randint(0, 10, (args.images,), generator=g))
    order = torch.randperm(args.images, generator=g).tolist()
    batches = [order[i * args.batch:(i + 1) * args.batch] for i in range(args.batches)]
    ways = {  # name -> (a function making the batches or steps, how many it makes)
        "DataLoader, image by image": (
            lambda: torch.utils.data.DataLoader(dataset, batch_sampler=batches), args.batches),
        "spnas.data.loader, whole batches": (lambda: data.loader(dataset, batches), args.batches),
    }
    x, _ = next(iter(data.loader(dataset, batches[:1])))
    x = x.contiguous(memory_format=torch.channels_last)

    def augmented():
        for _ in range(args.batches):
            yield data.augment(x, "flip-crop")

    ways["augment flip-crop (channels_last batch)"] = (augmented, args.batches)
    x, y = data.augment(x, "flip-crop"), torch.randint(0, 10, (args.batch,), generator=g)
    for op in ("k5_e6", "k3_e3"):  # the space's most and least costly layer choice
        ways[f"training step, mnasnet-small all {op}"] = (training_steps(op, x, y, args.steps),
                                                           args.steps)
    times = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, (make, count) in ways.items():
            times[name].append(per_batch_ms(make, count))
    first = statistics.median(times["DataLoader, image by image"])
    print(f"# {args.images} images of 1x{args.size}x{args.size} uint8, batch {args.batch}, "
          f"{args.rounds} rounds of {args.batches} batches ({args.steps} training steps each), "
          f"{torch.get_num_threads()} threads")
    print("| way | ms per batch (median) | min-max | images/s | vs DataLoader |")
    print("|---|---:|---:|---:|---:|")
    for name, ts in times.items():
        med = statistics.median(ts)
        ratio = f"{first / med:.1f}x" if "loader" in name.lower() else "-"
        print(f"| {name} | {med:.2f} | {min(ts):.2f}-{max(ts):.2f} | {args.batch / med * 1e3:,.0f} | {ratio} |")
    feed = (statistics.median(times["spnas.data.loader, whole batches"])
            + statistics.median(times["augment flip-crop (channels_last batch)"]))
    steps = [statistics.median(times[f"training step, mnasnet-small all {op}"]) for op in ("k3_e3", "k5_e6")]
    print(f"\nThe data path (whole batches + augment, {feed:.2f} ms a batch) is "
          f"{feed / steps[0]:.1%} of the all-k3_e3 step and {feed / steps[1]:.1%} of the all-k5_e6 step.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
