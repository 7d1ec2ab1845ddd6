// CPU implementation of the spnas ops: the (C, 25) superkernel part in double
// (superkernel.h), the per-pixel work in the vectorized kernels of kernels.h, compiled per
// instruction set and chosen once at run time.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "../masked_dwconv.h"
#include "../superkernel.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace spnas::cpu {

#define SPNAS_DECLARE_KERNELS(ISA)                                                         \
  namespace ISA {                                                                          \
  void forward(const at::Tensor& x, at::Tensor& y, int64_t stride, const double* w_eff);   \
  void backward(const at::Tensor& dy, const at::Tensor& x, at::Tensor& dx, int64_t stride, \
                const double* w_eff, double* g_eff);                                       \
  }
SPNAS_DECLARE_KERNELS(DEFAULT)
#ifdef SPNAS_HAVE_AVX2
SPNAS_DECLARE_KERNELS(AVX2)
#endif
#ifdef SPNAS_HAVE_AVX512
SPNAS_DECLARE_KERNELS(AVX512)
#endif

namespace {

struct Kernels {
  const char* name;
  decltype(&DEFAULT::forward) forward;
  decltype(&DEFAULT::backward) backward;
};

// The best instruction set this processor has, unless ATEN_CPU_CAPABILITY (PyTorch's own
// switch) asks for a lower one.
Kernels select_kernels() {
  const char* env = std::getenv("ATEN_CPU_CAPABILITY");
  const std::string wanted = env ? env : "";
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
#ifdef SPNAS_HAVE_AVX512
  if ((wanted.empty() || wanted == "avx512") && __builtin_cpu_supports("avx512f") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma"))
    return {"avx512", &AVX512::forward, &AVX512::backward};
#endif
#ifdef SPNAS_HAVE_AVX2
  if ((wanted.empty() || wanted == "avx512" || wanted == "avx2") &&
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return {"avx2", &AVX2::forward, &AVX2::backward};
#endif
#endif
  return {"default", &DEFAULT::forward, &DEFAULT::backward};
}

const Kernels& kernels() {
  static const Kernels k = select_kernels();
  return k;
}

// An output of 32 MiB or more is a fresh mmap on every call (glibc serves requests above its
// largest mmap threshold, 32 MiB, that way): its first touch costs one page fault per 4 KiB
// page. Advising its 2 MiB-aligned interior as transparent huge pages before the kernels
// touch it makes that one fault per 2 MiB. Smaller outputs are not advised: glibc serves them
// from its heap, mostly already mapped, and where the heap must grow again huge-page faults
// there cost far more than small ones (docs/benchmarks.md has the figures). A no-op where THP
// is off or unsupported.
// SPNAS_POISON_OUTPUTS=1 (the test suite sets it): outputs start as NaN, so an element the
// kernels never write shows up; fresh pages are zeros and would hide a skipped write of zeros.
bool poison_outputs() {
  static const bool on = [] {
    const char* env = std::getenv("SPNAS_POISON_OUTPUTS");
    return env != nullptr && env[0] == '1';
  }();
  return on;
}

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  if (poison_outputs()) t.fill_(std::numeric_limits<double>::quiet_NaN());
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  constexpr size_t kFreshMapping = size_t(32) << 20;
  if (t.nbytes() >= kFreshMapping) {
    const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
    const uintptr_t lo = (begin + kHuge - 1) & ~(kHuge - 1);
    const uintptr_t hi = (begin + t.nbytes()) & ~(kHuge - 1);
    if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);  // advice only
  }
#endif
  return t;
}

std::vector<double> to_double_vector(const at::Tensor& t) {
  const at::Tensor d = t.detach().to(at::kDouble).contiguous();
  return std::vector<double>(d.const_data_ptr<double>(), d.const_data_ptr<double>() + d.numel());
}

// The (C, 25) part of a call on the host (superkernel.h): the weight in double and the state.
struct HostSuperkernel {
  std::vector<double> w;
  SuperkernelState state{};
  HostWalk walk;
  HostSuperkernel(const at::Tensor& weight, const at::Tensor& thresholds, const at::Tensor& scale,
                  bool skippable)
      : w(to_double_vector(weight)), walk{weight.size(0)} {
    const std::vector<double> t = to_double_vector(thresholds), r = to_double_vector(scale);
    state.channels = weight.size(0);
    state.skippable = skippable;
    for (int k = 0; k < 3; ++k) {
      state.t[k] = t[k];
      state.r[k] = r[k];
    }
    decide(w.data(), state, walk);
  }
  std::vector<double> effective_weight() {
    std::vector<double> w_eff(w.size());
    spnas::effective_weight(w.data(), state, w_eff.data(), walk);
    return w_eff;
  }
  at::Tensor decisions(const at::Tensor& thresholds) const {
    return at::tensor(std::vector<double>(state.d, state.d + 3), at::kDouble)
        .to(thresholds.scalar_type());
  }
  // The epilogue: dL/dw_eff ((C, 25) doubles) and dL/dd -> (grad_weight, grad_thresholds).
  std::tuple<at::Tensor, at::Tensor> gradients(const std::vector<double>& g_eff,
                                               const at::Tensor& grad_d, const at::Tensor& weight,
                                               const at::Tensor& thresholds) {
    const std::vector<double> g_d = to_double_vector(grad_d);
    std::vector<double> g_w(w.size()), g_t(3);
    superkernel_backward(w.data(), state, g_eff.data(), g_d.data(), g_w.data(),
                         [&](int k, double v) { g_t[k] = v; }, walk);
    return {at::tensor(g_w, at::kDouble).view(weight.sizes()).to(weight.scalar_type()),
            at::tensor(g_t, at::kDouble).to(thresholds.scalar_type())};
  }
};

std::tuple<at::Tensor, at::Tensor> masked_dwconv_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                     const at::Tensor& thresholds,
                                                     const at::Tensor& scale, int64_t stride,
                                                     bool skippable) {
  check_inputs(x, weight, thresholds, scale, stride);
  HostSuperkernel sk(weight, thresholds, scale, skippable);
  at::Tensor y = empty_output(
      {x.size(0), x.size(1), output_size(x.size(2), stride), output_size(x.size(3), stride)},
      x.options().memory_format(output_memory_format(x)));
  if (y.numel() > 0) kernels().forward(x, y, stride, sk.effective_weight().data());
  return {y, sk.decisions(thresholds)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_dwconv_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& grad_d, const at::Tensor& x,
    const at::Tensor& weight, const at::Tensor& thresholds, const at::Tensor& scale, int64_t stride,
    bool skippable) {
  check_inputs(x, weight, thresholds, scale, stride);
  const std::vector<int64_t> y_shape{x.size(0), x.size(1), output_size(x.size(2), stride),
                                     output_size(x.size(3), stride)};
  TORCH_CHECK(grad_y.sizes() == at::IntArrayRef(y_shape),
              "masked_dwconv_backward: grad_y must have shape ", at::IntArrayRef(y_shape), ", got ",
              grad_y.sizes());
  TORCH_CHECK(grad_y.scalar_type() == x.scalar_type(),
              "masked_dwconv_backward: grad_y dtype must match x");
  TORCH_CHECK(grad_d.numel() == 3, "masked_dwconv_backward: grad_d must have 3 elements");
  HostSuperkernel sk(weight, thresholds, scale, skippable);
  at::Tensor dx = empty_output(x.sizes(), x.options().memory_format(output_memory_format(x)));
  std::vector<double> g_eff(sk.w.size(), 0.0);
  if (x.numel() > 0)
    kernels().backward(grad_y, x, dx, stride, sk.effective_weight().data(), g_eff.data());
  auto [dw, dt] = sk.gradients(g_eff, grad_d, weight, thresholds);
  return {dx, dw, dt};
}

// The (C, 25) part alone (schema in csrc/masked_dwconv.cpp): w_eff in the accumulation dtype.
std::tuple<at::Tensor, at::Tensor> superkernel_weight_cpu(const at::Tensor& weight,
                                                          const at::Tensor& thresholds,
                                                          const at::Tensor& scale, bool skippable) {
  check_superkernel("superkernel_weight", weight, thresholds, scale);
  HostSuperkernel sk(weight, thresholds, scale, skippable);
  const at::ScalarType acc = weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor w_eff = at::tensor(sk.effective_weight(), at::kDouble).view(weight.sizes()).to(acc);
  return {w_eff, sk.decisions(thresholds)};
}

std::tuple<at::Tensor, at::Tensor> superkernel_weight_backward_cpu(
    const at::Tensor& grad_w_eff, const at::Tensor& grad_d, const at::Tensor& weight,
    const at::Tensor& thresholds, const at::Tensor& scale, bool skippable) {
  check_superkernel("superkernel_weight_backward", weight, thresholds, scale);
  check_superkernel_grads(grad_w_eff, grad_d, weight);
  HostSuperkernel sk(weight, thresholds, scale, skippable);
  return sk.gradients(to_double_vector(grad_w_eff), grad_d, weight, thresholds);
}

std::string cpu_capability() {
  return kernels().name;
}

int64_t parallel_threads() {
  std::atomic<int64_t> seen{0};
  at::parallel_for(0, 4096, 1, [&](int64_t, int64_t) {
    const int64_t t = at::get_thread_num() + 1;
    int64_t cur = seen.load();
    while (cur < t && !seen.compare_exchange_weak(cur, t)) {
    }
  });
  return seen.load();
}

}  // namespace

TORCH_LIBRARY_IMPL(spnas, CPU, m) {
  m.impl("masked_dwconv", &masked_dwconv_cpu);
  m.impl("masked_dwconv_backward", &masked_dwconv_backward_cpu);
  m.impl("superkernel_weight", &superkernel_weight_cpu);
  m.impl("superkernel_weight_backward", &superkernel_weight_backward_cpu);
}

// cpu_capability: which instruction set the CPU kernels run with here ("default", "avx2" or
// "avx512"). parallel_threads: how many threads the kernels' at::parallel_for runs on
// (torch.get_num_threads() when the library is built with torch's threading).
TORCH_LIBRARY_FRAGMENT(spnas, m) {
  m.def("cpu_capability() -> str", &cpu_capability);
  m.def("parallel_threads() -> int", &parallel_threads);
}

}  // namespace spnas::cpu
