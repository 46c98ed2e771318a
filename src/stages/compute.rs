//! What every compute stage (one that runs MLX) shares: the `device` and `dtype`
//! params ([`ComputeParams`], flattened into the kind's params), resolving them
//! against this machine ([`Compute`]: `auto` enters the key as `cpu` or `gpu`),
//! and one lock so that two such stages never share MLX's default device at once.

use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::mlx::{gpu_is_available, Device, Dtype};
use crate::pipeline::{ConfigError, StageSpec};

/// Where MLX computes: a stage's `device` param, and the CLI's `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceParam {
    Cpu,
    Gpu,
    /// The GPU when MLX has one, else the CPU.
    #[default]
    Auto,
}

impl DeviceParam {
    /// The device this means on a machine that has (or lacks) a GPU; `None`
    /// for `gpu` without one.
    pub fn resolve(self, has_gpu: bool) -> Option<Resolved> {
        match self {
            DeviceParam::Cpu => Some(Resolved::Cpu),
            DeviceParam::Gpu | DeviceParam::Auto if has_gpu => Some(Resolved::Gpu),
            DeviceParam::Gpu => None,
            DeviceParam::Auto => Some(Resolved::Cpu),
        }
    }
}

/// The compute dtype: `bf16` keeps frozen weights and activations in bf16 and
/// LoRA adapters, optimizer state and the loss in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DtypeParam {
    #[default]
    F32,
    Bf16,
}

impl DtypeParam {
    pub fn name(self) -> &'static str {
        match self {
            DtypeParam::F32 => "f32",
            DtypeParam::Bf16 => "bf16",
        }
    }

    pub fn dtype(self) -> Dtype {
        match self {
            DtypeParam::F32 => Dtype::Float32,
            DtypeParam::Bf16 => Dtype::Bfloat16,
        }
    }
}

/// A device param resolved against this machine: `auto` becomes `cpu` or `gpu`.
/// The resolved name is what enters the artifact key, so a result computed on
/// the CPU is not reused as the GPU's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    Cpu,
    Gpu,
}

impl Resolved {
    pub fn name(self) -> &'static str {
        match self {
            Resolved::Cpu => "cpu",
            Resolved::Gpu => "gpu",
        }
    }

    pub fn device(self) -> Device {
        match self {
            Resolved::Cpu => Device::cpu(),
            Resolved::Gpu => Device::gpu(),
        }
    }
}

/// The params every compute kind has: `#[serde(flatten)] compute: ComputeParams`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct ComputeParams {
    #[serde(default)]
    pub device: DeviceParam,
    #[serde(default)]
    pub dtype: DtypeParam,
}

/// A compute stage's params resolved against this machine; enters the key
/// through [`super::Configured::with_compute`] and takes MLX with [`Compute::enter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compute {
    pub device: Resolved,
    pub dtype: DtypeParam,
}

impl Compute {
    /// Resolve `params` for stage `spec` on this machine.
    pub fn configure(spec: &StageSpec, params: &ComputeParams) -> Result<Compute, ConfigError> {
        Compute::configure_with(spec, params, has_gpu())
    }

    /// As [`Compute::configure`], given whether MLX has a GPU: `gpu` without one
    /// is a located error that says what to change.
    pub fn configure_with(
        spec: &StageSpec,
        params: &ComputeParams,
        has_gpu: bool,
    ) -> Result<Compute, ConfigError> {
        Ok(Compute {
            device: resolve_device(spec, params.device, has_gpu)?,
            dtype: params.dtype,
        })
    }

    /// Take MLX for this stage, with its device as the default, until the guard drops.
    pub fn enter(&self) -> anyhow::Result<DeviceGuard> {
        DeviceGuard::acquire(self.device)
    }
}

fn resolve_device(
    spec: &StageSpec,
    device: DeviceParam,
    has_gpu: bool,
) -> Result<Resolved, ConfigError> {
    device.resolve(has_gpu).ok_or_else(|| {
        ConfigError::new(
            Some(spec.params.origin_at(&["device".to_string()])),
            format!(
                "stage `{}`: device = \"gpu\", but this MLX build has no GPU (the mlx-cpu wheel)",
                spec.name
            ),
        )
        .with_help(
            "set device = \"cpu\" or \"auto\", or install mlx-cuda-13 (Linux + NVIDIA) or \
             mlx-metal (macOS) of the pinned version",
        )
    })
}

/// Whether this MLX build has a GPU (false if MLX cannot say).
pub fn has_gpu() -> bool {
    gpu_is_available().unwrap_or(false)
}

static MLX: Mutex<()> = Mutex::new(());

/// Holds MLX for one compute stage with `device` as the default device; the
/// CPU is the default again when the guard drops.
pub struct DeviceGuard {
    _lock: MutexGuard<'static, ()>,
}

impl DeviceGuard {
    pub fn acquire(device: Resolved) -> anyhow::Result<DeviceGuard> {
        // A stage that panicked while holding the lock left nothing to repair:
        // the default device is set afresh below.
        let lock = MLX.lock().unwrap_or_else(|e| e.into_inner());
        Device::set_default(&device.device())?;
        Ok(DeviceGuard { _lock: lock })
    }
}

impl Drop for DeviceGuard {
    fn drop(&mut self) {
        // Best effort: the next guard sets its own device anyway.
        let _ = Device::set_default(&Device::cpu());
    }
}
