"""`spnas profile`: measure a space on a device and write its runtime model.

What is timed, each as its own .tflite at its real input shape:
  * every (searchable layer, conv op): one MBConv ("skip" costs 0, the layer is absent);
  * the fixed parts (stem + fixed blocks, fixed blocks + head);
  * K random whole networks of the space ("calibration").

A sum of isolated layers misses what happens between layers in one graph (the activation a
layer reads was just written by the previous one and may still be in cache; one interpreter
invocation instead of twenty). The calibration networks measure that in context: the runtime
model's constant is fitted so that constant + sum of the chosen layers matches them (the fixed
part measured in context), and, when the sum is consistently off by a factor, the layer entries
are scaled by it. The isolated figures stay in the file next to the fitted ones.

Resumable: every finished measurement goes to `<out>.measurements.json` (atomically) and every
converted model to `<out>.models/`; a rerun skips both, so a killed run continues where it
stopped and reaches the same runtime model.
"""

from __future__ import annotations

import datetime
import os
import random
import shutil
import statistics
from typing import Any, Callable

from ..errors import SpnasError
from ..io import atomic_write_json
from ..layers import build_child
from ..runtime import RuntimeModel
from ..space import (CONV_OPS, Architecture, get_space, layer_input_shapes,
                     random_architecture)
from .benchmark import Benchmark, best_of_passes
from .export import export_tflite
from .pieces import Piece, fixed_pieces, layer_pieces

__all__ = ["profile", "plan", "fit_runtime_model", "MEASUREMENTS_FORMAT"]

MEASUREMENTS_FORMAT = "spnas-profile-measurements"

# Protocol fields that must agree for a rerun to reuse earlier measurements ("date" may not).
_SETUP_KEYS_IGNORED = ("date",)

# A fitted scale outside this range means the calibration networks disagree with the layers
# too much to be a cache effect; the fit then keeps scale 1 and says so.
_SCALE_RANGE = (0.8, 1.25)


def measurements_path(out: str) -> str:
    return os.path.splitext(out)[0] + ".measurements.json"


def models_dir(out: str) -> str:
    return os.path.splitext(out)[0] + ".models"


def plan(space, image_size: int, num_classes: int, calibrate: int, seed: int) -> list[Piece]:
    """Everything `profile` times, in order: fixed parts, layers, then calibration networks."""
    space = get_space(space)
    pieces = fixed_pieces(space, image_size, num_classes) + layer_pieces(space, image_size)
    rng = random.Random(seed)
    for k in range(calibrate):
        arch = random_architecture(space, rng)
        pieces.append(Piece(f"network{k}", (1, 3, image_size, image_size),
                            lambda arch=arch: build_child(arch, num_classes=num_classes), op=",".join(arch.ops)))
    return pieces


def _load_or_start(path: str, setup: dict, restart: bool) -> dict:
    import json

    if restart or not os.path.exists(path):
        return {"format": MEASUREMENTS_FORMAT, "version": 1, "setup": setup, "measurements": {}}
    try:
        with open(path) as f:
            state = json.load(f)
    except ValueError as e:
        raise SpnasError(f"{path}: unreadable earlier measurements ({e}); pass --restart") from None
    if not isinstance(state, dict) or state.get("format") != MEASUREMENTS_FORMAT:
        raise SpnasError(f"{path}: field 'format' must be {MEASUREMENTS_FORMAT!r}; pass --restart")
    old = state.get("setup", {})
    for key in sorted(set(old) | set(setup)):
        if key in _SETUP_KEYS_IGNORED:
            continue
        if old.get(key) != setup.get(key):
            raise SpnasError(
                f"{path}: earlier measurements used {key}={old.get(key)!r}, this run "
                f"{key}={setup.get(key)!r}; pass --restart to discard them or choose another --out"
            )
    if not isinstance(state.get("measurements"), dict):
        raise SpnasError(f"{path}: field 'measurements' must be an object; pass --restart")
    return state


def profile(
    space: Any,
    benchmark: Benchmark,
    out: str,
    *,
    image_size: int = 224,
    num_classes: int = 1000,
    calibrate: int = 8,
    seed: int = 1234,
    passes: int = 3,
    restart: bool = False,
    progress: bool = True,
    exporter: Callable[[Any, tuple, str], Any] = export_tflite,
) -> RuntimeModel:
    """Measure `space` with `benchmark`, write the runtime model to `out`, return it.

    Every model is measured `passes` times, each pass going once over all models (so the passes
    of one model lie minutes apart), and keeps its best pass (see `best_of_passes`). A rerun with
    more passes adds passes to the earlier ones.
    """
    space = get_space(space)
    if image_size < 8:
        raise SpnasError(f"--image-size must be at least 8, got {image_size}")
    if calibrate < 0:
        raise SpnasError(f"--calibrate must be >= 0, got {calibrate}")
    if passes < 1:
        raise SpnasError(f"--passes must be >= 1, got {passes}")
    pieces = plan(space, image_size, num_classes, calibrate, seed)
    protocol = dict(benchmark.protocol())
    setup = {
        "space": space.to_json(),
        "image_size": image_size,
        "num_classes": num_classes,
        "calibration_seed": seed,
        **{f"protocol.{k}": v for k, v in protocol.items()},
    }
    state_path = measurements_path(out)
    state = _load_or_start(state_path, setup, restart)
    done: dict = state["measurements"]
    model_dir = models_dir(out)
    if restart and os.path.isdir(model_dir):
        shutil.rmtree(model_dir)  # converted under the discarded setup
    os.makedirs(model_dir, exist_ok=True)

    def passes_of(piece: Piece) -> int:
        return len(done.get(piece.key, {}).get("passes", []))

    total = passes * len(pieces)
    finished = sum(min(passes_of(p), passes) for p in pieces)
    bar = _progress(total, finished, progress, f"profile {space.name}")
    try:
        for round_ in range(passes):
            for piece in pieces:
                if passes_of(piece) > round_:
                    continue
                bar.set_postfix_str(f"{piece.key} (pass {round_ + 1})")
                path = os.path.join(model_dir, piece.key.replace("/", "_") + ".tflite")
                if not os.path.exists(path):  # files appear only when complete (atomic writes)
                    exporter(piece.build(), piece.input_shape, path)
                entry = done.setdefault(piece.key, {})
                entry.setdefault("passes", []).append(benchmark.measure(path).to_dict())
                entry.update(best_of_passes(entry["passes"]).to_dict())
                entry["input_shape"] = list(piece.input_shape)
                if piece.key.startswith("network"):
                    entry["ops"] = piece.op.split(",")
                atomic_write_json(state_path, state)
                bar.update(1)
    finally:
        bar.close()

    protocol["date"] = datetime.date.today().isoformat()
    protocol["image_size"] = image_size
    protocol["passes"] = passes
    if passes > 1:
        protocol["statistic"] = f"{protocol.get('statistic', 'median')}, best of {passes} passes"
    model = fit_runtime_model(space, done, protocol, image_size, calibrate)
    model.save(out)
    return model


def fit_runtime_model(space, measured: dict, protocol: dict, image_size: int,
                      calibrate: int) -> RuntimeModel:
    """Runtime model from the measurements: isolated layers, fixed part in context (see module doc)."""
    space = get_space(space)
    layers = space.layers()
    shapes = layer_input_shapes(space, image_size)
    isolated = [{op: measured[f"layer{i}/{op}"]["median_ms"] for op in CONV_OPS} for i in range(len(layers))]
    fixed_keys = sorted(k for k in measured if k.startswith("fixed"))
    fixed_isolated = sum(measured[k]["median_ms"] for k in fixed_keys)

    networks = [measured[f"network{k}"] for k in range(calibrate)]
    calibration = fit_calibration(space, isolated, fixed_isolated, networks)
    scale, constant = calibration["scale"], calibration["constant_ms"]

    table = [{op: scale * ms[op] for op in CONV_OPS} for ms in isolated]
    extras = []
    for layer, shape, ms in zip(layers, shapes, isolated):
        extras.append({
            "stage": layer["stage"],
            "stride": layer["stride"],
            "in": layer["in"],
            "out": layer["out"],
            "input_shape": list(shape),
            "isolated_ms": ms,
            "spread_ms": {op: measured[f"layer{layer['index']}/{op}"]["std_ms"] for op in CONV_OPS},
        })
    extra = {
        "image_size": image_size,
        "source": "spnas profile",
        "fixed_parts_ms": {k: measured[k]["median_ms"] for k in fixed_keys},
        "calibration": calibration,
    }
    return RuntimeModel(table, constant, space.name, protocol, extras, extra)


def fit_calibration(space, isolated: list[dict], fixed_isolated: float, networks: list[dict]) -> dict:
    """Fit measured = constant + scale * sum(isolated layers) on the calibration networks.

    With fewer than 4 networks, or when their layer sums vary too little to pin a slope, only the
    constant is fitted (median residual, robust to one noisy run). The slope must also be
    physically plausible (_SCALE_RANGE); otherwise scale stays 1.
    """
    if not networks:
        return {"method": "isolated fixed parts", "networks": 0, "scale": 1.0,
                "constant_ms": fixed_isolated, "fixed_isolated_ms": fixed_isolated}
    sums, measured = [], []
    for net in networks:
        arch = Architecture(net["ops"], space)
        sums.append(sum(isolated[i][op] for i, op in enumerate(arch.ops) if op != "skip"))
        measured.append(net["median_ms"])
    scale = 1.0
    method = "constant fitted in context (median residual)"
    if len(networks) >= 4 and statistics.pstdev(sums) > 0.05 * statistics.fmean(sums):
        slope = _theil_sen(sums, measured)
        if _SCALE_RANGE[0] <= slope <= _SCALE_RANGE[1]:
            scale = slope
            method = "constant and layer scale fitted in context (Theil-Sen)"
    residuals = [m - scale * s for m, s in zip(measured, sums)]
    constant = max(statistics.median(residuals), 0.0)
    return {
        "method": method,
        "networks": len(networks),
        "scale": scale,
        "constant_ms": constant,
        "fixed_isolated_ms": fixed_isolated,
        "networks_ms": measured,
        "layer_sums_ms": sums,
    }


def _theil_sen(x: list[float], y: list[float]) -> float:
    """Median of pairwise slopes: a line fit that one outlier run cannot drag."""
    slopes = [(y[j] - y[i]) / (x[j] - x[i]) for i in range(len(x)) for j in range(i + 1, len(x))
              if abs(x[j] - x[i]) > 1e-9]
    return statistics.median(slopes) if slopes else 1.0


def _progress(total: int, initial: int, enabled: bool, description: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=description, unit="model",
                dynamic_ncols=True)

