"""A child built from an Architecture is keyed like timm's EfficientNet builder keys the same
network, so a timm state dict loads into it (strict). The expectation is written from timm's
builder (timm/models/_efficientnet_blocks.py and efficientnet.py): stem conv_stem + bn1;
blocks[stage][block]; "ds" blocks conv_dw, bn1, conv_pw, bn2; "ir" blocks conv_pw, bn1,
conv_dw, bn2, conv_pwl, bn3; head conv_head + bn2; classifier. timm is not installable here;
the GPU machine has it to check against the real thing."""

import torch

from spnas import Architecture
from spnas.space import SPNASNET_100
from spnas.layers import build_child

from test_space import TIMM_SPNASNET_100  # timm's _gen_spnasnet arch_def, per stage


def bn(prefix, c):
    return {f"{prefix}.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()}


def timm_keys(arch_def, stem=32, head=1280, classes=1000):
    keys = {"conv_stem.weight": (stem, 3, 3, 3), **bn("bn1", stem)}
    cin = stem
    for s, strings in enumerate(arch_def):
        i = 0
        for text in strings:
            parts = dict((p[0], p[1:]) for p in text.split("_")[1:] if p[0] in "rksec")
            repeats, k, e, cout = int(parts["r"]), int(parts["k"]), int(parts.get("e", 1)), int(parts["c"])
            for _ in range(repeats):
                p = f"blocks.{s}.{i}"
                if text.startswith("ds"):
                    keys |= {f"{p}.conv_dw.weight": (cin, 1, k, k), **bn(f"{p}.bn1", cin),
                             f"{p}.conv_pw.weight": (cout, cin, 1, 1), **bn(f"{p}.bn2", cout)}
                else:
                    mid = cin * e
                    keys |= {f"{p}.conv_pw.weight": (mid, cin, 1, 1), **bn(f"{p}.bn1", mid),
                             f"{p}.conv_dw.weight": (mid, 1, k, k), **bn(f"{p}.bn2", mid),
                             f"{p}.conv_pwl.weight": (cout, mid, 1, 1), **bn(f"{p}.bn3", cout)}
                cin, i = cout, i + 1
    keys |= {"conv_head.weight": (head, cin, 1, 1), **bn("bn2", head),
             "classifier.weight": (classes, head), "classifier.bias": (classes,)}
    return keys


def test_the_authors_network_is_keyed_as_timm_keys_spnasnet_100():
    arch = Architecture(list(SPNASNET_100))
    assert arch.block_strings() == TIMM_SPNASNET_100
    net = build_child(arch)
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert ours == timm_keys(TIMM_SPNASNET_100)
    # timm lists spnasnet_100 with 4.42 M parameters
    assert round(sum(p.numel() for p in net.parameters()) / 1e6, 2) == 4.42


def test_a_timm_keyed_state_dict_loads_strictly_and_runs():
    arch = Architecture(list(SPNASNET_100))
    state = {k: torch.randn(shape) if shape else torch.tensor(0)
             for k, shape in timm_keys(TIMM_SPNASNET_100).items()}
    for k in state:
        if k.endswith("running_var"):
            state[k] = state[k].abs() + 0.5
    net = build_child(arch)
    net.load_state_dict(state, strict=True)
    assert net.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
