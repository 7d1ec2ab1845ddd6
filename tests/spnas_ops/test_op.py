"""One test matrix for every backend of the superkernel op: each backend that
`spnas_ops.available_backends()` lists (the oracle excepted; Triton in its interpreter where
there is no GPU) against the fp64 reference oracle, y, d, dx, dweight and dthresholds under
random upstream gradients. What is particular to one backend lives in its own file
(test_cpu.py, test_cuda.py, test_triton.py)."""

import pytest
import torch

import spnas_ops
from spnas_ops import reference
from superkernel_cases import (
    LOW_PRECISION, NAMES, VARIANTS, assert_matches_oracle, backends_under_test, make_case, norms,
    run_backend, running)

BACKENDS = backends_under_test()
LAYOUTS = pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
STRIDES = pytest.mark.parametrize("stride", [1, 2])


def each_backend(fast_only=False):
    """Parametrizes `backend` over the backends under test (fast_only: not interpreted)."""
    specs = [b for b in BACKENDS if not (fast_only and b.interpreted)]
    return pytest.mark.parametrize("backend", specs, ids=lambda b: b.name)


def backend_shapes(attr):
    return [pytest.param(b, s, id=f"{b.name}-{'x'.join(map(str, s))}")
            for b in BACKENDS for s in getattr(b, attr)]


@pytest.fixture(autouse=True)
def _backend_environment(request):
    """Runs each test in its backend's environment (Triton's interpreter where needed)."""
    spec = request.node.callspec.params.get("backend") if hasattr(request.node, "callspec") else None
    if spec is None:
        yield
        return
    with running(spec):
        yield


def oracle_params():
    """(backend, shape, dtype): every shape in fp32 and fp64; in the interpreter fp64 on the
    first shape only."""
    params = []
    for b in BACKENDS:
        for i, s in enumerate(b.shapes):
            for dtype, name in ((torch.float32, "fp32"), (torch.float64, "fp64")):
                if b.interpreted and dtype == torch.float64 and i > 0:
                    continue
                params.append(pytest.param(b, s, dtype,
                                           id=f"{b.name}-{'x'.join(map(str, s))}-{name}"))
    return params


def variants(backend, salt):
    """The decision variants a test item runs: all of them, or in the interpreter two,
    rotating with `salt` so that the items together still run every one."""
    if not backend.interpreted:
        return VARIANTS
    return [VARIANTS[(salt + k) % len(VARIANTS)] for k in range(2)]


@pytest.mark.parametrize("backend,shape,dtype", oracle_params())
@STRIDES
@LAYOUTS
def test_matches_oracle(backend, shape, dtype, stride, channels_last):
    seed = sum(shape) * 4 + stride * 2 + channels_last
    for i, (decisions, skippable, with_scale) in enumerate(variants(backend, seed)):
        case = make_case(shape, stride=stride, channels_last=channels_last, dtype=dtype,
                         device=backend.device, decisions=decisions, skippable=skippable,
                         with_scale=with_scale, seed=seed + i)
        assert_matches_oracle(case, backend.name)


@pytest.mark.parametrize("backend,shape", backend_shapes("low_precision_shapes"))
@STRIDES
@LAYOUTS
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["fp16", "bf16"])
def test_low_precision(backend, shape, stride, channels_last, dtype):
    salt = stride * 2 + channels_last + (dtype == torch.bfloat16) * 4
    decisions, skippable, with_scale = VARIANTS[salt % len(VARIANTS)]
    case = make_case(shape, stride=stride, channels_last=channels_last, dtype=dtype,
                     device=backend.device, decisions=decisions, skippable=skippable,
                     with_scale=with_scale, seed=salt)
    assert_matches_oracle(case, backend.name)


@each_backend()
def test_threshold_gradient_near_its_norm(backend):
    """The threshold gradients are sums over (C, 25) that cancel: t_kernel 0.2 below its norm,
    channels_last, skippable. A (C, 25) epilogue in fp32 was 1.1e-4 off fp64 here on
    (4, 48, 28, 28), where fp32 eager is ~1e-5 off."""
    shape = (2, 8, 6, 6) if backend.interpreted else (4, 48, 28, 28)
    probe = make_case(shape, seed=5)
    n5, n_hi, n_lo = norms(probe.weight)
    thresholds = torch.tensor([n5 - 0.2, 0.7 * n_hi, 0.7 * n_lo])
    case = make_case(shape, channels_last=True, device=backend.device, seed=5,
                     thresholds=thresholds)
    assert_matches_oracle(case, backend.name)


@each_backend()
@STRIDES
@LAYOUTS
def test_empty_batch(backend, stride, channels_last):
    case = make_case((0, 6, 8, 7), stride=stride, channels_last=channels_last,
                     device=backend.device)
    assert_matches_oracle(case, backend.name)
    _, _, dx, dw, dt = run_backend(case, backend.name)
    assert dt.abs().sum() > 0  # the decisions' gradient still reaches the thresholds


@each_backend()
@LAYOUTS
def test_upstream_gradient_in_the_other_layout(backend, channels_last):
    """dy arrives in a memory format other than x's (as autograd may hand it over)."""
    shape = (1, 4, 5, 6) if backend.interpreted else (2, 16, 9, 8)
    case = make_case(shape, channels_last=channels_last, device=backend.device, seed=2)
    other = torch.contiguous_format if channels_last else torch.channels_last
    case.grad_y = case.grad_y.contiguous(memory_format=other)
    assert_matches_oracle(case, backend.name)


@each_backend()
def test_decisions_select_the_candidate_op(backend):
    """d_kernel off gives exactly a 3x3 conv; d_expand off zeroes the hi half; d_keep off all."""
    def run(decisions, skippable=True):
        case = make_case((2, 8, 9, 9), dtype=torch.float64, decisions=decisions,
                         device=backend.device)
        y, d = spnas_ops.masked_dwconv(case.x, case.weight, case.thresholds,
                                       backend=backend.name, skippable=skippable)
        return case, y, d

    case, y, d = run((False, True, True))
    assert d.tolist() == [0.0, 1.0, 1.0]
    w3 = case.weight * reference.inner_mask(case.x.device, torch.float64)
    torch.testing.assert_close(y, torch.nn.functional.conv2d(case.x, w3, padding=2, groups=8))
    _, y, d = run((True, False, True))
    assert d.tolist() == [1.0, 0.0, 1.0] and y[:, 4:].abs().max() == 0 and y[:, :4].abs().max() > 0
    _, y, d = run((True, True, False))
    assert d.tolist() == [1.0, 1.0, 0.0] and y.abs().max() == 0
    _, y, d = run((True, True, False), skippable=False)
    assert d[2].item() == 1.0 and y.abs().max() > 0


@each_backend()
def test_only_decisions_used(backend):
    """A latency loss alone (gradient through d only, no dL/dy) reaches weight and thresholds."""
    case = make_case((2, 6, 5, 5), dtype=torch.float64, seed=3, device=backend.device)
    grads = []
    for name in ("reference", backend.name):
        x = case.x.clone().requires_grad_()
        w = case.weight.clone().requires_grad_()
        t = case.thresholds.clone().requires_grad_()
        _, d = spnas_ops.masked_dwconv(x, w, t, backend=name)
        (d * case.grad_d).sum().backward()
        grads.append((w.grad, t.grad, x.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0])
    torch.testing.assert_close(grads[1][1], grads[0][1])
    assert grads[1][1].abs().min() > 0
    assert grads[1][2] is None or not grads[1][2].any()


@each_backend()
def test_deterministic(backend):
    """The same bits run to run: partial sums in an order fixed by the shape, no atomics."""
    shape = (2, 4, 6, 6) if backend.interpreted else (9, 32, 12, 12)
    case = make_case(shape, channels_last=True, device=backend.device, seed=11)
    first, second = run_backend(case, backend.name), run_backend(case, backend.name)
    for name, a, b in zip(NAMES, first, second):
        assert torch.equal(a, b), name


@each_backend()
def test_opcheck(backend):
    op = (torch.ops.spnas.masked_dwconv_triton if backend.name == "triton"
          else torch.ops.spnas.masked_dwconv)
    # the interpreter cannot run opcheck's fake-tensor-versus-real comparisons quickly
    utils = (("test_schema", "test_faketensor", "test_autograd_registration")
             if backend.interpreted else None)
    for stride, channels_last in ((1, False), (2, True)):
        case = make_case((2, 6, 7, 8), stride=stride, channels_last=channels_last,
                         decisions=(True, False, True), seed=5, device=backend.device)
        args = (case.x.requires_grad_(), case.weight.requires_grad_(),
                case.thresholds.requires_grad_(), torch.ones(3, device=backend.device), stride,
                True)
        if utils is None:
            torch.library.opcheck(op.default, args)
        else:
            torch.library.opcheck(op.default, args, test_utils=utils)


@each_backend()
def test_compile_fullgraph(backend):
    """torch.compile traces the op whole (fake kernels, the autograd formula); aot_eager: the
    graph around the op is not what is tested."""
    case = make_case((2, 8, 9, 9), stride=2, device=backend.device, seed=4)

    def loss(x, w, t):
        y, d = spnas_ops.masked_dwconv(x, w, t, stride=2, backend=backend.name)
        return y.relu().mean() + d.sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got = [a.clone().requires_grad_() for a in (case.x, case.weight, case.thresholds)]
    compiled(*got).backward()
    want = [a.clone().requires_grad_() for a in (case.x, case.weight, case.thresholds)]
    loss(*want).backward()
    for a, b in zip(got, want):
        torch.testing.assert_close(a.grad, b.grad)


@each_backend(fast_only=True)
@STRIDES
def test_gradcheck_float64(backend, stride):
    """Numerical gradients of x and weight, with every threshold far from its norm: there the
    straight-through terms vanish (sigmoid'(z) underflows) and the op is a plain function of
    x and weight. Threshold gradients are straight-through by definition and are checked
    against the oracle instead."""
    g = torch.Generator().manual_seed(stride)
    x = torch.randn(2, 4, 6, 7, generator=g, dtype=torch.float64).to(backend.device)
    weight = torch.randn(4, 1, 5, 5, generator=g, dtype=torch.float64).to(backend.device)
    x.requires_grad_()
    weight.requires_grad_()
    for t in ([-1e3, -1e3, -1e3], [1e3, -1e3, -1e3]):
        t = torch.tensor(t, dtype=torch.float64, device=backend.device)

        def fn(x, w, t=t):
            return spnas_ops.masked_dwconv(x, w, t, stride=stride, backend=backend.name)[0]
        assert torch.autograd.gradcheck(fn, (x, weight))


@each_backend()
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
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_input_names_the_argument(backend, kwargs, message):
    args = dict(x=torch.randn(1, 6, 5, 5), weight=torch.randn(6, 1, 5, 5),
                thresholds=torch.zeros(3), backend=backend.name)
    args.update(kwargs)
    for name in ("x", "weight", "thresholds", "scale"):
        if isinstance(args.get(name), torch.Tensor):
            args[name] = args[name].to(backend.device)
    x, weight, thresholds = args.pop("x"), args.pop("weight"), args.pop("thresholds")
    with pytest.raises((ValueError, TypeError, RuntimeError)) as info:
        spnas_ops.masked_dwconv(x, weight, thresholds, **args)
    assert message in str(info.value)
