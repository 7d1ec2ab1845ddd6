// The (C, 25)-sized part of the superkernel op (SPEC section 1), written once for the CPU and
// the GPU: the decisions and the effective weight before the convolution, and the epilogue
// after it that turns the gradient of the effective weight into the gradients of the weight
// and of the three thresholds. Everything here is O(C * 25), runs once per call and sums in
// double.
//
// How the (C, 25) values are walked is the caller's: a `Walk` provides
//   double sum(f)   the sum of f(c, k) over channels c < C and taps k < 25, the same value on
//                   every caller;
//   void each(f)    f(c, k) for every channel c and tap k.
// The CPU walks them in one thread (HostWalk); the CUDA kernels split them among the threads
// of one block and reduce in shared memory (csrc/cuda/superkernel_kernels.cuh). Tensors of
// (C, 25) values are row-major: (c, k) is element c * 25 + k.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__)
#define SPNAS_HOST_DEVICE __host__ __device__
#else
#define SPNAS_HOST_DEVICE
#endif

namespace spnas {

constexpr int kTaps = 25;  // 5x5 superkernel

// M3: the inner 3x3 taps of the 5x5 kernel. M5 = 1 - M3 is the outer ring.
SPNAS_HOST_DEVICE constexpr bool is_inner_tap(int tap) {
  return tap / 5 >= 1 && tap / 5 <= 3 && tap % 5 >= 1 && tap % 5 <= 3;
}

// The straight-through gradient of Ind(z): sigmoid'(z).
SPNAS_HOST_DEVICE inline double sigmoid_grad(double z) {
  const double s = 1.0 / (1.0 + exp(-z));
  return s * (1.0 - s);
}

// Ind(z) * r: the decision of an indicator with its dropout multiplier.
SPNAS_HOST_DEVICE inline double decision(double norm, double t, double r) {
  return (norm - t >= 0 ? 1.0 : 0.0) * r;
}

// A double rounded to Out (through float for the 16-bit types, which convert from float).
template <typename Out>
SPNAS_HOST_DEVICE Out narrow(double v) {
  if constexpr (std::is_same_v<Out, double>)
    return v;
  else
    return static_cast<Out>(static_cast<float>(v));
}

// The scalars of one call: inputs (thresholds t, indicator-dropout multipliers r) and the
// forward quantities the epilogue needs (norms, decisions). A plain struct: the CUDA forward
// kernel writes it to device memory and the backward epilogue reads it back.
struct SuperkernelState {
  int64_t channels;
  bool skippable;
  double t[3];     // thresholds (t_kernel, t_expand, t_keep)
  double r[3];     // indicator-dropout multipliers (scale)
  double norm[3];  // ||w*M5||, ||w1[hi]||, ||w1[lo]||
  double d[3];     // decisions (d_kernel, d_expand, d_keep)

  SPNAS_HOST_DEVICE bool is_lo(int64_t c) const { return c < channels / 2; }
  // w1 = w*M3 + d_kernel * w*M5, tap by tap.
  SPNAS_HOST_DEVICE double w1(int k, double w) const { return is_inner_tap(k) ? w : d[0] * w; }
  // Multiplier of w1 in w_eff: d_keep on lo, d_keep * d_expand on hi.
  SPNAS_HOST_DEVICE double gate(int64_t c) const { return is_lo(c) ? d[2] : d[2] * d[1]; }
};

// The norms and decisions for weight w ((C, 25), any element type), given state.t, r,
// channels and skippable.
template <typename T, typename Walk>
SPNAS_HOST_DEVICE void decide(const T* w, SuperkernelState& s, Walk& walk) {
  auto at = [&](int64_t c, int k) { return static_cast<double>(w[c * kTaps + k]); };
  s.norm[0] = sqrt(walk.sum([&](int64_t c, int k) {
    return is_inner_tap(k) ? 0.0 : at(c, k) * at(c, k);
  }));
  s.d[0] = decision(s.norm[0], s.t[0], s.r[0]);
  auto w1_squared = [&](int64_t c, int k, bool lo) {
    const double v = s.is_lo(c) == lo ? s.w1(k, at(c, k)) : 0.0;
    return v * v;
  };
  s.norm[1] = sqrt(walk.sum([&](int64_t c, int k) { return w1_squared(c, k, false); }));
  s.norm[2] = sqrt(walk.sum([&](int64_t c, int k) { return w1_squared(c, k, true); }));
  s.d[1] = decision(s.norm[1], s.t[1], s.r[1]);
  s.d[2] = s.skippable ? decision(s.norm[2], s.t[2], s.r[2]) : 1.0;
}

// w_eff = gate * w1.
template <typename T, typename Out, typename Walk>
SPNAS_HOST_DEVICE void effective_weight(const T* w, const SuperkernelState& s, Out* w_eff,
                                        Walk& walk) {
  walk.each([&](int64_t c, int k) {
    const int64_t i = c * kTaps + k;
    w_eff[i] = narrow<Out>(s.gate(c) * s.w1(k, static_cast<double>(w[i])));
  });
}

// The epilogue: from g_eff = dL/dw_eff (C, 25) and g_d = dL/dd (3), the gradients of the
// weight, g_w (C, 25), and of the thresholds, g_t (3). Straight-through: dInd(z)/dz =
// sigmoid'(z); a norm's gradient is v/||v||, 0 at 0. store_t(k, value) writes g_t[k] (called
// by every caller of the walk with the same values).
template <typename T, typename G, typename Out, typename Walk, typename StoreT>
SPNAS_HOST_DEVICE void superkernel_backward(const T* w, const SuperkernelState& s, const G* g_eff,
                                            const double* g_d, Out* g_w, StoreT store_t,
                                            Walk& walk) {
  auto at = [&](int64_t c, int k) { return static_cast<double>(w[c * kTaps + k]); };
  auto g_eff_at = [&](int64_t c, int k) { return static_cast<double>(g_eff[c * kTaps + k]); };
  // dL/dw_eff . w1 over the lo and hi channels.
  auto g_eff_w1 = [&](int64_t c, int k, bool lo) {
    return s.is_lo(c) == lo ? g_eff_at(c, k) * s.w1(k, at(c, k)) : 0.0;
  };
  const double sum_lo = walk.sum([&](int64_t c, int k) { return g_eff_w1(c, k, true); });
  const double sum_hi = walk.sum([&](int64_t c, int k) { return g_eff_w1(c, k, false); });
  // d_keep = Ind(||w1[lo]|| - t_keep) * r_keep (a constant 1 when not skippable);
  // d_expand = Ind(||w1[hi]|| - t_expand) * r_expand. Their straight-through gradients
  // reach w1 through the norms: g_z * w1 / ||.||.
  const double g_z_keep =
      s.skippable ? (g_d[2] + sum_lo + s.d[1] * sum_hi) * s.r[2] * sigmoid_grad(s.norm[2] - s.t[2])
                  : 0.0;
  const double g_z_expand =
      (g_d[1] + s.d[2] * sum_hi) * s.r[1] * sigmoid_grad(s.norm[1] - s.t[1]);
  const double to_lo = s.norm[2] > 0 ? g_z_keep / s.norm[2] : 0.0;
  const double to_hi = s.norm[1] > 0 ? g_z_expand / s.norm[1] : 0.0;
  // dL/dw1: through w_eff = gate * w1 and through the two norms.
  auto g_w1 = [&](int64_t c, int k) {
    return g_eff_at(c, k) * s.gate(c) + (s.is_lo(c) ? to_lo : to_hi) * s.w1(k, at(c, k));
  };
  // w1 = w*M3 + d_kernel * w*M5 with d_kernel = Ind(||w*M5|| - t_kernel) * r_kernel, whose
  // gradient needs dL/dw1 . w over the outer ring.
  const double g_kernel = g_d[0] + walk.sum([&](int64_t c, int k) {
    return is_inner_tap(k) ? 0.0 : g_w1(c, k) * at(c, k);
  });
  const double g_z = g_kernel * s.r[0] * sigmoid_grad(s.norm[0] - s.t[0]);
  const double to_outer = s.norm[0] > 0 ? g_z / s.norm[0] : 0.0;
  walk.each([&](int64_t c, int k) {
    const double g = g_w1(c, k);
    g_w[c * kTaps + k] = narrow<Out>(is_inner_tap(k) ? g : g * s.d[0] + to_outer * at(c, k));
  });
  store_t(0, -g_z);
  store_t(1, -g_z_expand);
  store_t(2, s.skippable ? -g_z_keep : 0.0);
}

// One thread walks the (C, 25) values in order. Sums run per channel as five interleaved
// partial sums (one per kernel column): independent dependency chains rather than one 25
// adds deep, then over the channels in order.
struct HostWalk {
  int64_t channels;
  template <typename F>
  double sum(F f) const {
    double total = 0;
    for (int64_t c = 0; c < channels; ++c) {
      double a[5] = {0, 0, 0, 0, 0};
      for (int row = 0; row < kTaps; row += 5)
        for (int col = 0; col < 5; ++col) a[col] += f(c, row + col);
      total += ((a[0] + a[1]) + (a[2] + a[3])) + a[4];
    }
    return total;
  }
  template <typename F>
  void each(F f) const {
    for (int64_t c = 0; c < channels; ++c)
      for (int k = 0; k < kTaps; ++k) f(c, k);
  }
};

}  // namespace spnas
