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
}
