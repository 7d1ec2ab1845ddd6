// CUDA implementation of the spnas ops (schema in csrc/masked_dwconv.cpp).
//
// A call never synchronises with the host and launches few kernels (forward 2, backward 4):
//
//   superkernel_prepare   one block: the (C, 25) part of csrc/superkernel.h (norms, decisions,
//                         w_eff), written to the device (superkernel_kernels.cuh).
//   superkernel_forward   y = depthwise_conv2d(x, w_eff, stride, padding=2) (conv_kernels.cuh).
//   superkernel_backward  one pass over x and dy: dx written once, and per block one row of
//                         partial sums of dL/dw_eff.
//   sum_partials          a fixed-order sum over those rows (deterministic: no float atomics).
//   superkernel_epilogue  one block: superkernel.h's backward, dL/dw_eff -> dL/dweight and
//                         dL/dthresholds.
//
// superkernel_weight(_backward) run the one-block kernels alone, for the Triton backend.
//
// Few launches and no host round trip are the point: an earlier version ran the (C, 25) part
// as some forty small ATen ops and was slower than the eager reference on every shape
// (docs/gpu.md).
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
#include "conv_kernels.cuh"
#include "superkernel_kernels.cuh"

namespace spnas::cuda {
namespace {

// Blocks to aim for: enough to fill any current GPU several times over, fixed so that the
// chunking (and so the summation order) depends only on the problem's shape.
constexpr int64_t kTargetBlocks = 2048;

// --- host side ---------------------------------------------------------------------------------

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

// The prepare kernel's outputs; state holds one SuperkernelState.
struct Prepared {
  at::Tensor w_eff, decisions, state;
  const SuperkernelState* state_ptr() const {
    return reinterpret_cast<const SuperkernelState*>(state.const_data_ptr<uint8_t>());
  }
};

template <typename scalar_t>
Prepared prepare(const at::Tensor& weight, const at::Tensor& thresholds, const at::Tensor& scale,
                 bool skippable, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t channels = weight.size(0);
  const at::Tensor w = weight.contiguous(), t = thresholds.contiguous(), r = scale.contiguous();
  Prepared p{at::empty({channels, kTaps}, weight.options().dtype(c10::CppTypeToScalarType<acc_t>::value)),
             at::empty({3}, thresholds.options()),
             at::empty({static_cast<int64_t>(sizeof(SuperkernelState))},
                       weight.options().dtype(at::kByte))};
  superkernel_prepare<scalar_t, acc_t><<<1, kSmallThreads, 0, stream>>>(
      w.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(),
      channels, skippable, p.w_eff.mutable_data_ptr<acc_t>(), p.decisions.mutable_data_ptr<scalar_t>(),
      reinterpret_cast<SuperkernelState*>(p.state.mutable_data_ptr<uint8_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return p;
}

// g_eff = dL/dw_eff (C * 25 doubles) and gd = dL/dd (3) -> g_w = dL/dweight, g_t = dL/dthresholds.
template <typename scalar_t>
void epilogue(const at::Tensor& g_eff, const at::Tensor& weight, const Prepared& p,
              const at::Tensor& gd, at::Tensor& g_w, at::Tensor& g_t, cudaStream_t stream) {
  const at::Tensor w = weight.contiguous();
  superkernel_epilogue<scalar_t><<<1, kSmallThreads, 0, stream>>>(
      g_eff.const_data_ptr<double>(), w.const_data_ptr<scalar_t>(), p.state_ptr(),
      gd.const_data_ptr<scalar_t>(), g_w.mutable_data_ptr<scalar_t>(),
      g_t.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
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
        epilogue<scalar_t>(g_eff, weight, p, gd, g_w, g_t, stream);
      });
  return {dx, g_w, g_t};
}

// The (C, 25) part alone, for the Triton backend: the prepare kernel, and prepare + epilogue.
std::tuple<at::Tensor, at::Tensor> superkernel_weight_cuda(const at::Tensor& weight,
                                                           const at::Tensor& thresholds,
                                                           const at::Tensor& scale, bool skippable) {
  check_superkernel("superkernel_weight", weight, thresholds, scale);
  const c10::cuda::CUDAGuard guard(weight.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  std::tuple<at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, weight.scalar_type(), "superkernel_weight_cuda", [&] {
        const Prepared p = prepare<scalar_t>(weight, thresholds, scale, skippable, stream);
        out = {p.w_eff.view(weight.sizes()), p.decisions};
      });
  return out;
}

std::tuple<at::Tensor, at::Tensor> superkernel_weight_backward_cuda(
    const at::Tensor& grad_w_eff, const at::Tensor& grad_d, const at::Tensor& weight,
    const at::Tensor& thresholds, const at::Tensor& scale, bool skippable) {
  check_superkernel("superkernel_weight_backward", weight, thresholds, scale);
  check_superkernel_grads(grad_w_eff, grad_d, weight);
  const c10::cuda::CUDAGuard guard(weight.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor g_eff = grad_w_eff.to(at::kDouble).contiguous();
  const at::Tensor gd = grad_d.reshape({3}).to(weight.scalar_type()).contiguous();
  at::Tensor g_w = at::empty(weight.sizes(), weight.options());
  at::Tensor g_t = at::empty({3}, thresholds.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, weight.scalar_type(), "superkernel_weight_backward_cuda", [&] {
        const Prepared p = prepare<scalar_t>(weight, thresholds, scale, skippable, stream);
        epilogue<scalar_t>(g_eff, weight, p, gd, g_w, g_t, stream);
      });
  return {g_w, g_t};
}

}  // namespace

TORCH_LIBRARY_IMPL(spnas, CUDA, m) {
  m.impl("masked_dwconv", &masked_dwconv_cuda);
  m.impl("masked_dwconv_backward", &masked_dwconv_backward_cuda);
  m.impl("superkernel_weight", &superkernel_weight_cuda);
  m.impl("superkernel_weight_backward", &superkernel_weight_backward_cuda);
}

}  // namespace spnas::cuda
