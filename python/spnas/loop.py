"""The step loop `spnas search` and `spnas train` share.

Epochs of deterministic batches (a resumed run replays an uninterrupted one's), the learning
rate of each step, the metrics log every `log_every` steps, the progress bar, Ctrl-C (stop
after the step, agreed by every rank), the end-of-epoch work and its checkpoint, and the
checkpoint and message of an interrupted run. A command gives only its own training step and
its own end-of-epoch work.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from . import data as datamod
from .optim import learning_rate
from .runs import Dist, MetricsLog, StopFlag, check_finite, epoch_batches, progress_bar


# The progress bar's postfix (loss, latency) is refreshed at most this often: computing it every
# step cost a device synchronisation and, in the search, ~1,000 small ops a step (docs/gpu.md).
POSTFIX_SECONDS = 1.0


@dataclass
class Step:
    """What a training step hands back. `log` and `postfix` are called only when their values
    are shown (reading a loss synchronizes with the device; the search's postfix also derives
    the architecture, hundreds of small ops): `log` every `log_every` steps, `postfix` at most
    once every POSTFIX_SECONDS."""
    loss: torch.Tensor
    log: Callable[[], dict]
    postfix: Callable[[], dict]


@dataclass
class Loop:
    command: str                # "search" or "train": the progress bar's and the resume hint's name
    cfg: object                 # SearchConfig or TrainConfig (batches, schedule, logging, stopping)
    ranks: Dist
    run_dir: str
    steps_per_epoch: int
    total_steps: int
    base_lr: float
    opt: torch.optim.Optimizer  # each param group's lr = the step's lr x its "lr_mult" (default 1)
    fmt: torch.memory_format

    def run(self, train_set, steps_done: int, metrics: MetricsLog,
            step: Callable[[torch.Tensor, torch.Tensor, int, float], Step],
            end_epoch: Callable[[int, float], None], save: Callable[[int], None], out) -> tuple[int, bool]:
        """Steps from `steps_done` to the end, or to a stop. `step(x, y, steps_done, lr)` is one
        training step on a batch already on the device; `end_epoch(steps_done, lr)` runs after
        each whole epoch, then `save(steps_done)`. Returns (steps done, interrupted); an
        interrupted run is saved before this returns."""
        cfg, ranks = self.cfg, self.ranks
        bar = progress_bar(ranks.main and cfg.progress, self.total_steps, steps_done, self.command)
        postfix_due = 0.0  # time.monotonic() from which the bar's postfix is refreshed
        interrupted = False
        with StopFlag() as stop:
            while steps_done < self.total_steps and not interrupted:
                batches = epoch_batches(len(train_set), cfg.batch_size, ranks, cfg.seed,
                                        self.steps_per_epoch, steps_done)
                for x, y in datamod.loader(train_set, batches, cfg.workers):
                    x = x.to(ranks.device, non_blocking=True, memory_format=self.fmt)
                    y = y.to(ranks.device, non_blocking=True)
                    lr = learning_rate(self.base_lr, steps_done / self.steps_per_epoch, cfg.lr_decay,
                                       cfg.lr_decay_epochs, cfg.warmup_epochs)
                    for group in self.opt.param_groups:
                        group["lr"] = lr * group.get("lr_mult", 1.0)
                    result = step(x, y, steps_done, lr)
                    steps_done += 1
                    if steps_done % cfg.log_every == 0 or steps_done == self.total_steps:
                        check_finite(result.loss, steps_done, self.run_dir)
                        metrics.log({"kind": "train", "step": steps_done,
                                     "epoch": steps_done / self.steps_per_epoch, "lr": lr,
                                     **result.log()})
                    if bar is not None:
                        if time.monotonic() >= postfix_due:
                            bar.set_postfix(result.postfix(), refresh=False)
                            postfix_due = time.monotonic() + max(POSTFIX_SECONDS, bar.mininterval)
                        bar.update(1)
                    if stop.now(ranks, steps_done, cfg.stop_after_step):
                        interrupted = True
                        break
                if interrupted:
                    break
                end_epoch(steps_done, lr)
                save(steps_done)
        if bar is not None:
            bar.close()
        if interrupted:
            save(steps_done)
            ranks.say(out, f"stopped at step {steps_done}/{self.total_steps}; checkpoint saved. "
                           f"Continue with: spnas {self.command} --resume {self.run_dir}")
        return steps_done, interrupted


__all__ = ["Loop", "Step"]
