// Thin C++ layer between the cxx bridge (src/mlx/ffi.rs) and mlx::core.
//
// Every function either cannot throw or is declared `Result<_>` on the Rust
// side; cxx wraps those calls in `rust::behavior::trycatch` (specialised below
// to catch every exception, not only std::exception), so no C++ exception ever
// crosses into Rust.
#pragma once

#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <vector>

#include "mlx/mlx.h"
#include "rust/cxx.h"

namespace rust {
namespace behavior {
// cxx calls this around every extern "C++" function that returns Result.
template <typename Try, typename Fail>
static void trycatch(Try &&func, Fail &&fail) noexcept try {
  func();
} catch (const std::exception &e) {
  fail(e.what());
} catch (...) {
  fail("unknown C++ exception from MLX");
}
} // namespace behavior
} // namespace rust

namespace xtr_mlx {

using mlx::core::array;
using ArrayPtr = std::unique_ptr<array>;

// Defined on the Rust side (src/mlx/transforms.rs).
struct Closure;
struct VagOutput;

// An owned list of array handles (each one a refcount on MLX's shared data).
struct ArrayVec {
  std::vector<array> items;
};

// A process group of MLX's distributed API (a handle; copies share the group).
struct DistGroup {
  mlx::core::distributed::Group group;
};

// A compiled function; keeps the Rust closure alive through its captures.
struct CompiledFn {
  std::function<std::vector<array>(const std::vector<array> &)> fun;
};

// ---- lists ----
std::unique_ptr<ArrayVec> vec_new();
void vec_push(ArrayVec &v, const array &a);
size_t vec_len(const ArrayVec &v);
ArrayPtr vec_get(const ArrayVec &v, size_t i);

// ---- creation ----
ArrayPtr from_f32(rust::Slice<const float> data, rust::Slice<const int32_t> shape);
ArrayPtr from_i32(rust::Slice<const int32_t> data, rust::Slice<const int32_t> shape);
ArrayPtr from_u32(rust::Slice<const uint32_t> data, rust::Slice<const int32_t> shape);
ArrayPtr from_bool(rust::Slice<const bool> data, rust::Slice<const int32_t> shape);
ArrayPtr from_bytes(rust::Slice<const uint8_t> data, rust::Slice<const int32_t> shape,
                    int32_t dtype);
ArrayPtr scalar_f32(float v);
ArrayPtr scalar_i32(int32_t v);
ArrayPtr scalar_bool(bool v);
ArrayPtr clone_array(const array &a);
ArrayPtr zeros(rust::Slice<const int32_t> shape, int32_t dtype);
ArrayPtr ones(rust::Slice<const int32_t> shape, int32_t dtype);
ArrayPtr full(rust::Slice<const int32_t> shape, const array &v, int32_t dtype);
ArrayPtr arange(double start, double stop, double step, int32_t dtype);

// ---- inspection / copy-out ----
rust::Vec<int32_t> shape(const array &a);
int32_t dtype(const array &a);
size_t size(const array &a);
size_t nbytes(const array &a);
rust::Vec<float> to_f32_vec(const array &a);
rust::Vec<int32_t> to_i32_vec(const array &a);
rust::Vec<uint32_t> to_u32_vec(const array &a);
rust::Vec<uint8_t> to_bytes(const array &a);
size_t data_ptr(const array &a);
rust::String to_string(const array &a);

// ---- elementwise ----
ArrayPtr negative(const array &a);
ArrayPtr exp(const array &a);
ArrayPtr log(const array &a);
ArrayPtr log1p(const array &a);
ArrayPtr sqrt(const array &a);
ArrayPtr rsqrt(const array &a);
ArrayPtr square(const array &a);
ArrayPtr abs(const array &a);
ArrayPtr erf(const array &a);
ArrayPtr tanh(const array &a);
ArrayPtr sigmoid(const array &a);
ArrayPtr sin(const array &a);
ArrayPtr cos(const array &a);
ArrayPtr logical_not(const array &a);
ArrayPtr stop_gradient(const array &a);
ArrayPtr add(const array &a, const array &b);
ArrayPtr subtract(const array &a, const array &b);
ArrayPtr multiply(const array &a, const array &b);
ArrayPtr divide(const array &a, const array &b);
ArrayPtr maximum(const array &a, const array &b);
ArrayPtr minimum(const array &a, const array &b);
ArrayPtr power(const array &a, const array &b);
ArrayPtr equal(const array &a, const array &b);
ArrayPtr not_equal(const array &a, const array &b);
ArrayPtr greater(const array &a, const array &b);
ArrayPtr greater_equal(const array &a, const array &b);
ArrayPtr less(const array &a, const array &b);
ArrayPtr less_equal(const array &a, const array &b);
ArrayPtr matmul(const array &a, const array &b);
ArrayPtr where_(const array &c, const array &x, const array &y);
ArrayPtr astype(const array &a, int32_t dtype);

// ---- reductions ----
ArrayPtr sum(const array &a, rust::Slice<const int32_t> axes, bool keepdims);
ArrayPtr mean(const array &a, rust::Slice<const int32_t> axes, bool keepdims);
ArrayPtr max(const array &a, rust::Slice<const int32_t> axes, bool keepdims);
ArrayPtr min(const array &a, rust::Slice<const int32_t> axes, bool keepdims);
ArrayPtr logsumexp(const array &a, rust::Slice<const int32_t> axes, bool keepdims);
ArrayPtr softmax(const array &a, rust::Slice<const int32_t> axes, bool precise);
ArrayPtr argmax(const array &a, int32_t axis, bool keepdims);

// ---- shapes / indexing ----
ArrayPtr reshape(const array &a, rust::Slice<const int32_t> shape);
ArrayPtr transpose(const array &a, rust::Slice<const int32_t> axes);
ArrayPtr swapaxes(const array &a, int32_t axis1, int32_t axis2);
ArrayPtr slice(const array &a, rust::Slice<const int32_t> start,
               rust::Slice<const int32_t> stop, rust::Slice<const int32_t> strides);
ArrayPtr concatenate(const ArrayVec &arrays, int32_t axis);
ArrayPtr stack(const ArrayVec &arrays, int32_t axis);
ArrayPtr expand_dims(const array &a, rust::Slice<const int32_t> axes);
ArrayPtr squeeze(const array &a, rust::Slice<const int32_t> axes);
ArrayPtr broadcast_to(const array &a, rust::Slice<const int32_t> shape);
ArrayPtr take(const array &a, const array &indices, int32_t axis);
ArrayPtr take_along_axis(const array &a, const array &indices, int32_t axis);

// ---- random ----
ArrayPtr random_key(uint64_t seed);
ArrayPtr random_split(const array &key, int32_t num);
ArrayPtr random_normal(rust::Slice<const int32_t> shape, int32_t dtype, float loc,
                       float scale, const array &key);
ArrayPtr random_uniform(const array &low, const array &high,
                        rust::Slice<const int32_t> shape, int32_t dtype, const array &key);
ArrayPtr random_bernoulli(const array &p, rust::Slice<const int32_t> shape,
                          const array &key);

// ---- fast (fused) ----
ArrayPtr rms_norm(const array &x, std::unique_ptr<array> weight, float eps);
ArrayPtr layer_norm(const array &x, std::unique_ptr<array> weight,
                    std::unique_ptr<array> bias, float eps);
ArrayPtr scaled_dot_product_attention(const array &q, const array &k, const array &v,
                                      float scale, rust::Str mask_mode,
                                      std::unique_ptr<array> mask);

// ---- xtr-pipe's CPU primitives (src/mlx/cpu/primitives.cc) ----
ArrayPtr xtr_gelu(const array &x, bool tanh_form);
ArrayPtr xtr_softmax(const array &x);
ArrayPtr xtr_softmax_bias(const array &x, const array &bias);
ArrayPtr xtr_layer_norm(const array &x, const array &weight, const array &bias, float eps);
ArrayPtr xtr_rms_norm(const array &x, const array &weight, float eps);
ArrayPtr xtr_dropout(const array &x, const array &key, float rate);
uint32_t xtr_dropout_hash(uint64_t seed, uint64_t index);
ArrayPtr xtr_attention_scores(const array &q, const array &k, int32_t heads, float scale);
ArrayPtr xtr_attention_values(const array &probs, const array &v, int32_t heads);
rust::String cpu_kernels_isa();
rust::String set_cpu_kernels_isa(rust::Str name);
int32_t cpu_kernel_threads();

// ---- xtr-pipe's GPU kernels (src/mlx/gpu/kernels.cc) ----
ArrayPtr xtr_gpu_dropout(const array &x, const array &key, float rate);
ArrayPtr xtr_gpu_softmax_dropout(const array &s, const array &key, float rate);
ArrayPtr xtr_gpu_act_dropout(const array &a, const array &gate, bool gated, int32_t act,
                             const array &key, float rate);
ArrayPtr xtr_gpu_add_dropout(const array &h, const array &x, const array &key, float rate);

// ---- linear algebra (on the CPU stream: MLX has no GPU kernels for these) ----
std::unique_ptr<ArrayVec> xtr_eigh(const array &a);

// ---- transforms ----
void eval(const ArrayVec &arrays);
void async_eval(const ArrayVec &arrays);
rust::String graph_ops(const ArrayVec &outputs);
VagOutput value_and_grad(rust::Box<Closure> fun, const ArrayVec &params,
                         rust::Slice<const int32_t> argnums);
std::unique_ptr<CompiledFn> compile(rust::Box<Closure> fun, bool shapeless);
std::unique_ptr<ArrayVec> compiled_call(const CompiledFn &f, const ArrayVec &args);
void set_compile_enabled(bool enabled);

// ---- devices ----
void set_default_device(int32_t kind, int32_t index);
int32_t default_device_kind();
bool gpu_is_available();
rust::Vec<rust::String> device_info(int32_t kind);
void synchronize();

int32_t gpu_count();

// ---- distributed (mlx::core::distributed) ----
bool dist_is_available(rust::Str backend);
std::unique_ptr<DistGroup> dist_init(rust::Str backend, bool strict);
int32_t dist_rank(const DistGroup &g);
int32_t dist_size(const DistGroup &g);
ArrayPtr dist_all_sum(const array &a, const DistGroup &g);
ArrayPtr dist_all_gather(const array &a, const DistGroup &g);

// ---- BLAS threads ----
bool set_blas_thread_timeout(int32_t exponent);
rust::String blas_core();

// ---- diagnostics ----
rust::String blas_sgemm_library();

} // namespace xtr_mlx
