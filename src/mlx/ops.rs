//! Array operations as free functions (mlx-rs names and argument order) and as
//! `Array` methods: arithmetic, elementwise math, reductions, shapes,
//! indexing and factories. Each returns `Result<Array, Exception>`; nothing is
//! computed until evaluation.

use super::array::{Array, ArrayElement};
use super::dtype::Dtype;
use super::error::Result;
use super::ffi::sys;
use super::transforms::to_vec;

macro_rules! unary_ops {
    ($($(#[$doc:meta])* $name:ident => $sys:ident;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(a: impl AsRef<Array>) -> Result<Array> {
                Array::wrap(sys::$sys(a.as_ref().raw()))
            }
        )*
        impl Array {
            $(
                $(#[$doc])*
                pub fn $name(&self) -> Result<Array> {
                    $name(self)
                }
            )*
        }
    };
}

macro_rules! binary_ops {
    ($($(#[$doc:meta])* $name:ident => $sys:ident;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(a: impl AsRef<Array>, b: impl AsRef<Array>) -> Result<Array> {
                Array::wrap(sys::$sys(a.as_ref().raw(), b.as_ref().raw()))
            }
        )*
        impl Array {
            $(
                $(#[$doc])*
                pub fn $name(&self, other: impl AsRef<Array>) -> Result<Array> {
                    $name(self, other)
                }
            )*
        }
    };
}

macro_rules! reductions {
    ($($(#[$doc:meta])* $axes:ident, $axis:ident, $all:ident => $sys:ident;)*) => {
        $(
            $(#[$doc])*
            /// Over the given axes.
            pub fn $axes(a: impl AsRef<Array>, axes: &[i32], keep_dims: bool) -> Result<Array> {
                Array::wrap(sys::$sys(a.as_ref().raw(), axes, keep_dims))
            }
            $(#[$doc])*
            /// Over one axis.
            pub fn $axis(a: impl AsRef<Array>, axis: i32, keep_dims: bool) -> Result<Array> {
                $axes(a, &[axis], keep_dims)
            }
            $(#[$doc])*
            /// Over all axes.
            pub fn $all(a: impl AsRef<Array>, keep_dims: bool) -> Result<Array> {
                let a = a.as_ref();
                $axes(a, &all_axes(a), keep_dims)
            }
        )*
        impl Array {
            $(
                $(#[$doc])*
                /// Over the given axes.
                pub fn $axes(&self, axes: &[i32], keep_dims: bool) -> Result<Array> {
                    $axes(self, axes, keep_dims)
                }
                $(#[$doc])*
                /// Over one axis.
                pub fn $axis(&self, axis: i32, keep_dims: bool) -> Result<Array> {
                    $axis(self, axis, keep_dims)
                }
                $(#[$doc])*
                /// Over all axes.
                pub fn $all(&self, keep_dims: bool) -> Result<Array> {
                    $all(self, keep_dims)
                }
            )*
        }
    };
}

fn all_axes(a: &Array) -> Vec<i32> {
    (0..a.ndim() as i32).collect()
}

unary_ops! {
    /// `-a`.
    negative => negative;
    /// `e^a`.
    exp => exp;
    /// Natural logarithm.
    log => log;
    /// `ln(1 + a)`.
    log1p => log1p;
    /// Square root.
    sqrt => sqrt;
    /// `1 / sqrt(a)`.
    rsqrt => rsqrt;
    /// `a * a`.
    square => square;
    /// Absolute value.
    abs => abs;
    /// The error function.
    erf => erf;
    /// Hyperbolic tangent.
    tanh => tanh;
    /// Logistic sigmoid.
    sigmoid => sigmoid;
    /// Sine.
    sin => sin;
    /// Cosine.
    cos => cos;
    /// Elementwise logical not.
    logical_not => logical_not;
    /// The same values with no gradient flowing back through them.
    stop_gradient => stop_gradient;
}

binary_ops! {
    /// `a + b` (broadcasting).
    add => add;
    /// `a - b` (broadcasting).
    subtract => subtract;
    /// `a * b` (broadcasting).
    multiply => multiply;
    /// `a / b` (broadcasting).
    divide => divide;
    /// Elementwise maximum.
    maximum => maximum;
    /// Elementwise minimum.
    minimum => minimum;
    /// `a ^ b` elementwise.
    power => power;
    /// `a == b` elementwise.
    eq => equal;
    /// `a != b` elementwise.
    ne => not_equal;
    /// `a > b` elementwise.
    gt => greater;
    /// `a >= b` elementwise.
    ge => greater_equal;
    /// `a < b` elementwise.
    lt => less;
    /// `a <= b` elementwise.
    le => less_equal;
    /// Matrix product (batched over leading dimensions).
    matmul => matmul;
}

reductions! {
    /// Sum.
    sum_axes, sum_axis, sum => sum;
    /// Mean.
    mean_axes, mean_axis, mean => mean;
    /// Maximum.
    max_axes, max_axis, max => max;
    /// Minimum.
    min_axes, min_axis, min => min;
    /// `log(sum(exp(a)))`, computed stably.
    logsumexp_axes, logsumexp_axis, logsumexp => logsumexp;
}

/// Softmax over `axes`; `precise` accumulates in f32 for half inputs.
pub fn softmax_axes(a: impl AsRef<Array>, axes: &[i32], precise: bool) -> Result<Array> {
    Array::wrap(sys::softmax(a.as_ref().raw(), axes, precise))
}

/// Softmax over one axis.
pub fn softmax_axis(a: impl AsRef<Array>, axis: i32, precise: bool) -> Result<Array> {
    softmax_axes(a, &[axis], precise)
}

/// Index of the maximum along `axis`.
pub fn argmax_axis(a: impl AsRef<Array>, axis: i32, keep_dims: bool) -> Result<Array> {
    Array::wrap(sys::argmax(a.as_ref().raw(), axis, keep_dims))
}

/// Chooses from `a` where `condition` holds, else from `b` (broadcasting).
pub fn r#where(
    condition: impl AsRef<Array>,
    a: impl AsRef<Array>,
    b: impl AsRef<Array>,
) -> Result<Array> {
    Array::wrap(sys::where_(
        condition.as_ref().raw(),
        a.as_ref().raw(),
        b.as_ref().raw(),
    ))
}

/// Alias of [`r#where`] (mlx-rs offers both names).
pub fn which(
    condition: impl AsRef<Array>,
    a: impl AsRef<Array>,
    b: impl AsRef<Array>,
) -> Result<Array> {
    r#where(condition, a, b)
}

/// Same values with another shape (one dimension may be -1).
pub fn reshape(a: impl AsRef<Array>, shape: &[i32]) -> Result<Array> {
    Array::wrap(sys::reshape(a.as_ref().raw(), shape))
}

/// Permutes the axes.
pub fn transpose_axes(a: impl AsRef<Array>, axes: &[i32]) -> Result<Array> {
    Array::wrap(sys::transpose(a.as_ref().raw(), axes))
}

/// Reverses the axes.
pub fn transpose(a: impl AsRef<Array>) -> Result<Array> {
    let a = a.as_ref();
    let axes: Vec<i32> = (0..a.ndim() as i32).rev().collect();
    transpose_axes(a, &axes)
}

/// Swaps two axes.
pub fn swap_axes(a: impl AsRef<Array>, axis1: i32, axis2: i32) -> Result<Array> {
    Array::wrap(sys::swapaxes(a.as_ref().raw(), axis1, axis2))
}

/// `a[start:stop:strides]` per axis (all three as long as `a.ndim()`).
pub fn slice(a: impl AsRef<Array>, start: &[i32], stop: &[i32], strides: &[i32]) -> Result<Array> {
    Array::wrap(sys::slice(a.as_ref().raw(), start, stop, strides))
}

/// Joins arrays along an existing axis.
pub fn concatenate_axis(arrays: &[impl AsRef<Array>], axis: i32) -> Result<Array> {
    Array::wrap(sys::concatenate(&to_vec(arrays), axis))
}

/// Joins arrays along a new axis.
pub fn stack_axis(arrays: &[impl AsRef<Array>], axis: i32) -> Result<Array> {
    Array::wrap(sys::stack(&to_vec(arrays), axis))
}

/// Inserts a length-1 axis at `axis`.
pub fn expand_dims(a: impl AsRef<Array>, axis: i32) -> Result<Array> {
    expand_dims_axes(a, &[axis])
}

/// Inserts length-1 axes at `axes`.
pub fn expand_dims_axes(a: impl AsRef<Array>, axes: &[i32]) -> Result<Array> {
    Array::wrap(sys::expand_dims(a.as_ref().raw(), axes))
}

/// Removes the given length-1 axes.
pub fn squeeze_axes(a: impl AsRef<Array>, axes: &[i32]) -> Result<Array> {
    Array::wrap(sys::squeeze(a.as_ref().raw(), axes))
}

/// Broadcasts to `shape`.
pub fn broadcast_to(a: impl AsRef<Array>, shape: &[i32]) -> Result<Array> {
    Array::wrap(sys::broadcast_to(a.as_ref().raw(), shape))
}

/// Gathers `indices` along `axis` (an embedding lookup with axis 0).
pub fn take_axis(a: impl AsRef<Array>, indices: impl AsRef<Array>, axis: i32) -> Result<Array> {
    Array::wrap(sys::take(a.as_ref().raw(), indices.as_ref().raw(), axis))
}

/// Gathers with `indices` shaped like `a` along `axis`.
pub fn take_along_axis(
    a: impl AsRef<Array>,
    indices: impl AsRef<Array>,
    axis: i32,
) -> Result<Array> {
    Array::wrap(sys::take_along_axis(
        a.as_ref().raw(),
        indices.as_ref().raw(),
        axis,
    ))
}

/// Converts the element type.
pub fn as_dtype(a: impl AsRef<Array>, dtype: Dtype) -> Result<Array> {
    Array::wrap(sys::astype(a.as_ref().raw(), dtype.code()))
}

/// Zeros of `shape` and element type `T`.
pub fn zeros<T: ArrayElement>(shape: &[i32]) -> Result<Array> {
    zeros_dtype(shape, T::DTYPE)
}

/// Zeros of `shape` and `dtype`.
pub fn zeros_dtype(shape: &[i32], dtype: Dtype) -> Result<Array> {
    Array::wrap(sys::zeros(shape, dtype.code()))
}

/// Ones of `shape` and element type `T`.
pub fn ones<T: ArrayElement>(shape: &[i32]) -> Result<Array> {
    ones_dtype(shape, T::DTYPE)
}

/// Ones of `shape` and `dtype`.
pub fn ones_dtype(shape: &[i32], dtype: Dtype) -> Result<Array> {
    Array::wrap(sys::ones(shape, dtype.code()))
}

/// `shape` filled with `value` (a scalar or broadcastable array), as `T`.
pub fn full<T: ArrayElement>(shape: &[i32], value: impl AsRef<Array>) -> Result<Array> {
    Array::wrap(sys::full(shape, value.as_ref().raw(), T::DTYPE.code()))
}

/// `[start, stop)` in steps of `step`, as `T`.
pub fn arange<T: ArrayElement>(start: f64, stop: f64, step: f64) -> Result<Array> {
    Array::wrap(sys::arange(start, stop, step, T::DTYPE.code()))
}

impl Array {
    /// Softmax over `axes`.
    pub fn softmax_axes(&self, axes: &[i32], precise: bool) -> Result<Array> {
        softmax_axes(self, axes, precise)
    }
    /// Index of the maximum along `axis`.
    pub fn argmax_axis(&self, axis: i32, keep_dims: bool) -> Result<Array> {
        argmax_axis(self, axis, keep_dims)
    }
    /// See [`reshape`].
    pub fn reshape(&self, shape: &[i32]) -> Result<Array> {
        reshape(self, shape)
    }
    /// See [`transpose_axes`].
    pub fn transpose_axes(&self, axes: &[i32]) -> Result<Array> {
        transpose_axes(self, axes)
    }
    /// See [`transpose`].
    pub fn transpose(&self) -> Result<Array> {
        transpose(self)
    }
    /// See [`swap_axes`].
    pub fn swap_axes(&self, axis1: i32, axis2: i32) -> Result<Array> {
        swap_axes(self, axis1, axis2)
    }
    /// See [`expand_dims`].
    pub fn expand_dims(&self, axis: i32) -> Result<Array> {
        expand_dims(self, axis)
    }
    /// See [`squeeze_axes`].
    pub fn squeeze_axes(&self, axes: &[i32]) -> Result<Array> {
        squeeze_axes(self, axes)
    }
    /// See [`broadcast_to`].
    pub fn broadcast_to(&self, shape: &[i32]) -> Result<Array> {
        broadcast_to(self, shape)
    }
    /// See [`take_axis`].
    pub fn take_axis(&self, indices: impl AsRef<Array>, axis: i32) -> Result<Array> {
        take_axis(self, indices, axis)
    }
    /// See [`take_along_axis`].
    pub fn take_along_axis(&self, indices: impl AsRef<Array>, axis: i32) -> Result<Array> {
        take_along_axis(self, indices, axis)
    }
    /// Converts to `dtype`.
    pub fn as_dtype(&self, dtype: Dtype) -> Result<Array> {
        as_dtype(self, dtype)
    }
    /// Converts to `T`'s dtype.
    pub fn as_type<T: ArrayElement>(&self) -> Result<Array> {
        as_dtype(self, T::DTYPE)
    }
}
