//! MLX's fused kernels: RMS norm, layer norm and scaled dot-product attention
//! (one op each instead of a chain of elementwise ops).

use cxx::UniquePtr;

use super::array::Array;
use super::error::Result;
use super::ffi::sys::{self, MxArray};

fn opt(a: Option<&Array>) -> UniquePtr<MxArray> {
    a.map_or_else(UniquePtr::null, |a| sys::clone_array(a.raw()))
}

/// `x / sqrt(mean(x^2, -1) + eps) * weight` over the last axis.
pub fn rms_norm(x: impl AsRef<Array>, weight: impl AsRef<Array>, eps: f32) -> Result<Array> {
    Array::wrap(sys::rms_norm(
        x.as_ref().raw(),
        opt(Some(weight.as_ref())),
        eps,
    ))
}

/// Layer norm over the last axis, with optional affine `weight` / `bias`.
pub fn layer_norm(
    x: impl AsRef<Array>,
    weight: Option<&Array>,
    bias: Option<&Array>,
    eps: f32,
) -> Result<Array> {
    Array::wrap(sys::layer_norm(
        x.as_ref().raw(),
        opt(weight),
        opt(bias),
        eps,
    ))
}

/// The mask of [`scaled_dot_product_attention`].
#[derive(Debug, Clone, Copy)]
pub enum ScaledDotProductAttentionMask<'a> {
    /// An additive (float) or boolean mask broadcastable to the scores.
    Array(&'a Array),
    /// Causal (lower-triangular) masking.
    Causal,
}

/// `softmax(q kᵀ * scale + mask) v` for `[batch, heads, seq, dim]` inputs.
pub fn scaled_dot_product_attention(
    queries: impl AsRef<Array>,
    keys: impl AsRef<Array>,
    values: impl AsRef<Array>,
    scale: f32,
    mask: Option<ScaledDotProductAttentionMask<'_>>,
) -> Result<Array> {
    let (mode, arr) = match mask {
        None => ("", None),
        Some(ScaledDotProductAttentionMask::Causal) => ("causal", None),
        Some(ScaledDotProductAttentionMask::Array(a)) => ("array", Some(a)),
    };
    Array::wrap(sys::scaled_dot_product_attention(
        queries.as_ref().raw(),
        keys.as_ref().raw(),
        values.as_ref().raw(),
        scale,
        mode,
        opt(arr),
    ))
}
