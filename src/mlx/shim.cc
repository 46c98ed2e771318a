// Implementation of the C++ shim declared in shim.h: each function converts
// cxx types (slices, boxes, unique_ptrs) to mlx::core calls and back.
#include "xtr_mlx/src/mlx/shim.h"
#include "xtr_mlx/src/mlx/ffi.rs.h"

#include "mlx/primitives.h"

#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <variant>

namespace mx = mlx::core;

namespace xtr_mlx {
namespace {

ArrayPtr own(array a) { return std::make_unique<array>(std::move(a)); }

mx::Shape to_shape(rust::Slice<const int32_t> s) {
  return mx::Shape(s.begin(), s.end());
}

std::vector<int> to_ints(rust::Slice<const int32_t> s) {
  return std::vector<int>(s.begin(), s.end());
}

// Codes shared with src/mlx/dtype.rs (the order of mx::Dtype::Val).
mx::Dtype to_dtype(int32_t code) {
  switch (code) {
  case 0: return mx::bool_;
  case 1: return mx::uint8;
  case 2: return mx::uint16;
  case 3: return mx::uint32;
  case 4: return mx::uint64;
  case 5: return mx::int8;
  case 6: return mx::int16;
  case 7: return mx::int32;
  case 8: return mx::int64;
  case 9: return mx::float16;
  case 10: return mx::float32;
  case 11: return mx::float64;
  case 12: return mx::bfloat16;
  case 13: return mx::complex64;
  default: throw std::invalid_argument("unknown dtype code " + std::to_string(code));
  }
}

int32_t from_dtype(mx::Dtype d) { return static_cast<int32_t>(d.val()); }

std::optional<array> opt(std::unique_ptr<array> &p) {
  if (p) return *p;
  return std::nullopt;
}

// Evaluates `a` converted to `dt` and row-contiguous, ready to copy out.
array materialise(const array &a, mx::Dtype dt) {
  array b = mx::contiguous(a.dtype() == dt ? a : mx::astype(a, dt));
  b.eval();
  return b;
}

template <typename T>
rust::Vec<T> copy_out(const array &a, mx::Dtype dt) {
  array b = materialise(a, dt);
  rust::Vec<T> out;
  out.reserve(b.size());
  const T *p = b.data<T>();
  for (size_t i = 0; i < b.size(); ++i) out.push_back(p[i]);
  return out;
}

std::vector<array> call_rust(Closure &f, const std::vector<array> &args) {
  ArrayVec in{args};
  // Throws rust::Error when the closure returns Err or panics; MLX unwinds
  // through its RAII tracing guards and the outer trycatch reports it.
  std::unique_ptr<ArrayVec> out = call_closure(f, in);
  return std::move(out->items);
}

// Holds the Rust closure; dropping the last copy drops the rust::Box.
using SharedClosure = std::shared_ptr<rust::Box<Closure>>;

} // namespace

// ---- lists ----
std::unique_ptr<ArrayVec> vec_new() { return std::make_unique<ArrayVec>(); }
void vec_push(ArrayVec &v, const array &a) { v.items.push_back(a); }
size_t vec_len(const ArrayVec &v) { return v.items.size(); }
ArrayPtr vec_get(const ArrayVec &v, size_t i) { return own(v.items.at(i)); }

// ---- creation ----
static void check_len(size_t n, const mx::Shape &shape) {
  size_t want = 1;
  for (auto d : shape) {
    if (d < 0) throw std::invalid_argument("negative dimension in shape");
    want *= static_cast<size_t>(d);
  }
  if (want != n)
    throw std::invalid_argument("data has " + std::to_string(n) +
                                " elements but the shape needs " + std::to_string(want));
}

ArrayPtr from_f32(rust::Slice<const float> data, rust::Slice<const int32_t> shape) {
  auto s = to_shape(shape);
  check_len(data.size(), s);
  return own(array(data.begin(), s, mx::float32));
}
ArrayPtr from_i32(rust::Slice<const int32_t> data, rust::Slice<const int32_t> shape) {
  auto s = to_shape(shape);
  check_len(data.size(), s);
  return own(array(data.begin(), s, mx::int32));
}
ArrayPtr from_u32(rust::Slice<const uint32_t> data, rust::Slice<const int32_t> shape) {
  auto s = to_shape(shape);
  check_len(data.size(), s);
  return own(array(data.begin(), s, mx::uint32));
}
ArrayPtr from_bool(rust::Slice<const bool> data, rust::Slice<const int32_t> shape) {
  auto s = to_shape(shape);
  check_len(data.size(), s);
  return own(array(data.begin(), s, mx::bool_));
}
ArrayPtr from_bytes(rust::Slice<const uint8_t> data, rust::Slice<const int32_t> shape,
                    int32_t dtype) {
  auto dt = to_dtype(dtype);
  auto s = to_shape(shape);
  check_len(data.size() / dt.size(), s);
  if (data.size() % dt.size() != 0)
    throw std::invalid_argument("byte length is not a multiple of the dtype size");
  // Copy the raw bytes into a fresh MLX buffer (little-endian, as on every
  // platform MLX supports).
  array raw(data.begin(), mx::Shape{static_cast<int32_t>(data.size())}, mx::uint8);
  return own(mx::reshape(mx::view(raw, dt), s));
}
ArrayPtr scalar_f32(float v) { return own(array(v, mx::float32)); }
ArrayPtr scalar_i32(int32_t v) { return own(array(v, mx::int32)); }
ArrayPtr scalar_bool(bool v) { return own(array(v)); }
ArrayPtr clone_array(const array &a) { return own(a); }
ArrayPtr zeros(rust::Slice<const int32_t> shape, int32_t dtype) {
  return own(mx::zeros(to_shape(shape), to_dtype(dtype)));
}
ArrayPtr ones(rust::Slice<const int32_t> shape, int32_t dtype) {
  return own(mx::ones(to_shape(shape), to_dtype(dtype)));
}
ArrayPtr full(rust::Slice<const int32_t> shape, const array &v, int32_t dtype) {
  return own(mx::full(to_shape(shape), v, to_dtype(dtype)));
}
ArrayPtr arange(double start, double stop, double step, int32_t dtype) {
  return own(mx::arange(start, stop, step, to_dtype(dtype)));
}

// ---- inspection / copy-out ----
rust::Vec<int32_t> shape(const array &a) {
  rust::Vec<int32_t> out;
  for (auto d : a.shape()) out.push_back(d);
  return out;
}
int32_t dtype(const array &a) { return from_dtype(a.dtype()); }
size_t size(const array &a) { return a.size(); }
size_t nbytes(const array &a) { return a.nbytes(); }
rust::Vec<float> to_f32_vec(const array &a) { return copy_out<float>(a, mx::float32); }
rust::Vec<int32_t> to_i32_vec(const array &a) { return copy_out<int32_t>(a, mx::int32); }
rust::Vec<uint32_t> to_u32_vec(const array &a) { return copy_out<uint32_t>(a, mx::uint32); }
rust::Vec<uint8_t> to_bytes(const array &a) {
  array b = materialise(a, a.dtype());
  rust::Vec<uint8_t> out;
  out.reserve(b.nbytes());
  const uint8_t *p = b.data<uint8_t>();
  for (size_t i = 0; i < b.nbytes(); ++i) out.push_back(p[i]);
  return out;
}
size_t data_ptr(const array &a) {
  array b = a; // shares the data; eval fills the shared buffer
  b.eval();
  if (!b.flags().row_contiguous || b.data_size() != b.size())
    throw std::invalid_argument(
        "array is not row-contiguous in memory; copy it out with to_vec instead");
  return reinterpret_cast<size_t>(b.data<uint8_t>());
}
rust::String to_string(const array &a) {
  std::ostringstream os;
  os << a;
  return rust::String(os.str());
}

// ---- elementwise ----
#define UNARY(name, fn)                                                                \
  ArrayPtr name(const array &a) { return own(fn(a)); }
UNARY(negative, mx::negative)
UNARY(exp, mx::exp)
UNARY(log, mx::log)
UNARY(log1p, mx::log1p)
UNARY(sqrt, mx::sqrt)
UNARY(rsqrt, mx::rsqrt)
UNARY(square, mx::square)
UNARY(abs, mx::abs)
UNARY(erf, mx::erf)
UNARY(tanh, mx::tanh)
UNARY(sigmoid, mx::sigmoid)
UNARY(sin, mx::sin)
UNARY(cos, mx::cos)
UNARY(logical_not, mx::logical_not)
UNARY(stop_gradient, mx::stop_gradient)
#undef UNARY

#define BINARY(name, fn)                                                               \
  ArrayPtr name(const array &a, const array &b) { return own(fn(a, b)); }
BINARY(add, mx::add)
BINARY(subtract, mx::subtract)
BINARY(multiply, mx::multiply)
BINARY(divide, mx::divide)
BINARY(maximum, mx::maximum)
BINARY(minimum, mx::minimum)
BINARY(power, mx::power)
BINARY(equal, mx::equal)
BINARY(not_equal, mx::not_equal)
BINARY(greater, mx::greater)
BINARY(greater_equal, mx::greater_equal)
BINARY(less, mx::less)
BINARY(less_equal, mx::less_equal)
BINARY(matmul, mx::matmul)
#undef BINARY

ArrayPtr where_(const array &c, const array &x, const array &y) {
  return own(mx::where(c, x, y));
}
ArrayPtr astype(const array &a, int32_t dtype) { return own(mx::astype(a, to_dtype(dtype))); }

// ---- reductions ----
#define REDUCE(name, fn)                                                               \
  ArrayPtr name(const array &a, rust::Slice<const int32_t> axes, bool keepdims) {      \
    return own(fn(a, to_ints(axes), keepdims));                                        \
  }
REDUCE(sum, mx::sum)
REDUCE(mean, mx::mean)
REDUCE(max, mx::max)
REDUCE(min, mx::min)
REDUCE(logsumexp, mx::logsumexp)
#undef REDUCE

ArrayPtr softmax(const array &a, rust::Slice<const int32_t> axes, bool precise) {
  return own(mx::softmax(a, to_ints(axes), precise));
}
ArrayPtr argmax(const array &a, int32_t axis, bool keepdims) {
  return own(mx::argmax(a, axis, keepdims));
}

// ---- shapes / indexing ----
ArrayPtr reshape(const array &a, rust::Slice<const int32_t> shape) {
  return own(mx::reshape(a, to_shape(shape)));
}
ArrayPtr transpose(const array &a, rust::Slice<const int32_t> axes) {
  return own(mx::transpose(a, to_ints(axes)));
}
ArrayPtr swapaxes(const array &a, int32_t axis1, int32_t axis2) {
  return own(mx::swapaxes(a, axis1, axis2));
}
ArrayPtr slice(const array &a, rust::Slice<const int32_t> start,
               rust::Slice<const int32_t> stop, rust::Slice<const int32_t> strides) {
  return own(mx::slice(a, to_shape(start), to_shape(stop), to_shape(strides)));
}
ArrayPtr concatenate(const ArrayVec &arrays, int32_t axis) {
  return own(mx::concatenate(arrays.items, axis));
}
ArrayPtr stack(const ArrayVec &arrays, int32_t axis) {
  return own(mx::stack(arrays.items, axis));
}
ArrayPtr expand_dims(const array &a, rust::Slice<const int32_t> axes) {
  return own(mx::expand_dims(a, to_ints(axes)));
}
ArrayPtr squeeze(const array &a, rust::Slice<const int32_t> axes) {
  return own(mx::squeeze(a, to_ints(axes)));
}
ArrayPtr broadcast_to(const array &a, rust::Slice<const int32_t> shape) {
  return own(mx::broadcast_to(a, to_shape(shape)));
}
ArrayPtr take(const array &a, const array &indices, int32_t axis) {
  return own(mx::take(a, indices, axis));
}
ArrayPtr take_along_axis(const array &a, const array &indices, int32_t axis) {
  return own(mx::take_along_axis(a, indices, axis));
}

// ---- random ----
ArrayPtr random_key(uint64_t seed) { return own(mx::random::key(seed)); }
ArrayPtr random_split(const array &key, int32_t num) {
  return own(mx::random::split(key, num));
}
ArrayPtr random_normal(rust::Slice<const int32_t> shape, int32_t dtype, float loc,
                       float scale, const array &key) {
  return own(mx::random::normal(to_shape(shape), to_dtype(dtype), loc, scale, key));
}
ArrayPtr random_uniform(const array &low, const array &high,
                        rust::Slice<const int32_t> shape, int32_t dtype, const array &key) {
  return own(mx::random::uniform(low, high, to_shape(shape), to_dtype(dtype), key));
}
ArrayPtr random_bernoulli(const array &p, rust::Slice<const int32_t> shape,
                          const array &key) {
  return own(mx::random::bernoulli(p, to_shape(shape), key));
}

// ---- fast (fused) ----
ArrayPtr rms_norm(const array &x, std::unique_ptr<array> weight, float eps) {
  return own(mx::fast::rms_norm(x, opt(weight), eps));
}
ArrayPtr layer_norm(const array &x, std::unique_ptr<array> weight,
                    std::unique_ptr<array> bias, float eps) {
  return own(mx::fast::layer_norm(x, opt(weight), opt(bias), eps));
}
ArrayPtr scaled_dot_product_attention(const array &q, const array &k, const array &v,
                                      float scale, rust::Str mask_mode,
                                      std::unique_ptr<array> mask) {
  return own(mx::fast::scaled_dot_product_attention(q, k, v, scale, std::string(mask_mode),
                                                    opt(mask)));
}

// ---- transforms ----
void eval(const ArrayVec &arrays) { mx::eval(arrays.items); }

void async_eval(const ArrayVec &arrays) { mx::async_eval(arrays.items); }

rust::String graph_ops(const ArrayVec &outputs) {
  // Every operation evaluating `outputs` would run (the arrays not yet
  // computed, siblings counted once), by primitive name.
  std::unordered_map<std::uintptr_t, bool> seen;
  std::map<std::string, size_t> counts;
  std::vector<array> stack(outputs.items.begin(), outputs.items.end());
  while (!stack.empty()) {
    array a = stack.back();
    stack.pop_back();
    if (!a.has_primitive() || a.status() != array::Status::unscheduled) {
      continue;
    }
    auto node = reinterpret_cast<std::uintptr_t>(&a.primitive());
    if (!seen.emplace(node, true).second) {
      continue;
    }
    counts[a.primitive().name()]++;
    for (const auto &in : a.inputs()) {
      stack.push_back(in);
    }
  }
  std::ostringstream out;
  for (const auto &[name, n] : counts) {
    out << name << '\t' << n << '\n';
  }
  return rust::String(out.str());
}

VagOutput value_and_grad(rust::Box<Closure> fun, const ArrayVec &params,
                         rust::Slice<const int32_t> argnums) {
  auto closure = std::make_shared<rust::Box<Closure>>(std::move(fun));
  auto f = [closure](const std::vector<array> &args) { return call_rust(**closure, args); };
  auto vg = mx::value_and_grad(f, to_ints(argnums));
  auto [values, grads] = vg(params.items);
  VagOutput out;
  out.values = std::make_unique<ArrayVec>(ArrayVec{std::move(values)});
  out.grads = std::make_unique<ArrayVec>(ArrayVec{std::move(grads)});
  return out;
}

std::unique_ptr<CompiledFn> compile(rust::Box<Closure> fun, bool shapeless) {
  SharedClosure closure = std::make_shared<rust::Box<Closure>>(std::move(fun));
  std::function<std::vector<array>(const std::vector<array> &)> f =
      [closure](const std::vector<array> &args) { return call_rust(**closure, args); };
  return std::make_unique<CompiledFn>(CompiledFn{mx::compile(std::move(f), shapeless)});
}

std::unique_ptr<ArrayVec> xtr_eigh(const array &a) {
  auto [values, vectors] = mx::linalg::eigh(a, "L", mx::Device::cpu);
  return std::make_unique<ArrayVec>(ArrayVec{{values, vectors}});
}

std::unique_ptr<ArrayVec> compiled_call(const CompiledFn &f, const ArrayVec &args) {
  return std::make_unique<ArrayVec>(ArrayVec{f.fun(args.items)});
}

void set_compile_enabled(bool enabled) {
  if (enabled)
    mx::enable_compile();
  else
    mx::disable_compile();
}

// ---- devices ----
void set_default_device(int32_t kind, int32_t index) {
  mx::Device d(kind == 1 ? mx::Device::gpu : mx::Device::cpu, index);
  if (!mx::is_available(d))
    throw std::invalid_argument(std::string(kind == 1 ? "gpu" : "cpu") +
                                " device is not available in this MLX build");
  mx::set_default_device(d);
}
int32_t default_device_kind() {
  return mx::default_device().type == mx::Device::gpu ? 1 : 0;
}
bool gpu_is_available() { return mx::is_available(mx::Device(mx::Device::gpu)); }
void synchronize() { mx::synchronize(); }
int32_t gpu_count() {
  return gpu_is_available() ? mx::device_count(mx::Device::gpu) : 0;
}

// ---- distributed ----
// The backend reads its rank and peers from the environment (MLX_RANK with
// MLX_HOSTFILE for ring; MLX_RANK, MLX_WORLD_SIZE, NCCL_HOST_IP, NCCL_PORT for
// nccl). The communication stream is the backend's: ring's is the CPU's,
// nccl's the GPU's, so no stream is passed here.
bool dist_is_available(rust::Str backend) {
  return mx::distributed::is_available(std::string(backend));
}
std::unique_ptr<DistGroup> dist_init(rust::Str backend, bool strict) {
  return std::make_unique<DistGroup>(
      DistGroup{mx::distributed::init(strict, std::string(backend))});
}
int32_t dist_rank(const DistGroup &g) { return g.group.rank(); }
int32_t dist_size(const DistGroup &g) { return g.group.size(); }
ArrayPtr dist_all_sum(const array &a, const DistGroup &g) {
  return std::make_unique<array>(mx::distributed::all_sum(a, g.group));
}
ArrayPtr dist_all_gather(const array &a, const DistGroup &g) {
  return std::make_unique<array>(mx::distributed::all_gather(a, g.group));
}

// ---- diagnostics ----
// OpenBLAS's idle workers spin (sched_yield) for 2^28 cycles after each call
// before they sleep, taking a core from whatever runs between GEMMs. The wait
// is read from OPENBLAS_THREAD_TIMEOUT only when the pool starts, so restart
// the pool with the new value. The entry points are OpenBLAS's pthread build's;
// where they are missing (another BLAS), nothing changes.
bool set_blas_thread_timeout(int32_t exponent) {
  using Fn = int (*)();
  using VoidFn = void (*)();
  auto read_env = reinterpret_cast<VoidFn>(dlsym(RTLD_DEFAULT, "openblas_read_env"));
  auto shutdown = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "blas_thread_shutdown_"));
  auto init = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "blas_thread_init"));
  if (!read_env || !shutdown || !init) return false;
  std::string value = std::to_string(exponent);
  if (setenv("OPENBLAS_THREAD_TIMEOUT", value.c_str(), 1) != 0) return false;
  read_env();
  shutdown();
  init();
  return true;
}

// The name of OpenBLAS's kernel set (empty for another BLAS).
rust::String blas_core() {
  using Fn = char *(*)();
  auto name = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  const char *n = name ? name() : nullptr;
  return rust::String(n ? n : "");
}

// The device's properties as "key=value" lines (numbers in decimal).
rust::Vec<rust::String> device_info(int32_t kind) {
  mx::Device d = kind == 1 ? mx::Device(mx::Device::gpu, 0) : mx::Device(mx::Device::cpu, 0);
  rust::Vec<rust::String> out;
  for (const auto &[key, value] : mx::device_info(d)) {
    std::string v = std::holds_alternative<std::string>(value)
                        ? std::get<std::string>(value)
                        : std::to_string(std::get<size_t>(value));
    out.push_back(rust::String(key + "=" + v));
  }
  return out;
}

rust::String blas_sgemm_library() {
  // The definition the dynamic linker's global lookup finds first, which is
  // the one libmlx's calls bind to.
  void *sym = dlsym(RTLD_DEFAULT, "cblas_sgemm");
  if (!sym) throw std::runtime_error("cblas_sgemm is not loaded");
  Dl_info info;
  if (!dladdr(sym, &info) || !info.dli_fname)
    throw std::runtime_error("dladdr could not place cblas_sgemm");
  return rust::String(info.dli_fname);
}

} // namespace xtr_mlx
