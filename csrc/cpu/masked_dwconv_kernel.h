// CPU kernels of the masked superkernel depthwise convolution, compiled once per instruction
// set (kernel_default.cpp, kernel_avx2.cpp, kernel_avx512.cpp) into the namespace
// spnas::cpu::<CPU_CAPABILITY>; masked_dwconv_cpu.cpp picks one at run time.
//
// Layout of the work. Channels are processed in blocks of 16 (one vector or two or four,
// by instruction set); every sum is register-blocked over several output pixels (kPixels:
// dense_row, and row_sum for the stride-2 transposed convolution) and the nonzero taps only
// (the inner 3x3 when d_kernel = 0, none for a skipped layer or unused expansion channels).
// Every sum reads packed copies of its inputs: zero-padded images of 16-channel pixels in the
// accumulation type (converting dtype and memory format on the way: NCHW fp32 by 16x16
// vector transposes), so that every tap is an unchecked load of whole vectors, whatever the
// stride, plane size or layout.
//  * By blocks: a task packs one block of one sample, (H+4) x (W+4) x 16, and writes its
//    rows out through a PlaneWriter (in place for channels_last).
//  * channels_last fp32/fp64 of whole channel blocks, read in order, a whole row of all
//    channels at a time: a batch of kSweepBatch samples or more of small planes packs all
//    blocks of a sample in one sweep (pack_sample), one task per sample (per kSweepGroup
//    samples in the backward); large planes go
//    through rings of the last five packed rows of every block (RowRing), one task per run
//    of kRowRun output rows. Outputs are written in place.
// The backward reads x and dy once from memory and yields dx and dL/dw_eff. dL/dw_eff is
// summed in a fixed order whatever the thread count (no atomics): per channel block over
// the batch (by blocks), or per group of samples or run of rows with partials added in order
// (channels_last). dx is a gather over dy with the effective weight.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

#include "../masked_dwconv.h"
#include "../superkernel.h"

namespace spnas::cpu {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;

constexpr int64_t kBlock = 16;  // channels per block: one 64-byte line of fp32
constexpr int64_t kPad = 2;

// A strided view of one (sample, channel block) of a 4-D tensor.
template <typename scalar_t>
struct PlaneBlock {
  scalar_t* data;
  int64_t sc, sh, sw, channels;
  PlaneBlock(const at::Tensor& t, int64_t n, int64_t c0, int64_t nc)
      : data(t.data_ptr<scalar_t>() + n * t.stride(0) + c0 * t.stride(1)),
        sc(t.stride(1)),
        sh(t.stride(2)),
        sw(t.stride(3)),
        channels(nc) {}
  // A full block of a channels_last sample of W-pixel rows and C channels.
  PlaneBlock(scalar_t* sample, int64_t c0, int64_t W, int64_t C)
      : data(sample + c0), sc(1), sh(W * C), sw(C), channels(kBlock) {}
  bool channels_inner() const { return sc == 1 && channels == kBlock; }
};

// A full block of an fp32 tensor whose rows are contiguous (NCHW): copied by 16x16 transposes.
template <typename scalar_t, typename acc_t>
constexpr bool kFloat = std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>;

template <typename scalar_t, typename acc_t>
bool transposable(const PlaneBlock<scalar_t>& b) {
  return kFloat<scalar_t, acc_t> && b.sw == 1 && b.channels == kBlock;
}

// An NCHW fp32 block whose planes are contiguous but whose rows are not a multiple of 16
// pixels wide (56, 28, 14, 7): transposed 16 pixels at a time along the flattened plane, so
// that small planes are not copied lane by lane.
template <typename scalar_t, typename acc_t>
bool flat_transposable(const PlaneBlock<scalar_t>& b, int64_t W) {
  return transposable<scalar_t, acc_t>(b) && b.sh == W && W % kBlock != 0;
}

// Copies rows [0, H) x [0, W) of a block into a padded scratch image (pixel (h, w) at
// ((h + pad) * ld + w + pad) * kBlock), zeroing the lanes of channels past the block's end.
template <typename scalar_t, typename acc_t>
void pack(const PlaneBlock<scalar_t>& src, int64_t H, int64_t W, int64_t pad, int64_t ld,
          acc_t* dst) {
  if constexpr (kFloat<scalar_t, acc_t>) {
    if (flat_transposable<scalar_t, acc_t>(src, W)) {
      using Vec = Vectorized<float>;
      alignas(64) float tile[kBlock * kBlock];
      const int64_t pixels = H * W;
      int64_t h = 0, w = 0;
      for (int64_t q0 = 0; q0 < pixels; q0 += kBlock) {
        const int64_t n = std::min(kBlock, pixels - q0);
        if (n == kBlock) {
          at::vec::transpose_mxn<float, kBlock, kBlock>(src.data + q0, src.sc, tile, kBlock);
        } else {
          for (int64_t k = 0; k < n; ++k)
            for (int64_t c = 0; c < kBlock; ++c)
              tile[k * kBlock + c] = src.data[c * src.sc + q0 + k];
        }
        for (int64_t k = 0; k < n; ++k) {
          float* d = dst + ((h + pad) * ld + w + pad) * kBlock;
          for (int64_t v = 0; v < kBlock; v += Vec::size())
            Vec::loadu(tile + k * kBlock + v).store(d + v);
          if (++w == W) w = 0, ++h;
        }
      }
      return;
    }
  }
  for (int64_t h = 0; h < H; ++h) {
    acc_t* __restrict__ row = dst + ((h + pad) * ld + pad) * kBlock;
    const scalar_t* __restrict__ s = src.data + h * src.sh;
    if (src.channels_inner()) {
      // channels_last: one block is kBlock values every sw; the next block's values, which a
      // task packing the blocks of a sample in turn reads next, are fetched on the way.
      for (int64_t w = 0; w < W; ++w) {
        __builtin_prefetch(s + w * src.sw + kBlock);
        if constexpr (std::is_same_v<scalar_t, acc_t>) {  // whole vectors (gcc leaves it scalar)
          using Vec = Vectorized<acc_t>;
#pragma GCC unroll 4
          for (int64_t v = 0; v < kBlock; v += Vec::size())
            Vec::loadu(s + w * src.sw + v).store(row + w * kBlock + v);
        } else {
          for (int64_t c = 0; c < kBlock; ++c)
            row[w * kBlock + c] = static_cast<acc_t>(s[w * src.sw + c]);
        }
      }
    } else if (transposable<scalar_t, acc_t>(src)) {
      // NCHW fp32: 16 channels x 16 pixels at a time through vector registers.
      if constexpr (kFloat<scalar_t, acc_t>) {
        int64_t w = 0;
        for (; w + kBlock <= W; w += kBlock)
          at::vec::transpose_mxn<float, kBlock, kBlock>(s + w, src.sc, row + w * kBlock, kBlock);
        for (; w < W; ++w)
          for (int64_t c = 0; c < kBlock; ++c) row[w * kBlock + c] = s[c * src.sc + w];
      }
    } else {
      for (int64_t c = 0; c < kBlock; ++c) {
        if (c < src.channels) {
          const scalar_t* sc = s + c * src.sc;
          for (int64_t w = 0; w < W; ++w) row[w * kBlock + c] = static_cast<acc_t>(sc[w * src.sw]);
        } else {
          for (int64_t w = 0; w < W; ++w) row[w * kBlock + c] = acc_t(0);
        }
      }
    }
  }
}

// Writes one computed row (W pixels of kBlock lanes, contiguous) into row h of a block.
template <typename scalar_t, typename acc_t>
void unpack_row(const acc_t* __restrict__ row, int64_t W, int64_t h,
                const PlaneBlock<scalar_t>& dst) {
  scalar_t* __restrict__ d = dst.data + h * dst.sh;
  if (dst.channels_inner()) {
    for (int64_t w = 0; w < W; ++w)
      for (int64_t c = 0; c < kBlock; ++c)
        d[w * dst.sw + c] = static_cast<scalar_t>(row[w * kBlock + c]);
  } else if (transposable<scalar_t, acc_t>(dst)) {
    if constexpr (kFloat<scalar_t, acc_t>) {
      int64_t w = 0;
      for (; w + kBlock <= W; w += kBlock)
        at::vec::transpose_mxn<float, kBlock, kBlock>(row + w * kBlock, kBlock, d + w, dst.sc);
      for (; w < W; ++w)
        for (int64_t c = 0; c < kBlock; ++c) d[c * dst.sc + w] = row[w * kBlock + c];
    }
  } else {
    for (int64_t c = 0; c < dst.channels; ++c) {
      scalar_t* dc = d + c * dst.sc;
      for (int64_t w = 0; w < W; ++w) dc[w * dst.sw] = static_cast<scalar_t>(row[w * kBlock + c]);
    }
  }
}

// Where the rows of one output block are computed before they are written out: in place
// when the block is kBlock channels of pixels with contiguous channels in the accumulation
// type (channels_last fp32/fp64), pixels ps() apart; otherwise row by row through one row
// buffer, or, for a flat_transposable block, into an unpadded plane buffer that finish()
// transposes out 16 pixels at a time.
template <typename scalar_t, typename acc_t>
struct PlaneWriter {
  const PlaneBlock<scalar_t>& dst;
  int64_t W;
  acc_t* buf;  // one row (W * kBlock) or the whole plane (H * W * kBlock)
  bool flat, direct;
  int64_t pixels = 0;
  static bool wants_plane(const PlaneBlock<scalar_t>& dst, int64_t W) {
    return flat_transposable<scalar_t, acc_t>(dst, W);
  }
  PlaneWriter(const PlaneBlock<scalar_t>& d, int64_t w, acc_t* buffer)
      : dst(d),
        W(w),
        buf(buffer),
        flat(wants_plane(d, w)),
        direct(std::is_same_v<scalar_t, acc_t> && d.channels_inner()) {}
  acc_t* row(int64_t h) const {
    if constexpr (std::is_same_v<scalar_t, acc_t>)
      if (direct) return dst.data + h * dst.sh;
    return flat ? buf + h * W * kBlock : buf;
  }
  int64_t ps() const { return direct ? dst.sw : kBlock; }
  void done(int64_t h) {
    if (direct) return;
    if (flat)
      pixels = (h + 1) * W;
    else
      unpack_row(buf, W, h, dst);
  }
  void finish() const {
    if constexpr (kFloat<scalar_t, acc_t>) {
      if (!flat) return;
      int64_t q = 0;
      for (; q + kBlock <= pixels; q += kBlock)
        at::vec::transpose_mxn<float, kBlock, kBlock>(buf + q * kBlock, kBlock, dst.data + q,
                                                      dst.sc);
      for (; q < pixels; ++q)
        for (int64_t c = 0; c < kBlock; ++c) dst.data[c * dst.sc + q] = buf[q * kBlock + c];
    }
  }
};

// Streaming stores: a channels_last output written in place (pixels C values apart, C a
// multiple of kBlock and at least 2 kBlock: a packed scratch row, pixels kBlock apart, is read
// back at once and never streams) is written past the caches, so that a store does not first
// read the line it fills (every pixel's line is a cache miss of its own: the pixels of one
// channel block are C values apart). Measured on the development machine (2-core Zen 3 VM,
// batch 32 fp32, in-process A/B): with C >= 128 streamed already, streaming from C = 32 on made
// the forward 1.12x-1.2x and the backward 1.0x-1.4x faster at C = 32, 48, 64 and 96 (28 to 112
// px); C = 16 gained 1.03x-1.05x and is not streamed. Earlier, at C = 480 (14 px) and 1152
// (7 px): forward 1.2x-1.35x, backward 1.15x. (An output small enough to stay in cache for the
// next op is pushed to memory instead: a few hundred KB, read back in tens of microseconds.)
// Threads that may have streamed end their share of a parallel_for with stream_fence().
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

// Zeroed scratch of n values, kept per thread and slot across calls: a fresh allocation of
// this size is a fresh mmap, whose first touch costs a page fault per 4 KiB.
template <typename acc_t>
acc_t* thread_scratch(int slot, int64_t n) {
  constexpr int64_t kAlign = 64 / sizeof(acc_t);  // values per cache line
  thread_local std::vector<acc_t> buffers[3];
  std::vector<acc_t>& b = buffers[slot];
  if (static_cast<int64_t>(b.size()) < n + kAlign) b.resize(n + kAlign);
  acc_t* p =
      b.data() + (-(reinterpret_cast<std::uintptr_t>(b.data()) / sizeof(acc_t)) & (kAlign - 1));
  std::fill_n(p, n, acc_t(0));
  return p;
}

// Tasks [0, count) handed out one at a time, in order, to whichever thread asks next (an
// atomic counter) rather than in fixed equal shares: on a shared machine a thread that is
// slowed down takes fewer tasks instead of holding the others up at the end of the region.
// Run as at::parallel_for(0, queue.workers(), 1, ...), each worker claiming until none is left.
class TaskQueue {
 public:
  explicit TaskQueue(int64_t count) : count_(count) {}
  int64_t workers() const { return std::clamp<int64_t>(at::get_num_threads(), 1, count_); }
  bool claim(int64_t& task) {
    task = next_.fetch_add(1, std::memory_order_relaxed);
    return task < count_;
  }

 private:
  const int64_t count_;
  std::atomic<int64_t> next_{0};
};

// -- channels_last in place -------------------------------------------------------------------
// A channels_last tensor whose channels fill whole blocks (fp32, fp64) is written where it
// lies, a pixel's kBlock channels whole vectors at pixel stride C. It is read in order, a
// whole row of all channels at a time, into packed copies: of whole samples when the planes
// are small (pack_sample), of the last five rows when they are large (RowRing); a per-block
// copy would read it 64 bytes at a time, C values apart.

template <typename scalar_t>
bool in_place(const at::Tensor& t) {
  return std::is_same_v<scalar_t, at::opmath_type<scalar_t>> && t.size(1) % kBlock == 0 &&
         t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// Whether one block's zero-padded plane is small enough to pack whole and work on from the
// L2 cache (planes up to 28 x 28 in fp32); larger ones go row by row through RowRings.
template <typename acc_t>
bool plane_fits(int64_t H, int64_t W) {
  constexpr int64_t kLimit = 128 * 1024;
  return (H + 2 * kPad) * (W + 2 * kPad) * kBlock * static_cast<int64_t>(sizeof(acc_t)) <= kLimit;
}

// Small planes of a batch of at least kSweepBatch samples (fixed by the shape, never by the
// thread count, so that the weight gradient's order of summation is too) are packed a whole
// sample at a time: one sequential sweep over the sample copies every pixel's C channels
// into the padded planes of all its blocks (pack_sample), and the blocks are then computed
// from those planes. Packing block by block instead reads one 64-byte line in every C / 16,
// which measured here (2-core Zen 3 VM, 32 x 240 x 28 x 28 fp32) at half the speed of the
// sweep (13.5 against 27 GB/s); the planes of a sample (C / 16 of them, 1 MB at C = 240, 28 px)
// are read back from the L2 and L3 caches.
constexpr int64_t kSweepBatch = 8;
// Swept samples per backward task, summed into one weight-gradient partial of C x 25 values.
// Two instead of one halve the partials to zero, write and add up (with one per sample: 3.7 MB
// at 7 px, C = 1152, batch 32): 1.05x on that backward (in-process A/B); four left the two
// threads unevenly loaded at the end.
constexpr int64_t kSweepGroup = 2;

// Output rows per task of a large channels_last plane (RowRing): fixed, so that the
// backward's per-task weight-gradient partials are summed in an order fixed by the shape.
constexpr int64_t kRowRun = 16;

// Copies one channels_last row (W pixels of C channels, read in order) into the kBlock-channel
// rows of its C / kBlock blocks: pixel w of block b at dst + b * block_stride + w * kBlock.
template <typename acc_t>
void scatter_row(const acc_t* __restrict__ src, int64_t W, int64_t C, int64_t block_stride,
                 acc_t* __restrict__ dst) {
  using Vec = Vectorized<acc_t>;
  for (int64_t w = 0; w < W; ++w, src += C)
    for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
      acc_t* d = dst + c0 / kBlock * block_stride + w * kBlock;
#pragma GCC unroll 4
      for (int64_t v = 0; v < kBlock; v += Vec::size()) Vec::loadu(src + c0 + v).store(d + v);
    }
}

// Copies sample `src` (H x W pixels of C channels) into the padded planes of its C / kBlock
// blocks, `plane` values apart in dst (pixel (h, w) of block b at
// b * plane + ((h + pad) * ld + w + pad) * kBlock), reading src in order.
template <typename acc_t>
void pack_sample(const acc_t* src, int64_t H, int64_t W, int64_t C, int64_t pad, int64_t ld,
                 int64_t plane, acc_t* dst) {
  for (int64_t h = 0; h < H; ++h)
    scatter_row(src + h * W * C, W, C, plane, dst + ((h + pad) * ld + pad) * kBlock);
}

// A large channels_last plane (x, or dy in the backward) is read row by row, all C channels
// of a row in order, into a ring of the last five rows of every block, packed and
// zero-padded: every tap is then an unchecked load of whole vectors (no edge pixels to treat
// apart) from rings that stay in the L2 cache (5 x ld x 64 bytes per block). Row r of block b
// is `ld` pixels of kBlock values, `pad` zero pixels each side, at buf + (b * 5 + r % 5) * ld *
// kBlock; rows outside the image read as zeros. buf holds (C / kBlock * 5 + 1) * ld * kBlock zeroed
// values (the last row stays zero); rows are packed in order from row `packed` on, as fetch() asks
// for them.
template <typename acc_t>
struct RowRing {
  const acc_t* src;  // the sample: rows x W pixels x C channels
  int64_t rows, W, C, pad, ld;
  acc_t* buf;
  int64_t packed = 0;
  static int64_t size(int64_t C, int64_t ld) { return (C / kBlock * 5 + 1) * ld * kBlock; }
  // Packs the rows up to r (within the image) not packed yet: each row read in order.
  void fetch(int64_t r) {
    for (; packed <= std::min(r, rows - 1); ++packed)
      scatter_row(src + packed * W * C, W, C, 5 * ld * kBlock,
                  buf + ((packed % 5) * ld + pad) * kBlock);
  }
  const acc_t* row(int64_t r, int64_t b) const {
    return buf + (r < 0 || r >= rows ? C / kBlock * 5 : b * 5 + r % 5) * ld * kBlock;
  }
};

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

// A channels_last batch of small planes (kSweepBatch): one task per sample, packed in one
// sweep and computed block by block into y in place.
template <typename acc_t>
void forward_swept(const acc_t* x, acc_t* y, int64_t N, int64_t C, int64_t H, int64_t W,
                   int64_t stride, const std::vector<BlockWeight<acc_t>>& weights) {
  const int64_t Ho = output_size(H, stride), Wo = output_size(W, stride);
  const int64_t ld = W + 2 * kPad, plane = (H + 2 * kPad) * ld * kBlock;
  TaskQueue samples(N);
  at::parallel_for(0, samples.workers(), 1, [&](int64_t, int64_t) {
    acc_t* X = thread_scratch<acc_t>(0, C / kBlock * plane);
    const acc_t* rows[5];
    for (int64_t n; samples.claim(n);) {
      pack_sample(x + n * H * W * C, H, W, C, kPad, ld, plane, X);
      for (int64_t b = 0; b < C / kBlock; ++b) {
        const acc_t* Xb = X + b * plane;
        for (int64_t i = 0; i < Ho; ++i) {
          for (int kh = 0; kh < 5; ++kh) rows[kh] = Xb + (i * stride + kh) * ld * kBlock;
          output_row(weights[b], stride, y + ((n * Ho + i) * Wo) * C + b * kBlock, Wo, rows, C);
        }
      }
    }
    stream_fence();
  });
}

// A channels_last tensor of whole channel blocks whose planes are too large to pack whole:
// one task per run of kRowRun output rows of a sample, computed from a RowRing (which starts
// with the kernel rows above the run) and written in place.
template <typename acc_t>
void forward_rows(const acc_t* x, acc_t* y, int64_t N, int64_t C, int64_t H, int64_t W,
                  int64_t stride, const std::vector<BlockWeight<acc_t>>& weights) {
  const int64_t Ho = output_size(H, stride), Wo = output_size(W, stride), ld = W + 2 * kPad;
  const int64_t runs = (Ho + kRowRun - 1) / kRowRun;
  TaskQueue tasks(N * runs);
  at::parallel_for(0, tasks.workers(), 1, [&](int64_t, int64_t) {
    acc_t* buf = thread_scratch<acc_t>(0, RowRing<acc_t>::size(C, ld));
    const acc_t* rows[5];
    for (int64_t t; tasks.claim(t);) {
      const int64_t n = t / runs, i0 = t % runs * kRowRun, i1 = std::min(Ho, i0 + kRowRun);
      RowRing<acc_t> in{
          x + n * H * W * C, H, W, C, kPad, ld, buf, std::max<int64_t>(0, i0 * stride - 2)};
      for (int64_t i = i0; i < i1; ++i) {
        in.fetch(i * stride + 2);
        for (int64_t b = 0; b < C / kBlock; ++b) {
          for (int kh = 0; kh < 5; ++kh) rows[kh] = in.row(i * stride + kh - 2, b);
          output_row(weights[b], stride, y + ((n * Ho + i) * Wo) * C + b * kBlock, Wo, rows, C);
        }
      }
    }
    stream_fence();
  });
}

template <typename scalar_t>
void forward_typed(const at::Tensor& x, at::Tensor& y, int64_t stride, const double* w_eff) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = output_size(H, stride), Wo = output_size(W, stride);
  const int64_t blocks = (C + kBlock - 1) / kBlock, ld = W + 2 * kPad;
  const std::vector<BlockWeight<acc_t>> weights = block_weights<acc_t>(w_eff, C);
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (in_place<scalar_t>(x) && in_place<scalar_t>(y)) {
      if (!plane_fits<acc_t>(H, W))
        return forward_rows(x.data_ptr<acc_t>(), y.data_ptr<acc_t>(), N, C, H, W, stride, weights);
      if (N >= kSweepBatch)
        return forward_swept(x.data_ptr<acc_t>(), y.data_ptr<acc_t>(), N, C, H, W, stride, weights);
    }
  }
  const bool plane = PlaneWriter<scalar_t, acc_t>::wants_plane(
      PlaneBlock<scalar_t>(y, 0, 0, std::min(kBlock, C)), Wo);  // a per-plane output buffer
  at::parallel_for(0, N * blocks, 1, [&](int64_t begin, int64_t end) {
    acc_t* X = thread_scratch<acc_t>(0, (H + 2 * kPad) * ld * kBlock);
    acc_t* buf = thread_scratch<acc_t>(1, (plane ? Ho : 1) * Wo * kBlock);
    const acc_t* rows[5];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks, b = task % blocks, c0 = b * kBlock;
      const int64_t nc = std::min(kBlock, C - c0);
      const BlockWeight<acc_t>& bw = weights[b];
      const PlaneBlock<scalar_t> block(y, n, c0, nc);
      PlaneWriter<scalar_t, acc_t> out(block, Wo, buf);
      if (bw.count > 0) pack(PlaneBlock<scalar_t>(x, n, c0, nc), H, W, kPad, ld, X);
      for (int64_t i = 0; i < Ho; ++i) {
        for (int kh = 0; kh < 5; ++kh) rows[kh] = X + (i * stride + kh) * ld * kBlock;
        output_row(bw, stride, out.row(i), Wo, rows, out.ps());
        out.done(i);
      }
      out.finish();
    }
    stream_fence();
  });
}

// g[t * kBlock + c] += sum_{i,j} dy[i][j][c] * x[i*stride + kh - 2][j*stride + kw - 2][c] over
// output rows [i0, i1): the gradient of the effective weight for one block. x_row(r) is the
// first (padding) pixel of the packed image row r, padded by 2 pixels each side, a zero row
// or nullptr outside the image; dy_row(i) that of dy row i, padded by dy_pad. Per kernel row, the 5
// taps' accumulators stay in registers over all the rows; their sums are then added to g.
template <typename acc_t, typename XRow, typename DyRow>
void weight_grad_rows(const XRow& x_row, const DyRow& dy_row, int64_t dy_pad, int64_t i0,
                      int64_t i1, int64_t Wo, int64_t stride, acc_t* g) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t L = Vec::size(), V = kBlock / L;
  for (int kh = 0; kh < 5; ++kh) {
    Vec a[5][V];  // 5 taps x V vectors of independent accumulators
    for (int kw = 0; kw < 5; ++kw)
      for (int64_t v = 0; v < V; ++v) a[kw][v] = Vec(0);
    for (int64_t i = i0; i < i1; ++i) {
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

// The rows of one packed plane, padded by `pad` rows and pixels of zeros each side: row r's
// first (padding) pixel.
template <typename acc_t>
auto plane_rows(const acc_t* plane, int64_t ld, int64_t pad) {
  return [=](int64_t r) { return plane + (r + pad) * ld * kBlock; };
}

// The backward of a channels_last tensor of whole channel blocks. The weight gradient is a
// sum over the whole batch: the work is cut into `groups` fixed by the shape alone (not the
// thread count), each group sums into its own partial, and the partials are added in order,
// in double: deterministic.
//  * Small planes (plane_fits), a batch of kSweepBatch or more: one group per kSweepGroup
//    samples, each packed in one sweep (pack_sample) into the planes of all its blocks.
//  * Small planes, a smaller batch: groups of whole samples, every block of a sample packed
//    in turn while the sample is in cache.
//  * Large planes: one group per run of kRowRun output rows of a sample, read through two
//    RowRings, x's and dy's: each output row's weight gradient as soon as its x rows are
//    in, and each dx row of the run (rows [S i0, S i1)) as soon as the dy rows it reads are.
template <typename acc_t>
void backward_channels_last(const acc_t* dy, const acc_t* x, acc_t* dx, int64_t N, int64_t C,
                            int64_t H, int64_t W, int64_t stride,
                            const std::vector<BlockWeight<acc_t>>& weights, double* g_eff) {
  const int64_t Ho = output_size(H, stride), Wo = output_size(W, stride);
  const int64_t blocks = C / kBlock, per_block = kTaps * kBlock;
  const bool planes = plane_fits<acc_t>(H, W), swept = planes && N >= kSweepBatch;
  const int64_t runs = (Ho + kRowRun - 1) / kRowRun;
  const int64_t groups = swept     ? (N + kSweepGroup - 1) / kSweepGroup
                         : !planes ? N * runs
                                   : std::clamp<int64_t>((N * Ho * Wo * C + 65535) / 65536, 1,
                                                         std::min<int64_t>(16, N));
  const int64_t x_ld = W + 2 * kPad, dy_pad = stride == 1 ? 2 : 1, dy_ld = Wo + 2 * dy_pad + 1;
  const int64_t x_plane = (H + 2 * kPad) * x_ld * kBlock;
  const int64_t dy_plane = (Ho + 2 * dy_pad) * dy_ld * kBlock;
  // [group][block][tap][lane], each group's part zeroed and filled by the thread that runs it
  const std::unique_ptr<acc_t[]> partial(new acc_t[groups * blocks * per_block]);
  TaskQueue queue(groups);
  at::parallel_for(0, queue.workers(), 1, [&](int64_t, int64_t) {
    acc_t* X = thread_scratch<acc_t>(0, swept    ? blocks * x_plane
                                        : planes ? x_plane
                                                 : RowRing<acc_t>::size(C, x_ld));
    acc_t* DY = thread_scratch<acc_t>(1, swept    ? blocks * dy_plane
                                         : planes ? dy_plane
                                                  : RowRing<acc_t>::size(C, dy_ld));
    for (int64_t g; queue.claim(g);) {
      acc_t* part = partial.get() + g * blocks * per_block;
      std::fill_n(part, blocks * per_block, acc_t(0));
      if (swept)
        for (int64_t n = g * kSweepGroup; n < std::min(N, (g + 1) * kSweepGroup); ++n) {
          pack_sample(x + n * H * W * C, H, W, C, kPad, x_ld, x_plane, X);
          pack_sample(dy + n * Ho * Wo * C, Ho, Wo, C, dy_pad, dy_ld, dy_plane, DY);
          for (int64_t b = 0; b < blocks; ++b) {
            const acc_t* DYb = DY + b * dy_plane;
            weight_grad_rows(plane_rows(X + b * x_plane, x_ld, kPad),
                             plane_rows(DYb, dy_ld, dy_pad), dy_pad, 0, Ho, Wo, stride,
                             part + b * per_block);
            for (int64_t p = 0; p < H; ++p)
              packed_input_grad_row(plane_rows(DYb, dy_ld, dy_pad), dy_pad, p, W, stride,
                                    weights[b], dx + ((n * H + p) * W) * C + b * kBlock, C);
          }
        }
      else if (planes) {
        for (int64_t n = g * N / groups; n < (g + 1) * N / groups; ++n)
          for (int64_t b = 0; b < blocks; ++b) {
            const int64_t c0 = b * kBlock;
            pack(PlaneBlock<acc_t>(const_cast<acc_t*>(x) + n * H * W * C, c0, W, C), H, W, kPad,
                 x_ld, X);
            pack(PlaneBlock<acc_t>(const_cast<acc_t*>(dy) + n * Ho * Wo * C, c0, Wo, C), Ho, Wo,
                 dy_pad, dy_ld, DY);
            weight_grad_rows(plane_rows(X, x_ld, kPad), plane_rows(DY, dy_ld, dy_pad), dy_pad, 0,
                             Ho, Wo, stride, part + b * per_block);
            for (int64_t p = 0; p < H; ++p)
              packed_input_grad_row(plane_rows(DY, dy_ld, dy_pad), dy_pad, p, W, stride, weights[b],
                                    dx + ((n * H + p) * W) * C + c0, C);
          }
      } else {
        // sample n, output rows [i0, i1), dx rows [p, p_end): dx row p reads dy rows
        // ceil((p - 2) / S) to (p + 2) / S.
        const int64_t n = g / runs, i0 = g % runs * kRowRun, i1 = std::min(Ho, i0 + kRowRun);
        int64_t p = stride * i0;
        const int64_t p_end = i1 == Ho ? H : stride * i1;
        RowRing<acc_t> xin{
            x + n * H * W * C, H, W, C, kPad, x_ld, X, std::max<int64_t>(0, i0 * stride - 2)};
        const int64_t dy_first = std::max<int64_t>(0, (p + stride - 3) / stride);
        RowRing<acc_t> dyin{dy + n * Ho * Wo * C, Ho, Wo, C, dy_pad, dy_ld, DY, dy_first};
        auto dx_rows = [&](int64_t last) {  // the dx rows that read no dy row past `last`
          for (; p < p_end && (p + 2) / stride <= last; ++p) {
            dyin.fetch((p + 2) / stride);
            for (int64_t b = 0; b < blocks; ++b)
              packed_input_grad_row([&](int64_t r) { return dyin.row(r, b); }, dy_pad, p, W, stride,
                                    weights[b], dx + ((n * H + p) * W) * C + b * kBlock, C);
          }
        };
        for (int64_t i = i0; i < i1; ++i) {
          xin.fetch(i * stride + 2);
          dyin.fetch(i);
          for (int64_t b = 0; b < blocks; ++b)
            weight_grad_rows([&](int64_t r) { return r >= 0 && r < H ? xin.row(r, b) : nullptr; },
                             [&](int64_t r) { return dyin.row(r, b); }, dy_pad, i, i + 1, Wo,
                             stride, part + b * per_block);
          dx_rows(i);
        }
        dx_rows(Ho + 2);
      }
    }
    stream_fence();
  });
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {  // groups added in order
    std::vector<double> sum(per_block);
    for (int64_t b = begin; b < end; ++b) {
      std::fill(sum.begin(), sum.end(), 0.0);
      for (int64_t g = 0; g < groups; ++g) {  // whole blocks of partials: vectorized adds
        const acc_t* part = partial.get() + (g * blocks + b) * per_block;
        for (int64_t k = 0; k < per_block; ++k) sum[k] += part[k];
      }
      for (int t = 0; t < kTaps; ++t)
        for (int64_t c = 0; c < kBlock; ++c)
          g_eff[(b * kBlock + c) * kTaps + t] = sum[t * kBlock + c];
    }
  });
}

template <typename scalar_t>
void backward_typed(const at::Tensor& dy, const at::Tensor& x, at::Tensor& dx, int64_t stride,
                    const double* w_eff, double* g_eff) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = output_size(H, stride), Wo = output_size(W, stride);
  const int64_t blocks = (C + kBlock - 1) / kBlock, x_ld = W + 2 * kPad;
  // dy is zero-padded so that dx is a gather: by 2 for stride 1 (dx[p][q] = sum
  // w[kh][kw] dy[p+2-kh][q+2-kw]), by 1 for stride 2 (dy row (p+2-kh)/2 lies in [-1, Ho]).
  const int64_t dy_pad = stride == 1 ? 2 : 1, dy_ld = Wo + 2 * dy_pad + 1;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (in_place<scalar_t>(x) && in_place<scalar_t>(dy) && in_place<scalar_t>(dx))
      return backward_channels_last(dy.data_ptr<acc_t>(), x.data_ptr<acc_t>(), dx.data_ptr<acc_t>(),
                                    N, C, H, W, stride, block_weights<acc_t>(w_eff, C), g_eff);
  }
  const bool plane = PlaneWriter<scalar_t, acc_t>::wants_plane(
      PlaneBlock<scalar_t>(dx, 0, 0, std::min(kBlock, C)), W);
  // One task per channel block, looping over the batch in order: deterministic sums.
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    acc_t* X = thread_scratch<acc_t>(0, (H + 2 * kPad) * x_ld * kBlock);
    acc_t* DY = thread_scratch<acc_t>(1, (Ho + 2 * dy_pad) * dy_ld * kBlock);
    acc_t* buf = thread_scratch<acc_t>(2, (plane ? H : 1) * W * kBlock);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t c0 = b * kBlock, nc = std::min(kBlock, C - c0);
      const BlockWeight<acc_t> bw(w_eff + c0 * kTaps, nc);
      std::vector<double> g(kTaps * kBlock, 0.0);  // summed over the batch in double
      alignas(64) acc_t plane_sum[kTaps * kBlock];
      for (int64_t n = 0; n < N; ++n) {
        pack(PlaneBlock<scalar_t>(x, n, c0, nc), H, W, kPad, x_ld, X);
        pack(PlaneBlock<scalar_t>(dy, n, c0, nc), Ho, Wo, dy_pad, dy_ld, DY);
        std::fill_n(plane_sum, kTaps * kBlock, acc_t(0));
        weight_grad_rows(plane_rows(X, x_ld, kPad), plane_rows(DY, dy_ld, dy_pad), dy_pad, 0, Ho,
                         Wo, stride, plane_sum);
        for (int64_t k = 0; k < kTaps * kBlock; ++k) g[k] += plane_sum[k];
        const PlaneBlock<scalar_t> block(dx, n, c0, nc);
        PlaneWriter<scalar_t, acc_t> out(block, W, buf);
        for (int64_t p = 0; p < H; ++p) {
          packed_input_grad_row(plane_rows(DY, dy_ld, dy_pad), dy_pad, p, W, stride, bw, out.row(p),
                                out.ps());
          out.done(p);
        }
        out.finish();
      }
      for (int64_t c = 0; c < nc; ++c)
        for (int t = 0; t < kTaps; ++t) g_eff[(c0 + c) * kTaps + t] = g[t * kBlock + c];
    }
    stream_fence();
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
