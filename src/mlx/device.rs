//! Devices: choosing where MLX runs by default (CPU, or the GPU of a Metal or
//! CUDA build), asking whether a GPU exists, and waiting for queued work.

use super::error::Result;
use super::ffi::sys;

/// The kind of device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceType {
    Cpu,
    Gpu,
}

/// A device: a kind and an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    pub device_type: DeviceType,
    pub index: i32,
}

impl Device {
    /// The CPU.
    pub fn cpu() -> Device {
        Device {
            device_type: DeviceType::Cpu,
            index: 0,
        }
    }

    /// The first GPU (Metal on macOS, CUDA with the `mlx-cuda` wheel).
    pub fn gpu() -> Device {
        Device {
            device_type: DeviceType::Gpu,
            index: 0,
        }
    }

    /// The device new arrays and ops use by default.
    pub fn default_device() -> Result<Device> {
        Ok(if sys::default_device_kind()? == 1 {
            Device::gpu()
        } else {
            Device::cpu()
        })
    }

    /// Makes `device` the default; errors when this MLX build lacks it.
    pub fn set_default(device: &Device) -> Result<()> {
        let kind = match device.device_type {
            DeviceType::Cpu => 0,
            DeviceType::Gpu => 1,
        };
        Ok(sys::set_default_device(kind, device.index)?)
    }
}

/// Whether this MLX build has a usable GPU.
pub fn gpu_is_available() -> Result<bool> {
    Ok(sys::gpu_is_available()?)
}

/// Waits until all queued work on the default stream has finished.
pub fn synchronize() -> Result<()> {
    Ok(sys::synchronize()?)
}
