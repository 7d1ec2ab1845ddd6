"""Mistakes and accidents: a one-line error before any file is made, no silent contradiction
of the user's flags, nothing left behind by a kill."""

import json
import os
import stat

import pytest
import torch

import spnas_ops
from spnas.cli import main
from spnas.space import SPNASNET_100, Architecture
from spnas.layers import build_child

from test_cli_errors import one_line_error

SEARCH = ["--width-mult", "0.25", "--image-size", "16", "--batch-size", "16", "--epochs", "2",
          "--dropout-epochs", "1", "--steps-per-epoch", "2", "--no-progress", "--op-backend", "reference"]
TRAIN = ["--image-size", "8", "--batch-size", "16", "--epochs", "1", "--steps-per-epoch", "2",
         "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished tiny search and a tiny training of its result."""
    root = tmp_path_factory.mktemp("runs")
    search, train = root / "search", root / "train"
    assert main(["search", "--run-dir", str(search), *SEARCH]) == 0
    assert main(["train", str(search / "arch.json"), "--run-dir", str(train), *TRAIN]) == 0
    return search, train


@pytest.mark.parametrize("argv, expect", [
    (["--data", "MISSING"], "no such directory"),
    (["--space", "nope"], "unknown search space"),
    (["--op-backend", "cuda"], "--op-backend cuda"),
    (["--image-size", "0"], "--image-size"),
    (["--latency-model", "pixel9"], "pixel9"),
    # The default latency model is the 20-layer space's: the error names the flag to change.
    (["--space", "mnasnet-small"], "--latency-model pixel1: runtime model is for space 'mnasnet'"),
])
def test_failing_search_creates_nothing(capsys, tmp_path, argv, expect):
    if "cuda" in argv and "cuda" in spnas_ops.available_backends():
        pytest.skip("this machine has the cuda backend")
    argv = [str(tmp_path / a) if a == "MISSING" else a for a in argv]
    run = tmp_path / "run"
    one_line_error(capsys, ["search", "--run-dir", str(run), *argv], expect)
    assert not run.exists()


def test_run_dir_that_is_a_file(capsys, tmp_path):
    (tmp_path / "file").write_text("")
    one_line_error(capsys, ["search", "--run-dir", str(tmp_path / "file")], "is a file")


def test_resume_the_wrong_kind_of_run(capsys, runs):
    search, train = runs
    one_line_error(capsys, ["search", "--resume", str(train)], f"spnas train --resume {train}")
    one_line_error(capsys, ["train", "--resume", str(search)], f"spnas search --resume {search}")
    one_line_error(capsys, ["plot", str(train)], "not a search run")


def test_resume_refuses_recipe_flags(capsys, runs):
    search, _ = runs
    line = one_line_error(capsys, ["search", "--resume", str(search), "--epochs", "5"], "--epochs")
    assert "--device" in line  # says what may change


def test_bench_values(capsys):
    for argv, expect in ((["--shapes", "9"], "--shapes"), (["--repeats", "0"], "--repeats"),
                         (["--batch", "0"], "--batch"), (["--threads", "0"], "--threads")):
        one_line_error(capsys, ["bench", *argv], expect)


def test_export_format_follows_the_extension(capsys, runs, tmp_path):
    _, train = runs
    arch, weights = str(train / "arch.json"), str(train / "best.pt")
    one_line_error(capsys, ["export", arch, "--out", str(tmp_path / "m.bin")], "--format")
    one_line_error(capsys, ["export", arch, "--format", "tflite", "--out", str(tmp_path / "m.onnx")],
                   "conflicts")
    # no --format, --image-size or --num-classes: torchscript from .pt, 8 px and 10 classes
    # from the training run's records (its config.json and the classifier in best.pt)
    out = tmp_path / "m.pt"
    assert main(["export", arch, "--weights", weights, "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "8 px from" in said and "10 classes from" in said
    model = torch.jit.load(str(out))
    assert model(torch.randn(1, 3, 8, 8)).shape == (1, 10)
    (tmp_path / "junk.pt").write_bytes(b"")
    one_line_error(capsys, ["export", arch, "--weights", str(tmp_path / "junk.pt"),
                            "--out", str(tmp_path / "n.pt")], "--weights")


def test_nan_thresholds_are_refused():
    x, w = torch.randn(1, 4, 5, 5), torch.randn(4, 1, 5, 5)
    with pytest.raises(ValueError, match="thresholds must be finite"):
        spnas_ops.masked_dwconv(x, w, torch.tensor([0.0, float("nan"), 0.0]), backend="reference")


def test_too_few_steps_warns(capsys, tmp_path):
    from PIL import Image
    data = tmp_path / "data"
    for c, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
        (data / c).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (12, 12), colour).save(data / c / f"{i}.png")
    run = tmp_path / "run"
    assert main(["search", "--data", str(data), "--run-dir", str(run), *SEARCH]) == 0
    out = capsys.readouterr().out
    assert "warning:" in out and "too few" in out
    assert "validation accuracy:" in out


def test_kill_before_the_first_checkpoint_costs_nothing(tmp_path, runs):
    # A run killed during its first checkpoint write: config.json and a half-written temp file.
    search, _ = runs
    run = tmp_path / "killed"
    run.mkdir()
    (run / "config.json").write_text((search / "config.json").read_text().replace(
        str(search), str(run)))
    (run / ".checkpoint.pt.abc123.tmp").write_bytes(b"half")
    assert main(["search", "--resume", str(run)]) == 0
    assert not [p for p in os.listdir(run) if p.endswith(".tmp")]
    expected = json.loads((search / "arch.json").read_text())["ops"]
    assert json.loads((run / "arch.json").read_text())["ops"] == expected


def test_outputs_follow_the_umask(tmp_path):
    from spnas.space import Architecture
    old = os.umask(0o022)
    try:
        Architecture(list(SPNASNET_100)).save(str(tmp_path / "a.json"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o644


def test_train_init_from_a_search(capsys, runs, tmp_path):
    from spnas.search import load_checkpoint
    from spnas.train import searched_weights
    search, train = runs
    # the tiny search ran at width x0.25: spnas train builds width x1, which it says
    one_line_error(capsys, ["train", str(search / "arch.json"), "--init-from", str(search),
                            "--run-dir", str(tmp_path / "t"), *TRAIN], "width x0.25")
    one_line_error(capsys, ["train", str(search / "arch.json"), "--init-from", str(train),
                            "--run-dir", str(tmp_path / "t"), *TRAIN], "not a search run")
    assert not (tmp_path / "t").exists()
    wide = tmp_path / "wide"
    assert main(["search", "--run-dir", str(wide), *SEARCH[2:]]) == 0
    arch = Architecture.load(str(wide / "arch.json"))
    weights = searched_weights(str(wide), arch, 10)
    shadow = load_checkpoint(str(wide / "checkpoint.pt"))["ema"]["shadow"]
    assert torch.equal(weights["conv_stem.weight"], shadow["stem.0.weight"])
    assert torch.equal(weights["classifier.bias"], shadow["head.classifier.bias"])
    build_child(arch, num_classes=10).load_state_dict(weights)  # strict
