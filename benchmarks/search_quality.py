"""Does the search find better networks than chance? SP-NAS against random architectures of the
same predicted latency, every network trained the same way, scored once on the test split.

    python benchmarks/search_quality.py --scale quick            # a smoke run (digits, a minute)
    python benchmarks/search_quality.py --scale cpu --out runs/quality    # resumable; hours
    python benchmarks/search_quality.py --scale gpu --data DIR --out $OUT/quality   # one GPU
    python benchmarks/search_quality.py --scale cpu --regime 0.38 --random 12   # first: can it tell?

At each latency budget it (1) runs `spnas search --target-ms BUDGET` and takes the derived
architecture; (2) samples random architectures of the space whose predicted latency is within
--tolerance of the found one's; (3) adds fixed baselines (the authors' network, all k3_e3, all
k5_e6); (4) trains every network with the same recipe for every seed and records its test top-1
(the test split is used for nothing else: the searches and trainings choose on a validation
split carved from the training images). Every finished job is one line of OUT/results.jsonl,
so a killed run resumes where it stopped, and a run may span sessions. The report (a markdown
table, OUT/summary.json and OUT/quality.png) says, per budget, where the found network's mean
test accuracy falls among the random ones'. With --search-seeds, every budget is searched once
per seed, and each search's network is compared with random ones of its own latency: how much
the verdict depends on the search's own luck. With --regime MS it only trains random networks
of that latency and says whether they differ beyond their seeds (3x asked): the check that a
regime can tell a good search from chance at all.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import math
import multiprocessing
import os
import random
import signal
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

import numpy as np

from spnas import Architecture, RuntimeModel
from spnas.search import SearchConfig, run_search
from spnas.space import SPNASNET_100, downsample, get_space, random_architecture
from spnas.train import TrainConfig, run_train

REGIME = "regime"  # the role of --regime's random networks
VM_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "mnasnet-small-28px-vm.json")

# Sizes. "quick" is a smoke test of the whole path; "cpu" fits a few hours of this project's
# 2-core VM per budget; "gpu" is the full comparison for one H100/H200 (docs/search_quality.md).
# Short trainings anneal the learning rate to ~1-2% of its peak by their last epoch
# (train_lr_decay per epoch) and average weights over ~1/8 of the run (ema): with x0.97 per
# epoch (the 30-epoch default) held-out accuracy still swung by up to 4 points between the last
# epochs, and two seeds of one network ended 3.8 points apart.
SCALES = {
    "quick": dict(space="mnasnet", latency_model="pixel1", data="digits", image_size=16,
                  budgets=(60.0,), random=2, seeds=(0,), search_seeds=(0,),
                  search_epochs=4, search_steps=8, search_batch=32, search_dropout=1.0,
                  train_epochs=1, train_steps=4, batch=32, width=0.25, tolerance=0.15, ema=0.9,
                  train_lr_decay=0.97),
    # mnasnet-small at Fashion-MNIST's own 28 px, timed on this VM's CPU by `spnas profile`
    # (benchmarks/data/): predicted latencies of random networks span 0.17-0.50 ms, median 0.34.
    # The search sees 800 batches of 128: whole epochs of 256 (4x the images, 36 minutes a
    # search) did no better at 0.38 ms (docs/search_quality.md).
    "cpu": dict(space="mnasnet-small", latency_model=VM_MODEL, data="fashion-mnist", image_size=28,
                budgets=(0.30, 0.34, 0.38), random=8, seeds=(0, 1), search_seeds=(0,), search_epochs=8,
                search_steps=100, search_batch=128, search_dropout=None, train_epochs=8,
                train_steps=100, batch=128,
                width=1.0, tolerance=0.03, ema=0.99, train_lr_decay=0.6),
    # the same comparison at full size: every training image, 15 epochs, 16 random networks
    # and 3 seeds per budget (docs/search_quality.md: jobs in parallel on one GPU)
    "gpu": dict(space="mnasnet-small", latency_model=VM_MODEL, data="fashion-mnist", image_size=28,
                budgets=(0.30, 0.34, 0.38), random=16, seeds=(0, 1, 2), search_seeds=(0,), search_epochs=8,
                search_steps=None, search_batch=256, search_dropout=None, train_epochs=15,
                train_steps=None, batch=256, width=1.0, tolerance=0.03, ema=0.999, train_lr_decay=0.75),
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
    """Progress with an ETA from the jobs finished so far in this process (jobs run `parallel`
    at a time, so elapsed time per finished job already accounts for the parallelism)."""

    def __init__(self, total: int, done: int):
        self.total, self.done, self.started, self.ran = total, done, time.time(), 0

    def finished(self, what: str) -> None:
        self.done += 1
        self.ran += 1
        left = (time.time() - self.started) / self.ran * (self.total - self.done)
        eta = f", about {left / 60:.0f} min left" if self.done < self.total else ""
        print(f"[{self.done}/{self.total}] {what} ({(time.time() - self.started) / 60:.0f} min){eta}",
              flush=True)


class Stopped(Exception):
    """A job's search or training returned unfinished (it was interrupted and saved)."""


# -- jobs: each runs in a worker process (or in this one with --parallel 1) --------------------------

STOPPING = False  # in a worker: Ctrl-C was seen; the jobs still queued to it end at once


def start_worker(threads: int | None) -> None:
    if threads:
        import torch
        torch.set_num_threads(threads)


def start_pool_worker(threads: int | None) -> None:
    """A worker process: Ctrl-C between jobs marks it stopping (a running job's own handler asks
    its loop to stop after the step and save; the job then marks it)."""
    def stopping(signum, frame):
        global STOPPING
        STOPPING = True
    signal.signal(signal.SIGINT, stopping)
    start_worker(threads)


def unfinished(run_dir: str) -> Stopped:
    global STOPPING
    STOPPING = True
    return Stopped(run_dir)


def search_name(budget: float, search_seed: int) -> str:
    """A search's job name: search seed 0 keeps the names of a single-seed run."""
    return f"search {budget:g}" + (f" seed {search_seed}" if search_seed else "")


def seed_suffix(search_seed: int) -> str:
    """What marks a search seed's roles and report rows ("found s1", "0.34 s1"); none for 0."""
    return f" s{search_seed}" if search_seed else ""


def roles(search_seed: int) -> tuple[str, str]:
    """The roles of a search's found and random networks."""
    return "found" + seed_suffix(search_seed), "random" + seed_suffix(search_seed)


def search_job(args, budget: float, search_seed: int = 0) -> dict:
    if STOPPING:
        raise Stopped("not started")
    name = search_name(budget, search_seed)
    folder = f"search-{budget:g}" + seed_suffix(search_seed).replace(" ", "-")  # search-0.34-s1
    cfg = SearchConfig(run_dir=os.path.join(args.out, folder),
                       data=args.data,
                       image_size=args.image_size, space=args.space, width_mult=args.width,
                       runtime_model=args.latency_model, epochs=args.search_epochs,
                       steps_per_epoch=args.search_steps, batch_size=args.search_batch,
                       dropout_epochs=args.search_dropout, target_ms=budget, ema_decay=args.ema,
                       device=args.device, progress=False, seed=search_seed)
    resume = os.path.exists(os.path.join(cfg.run_dir, "config.json"))
    started = time.time()
    out = run_search(cfg, resume=resume, out=io.StringIO())  # its report is in its run folder
    if not out["finished"]:
        raise unfinished(cfg.run_dir)
    return {"job": name, "kind": "search", "budget": budget, "search_seed": search_seed,
            "ops": out["arch"].ops,
            "predicted_ms": out["predicted_ms"], "val_acc_supernet": out["val_acc"],
            "seconds": round(time.time() - started, 1)}


def train_job(args, ops: list[str], seed: int) -> dict:
    if STOPPING:
        raise Stopped("not started")
    arch = Architecture(ops, args.space)
    cfg = TrainConfig(run_dir=os.path.join(args.out, f"train-{arch_id(arch)}-s{seed}"),
                      data=args.data, image_size=args.image_size, epochs=args.train_epochs,
                      steps_per_epoch=args.train_steps, batch_size=args.batch, seed=seed,
                      ema_decay=args.ema, lr_decay=args.train_lr_decay, device=args.device,
                      progress=False)
    resume = os.path.exists(os.path.join(cfg.run_dir, "config.json"))
    started = time.time()
    out = run_train(None if resume else arch, cfg, resume=resume, out=io.StringIO())
    if not out["finished"]:
        raise unfinished(cfg.run_dir)
    test = out["test_top1"] if out["test_top1"] is not None else out["best"]["top1"]
    record = {"kind": "train", "ops": ops, "seed": seed, "test_top1": test,
              "scored_on": "test" if out["test_top1"] is not None else "validation",
              "val_top1": out["best"]["top1"], "seconds": round(time.time() - started, 1)}
    if out["test_right"] is not None:  # for the test set's share of the seed noise (test_set_share)
        record["test_right"], record["test_images"] = encode_right(out["test_right"]), len(out["test_right"])
    return record


def encode_right(right) -> str:
    """A training's per-test-image top-1 hits (run_train's test_right) as a base64 bitmask."""
    return base64.b64encode(np.packbits(right.numpy()).tobytes()).decode("ascii")


def right_mask(record: dict) -> np.ndarray:
    """A record's test_right as booleans, one per test image."""
    bits = np.frombuffer(base64.b64decode(record["test_right"]), dtype=np.uint8)
    return np.unpackbits(bits)[:record["test_images"]].astype(bool)


def test_set_share(networks: list[list[dict]]) -> dict:
    """The part of one training's seed sd that the test set alone makes: for two trainings of
    one network that get D of N test images right where the other does not, their accuracy
    difference would have variance D / N^2 were they equally good (each such image as likely
    to go either way), D / 2N^2 for one training. Pooled over every pair of seeds of every
    network whose records hold masks (train_job's test_right); {} without any."""
    variances, shares = [], []
    for records in networks:
        masks = [right_mask(r) for r in records if "test_right" in r]
        for i in range(len(masks)):
            for j in range(i + 1, len(masks)):
                disagree = int((masks[i] != masks[j]).sum())
                variances.append(disagree / (2 * len(masks[i]) ** 2))
                shares.append(disagree / len(masks[i]))
    if not variances:
        return {}
    return {"test_set_sd_points": 100 * statistics.mean(variances) ** 0.5,
            "disagreement": statistics.mean(shares), "pairs": len(variances)}


class InProcess:
    """The executor of --parallel 1: jobs run here, one at a time, in submission order."""

    def __init__(self, threads: int | None):
        start_worker(threads)
        self.queue = []

    def submit(self, fn, *args) -> Future:
        future = Future()
        self.queue.append((future, fn, args))
        return future

    def next_done(self, pending) -> list[Future]:
        future, fn, args = self.queue.pop(0)
        try:
            future.set_result(fn(*args))
        except Exception as err:
            future.set_exception(err)
        return [future]

    def shutdown(self, **_) -> None:
        self.queue.clear()


class Pool(ProcessPoolExecutor):
    def next_done(self, pending) -> list[Future]:
        return list(wait(pending, return_when=FIRST_COMPLETED).done)


def run(args) -> dict:
    os.makedirs(args.out, exist_ok=True)
    results = Results(os.path.join(args.out, "results.jsonl"))
    space = get_space(args.space)
    model = RuntimeModel.resolve(args.latency_model)
    pool = (InProcess(args.threads) if args.parallel == 1 else
            Pool(args.parallel, mp_context=multiprocessing.get_context("spawn"),
                 initializer=start_pool_worker, initargs=(args.threads,)))
    pending: dict[Future, tuple] = {}
    waiting: dict[tuple, list[tuple]] = {}  # (ops, seed) being trained -> the jobs it answers

    def train(role: str, budget: float | None, arch: Architecture) -> None:
        for seed in args.seeds:
            job = job_name(role, budget, arch, seed)
            if job in results.done:
                continue
            wanted = (role, budget, job)
            key = (tuple(arch.ops), seed)
            twin = next((r for r in results.done.values() if r["kind"] == "train"
                         and tuple(r["ops"]) == key[0] and r["seed"] == seed), None)
            if twin is not None:  # the same network and seed trained in another role: the same run
                results.add({**twin, "job": job, "role": role, "budget": budget})
            elif key in waiting:
                waiting[key].append(wanted)
            else:
                waiting[key] = [wanted]
                pending[pool.submit(train_job, args, arch.ops, seed)] = ("train", key)

    def after_search(budget: float, search_seed: int) -> None:
        for role, arch in contenders(results, args, budget, space, model, search_seed):
            train(role, budget, arch)

    if args.regime is not None:  # no search: random networks of one latency, every seed
        for arch in same_latency(space, model, args.regime, args.tolerance, args.random,
                                 seed=round(args.regime * 1000)):
            train(REGIME, args.regime, arch)
    every = [] if args.regime is not None else [(b, s) for b in args.budgets for s in args.search_seeds]
    searches = [(b, s) for b, s in every if search_name(b, s) not in results.done]
    for budget, search_seed in searches:  # first: every training of a search waits for it
        pending[pool.submit(search_job, args, budget, search_seed)] = ("search", (budget, search_seed))
    for name, arch in (baselines(space).items() if args.regime is None else ()):
        train(name, None, arch)
    for budget, search_seed in every:
        if (budget, search_seed) not in searches:
            after_search(budget, search_seed)
    # the total grows as searches finish and add their trainings; it is exact once they have
    clock = Clock(len(pending) + len(searches) * (args.random + 1) * len(args.seeds), 0)
    try:
        while pending:
            for future in pool.next_done(pending):
                kind, key = pending.pop(future)
                record = future.result()
                if kind == "search":
                    results.add(record)
                    clock.finished(f"search, budget {key[0]:g} ms" + (f", seed {key[1]}" if key[1] else "")
                                   + f": found {record['predicted_ms']:.3g} ms")
                    after_search(*key)
                    continue
                for role, budget, job in waiting.pop(key):
                    results.add({**record, "job": job, "role": role, "budget": budget,
                                 "predicted_ms": model.predict(Architecture(record["ops"], space))})
                clock.finished(f"trained {role} ({model.predict(Architecture(key[0], space)):.3g} ms, "
                               f"seed {key[1]}): top-1 {record['test_top1']:.2%}")
    except (KeyboardInterrupt, Stopped):
        pool.shutdown(cancel_futures=True)
        print(f"stopped; every finished job is in {results.path}: rerun the same command to resume",
              file=sys.stderr)
        raise KeyboardInterrupt from None
    pool.shutdown()
    return regime_report(results, args) if args.regime is not None else report(results, args)


def contenders(results: Results, args, budget: float, space, model,
               search_seed: int = 0) -> list[tuple[str, Architecture]]:
    """The networks compared at a budget for one search seed: the one that search found and the
    random ones of the same latency drawn for it (none before the search has finished). Every
    search of a budget draws from the same stream, so nearby latencies share networks."""
    search = results.done.get(search_name(budget, search_seed))
    if search is None:
        return []
    found_role, random_role = roles(search_seed)
    found = Architecture(search["ops"], space)
    randoms = same_latency(space, model, model.predict(found), args.tolerance, args.random,
                           seed=round(budget * 1000))
    return [(found_role, found)] + [(random_role, r) for r in randoms]


def comparison(results: Results, args) -> list[dict]:
    """The finished trainings of the comparison as it stands: the baselines and every budget's
    contenders. Trainings of an earlier search of a budget (its record replaced after a change
    to the search) are left out: their random networks were drawn for another latency."""
    space, model = get_space(args.space), RuntimeModel.resolve(args.latency_model)
    wanted = {(name, None, tuple(arch.ops)) for name, arch in baselines(space).items()}
    for budget in args.budgets:
        for search_seed in args.search_seeds:
            wanted |= {(role, budget, tuple(arch.ops))
                       for role, arch in contenders(results, args, budget, space, model, search_seed)}
    return [r for r in results.done.values()
            if r["kind"] == "train" and (r["role"], r["budget"], tuple(r["ops"])) in wanted]


def report(results: Results, args) -> dict:
    trains = comparison(results, args)
    by_net = {}
    for r in trains:
        key = (r["role"], r["budget"], tuple(r["ops"]))
        by_net.setdefault(key, []).append(r["test_top1"])
    rows, summary = [], {"budgets": {}, "args": {k: v for k, v in vars(args).items()}}
    for budget, search_seed in ((b, s) for b in args.budgets for s in args.search_seeds):
        found_role, random_role = roles(search_seed)
        found = [(k, v) for k, v in by_net.items() if k[0] == found_role and k[1] == budget]
        randoms = [statistics.mean(v) for k, v in by_net.items() if k[0] == random_role and k[1] == budget]
        if not found:
            continue
        (_, _, ops), accs = found[0]
        found_ms = next(r["predicted_ms"] for r in trains
                        if r["role"] == found_role and r["budget"] == budget)
        mean = statistics.mean(accs)
        below = sum(r < mean for r in randoms) + 0.5 * sum(r == mean for r in randoms)
        percentile = 100 * below / len(randoms) if randoms else None
        q75 = statistics.quantiles(randoms, n=4)[2] if len(randoms) >= 2 else None
        # Does architecture matter here? The random networks' spread (sd of their means) against
        # the seed-to-seed spread of one network (pooled sd over the networks of this budget).
        random_sd = statistics.stdev(randoms) if len(randoms) >= 2 else None
        seed_sd = pooled_sd([v for k, v in by_net.items()
                             if k[1] == budget and k[0] in (found_role, random_role)])
        label = f"{budget:g}" + seed_suffix(search_seed)
        summary["budgets"][label] = dict(search_seed=search_seed, found_ops=list(ops), found_ms=found_ms,
                                                 found_mean=mean, found=accs,
                                                 random_means=randoms, percentile=percentile,
                                                 random_q75=q75, random_sd=random_sd, seed_sd=seed_sd)
        rows.append((label, mean, accs, randoms, percentile, q75, random_sd, seed_sd))
    summary["baselines"] = {k[0]: v for k, v in by_net.items() if k[1] is None}
    scored = {r["scored_on"] for r in trains} or {"test"}

    print(f"\n## Search quality: {args.data}, {args.image_size} px, space {args.space}, "
          f"width x{args.width}, seeds {list(args.seeds)} (top-1 on the {'/'.join(sorted(scored))} split)"
          + ("; budget sN: the search with seed N" if len(args.search_seeds) > 1 else "") + "\n")
    print("| budget ms | found ms | found: mean (per seed) | random: n, median, 75th pct "
          "| found's percentile | sd: random / seed |")
    print("|---:|---:|---|---|---:|---|")
    for label, mean, accs, randoms, pct, q75, random_sd, seed_sd in rows:
        spread = (f"{random_sd:.2%} / {seed_sd:.2%}" if random_sd is not None and seed_sd
                  else "-")
        rnd = (f"{len(randoms)}, {statistics.median(randoms):.2%}, {q75:.2%}" if q75 is not None
               else f"{len(randoms)}")
        found_ms = summary["budgets"][label]["found_ms"]
        print(f"| {label} | {found_ms:.3g} | {mean:.2%} ({', '.join(f'{a:.2%}' for a in accs)}) | {rnd} | "
              + (f"{pct:.0f} |" if pct is not None else "- |") + f" {spread} |")
    summary["overall"] = overall(rows)
    if summary["overall"]:
        o = summary["overall"]
        print(f"\nOver the {o['comparisons']} comparisons: found minus the random median "
              f"{o['mean_points']:+.2f} points (+- {o['se']:.2f} SE, rows as independent)"
              f"; above the median in {o['above_median']}, at or above the 75th percentile in "
              f"{o['at_q75']}")
        if "architecture_sd_points" in o:
            print(f"Does architecture matter here? random networks of one latency spread "
                  f"{o['architecture_sd_points']:.2f} points (sd, seed noise taken out) against "
                  f"{o['seed_sd_points']:.2f} between two seeds of one network")
    for name, accs in summary["baselines"].items():
        print(f"baseline {name}: {statistics.mean(accs):.2%} over {len(accs)} seed(s)")
    summary["choices"] = choice_effects(results, get_space(args.space),
                                        RuntimeModel.resolve(args.latency_model), args.image_size)
    if summary["choices"]:
        c = summary["choices"]
        print(f"\nEach choice at equal latency ({c['networks']} random networks, {c['metric']}, "
              f"points per layer with it, +- SE):")
        for name, e in c["effects"].items():
            print(f"  {name:30s} {e['points_per_layer']:+.2f} +- {e['se']:.2f}")
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    plot(trains, os.path.join(args.out, "quality.png"))
    return summary


def overall(rows: list[tuple]) -> dict:
    """One line for the question the table asks budget by budget: by how many points the found
    network beats the random median, averaged over every row with 2 or more random networks,
    with its standard error (rows taken as independent, though a budget's search seeds may
    share random networks), and in how many rows it is above the median and at or above the
    75th percentile. Two search seeds that found the same network count once. {} with fewer
    than 2 such rows.

    And whether architecture matters here at all: the random networks' spread at one latency
    with the seed noise taken out (the variance of their means less seed variance / seeds,
    pooled over the rows) against one training's seed sd. The sd of the means alone would
    count the seed noise twice, once in each."""
    diffs, above, at_q75, seen, arch_var, seed_var = [], 0, 0, set(), [], []
    for _, mean, accs, randoms, _, q75, random_sd, seed_sd in rows:
        if q75 is None or (mean, tuple(accs), tuple(randoms)) in seen:
            continue
        seen.add((mean, tuple(accs), tuple(randoms)))
        diffs.append(100 * (mean - statistics.median(randoms)))
        above += mean > statistics.median(randoms)
        at_q75 += mean >= q75
        if seed_sd:
            arch_var.append(100 ** 2 * architecture_variance(random_sd, seed_sd, len(accs)))
            seed_var.append(100 ** 2 * seed_sd ** 2)
    if len(diffs) < 2:
        return {}
    out = {"comparisons": len(diffs), "mean_points": statistics.mean(diffs),
           "se": statistics.stdev(diffs) / len(diffs) ** 0.5, "points": diffs,
           "above_median": above, "at_q75": at_q75}
    if arch_var:
        out["architecture_sd_points"] = max(statistics.mean(arch_var), 0.0) ** 0.5
        out["seed_sd_points"] = statistics.mean(seed_var) ** 0.5
    return out


def architecture_variance(means_sd: float, seed_sd: float, seeds: int) -> float:
    """The variance of networks' mean accuracies (sd `means_sd`, each a mean of `seeds`
    trainings) that is the architectures' own: less the seed noise those means still hold,
    seed_sd^2 / seeds. Negative when the networks differ less than their seeds would make them."""
    return means_sd ** 2 - seed_sd ** 2 / seeds


def expected_range(n: int) -> float:
    """The expected range (max - min) of n independent standard normal values:
    the integral of 1 - P(x)^n - (1 - P(x))^n over x, by Simpson's rule (1.128 for n = 2)."""
    lo, hi, steps = -8.0, 8.0, 4000
    h, total = (hi - lo) / steps, 0.0
    for i in range(steps + 1):
        p = 0.5 * (1 + math.erf((lo + i * h) / math.sqrt(2)))
        weight = 1 if i in (0, steps) else (4 if i % 2 else 2)
        total += weight * (1 - p ** n - (1 - p) ** n)
    return total * h / 3


def regime_report(results: Results, args) -> dict:
    """--regime: does architecture matter at this latency, in this recipe? The random networks'
    spread with the seed noise taken out against one training's seed sd (the benchmark asks
    for 3x before a comparison means anything)."""
    by_net: dict[tuple, list[dict]] = {}
    for r in results.done.values():
        if (r["kind"] == "train" and r["role"] == REGIME and r["budget"] == args.regime
                and r["seed"] in args.seeds):  # a file may hold more seeds than asked
            by_net.setdefault(tuple(r["ops"]), []).append(r)
    networks = [v for v in by_net.values() if len(v) == len(args.seeds)]
    complete = [[100 * r["test_top1"] for r in v] for v in networks]
    out = {"latency_ms": args.regime, "networks": len(complete), "seeds": list(args.seeds),
           "means": [statistics.mean(v) for v in complete]}
    seed_sd = pooled_sd(complete)
    if len(complete) >= 2 and seed_sd is not None:
        arch_sd = max(architecture_variance(statistics.stdev(out["means"]), seed_sd, len(args.seeds)),
                      0.0) ** 0.5
        # the naive reading of "spread": the networks' range, and what seed noise alone would give
        noise_range = expected_range(len(complete)) * seed_sd / len(args.seeds) ** 0.5
        out.update(architecture_sd=arch_sd, seed_sd=seed_sd, ratio=arch_sd / seed_sd if seed_sd else None,
                   range_points=max(out["means"]) - min(out["means"]), noise_range_points=noise_range)
        print(f"\n## Does architecture matter at {args.regime:g} ms? {args.data}, {args.image_size} px, "
              f"space {args.space}, {len(complete)} random networks within {args.tolerance:.0%}, "
              f"seeds {list(args.seeds)}\n")
        print(f"test top-1 of the networks (mean over seeds): median {statistics.median(out['means']):.2f}%, "
              f"range {min(out['means']):.2f}-{max(out['means']):.2f}% ({out['range_points']:.2f} points; "
              f"seed noise alone would make ~{noise_range:.2f} among {len(complete)} networks)")
        print(f"architectures' spread, seed noise taken out: {out['architecture_sd']:.2f} points (sd); "
              f"one training's seed sd: {seed_sd:.2f} points; ratio "
              + (f"{out['ratio']:.2f}" if out["ratio"] is not None else "- (no seed spread)")
              + " (a comparison with chance needs >= 3)")
        share = test_set_share(networks)
        out.update(share)
        if share:
            print(f"of the seed sd, the test set alone makes {share['test_set_sd_points']:.2f} points "
                  f"(two seeds disagree on {share['disagreement']:.1%} of the test images, "
                  f"{share['pairs']} pairs): a floor for any recipe whose networks disagree as much")
    else:
        print(f"--regime {args.regime:g}: {len(complete)} network(s) trained with every seed so far; "
              f"the spread needs 2 or more (and 2 or more seeds)")
    with open(os.path.join(args.out, "regime.json"), "w") as f:
        json.dump(out, f, indent=1)
    return out


def choice_effects(results: Results, space, model, image_size: int,
                   metric: str = "val_top1") -> dict:
    """What the random networks say about each choice at equal latency: for every searchable
    stage and choice (layers kept, e6, 5x5), the least-squares coefficient of the number of
    that stage's layers with it, fitted beside the predicted latency (mean accuracy of a
    network's seeds ~ 1 + latency + count), with its standard error. Every random network of
    the results file counts, whatever budget drew it; validation top-1, so that what a user
    tunes on this never touches the test split. {} with fewer than 8 networks."""
    import numpy as np

    by_net: dict[tuple, dict] = {}
    for r in results.done.values():  # a training reused in several roles counts once
        if r["kind"] == "train" and r["role"].startswith("random") and metric in r:
            by_net.setdefault(tuple(r["ops"]), {})[r["seed"]] = r[metric]
    if len(by_net) < 8:
        return {}
    stage_of = [layer["stage"] for layer in space.layers()]
    stages = sorted(set(stage_of))
    size = {l.stage: downsample(l.in_size, l.stride) for l in space.walk(image_size)
            if l.index is not None}
    nets = list(by_net)
    latency = np.array([model.predict(Architecture(list(ops), space)) for ops in nets])
    acc = np.array([100 * statistics.mean(by_net[ops].values()) for ops in nets])
    choices = {"layers kept": lambda o: o != "skip", "e6": lambda o: o.endswith("_e6"),
               "5x5": lambda o: o.startswith("k5")}
    effects = {}
    for stage in stages:
        for name, has in choices.items():
            count = np.array([sum(has(o) for o, s in zip(ops, stage_of) if s == stage) for ops in nets])
            x = np.stack([np.ones(len(nets)), latency, count], axis=1)
            if np.linalg.matrix_rank(x) < 3:  # the choice never varies (e.g. a fixed layer)
                continue
            beta, *_ = np.linalg.lstsq(x, acc, rcond=None)
            rss = float(((acc - x @ beta) ** 2).sum())
            cov = rss / max(len(nets) - 3, 1) * np.linalg.inv(x.T @ x)
            effects[f"stage {stage} ({size[stage]} px) {name}"] = {"points_per_layer": float(beta[2]),
                                                "se": float(cov[2, 2] ** 0.5)}
    return {"metric": metric, "networks": len(nets), "effects": effects}


def pooled_sd(groups: list[list[float]]) -> float | None:
    """The within-group sd pooled over the groups with 2 or more values (None if none has)."""
    groups = [g for g in groups if len(g) >= 2]
    if not groups:
        return None
    return (sum(statistics.variance(g) * (len(g) - 1) for g in groups)
            / sum(len(g) - 1 for g in groups)) ** 0.5


def plot(trains: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), constrained_layout=True)
    styles = {"random": dict(color="0.6", marker="o", s=18, label="random, same latency"),
              "found": dict(color="tab:red", marker="*", s=160, label="found by the search")}
    baseline_colors = iter(("tab:blue", "tab:green", "tab:purple", "tab:orange"))
    for role in sorted({r["role"] for r in trains}):  # the roles of other search seeds alike
        for kind in ("found", "random"):
            if role.startswith(kind + " s"):
                styles[role] = styles[kind]
    for role in sorted({r["role"] for r in trains} - set(styles)):
        styles[role] = dict(color=next(baseline_colors, "tab:gray"), marker="s", s=40, label=role)
    shown = set()
    for r in sorted(trains, key=lambda r: r["role"] != "random"):
        style = dict(styles[r["role"]])
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
    p.add_argument("--space", help="search space (default: the preset's)")
    p.add_argument("--latency-model", help="runtime model preset or file (default: the preset's)")
    p.add_argument("--budgets", help="comma list of latency budgets in ms (default: the preset's)")
    p.add_argument("--random", type=int, help="random architectures per budget (default: the preset's)")
    p.add_argument("--seeds", help="comma list of training seeds (default: the preset's)")
    p.add_argument("--search-seeds",
                   help="comma list of search seeds: one search per budget and seed, each compared "
                        "with random networks of its own latency (default: the preset's, 0)")
    p.add_argument("--tolerance", type=float,
                   help="random architectures within this fraction of the found latency "
                        "(default: the preset's, 0.03 but for quick)")
    p.add_argument("--regime", type=float, metavar="MS",
                   help="no search: train --random networks of this predicted latency (within "
                        "--tolerance), every seed, and report whether architecture matters there "
                        "(their spread with the seed noise taken out against one training's seed "
                        "sd): the check a regime must pass before the comparison means anything")
    p.add_argument("--device", default="auto")
    p.add_argument("--parallel", type=int, default=1,
                   help="jobs at once, each in its own process (default 1: in this process)")
    p.add_argument("--threads", type=int,
                   help="torch threads per job (default: torch's; use cores / --parallel)")
    p.add_argument("--report", action="store_true",
                   help="only report the finished jobs of --out (runs nothing)")
    args = p.parse_args(argv)
    for key, value in SCALES[args.scale].items():
        given = getattr(args, key, None)
        if given is None:
            setattr(args, key, value)
    if isinstance(args.budgets, str):
        args.budgets = tuple(float(b) for b in args.budgets.split(","))
    if isinstance(args.seeds, str):
        args.seeds = tuple(int(s) for s in args.seeds.split(","))
    if isinstance(args.search_seeds, str):
        args.search_seeds = tuple(int(s) for s in args.search_seeds.split(","))
    if args.random < 1 or not args.budgets or not args.seeds or not args.search_seeds:
        p.error("--random must be >= 1; --budgets, --seeds and --search-seeds must not be empty")
    if args.parallel < 1 or (args.threads is not None and args.threads < 1):
        p.error("--parallel and --threads must be >= 1")
    if args.regime is not None and args.regime <= 0:
        p.error(f"--regime must be a latency in ms > 0, got {args.regime:g}")
    if args.report:  # what is done so far, e.g. while another process runs the jobs
        path = os.path.join(args.out, "results.jsonl")
        if not os.path.exists(path):
            p.error(f"--report: no {path} (the --out folder of a run)")
        (regime_report if args.regime is not None else report)(Results(path), args)
        return 0
    try:
        run(args)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
