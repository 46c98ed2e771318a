//! Safetensors load/save for MLX arrays (the `safetensors` crate does the file
//! format; tensors cross as raw little-endian bytes, so f16/bf16 round-trip
//! bit-exactly without conversion on the host).

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype as StDtype, TensorView};
use safetensors::SafeTensors;

use super::array::Array;
use super::dtype::Dtype;
use super::error::{Exception, Result};

fn to_st(d: Dtype) -> Result<StDtype> {
    Ok(match d {
        Dtype::Bool => StDtype::BOOL,
        Dtype::Uint8 => StDtype::U8,
        Dtype::Uint16 => StDtype::U16,
        Dtype::Uint32 => StDtype::U32,
        Dtype::Uint64 => StDtype::U64,
        Dtype::Int8 => StDtype::I8,
        Dtype::Int16 => StDtype::I16,
        Dtype::Int32 => StDtype::I32,
        Dtype::Int64 => StDtype::I64,
        Dtype::Float16 => StDtype::F16,
        Dtype::Float32 => StDtype::F32,
        Dtype::Float64 => StDtype::F64,
        Dtype::Bfloat16 => StDtype::BF16,
        Dtype::Complex64 => StDtype::C64,
    })
}

fn from_st(d: StDtype) -> Result<Dtype> {
    Ok(match d {
        StDtype::BOOL => Dtype::Bool,
        StDtype::U8 => Dtype::Uint8,
        StDtype::U16 => Dtype::Uint16,
        StDtype::U32 => Dtype::Uint32,
        StDtype::U64 => Dtype::Uint64,
        StDtype::I8 => Dtype::Int8,
        StDtype::I16 => Dtype::Int16,
        StDtype::I32 => Dtype::Int32,
        StDtype::I64 => Dtype::Int64,
        StDtype::F16 => Dtype::Float16,
        StDtype::F32 => Dtype::Float32,
        StDtype::F64 => Dtype::Float64,
        StDtype::BF16 => Dtype::Bfloat16,
        StDtype::C64 => Dtype::Complex64,
        other => {
            return Err(Exception::new(format!(
                "safetensors dtype {other:?} has no MLX equivalent here"
            )))
        }
    })
}

fn shape_i32(name: &str, shape: &[usize]) -> Result<Vec<i32>> {
    shape
        .iter()
        .map(|&d| {
            i32::try_from(d)
                .map_err(|_| Exception::new(format!("tensor {name}: dimension {d} too large")))
        })
        .collect()
}

/// Parses a safetensors buffer into named arrays (data copied into MLX).
pub fn load_safetensors_bytes(bytes: &[u8]) -> Result<HashMap<String, Array>> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Exception::new(format!("invalid safetensors data: {e}")))?;
    st.iter()
        .map(|(name, view)| {
            let dtype =
                from_st(view.dtype()).map_err(|e| Exception::new(format!("tensor {name}: {e}")))?;
            let shape = shape_i32(name, view.shape())?;
            let array = Array::from_bytes(view.data(), &shape, dtype)?;
            Ok((name.to_string(), array))
        })
        .collect()
}

/// Loads every tensor of a `.safetensors` file.
pub fn load_safetensors(path: impl AsRef<Path>) -> Result<HashMap<String, Array>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path)
        .map_err(|e| Exception::new(format!("cannot read {}: {e}", path.display())))?;
    load_safetensors_bytes(&bytes)
}

/// Serialises named arrays (evaluating them) with optional string metadata.
pub fn save_safetensors_bytes<'a, S: AsRef<str>>(
    arrays: impl IntoIterator<Item = (S, &'a Array)>,
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let owned = collect(arrays)?;
    let views = views(&owned)?;
    let bytes = safetensors::serialize(views, metadata)
        .map_err(|e| Exception::new(format!("cannot serialise safetensors: {e}")))?;
    Ok(canonical_metadata(bytes))
}

/// The same file with its `__metadata__` entries in sorted order: safetensors
/// writes them in a `HashMap`'s order, which differs from process to process,
/// and the same tensors must give the same bytes (artifacts are compared and
/// hashed). The header keeps its length (the same entries, reordered; padding
/// as before), so every data offset stays valid.
fn canonical_metadata(bytes: Vec<u8>) -> Vec<u8> {
    let Some(n) = bytes
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(|b| u64::from_le_bytes(b) as usize)
    else {
        return bytes;
    };
    let Some(header) = bytes.get(8..8 + n) else {
        return bytes;
    };
    let Ok(serde_json::Value::Object(mut top)) = serde_json::from_slice(header) else {
        return bytes;
    };
    let Some(serde_json::Value::Object(meta)) = top.remove("__metadata__") else {
        return bytes;
    };
    let sorted: std::collections::BTreeMap<String, serde_json::Value> = meta.into_iter().collect();
    let mut text = String::from("{\"__metadata__\":");
    let rest = serde_json::Value::Object(top).to_string();
    match serde_json::to_string(&sorted) {
        Ok(meta) => text.push_str(&meta),
        Err(_) => return bytes,
    }
    if rest.len() > 2 {
        text.push(',');
        text.push_str(&rest[1..]);
    } else {
        text.push('}');
    }
    if text.len() > n {
        return bytes;
    }
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&bytes[..8]);
    out.extend_from_slice(text.as_bytes());
    out.resize(8 + n, b' ');
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

/// Saves named arrays (evaluating them) to a `.safetensors` file.
pub fn save_safetensors<'a, S: AsRef<str>>(
    arrays: impl IntoIterator<Item = (S, &'a Array)>,
    metadata: Option<HashMap<String, String>>,
    path: impl AsRef<Path>,
) -> Result<()> {
    let path = path.as_ref();
    let bytes = save_safetensors_bytes(arrays, metadata)?;
    std::fs::write(path, bytes)
        .map_err(|e| Exception::new(format!("cannot write {}: {e}", path.display())))
}

type HostTensor = (String, Dtype, Vec<usize>, Vec<u8>);

fn collect<'a, S: AsRef<str>>(
    arrays: impl IntoIterator<Item = (S, &'a Array)>,
) -> Result<Vec<HostTensor>> {
    let arrays: Vec<(S, &Array)> = arrays.into_iter().collect();
    // One graph run for all of them, then copy each out.
    super::transforms::eval(arrays.iter().map(|(_, a)| *a))?;
    arrays
        .into_iter()
        .map(|(name, a)| {
            let shape = a.shape().iter().map(|&d| d as usize).collect();
            Ok((name.as_ref().to_string(), a.dtype(), shape, a.to_bytes()?))
        })
        .collect()
}

fn views(owned: &[HostTensor]) -> Result<Vec<(&str, TensorView<'_>)>> {
    owned
        .iter()
        .map(|(name, dtype, shape, data)| {
            let view = TensorView::new(to_st(*dtype)?, shape.clone(), data)
                .map_err(|e| Exception::new(format!("tensor {name}: {e}")))?;
            Ok((name.as_str(), view))
        })
        .collect()
}

impl Array {
    /// Loads every tensor of a `.safetensors` file (see [`load_safetensors`]).
    pub fn load_safetensors(path: impl AsRef<Path>) -> Result<HashMap<String, Array>> {
        load_safetensors(path)
    }
}
