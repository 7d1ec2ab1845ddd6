"""What is particular to the GPU backends ("cuda": the compiled CUDA kernels; "triton" compiled
for the device): that every output element is written, checked by poisoning the caching
allocator. Their comparison with the oracle is the backend matrix in test_op.py. Skipped
without a CUDA device."""

import pytest
import torch

import spnas_ops

from superkernel_cases import make_case, run_backend

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def gpu_backends():
    if not torch.cuda.is_available():
        return []
    have = spnas_ops.available_backends()
    return [b for b in ("cuda", "triton") if b in have]


@pytest.mark.parametrize("backend", gpu_backends())
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_no_output_left_unwritten(backend, channels_last):
    # Poison the allocator: NaN-filled blocks of the outputs' sizes are freed just before the
    # op allocates, so an element a kernel never writes comes back NaN.
    case = make_case((3, 16, 15, 13), stride=2, channels_last=channels_last, device="cuda",
                     decisions=(True, True, False))
    junk = [torch.full_like(case.x, float("nan")) for _ in range(4)]
    del junk
    for out in run_backend(case, backend):
        assert not torch.isnan(out).any()
