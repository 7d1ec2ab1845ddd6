// Task scheduling of the CPU kernels: per-thread scratch, tasks handed out from a counter, and
// the task sizes of the plans, fixed by the problem's shape so that every sum is too.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

namespace spnas::cpu {
namespace CPU_CAPABILITY {

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


// Small planes of a batch of at least kSweepBatch samples (fixed by the shape, never by the
// thread count, so that the weight gradient's order of summation is too) are packed a whole
// sample at a time: one sequential sweep over the sample copies every pixel's C channels
// into the padded planes of all its blocks (pack_sample), and the blocks are then computed
// from those planes, read back from the caches. Packing block by block instead reads one
// 64-byte line in every C / 16, at about half the bandwidth (docs/kernels.md).
constexpr int64_t kSweepBatch = 8;
// Swept samples per backward task, summed into one weight-gradient partial of C x 25 values:
// two halve the partials to zero, write and add up; more leave the threads unevenly loaded at
// the end (docs/kernels.md).
constexpr int64_t kSweepGroup = 2;

// Output rows per task of a large channels_last plane (RowRing): fixed, so that the
// backward's per-task weight-gradient partials are summed in an order fixed by the shape.
constexpr int64_t kRowRun = 16;

}  // namespace CPU_CAPABILITY
}  // namespace spnas::cpu
