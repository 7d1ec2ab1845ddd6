// The activation-sized kernels of the CUDA op: the convolution, its one-pass backward and the
// fixed-order sum of the backward's partial weight gradients.
//
// Work layout. A thread keeps one channel, so its 25 effective weights sit in registers, and
// computes a strip of kStrip outputs along one spatial axis ("A"), reading each input row of
// the strip's window once into registers. The other spatial axis is "B". Neighbouring threads
// take neighbouring addresses: for channels_last the channels (32 a warp; A = W), for NCHW the
// output columns (A = H, B = W: a strip runs down a column). A block is channel_lanes x
// pixel_lanes = 256 threads; grid.x runs over channel groups, grid.y over fixed chunks of each
// channel's strips ("items"), so the summation order of the weight gradient depends only on
// the problem's shape.
//
// Backward ownership: output pixel (a, b) also owns the input pixels (a*S + u, b*S + v),
// 0 <= u, v < S; its thread computes dx there as a gather over the taps whose parity matches,
// so every dx element is written exactly once.
#pragma once

#include <cstdint>

#include "../superkernel.h"

namespace spnas::cuda {

constexpr int kThreads = 256;  // threads of a convolution block
constexpr int kStrip = 4;      // outputs a thread computes along the strip axis A

// dL/dw_eff[i] = sum over the blocks' rows of partial sums, in row order.
template <typename acc_t>
__global__ void sum_partials(const acc_t* __restrict__ partial, int64_t rows, int64_t n,
                             double* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  double s = 0;
  for (int64_t row = 0; row < rows; ++row) s += static_cast<double>(partial[row * n + i]);
  out[i] = s;
}



// Sizes along the strip axis A and the cross axis B, element strides of x/dx and y/dy, and the
// numbering of a channel's items: item = (n * d1 + i1) * d0 + i0.
struct Geometry {
  int C, A_in, B_in, A_out, B_out;
  int64_t x_n, x_c;
  int x_a, x_b;
  int64_t y_n, y_c;
  int y_a, y_b;
  uint32_t d0, d1, items, chunk;
};

// The tap (kh * 5 + kw) at offset ka along A and kb along B.
template <bool ChannelsLast>
__device__ __forceinline__ constexpr int tap(int ka, int kb) {
  return ChannelsLast ? kb * 5 + ka : ka * 5 + kb;  // channels_last: A = W; NCHW: A = H
}

struct Item {
  int n, a0, b;  // sample, first output of the strip along A, output index along B
};

template <bool ChannelsLast>
__device__ __forceinline__ Item item_at(uint32_t item, const Geometry& g) {
  const uint32_t i0 = item % g.d0, rest = item / g.d0;
  const uint32_t i1 = rest % g.d1, n = rest / g.d1;
  // channels_last: i0 = strip along W, i1 = output row; NCHW: i0 = output column, i1 = strip.
  return ChannelsLast ? Item{static_cast<int>(n), static_cast<int>(i0) * kStrip, static_cast<int>(i1)}
                      : Item{static_cast<int>(n), static_cast<int>(i1) * kStrip, static_cast<int>(i0)};
}

// acc[j] += sum over the window of output (a0 + j, b) of f(tap, input value): the input rows
// along A are read once each into registers.
template <bool ChannelsLast, int S, typename scalar_t, typename acc_t, typename F>
__device__ __forceinline__ void over_window(const scalar_t* xc, const Item& it, const Geometry& g,
                                            F f) {
  constexpr int kSpan = (kStrip - 1) * S + 5;
#pragma unroll
  for (int kb = 0; kb < 5; ++kb) {
    const int ib = it.b * S + kb - 2;
    if (ib < 0 || ib >= g.B_in) continue;
    const scalar_t* row = xc + ib * g.x_b;
    acc_t v[kSpan];
#pragma unroll
    for (int i = 0; i < kSpan; ++i) {
      const int ia = it.a0 * S - 2 + i;
      v[i] = (ia >= 0 && ia < g.A_in) ? static_cast<acc_t>(row[ia * g.x_a]) : acc_t(0);
    }
#pragma unroll
    for (int j = 0; j < kStrip; ++j)
#pragma unroll
      for (int ka = 0; ka < 5; ++ka) f(j, tap<ChannelsLast>(ka, kb), v[j * S + ka]);
  }
}

template <bool ChannelsLast, int S, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    superkernel_forward(const scalar_t* __restrict__ x, const acc_t* __restrict__ w_eff,
                        scalar_t* __restrict__ y, Geometry g) {
  constexpr int kChannelLanes = ChannelsLast ? 32 : 1, kPixelLanes = kThreads / kChannelLanes;
  const int lane_c = threadIdx.x % kChannelLanes, lane_p = threadIdx.x / kChannelLanes;
  const int c = blockIdx.x * kChannelLanes + lane_c;
  if (c >= g.C) return;
  acc_t w[kTaps];
#pragma unroll
  for (int k = 0; k < kTaps; ++k) w[k] = w_eff[c * kTaps + k];
  const uint32_t end = min(g.items, (blockIdx.y + 1) * g.chunk);
  for (uint32_t item = blockIdx.y * g.chunk + lane_p; item < end; item += kPixelLanes) {
    const Item it = item_at<ChannelsLast>(item, g);
    acc_t acc[kStrip];
#pragma unroll
    for (int j = 0; j < kStrip; ++j) acc[j] = 0;
    over_window<ChannelsLast, S, scalar_t, acc_t>(
        x + it.n * g.x_n + c * g.x_c, it, g,
        [&](int j, int k, acc_t v) { acc[j] += v * w[k]; });
    scalar_t* yc = y + it.n * g.y_n + c * g.y_c + it.b * g.y_b;
#pragma unroll
    for (int j = 0; j < kStrip; ++j)
      if (it.a0 + j < g.A_out) yc[(it.a0 + j) * g.y_a] = static_cast<scalar_t>(acc[j]);
  }
}

// dx at the input pixels the strip owns: (a0 + j)*S + u' along A for u = j*S + u' < kStrip*S,
// b*S + v along B. dy offsets that reach them: da = (u + 2 - ka) / S, db = (v + 2 - kb) / S.
template <bool ChannelsLast, int S, typename scalar_t, typename acc_t>
__device__ __forceinline__ void owned_input_gradients(const scalar_t* dyc, scalar_t* dxc,
                                                      const acc_t (&w)[kTaps], const Item& it,
                                                      const Geometry& g) {
  constexpr int kDaMin = -2 / S, kDaMax = (kStrip * S + 1) / S;  // S=1: -2..5; S=2: -1..4
  constexpr int kDbMin = -2 / S, kDbMax = (S + 1) / S;            // S=1: -2..2; S=2: -1..1
  constexpr int kDa = kDaMax - kDaMin + 1;
  acc_t dx[S][kStrip * S];
#pragma unroll
  for (int v = 0; v < S; ++v)
#pragma unroll
    for (int u = 0; u < kStrip * S; ++u) dx[v][u] = 0;
#pragma unroll
  for (int db = kDbMin; db <= kDbMax; ++db) {
    const int gb = it.b + db;
    if (gb < 0 || gb >= g.B_out) continue;
    acc_t d[kDa];
#pragma unroll
    for (int i = 0; i < kDa; ++i) {
      const int ga = it.a0 + kDaMin + i;
      d[i] = (ga >= 0 && ga < g.A_out) ? static_cast<acc_t>(dyc[gb * g.y_b + ga * g.y_a])
                                       : acc_t(0);
    }
#pragma unroll
    for (int v = 0; v < S; ++v)
#pragma unroll
      for (int kb = 0; kb < 5; ++kb) {
        if (v + 2 - kb != db * S) continue;  // compile-time after unrolling
#pragma unroll
        for (int u = 0; u < kStrip * S; ++u)
#pragma unroll
          for (int ka = 0; ka < 5; ++ka) {
            if ((u + 2 - ka + 2 * S) % S != 0) continue;
            const int da = (u + 2 - ka) / S;  // exact: S divides u + 2 - ka
            if (da < kDaMin || da > kDaMax) continue;
            dx[v][u] += d[da - kDaMin] * w[tap<ChannelsLast>(ka, kb)];
          }
      }
  }
#pragma unroll
  for (int v = 0; v < S; ++v) {
    const int ib = it.b * S + v;
    if (ib >= g.B_in) continue;
#pragma unroll
    for (int u = 0; u < kStrip * S; ++u) {
      const int ia = it.a0 * S + u;
      if (ia < g.A_in) dxc[ib * g.x_b + ia * g.x_a] = static_cast<scalar_t>(dx[v][u]);
    }
  }
}

template <bool ChannelsLast, int S, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    superkernel_backward(const scalar_t* __restrict__ x, const scalar_t* __restrict__ dy,
                         const acc_t* __restrict__ w_eff, scalar_t* __restrict__ dx,
                         acc_t* __restrict__ partial, Geometry g) {
  constexpr int kChannelLanes = ChannelsLast ? 32 : 1, kPixelLanes = kThreads / kChannelLanes;
  __shared__ acc_t red[kThreads];
  const int lane_c = threadIdx.x % kChannelLanes, lane_p = threadIdx.x / kChannelLanes;
  const int c = blockIdx.x * kChannelLanes + lane_c;
  const bool active = c < g.C;
  acc_t w[kTaps], gw[kTaps];
#pragma unroll
  for (int k = 0; k < kTaps; ++k) {
    w[k] = active ? w_eff[c * kTaps + k] : acc_t(0);
    gw[k] = 0;
  }
  if (active) {
    const uint32_t end = min(g.items, (blockIdx.y + 1) * g.chunk);
    for (uint32_t item = blockIdx.y * g.chunk + lane_p; item < end; item += kPixelLanes) {
      const Item it = item_at<ChannelsLast>(item, g);
      const scalar_t* dyc = dy + it.n * g.y_n + c * g.y_c;
      // dL/dw_eff[k] += dy * (x at tap k): the forward's window, weighted by the strip's dy.
      acc_t d[kStrip];
#pragma unroll
      for (int j = 0; j < kStrip; ++j)
        d[j] = it.a0 + j < g.A_out ? static_cast<acc_t>(dyc[it.b * g.y_b + (it.a0 + j) * g.y_a])
                                   : acc_t(0);
      over_window<ChannelsLast, S, scalar_t, acc_t>(
          x + it.n * g.x_n + c * g.x_c, it, g,
          [&](int j, int k, acc_t v) { gw[k] += d[j] * v; });
      owned_input_gradients<ChannelsLast, S>(dyc, dx + it.n * g.x_n + c * g.x_c, w, it, g);
    }
  }
  // This block's row of partial sums: a fixed-order tree over the pixel lanes of each channel.
  acc_t* row = partial + static_cast<int64_t>(blockIdx.y) * g.C * kTaps;
  for (int k = 0; k < kTaps; ++k) {
    red[threadIdx.x] = gw[k];
    __syncthreads();
    for (int half = kPixelLanes / 2; half > 0; half /= 2) {
      if (lane_p < half) red[threadIdx.x] += red[threadIdx.x + half * kChannelLanes];
      __syncthreads();
    }
    if (lane_p == 0 && active) row[c * kTaps + k] = red[threadIdx.x];
    __syncthreads();
  }
}

}  // namespace spnas::cuda
