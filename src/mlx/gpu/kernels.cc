// xtr-pipe's GPU kernels: CUDA sources that MLX's CUDA backend compiles at run
// time with NVRTC (`mlx::core::fast::cuda_kernel`), wrapped as MLX graph nodes
// with their gradients.
//
// Dropout: MLX's `random::bernoulli` writes a threefry uniform per element
// (4 bytes), compares it in a second pass and keeps the boolean mask alive
// until the backward pass; with T5's dropout on every activation and attention
// probability that cost nearly half of a batch-256 bf16 train step on an H100.
// Here one kernel reads x and writes the result; the keep/drop decision is the
// CPU kernels' hash of (PRNG key, element index) (src/mlx/cpu/kernels.h), so a
// key drops the same elements on either device and the backward pass
// recomputes the mask on the cotangent instead of storing it.
//
// Nothing here runs on a CPU-only MLX build: callers check the default device
// first (src/mlx/kernels.rs, `gpu_applies`).

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "mlx/fast.h"
#include "xtr_mlx/src/mlx/shim.h"

namespace xtr_mlx {
namespace gpu {

namespace mx = mlx::core;

// Shared device code (kept in sync with cpu::mix32 / cpu::dropout_hash).
// scripts/check-gpu-kernels.py compiles every `R"cuda(` block with NVRTC, so a
// typo shows up without a GPU.
const char *const kHeader = R"cuda(
__device__ __forceinline__ unsigned int xtr_mix32(unsigned int h) {
  h ^= h >> 16;
  h *= 0x7feb352dU;
  h ^= h >> 15;
  h *= 0x846ca68bU;
  h ^= h >> 16;
  return h;
}
__device__ __forceinline__ unsigned int xtr_dropout_hash(
    unsigned int lo, unsigned int hi, unsigned long long index) {
  unsigned int h = xtr_mix32(static_cast<unsigned int>(index) ^ lo);
  return xtr_mix32(h ^ hi ^ static_cast<unsigned int>(index >> 32) * 0x9e3779b9U);
}
)cuda";

// Inputs x (T) and key (uint32 x 2), output y (T). Template constants: T, the
// threshold's bits (an element is kept when its hash >= threshold) and the
// scale's f32 bits. Each thread takes 16-byte vectors (8 bf16 / 4 f32) in a
// grid-stride loop; a vector never straddles 2^32 elements, so the index's
// high word is fixed per vector. Unaligned buffers (a row-contiguous slice
// with an odd offset) and the tail go element by element.
const char *const kDropout = R"cuda(
  unsigned long long n = 1;
  for (int d = 0; d < x_ndim; ++d) n *= static_cast<unsigned long long>(x_shape[d]);
  constexpr int V = 16 / sizeof(T);
  const unsigned int lo = key[1], hi = key[0];
  const unsigned int threshold = static_cast<unsigned int>(THRESHOLD_BITS);
  const float scale = __int_as_float(SCALE_BITS);
  const unsigned long long tid = static_cast<unsigned long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const unsigned long long threads = static_cast<unsigned long long>(gridDim.x) * blockDim.x;
  const bool aligned =
      ((reinterpret_cast<unsigned long long>(x) | reinterpret_cast<unsigned long long>(y)) & 15) == 0;
  const unsigned long long vectors = aligned ? n / V : 0;
  for (unsigned long long v = tid; v < vectors; v += threads) {
    const unsigned long long base = v * V;
    const unsigned int base_lo = static_cast<unsigned int>(base);
    const unsigned int index_hi = static_cast<unsigned int>(base >> 32);
    uint4 in = reinterpret_cast<const uint4 *>(x)[v];
    uint4 out;
    const T *xs = reinterpret_cast<const T *>(&in);
    T *ys = reinterpret_cast<T *>(&out);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      unsigned int h = xtr_mix32((base_lo + j) ^ lo);
      h = xtr_mix32(h ^ hi ^ index_hi * 0x9e3779b9U);
      ys[j] = h >= threshold ? static_cast<T>(static_cast<float>(xs[j]) * scale)
                             : static_cast<T>(0.0f);
    }
    reinterpret_cast<uint4 *>(y)[v] = out;
  }
  for (unsigned long long i = vectors * V + tid; i < n; i += threads) {
    const bool keep = xtr_dropout_hash(lo, hi, i) >= threshold;
    y[i] = keep ? static_cast<T>(static_cast<float>(x[i]) * scale) : static_cast<T>(0.0f);
  }
)cuda";

constexpr int kBlock = 256;
// 2^20 threads: enough to fill an H100 (132 SMs x 2048) several times over.
constexpr size_t kMaxThreads = size_t(1) << 20;

const mx::fast::CustomKernelFunction &dropout_kernel() {
  static const mx::fast::CustomKernelFunction k =
      mx::fast::cuda_kernel("xtr_dropout", {"x", "key"}, {"y"}, kDropout, kHeader);
  return k;
}

int bits_of(float f) {
  int i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}

// The same threshold and scale as the CPU kernel (primitives.cc, Op::Dropout).
array dropout_forward(const array &x, const array &key, float rate) {
  if (x.ndim() == 0) // the kernel reads x_shape, which MLX passes only for ndim > 0
    return mx::reshape(dropout_forward(mx::reshape(x, {1}), key, rate), {});
  double t = static_cast<double>(rate) * 4294967296.0;
  uint32_t threshold = t >= 4294967295.0 ? 0xffffffffU : static_cast<uint32_t>(t);
  float scale = 1.0f / (1.0f - rate);
  size_t per_thread = 16 / x.itemsize();
  size_t work = (x.size() + per_thread - 1) / per_thread;
  size_t threads = std::min(kMaxThreads, (work + kBlock - 1) / kBlock * kBlock);
  auto out = dropout_kernel()(
      {x, key}, {x.shape()}, {x.dtype()}, {static_cast<int>(threads), 1, 1}, {kBlock, 1, 1},
      {{"T", x.dtype()},
       {"THRESHOLD_BITS", static_cast<int>(threshold)},
       {"SCALE_BITS", bits_of(scale)}},
      std::nullopt, false, {});
  return out[0];
}

array dropout(const array &x, const array &key, float rate) {
  if (!(rate >= 0.0f && rate < 1.0f))
    throw std::invalid_argument("dropout rate must be in [0, 1), got " + std::to_string(rate));
  if (key.dtype() != mx::uint32 || key.size() != 2)
    throw std::invalid_argument("dropout needs a PRNG key (uint32, 2 elements)");
  if (!mx::issubdtype(x.dtype(), mx::floating))
    throw std::invalid_argument("GPU dropout takes a floating-point array");
  if (x.size() == 0) return x;
  auto f = mx::custom_vjp(
      [rate](const std::vector<array> &in) {
        return std::vector<array>{dropout_forward(in[0], in[1], rate)};
      },
      [rate](const std::vector<array> &primals, const std::vector<array> &cotangents,
             const std::vector<array> &) {
        // d/dx (mask * scale * x) = mask * scale: the same kernel on the cotangent.
        return std::vector<array>{dropout_forward(cotangents[0], primals[1], rate),
                                  mx::zeros_like(primals[1])};
      });
  return f({x, key})[0];
}

} // namespace gpu

ArrayPtr xtr_gpu_dropout(const array &x, const array &key, float rate) {
  return std::make_unique<array>(gpu::dropout(x, key, rate));
}

} // namespace xtr_mlx
