// CPU kernels of the masked superkernel depthwise convolution, compiled once per instruction
// set (kernel_default.cpp, kernel_avx2.cpp, kernel_avx512.cpp) into the namespace
// spnas::cpu::<CPU_CAPABILITY>; masked_dwconv_cpu.cpp picks one at run time. By job:
//   layout.h        packing: channel blocks of 16 copied into zero-padded scratch images of
//                   16-channel pixels in the accumulation type, and written back out;
//   microkernels.h  register-blocked sums over the taps the effective weight keeps;
//   scheduling.h    per-thread scratch, tasks from a counter, task sizes fixed by the shape;
//   forward.h       the forward plans (by blocks; channels_last in place: swept, rows);
//   backward.h      the backward plans (by blocks; channels_last in place: swept, samples,
//                   rows), dx and dL/dw_eff in one pass, the latter summed in an order fixed
//                   by the shape (deterministic whatever the thread count).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "backward.h"
#include "forward.h"

namespace spnas::cpu {
namespace CPU_CAPABILITY {

// The entry points seen by masked_dwconv_cpu.cpp.
void forward(const at::Tensor& x, at::Tensor& y, int64_t stride, const double* w_eff) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "masked_dwconv_cpu",
                                  [&] { forward_typed<scalar_t>(x, y, stride, w_eff); });
}

void backward(const at::Tensor& dy, const at::Tensor& x, at::Tensor& dx, int64_t stride,
              const double* w_eff, double* g_eff) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, x.scalar_type(), "masked_dwconv_backward_cpu",
      [&] { backward_typed<scalar_t>(dy, x, dx, stride, w_eff, g_eff); });
}

}  // namespace CPU_CAPABILITY
}  // namespace spnas::cpu
