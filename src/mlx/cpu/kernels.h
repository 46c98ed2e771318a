// The raw f32 CPU kernels behind xtr-pipe's own MLX primitives (see
// primitives.cc). kernels_simd.cc is compiled once per instruction set
// (AVX-512, AVX2+FMA, portable scalar); each build fills one `Kernels` table
// and `select_kernels` in primitives.cc picks one at run time.
//
// Contracts shared by every table:
// - Pointers are to row-contiguous f32 data; `n` counts elements, `rows` x
//   `len` is a row-major matrix whose last axis is reduced. In-place use
//   (output == an input) is allowed.
// - Element-wise kernels are pure per element, so any split of [0, n) across
//   threads gives the same bits; `dropout` takes the global index `offset` of
//   its first element for the same reason.
// - The transcendental functions come from SLEEF (1.0 ulp variants).
#pragma once

#include <cstddef>
#include <cstdint>

namespace xtr_mlx::cpu {

struct Kernels {
  // "avx512", "avx2" or "scalar".
  const char *isa;
  // Exact GELU, 0.5 x (1 + erf(x / sqrt 2)), and its vector-Jacobian product
  // dx = g (Phi(x) + x phi(x)).
  void (*gelu)(const float *x, float *y, size_t n);
  void (*gelu_vjp)(const float *x, const float *g, float *dx, size_t n);
  // The tanh form, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), and its VJP.
  void (*gelu_tanh)(const float *x, float *y, size_t n);
  void (*gelu_tanh_vjp)(const float *x, const float *g, float *dx, size_t n);
  // Softmax over each row, and its VJP from the output: dx = y (g - <g, y>).
  void (*softmax)(const float *x, float *y, size_t rows, size_t len);
  void (*softmax_vjp)(const float *y, const float *g, float *dx, size_t rows,
                      size_t len);
  // Softmax of each row plus `bias` (one row of `len`, added to every row).
  void (*softmax_bias)(const float *x, const float *bias, float *y, size_t rows,
                       size_t len);
  // Layer norm of each row, y = (x - mean) / sqrt(var + eps) * w + b (the
  // biased variance), and its VJP for x from the cotangent g:
  // dx = rstd (gw - mean(gw) - xhat mean(gw xhat)), gw = g w.
  void (*layer_norm)(const float *x, const float *w, const float *b, float *y, size_t rows,
                     size_t len, float eps);
  void (*layer_norm_vjp)(const float *x, const float *w, const float *g, float *dx,
                         size_t rows, size_t len, float eps);
  // RMS norm of each row, y = x / sqrt(mean(x^2) + eps) * w, and its VJP for
  // x: dx = r (gw - x r^2 mean(gw x)), r = 1 / sqrt(mean(x^2) + eps).
  void (*rms_norm)(const float *x, const float *w, float *y, size_t rows, size_t len,
                   float eps);
  void (*rms_norm_vjp)(const float *x, const float *w, const float *g, float *dx,
                       size_t rows, size_t len, float eps);
  // Inverted dropout: y[i] = keep(offset + i) ? x[i] * scale : 0, where
  // keep(j) = hash(seed, j) >= threshold (drop probability threshold / 2^32).
  void (*dropout)(const float *x, float *y, size_t n, uint64_t offset,
                  uint64_t seed, uint32_t threshold, float scale);
};

// One table per build of kernels_simd.cc (each null where not compiled in).
const Kernels *kernels_avx512();
const Kernels *kernels_avx2();
const Kernels *kernels_scalar();

// The counter-based hash behind `dropout`, as a scalar reference (tests and
// the vector kernels agree on it bit for bit).
inline uint32_t mix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x7feb352dU;
  h ^= h >> 15;
  h *= 0x846ca68bU;
  h ^= h >> 16;
  return h;
}
inline uint32_t dropout_hash(uint64_t seed, uint64_t index) {
  uint32_t lo = static_cast<uint32_t>(seed), hi = static_cast<uint32_t>(seed >> 32);
  uint32_t h = mix32(static_cast<uint32_t>(index) ^ lo);
  return mix32(h ^ hi ^ static_cast<uint32_t>(index >> 32) * 0x9e3779b9U);
}

} // namespace xtr_mlx::cpu
