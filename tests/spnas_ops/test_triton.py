"""What is particular to the Triton backend: that it runs in Triton's CPU interpreter where
there is no GPU, and that its kernels compile for a GPU with Triton's own toolchain. Its
comparison with the oracle is the backend matrix in test_op.py (on a CUDA device when there is
one, else in the interpreter)."""

import pytest

triton = pytest.importorskip("triton")

import torch  # noqa: E402

import spnas_ops  # noqa: E402
from spnas_ops import triton_op  # noqa: E402

from superkernel_cases import triton_interpreter  # noqa: E402


def test_available_in_interpreter():
    with triton_interpreter():
        assert triton_op.is_available()
        assert "triton" in spnas_ops.available_backends()


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


def _triton_backend():
    from superkernel_cases import backends_under_test
    return next(b for b in backends_under_test() if b.name == "triton")


def test_superkernel_part_runs_compiled_where_built(monkeypatch):
    """Where the compiled library has kernels for the device, the (C, 25) part is its one or
    two launches, never the oracle's torch.func.vjp (a hundred small ops per backward)."""
    from superkernel_cases import make_case, run_backend, running
    backend = _triton_backend()
    if backend.device not in spnas_ops.available_backends():
        pytest.skip(f"the compiled library has no {backend.device} kernels here")
    calls = []
    real = torch.ops.spnas.superkernel_weight_backward
    monkeypatch.setattr(torch.func, "vjp", lambda *a, **k: pytest.fail("the oracle's vjp ran"))
    monkeypatch.setattr(triton_op.torch.ops.spnas, "superkernel_weight_backward",
                        lambda *a: calls.append(1) or real(*a), raising=False)
    with running(backend):
        run_backend(make_case((2, 4, 7, 6), device=backend.device, seed=3), backend.name)
    assert calls, "the compiled backward of the (C, 25) part was not called"


@pytest.mark.parametrize("stride", [1, 2])
def test_without_the_compiled_library_the_oracle_serves(monkeypatch, stride):
    """A build without kernels for the device (e.g. no CUDA toolkit at install time): the (C, 25)
    part falls back to the oracle's formulas through torch.func.vjp, checked like any backend."""
    from superkernel_cases import VARIANTS, assert_matches_oracle, make_case, running
    backend = _triton_backend()
    monkeypatch.setattr(triton_op, "_compiled_superkernel", lambda device: False)
    monkeypatch.setattr(torch.ops.spnas, "superkernel_weight",
                        lambda *a: pytest.fail("the compiled op ran"), raising=False)
    with running(backend):
        for i, (decisions, skippable, with_scale) in enumerate(VARIANTS[:3]):
            case = make_case((2, 4, 7, 6), stride=stride, channels_last=bool(i % 2),
                             device=backend.device, decisions=decisions, skippable=skippable,
                             with_scale=with_scale, seed=10 + i)
            assert_matches_oracle(case, backend.name)
