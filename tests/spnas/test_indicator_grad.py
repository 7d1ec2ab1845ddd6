"""--indicator-grad thresholds: the indicators' gradient reaches the thresholds only.

The oracle is the reference op with its norms detached (spnas_ops.reference, norm_grad=False);
the layer gets there on any backend by passing t + n - n to the paper's op."""

import pytest
import torch

import spnas_ops
from spnas import SuperDepthwiseConv2d, SuperMBConv
from spnas_ops import reference

# (backend, device): the GPU backends where a GPU is (benchmarks/gpu_check.sh runs this file)
BACKENDS = [(b, "cpu") for b in ("reference", "cpu") if b in spnas_ops.available_backends()]
if torch.cuda.is_available():
    BACKENDS += [(b, "cuda") for b in ("cuda", "triton") if b in spnas_ops.available_backends()]


def layer_and_oracle(backend, seed, channels=12, stride=1, skippable=True, scale=None, device="cpu"):
    """(x, weight, thresholds gradients, y, d) of the layer with norm_grad=False, and of the
    oracle, for one random case whose margins lie within +-1 (where sigmoid' is not ~0)."""
    g = torch.Generator().manual_seed(seed)
    layer = SuperDepthwiseConv2d(channels, stride, skippable, op_backend=backend, norm_grad=False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g))
        layer.set_margins(torch.rand(3, generator=g) * 2 - 1)
    layer.to(device)
    x = torch.randn(2, channels, 7, 7, generator=g).to(device)
    out = (7 - 1) // stride + 1  # 5x5, padding 2
    gy = torch.randn(2, channels, out, out, generator=g).to(device)
    gd = torch.randn(3, generator=g).to(device)
    if scale is not None:
        scale = scale.to(device)

    def grads(fn, w, t):
        xx = x.clone().requires_grad_()
        y, d = fn(xx, w, t)
        torch.autograd.backward([y, d], [gy, gd])
        return xx.grad, y.detach(), d.detach()

    xg, y, d = grads(lambda xx, w, t: layer(xx, scale), None, None)
    got = (xg, layer.weight.grad.clone(), layer.thresholds.grad.clone(), y, d)
    w = layer.weight.detach().clone().requires_grad_()
    t = layer.thresholds.detach().clone().requires_grad_()
    r = torch.ones(3, device=device) if scale is None else scale
    xg, y, d = grads(lambda xx, w_, t_: reference.masked_dwconv(xx, w_, t_, r, stride, skippable,
                                                                norm_grad=False), w, t)
    return got, (xg, w.grad, t.grad, y, d)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("seed", range(12))  # the kernel decision on in 4 of them
@pytest.mark.parametrize("stride,skippable", [(1, True), (2, False)])
def test_weight_gradient_skips_the_norms_on_every_backend(backend, device, seed, stride, skippable):
    got, want = layer_and_oracle(backend, seed, stride=stride, skippable=skippable, device=device)
    for name, a, b in zip(("x", "weight", "thresholds", "y", "d"), got, want):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4), (name, (a - b).abs().max())


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_with_indicator_dropout(backend, device):
    got, want = layer_and_oracle(backend, 11, scale=torch.tensor([1 / 0.6, 0.0, 1 / 0.6]), device=device)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_the_oracle_differs_from_the_papers_gradient():
    # the test above could not pass by accident: with the norms' terms the weight gradient
    # differs, and the thresholds' gradient is the same
    got, want = layer_and_oracle("reference", 3)
    layer = SuperDepthwiseConv2d(12, op_backend="reference")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g))
        layer.set_margins(torch.rand(3, generator=g) * 2 - 1)
    x = torch.randn(2, 12, 7, 7, generator=g)
    gy = torch.randn(2, 12, 7, 7, generator=g)
    gd = torch.randn(3, generator=g)
    y, d = layer(x)
    torch.autograd.backward([y, d], [gy, gd])
    assert not torch.allclose(layer.weight.grad, want[1], rtol=1e-3, atol=1e-4)
    assert torch.allclose(layer.thresholds.grad, want[2], rtol=1e-4, atol=1e-6)


def test_mbconv_passes_the_choice_down():
    block = SuperMBConv(8, 8, 1, op_backend="reference", norm_grad=False)
    assert block.superkernel.norm_grad is False
    assert "norm_grad=False" in repr(block)


def test_the_latency_term_reaches_the_weights_only_in_the_papers_routing():
    # the latency term depends on the weights through the norms alone: with --indicator-grad
    # thresholds it moves the thresholds and leaves the superkernel weights alone (to rounding)
    from spnas import RuntimeModel
    from spnas.search import SearchConfig, build_supernet
    model = RuntimeModel.resolve("benchmarks/data/mnasnet-small-28px-vm.json")
    x = torch.randn(2, 3, 28, 28)
    grads = {}
    for routing in ("thresholds", "thresholds+weights"):
        torch.manual_seed(0)
        net = build_supernet(SearchConfig(space="mnasnet-small", indicator_grad=routing), 10)
        net.place_thresholds(1.0)
        net(x)
        torch.log(net.runtime(model)).backward()
        grads[routing] = (torch.stack([b.superkernel.weight.grad.abs().max() for b in net.searchable]),
                          torch.stack([b.superkernel.thresholds.grad.abs().max() for b in net.searchable]))
    (w_own, t_own), (w_paper, _) = grads["thresholds"], grads["thresholds+weights"]
    assert (t_own > 0).all() and (w_paper > 1e-4).all()
    assert (w_own < 1e-6 * w_paper).all()
