"""Train a found child network from scratch: MnasNet's final-training recipe, as the authors ran it.

loss = CE(label smoothing 0.1) + wd * sum(w^2)/2 over non-BN parameters (the second term's
gradient added after backward, `optim.add_weight_decay`); dropout before the
classifier; RMSProp (TF semantics: decay 0.9, momentum 0.9, eps 1e-3), lr = lr_per_256 *
global_batch / 256 after a linear warm-up, x0.97 every 2.4 epochs; the EMA of the weights is what
is evaluated (top-1/top-5 on the held-out split each epoch) and exported.

The recipe's epoch counts are ImageNet's (350 epochs of 1.28M images). On the built-in digits
(1437 training images) the same recipe is kept but its time constants are scaled to the data, see
DEFAULTS. The loop shares its machinery (processes, batches, resume, logs) with the search, in
runs.py, so a resumed training replays exactly the batches and dropout masks of an
uninterrupted one, on CPU, one GPU, or torchrun DDP.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import torch
import torch.nn.functional as F

from . import data as datamod
from .config import DEFAULTS, SearchConfig, TrainConfig
from .data import augment
from .errors import SpnasError
from .io import atomic_torch_save
from .layers import build_child
from .optim import EMA, RMSpropTF, add_weight_decay, l2_penalty
from .space import Architecture
from .loop import Loop, Step
from .runs import (
    CHECKPOINT,
    Dist,
    RunFolder,
    autocast,
    data_parallel,
    decay_parameters,
    evaluate_topk,
    memory_format,
    resume_point,
    steps_per_epoch,
)

BEST = "best.pt"          # the best EMA weights as a bare state dict: `spnas export --weights`
ARCH = "arch.json"

# Knobs whose right value depends on the data. "imagenet" is the paper's recipe (any --data
# folder); "digits" scales its time constants to the 1437-image built-in set so that a CPU reaches
# > 90% top-1 in minutes: ~22 steps per epoch instead of ~1250, so warm-up and decay intervals are
# counted in fewer epochs, and the EMA horizon is shortened to ~100 steps. The learning rate stays
# the paper's 0.016 per 256 images: 4x that diverged on digits (RMSProp, batch 64).
def searched_weights(run_dir: str, arch: Architecture, num_classes: int) -> dict:
    """--init-from: the child of `arch` cut from a search run's supernet (its EMA weights)."""
    from .search import build_supernet
    ckpt, saved = resume_point(run_dir, "search", flag="--init-from")
    if ckpt is None:
        raise SpnasError(f"--init-from {run_dir}: the search has no checkpoint yet")
    config = SearchConfig(**{k: v for k, v in saved.items()
                             if k in {f.name for f in dataclasses.fields(SearchConfig)}})
    if config.space != arch.space.name:
        raise SpnasError(f"--init-from {run_dir}: its space is {config.space!r}, the "
                         f"architecture's {arch.space.name!r}")
    if config.width_mult != 1.0:
        raise SpnasError(f"--init-from {run_dir}: the search ran at width x{config.width_mult:g}; "
                         f"spnas train builds the network at width x1")
    supernet = build_supernet(config, ckpt["model"]["head.classifier.bias"].shape[0])
    supernet.load_state_dict(ckpt["ema"]["shadow"])
    if supernet.num_classes != num_classes:
        raise SpnasError(f"--init-from {run_dir}: its supernet has {supernet.num_classes} classes, "
                         f"the training data {num_classes}")
    return supernet.child(arch).state_dict()


def run_train(arch: Architecture | str | None, cfg: TrainConfig, resume: bool = False, out=None) -> dict:
    """Train (or resume training) `arch` (an Architecture or ARCH.json path; None when resuming).

    Returns a summary dict; the run folder ends with best.pt (EMA weights of the best epoch).
    """
    out = out or sys.stdout
    ranks = Dist(cfg.device if cfg.device else "auto")
    try:
        return _run(arch, cfg, resume, ranks, out)
    finally:
        ranks.close()


def _run(arch, cfg: TrainConfig, resume: bool, ranks: Dist, out) -> dict:
    if not resume:
        if arch is None:
            raise SpnasError("give the architecture to train: spnas train ARCH.json")
        arch = Architecture.load(arch) if isinstance(arch, str) else arch
        cfg = cfg.resolve()
    folder = RunFolder(cfg, resume, ranks, "train", (CHECKPOINT, BEST))
    cfg, ckpt = folder.cfg, folder.checkpoint
    if resume:
        saved_arch = (Architecture.from_json(ckpt["arch"], where=f"{cfg.run_dir}/{CHECKPOINT}")
                      if ckpt is not None else Architecture.load(os.path.join(cfg.run_dir, ARCH)))
        if arch is not None:
            given = Architecture.load(arch) if isinstance(arch, str) else arch
            if given != saved_arch:
                raise SpnasError(f"ARCH.json differs from the architecture {cfg.run_dir} was trained "
                                 f"with; leave it out to resume")
        arch = saved_arch
    cfg.check()
    run_dir = cfg.run_dir
    split = datamod.load(cfg.data, cfg.image_size, cfg.val_fraction, cfg.seed)
    init = (searched_weights(cfg.init_from, arch, len(split.classes))
            if cfg.init_from and ckpt is None else None)
    folder.create()  # every argument checked: now the run folder
    if ranks.main:
        arch.save(folder.file(ARCH))
    ranks.barrier()

    num_classes = len(split.classes)
    global_batch = cfg.batch_size * ranks.world
    steps = steps_per_epoch(len(split.train), cfg.batch_size, ranks.world, cfg.steps_per_epoch)
    total_steps = steps * cfg.epochs
    base_lr = cfg.lr if cfg.lr is not None else cfg.lr_per_256 * global_batch / 256

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    fmt = memory_format(cfg.memory_format)
    net = build_child(arch, num_classes=num_classes, drop_rate=cfg.dropout)
    if init is not None:
        net.load_state_dict(init)
    net = net.to(ranks.device, memory_format=fmt)
    decay_params = decay_parameters(net)
    opt = RMSpropTF(net.parameters(), lr=base_lr, rho=cfg.rmsprop_decay, momentum=cfg.momentum,
                    eps=cfg.rmsprop_eps)
    ema = EMA(net, cfg.ema_decay)
    steps_done = folder.restore(net, opt, ema)
    best = dict(ckpt["best"]) if ckpt is not None else {"top1": -1.0, "top5": -1.0, "epoch": 0}
    model = data_parallel(net, ranks)
    if cfg.compile:
        model = torch.compile(model)
    eval_net = build_child(arch, num_classes=num_classes).to(ranks.device, memory_format=fmt)

    ranks.say(out, f"spnas train -> {run_dir}\n  data: {split.description}\n"
               f"  network: {' '.join(arch.ops)} ({arch.space.name}), "
               f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters; "
               f"{ranks.world} process(es) on {ranks.device.type}\n"
               f"  {cfg.epochs} epochs x {steps} steps, global batch {global_batch}, lr {base_lr:g} "
               f"(warm-up {cfg.warmup_epochs:g} epochs, x{cfg.lr_decay:g} every {cfg.lr_decay_epochs:g}), "
               f"EMA {cfg.ema_decay:g}, dropout {cfg.dropout:g}, augment {cfg.augment}"
               + (f"\n  resuming at step {steps_done}" if steps_done else ""))

    metrics = folder.metrics
    loop = Loop("train", cfg, ranks, run_dir, steps, total_steps, base_lr, opt, fmt)
    shown = {"top1": None, "top5": None}  # the last epoch's held-out accuracy

    def step(x, y, steps_done: int, lr: float) -> Step:
        # one seed per step (and rank): augmentation and dropout replay exactly on resume
        torch.manual_seed((cfg.seed * 1_000_003 + steps_done) * 64 + ranks.rank)
        x = augment(x, cfg.augment)
        with autocast(cfg.precision, ranks.device):
            logits = model(x)
            ce = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        ce.backward()
        add_weight_decay(decay_params, cfg.weight_decay)
        opt.step()
        ema.update(net)
        # the logged loss's L2 term is the weights' after the step (see search.py)
        return Step(ce,
                    lambda: {"ce": ce.item(),
                             "loss": (ce + l2_penalty(decay_params, cfg.weight_decay)).item(),
                             "train_acc": (logits.argmax(1) == y).float().mean().item()},
                    lambda: {"ce": f"{ce.item():.3f}", "lr": f"{lr:.3g}",
                             "top1": f"{shown['top1']:.3f}" if shown["top1"] is not None else "-"})

    def end_epoch(steps_done: int, lr: float) -> None:
        # the EMA weights on the held-out split (sharded over the ranks)
        nonlocal best
        eval_net.load_state_dict(ema.shadow)
        top1, top5 = evaluate_topk(eval_net, split.val, 256, ranks.device, cfg.workers, (1, 5), ranks,
                                   fmt, cfg.precision)
        shown.update(top1=top1, top5=top5)
        epoch = steps_done // steps
        if top1 > best["top1"]:
            best = {"top1": top1, "top5": top5, "epoch": epoch}
            if ranks.main:
                atomic_torch_save(os.path.join(run_dir, BEST), ema.shadow)
        metrics.log({"kind": "epoch", "step": steps_done, "epoch": epoch, "val_top1_ema": top1,
                     "val_top5_ema": top5, "best_top1": best["top1"], "lr": lr,
                     "seconds": time.time() - started})

    def save(steps_done: int) -> None:
        folder.save({
            "format": "spnas-train-checkpoint", "version": 1, "step": steps_done, "best": best,
            "config": dataclasses.asdict(cfg), "arch": arch.to_json(), "model": net.state_dict(),
            "optimizer": opt.state_dict(), "ema": ema.state_dict()})

    started = time.time()
    steps_done, interrupted = loop.run(split.train, steps_done, metrics, step, end_epoch, save, out)
    test, test_right = None, None
    if split.test is not None and not interrupted:
        # once, at the end, with the weights the validation split chose
        eval_net.load_state_dict(torch.load(os.path.join(run_dir, BEST), map_location=ranks.device,
                                            weights_only=True))
        hits = [] if ranks.world == 1 else None  # several ranks: each holds a share of the images
        test = evaluate_topk(eval_net, split.test, 256, ranks.device, cfg.workers, (1, 5), ranks, fmt,
                             cfg.precision, top1_hits=hits)
        test_right = torch.cat(hits).cpu() if hits else None
        metrics.log({"kind": "test", "step": steps_done, "epoch": best["epoch"],
                     "test_top1": test[0], "test_top5": test[1]})
    metrics.close()
    if interrupted:
        return {"run_dir": run_dir, "finished": False, "step": steps_done, "best": best}

    best_path, arch_path = os.path.join(run_dir, BEST), os.path.join(run_dir, ARCH)
    tested = (f"test accuracy of those weights: top-1 {test[0]:.4f}, top-5 {test[1]:.4f}\n"
              if test else "")
    ranks.say(out, f"best held-out accuracy (EMA weights): top-1 {best['top1']:.4f}, top-5 "
               f"{best['top5']:.4f} at epoch {best['epoch']}/{cfg.epochs} "
               f"({time.time() - started:.0f} s)\n{tested}"
               f"wrote {best_path}\n"
               f"export it: spnas export {arch_path} --weights {best_path} --out model.tflite")
    return {"run_dir": run_dir, "finished": True, "step": steps_done, "best": best,
            "top1": shown["top1"], "top5": shown["top5"], "arch": arch, "image_size": cfg.image_size,
            "num_classes": num_classes, "weights": best_path,
            "test_top1": test[0] if test else None, "test_top5": test[1] if test else None,
            "test_right": test_right}  # which test images top-1 gets right (one process only)


__all__ = ["DEFAULTS", "TrainConfig", "augment", "run_train"]
