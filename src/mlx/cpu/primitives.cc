// xtr-pipe's own MLX primitives for the CPU: GELU (erf and tanh forms),
// last-axis softmax and dropout, each with its VJP as a primitive too. MLX's
// documented extension route: a `Primitive` subclass whose `eval_cpu`
// enqueues the work on the stream's CPU encoder. The work runs the kernels of
// kernels.h (SLEEF-vectorised, chosen per CPU at run time) split across a
// small thread pool.
//
// These primitives have no GPU kernels: the Rust side (src/mlx/kernels.rs)
// builds them only for f32 graphs on the CPU and uses MLX's own ops elsewhere.
#include "xtr_mlx/src/mlx/shim.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <dlfcn.h>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <sched.h>
#include <stdexcept>
#include <string>
#include <thread>

#include "kernels.h"
#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"

namespace mx = mlx::core;

namespace xtr_mlx {
namespace cpu {
namespace {

// ---- which table ----

const Kernels *best_supported() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      kernels_avx512())
    return kernels_avx512();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && kernels_avx2())
    return kernels_avx2();
#endif
  return kernels_scalar();
}

// The table for `name` ("auto", "avx512", "avx2", "scalar"), or an error
// naming what this CPU supports.
const Kernels *by_name(const std::string &name) {
  const Kernels *best = best_supported();
  if (name == "auto" || name.empty()) return best;
  if (name == "scalar") return kernels_scalar();
  const Kernels *want = name == "avx512" ? kernels_avx512()
                        : name == "avx2" ? kernels_avx2()
                                         : nullptr;
  if (!want)
    throw std::invalid_argument("unknown CPU kernel set `" + name +
                                "` (expected auto, avx512, avx2 or scalar)");
  // A narrower set than the best one is always safe; a wider one is not.
  bool ok = want == best || want == kernels_scalar() ||
            (want == kernels_avx2() && best == kernels_avx512());
  if (!ok)
    throw std::invalid_argument("this CPU cannot run the `" + name +
                                "` kernels (best available: " + best->isa + ")");
  return want;
}

std::atomic<const Kernels *> g_active{nullptr};

const Kernels &active() {
  const Kernels *k = g_active.load(std::memory_order_acquire);
  if (!k) {
    const char *env = std::getenv("XTR_CPU_ISA");
    k = by_name(env ? env : "auto");
    g_active.store(k, std::memory_order_release);
  }
  return *k;
}

// ---- a small fork-join pool ----

// Runs chunk i of a job on the calling thread plus `threads - 1` workers.
// MLX evaluates each CPU stream on its own thread; when two streams ask at
// once, the second runs its job alone rather than waiting.
class Pool {
public:
  explicit Pool(int threads) {
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { work(); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto &t : workers_) t.join();
  }
  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  void run(size_t chunks, const std::function<void(size_t)> &f) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (chunks <= 1 || workers_.empty() || !busy.owns_lock()) {
      for (size_t i = 0; i < chunks; ++i) f(i);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(m_);
      job_ = &f;
      total_ = chunks;
      next_.store(0, std::memory_order_relaxed);
      done_.store(0, std::memory_order_relaxed);
      ++generation_;
    }
    cv_.notify_all();
    take_chunks(f, chunks);
    // Wait for the chunks the workers took, and for every worker that joined
    // this job to leave it (so `f` outlives its last use).
    std::unique_lock<std::mutex> lock(m_);
    finished_.wait(lock, [&] {
      return done_.load(std::memory_order_acquire) == chunks && joined_ == 0;
    });
    job_ = nullptr;
  }

private:
  void take_chunks(const std::function<void(size_t)> &f, size_t total) {
    size_t i;
    while ((i = next_.fetch_add(1, std::memory_order_relaxed)) < total) {
      f(i);
      done_.fetch_add(1, std::memory_order_acq_rel);
    }
  }

  void work() {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(m_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || (generation_ != seen && job_); });
      if (stop_) return;
      seen = generation_;
      const std::function<void(size_t)> *f = job_;
      size_t total = total_;
      ++joined_;
      lock.unlock();
      take_chunks(*f, total);
      lock.lock();
      --joined_;
      finished_.notify_all();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex busy_;
  std::mutex m_;
  std::condition_variable cv_, finished_;
  const std::function<void(size_t)> *job_ = nullptr;
  size_t total_ = 0;
  uint64_t generation_ = 0;
  int joined_ = 0;
  bool stop_ = false;
  std::atomic<size_t> next_{0}, done_{0};
};

int default_threads() {
  if (const char *env = std::getenv("XTR_CPU_THREADS")) {
    int n = std::atoi(env);
    if (n >= 1) return n > 64 ? 64 : n;
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n >= 1) return n > 16 ? 16 : n;
  }
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n > 16 ? 16 : n);
}

// Never destroyed: MLX's stream threads may still be running work when
// static destructors run at exit.
Pool &pool() {
  static Pool *p = new Pool(default_threads());
  return *p;
}

// Splits [0, n) into contiguous ranges of at least `grain` items (a multiple
// of 64 elements keeps vector loops whole) and runs `f(begin, end)` on them.
void parallel_ranges(size_t n, size_t grain, const std::function<void(size_t, size_t)> &f) {
  Pool &p = pool();
  size_t parts = std::min<size_t>(static_cast<size_t>(p.threads()), (n + grain - 1) / grain);
  if (parts <= 1) {
    f(0, n);
    return;
  }
  size_t step = (n + parts - 1) / parts;
  step = (step + 63) / 64 * 64;
  parts = (n + step - 1) / step;
  p.run(parts, [&](size_t i) {
    size_t b = i * step, e = std::min(n, b + step);
    if (b < e) f(b, e);
  });
}

// ---- the primitives ----

enum class Op {
  Gelu,
  GeluTanh,
  GeluVjp,
  GeluTanhVjp,
  Softmax,
  SoftmaxVjp,
  Dropout,
  // Inputs {x, bias}: softmax(x + bias), bias broadcast over x's leading axes.
  SoftmaxBias,
  // Inputs {x, w, b} and {x, w, g}; the scalar parameter is eps.
  LayerNorm,
  LayerNormVjp,
  // Inputs {x, w} and {x, w, g}.
  RmsNorm,
  RmsNormVjp,
};

// The operand that has the output's shape and may lend it its buffer: the
// cotangent for the VJP ops, the input otherwise.
size_t shaping_operand(Op op) {
  switch (op) {
  case Op::GeluVjp:
  case Op::GeluTanhVjp:
  case Op::SoftmaxVjp:
    return 1;
  case Op::LayerNormVjp:
  case Op::RmsNormVjp:
    return 2;
  default:
    return 0;
  }
}

// Which row of a broadcast `bias` each row of `x` adds: x's leading axes
// (all but the last) against bias's, where a bias axis of 1 repeats.
struct RowMap {
  // Innermost first: x's extent and the bias row stride along each leading axis.
  std::vector<size_t> extent, stride;
  size_t operator()(size_t row) const {
    size_t off = 0;
    for (size_t k = 0; k < extent.size(); ++k) {
      off += (row % extent[k]) * stride[k];
      row /= extent[k];
    }
    return off;
  }
};
RowMap row_map(const array &x, const array &bias) {
  RowMap m;
  size_t stride = 1;
  for (int ax = static_cast<int>(x.ndim()) - 2; ax >= 0; --ax) {
    size_t bx = static_cast<size_t>(bias.shape(ax));
    m.extent.push_back(static_cast<size_t>(x.shape(ax)));
    m.stride.push_back(bx == 1 ? 0 : stride);
    stride *= bx;
  }
  return m;
}

// Element-wise work below this many elements runs on one thread.
constexpr size_t kGrain = 16384;

array build(Op op, std::vector<array> inputs, float rate = 0.0f);

array build_norm_vjp(Op op, const array &x, const array &w, const array &g, float eps);

class XtrKernel : public mx::Primitive {
public:
  // `rate` is dropout's rate, or the norms' eps.
  XtrKernel(mx::Stream s, Op op, float rate) : mx::Primitive(s), op_(op), rate_(rate) {}

  void eval_cpu(const std::vector<array> &inputs, std::vector<array> &outputs) override {
    array &out = outputs[0];
    // The operand whose buffer the output may take over (MLX's donation rule).
    const array &donor = inputs[shaping_operand(op_)];
    if (donor.is_donatable() && donor.flags().row_contiguous &&
        donor.nbytes() == out.nbytes()) {
      out.copy_shared_buffer(donor);
    } else {
      out.set_data(mx::allocator::malloc(out.nbytes()));
    }
    auto &enc = mx::cpu::get_command_encoder(stream());
    for (const auto &in : inputs) enc.set_input_array(in);
    enc.set_output_array(out);

    const Kernels *k = &active();
    const float *a = inputs[0].data<float>();
    const float *b = inputs.size() > 1 && op_ != Op::Dropout ? inputs[1].data<float>() : nullptr;
    const float *c = inputs.size() > 2 ? inputs[2].data<float>() : nullptr;
    const uint32_t *key = op_ == Op::Dropout ? inputs[1].data<uint32_t>() : nullptr;
    float *y = out.data<float>();
    size_t n = out.size();
    size_t len = out.ndim() == 0 ? 1 : static_cast<size_t>(out.shape(-1));
    Op op = op_;
    float rate = rate_;
    RowMap bias_row = op_ == Op::SoftmaxBias ? row_map(inputs[0], inputs[1]) : RowMap{};
    size_t rows = len == 0 ? 0 : n / len;
    size_t row_grain = std::max<size_t>(1, kGrain / std::max<size_t>(len, 1));
    enc.dispatch([k, op, a, b, c, key, y, n, len, rate, rows, row_grain,
                  bias_row = std::move(bias_row)]() {
      switch (op) {
      case Op::Gelu:
        parallel_ranges(n, kGrain, [&](size_t s, size_t e) { k->gelu(a + s, y + s, e - s); });
        break;
      case Op::GeluTanh:
        parallel_ranges(n, kGrain,
                        [&](size_t s, size_t e) { k->gelu_tanh(a + s, y + s, e - s); });
        break;
      case Op::GeluVjp:
        parallel_ranges(n, kGrain,
                        [&](size_t s, size_t e) { k->gelu_vjp(a + s, b + s, y + s, e - s); });
        break;
      case Op::GeluTanhVjp:
        parallel_ranges(n, kGrain, [&](size_t s, size_t e) {
          k->gelu_tanh_vjp(a + s, b + s, y + s, e - s);
        });
        break;
      case Op::Softmax:
        parallel_ranges(rows, row_grain, [&](size_t s, size_t e) {
          k->softmax(a + s * len, y + s * len, e - s, len);
        });
        break;
      case Op::SoftmaxVjp:
        parallel_ranges(rows, row_grain, [&](size_t s, size_t e) {
          k->softmax_vjp(a + s * len, b + s * len, y + s * len, e - s, len);
        });
        break;
      case Op::SoftmaxBias:
        parallel_ranges(rows, row_grain, [&](size_t s, size_t e) {
          for (size_t r = s; r < e; ++r)
            k->softmax_bias(a + r * len, b + bias_row(r) * len, y + r * len, 1, len);
        });
        break;
      case Op::LayerNorm:
        parallel_ranges(rows, row_grain, [&](size_t s, size_t e) {
          k->layer_norm(a + s * len, b, c, y + s * len, e - s, len, rate);
        });
        break;
      case Op::LayerNormVjp:
        parallel_ranges(rows, row_grain, [&](size_t s, size_t e) {
          k->layer_norm_vjp(a + s * len, b, c + s * len, y + s * len, e - s, len, rate);
        });
        break;
      case Op::RmsNorm:
        parallel_ranges(rows, row_grain, [&](size_t s, size_t e) {
          k->rms_norm(a + s * len, b, y + s * len, e - s, len, rate);
        });
        break;
      case Op::RmsNormVjp:
        parallel_ranges(rows, row_grain, [&](size_t s, size_t e) {
          k->rms_norm_vjp(a + s * len, b, c + s * len, y + s * len, e - s, len, rate);
        });
        break;
      case Op::Dropout: {
        uint64_t seed = (static_cast<uint64_t>(key[0]) << 32) | key[1];
        double t = static_cast<double>(rate) * 4294967296.0;
        uint32_t threshold = t >= 4294967295.0 ? 0xffffffffU : static_cast<uint32_t>(t);
        float scale = 1.0f / (1.0f - rate);
        parallel_ranges(n, kGrain, [&](size_t s, size_t e) {
          k->dropout(a + s, y + s, e - s, s, seed, threshold, scale);
        });
        break;
      }
      }
    });
  }

  void eval_gpu(const std::vector<array> &, std::vector<array> &) override {
    throw std::runtime_error(std::string(name()) +
                             " is a CPU kernel; GPU graphs use MLX's own ops");
  }

  std::vector<array> vjp(const std::vector<array> &primals,
                         const std::vector<array> &cotangents,
                         const std::vector<int> &argnums,
                         const std::vector<array> &outputs) override {
    const array &cot = cotangents[0];
    std::vector<array> grads;
    for (int arg : argnums) {
      switch (op_) {
      case Op::Gelu:
        grads.push_back(build(Op::GeluVjp, {primals[0], cot}));
        break;
      case Op::GeluTanh:
        grads.push_back(build(Op::GeluTanhVjp, {primals[0], cot}));
        break;
      case Op::Softmax:
        grads.push_back(build(Op::SoftmaxVjp, {outputs[0], cot}));
        break;
      case Op::SoftmaxBias: {
        array dx = build(Op::SoftmaxVjp, {outputs[0], cot});
        if (arg == 0) {
          grads.push_back(dx);
        } else {
          // The bias's gradient sums dx over the axes it is broadcast along.
          const array &x = primals[0], &bias = primals[1];
          std::vector<int> axes;
          for (int ax = 0; ax < static_cast<int>(x.ndim()); ++ax)
            if (bias.shape(ax) == 1 && x.shape(ax) != 1) axes.push_back(ax);
          grads.push_back(axes.empty() ? dx : mx::sum(dx, axes, true, stream()));
        }
        break;
      }
      case Op::LayerNorm:
      case Op::RmsNorm: {
        const array &x = primals[0], &w = primals[1];
        bool layer = op_ == Op::LayerNorm;
        if (arg == 0) {
          grads.push_back(
              build_norm_vjp(layer ? Op::LayerNormVjp : Op::RmsNormVjp, x, w, cot, rate_));
          break;
        }
        // The affine parameters' gradients (frozen in LoRA training, so rare):
        // sums over every row, composed from MLX's ops.
        auto s = stream();
        std::vector<int> rows_axes;
        for (int ax = 0; ax + 1 < static_cast<int>(x.ndim()); ++ax) rows_axes.push_back(ax);
        if (arg == 2) {
          grads.push_back(mx::sum(cot, rows_axes, false, s));
          break;
        }
        array eps = array(rate_, mx::float32);
        array normed =
            layer ? mx::multiply(mx::subtract(x, mx::mean(x, -1, true, s), s),
                                 mx::rsqrt(mx::add(mx::var(x, -1, true, 0, s), eps, s), s), s)
                  : mx::multiply(
                        x, mx::rsqrt(mx::add(mx::mean(mx::square(x, s), -1, true, s), eps, s), s),
                        s);
        grads.push_back(mx::sum(mx::multiply(cot, normed, s), rows_axes, false, s));
        break;
      }
      case Op::Dropout:
        if (arg == 0) {
          grads.push_back(build(Op::Dropout, {cot, primals[1]}, rate_));
        } else {
          grads.push_back(mx::zeros_like(primals[1], stream()));
        }
        break;
      default:
        throw std::invalid_argument(std::string("second derivatives through ") + name() +
                                    " are not implemented");
      }
    }
    return grads;
  }

  std::vector<array> jvp(const std::vector<array> &primals,
                         const std::vector<array> &tangents,
                         const std::vector<int> &argnums) override {
    // Each op's Jacobian is diagonal (element-wise) or symmetric (softmax),
    // so the JVP is the VJP applied to the tangent.
    if (argnums.size() != 1 || argnums[0] != 0)
      throw std::invalid_argument(std::string(name()) + ": JVP only for its first input");
    const array &t = tangents[0];
    switch (op_) {
    case Op::Gelu:
      return {build(Op::GeluVjp, {primals[0], t})};
    case Op::GeluTanh:
      return {build(Op::GeluTanhVjp, {primals[0], t})};
    case Op::Softmax:
      return {build(Op::SoftmaxVjp, {build(Op::Softmax, {primals[0]}), t})};
    case Op::Dropout:
      return {build(Op::Dropout, {t, primals[1]}, rate_)};
    default:
      throw std::invalid_argument(std::string("second derivatives through ") + name() +
                                  " are not implemented");
    }
  }

  std::pair<std::vector<array>, std::vector<int>> vmap(const std::vector<array> &,
                                                       const std::vector<int> &) override {
    throw std::invalid_argument(std::string(name()) + " does not support vmap");
  }

  const char *name() const override {
    switch (op_) {
    case Op::Gelu: return "XtrGelu";
    case Op::GeluTanh: return "XtrGeluTanh";
    case Op::GeluVjp: return "XtrGeluVjp";
    case Op::GeluTanhVjp: return "XtrGeluTanhVjp";
    case Op::Softmax: return "XtrSoftmax";
    case Op::SoftmaxVjp: return "XtrSoftmaxVjp";
    case Op::Dropout: return "XtrDropout";
    case Op::SoftmaxBias: return "XtrSoftmaxBias";
    case Op::LayerNorm: return "XtrLayerNorm";
    case Op::LayerNormVjp: return "XtrLayerNormVjp";
    case Op::RmsNorm: return "XtrRmsNorm";
    case Op::RmsNormVjp: return "XtrRmsNormVjp";
    }
    return "XtrKernel";
  }

  bool is_equivalent(const mx::Primitive &other) const override {
    const auto *o = dynamic_cast<const XtrKernel *>(&other);
    return o && o->op_ == op_ && o->rate_ == rate_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<array> &inputs) override {
    return {inputs[shaping_operand(op_)].shape()};
  }

private:
  Op op_;
  float rate_;
};

array build(Op op, std::vector<array> inputs, float rate) {
  auto s = mx::to_stream({});
  if (s.device != mx::Device::cpu)
    throw std::invalid_argument("xtr CPU kernels need the CPU device");
  for (size_t i = 0; i < inputs.size(); ++i) {
    array &in = inputs[i];
    if (op == Op::Dropout && i == 1) {
      if (in.dtype() != mx::uint32 || in.size() != 2)
        throw std::invalid_argument("dropout needs a PRNG key (uint32, 2 elements)");
    } else if (in.dtype() != mx::float32) {
      throw std::invalid_argument("xtr CPU kernels take float32 arrays");
    }
    in = mx::contiguous(in, false, s);
  }
  if (inputs.size() == 2 && (op == Op::Softmax || op == Op::SoftmaxVjp || op == Op::GeluVjp ||
                             op == Op::GeluTanhVjp) &&
      inputs[0].shape() != inputs[1].shape())
    throw std::invalid_argument("xtr CPU kernel operands must have one shape");
  auto shape = inputs[shaping_operand(op)].shape();
  return array(std::move(shape), mx::float32, std::make_shared<XtrKernel>(s, op, rate),
               std::move(inputs));
}

std::string shape_str(const array &x) {
  std::string r = "[";
  for (size_t i = 0; i < x.ndim(); ++i) r += (i ? ", " : "") + std::to_string(x.shape(i));
  return r + "]";
}

// A norm over x's last axis: weight (and bias) of that length.
void check_norm(const char *what, const array &x, const array &w) {
  if (x.ndim() == 0 || w.ndim() != 1 || w.shape(0) != x.shape(-1))
    throw std::invalid_argument(std::string(what) + ": weight " + shape_str(w) +
                                " must be one vector as long as the last axis of x " +
                                shape_str(x));
}

array build_norm_vjp(Op op, const array &x, const array &w, const array &g, float eps) {
  return build(op, {x, w, g}, eps);
}

array build_softmax_bias(const array &x, const array &bias) {
  bool ok = x.ndim() >= 1 && bias.ndim() == x.ndim() && bias.shape(-1) == x.shape(-1);
  for (int ax = 0; ok && ax + 1 < static_cast<int>(x.ndim()); ++ax)
    ok = bias.shape(ax) == 1 || bias.shape(ax) == x.shape(ax);
  if (!ok)
    throw std::invalid_argument("softmax with bias: bias " + shape_str(bias) +
                                " does not broadcast to the scores " + shape_str(x) +
                                " (same rank and last axis, other axes 1 or equal)");
  return build(Op::SoftmaxBias, {x, bias});
}


// ---- per-head matrix products (attention without head transposes) ----
//
// Attention multiplies per (batch, head) matrices. With MLX's matmul the heads
// must first be transposed out of the [B, L, H*D] projections into
// [B, H, L, D] and copied (MLX's GEMM wants packed rows), and the result
// transposed and copied back. HeadsGemm instead hands BLAS each head's matrix
// in place, through its leading dimension:
//   - a `Flat` operand is [B, R, H*C]: head h is the R x C block at column h*C;
//   - a `Split` operand is [B, H, R, C], row-contiguous.
// It computes C_bh = alpha * op(A_bh) op(B_bh) for every (b, h), with op a
// transpose or not, and writes C in either layout. Its VJP is two more
// HeadsGemms, so neither direction copies a head.

extern "C" void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k,
                            float alpha, const float *a, int lda, const float *b, int ldb,
                            float beta, float *c, int ldc);
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

// OpenBLAS threads a product once M*N*K passes ~2.6e5 (unless its single-threaded
// small-matrix kernel takes it). When our pool already runs one head per
// thread, BLAS must not fan out again: these switch its threading off around
// such a batch (OpenBLAS's own API, looked up at run time; absent elsewhere).
struct BlasThreads {
  using Set = void (*)(int);
  using Get = int (*)();
  Set set = reinterpret_cast<Set>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  Get get = reinterpret_cast<Get>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
};
const BlasThreads &blas_threads() {
  static BlasThreads b;
  return b;
}

enum class Layout { Flat, Split };

struct HeadsSpec {
  bool ta, tb;
  Layout la, lb, lc;
  int heads;
  float alpha;
  bool operator==(const HeadsSpec &o) const {
    return ta == o.ta && tb == o.tb && la == o.la && lb == o.lb && lc == o.lc &&
           heads == o.heads && alpha == o.alpha;
  }
};

// The stored (rows, cols) of one head's matrix in an operand.
std::pair<int, int> head_dims(const array &x, Layout l, int heads) {
  if (l == Layout::Flat) return {x.shape(1), x.shape(2) / heads};
  return {x.shape(2), x.shape(3)};
}

array build_heads(const HeadsSpec &spec, array a, array b);

class HeadsGemm : public mx::Primitive {
public:
  HeadsGemm(mx::Stream s, HeadsSpec spec) : mx::Primitive(s), spec_(spec) {}

  void eval_cpu(const std::vector<array> &inputs, std::vector<array> &outputs) override {
    array &out = outputs[0];
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto &enc = mx::cpu::get_command_encoder(stream());
    enc.set_input_array(inputs[0]);
    enc.set_input_array(inputs[1]);
    enc.set_output_array(out);
    const HeadsSpec sp = spec_;
    const int H = sp.heads, B = inputs[0].shape(0);
    auto [ra, ca] = head_dims(inputs[0], sp.la, H);
    auto [rb, cb] = head_dims(inputs[1], sp.lb, H);
    const int M = sp.ta ? ca : ra, K = sp.ta ? ra : ca, N = sp.tb ? rb : cb;
    // Leading dimension and (b, h) offset of each operand's head matrix.
    auto ld = [H](Layout l, int cols) { return l == Layout::Flat ? H * cols : cols; };
    auto offset = [H](Layout l, int rows, int cols, int b, int h) -> size_t {
      return l == Layout::Flat ? static_cast<size_t>(b) * rows * H * cols + size_t(h) * cols
                               : (static_cast<size_t>(b) * H + h) * rows * size_t(cols);
    };
    const float *pa = inputs[0].data<float>(), *pb = inputs[1].data<float>();
    float *pc = out.data<float>();
    enc.dispatch([=]() {
      const int lda = ld(sp.la, ca), ldb = ld(sp.lb, cb), ldc = ld(sp.lc, N);
      auto one = [&](size_t i) {
        int b = static_cast<int>(i / H), h = static_cast<int>(i % H);
        cblas_sgemm(kRowMajor, sp.ta ? kTrans : kNoTrans, sp.tb ? kTrans : kNoTrans, M, N, K,
                    sp.alpha, pa + offset(sp.la, ra, ca, b, h), lda,
                    pb + offset(sp.lb, rb, cb, b, h), ldb, 0.0f,
                    pc + offset(sp.lc, M, N, b, h), ldc);
      };
      size_t pairs = static_cast<size_t>(B) * H;
      // Products this small take OpenBLAS's single-threaded small-matrix path,
      // so the heads themselves are spread over the pool; larger ones are
      // threaded inside BLAS.
      const BlasThreads &bt = blas_threads();
      Pool &p = pool();
      // One stream at a time may switch BLAS's threading (and restore it).
      static std::mutex blas_switch;
      std::unique_lock<std::mutex> owner(blas_switch, std::defer_lock);
      if (static_cast<double>(M) * N * K <= 4194304.0 && pairs >= 2 * size_t(p.threads()) &&
          bt.set && bt.get && owner.try_lock()) {
        size_t parts = std::min<size_t>(pairs, static_cast<size_t>(p.threads()));
        size_t step = (pairs + parts - 1) / parts;
        int before = bt.get();
        bt.set(1);
        p.run(parts, [&](size_t part) {
          for (size_t i = part * step; i < std::min(pairs, (part + 1) * step); ++i) one(i);
        });
        bt.set(before);
      } else {
        for (size_t i = 0; i < pairs; ++i) one(i);
      }
    });
  }

  void eval_gpu(const std::vector<array> &, std::vector<array> &) override {
    throw std::runtime_error("XtrHeadsGemm is a CPU kernel; GPU graphs use MLX's own ops");
  }

  std::vector<array> vjp(const std::vector<array> &primals,
                         const std::vector<array> &cotangents,
                         const std::vector<int> &argnums,
                         const std::vector<array> &) override {
    const HeadsSpec &s = spec_;
    const array &a = primals[0], &b = primals[1], &dc = cotangents[0];
    std::vector<array> grads;
    for (int arg : argnums) {
      if (arg == 0) {
        grads.push_back(
            s.ta ? build_heads({s.tb, true, s.lb, s.lc, s.la, s.heads, s.alpha}, b, dc)
                 : build_heads({false, !s.tb, s.lc, s.lb, s.la, s.heads, s.alpha}, dc, b));
      } else {
        grads.push_back(
            s.tb ? build_heads({true, s.ta, s.lc, s.la, s.lb, s.heads, s.alpha}, dc, a)
                 : build_heads({!s.ta, false, s.la, s.lc, s.lb, s.heads, s.alpha}, a, dc));
      }
    }
    return grads;
  }

  std::pair<std::vector<array>, std::vector<int>> vmap(const std::vector<array> &,
                                                       const std::vector<int> &) override {
    throw std::invalid_argument("XtrHeadsGemm does not support vmap");
  }

  const char *name() const override { return "XtrHeadsGemm"; }

  bool is_equivalent(const mx::Primitive &other) const override {
    const auto *o = dynamic_cast<const HeadsGemm *>(&other);
    return o && o->spec_ == spec_;
  }

private:
  HeadsSpec spec_;
};

array build_heads(const HeadsSpec &spec, array a, array b) {
  auto s = mx::to_stream({});
  if (s.device != mx::Device::cpu)
    throw std::invalid_argument("xtr CPU kernels need the CPU device");
  const int H = spec.heads;
  if (H < 1) throw std::invalid_argument("heads must be positive");
  for (const array *x : {&a, &b}) {
    if (x->dtype() != mx::float32)
      throw std::invalid_argument("xtr CPU kernels take float32 arrays");
  }
  auto check = [H](const array &x, Layout l, const char *what) {
    bool ok = l == Layout::Flat ? x.ndim() == 3 && x.shape(2) % H == 0
                                : x.ndim() == 4 && x.shape(1) == H;
    if (!ok)
      throw std::invalid_argument(std::string("heads matmul: ") + what + " has shape " +
                                  [&] {
                                    std::string r = "[";
                                    for (size_t i = 0; i < x.ndim(); ++i)
                                      r += (i ? ", " : "") + std::to_string(x.shape(i));
                                    return r + "]";
                                  }() +
                                  (l == Layout::Flat ? ", expected [B, L, heads*D]"
                                                     : ", expected [B, heads, L, D]"));
  };
  check(a, spec.la, "the left operand");
  check(b, spec.lb, "the right operand");
  if (a.shape(0) != b.shape(0)) throw std::invalid_argument("heads matmul: batch sizes differ");
  auto [ra, ca] = head_dims(a, spec.la, H);
  auto [rb, cb] = head_dims(b, spec.lb, H);
  int M = spec.ta ? ca : ra, K = spec.ta ? ra : ca, K2 = spec.tb ? cb : rb,
      N = spec.tb ? rb : cb;
  if (K != K2)
    throw std::invalid_argument("heads matmul: inner dimensions differ (" + std::to_string(K) +
                                " vs " + std::to_string(K2) + ")");
  mx::Shape shape = spec.lc == Layout::Flat ? mx::Shape{a.shape(0), M, H * N}
                                            : mx::Shape{a.shape(0), H, M, N};
  a = mx::contiguous(a, false, s);
  b = mx::contiguous(b, false, s);
  return array(std::move(shape), mx::float32, std::make_shared<HeadsGemm>(s, spec),
               {std::move(a), std::move(b)});
}

} // namespace
} // namespace cpu

// ---- shim entry points (declared in shim.h) ----

ArrayPtr xtr_gelu(const array &x, bool tanh_form) {
  return std::make_unique<array>(
      cpu::build(tanh_form ? cpu::Op::GeluTanh : cpu::Op::Gelu, {x}));
}
ArrayPtr xtr_softmax(const array &x) {
  if (x.ndim() == 0) throw std::invalid_argument("softmax needs at least one axis");
  return std::make_unique<array>(cpu::build(cpu::Op::Softmax, {x}));
}
ArrayPtr xtr_softmax_bias(const array &x, const array &bias) {
  return std::make_unique<array>(cpu::build_softmax_bias(x, bias));
}
ArrayPtr xtr_layer_norm(const array &x, const array &weight, const array &bias, float eps) {
  cpu::check_norm("layer norm", x, weight);
  cpu::check_norm("layer norm", x, bias);
  return std::make_unique<array>(cpu::build(cpu::Op::LayerNorm, {x, weight, bias}, eps));
}
ArrayPtr xtr_rms_norm(const array &x, const array &weight, float eps) {
  cpu::check_norm("RMS norm", x, weight);
  return std::make_unique<array>(cpu::build(cpu::Op::RmsNorm, {x, weight}, eps));
}
ArrayPtr xtr_dropout(const array &x, const array &key, float rate) {
  if (!(rate >= 0.0f && rate < 1.0f))
    throw std::invalid_argument("dropout rate must be in [0, 1), got " + std::to_string(rate));
  return std::make_unique<array>(cpu::build(cpu::Op::Dropout, {x, key}, rate));
}
uint32_t xtr_dropout_hash(uint64_t seed, uint64_t index) {
  return cpu::dropout_hash(seed, index);
}
rust::String cpu_kernels_isa() { return rust::String(cpu::active().isa); }
rust::String set_cpu_kernels_isa(rust::Str name) {
  const cpu::Kernels *k = cpu::by_name(std::string(name));
  cpu::g_active.store(k, std::memory_order_release);
  return rust::String(k->isa);
}
int32_t cpu_kernel_threads() { return cpu::pool().threads(); }

ArrayPtr xtr_attention_scores(const array &q, const array &k, int32_t heads, float scale) {
  using cpu::Layout;
  return std::make_unique<array>(cpu::build_heads(
      {false, true, Layout::Flat, Layout::Flat, Layout::Split, heads, scale}, q, k));
}
ArrayPtr xtr_attention_values(const array &probs, const array &v, int32_t heads) {
  using cpu::Layout;
  return std::make_unique<array>(cpu::build_heads(
      {false, false, Layout::Split, Layout::Flat, Layout::Flat, heads, 1.0f}, probs, v));
}

} // namespace xtr_mlx
