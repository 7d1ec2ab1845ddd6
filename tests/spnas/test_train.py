"""spnas train: the CLI, resume equivalence, the exportable best checkpoint, DDP agreement."""

import json
import os
import subprocess
import sys

import pytest
import torch
from spnas.cli import main
from spnas.harness.export import load_weights
from spnas.layers import build_child
from spnas.space import SPNASNET_100, Architecture
from spnas.train import TrainConfig, augment, run_train
from spnas.runs import load_checkpoint

TINY = ["--image-size", "8", "--batch-size", "16", "--epochs", "2", "--steps-per-epoch", "3",
        "--log-every", "1", "--no-progress"]


@pytest.fixture
def arch_file(tmp_path):
    path = tmp_path / "arch.json"
    Architecture(list(SPNASNET_100)).save(str(path))
    return str(path)


def tiny_config(run_dir, **kw):
    cfg = TrainConfig(run_dir=str(run_dir), image_size=8, batch_size=16, epochs=2, steps_per_epoch=3,
                      log_every=1, progress=False, augment="flip-crop")
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_train_via_cli_writes_an_exportable_best_checkpoint(tmp_path, arch_file, capsys):
    run = tmp_path / "run"
    assert main(["train", arch_file, "--run-dir", str(run), *TINY]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "spnas export" in out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 7))
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all(0 <= r["val_top1_ema"] <= r["val_top5_ema"] <= 1 for r in epochs)
    # warm-up: the learning rate rises from 0 over the first epoch
    lrs = [r["lr"] for r in records if r["kind"] == "train"]
    assert lrs[0] == 0 and lrs[1] > lrs[0]
    config = json.loads((run / "config.json").read_text())
    assert config["epochs"] == 2 and config["rmsprop_eps"] == 1e-3 and config["dropout"] == 0.2
    assert load_checkpoint(str(run / "checkpoint.pt"))["step"] == 6
    # best.pt is what `spnas export ARCH.json --weights` loads
    net = load_weights(build_child(Architecture.load(str(run / "arch.json")), num_classes=10), str(run / "best.pt"))
    ema = load_checkpoint(str(run / "checkpoint.pt"))["ema"]["shadow"]
    best_epoch = max(epochs, key=lambda r: r["val_top1_ema"])["epoch"]
    if best_epoch == 2:
        assert all(torch.equal(v, ema[k]) for k, v in net.state_dict().items())


def test_resume_reaches_the_same_weights(tmp_path, arch_file):
    full = run_train(arch_file, tiny_config(tmp_path / "full"))
    part = run_train(arch_file, tiny_config(tmp_path / "part", stop_after_step=4))  # mid-epoch
    assert not part["finished"] and part["step"] == 4
    resumed = run_train(None, tiny_config(tmp_path / "part"), resume=True)
    assert resumed["finished"] and resumed["best"] == full["best"]
    a = load_checkpoint(str(tmp_path / "full" / "checkpoint.pt"))
    b = load_checkpoint(str(tmp_path / "part" / "checkpoint.pt"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["ema"]["shadow"][k], b["ema"]["shadow"][k]) for k in a["model"])
    strip = lambda p: [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                       for line in p.read_text().splitlines()]
    assert strip(tmp_path / "full" / "metrics.jsonl") == strip(tmp_path / "part" / "metrics.jsonl")


def test_user_mistakes_are_one_line_errors(tmp_path, arch_file, capsys):
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert main(["train", "--run-dir", str(tmp_path / "r"), *TINY]) == 2
    assert main(["train", arch_file, "--dropout", "1.5", *TINY, "--run-dir", str(tmp_path / "r2")]) == 2
    assert main(["train", arch_file, "--data", str(tmp_path / "missing"), *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("spnas train: error:") for line in err)


def test_defaults_follow_the_data():
    digits = TrainConfig().resolve()
    imagenet = TrainConfig(data="/data/imagenet").resolve()
    assert (imagenet.epochs, imagenet.warmup_epochs, imagenet.lr_decay_epochs, imagenet.ema_decay,
            imagenet.lr_per_256, imagenet.image_size) == (350, 5.0, 2.4, 0.9999, 0.016, 224)
    assert digits.epochs < 350 and digits.image_size < 224
    assert TrainConfig(epochs=7).resolve().epochs == 7  # a flag beats the profile


def augment_oracle(x, mode):
    """Image by image: shift (dy, dx) in [0, 2 * pad] of the reflect-padded image, then a flip
    with probability 1/2, drawn in that order (dy for all, dx for all, flip for all)."""
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = torch.nn.functional.pad(x, (pad,) * 4, mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,)).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,)).tolist()
    flip = (torch.rand(n) < 0.5).tolist() if mode == "flip-crop" else [False] * n
    out = [padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)]
    return torch.stack([o.flip(2) if f else o for o, f in zip(out, flip)])


@pytest.mark.parametrize("mode", ["crop", "flip-crop"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_augment_matches_the_per_image_oracle(mode, channels_last):
    x = torch.randn(9, 3, 13, 11)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(augment(x, "none"), x)
    torch.manual_seed(1)
    want = augment_oracle(x, mode)
    torch.manual_seed(1)
    got = augment(x, mode)
    assert torch.equal(got, want)
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.manual_seed(2)
    assert not torch.equal(augment(x, mode), got)  # other draws, other crops


DDP_SCRIPT = """
import os, sys, torch
sys.path[:0] = {paths!r}
torch.set_num_threads(1)
from spnas.train import TrainConfig, run_train
cfg = TrainConfig(run_dir={run!r}, image_size=8, batch_size=8, epochs=1, steps_per_epoch=2,
                  progress=False, device="cpu")
r = run_train({arch!r}, cfg)
torch.save({{"best": r["best"]}}, {out!r} + "/rank" + os.environ["RANK"] + ".pt")
"""


def test_ddp_ranks_agree(tmp_path, env, arch_file):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(paths=[root, os.path.join(root, "python")], arch=arch_file,
                                        run=str(tmp_path / "run"), out=str(tmp_path)))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", "29541", str(script)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt", weights_only=True) for i in (0, 1))
    # the sharded evaluation sums both halves of the held-out split: every rank gets the same figure
    assert r0["best"] == r1["best"] and 0 <= r0["best"]["top1"] <= 1
    assert (tmp_path / "run" / "best.pt").exists()


def test_ema_averages_parameters_and_copies_buffers():
    from spnas.optim import EMA
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    ema = EMA(net, decay=0.5)
    before = {k: v.clone() for k, v in ema.shadow.items()}
    net.train()
    net(torch.randn(2, 3, 5, 5))  # moves the BN statistics and counts a batch
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    ema.update(net)
    d = min(0.5, 2 / 11)
    for k, v in net.state_dict().items():
        if k.endswith(("weight", "bias")):
            assert torch.allclose(ema.shadow[k], d * before[k] + (1 - d) * v)
        else:  # running_mean, running_var, num_batches_tracked
            assert torch.equal(ema.shadow[k], v) and ema.shadow[k].dtype == v.dtype
    assert ema.shadow["1.num_batches_tracked"].item() == 1


def test_weight_decay_after_backward_is_the_l2_terms_gradient():
    """add_weight_decay gives the gradient autograd gives the loss term weight_decay/2 * sum(p^2),
    a parameter without a gradient this step included; l2_penalty is that term's value."""
    from spnas.optim import add_weight_decay, l2_penalty
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=g, requires_grad=True) for s in ((4, 3), (5,), (2, 1, 5, 5))]
    wd = 4e-5 * 1000  # large enough that a missing or doubled term shows
    x = torch.randn(3, generator=g)

    def data_loss():  # the last tensor gets no gradient from it
        return (params[0] @ x).sin().sum() + params[1].pow(3).sum()

    (data_loss() + wd * 0.5 * sum(p.pow(2).sum() for p in params)).backward()
    want = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    data_loss().backward()
    assert params[2].grad is None
    add_weight_decay(params, wd)
    for p, w in zip(params, want):
        torch.testing.assert_close(p.grad, w, rtol=1e-6, atol=1e-7)
    term = wd * 0.5 * sum(p.detach().pow(2).sum() for p in params)
    torch.testing.assert_close(l2_penalty(params, wd), term)
    assert not l2_penalty(params, wd).requires_grad


def test_progress_postfix_is_not_computed_every_step(tmp_path, arch_file, monkeypatch):
    """The bar's postfix (a device sync; in the search a derive of hundreds of ops) is refreshed
    at most once a POSTFIX_SECONDS, not every step: in this short run, once."""
    import tqdm
    calls = []
    real = tqdm.tqdm.set_postfix
    monkeypatch.setattr(tqdm.tqdm, "set_postfix", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    monkeypatch.setattr("spnas.loop.POSTFIX_SECONDS", 3600.0)
    result = run_train(arch_file, tiny_config(tmp_path / "run", progress=True))
    assert result["finished"] and len(calls) == 1
