"""Profiling: the plan covers the space, runs resume after a kill, calibration removes bias."""

import json
import random

import pytest

from spnas.errors import SpnasError
from spnas.harness.pieces import fixed_pieces, layer_pieces
from spnas.space import layer_input_shapes, random_architecture
from spnas.harness.profile import measurements_path, profile
from spnas.harness.validate import validate
from spnas.runtime import RuntimeModel
from spnas.space import CONV_OPS, MNASNET
from spnas.layers import build_child

from harness_fakes import TINY, FakeBenchmark, fake_exporter


def test_pieces_cover_every_network_exactly():
    """Fixed parts + the chosen layers hold exactly the parameters of the built network."""
    fixed = fixed_pieces(MNASNET, 64)
    layers = {p.key: p for p in layer_pieces(MNASNET, 64)}
    assert len(layers) == 20 * len(CONV_OPS)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    rng = random.Random(0)
    for _ in range(3):
        arch = random_architecture(MNASNET, rng)
        pieces = sum(count(p.build()) for p in fixed) + sum(
            count(layers[f"layer{i}/{op}"].build()) for i, op in enumerate(arch.ops) if op != "skip")
        assert pieces == count(build_child(arch))


def test_layer_input_shapes_mnasnet_224():
    shapes = layer_input_shapes("mnasnet", 224)
    assert shapes[0] == (1, 16, 112, 112)
    assert shapes[1] == (1, 24, 56, 56)
    assert shapes[13] == (1, 96, 14, 14)
    assert shapes[-1] == (1, 192, 7, 7)
    assert [p.input_shape for p in fixed_pieces("mnasnet", 224)] == [(1, 3, 224, 224), (1, 192, 7, 7)]


def run_profile(tmp_path, bench, **kw):
    options = dict(image_size=32, num_classes=10, calibrate=4, seed=3, passes=1, progress=False,
                   exporter=fake_exporter)
    options.update(kw)
    return profile(TINY, bench, str(tmp_path / "lut.json"), **options)


def test_profile_writes_runtime_model_with_protocol(tmp_path):
    model = run_profile(tmp_path, FakeBenchmark())
    loaded = RuntimeModel.load(str(tmp_path / "lut.json"))
    assert loaded.space == "tiny-test" and loaded.num_layers == 3
    for key in ("backend", "runtime_version", "threads", "runs", "device", "date"):
        assert key in loaded.protocol
    assert loaded.extra["image_size"] == 32
    # additive fake device: calibration finds scale 1 and the constant = the fixed parts
    cal = loaded.extra["calibration"]
    assert cal["scale"] == pytest.approx(1.0)
    assert loaded.constant_ms == pytest.approx(cal["fixed_isolated_ms"])
    assert model.layers == loaded.layers


def test_profile_resumes_after_kill(tmp_path):
    reference = run_profile(tmp_path / "ref", FakeBenchmark())
    killed = FakeBenchmark(fail_after=5)
    with pytest.raises(KeyboardInterrupt):
        run_profile(tmp_path, killed)
    state = json.load(open(measurements_path(str(tmp_path / "lut.json"))))
    assert len(state["measurements"]) == 5  # every finished measurement kept
    assert not (tmp_path / "lut.json").exists()

    again = FakeBenchmark(fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        run_profile(tmp_path, again)
    rest = FakeBenchmark()
    model = run_profile(tmp_path, rest)
    # nothing measured twice, nothing missed
    measured = killed.measured + again.measured + rest.measured
    assert len(measured) == len(set(measured)) == 2 + 3 * 4 + 4
    assert model.to_json()["layers"] == reference.to_json()["layers"]
    assert model.constant_ms == pytest.approx(reference.constant_ms)


def test_profile_refuses_other_protocol(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run_profile(tmp_path, FakeBenchmark(fail_after=2))
    with pytest.raises(SpnasError, match="image_size=32.*image_size=64.*--restart"):
        run_profile(tmp_path, FakeBenchmark(), image_size=64)
    model = run_profile(tmp_path, FakeBenchmark(), image_size=64, restart=True)
    assert model.extra["image_size"] == 64


def test_calibration_removes_in_context_bias(tmp_path):
    """Whole networks 15% faster than their isolated layers: uncalibrated is biased, calibrated not."""
    for calibrate, expect_bias in ((0, True), (6, False)):
        work = tmp_path / f"c{calibrate}"
        run_profile(work, FakeBenchmark(in_context=0.85), calibrate=calibrate)
        report = validate(str(work / "lut.json"), FakeBenchmark(in_context=0.85), samples=8, seed=11,
                          out_dir=str(work / "val"), num_classes=10, progress=False,
                          exporter=fake_exporter)
        bias = report["summary"]["mean_error_pct"]
        if expect_bias:
            assert bias > 10
        else:
            assert abs(bias) < 1e-6
            assert report["summary"]["within_5pct"] == 1.0


def test_validate_report_and_plot(tmp_path):
    run_profile(tmp_path, FakeBenchmark())
    out = tmp_path / "val"
    report = validate(str(tmp_path / "lut.json"), FakeBenchmark(), samples=5, seed=0,
                      out_dir=str(out), num_classes=10, progress=False, exporter=fake_exporter)
    s = report["summary"]
    assert s["samples"] == 5 and s["rmse_ms"] == pytest.approx(0, abs=1e-9)
    assert s["within_10pct"] == 1.0 and report["protocol_mismatch"] == {}
    assert json.load(open(out / "report.json"))["summary"] == s
    assert (out / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # rerun: every network is already measured
    bench = FakeBenchmark()
    validate(str(tmp_path / "lut.json"), bench, samples=5, seed=0, out_dir=str(out),
             num_classes=10, progress=False, exporter=fake_exporter)
    assert bench.measured == []


def test_passes_resume_and_keep_the_quietest(tmp_path):
    """Two passes over all models, killed in the second: the rerun adds only missing passes."""

    class Drifting(FakeBenchmark):
        # the machine gets busier over time: later passes read 20% slower
        def measure(self, path):
            m = super().measure(path)
            if self.measured.count(self.measured[-1]) > 1:
                return type(m)(*(v * 1.2 for v in (m.median_ms, m.mean_ms, m.std_ms, m.min_ms, m.max_ms)),
                               runs=1)
            return m

    first = Drifting(fail_after=25)
    with pytest.raises(KeyboardInterrupt):
        run_profile(tmp_path, first, passes=2)
    state = json.load(open(measurements_path(str(tmp_path / "lut.json"))))
    assert sum(len(e["passes"]) for e in state["measurements"].values()) == 25
    rest = FakeBenchmark()
    model = run_profile(tmp_path, rest, passes=2)
    assert len(first.measured) + len(rest.measured) == 2 * 18
    state = json.load(open(measurements_path(str(tmp_path / "lut.json"))))
    assert all(len(e["passes"]) == 2 for e in state["measurements"].values())
    assert "best of 2 passes" in model.protocol["statistic"]
    reference = run_profile(tmp_path / "ref", FakeBenchmark(), passes=1)
    assert model.to_json()["layers"] == reference.to_json()["layers"]
