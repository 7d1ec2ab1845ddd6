// CPU kernels of the masked superkernel depthwise convolution, compiled once per instruction
// set (kernel_default.cpp, kernel_avx2.cpp, kernel_avx512.cpp) into the namespace
// spnas::cpu::<CPU_CAPABILITY>; masked_dwconv_cpu.cpp picks one at run time.
//
// Layout of the work. Every channel is a small 2-D problem, so each task copies ("packs")
// the planes of one block of channels into zero-padded float scratch planes (converting the
// dtype and the memory format on the way), computes there with vector loads along the
// width, and copies the result out. In the scratch, every tap of every sum is a plain
// contiguous row:
//   * stride 1: one plane with 2 zero rows/columns of padding on each side;
//   * stride 2: the padded plane split into its even and odd columns, so that column
//     2j + kw is column j + kw/2 of the even (kw even) or odd (kw odd) half.
// The backward reads x and dy once from memory; dL/dw_eff is accumulated per channel in the
// task that owns the channel (deterministic: no atomics), and dx is computed as a gather
// with the effective weight, skipping taps whose effective weight is 0 (3x3 or skipped).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <array>
#include <vector>

#include "../superkernel.h"

namespace spnas::cpu {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;

inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// Channels packed together per task. NCHW tensors pack one plane at a time; channels_last
// tensors pack 16 channels, so that each pixel's channels are read as one contiguous run.
inline int64_t channel_block(const at::Tensor& x) {
  return (x.stride(1) == 1 && x.size(1) > 1) ? 16 : 1;
}

// Sizes of the scratch planes of one channel for a given problem and vector length.
struct Geometry {
  int64_t H, W, Ho, Wo, stride, lanes;
  int64_t Wv;            // output row length, rounded up to whole vectors
  int64_t x_ld, x_half;  // input plane: row length and size of one column-parity half
  int64_t x_plane;       // input scratch per channel
  int64_t dy_pad, dy_ld, dy_plane;
  int64_t dx_ld, dx_plane;  // dx scratch per channel (both parities for stride 2)

  Geometry(int64_t h, int64_t w, int64_t s, int64_t l) : H(h), W(w), stride(s), lanes(l) {
    Ho = (H - 1) / stride + 1;
    Wo = (W - 1) / stride + 1;
    Wv = round_up(Wo, lanes);
    const int64_t rows = H + 4;
    if (stride == 1) {
      x_ld = Wv + 4;  // taps reach columns j .. j + 4
      x_half = rows * x_ld;
      x_plane = x_half;
    } else {
      x_ld = Wv + 2;  // taps reach columns j .. j + 2 of either half
      x_half = rows * x_ld;
      x_plane = 2 * x_half;
    }
    // dy is zero-padded so that dx is a gather: by 2 for stride 1, by 1 for stride 2.
    dy_pad = stride == 1 ? 2 : 1;
    const int64_t dx_cols = stride == 1 ? W : (W + 1) / 2;  // per column parity for stride 2
    dx_ld = round_up(dx_cols, lanes);
    dy_ld = std::max(Wv, dx_ld + 2 * dy_pad) + dy_pad;
    dy_plane = (Ho + 2 * dy_pad) * dy_ld;
    dx_plane = (stride == 1 ? 1 : 2) * H * dx_ld;
  }

  // Where element (h, w) of the unpadded input lands in the packed input plane.
  int64_t x_index(int64_t h, int64_t w) const {
    const int64_t col = w + 2;
    if (stride == 1) return (h + 2) * x_ld + col;
    return (col & 1) * x_half + (h + 2) * x_ld + (col >> 1);
  }
  // Offset of tap (kh, kw) relative to the start of output row i's window (row i * stride).
  int64_t x_tap(int kh, int kw) const {
    if (stride == 1) return kh * x_ld + kw;
    return (kw & 1) * x_half + kh * x_ld + (kw >> 1);
  }
};

// Visits every (c, h, w) of a block of channels in the order that reads memory contiguously:
// width innermost for NCHW, channels innermost for channels_last.
template <typename F>
inline void for_each_element(int64_t channels, int64_t H, int64_t W, bool channels_inner, F f) {
  if (channels_inner) {
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w)
        for (int64_t c = 0; c < channels; ++c) f(c, h, w);
  } else {
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w) f(c, h, w);
  }
}

// A strided view of one (sample, channel block) of a 4-D tensor.
template <typename scalar_t>
struct PlaneBlock {
  scalar_t* data;
  int64_t sc, sh, sw;
  bool channels_inner;
  PlaneBlock(const at::Tensor& t, int64_t n, int64_t c0)
      : data(t.data_ptr<scalar_t>() + n * t.stride(0) + c0 * t.stride(1)),
        sc(t.stride(1)), sh(t.stride(2)), sw(t.stride(3)),
        channels_inner(t.stride(1) == 1 && t.size(1) > 1) {}
  scalar_t& at(int64_t c, int64_t h, int64_t w) const { return data[c * sc + h * sh + w * sw]; }
};

// out[j] = sum_t coef[t] * src[t][j] for j in [0, len), len a multiple of the vector length.
template <typename acc_t>
inline void window_sum(acc_t* out, int64_t len, const acc_t* const* src, const acc_t* coef,
                       int taps) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t L = Vec::size();
  int64_t j = 0;
  for (; j + 4 * L <= len; j += 4 * L) {
    Vec a0(0), a1(0), a2(0), a3(0);
    for (int t = 0; t < taps; ++t) {
      const Vec c(coef[t]);
      const acc_t* p = src[t] + j;
      a0 = at::vec::fmadd(c, Vec::loadu(p), a0);
      a1 = at::vec::fmadd(c, Vec::loadu(p + L), a1);
      a2 = at::vec::fmadd(c, Vec::loadu(p + 2 * L), a2);
      a3 = at::vec::fmadd(c, Vec::loadu(p + 3 * L), a3);
    }
    a0.store(out + j);
    a1.store(out + j + L);
    a2.store(out + j + 2 * L);
    a3.store(out + j + 3 * L);
  }
  for (; j < len; j += L) {
    Vec a(0);
    for (int t = 0; t < taps; ++t) a = at::vec::fmadd(Vec(coef[t]), Vec::loadu(src[t] + j), a);
    a.store(out + j);
  }
}

template <typename acc_t>
inline double lane_sum(const Vectorized<acc_t>& v) {
  alignas(64) acc_t buf[Vectorized<acc_t>::size()];
  v.store(buf);
  double s = 0;
  for (int64_t i = 0; i < Vectorized<acc_t>::size(); ++i) s += buf[i];
  return s;
}

// g[kh*5 + kw] += sum_{i,j} dy[i][j] * x[i*stride + kh][j*stride + kw] for one packed channel:
// the gradient of the effective weight. One pass per kernel row keeps its 5 accumulators
// (x2 unrolled) in registers; the plane is small enough to stay in cache across passes.
template <typename acc_t>
inline void weight_grad_plane(const Geometry& g, const acc_t* X, const acc_t* DY, double* out) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t L = Vec::size();
  const int64_t s = g.stride;
  for (int kh = 0; kh < 5; ++kh) {
    Vec a[5], b[5];
    for (int kw = 0; kw < 5; ++kw) a[kw] = b[kw] = Vec(0);
    for (int64_t i = 0; i < g.Ho; ++i) {
      const acc_t* dy = DY + (i + g.dy_pad) * g.dy_ld + g.dy_pad;
      const acc_t* x[5];
      for (int kw = 0; kw < 5; ++kw) x[kw] = X + i * s * g.x_ld + g.x_tap(kh, kw);
      int64_t j = 0;
      for (; j + 2 * L <= g.Wv; j += 2 * L) {
        const Vec d0 = Vec::loadu(dy + j), d1 = Vec::loadu(dy + j + L);
        for (int kw = 0; kw < 5; ++kw) {
          a[kw] = at::vec::fmadd(d0, Vec::loadu(x[kw] + j), a[kw]);
          b[kw] = at::vec::fmadd(d1, Vec::loadu(x[kw] + j + L), b[kw]);
        }
      }
      for (; j < g.Wv; j += L) {
        const Vec d0 = Vec::loadu(dy + j);
        for (int kw = 0; kw < 5; ++kw) a[kw] = at::vec::fmadd(d0, Vec::loadu(x[kw] + j), a[kw]);
      }
    }
    for (int kw = 0; kw < 5; ++kw) out[kh * 5 + kw] += lane_sum<acc_t>(a[kw] + b[kw]);
  }
}

// The nonzero taps of one channel's effective weight.
template <typename acc_t>
struct Taps {
  int count = 0;
  std::array<int, kTaps> index{};
  std::array<acc_t, kTaps> coef{};
  explicit Taps(const double* w) {
    for (int t = 0; t < kTaps; ++t)
      if (w[t] != 0) {
        index[count] = t;
        coef[count++] = static_cast<acc_t>(w[t]);
      }
  }
};

template <typename scalar_t>
void forward_typed(const at::Tensor& x, at::Tensor& y, int64_t stride, const double* w_eff) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1);
  const Geometry g(x.size(2), x.size(3), stride, Vectorized<acc_t>::size());
  const int64_t cb = channel_block(x), blocks = (C + cb - 1) / cb;
  at::parallel_for(0, N * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> X(cb * g.x_plane, acc_t(0)), Y(cb * g.Ho * g.Wv);
    const acc_t* src[kTaps];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks, c0 = (task % blocks) * cb, nc = std::min(cb, C - c0);
      const PlaneBlock<scalar_t> in(x, n, c0), out(y, n, c0);
      for_each_element(nc, g.H, g.W, in.channels_inner, [&](int64_t c, int64_t h, int64_t w) {
        X[c * g.x_plane + g.x_index(h, w)] = static_cast<acc_t>(in.at(c, h, w));
      });
      for (int64_t c = 0; c < nc; ++c) {
        const Taps<acc_t> taps(w_eff + (c0 + c) * kTaps);
        acc_t* yc = Y.data() + c * g.Ho * g.Wv;
        if (taps.count == 0) {  // a skipped layer or an unused expansion channel
          std::fill(yc, yc + g.Ho * g.Wv, acc_t(0));
          continue;
        }
        const acc_t* xc = X.data() + c * g.x_plane;
        for (int64_t i = 0; i < g.Ho; ++i) {
          for (int t = 0; t < taps.count; ++t)
            src[t] = xc + i * stride * g.x_ld + g.x_tap(taps.index[t] / 5, taps.index[t] % 5);
          window_sum(yc + i * g.Wv, g.Wv, src, taps.coef.data(), taps.count);
        }
      }
      for_each_element(nc, g.Ho, g.Wo, out.channels_inner, [&](int64_t c, int64_t h, int64_t w) {
        out.at(c, h, w) = static_cast<scalar_t>(Y[(c * g.Ho + h) * g.Wv + w]);
      });
    }
  });
}

// dx for one packed channel: the transposed convolution of dy with the effective weight,
// written as a gather over the zero-padded dy so that each dx row is a window_sum.
template <typename acc_t>
inline void input_grad_plane(const Geometry& g, const acc_t* DY, const Taps<acc_t>& taps,
                             acc_t* DX) {
  const acc_t* src[kTaps];
  acc_t coef[kTaps];
  if (g.stride == 1) {
    // dx[p][q] = sum w[kh][kw] dy[p + 2 - kh][q + 2 - kw] = sum w * DY[p + 4 - kh][q + 4 - kw]
    for (int64_t p = 0; p < g.H; ++p) {
      for (int t = 0; t < taps.count; ++t) {
        const int kh = taps.index[t] / 5, kw = taps.index[t] % 5;
        src[t] = DY + (p + 4 - kh) * g.dy_ld + (4 - kw);
      }
      window_sum(DX + p * g.dx_ld, g.dx_ld, src, taps.coef.data(), taps.count);
    }
    return;
  }
  // Stride 2: dx[p][2m + b] takes the taps with kh = p (mod 2) and kw = b (mod 2):
  // dy row i = (p + 2 - kh) / 2 and column m + (b + 2 - kw) / 2, i.e. DY (padded by 1)
  // row i + 1 and column m + 1 + (b + 2 - kw) / 2.
  for (int64_t p = 0; p < g.H; ++p) {
    for (int b = 0; b < 2; ++b) {
      int n = 0;
      for (int t = 0; t < taps.count; ++t) {
        const int kh = taps.index[t] / 5, kw = taps.index[t] % 5;
        if (((p + kh) & 1) || ((kw - b) & 1)) continue;
        src[n] = DY + ((p + 2 - kh) / 2 + 1) * g.dy_ld + 1 + (b + 2 - kw) / 2;
        coef[n++] = taps.coef[t];
      }
      window_sum(DX + (b * g.H + p) * g.dx_ld, g.dx_ld, src, coef, n);
    }
  }
}

template <typename scalar_t>
void backward_typed(const at::Tensor& dy, const at::Tensor& x, at::Tensor& dx, int64_t stride,
                    const double* w_eff, double* g_eff) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1);
  const Geometry g(x.size(2), x.size(3), stride, Vectorized<acc_t>::size());
  const int64_t cb = channel_block(x), blocks = (C + cb - 1) / cb;
  std::fill(g_eff, g_eff + C * kTaps, 0.0);
  // One task per channel block, looping over the batch: each channel's weight gradient is
  // summed by one task in a fixed order, so the result is deterministic.
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> X(cb * g.x_plane, acc_t(0)), DY(cb * g.dy_plane, acc_t(0)),
        DX(cb * g.dx_plane, acc_t(0));
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t c0 = blk * cb, nc = std::min(cb, C - c0);
      std::vector<Taps<acc_t>> taps;
      for (int64_t c = 0; c < nc; ++c) taps.emplace_back(w_eff + (c0 + c) * kTaps);
      for (int64_t n = 0; n < N; ++n) {
        const PlaneBlock<scalar_t> in(x, n, c0), grad_out(dy, n, c0), grad_in(dx, n, c0);
        for_each_element(nc, g.H, g.W, in.channels_inner, [&](int64_t c, int64_t h, int64_t w) {
          X[c * g.x_plane + g.x_index(h, w)] = static_cast<acc_t>(in.at(c, h, w));
        });
        for_each_element(nc, g.Ho, g.Wo, grad_out.channels_inner,
                         [&](int64_t c, int64_t h, int64_t w) {
          DY[c * g.dy_plane + (h + g.dy_pad) * g.dy_ld + w + g.dy_pad] =
              static_cast<acc_t>(grad_out.at(c, h, w));
        });
        for (int64_t c = 0; c < nc; ++c) {
          const acc_t* xc = X.data() + c * g.x_plane;
          const acc_t* dyc = DY.data() + c * g.dy_plane;
          weight_grad_plane(g, xc, dyc, g_eff + (c0 + c) * kTaps);
          acc_t* dxc = DX.data() + c * g.dx_plane;
          if (taps[c].count == 0)
            std::fill(dxc, dxc + g.dx_plane, acc_t(0));
          else
            input_grad_plane(g, dyc, taps[c], dxc);
        }
        if (stride == 1) {
          for_each_element(nc, g.H, g.W, grad_in.channels_inner,
                           [&](int64_t c, int64_t h, int64_t w) {
            grad_in.at(c, h, w) = static_cast<scalar_t>(DX[c * g.dx_plane + h * g.dx_ld + w]);
          });
        } else {
          for_each_element(nc, g.H, g.W, grad_in.channels_inner,
                           [&](int64_t c, int64_t h, int64_t w) {
            grad_in.at(c, h, w) = static_cast<scalar_t>(
                DX[c * g.dx_plane + ((w & 1) * g.H + h) * g.dx_ld + (w >> 1)]);
          });
        }
      }
    }
  });
}

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
