"""`spnas search`: run the Single-Path NAS search (every knob of the authors' recipe is a flag)."""

from __future__ import annotations

import argparse

from ..config import AUGMENTS, FORMULAS, INDICATOR_GRADS, MEMORY_FORMATS, PRECISIONS, SearchConfig
from . import add_run_arguments, config_from_args, refuse_recipe_flags

_D = SearchConfig()


def _margin(text: str):
    """A number, or "off" (the config's None: thresholds stay where the paper puts them)."""
    if text.lower() in ("off", "none"):
        return "off"
    return float(text)


# (flag, config field, type, help). Defaults come from SearchConfig, the one source of truth.
FLAGS = (
    ("--data", "data", str, "fashion-mnist (the Debian package dataset-fashion-mnist), a folder "
                            "of IDX files (MNIST-style) or CIFAR-10 python batches, or an image "
                            "folder (ROOT/<class>/<images>, or ROOT/train + ROOT/val); a data "
                            "set's test split is never used; default: scikit-learn's digits, "
                            "no download"),
    ("--image-size", "image_size", int,
     "input resolution in pixels (default: 24 on the built-in digits, 32 for small-image sets "
     "such as fashion-mnist, 224 for image folders)"),
    ("--augment", "augment", str, "batch augmentation: none, crop (random shift), flip-crop "
                                  "(+ mirror) (default: none on the digits, else flip-crop)"),
    ("--val-fraction", "val_fraction", float, "held-out share when --data has no val/ folder"),
    ("--workers", "workers", int, "data-loading worker processes"),
    ("--space", "space", str, "search space: a name or a .json space file"),
    ("--width-mult", "width_mult", float, "channel multiplier of the supernet"),
    ("--op-backend", "op_backend", str, "superkernel backend: auto, reference, cpu, cuda, triton"),
    ("--latency-model", "runtime_model", str,
     "runtime model: preset name (pixel1) or file (e.g. a `spnas profile` table)"),
    ("--formula", "formula", str, "expected-latency formula: lut (exact for hard decisions) or paper"),
    ("--epochs", "epochs", int, "search epochs"),
    ("--dropout-epochs", "dropout_epochs", float,
     "epochs with indicator dropout and lambda = 0 before the latency term starts "
     "(default: the paper's 5 with --data; 2 on the built-in digits, too small for 5)"),
    ("--indicator-keep", "indicator_keep", float, "indicator-dropout keep probability"),
    ("--batch-size", "batch_size", int, "images per process and step"),
    ("--lr", "lr", float, "learning rate (default: --lr-per-256 x global batch / 256)"),
    ("--lr-per-256", "lr_per_256", float, "learning rate per 256 images of global batch"),
    ("--threshold-lr-mult", "threshold_lr_mult", float,
     "thresholds' learning rate relative to the weights' (raise it for short searches on small data)"),
    ("--threshold-margin", "threshold_margin", _margin,
     "when the latency term starts, put every threshold this far below its kernel norm, so "
     "decisions start at the largest op where their gradient sigmoid'(margin) is not ~0 "
     "(off: keep the paper's thresholds, initialised to 0)"),
    ("--indicator-grad", "indicator_grad", str,
     "where the indicators' straight-through gradient goes: the thresholds only, or also the "
     "weights through the norms the indicators compare (the paper's)"),
    ("--lr-decay", "lr_decay", float, "learning-rate factor applied every --lr-decay-epochs"),
    ("--lr-decay-epochs", "lr_decay_epochs", float, "epochs between learning-rate decays"),
    ("--warmup-epochs", "warmup_epochs", float, "linear learning-rate warm-up"),
    ("--rmsprop-decay", "rmsprop_decay", float, "RMSProp squared-gradient decay"),
    ("--momentum", "momentum", float, "RMSProp momentum"),
    ("--rmsprop-eps", "rmsprop_eps", float, "RMSProp epsilon (inside the square root, as in TF)"),
    ("--weight-decay", "weight_decay", float, "L2 factor on non-BN parameters and thresholds"),
    ("--label-smoothing", "label_smoothing", float, "cross-entropy label smoothing"),
    ("--ema-decay", "ema_decay", float, "weight EMA decay (evaluation uses the EMA)"),
    ("--lambda", "lam", float, "latency-loss weight: loss += lambda x --lambda-scale x ln(R_ms) "
                               "(not used with --target-ms)"),
    ("--lambda-scale", "lambda_scale", float, "constant factor on the latency loss"),
    ("--target-ms", "target_ms", float,
     "a latency budget instead of a fixed --lambda: before every step of the latency phase "
     "lambda = I + gain x e, I += rate x e, e = ln(R / target), R the predicted latency of the "
     "current hard decisions; lambda is negative while under budget, pulling layers back on. "
     "The result is the final decisions, or the last ones within the budget if those exceed it "
     "(docs/search.md; measured on digits: 3-12%% under 40, 60, 75 and 100 ms; "
     "default: off, the paper's fixed lambda)"),
    ("--lambda-gain", "lambda_gain", float, "with --target-ms: proportional gain on ln(R / target)"),
    ("--lambda-adapt-rate", "lambda_adapt_rate", float,
     "with --target-ms: integral gain, per step, on ln(R / target)"),
    ("--lambda-max", "lambda_max", float, "with --target-ms: |lambda| is clipped to this"),
    ("--target-ramp", "target_ramp", float,
     "with --target-ms: over this share of the latency phase the controller's target falls "
     "geometrically from the starting latency to --target-ms, so decisions go off a few at a "
     "time, the cheapest for the cross-entropy first (0: the budget from the first step)"),
    ("--threshold-reach", "threshold_reach", _margin,
     "with --target-ms: after every step keep each threshold at most this far above the norm "
     "it compares, so a decision that went off can come back (off: no clamp)"),
    ("--steps-per-epoch", "steps_per_epoch", int, "cap on steps per epoch (default: whole split)"),
    ("--seed", "seed", int, "seed of every random draw (init, batches, dropout masks)"),
    ("--device", "device", str, "auto, cpu, cuda or cuda:N (torchrun: each rank its LOCAL_RANK GPU)"),
    ("--memory-format", "memory_format", str,
     "layout of the model, inputs and data: auto (channels_last, the fastest measured on the "
     "CPU and GPU), channels_last or contiguous (NCHW)"),
    ("--precision", "precision", str, "fp32, or bf16 (forward and loss under torch.autocast)"),
    ("--compile", "compile", bool, "run the training step's model under torch.compile (the first "
                                   "steps pay the compile time)"),
    ("--log-every", "log_every", int, "steps between metrics.jsonl records"),
)


# Flags with a fixed set of values (shared with commands/train.py).
CHOICES = {"formula": FORMULAS, "memory_format": MEMORY_FORMATS, "precision": PRECISIONS,
           "augment": AUGMENTS, "indicator_grad": INDICATOR_GRADS}


# --help groups the flags by what they set (search and train share the titles).
GROUPS = (
    ("data", ("data", "image_size", "val_fraction", "workers", "augment")),
    ("network", ("space", "width_mult", "op_backend", "dropout", "init_from")),
    ("latency term", ("runtime_model", "formula", "lam", "lambda_scale", "target_ms", "lambda_gain",
                      "lambda_adapt_rate", "lambda_max", "target_ramp", "threshold_reach", "threshold_margin",
                      "indicator_grad", "threshold_lr_mult", "dropout_epochs", "indicator_keep")),
    ("schedule and optimizer", ("epochs", "batch_size", "lr", "lr_per_256", "lr_decay",
                                "lr_decay_epochs", "warmup_epochs", "rmsprop_decay", "momentum",
                                "rmsprop_eps", "weight_decay", "label_smoothing", "ema_decay",
                                "steps_per_epoch", "seed")),
    ("how the run executes", ("device", "memory_format", "precision", "compile", "log_every")),
)


def add_flags(parser, flags, default_of) -> None:
    """The FLAGS rows as options, in GROUPS; "(default: ...)" from default_of(field) unless the
    help text says it."""
    titles = {field: title for title, fields in GROUPS for field in fields}
    groups = {title: parser.add_argument_group(title) for title, _ in GROUPS}
    for flag, field, typ, text in flags:
        help_text = text if "default:" in text else f"{text} (default: {default_of(field)})"
        groups[titles[field]].add_argument(flag, dest=field, default=None,
                                           **argument_kind(flag, field, typ), help=help_text)


def argument_kind(flag: str, field: str, typ) -> dict:
    """add_argument's keywords for a FLAGS row: a switch for bool, else a typed value."""
    if typ is bool:
        return {"action": "store_const", "const": True}
    kind = {"type": typ, "metavar": flag[2:].upper()}
    return {**kind, "choices": CHOICES[field]} if field in CHOICES else kind


def _run(args: argparse.Namespace) -> int:
    from ..search import run_search  # torch: only when a search runs, not for --help

    cfg = SearchConfig()
    refuse_recipe_flags(args, FLAGS)
    config_from_args(cfg, args, FLAGS)
    result = run_search(cfg, resume=args.resume is not None)
    return 0 if result["finished"] else 130


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "search", help="search an architecture under a latency model",
        description=(
            "Train a Single-Path supernet and its thresholds jointly (the authors' recipe: RMSProp, "
            "EMA, indicator dropout, then the latency term), and write RUN_DIR/arch.json with the "
            "found architecture and its predicted latency. Multi-process: torchrun --nproc-per-node "
            "N -m spnas search ... (gloo on CPU, nccl on GPU). Ctrl-C saves a checkpoint; "
            "--resume continues to the same result as an uninterrupted run."))
    add_flags(p, FLAGS, lambda field: getattr(_D, field))
    add_run_arguments(p, "search", "runs/search")
    p.set_defaults(func=_run)


