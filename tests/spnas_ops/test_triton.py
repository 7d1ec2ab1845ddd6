"""What is particular to the Triton backend: that it runs in Triton's CPU interpreter where
there is no GPU, and that its kernels compile for a GPU with Triton's own toolchain. Its
comparison with the oracle is the backend matrix in test_op.py (on a CUDA device when there is
one, else in the interpreter)."""

import pytest

triton = pytest.importorskip("triton")

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
