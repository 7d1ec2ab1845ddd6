// Packing and layouts of the CPU kernels: a channel block (kBlock channels) of one sample,
// copied into zero-padded scratch images of 16-channel pixels in the accumulation type, and
// written back out, for any dtype and memory format. Every tap of a microkernel is then an
// unchecked load of whole vectors, whatever the stride, plane size or layout.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace spnas::cpu {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;

constexpr int64_t kBlock = 16;  // channels per block: one 64-byte line of fp32
constexpr int64_t kPad = 2;

// The elements of t, read-only when T is const.
template <typename T>
T* elements(const at::Tensor& t) {
  if constexpr (std::is_const_v<T>)
    return t.const_data_ptr<std::remove_const_t<T>>();
  else
    return t.mutable_data_ptr<T>();
}

// A strided view of one (sample, channel block) of a 4-D tensor; T is const for a block that
// is only read (an input).
template <typename T>
struct PlaneBlock {
  T* data;
  int64_t sc, sh, sw, channels;
  PlaneBlock(const at::Tensor& t, int64_t n, int64_t c0, int64_t nc)
      : data(elements<T>(t) + n * t.stride(0) + c0 * t.stride(1)),
        sc(t.stride(1)),
        sh(t.stride(2)),
        sw(t.stride(3)),
        channels(nc) {}
  // A full block of a channels_last sample of W-pixel rows and C channels.
  PlaneBlock(T* sample, int64_t c0, int64_t W, int64_t C)
      : data(sample + c0), sc(1), sh(W * C), sw(C), channels(kBlock) {}
  bool channels_inner() const { return sc == 1 && channels == kBlock; }
};

// A full block of an fp32 tensor whose rows are contiguous (NCHW): copied by 16x16 transposes.
template <typename scalar_t, typename acc_t>
constexpr bool kFloat = std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>;

template <typename scalar_t, typename acc_t, typename T>
bool transposable(const PlaneBlock<T>& b) {
  return kFloat<scalar_t, acc_t> && b.sw == 1 && b.channels == kBlock;
}

// An NCHW fp32 block whose planes are contiguous but whose rows are not a multiple of 16
// pixels wide (56, 28, 14, 7): transposed 16 pixels at a time along the flattened plane, so
// that small planes are not copied lane by lane.
template <typename scalar_t, typename acc_t, typename T>
bool flat_transposable(const PlaneBlock<T>& b, int64_t W) {
  return transposable<scalar_t, acc_t>(b) && b.sh == W && W % kBlock != 0;
}

// Copies rows [0, H) x [0, W) of a block into a padded scratch image (pixel (h, w) at
// ((h + pad) * ld + w + pad) * kBlock), zeroing the lanes of channels past the block's end.
template <typename scalar_t, typename acc_t>
void pack(const PlaneBlock<const scalar_t>& src, int64_t H, int64_t W, int64_t pad, int64_t ld,
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

// The rows of one packed plane, padded by `pad` rows and pixels of zeros each side: row r's
// first (padding) pixel.
template <typename acc_t>
auto plane_rows(const acc_t* plane, int64_t ld, int64_t pad) {
  return [=](int64_t r) { return plane + (r + pad) * ld * kBlock; };
}

}  // namespace CPU_CAPABILITY
}  // namespace spnas::cpu
