// CUDA implementation of the spnas ops (schema in csrc/masked_dwconv.cpp).
//
// A call never synchronises with the host and launches few kernels (forward 2, backward 4):
//
//   superkernel_prepare   one block: the (C, 25) part of csrc/superkernel.h's Superkernel in
//                         double (norms, decisions, w_eff), written to the device.
//   superkernel_forward   y = depthwise_conv2d(x, w_eff, stride, padding=2).
//   superkernel_backward  one pass over x and dy: dx written once, and per block one row of
//                         partial sums of dL/dw_eff.
//   sum_partials          a fixed-order sum over those rows (deterministic: no float atomics).
//   superkernel_epilogue  one block: Superkernel::backward in double, dL/dw_eff -> dL/dweight
//                         and dL/dthresholds.
//
// The first GPU measurements (docs/gpu.md) showed the earlier version, which ran the (C, 25)
// part as some forty small ATen ops and indexed every pixel with 64-bit divisions, slower than
// the eager PyTorch reference on every shape; this layout is the answer to both.
//
// Work layout of the convolutions. A thread keeps one channel, so its 25 effective weights
// sit in registers, and computes a strip of kStrip outputs along one spatial axis ("A"),
// reading each input row of the strip's window once into registers. The other spatial axis is
// "B". Neighbouring threads take neighbouring addresses: for channels_last the channels (32 a
// warp; A = W), for NCHW the output columns (A = H, B = W: a strip runs down a column). A block
// is channel_lanes x pixel_lanes = 256 threads; grid.x runs over channel groups, grid.y over
// fixed chunks of each channel's strips ("items"), so the summation order of the weight
// gradient depends only on the problem's shape.
//
// Backward ownership: output pixel (a, b) also owns the input pixels (a*S + u, b*S + v),
// 0 <= u, v < S; its thread computes dx there as a gather over the taps whose parity matches,
// so every dx element is written exactly once.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <type_traits>

#include "../masked_dwconv.h"
#include "../superkernel.h"

namespace spnas::cuda {
namespace {

constexpr int kThreads = 256;      // threads of a convolution block
constexpr int kSmallThreads = 512;  // threads of the one-block (C, 25) kernels
constexpr int kStrip = 4;          // outputs a thread computes along the strip axis A
// Blocks to aim for: enough to fill any current GPU several times over, fixed so that the
// chunking (and so the summation order) depends only on the problem's shape.
constexpr int64_t kTargetBlocks = 2048;

// --- the (C, 25) part ------------------------------------------------------------------------

__host__ __device__ constexpr bool inner_tap(int k) {
  return k / 5 >= 1 && k / 5 <= 3 && k % 5 >= 1 && k % 5 <= 3;
}

__device__ double sigmoid_grad(double z) {
  const double s = 1.0 / (1.0 + exp(-z));
  return s * (1.0 - s);
}

// Sum of v over the block (kSmallThreads threads), a fixed-order tree; every thread gets it.
__device__ double block_sum(double v, double* smem) {
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

template <typename scalar_t>
__device__ scalar_t to_scalar(double v) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    return v;
  } else {
    return static_cast<scalar_t>(static_cast<float>(v));
  }
}

// What the epilogue needs of the forward quantities (Superkernel's norm and d).
enum State { kNorm0, kNorm1, kNorm2, kD0, kD1, kD2, kStateSize };

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kSmallThreads)
    superkernel_prepare(const scalar_t* __restrict__ weight, const scalar_t* __restrict__ t,
                        const scalar_t* __restrict__ r, int64_t channels, bool skippable,
                        acc_t* __restrict__ w_eff, scalar_t* __restrict__ decisions,
                        double* __restrict__ state) {
  __shared__ double smem[kSmallThreads];
  const int64_t n = channels * kTaps, half = channels / 2;
  double outer = 0;
  for (int64_t i = threadIdx.x; i < n; i += kSmallThreads) {
    const double w = static_cast<double>(weight[i]);
    if (!inner_tap(static_cast<int>(i % kTaps))) outer += w * w;
  }
  const double norm0 = sqrt(block_sum(outer, smem));
  const double d0 = (norm0 - static_cast<double>(t[0]) >= 0 ? 1.0 : 0.0) * static_cast<double>(r[0]);
  double hi = 0, lo = 0;
  for (int64_t i = threadIdx.x; i < n; i += kSmallThreads) {
    const double w1 = static_cast<double>(weight[i]) * (inner_tap(static_cast<int>(i % kTaps)) ? 1.0 : d0);
    (i / kTaps < half ? lo : hi) += w1 * w1;
  }
  const double norm1 = sqrt(block_sum(hi, smem)), norm2 = sqrt(block_sum(lo, smem));
  const double d1 = (norm1 - static_cast<double>(t[1]) >= 0 ? 1.0 : 0.0) * static_cast<double>(r[1]);
  const double d2 =
      skippable ? (norm2 - static_cast<double>(t[2]) >= 0 ? 1.0 : 0.0) * static_cast<double>(r[2])
                : 1.0;
  for (int64_t i = threadIdx.x; i < n; i += kSmallThreads) {
    const double w1 = static_cast<double>(weight[i]) * (inner_tap(static_cast<int>(i % kTaps)) ? 1.0 : d0);
    const double gate = i / kTaps < half ? d2 : d2 * d1;
    w_eff[i] = static_cast<acc_t>(gate * w1);
  }
  if (threadIdx.x == 0) {
    decisions[0] = to_scalar<scalar_t>(d0);
    decisions[1] = to_scalar<scalar_t>(d1);
    decisions[2] = to_scalar<scalar_t>(d2);
    const double s[kStateSize] = {norm0, norm1, norm2, d0, d1, d2};
    for (int k = 0; k < kStateSize; ++k) state[k] = s[k];
  }
}

// Superkernel::backward: g_eff = dL/dw_eff (C, 25) and g_d = dL/dd (3) -> dL/dweight, dL/dt.
template <typename scalar_t>
__global__ void __launch_bounds__(kSmallThreads)
    superkernel_epilogue(const double* __restrict__ g_eff, const scalar_t* __restrict__ weight,
                         const scalar_t* __restrict__ t, const scalar_t* __restrict__ r,
                         const double* __restrict__ state, const scalar_t* __restrict__ g_d,
                         int64_t channels, bool skippable, scalar_t* __restrict__ g_weight,
                         scalar_t* __restrict__ g_t) {
  __shared__ double smem[kSmallThreads];
  const int64_t n = channels * kTaps, half = channels / 2;
  const double norm0 = state[kNorm0], norm1 = state[kNorm1], norm2 = state[kNorm2];
  const double d0 = state[kD0], d1 = state[kD1], d2 = state[kD2];
  auto w1_at = [&](int64_t i) {
    return static_cast<double>(weight[i]) * (inner_tap(static_cast<int>(i % kTaps)) ? 1.0 : d0);
  };
  double part_lo = 0, part_hi = 0;  // dL/dw_eff . w1 over the lo and hi channels
  for (int64_t i = threadIdx.x; i < n; i += kSmallThreads)
    (i / kTaps < half ? part_lo : part_hi) += g_eff[i] * w1_at(i);
  const double sum_lo = block_sum(part_lo, smem), sum_hi = block_sum(part_hi, smem);
  const double gd0 = static_cast<double>(g_d[0]), gd1 = static_cast<double>(g_d[1]),
               gd2 = static_cast<double>(g_d[2]);
  const double t0 = static_cast<double>(t[0]), t1 = static_cast<double>(t[1]),
               t2 = static_cast<double>(t[2]);
  const double g_z_keep =
      skippable ? (gd2 + sum_lo + d1 * sum_hi) * static_cast<double>(r[2]) * sigmoid_grad(norm2 - t2)
                : 0.0;
  const double g_z_expand = (gd1 + d2 * sum_hi) * static_cast<double>(r[1]) * sigmoid_grad(norm1 - t1);
  const double to_lo = norm2 > 0 ? g_z_keep / norm2 : 0.0;
  const double to_hi = norm1 > 0 ? g_z_expand / norm1 : 0.0;
  // dL/dw1: through w_eff = gate * w1 and through the two norms.
  auto g_w1_at = [&](int64_t i) {
    const bool lo = i / kTaps < half;
    return g_eff[i] * (lo ? d2 : d2 * d1) + (lo ? to_lo : to_hi) * w1_at(i);
  };
  double part_kernel = 0;
  for (int64_t i = threadIdx.x; i < n; i += kSmallThreads)
    if (!inner_tap(static_cast<int>(i % kTaps)))
      part_kernel += g_w1_at(i) * static_cast<double>(weight[i]);
  const double g_kernel = gd0 + block_sum(part_kernel, smem);
  const double g_z = g_kernel * static_cast<double>(r[0]) * sigmoid_grad(norm0 - t0);
  const double to_outer = norm0 > 0 ? g_z / norm0 : 0.0;
  for (int64_t i = threadIdx.x; i < n; i += kSmallThreads) {
    const double g = g_w1_at(i);
    g_weight[i] = to_scalar<scalar_t>(inner_tap(static_cast<int>(i % kTaps))
                                          ? g
                                          : g * d0 + to_outer * static_cast<double>(weight[i]));
  }
  if (threadIdx.x == 0) {
    g_t[0] = to_scalar<scalar_t>(-g_z);
    g_t[1] = to_scalar<scalar_t>(-g_z_expand);
    g_t[2] = to_scalar<scalar_t>(skippable ? -g_z_keep : 0.0);
  }
}

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

// --- the convolutions --------------------------------------------------------------------------

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

// --- host side ---------------------------------------------------------------------------------

at::ScalarType accumulation_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

struct Launch {
  bool channels_last;
  Geometry g;
  dim3 grid;
};

// x and y in the same memory format (channels_last or NCHW-contiguous).
Launch plan(const at::Tensor& x, const at::Tensor& y, int64_t stride) {
  const bool cl = output_memory_format(x) == at::MemoryFormat::ChannelsLast;
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = y.size(2), Wo = y.size(3);
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  TORCH_CHECK(C * H * W <= kMax, "masked_dwconv (cuda): one sample of x has ", C * H * W,
              " elements; at most 2^31 - 1 are supported");
  Geometry g{};
  g.C = static_cast<int>(C);
  // channels_last: A = W, B = H; NCHW: A = H, B = W.
  const int a_dim = cl ? 3 : 2, b_dim = cl ? 2 : 3;
  g.A_in = static_cast<int>(x.size(a_dim));
  g.B_in = static_cast<int>(x.size(b_dim));
  g.A_out = static_cast<int>(y.size(a_dim));
  g.B_out = static_cast<int>(y.size(b_dim));
  g.x_n = x.stride(0);
  g.x_c = x.stride(1);
  g.x_a = static_cast<int>(x.stride(a_dim));
  g.x_b = static_cast<int>(x.stride(b_dim));
  g.y_n = y.stride(0);
  g.y_c = y.stride(1);
  g.y_a = static_cast<int>(y.stride(a_dim));
  g.y_b = static_cast<int>(y.stride(b_dim));
  const int64_t strips = (g.A_out + kStrip - 1) / kStrip;
  g.d0 = static_cast<uint32_t>(cl ? strips : Wo);
  g.d1 = static_cast<uint32_t>(cl ? Ho : strips);
  const int64_t items = N * strips * g.B_out;
  TORCH_CHECK(items <= kMax, "masked_dwconv (cuda): too many output pixels per channel (", N * Ho * Wo, ")");
  g.items = static_cast<uint32_t>(items);
  const int channel_lanes = cl ? 32 : 1, pixel_lanes = kThreads / channel_lanes;
  const int64_t channel_blocks = (C + channel_lanes - 1) / channel_lanes;
  const int64_t max_chunks = std::max<int64_t>(1, (items + pixel_lanes - 1) / pixel_lanes);
  int64_t count = std::max<int64_t>(1, kTargetBlocks / std::max<int64_t>(channel_blocks, 1));
  count = std::min<int64_t>({count, max_chunks, 65535});
  const int64_t chunk = std::max<int64_t>(1, (items + count - 1) / count);
  g.chunk = static_cast<uint32_t>(chunk);
  const int64_t chunks = items > 0 ? (items + chunk - 1) / chunk : 0;
  return {cl, g, dim3(static_cast<unsigned>(channel_blocks), static_cast<unsigned>(chunks))};
}

// Runs f(std::integral_constant<bool, ChannelsLast>, std::integral_constant<int, S>).
template <typename F>
void with_variant(bool channels_last, int64_t stride, F f) {
  auto by_stride = [&](auto cl) {
    if (stride == 1) {
      f(cl, std::integral_constant<int, 1>{});
    } else {
      f(cl, std::integral_constant<int, 2>{});
    }
  };
  if (channels_last) {
    by_stride(std::true_type{});
  } else {
    by_stride(std::false_type{});
  }
}

// The prepare kernel's outputs.
struct Prepared {
  at::Tensor w_eff, decisions, state;
};

template <typename scalar_t>
Prepared prepare(const at::Tensor& weight, const at::Tensor& thresholds, const at::Tensor& scale,
                 bool skippable, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t channels = weight.size(0);
  const at::Tensor w = weight.contiguous(), t = thresholds.contiguous(), r = scale.contiguous();
  Prepared p{at::empty({channels, kTaps}, weight.options().dtype(c10::CppTypeToScalarType<acc_t>::value)),
             at::empty({3}, thresholds.options()),
             at::empty({kStateSize}, weight.options().dtype(at::kDouble))};
  superkernel_prepare<scalar_t, acc_t><<<1, kSmallThreads, 0, stream>>>(
      w.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(),
      channels, skippable, p.w_eff.mutable_data_ptr<acc_t>(), p.decisions.mutable_data_ptr<scalar_t>(),
      p.state.mutable_data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return p;
}

// --- the ops --------------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> masked_dwconv_cuda(const at::Tensor& x, const at::Tensor& weight,
                                                      const at::Tensor& thresholds,
                                                      const at::Tensor& scale, int64_t stride,
                                                      bool skippable) {
  check_inputs(x, weight, thresholds, scale, stride);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::MemoryFormat fmt = output_memory_format(x);
  const at::Tensor xc = x.contiguous(fmt);
  at::Tensor y = at::empty({x.size(0), x.size(1), output_size(x.size(2), stride),
                            output_size(x.size(3), stride)},
                           x.options().memory_format(fmt));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor decisions;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "masked_dwconv_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const Prepared p = prepare<scalar_t>(weight, thresholds, scale, skippable, stream);
        decisions = p.decisions;
        const Launch l = plan(xc, y, stride);
        if (l.grid.y == 0) return;
        with_variant(l.channels_last, stride, [&](auto cl, auto s) {
          superkernel_forward<decltype(cl)::value, decltype(s)::value, scalar_t, acc_t>
              <<<l.grid, kThreads, 0, stream>>>(xc.const_data_ptr<scalar_t>(),
                                                p.w_eff.const_data_ptr<acc_t>(),
                                                y.mutable_data_ptr<scalar_t>(), l.g);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
  return {y, decisions};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_dwconv_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& grad_d, const at::Tensor& x,
    const at::Tensor& weight, const at::Tensor& thresholds, const at::Tensor& scale, int64_t stride,
    bool skippable) {
  check_inputs(x, weight, thresholds, scale, stride);
  const int64_t N = x.size(0), C = x.size(1);
  const int64_t Ho = output_size(x.size(2), stride), Wo = output_size(x.size(3), stride);
  TORCH_CHECK(grad_y.dim() == 4 && grad_y.size(0) == N && grad_y.size(1) == C &&
                  grad_y.size(2) == Ho && grad_y.size(3) == Wo,
              "masked_dwconv_backward: grad_y must have shape ", at::IntArrayRef({N, C, Ho, Wo}),
              ", got ", grad_y.sizes());
  TORCH_CHECK(grad_y.scalar_type() == x.scalar_type(),
              "masked_dwconv_backward: grad_y dtype must match x");
  TORCH_CHECK(grad_y.device() == x.device(),
              "masked_dwconv_backward: grad_y must be on x's device");
  TORCH_CHECK(grad_d.numel() == 3, "masked_dwconv_backward: grad_d must have 3 elements");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::MemoryFormat fmt = output_memory_format(x);
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor dy = grad_y.contiguous(fmt);  // a copy only if grad_y's layout differs
  const at::Tensor gd = grad_d.reshape({3}).to(x.scalar_type()).contiguous();
  at::Tensor dx = at::empty(xc.sizes(), xc.options().memory_format(fmt));
  at::Tensor g_w = at::empty(weight.sizes(), weight.options());
  at::Tensor g_t = at::empty({3}, thresholds.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "masked_dwconv_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const Prepared p = prepare<scalar_t>(weight, thresholds, scale, skippable, stream);
        const Launch l = plan(xc, dy, stride);
        const int64_t n = C * kTaps;
        // sum_partials writes every element; only an empty batch needs the zeros.
        at::Tensor g_eff = l.grid.y > 0 ? at::empty({n}, x.options().dtype(at::kDouble))
                                        : at::zeros({n}, x.options().dtype(at::kDouble));
        if (l.grid.y > 0) {
          at::Tensor partial = at::empty({static_cast<int64_t>(l.grid.y), n},
                                         x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
          with_variant(l.channels_last, stride, [&](auto cl, auto s) {
            superkernel_backward<decltype(cl)::value, decltype(s)::value, scalar_t, acc_t>
                <<<l.grid, kThreads, 0, stream>>>(
                    xc.const_data_ptr<scalar_t>(), dy.const_data_ptr<scalar_t>(),
                    p.w_eff.const_data_ptr<acc_t>(), dx.mutable_data_ptr<scalar_t>(),
                    partial.mutable_data_ptr<acc_t>(), l.g);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          });
          sum_partials<acc_t><<<static_cast<unsigned>((n + kThreads - 1) / kThreads), kThreads, 0,
                                stream>>>(partial.const_data_ptr<acc_t>(), l.grid.y, n,
                                          g_eff.mutable_data_ptr<double>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        const at::Tensor w = weight.contiguous(), t = thresholds.contiguous(), r = scale.contiguous();
        superkernel_epilogue<scalar_t><<<1, kSmallThreads, 0, stream>>>(
            g_eff.const_data_ptr<double>(), w.const_data_ptr<scalar_t>(),
            t.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(),
            p.state.const_data_ptr<double>(), gd.const_data_ptr<scalar_t>(), C, skippable,
            g_w.mutable_data_ptr<scalar_t>(), g_t.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {dx, g_w, g_t};
}

}  // namespace

TORCH_LIBRARY_IMPL(spnas, CUDA, m) {
  m.impl("masked_dwconv", &masked_dwconv_cuda);
  m.impl("masked_dwconv_backward", &masked_dwconv_backward_cuda);
}

}  // namespace spnas::cuda
