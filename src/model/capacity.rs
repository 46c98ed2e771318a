//! Will a model run on the chosen device? Checked before any weight is loaded,
//! so that a GPU without bf16, or without room for the weights, gets an error
//! naming what to change instead of a failure halfway through.
//!
//! The memory check covers the weights only, a lower bound: training also
//! needs activations and optimizer state, which depend on the batch.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::mlx::{Device, DeviceInfo, DeviceType, Dtype};

const GIB: f64 = (1u64 << 30) as f64;

/// The share of the device's (free, else total) memory the weights may take.
const WEIGHT_SHARE: f64 = 0.9;

/// Refuses bf16 on a GPU that has no bf16 arithmetic (CUDA compute capability
/// below 8.0, i.e. before Ampere).
pub fn check_dtype(device: &Device, info: &DeviceInfo, dtype: Dtype) -> Result<()> {
    if dtype != Dtype::Bfloat16 || device.device_type != DeviceType::Gpu {
        return Ok(());
    }
    if let Some((major, minor)) = info.compute_capability {
        if major < 8 {
            bail!(
                "bf16 needs a GPU of compute capability 8.0 or newer (Ampere, Hopper); {} is \
                 {major}.{minor}: use --dtype f32",
                info.name.as_deref().unwrap_or("this GPU")
            );
        }
    }
    Ok(())
}

/// Refuses weights that would not fit in the device's memory.
pub fn check_fits(device: &Device, info: &DeviceInfo, weight_bytes: u64) -> Result<()> {
    if device.device_type != DeviceType::Gpu {
        return Ok(());
    }
    let (budget, which) = match (info.free_memory, info.total_memory) {
        (Some(free), _) => (free, "free"),
        (None, Some(total)) => (total, "in all"),
        (None, None) => return Ok(()),
    };
    if weight_bytes as f64 > budget as f64 * WEIGHT_SHARE {
        bail!(
            "the model's weights need {:.1} GiB, but {} has {:.1} GiB {which}: use --dtype bf16 \
             (half the bytes), a smaller model, or --device cpu",
            weight_bytes as f64 / GIB,
            info.name.as_deref().unwrap_or("the GPU"),
            budget as f64 / GIB
        );
    }
    Ok(())
}

/// The bytes the float tensors of `files` take in `dtype`, read from the
/// safetensors headers (the data is not read).
pub fn weight_bytes(files: &[PathBuf], dtype: Dtype) -> Result<u64> {
    let mut elements = 0u64;
    for file in files {
        elements += header_elements(file)
            .with_context(|| format!("reading the safetensors header of {}", file.display()))?;
    }
    Ok(elements * dtype.size() as u64)
}

fn header_elements(path: &Path) -> Result<u64> {
    let mut f = File::open(path)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        bail!("header length {len} is implausible (corrupt file?)");
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header)?;
    let json: serde_json::Value = serde_json::from_slice(&header)?;
    let Some(entries) = json.as_object() else {
        bail!("the header is not a JSON object");
    };
    let mut total = 0u64;
    for (name, entry) in entries {
        if name == "__metadata__" {
            continue;
        }
        let shape = entry
            .get("shape")
            .and_then(|s| s.as_array())
            .with_context(|| format!("tensor {name:?} has no shape"))?;
        total += shape
            .iter()
            .map(|d| d.as_u64().unwrap_or(0))
            .product::<u64>();
    }
    Ok(total)
}

/// Both checks against the default device: `weights` are the model's
/// safetensors files (None: skip the memory check).
pub fn check_default_device(weights: Option<&[PathBuf]>, dtype: Dtype) -> Result<()> {
    let device = Device::default_device()?;
    if device.device_type != DeviceType::Gpu {
        return Ok(());
    }
    let info = device.info()?;
    check_dtype(&device, &info, dtype)?;
    if let Some(files) = weights {
        check_fits(&device, &info, weight_bytes(files, dtype)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(cc: Option<(u32, u32)>, free: Option<u64>, total: Option<u64>) -> DeviceInfo {
        DeviceInfo {
            name: Some("Test GPU".into()),
            total_memory: total,
            free_memory: free,
            compute_capability: cc,
        }
    }

    #[test]
    fn bf16_is_refused_before_ampere_only() {
        let old = gpu(Some((7, 5)), None, None);
        let err = check_dtype(&Device::gpu(), &old, Dtype::Bfloat16).expect_err("Turing");
        let msg = err.to_string();
        assert!(msg.contains("7.5") && msg.contains("--dtype f32"), "{msg}");
        assert!(check_dtype(&Device::gpu(), &old, Dtype::Float32).is_ok());
        assert!(check_dtype(
            &Device::gpu(),
            &gpu(Some((9, 0)), None, None),
            Dtype::Bfloat16
        )
        .is_ok());
        assert!(
            check_dtype(&Device::cpu(), &old, Dtype::Bfloat16).is_ok(),
            "CPU: MLX emulates"
        );
    }

    #[test]
    fn weights_larger_than_the_card_are_refused_with_the_fix() {
        let card = gpu(None, Some(8 << 30), Some(80 << 30));
        let err = check_fits(&Device::gpu(), &card, 10 << 30).expect_err("10 GiB > 8 free");
        let msg = err.to_string();
        assert!(
            msg.contains("10.0 GiB") && msg.contains("8.0 GiB free"),
            "{msg}"
        );
        assert!(msg.contains("--dtype bf16"), "{msg}");
        assert!(check_fits(&Device::gpu(), &card, 4 << 30).is_ok());
        // Metal reports total memory only.
        let metal = gpu(None, None, Some(16 << 30));
        assert!(check_fits(&Device::gpu(), &metal, 15 << 30).is_err());
        assert!(check_fits(&Device::cpu(), &card, 10 << 30).is_ok());
    }

    #[test]
    fn weight_bytes_come_from_the_headers() -> Result<()> {
        let file = PathBuf::from("tests/fixtures/tiny_bert/model.safetensors");
        let f32_bytes = weight_bytes(std::slice::from_ref(&file), Dtype::Float32)?;
        let bf16_bytes = weight_bytes(std::slice::from_ref(&file), Dtype::Bfloat16)?;
        assert_eq!(f32_bytes, 2 * bf16_bytes);
        // An f32 file's data is exactly its element count times 4.
        let len = std::fs::metadata(&file)?.len();
        assert!(
            f32_bytes <= len && f32_bytes > len / 2,
            "{f32_bytes} vs file {len}"
        );
        let dir = tempfile::tempdir()?;
        let bad = dir.path().join("bad.safetensors");
        std::fs::write(&bad, [0xffu8; 16])?;
        let err = weight_bytes(&[bad], Dtype::Float32).expect_err("corrupt header");
        assert!(format!("{err:#}").contains("bad.safetensors"), "{err:#}");
        Ok(())
    }

    #[test]
    fn the_cpu_passes_and_reports_itself() -> Result<()> {
        // Through the binding: MLX answers for the CPU, and no check applies to it.
        let info = Device::cpu().info()?;
        assert!(info.compute_capability.is_none());
        check_default_device(None, Dtype::Bfloat16)?;
        Ok(())
    }

    #[test]
    fn device_info_parses_mlx_pairs() {
        let info = DeviceInfo::from_pairs([
            "device_name=NVIDIA H100 80GB HBM3",
            "total_memory=85000000000",
            "free_memory=84000000000",
            "compute_capability_major=9",
            "compute_capability_minor=0",
            "uuid=GPU-1",
        ]);
        assert_eq!(info.compute_capability, Some((9, 0)));
        assert_eq!(info.free_memory, Some(84_000_000_000));
        assert_eq!(info.name.as_deref(), Some("NVIDIA H100 80GB HBM3"));
    }
}
