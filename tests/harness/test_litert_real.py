"""One real run end to end: profile a one-layer space with LiteRT, then validate it."""

import json

import pytest

from spnas.harness.backends import make_benchmark
from spnas.harness.profile import profile
from spnas.harness.validate import validate
from spnas.space import SearchSpace, register_space

pytest.importorskip("ai_edge_litert")
pytest.importorskip("litert_torch")

# One searchable layer: 4 layer models + 2 fixed parts + 1 calibration network to convert.
ONE_LAYER = SearchSpace(
    name="one-layer-test",
    stem=8,
    stages=("ds_r1_k3_s1_c8_noskip", "sp_r1_k5_s2_e6_c16", "ir_r1_k3_s1_e6_c16_noskip"),
    head=32,
)
register_space(ONE_LAYER)


def test_profile_and_validate_with_litert(tmp_path):
    bench = make_benchmark("litert", threads=1, warmup_runs=2, runs=10)
    out = str(tmp_path / "lut.json")
    model = profile(ONE_LAYER, bench, out, image_size=16, num_classes=10, calibrate=1, seed=0,
                    passes=2, progress=False)
    saved = json.load(open(out))
    assert saved["protocol"]["backend"] == "litert"
    assert saved["protocol"]["runtime"] == "ai-edge-litert" and saved["protocol"]["threads"] == 1
    assert saved["protocol"]["clock"] == "thread CPU time"
    assert all(v > 0 for v in model.layers[0].values() if v) and model.constant_ms > 0

    report = validate(out, bench, samples=1, seed=5, out_dir=str(tmp_path / "val"),
                      num_classes=10, passes=1, progress=False)
    s = report["summary"]
    assert s["samples"] == 1 and s["rmse_ms"] >= 0
    assert report["protocol_mismatch"] == {}
    assert (tmp_path / "val" / "scatter.png").exists()
