//! Random numbers with explicit keys (`key(seed)`, `split`): normal, uniform
//! and Bernoulli samples. Always passing a key keeps runs reproducible.

use super::array::{Array, ArrayElement};
use super::error::Result;
use super::ffi::sys;

/// A PRNG key from a seed.
pub fn key(seed: u64) -> Result<Array> {
    Array::wrap(sys::random_key(seed))
}

/// Splits a key into `num` new keys (shape `[num, 2]`).
pub fn split(key: &Array, num: i32) -> Result<Array> {
    Array::wrap(sys::random_split(key.raw(), num))
}

/// Splits a key into two. The halves are views of the split's rows (no
/// gather): a training step splits a key for every dropout mask, and on a GPU
/// each gather was a kernel launch of its own.
pub fn split2(key: &Array) -> Result<(Array, Array)> {
    let keys = split(key, 2)?;
    let row = |i: i32| -> Result<Array> {
        super::ops::slice(&keys, &[i, 0], &[i + 1, 2], &[1, 1])?.reshape(&[2])
    };
    Ok((row(0)?, row(1)?))
}

/// Normal samples of `shape` with mean `loc` and standard deviation `scale`
/// (defaults 0 and 1), as `T`.
pub fn normal<T: ArrayElement>(
    shape: &[i32],
    loc: Option<f32>,
    scale: Option<f32>,
    key: &Array,
) -> Result<Array> {
    Array::wrap(sys::random_normal(
        shape,
        T::DTYPE.code(),
        loc.unwrap_or(0.0),
        scale.unwrap_or(1.0),
        key.raw(),
    ))
}

/// Uniform samples in `[lower, upper)` of `shape`, as `T`.
pub fn uniform<E: Into<Array>, T: ArrayElement>(
    lower: E,
    upper: E,
    shape: &[i32],
    key: &Array,
) -> Result<Array> {
    let (lo, hi): (Array, Array) = (lower.into(), upper.into());
    Array::wrap(sys::random_uniform(
        lo.raw(),
        hi.raw(),
        shape,
        T::DTYPE.code(),
        key.raw(),
    ))
}

/// Booleans of `shape` that are true with probability `p` (e.g. dropout
/// keep masks).
pub fn bernoulli(p: &Array, shape: &[i32], key: &Array) -> Result<Array> {
    Array::wrap(sys::random_bernoulli(p.raw(), shape, key.raw()))
}
