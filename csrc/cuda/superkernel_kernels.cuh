// The (C, 25) part of the CUDA op: csrc/superkernel.h run by one block of kSmallThreads
// threads, which split the (C, 25) values among them and reduce in shared memory in a fixed
// order (the same bits on every run). One block is enough: the part is O(C * 25) and what
// matters is that a call launches few kernels and never waits for the host.
#pragma once

#include <cstdint>

#include "../superkernel.h"

namespace spnas::cuda {

constexpr int kSmallThreads = 512;  // threads of the one-block (C, 25) kernels

// The Walk of superkernel.h for one block: thread j takes elements j, j + kSmallThreads, ...
// and a sum is a fixed-order tree over the threads' partial sums.
struct BlockWalk {
  int64_t channels;
  double* smem;  // kSmallThreads values of shared memory

  template <typename F>
  __device__ double sum(F f) {
    double v = 0;
    for (int64_t i = threadIdx.x; i < channels * kTaps; i += kSmallThreads)
      v += f(i / kTaps, static_cast<int>(i % kTaps));
    smem[threadIdx.x] = v;
    __syncthreads();
    for (int half = kSmallThreads / 2; half > 0; half /= 2) {
      if (threadIdx.x < half) smem[threadIdx.x] += smem[threadIdx.x + half];
      __syncthreads();
    }
    const double total = smem[0];
    __syncthreads();
    return total;
  }

  template <typename F>
  __device__ void each(F f) {
    for (int64_t i = threadIdx.x; i < channels * kTaps; i += kSmallThreads)
      f(i / kTaps, static_cast<int>(i % kTaps));
  }
};

// Before the convolution: the decisions and w_eff, and the state the epilogue reads back.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kSmallThreads)
    superkernel_prepare(const scalar_t* __restrict__ weight, const scalar_t* __restrict__ t,
                        const scalar_t* __restrict__ r, int64_t channels, bool skippable,
                        acc_t* __restrict__ w_eff, scalar_t* __restrict__ decisions,
                        SuperkernelState* __restrict__ state) {
  __shared__ double smem[kSmallThreads];
  BlockWalk walk{channels, smem};
  SuperkernelState s{};
  s.channels = channels;
  s.skippable = skippable;
  for (int k = 0; k < 3; ++k) {
    s.t[k] = static_cast<double>(t[k]);
    s.r[k] = static_cast<double>(r[k]);
  }
  decide(weight, s, walk);
  effective_weight(weight, s, w_eff, walk);
  if (threadIdx.x == 0) {
    for (int k = 0; k < 3; ++k) decisions[k] = narrow<scalar_t>(s.d[k]);
    *state = s;
  }
}

// After the backward's convolution: g_eff = dL/dw_eff (C, 25) and g_d = dL/dd (3) ->
// dL/dweight and dL/dthresholds.
template <typename scalar_t>
__global__ void __launch_bounds__(kSmallThreads)
    superkernel_epilogue(const double* __restrict__ g_eff, const scalar_t* __restrict__ weight,
                         const SuperkernelState* __restrict__ state,
                         const scalar_t* __restrict__ g_d, scalar_t* __restrict__ g_weight,
                         scalar_t* __restrict__ g_t) {
  __shared__ double smem[kSmallThreads];
  const SuperkernelState s = *state;
  BlockWalk walk{s.channels, smem};
  const double gd[3] = {static_cast<double>(g_d[0]), static_cast<double>(g_d[1]),
                        static_cast<double>(g_d[2])};
  superkernel_backward(
      weight, s, g_eff, gd, g_weight,
      [&](int k, double v) {
        if (threadIdx.x == 0) g_t[k] = narrow<scalar_t>(v);
      },
      walk);
}

}  // namespace spnas::cuda
