// The (C, 25)-sized part of the superkernel op (SPEC section 1): the masked weight and the
// decisions before the convolution, and the epilogue after it that turns the gradient of the
// effective weight into the gradients of the weight and the three thresholds.
//
// Everything here is O(C * 25) and runs once per call, in double: it is never on the
// per-pixel path.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace spnas {

constexpr int kTaps = 25;  // 5x5 superkernel

// M3: the inner 3x3 taps of the 5x5 kernel. M5 = 1 - M3 is the outer ring.
inline bool is_inner_tap(int tap) {
  const int kh = tap / 5, kw = tap % 5;
  return kh >= 1 && kh <= 3 && kw >= 1 && kw <= 3;
}

inline double sigmoid_grad(double z) {
  const double s = 1.0 / (1.0 + std::exp(-z));
  return s * (1.0 - s);
}

// The forward quantities of the decisions, kept for the epilogue.
struct Superkernel {
  int64_t channels = 0;
  bool skippable = true;
  double t[3] = {0, 0, 0};     // thresholds (t_kernel, t_expand, t_keep)
  double r[3] = {1, 1, 1};     // indicator multipliers (scale)
  double norm[3] = {0, 0, 0};  // ||w*M5||, ||w1[hi]||, ||w1[lo]||
  double d[3] = {0, 0, 0};     // decisions (d_kernel, d_expand, d_keep)
  std::vector<double> w;       // the weight, (C, 25)
  std::vector<double> w1;      // w*M3 + d_kernel * w*M5, (C, 25)
  std::vector<double> w_eff;   // the effective weight, (C, 25)

  // Multiplier of w1 in w_eff for channel c: d_keep for lo, d_keep * d_expand for hi.
  double channel_gate(int64_t c) const { return c < channels / 2 ? d[2] : d[2] * d[1]; }

  // The weight must already be in double, (C, 25) row-major.
  Superkernel(std::vector<double> weight, int64_t c, const double* thresholds, const double* scale,
              bool can_skip)
      : channels(c), skippable(can_skip), w(std::move(weight)), w1(w.size()), w_eff(w.size()) {
    for (int i = 0; i < 3; ++i) {
      t[i] = thresholds[i];
      r[i] = scale[i];
    }
    double outer = 0;
    for (int64_t k = 0; k < c * kTaps; ++k)
      if (!is_inner_tap(k % kTaps)) outer += w[k] * w[k];
    norm[0] = std::sqrt(outer);
    d[0] = (norm[0] - t[0] >= 0 ? 1.0 : 0.0) * r[0];
    double hi = 0, lo = 0;
    for (int64_t k = 0; k < c * kTaps; ++k) {
      w1[k] = is_inner_tap(k % kTaps) ? w[k] : d[0] * w[k];
      (k / kTaps < c / 2 ? lo : hi) += w1[k] * w1[k];
    }
    norm[1] = std::sqrt(hi);
    norm[2] = std::sqrt(lo);
    d[1] = (norm[1] - t[1] >= 0 ? 1.0 : 0.0) * r[1];
    d[2] = skippable ? (norm[2] - t[2] >= 0 ? 1.0 : 0.0) * r[2] : 1.0;
    for (int64_t k = 0; k < c * kTaps; ++k) w_eff[k] = channel_gate(k / kTaps) * w1[k];
  }

  // Epilogue: from g_eff = dL/dw_eff (C, 25) and g_d = dL/dd (3), the gradients of the
  // weight (C, 25) and thresholds (3). Straight-through: dInd(z)/dz = sigmoid'(z); the
  // norm's gradient is w/||w||, 0 at 0.
  void backward(const std::vector<double>& g_eff, const double* g_d, std::vector<double>& g_w,
                double* g_t) const {
    const int64_t n = channels * kTaps;
    const int64_t half = (channels / 2) * kTaps;
    double sum_lo = 0, sum_hi = 0;
    for (int64_t k = 0; k < n; ++k) (k < half ? sum_lo : sum_hi) += g_eff[k] * w1[k];

    std::vector<double> g_w1(n);
    for (int64_t k = 0; k < n; ++k) g_w1[k] = g_eff[k] * channel_gate(k / kTaps);

    // d_keep = Ind(||w1[lo]|| - t_keep) * r_keep (a constant 1 when not skippable)
    g_t[2] = 0;
    if (skippable) {
      const double g_keep = g_d[2] + sum_lo + d[1] * sum_hi;
      const double g_z = g_keep * r[2] * sigmoid_grad(norm[2] - t[2]);
      g_t[2] = -g_z;
      if (norm[2] > 0)
        for (int64_t k = 0; k < half; ++k) g_w1[k] += g_z * w1[k] / norm[2];
    }
    // d_expand = Ind(||w1[hi]|| - t_expand) * r_expand
    {
      const double g_expand = g_d[1] + d[2] * sum_hi;
      const double g_z = g_expand * r[1] * sigmoid_grad(norm[1] - t[1]);
      g_t[1] = -g_z;
      if (norm[1] > 0)
        for (int64_t k = half; k < n; ++k) g_w1[k] += g_z * w1[k] / norm[1];
    }
    // w1 = w*M3 + d_kernel * w*M5;  d_kernel = Ind(||w*M5|| - t_kernel) * r_kernel
    double g_kernel = g_d[0];
    for (int64_t k = 0; k < n; ++k)
      if (!is_inner_tap(k % kTaps)) g_kernel += g_w1[k] * w[k];
    const double g_z = g_kernel * r[0] * sigmoid_grad(norm[0] - t[0]);
    g_t[0] = -g_z;
    g_w.assign(n, 0.0);
    for (int64_t k = 0; k < n; ++k) {
      if (is_inner_tap(k % kTaps)) {
        g_w[k] = g_w1[k];
      } else {
        g_w[k] = g_w1[k] * d[0];
        if (norm[0] > 0) g_w[k] += g_z * w[k] / norm[0];
      }
    }
  }
};

}  // namespace spnas
