"""The compiled CPU superkernel op against the reference oracle (outputs and every gradient)."""

import os
import subprocess
import sys

import pytest
import torch

import spnas_ops
from spnas_ops import reference
from superkernel_cases import NAMES, assert_low_precision_error, make_case, run_backend

pytestmark = pytest.mark.skipif("cpu" not in spnas_ops.available_backends(),
                                reason="spnas_ops was built without its CPU kernels")

SHAPES = [  # (N, C, H, W): odd, tiny and non-square planes, 1x1 included
    (2, 6, 7, 9),
    (1, 4, 1, 1),
    (3, 8, 2, 3),
    (2, 10, 13, 5),
    (1, 6, 20, 37),
    (2, 34, 6, 6),  # more channels than one channels_last block
    # whole 16-channel blocks: the NCHW fp32 transposes (row by row for widths that are a
    # multiple of 16, along the flattened plane otherwise) and the channels_last fast paths
    (1, 16, 5, 32),
    (2, 48, 11, 19),
    (1, 32, 45, 61),  # a plane too large to pack whole: channels_last through row rings
    (1, 16, 260, 6),  # the same, many runs of rows, rows shorter than a register block
    (2, 48, 50, 45),  # the same, two samples, three blocks, streamed channels_last output
    (2, 144, 10, 7),  # channels_last written by streaming stores (pixels >= 32 values apart)
    (1, 64, 8, 15),  # the same in fp64; rows of whole register blocks and a block computed again
    # batches of 8 or more: channels_last small planes packed a whole sample at a time
    (8, 32, 9, 11),
    (9, 16, 2, 3),
]


def assert_within(got, want, rtol):
    """The issue's bar: max error <= rtol x the largest magnitude, for every output/gradient."""
    for name, a, b in zip(NAMES, got, want):
        assert a.shape == b.shape, f"{name}: shape {tuple(a.shape)} != {tuple(b.shape)}"
        scale = max(b.abs().max().item(), 1e-30) if b.numel() else 0.0
        err = (a.double() - b.double()).abs().max().item() if b.numel() else 0.0
        assert err <= rtol * scale, f"{name}: max error {err:.3g} > {rtol} x {scale:.3g}"


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_matches_reference(shape, stride, channels_last, dtype):
    rtol = 1e-4 if dtype == torch.float32 else 1e-10
    seed = hash((shape, stride, channels_last)) % 1000
    # Every decision on and off in turn, skippable or not, with and without indicator dropout.
    for i, (decisions, skippable, with_scale) in enumerate([
            ((True, True, True), True, False),
            ((False, True, True), True, True),
            ((True, False, True), True, False),
            ((True, True, False), True, False),
            ((False, False, True), False, True),
            ((True, True, False), False, False)]):
        case = make_case(shape, stride=stride, channels_last=channels_last, dtype=dtype,
                         decisions=decisions, skippable=skippable, with_scale=with_scale,
                         seed=seed + i)
        want = run_backend(case, "reference")
        got = run_backend(case, "cpu")
        assert got[0].is_contiguous(memory_format=torch.channels_last if channels_last
                                    else torch.contiguous_format)
        assert torch.equal(got[1], want[1]), (got[1], want[1])
        assert_within(got, want, rtol)


def test_decisions_select_the_candidate_op():
    """d_kernel off gives exactly a 3x3 conv; d_expand off zeroes the hi half; d_keep off all."""
    def run(decisions, skippable=True):
        case = make_case((2, 8, 9, 9), dtype=torch.float64, decisions=decisions)
        y, d = spnas_ops.masked_dwconv(case.x, case.weight, case.thresholds, backend="cpu",
                                       skippable=skippable)
        return case, y, d

    case, y, d = run((False, True, True))
    assert d.tolist() == [0.0, 1.0, 1.0]
    w3 = case.weight * reference.inner_mask(dtype=torch.float64)
    torch.testing.assert_close(y, torch.nn.functional.conv2d(case.x, w3, padding=2, groups=8))
    _, y, d = run((True, False, True))
    assert d.tolist() == [1.0, 0.0, 1.0] and y[:, 4:].abs().max() == 0 and y[:, :4].abs().max() > 0
    _, y, d = run((True, True, False))
    assert d.tolist() == [1.0, 1.0, 0.0] and y.abs().max() == 0
    _, y, d = run((True, True, False), skippable=False)
    assert d[2].item() == 1.0 and y.abs().max() > 0


def test_only_decisions_used():
    """A latency loss alone (gradient through d only) reaches weight and thresholds."""
    case = make_case((2, 6, 5, 5), dtype=torch.float64, seed=3)
    grads = []
    for backend in ("reference", "cpu"):
        w = case.weight.clone().requires_grad_()
        t = case.thresholds.clone().requires_grad_()
        _, d = spnas_ops.masked_dwconv(case.x, w, t, backend=backend)
        (d * case.grad_d).sum().backward()
        grads.append((w.grad, t.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0])
    torch.testing.assert_close(grads[1][1], grads[0][1])
    assert grads[1][1].abs().min() > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_error_within_twice_pytorch(dtype):
    assert_low_precision_error(make_case((2, 16, 12, 12), channels_last=True, dtype=dtype,
                                         seed=7), "cpu")


def test_empty_batch():
    x = torch.zeros(0, 6, 8, 8, requires_grad=True)
    weight = torch.randn(6, 1, 5, 5, requires_grad=True)
    t = torch.zeros(3, requires_grad=True)
    y, d = spnas_ops.masked_dwconv(x, weight, t, stride=2, backend="cpu")
    assert y.shape == (0, 6, 4, 4)
    (y.sum() + d.sum()).backward()
    assert x.grad.shape == x.shape and t.grad.abs().sum() > 0


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


def test_opcheck():
    for stride, channels_last in ((1, False), (2, True)):
        case = make_case((2, 6, 7, 8), stride=stride, channels_last=channels_last,
                         decisions=(True, False, True), seed=5)
        args = (case.x.requires_grad_(), case.weight.requires_grad_(),
                case.thresholds.requires_grad_(), torch.ones(3), stride, True)
        torch.library.opcheck(torch.ops.spnas.masked_dwconv.default, args)


@pytest.mark.parametrize("stride", [1, 2])
def test_gradcheck_float64(stride):
    """Numerical gradients of x and weight, with every threshold far from its norm: there the
    straight-through terms vanish (sigmoid'(z) underflows) and the op is a plain function of
    x and weight. Threshold gradients are straight-through by definition and are checked
    against the oracle above instead."""
    g = torch.Generator().manual_seed(stride)
    x = torch.randn(2, 4, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 1, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    for t in ([-1e3, -1e3, -1e3], [1e3, -1e3, -1e3]):
        t = torch.tensor(t, dtype=torch.float64)
        fn = lambda x, w: spnas_ops.masked_dwconv(x, w, t, stride=stride, backend="cpu")[0]  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, weight))


def test_torch_compile_fullgraph():
    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(8, 1, 5, 5))
            self.thresholds = torch.nn.Parameter(torch.zeros(3))

        def forward(self, x):
            y, d = spnas_ops.masked_dwconv(x, self.weight, self.thresholds, stride=2, backend="cpu")
            return y.relu().mean() + d.sum()

    torch.manual_seed(0)
    layer = Layer()
    x = torch.randn(2, 8, 9, 9)
    compiled = torch.compile(layer, fullgraph=True)
    want = layer(x)
    want.backward()
    grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    got = compiled(x)
    got.backward()
    torch.testing.assert_close(got, want)
    for p, g in zip(layer.parameters(), grads):
        torch.testing.assert_close(p.grad, g)


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


@pytest.mark.parametrize("kwargs, message", [
    (dict(x=torch.randn(6, 5, 5)), "x must be 4-D"),
    (dict(x=torch.randn(1, 5, 5, 5), weight=torch.randn(5, 1, 5, 5)), "even number of channels"),
    (dict(weight=torch.randn(6, 1, 3, 3)), "weight must have shape (C, 1, 5, 5)"),
    (dict(weight=torch.randn(4, 1, 5, 5)), "weight has 4 channels but x has C=6"),
    (dict(thresholds=torch.zeros(2)), "thresholds must have shape (3,)"),
    (dict(thresholds=torch.zeros(3, dtype=torch.float64)), "thresholds dtype"),
    (dict(scale=torch.ones(4)), "scale must have shape (3,)"),
    (dict(stride=3), "stride must be 1 or 2"),
    (dict(x=torch.randn(1, 6, 5, 5).int()), "x must be float32"),
    (dict(backend="gpu"), "backend must be one of"),
    (dict(thresholds=[0.0, 0.0, 0.0]), "thresholds must be a torch.Tensor"),
])
def test_bad_input_names_the_argument(kwargs, message):
    args = dict(x=torch.randn(1, 6, 5, 5), weight=torch.randn(6, 1, 5, 5),
                thresholds=torch.zeros(3), backend="cpu")
    args.update(kwargs)
    x, weight, thresholds = args.pop("x"), args.pop("weight"), args.pop("thresholds")
    with pytest.raises((ValueError, TypeError, RuntimeError)) as info:
        spnas_ops.masked_dwconv(x, weight, thresholds, **args)
    assert message in str(info.value)


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
