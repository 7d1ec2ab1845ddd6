"""`spnas validate`: does the runtime model predict what whole networks measure?

Random architectures of the model's space are exported whole, timed with the given backend and
compared with `RuntimeModel.predict`. The report gives RMSE (ms), MAPE, the share within +-5%
and +-10% and the mean signed error (a nonzero mean is bias, which the additive model would
carry into every search), plus a scatter plot. Each measured network is kept in
`DIR/measurements.json`, so a killed validation resumes too.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import random
import statistics
from typing import Any, Callable

from ..errors import SpnasError
from ..io import atomic_write, atomic_write_json
from ..layers import build_child
from ..runtime import RuntimeModel
from ..space import Architecture, get_space, random_architecture
from .benchmark import Benchmark, best_of_passes
from .export import export_tflite

__all__ = ["validate", "accuracy_summary", "sample_architectures"]

# Fields of the two protocols that must agree for the comparison to mean anything.
_COMPARABLE = ("backend", "threads", "image_size")


def sample_architectures(space, samples: int, seed: int) -> list[Architecture]:
    """`samples` distinct random architectures (distinct while the space allows)."""
    rng = random.Random(seed)
    archs, seen = [], set()
    for _ in range(samples * 20):
        arch = random_architecture(space, rng)
        if tuple(arch.ops) in seen:
            continue
        seen.add(tuple(arch.ops))
        archs.append(arch)
        if len(archs) == samples:
            break
    return archs


def accuracy_summary(predicted: list[float], measured: list[float]) -> dict[str, float]:
    """RMSE (ms), MAPE, bias and shares within 5% / 10%; errors relative to the measurement."""
    if not predicted or len(predicted) != len(measured):
        raise SpnasError("need as many predictions as measurements (at least one)")
    errors = [p - m for p, m in zip(predicted, measured)]
    relative = [e / m for e, m in zip(errors, measured)]
    return {
        "samples": len(errors),
        "rmse_ms": math.sqrt(statistics.fmean(e * e for e in errors)),
        "mape": statistics.fmean(abs(r) for r in relative),
        "mean_error_pct": 100 * statistics.fmean(relative),
        "max_abs_error_pct": 100 * max(abs(r) for r in relative),
        "within_5pct": sum(abs(r) <= 0.05 for r in relative) / len(relative),
        "within_10pct": sum(abs(r) <= 0.10 for r in relative) / len(relative),
        "measured_min_ms": min(measured),
        "measured_max_ms": max(measured),
    }


def validate(
    model_path: str,
    benchmark: Benchmark,
    samples: int,
    seed: int,
    out_dir: str,
    *,
    image_size: int | None = None,
    num_classes: int = 1000,
    passes: int = 3,
    progress: bool = True,
    exporter: Callable[[Any, tuple, str], Any] = export_tflite,
) -> dict:
    """Measure `samples` random networks, compare with the runtime model, write the report.

    Like `profile`, each network is measured in `passes` passes and keeps its best one, so the
    prediction (built that way) and the measurement follow the same protocol.
    """
    model = RuntimeModel.resolve(model_path)
    space = get_space(model.space)
    if image_size is None:
        image_size = int(model.extra.get("image_size", model.protocol.get("image_size", 224)))
    if samples < 1:
        raise SpnasError(f"--samples must be >= 1, got {samples}")
    if passes < 1:
        raise SpnasError(f"--passes must be >= 1, got {passes}")
    archs = sample_architectures(space, samples, seed)
    protocol = dict(benchmark.protocol())
    protocol["image_size"] = image_size
    protocol["passes"] = passes
    if passes > 1:
        protocol["statistic"] = f"{protocol.get('statistic', 'median')}, best of {passes} passes"

    os.makedirs(out_dir, exist_ok=True)
    model_dir = os.path.join(out_dir, "models")
    os.makedirs(model_dir, exist_ok=True)
    state_path = os.path.join(out_dir, "measurements.json")
    setup = {"protocol": {k: v for k, v in protocol.items()
                          if k not in ("date", "passes", "statistic")},
             "seed": seed, "num_classes": num_classes}
    done = _load(state_path, setup)

    from tqdm import tqdm

    def model_file(arch: Architecture) -> str:
        # named by content, so files of another seed or image size are never mistaken for these
        digest = hashlib.sha1(f"{arch.ops}@{image_size}/{num_classes}".encode()).hexdigest()[:12]
        return os.path.join(model_dir, f"net-{digest}.tflite")

    keys = [",".join(arch.ops) for arch in archs]
    bar = tqdm(total=passes * len(archs), disable=not progress, desc="validate", unit="net",
               dynamic_ncols=True)
    bar.update(sum(min(len(done.get(k, {}).get("passes", [])), passes) for k in keys))
    try:
        # passes outside, networks inside: each network's passes lie minutes apart
        for round_ in range(passes):
            for arch, key in zip(archs, keys):
                entry = done.setdefault(key, {"passes": []})
                if len(entry["passes"]) > round_:
                    continue
                path = model_file(arch)
                if not os.path.exists(path):
                    exporter(build_child(arch, num_classes=num_classes), (1, 3, image_size, image_size), path)
                entry["passes"].append(benchmark.measure(path).to_dict())
                entry.update(best_of_passes(entry["passes"]).to_dict())
                atomic_write_json(state_path, {"setup": setup, "measurements": done})
                bar.update(1)
    finally:
        bar.close()

    rows = []
    for arch, key in zip(archs, keys):
        measured = done[key]
        rows.append({
            "ops": arch.ops,
            "block_strings": arch.block_strings(),
            "predicted_ms": model.predict(arch),
            "measured_ms": measured["median_ms"],
            "measured_pass_medians_ms": [p["median_ms"] for p in measured["passes"]],
            "measured_std_ms": measured.get("std_ms"),
        })

    for row in rows:
        row["error_pct"] = 100 * (row["predicted_ms"] - row["measured_ms"]) / row["measured_ms"]
    summary = accuracy_summary([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows])
    mismatch = {k: [model.protocol.get(k, model.extra.get(k)), protocol.get(k)] for k in _COMPARABLE
                if model.protocol.get(k, model.extra.get(k)) not in (None, protocol.get(k))}
    report = {
        "format": "spnas-validation-report",
        "version": 1,
        "date": datetime.date.today().isoformat(),
        "runtime_model": os.path.abspath(model_path) if os.path.exists(model_path) else model_path,
        "runtime_model_protocol": model.protocol,
        "protocol": protocol,
        "protocol_mismatch": mismatch,
        "seed": seed,
        "summary": summary,
        "architectures": rows,
    }
    atomic_write_json(os.path.join(out_dir, "report.json"), report)
    plot_scatter(rows, summary, os.path.join(out_dir, "scatter.png"), title=_title(model, protocol))
    return report


def _title(model: RuntimeModel, protocol: dict) -> str:
    return (f"{model.space}: runtime model vs {protocol.get('backend')}, "
            f"{protocol.get('threads')} thread(s), {protocol.get('image_size')} px")


def _load(path: str, setup: dict) -> dict:
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            state = json.load(f)
    except ValueError:
        return {}  # a report folder, not precious: remeasure
    if state.get("setup") != setup:
        return {}
    measurements = state.get("measurements", {})
    return {k: v for k, v in measurements.items() if isinstance(v, dict) and v.get("passes")}


def plot_scatter(rows: list[dict], summary: dict, path: str, title: str = "") -> None:
    """Predicted vs measured with the identity line and the +-5% / +-10% bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r["measured_ms"] for r in rows]
    predicted = [r["predicted_ms"] for r in rows]
    low = 0.9 * min(measured + predicted)
    high = 1.1 * max(measured + predicted)
    fig, ax = plt.subplots(figsize=(5.5, 5.0), dpi=120)
    line = [low, high]
    ax.plot(line, line, color="black", linewidth=1, label="predicted = measured")
    for band, style in ((0.05, "--"), (0.10, ":")):
        ax.plot(line, [v * (1 + band) for v in line], style, color="gray", linewidth=0.8,
                label=f"+-{band:.0%}")
        ax.plot(line, [v * (1 - band) for v in line], style, color="gray", linewidth=0.8)
    ax.scatter(measured, predicted, s=18, color="tab:blue", zorder=3)
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(title, fontsize=8)
    ax.text(0.03, 0.97,
            f"n={summary['samples']}  RMSE {summary['rmse_ms']:.3f} ms\n"
            f"MAPE {100 * summary['mape']:.2f}%  bias {summary['mean_error_pct']:+.2f}%\n"
            f"within 5%: {100 * summary['within_5pct']:.0f}%  within 10%: "
            f"{100 * summary['within_10pct']:.0f}%",
            transform=ax.transAxes, va="top", fontsize=8, family="monospace")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()

    def write(f):
        fig.savefig(f, format="png")

    atomic_write(path, write, binary=True)
    plt.close(fig)
