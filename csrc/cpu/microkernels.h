// Register-blocked microkernels of the CPU op: sums over the taps of one channel block, on
// packed rows (layout.h), a block of output pixels at a time in vector registers. Only the
// taps the effective weight keeps are summed (the inner 3x3 when d_kernel = 0, none for a
// skipped layer or unused expansion channels).
#pragma once

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../superkernel.h"
#include "layout.h"

namespace spnas::cpu {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;

// Streaming stores: a channels_last output written in place (pixels C values apart, C a
// multiple of kBlock and at least 2 kBlock: a packed scratch row, pixels kBlock apart, is read
// back at once and never streams) is written past the caches, so that a store does not first
// read the line it fills (every pixel's line is a cache miss of its own: the pixels of one
// channel block are C values apart). C = 16 gains too little to stream (docs/kernels.md has
// the measurements). Threads that may have streamed end their share of a parallel_for with
// stream_fence().
template <typename acc_t>
bool streamable(const acc_t* out, int64_t pixel_stride) {
  return pixel_stride >= 2 * kBlock && pixel_stride % kBlock == 0 &&
         reinterpret_cast<uintptr_t>(out) % 64 == 0;
}

// v.store(p), past the caches when `stream` (p then 64-byte aligned) and the instruction set
// has streaming stores.
template <typename acc_t>
inline void store_out(acc_t* p, const Vectorized<acc_t>& v, bool stream) {
#if defined(CPU_CAPABILITY_AVX512)
  if (stream) {
    if constexpr (std::is_same_v<acc_t, float>) return _mm512_stream_ps(p, v);
    if constexpr (std::is_same_v<acc_t, double>) return _mm512_stream_pd(p, v);
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if (stream) {
    if constexpr (std::is_same_v<acc_t, float>) return _mm256_stream_ps(p, v);
    if constexpr (std::is_same_v<acc_t, double>) return _mm256_stream_pd(p, v);
  }
#endif
  v.store(p);
}

// Orders this thread's streaming stores before whatever follows (the end of a parallel
// region, after which other threads read the output).
inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  _mm_sfence();
#endif
}

// One tap of a row sum: pixel p of the output row reads src + p * (pixel stride) and
// multiplies it lane by lane with the kBlock weights at w.
template <typename acc_t>
struct Tap {
  const acc_t* src;
  const acc_t* w;
};

// Output pixels per register block of dense_row and row_sum: P pixels x V vectors of accumulators,
// as many as the vector registers hold beside one weight vector (16 registers with AVX2, 32 with
// AVX-512): P * V independent FMA chains, well over the 8 that hide the FMA latency on two pipes. P
// = 7 also divides the row lengths of the mnasnet stages (7, 14, 28, 56).
template <typename acc_t>
constexpr int kPixels = kBlock / Vectorized<acc_t>::size() == 1   ? 14
                        : kBlock / Vectorized<acc_t>::size() == 2 ? 7
                                                                  : 3;

// Calls block(P, p) for register blocks of P pixels from p on (P an integral_constant) that
// cover pixels [0, pixels): blocks of kPixels, the last computed again where it overlaps the
// one before (a sum is idempotent; a tail loop is slow); a shorter row by 4 pixels (and again
// the last 4) and, under 4, pixel by pixel.
template <typename acc_t, typename Block>
inline void register_blocks(int64_t pixels, const Block& block) {
  using Wide = std::integral_constant<int, kPixels<acc_t>>;
  using Four = std::integral_constant<int, 4>;
  int64_t p = 0;
  if (pixels >= Wide::value) {
    for (; p + Wide::value <= pixels; p += Wide::value) block(Wide{}, p);
    if (p < pixels) block(Wide{}, pixels - Wide::value);
  } else if (pixels >= 4) {
    for (; p + 4 <= pixels; p += 4) block(Four{}, p);
    if (p < pixels) block(Four{}, pixels - 4);
  } else {
    for (; p < pixels; ++p) block(std::integral_constant<int, 1>{}, p);
  }
}

// out[p] = sum_t w_t * src_t[p] for p in [0, pixels), kBlock lanes each, for any list of
// taps (the stride-2 transposed convolution): input pixels kBlock values apart (packed),
// output pixels out_ps apart. Register blocks of P pixels keep P x (kBlock / lanes)
// accumulators in registers, and each weight vector loaded serves P pixels.
template <typename acc_t, int P>
inline void sum_block(acc_t* out, int64_t p, const Tap<acc_t>* taps, int ntaps, int64_t out_ps,
                      bool stream) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t L = Vec::size(), V = kBlock / L;
  Vec a[P][V];
#pragma GCC unroll 16
  for (int j = 0; j < P; ++j)
#pragma GCC unroll 4
    for (int64_t v = 0; v < V; ++v) a[j][v] = Vec(0);
  for (int t = 0; t < ntaps; ++t) {
    const acc_t* x = taps[t].src + p * kBlock;
    // Opaque to the optimizer: otherwise it keeps p * kBlock + j * kBlock in one register per
    // load (constant over the taps), more than there are, and reloads them from the stack.
#if defined(__GNUC__)
    asm("" : "+r"(x));
#endif
#pragma GCC unroll 4
    for (int64_t v = 0; v < V; ++v) {
      const Vec w = Vec::loadu(taps[t].w + v * L);
#pragma GCC unroll 16
      for (int j = 0; j < P; ++j)
        a[j][v] = at::vec::fmadd(w, Vec::loadu(x + j * kBlock + v * L), a[j][v]);
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < P; ++j)
#pragma GCC unroll 4
    for (int64_t v = 0; v < V; ++v) store_out(out + (p + j) * out_ps + v * L, a[j][v], stream);
}

template <typename acc_t>
void row_sum(acc_t* out, int64_t pixels, const Tap<acc_t>* taps, int ntaps, int64_t out_ps) {
  const bool stream = streamable(out, out_ps);
  register_blocks<acc_t>(pixels, [&](auto pixels_per_block, int64_t p) {
    sum_block<acc_t, decltype(pixels_per_block)::value>(out, p, taps, ntaps, out_ps, stream);
  });
}

// The effective weight of one channel block, tap-major: w[t * kBlock + c], zero past the
// block's end; the same rotated by 180 degrees (the transposed convolution's weight); the
// taps that are nonzero for some channel of the block, and the kernel they span: 5 (5x5),
// 3 (only the inner 3x3: d_kernel = 0) or 0 (all zero: a skipped layer, unused expansion).
template <typename acc_t>
struct BlockWeight {
  alignas(64) acc_t w[kTaps * kBlock];
  alignas(64) acc_t flipped[kTaps * kBlock];
  int active[kTaps];
  int count = 0;
  int kernel = 0;
  BlockWeight(const double* w_eff, int64_t nc) {
    bool outer = false;
    for (int t = 0; t < kTaps; ++t) {
      bool any = false;
      for (int64_t c = 0; c < kBlock; ++c) {
        const double v = c < nc ? w_eff[c * kTaps + t] : 0.0;
        w[t * kBlock + c] = flipped[(kTaps - 1 - t) * kBlock + c] = static_cast<acc_t>(v);
        any = any || v != 0;
      }
      if (any) {
        active[count++] = t;
        outer = outer || !is_inner_tap(t);
      }
    }
    kernel = count == 0 ? 0 : outer ? 5 : 3;
  }
};

// out[p + j] for j < P: one register block of dense_row. Every product reads its input
// from memory (an operand of the FMA) and each weight vector loaded serves all P pixels.
template <typename acc_t, int S, int K, int P>
inline void dense_block(acc_t* out, int64_t p, const acc_t* const* rows, const acc_t* w, int64_t op,
                        bool stream) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t L = Vec::size(), V = kBlock / L;
  constexpr int k0 = (5 - K) / 2;
  Vec a[P][V];
#pragma GCC unroll 16
  for (int j = 0; j < P; ++j)
#pragma GCC unroll 4
    for (int64_t v = 0; v < V; ++v) a[j][v] = Vec(0);
  for (int kh = k0; kh < k0 + K; ++kh) {
    const acc_t* x = rows[kh] + p * S * kBlock;
#pragma GCC unroll 5
    for (int kw = k0; kw < k0 + K; ++kw) {
      const acc_t* xk = x + kw * kBlock;
      // Opaque to the optimizer: otherwise it sees that tap kw + S of pixel j reads what tap
      // kw of pixel j + 1 read, keeps those inputs in registers, and with P * V registers
      // taken by the sums spills them to the stack.
#if defined(__GNUC__)
      asm("" : "+r"(xk));
#endif
#pragma GCC unroll 4
      for (int64_t v = 0; v < V; ++v) {
        const Vec wv = Vec::loadu(w + (kh * 5 + kw) * kBlock + v * L);
#pragma GCC unroll 16
        for (int j = 0; j < P; ++j)
          a[j][v] = at::vec::fmadd(wv, Vec::loadu(xk + j * S * kBlock + v * L), a[j][v]);
      }
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < P; ++j)
#pragma GCC unroll 4
    for (int64_t v = 0; v < V; ++v) store_out(out + (p + j) * op + v * L, a[j][v], stream);
}

// out[p] = sum_{kh, kw < K} w[kh][kw] * rows[kh][p * S + kw] (K = 3: the inner taps), kBlock
// lanes per pixel, for a K x K kernel centred in the 5x5 one, from packed, zero-padded
// input rows (pixels kBlock values apart); output pixels out_ps apart.
template <typename acc_t, int S, int K>
void dense_row(acc_t* out, int64_t pixels, const acc_t* const* rows, const acc_t* w,
               int64_t out_ps) {
  const bool stream = streamable(out, out_ps);
  register_blocks<acc_t>(pixels, [&](auto pixels_per_block, int64_t p) {
    dense_block<acc_t, S, K, decltype(pixels_per_block)::value>(out, p, rows, w, out_ps, stream);
  });
}

// dense_row for a run-time stride (1 or 2) and kernel extent (3 or 5).
template <typename acc_t>
void dense_row(int64_t stride, int kernel, acc_t* out, int64_t pixels, const acc_t* const* rows,
               const acc_t* w, int64_t out_ps) {
  if (stride == 1)
    (kernel == 5 ? dense_row<acc_t, 1, 5> : dense_row<acc_t, 1, 3>)(out, pixels, rows, w, out_ps);
  else
    (kernel == 5 ? dense_row<acc_t, 2, 5> : dense_row<acc_t, 2, 3>)(out, pixels, rows, w, out_ps);
}

template <typename acc_t>
std::vector<BlockWeight<acc_t>> block_weights(const double* w_eff, int64_t C) {
  const int64_t blocks = (C + kBlock - 1) / kBlock;
  std::vector<BlockWeight<acc_t>> weights;  // (C / 16) x 2 x 25 x 16 values
  weights.reserve(blocks);
  for (int64_t b = 0; b < blocks; ++b)
    weights.emplace_back(w_eff + b * kBlock * kTaps, std::min(kBlock, C - b * kBlock));
  return weights;
}

// Zeroes kBlock lanes of `pixels` pixels `step` values apart.
template <typename acc_t>
void zero_pixels(acc_t* out, int64_t pixels, int64_t step) {
  for (int64_t p = 0; p < pixels; ++p) std::fill_n(out + p * step, kBlock, acc_t(0));
}

// One output row of one block, from the five packed input rows its kernel rows read; output
// pixels out_ps apart. A skipped layer (no nonzero tap): y = 0.
template <typename acc_t>
void output_row(const BlockWeight<acc_t>& bw, int64_t stride, acc_t* out, int64_t Wo,
                const acc_t* const* rows, int64_t out_ps) {
  if (bw.kernel > 0)
    dense_row(stride, bw.kernel, out, Wo, rows, bw.w, out_ps);
  else
    zero_pixels(out, Wo, out_ps);
}

// g[t * kBlock + c] += sum_{i,j} dy[i][j][c] * x[i*stride + kh - 2][j*stride + kw - 2][c] over
// output rows [i0, i1): the gradient of the effective weight for one block. x_row(r) is the
// first (padding) pixel of the packed image row r, padded by 2 pixels each side, a zero row
// or nullptr outside the image; dy_row(i) that of dy row i, padded by dy_pad. Per kernel row, the 5
// taps' accumulators stay in registers over runs of rows of at most kChainPixels pixels, and
// each run's sums are added to g: two levels of short sums. One chain over a whole plane of
// fp32 drifts several times further from the exact sum than PyTorch's own reductions do.
constexpr int64_t kChainPixels = 256;

template <typename acc_t, typename XRow, typename DyRow>
void weight_grad_rows(const XRow& x_row, const DyRow& dy_row, int64_t dy_pad, int64_t i0,
                      int64_t i1, int64_t Wo, int64_t stride, acc_t* g) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t L = Vec::size(), V = kBlock / L;
  const int64_t run = std::max<int64_t>(1, kChainPixels / std::max<int64_t>(Wo, 1));
  for (int kh = 0; kh < 5; ++kh)
    for (int64_t r0 = i0; r0 < i1; r0 += run) {
      Vec a[5][V];  // 5 taps x V vectors of independent accumulators
      for (int kw = 0; kw < 5; ++kw)
        for (int64_t v = 0; v < V; ++v) a[kw][v] = Vec(0);
      for (int64_t i = r0; i < std::min(i1, r0 + run); ++i) {
        const acc_t* dy = dy_row(i) + dy_pad * kBlock;
        const acc_t* x = x_row(i * stride + kh - 2);
        if (x == nullptr) continue;  // a row of zeros
        for (int64_t j = 0; j < Wo; ++j) {
          const acc_t* xj = x + j * stride * kBlock;
#pragma GCC unroll 4
          for (int64_t v = 0; v < V; ++v) {
            const Vec d = Vec::loadu(dy + j * kBlock + v * L);
#pragma GCC unroll 5
            for (int kw = 0; kw < 5; ++kw)
              a[kw][v] = at::vec::fmadd(d, Vec::loadu(xj + kw * kBlock + v * L), a[kw][v]);
          }
        }
      }
      for (int kw = 0; kw < 5; ++kw)
        for (int64_t v = 0; v < V; ++v) {
          acc_t* gp = g + (kh * 5 + kw) * kBlock + v * L;
          (Vec::loadu(gp) + a[kw][v]).store(gp);
        }
    }
}

// One row p of dx for one block: the transposed convolution of dy, whose rows are packed
// and zero-padded by dy_pad pixels each side (2 for stride 1, 1 for stride 2): dy_row(r) is
// row r's first (padding) pixel, a zero row for r outside the image. Written to out, pixels
// out_ps apart.
template <typename acc_t, typename DyRow>
void packed_input_grad_row(const DyRow& dy_row, int64_t dy_pad, int64_t p, int64_t W,
                           int64_t stride, const BlockWeight<acc_t>& bw, acc_t* out,
                           int64_t out_ps) {
  if (bw.count == 0) {  // a skipped layer or unused expansion channels: dx = 0
    zero_pixels(out, W, out_ps);
    return;
  }
  if (stride == 1) {
    // dx[p][q] = sum_{a,b} flipped[a][b] * dy[p + a - 2][q + b - 2]: a stride-1 convolution.
    const acc_t* rows[5];
    for (int a = 0; a < 5; ++a) rows[a] = dy_row(p + a - 2);
    dense_row<acc_t>(1, bw.kernel, out, W, rows, bw.flipped, out_ps);
    return;
  }
  // Stride 2: dx[p][2m + e] takes the taps with kh = p and kw = e (mod 2), from dy row
  // (p + 2 - kh) / 2 and column m + (e + 2 - kw) / 2.
  Tap<acc_t> taps[kTaps];
  for (int e = 0; e < 2; ++e) {
    int count = 0;
    for (int k = 0; k < bw.count; ++k) {
      const int t = bw.active[k], kh = t / 5, kw = t % 5;
      if (((p + kh) & 1) || ((kw - e) & 1)) continue;
      taps[count++] = {dy_row((p + 2 - kh) / 2) + (dy_pad + (e + 2 - kw) / 2) * kBlock,
                       bw.w + t * kBlock};
    }
    const int64_t pixels = (W - e + 1) / 2;
    if (count == 0)
      zero_pixels(out + e * out_ps, pixels, 2 * out_ps);
    else
      row_sum(out + e * out_ps, pixels, taps, count, 2 * out_ps);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace spnas::cpu
