//! Checked access to a model's tensors: reads one or more safetensors files,
//! keeps which file each tensor came from, and hands tensors out by name with
//! their shape and dtype verified, so every failure names the file and the
//! tensor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use safetensors::SafeTensors;

use crate::mlx::{Array, Dtype};

/// Tensors loaded from safetensors files, converted to one float dtype.
pub struct Weights {
    tensors: HashMap<String, (Array, PathBuf)>,
    files: Vec<PathBuf>,
    dtype: Dtype,
}

impl Weights {
    /// Loads the tensors of `files` whose name passes `keep`, converting
    /// float tensors to `dtype` (integer tensors are kept as they are and
    /// rejected when requested as weights).
    pub fn load(files: &[PathBuf], dtype: Dtype, keep: impl Fn(&str) -> bool) -> Result<Weights> {
        if !dtype.is_float() {
            bail!("compute dtype must be a float type, got {dtype:?}");
        }
        let mut tensors = HashMap::new();
        for file in files {
            for (name, array) in read_file(file, &keep)? {
                let array = if array.dtype().is_float() && array.dtype() != dtype {
                    array.as_dtype(dtype)?
                } else {
                    array
                };
                if tensors
                    .insert(name.clone(), (array, file.clone()))
                    .is_some()
                {
                    bail!(
                        "tensor {name:?} appears in more than one file (again in {})",
                        file.display()
                    );
                }
            }
        }
        // Materialise the dtype conversions once: a lazy cast would be redone
        // inside every graph (and every compiled step) that reads the weight.
        crate::mlx::eval(tensors.values().map(|(a, _)| a))?;
        Ok(Weights {
            tensors,
            files: files.to_vec(),
            dtype,
        })
    }

    /// Weights made in memory (random initialisation); errors name `origin`.
    pub fn from_arrays(arrays: HashMap<String, Array>, dtype: Dtype, origin: &str) -> Weights {
        let origin = PathBuf::from(origin);
        Weights {
            tensors: arrays
                .into_iter()
                .map(|(k, v)| (k, (v, origin.clone())))
                .collect(),
            files: vec![origin],
            dtype,
        }
    }

    /// The dtype float tensors were converted to.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Whether a tensor of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// All tensor names (unordered).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The float tensor `name`, checked to have `shape`.
    pub fn get(&self, name: &str, shape: &[i32]) -> Result<Array> {
        let (array, file) = self.tensors.get(name).ok_or_else(|| {
            anyhow!(
                "missing tensor {name:?} in {}",
                self.files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        if !array.dtype().is_float() {
            bail!(
                "tensor {name:?} in {} has dtype {:?}, expected a float type",
                file.display(),
                array.dtype()
            );
        }
        if array.shape() != shape {
            bail!(
                "tensor {name:?} in {} has shape {:?}, expected {shape:?}",
                file.display(),
                array.shape()
            );
        }
        Ok(array.clone())
    }

    /// Like [`Weights::get`], but `None` when the tensor is absent.
    pub fn get_opt(&self, name: &str, shape: &[i32]) -> Result<Option<Array>> {
        if self.contains(name) {
            self.get(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The first of `names` that exists (for renamed or tied tensors).
    pub fn get_any(&self, names: &[&str], shape: &[i32]) -> Result<Array> {
        match names.iter().find(|n| self.contains(n)) {
            Some(n) => self.get(n, shape),
            None => self.get(names.first().copied().unwrap_or(""), shape),
        }
    }
}

/// Reads one safetensors file into MLX arrays (those whose name passes `keep`).
fn read_file(file: &Path, keep: &impl Fn(&str) -> bool) -> Result<Vec<(String, Array)>> {
    let shown = file.display();
    let bytes = std::fs::read(file).with_context(|| format!("reading {shown}"))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow!("{shown}: not a valid safetensors file (truncated?): {e}"))?;
    let mut out = Vec::new();
    for (name, view) in st.iter() {
        if !keep(name) {
            continue;
        }
        let dtype =
            st_dtype(view.dtype()).with_context(|| format!("tensor {name:?} in {shown}"))?;
        let shape: Vec<i32> = view
            .shape()
            .iter()
            .map(|&d| i32::try_from(d))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| anyhow!("tensor {name:?} in {shown}: dimension too large"))?;
        let array = Array::from_bytes(view.data(), &shape, dtype)
            .map_err(|e| anyhow!("tensor {name:?} in {shown}: {e}"))?;
        out.push((name.to_string(), array));
    }
    Ok(out)
}

fn st_dtype(d: safetensors::Dtype) -> Result<Dtype> {
    use safetensors::Dtype as S;
    Ok(match d {
        S::F32 => Dtype::Float32,
        S::F16 => Dtype::Float16,
        S::BF16 => Dtype::Bfloat16,
        S::F64 => Dtype::Float64,
        S::I64 => Dtype::Int64,
        S::I32 => Dtype::Int32,
        S::I16 => Dtype::Int16,
        S::I8 => Dtype::Int8,
        S::U8 => Dtype::Uint8,
        S::U16 => Dtype::Uint16,
        S::U32 => Dtype::Uint32,
        S::U64 => Dtype::Uint64,
        S::BOOL => Dtype::Bool,
        other => bail!("unsupported safetensors dtype {other:?}"),
    })
}
