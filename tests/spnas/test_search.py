"""End-to-end: the search driver through the CLI, resume equivalence, and DDP agreement."""

import json
import os
import subprocess
import sys

import pytest
import torch

from spnas.cli import main
from spnas.errors import SpnasError
from spnas.search import SearchConfig, load_checkpoint, run_search

TINY = ["--width-mult", "0.25", "--image-size", "16", "--batch-size", "16", "--epochs", "3",
        "--dropout-epochs", "1", "--steps-per-epoch", "3", "--log-every", "1", "--no-progress",
        "--op-backend", "reference"]


def tiny_config(run_dir, **kw):
    cfg = SearchConfig(run_dir=str(run_dir), width_mult=0.25, image_size=16, batch_size=16, epochs=3,
                       dropout_epochs=1, steps_per_epoch=3, log_every=1, progress=False,
                       op_backend="reference", lam=0.5, threshold_lr_mult=50.0)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_search_derive_latency_plot_via_cli(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["search", "--run-dir", str(run), *TINY]) == 0
    out = capsys.readouterr().out
    assert "found architecture" in out and "predicted latency (Pixel 1):" in out
    arch = json.loads((run / "arch.json").read_text())
    assert len(arch["ops"]) == 20 and arch["predicted_ms"] > 19.5999
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 10))
    assert sum(r["kind"] == "epoch" for r in records) == 3
    # indicator dropout for the first epoch, then the latency term
    assert all(r["lambda"] == 0 for r in records if r["kind"] == "train" and r["step"] <= 3)
    assert all(r["lambda"] == 0.02 for r in records if r["kind"] == "train" and r["step"] > 3)
    ckpt = load_checkpoint(str(run / "checkpoint.pt"))
    assert ckpt["step"] == 9

    assert main(["derive", str(run), "--out", str(tmp_path / "derived.json")]) == 0
    assert json.loads((tmp_path / "derived.json").read_text())["ops"] == arch["ops"]
    capsys.readouterr()
    assert main(["latency", str(run / "arch.json"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total_ms"] == pytest.approx(arch["predicted_ms"], abs=1e-3)
    assert main(["latency", str(run / "arch.json")]) == 0
    assert "total" in capsys.readouterr().out
    assert main(["plot", str(run)]) == 0
    assert (run / "progress.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("target_ms", [None, 60.0])
def test_resume_reaches_the_same_result(tmp_path, target_ms):
    # with a target, the controller's state (integral, lambda) must come back from the checkpoint:
    # the per-step lambdas in the metrics and the final thresholds would differ otherwise
    full = run_search(tiny_config(tmp_path / "full", target_ms=target_ms))
    # mid-epoch, like Ctrl-C, two steps into the latency phase (the first is on the ramp's start)
    part = run_search(tiny_config(tmp_path / "part", stop_after_step=5, target_ms=target_ms))
    assert not part["finished"] and part["step"] == 5
    ckpt = load_checkpoint(str(tmp_path / "part" / "checkpoint.pt"))
    assert ckpt["step"] == 5
    if target_ms:
        state = ckpt["controller"]
        assert state["integral"] != 0 and state["lam"] == ckpt["lambda"] and state["start_ms"] > 60
    resumed = run_search(tiny_config(tmp_path / "part", target_ms=target_ms), resume=True)
    assert resumed["finished"]
    assert torch.equal(full["thresholds"], resumed["thresholds"])
    assert torch.equal(full["decisions"], resumed["decisions"])
    a = load_checkpoint(str(tmp_path / "full" / "checkpoint.pt"))["model"]
    b = load_checkpoint(str(tmp_path / "part" / "checkpoint.pt"))["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    la = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    lb = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(l).items() if k != "seconds"} for l in lines]
    assert strip(la) == strip(lb)


def test_the_latency_term_shrinks_the_network(tmp_path):
    # the default lambda (0.02) and a tight --target-ms against lambda = 0: thresholds placed a
    # margin below the kernel norms when the latency term starts, so decisions respond within
    # 16 steps (the thresholds alone move them: --indicator-grad thresholds)
    kw = dict(steps_per_epoch=8, threshold_lr_mult=50.0)
    free = run_search(tiny_config(tmp_path / "free", lam=0.0, **kw))
    paper = run_search(tiny_config(tmp_path / "lam", lam=0.02, **kw))
    target = run_search(tiny_config(tmp_path / "target", lam=0.02, target_ms=60.0, **kw))
    assert paper["predicted_ms"] < free["predicted_ms"] - 5
    assert target["predicted_ms"] < free["predicted_ms"] - 5
    # placed at the first latency step: every threshold sits near its norm, not at 0
    assert (paper["thresholds"][:, :2] > 1).all()


def test_dropout_epochs_default_depends_on_the_data():
    from spnas.search import default_dropout_epochs
    assert default_dropout_epochs(None) == 2.0  # built-in digits
    assert default_dropout_epochs("/some/folder") == 5.0  # the paper's


DDP_SCRIPT = """
import sys, torch
sys.path[:0] = {paths!r}
torch.set_num_threads(1)
from spnas.search import SearchConfig, run_search
import torch.distributed as dist
cfg = SearchConfig(run_dir={run!r}, width_mult=0.25, image_size=16, batch_size=8, epochs=2,
                   dropout_epochs=1, steps_per_epoch=2, progress=False, op_backend="reference",
                   lam=0.5, threshold_lr_mult=50.0, target_ms={target_ms!r})
r = run_search(cfg)
torch.save({{"t": r["thresholds"], "d": r["decisions"]}}, {out!r} + "/rank" + __import__("os").environ["RANK"] + ".pt")
"""


@pytest.mark.parametrize("target_ms", [None, 60.0])
def test_ddp_ranks_agree(tmp_path, env, target_ms):
    # with a target, every rank computes lambda (and clamps thresholds) from its own copy of the
    # weights and thresholds: they must stay identical
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(paths=[root, os.path.join(root, "python")],
                                        run=str(tmp_path / "run"), out=str(tmp_path),
                                        target_ms=target_ms))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", "29533", str(script)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt", weights_only=True) for i in (0, 1))
    assert torch.equal(r0["t"], r1["t"]) and torch.equal(r0["d"], r1["d"])
    assert (r0["t"] != 0).any()  # the thresholds did train
    arch = json.loads((tmp_path / "run" / "arch.json").read_text())
    assert len(arch["ops"]) == 20


def _losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r["ce"] for r in map(json.loads, f) if r["kind"] == "train"]


@pytest.mark.parametrize("op_backend", ["reference", "cpu"])
def test_channels_last_and_bf16_search_like_fp32_nchw(tmp_path, op_backend):
    # The layouts and precisions change the arithmetic's rounding, not the search: the same
    # first loss (within bf16's rounding through 20 layers), close mean losses, and the same
    # decisions at the end under a latency term strong enough to decide. Later steps' losses
    # drift apart even in fp32: RMSProp divides by the root of tiny squared gradients. The
    # paper's --indicator-grad decides within these few steps; with the thresholds alone (the
    # default) some decisions still hover near their thresholds, where rounding flips them.
    runs = {name: run_search(tiny_config(tmp_path / name, op_backend=op_backend,
                                         indicator_grad="thresholds+weights", **extra))
            for name, extra in {"nchw": dict(memory_format="contiguous"),
                                "channels_last": dict(memory_format="channels_last"),
                                "bf16": dict(memory_format="channels_last", precision="bf16")}.items()}
    base = _losses(tmp_path / "nchw")
    for name, result in runs.items():
        losses = _losses(tmp_path / name)
        assert torch.equal(result["decisions"], runs["nchw"]["decisions"]), name
        assert abs(losses[0] - base[0]) < (1e-4 if name == "channels_last" else 0.1), name
        assert abs(sum(losses) / len(losses) - sum(base) / len(base)) < 0.1, name
    assert not runs["nchw"]["decisions"].all()  # the latency term switched something off


def test_memory_format_and_precision_are_checked():
    with pytest.raises(SpnasError, match="--precision"):
        tiny_config("x", precision="fp16").check()
    with pytest.raises(SpnasError, match="--memory-format"):
        tiny_config("x", memory_format="nhwc").check()


def test_the_compiled_op_searches_like_the_reference(tmp_path):
    # The whole search on the fused CPU kernels against the reference op: the same decisions,
    # the same first loss, close losses throughout.
    # (the paper's --indicator-grad: see test_channels_last_and_bf16_search_like_fp32_nchw)
    cpu = run_search(tiny_config(tmp_path / "cpu", op_backend="cpu", indicator_grad="thresholds+weights"))
    ref = run_search(tiny_config(tmp_path / "ref", op_backend="reference",
                                 indicator_grad="thresholds+weights"))
    assert torch.equal(cpu["decisions"], ref["decisions"])
    a, b = _losses(tmp_path / "cpu"), _losses(tmp_path / "ref")
    assert abs(a[0] - b[0]) < 1e-4
    assert abs(sum(a) / len(a) - sum(b) / len(b)) < 0.05
