//! MLX's distributed API (`mlx::core::distributed`): a [`Group`] of processes
//! that each run the same program, and the collectives the data-parallel
//! train step needs ([`Group::all_sum`], [`Group::all_gather`]).
//!
//! MLX's backends read who they are from the environment, set by whoever
//! starts the processes (see [`super::launch`]): `ring` (TCP, CPU streams; in
//! every wheel) wants `MLX_RANK` and `MLX_HOSTFILE` (a JSON list of
//! `"host:port"` lists, one per rank), `nccl` (CUDA wheels) wants `MLX_RANK`,
//! `MLX_WORLD_SIZE`, `NCCL_HOST_IP` and `NCCL_PORT` (rank 0 serves the
//! handshake there). Collectives are lazy like every op: they run on `eval`.

use cxx::UniquePtr;

use super::array::Array;
use super::error::{Exception, Result};
use super::ffi::sys;

/// A communication backend of MLX's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Ring all-reduce over TCP sockets, on the CPU (the portable one).
    Ring,
    /// NVIDIA's NCCL, on the GPU (only in the CUDA wheel).
    Nccl,
    /// Whatever the environment configures: nccl on a CUDA build, else ring, else MPI.
    Any,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Ring => "ring",
            Backend::Nccl => "nccl",
            Backend::Any => "any",
        }
    }

    /// `ring`, `nccl` or `any`.
    pub fn parse(name: &str) -> Option<Backend> {
        [Backend::Ring, Backend::Nccl, Backend::Any]
            .into_iter()
            .find(|b| b.name() == name)
    }

    /// Whether this MLX build has the backend.
    pub fn is_available(self) -> Result<bool> {
        Ok(sys::dist_is_available(self.name())?)
    }
}

/// The processes of one distributed job. Not `Send`, like [`Array`].
pub struct Group {
    ptr: UniquePtr<sys::DistGroup>,
}

impl Group {
    /// Joins the group that `backend` finds in the environment (blocking until
    /// every rank has joined). An environment that names no group is an error
    /// saying which variables the backend wants.
    pub fn init(backend: Backend) -> Result<Group> {
        let ptr = sys::dist_init(backend.name(), true)?;
        if ptr.is_null() {
            return Err(Exception::new("MLX returned no distributed group"));
        }
        Ok(Group { ptr })
    }

    /// The group of this process alone (size 1: collectives return their input),
    /// what [`Group::init`] would give without any environment.
    pub fn single() -> Result<Group> {
        let ptr = sys::dist_init("any", false)?;
        if ptr.is_null() {
            return Err(Exception::new("MLX returned no distributed group"));
        }
        Ok(Group { ptr })
    }

    /// This process's rank, `0..size`.
    pub fn rank(&self) -> usize {
        sys::dist_rank(&self.ptr).map_or(0, |r| r.max(0) as usize)
    }

    /// Number of processes.
    pub fn size(&self) -> usize {
        sys::dist_size(&self.ptr).map_or(1, |s| s.max(1) as usize)
    }

    /// The element-wise sum of `a` over every rank (same shape), on every rank.
    pub fn all_sum(&self, a: &Array) -> Result<Array> {
        Array::wrap(sys::dist_all_sum(a.raw(), &self.ptr))
    }

    /// Every rank's `a` concatenated along axis 0, in rank order, on every rank.
    pub fn all_gather(&self, a: &Array) -> Result<Array> {
        Array::wrap(sys::dist_all_gather(a.raw(), &self.ptr))
    }
}

/// Number of GPUs MLX sees (0 on a build without a GPU).
pub fn gpu_count() -> Result<usize> {
    Ok(sys::gpu_count()?.max(0) as usize)
}
