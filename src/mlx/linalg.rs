//! MLX's linear algebra, on the CPU stream whatever the default device (MLX
//! has CPU kernels only for these; the inputs are copied there as needed).

use super::array::Array;
use super::error::{Exception, Result};
use super::ffi::sys;
use super::transforms::from_vec_ptr;

/// Eigenvalues (ascending) and eigenvectors (the columns of the second array)
/// of the real symmetric matrix `a` (its lower triangle is read).
pub fn eigh(a: &Array) -> Result<(Array, Array)> {
    let out = from_vec_ptr(&sys::xtr_eigh(a.raw())?)?;
    let mut out = out.into_iter();
    match (out.next(), out.next()) {
        (Some(values), Some(vectors)) => Ok((values, vectors)),
        _ => Err(Exception::new("eigh returned fewer than two arrays")),
    }
}
