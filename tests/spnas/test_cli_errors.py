"""User mistakes end as one line on stderr and exit code 2, never a traceback."""

import json
import subprocess
import sys

import pytest

from spnas.cli import COMMANDS, build_parser, main
from spnas.space import SPNASNET_100


def one_line_error(capsys, argv, expect):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expect in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def arch_file(tmp_path):
    path = tmp_path / "arch.json"
    path.write_text(json.dumps({"ops": list(SPNASNET_100), "space": "mnasnet"}))
    return path


def test_latency_of_the_authors_net(capsys, arch_file):
    assert main(["latency", str(arch_file)]) == 0
    assert "80.441" in capsys.readouterr().out


def test_latency_errors(capsys, tmp_path, arch_file):
    one_line_error(capsys, ["latency", str(tmp_path / "missing.json")], "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"ops": ["k5_e6"] * 20 + ["k3_e3"]}))
    one_line_error(capsys, ["latency", str(bad)], "20 searchable layers")
    bad.write_text(json.dumps({"ops": ["k9_e6"] + ["k5_e6"] * 19}))
    one_line_error(capsys, ["latency", str(bad)], "unknown op")
    one_line_error(capsys, ["latency", str(arch_file), "--model", "pixel9"], "pixel9")
    model = tmp_path / "model.json"
    model.write_text(json.dumps({"format": "spnas-runtime-model"}))
    one_line_error(capsys, ["latency", str(arch_file), "--model", str(model)], "'version' is missing")


def test_search_flag_errors(capsys, tmp_path):
    one_line_error(capsys, ["search", "--epochs", "0"], "--epochs")
    one_line_error(capsys, ["search", "--epochs", "two"], "--epochs")
    one_line_error(capsys, ["search", "--formula", "magic"], "--formula")
    one_line_error(capsys, ["search", "--indicator-grad", "weights"], "--indicator-grad")
    one_line_error(capsys, ["search", "--data", str(tmp_path / "nope")], "no such directory")
    one_line_error(capsys, ["search", "--resume", str(tmp_path)], "no checkpoint")


def test_bad_data_folders(capsys, tmp_path):
    from PIL import Image
    root = tmp_path / "data"
    root.mkdir()
    one_line_error(capsys, ["search", "--data", str(root)], "no class folders")
    (root / "cat").mkdir()
    (root / "dog").mkdir()
    Image.new("RGB", (10, 12), (255, 0, 0)).save(root / "cat" / "a.png")
    one_line_error(capsys, ["search", "--data", str(root)], "'dog' has no images")
    (root / "dog" / "b.jpg").write_bytes(b"not an image")
    one_line_error(capsys, ["search", "--data", str(root)], "b.jpg")


def test_image_folder_reader(tmp_path):
    from PIL import Image
    from spnas import data
    for c, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
        (tmp_path / c).mkdir()
        for i in range(5):
            Image.new("RGB", (20 + i, 14), colour).save(tmp_path / c / f"{i}.png")
    split = data.load(str(tmp_path), 8, val_fraction=0.2)
    assert split.classes == ["a", "b"] and len(split.train) == 8 and len(split.val) == 2
    x, y = split.train[0]
    assert x.shape == (3, 8, 8) and y == 0 and x[0].min() == 1.0 and x[2].max() == -1.0


def test_help_and_no_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("search", "derive", "latency", "plot"):
        assert command in out
    assert main(["search", "--help"]) == 0
    assert "--target-ms" in capsys.readouterr().out
    assert main([]) == 2
    capsys.readouterr()
    assert main(["frobnicate"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_commands_tuple_and_parser():
    assert COMMANDS[:4] == ("spnas.commands.search", "spnas.commands.derive",
                            "spnas.commands.latency", "spnas.commands.plot")
    build_parser()


def test_console_entry_point_runs(env, arch_file):
    proc = subprocess.run([sys.executable, "-m", "spnas", "latency", str(arch_file), "--json"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["total_ms"] == pytest.approx(80.4411)
