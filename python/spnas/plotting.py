"""Progress plots of a search run from its metrics.jsonl: latency, CE and per-layer decisions."""

from __future__ import annotations

import json
import os

from .errors import SpnasError
from .space import OPS


def read_metrics(path: str) -> list[dict]:
    if not os.path.exists(path):
        raise SpnasError(f"no metrics at {path} (is this a spnas search run folder?)")
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                raise SpnasError(f"{path}: line {n} is not JSON") from None
    return records


def plot_run(run_dir: str, out: str | None = None) -> str:
    """Write a three-panel PNG: predicted latency, cross-entropy, and the op of every searchable
    layer at the end of each epoch. Returns its path."""
    import matplotlib
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    records = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    train = [r for r in records if r.get("kind") == "train"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    if not train:
        raise SpnasError(f"{run_dir}/metrics.jsonl has no training records yet")
    if "latency_ms" not in train[0]:
        raise SpnasError(f"{run_dir} is not a search run (its metrics hold no latency); "
                         f"spnas plot draws the runs of spnas search")
    fig, axes = plt.subplots(3, 1, figsize=(9, 10), constrained_layout=True)
    steps = [r["step"] for r in train]
    ax = axes[0]
    ax.plot(steps, [r["latency_ms"] for r in train], label="hard decisions")
    ax.plot(steps, [r["expected_ms"] for r in train], label="expected (loss input)", alpha=0.6)
    ax.set_ylabel("predicted latency (ms)")
    ax.legend()
    ax = axes[1]
    ax.plot(steps, [r["ce"] for r in train])
    ax.set_ylabel("cross-entropy")
    ax.set_xlabel("step")
    ax = axes[2]
    if epochs:
        grid = [[OPS.index(op) for op in r["ops"]] for r in epochs]
        cmap = ListedColormap(["#c6dbef", "#6baed6", "#fdae6b", "#e6550d", "#f0f0f0"])
        image = ax.imshow(list(map(list, zip(*grid))), aspect="auto", cmap=cmap, vmin=-0.5,
                          vmax=len(OPS) - 0.5, interpolation="nearest",
                          extent=(0.5, len(epochs) + 0.5, len(grid[0]) - 0.5, -0.5))
        bar = fig.colorbar(image, ax=ax, ticks=range(len(OPS)))
        bar.ax.set_yticklabels(OPS)
        ax.set_xlabel("epoch")
        ax.set_ylabel("searchable layer")
    else:
        ax.text(0.5, 0.5, "no finished epoch yet", ha="center", va="center")
        ax.set_axis_off()
    fig.suptitle(f"spnas search: {os.path.abspath(run_dir)}")
    out = out or os.path.join(run_dir, "progress.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
