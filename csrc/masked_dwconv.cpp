// The op schemas. Device kernels register under TORCH_LIBRARY_IMPL in cpu/ and cuda/;
// fake kernels and the autograd formula are registered from Python (spnas_ops/_library.py).
#include <torch/library.h>

TORCH_LIBRARY(spnas, m) {
  // y = depthwise_conv2d(x, w_eff(weight, thresholds, scale), stride, padding=2) and the
  // decisions d = (d_kernel, d_expand, d_keep), shape (3,), in thresholds' dtype.
  m.def(
      "masked_dwconv(Tensor x, Tensor weight, Tensor thresholds, Tensor scale, int stride, "
      "bool skippable) -> (Tensor, Tensor)");
  // One pass over x and grad_y: (grad_x, grad_weight, grad_thresholds).
  m.def(
      "masked_dwconv_backward(Tensor grad_y, Tensor grad_d, Tensor x, Tensor weight, "
      "Tensor thresholds, Tensor scale, int stride, bool skippable) -> (Tensor, Tensor, Tensor)");
  // The (C, 25) part alone (csrc/superkernel.h), for a backend that does the convolution
  // itself (spnas_ops/triton_op.py): w_eff (C, 1, 5, 5) in the accumulation dtype (float64
  // for float64 weights, else float32) and the decisions d (3,) in thresholds' dtype ...
  m.def(
      "superkernel_weight(Tensor weight, Tensor thresholds, Tensor scale, bool skippable) "
      "-> (Tensor, Tensor)");
  // ... and its backward: (dL/dw_eff, dL/dd) -> (grad_weight, grad_thresholds).
  m.def(
      "superkernel_weight_backward(Tensor grad_w_eff, Tensor grad_d, Tensor weight, "
      "Tensor thresholds, Tensor scale, bool skippable) -> (Tensor, Tensor)");
}
