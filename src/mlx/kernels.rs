//! xtr-pipe's own kernels, as MLX graph nodes with their gradients.
//!
//! On the CPU (`src/mlx/cpu/`): GELU in both forms, last-axis softmax (with
//! an attention bias folded in or not), layer norm and RMS norm, dropout and
//! per-head attention products. MLX's CPU backend runs
//! element-wise math one scalar at a time on one thread; these kernels use
//! SLEEF's vector math (AVX-512, AVX2, or a portable scalar build, picked per
//! CPU at run time) across all cores. They exist only for f32 on the CPU:
//! callers ask [`applies`] and otherwise compose MLX's own ops.
//!
//! On the GPU (`src/mlx/gpu/`): dropout alone ([`gpu_dropout`]) and fused
//! with what it follows: the attention softmax ([`gpu_softmax_dropout`]), a
//! feed-forward activation and gate ([`gpu_act_dropout`]), a residual add
//! ([`gpu_add_dropout`]). They are CUDA kernels that MLX compiles at run time
//! (see [`gpu_applies`]), and they draw the same mask as the CPU kernel for the
//! same key.
//!
//! Switches (read once, at first use):
//! - `XTR_CPU_KERNELS=off` — never use the CPU kernels (compare against MLX's ops);
//! - `XTR_GPU_KERNELS=off` — never use the GPU kernels (MLX's `bernoulli` dropout);
//! - `XTR_CPU_ISA=avx512|avx2|scalar` — force an instruction set (a wider one
//!   than the CPU has is an error);
//! - `XTR_CPU_THREADS=N` — threads per kernel (default: the CPUs this process
//!   may run on, at most 16).

use std::sync::atomic::{AtomicU8, Ordering};

use super::array::Array;
use super::device::{Device, DeviceType};
use super::dtype::Dtype;
use super::error::Result;
use super::ffi::sys;

const UNSET: u8 = 0;
const ON: u8 = 1;
const OFF: u8 = 2;
static STATE: AtomicU8 = AtomicU8::new(UNSET);
static GPU_STATE: AtomicU8 = AtomicU8::new(UNSET);

/// A switch read from `var` the first time it is asked for.
fn switch(state: &AtomicU8, var: &str) -> bool {
    match state.load(Ordering::Relaxed) {
        ON => true,
        OFF => false,
        _ => {
            let off = matches!(
                std::env::var(var).as_deref(),
                Ok("off" | "0" | "false" | "mlx")
            );
            state.store(if off { OFF } else { ON }, Ordering::Relaxed);
            !off
        }
    }
}

/// Whether the CPU kernels are switched on (`XTR_CPU_KERNELS`, or [`set_enabled`]).
pub fn enabled() -> bool {
    switch(&STATE, "XTR_CPU_KERNELS")
}

/// Switches the CPU kernels on or off for graphs built from now on (benchmarks
/// compare both in one process).
pub fn set_enabled(on: bool) {
    STATE.store(if on { ON } else { OFF }, Ordering::Relaxed);
}

/// Whether the GPU kernels are switched on (`XTR_GPU_KERNELS`, or [`set_gpu_enabled`]).
pub fn gpu_enabled() -> bool {
    switch(&GPU_STATE, "XTR_GPU_KERNELS")
}

/// Switches the GPU kernels on or off for graphs built from now on.
pub fn set_gpu_enabled(on: bool) {
    GPU_STATE.store(if on { ON } else { OFF }, Ordering::Relaxed);
}

/// Whether a GPU kernel should handle `x`: switched on, `x` is a float
/// (f32, bf16 or f16), and the default device is the GPU.
pub fn gpu_applies(x: &Array) -> bool {
    gpu_enabled()
        && matches!(x.dtype(), Dtype::Float32 | Dtype::Bfloat16 | Dtype::Float16)
        && matches!(
            Device::default_device(),
            Ok(Device {
                device_type: DeviceType::Gpu,
                ..
            })
        )
}

/// Inverted dropout on the GPU, in `x`'s own dtype: the same mask as
/// [`dropout`] draws for `key` on the CPU, one kernel pass, and a gradient
/// that recomputes the mask rather than storing it. GPU only (see
/// [`gpu_applies`]).
pub fn gpu_dropout(x: &Array, key: &Array, rate: f32) -> Result<Array> {
    Array::wrap(sys::xtr_gpu_dropout(x.raw(), key.raw(), rate))
}

/// `dropout(act(a) * gate)` (no gate: `dropout(act(a))`) in one pass per
/// direction, the activation computed in f32: `act` is 0 ReLU, 1 erf GELU,
/// 2 tanh GELU, 3 SiLU. The mask is the one [`gpu_dropout`] draws on the
/// product. GPU only.
pub fn gpu_act_dropout(
    a: &Array,
    gate: Option<&Array>,
    act: i32,
    key: &Array,
    rate: f32,
) -> Result<Array> {
    let g = gate.unwrap_or(a);
    Array::wrap(sys::xtr_gpu_act_dropout(
        a.raw(),
        g.raw(),
        gate.is_some(),
        act,
        key.raw(),
        rate,
    ))
}

/// `h + gpu_dropout(x, key, rate)` in one pass; its gradient passes straight
/// to `h` and through the mask to `x`. GPU only.
pub fn gpu_add_dropout(h: &Array, x: &Array, key: &Array, rate: f32) -> Result<Array> {
    Array::wrap(sys::xtr_gpu_add_dropout(h.raw(), x.raw(), key.raw(), rate))
}

/// Rows up to this long go through [`gpu_softmax_dropout`].
pub const GPU_SOFTMAX_MAX_ROW: i32 = 1024;

/// `gpu_dropout(softmax(s, last axis), key, rate)` in one kernel per
/// direction: the softmax in f32 per row, the same mask as [`gpu_dropout`]
/// draws on its output, and a gradient that recomputes both from `s` (no
/// probabilities or mask stored). Rows up to [`GPU_SOFTMAX_MAX_ROW`]; GPU only.
pub fn gpu_softmax_dropout(s: &Array, key: &Array, rate: f32) -> Result<Array> {
    Array::wrap(sys::xtr_gpu_softmax_dropout(s.raw(), key.raw(), rate))
}

/// Whether an op on `x` should use these kernels: switched on, `x` is f32,
/// and the default device is the CPU.
pub fn applies(x: &Array) -> bool {
    enabled()
        && x.dtype() == Dtype::Float32
        && matches!(
            Device::default_device(),
            Ok(Device {
                device_type: DeviceType::Cpu,
                ..
            })
        )
}

/// The exact GELU `0.5 x (1 + erf(x / √2))`, or with `tanh_form` the tanh
/// approximation. f32 on the CPU only (see [`applies`]).
pub fn gelu(x: &Array, tanh_form: bool) -> Result<Array> {
    Array::wrap(sys::xtr_gelu(x.raw(), tanh_form))
}

/// Softmax over the last axis. f32 on the CPU only.
pub fn softmax_last(x: &Array) -> Result<Array> {
    Array::wrap(sys::xtr_softmax(x.raw()))
}

/// `softmax(x + bias)` over the last axis in one pass: `bias` has `x`'s rank
/// and last axis, and its other axes are 1 (broadcast, as an attention mask's
/// `[B, 1, 1, T]`) or `x`'s. f32 on the CPU only.
pub fn softmax_last_bias(x: &Array, bias: &Array) -> Result<Array> {
    Array::wrap(sys::xtr_softmax_bias(x.raw(), bias.raw()))
}

/// Layer norm over the last axis, `(x - mean) / sqrt(var + eps) * weight + bias`
/// (biased variance, as PyTorch's), forward and gradient each one pass per row.
/// f32 on the CPU only.
pub fn layer_norm(x: &Array, weight: &Array, bias: &Array, eps: f32) -> Result<Array> {
    Array::wrap(sys::xtr_layer_norm(x.raw(), weight.raw(), bias.raw(), eps))
}

/// RMS norm over the last axis, `x / sqrt(mean(x²) + eps) * weight`, forward
/// and gradient each one pass per row. f32 on the CPU only.
pub fn rms_norm(x: &Array, weight: &Array, eps: f32) -> Result<Array> {
    Array::wrap(sys::xtr_rms_norm(x.raw(), weight.raw(), eps))
}

/// Inverted dropout: each element kept with probability `1 - rate` and scaled
/// by `1 / (1 - rate)`, the mask a pure function of `key` (a PRNG key from
/// [`super::random::key`] / `split`) and the element's index, so the same key
/// always drops the same elements and the gradient reuses the mask without
/// storing it. f32 on the CPU only.
pub fn dropout(x: &Array, key: &Array, rate: f32) -> Result<Array> {
    Array::wrap(sys::xtr_dropout(x.raw(), key.raw(), rate))
}

/// Attention scores `scale · q_h k_hᵀ` for every head, from the projections
/// `q` `[B, S, heads·D]` and `k` `[B, T, heads·D]` as they are (no head
/// transposes or copies): `[B, heads, S, T]`. f32 on the CPU only.
pub fn attention_scores(q: &Array, k: &Array, heads: i32, scale: f32) -> Result<Array> {
    Array::wrap(sys::xtr_attention_scores(q.raw(), k.raw(), heads, scale))
}

/// The attention output `p_h v_h` of every head, written with the heads
/// merged: `probs` `[B, heads, S, T]`, `v` `[B, T, heads·D]` → `[B, S, heads·D]`.
/// f32 on the CPU only.
pub fn attention_values(probs: &Array, v: &Array, heads: i32) -> Result<Array> {
    Array::wrap(sys::xtr_attention_values(probs.raw(), v.raw(), heads))
}

/// The 32-bit hash that decides dropout: element `index` is kept when
/// `dropout_hash(seed, index) >= rate * 2^32`, where `seed` is the key's two
/// words `(k[0] << 32) | k[1]`.
pub fn dropout_hash(seed: u64, index: u64) -> u32 {
    sys::xtr_dropout_hash(seed, index)
}

/// The instruction set the kernels use: `avx512`, `avx2` or `scalar`.
pub fn isa() -> Result<String> {
    Ok(sys::cpu_kernels_isa()?)
}

/// Forces an instruction set (`auto`, `avx512`, `avx2`, `scalar`) and returns
/// the one now in use; asking for one this CPU lacks is an error.
pub fn set_isa(name: &str) -> Result<String> {
    Ok(sys::set_cpu_kernels_isa(name)?)
}

/// Threads each kernel splits its work across.
pub fn threads() -> Result<i32> {
    Ok(sys::cpu_kernel_threads()?)
}

#[path = "kernels_bench.rs"]
pub mod bench;

#[cfg(test)]
#[path = "kernels_tests.rs"]
pub(crate) mod tests;
