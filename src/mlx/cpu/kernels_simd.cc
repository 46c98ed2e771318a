// The f32 kernels of kernels.h, written once over GCC/Clang vector types and
// compiled once per instruction set: build.rs builds this file with
// -DXTR_ISA_AVX512 (-mavx512f -mavx512dq), -DXTR_ISA_AVX2 (-mavx2 -mfma) and
// with neither (portable scalar, one lane). The vector width `W`, the vector
// types and the SLEEF entry points are the only per-ISA parts.
#include "kernels.h"

#include <cmath>
#include <cstring>
#include <limits>

#include <sleef.h>

#if defined(XTR_ISA_AVX512)
#include <immintrin.h>
#define XTR_NS avx512
#define XTR_ISA_NAME "avx512"
#define XTR_TABLE kernels_avx512
namespace {
constexpr size_t W = 16;
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));
inline vf v_erf(vf x) { return (vf)Sleef_erff16_u10avx512f((__m512)x); }
inline vf v_exp(vf x) { return (vf)Sleef_expf16_u10avx512f((__m512)x); }
inline vf v_tanh(vf x) { return (vf)Sleef_tanhf16_u10avx512f((__m512)x); }
} // namespace
#elif defined(XTR_ISA_AVX2)
#include <immintrin.h>
#define XTR_NS avx2
#define XTR_ISA_NAME "avx2"
#define XTR_TABLE kernels_avx2
namespace {
constexpr size_t W = 8;
typedef float vf __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(32)));
typedef uint32_t vu __attribute__((vector_size(32)));
inline vf v_erf(vf x) { return (vf)Sleef_erff8_u10avx2((__m256)x); }
inline vf v_exp(vf x) { return (vf)Sleef_expf8_u10avx2((__m256)x); }
inline vf v_tanh(vf x) { return (vf)Sleef_tanhf8_u10avx2((__m256)x); }
} // namespace
#else
#define XTR_NS scalar
#define XTR_ISA_NAME "scalar"
#define XTR_TABLE kernels_scalar
namespace {
// One-lane "vectors": the same code, scalar SLEEF (no FMA assumed).
constexpr size_t W = 1;
typedef float vf __attribute__((vector_size(4)));
typedef int32_t vi __attribute__((vector_size(4)));
typedef uint32_t vu __attribute__((vector_size(4)));
inline vf v_erf(vf x) { return vf{Sleef_erff1_u10purec(x[0])}; }
inline vf v_exp(vf x) { return vf{Sleef_expf1_u10purec(x[0])}; }
inline vf v_tanh(vf x) { return vf{Sleef_tanhf1_u10purec(x[0])}; }
} // namespace
#endif

namespace xtr_mlx::cpu {
namespace XTR_NS {
namespace {

inline vf splat(float v) { return vf{} + v; }
inline vu splat_u(uint32_t v) { return vu{} + v; }
inline vf load(const float *p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float *p, vf v) { std::memcpy(p, &v, sizeof v); }
// Loads the `k` < W elements at `p`, filling the rest with `fill`.
inline vf load_part(const float *p, size_t k, float fill) {
  float buf[W];
  for (size_t i = 0; i < W; ++i) buf[i] = i < k ? p[i] : fill;
  return load(buf);
}
inline void store_part(float *p, vf v, size_t k) {
  float buf[W];
  store(buf, v);
  std::memcpy(p, buf, k * sizeof(float));
}
inline float hmax(vf v) {
  float m = v[0];
  for (size_t i = 1; i < W; ++i) m = v[i] > m ? v[i] : m;
  return m;
}
inline float hsum(vf v) {
  float s = 0.0f;
  for (size_t i = 0; i < W; ++i) s += v[i];
  return s;
}
inline vf vmax(vf a, vf b) { return a > b ? a : b; }

// Applies `f(x)` (one input) over n elements, full vectors then a padded tail.
template <class F> inline void map1(const float *x, float *y, size_t n, F f) {
  size_t i = 0;
  for (; i + W <= n; i += W) store(y + i, f(load(x + i)));
  if (i < n) store_part(y + i, f(load_part(x + i, n - i, 0.0f)), n - i);
}
template <class F>
inline void map2(const float *x, const float *g, float *y, size_t n, F f) {
  size_t i = 0;
  for (; i + W <= n; i += W) store(y + i, f(load(x + i), load(g + i)));
  if (i < n)
    store_part(y + i, f(load_part(x + i, n - i, 0.0f), load_part(g + i, n - i, 0.0f)),
               n - i);
}

constexpr float kSqrtHalf = 0.70710678118654752440f;  // 1/sqrt(2)
constexpr float kInvSqrt2Pi = 0.39894228040143267794f; // 1/sqrt(2 pi)
constexpr float kSqrt2OverPi = 0.79788456080286535588f;
constexpr float kTanhCubic = 0.044715f;

void gelu(const float *x, float *y, size_t n) {
  map1(x, y, n, [](vf v) {
    return v * splat(0.5f) * (splat(1.0f) + v_erf(v * splat(kSqrtHalf)));
  });
}

void gelu_vjp(const float *x, const float *g, float *dx, size_t n) {
  map2(x, g, dx, n, [](vf v, vf gv) {
    vf cdf = splat(0.5f) * (splat(1.0f) + v_erf(v * splat(kSqrtHalf)));
    vf pdf = v_exp(v * v * splat(-0.5f)) * splat(kInvSqrt2Pi);
    return gv * (cdf + v * pdf);
  });
}

void gelu_tanh(const float *x, float *y, size_t n) {
  map1(x, y, n, [](vf v) {
    vf inner = splat(kSqrt2OverPi) * (v + splat(kTanhCubic) * v * v * v);
    return splat(0.5f) * v * (splat(1.0f) + v_tanh(inner));
  });
}

void gelu_tanh_vjp(const float *x, const float *g, float *dx, size_t n) {
  map2(x, g, dx, n, [](vf v, vf gv) {
    vf v2 = v * v;
    vf t = v_tanh(splat(kSqrt2OverPi) * (v + splat(kTanhCubic) * v2 * v));
    vf dinner = splat(kSqrt2OverPi) * (splat(1.0f) + splat(3.0f * kTanhCubic) * v2);
    vf d = splat(0.5f) * (splat(1.0f) + t) +
           splat(0.5f) * v * (splat(1.0f) - t * t) * dinner;
    return gv * d;
  });
}

// Softmax of each row of x (plus the row `bias` when kBias).
template <bool kBias>
inline void softmax_rows(const float *x, const float *bias, float *y, size_t rows,
                         size_t len) {
  const float ninf = -std::numeric_limits<float>::infinity();
  const size_t full = len - len % W, rest = len - full;
  auto in = [&](const float *xr, size_t i) {
    return kBias ? load(xr + i) + load(bias + i) : load(xr + i);
  };
  auto in_part = [&](const float *xr) {
    return kBias ? load_part(xr + full, rest, ninf) + load_part(bias + full, rest, 0.0f)
                 : load_part(xr + full, rest, ninf);
  };
  for (size_t r = 0; r < rows; ++r) {
    const float *xr = x + r * len;
    float *yr = y + r * len;
    vf m = splat(ninf);
    for (size_t i = 0; i < full; i += W) m = vmax(m, in(xr, i));
    if (rest) m = vmax(m, in_part(xr));
    float mx = hmax(m);
    // A row of -inf (or NaN) propagates NaN, as exp(x - max) does elsewhere.
    vf mv = splat(mx);
    vf s = splat(0.0f);
    for (size_t i = 0; i < full; i += W) {
      vf e = v_exp(in(xr, i) - mv);
      s += e;
      store(yr + i, e);
    }
    if (rest) {
      vf e = v_exp(in_part(xr) - mv);
      s += e;
      store_part(yr + full, e, rest);
    }
    vf inv = splat(1.0f / hsum(s));
    for (size_t i = 0; i < full; i += W) store(yr + i, load(yr + i) * inv);
    if (rest) store_part(yr + full, load_part(yr + full, rest, 0.0f) * inv, rest);
  }
}

void softmax(const float *x, float *y, size_t rows, size_t len) {
  softmax_rows<false>(x, nullptr, y, rows, len);
}

void softmax_bias(const float *x, const float *bias, float *y, size_t rows, size_t len) {
  softmax_rows<true>(x, bias, y, rows, len);
}

// The sum of row[0, len), in vector lanes then across them.
inline float row_sum(const float *p, size_t len) {
  const size_t full = len - len % W;
  vf s = splat(0.0f);
  for (size_t i = 0; i < full; i += W) s += load(p + i);
  if (full < len) s += load_part(p + full, len - full, 0.0f);
  return hsum(s);
}

// The mean and 1/sqrt(var + eps) of a row (two passes: no cancellation).
inline void row_moments(const float *xr, size_t len, float eps, float *mean, float *rstd) {
  const size_t full = len - len % W;
  const float mu = row_sum(xr, len) / static_cast<float>(len);
  const vf mv = splat(mu);
  vf q = splat(0.0f);
  for (size_t i = 0; i < full; i += W) {
    vf d = load(xr + i) - mv;
    q += d * d;
  }
  if (full < len) {
    vf d = load_part(xr + full, len - full, mu) - mv;
    q += d * d;
  }
  *mean = mu;
  *rstd = 1.0f / std::sqrt(hsum(q) / static_cast<float>(len) + eps);
}

void layer_norm(const float *x, const float *w, const float *b, float *y, size_t rows,
                size_t len, float eps) {
  const size_t full = len - len % W, rest = len - full;
  for (size_t r = 0; r < rows; ++r) {
    const float *xr = x + r * len;
    float *yr = y + r * len;
    float mu, rs;
    row_moments(xr, len, eps, &mu, &rs);
    const vf mv = splat(mu), rv = splat(rs);
    for (size_t i = 0; i < full; i += W)
      store(yr + i, (load(xr + i) - mv) * rv * load(w + i) + load(b + i));
    if (rest)
      store_part(yr + full,
                 (load_part(xr + full, rest, 0.0f) - mv) * rv * load_part(w + full, rest, 0.0f) +
                     load_part(b + full, rest, 0.0f),
                 rest);
  }
}

void layer_norm_vjp(const float *x, const float *w, const float *g, float *dx, size_t rows,
                    size_t len, float eps) {
  const size_t full = len - len % W, rest = len - full;
  const float inv_n = 1.0f / static_cast<float>(len);
  for (size_t r = 0; r < rows; ++r) {
    const float *xr = x + r * len, *gr = g + r * len;
    float *dr = dx + r * len;
    float mu, rs;
    row_moments(xr, len, eps, &mu, &rs);
    const vf mv = splat(mu), rv = splat(rs);
    // Tail lanes load 0 for g, so they add nothing to either sum.
    vf sa = splat(0.0f), sc = splat(0.0f);
    for (size_t i = 0; i < full; i += W) {
      vf gw = load(gr + i) * load(w + i);
      sa += gw;
      sc += gw * ((load(xr + i) - mv) * rv);
    }
    if (rest) {
      vf gw = load_part(gr + full, rest, 0.0f) * load_part(w + full, rest, 0.0f);
      sa += gw;
      sc += gw * ((load_part(xr + full, rest, 0.0f) - mv) * rv);
    }
    const vf ma = splat(hsum(sa) * inv_n), mc = splat(hsum(sc) * inv_n);
    for (size_t i = 0; i < full; i += W) {
      vf gw = load(gr + i) * load(w + i);
      vf xh = (load(xr + i) - mv) * rv;
      store(dr + i, rv * (gw - ma - xh * mc));
    }
    if (rest) {
      vf gw = load_part(gr + full, rest, 0.0f) * load_part(w + full, rest, 0.0f);
      vf xh = (load_part(xr + full, rest, 0.0f) - mv) * rv;
      store_part(dr + full, rv * (gw - ma - xh * mc), rest);
    }
  }
}

// 1/sqrt(mean(x^2) + eps) of a row.
inline float row_rms_inv(const float *xr, size_t len, float eps) {
  const size_t full = len - len % W;
  vf q = splat(0.0f);
  for (size_t i = 0; i < full; i += W) {
    vf v = load(xr + i);
    q += v * v;
  }
  if (full < len) {
    vf v = load_part(xr + full, len - full, 0.0f);
    q += v * v;
  }
  return 1.0f / std::sqrt(hsum(q) / static_cast<float>(len) + eps);
}

void rms_norm(const float *x, const float *w, float *y, size_t rows, size_t len, float eps) {
  const size_t full = len - len % W, rest = len - full;
  for (size_t r = 0; r < rows; ++r) {
    const float *xr = x + r * len;
    float *yr = y + r * len;
    const vf rv = splat(row_rms_inv(xr, len, eps));
    for (size_t i = 0; i < full; i += W) store(yr + i, load(xr + i) * rv * load(w + i));
    if (rest)
      store_part(yr + full,
                 load_part(xr + full, rest, 0.0f) * rv * load_part(w + full, rest, 0.0f), rest);
  }
}

void rms_norm_vjp(const float *x, const float *w, const float *g, float *dx, size_t rows,
                  size_t len, float eps) {
  const size_t full = len - len % W, rest = len - full;
  const float inv_n = 1.0f / static_cast<float>(len);
  for (size_t r = 0; r < rows; ++r) {
    const float *xr = x + r * len, *gr = g + r * len;
    float *dr = dx + r * len;
    const float rs = row_rms_inv(xr, len, eps);
    vf sc = splat(0.0f);
    for (size_t i = 0; i < full; i += W) sc += load(gr + i) * load(w + i) * load(xr + i);
    if (rest)
      sc += load_part(gr + full, rest, 0.0f) * load_part(w + full, rest, 0.0f) *
            load_part(xr + full, rest, 0.0f);
    const vf rv = splat(rs), k = splat(rs * rs * hsum(sc) * inv_n);
    for (size_t i = 0; i < full; i += W)
      store(dr + i, rv * (load(gr + i) * load(w + i) - load(xr + i) * k));
    if (rest)
      store_part(dr + full,
                 rv * (load_part(gr + full, rest, 0.0f) * load_part(w + full, rest, 0.0f) -
                       load_part(xr + full, rest, 0.0f) * k),
                 rest);
  }
}

void softmax_vjp(const float *y, const float *g, float *dx, size_t rows, size_t len) {
  const size_t full = len - len % W, rest = len - full;
  for (size_t r = 0; r < rows; ++r) {
    const float *yr = y + r * len, *gr = g + r * len;
    float *dr = dx + r * len;
    vf acc = splat(0.0f);
    for (size_t i = 0; i < full; i += W) acc += load(yr + i) * load(gr + i);
    if (rest) acc += load_part(yr + full, rest, 0.0f) * load_part(gr + full, rest, 0.0f);
    vf dot = splat(hsum(acc));
    for (size_t i = 0; i < full; i += W)
      store(dr + i, load(yr + i) * (load(gr + i) - dot));
    if (rest)
      store_part(dr + full,
                 load_part(yr + full, rest, 0.0f) * (load_part(gr + full, rest, 0.0f) - dot),
                 rest);
  }
}

// The vector form of kernels.h's mix32 (same constants, same bits).
inline vu vmix32(vu h) {
  h ^= h >> 16;
  h *= splat_u(0x7feb352dU);
  h ^= h >> 15;
  h *= splat_u(0x846ca68bU);
  h ^= h >> 16;
  return h;
}

void dropout(const float *x, float *y, size_t n, uint64_t offset, uint64_t seed,
             uint32_t threshold, float scale) {
  const uint32_t lo = static_cast<uint32_t>(seed), hi = static_cast<uint32_t>(seed >> 32);
  vu lane;
  for (size_t i = 0; i < W; ++i) lane[i] = static_cast<uint32_t>(i);
  const vf vscale = splat(scale);
  const vu vthr = splat_u(threshold);
  size_t i = 0;
  while (i < n) {
    // Indices whose high 32 bits agree share one salt.
    uint64_t index = offset + i;
    uint64_t block_end = ((index >> 32) + 1) << 32;
    size_t stop = n;
    if (block_end - offset < n) stop = static_cast<size_t>(block_end - offset);
    const vu salt = splat_u(hi ^ static_cast<uint32_t>(index >> 32) * 0x9e3779b9U);
    const vu vlo = splat_u(lo);
    for (; i < stop; i += W) {
      size_t k = stop - i < W ? stop - i : W;
      vu idx = splat_u(static_cast<uint32_t>(offset + i)) + lane;
      vu h = vmix32(vmix32(idx ^ vlo) ^ salt);
      vi keep = (vi)(h >= vthr);
      vf v = k == W ? load(x + i) : load_part(x + i, k, 0.0f);
      vf out = (vf)((vi)(v * vscale) & keep);
      if (k == W) {
        store(y + i, out);
      } else {
        store_part(y + i, out, k);
      }
    }
  }
}

// In kernels.h's field order.
const Kernels table = {XTR_ISA_NAME,  gelu,           gelu_vjp, gelu_tanh,    gelu_tanh_vjp,
                       softmax,       softmax_vjp,    softmax_bias, layer_norm, layer_norm_vjp,
                       rms_norm,      rms_norm_vjp,   dropout};

} // namespace
} // namespace XTR_NS

const Kernels *XTR_TABLE() { return &XTR_NS::table; }

} // namespace xtr_mlx::cpu

#if defined(XTR_STUB_X86)
// Targets without x86 vector builds get only the portable table.
namespace xtr_mlx::cpu {
const Kernels *kernels_avx512() { return nullptr; }
const Kernels *kernels_avx2() { return nullptr; }
} // namespace xtr_mlx::cpu
#endif
