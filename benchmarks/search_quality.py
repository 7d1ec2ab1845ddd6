"""Does the search find better networks than chance? SP-NAS against random architectures of the
same predicted latency, every network trained the same way, scored once on the test split.

    python benchmarks/search_quality.py --scale quick            # a smoke run (digits, a minute)
    python benchmarks/search_quality.py --scale cpu --out runs/quality    # resumable; hours
    python benchmarks/search_quality.py --scale gpu --data DIR --out $OUT/quality   # one GPU

At each latency budget it (1) runs `spnas search --target-ms BUDGET` and takes the derived
architecture; (2) samples random architectures of the space whose predicted latency is within
--tolerance of the found one's; (3) adds fixed baselines (the authors' network, all k3_e3, all
k5_e6); (4) trains every network with the same recipe for every seed and records its test top-1
(the test split is used for nothing else: the searches and trainings choose on a validation
split carved from the training images). Every finished job is one line of OUT/results.jsonl,
so a killed run resumes where it stopped, and a run may span sessions. The report (a markdown
table, OUT/summary.json and OUT/quality.png) says, per budget, where the found network's mean
test accuracy falls among the random ones'.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import statistics
import sys
import time

from spnas import Architecture, RuntimeModel
from spnas.search import SearchConfig, run_search
from spnas.space import SPNASNET_100, get_space, random_architecture
from spnas.train import TrainConfig, run_train

# Sizes. "quick" is a smoke test of the whole path; "cpu" fits a few hours of this project's
# 2-core VM per budget; "gpu" is the full comparison for one H100/H200 call (docs/search_quality.md).
SCALES = {
    "quick": dict(data="digits", image_size=16, budgets=(60.0,), random=2, seeds=(0,),
                  search_epochs=4, search_steps=8, search_dropout=1.0, train_epochs=1,
                  train_steps=4, batch=32, width=0.25, tolerance=0.15),
    "cpu": dict(data="fashion-mnist", image_size=32, budgets=(70.0, 80.0, 95.0), random=8,
                seeds=(0, 1), search_epochs=8, search_steps=150, search_dropout=None,
                train_epochs=3, train_steps=150, batch=128, width=1.0, tolerance=0.03),
    "gpu": dict(data="fashion-mnist", image_size=32, budgets=(70.0, 80.0, 95.0), random=16,
                seeds=(0, 1, 2), search_epochs=8, search_steps=None, search_dropout=None,
                train_epochs=15, train_steps=None, batch=256, width=1.0, tolerance=0.03),
}


def baselines(space) -> dict[str, Architecture]:
    layers = space.layers()
    nets = {"all k3_e3": Architecture(["k3_e3"] * len(layers), space),
            "all k5_e6": Architecture(["k5_e6"] * len(layers), space)}
    if space.name == "mnasnet":
        nets["authors' network"] = Architecture(list(SPNASNET_100), space)
    return nets


def same_latency(space, model, target: float, tolerance: float, count: int, seed: int,
                 tries: int = 200_000) -> list[Architecture]:
    """`count` distinct random architectures whose prediction is within tolerance of target."""
    rng = random.Random(seed)
    found, seen = [], set()
    for _ in range(tries):
        arch = random_architecture(space, rng)
        key = tuple(arch.ops)
        if key in seen:
            continue
        seen.add(key)
        if abs(model.predict(arch) - target) <= tolerance * target:
            found.append(arch)
            if len(found) == count:
                break
    return found


class Results:
    """OUT/results.jsonl: one finished job a line, read back on start (resume)."""

    def __init__(self, path: str):
        self.path = path
        self.done = {}
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    if line.strip():
                        record = json.loads(line)
                        self.done[record["job"]] = record

    def add(self, record: dict) -> None:
        self.done[record["job"]] = record
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


def job_name(role: str, budget: float | None, arch: Architecture, seed: int) -> str:
    return f"train {role} {budget or '-'} {arch_id(arch)} seed {seed}"


def arch_id(arch: Architecture) -> str:
    return hashlib.sha1(" ".join(arch.ops).encode()).hexdigest()[:10]


class Clock:
    """Progress with an ETA from the jobs done so far in this process."""

    def __init__(self, total: int, done: int):
        self.total, self.done, self.started, self.ran = total, done, time.time(), 0

    def step(self, what: str) -> None:
        eta = ""
        if self.ran:
            left = (time.time() - self.started) / self.ran * (self.total - self.done)
            eta = f", about {left / 60:.0f} min left"
        print(f"[{self.done + 1}/{self.total}] {what}{eta}", flush=True)

    def finished(self) -> None:
        self.done += 1
        self.ran += 1


def run(args) -> dict:
    os.makedirs(args.out, exist_ok=True)
    results = Results(os.path.join(args.out, "results.jsonl"))
    space = get_space(args.space)
    model = RuntimeModel.resolve(args.latency_model)
    quiet = io.StringIO()  # the searches' and trainings' own reports go to their run folders

    clock = Clock(len(args.budgets), sum(r["kind"] == "search" for r in results.done.values()))

    def search(budget: float) -> Architecture:
        job = f"search {budget:g}"
        if job not in results.done:
            clock.step(f"search, budget {budget:g} ms")
            cfg = SearchConfig(run_dir=os.path.join(args.out, f"search-{budget:g}"), data=args.data,
                               image_size=args.image_size, space=space.name, width_mult=args.width,
                               runtime_model=args.latency_model, epochs=args.search_epochs,
                               steps_per_epoch=args.search_steps, batch_size=args.batch,
                               dropout_epochs=args.search_dropout, target_ms=budget,
                               device=args.device, progress=False, seed=0)
            resume = os.path.exists(os.path.join(cfg.run_dir, "config.json"))
            out = run_search(cfg, resume=resume, out=quiet)
            results.add({"job": job, "kind": "search", "budget": budget, "ops": out["arch"].ops,
                         "predicted_ms": out["predicted_ms"], "val_acc_supernet": out["val_acc"]})
            clock.finished()
        return Architecture(results.done[job]["ops"], space)

    # Every network to train: (role, budget, architecture), each for every seed.
    nets = []
    for budget in args.budgets:
        found = search(budget)
        nets.append(("found", budget, found))
        nets += [("random", budget, r) for r in same_latency(
            space, model, model.predict(found), args.tolerance, args.random, seed=int(budget * 100))]
    nets += [(name, None, arch) for name, arch in baselines(space).items()]
    jobs = [(role, budget, arch, seed) for role, budget, arch in nets for seed in args.seeds]
    clock = Clock(len(jobs), sum(job_name(r, b, a, s) in results.done for r, b, a, s in jobs))

    for role, budget, arch, seed in jobs:
        job = job_name(role, budget, arch, seed)
        if job in results.done:
            continue
        twin = next((r for r in results.done.values() if r["kind"] == "train"
                     and r["ops"] == arch.ops and r["seed"] == seed), None)
        if twin is not None:  # the same network and seed trained in another role: the same run
            results.add({**twin, "job": job, "role": role, "budget": budget})
            continue
        clock.step(f"train {role} ({model.predict(arch):.1f} ms), seed {seed}")
        cfg = TrainConfig(run_dir=os.path.join(args.out, f"train-{arch_id(arch)}-s{seed}"),
                          data=args.data, image_size=args.image_size, epochs=args.train_epochs,
                          steps_per_epoch=args.train_steps, batch_size=args.batch, seed=seed,
                          device=args.device, progress=False)
        resume = os.path.exists(os.path.join(cfg.run_dir, "config.json"))
        out = run_train(None if resume else arch, cfg, resume=resume, out=quiet)
        test = out["test_top1"] if out["test_top1"] is not None else out["best"]["top1"]
        results.add({"job": job, "kind": "train", "role": role, "budget": budget, "ops": arch.ops,
                     "predicted_ms": model.predict(arch), "seed": seed, "test_top1": test,
                     "scored_on": "test" if out["test_top1"] is not None else "validation",
                     "val_top1": out["best"]["top1"]})
        clock.finished()
    return report(results, args)


def report(results: Results, args) -> dict:
    trains = [r for r in results.done.values() if r["kind"] == "train"]
    by_net = {}
    for r in trains:
        key = (r["role"], r["budget"], tuple(r["ops"]))
        by_net.setdefault(key, []).append(r["test_top1"])
    rows, summary = [], {"budgets": {}, "args": {k: v for k, v in vars(args).items()}}
    for budget in args.budgets:
        found = [(k, v) for k, v in by_net.items() if k[0] == "found" and k[1] == budget]
        randoms = [statistics.mean(v) for k, v in by_net.items() if k[0] == "random" and k[1] == budget]
        if not found:
            continue
        (_, _, ops), accs = found[0]
        found_ms = next(r["predicted_ms"] for r in trains if r["role"] == "found" and r["budget"] == budget)
        mean = statistics.mean(accs)
        below = sum(r < mean for r in randoms) + 0.5 * sum(r == mean for r in randoms)
        percentile = 100 * below / len(randoms) if randoms else None
        q75 = statistics.quantiles(randoms, n=4)[2] if len(randoms) >= 2 else None
        summary["budgets"][f"{budget:g}"] = dict(found_ops=list(ops), found_ms=found_ms,
                                                 found_mean=mean, found=accs,
                                                 random_means=randoms, percentile=percentile,
                                                 random_q75=q75)
        rows.append((budget, mean, accs, randoms, percentile, q75))
    summary["baselines"] = {k[0]: v for k, v in by_net.items() if k[1] is None}
    scored = {r["scored_on"] for r in trains} or {"test"}

    print(f"\n## Search quality: {args.data}, {args.image_size} px, space {args.space}, "
          f"width x{args.width}, seeds {list(args.seeds)} (top-1 on the {'/'.join(sorted(scored))} split)\n")
    print("| budget ms | found ms | found: mean (per seed) | random: n, median, 75th pct "
          "| found's percentile |")
    print("|---:|---:|---|---|---:|")
    for budget, mean, accs, randoms, pct, q75 in rows:
        rnd = (f"{len(randoms)}, {statistics.median(randoms):.2%}, {q75:.2%}" if q75 is not None
               else f"{len(randoms)}")
        found_ms = summary["budgets"][f"{budget:g}"]["found_ms"]
        print(f"| {budget:g} | {found_ms:.1f} | {mean:.2%} ({', '.join(f'{a:.2%}' for a in accs)}) | {rnd} | "
              + (f"{pct:.0f} |" if pct is not None else "- |"))
    for name, accs in summary["baselines"].items():
        print(f"baseline {name}: {statistics.mean(accs):.2%} over {len(accs)} seed(s)")
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    plot(trains, os.path.join(args.out, "quality.png"))
    return summary


def plot(trains: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), constrained_layout=True)
    styles = {"random": dict(color="0.6", marker="o", s=18, label="random, same latency"),
              "found": dict(color="tab:red", marker="*", s=160, label="found by the search")}
    shown = set()
    for r in sorted(trains, key=lambda r: r["role"] != "random"):
        style = dict(styles.get(r["role"], dict(color="tab:blue", marker="s", s=40, label=r["role"])))
        if style["label"] in shown:
            style.pop("label")
        shown.add(style.get("label"))
        ax.scatter([r["predicted_ms"]], [100 * r["test_top1"]], **style)
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("test top-1 (%)")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=tuple(SCALES), default="quick", help="preset sizes (default quick)")
    p.add_argument("--out", default="runs/quality", help="results folder (resumable; default runs/quality)")
    p.add_argument("--data", help="data set (default: the preset's)")
    p.add_argument("--space", default="mnasnet")
    p.add_argument("--latency-model", default="pixel1")
    p.add_argument("--budgets", help="comma list of latency budgets in ms (default: the preset's)")
    p.add_argument("--random", type=int, help="random architectures per budget (default: the preset's)")
    p.add_argument("--seeds", help="comma list of training seeds (default: the preset's)")
    p.add_argument("--tolerance", type=float,
                   help="random architectures within this fraction of the found latency "
                        "(default: the preset's, 0.03 but for quick)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    for key, value in SCALES[args.scale].items():
        given = getattr(args, key, None)
        if given is None:
            setattr(args, key, value)
    if isinstance(args.budgets, str):
        args.budgets = tuple(float(b) for b in args.budgets.split(","))
    if isinstance(args.seeds, str):
        args.seeds = tuple(int(s) for s in args.seeds.split(","))
    if args.random < 1 or not args.budgets or not args.seeds:
        p.error("--random must be >= 1; --budgets and --seeds must not be empty")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
