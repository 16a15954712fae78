// Kernels of fastui._C, included twice by core_cpu.cpp: once for any x86-64 (namespace generic) and once compiled
// for AVX2/FMA/F16C (namespace avx2, chosen at run time when the CPU has them). No include guard on purpose; system
// headers are included by core_cpu.cpp before. See core_cpu.cpp for the derivation.
inline uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Branch-free select on bit patterns: c ? a : b written with masks, so the loops around it vectorise (GCC keeps some
// ternaries of the half conversions as branches, which stops vectorisation).
inline uint32_t select(bool c, uint32_t a, uint32_t b) {
  const uint32_t m = 0u - static_cast<uint32_t>(c);
  return (a & m) | (b & ~m);
}

// Storage types. Conversions are branch-free so that the loops around them vectorise.
struct F32 {
  using T = float;
  static inline float load(float v) { return v; }
  static inline float store(float v) { return v; }
};

struct BF16 {  // bfloat16 as its uint16 bit pattern: the top half of an fp32
  using T = uint16_t;
  static inline float load(uint16_t h) { return float_of(static_cast<uint32_t>(h) << 16); }
  static inline uint16_t store(float f) {
    const uint32_t u = bits_of(f);
    const uint32_t rne = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  // round to nearest, ties to even
    const uint32_t nan = (u >> 16) | 0x40u;                          // keep NaN a (quiet) NaN
    return static_cast<uint16_t>(select(f != f, nan, rne));
  }
};

struct F16 {  // IEEE half as its uint16 bit pattern
  using T = uint16_t;
  static inline float load(uint16_t h) {
    // Shift exponent+mantissa into fp32 position and rebias (15 -> 127); inf/NaN get the rest of the exponent range;
    // zeros/subnormals are renormalised by one fp32 subtraction of 2^-14.
    const uint32_t em = (static_cast<uint32_t>(h) & 0x7fffu) << 13;
    const uint32_t exp = em & (0x7c00u << 13);
    const uint32_t normal = em + ((127u - 15u) << 23);
    const uint32_t special = normal + ((128u - 16u) << 23);
    const float sub = float_of(em + (113u << 23)) - float_of(113u << 23);
    uint32_t o = select(exp == (0x7c00u << 13), special, normal);
    o = select(exp == 0, bits_of(sub), o);
    return float_of(o | ((static_cast<uint32_t>(h) & 0x8000u) << 16));
  }
  static inline uint16_t store(float f) {
    const uint32_t u = bits_of(f);
    const uint32_t sign = (u & 0x80000000u) >> 16;
    const uint32_t a = u & 0x7fffffffu;
    // Overflow -> inf, NaN -> quiet NaN.
    const uint32_t big = select(a > (255u << 23), 0x7e00u, 0x7c00u);
    // Subnormal results: adding 0.5 (exponent 126) lets the fp32 adder round the mantissa to nearest even.
    const uint32_t sub = bits_of(float_of(a) + 0.5f) - bits_of(0.5f);
    // Normal results: rebias and round to nearest even on the 13 dropped bits.
    const uint32_t norm = (a + ((15u - 127u) << 23) + 0xfffu + ((a >> 13) & 1u)) >> 13;
    const uint32_t o = select(a >= ((127u + 16u) << 23), big, select(a < (113u << 23), sub, norm));
    return static_cast<uint16_t>(o | sign);
  }
};

constexpr int64_t kBlock = 512;  // fp32 partial sums over at most this many elements, then added in double

// Reduction sweep over n elements: out += (S, F, P, A).
template <class D>
void core_reduce(const typename D::T* x, const typename D::T* dt, const typename D::T* df, int64_t n, double* out) {
  double s_acc = 0, f_acc = 0, p_acc = 0, a_acc = 0;
  for (int64_t lo = 0; lo < n; lo += kBlock) {
    const int64_t hi = std::min(n, lo + kBlock);
    float s = 0.f, f = 0.f, p = 0.f, a = 0.f;
#pragma omp simd reduction(+ : s, f, p, a)
    for (int64_t j = lo; j < hi; ++j) {
      const float xv = D::load(x[j]), tv = D::load(dt[j]), fv = D::load(df[j]);
      const float delta = tv - fv, e = fv - xv;
      s += delta * e;
      f += delta * delta;
      p += delta * xv;
      a += std::fabs(xv - tv);
    }
    s_acc += s;
    f_acc += f;
    p_acc += p;
    a_acc += a;
  }
  out[0] += s_acc;
  out[1] += f_acc;
  out[2] += p_acc;
  out[3] += a_acc;
}

// Elementwise sweep over n elements with the sample's coefficients.
template <class D>
void core_grads(const typename D::T* x, const typename D::T* dt, const typename D::T* df, int64_t n, const CoreCoeffs& cc,
                typename D::T* gx, typename D::T* gdt, typename D::T* gdf) {
  if (!cc.valid) {  // excluded sample: exact zeros (all storage types encode +0 as all-zero bits)
    std::memset(gx, 0, n * sizeof(typename D::T));
    std::memset(gdt, 0, n * sizeof(typename D::T));
    std::memset(gdf, 0, n * sizeof(typename D::T));
    return;
  }
  const float a = cc.a, b2 = 2.f * cc.b, cma = cc.c - cc.a;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const float xv = D::load(x[j]), tv = D::load(dt[j]), fv = D::load(df[j]);
    const float delta = tv - fv, e = fv - xv;
    gx[j] = D::store(cma * delta);
    gdt[j] = D::store(a * e + b2 * delta);
    gdf[j] = D::store(a * (delta - e) - b2 * delta);
  }
}

// DSM reduction: out += (sum diff^2, sum diff * 0). The second is 0 iff every diff is finite (inf * 0 = NaN),
// which tells "an input was not finite" apart from "the sum of squares overflowed" like the reference does.
template <class D>
void dsm_reduce(const typename D::T* df, const typename D::T* x, int64_t n, double* out) {
  double q_acc = 0, z_acc = 0;
  for (int64_t lo = 0; lo < n; lo += kBlock) {
    const int64_t hi = std::min(n, lo + kBlock);
    float q = 0.f, z = 0.f;
#pragma omp simd reduction(+ : q, z)
    for (int64_t j = lo; j < hi; ++j) {
      const float diff = D::load(df[j]) - D::load(x[j]);
      q += diff * diff;
      z += diff * 0.f;
    }
    q_acc += q;
    z_acc += z;
  }
  out[0] += q_acc;
  out[1] += z_acc;
}

template <class D>
void dsm_grads(const typename D::T* df, const typename D::T* x, int64_t n, float two_lam, bool valid,
               typename D::T* g) {
  if (!valid) {
    std::memset(g, 0, n * sizeof(typename D::T));
    return;
  }
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) g[j] = D::store(two_lam * (D::load(df[j]) - D::load(x[j])));
}

// Chunk length (elements) of a row: whole rows when the batch alone balances the threads, otherwise rows are cut so
// that there are about 8 tasks per thread, never shorter than 1024 elements (a task must outweigh its scheduling).
inline int64_t chunk_length(int64_t batch, int64_t d, int threads) {
  if (threads <= 1 || batch % threads == 0 || batch >= 8 * threads) return std::max<int64_t>(d, 1);
  const int64_t per_row = (8 * static_cast<int64_t>(threads) + batch - 1) / batch;
  int64_t len = (d + per_row - 1) / per_row;
  len = (len + 63) / 64 * 64;
  return std::max<int64_t>(std::min<int64_t>(std::max<int64_t>(len, 1024), d), 1);
}

// Threads for a problem of `elements` per input: waking a team costs microseconds, so small problems run on one.
inline int resolve_threads(int requested, int64_t elements) {
#ifdef _OPENMP
  const int most = requested > 0 ? requested : omp_get_max_threads();
  const int64_t useful = std::max<int64_t>(1, elements / 16384);
  return static_cast<int>(std::min<int64_t>(most, useful));
#else
  (void)requested;
  (void)elements;
  return 1;
#endif
}

template <class D>
void core_forward_impl(const void* xp, const void* dtp, const void* dfp, const float* k, int64_t batch, int64_t d,
                       bool normalize, float c_clip, float* loss, uint8_t* valid, void* gxp, void* gdtp, void* gdfp,
                       int threads) {
  using T = typename D::T;
  const T* x = static_cast<const T*>(xp);
  const T* dt = static_cast<const T*>(dtp);
  const T* df = static_cast<const T*>(dfp);
  T* gx = static_cast<T*>(gxp);
  T* gdt = static_cast<T*>(gdtp);
  T* gdf = static_cast<T*>(gdfp);
  const bool grads = gx != nullptr;
  const int64_t chunk = chunk_length(batch, d, threads);
  const int64_t nchunk = (d + chunk - 1) / chunk;
  const int64_t tasks = batch * nchunk;
  std::vector<double> part(static_cast<size_t>(tasks) * 4, 0.0);
  std::vector<CoreCoeffs> coeffs(static_cast<size_t>(batch));

  if (nchunk == 1) {  // whole rows: reduce, finalise and write gradients while the row is in cache
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < batch; ++i) {
      double sums[4] = {0, 0, 0, 0};
      const int64_t off = i * d;
      core_reduce<D>(x + off, dt + off, df + off, d, sums);
      const CoreCoeffs cc = fastui::core_coefficients(static_cast<float>(sums[0]), static_cast<float>(sums[1]),
                                                      static_cast<float>(sums[2]), static_cast<float>(sums[3]), k,
                                                      batch, i, d, normalize, c_clip);
      loss[i] = cc.valid ? cc.loss : 0.f;
      valid[i] = cc.valid ? 1 : 0;
      if (grads) core_grads<D>(x + off, dt + off, df + off, d, cc, gx + off, gdt + off, gdf + off);
    }
    return;
  }

#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t i = t / nchunk, lo = (t % nchunk) * chunk, n = std::min(chunk, d - lo);
      const int64_t off = i * d + lo;
      core_reduce<D>(x + off, dt + off, df + off, n, &part[static_cast<size_t>(t) * 4]);
    }
#pragma omp for schedule(static)
    for (int64_t i = 0; i < batch; ++i) {
      double sums[4] = {0, 0, 0, 0};
      for (int64_t c = 0; c < nchunk; ++c)  // fixed order: results do not depend on the thread count's schedule
        for (int q = 0; q < 4; ++q) sums[q] += part[static_cast<size_t>(i * nchunk + c) * 4 + q];
      const CoreCoeffs cc = fastui::core_coefficients(static_cast<float>(sums[0]), static_cast<float>(sums[1]),
                                                      static_cast<float>(sums[2]), static_cast<float>(sums[3]), k,
                                                      batch, i, d, normalize, c_clip);
      coeffs[i] = cc;
      loss[i] = cc.valid ? cc.loss : 0.f;
      valid[i] = cc.valid ? 1 : 0;
    }
    if (grads) {
#pragma omp for schedule(static)
      for (int64_t t = 0; t < tasks; ++t) {
        const int64_t i = t / nchunk, lo = (t % nchunk) * chunk, n = std::min(chunk, d - lo);
        const int64_t off = i * d + lo;
        core_grads<D>(x + off, dt + off, df + off, n, coeffs[i], gx + off, gdt + off, gdf + off);
      }
    }
  }
}

template <class D>
void dsm_forward_impl(const void* dfp, const void* xp, const float* lam, int64_t batch, int64_t d, float* loss,
                      uint8_t* valid, void* gp, int threads) {
  using T = typename D::T;
  const T* df = static_cast<const T*>(dfp);
  const T* x = static_cast<const T*>(xp);
  T* g = static_cast<T*>(gp);
  const int64_t chunk = chunk_length(batch, d, threads);
  const int64_t nchunk = (d + chunk - 1) / chunk;
  const int64_t tasks = batch * nchunk;
  std::vector<double> part(static_cast<size_t>(tasks) * 2, 0.0);
  std::vector<uint8_t> ok(static_cast<size_t>(batch));

#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t i = t / nchunk, lo = (t % nchunk) * chunk, n = std::min(chunk, d - lo);
      dsm_reduce<D>(df + i * d + lo, x + i * d + lo, n, &part[static_cast<size_t>(t) * 2]);
    }
#pragma omp for schedule(static)
    for (int64_t i = 0; i < batch; ++i) {
      double q = 0, z = 0;
      for (int64_t c = 0; c < nchunk; ++c) {
        q += part[static_cast<size_t>(i * nchunk + c) * 2];
        z += part[static_cast<size_t>(i * nchunk + c) * 2 + 1];
      }
      const float l = lam[i];
      const bool v = z == 0.0 && (l - l) == 0.f;
      ok[i] = v;
      valid[i] = v ? 1 : 0;
      loss[i] = v ? l * static_cast<float>(q) : 0.f;
    }
    if (g != nullptr) {
#pragma omp for schedule(static)
      for (int64_t t = 0; t < tasks; ++t) {
        const int64_t i = t / nchunk, lo = (t % nchunk) * chunk, n = std::min(chunk, d - lo);
        dsm_grads<D>(df + i * d + lo, x + i * d + lo, n, 2.f * lam[i], ok[i] != 0, g + i * d + lo);
      }
    }
  }
}

// Entry points with the dtype resolved here (dtype checked by the caller).
inline void core_forward_dtype(int dtype, const void* x, const void* dt, const void* df, const float* k, int64_t batch,
                               int64_t d, bool normalize, float c_clip, float* loss, uint8_t* valid, void* gx,
                               void* gdt, void* gdf, int threads) {
  if (dtype == fastui::kFloat32)
    core_forward_impl<F32>(x, dt, df, k, batch, d, normalize, c_clip, loss, valid, gx, gdt, gdf, threads);
  else if (dtype == fastui::kBFloat16)
    core_forward_impl<BF16>(x, dt, df, k, batch, d, normalize, c_clip, loss, valid, gx, gdt, gdf, threads);
  else
    core_forward_impl<F16>(x, dt, df, k, batch, d, normalize, c_clip, loss, valid, gx, gdt, gdf, threads);
}

inline void dsm_forward_dtype(int dtype, const void* df, const void* x, const float* lam, int64_t batch, int64_t d,
                              float* loss, uint8_t* valid, void* g, int threads) {
  if (dtype == fastui::kFloat32)
    dsm_forward_impl<F32>(df, x, lam, batch, d, loss, valid, g, threads);
  else if (dtype == fastui::kBFloat16)
    dsm_forward_impl<BF16>(df, x, lam, batch, d, loss, valid, g, threads);
  else
    dsm_forward_impl<F16>(df, x, lam, batch, d, loss, valid, g, threads);
}
