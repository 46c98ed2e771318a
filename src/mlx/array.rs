//! The safe `Array` handle: creation from host data, shape/dtype queries and
//! copying results back to the host. An `Array` is one reference on MLX's
//! shared, lazily evaluated array; cloning it is cheap and shares the data.

use std::cell::OnceCell;
use std::fmt;

use cxx::UniquePtr;

use super::dtype::Dtype;
use super::error::{Exception, Result};
use super::ffi::sys::{self, MxArray};

/// An MLX array.
///
/// Not `Send`/`Sync`: copies of one array share MLX graph nodes without locks,
/// and evaluating shared nodes from two threads would race, so arrays stay on
/// the thread that made them.
pub struct Array {
    ptr: UniquePtr<MxArray>,
    shape: OnceCell<Vec<i32>>,
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for i32 {}
    impl Sealed for u32 {}
    impl Sealed for bool {}
}

/// Host element types that arrays can be built from and copied into.
pub trait ArrayElement: Copy + sealed::Sealed {
    /// The MLX dtype with this element layout.
    const DTYPE: Dtype;
    #[doc(hidden)]
    fn from_slice_raw(data: &[Self], shape: &[i32]) -> Result<Array>;
    #[doc(hidden)]
    fn to_vec_raw(a: &Array) -> Result<Vec<Self>>;
    #[doc(hidden)]
    fn scalar(self) -> Array;
}

impl ArrayElement for f32 {
    const DTYPE: Dtype = Dtype::Float32;
    fn from_slice_raw(data: &[Self], shape: &[i32]) -> Result<Array> {
        Array::wrap(sys::from_f32(data, shape))
    }
    fn to_vec_raw(a: &Array) -> Result<Vec<Self>> {
        Ok(sys::to_f32_vec(a.raw())?)
    }
    fn scalar(self) -> Array {
        Array::from_f32(self)
    }
}

impl ArrayElement for i32 {
    const DTYPE: Dtype = Dtype::Int32;
    fn from_slice_raw(data: &[Self], shape: &[i32]) -> Result<Array> {
        Array::wrap(sys::from_i32(data, shape))
    }
    fn to_vec_raw(a: &Array) -> Result<Vec<Self>> {
        Ok(sys::to_i32_vec(a.raw())?)
    }
    fn scalar(self) -> Array {
        Array::from_int(self)
    }
}

impl ArrayElement for u32 {
    const DTYPE: Dtype = Dtype::Uint32;
    fn from_slice_raw(data: &[Self], shape: &[i32]) -> Result<Array> {
        Array::wrap(sys::from_u32(data, shape))
    }
    fn to_vec_raw(a: &Array) -> Result<Vec<Self>> {
        Ok(sys::to_u32_vec(a.raw())?)
    }
    fn scalar(self) -> Array {
        // A u32 scalar is rare enough to build through a one-element slice.
        match sys::from_u32(&[self], &[]) {
            Ok(ptr) => Array::from_ptr(ptr),
            Err(_) => Array::from_int(self as i32),
        }
    }
}

impl ArrayElement for bool {
    const DTYPE: Dtype = Dtype::Bool;
    fn from_slice_raw(data: &[Self], shape: &[i32]) -> Result<Array> {
        Array::wrap(sys::from_bool(data, shape))
    }
    fn to_vec_raw(a: &Array) -> Result<Vec<Self>> {
        Ok(sys::to_u32_vec(a.raw())?
            .into_iter()
            .map(|v| v != 0)
            .collect())
    }
    fn scalar(self) -> Array {
        Array::from_bool(self)
    }
}

impl Array {
    /// Wraps a pointer the shim returned (never null: the shim always
    /// returns `make_unique` or throws).
    pub(crate) fn from_ptr(ptr: UniquePtr<MxArray>) -> Array {
        debug_assert!(!ptr.is_null());
        Array {
            ptr,
            shape: OnceCell::new(),
        }
    }

    /// Converts a shim result, turning a C++ exception into [`Exception`].
    pub(crate) fn wrap(r: Result<UniquePtr<MxArray>, cxx::Exception>) -> Result<Array> {
        Ok(Array::from_ptr(r?))
    }

    /// The underlying C++ array.
    pub(crate) fn raw(&self) -> &MxArray {
        // Invariant: `ptr` is never null (see `from_ptr`).
        &self.ptr
    }

    /// Builds an array of `shape` from row-major `data`; errors when the
    /// lengths disagree.
    pub fn from_slice<T: ArrayElement>(data: &[T], shape: &[i32]) -> Result<Array> {
        T::from_slice_raw(data, shape)
    }

    /// Builds an array from little-endian raw bytes of `dtype` (e.g. a
    /// safetensors buffer, f16/bf16 included).
    pub fn from_bytes(data: &[u8], shape: &[i32], dtype: Dtype) -> Result<Array> {
        Array::wrap(sys::from_bytes(data, shape, dtype.code()))
    }

    /// A scalar f32 array.
    pub fn from_f32(v: f32) -> Array {
        Array::from_ptr(sys::scalar_f32(v))
    }

    /// A scalar i32 array.
    pub fn from_int(v: i32) -> Array {
        Array::from_ptr(sys::scalar_i32(v))
    }

    /// A scalar bool array.
    pub fn from_bool(v: bool) -> Array {
        Array::from_ptr(sys::scalar_bool(v))
    }

    /// A scalar of any host element type.
    pub fn from_scalar<T: ArrayElement>(v: T) -> Array {
        v.scalar()
    }

    /// Zeros of `shape` and element type `T`.
    pub fn zeros<T: ArrayElement>(shape: &[i32]) -> Result<Array> {
        super::ops::zeros_dtype(shape, T::DTYPE)
    }

    /// Ones of `shape` and element type `T`.
    pub fn ones<T: ArrayElement>(shape: &[i32]) -> Result<Array> {
        super::ops::ones_dtype(shape, T::DTYPE)
    }

    /// The dimensions.
    pub fn shape(&self) -> &[i32] {
        self.shape
            .get_or_init(|| sys::shape(self.raw()).into_iter().collect())
    }

    /// Size of dimension `dim` (negative counts from the end); `None` when
    /// out of range.
    pub fn dim(&self, dim: i32) -> Option<i32> {
        let n = self.ndim() as i32;
        let i = if dim < 0 { dim + n } else { dim };
        usize::try_from(i)
            .ok()
            .and_then(|i| self.shape().get(i).copied())
    }

    /// Number of dimensions.
    pub fn ndim(&self) -> usize {
        self.shape().len()
    }

    /// Number of elements.
    pub fn size(&self) -> usize {
        sys::size(self.raw())
    }

    /// Bytes of element data.
    pub fn nbytes(&self) -> usize {
        sys::nbytes(self.raw())
    }

    /// The element type.
    pub fn dtype(&self) -> Dtype {
        // The shim only reports the codes Dtype::from_code knows.
        Dtype::from_code(sys::dtype(self.raw())).unwrap_or(Dtype::Float32)
    }

    /// Evaluates the array (runs its graph).
    pub fn eval(&self) -> Result<()> {
        super::transforms::eval([self])
    }

    /// Evaluates and copies the elements out, converted to `T`, row-major.
    pub fn to_vec<T: ArrayElement>(&self) -> Result<Vec<T>> {
        T::to_vec_raw(self)
    }

    /// Evaluates and copies out the raw little-endian bytes, row-major.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        Ok(sys::to_bytes(self.raw())?)
    }

    /// The single element of a one-element array, converted to `T`.
    pub fn item<T: ArrayElement>(&self) -> Result<T> {
        if self.size() != 1 {
            return Err(Exception::new(format!(
                "item() needs a one-element array, got shape {:?}",
                self.shape()
            )));
        }
        self.to_vec::<T>()?
            .first()
            .copied()
            .ok_or_else(|| Exception::new("item(): empty copy"))
    }

    /// Evaluates and borrows the elements in place (no copy). Errors when the
    /// dtype is not `T`'s or the data is not row-contiguous (use
    /// [`Array::to_vec`] then).
    pub fn as_slice<T: ArrayElement>(&self) -> Result<&[T]> {
        if self.dtype() != T::DTYPE {
            return Err(Exception::new(format!(
                "as_slice::<{}>() on an array of {:?}",
                std::any::type_name::<T>(),
                self.dtype()
            )));
        }
        let n = self.size();
        if n == 0 {
            return Ok(&[]);
        }
        let ptr = sys::data_ptr(self.raw())? as *const T;
        // SAFETY: after eval the buffer holds `n` row-contiguous elements of
        // T::DTYPE (checked above and in the shim). It lives as long as this
        // array's shared descriptor, which `self` keeps alive for the borrow;
        // MLX only donates (reuses) buffers whose descriptor has a single
        // owner, and `self` is one owner besides any graph that uses it.
        Ok(unsafe { std::slice::from_raw_parts(ptr, n) })
    }

    /// Same as [`Array::as_slice`] (the mlx-rs name for the fallible form).
    pub fn try_as_slice<T: ArrayElement>(&self) -> Result<&[T]> {
        self.as_slice()
    }
}

impl Clone for Array {
    /// Another reference to the same array (no data copy).
    fn clone(&self) -> Self {
        Array {
            ptr: sys::clone_array(self.raw()),
            shape: self.shape.clone(),
        }
    }
}

impl AsRef<Array> for Array {
    fn as_ref(&self) -> &Array {
        self
    }
}

impl fmt::Debug for Array {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Array(shape={:?}, dtype={:?})",
            self.shape(),
            self.dtype()
        )
    }
}

impl fmt::Display for Array {
    /// Evaluates and prints the values the way MLX does.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match sys::to_string(self.raw()) {
            Ok(s) => f.write_str(&s),
            Err(e) => write!(f, "<array that failed to evaluate: {}>", e.what()),
        }
    }
}

impl From<f32> for Array {
    fn from(v: f32) -> Self {
        Array::from_f32(v)
    }
}

impl From<i32> for Array {
    fn from(v: i32) -> Self {
        Array::from_int(v)
    }
}

impl From<bool> for Array {
    fn from(v: bool) -> Self {
        Array::from_bool(v)
    }
}
