"""The Triton backend against the reference oracle: on a CUDA device when there is one, else on
the CPU through Triton's interpreter.

Without CUDA, TRITON_INTERPRET=1 is set only while this module's tests run (an autouse
fixture), so other test modules in the same pytest process see the environment unchanged.
That works after `import triton` because spnas_ops.triton_op decorates its kernels on first
use and calls only Triton builtins. Shapes are tiny: the interpreter runs every program in
numpy. The bigger matrix on a GPU is in test_cuda.py.
"""

import os

import pytest
import torch

triton = pytest.importorskip("triton")

import spnas_ops  # noqa: E402
from spnas_ops import reference, triton_op  # noqa: E402

from superkernel_cases import (  # noqa: E402
    LOW_PRECISION, assert_close_to_reference, assert_low_precision_error, make_case,
    run_backend)


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True, scope="module")
def triton_interpreter():
    old = os.environ.get("TRITON_INTERPRET")
    if DEVICE == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    yield
    if old is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = old


def test_available_in_interpreter():
    assert triton_op.is_available()
    assert "triton" in spnas_ops.available_backends()


# Decisions are forced on or off by placing each threshold well below / above its norm, so
# every branch of the superkernel (5x5-e6, 3x3-e3, skip, ...) is exercised.
DECISIONS = {
    "k5_e6": (True, True, True),
    "k3_e3": (False, False, True),
    "k5_e3": (True, False, True),
    "skip": (True, True, False),
}


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("decisions", list(DECISIONS))
def test_matches_reference(stride, channels_last, decisions):
    case = make_case((2, 4, 7, 6), stride=stride, channels_last=channels_last,
                     decisions=DECISIONS[decisions], skippable=True, seed=stride, device=DEVICE)
    assert_close_to_reference(case, "triton")


@pytest.mark.parametrize("shape,stride,skippable,with_scale", [
    ((1, 6, 5, 9), 2, False, False),   # odd sizes, not skippable
    ((3, 2, 1, 1), 1, True, True),     # a single pixel, indicator-dropout scale
    ((1, 2, 2, 3), 2, True, True),
    ((2, 4, 9, 4), 1, False, True),
])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_odd_shapes(shape, stride, skippable, with_scale, channels_last):
    case = make_case(shape, stride=stride, channels_last=channels_last,
                     decisions=(True, False, True), skippable=skippable, with_scale=with_scale,
                     seed=sum(shape), device=DEVICE)
    assert_close_to_reference(case, "triton")


def test_float64():
    case = make_case((1, 4, 6, 5), stride=2, dtype=torch.float64, decisions=(True, True, True),
                     device=DEVICE)
    assert_close_to_reference(case, "triton", atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_low_precision(dtype, channels_last):
    case = make_case((2, 4, 6, 7), stride=1, dtype=dtype, channels_last=channels_last,
                     decisions=(True, True, True), seed=3, device=DEVICE)
    assert_low_precision_error(case, "triton")


def test_empty_batch():
    case = make_case((0, 4, 5, 5), stride=2, decisions=(True, True, True), device=DEVICE)
    assert_close_to_reference(case, "triton")


def test_gradient_from_decisions_only():
    # y unused: the backward gets grad_y = None and must still give the decision gradients.
    case = make_case((1, 4, 5, 5), stride=1, decisions=(True, True, True), device=DEVICE)
    x, w, t = (a.clone().requires_grad_() for a in (case.x, case.weight, case.thresholds))
    _, d = spnas_ops.masked_dwconv(x, w, t, stride=1, backend="triton")
    d.sum().backward()
    xr, wr, tr = (a.clone().requires_grad_() for a in (case.x, case.weight, case.thresholds))
    _, dr = reference.masked_dwconv(xr, wr, tr, torch.ones(3, device=DEVICE), 1, True)
    dr.sum().backward()
    torch.testing.assert_close(w.grad, wr.grad)
    torch.testing.assert_close(t.grad, tr.grad)
    assert x.grad is None or not x.grad.any()


def test_deterministic():
    case = make_case((2, 4, 6, 6), stride=1, channels_last=True, decisions=(True, True, True),
                     device=DEVICE)
    first = run_backend(case, "triton")
    second = run_backend(case, "triton")
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_opcheck():
    case = make_case((1, 4, 5, 4), stride=2, decisions=(True, False, True), device=DEVICE)
    args = (case.x.requires_grad_(), case.weight.requires_grad_(),
            case.thresholds.requires_grad_(), torch.ones(3, device=DEVICE), 2, True)
    torch.library.opcheck(torch.ops.spnas.masked_dwconv_triton.default, args,
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))


def test_compile_fullgraph():
    # aot_eager traces the op through dynamo and AOTAutograd (fake kernels, the autograd
    # formula) without needing a C++ or GPU compiler for the surrounding graph.
    case = make_case((1, 4, 5, 5), stride=1, decisions=(True, True, True), device=DEVICE)

    def loss(x, w, t):
        y, d = spnas_ops.masked_dwconv(x, w, t, stride=1, backend="triton")
        return (y * y).sum() + d.sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    inputs = [a.clone().requires_grad_() for a in (case.x, case.weight, case.thresholds)]
    compiled(*inputs).backward()
    expected = [a.clone().requires_grad_() for a in (case.x, case.weight, case.thresholds)]
    y, d = reference.masked_dwconv(*expected, torch.ones(3, device=DEVICE), 1, True)
    ((y * y).sum() + d.sum()).backward()
    for got, want in zip(inputs, expected):
        torch.testing.assert_close(got.grad, want.grad, atol=1e-5, rtol=1e-4)


def test_kernels_compile_for_sm90(monkeypatch):
    """Compiles both kernels to an sm_90 cubin with Triton's own toolchain; no GPU needed.

    The interpreter accepts Python the compiler rejects; this catches that here."""
    from triton.backends.compiler import GPUTarget
    import triton.language as tl

    if not isinstance(triton_op._sum_combine, triton.runtime.JITFunction):
        pytest.skip("triton was imported with TRITON_INTERPRET=1: its library is interpreted")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    kernels = triton_op.build_kernels()
    target = GPUTarget("cuda", 90, 32)
    specs = [
        (kernels.forward, ["x_ptr", "w_ptr", "y_ptr"],
         ["P", "C", "H", "W", "HWo", "Wo"] + [f"s{t}{d}" for t in "xy" for d in "nchw"],
         dict(STRIDE=2, PIXEL_AXIS=0, WIDE=False, BLOCK_P=16, BLOCK_C=32, ACC=tl.float32), 4),
        (kernels.backward, ["x_ptr", "dy_ptr", "w_ptr", "dx_ptr", "partial_ptr"],
         ["P", "C", "H", "W", "HWo", "Ho", "Wo"] + [f"s{t}{d}" for t in "xdg" for d in "nchw"],
         dict(STRIDE=2, PIXEL_AXIS=1, WIDE=True, BLOCK_P=1024, BLOCK_C=1, ACC=tl.float32), 8),
    ]
    for fn, pointers, ints, constexprs, warps in specs:
        signature = {name: "*bf16" for name in pointers}
        signature.update({"w_ptr": "*fp32", "partial_ptr": "*fp32"} if "partial_ptr" in pointers
                         else {"w_ptr": "*fp32"})
        signature.update({name: "i32" for name in ints})
        signature.update({name: "constexpr" for name in constexprs})
        source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs)
        compiled = triton.compile(source, target=target, options={"num_warps": warps})
        assert compiled.asm["cubin"]
