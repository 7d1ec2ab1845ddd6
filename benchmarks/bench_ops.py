"""pytest-benchmark microbenchmarks of the superkernel op (run: pytest benchmarks/bench_ops.py
--benchmark-only; the project's pytest options skip benchmarks otherwise). Forward and forward+backward, fp32, NCHW and channels_last, on the five
supernet stage shapes at batch 32: the fused op, the reference oracle and plain depthwise
F.conv2d with a fixed 5x5 weight. For the ratio table use benchmarks/op_table.py, which
interleaves the contenders in one run. As there, freed memory stays mapped (keep_heap_mapped)
so that the rounds time the kernels, not page faults."""

import pytest

from spnas.bench import (CONTENDERS, STAGE_SHAPES, default_backend, keep_heap_mapped,
                         make_inputs, step)

keep_heap_mapped()


@pytest.mark.parametrize("shape", STAGE_SHAPES, ids=lambda s: "N{}C{}H{}s{}".format(*s))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
def test_masked_dwconv(benchmark, shape, channels_last, contender, backward):
    x, weight, thresholds, stride, grad_y = make_inputs(shape, channels_last)
    benchmark.group = f"{'fwd+bwd' if backward else 'fwd'} {shape} " \
                      f"{'channels_last' if channels_last else 'nchw'}"
    benchmark.pedantic(step, args=(contender, x, weight, thresholds, stride, backward,
                                   default_backend(), grad_y), rounds=5, warmup_rounds=1)
