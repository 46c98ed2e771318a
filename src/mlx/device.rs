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

/// What MLX reports about a device (keys vary by backend; see MLX's
/// `device_info`): name, memory, and on CUDA the compute capability.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    pub name: Option<String>,
    /// Total device memory in bytes.
    pub total_memory: Option<u64>,
    /// Free device memory in bytes (CUDA only).
    pub free_memory: Option<u64>,
    /// `(major, minor)` (CUDA only).
    pub compute_capability: Option<(u32, u32)>,
}

impl DeviceInfo {
    /// Parses MLX's `key=value` lines.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = &'a str>) -> DeviceInfo {
        let mut info = DeviceInfo::default();
        let (mut major, mut minor) = (None, None);
        for pair in pairs {
            let Some((key, value)) = pair.split_once('=') else {
                continue;
            };
            let num = value.parse::<u64>().ok();
            match key {
                "device_name" => info.name = Some(value.to_string()),
                "total_memory" | "memory_size" => info.total_memory = info.total_memory.or(num),
                "free_memory" => info.free_memory = num,
                "compute_capability_major" => major = num,
                "compute_capability_minor" => minor = num,
                _ => {}
            }
        }
        if let (Some(a), Some(b)) = (major, minor) {
            info.compute_capability = Some((a as u32, b as u32));
        }
        info
    }
}

impl Device {
    /// What MLX reports about this device.
    pub fn info(&self) -> Result<DeviceInfo> {
        let kind = match self.device_type {
            DeviceType::Cpu => 0,
            DeviceType::Gpu => 1,
        };
        let pairs = sys::device_info(kind)?;
        Ok(DeviceInfo::from_pairs(pairs.iter().map(String::as_str)))
    }
}

/// Whether this MLX build has a usable GPU.
pub fn gpu_is_available() -> Result<bool> {
    Ok(sys::gpu_is_available()?)
}

/// Makes the CPU MLX's default device again when it drops, passed or not.
#[cfg(test)]
pub(crate) struct CpuAgain;

#[cfg(test)]
impl Drop for CpuAgain {
    fn drop(&mut self) {
        // Best effort: a failure here leaves the device to the next test, which sets its own.
        let _ = Device::set_default(&Device::cpu());
    }
}

/// The start of a test that needs a GPU: without one it says so on stderr
/// and gives `None` (the test passes, having compared nothing); with one, a
/// guard that restores the CPU as the default device when the test ends.
#[cfg(test)]
pub(crate) fn gpu_test(name: &str) -> Result<Option<CpuAgain>> {
    if !gpu_is_available()? {
        eprintln!("{name}: no GPU in this MLX build; nothing to compare");
        return Ok(None);
    }
    Ok(Some(CpuAgain))
}

/// Waits until all queued work on the default stream has finished.
pub fn synchronize() -> Result<()> {
    Ok(sys::synchronize()?)
}
