"""What is particular to the compiled CPU op: its instruction sets, its threads, its bits
whatever the thread count, its own argument checks and its build. The comparison with the
oracle is the backend matrix in test_op.py."""

import os
import subprocess
import sys

import pytest
import torch

import spnas_ops
from superkernel_cases import NAMES, make_case, run_backend

pytestmark = pytest.mark.skipif("cpu" not in spnas_ops.available_backends(),
                                reason="spnas_ops was built without its CPU kernels")


@pytest.mark.parametrize("shape,stride", [((4, 32, 15, 15), 2), ((9, 32, 10, 10), 1),
                                          ((2, 16, 48, 48), 1)], ids=["groups", "samples", "rows"])
def test_backward_is_deterministic(shape, stride):
    """Bit for bit the same run to run and whatever the thread count: the weight gradient's
    partial sums are fixed by the shape and added in order."""
    case = make_case(shape, stride=stride, channels_last=True, seed=11)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 2):
            torch.set_num_threads(threads)
            results.append(run_backend(case, "cpu"))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for name, u, v in zip(NAMES, results[0], other):
            assert torch.equal(u, v), name


def test_kernels_run_on_torch_threads():
    """The kernels' at::parallel_for runs on torch.get_num_threads() threads: a build without
    torch's threading (e.g. OpenMP flags missing) would silently run them on one."""
    before = torch.get_num_threads()
    try:
        for n in sorted({1, min(2, os.cpu_count() or 1)}):
            torch.set_num_threads(n)
            assert torch.ops.spnas.parallel_threads() == n
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_instruction_sets(capability):
    """Every compiled instruction set this processor runs gives the reference result."""
    code = (
        "import torch, spnas_ops\n"
        "print(torch.ops.spnas.cpu_capability())\n"
        "g = torch.Generator().manual_seed(0)\n"
        "for cl, s, c, h in ((False, 1, 20, 11), (True, 2, 20, 11), (True, 1, 32, 30)):\n"
        "    x = torch.randn(2, c, h, h + 2, generator=g, dtype=torch.float64)\n"
        "    x = x.to(memory_format=torch.channels_last) if cl else x\n"
        "    x.requires_grad_()\n"
        "    w = torch.randn(c, 1, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)\n"
        "    t = torch.zeros(3, dtype=torch.float64, requires_grad=True)\n"
        "    out = []\n"
        "    for b in ('reference', 'cpu'):\n"
        "        y, d = spnas_ops.masked_dwconv(x, w, t, stride=s, backend=b)\n"
        "        out.append(torch.autograd.grad((y * y).sum() + d.sum(), (x, w, t)) + (y,))\n"
        "    for a, b in zip(*out):\n"
        "        torch.testing.assert_close(a, b)\n")
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    have = proc.stdout.strip()
    if capability != "default" and have != capability:
        pytest.skip(f"this processor runs {have}, not {capability}")
    assert have == capability


def test_compiled_op_checks_its_arguments_too():
    with pytest.raises(RuntimeError, match="stride must be 1 or 2"):
        torch.ops.spnas.masked_dwconv(torch.randn(1, 6, 5, 5), torch.randn(6, 1, 5, 5),
                                      torch.zeros(3), torch.ones(3), 3, True)


def test_torch_version_mismatch_is_a_clear_import_error():
    code = ("import torch\n"
            "torch.__version__ = '0.0.0'\n"
            "import spnas_ops\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "was compiled against torch" in proc.stderr and "Rebuild it" in proc.stderr
