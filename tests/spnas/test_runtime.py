import json
import random

import pytest
import torch

from spnas import Architecture, RuntimeModel, SpnasError
from spnas.space import CONV_OPS, SPNASNET_100


@pytest.fixture(scope="module")
def pixel1():
    return RuntimeModel.preset("pixel1")


def hard(arch):
    return torch.tensor([[float(op.startswith("k5")), float(op.endswith("e6")), float(op != "skip")]
                         for op in arch.ops])


def random_arch(rng):
    ops = []
    for i in range(20):
        choices = CONV_OPS if i % 4 == 0 else CONV_OPS + ("skip",)
        ops.append(rng.choice(choices))
    return Architecture(ops)


def test_authors_net_is_80_44_ms(pixel1):
    assert pixel1.predict(Architecture(SPNASNET_100)) == pytest.approx(80.4411, abs=1e-6)
    assert round(pixel1.predict(Architecture(SPNASNET_100)), 2) == 80.44


def test_known_extremes(pixel1):
    # sums of the authors' table (layers 1..20) plus their 19.5999 ms constant
    assert pixel1.predict(Architecture(["k5_e6"] * 20)) == pytest.approx(131.4578, abs=1e-4)
    smallest = ["k3_e3" if i % 4 == 0 else "skip" for i in range(20)]
    # authors' keys 1, 5, 9, 13, 17, op "0" (k3_e3)
    assert pixel1.predict(Architecture(smallest)) == pytest.approx(19.5999 + 4.4905 + 1.9593 + 1.2320
                                                                   + 1.7339 + 1.6163, abs=1e-4)


def test_lut_formula_is_exact_for_hard_decisions(pixel1):
    rng = random.Random(0)
    for _ in range(20):
        arch = random_arch(rng)
        assert pixel1.expected(hard(arch)).item() == pytest.approx(pixel1.predict(arch), rel=1e-6)


def test_paper_formula(pixel1):
    arch = Architecture(["k5_e6"] * 4 + ["k5_e3"] * 16)
    # exact for 5x5 ops, approximate (via q) for 3x3 ones
    assert pixel1.expected(hard(arch), "paper").item() == pytest.approx(pixel1.predict(arch), rel=1e-6)
    arch3 = Architecture(["k3_e6"] * 20)
    assert pixel1.expected(hard(arch3), "paper").item() == pytest.approx(pixel1.predict(arch3), rel=1e-6)
    arch33 = Architecture(["k3_e3"] * 20)
    t = pixel1.table
    q = t[:, 1] / t[:, 3]
    assert pixel1.expected(hard(arch33), "paper").item() == pytest.approx(
        (t[:, 2] * q).sum().item() + 19.5999, rel=1e-6)


@pytest.mark.parametrize("formula", ["lut", "paper"])
def test_expected_gradients_point_to_bigger_ops(pixel1, formula):
    d = torch.full((20, 3), 0.5, requires_grad=True)
    pixel1.expected(d, formula).backward()
    assert (d.grad > 0).all()  # every indicator turned on costs latency


def test_breakdown(pixel1):
    rows = pixel1.breakdown(Architecture(SPNASNET_100))
    assert [r["op"] for r in rows] == list(SPNASNET_100)
    assert rows[3]["ms"] == 0.0 and rows[0]["ms"] == pytest.approx(4.4905)
    assert rows[19]["stage"] == 5


def test_save_load_round_trip_keeps_protocol_and_extras(tmp_path, pixel1):
    obj = pixel1.to_json()
    obj["protocol"].update(backend="litert", runtime_version="1.2.0", threads=1, runs=50,
                           device="x86 host", date="2025-01-01", warmup_runs=5)
    obj["layers"][0]["input_shape"] = [1, 112, 112, 16]
    obj["calibration"] = {"scale": 1.0}
    model = RuntimeModel.from_json(obj)
    path = tmp_path / "m.json"
    model.save(str(path))
    again = RuntimeModel.load(str(path))
    assert again.to_json() == model.to_json()
    assert again.protocol["warmup_runs"] == 5 and again.layer_extra[0]["input_shape"] == [1, 112, 112, 16]
    assert again.predict(Architecture(SPNASNET_100)) == pytest.approx(80.4411)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("edit, field", [
    (lambda o: o.pop("constant_ms"), "'constant_ms' is missing"),
    (lambda o: o.update(format="other"), "'format'"),
    (lambda o: o["protocol"].pop("backend"), "'protocol.backend' is missing"),
    (lambda o: o["protocol"].update(threads="one"), "'protocol.threads'"),
    (lambda o: o["protocol"].update(runs=0), "'protocol.runs' must be >= 1"),
    (lambda o: o["layers"][3]["ms"].update(k5_e6=-1), r"'layers\[3\].ms.k5_e6'"),
    (lambda o: o["layers"][2]["ms"].pop("k3_e6"), r"'layers\[2\].ms.k3_e6' is missing"),
    (lambda o: o["layers"][5].update(index=7), r"'layers\[5\].index'"),
    (lambda o: o["layers"][0]["ms"].update(k7_e6=1.0), "not an op"),
])
def test_validation_names_the_field(tmp_path, pixel1, edit, field):
    obj = pixel1.to_json()
    edit(obj)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(obj))
    with pytest.raises(SpnasError, match=field) as err:
        RuntimeModel.load(str(path))
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_not_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{")
    with pytest.raises(SpnasError, match="not valid JSON"):
        RuntimeModel.load(str(path))


def test_space_mismatch(pixel1):
    from spnas import SearchSpace
    space = SearchSpace("tiny2", 16, ("sp_r2_k5_s2_e6_c16",), 64)
    with pytest.raises(SpnasError, match="space"):
        pixel1.predict(Architecture(["k3_e3", "skip"], space))
