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

inline void check_inputs(const at::Tensor& x, const at::Tensor& weight,
                         const at::Tensor& thresholds, const at::Tensor& scale, int64_t stride) {
  TORCH_CHECK(x.dim() == 4, "masked_dwconv: x must be 4-D (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()),
              "masked_dwconv: x must be a floating-point tensor, got ", x.scalar_type());
  TORCH_CHECK(
      weight.dim() == 4 && weight.size(1) == 1 && weight.size(2) == 5 && weight.size(3) == 5,
      "masked_dwconv: weight must have shape (C, 1, 5, 5), got ", weight.sizes());
  TORCH_CHECK(weight.size(0) == x.size(1), "masked_dwconv: weight has ", weight.size(0),
              " channels but x has C=", x.size(1));
  TORCH_CHECK(x.size(1) % 2 == 0, "masked_dwconv: x must have an even number of channels C, got ",
              x.size(1));
  TORCH_CHECK(x.size(2) >= 1 && x.size(3) >= 1, "masked_dwconv: x must have H, W >= 1, got ",
              x.sizes());
  TORCH_CHECK(thresholds.dim() == 1 && thresholds.size(0) == 3,
              "masked_dwconv: thresholds must have shape (3,), got ", thresholds.sizes());
  TORCH_CHECK(scale.dim() == 1 && scale.size(0) == 3,
              "masked_dwconv: scale must have shape (3,), got ", scale.sizes());
  TORCH_CHECK(stride == 1 || stride == 2, "masked_dwconv: stride must be 1 or 2, got ", stride);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"weight", weight},
                                {"thresholds", thresholds},
                                {"scale", scale}}) {
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), "masked_dwconv: ", name, " dtype ",
                t.scalar_type(), " does not match x dtype ", x.scalar_type());
    TORCH_CHECK(t.device() == x.device(), "masked_dwconv: ", name, " is on ", t.device(),
                " but x is on ", x.device());
  }
}

}  // namespace spnas
