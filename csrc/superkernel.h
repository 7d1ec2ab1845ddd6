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
constexpr bool is_inner_tap(int tap) {
  return tap / 5 >= 1 && tap / 5 <= 3 && tap % 5 >= 1 && tap % 5 <= 3;
}
constexpr bool kInner[kTaps] = {
    is_inner_tap(0),  is_inner_tap(1),  is_inner_tap(2),  is_inner_tap(3),  is_inner_tap(4),
    is_inner_tap(5),  is_inner_tap(6),  is_inner_tap(7),  is_inner_tap(8),  is_inner_tap(9),
    is_inner_tap(10), is_inner_tap(11), is_inner_tap(12), is_inner_tap(13), is_inner_tap(14),
    is_inner_tap(15), is_inner_tap(16), is_inner_tap(17), is_inner_tap(18), is_inner_tap(19),
    is_inner_tap(20), is_inner_tap(21), is_inner_tap(22), is_inner_tap(23), is_inner_tap(24)};

// sum_{k < 25} f(k) in a fixed order, as five interleaved partial sums (one per kernel
// column): five independent dependency chains instead of one 25 adds deep. These per-channel
// sums are the serial O(C * 25) part of every call.
template <typename F>
inline double tap_sum(F f) {
  double a[5] = {0, 0, 0, 0, 0};
  for (int row = 0; row < kTaps; row += 5)
    for (int col = 0; col < 5; ++col) a[col] += f(row + col);
  return ((a[0] + a[1]) + (a[2] + a[3])) + a[4];
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

  // The weight must already be in double, (C, 25) row-major. Sums run per channel (25 taps)
  // and then over channels: short dependency chains.
  Superkernel(std::vector<double> weight, int64_t c, const double* thresholds, const double* scale,
              bool can_skip)
      : channels(c), skippable(can_skip), w(std::move(weight)), w1(w.size()), w_eff(w.size()) {
    for (int i = 0; i < 3; ++i) {
      t[i] = thresholds[i];
      r[i] = scale[i];
    }
    double outer = 0;
    for (int64_t ch = 0; ch < c; ++ch) {
      const double* wc = &w[ch * kTaps];
      outer += tap_sum([&](int k) { return kInner[k] ? 0.0 : wc[k] * wc[k]; });
    }
    norm[0] = std::sqrt(outer);
    d[0] = (norm[0] - t[0] >= 0 ? 1.0 : 0.0) * r[0];
    double mask[kTaps];  // w1 = w * mask, tap by tap: M3 + d_kernel * M5
    for (int k = 0; k < kTaps; ++k) mask[k] = kInner[k] ? 1.0 : d[0];
    double hi = 0, lo = 0;
    for (int64_t ch = 0; ch < c; ++ch) {
      const double* wc = &w[ch * kTaps];
      double* w1c = &w1[ch * kTaps];
      for (int k = 0; k < kTaps; ++k) w1c[k] = wc[k] * mask[k];
      (ch < c / 2 ? lo : hi) += tap_sum([&](int k) { return w1c[k] * w1c[k]; });
    }
    norm[1] = std::sqrt(hi);
    norm[2] = std::sqrt(lo);
    d[1] = (norm[1] - t[1] >= 0 ? 1.0 : 0.0) * r[1];
    d[2] = skippable ? (norm[2] - t[2] >= 0 ? 1.0 : 0.0) * r[2] : 1.0;
    // w_eff = gate * w1, the lo half of the channels and then the hi half: two flat loops.
    for (const int64_t half : {int64_t(0), c / 2}) {
      const double gate = channel_gate(half);
      const int64_t end = (half == 0 ? c / 2 : c) * kTaps;
      for (int64_t i = half * kTaps; i < end; ++i) w_eff[i] = gate * w1[i];
    }
  }

  // Epilogue: from g_eff = dL/dw_eff (C, 25) and g_d = dL/dd (3), the gradients of the
  // weight (C, 25) and thresholds (3). Straight-through: dInd(z)/dz = sigmoid'(z); the
  // norm's gradient is w/||w||, 0 at 0.
  void backward(const std::vector<double>& g_eff, const double* g_d, std::vector<double>& g_w,
                double* g_t) const {
    const int64_t half = channels / 2;
    double sum_lo = 0, sum_hi = 0;  // dL/dw_eff . w1 over the lo and hi channels
    for (int64_t ch = 0; ch < channels; ++ch) {
      const double *g = &g_eff[ch * kTaps], *w1c = &w1[ch * kTaps];
      (ch < half ? sum_lo : sum_hi) += tap_sum([&](int k) { return g[k] * w1c[k]; });
    }
    // d_keep = Ind(||w1[lo]|| - t_keep) * r_keep (a constant 1 when not skippable);
    // d_expand = Ind(||w1[hi]|| - t_expand) * r_expand. Their straight-through gradients
    // reach w1 through the norms: g_z * w1 / ||.||.
    double g_z_keep = 0;
    g_t[2] = 0;
    if (skippable) {
      g_z_keep = (g_d[2] + sum_lo + d[1] * sum_hi) * r[2] * sigmoid_grad(norm[2] - t[2]);
      g_t[2] = -g_z_keep;
    }
    const double g_z_expand = (g_d[1] + d[2] * sum_hi) * r[1] * sigmoid_grad(norm[1] - t[1]);
    g_t[1] = -g_z_expand;
    const double to_lo = norm[2] > 0 ? g_z_keep / norm[2] : 0.0;
    const double to_hi = norm[1] > 0 ? g_z_expand / norm[1] : 0.0;
    // g_w holds dL/dw1 first: w1 = w*M3 + d_kernel * w*M5, d_kernel = Ind(||w*M5|| - t_kernel)
    // * r_kernel, whose gradient needs dL/dw1 . w over the outer ring.
    g_w.resize(g_eff.size());
    double g_kernel = g_d[0];
    for (int64_t ch = 0; ch < channels; ++ch) {
      const double gate = channel_gate(ch), to_norm = ch < half ? to_lo : to_hi;
      const int64_t c0 = ch * kTaps;
      for (int k = 0; k < kTaps; ++k) g_w[c0 + k] = g_eff[c0 + k] * gate + to_norm * w1[c0 + k];
      g_kernel += tap_sum([&](int k) { return kInner[k] ? 0.0 : g_w[c0 + k] * w[c0 + k]; });
    }
    const double g_z = g_kernel * r[0] * sigmoid_grad(norm[0] - t[0]);
    g_t[0] = -g_z;
    const double to_outer = norm[0] > 0 ? g_z / norm[0] : 0.0;
    for (int64_t ch = 0; ch < channels; ++ch)
      for (int k = 0; k < kTaps; ++k) {
        const int64_t i = ch * kTaps + k;
        if (!kInner[k]) g_w[i] = g_w[i] * d[0] + to_outer * w[i];
      }
  }
};

}  // namespace spnas
