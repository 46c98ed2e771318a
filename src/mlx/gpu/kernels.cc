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
#define kNegInf __int_as_float(0xff800000)
__device__ __forceinline__ float xtr_warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float xtr_warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
// The activations of src/model/layers.rs (ACT: 0 relu, 1 erf GELU, 2 tanh
// GELU, 3 SiLU), in f32, with their derivative in *du.
template <int ACT>
__device__ __forceinline__ float xtr_act(float x, float *du) {
  if (ACT == 0) {
    *du = x > 0.0f ? 1.0f : 0.0f;
    return fmaxf(x, 0.0f);
  } else if (ACT == 1) {
    const float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
    *du = cdf + x * 0.39894228040143268f * expf(-0.5f * x * x);
    return x * cdf;
  } else if (ACT == 2) {
    const float k = 0.79788456080286536f, c = 0.044715f;
    const float t = tanhf(k * (x + c * x * x * x));
    *du = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * k * (1.0f + 3.0f * c * x * x);
    return 0.5f * x * (1.0f + t);
  } else {
    const float sg = 1.0f / (1.0f + expf(-x));
    *du = sg * (1.0f + x * (1.0f - sg));
    return x * sg;
  }
}
// The element count of an array from its shape.
template <typename S>
__device__ __forceinline__ unsigned long long xtr_size(const S &shape, int ndim) {
  unsigned long long n = 1;
  for (int d = 0; d < ndim; ++d) n *= static_cast<unsigned long long>(shape[d]);
  return n;
}
#define XTR_GRID_STRIDE(i, n)                                                          \
  for (unsigned long long i = static_cast<unsigned long long>(blockIdx.x) * blockDim.x + \
                              threadIdx.x;                                             \
       i < (n); i += static_cast<unsigned long long>(gridDim.x) * blockDim.x)
// What a warp-per-row kernel over an array of shape `shape` needs: its row,
// the row length, its lane, and the dropout constants.
struct XtrRow {
  unsigned long long row;
  int L, lane;
  bool active;
  unsigned int lo, hi, threshold;
  float scale;
};
template <typename S>
__device__ __forceinline__ XtrRow xtr_row(const S &shape, int ndim, const unsigned int *key,
                                          int threshold_bits, int scale_bits) {
  XtrRow r;
  const unsigned long long n = xtr_size(shape, ndim);
  r.L = shape[ndim - 1];
  r.row = (static_cast<unsigned long long>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  r.lane = threadIdx.x % 32;
  r.active = r.row < n / r.L;
  r.lo = key[1];
  r.hi = key[0];
  r.threshold = static_cast<unsigned int>(threshold_bits);
  r.scale = __int_as_float(scale_bits);
  return r;
}
// The softmax of one row of length L, computed by one warp in f32: lane
// `lane` gets the probabilities of columns lane + 32 k in p[k] (0 past L).
template <typename T, int N>
__device__ __forceinline__ void xtr_row_softmax(const T *in, int L, int lane, float (&p)[N]) {
  float m = kNegInf;
#pragma unroll
  for (int k = 0; k < N; ++k) {
    const int c = lane + 32 * k;
    p[k] = c < L ? static_cast<float>(in[c]) : kNegInf;
    m = fmaxf(m, p[k]);
  }
  m = xtr_warp_max(m);
  float sum = 0.0f;
#pragma unroll
  for (int k = 0; k < N; ++k) {
    p[k] = lane + 32 * k < L ? expf(p[k] - m) : 0.0f;
    sum += p[k];
  }
  const float inv = 1.0f / xtr_warp_sum(sum);
#pragma unroll
  for (int k = 0; k < N; ++k) p[k] *= inv;
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

// Attention probabilities with dropout, one warp per row of `s` (length L,
// PER_LANE = ceil(L / 32) values held in registers by each lane): the row's
// softmax in f32, then the dropout mask of the flat index row * L + col, the
// one `xtr_dropout` would draw on the softmax's output. Inputs s (T), key;
// output y (T).
const char *const kSoftmaxDropout = R"cuda(
  const XtrRow r = xtr_row(s_shape, s_ndim, key, THRESHOLD_BITS, SCALE_BITS);
  if (!r.active) return;
  const int L = r.L;
  const unsigned long long row = r.row;
  const T *in = s + row * L;
  T *out = y + row * L;
  float p[PER_LANE];
  xtr_row_softmax(in, L, r.lane, p);
#pragma unroll
  for (int k = 0; k < PER_LANE; ++k) {
    const int c = r.lane + 32 * k;
    if (c < L) {
      const bool keep = xtr_dropout_hash(r.lo, r.hi, row * L + c) >= r.threshold;
      out[c] = static_cast<T>(keep ? p[k] * r.scale : 0.0f);
    }
  }
)cuda";

// Its gradient: with p the row's softmax (recomputed from s), g = mask * scale
// * dy the gradient at p, ds = p * (g - sum(p * g)). Inputs s, dy (T), key;
// output ds (T).
const char *const kSoftmaxDropoutVjp = R"cuda(
  const XtrRow r = xtr_row(s_shape, s_ndim, key, THRESHOLD_BITS, SCALE_BITS);
  if (!r.active) return;
  const int L = r.L;
  const unsigned long long row = r.row;
  const T *in = s + row * L;
  const T *din = dy + row * L;
  T *out = ds + row * L;
  float p[PER_LANE], g[PER_LANE];
  xtr_row_softmax(in, L, r.lane, p);
  float dot = 0.0f;
#pragma unroll
  for (int k = 0; k < PER_LANE; ++k) {
    const int c = r.lane + 32 * k;
    g[k] = 0.0f;
    if (c < L && xtr_dropout_hash(r.lo, r.hi, row * L + c) >= r.threshold)
      g[k] = static_cast<float>(din[c]) * r.scale;
    dot += p[k] * g[k];
  }
  dot = xtr_warp_sum(dot);
#pragma unroll
  for (int k = 0; k < PER_LANE; ++k) {
    const int c = r.lane + 32 * k;
    if (c < L) out[c] = static_cast<T>(p[k] * (g[k] - dot));
  }
)cuda";

// dropout(act(a) * g) (g only when GATED): the T5 feed-forward's activation,
// gate and dropout in one pass. Inputs a, g (T; g unread unless GATED), key;
// output y (T).
const char *const kActDropout = R"cuda(
  const unsigned long long n = xtr_size(a_shape, a_ndim);
  const unsigned int lo = key[1], hi = key[0];
  const unsigned int threshold = static_cast<unsigned int>(THRESHOLD_BITS);
  const float scale = __int_as_float(SCALE_BITS);
  XTR_GRID_STRIDE(i, n) {
    float du;
    float u = xtr_act<ACT>(static_cast<float>(a[i]), &du);
    if (GATED) u *= static_cast<float>(g[i]);
    const bool keep = xtr_dropout_hash(lo, hi, i) >= threshold;
    y[i] = static_cast<T>(keep ? u * scale : 0.0f);
  }
)cuda";

// Its gradient: with m the mask times the scale, da = dy m g act'(a) and (when
// GATED) dg = dy m act(a). Inputs a, g, dy (T), key; outputs da, dg (T; dg is
// a one-element placeholder unless GATED).
const char *const kActDropoutVjp = R"cuda(
  const unsigned long long n = xtr_size(a_shape, a_ndim);
  const unsigned int lo = key[1], hi = key[0];
  const unsigned int threshold = static_cast<unsigned int>(THRESHOLD_BITS);
  const float scale = __int_as_float(SCALE_BITS);
  XTR_GRID_STRIDE(i, n) {
    const bool keep = xtr_dropout_hash(lo, hi, i) >= threshold;
    const float d = keep ? static_cast<float>(dy[i]) * scale : 0.0f;
    float du;
    const float u = xtr_act<ACT>(static_cast<float>(a[i]), &du);
    if (GATED) {
      const float gate = static_cast<float>(g[i]);
      da[i] = static_cast<T>(d * gate * du);
      dg[i] = static_cast<T>(d * u);
    } else {
      da[i] = static_cast<T>(d * du);
    }
  }
)cuda";

// h + dropout(x): a residual connection and its dropout in one pass. Inputs h,
// x (T), key; output y (T).
const char *const kAddDropout = R"cuda(
  const unsigned long long n = xtr_size(x_shape, x_ndim);
  const unsigned int lo = key[1], hi = key[0];
  const unsigned int threshold = static_cast<unsigned int>(THRESHOLD_BITS);
  const float scale = __int_as_float(SCALE_BITS);
  XTR_GRID_STRIDE(i, n) {
    const bool keep = xtr_dropout_hash(lo, hi, i) >= threshold;
    const float v = keep ? static_cast<float>(x[i]) * scale : 0.0f;
    y[i] = static_cast<T>(static_cast<float>(h[i]) + v);
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

// The dropout constants, as the CPU kernel derives them (primitives.cc,
// Op::Dropout): the keep threshold's bits and the f32 scale's bits.
struct Mask {
  int threshold_bits, scale_bits;
};

void check_rate_and_key(float rate, const array &key) {
  if (!(rate >= 0.0f && rate < 1.0f))
    throw std::invalid_argument("dropout rate must be in [0, 1), got " + std::to_string(rate));
  if (key.dtype() != mx::uint32 || key.size() != 2)
    throw std::invalid_argument("dropout needs a PRNG key (uint32, 2 elements)");
}

Mask mask_constants(float rate) {
  double t = static_cast<double>(rate) * 4294967296.0;
  uint32_t threshold = t >= 4294967295.0 ? 0xffffffffU : static_cast<uint32_t>(t);
  return {static_cast<int>(threshold), bits_of(1.0f / (1.0f - rate))};
}

array dropout_forward(const array &x, const array &key, float rate) {
  if (x.ndim() == 0) // the kernel reads x_shape, which MLX passes only for ndim > 0
    return mx::reshape(dropout_forward(mx::reshape(x, {1}), key, rate), {});
  Mask m = mask_constants(rate);
  size_t per_thread = 16 / x.itemsize();
  size_t work = (x.size() + per_thread - 1) / per_thread;
  size_t threads = std::min(kMaxThreads, (work + kBlock - 1) / kBlock * kBlock);
  auto out = dropout_kernel()(
      {x, key}, {x.shape()}, {x.dtype()}, {static_cast<int>(threads), 1, 1}, {kBlock, 1, 1},
      {{"T", x.dtype()}, {"THRESHOLD_BITS", m.threshold_bits}, {"SCALE_BITS", m.scale_bits}},
      std::nullopt, false, {});
  return out[0];
}

// Rows up to this long keep their values in registers (ceil(L/32) per lane).
constexpr int kMaxSoftmaxRow = 1024;

const mx::fast::CustomKernelFunction &softmax_dropout_kernel() {
  static const mx::fast::CustomKernelFunction k = mx::fast::cuda_kernel(
      "xtr_softmax_dropout", {"s", "key"}, {"y"}, kSoftmaxDropout, kHeader);
  return k;
}

const mx::fast::CustomKernelFunction &softmax_dropout_vjp_kernel() {
  static const mx::fast::CustomKernelFunction k = mx::fast::cuda_kernel(
      "xtr_softmax_dropout_vjp", {"s", "dy", "key"}, {"ds"}, kSoftmaxDropoutVjp, kHeader);
  return k;
}

// One warp per row, 8 warps a block.
std::tuple<int, int, int> row_grid(const array &s) {
  size_t rows = s.size() / static_cast<size_t>(s.shape(-1));
  return {static_cast<int>(rows * 32), 1, 1};
}

std::vector<std::pair<std::string, mx::fast::TemplateArg>> row_constants(const array &s,
                                                                      float rate) {
  Mask m = mask_constants(rate);
  return {{"T", s.dtype()},
          {"PER_LANE", (s.shape(-1) + 31) / 32},
          {"THRESHOLD_BITS", m.threshold_bits},
          {"SCALE_BITS", m.scale_bits}};
}

array softmax_dropout(const array &s, const array &key, float rate) {
  check_rate_and_key(rate, key);
  if (!mx::issubdtype(s.dtype(), mx::floating) || s.ndim() == 0)
    throw std::invalid_argument("GPU softmax-dropout takes a floating-point array of rank >= 1");
  if (s.shape(-1) > kMaxSoftmaxRow)
    throw std::invalid_argument("GPU softmax-dropout: rows longer than " +
                                std::to_string(kMaxSoftmaxRow) + " are not supported");
  if (s.size() == 0) return s;
  if (static_cast<size_t>(s.size()) / s.shape(-1) * 32 > 0x7fffffffULL)
    throw std::invalid_argument("GPU softmax-dropout: too many rows for one launch");
  auto f = mx::custom_vjp(
      [rate](const std::vector<array> &in) {
        const array &s = in[0];
        return softmax_dropout_kernel()({s, in[1]}, {s.shape()}, {s.dtype()}, row_grid(s),
                                        {kBlock, 1, 1}, row_constants(s, rate), std::nullopt,
                                        false, {});
      },
      [rate](const std::vector<array> &primals, const std::vector<array> &cotangents,
             const std::vector<array> &) {
        const array &s = primals[0];
        auto ds = softmax_dropout_vjp_kernel()(
            {s, mx::astype(cotangents[0], s.dtype()), primals[1]}, {s.shape()}, {s.dtype()},
            row_grid(s), {kBlock, 1, 1}, row_constants(s, rate), std::nullopt, false, {});
        return std::vector<array>{ds[0], mx::zeros_like(primals[1])};
      });
  return f({s, key})[0];
}

// An element-wise launch over n elements: one element a thread, at most
// kMaxThreads threads (grid-stride beyond).
std::tuple<int, int, int> elementwise_grid(size_t n) {
  size_t threads = std::min(kMaxThreads, (n + kBlock - 1) / kBlock * kBlock);
  return {static_cast<int>(std::max<size_t>(threads, kBlock)), 1, 1};
}

std::vector<std::pair<std::string, mx::fast::TemplateArg>>
mask_args(Mask m, std::vector<std::pair<std::string, mx::fast::TemplateArg>> more) {
  more.push_back({"THRESHOLD_BITS", m.threshold_bits});
  more.push_back({"SCALE_BITS", m.scale_bits});
  return more;
}

array act_dropout(const array &a, const array *gate, int act, const array &key, float rate) {
  check_rate_and_key(rate, key);
  if (act < 0 || act > 3) throw std::invalid_argument("unknown activation code " + std::to_string(act));
  if (!mx::issubdtype(a.dtype(), mx::floating) || a.ndim() == 0)
    throw std::invalid_argument("GPU activation-dropout takes a floating-point array of rank >= 1");
  if (gate && (gate->shape() != a.shape() || gate->dtype() != a.dtype()))
    throw std::invalid_argument("GPU activation-dropout: the gate must match the input's shape and dtype");
  if (a.size() == 0) return a;
  static const mx::fast::CustomKernelFunction fwd = mx::fast::cuda_kernel(
      "xtr_act_dropout", {"a", "g", "key"}, {"y"}, kActDropout, kHeader);
  static const mx::fast::CustomKernelFunction bwd = mx::fast::cuda_kernel(
      "xtr_act_dropout_vjp", {"a", "g", "dy", "key"}, {"da", "dg"}, kActDropoutVjp, kHeader);
  const bool gated = gate != nullptr;
  auto args = [=](const array &x) {
    return mask_args(mask_constants(rate),
                     {{"T", x.dtype()}, {"ACT", act}, {"GATED", gated}});
  };
  auto f = mx::custom_vjp(
      [=](const std::vector<array> &in) {
        const array &x = in[0];
        return fwd({x, in[1], in[2]}, {x.shape()}, {x.dtype()}, elementwise_grid(x.size()),
                   {kBlock, 1, 1}, args(x), std::nullopt, false, {});
      },
      [=](const std::vector<array> &primals, const std::vector<array> &cotangents,
          const std::vector<array> &) {
        const array &x = primals[0];
        mx::Shape dg_shape = gated ? x.shape() : mx::Shape{1};
        auto grads = bwd({x, primals[1], mx::astype(cotangents[0], x.dtype()), primals[2]},
                         {x.shape(), dg_shape}, {x.dtype(), x.dtype()},
                         elementwise_grid(x.size()), {kBlock, 1, 1}, args(x), std::nullopt,
                         false, {});
        return std::vector<array>{grads[0], gated ? grads[1] : mx::zeros_like(primals[1]),
                                  mx::zeros_like(primals[2])};
      });
  return f({a, gated ? *gate : a, key})[0];
}

array add_dropout(const array &h, const array &x, const array &key, float rate) {
  check_rate_and_key(rate, key);
  if (!mx::issubdtype(x.dtype(), mx::floating) || x.ndim() == 0)
    throw std::invalid_argument("GPU add-dropout takes a floating-point array of rank >= 1");
  if (h.shape() != x.shape() || h.dtype() != x.dtype())
    throw std::invalid_argument("GPU add-dropout: the residual must match x's shape and dtype");
  if (x.size() == 0) return h;
  static const mx::fast::CustomKernelFunction fwd =
      mx::fast::cuda_kernel("xtr_add_dropout", {"h", "x", "key"}, {"y"}, kAddDropout, kHeader);
  auto f = mx::custom_vjp(
      [rate](const std::vector<array> &in) {
        const array &x = in[1];
        return fwd({in[0], x, in[2]}, {x.shape()}, {x.dtype()}, elementwise_grid(x.size()),
                   {kBlock, 1, 1}, mask_args(mask_constants(rate), {{"T", x.dtype()}}),
                   std::nullopt, false, {});
      },
      [rate](const std::vector<array> &primals, const std::vector<array> &cotangents,
             const std::vector<array> &) {
        const array &dy = cotangents[0];
        return std::vector<array>{dy, dropout_forward(dy, primals[2], rate),
                                  mx::zeros_like(primals[2])};
      });
  return f({h, x, key})[0];
}

array dropout(const array &x, const array &key, float rate) {
  check_rate_and_key(rate, key);
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
ArrayPtr xtr_gpu_softmax_dropout(const array &s, const array &key, float rate) {
  return std::make_unique<array>(gpu::softmax_dropout(s, key, rate));
}
ArrayPtr xtr_gpu_act_dropout(const array &a, const array &gate, bool gated, int32_t act,
                             const array &key, float rate) {
  return std::make_unique<array>(gpu::act_dropout(a, gated ? &gate : nullptr, act, key, rate));
}
ArrayPtr xtr_gpu_add_dropout(const array &h, const array &x, const array &key, float rate) {
  return std::make_unique<array>(gpu::add_dropout(h, x, key, rate));
}

} // namespace xtr_mlx
