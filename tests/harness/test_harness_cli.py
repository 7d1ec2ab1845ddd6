"""The harness commands through argparse: results, and one-line errors with exit code 2."""

import json

import pytest
import torch

from spnas.cli import main
from spnas.space import Architecture
from spnas.layers import build_child

from harness_fakes import TINY


def run(argv):
    return main(argv)


@pytest.fixture
def arch_file(tmp_path):
    path = tmp_path / "arch.json"
    Architecture(["k3_e6", "skip", "k5_e6"], TINY).save(str(path))
    return str(path)


def test_export_torchscript_with_weights(tmp_path, arch_file, capsys):
    net = build_child(Architecture.load(arch_file), num_classes=10)
    torch.save({"model": net.state_dict()}, str(tmp_path / "ckpt.pt"))
    out = str(tmp_path / "net.pt")
    code = run(["export", arch_file, "--format", "torchscript", "--weights", str(tmp_path / "ckpt.pt"),
                "--image-size", "32", "--num-classes", "10", "--out", out])
    assert code == 0
    assert "max abs error" in capsys.readouterr().out
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(torch.jit.load(out)(x), net.eval()(x))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["export", "missing.json", "--out", "x.pt"], "cannot read architecture missing.json"),
        (["profile", "--backend", "adb", "--out", "lut.json"], "--serial is required"),
        (["profile", "--space", "nope", "--out", "lut.json"], "unknown search space 'nope'"),
        (["validate", "--model", "missing.json", "--out", "val"], "no such file"),
    ],
)
def test_user_mistakes_are_one_line(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_bad_weights_file(tmp_path, arch_file, capsys):
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    code = run(["export", arch_file, "--format", "torchscript", "--weights", str(tmp_path / "bad.pt"),
                "--out", str(tmp_path / "x.pt")])
    assert code == 2
    assert "--weights" in capsys.readouterr().err


def test_bad_runtime_model_field(tmp_path, capsys):
    path = tmp_path / "lut.json"
    path.write_text(json.dumps({"format": "spnas-runtime-model", "version": 1}))
    assert run(["validate", "--model", str(path), "--out", str(tmp_path / "v")]) == 2
    assert "unit" in capsys.readouterr().err


def test_flag_type_errors_exit_2(capsys):
    assert run(["validate", "--model", "x", "--out", "y", "--samples", "0"]) == 2
    err = capsys.readouterr().err
    assert "--samples" in err and len(err.strip().splitlines()) == 1
