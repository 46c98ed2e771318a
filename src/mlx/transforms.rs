//! Function transforms over Rust closures: `eval`, `value_and_grad` and
//! `compile`, plus the callback the C++ shim uses to call back into Rust.
//!
//! How a closure crosses into MLX: it is boxed in a [`Closure`], handed to the
//! shim as `rust::Box<Closure>`, and the shim keeps that box in a
//! `shared_ptr` captured by the `std::function` it gives MLX, so the closure
//! lives exactly as long as MLX's copies of the function. MLX calls it back
//! through [`call_closure`] with its (tracer) arrays; the callback takes its
//! own reference on each (so nothing borrowed is ever dropped twice) and runs
//! the closure under `catch_unwind` (a panic must not unwind into C++). An
//! error or panic becomes a C++ exception that unwinds MLX and returns to the
//! caller as `Err`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use cxx::UniquePtr;

use super::array::Array;
use super::error::{Exception, Result};
use super::ffi::sys::{self, ArrayVec};

type DynFn<'a> = dyn FnMut(&[Array]) -> Result<Vec<Array>> + 'a;

/// A Rust closure as MLX sees it (opaque to C++).
pub struct Closure {
    inner: ClosureInner,
}

enum ClosureInner {
    /// Owned: used by `compile`, whose function outlives the call.
    Owned(Box<DynFn<'static>>),
    /// Borrowed for the duration of one shim call (`value_and_grad`).
    Borrowed(*mut DynFn<'static>),
}

impl Closure {
    fn call(&mut self, args: &[Array]) -> Result<Vec<Array>> {
        match &mut self.inner {
            ClosureInner::Owned(f) => f(args),
            // SAFETY: see `Closure::borrowed`; the pointee outlives every call.
            ClosureInner::Borrowed(f) => unsafe { (**f)(args) },
        }
    }

    /// Wraps a borrowed closure without a `'static` bound.
    ///
    /// # Safety
    /// The returned `Closure` (and every C++ copy of the function holding it)
    /// must not be called after `f`'s borrow ends. `value_and_grad` in MLX
    /// calls the function only inside the shim call and keeps no copy, so
    /// a `Closure` passed to `sys::value_and_grad` satisfies this.
    unsafe fn borrowed<'a>(f: &'a mut DynFn<'a>) -> Box<Closure> {
        let ptr: *mut DynFn<'a> = f;
        // SAFETY: only the lifetime is erased; the caller upholds it.
        let ptr: *mut DynFn<'static> = unsafe { std::mem::transmute(ptr) };
        Box::new(Closure {
            inner: ClosureInner::Borrowed(ptr),
        })
    }
}

/// The callback the shim invokes (declared in the bridge).
pub(crate) fn call_closure(
    f: &mut Closure,
    args: &ArrayVec,
) -> std::result::Result<UniquePtr<ArrayVec>, Exception> {
    let inputs = from_vec(args)?;
    match catch_unwind(AssertUnwindSafe(|| f.call(&inputs))) {
        Ok(Ok(outputs)) => Ok(to_vec(&outputs)),
        Ok(Err(e)) => Err(e),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_string());
            Err(Exception::new(format!("closure panicked: {msg}")))
        }
    }
}

/// Packs arrays into a C++ list (each entry one more reference).
pub(crate) fn to_vec(arrays: &[impl AsRef<Array>]) -> UniquePtr<ArrayVec> {
    let mut v = sys::vec_new();
    for a in arrays {
        sys::vec_push(v.pin_mut(), a.as_ref().raw());
    }
    v
}

/// Unpacks a C++ list into owned arrays.
pub(crate) fn from_vec(v: &ArrayVec) -> Result<Vec<Array>> {
    (0..sys::vec_len(v))
        .map(|i| Array::wrap(sys::vec_get(v, i)))
        .collect()
}

pub(crate) fn from_vec_ptr(v: &UniquePtr<ArrayVec>) -> Result<Vec<Array>> {
    match v.as_ref() {
        Some(v) => from_vec(v),
        None => Err(Exception::new("MLX shim returned no array list")),
    }
}

/// Evaluates all the arrays (one graph run).
pub fn eval<'a>(outputs: impl IntoIterator<Item = &'a Array>) -> Result<()> {
    let arrays: Vec<&Array> = outputs.into_iter().collect();
    Ok(sys::eval(&to_vec(&arrays))?)
}

/// Starts evaluating the arrays and returns without waiting: the host may
/// build the next graph meanwhile. Reading an array (or [`eval`]) waits for it.
pub fn async_eval<'a>(outputs: impl IntoIterator<Item = &'a Array>) -> Result<()> {
    let arrays: Vec<&Array> = outputs.into_iter().collect();
    Ok(sys::async_eval(&to_vec(&arrays))?)
}

/// The operations evaluating `outputs` would run (those not yet computed),
/// counted by kind, most frequent first: on a GPU each is a kernel the host
/// encodes, so their number is what a host-bound step pays for.
pub fn graph_ops<'a>(outputs: impl IntoIterator<Item = &'a Array>) -> Result<Vec<(String, usize)>> {
    let arrays: Vec<&Array> = outputs.into_iter().collect();
    let text = sys::graph_ops(&to_vec(&arrays))?;
    let mut ops: Vec<(String, usize)> = text
        .lines()
        .filter_map(|line| {
            let (name, n) = line.rsplit_once('\t')?;
            Some((name.to_string(), n.parse().ok()?))
        })
        .collect();
    ops.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(ops)
}

/// Runs `f` on `params` and differentiates its first output (a scalar) with
/// respect to every parameter: returns `(outputs, gradients)`, one gradient
/// per parameter. Extra outputs are carried along undifferentiated.
pub fn value_and_grad<F>(f: F, params: &[Array]) -> Result<(Vec<Array>, Vec<Array>)>
where
    F: FnMut(&[Array]) -> Result<Vec<Array>>,
{
    let argnums: Vec<i32> = (0..params.len() as i32).collect();
    value_and_grad_argnums(f, params, &argnums)
}

/// Like [`value_and_grad`], differentiating only with respect to the inputs
/// at `argnums` (the others are passed through as constants).
pub fn value_and_grad_argnums<F>(
    mut f: F,
    params: &[Array],
    argnums: &[i32],
) -> Result<(Vec<Array>, Vec<Array>)>
where
    F: FnMut(&[Array]) -> Result<Vec<Array>>,
{
    let dyn_f: &mut DynFn<'_> = &mut f;
    // SAFETY: the closure is only called inside `sys::value_and_grad`, which
    // drops MLX's function (and with it the box) before returning.
    let closure = unsafe { Closure::borrowed(dyn_f) };
    let out = sys::value_and_grad(closure, &to_vec(params), argnums)?;
    Ok((from_vec_ptr(&out.values)?, from_vec_ptr(&out.grads)?))
}

/// A function compiled by MLX (traced once per input shape and dtype, then
/// replayed with fused kernels).
pub struct Compiled {
    inner: UniquePtr<sys::CompiledFn>,
}

impl Compiled {
    /// Calls the compiled function.
    pub fn call(&self, args: &[Array]) -> Result<Vec<Array>> {
        match self.inner.as_ref() {
            Some(f) => from_vec_ptr(&sys::compiled_call(f, &to_vec(args))?),
            None => Err(Exception::new("compiled function is empty")),
        }
    }
}

/// Compiles `f`. With `shapeless`, one trace serves inputs of any shape (only
/// for functions whose graph does not depend on shapes).
pub fn compile<F>(f: F, shapeless: bool) -> Result<Compiled>
where
    F: FnMut(&[Array]) -> Result<Vec<Array>> + 'static,
{
    let closure = Box::new(Closure {
        inner: ClosureInner::Owned(Box::new(f)),
    });
    Ok(Compiled {
        inner: sys::compile(closure, shapeless)?,
    })
}

/// Turns compilation on or off globally (off: compiled functions run eagerly).
pub fn set_compile_enabled(enabled: bool) -> Result<()> {
    Ok(sys::set_compile_enabled(enabled)?)
}
