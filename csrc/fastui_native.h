// Shared definitions of fastui's native modules (fastui._C on the CPU, fastui._C_cuda on CUDA).
//
// The modules take raw addresses (torch's data_ptr()), sizes and a dtype code, so they build against no particular
// torch: any compiler that builds a pybind11 module (and nvcc for CUDA) is enough. Layouts are fixed by the Python
// backends (fastui/backends/cpp.py, cuda.py), which allocate every output:
//   x, dt, df      [B, d] contiguous, dtype code below          k   [5, B] fp32 (kA, kB, kC0, kCF, kCS)
//   loss           [B] fp32                                     valid [B] uint8 (torch.bool storage)
//   gx, gdt, gdf   [B, d] in the input dtype (address 0: gradients not wanted)
#pragma once

#include <cstdint>
#include <cstring>

namespace fastui {

// dtype codes shared with the Python side (fastui/backends/cpp.py: _DTYPE_CODES).
enum DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

constexpr float kWfFloor = 1e-5f;  // floor of the DMD normaliser w_f = mean_pix |x_g - D_teacher| (functional.WF_FLOOR)

// Per-sample scalars of the core after the reduction sweep (see the derivation in core_cpu.cpp / core_cuda.cu).
struct CoreCoeffs {
  float a, b, c, loss;
  bool valid;
};

// Coefficients and loss of one sample from its four sums, in the reference's order of fp32 operations
// (functional.score_distill_core_reference) so that the loss agrees to the last bits where the sums do.
#if defined(__CUDACC__)
__host__ __device__
#endif
inline CoreCoeffs core_coefficients(float s, float f, float p, float a_sum, const float* k, int64_t batch,
                                    int64_t i, int64_t d, bool normalize, float c_clip) {
  const float k0 = k[i], k1 = k[batch + i], k2 = k[2 * batch + i], k3 = k[3 * batch + i], k4 = k[4 * batch + i];
  CoreCoeffs out{0.f, 0.f, 0.f, 0.f, false};
  // isfinite(v) == (v - v == 0): NaN and +-inf give NaN; written this way so it holds on host and device alike.
  const float z = (s - s) + (f - f) + (p - p) + (a_sum - a_sum) + (k0 - k0) + (k1 - k1) + (k2 - k2) + (k3 - k3) +
                  (k4 - k4);
  if (!(z == 0.f)) return out;
  float inv = 1.f;
  if (normalize) {
    float wf = a_sum / static_cast<float>(d);
    wf = wf < kWfFloor ? kWfFloor : wf;
    inv = 1.f / wf;
  }
  out.a = k0 * inv;
  out.b = k1 * inv;
  float c = (k2 + k3 * f + k4 * s) * inv;
  // Clamp that keeps NaN (like torch.clamp), unlike fminf/fmaxf.
  c = c > c_clip ? c_clip : (c < -c_clip ? -c_clip : c);
  out.c = c;
  out.loss = out.a * s + out.b * f + c * p;
  out.valid = true;
  return out;
}

}  // namespace fastui
