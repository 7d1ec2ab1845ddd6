"""The compiled (C, 25) part alone, `spnas::superkernel_weight` and its backward (what the Triton
backend runs where the compiled library has kernels for the device), against the fp64 oracle
`reference.masked_weight` and its autograd: w_eff, d, and the weight and threshold gradients."""

import pytest
import torch

import spnas_ops
from spnas_ops import reference
from superkernel_cases import VARIANTS, _thresholds

DEVICES = [d for d in ("cpu", "cuda") if d in spnas_ops.available_backends()]
if not DEVICES:
    pytest.skip("the compiled library is not built", allow_module_level=True)

DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16}


def oracle(weight, thresholds, scale, skippable, grad_w_eff, grad_d):
    """(w_eff, d, dweight, dthresholds) of the oracle in fp64 on the same (rounded) inputs."""
    w = weight.detach().double().cpu().requires_grad_()
    t = thresholds.detach().double().cpu().requires_grad_()
    w_eff, d = reference.masked_weight(w, t, scale.double().cpu(), skippable)
    torch.autograd.backward([w_eff, d], [grad_w_eff.double().cpu(), grad_d.double().cpu()])
    return w_eff.detach(), d.detach(), w.grad, t.grad


def assert_rounded_from(got, want, name):
    """`got` is `want` (fp64) rounded to got's dtype, up to double-precision summation order."""
    eps = torch.finfo(got.dtype).eps if got.dtype != torch.float64 else 1e-12
    err = (got.double().cpu() - want).abs()
    bound = eps * want.abs() + 1e-12
    assert bool((err <= bound).all()), (
        f"{name} ({got.dtype}): max error {err.max().item():.3g}, "
        f"{int((err > bound).sum())} of {err.numel()} elements beyond the rounding bound")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("channels", [2, 34, 1152])  # one pair; a partial block; many per thread
def test_matches_the_oracle(device, dtype, channels):
    for i, (decisions, skippable, with_scale) in enumerate(VARIANTS):
        g = torch.Generator().manual_seed(channels * 10 + i)
        weight = 0.3 * torch.randn(channels, 1, 5, 5, generator=g)
        thresholds = _thresholds(weight, decisions)
        scale = torch.tensor([1 / 0.6, 0.0, 1 / 0.6]) if with_scale else torch.ones(3)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        grad_w_eff = torch.randn(channels, 1, 5, 5, generator=g).to(device, acc)
        grad_d = torch.randn(3, generator=g).to(device, dtype)
        weight, thresholds, scale = (t.to(device, dtype) for t in (weight, thresholds, scale))

        w_eff, d = torch.ops.spnas.superkernel_weight(weight, thresholds, scale, skippable)
        dw, dt = torch.ops.spnas.superkernel_weight_backward(grad_w_eff, grad_d, weight,
                                                             thresholds, scale, skippable)
        o_w_eff, o_d, o_dw, o_dt = oracle(weight, thresholds, scale, skippable, grad_w_eff, grad_d)
        assert (w_eff.dtype, d.dtype, dw.dtype, dt.dtype) == (acc, dtype, dtype, dtype)
        assert w_eff.shape == dw.shape == weight.shape and d.shape == dt.shape == (3,)
        assert torch.equal(d.double().cpu(), o_d.to(dtype).double()), (d, o_d)
        assert_rounded_from(w_eff, o_w_eff, "w_eff")
        assert_rounded_from(dw, o_dw, "weight.grad")
        assert_rounded_from(dt, o_dt, "thresholds.grad")
        assert bool(dt.abs().sum() > 0), "the threshold gradients are all zero: the case tests nothing"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("args, message", [
    (dict(weight=torch.randn(6, 1, 3, 3)), "superkernel_weight: weight must have shape"),
    (dict(weight=torch.randn(5, 1, 5, 5)), "the number of channels C must be even"),
    (dict(thresholds=torch.zeros(2)), "thresholds must have shape (3,)"),
    (dict(scale=torch.ones(3, dtype=torch.float64)), "scale dtype"),
])
def test_bad_arguments_name_themselves(device, args, message):
    a = dict(weight=torch.randn(6, 1, 5, 5), thresholds=torch.zeros(3), scale=torch.ones(3))
    a.update(args)
    a = {k: v.to(device) for k, v in a.items()}
    with pytest.raises(RuntimeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        torch.ops.spnas.superkernel_weight(a["weight"], a["thresholds"], a["scale"], True)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_checks_the_gradient_shape(device):
    w, t, r = torch.randn(6, 1, 5, 5, device=device), torch.zeros(3, device=device), torch.ones(3, device=device)
    with pytest.raises(RuntimeError, match="grad_w_eff must have the weight's shape"):
        torch.ops.spnas.superkernel_weight_backward(torch.randn(4, 1, 5, 5, device=device),
                                                    torch.zeros(3, device=device), w, t, r, True)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    """Schema, fake kernels (torch.compile traces with them) and dispatch agree with the kernels."""
    w = torch.randn(6, 1, 5, 5, device=device, dtype=torch.bfloat16)
    t, r = torch.zeros(3, device=device, dtype=w.dtype), torch.ones(3, device=device, dtype=w.dtype)
    torch.library.opcheck(torch.ops.spnas.superkernel_weight, (w, t, r, True))
    g = torch.randn(6, 1, 5, 5, device=device)
    torch.library.opcheck(torch.ops.spnas.superkernel_weight_backward,
                          (g, torch.randn(3, device=device), w, t, r, False))
