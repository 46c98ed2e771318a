//! The raw `cxx` bridge to the C++ shim (`shim.h` / `shim.cc`). Nothing here is
//! public outside `mlx`: the safe types in the sibling modules wrap it.
//!
//! Every C++ function that can throw is declared `Result<_>`: cxx then catches
//! the exception on the C++ side (see `rust::behavior::trycatch` in `shim.h`)
//! and returns it as `Err(cxx::Exception)` carrying MLX's message.

use super::transforms::{call_closure, Closure};

#[cxx::bridge(namespace = "xtr_mlx")]
pub(crate) mod sys {
    /// The result of `value_and_grad`: the closure's outputs and the gradients.
    struct VagOutput {
        values: UniquePtr<ArrayVec>,
        grads: UniquePtr<ArrayVec>,
    }

    extern "Rust" {
        /// A boxed Rust closure `&[Array] -> Result<Vec<Array>>` handed to MLX.
        type Closure;
        /// Called by MLX (through the shim) while tracing; an `Err` becomes a
        /// C++ exception that unwinds MLX and comes back as the outer `Err`.
        fn call_closure(f: &mut Closure, args: &ArrayVec) -> Result<UniquePtr<ArrayVec>>;
    }

    unsafe extern "C++" {
        include!("xtr_mlx/src/mlx/shim.h");

        #[namespace = "mlx::core"]
        #[cxx_name = "array"]
        type MxArray;
        type ArrayVec;
        type CompiledFn;
        type DistGroup;

        // lists
        fn vec_new() -> UniquePtr<ArrayVec>;
        fn vec_push(v: Pin<&mut ArrayVec>, a: &MxArray);
        fn vec_len(v: &ArrayVec) -> usize;
        fn vec_get(v: &ArrayVec, i: usize) -> Result<UniquePtr<MxArray>>;

        // creation
        fn from_f32(data: &[f32], shape: &[i32]) -> Result<UniquePtr<MxArray>>;
        fn from_i32(data: &[i32], shape: &[i32]) -> Result<UniquePtr<MxArray>>;
        fn from_u32(data: &[u32], shape: &[i32]) -> Result<UniquePtr<MxArray>>;
        fn from_bool(data: &[bool], shape: &[i32]) -> Result<UniquePtr<MxArray>>;
        fn from_bytes(data: &[u8], shape: &[i32], dtype: i32) -> Result<UniquePtr<MxArray>>;
        // (allocation failure in these aborts, as it does in Rust)
        fn scalar_f32(v: f32) -> UniquePtr<MxArray>;
        fn scalar_i32(v: i32) -> UniquePtr<MxArray>;
        fn scalar_bool(v: bool) -> UniquePtr<MxArray>;
        fn clone_array(a: &MxArray) -> UniquePtr<MxArray>;
        fn zeros(shape: &[i32], dtype: i32) -> Result<UniquePtr<MxArray>>;
        fn ones(shape: &[i32], dtype: i32) -> Result<UniquePtr<MxArray>>;
        fn full(shape: &[i32], v: &MxArray, dtype: i32) -> Result<UniquePtr<MxArray>>;
        fn arange(start: f64, stop: f64, step: f64, dtype: i32) -> Result<UniquePtr<MxArray>>;

        // inspection / copy-out
        fn shape(a: &MxArray) -> Vec<i32>;
        fn dtype(a: &MxArray) -> i32;
        fn size(a: &MxArray) -> usize;
        fn nbytes(a: &MxArray) -> usize;
        fn to_f32_vec(a: &MxArray) -> Result<Vec<f32>>;
        fn to_i32_vec(a: &MxArray) -> Result<Vec<i32>>;
        fn to_u32_vec(a: &MxArray) -> Result<Vec<u32>>;
        fn to_bytes(a: &MxArray) -> Result<Vec<u8>>;
        fn data_ptr(a: &MxArray) -> Result<usize>;
        fn to_string(a: &MxArray) -> Result<String>;

        // elementwise
        fn negative(a: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn exp(a: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn log(a: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn log1p(a: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn sqrt(a: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn rsqrt(a: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn square(a: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn abs(a: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn erf(a: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn tanh(a: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn sigmoid(a: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn sin(a: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn cos(a: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn logical_not(a: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn stop_gradient(a: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn add(a: &MxArray, b: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn subtract(a: &MxArray, b: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn multiply(a: &MxArray, b: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn divide(a: &MxArray, b: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn maximum(a: &MxArray, b: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn minimum(a: &MxArray, b: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn power(a: &MxArray, b: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn equal(a: &MxArray, b: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn not_equal(a: &MxArray, b: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn greater(a: &MxArray, b: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn greater_equal(a: &MxArray, b: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn less(a: &MxArray, b: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn less_equal(a: &MxArray, b: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn matmul(a: &MxArray, b: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn where_(c: &MxArray, x: &MxArray, y: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn astype(a: &MxArray, dtype: i32) -> Result<UniquePtr<MxArray>>;

        // reductions
        fn sum(a: &MxArray, axes: &[i32], keepdims: bool) -> Result<UniquePtr<MxArray>>;
        fn mean(a: &MxArray, axes: &[i32], keepdims: bool) -> Result<UniquePtr<MxArray>>;
        fn max(a: &MxArray, axes: &[i32], keepdims: bool) -> Result<UniquePtr<MxArray>>;
        fn min(a: &MxArray, axes: &[i32], keepdims: bool) -> Result<UniquePtr<MxArray>>;
        fn logsumexp(a: &MxArray, axes: &[i32], keepdims: bool) -> Result<UniquePtr<MxArray>>;
        fn softmax(a: &MxArray, axes: &[i32], precise: bool) -> Result<UniquePtr<MxArray>>;
        fn argmax(a: &MxArray, axis: i32, keepdims: bool) -> Result<UniquePtr<MxArray>>;

        // shapes / indexing
        fn reshape(a: &MxArray, shape: &[i32]) -> Result<UniquePtr<MxArray>>;
        fn transpose(a: &MxArray, axes: &[i32]) -> Result<UniquePtr<MxArray>>;
        fn swapaxes(a: &MxArray, axis1: i32, axis2: i32) -> Result<UniquePtr<MxArray>>;
        fn slice(
            a: &MxArray,
            start: &[i32],
            stop: &[i32],
            strides: &[i32],
        ) -> Result<UniquePtr<MxArray>>;
        fn concatenate(arrays: &ArrayVec, axis: i32) -> Result<UniquePtr<MxArray>>;
        fn stack(arrays: &ArrayVec, axis: i32) -> Result<UniquePtr<MxArray>>;
        fn expand_dims(a: &MxArray, axes: &[i32]) -> Result<UniquePtr<MxArray>>;
        fn squeeze(a: &MxArray, axes: &[i32]) -> Result<UniquePtr<MxArray>>;
        fn broadcast_to(a: &MxArray, shape: &[i32]) -> Result<UniquePtr<MxArray>>;
        fn take(a: &MxArray, indices: &MxArray, axis: i32) -> Result<UniquePtr<MxArray>>;
        fn take_along_axis(a: &MxArray, indices: &MxArray, axis: i32)
            -> Result<UniquePtr<MxArray>>;

        // random
        fn random_key(seed: u64) -> Result<UniquePtr<MxArray>>;
        fn random_split(key: &MxArray, num: i32) -> Result<UniquePtr<MxArray>>;
        fn random_normal(
            shape: &[i32],
            dtype: i32,
            loc: f32,
            scale: f32,
            key: &MxArray,
        ) -> Result<UniquePtr<MxArray>>;
        fn random_uniform(
            low: &MxArray,
            high: &MxArray,
            shape: &[i32],
            dtype: i32,
            key: &MxArray,
        ) -> Result<UniquePtr<MxArray>>;
        fn random_bernoulli(
            p: &MxArray,
            shape: &[i32],
            key: &MxArray,
        ) -> Result<UniquePtr<MxArray>>;

        // fast (fused); a null UniquePtr means "absent"
        fn rms_norm(
            x: &MxArray,
            weight: UniquePtr<MxArray>,
            eps: f32,
        ) -> Result<UniquePtr<MxArray>>;
        fn layer_norm(
            x: &MxArray,
            weight: UniquePtr<MxArray>,
            bias: UniquePtr<MxArray>,
            eps: f32,
        ) -> Result<UniquePtr<MxArray>>;
        fn scaled_dot_product_attention(
            q: &MxArray,
            k: &MxArray,
            v: &MxArray,
            scale: f32,
            mask_mode: &str,
            mask: UniquePtr<MxArray>,
        ) -> Result<UniquePtr<MxArray>>;

        // xtr-pipe's CPU primitives (src/mlx/cpu/primitives.cc)
        fn xtr_gelu(x: &MxArray, tanh_form: bool) -> Result<UniquePtr<MxArray>>;
        fn xtr_softmax(x: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn xtr_softmax_bias(x: &MxArray, bias: &MxArray) -> Result<UniquePtr<MxArray>>;
        fn xtr_layer_norm(
            x: &MxArray,
            weight: &MxArray,
            bias: &MxArray,
            eps: f32,
        ) -> Result<UniquePtr<MxArray>>;
        fn xtr_rms_norm(x: &MxArray, weight: &MxArray, eps: f32) -> Result<UniquePtr<MxArray>>;
        fn xtr_dropout(x: &MxArray, key: &MxArray, rate: f32) -> Result<UniquePtr<MxArray>>;
        fn xtr_dropout_hash(seed: u64, index: u64) -> u32;
        fn xtr_attention_scores(
            q: &MxArray,
            k: &MxArray,
            heads: i32,
            scale: f32,
        ) -> Result<UniquePtr<MxArray>>;
        fn xtr_attention_values(
            probs: &MxArray,
            v: &MxArray,
            heads: i32,
        ) -> Result<UniquePtr<MxArray>>;
        fn cpu_kernels_isa() -> Result<String>;
        fn set_cpu_kernels_isa(name: &str) -> Result<String>;
        fn cpu_kernel_threads() -> Result<i32>;

        // xtr-pipe's GPU kernels (src/mlx/gpu/kernels.cc)
        fn xtr_gpu_dropout(x: &MxArray, key: &MxArray, rate: f32) -> Result<UniquePtr<MxArray>>;
        fn xtr_gpu_softmax_dropout(
            s: &MxArray,
            key: &MxArray,
            rate: f32,
        ) -> Result<UniquePtr<MxArray>>;
        fn xtr_gpu_act_dropout(
            a: &MxArray,
            gate: &MxArray,
            gated: bool,
            act: i32,
            key: &MxArray,
            rate: f32,
        ) -> Result<UniquePtr<MxArray>>;
        fn xtr_gpu_add_dropout(
            h: &MxArray,
            x: &MxArray,
            key: &MxArray,
            rate: f32,
        ) -> Result<UniquePtr<MxArray>>;

        // linear algebra
        fn xtr_eigh(a: &MxArray) -> Result<UniquePtr<ArrayVec>>;

        // transforms
        fn eval(arrays: &ArrayVec) -> Result<()>;
        fn async_eval(arrays: &ArrayVec) -> Result<()>;
        fn graph_ops(outputs: &ArrayVec) -> Result<String>;
        fn value_and_grad(
            fun: Box<Closure>,
            params: &ArrayVec,
            argnums: &[i32],
        ) -> Result<VagOutput>;
        fn compile(fun: Box<Closure>, shapeless: bool) -> Result<UniquePtr<CompiledFn>>;
        fn compiled_call(f: &CompiledFn, args: &ArrayVec) -> Result<UniquePtr<ArrayVec>>;
        fn set_compile_enabled(enabled: bool) -> Result<()>;

        // devices
        fn set_default_device(kind: i32, index: i32) -> Result<()>;
        fn default_device_kind() -> Result<i32>;
        fn gpu_is_available() -> Result<bool>;
        fn device_info(kind: i32) -> Result<Vec<String>>;
        fn synchronize() -> Result<()>;

        fn gpu_count() -> Result<i32>;

        // distributed
        fn dist_is_available(backend: &str) -> Result<bool>;
        fn dist_init(backend: &str, strict: bool) -> Result<UniquePtr<DistGroup>>;
        fn dist_rank(g: &DistGroup) -> Result<i32>;
        fn dist_size(g: &DistGroup) -> Result<i32>;
        fn dist_all_sum(a: &MxArray, g: &DistGroup) -> Result<UniquePtr<MxArray>>;
        fn dist_all_gather(a: &MxArray, g: &DistGroup) -> Result<UniquePtr<MxArray>>;

        // BLAS threads (call before any MLX work; see shim.cc)
        fn set_blas_thread_timeout(exponent: i32) -> bool;
        fn blas_core() -> String;

        // diagnostics
        fn blas_sgemm_library() -> Result<String>;
    }
}
