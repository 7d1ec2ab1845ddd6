// Forward plans of the CPU op: y = depthwise_conv2d(x, w_eff, stride, padding=2), one plan
// per way of walking the work (forward_typed picks one).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <vector>

#include "../masked_dwconv.h"
#include "layout.h"
#include "microkernels.h"
#include "scheduling.h"

namespace spnas::cpu {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;

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

// Any dtype and memory format: one task per (sample, channel block), packed into a padded
// scratch image and written out through a PlaneWriter.
template <typename scalar_t>
void forward_by_blocks(const at::Tensor& x, at::Tensor& y, int64_t stride,
                       const std::vector<BlockWeight<at::opmath_type<scalar_t>>>& weights) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = output_size(H, stride), Wo = output_size(W, stride);
  const int64_t blocks = (C + kBlock - 1) / kBlock, ld = W + 2 * kPad;
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
      if (bw.count > 0) pack(PlaneBlock<const scalar_t>(x, n, c0, nc), H, W, kPad, ld, X);
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

// Picks the plan: in place for channels_last fp32/fp64 of whole channel blocks (rows for large
// planes, whole samples for a batch of small ones), by blocks otherwise.
template <typename scalar_t>
void forward_typed(const at::Tensor& x, at::Tensor& y, int64_t stride, const double* w_eff) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const std::vector<BlockWeight<acc_t>> weights = block_weights<acc_t>(w_eff, C);
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (in_place<scalar_t>(x) && in_place<scalar_t>(y)) {
      const acc_t* in = x.const_data_ptr<acc_t>();
      acc_t* out = y.mutable_data_ptr<acc_t>();
      if (!plane_fits<acc_t>(H, W)) return forward_rows(in, out, N, C, H, W, stride, weights);
      if (N >= kSweepBatch) return forward_swept(in, out, N, C, H, W, stride, weights);
    }
  }
  forward_by_blocks<scalar_t>(x, y, stride, weights);
}

}  // namespace CPU_CAPABILITY
}  // namespace spnas::cpu
