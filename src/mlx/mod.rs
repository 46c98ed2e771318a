//! A thin safe binding over MLX's C++ API (arrays, ops, autodiff, compile,
//! eval), built by `build.rs` against the pinned MLX wheel.
//!
//! The API is shaped like the `mlx-rs` crate's (names and argument order) so
//! that switching to it, once it builds off Apple targets, is mostly a change
//! of `use` lines. The deliberate differences: every fallible call returns
//! `Result` (mlx-rs panics in `item` / `as_slice`), and arguments that mlx-rs
//! makes optional through generic `Into<Option<_>>` are plain `Option`s.
//!
//! Graphs are lazy: ops build a graph and nothing runs until [`eval`] (or a
//! copy-out such as [`Array::to_vec`]) forces it.

mod array;
mod device;
pub mod distributed;
mod dtype;
mod error;
pub mod fast;
mod ffi;
pub mod io;
pub mod kernels;
pub mod launch;
pub mod linalg;
pub mod ops;
pub mod random;
pub mod transforms;

pub use array::{Array, ArrayElement};
#[cfg(test)]
pub(crate) use device::gpu_test;
pub use device::{gpu_is_available, synchronize, Device, DeviceInfo, DeviceType};
pub use dtype::Dtype;
pub use error::{Exception, Result};
pub use transforms::{
    async_eval, compile, eval, graph_ops, value_and_grad, value_and_grad_argnums, Compiled,
};

/// Which shared library provides the `cblas_sgemm` that MLX calls (the first
/// definition in the process's global symbol lookup). On Linux this should be
/// libopenblas; the wheel's bundled reference BLAS is ~35x slower.
pub fn blas_sgemm_library() -> Result<String> {
    Ok(ffi::sys::blas_sgemm_library()?)
}

/// The kernel set OpenBLAS dispatches to (`Haswell`, `SkylakeX`, ...; empty
/// when the BLAS is not OpenBLAS). OpenBLAS picks it by CPUID at load, or
/// takes it from `OPENBLAS_CORETYPE`; xtr-pipe leaves that choice alone (an
/// OpenBLAS older than the CPU can compute wrong results with the kernels of
/// a newer family, which is why some machines pin it).
pub fn blas_core() -> String {
    ffi::sys::blas_core()
}

/// Ends the process with `status` once stdout and stderr are flushed, without
/// running C++ static destructors or `atexit` handlers: the way `xtr-pipe`
/// leaves, once everything it writes is in place.
///
/// MLX's CUDA backend finishes work on threads of its own (completion
/// handlers that free buffers and signal events); at exit they can meet
/// objects that static destructors have already torn down, and a run that
/// finished and wrote its report then dies of SIGSEGV, which a script, or the
/// launcher of a rank, reads as a failure. MLX has closed such races one at a
/// time (ml-explore/mlx#2424, #3167); leaving without the destructors closes
/// them all. The operating system reclaims what they would have freed.
pub fn exit(status: u8) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` takes no pointers and does not return.
    unsafe { libc::_exit(i32::from(status)) }
}

/// Makes OpenBLAS's idle threads sleep right after each call instead of
/// spinning for ~0.1 s on a core that our kernels and MLX's stream thread need
/// (worth ~7% of a CPU train step on two cores). Call once at start-up, before
/// any MLX work: it restarts OpenBLAS's thread pool. A user's own
/// `OPENBLAS_THREAD_TIMEOUT` wins. Returns whether the setting was applied.
pub fn quiet_blas_threads() -> bool {
    if std::env::var_os("OPENBLAS_THREAD_TIMEOUT").is_some() {
        return false;
    }
    ffi::sys::set_blas_thread_timeout(4)
}

#[cfg(test)]
mod tests;
