// fastui._C: the generator-loss core and the DSM loss on the CPU (OpenMP threads, SIMD loops), bound with pybind11
// on raw addresses (see fastui_native.h for the layouts; fastui/backends/cpp.py is the only caller).
//
// Core, per sample i over its d pixels (MATH.md §5, functional.score_distill_core_reference):
//   delta = dt - df,  e = df - x
//   S = sum delta e,  F = sum delta^2,  P = sum delta x,  A = sum |x - dt|            (reduction sweep)
//   inv = normalize ? 1 / max(A / d, 1e-5) : 1
//   a = kA inv,  b = kB inv,  c = clamp((kC0 + kCF F + kCS S) inv, +-c_clip)          (c, inv detached)
//   L = a S + b F + c P
//   dL/dx = (c - a) delta,  dL/ddt = a e + 2 b delta,  dL/ddf = a (delta - e) - 2 b delta   (elementwise sweep)
// A sample is valid iff S, F, P, A and its five k are finite; invalid samples get L = 0 and zero gradients.
//
// DSM, per sample: L = lam sum (df - x)^2, dL/ddf = 2 lam (df - x); valid iff lam and every (df - x) are finite.
//
// Work is split into (sample, chunk) tasks so that a batch of one still uses every thread; a row is processed whole
// (reduction then elementwise while it is still in cache) when there are enough rows to keep the threads busy.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "fastui_native.h"

namespace py = pybind11;
using fastui::CoreCoeffs;

namespace {

namespace generic {
#include "core_cpu_kernels.h"
}  // namespace generic

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FASTUI_X86_AVX2 1
// The same kernels for CPUs with AVX2/FMA/F16C: 8-wide loops; bf16/fp16 conversions gain the most. -ffp-contract
// stays off (ISO C++ mode), so FMA does not change the formulas' rounding, only the sums' lane grouping differs.
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2 {
#include "core_cpu_kernels.h"
}  // namespace avx2
#pragma GCC pop_options
#endif

bool use_avx2() {
#ifdef FASTUI_X86_AVX2
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c") && std::getenv("FASTUI_CPU_GENERIC") == nullptr;
  return yes;
#else
  return false;
#endif
}

template <class T>
T* ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

void core_forward(uintptr_t x, uintptr_t dt, uintptr_t df, uintptr_t k, int64_t batch, int64_t d, int dtype,
                  bool normalize, double c_clip, uintptr_t loss, uintptr_t valid, uintptr_t gx, uintptr_t gdt,
                  uintptr_t gdf, int threads) {
  if (batch < 1 || d < 1) throw std::invalid_argument("core_forward: need batch >= 1 and d >= 1");
  if ((gx == 0) != (gdt == 0) || (gx == 0) != (gdf == 0))
    throw std::invalid_argument("core_forward: pass all three gradient addresses or none");
  if (dtype != fastui::kFloat32 && dtype != fastui::kBFloat16 && dtype != fastui::kFloat16)
    throw std::invalid_argument("core_forward: unknown dtype code " + std::to_string(dtype));
  const int nt = generic::resolve_threads(threads, batch * d);
  auto* fn = &generic::core_forward_dtype;
#ifdef FASTUI_X86_AVX2
  if (use_avx2()) fn = &avx2::core_forward_dtype;
#endif
  fn(dtype, ptr<const void>(x), ptr<const void>(dt), ptr<const void>(df), ptr<const float>(k), batch, d, normalize,
     static_cast<float>(c_clip), ptr<float>(loss), ptr<uint8_t>(valid), ptr<void>(gx), ptr<void>(gdt), ptr<void>(gdf),
     nt);
}

void dsm_forward(uintptr_t df, uintptr_t x, uintptr_t lam, int64_t batch, int64_t d, int dtype, uintptr_t loss,
                 uintptr_t valid, uintptr_t g, int threads) {
  if (batch < 1 || d < 1) throw std::invalid_argument("dsm_forward: need batch >= 1 and d >= 1");
  if (dtype != fastui::kFloat32 && dtype != fastui::kBFloat16 && dtype != fastui::kFloat16)
    throw std::invalid_argument("dsm_forward: unknown dtype code " + std::to_string(dtype));
  const int nt = generic::resolve_threads(threads, batch * d);
  auto* fn = &generic::dsm_forward_dtype;
#ifdef FASTUI_X86_AVX2
  if (use_avx2()) fn = &avx2::dsm_forward_dtype;
#endif
  fn(dtype, ptr<const void>(df), ptr<const void>(x), ptr<const float>(lam), batch, d, ptr<float>(loss),
     ptr<uint8_t>(valid), ptr<void>(g), nt);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastui CPU kernels (generator-loss core, DSM loss) on raw addresses; called by fastui.backends.cpp";
  m.attr("ABI_VERSION") = 1;
  m.attr("SIMD") = use_avx2() ? "avx2" : "generic";
#ifdef _OPENMP
  m.attr("OPENMP") = true;
#else
  m.attr("OPENMP") = false;
#endif
  m.def("core_forward", &core_forward, py::call_guard<py::gil_scoped_release>(),
        "Core loss/valid (+ gradients when their addresses are nonzero) of [B, d] inputs; see csrc/core_cpu.cpp.",
        py::arg("x"), py::arg("dt"), py::arg("df"), py::arg("k"), py::arg("batch"), py::arg("d"), py::arg("dtype"),
        py::arg("normalize"), py::arg("c_clip"), py::arg("loss"), py::arg("valid"), py::arg("gx"), py::arg("gdt"),
        py::arg("gdf"), py::arg("threads") = 0);
  m.def("dsm_forward", &dsm_forward, py::call_guard<py::gil_scoped_release>(),
        "DSM loss/valid (+ gradient w.r.t. d_fake when its address is nonzero); see csrc/core_cpu.cpp.",
        py::arg("df"), py::arg("x"), py::arg("lam"), py::arg("batch"), py::arg("d"), py::arg("dtype"),
        py::arg("loss"), py::arg("valid"), py::arg("g"), py::arg("threads") = 0);
}
