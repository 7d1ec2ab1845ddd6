import pytest
import torch
import torch.nn.functional as F
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from spnas import RuntimeModel, SinglePathSuperNet, SuperDepthwiseConv2d, SuperMBConv
from spnas.space import SPNASNET_100, Architecture
from spnas.layers import build_child

torch.manual_seed(0)


def norms(layer):
    w = layer.weight.detach().reshape(layer.channels, 5, 5)
    m3 = torch.zeros(5, 5)
    m3[1:4, 1:4] = 1
    outer = (w * (1 - m3)).norm().item()
    half = layer.channels // 2
    return outer, (w[half:] * m3).norm().item(), (w[:half] * m3).norm().item()


def test_thresholds_start_at_zero_and_everything_is_on():
    layer = SuperDepthwiseConv2d(12, op_backend="reference")
    assert torch.equal(layer.thresholds.detach(), torch.zeros(3))
    x = torch.randn(2, 12, 7, 7)
    y, d = layer(x)
    assert d.tolist() == [1.0, 1.0, 1.0]
    assert torch.allclose(y, F.conv2d(x, layer.weight, padding=2, groups=12), atol=1e-5)


def test_threshold_above_the_outer_norm_gives_a_3x3_kernel():
    layer = SuperDepthwiseConv2d(12, op_backend="reference")
    outer, _, _ = norms(layer)
    with torch.no_grad():
        layer.thresholds[0] = outer + 0.01
    x = torch.randn(2, 12, 9, 9)
    y, d = layer(x)
    assert d.tolist() == [0.0, 1.0, 1.0]
    w3 = layer.weight.detach()[:, :, 1:4, 1:4]
    assert torch.allclose(y, F.conv2d(x, w3, padding=1, groups=12), atol=1e-5)


def test_threshold_above_the_hi_norm_gives_expansion_3():
    layer = SuperDepthwiseConv2d(12, op_backend="reference")
    _, hi, _ = norms(layer)
    with torch.no_grad():
        layer.thresholds[0] = 1e6          # 3x3, so the hi norm is over the inner taps
        layer.thresholds[1] = hi + 0.01
    y, d = layer(torch.randn(2, 12, 5, 5))
    assert d.tolist() == [0.0, 0.0, 1.0]
    assert y[:, 6:].abs().max() == 0 and y[:, :6].abs().max() > 0


def test_threshold_above_the_lo_norm_skips_a_skippable_layer_only():
    for skippable, keep in ((True, 0.0), (False, 1.0)):
        torch.manual_seed(1)
        block = SuperMBConv(8, 8, 1, skippable=skippable, op_backend="reference") if skippable else \
            SuperMBConv(8, 16, 2, skippable=False, op_backend="reference")
        layer = block.superkernel
        with torch.no_grad():
            layer.thresholds[2] = 1e6
        x = torch.randn(2, 8, 6, 6)
        out, d = block(x)
        assert d[2].item() == keep
        if skippable:
            assert torch.equal(out, x)  # a skipped layer is exactly the identity


def test_supernet_in_a_hard_state_computes_the_derived_child():
    """With every decision hard and the child given the supernet's weights, outputs agree."""
    torch.manual_seed(0)
    net = SinglePathSuperNet(num_classes=5, width_mult=0.25, op_backend="reference").eval()
    with torch.no_grad():
        for i, block in enumerate(net.searchable):
            outer, hi, lo = norms(block.superkernel)
            t = block.superkernel.thresholds
            t[0] = outer + 1 if i % 2 else 0.0          # odd layers 3x3
            t[1] = 1e6 if i % 3 == 0 else 0.0           # every third e3
            t[2] = 1e6 if (i % 4 == 3) else 0.0         # skip the last of each stage
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    arch = net.derive()
    assert arch.ops[:4] == ["k5_e3", "k3_e6", "k5_e6", "skip"] and arch.ops[9] == "k3_e3"
    child = net.child().eval()
    assert child.state_dict().keys() == build_child(arch, num_classes=5, width_mult=0.25).state_dict().keys()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(net(x), child(x), atol=1e-4)


@pytest.mark.parametrize("formula", ["lut", "paper"])
def test_latency_gradients_raise_the_thresholds_and_lower_latency(formula):
    torch.manual_seed(0)
    net = SinglePathSuperNet(num_classes=4, width_mult=0.25, op_backend="reference")
    with torch.no_grad():  # put thresholds near the norms so the sigmoid gradient is not tiny
        for block in net.searchable:
            outer, hi, lo = norms(block.superkernel)
            block.superkernel.thresholds.copy_(torch.tensor([outer, hi, lo]) - 0.5)
    model = RuntimeModel.preset("pixel1")
    x = torch.randn(2, 3, 32, 32)
    net(x)
    before = net.runtime(model, formula)
    (0.02 * 1e3 * torch.log(before)).backward()
    grads = torch.stack([t.grad for t in net.thresholds()])
    assert (grads[:, :2] < 0).all()        # raising t_kernel / t_expand lowers latency
    assert (grads[1:, 2][[i % 4 != 0 for i in range(1, 20)]] < 0).all()
    assert (grads[::4, 2] == 0).all()      # first layers of stages cannot be skipped
    with torch.no_grad():
        for t in net.thresholds():
            t -= 2.0 * t.grad.sign()       # a descent step
    net(x)
    after = net.runtime(model, formula)
    assert after.item() < before.item()
    assert model.predict(net.derive()) < model.predict(Architecture(["k5_e6"] * 20))


def test_op_backend_passes_through():
    net = SinglePathSuperNet(num_classes=3, width_mult=0.25, op_backend="reference")
    assert all(b.superkernel.op_backend == "reference" for b in net.searchable)
    with pytest.raises(ValueError, match="op_backend"):
        SuperDepthwiseConv2d(8, op_backend="nope")


def test_indicator_dropout_scale_is_used():
    layer = SuperDepthwiseConv2d(8, op_backend="reference")
    _, d = layer(torch.randn(1, 8, 5, 5), torch.tensor([0.0, 1 / 0.6, 1 / 0.6]))
    assert d.tolist() == pytest.approx([0.0, 1 / 0.6, 1 / 0.6])


def test_placed_thresholds_keep_every_decision_on_with_a_live_gradient():
    layer = SuperDepthwiseConv2d(12, op_backend="reference")
    layer.place_thresholds(1.0)
    w = layer.weight.detach().reshape(12, 5, 5)
    m3 = torch.zeros(5, 5)
    m3[1:4, 1:4] = 1
    want = torch.stack([(w * (1 - m3)).norm(), w[6:].norm(), w[:6].norm()]) - 1.0
    assert torch.allclose(layer.thresholds.detach(), want, atol=1e-5)
    assert layer.hard_decisions() == (1, 1, 1)
    _, d = layer(torch.randn(2, 12, 5, 5))
    d.sum().backward()
    s = torch.sigmoid(torch.tensor(1.0))
    # each decision's straight-through gradient is -sigmoid'(margin) (plus the nested terms of
    # d_expand and d_keep through the kernel decision, which only add to it)
    assert (layer.thresholds.grad <= -(s * (1 - s)) + 1e-6).all()


@pytest.mark.parametrize("decisions", [(1, 1, 1), (0, 1, 1), (1, 0, 1), (0, 0, 0), (0, 1, 0)])
def test_copied_decisions_hold_under_other_weights(decisions):
    # a search's EMA weights are evaluated with the live decisions: the copy must reproduce
    # every decision (the kernel one first: it changes the norms the other two compare) and
    # every margin, though its weights' norms differ
    live = SuperDepthwiseConv2d(12, op_backend="reference")
    other = SuperDepthwiseConv2d(12, op_backend="reference")
    with torch.no_grad():
        other.weight.mul_(1.7)
    live.set_margins(torch.tensor([0.4 if on else -0.3 for on in decisions]))
    assert live.hard_decisions() == decisions
    other.set_margins(live.margins())
    assert other.hard_decisions() == decisions
    assert torch.allclose(other.margins(), live.margins(), atol=1e-5)
    assert not torch.allclose(other.thresholds, live.thresholds, atol=0.1)
    net = SinglePathSuperNet(num_classes=3, width_mult=0.25, op_backend="reference")
    twin = SinglePathSuperNet(num_classes=3, width_mult=0.25, op_backend="reference")
    for i, b in enumerate(net.searchable):
        b.superkernel.set_margins(torch.tensor([0.5, -0.5, 0.5]) * (-1) ** i)
    twin.copy_decisions(net)
    assert torch.equal(twin.hard_decisions(), net.hard_decisions())
    assert net.hard_decisions()[:, 0].tolist() != [1] * len(net.searchable)


def test_head_pools_with_keepdim_and_flattens():
    from spnas.layers import Head
    head = Head(8, 16, 3, 0.0, 1e-3).eval()
    x = torch.randn(2, 8, 3, 3)
    want = head.classifier(head.conv(x).mean((2, 3)))
    assert torch.allclose(head(x), want, atol=1e-6)


class _NchwActivations(TorchDispatchMode):
    """Counts, per op, the 4-D outputs (more than one channel and pixel) that are not
    channels_last: each is a layout conversion hidden somewhere in a channels_last step."""

    def __init__(self):
        super().__init__()
        self.found = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves(out):
            if (isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[1] > 1
                    and t.shape[2] * t.shape[3] > 1
                    and not t.is_contiguous(memory_format=torch.channels_last)):
                self.found[str(func)] = self.found.get(str(func), 0) + 1
        return out


@pytest.mark.parametrize("network", ["supernet-cpu", "supernet-reference", "child"])
def test_channels_last_step_has_no_layout_conversions(network):
    if network == "child":
        net = build_child(Architecture(list(SPNASNET_100)), num_classes=10, width_mult=0.25)
    else:
        net = SinglePathSuperNet(num_classes=10, width_mult=0.25, op_backend=network.split("-")[1])
    net = net.to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with _NchwActivations() as seen:
        F.cross_entropy(net(x), torch.randint(0, 10, (4,))).backward()
    assert seen.found == {}
    # the check itself: an NCHW input into the same network is caught
    with _NchwActivations() as seen:
        net(torch.randn(4, 3, 32, 32))
    assert seen.found


def test_supernet_decisions_are_the_ops_own_on_random_thresholds():
    # the oracle: the reference op's decisions, layer by layer (masked_weight, no dropout)
    from spnas_ops.reference import masked_weight
    from spnas.search import SearchConfig, build_supernet
    torch.manual_seed(3)
    net = build_supernet(SearchConfig(width_mult=0.25, op_backend="reference"), 10)
    for trial in range(20):
        with torch.no_grad():
            for b in net.searchable:  # thresholds around the norms: every pattern turns up
                norms = b.superkernel.margins(torch.zeros(3))
                b.superkernel.thresholds.copy_(norms + 2.0 * torch.randn(3))
        want = torch.stack([masked_weight(b.superkernel.weight, b.superkernel.thresholds,
                                          torch.ones(3), b.superkernel.skippable)[1] != 0
                            for b in net.searchable]).long()
        got = net.hard_decisions()
        assert torch.equal(got, want), trial
        assert torch.equal(net.hard_decisions(net.margins().cpu()), want)  # margins read back once
        assert [b.superkernel.hard_decisions() for b in net.searchable] == [tuple(r) for r in want.tolist()]
    assert not all(b.superkernel.skippable for b in net.searchable)  # both kinds were covered


def test_indicator_margins_of_many_layers_match_the_oracle():
    """`layers.indicator_margins` (every layer at once, what margins() and derive() run) against
    the oracle's `reference.indicator_margins` layer by layer in fp64, with every decision near
    its threshold on and off (the kernel decision decides whether the e6/e3 norms hold the
    ring); and the same bits for a layer alone as within the batch."""
    from spnas.layers import indicator_margins
    from spnas_ops.reference import indicator_margins as oracle
    g = torch.Generator().manual_seed(3)
    weights, thresholds = [], []
    for i, c in enumerate((2, 6, 16, 24, 40, 120)):
        w = torch.randn(c, 1, 5, 5, generator=g) * (0.2 + i)
        norms = oracle(w.double(), torch.zeros(3, dtype=torch.float64))  # every decision on
        flip = torch.tensor([(i >> k) & 1 for k in range(3)], dtype=torch.bool)
        thresholds.append((norms * torch.where(flip, 1.02, 0.98)).float())
        weights.append(w)
    t = torch.stack(thresholds)
    got = indicator_margins(weights, t)
    want = torch.stack([oracle(w.double(), ti.double()) for w, ti in zip(weights, t)])
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    patterns = {tuple(r) for r in (got >= 0).tolist()}
    assert len(patterns) >= 4 and {p[0] for p in patterns} == {True, False}, patterns
    for i, (w, ti) in enumerate(zip(weights, t)):
        assert torch.equal(indicator_margins([w], ti[None])[0], got[i])
