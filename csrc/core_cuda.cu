// fastui CUDA kernels: the generator-loss core and the DSM loss (launchers declared in core_cuda.h, bound by
// bind_cuda.cpp as fastui._C_cuda; fastui/backends/cuda.py is the only caller).
//
// Both losses run as two kernels over a grid (chunks, B): every row is cut into `chunks` pieces so that a small batch
// (B = 8 at 3x64x64) still fills the device. Kernel 1 writes per-chunk partial sums; kernel 2 lets every block sum
// its row's partials in a fixed order (deterministic, no atomics), evaluates the per-sample coefficients, and writes
// its chunk of the gradients. Loads and stores are 16 bytes wide when the rows are 16-byte aligned.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "core_cuda.h"
#include "fastui_native.h"

namespace {

using fastui::CoreCoeffs;

constexpr int kThreads = 128;
constexpr int64_t kMinChunk = 512;  // elements per block at least: 4 per thread
constexpr int64_t kMaxRows = 65535;  // grid.y limit: larger batches are launched in slices of rows

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }

template <class T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }

// V elements of T moved as one 16-byte access (V = 16 / sizeof(T)), or one element (V = 1).
template <class T, int V>
struct Pack {
  T v[V];
};
template <class T, int V>
__device__ __forceinline__ Pack<T, V> load(const T* p) {
  Pack<T, V> out;
  if constexpr (V * sizeof(T) == 16) {
    *reinterpret_cast<uint4*>(out.v) = __ldg(reinterpret_cast<const uint4*>(p));
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) out.v[j] = p[j];
  }
  return out;
}
template <class T, int V>
__device__ __forceinline__ void store(T* p, const Pack<T, V>& in) {
  if constexpr (V * sizeof(T) == 16) {
    *reinterpret_cast<uint4*>(p) = *reinterpret_cast<const uint4*>(in.v);
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) p[j] = in.v[j];
  }
}

// Sum of W floats over the block; the result is valid in thread 0.
template <int W>
__device__ __forceinline__ void block_sum(float (&v)[W]) {
  __shared__ float smem[W][kThreads / 32];
#pragma unroll
  for (int q = 0; q < W; ++q)
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v[q] += __shfl_down_sync(0xffffffffu, v[q], o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0)
#pragma unroll
    for (int q = 0; q < W; ++q) smem[q][warp] = v[q];
  __syncthreads();
  if (threadIdx.x == 0)
#pragma unroll
    for (int q = 0; q < W; ++q) {
      float s = 0.f;
#pragma unroll
      for (int w = 0; w < kThreads / 32; ++w) s += smem[q][w];
      v[q] = s;
    }
}

// Row partials (W floats per chunk) summed in double by warp 0, lanes striding over the chunks, in a fixed order.
// The result is valid in thread 0.
template <int W>
__device__ __forceinline__ void row_sum(const float* part, int64_t chunks, double (&out)[W]) {
#pragma unroll
  for (int q = 0; q < W; ++q) out[q] = 0.0;
  if (threadIdx.x >= 32) return;
  for (int64_t c = threadIdx.x; c < chunks; c += 32)
#pragma unroll
    for (int q = 0; q < W; ++q) out[q] += part[c * W + q];
#pragma unroll
  for (int q = 0; q < W; ++q)
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) out[q] += __shfl_down_sync(0xffffffffu, out[q], o);
}

// ---------------------------------------------------------------------------------------------------------------
// Core, per sample i (MATH.md §5, functional.score_distill_core_reference):
//   delta = dt - df,  e = df - x
//   S = sum delta e,  F = sum delta^2,  P = sum delta x,  A = sum |x - dt|                 (kernel 1, per chunk)
//   inv = normalize ? 1 / max(A / d, 1e-5) : 1;  a = kA inv,  b = kB inv,
//   c = clamp((kC0 + kCF F + kCS S) inv, +-c_clip);  L = a S + b F + c P                    (kernel 2, per block)
//   dL/dx = (c - a) delta,  dL/ddt = a e + 2 b delta,  dL/ddf = a (delta - e) - 2 b delta  (kernel 2, per chunk)
// Valid iff S, F, P, A and the five k are finite; otherwise L = 0 and the gradients are zero.
// ---------------------------------------------------------------------------------------------------------------
template <class T, int V>
__global__ void __launch_bounds__(kThreads) core_reduce_kernel(const T* __restrict__ x, const T* __restrict__ dt,
                                                               const T* __restrict__ df, int64_t d, int64_t chunk,
                                                               float* __restrict__ part) {
  const int64_t row = blockIdx.y, lo = blockIdx.x * chunk;
  const int64_t hi = min(d, lo + chunk);
  const int64_t base = row * d;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  for (int64_t j = lo + threadIdx.x * V; j < hi; j += kThreads * V) {
    const Pack<T, V> xv = load<T, V>(x + base + j), tv = load<T, V>(dt + base + j), fv = load<T, V>(df + base + j);
#pragma unroll
    for (int u = 0; u < V; ++u) {
      const float xs = to_f(xv.v[u]), ts = to_f(tv.v[u]), fs = to_f(fv.v[u]);
      const float delta = ts - fs, e = fs - xs;
      acc[0] += delta * e;
      acc[1] += delta * delta;
      acc[2] += delta * xs;
      acc[3] += fabsf(xs - ts);
    }
  }
  block_sum<4>(acc);
  if (threadIdx.x == 0) {
    float* out = part + (row * gridDim.x + blockIdx.x) * 4;
#pragma unroll
    for (int q = 0; q < 4; ++q) out[q] = acc[q];
  }
}

template <class T, int V>
__global__ void __launch_bounds__(kThreads) core_finish_kernel(const T* __restrict__ x, const T* __restrict__ dt,
                                                               const T* __restrict__ df, const float* __restrict__ k,
                                                               int64_t batch, int64_t d, int64_t chunk,
                                                               int64_t chunks, bool normalize, float c_clip,
                                                               const float* __restrict__ part, float* __restrict__ loss,
                                                               uint8_t* __restrict__ valid, T* __restrict__ gx,
                                                               T* __restrict__ gdt, T* __restrict__ gdf) {
  const int64_t row = blockIdx.y;
  __shared__ CoreCoeffs cc;
  double sums[4];
  row_sum<4>(part + row * chunks * 4, chunks, sums);
  if (threadIdx.x == 0) {
    cc = fastui::core_coefficients(static_cast<float>(sums[0]), static_cast<float>(sums[1]),
                                   static_cast<float>(sums[2]), static_cast<float>(sums[3]), k, batch, row, d,
                                   normalize, c_clip);
    if (blockIdx.x == 0) {
      loss[row] = cc.valid ? cc.loss : 0.f;
      valid[row] = cc.valid ? 1 : 0;
    }
  }
  if (gx == nullptr) return;
  __syncthreads();
  const bool ok = cc.valid;
  const float a = ok ? cc.a : 0.f, b2 = ok ? 2.f * cc.b : 0.f, cma = ok ? cc.c - cc.a : 0.f;
  const int64_t lo = blockIdx.x * chunk, hi = min(d, lo + chunk), base = row * d;
  for (int64_t j = lo + threadIdx.x * V; j < hi; j += kThreads * V) {
    Pack<T, V> ox, ot, of;
    if (ok) {
      const Pack<T, V> xv = load<T, V>(x + base + j), tv = load<T, V>(dt + base + j), fv = load<T, V>(df + base + j);
#pragma unroll
      for (int u = 0; u < V; ++u) {
        const float xs = to_f(xv.v[u]), ts = to_f(tv.v[u]), fs = to_f(fv.v[u]);
        const float delta = ts - fs, e = fs - xs;
        ox.v[u] = from_f<T>(cma * delta);
        ot.v[u] = from_f<T>(a * e + b2 * delta);
        of.v[u] = from_f<T>(a * (delta - e) - b2 * delta);
      }
    } else {  // excluded sample: exact zeros, without reading its (non-finite) inputs
#pragma unroll
      for (int u = 0; u < V; ++u) ox.v[u] = ot.v[u] = of.v[u] = from_f<T>(0.f);
    }
    store<T, V>(gx + base + j, ox);
    store<T, V>(gdt + base + j, ot);
    store<T, V>(gdf + base + j, of);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// DSM, per sample i: L = lam sum (df - x)^2,  dL/ddf = 2 lam (df - x).
// Kernel 1 writes per chunk (sum diff^2, sum diff * 0): the second is 0 iff every diff is finite (inf * 0 = NaN),
// so "an input was not finite" (invalid) is told apart from "the sum overflowed" (valid, L = inf) as in the reference.
// ---------------------------------------------------------------------------------------------------------------
template <class T, int V>
__global__ void __launch_bounds__(kThreads) dsm_reduce_kernel(const T* __restrict__ df, const T* __restrict__ x,
                                                              int64_t d, int64_t chunk, float* __restrict__ part) {
  const int64_t row = blockIdx.y, lo = blockIdx.x * chunk;
  const int64_t hi = min(d, lo + chunk), base = row * d;
  float acc[2] = {0.f, 0.f};
  for (int64_t j = lo + threadIdx.x * V; j < hi; j += kThreads * V) {
    const Pack<T, V> fv = load<T, V>(df + base + j), xv = load<T, V>(x + base + j);
#pragma unroll
    for (int u = 0; u < V; ++u) {
      const float diff = to_f(fv.v[u]) - to_f(xv.v[u]);
      acc[0] += diff * diff;
      acc[1] += diff * 0.f;
    }
  }
  block_sum<2>(acc);
  if (threadIdx.x == 0) {
    float* out = part + (row * gridDim.x + blockIdx.x) * 2;
    out[0] = acc[0];
    out[1] = acc[1];
  }
}

template <class T, int V>
__global__ void __launch_bounds__(kThreads) dsm_finish_kernel(const T* __restrict__ df, const T* __restrict__ x,
                                                              const float* __restrict__ lam, int64_t d, int64_t chunk,
                                                              int64_t chunks, const float* __restrict__ part,
                                                              float* __restrict__ loss, uint8_t* __restrict__ valid,
                                                              T* __restrict__ g) {
  const int64_t row = blockIdx.y;
  __shared__ float two_lam;
  __shared__ bool ok_s;
  double sums[2];
  row_sum<2>(part + row * chunks * 2, chunks, sums);
  if (threadIdx.x == 0) {
    const float l = lam[row];
    const bool ok = sums[1] == 0.0 && (l - l) == 0.f;
    ok_s = ok;
    two_lam = ok ? 2.f * l : 0.f;
    if (blockIdx.x == 0) {
      loss[row] = ok ? l * static_cast<float>(sums[0]) : 0.f;
      valid[row] = ok ? 1 : 0;
    }
  }
  if (g == nullptr) return;
  __syncthreads();
  const bool ok = ok_s;
  const float tl = two_lam;
  const int64_t lo = blockIdx.x * chunk, hi = min(d, lo + chunk), base = row * d;
  for (int64_t j = lo + threadIdx.x * V; j < hi; j += kThreads * V) {
    Pack<T, V> out;
    if (ok) {
      const Pack<T, V> fv = load<T, V>(df + base + j), xv = load<T, V>(x + base + j);
#pragma unroll
      for (int u = 0; u < V; ++u) out.v[u] = from_f<T>(tl * (to_f(fv.v[u]) - to_f(xv.v[u])));
    } else {
#pragma unroll
      for (int u = 0; u < V; ++u) out.v[u] = from_f<T>(0.f);
    }
    store<T, V>(g + base + j, out);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------------------------

std::string cuda_error(const char* what, cudaError_t err) {
  return std::string("fastui._C_cuda: ") + what + ": " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err);
}

int64_t chunk_length(int64_t d, int64_t chunks) {
  // Multiple of 8 elements so that every chunk of a 16-byte-aligned row starts 16-byte aligned (fp32: 4, 16-bit: 8).
  const int64_t len = (d + chunks - 1) / chunks;
  return (len + 7) / 8 * 8;
}

template <class T>
bool aligned16(int64_t d, std::initializer_list<uintptr_t> ptrs) {
  if ((d * static_cast<int64_t>(sizeof(T))) % 16 != 0) return false;
  for (uintptr_t p : ptrs)
    if (p % 16 != 0) return false;
  return true;
}

template <class T>
void launch_core(uintptr_t x, uintptr_t dt, uintptr_t df, uintptr_t k, int64_t batch, int64_t d, bool normalize,
                 float c_clip, uintptr_t loss, uintptr_t valid, uintptr_t gx, uintptr_t gdt, uintptr_t gdf,
                 uintptr_t workspace, int64_t chunks, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  const int64_t chunk = chunk_length(d, chunks);
  chunks = (d + chunk - 1) / chunk;
  auto* part = reinterpret_cast<float*>(workspace);
  const bool vec = aligned16<T>(d, {x, dt, df, gx, gdt, gdf});
  const bool grads = gx != 0;
  auto at = [d](uintptr_t p, int64_t row) { return p ? reinterpret_cast<T*>(p) + row * d : nullptr; };
  // Rows in slices of at most kMaxRows (the grid's y limit); the workspace is reused in stream order.
  for (int64_t r0 = 0; r0 < batch; r0 += kMaxRows) {
    const int64_t rows = batch - r0 < kMaxRows ? batch - r0 : kMaxRows;
    const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(rows));
    const dim3 finish_grid(grads ? static_cast<unsigned>(chunks) : 1u, static_cast<unsigned>(rows));
    auto go = [&](auto width) {
      constexpr int W = decltype(width)::value;
      core_reduce_kernel<T, W><<<grid, kThreads, 0, stream>>>(at(x, r0), at(dt, r0), at(df, r0), d, chunk, part);
      core_finish_kernel<T, W><<<finish_grid, kThreads, 0, stream>>>(
          at(x, r0), at(dt, r0), at(df, r0), reinterpret_cast<const float*>(k) + r0, batch, d, chunk, chunks,
          normalize, c_clip, part, reinterpret_cast<float*>(loss) + r0, reinterpret_cast<uint8_t*>(valid) + r0,
          at(gx, r0), at(gdt, r0), at(gdf, r0));
    };
    if (vec)
      go(std::integral_constant<int, V>{});
    else
      go(std::integral_constant<int, 1>{});
  }
}

template <class T>
void launch_dsm(uintptr_t df, uintptr_t x, uintptr_t lam, int64_t batch, int64_t d, uintptr_t loss, uintptr_t valid,
                uintptr_t g, uintptr_t workspace, int64_t chunks, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  const int64_t chunk = chunk_length(d, chunks);
  chunks = (d + chunk - 1) / chunk;
  auto* part = reinterpret_cast<float*>(workspace);
  const bool vec = aligned16<T>(d, {df, x, g});
  auto at = [d](uintptr_t p, int64_t row) { return p ? reinterpret_cast<T*>(p) + row * d : nullptr; };
  for (int64_t r0 = 0; r0 < batch; r0 += kMaxRows) {
    const int64_t rows = batch - r0 < kMaxRows ? batch - r0 : kMaxRows;
    const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(rows));
    const dim3 finish_grid(g ? static_cast<unsigned>(chunks) : 1u, static_cast<unsigned>(rows));
    auto go = [&](auto width) {
      constexpr int W = decltype(width)::value;
      dsm_reduce_kernel<T, W><<<grid, kThreads, 0, stream>>>(at(df, r0), at(x, r0), d, chunk, part);
      dsm_finish_kernel<T, W><<<finish_grid, kThreads, 0, stream>>>(
          at(df, r0), at(x, r0), reinterpret_cast<const float*>(lam) + r0, d, chunk, chunks, part,
          reinterpret_cast<float*>(loss) + r0, reinterpret_cast<uint8_t*>(valid) + r0, at(g, r0));
    };
    if (vec)
      go(std::integral_constant<int, V>{});
    else
      go(std::integral_constant<int, 1>{});
  }
}

std::string check_shape(int64_t batch, int64_t d, int64_t chunks) {
  if (batch < 1 || d < 1) return "fastui._C_cuda: need batch >= 1 and d >= 1";
  if (chunks < 1 || chunks > (1ll << 31) - 1) return "fastui._C_cuda: bad chunk count";
  return "";
}

}  // namespace

namespace fastui_cuda {

int device_count(std::string* error) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    if (error) *error = cuda_error("cudaGetDeviceCount", err);
    cudaGetLastError();  // reset the runtime's last-error state so a later launch check is not confused
    return 0;
  }
  return n;
}

int runtime_version() {
  int v = 0;
  cudaRuntimeGetVersion(&v);
  return v;
}

int64_t num_chunks(int64_t batch, int64_t d, int device, std::string* error) {
  static int sm_count[64] = {0};
  int sms = device >= 0 && device < 64 ? sm_count[device] : 0;
  if (sms == 0) {
    const cudaError_t err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (err != cudaSuccess) {
      if (error) *error = cuda_error("cudaDeviceGetAttribute", err);
      return 1;
    }
    if (device >= 0 && device < 64) sm_count[device] = sms;
  }
  // About 4 blocks per SM over the whole grid, but never chunks shorter than kMinChunk elements.
  const int64_t want = (4 * static_cast<int64_t>(sms) + batch - 1) / batch;
  const int64_t most = (d + kMinChunk - 1) / kMinChunk;
  const int64_t chunks = want < most ? want : most;
  return chunks < 1 ? 1 : chunks;
}

std::string core_forward(uintptr_t x, uintptr_t dt, uintptr_t df, uintptr_t k, int64_t batch, int64_t d, int dtype,
                         bool normalize, float c_clip, uintptr_t loss, uintptr_t valid, uintptr_t gx, uintptr_t gdt,
                         uintptr_t gdf, uintptr_t workspace, int64_t chunks, int device, uintptr_t stream) {
  std::string bad = check_shape(batch, d, chunks);
  if (!bad.empty()) return bad;
  if ((gx == 0) != (gdt == 0) || (gx == 0) != (gdf == 0)) return "fastui._C_cuda: pass all gradient addresses or none";
  cudaError_t err = cudaSetDevice(device);  // this module's runtime has its own notion of the current device
  if (err != cudaSuccess) return cuda_error("cudaSetDevice", err);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  switch (dtype) {
    case fastui::kFloat32:
      launch_core<float>(x, dt, df, k, batch, d, normalize, c_clip, loss, valid, gx, gdt, gdf, workspace, chunks, s);
      break;
    case fastui::kBFloat16:
      launch_core<__nv_bfloat16>(x, dt, df, k, batch, d, normalize, c_clip, loss, valid, gx, gdt, gdf, workspace,
                                 chunks, s);
      break;
    case fastui::kFloat16:
      launch_core<__half>(x, dt, df, k, batch, d, normalize, c_clip, loss, valid, gx, gdt, gdf, workspace, chunks, s);
      break;
    default:
      return "fastui._C_cuda: unknown dtype code " + std::to_string(dtype);
  }
  err = cudaGetLastError();
  return err == cudaSuccess ? "" : cuda_error("core kernels launch", err);
}

std::string dsm_forward(uintptr_t df, uintptr_t x, uintptr_t lam, int64_t batch, int64_t d, int dtype, uintptr_t loss,
                        uintptr_t valid, uintptr_t g, uintptr_t workspace, int64_t chunks, int device,
                        uintptr_t stream) {
  std::string bad = check_shape(batch, d, chunks);
  if (!bad.empty()) return bad;
  cudaError_t err = cudaSetDevice(device);
  if (err != cudaSuccess) return cuda_error("cudaSetDevice", err);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  switch (dtype) {
    case fastui::kFloat32: launch_dsm<float>(df, x, lam, batch, d, loss, valid, g, workspace, chunks, s); break;
    case fastui::kBFloat16:
      launch_dsm<__nv_bfloat16>(df, x, lam, batch, d, loss, valid, g, workspace, chunks, s);
      break;
    case fastui::kFloat16: launch_dsm<__half>(df, x, lam, batch, d, loss, valid, g, workspace, chunks, s); break;
    default: return "fastui._C_cuda: unknown dtype code " + std::to_string(dtype);
  }
  err = cudaGetLastError();
  return err == cudaSuccess ? "" : cuda_error("DSM kernels launch", err);
}

}  // namespace fastui_cuda
