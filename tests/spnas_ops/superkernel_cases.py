"""What the op tests share: the backends under test, random superkernel problems, and how a
backend's five results (y, d, dx, dweight, dthresholds) are judged against an fp64 oracle."""

import contextlib
import os
from dataclasses import dataclass

import torch

import spnas_ops
from spnas_ops import reference

LOW_PRECISION = (torch.float16, torch.bfloat16)
NAMES = ("y", "d", "x.grad", "weight.grad", "thresholds.grad")


@dataclass(frozen=True)
class Backend:
    """A backend under test and how big its cases may be."""

    name: str
    device: str
    shapes: tuple  # (N, C, H, W) of the fp32/fp64 matrix
    low_precision_shapes: tuple
    interpreted: bool = False  # Triton's interpreter: numpy per program, keep cases tiny


# The CPU shapes reach the kernels' paths one by one (see csrc/cpu/): keep them when editing.
CPU_SHAPES = (
    (2, 6, 7, 9),  # odd sizes
    (1, 4, 1, 1),  # one pixel
    (3, 8, 2, 3),
    (2, 10, 13, 5),
    (1, 6, 20, 37),
    (2, 34, 6, 6),  # more channels than one block, a partial block
    # whole 16-channel blocks: the NCHW fp32 transposes (row by row for widths that are a
    # multiple of 16, along the flattened plane otherwise) and the channels_last fast paths
    (1, 16, 5, 32),
    (2, 48, 11, 19),
    (1, 32, 45, 61),  # a plane too large to pack whole: channels_last through row rings
    (1, 16, 260, 6),  # the same, many runs of rows, rows shorter than a register block
    (2, 48, 50, 45),  # the same, two samples, three blocks, streamed channels_last output
    (2, 144, 10, 7),  # channels_last written by streaming stores (pixels >= 32 values apart)
    (1, 64, 8, 15),  # rows of whole register blocks and a block computed again
    # batches of 8 or more: channels_last small planes packed a whole sample at a time
    (8, 32, 9, 11),
    (9, 16, 2, 3),
)
GPU_SHAPES = ((2, 6, 7, 9), (1, 4, 1, 1), (3, 8, 2, 3), (2, 10, 13, 5), (2, 96, 16, 16),
              (4, 40, 9, 11))
INTERPRETER_SHAPES = ((2, 4, 7, 6), (1, 6, 5, 9), (3, 2, 1, 1))


def _interpreter_needed() -> bool:
    return not torch.cuda.is_available()


@contextlib.contextmanager
def triton_interpreter(on: bool = True):
    """TRITON_INTERPRET=1 while inside (where there is no CUDA device), as it was afterwards.
    spnas_ops.triton_op decorates its kernels on first use, so setting it late works."""
    old = os.environ.get("TRITON_INTERPRET")
    if on and _interpreter_needed():
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old


def backends_under_test() -> list[Backend]:
    """Every backend `spnas_ops.available_backends()` lists (Triton in its interpreter where
    there is no GPU), the oracle excepted."""
    with triton_interpreter():
        names = spnas_ops.available_backends()
    gpu = torch.cuda.is_available()
    specs = []
    for name in names:
        if name == "cpu":
            specs.append(Backend("cpu", "cpu", CPU_SHAPES, ((2, 16, 12, 12), (2, 6, 7, 9))))
        elif name == "cuda":
            specs.append(Backend("cuda", "cuda", GPU_SHAPES, ((4, 48, 20, 20), (2, 6, 7, 9))))
        elif name == "triton" and gpu:
            specs.append(Backend("triton", "cuda", GPU_SHAPES, ((4, 48, 20, 20), (2, 6, 7, 9))))
        elif name == "triton":
            specs.append(Backend("triton", "cpu", INTERPRETER_SHAPES, ((2, 4, 6, 7),),
                                 interpreted=True))
    return specs


@contextlib.contextmanager
def running(backend: Backend):
    with triton_interpreter(backend.interpreted):
        yield


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
            return t.to(device=device, dtype=dtype, memory_format=_format(t)
                        if t.dim() == 4 else torch.preserve_format)
        return Case(move(self.x), move(self.weight), move(self.thresholds), move(self.scale),
                    self.stride, self.skippable, move(self.grad_y), move(self.grad_d))


def norms(weight: torch.Tensor, d_kernel_on: bool = True) -> tuple[float, float, float]:
    """(||w*M5||, ||w1[hi]||, ||w1[lo]||) in fp64, w1 as the kernel decision makes it."""
    c = weight.shape[0]
    w = weight.reshape(c, 5, 5).double().cpu()
    m3 = reference.inner_mask(dtype=torch.float64)
    w1 = w if d_kernel_on else w * m3
    return (torch.linalg.vector_norm(w * (1 - m3)).item(),
            torch.linalg.vector_norm(w1[c // 2:]).item(),
            torch.linalg.vector_norm(w1[: c // 2]).item())


def _thresholds(weight: torch.Tensor, decisions) -> torch.Tensor:
    """Each threshold 30% below (decision on) or above (off) its norm: far enough from the step
    that no rounding flips a decision, close enough that the straight-through gradient
    sigmoid'(norm - t) is not negligible."""
    n = norms(weight, decisions[0])
    return torch.tensor([v * (0.7 if on else 1.3) for v, on in zip(n, decisions)])


# Decision variants of the matrix: every decision on and off in turn, skippable or not, with
# and without indicator dropout.
VARIANTS = (
    ((True, True, True), True, False),
    ((False, True, True), True, True),
    ((True, False, True), True, False),
    ((True, True, False), True, False),
    ((False, False, True), False, True),
    ((True, True, False), False, False),
)


def make_case(shape, *, stride=1, channels_last=False, dtype=torch.float32, device="cpu",
              decisions=(True, True, True), skippable=True, with_scale=False, seed=0,
              thresholds=None) -> Case:
    """A random problem, generated in fp32 on the CPU (the same numbers for every dtype and
    device), with random upstream gradients for both outputs y and d."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn(shape, generator=g)
    weight = 0.3 * torch.randn(c, 1, 5, 5, generator=g)
    if thresholds is None:
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


def _format(x: torch.Tensor) -> torch.memory_format:
    return (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
            and not x.is_contiguous() else torch.contiguous_format)


# Per-element bounds |got - oracle| <= atol + rtol * |oracle| against the fp64 oracle.
TOLERANCES = {torch.float32: (1e-5, 1e-4), torch.float64: (1e-12, 1e-9)}


def assert_matches_oracle(case: Case, backend: str):
    """The backend's five results on `case` against the fp64 oracle (the reference on the same
    rounded inputs in fp64), element by element:

    * fp32/fp64: every element within atol + rtol * |oracle|, or else the tensor's worst error
      at most twice PyTorch eager's own (the reference in the case's dtype) against fp64 (sums
      over many pixels may cancel below what any fp32 sum resolves);
    * fp16/bf16 (the flash-attention rule): the worst error at most twice eager's, an element
      rounded correctly from the oracle always passing.

    The decisions must equal the eager reference's exactly; y and dx keep x's memory format,
    every result x's dtype."""
    dtype = case.x.dtype
    got = run_backend(case, backend)
    eager = run_backend(case, "reference")
    oracle = run_backend(case.to(dtype=torch.float64), "reference")
    fmt = _format(case.x)
    for name, a, e, o in zip(NAMES, got, eager, oracle):
        assert a.dtype == dtype, f"{name}: dtype {a.dtype} != {dtype}"
        assert a.shape == o.shape, f"{name}: shape {tuple(a.shape)} != {tuple(o.shape)}"
        if name in ("y", "x.grad"):
            assert a.is_contiguous(memory_format=fmt), f"{name}: not {fmt}"
        if name == "d":
            assert torch.equal(a, e), f"d: {a.tolist()} != reference {e.tolist()}"
            continue
        if a.numel() == 0:
            continue
        a, e, o = (t.detach().double().cpu() for t in (a, e, o))
        err = (a - o).abs()
        eager_err = (e - o).abs().max().item()
        if dtype in TOLERANCES:
            atol, rtol = TOLERANCES[dtype]
            bound = atol + rtol * o.abs()
        else:
            bound = torch.finfo(dtype).eps * o.abs()  # correctly rounded
        bad = ~(err <= bound)  # NaN counts as bad
        if not bad.any() or err.max().item() <= 2 * eager_err:
            continue
        i = int(torch.argmax(torch.where(bad, err, torch.zeros_like(err))))
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {a.numel()} elements off the fp64 oracle; worst at flat "
            f"index {i}: got {a.flatten()[i].item():.9g}, oracle {o.flatten()[i].item():.9g}; "
            f"max error {err.max().item():.3g} > 2 x eager {dtype}'s {eager_err:.3g}")
