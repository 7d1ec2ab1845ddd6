"""`spnas train ARCH.json`: train a found network from scratch (MnasNet's final-training recipe)."""

from __future__ import annotations

import argparse

from ..config import DEFAULTS, TrainConfig
from . import add_run_arguments, config_from_args, refuse_recipe_flags
from .search import add_flags
from .search import FLAGS as SEARCH_FLAGS

_D = TrainConfig()

# Flags that mean the same in search and train keep one definition (commands/search.py).
_SHARED = ("data", "val_fraction", "workers", "lr", "lr_per_256", "lr_decay", "rmsprop_decay", "momentum",
           "rmsprop_eps", "label_smoothing", "steps_per_epoch", "seed", "device", "memory_format", "augment",
           "precision", "compile", "log_every")

# (flag, config field, type, help). Defaults come from TrainConfig and train.DEFAULTS.
FLAGS = tuple(f for f in SEARCH_FLAGS if f[1] in _SHARED) + (
    ("--image-size", "image_size", int, "input resolution in pixels"),
    ("--epochs", "epochs", int, "training epochs"),
    ("--batch-size", "batch_size", int, "images per process and step"),
    ("--lr-decay-epochs", "lr_decay_epochs", float, "epochs between learning-rate decays"),
    ("--warmup-epochs", "warmup_epochs", float, "linear learning-rate warm-up"),
    ("--weight-decay", "weight_decay", float, "L2 factor on non-BN parameters (loss += wd x sum(w^2)/2)"),
    ("--ema-decay", "ema_decay", float, "weight EMA decay (evaluation and best.pt use the EMA)"),
    ("--dropout", "dropout", float, "dropout rate before the classifier"),
    ("--init-from", "init_from", str, "a search run folder: start from the weights its supernet "
                                      "(EMA) holds for this architecture (default: random init)"),
)


def _default(field: str) -> str:
    value = getattr(_D, field)
    if value is None and field in DEFAULTS["imagenet"]:
        return (f"{DEFAULTS['imagenet'][field]} for image folders, {DEFAULTS['small'][field]} for "
                f"small-image sets such as fashion-mnist, {DEFAULTS['digits'][field]} for digits")
    return str(value)


def _run(args: argparse.Namespace) -> int:
    from ..train import run_train  # torch: only when a training runs, not for --help

    cfg = TrainConfig()
    refuse_recipe_flags(args, FLAGS)
    config_from_args(cfg, args, FLAGS)
    result = run_train(args.arch, cfg, resume=args.resume is not None)
    return 0 if result["finished"] else 130


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a found architecture from scratch",
        description=(
            "Train the child network of ARCH.json from scratch with MnasNet's final-training recipe "
            "(RMSProp, warm-up then x0.97 every 2.4 epochs, EMA, label smoothing, dropout), evaluate "
            "the EMA weights (top-1/top-5) on the held-out split each epoch, and write RUN_DIR/best.pt "
            "for `spnas export ARCH.json --weights`. The built-in digits get scaled defaults that "
            "train in minutes on a CPU. Multi-process: torchrun --nproc-per-node N -m spnas train "
            "... Ctrl-C saves a checkpoint; --resume continues to the same result."))
    p.add_argument("arch", metavar="ARCH.json", nargs="?",
                   help="architecture file (from `spnas search`/`derive`); optional with --resume")
    add_flags(p, FLAGS, _default)
    add_run_arguments(p, "training", "runs/train")
    p.set_defaults(func=_run)
