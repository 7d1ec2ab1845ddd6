"""The search driver: the authors' Single-Path NAS recipe on CPU, one GPU, or torchrun DDP.

loss = CE(label smoothing) + wd * sum(w^2)/2 over non-BN parameters (thresholds included)
       + lambda * lambda_scale * ln(R_ms)
(the L2 term's gradient added after backward in one op, `optim.add_weight_decay`);
RMSProp (TF semantics), lr = lr_per_256 * global_batch / 256, x lr_decay every lr_decay_epochs;
EMA of the weights for evaluation; for the first `dropout_epochs` epochs lambda is 0 and the
indicators are dropped out (keep p, kept ones scaled by 1/p). The architecture is the hard
decisions at the end.

With `target_ms` (beyond the paper) lambda is no longer a constant but a signed multiplier set
before every latency-phase step by `LambdaController` (PI control on ln(R / target), R the
predicted latency of the current hard decisions), and `clamp_thresholds` keeps every decision
that is off within reach of coming back; if the final decisions exceed the budget, the last
ones within it are the result, or, if none ever was, the final ones less the decisions closest
to off. See docs/search.md.

Determinism is what makes resuming and multi-process runs agree: every random draw depends only
on (seed, epoch) or (seed, step), so a resumed run replays exactly the batches and dropout masks
of an uninterrupted one, and every rank draws the same indicator-dropout masks.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

import spnas_ops

from . import data as datamod
from .errors import SpnasError
from .optim import EMA, RMSpropTF, add_weight_decay, l2_penalty
from .config import SearchConfig
from .runtime import RuntimeModel
from .space import get_space
from .supernet import SinglePathSuperNet
from .loop import Loop, Step
from .runs import (
    CHECKPOINT,
    Dist,
    RunFolder,
    autocast,
    data_parallel,
    decay_parameters,
    evaluate,
    load_checkpoint,
    memory_format,
)
from .runs import steps_per_epoch as count_steps

ARCH = "arch.json"
# Fewer steps than this and a search cannot learn enough to rank ops by accuracy (the built-in
# digits take 176 with the defaults).
MIN_STEPS = 100


# -- pieces of the recipe --------------------------------------------------------------------------

def default_dropout_epochs(data: str | None) -> float:
    """The paper's 5 of 8 epochs on real data; 2 on the built-in digits (1438 images, 22 steps an
    epoch), where 110 steps of training random children leave the weights worse than at the
    start (CE above chance) and too few clean steps remain for the latency phase."""
    return 5.0 if data else 2.0


def indicator_scale(num_layers: int, keep: float, seed: int, step: int) -> torch.Tensor:
    """Indicator-dropout multipliers r: Bernoulli(keep)/keep per indicator, fixed by (seed, step)."""
    g = torch.Generator().manual_seed(seed * 7_919 + step * 104_729 + 1)
    kept = (torch.rand(num_layers, 3, generator=g) < keep).float()
    return kept / keep


def build_supernet(cfg: SearchConfig, num_classes: int) -> SinglePathSuperNet:
    return SinglePathSuperNet(cfg.space, num_classes=num_classes, width_mult=cfg.width_mult,
                              op_backend=cfg.op_backend,
                              norm_grad=cfg.indicator_grad == "thresholds+weights")


@torch.no_grad()
def clamp_thresholds(net: SinglePathSuperNet, reach: float) -> None:
    """Keep every decision within reach of coming back: margin >= -reach, i.e. t <= compared
    norm + reach. Only thresholds of decisions that are off, and more than `reach` below, move
    (down to margin -reach, still off): no decision changes.

    Why (`--target-ms`): a decision's gradient is sigmoid'(margin). Once the latency term pushes
    a threshold past its norm it keeps going (RMSProp momentum), and turning a kernel off drops
    the norms the expand and keep indicators compare by the outer ring's share (64 % of the
    taps), to margins of -5 to -13 (sigmoid' < 1e-2..1e-5): a layer that went off could not come
    back when the search is under budget. With the clamp it can, at sigmoid'(reach)."""
    thresholds = net.thresholds()
    lowered = torch.clamp(-reach - net.margins(), min=0).to(thresholds[0].dtype)
    torch._foreach_sub_(thresholds, list(lowered.unbind(0)))  # every layer in one op


class LambdaController:
    """Lambda for `--target-ms`: a signed Lagrange multiplier under PI control.

    Before every step of the latency phase, with R the predicted latency (ms) of the current
    hard decisions and e = ln(R / T_s):

        I      = 0  where I and e have opposite signs   (anti-windup, below)
        I      = clip(I + rate * e)           (the integral: dual ascent on ln R <= ln T_s)
        lambda = clip(I + gain * e)           clip: to [-lambda_max, lambda_max]

    Lambda is negative while the network is under budget, so the latency term then pulls
    decisions back ON (the cross-entropy's pull on the thresholds is too weak to). The
    proportional term damps: it reverses the push as soon as R crosses the target, while
    RMSProp's momentum still carries the thresholds; the integral removes the steady offset
    that the cross-entropy's pull would leave. R comes from thresholds and weights that every
    rank holds identically, so every DDP rank computes the same lambda. I starts at 0.

    T_s ramps: over the first `ramp_steps` steps of the phase it falls geometrically from R_0,
    the latency at the phase's first step, to the target. Aimed at the budget from the first
    step, e = ln(R_0 / T) makes lambda large at once and every threshold moves at RMSProp's
    full rate, so every layer shrinks alike within ~10 steps and the cross-entropy ranks nothing
    (docs/search_quality.md). Ramped, lambda stays just large enough to turn off the decisions
    whose latency saving outweighs their pull on the cross-entropy, a few at a time.

    Anti-windup: R moves in steps (identical layers flip together), so it can sit one step above
    T_s for tens of steps while the integral grows. Kept after R crossed, that integral went on
    pushing the same way for ~20 more steps and the search landed 11-13% under its budget
    (docs/search_quality.md); an integral that opposes the current error is dropped instead."""

    def __init__(self, target_ms: float, gain: float, rate: float, lam_max: float,
                 ramp_steps: int = 0):
        self.target_ms, self.gain, self.rate, self.lam_max = target_ms, gain, rate, lam_max
        self.ramp_steps = ramp_steps
        self.integral = 0.0
        self.lam = 0.0
        self.start_ms: float | None = None

    def _clip(self, v: float) -> float:
        return min(self.lam_max, max(-self.lam_max, v))

    def target(self, step: int) -> float:
        """T_s, the target of the phase's step `step` (0 = its first)."""
        if self.start_ms is None or step >= self.ramp_steps:
            return self.target_ms
        f = step / self.ramp_steps
        return self.start_ms ** (1 - f) * self.target_ms ** f

    def update(self, latency_ms: float, step: int = 0) -> float:
        """The lambda of the phase's step `step`, given the latency of the decisions it starts from."""
        if self.start_ms is None:
            self.start_ms = latency_ms
        e = math.log(latency_ms / self.target(step))
        if e * self.integral < 0:
            self.integral = 0.0
        self.integral = self._clip(self.integral + self.rate * e)
        self.lam = self._clip(self.integral + self.gain * e)
        return self.lam

    def state_dict(self) -> dict:
        return {"integral": self.integral, "lam": self.lam, "start_ms": self.start_ms}

    def load_state_dict(self, state: dict) -> None:
        self.integral, self.lam = float(state["integral"]), float(state["lam"])
        self.start_ms = state.get("start_ms")


# -- the driver --------------------------------------------------------------------------------------

@torch.no_grad()
def turn_off_closest(net: SinglePathSuperNet, latency, budget_ms: float) -> int:
    """Turn off, one at a time, the decision closest to off (the smallest margin still >= 0)
    until `latency(net.derive())` is within `budget_ms` or nothing is left to turn off; returns
    how many were turned off. The last resort of a --target-ms search that never stood within
    its budget: the decisions the search itself was nearest to dropping go first."""
    m = net.margins().cpu()
    skippable = net.skippable()
    turned = 0
    while latency(net.derive(m)) > budget_ms:
        free = m >= 0
        free[:, 2] &= skippable  # a layer that cannot be skipped keeps its keep decision
        if not free.any():
            break
        i, k = divmod(int(torch.where(free, m, torch.inf).argmin()), 3)
        m[i, k] = -1e-3
        net.set_margins(m.to(net.thresholds()[0].device))
        turned += 1
    return turned


def check_op_backend(backend: str, device: torch.device) -> None:
    """--op-backend: available in this build and on this device (before the run starts)."""
    if backend in ("auto", "reference"):
        return
    have = spnas_ops.available_backends()
    if backend not in have:
        raise SpnasError(f"--op-backend {backend} is not available here (available: "
                         f"{', '.join(have)})")
    wanted = "cpu" if backend == "cpu" else "cuda"
    if device.type != wanted:
        raise SpnasError(f"--op-backend {backend} runs on {wanted} tensors, but the run's device "
                         f"is {device.type} (--device)")


def run_search(cfg: SearchConfig, resume: bool = False, out=None) -> dict:
    """Run (or resume) a search. Returns a summary dict; the run folder ends with arch.json."""
    cfg.check()
    if cfg.dropout_epochs is None:
        cfg.dropout_epochs = default_dropout_epochs(cfg.data)
    if cfg.image_size is None:
        cfg.image_size = {"digits": 24, "small": 32}.get(datamod.kind(cfg.data), 224)
    if cfg.augment is None:
        cfg.augment = datamod.default_augment(cfg.data)
    out = out or sys.stdout
    ranks = Dist(cfg.device)
    try:
        return _run(cfg, resume, ranks, out)
    finally:
        ranks.close()


def _run(cfg: SearchConfig, resume: bool, ranks: Dist, out) -> dict:
    folder = RunFolder(cfg, resume, ranks, "search", (CHECKPOINT, ARCH))
    cfg, ckpt = folder.cfg, folder.checkpoint
    cfg.check()
    run_dir = cfg.run_dir

    # Every argument is checked before the run folder is made.
    space = get_space(cfg.space)
    runtime = RuntimeModel.resolve(cfg.runtime_model)
    if runtime.space != space.name or runtime.num_layers != space.num_layers:
        raise SpnasError(f"--latency-model {cfg.runtime_model}: runtime model is for space "
                         f"{runtime.space!r} ({runtime.num_layers} layers), the search space is "
                         f"{space.name!r} ({space.num_layers} layers); measure one with "
                         f"`spnas profile --space {space.name} --out LUT.json`")
    check_op_backend(cfg.op_backend, ranks.device)
    split = datamod.load(cfg.data, cfg.image_size, cfg.val_fraction, cfg.seed)
    folder.create()

    global_batch = cfg.batch_size * ranks.world
    steps_per_epoch = count_steps(len(split.train), cfg.batch_size, ranks.world, cfg.steps_per_epoch)
    total_steps = steps_per_epoch * cfg.epochs
    # the latency phase's first step: the first whose epoch (steps / steps_per_epoch) has
    # reached dropout_epochs; the one definition of the phases (ceil of the product can be off
    # by one step in floating point, e.g. 2.4 * 100)
    phase_start = next((s for s in range(total_steps + 1)
                        if s / steps_per_epoch >= cfg.dropout_epochs), total_steps)
    if total_steps < MIN_STEPS:
        ranks.say(out, f"warning: {total_steps} steps in all ({len(split.train)} training images, global "
                   f"batch {global_batch}, {cfg.epochs} epochs) are too few for the supernet to "
                   f"learn; the result will follow the latency term, not accuracy (more images, "
                   f"--epochs or a smaller --batch-size)")
    base_lr = cfg.lr if cfg.lr is not None else cfg.lr_per_256 * global_batch / 256

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    fmt = memory_format(cfg.memory_format)
    net = build_supernet(cfg, len(split.classes)).to(ranks.device, memory_format=fmt)
    decay_params = decay_parameters(net)
    thresholds = {id(t) for t in net.thresholds()}
    groups = [{"params": [p for p in net.parameters() if id(p) not in thresholds], "lr_mult": 1.0},
              {"params": net.thresholds(), "lr_mult": cfg.threshold_lr_mult}]
    opt = RMSpropTF(groups, lr=base_lr, rho=cfg.rmsprop_decay, momentum=cfg.momentum,
                    eps=cfg.rmsprop_eps)
    ema = EMA(net, cfg.ema_decay)
    steps_done = folder.restore(net, opt, ema)
    lam = float(ckpt["lambda"]) if ckpt is not None else (0.0 if cfg.target_ms else cfg.lam)
    controller = None
    if cfg.target_ms:
        ramp_steps = round(cfg.target_ramp * (total_steps - phase_start))
        controller = LambdaController(cfg.target_ms, cfg.lambda_gain, cfg.lambda_adapt_rate,
                                      cfg.lambda_max, ramp_steps)
        if ckpt is not None and "controller" in ckpt:
            controller.load_state_dict(ckpt["controller"])
    model = data_parallel(net, ranks)
    if cfg.compile:
        model = torch.compile(model)
    eval_net = (build_supernet(cfg, len(split.classes)).to(ranks.device, memory_format=fmt)
                if ranks.main else None)

    ranks.say(out, f"spnas search -> {run_dir}\n  data: {split.description}\n"
                 f"  supernet: space {space.name}, width x{cfg.width_mult}, op backend "
                 f"{cfg.op_backend}; {ranks.world} process(es) on {ranks.device.type}\n"
                 f"  {cfg.epochs} epochs x {steps_per_epoch} steps, global batch {global_batch}, "
                 f"lr {base_lr:g}; "
                 + (f"lambda controlled to land on {cfg.target_ms:g} ms" if cfg.target_ms
                    else f"lambda {cfg.lam:g}")
                 + f" after epoch {cfg.dropout_epochs:g}; runtime model {cfg.runtime_model}"
                 + (f"\n  resuming at step {steps_done}" if steps_done else ""))

    metrics = folder.metrics
    loop = Loop("search", cfg, ranks, run_dir, steps_per_epoch, total_steps, base_lr, opt, fmt)
    # with --target-ms, the last decisions of the latency phase within the budget: the result if
    # the final ones exceed it (the controller keeps R near T, on either side)
    state = {"lam": lam, "within": ckpt.get("within_budget") if ckpt is not None else None}
    val_acc = None  # of the last epoch: the found choices in the supernet's EMA weights

    def step(x, y, steps_done: int, lr: float) -> Step:
        searching = steps_done >= phase_start
        if cfg.threshold_margin is not None and steps_done == phase_start:
            # the first step of the latency phase: decisions where the losses can move them
            net.place_thresholds(cfg.threshold_margin)
        torch.manual_seed(cfg.seed * 1_000_003 + steps_done)
        x = datamod.augment(x, cfg.augment)
        scale = None
        if not searching and cfg.indicator_keep < 1:
            scale = indicator_scale(len(net.searchable), cfg.indicator_keep, cfg.seed,
                                    steps_done).to(ranks.device)
        with autocast(cfg.precision, ranks.device):
            logits = model(x, scale)
            ce = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        expected_ms = net.runtime(runtime, cfg.formula)
        if searching and controller is not None:
            # lambda from the architecture the step starts with (identical on every rank)
            # (one read-back of the margins: the decisions, and the snapshot if within budget)
            start_margins = net.margins().cpu()
            start_ms = runtime.predict(net.derive(start_margins))
            state["lam"] = controller.update(start_ms, steps_done - phase_start)
            if start_ms <= cfg.target_ms:
                state["within"] = {"step": steps_done, "ms": start_ms, "margins": start_margins}
        lam_now = state["lam"] if searching else 0.0
        target_now = ({"target_ms": controller.target(steps_done - phase_start)}
                      if searching and controller is not None else {})
        loss = ce + lam_now * cfg.lambda_scale * torch.log(expected_ms)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        add_weight_decay(decay_params, cfg.weight_decay)
        opt.step()
        if searching and controller is not None and cfg.threshold_reach is not None:
            clamp_thresholds(net, cfg.threshold_reach)
        ema.update(net)
        # the derived architecture's latency reads the thresholds back from the device: only
        # when a log line or the progress bar shows it, once per step
        hard_ms = functools.cache(lambda: runtime.predict(net.derive()))
        return Step(loss,
                    # the logged loss's L2 term is the weights' after the step (before it,
                    # it would cost every step what add_weight_decay saves)
                    lambda: {"lambda": lam_now, **target_now, "ce": ce.item(),
                             "loss": (loss + l2_penalty(decay_params, cfg.weight_decay)).item(),
                             "expected_ms": expected_ms.item(), "latency_ms": hard_ms(),
                             "train_acc": (logits.argmax(1) == y).float().mean().item()},
                    lambda: {"ce": f"{ce.item():.3f}", "ms": f"{hard_ms():.1f}", "lam": f"{lam_now:.3g}"})

    def end_epoch(steps_done: int, lr: float) -> None:
        # evaluate the EMA weights, log the decisions
        nonlocal val_acc
        if steps_done == total_steps:
            keep_within_budget()
        if ranks.main:
            eval_net.load_state_dict(ema.shadow)
            # the EMA weights with the found choices (with their own thresholds they ran
            # another network, its BN statistics those of the found one: 10 % validation accuracy)
            eval_net.copy_decisions(net)
            val_acc = evaluate(eval_net, split.val, 256, ranks.device, cfg.workers, fmt, cfg.precision)
            arch = net.derive()
            metrics.log({"kind": "epoch", "step": steps_done, "epoch": steps_done // steps_per_epoch,
                         "val_acc_ema": val_acc, "latency_ms": runtime.predict(arch),
                         "lambda": state["lam"], "ops": arch.ops,
                         "decisions": net.hard_decisions().tolist(),
                         "thresholds": [t.detach().cpu().tolist() for t in net.thresholds()],
                         "seconds": time.time() - started})

    def keep_within_budget() -> None:
        """At the end of a --target-ms search whose final decisions exceed the budget: the last
        decisions that met it, set as margins on the final weights (every rank alike); if no
        step stood within it, the final decisions less those closest to off."""
        within = state["within"]
        if controller is None:
            return
        final_ms = runtime.predict(net.derive())
        if final_ms <= cfg.target_ms:
            return
        if within is not None:
            net.set_margins(within["margins"].to(ranks.device))
            ranks.say(out, f"the final decisions ({final_ms:.4g} ms) exceed --target-ms {cfg.target_ms:g}; "
                           f"the result is the last ones within it (step {within['step']}, "
                           f"{within['ms']:.4g} ms)")
            return
        turned = turn_off_closest(net, runtime.predict, cfg.target_ms)
        ranks.say(out, f"no step of the search stood within --target-ms {cfg.target_ms:g} (final "
                       f"{final_ms:.4g} ms); the result turns off the {turned} decision(s) closest to "
                       f"off: {runtime.predict(net.derive()):.4g} ms. More epochs or a larger "
                       f"--lambda-max give the controller more reach")

    def save(steps_done: int) -> None:
        folder.save({
            "format": "spnas-search-checkpoint", "version": 1, "step": steps_done,
            "lambda": state["lam"], "config": dataclasses.asdict(cfg), "model": net.state_dict(),
            "optimizer": opt.state_dict(), "ema": ema.state_dict(),
            **({"controller": controller.state_dict(), "within_budget": state["within"]}
               if controller else {})})

    started = time.time()
    steps_done, interrupted = loop.run(split.train, steps_done, metrics, step, end_epoch, save, out)
    metrics.close()
    if interrupted:
        return {"run_dir": run_dir, "finished": False, "step": steps_done}

    arch = net.derive()
    predicted = runtime.predict(arch)
    extra = {"runtime_model": cfg.runtime_model, "predicted_ms": round(predicted, 4)}
    if ranks.main:
        arch.save(os.path.join(run_dir, ARCH), **extra)
    ranks.barrier()
    ranks.say(out, format_result(arch, cfg.runtime_model, predicted, os.path.join(run_dir, ARCH),
                               seconds=time.time() - started, val_acc=val_acc, target_ms=cfg.target_ms))
    return {"run_dir": run_dir, "finished": True, "step": steps_done, "arch": arch,
            "predicted_ms": predicted, "val_acc": val_acc, "decisions": net.hard_decisions(),
            "thresholds": torch.stack([t.detach().cpu() for t in net.thresholds()])}


def format_result(arch, model_name: str, predicted: float, path: str | None = None,
                  seconds: float | None = None, val_acc: float | None = None,
                  target_ms: float | None = None) -> str:
    lines = [f"found architecture ({arch.space.name}): {' '.join(arch.ops)}"]
    for i, stage in enumerate(arch.block_strings()):
        lines.append(f"  stage {i}: {', '.join(stage)}")
    label = "Pixel 1" if model_name == "pixel1" else model_name
    budget = ""
    if target_ms:
        budget = f" (budget {target_ms:g} ms: {'met' if predicted <= target_ms else 'exceeded'})"
    lines.append(f"predicted latency ({label}): {predicted:.2f} ms{budget}")
    if model_name != "pixel1" and arch.space.name == "mnasnet":
        lines.append(f"predicted latency (Pixel 1): {RuntimeModel.preset('pixel1').predict(arch):.2f} ms")
    if val_acc is not None:
        lines.append(f"validation accuracy: {100 * val_acc:.2f}% (the supernet's EMA weights with "
                     f"these choices; train the child for its own accuracy: spnas train)")
    if path:
        lines.append(f"wrote {path}" + (f" ({seconds:.0f} s)" if seconds is not None else ""))
    return "\n".join(lines)


__all__ = ["SearchConfig", "run_search", "load_checkpoint", "indicator_scale", "format_result",
           "LambdaController", "clamp_thresholds", "turn_off_closest"]
