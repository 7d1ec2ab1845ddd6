"""The knobs of a search and of a training, and the fixed sets of values of some: plain data,
importable without torch (so that `spnas --help` is fast). One source of truth for the defaults:
the command-line flags read them from here."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .errors import SpnasError

FORMULAS = ("lut", "paper")                        # expected-latency formulas (runtime.py)
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
PRECISIONS = ("fp32", "bf16")
AUGMENTS = ("none", "crop", "flip-crop")           # batch augmentation (data.augment)
# where the indicators' gradient dL/dz (z = ||w|| - t) goes (layers.SuperDepthwiseConv2d)
INDICATOR_GRADS = ("thresholds", "thresholds+weights")
OP_BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")  # spnas_ops.BACKENDS (no torch here)
def need(ok: bool, flag: str, what: str) -> None:
    """A config check: a one-line error naming the flag unless ok."""
    if not ok:
        raise SpnasError(f"--{flag} {what}")


# What may change when a run is resumed: how this process runs, not the recipe.
PROCESS_KNOBS = ("run_dir", "progress", "stop_after_step", "workers", "device", "memory_format",
                 "compile")


@dataclass
class SearchConfig:
    """Every knob of a search; the defaults are the paper's (epochs counted on the data given)."""
    run_dir: str | None = None          # None: runs/search, runs/search-2, ... (first free)
    data: str | None = None             # None: scikit-learn digits; else an image folder
    augment: str | None = None          # None: data.default_augment (none on the digits)
    image_size: int | None = None       # None: 24 on the digits (8x8: 24 px keeps 5x5 vs 3x3
                                        # meaningful to stage 4), 224 with --data as in train
    val_fraction: float = 0.2
    workers: int = 0
    space: str = "mnasnet"
    width_mult: float = 1.0
    op_backend: str = "auto"
    runtime_model: str = "pixel1"       # preset name or runtime-model file
    formula: str = "lut"
    epochs: int = 8
    dropout_epochs: float | None = None  # lambda = 0 and indicator dropout before this epoch;
                                        # None: the paper's 5 with --data, 2 on the built-in digits
    indicator_keep: float = 0.6
    batch_size: int = 64                # per process
    lr: float | None = None             # None: lr_per_256 * global batch / 256
    lr_per_256: float = 0.016
    threshold_lr_mult: float = 1.0      # thresholds' learning rate relative to the weights'
    threshold_margin: float | None = 1.0  # when the latency term starts, t = ||w|| - margin
                                        # (None: leave them; the paper initialises them to 0)
    indicator_grad: str = "thresholds"  # INDICATOR_GRADS (the paper's: thresholds+weights)
    lr_decay: float = 0.97
    lr_decay_epochs: float = 2.4
    warmup_epochs: float = 0.0
    rmsprop_decay: float = 0.9
    momentum: float = 0.9
    rmsprop_eps: float = 1e-3
    weight_decay: float = 1e-5
    label_smoothing: float = 0.1
    ema_decay: float = 0.9999
    lam: float = 0.02
    lambda_scale: float = 1e3
    target_ms: float | None = None      # a latency budget: lambda from LambdaController
    lambda_gain: float = 0.03           # with target_ms: proportional gain on ln(R / target)
    lambda_adapt_rate: float = 0.0003   # with target_ms: integral gain per step on ln(R / target)
    lambda_max: float = 0.05            # with target_ms: |lambda| <= this
    target_ramp: float = 0.5            # with target_ms: share of the latency phase over which the
                                        # controller's target falls from the starting latency
    threshold_reach: float | None = 1.0  # with target_ms: after each step, margins >= -reach
                                        # (None: thresholds unclamped)
    steps_per_epoch: int | None = None  # cap (None: the whole training split)
    seed: int = 0
    device: str = "auto"
    memory_format: str = "auto"         # auto = channels_last (runs.memory_format)
    precision: str = "fp32"             # fp32, or bf16 autocast
    compile: bool = False               # the training step's model under torch.compile
    log_every: int = 10
    progress: bool = True
    stop_after_step: int | None = None  # acts like Ctrl-C after this many steps (for tests)

    def check(self) -> None:
        need(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        need(self.batch_size >= 1, "batch-size", f"must be >= 1, got {self.batch_size}")
        need(0 < self.indicator_keep <= 1, "indicator-keep", f"must be in (0, 1], got {self.indicator_keep}")
        need(self.dropout_epochs is None or self.dropout_epochs >= 0, "dropout-epochs",
             f"must be >= 0, got {self.dropout_epochs}")
        need(self.width_mult > 0, "width-mult", f"must be > 0, got {self.width_mult}")
        need(self.lam >= 0, "lambda", f"must be >= 0, got {self.lam}")
        need(self.target_ms is None or (self.target_ms > 0 and math.isfinite(self.target_ms)),
             "target-ms", f"must be > 0, got {self.target_ms}")
        need(self.lambda_gain >= 0, "lambda-gain", f"must be >= 0, got {self.lambda_gain}")
        need(self.lambda_adapt_rate >= 0, "lambda-adapt-rate", f"must be >= 0, got {self.lambda_adapt_rate}")
        need(self.lambda_max > 0, "lambda-max", f"must be > 0, got {self.lambda_max}")
        need(0 <= self.target_ramp <= 1, "target-ramp", f"must be in [0, 1], got {self.target_ramp}")
        need(self.threshold_reach is None
             or (self.threshold_reach >= 0 and math.isfinite(self.threshold_reach)),
             "threshold-reach", f"must be a number >= 0 or 'off', got {self.threshold_reach}")
        need(self.formula in FORMULAS, "formula", f"must be one of {', '.join(FORMULAS)}")
        need(self.lr_decay_epochs > 0, "lr-decay-epochs", "must be > 0")
        need(self.threshold_lr_mult >= 0, "threshold-lr-mult", "must be >= 0")
        need(self.indicator_grad in INDICATOR_GRADS, "indicator-grad",
             f"must be one of {', '.join(INDICATOR_GRADS)}, got {self.indicator_grad!r}")
        need(self.threshold_margin is None or math.isfinite(self.threshold_margin), "threshold-margin",
             "must be a number or 'off'")
        need(self.steps_per_epoch is None or self.steps_per_epoch >= 1, "steps-per-epoch", "must be >= 1")
        need(self.device in ("auto", "cpu") or self.device.startswith("cuda"), "device",
             f"must be auto, cpu or cuda[:N], got {self.device!r}")
        need(self.augment is None or self.augment in AUGMENTS, "augment",
             f"must be one of {', '.join(AUGMENTS)}, got {self.augment!r}")
        need(self.memory_format in MEMORY_FORMATS, "memory-format",
             f"must be one of {', '.join(MEMORY_FORMATS)}, got {self.memory_format!r}")
        need(self.precision in PRECISIONS, "precision",
             f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        need(self.op_backend in OP_BACKENDS, "op-backend",
             f"must be one of {', '.join(OP_BACKENDS)}, got {self.op_backend!r}")


DEFAULTS = {
    "imagenet": dict(image_size=224, epochs=350, batch_size=128, warmup_epochs=5.0,
                     lr_decay_epochs=2.4, ema_decay=0.9999, augment="flip-crop"),
    "digits": dict(image_size=16, epochs=20, batch_size=64, warmup_epochs=1.0,
                   lr_decay_epochs=1.0, ema_decay=0.99, augment="none"),
    # In-memory small-image sets (Fashion-MNIST, CIFAR-10): minutes per epoch on a CPU.
    "small": dict(image_size=32, epochs=30, batch_size=128, warmup_epochs=1.0,
                  lr_decay_epochs=1.0, ema_decay=0.999, augment="flip-crop"),
}


@dataclass
class TrainConfig:
    """Every knob of a training; None means "the DEFAULTS entry for this data"."""
    run_dir: str | None = None          # None: runs/train, runs/train-2, ... (first free)
    data: str | None = None             # None: scikit-learn digits; else an image folder
    image_size: int | None = None
    val_fraction: float = 0.2
    workers: int = 0
    augment: str | None = None          # batch-level: random shifted crop (+ horizontal flip)
    epochs: int | None = None
    batch_size: int | None = None       # per process
    lr: float | None = None             # None: lr_per_256 * global batch / 256
    lr_per_256: float = 0.016
    lr_decay: float = 0.97
    lr_decay_epochs: float | None = None
    warmup_epochs: float | None = None
    rmsprop_decay: float = 0.9
    momentum: float = 0.9
    rmsprop_eps: float = 1e-3
    weight_decay: float = 1e-5
    label_smoothing: float = 0.1
    ema_decay: float | None = None
    dropout: float = 0.2                # before the classifier
    steps_per_epoch: int | None = None  # cap (None: the whole training split)
    seed: int = 0
    device: str = "auto"
    log_every: int = 10
    progress: bool = True
    memory_format: str = "auto"         # auto = channels_last (runs.memory_format)
    precision: str = "fp32"             # fp32, or bf16 autocast
    compile: bool = False               # the training step's model under torch.compile
    init_from: str | None = None        # a search run: start from its supernet's (EMA) weights
    stop_after_step: int | None = None  # acts like Ctrl-C after this many steps (for tests)

    @property
    def profile(self) -> str:
        from .data import kind  # reads the data folder's layout (and imports torch): on use only
        return {"digits": "digits", "small": "small"}.get(kind(self.data), "imagenet")

    def resolve(self) -> TrainConfig:
        """A copy with every None knob taken from DEFAULTS[profile]."""
        cfg = dataclasses.replace(self)
        for key, value in DEFAULTS[self.profile].items():
            if getattr(cfg, key) is None:
                setattr(cfg, key, value)
        return cfg

    def check(self) -> None:
        need(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        need(self.batch_size >= 1, "batch-size", f"must be >= 1, got {self.batch_size}")
        need(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")
        need(self.memory_format in MEMORY_FORMATS, "memory-format",
             f"must be one of {', '.join(MEMORY_FORMATS)}, got {self.memory_format!r}")
        need(self.precision in PRECISIONS, "precision",
             f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        need(self.lr_decay_epochs > 0, "lr-decay-epochs", "must be > 0")
        need(self.warmup_epochs >= 0, "warmup-epochs", "must be >= 0")
        need(0 <= self.ema_decay < 1, "ema-decay", f"must be in [0, 1), got {self.ema_decay}")
        need(0 <= self.label_smoothing < 1, "label-smoothing", "must be in [0, 1)")
        need(self.augment in AUGMENTS, "augment", f"must be one of {', '.join(AUGMENTS)}")
        need(self.steps_per_epoch is None or self.steps_per_epoch >= 1, "steps-per-epoch", "must be >= 1")
        need(self.log_every >= 1, "log-every", "must be >= 1")
        need(self.device in ("auto", "cpu") or self.device.startswith("cuda"), "device",
             f"must be auto, cpu or cuda[:N], got {self.device!r}")
