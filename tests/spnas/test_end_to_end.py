"""The whole workflow on the built-in digits: search -> derive -> train -> export -> latency.

Tiny sizes and a few steps keep it near a minute; docs/tutorial.md runs the same path at full size.
The TFLite leg needs litert-torch and ai-edge-litert (or tflite-runtime) and is skipped without them.
"""

import importlib.util
import json

import numpy as np
import pytest
import torch
from spnas.cli import main
from spnas.data import digits
from spnas.harness.export import load_weights
from spnas.space import Architecture
from spnas.layers import build_child

IMAGE = 16
HAVE_TFLITE = importlib.util.find_spec("litert_torch") is not None and (
    importlib.util.find_spec("ai_edge_litert") is not None
    or importlib.util.find_spec("tflite_runtime") is not None)


def test_search_derive_train_export_latency(tmp_path, capsys):
    search, train = tmp_path / "search", tmp_path / "train"
    assert main(["search", "--run-dir", str(search), "--width-mult", "0.25", "--image-size", str(IMAGE),
                 "--batch-size", "16", "--epochs", "2", "--dropout-epochs", "1", "--steps-per-epoch", "2",
                 "--op-backend", "reference", "--no-progress"]) == 0
    arch_path = tmp_path / "arch.json"
    assert main(["derive", str(search), "--out", str(arch_path)]) == 0
    arch = Architecture.load(str(arch_path))
    assert arch.ops == json.loads((search / "arch.json").read_text())["ops"]

    assert main(["train", str(arch_path), "--run-dir", str(train), "--image-size", str(IMAGE),
                 "--batch-size", "16", "--epochs", "1", "--steps-per-epoch", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and (train / "best.pt").exists()
    net = load_weights(build_child(arch, num_classes=10), str(train / "best.pt")).eval()

    if HAVE_TFLITE:
        model = tmp_path / "model.tflite"
        assert main(["export", str(arch_path), "--weights", str(train / "best.pt"), "--image-size",
                     str(IMAGE), "--num-classes", "10", "--out", str(model)]) == 0
        from spnas.harness.litert import run_tflite
        images = digits(IMAGE).val.images[:32]
        with torch.no_grad():
            want = net(images).numpy()
        got = np.concatenate([run_tflite(str(model), [x[None].permute(0, 2, 3, 1).numpy()])[0]
                              for x in images])
        assert (got.argmax(1) == want.argmax(1)).all()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    capsys.readouterr()

    assert main(["latency", str(arch_path)]) == 0
    report = capsys.readouterr().out
    assert "total" in report
    print(report)  # the predicted latency, shown with pytest -s
    if not HAVE_TFLITE:
        pytest.skip("TFLite leg skipped: litert-torch / ai-edge-litert not installed")
