"""Runs: what every spnas training loop shares (processes, stopping, batches, evaluation, logs,
checkpoints, run folders).

`spnas search` (the supernet) and `spnas train` (the child network) run the same kind of loop:
torchrun-style processes that each take a slice of one global batch, a deterministic batch order
so a resumed run replays the batches of an uninterrupted one, Ctrl-C that stops after the step
and saves, a JSONL metrics log cut back to the checkpoint on resume, and atomic checkpoints.
The pieces live here so both loops use one implementation of each.
"""

from __future__ import annotations

import contextlib
import dataclasses

import json
import os
import signal
import sys

import torch
import torch.distributed as dist

from . import data as datamod
from .config import PROCESS_KNOBS
from .errors import SpnasError
from .io import atomic_torch_save, atomic_write, atomic_write_json, read_json

__all__ = [
    "Dist",
    "MetricsLog",
    "RunFolder",
    "StopFlag",
    "decay_parameters",
    "epoch_batches",
    "evaluate",
    "evaluate_topk",
    "fresh_run_dir",
    "load_checkpoint",
    "progress_bar",
    "steps_per_epoch",
    "truncate_metrics",
]


class Dist:
    """World size / rank from torchrun's environment; a no-op for a single process."""

    def __init__(self, device: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu"
        elif device == "cuda":
            device = f"cuda:{self.local_rank}"
        self.device = torch.device(device)
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise SpnasError("--device cuda: no CUDA device is available")
            torch.cuda.set_device(self.device)
        self.owns_group = False
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self.owns_group = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj):
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def any(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def say(self, out, text: str) -> None:
        if self.main:
            print(text, file=out, flush=True)

    def close(self):
        if self.owns_group:
            dist.destroy_process_group()


class StopFlag:
    """First Ctrl-C (or SIGTERM) asks to stop after the current step; a second one aborts."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        import threading
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def now(self, ranks: "Dist", steps_done: int, stop_after_step: int | None) -> bool:
        """Whether the run ends after this step, agreed by every rank: a stop was asked for
        (signal) on any rank, or `stop_after_step` steps are done."""
        return ranks.any(self.requested or (stop_after_step is not None
                                        and steps_done >= stop_after_step))


class MetricsLog:
    """The run's metrics.jsonl, written by the main process only (other ranks get a no-op)."""

    def __init__(self, path: str, enabled: bool):
        self._f = open(path, "a") if enabled else None

    def log(self, record: dict) -> None:
        if self._f is not None:
            self._f.write(json.dumps(record) + "\n")
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()




def memory_format(choice: str) -> torch.memory_format:
    """"auto" is channels_last on every device: the supernet's step on the CPU ran 1.58x faster
    in it than in NCHW (docs/benchmarks.md), and it is the layout of cuDNN's and the fused op's fastest
    GPU kernels (docs/gpu.md)."""
    return torch.contiguous_format if choice == "contiguous" else torch.channels_last


def autocast(precision: str, device: torch.device):
    """bf16: the forward and the loss under torch.autocast (weights and optimizer stay fp32)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def progress_bar(enabled: bool, total: int, initial: int, desc: str):
    """A tqdm bar on stderr, or None (other ranks, --no-progress)."""
    if not enabled:
        return None
    from tqdm import tqdm
    # Into a log file or a pipe, a bar redrawn ten times a second is thousands of lines.
    every = 0.1 if sys.stderr.isatty() else 10.0
    return tqdm(total=total, initial=initial, desc=desc, unit="step", file=sys.stderr,
                dynamic_ncols=True, mininterval=every)


def decay_parameters(model: torch.nn.Module) -> list[torch.Tensor]:
    """Everything but BatchNorm's parameters (the authors' weight-decay set, thresholds included)."""
    bn = set()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            bn |= {id(p) for p in m.parameters(recurse=False)}
    return [p for p in model.parameters() if id(p) not in bn]


def fresh_run_dir(base: str, markers: tuple[str, ...]) -> str:
    """`base` unless it already holds one of `markers`, else the first free base-2, base-3, ..."""
    if not any(os.path.exists(os.path.join(base, m)) for m in markers):
        return base
    i = 2
    while os.path.exists(f"{base}-{i}"):
        i += 1
    return f"{base}-{i}"


def load_checkpoint(path: str) -> dict:
    """A spnas checkpoint, loaded safely (weights_only=True: tensors and plain containers only)."""
    if not os.path.exists(path):
        raise SpnasError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise SpnasError(f"cannot load checkpoint {path}: {str(err).splitlines()[0]}") from None


CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"


def check_finite(loss: torch.Tensor, step: int, run_dir: str) -> None:
    """A diverged run stops with one line; NaN weights or thresholds would otherwise turn
    every decision off and search on without a word."""
    if not bool(torch.isfinite(loss)):
        raise SpnasError(f"the loss is {loss.item()} at step {step}: the run diverged (a lower "
                         f"--lr?); {run_dir} keeps its last checkpoint")


def check_run_dir(run_dir: str) -> None:
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise SpnasError(f"--run-dir {run_dir} is a file, not a folder")


def remove_partial_writes(run_dir: str) -> None:
    """Deletes the temp files of atomic writes that a killed process left in run_dir."""
    if not os.path.isdir(run_dir):
        return
    for name in os.listdir(run_dir):
        if name.startswith(".") and name.endswith(".tmp"):
            try:
                os.unlink(os.path.join(run_dir, name))
            except OSError:
                pass


def resume_point(run_dir: str, command: str, flag: str = "--resume") -> tuple[dict | None, dict]:
    """(checkpoint or None, saved config) of a `command` ("search" or "train") run, read only
    (--init-from reads a search that may still be running). A run killed before its first
    checkpoint landed has only its config.json: it starts over from it (checkpoint None).
    Its cut-short temp files are removed later, by create_run_dir, once every argument passed."""
    if not run_dir:
        raise SpnasError(f"{flag} needs the run folder: spnas {command} {flag} RUN_DIR")
    if not os.path.isdir(run_dir):
        raise SpnasError(f"{flag} {run_dir}: no such run folder")
    path = os.path.join(run_dir, CHECKPOINT)
    if not os.path.exists(path):
        config = os.path.join(run_dir, CONFIG)
        if not os.path.exists(config):
            raise SpnasError(f"{flag} {run_dir}: no {CHECKPOINT} and no {CONFIG}: not a spnas run")
        return None, dict(read_json(config, "run config"))
    ckpt = load_checkpoint(path)
    kind = str(ckpt.get("format", "")).removeprefix("spnas-").removesuffix("-checkpoint")
    if kind != command:
        hint = f"; continue it with spnas {kind} --resume {run_dir}" if kind in ("search", "train") else ""
        raise SpnasError(f"{flag} {run_dir}: that is not a {command} run ({path} is a "
                         f"{kind or 'unknown'} checkpoint){hint}")
    return ckpt, dict(ckpt.get("config", {}))


class RunFolder:
    """A run's folder: config.json, checkpoint.pt (written atomically), metrics.jsonl.

    Opening it (new: --run-dir or the first free runs/<command>[-N]; resumed: the saved recipe
    with this process's knobs, PROCESS_KNOBS, over it) creates nothing; `create` makes it once
    every argument has been checked, and `restore` continues from its checkpoint.
    """

    def __init__(self, cfg, resume: bool, ranks: "Dist", command: str, markers: tuple[str, ...]):
        self.ranks = ranks
        self.checkpoint = None
        if resume:
            self.checkpoint, saved_config = resume_point(cfg.run_dir, command)
            known = {f.name for f in dataclasses.fields(type(cfg))}
            saved = {k: v for k, v in saved_config.items() if k in known}
            for key in PROCESS_KNOBS:
                saved[key] = getattr(cfg, key)
            cfg = type(cfg)(**saved)
        elif cfg.run_dir is None:
            cfg.run_dir = ranks.broadcast(fresh_run_dir(os.path.join("runs", command), markers)
                                          if ranks.main else None)
        elif os.path.exists(os.path.join(cfg.run_dir, CHECKPOINT)):
            raise SpnasError(f"--run-dir {cfg.run_dir} already holds a {command} run; continue it "
                             f"with --resume {cfg.run_dir} or choose another --run-dir")
        check_run_dir(cfg.run_dir)
        self.cfg, self.path = cfg, cfg.run_dir
        self.metrics: MetricsLog | None = None

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def create(self) -> None:
        """The folder with the run's config.json (the main process; every rank waits)."""
        if self.ranks.main:
            os.makedirs(self.path, exist_ok=True)
            remove_partial_writes(self.path)
            atomic_write_json(self.file(CONFIG), dataclasses.asdict(self.cfg))
        self.ranks.barrier()

    def restore(self, net: torch.nn.Module, opt, ema) -> int:
        """Loads the checkpoint's model, optimizer and EMA, cuts the metrics log back to it and
        opens the log; returns the steps it had done. Without a checkpoint (a new run, or one
        killed before its first checkpoint landed) the run starts at step 0 with an empty log."""
        ckpt, steps_done = self.checkpoint, 0
        if ckpt is not None:
            net.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            ema.load_state_dict(ckpt["ema"])
            steps_done = int(ckpt["step"])
        if self.ranks.main:
            truncate_metrics(self.file(METRICS), steps_done)
        self.metrics = MetricsLog(self.file(METRICS), self.ranks.main)
        return steps_done

    def save(self, state: dict) -> None:
        """checkpoint.pt, written atomically by the main process; every rank waits."""
        if self.ranks.main:
            atomic_torch_save(self.file(CHECKPOINT), state)
        self.ranks.barrier()


def steps_per_epoch(num_train: int, batch_size: int, world: int, cap: int | None) -> int:
    """Whole global batches in the training split, at most `cap` (--steps-per-epoch)."""
    steps = num_train // (batch_size * world)
    if steps == 0:
        raise SpnasError(f"--batch-size {batch_size} x {world} process(es) is larger than the "
                         f"{num_train} training images")
    return min(steps, cap) if cap else steps


def epoch_batches(num_train: int, batch_size: int, ranks: Dist, seed: int, steps: int,
                  steps_done: int) -> list[list[int]]:
    """This process's remaining batches of the epoch that step `steps_done` falls in."""
    epoch = steps_done // steps
    batches = datamod.epoch_batches(num_train, batch_size, ranks.world, ranks.rank, seed, epoch)[:steps]
    return batches[steps_done - epoch * steps:]


@torch.no_grad()
def evaluate_topk(model: torch.nn.Module, dataset, batch_size: int, device, workers: int = 0,
                  topk: tuple[int, ...] = (1, 5), ranks: Dist | None = None,
                  fmt: torch.memory_format = torch.contiguous_format,
                  precision: str = "fp32", top1_hits: list | None = None) -> list[float]:
    """Top-k accuracies on `dataset` (k capped at the number of classes), in eval mode.

    With `ranks` (every rank calling), each rank scores every world-th image and the counts are summed.
    `top1_hits`, a list: each batch's per-image top-1 hits (bool, on the device) are appended to
    it, in this rank's image order.
    """
    model.eval()
    rank, world = (ranks.rank, ranks.world) if ranks is not None else (0, 1)
    counts = torch.zeros(len(topk) + 1, dtype=torch.float64, device=device)
    index = list(range(rank, len(dataset), world))
    batches = [index[i:i + batch_size] for i in range(0, len(index), batch_size)]
    for x, y in datamod.loader(dataset, batches, workers):
        x, y = x.to(device, memory_format=fmt), y.to(device)
        with autocast(precision, torch.device(device)):
            logits = model(x)
        hit = logits.topk(min(max(topk), logits.shape[1]), dim=1).indices == y[:, None]
        for i, k in enumerate(topk):
            counts[i] += hit[:, :k].any(1).sum()
        if top1_hits is not None:
            top1_hits.append(hit[:, 0])
        counts[-1] += len(y)
    if world > 1:
        dist.all_reduce(counts)
    model.train()
    return [(c / max(counts[-1].item(), 1)) for c in counts[:-1].tolist()]


def evaluate(model: torch.nn.Module, dataset, batch_size: int, device, workers: int = 0,
             fmt: torch.memory_format = torch.contiguous_format, precision: str = "fp32") -> float:
    """Top-1 accuracy (leaves the model in train mode, as the search loop expects)."""
    return evaluate_topk(model, dataset, batch_size, device, workers, topk=(1,), fmt=fmt,
                         precision=precision)[0]


METRICS = "metrics.jsonl"


def data_parallel(net: torch.nn.Module, ranks: Dist) -> torch.nn.Module:
    """The model a step runs: DDP-wrapped when there are several processes."""
    if ranks.world == 1:
        return net
    return torch.nn.parallel.DistributedDataParallel(
        net, device_ids=[ranks.device.index] if ranks.device.type == "cuda" else None)


def truncate_metrics(path: str, steps_done: int) -> None:
    """On resume, drop records written after the checkpoint, so the log matches one clean run."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= steps_done]
    atomic_write(path, lambda f: f.writelines(keep))
