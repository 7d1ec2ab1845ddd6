// Shared between the CPU and CUDA implementations of the spnas ops: argument checks that
// name the argument, and the output memory format rule.
#pragma once

#include <ATen/ATen.h>

namespace spnas {

// channels_last is kept; anything else gives a contiguous (NCHW) result. The Python fake
// kernels (spnas_ops/registration.py) apply the same rule.
inline at::MemoryFormat output_memory_format(const at::Tensor& x) {
  return (x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous())
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

inline int64_t output_size(int64_t size, int64_t stride) {
  return (size - 1) / stride + 1;
}

// The superkernel's own arguments: weight (C, 1, 5, 5) with C even, thresholds and scale (3,),
// all of weight's dtype and device.
inline void check_superkernel(const char* op, const at::Tensor& weight,
                              const at::Tensor& thresholds, const at::Tensor& scale) {
  TORCH_CHECK(at::isFloatingType(weight.scalar_type()), op,
              ": weight must be a floating-point tensor, got ", weight.scalar_type());
  TORCH_CHECK(
      weight.dim() == 4 && weight.size(1) == 1 && weight.size(2) == 5 && weight.size(3) == 5,
      op, ": weight must have shape (C, 1, 5, 5), got ", weight.sizes());
  TORCH_CHECK(weight.size(0) % 2 == 0, op, ": the number of channels C must be even, got ",
              weight.size(0));
  TORCH_CHECK(thresholds.dim() == 1 && thresholds.size(0) == 3, op,
              ": thresholds must have shape (3,), got ", thresholds.sizes());
  TORCH_CHECK(scale.dim() == 1 && scale.size(0) == 3, op, ": scale must have shape (3,), got ",
              scale.sizes());
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"thresholds", thresholds},
                                {"scale", scale}}) {
    TORCH_CHECK(t.scalar_type() == weight.scalar_type(), op, ": ", name, " dtype ",
                t.scalar_type(), " does not match weight dtype ", weight.scalar_type());
    TORCH_CHECK(t.device() == weight.device(), op, ": ", name, " is on ", t.device(),
                " but weight is on ", weight.device());
  }
}

inline void check_inputs(const at::Tensor& x, const at::Tensor& weight,
                         const at::Tensor& thresholds, const at::Tensor& scale, int64_t stride) {
  TORCH_CHECK(x.dim() == 4, "masked_dwconv: x must be 4-D (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()),
              "masked_dwconv: x must be a floating-point tensor, got ", x.scalar_type());
  TORCH_CHECK(x.size(2) >= 1 && x.size(3) >= 1, "masked_dwconv: x must have H, W >= 1, got ",
              x.sizes());
  TORCH_CHECK(stride == 1 || stride == 2, "masked_dwconv: stride must be 1 or 2, got ", stride);
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "masked_dwconv: weight dtype ",
              weight.scalar_type(), " does not match x dtype ", x.scalar_type());
  TORCH_CHECK(weight.device() == x.device(), "masked_dwconv: weight is on ", weight.device(),
              " but x is on ", x.device());
  check_superkernel("masked_dwconv", weight, thresholds, scale);
  TORCH_CHECK(weight.size(0) == x.size(1), "masked_dwconv: weight has ", weight.size(0),
              " channels but x has C=", x.size(1));
}

// The (C, 25) part's backward: dL/dw_eff shaped like the weight, dL/dd (3 values), on its device.
inline void check_superkernel_grads(const at::Tensor& grad_w_eff, const at::Tensor& grad_d,
                                    const at::Tensor& weight) {
  TORCH_CHECK(grad_w_eff.sizes() == weight.sizes(),
              "superkernel_weight_backward: grad_w_eff must have the weight's shape ",
              weight.sizes(), ", got ", grad_w_eff.sizes());
  TORCH_CHECK(grad_d.numel() == 3, "superkernel_weight_backward: grad_d must have 3 elements");
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"grad_w_eff", grad_w_eff},
                                {"grad_d", grad_d}})
    TORCH_CHECK(t.device() == weight.device(), "superkernel_weight_backward: ", name, " is on ",
                t.device(), " but weight is on ", weight.device());
}

}  // namespace spnas
