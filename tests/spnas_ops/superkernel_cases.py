"""Random superkernel problems and comparisons with the reference oracle, shared by the GPU
backend tests (test_triton.py, test_cuda.py)."""

from dataclasses import dataclass

import torch

import spnas_ops
from spnas_ops import reference

LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass
class Case:
    x: torch.Tensor
    weight: torch.Tensor
    thresholds: torch.Tensor
    scale: torch.Tensor | None
    stride: int
    skippable: bool
    grad_y: torch.Tensor
    grad_d: torch.Tensor

    def to(self, device=None, dtype=None) -> "Case":
        def move(t):
            if t is None:
                return None
            fmt = (torch.channels_last if t.dim() == 4 and not t.is_contiguous()
                   and t.is_contiguous(memory_format=torch.channels_last)
                   else torch.preserve_format)
            return t.to(device=device, dtype=dtype, memory_format=fmt)
        return Case(move(self.x), move(self.weight), move(self.thresholds), move(self.scale),
                    self.stride, self.skippable, move(self.grad_y), move(self.grad_d))


def _thresholds(weight: torch.Tensor, decisions) -> torch.Tensor:
    """Each threshold 30% below (decision on) or above (off) its norm, as the formulas measure
    it: far enough from the step that no rounding flips a decision, close enough that the
    straight-through gradient sigmoid'(norm - t) is not negligible."""
    c = weight.shape[0]
    w = weight.reshape(c, 5, 5).double()
    m3 = reference.inner_mask(dtype=torch.float64)
    n5 = torch.linalg.vector_norm(w * (1 - m3)).item()
    w1 = w if decisions[0] else w * m3
    n_hi = torch.linalg.vector_norm(w1[c // 2:]).item()
    n_lo = torch.linalg.vector_norm(w1[: c // 2]).item()
    return torch.tensor([n * (0.7 if on else 1.3) for n, on in zip((n5, n_hi, n_lo), decisions)])


def make_case(shape, *, stride=1, channels_last=False, dtype=torch.float32, device="cpu",
              decisions=(True, True, True), skippable=True, with_scale=False, seed=0) -> Case:
    """A random problem, generated in fp32 on the CPU (the same numbers for every dtype and
    device), with random upstream gradients for both outputs y and d."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn(shape, generator=g)
    weight = 0.3 * torch.randn(c, 1, 5, 5, generator=g)
    thresholds = _thresholds(weight, decisions)
    scale = None
    if with_scale:  # indicator dropout: kept decisions scaled by 1/0.6, one of them dropped
        scale = torch.tensor([1 / 0.6, 0.0, 1 / 0.6])
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    grad_y = torch.randn(n, c, ho, wo, generator=g)
    grad_d = torch.randn(3, generator=g)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
        grad_y = grad_y.to(memory_format=torch.channels_last)
    return Case(x, weight, thresholds, scale, stride, skippable, grad_y, grad_d).to(device, dtype)


def run_backend(case: Case, backend: str):
    """(y, d, dx, dweight, dthresholds) of `backend` under the case's upstream gradients."""
    x, weight, thresholds = (t.detach().clone().requires_grad_()
                             for t in (case.x, case.weight, case.thresholds))
    y, d = spnas_ops.masked_dwconv(x, weight, thresholds, stride=case.stride,
                                   skippable=case.skippable, scale=case.scale, backend=backend)
    torch.autograd.backward([y, d], [case.grad_y, case.grad_d])
    return y.detach(), d.detach(), x.grad, weight.grad, thresholds.grad


NAMES = ("y", "d", "x.grad", "weight.grad", "thresholds.grad")


def assert_close_to_reference(case: Case, backend: str, atol=2e-5, rtol=2e-4):
    got = run_backend(case, backend)
    want = run_backend(case, "reference")
    for name, a, b in zip(NAMES, got, want):
        if name == "y" or name == "x.grad":
            assert a.shape == b.shape, f"{name}: shape {tuple(a.shape)} != {tuple(b.shape)}"
            assert a.is_contiguous(memory_format=_format(case.x)), f"{name}: memory format"
        assert a.dtype == b.dtype, f"{name}: dtype {a.dtype} != {b.dtype}"
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


def _format(x: torch.Tensor) -> torch.memory_format:
    return (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
            and not x.is_contiguous() else torch.contiguous_format)


def assert_low_precision_error(case: Case, backend: str, factor=2.0):
    """The flash-attention rule: against the reference in fp32 (on the same rounded inputs),
    the backend's error is at most `factor` times PyTorch's own error in the same precision
    (plus a tiny floor for outputs PyTorch happens to get exactly right)."""
    exact = run_backend(case.to(dtype=torch.float32), "reference")
    ours = run_backend(case, backend)
    torch_lp = run_backend(case, "reference")
    for name, e, o, t in zip(NAMES, exact, ours, torch_lp):
        assert o.dtype == case.x.dtype, f"{name}: dtype {o.dtype}"
        err_ours = (o.float() - e).abs().max().item() if e.numel() else 0.0
        err_torch = (t.float() - e).abs().max().item() if e.numel() else 0.0
        floor = 1e-3 * max(e.abs().max().item(), 1e-6) if e.numel() else 0.0
        assert err_ours <= factor * err_torch + floor, (
            f"{name}: error {err_ours:.3g} > {factor} x PyTorch's {err_torch:.3g} + {floor:.2g}")
