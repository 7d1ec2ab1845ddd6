import json
import os

import pytest

from spnas import Architecture, OPS, RuntimeModel, SearchSpace, SpnasError
from spnas.space import MNASNET, SPNASNET_100, BlockSpec, get_space
from spnas.layers import build_child

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# timm's arch_def of spnasnet_100 (the authors' final Pixel 1 network).
TIMM_SPNASNET_100 = [
    ["ds_r1_k3_s1_c16_noskip"],
    ["ir_r3_k3_s2_e3_c24"],
    ["ir_r1_k5_s2_e6_c40", "ir_r3_k3_s1_e3_c40"],
    ["ir_r1_k5_s2_e6_c80", "ir_r3_k3_s1_e3_c80"],
    ["ir_r1_k5_s1_e6_c96", "ir_r3_k5_s1_e3_c96"],
    ["ir_r4_k5_s2_e6_c192"],
    ["ir_r1_k3_s1_e6_c320_noskip"],
]


def test_mnasnet_space_layout():
    layers = MNASNET.layers()
    assert len(layers) == 20
    assert [l["out"] for l in layers[::4]] == [24, 40, 80, 96, 192]
    assert [l["stride"] for l in layers[::4]] == [2, 2, 2, 1, 2]
    assert [l["skippable"] for l in layers[:4]] == [False, True, True, True]
    assert layers[0]["in"] == 16 and layers[16]["in"] == 96


def test_small_image_space_keeps_kernels_meaningful():
    # 28 px in: three searchable stages at 14, 7 and 4 px (MnasNet's five would end at 1 px)
    space = get_space("mnasnet-small")
    sizes = [l.in_size for l in space.walk(28) if l.index is not None]
    assert len(sizes) == space.num_layers == 12
    assert sizes[::4] == [14, 14, 7] and sizes[-1] == 4
    # its runtime model (timed on this project's VM, benchmarks/data/) indexes the same layers
    model = RuntimeModel.resolve(os.path.join(ROOT, "benchmarks", "data", "mnasnet-small-28px-vm.json"))
    assert model.space == space.name and model.num_layers == space.num_layers
    assert model.predict(Architecture(["k3_e3"] * 12, space)) < model.predict(Architecture(["k5_e6"] * 12, space))


def test_authors_net_block_strings_match_timm():
    arch = Architecture(SPNASNET_100)
    assert arch.block_strings() == TIMM_SPNASNET_100
    assert Architecture.from_block_strings(TIMM_SPNASNET_100) == arch


def test_block_string_round_trip_with_skips():
    ops = ["k5_e6", "skip", "skip", "skip"] + ["k3_e6", "k3_e6", "k5_e3", "skip"] * 4
    arch = Architecture(ops)
    strings = arch.block_strings()
    assert strings[1] == ["ir_r1_k5_s2_e6_c24"]
    assert strings[2] == ["ir_r2_k3_s2_e6_c40", "ir_r1_k5_s1_e3_c40"]
    assert Architecture.from_block_strings(strings) == arch


def test_json_round_trip(tmp_path):
    arch = Architecture(["k3_e6"] * 4 + ["k5_e3", "skip", "k3_e3", "k5_e6"] * 4)
    path = tmp_path / "a.json"
    arch.save(str(path), predicted_ms=1.0)
    obj = json.loads(path.read_text())
    assert obj["ops"] == arch.ops and obj["predicted_ms"] == 1.0
    assert Architecture.load(str(path)) == arch


def test_authors_net_has_4_42m_parameters():
    net = build_child(Architecture(SPNASNET_100), num_classes=1000)
    n = sum(p.numel() for p in net.parameters())
    assert round(n / 1e6, 2) == 4.42, n


@pytest.mark.parametrize("ops, message", [
    (["k5_e6"] * 19, "20 searchable layers"),
    (["skip"] + ["k5_e6"] * 19, "first of its stage"),
    (["k7_e6"] + ["k5_e6"] * 19, "unknown op"),
])
def test_bad_architectures(ops, message):
    with pytest.raises(SpnasError, match=message):
        Architecture(ops)


def test_bad_block_strings():
    with pytest.raises(SpnasError, match="kind"):
        BlockSpec.parse("xx_r1_c3")
    with pytest.raises(SpnasError, match="c<int>"):
        BlockSpec.parse("ir_r1_k3_s1_e6")
    with pytest.raises(SpnasError, match="stride"):
        BlockSpec.parse("ir_r1_k3_s3_e6_c8")


def test_user_space_is_data():
    space = SearchSpace("tiny", 16, ("sp_r2_k5_s2_e6_c16", "sp_r3_k5_s2_e6_c24"), 64)
    assert space.num_layers == 5
    arch = Architecture(["k3_e3", "skip", "k5_e6", "k5_e3", "skip"], space)
    assert arch.block_strings() == [["ir_r1_k3_s2_e3_c16"], ["ir_r1_k5_s2_e6_c24", "ir_r1_k5_s1_e3_c24"]]
    assert Architecture.from_json(json.loads(json.dumps(arch.to_json()))) == arch
    assert OPS[-1] == "skip"


def test_layer_input_shapes_and_random_architectures_live_in_the_space():
    import random

    from spnas.space import MNASNET, layer_input_shapes, random_architecture
    shapes = layer_input_shapes("mnasnet", 24)  # the digits search: 12 -> 6 -> 3 -> 2 -> 2 -> 1
    assert [s[2] for s in shapes[::4]] == [12, 6, 3, 2, 2]
    assert [s[1] for s in shapes[::4]] == [16, 24, 40, 80, 96]
    rng = random.Random(0)
    for _ in range(20):
        arch = random_architecture(MNASNET, rng)
        assert all(op != "skip" for op in arch.ops[::4])
