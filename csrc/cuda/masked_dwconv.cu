// CUDA implementation of the spnas ops (schema in csrc/masked_dwconv.cpp).
//
// The (C, 25)-sized superkernel part runs as ATen ops on the device, in double, line for line
// the formulas of csrc/superkernel.h (Superkernel's constructor and backward); keeping it on the
// device avoids a host synchronisation per call. The activation-sized part is two kernels:
//
//   forward:  y = depthwise_conv2d(x, w_eff, stride, padding=2); x read once, y written once.
//   backward: one pass over x and dy that writes dx once and, per block, one fp32 (fp64 for
//             double) row of partial sums of dL/dw_eff; a fixed-order sum over the rows gives
//             dL/dw_eff (deterministic: no float atomics).
//
// Work layout. A block owns a group of channels and a contiguous range ("chunk") of output
// pixels q = (n, oh, ow). Each thread keeps one channel for its whole life, so that channel's
// 25 effective weights sit in registers. Neighbouring threads take neighbouring addresses:
// along the pixels for NCHW (1 channel x 256 pixels per block step), along the channels for
// channels_last (32 channels x 8 pixels). Any strides are accepted; dy may even be expanded.
//
// Backward ownership: output pixel (oh, ow) also owns input pixels (oh*s + a, ow*s + b),
// 0 <= a, b < s; its thread computes dx there as a gather over the taps whose parity matches,
// so every dx element is written exactly once.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../masked_dwconv.h"
#include "../superkernel.h"

namespace spnas::cuda {
namespace {

constexpr int kThreads = 256;
// Blocks to aim for: enough to fill any current GPU several times over, fixed so that the
// chunking (and so the summation order) depends only on the problem's shape.
constexpr int64_t kTargetBlocks = 2048;

struct Layout {
  int channel_lanes;  // threads side by side along the channels
  int pixel_lanes;    // threads side by side along the pixels; channel_lanes * pixel_lanes = 256
};

Layout layout_for(const at::Tensor& x) {
  const bool channels_innermost = x.stride(1) == 1 && x.size(1) > 1;
  return channels_innermost ? Layout{32, kThreads / 32} : Layout{1, kThreads};
}

struct Shape {
  int64_t N, C, H, W, Ho, Wo;
  int stride;
};

struct Strides {
  int64_t n, c, h, w;
};

Strides strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// The chunking of the output pixels among blocks along the grid's y axis.
struct Chunks {
  int64_t count, size;
};

Chunks chunks_for(int64_t pixels, int64_t channel_blocks, const Layout& l) {
  const int64_t max_chunks = (pixels + l.pixel_lanes - 1) / l.pixel_lanes;
  int64_t count = std::max<int64_t>(1, kTargetBlocks / std::max<int64_t>(channel_blocks, 1));
  count = std::min<int64_t>({count, max_chunks, 65535});
  const int64_t size = (pixels + count - 1) / count;
  return {(pixels + size - 1) / size, size};
}

__device__ __forceinline__ int64_t min_i64(int64_t a, int64_t b) {
  return a < b ? a : b;
}

template <typename scalar_t, typename acc_t>
__global__ void superkernel_forward(const scalar_t* __restrict__ x, const acc_t* __restrict__ w_eff,
                                    scalar_t* __restrict__ y, Shape s, Strides sx, Strides sy,
                                    int channel_lanes, int64_t chunk) {
  const int lane_c = threadIdx.x % channel_lanes, lane_p = threadIdx.x / channel_lanes;
  const int pixel_lanes = blockDim.x / channel_lanes;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * channel_lanes + lane_c;
  if (c >= s.C) return;
  acc_t w[kTaps];
#pragma unroll
  for (int k = 0; k < kTaps; ++k) w[k] = w_eff[c * kTaps + k];

  const int64_t pixels = s.N * s.Ho * s.Wo;
  const int64_t q_end = min_i64(pixels, (blockIdx.y + 1) * chunk);
  for (int64_t q = blockIdx.y * chunk + lane_p; q < q_end; q += pixel_lanes) {
    const int64_t ow = q % s.Wo, oh = (q / s.Wo) % s.Ho, n = q / (s.Wo * s.Ho);
    const scalar_t* xc = x + n * sx.n + c * sx.c;
    acc_t acc = 0;
#pragma unroll
    for (int kh = 0; kh < 5; ++kh) {
      const int64_t ih = oh * s.stride + kh - 2;
      if (ih < 0 || ih >= s.H) continue;
#pragma unroll
      for (int kw = 0; kw < 5; ++kw) {
        const int64_t iw = ow * s.stride + kw - 2;
        if (iw < 0 || iw >= s.W) continue;
        acc += static_cast<acc_t>(xc[ih * sx.h + iw * sx.w]) * w[kh * 5 + kw];
      }
    }
    y[n * sy.n + c * sy.c + oh * sy.h + ow * sy.w] = static_cast<scalar_t>(acc);
  }
}

// dx at input pixel (oh*S + a, ow*S + b): the output pixels whose window covers it with tap
// (kh, kw) are (oh + (a + 2 - kh) / S, ow + (b + 2 - kw) / S), when S divides both.
template <int S, typename scalar_t, typename acc_t>
__device__ __forceinline__ void owned_input_gradients(const scalar_t* dyc, scalar_t* dxc,
                                                      const acc_t (&w)[kTaps], int64_t oh,
                                                      int64_t ow, const Shape& s, const Strides& sd,
                                                      const Strides& sg) {
#pragma unroll
  for (int a = 0; a < S; ++a) {
#pragma unroll
    for (int b = 0; b < S; ++b) {
      const int64_t ih = oh * S + a, iw = ow * S + b;
      if (ih >= s.H || iw >= s.W) continue;
      acc_t acc = 0;
#pragma unroll
      for (int kh = 0; kh < 5; ++kh) {
        if ((a + 2 - kh + 2 * S) % S != 0) continue;
        const int64_t gh = oh + (a + 2 - kh) / S;  // exact: S divides a + 2 - kh
        if (gh < 0 || gh >= s.Ho) continue;
#pragma unroll
        for (int kw = 0; kw < 5; ++kw) {
          if ((b + 2 - kw + 2 * S) % S != 0) continue;
          const int64_t gw = ow + (b + 2 - kw) / S;
          if (gw < 0 || gw >= s.Wo) continue;
          acc += static_cast<acc_t>(dyc[gh * sd.h + gw * sd.w]) * w[kh * 5 + kw];
        }
      }
      dxc[ih * sg.h + iw * sg.w] = static_cast<scalar_t>(acc);
    }
  }
}

template <int S, typename scalar_t, typename acc_t>
__global__ void superkernel_backward(const scalar_t* __restrict__ x,
                                     const scalar_t* __restrict__ dy,
                                     const acc_t* __restrict__ w_eff, scalar_t* __restrict__ dx,
                                     acc_t* __restrict__ partial, Shape s, Strides sx, Strides sd,
                                     Strides sg, int channel_lanes, int64_t chunk) {
  __shared__ acc_t red[kThreads];
  const int lane_c = threadIdx.x % channel_lanes, lane_p = threadIdx.x / channel_lanes;
  const int pixel_lanes = blockDim.x / channel_lanes;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * channel_lanes + lane_c;
  const bool active = c < s.C;

  acc_t w[kTaps], g[kTaps];
#pragma unroll
  for (int k = 0; k < kTaps; ++k) {
    w[k] = active ? w_eff[c * kTaps + k] : acc_t(0);
    g[k] = 0;
  }
  if (active) {
    const int64_t pixels = s.N * s.Ho * s.Wo;
    const int64_t q_end = min_i64(pixels, (blockIdx.y + 1) * chunk);
    for (int64_t q = blockIdx.y * chunk + lane_p; q < q_end; q += pixel_lanes) {
      const int64_t ow = q % s.Wo, oh = (q / s.Wo) % s.Ho, n = q / (s.Wo * s.Ho);
      const scalar_t* xc = x + n * sx.n + c * sx.c;
      const scalar_t* dyc = dy + n * sd.n + c * sd.c;
      // dL/dw_eff[k] += dy * (x at tap k): the forward's gather.
      const acc_t d = static_cast<acc_t>(dyc[oh * sd.h + ow * sd.w]);
#pragma unroll
      for (int kh = 0; kh < 5; ++kh) {
        const int64_t ih = oh * S + kh - 2;
        if (ih < 0 || ih >= s.H) continue;
#pragma unroll
        for (int kw = 0; kw < 5; ++kw) {
          const int64_t iw = ow * S + kw - 2;
          if (iw < 0 || iw >= s.W) continue;
          g[kh * 5 + kw] += d * static_cast<acc_t>(xc[ih * sx.h + iw * sx.w]);
        }
      }
      owned_input_gradients<S>(dyc, dx + n * sg.n + c * sg.c, w, oh, ow, s, sd, sg);
    }
  }

  // This block's row of partial sums: a fixed-order tree over the pixel lanes of each channel.
  acc_t* row = partial + static_cast<int64_t>(blockIdx.y) * s.C * kTaps;
  for (int k = 0; k < kTaps; ++k) {
    red[threadIdx.x] = g[k];
    __syncthreads();
    for (int half = pixel_lanes / 2; half > 0; half /= 2) {
      if (lane_p < half) red[threadIdx.x] += red[threadIdx.x + half * channel_lanes];
      __syncthreads();
    }
    if (lane_p == 0 && active) row[c * kTaps + k] = red[threadIdx.x];
    __syncthreads();
  }
}

// --- the (C, 25) part: csrc/superkernel.h's formulas as device tensor ops, in double -------

at::Tensor indicator(const at::Tensor& z) {
  return at::ge(z, 0).to(at::kDouble);
}

at::Tensor sigmoid_grad(const at::Tensor& z) {
  const at::Tensor sig = at::sigmoid(z);
  return sig * (1 - sig);
}

// w * unit / ||w||, or 0 where the norm is 0 (the norm's gradient at 0).
at::Tensor norm_direction(const at::Tensor& w, const at::Tensor& norm) {
  return at::where(norm > 0, w / at::clamp_min(norm, 1e-300), at::zeros_like(w));
}

struct DeviceSuperkernel {
  int64_t channels;
  bool skippable;
  at::Tensor t, r;                             // thresholds, scale (3,)
  at::Tensor m3;                               // (25,): 1 on the inner 3x3 taps
  at::Tensor w, w1, w_eff;                     // (C, 25)
  at::Tensor norm0, norm1, norm2, d0, d1, d2;  // 0-dim

  at::Tensor lo(const at::Tensor& a) const { return a.narrow(0, 0, channels / 2); }
  at::Tensor hi(const at::Tensor& a) const { return a.narrow(0, channels / 2, channels / 2); }
  // channel_gate: d_keep for lo, d_keep * d_expand for hi, as a (C, 1) column.
  at::Tensor gate() const {
    return at::cat({d2.expand({channels / 2}), (d2 * d1).expand({channels / 2})}).unsqueeze(1);
  }

  DeviceSuperkernel(const at::Tensor& weight, const at::Tensor& thresholds, const at::Tensor& scale,
                    bool can_skip)
      : channels(weight.size(0)), skippable(can_skip) {
    const auto opts = weight.options().dtype(at::kDouble);
    std::vector<double> inner(kTaps);
    for (int k = 0; k < kTaps; ++k) inner[k] = is_inner_tap(k) ? 1.0 : 0.0;
    m3 = at::tensor(inner, at::kDouble).to(weight.device());
    t = thresholds.detach().to(at::kDouble);
    r = scale.detach().to(at::kDouble);
    w = weight.detach().reshape({channels, kTaps}).to(at::kDouble);
    const at::Tensor m5 = 1 - m3;
    norm0 = (w * m5).square().sum().sqrt();
    d0 = indicator(norm0 - t[0]) * r[0];
    w1 = w * m3 + d0 * (w * m5);
    norm1 = hi(w1).square().sum().sqrt();
    norm2 = lo(w1).square().sum().sqrt();
    d1 = indicator(norm1 - t[1]) * r[1];
    d2 = skippable ? indicator(norm2 - t[2]) * r[2] : at::ones({}, opts);
    w_eff = gate() * w1;
  }

  at::Tensor decisions(at::ScalarType dtype) const { return at::stack({d0, d1, d2}).to(dtype); }

  // Superkernel::backward: (dL/dweight (C, 25), dL/dthresholds (3,)) from g_eff = dL/dw_eff
  // (C, 25) and g_d = dL/dd (3,), both double.
  std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& g_eff,
                                              const at::Tensor& g_d) const {
    const at::Tensor sum_lo = (lo(g_eff) * lo(w1)).sum();
    const at::Tensor sum_hi = (hi(g_eff) * hi(w1)).sum();
    at::Tensor g_w1 = g_eff * gate();
    at::Tensor g_t2 = at::zeros({}, g_eff.options());
    // d_keep = Ind(||w1[lo]|| - t_keep) * r_keep (a constant 1 when not skippable)
    if (skippable) {
      const at::Tensor g_keep = g_d[2] + sum_lo + d1 * sum_hi;
      const at::Tensor g_z = g_keep * r[2] * sigmoid_grad(norm2 - t[2]);
      g_t2 = -g_z;
      lo(g_w1).add_(g_z * norm_direction(lo(w1), norm2));
    }
    // d_expand = Ind(||w1[hi]|| - t_expand) * r_expand
    const at::Tensor g_expand = g_d[1] + d2 * sum_hi;
    const at::Tensor g_z1 = g_expand * r[1] * sigmoid_grad(norm1 - t[1]);
    hi(g_w1).add_(g_z1 * norm_direction(hi(w1), norm1));
    // w1 = w*M3 + d_kernel * w*M5;  d_kernel = Ind(||w*M5|| - t_kernel) * r_kernel
    const at::Tensor m5 = 1 - m3;
    const at::Tensor g_kernel = g_d[0] + (g_w1 * w * m5).sum();
    const at::Tensor g_z0 = g_kernel * r[0] * sigmoid_grad(norm0 - t[0]);
    const at::Tensor g_w = g_w1 * m3 + m5 * (g_w1 * d0 + g_z0 * norm_direction(w, norm0));
    return {g_w, at::stack({-g_z0, -g_z1, g_t2})};
  }
};

at::ScalarType accumulation_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

Shape shape_of(const at::Tensor& x, int64_t stride) {
  return {x.size(0),
          x.size(1),
          x.size(2),
          x.size(3),
          output_size(x.size(2), stride),
          output_size(x.size(3), stride),
          static_cast<int>(stride)};
}

// --- the ops --------------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> masked_dwconv_cuda(const at::Tensor& x, const at::Tensor& weight,
                                                      const at::Tensor& thresholds,
                                                      const at::Tensor& scale, int64_t stride,
                                                      bool skippable) {
  check_inputs(x, weight, thresholds, scale, stride);
  const c10::cuda::CUDAGuard guard(x.device());
  const DeviceSuperkernel sk(weight, thresholds, scale, skippable);
  const Shape s = shape_of(x, stride);
  at::Tensor y =
      at::empty({s.N, s.C, s.Ho, s.Wo}, x.options().memory_format(output_memory_format(x)));
  if (y.numel() > 0) {
    const at::Tensor w_eff = sk.w_eff.to(accumulation_type(x.scalar_type())).contiguous();
    const Layout l = layout_for(x);
    const int64_t channel_blocks = (s.C + l.channel_lanes - 1) / l.channel_lanes;
    const Chunks ch = chunks_for(s.N * s.Ho * s.Wo, channel_blocks, l);
    const dim3 grid(static_cast<unsigned>(channel_blocks), static_cast<unsigned>(ch.count));
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "masked_dwconv_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          superkernel_forward<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
              x.const_data_ptr<scalar_t>(), w_eff.const_data_ptr<acc_t>(),
              y.mutable_data_ptr<scalar_t>(), s, strides_of(x), strides_of(y), l.channel_lanes,
              ch.size);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }
  return {y, sk.decisions(thresholds.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_dwconv_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& grad_d, const at::Tensor& x,
    const at::Tensor& weight, const at::Tensor& thresholds, const at::Tensor& scale, int64_t stride,
    bool skippable) {
  check_inputs(x, weight, thresholds, scale, stride);
  const Shape s = shape_of(x, stride);
  TORCH_CHECK(grad_y.dim() == 4 && grad_y.size(0) == s.N && grad_y.size(1) == s.C &&
                  grad_y.size(2) == s.Ho && grad_y.size(3) == s.Wo,
              "masked_dwconv_backward: grad_y must have shape ",
              at::IntArrayRef({s.N, s.C, s.Ho, s.Wo}), ", got ", grad_y.sizes());
  TORCH_CHECK(grad_y.scalar_type() == x.scalar_type(),
              "masked_dwconv_backward: grad_y dtype must match x");
  TORCH_CHECK(grad_y.device() == x.device(),
              "masked_dwconv_backward: grad_y must be on x's device");
  TORCH_CHECK(grad_d.numel() == 3, "masked_dwconv_backward: grad_d must have 3 elements");
  const c10::cuda::CUDAGuard guard(x.device());
  const DeviceSuperkernel sk(weight, thresholds, scale, skippable);
  const at::ScalarType acc = accumulation_type(x.scalar_type());

  at::Tensor dx = at::empty_like(x, x.options().memory_format(output_memory_format(x)));
  at::Tensor g_eff = at::zeros({s.C, kTaps}, x.options().dtype(at::kDouble));
  const int64_t pixels = s.N * s.Ho * s.Wo;
  if (pixels > 0) {
    const at::Tensor w_eff = sk.w_eff.to(acc).contiguous();
    const Layout l = layout_for(x);
    const int64_t channel_blocks = (s.C + l.channel_lanes - 1) / l.channel_lanes;
    const Chunks ch = chunks_for(pixels, channel_blocks, l);
    at::Tensor partial = at::empty({ch.count, s.C, kTaps}, x.options().dtype(acc));
    const dim3 grid(static_cast<unsigned>(channel_blocks), static_cast<unsigned>(ch.count));
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "masked_dwconv_backward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          auto launch = [&](auto kernel) {
            kernel<<<grid, kThreads, 0, stream>>>(
                x.const_data_ptr<scalar_t>(), grad_y.const_data_ptr<scalar_t>(),
                w_eff.const_data_ptr<acc_t>(), dx.mutable_data_ptr<scalar_t>(),
                partial.mutable_data_ptr<acc_t>(), s, strides_of(x), strides_of(grad_y),
                strides_of(dx), l.channel_lanes, ch.size);
          };
          if (stride == 1) {
            launch(superkernel_backward<1, scalar_t, acc_t>);
          } else {
            launch(superkernel_backward<2, scalar_t, acc_t>);
          }
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
    // The epilogue's reduction: a fixed-order sum over the blocks' rows.
    g_eff = partial.sum({0}, /*keepdim=*/false, at::kDouble);
  }
  const auto [g_w, g_t] = sk.backward(g_eff, grad_d.detach().reshape({3}).to(at::kDouble));
  return {dx, g_w.view(weight.sizes()).to(weight.scalar_type()), g_t.to(thresholds.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(spnas, CUDA, m) {
  m.impl("masked_dwconv", &masked_dwconv_cuda);
  m.impl("masked_dwconv_backward", &masked_dwconv_backward_cuda);
}

}  // namespace spnas::cuda
