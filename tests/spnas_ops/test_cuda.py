"""The GPU backends ("cuda": the compiled CUDA kernels; "triton": the Triton kernels compiled
for the device) against the reference oracle. Skipped without a CUDA device.

fp32/fp64 are compared with tight tolerances; fp16/bf16 with the flash-attention rule: the
error against the fp32 reference is at most twice PyTorch's own error in that precision.
"""

import pytest
import torch

import spnas_ops

from superkernel_cases import (
    LOW_PRECISION, assert_close_to_reference, assert_low_precision_error, make_case,
    run_backend)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def gpu_backends():
    if not torch.cuda.is_available():
        return []
    have = spnas_ops.available_backends()
    return [b for b in ("cuda", "triton") if b in have]


SHAPES = [  # (N, C, H, W): odd, tiny, non-square, one channels_last block and more
    (2, 6, 7, 9),
    (1, 4, 1, 1),
    (3, 8, 2, 3),
    (2, 10, 13, 5),
    (2, 96, 16, 16),
    (4, 40, 9, 11),
]
DECISIONS = {"k5_e6": (True, True, True), "k3_e3": (False, False, True),
             "k3_e6": (False, True, True), "skip": (True, True, False)}


@pytest.mark.parametrize("backend", gpu_backends())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_matches_reference(backend, shape, stride, channels_last):
    case = make_case(shape, stride=stride, channels_last=channels_last, device="cuda",
                     decisions=(True, False, True), seed=sum(shape) + stride)
    assert_close_to_reference(case, backend)


@pytest.mark.parametrize("backend", gpu_backends())
@pytest.mark.parametrize("decisions", list(DECISIONS))
@pytest.mark.parametrize("skippable,with_scale", [(True, False), (False, True), (True, True)])
def test_decisions(backend, decisions, skippable, with_scale):
    case = make_case((2, 8, 6, 7), stride=2, device="cuda", decisions=DECISIONS[decisions],
                     skippable=skippable, with_scale=with_scale, seed=7)
    assert_close_to_reference(case, backend)


@pytest.mark.parametrize("backend", gpu_backends())
def test_float64(backend):
    case = make_case((2, 6, 9, 8), stride=2, device="cuda", dtype=torch.float64)
    assert_close_to_reference(case, backend, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("backend", gpu_backends())
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_low_precision(backend, dtype, stride, channels_last):
    case = make_case((4, 48, 20, 20), stride=stride, dtype=dtype, channels_last=channels_last,
                     device="cuda", seed=11)
    assert_low_precision_error(case, backend)


@pytest.mark.parametrize("backend", gpu_backends())
def test_empty_batch(backend):
    assert_close_to_reference(make_case((0, 4, 5, 5), stride=2, device="cuda"), backend)


@pytest.mark.parametrize("backend", gpu_backends())
def test_deterministic(backend):
    case = make_case((8, 64, 28, 28), stride=1, channels_last=True, device="cuda")
    first, second = run_backend(case, backend), run_backend(case, backend)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", gpu_backends())
def test_no_output_left_unwritten(backend):
    # Poison the allocator: NaN-filled blocks of the outputs' sizes are freed just before the
    # op allocates, so an element a kernel never writes comes back NaN.
    case = make_case((3, 16, 15, 13), stride=2, channels_last=True, device="cuda")
    junk = [torch.full_like(case.x, float("nan")) for _ in range(4)]
    del junk
    for out in run_backend(case, backend):
        assert not torch.isnan(out).any()


@pytest.mark.parametrize("backend", gpu_backends())
def test_compile_fullgraph(backend):
    case = make_case((2, 8, 9, 9), stride=1, device="cuda")

    def loss(x, w, t):
        y, d = spnas_ops.masked_dwconv(x, w, t, stride=1, backend=backend)
        return (y * y).sum() + d.sum()

    compiled = torch.compile(loss, fullgraph=True)
    got = [a.clone().requires_grad_() for a in (case.x, case.weight, case.thresholds)]
    compiled(*got).backward()
    want = [a.clone().requires_grad_() for a in (case.x, case.weight, case.thresholds)]
    y, d = spnas_ops.masked_dwconv(*want, stride=1, backend="reference")
    ((y * y).sum() + d.sum()).backward()
    for a, b in zip(got, want):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available() or "cuda" not in spnas_ops.available_backends(),
                    reason="needs the compiled CUDA kernels")
def test_cuda_opcheck():
    case = make_case((2, 4, 5, 6), stride=2, device="cuda")
    args = (case.x.requires_grad_(), case.weight.requires_grad_(),
            case.thresholds.requires_grad_(), torch.ones(3, device="cuda"), 2, True)
    torch.library.opcheck(torch.ops.spnas.masked_dwconv.default, args)
