// Backward plans of the CPU op: one pass over x and dy yields dx and dL/dw_eff, one plan per
// way of walking the work (backward_typed picks one). dL/dw_eff is summed in an order fixed by
// the shape, whatever the thread count (no atomics); dx is a gather over dy with the
// effective weight.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "../masked_dwconv.h"
#include "layout.h"
#include "microkernels.h"
#include "scheduling.h"

namespace spnas::cpu {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;

// dy is zero-padded so that dx is a gather: by 2 for stride 1 (dx[p][q] = sum
// w[kh][kw] dy[p+2-kh][q+2-kw]), by 1 for stride 2 (dy row (p+2-kh)/2 lies in [-1, Ho]).
inline int64_t dy_padding(int64_t stride) {
  return stride == 1 ? 2 : 1;
}

// The backward of a channels_last fp32/fp64 tensor of whole channel blocks, in place. The
// weight gradient is a sum over the whole batch: the work is cut into groups fixed by the
// shape alone (not the thread count), each group sums into its own partial, and the partials
// are added in order, in double: deterministic. One plan per way of cutting:
//  * swept: small planes (plane_fits), a batch of kSweepBatch or more: one group per
//    kSweepGroup samples, each packed in one sweep (pack_sample) into the planes of all its
//    blocks;
//  * samples: small planes, a smaller batch: groups of whole samples, every block of a sample
//    packed in turn while the sample is in cache;
//  * rows: large planes: one group per run of kRowRun output rows of a sample, read through
//    two RowRings, x's and dy's: each output row's weight gradient as soon as its x rows are
//    in, and each dx row of the run (rows [S i0, S i1)) as soon as the dy rows it reads are.
template <typename acc_t>
struct ChannelsLastBackward {
  enum class Plan { kSwept, kSamples, kRows };

  const acc_t *dy, *x;
  acc_t* dx;
  int64_t N, C, H, W, stride;
  const std::vector<BlockWeight<acc_t>>& weights;
  int64_t Ho = output_size(H, stride), Wo = output_size(W, stride);
  int64_t blocks = C / kBlock, per_block = kTaps * kBlock;
  int64_t x_ld = W + 2 * kPad, dy_pad = dy_padding(stride), dy_ld = Wo + 2 * dy_pad + 1;
  int64_t x_plane = (H + 2 * kPad) * x_ld * kBlock;
  int64_t dy_plane = (Ho + 2 * dy_pad) * dy_ld * kBlock;
  int64_t runs = (Ho + kRowRun - 1) / kRowRun;
  Plan plan = !plane_fits<acc_t>(H, W) ? Plan::kRows
              : N >= kSweepBatch       ? Plan::kSwept
                                       : Plan::kSamples;
  int64_t groups = plan == Plan::kSwept  ? (N + kSweepGroup - 1) / kSweepGroup
                   : plan == Plan::kRows ? N * runs
                                         : std::clamp<int64_t>((N * Ho * Wo * C + 65535) / 65536,
                                                               1, std::min<int64_t>(16, N));

  int64_t x_scratch() const {
    return plan == Plan::kSwept ? blocks * x_plane
           : plan == Plan::kRows ? RowRing<acc_t>::size(C, x_ld)
                                 : x_plane;
  }
  int64_t dy_scratch() const {
    return plan == Plan::kSwept ? blocks * dy_plane
           : plan == Plan::kRows ? RowRing<acc_t>::size(C, dy_ld)
                                 : dy_plane;
  }

  // dL/dw_eff of block b (into part) and its dx rows of sample n, from packed planes.
  void from_planes(int64_t n, int64_t b, const acc_t* X, const acc_t* DY, acc_t* part) const {
    weight_grad_rows(plane_rows(X, x_ld, kPad), plane_rows(DY, dy_ld, dy_pad), dy_pad, 0, Ho, Wo,
                     stride, part + b * per_block);
    for (int64_t p = 0; p < H; ++p)
      packed_input_grad_row(plane_rows(DY, dy_ld, dy_pad), dy_pad, p, W, stride, weights[b],
                            dx + ((n * H + p) * W) * C + b * kBlock, C);
  }

  void swept(int64_t g, acc_t* X, acc_t* DY, acc_t* part) const {
    for (int64_t n = g * kSweepGroup; n < std::min(N, (g + 1) * kSweepGroup); ++n) {
      pack_sample(x + n * H * W * C, H, W, C, kPad, x_ld, x_plane, X);
      pack_sample(dy + n * Ho * Wo * C, Ho, Wo, C, dy_pad, dy_ld, dy_plane, DY);
      for (int64_t b = 0; b < blocks; ++b) from_planes(n, b, X + b * x_plane, DY + b * dy_plane, part);
    }
  }

  void samples(int64_t g, acc_t* X, acc_t* DY, acc_t* part) const {
    for (int64_t n = g * N / groups; n < (g + 1) * N / groups; ++n)
      for (int64_t b = 0; b < blocks; ++b) {
        pack(PlaneBlock<const acc_t>(x + n * H * W * C, b * kBlock, W, C), H, W, kPad, x_ld, X);
        pack(PlaneBlock<const acc_t>(dy + n * Ho * Wo * C, b * kBlock, Wo, C), Ho, Wo, dy_pad,
             dy_ld, DY);
        from_planes(n, b, X, DY, part);
      }
  }

  void rows(int64_t g, acc_t* X, acc_t* DY, acc_t* part) const {
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
                         [&](int64_t r) { return dyin.row(r, b); }, dy_pad, i, i + 1, Wo, stride,
                         part + b * per_block);
      dx_rows(i);
    }
    dx_rows(Ho + 2);
  }

  void run(double* g_eff) const {
    // [group][block][tap][lane], each group's part zeroed and filled by the thread that runs it
    const std::unique_ptr<acc_t[]> partial(new acc_t[groups * blocks * per_block]);
    TaskQueue queue(groups);
    at::parallel_for(0, queue.workers(), 1, [&](int64_t, int64_t) {
      acc_t* X = thread_scratch<acc_t>(0, x_scratch());
      acc_t* DY = thread_scratch<acc_t>(1, dy_scratch());
      for (int64_t g; queue.claim(g);) {
        acc_t* part = partial.get() + g * blocks * per_block;
        std::fill_n(part, blocks * per_block, acc_t(0));
        if (plan == Plan::kSwept)
          swept(g, X, DY, part);
        else if (plan == Plan::kSamples)
          samples(g, X, DY, part);
        else
          rows(g, X, DY, part);
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
};

// Any dtype and memory format: one task per channel block, looping over the batch in order
// (deterministic sums), each sample's block packed into padded scratch images.
template <typename scalar_t>
void backward_by_blocks(const at::Tensor& dy, const at::Tensor& x, at::Tensor& dx, int64_t stride,
                        const double* w_eff, double* g_eff) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = output_size(H, stride), Wo = output_size(W, stride);
  const int64_t blocks = (C + kBlock - 1) / kBlock, x_ld = W + 2 * kPad;
  const int64_t dy_pad = dy_padding(stride), dy_ld = Wo + 2 * dy_pad + 1;
  const bool plane = PlaneWriter<scalar_t, acc_t>::wants_plane(
      PlaneBlock<scalar_t>(dx, 0, 0, std::min(kBlock, C)), W);
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
        pack(PlaneBlock<const scalar_t>(x, n, c0, nc), H, W, kPad, x_ld, X);
        pack(PlaneBlock<const scalar_t>(dy, n, c0, nc), Ho, Wo, dy_pad, dy_ld, DY);
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

// Picks the plan: in place for channels_last fp32/fp64 of whole channel blocks, by blocks
// otherwise.
template <typename scalar_t>
void backward_typed(const at::Tensor& dy, const at::Tensor& x, at::Tensor& dx, int64_t stride,
                    const double* w_eff, double* g_eff) {
  using acc_t = at::opmath_type<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (in_place<scalar_t>(x) && in_place<scalar_t>(dy) && in_place<scalar_t>(dx)) {
      const int64_t C = x.size(1);
      const std::vector<BlockWeight<acc_t>> weights = block_weights<acc_t>(w_eff, C);
      const ChannelsLastBackward<acc_t> plan{dy.const_data_ptr<acc_t>(), x.const_data_ptr<acc_t>(),
                                             dx.mutable_data_ptr<acc_t>(), x.size(0), C,
                                             x.size(2), x.size(3), stride, weights};
      return plan.run(g_eff);
    }
  }
  backward_by_blocks<scalar_t>(dy, x, dx, stride, w_eff, g_eff);
}

}  // namespace CPU_CAPABILITY
}  // namespace spnas::cpu
