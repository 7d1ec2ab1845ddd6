"""Export round trips: each file runs in its runtime and matches PyTorch; TFLite is NHWC with no
TRANSPOSE; checkpoints load weights-only."""

import numpy as np
import pytest
import torch
from torch import nn

from spnas.errors import SpnasError
from spnas.harness.export import ExportError, _compare, export, load_weights
from spnas.harness.pieces import layer_pieces
from spnas.space import Architecture
from spnas.layers import build_child

from harness_fakes import TINY



def tiny_net():
    torch.manual_seed(0)
    net = build_child(Architecture(["k5_e6", "k3_e3", "k5_e3"], TINY), num_classes=10).eval()
    # non-trivial BN statistics, so folding them into the convolutions is actually tested
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net


@pytest.fixture(scope="module")
def tflite_ready():
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert")


def test_tflite_network_nhwc_no_transpose(tmp_path, tflite_ready):
    from spnas.harness.export import tflite_op_names

    path = str(tmp_path / "net.tflite")
    result = export(tiny_net(), (1, 3, 32, 32), path, "tflite")
    assert result.input_shape == (1, 32, 32, 3)
    assert result.max_rel_error <= 1e-4
    ops = tflite_op_names(path)
    assert "TRANSPOSE" not in ops
    # stride-2 convolutions keep PyTorch's symmetric padding as an explicit PAD (TF's "SAME"
    # pads asymmetrically); that PAD is part of what the network costs, so it stays.
    assert set(ops) <= {"PAD", "CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MEAN", "FULLY_CONNECTED"}
    assert ops[-1] == "FULLY_CONNECTED"


def test_tflite_single_layer_keeps_nhwc_output(tmp_path, tflite_ready):
    from spnas.harness.litert import run_tflite

    piece = [p for p in layer_pieces(TINY, 32) if p.key == "layer1/k5_e6"][0]
    path = str(tmp_path / "layer.tflite")
    layer = piece.build().eval()
    result = export(layer, piece.input_shape, path, "tflite")
    n, c, h, w = piece.input_shape
    assert result.input_shape == (n, h, w, c)
    x = torch.randn(piece.input_shape)
    (got,) = run_tflite(path, [x.permute(0, 2, 3, 1).numpy()])
    want = layer(x).detach().permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_onnx_round_trip(tmp_path):
    pytest.importorskip("onnx")
    result = export(tiny_net(), (1, 3, 32, 32), str(tmp_path / "net.onnx"), "onnx")
    assert "onnx.checker" in result.checked_with
    if result.max_rel_error is not None:
        assert result.max_rel_error <= 1e-4


def test_torchscript_round_trip(tmp_path):
    result = export(tiny_net(), (1, 3, 32, 32), str(tmp_path / "net.pt"), "torchscript")
    assert result.max_rel_error <= 1e-4
    assert torch.jit.load(str(tmp_path / "net.pt"))(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_mismatch_is_reported():
    want = torch.ones(1, 4)
    with pytest.raises(ExportError, match="relative 0.01 > tolerance 0.0001"):
        _compare(np.full((1, 4), 1.01, dtype=np.float32), want, 1e-4, "x.tflite")
    with pytest.raises(ExportError, match="output shape"):
        _compare(np.ones((1, 5), dtype=np.float32), want, 1e-4, "x.tflite")


def test_bad_format_and_shape(tmp_path):
    with pytest.raises(SpnasError, match="format must be one of"):
        export(tiny_net(), (1, 3, 32, 32), str(tmp_path / "x"), "caffe")
    with pytest.raises(SpnasError, match="input_shape"):
        export(tiny_net(), (3, 32, 32), str(tmp_path / "x.pt"), "torchscript")


def test_load_weights(tmp_path):
    source = tiny_net()
    path = str(tmp_path / "ckpt.pt")
    torch.save({"epoch": 3, "model": {"module." + k: v for k, v in source.state_dict().items()}}, path)
    target = build_child(Architecture(["k5_e6", "k3_e3", "k5_e3"], TINY), num_classes=10).eval()
    load_weights(target, path)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(target(x), source(x))

    other = build_child(Architecture(["k3_e3", "k3_e3", "k5_e3"], TINY), num_classes=10)
    with pytest.raises(SpnasError, match="does not fit this architecture"):
        load_weights(other, path)
    with pytest.raises(SpnasError, match="no such file"):
        load_weights(other, str(tmp_path / "missing.pt"))
    # arbitrary pickled objects are refused (weights_only=True)
    torch.save({"model": nn.ReLU()}, str(tmp_path / "evil.pt"))
    with pytest.raises(SpnasError, match="weights-only"):
        load_weights(other, str(tmp_path / "evil.pt"))
