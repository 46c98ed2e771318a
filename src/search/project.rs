//! A linear projection of token vectors to fewer dimensions, fitted to the
//! indexed tokens: the top principal directions of their (uncentred) second
//! moment, the subspace that keeps the most of their dot products, which is
//! what MaxSim scores. Projected rows are normalised to unit length again.
//!
//! A 384-dimensional model indexed at 128 dimensions costs a third of the
//! bytes, the k-means and encoding, the centroid scoring and the rerank; what
//! it costs in ranking quality is measured, not assumed (BENCHMARKS.md).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

use crate::mlx::{self, io, linalg, ops, Array};

/// Rows of the fitting sample (spread evenly over the tokens): the second
/// moment of 65k tokens is as good as that of all of them at this size.
const SAMPLE_ROWS: usize = 65_536;

/// Rows per MLX call when projecting (bounds the temporary memory).
const CHUNK_ROWS: usize = 65_536;

/// The tensor's name in `projection.safetensors`.
const TENSOR: &str = "projection";

/// `from` -> `to` dimensions: `x' = normalise(x P)`, `P` a `[from, to]`
/// matrix with orthonormal columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    from: usize,
    to: usize,
    /// `[from, to]`, row-major.
    matrix: Vec<f32>,
}

impl Projection {
    /// Fits a projection of the `[n, from]` row-major `tokens` to `to`
    /// dimensions. Deterministic: the same tokens give the same matrix (each
    /// column's sign is fixed by its largest entry).
    pub fn fit(tokens: &[f32], from: usize, to: usize) -> Result<Projection> {
        ensure!(
            from > 0 && tokens.len().is_multiple_of(from),
            "{} values do not make rows of {from}",
            tokens.len()
        );
        if to == 0 || to >= from {
            bail!(
                "cannot project {from}-dimensional vectors to {to} dimensions: choose 1 to {}",
                from - 1
            );
        }
        let n = tokens.len() / from;
        ensure!(n > 0, "no tokens to fit a projection to");
        let step = n.div_ceil(SAMPLE_ROWS);
        let sample: Vec<f32> = (0..n)
            .step_by(step)
            .flat_map(|r| &tokens[r * from..(r + 1) * from])
            .copied()
            .collect();
        let rows = (sample.len() / from) as i32;
        let s = Array::from_slice(&sample, &[rows, from as i32])?;
        let gram = ops::matmul(ops::transpose(&s)?, &s)?;
        let (_, vectors) =
            linalg::eigh(&gram).context("the eigenvectors of the tokens' second moment")?;
        let v = vectors.to_vec::<f32>()?;
        ensure!(
            v.len() == from * from,
            "eigh returned {} values for a {from}x{from} matrix",
            v.len()
        );
        // eigh's columns ascend by eigenvalue: take the last `to`, largest first.
        let mut matrix = vec![0f32; from * to];
        for j in 0..to {
            let col = from - 1 - j;
            let largest = (0..from).map(|r| v[r * from + col]).fold(0f32, |m, x| {
                if x.abs() > m.abs() {
                    x
                } else {
                    m
                }
            });
            let sign = if largest < 0.0 { -1.0 } else { 1.0 };
            for r in 0..from {
                matrix[r * to + j] = sign * v[r * from + col];
            }
        }
        Ok(Projection { from, to, matrix })
    }

    /// The input dimension (the model's).
    pub fn from_dim(&self) -> usize {
        self.from
    }

    /// The output dimension (the index's).
    pub fn to_dim(&self) -> usize {
        self.to
    }

    /// Projects `[n, from]` row-major rows to `[n, to]` unit rows.
    pub fn apply(&self, rows: &[f32]) -> Result<Vec<f32>> {
        ensure!(
            rows.len().is_multiple_of(self.from),
            "{} values do not make rows of the projection's {} dimensions",
            rows.len(),
            self.from
        );
        let p = Array::from_slice(&self.matrix, &[self.from as i32, self.to as i32])?;
        let mut out = Vec::with_capacity(rows.len() / self.from * self.to);
        for chunk in rows.chunks(CHUNK_ROWS * self.from) {
            let n = (chunk.len() / self.from) as i32;
            let x = ops::matmul(Array::from_slice(chunk, &[n, self.from as i32])?, &p)?;
            let norm = ops::sqrt(ops::sum_axis(ops::square(&x)?, -1, true)?)?;
            let y = ops::divide(&x, ops::maximum(&norm, Array::from_f32(1e-12))?)?;
            mlx::eval([&y])?;
            out.extend(y.to_vec::<f32>()?);
        }
        Ok(out)
    }

    /// Writes the matrix as `projection` in a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let p = Array::from_slice(&self.matrix, &[self.from as i32, self.to as i32])?;
        io::save_safetensors([(TENSOR, &p)], None, path)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Reads a matrix [`Projection::save`] wrote, checking its shape against
    /// the dimensions the index's manifest records.
    pub fn load(path: &Path, from: usize, to: usize) -> Result<Projection> {
        let mut tensors: HashMap<String, Array> = io::load_safetensors(path)
            .with_context(|| format!("{} is corrupt; rebuild the index", path.display()))?;
        let p = tensors.remove(TENSOR).with_context(|| {
            format!(
                "{} holds no `{TENSOR}` tensor; rebuild the index",
                path.display()
            )
        })?;
        if p.shape() != [from as i32, to as i32] {
            bail!(
                "{}: a {:?} projection, the index records {from} -> {to}; rebuild the index",
                path.display(),
                p.shape()
            );
        }
        let matrix = p.as_dtype(mlx::Dtype::Float32)?.to_vec::<f32>()?;
        Ok(Projection { from, to, matrix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokens that vary along two directions of four dimensions only: a
    /// projection to two keeps every dot product.
    #[test]
    fn a_projection_to_the_tokens_own_subspace_keeps_their_dot_products() {
        let (a, b) = ([0.6f32, 0.0, 0.8, 0.0], [0.0f32, 1.0, 0.0, 0.0]);
        let tokens: Vec<f32> = (0..50)
            .flat_map(|i| {
                let t = i as f32 * 0.37;
                let (x, y) = (t.cos(), t.sin() * 0.5);
                let mut r: Vec<f32> = (0..4).map(|d| x * a[d] + y * b[d]).collect();
                let n = r.iter().map(|v| v * v).sum::<f32>().sqrt();
                r.iter_mut().for_each(|v| *v /= n);
                r
            })
            .collect();
        let p = Projection::fit(&tokens, 4, 2).unwrap();
        let out = p.apply(&tokens).unwrap();
        assert_eq!(out.len(), 100);
        let dot = |m: &[f32], d: usize, i: usize, j: usize| -> f32 {
            (0..d).map(|k| m[i * d + k] * m[j * d + k]).sum()
        };
        for (i, j) in [(0, 1), (3, 17), (8, 40), (5, 5)] {
            let (before, after) = (dot(&tokens, 4, i, j), dot(&out, 2, i, j));
            assert!(
                (before - after).abs() < 1e-4,
                "tokens {i},{j}: {before} vs {after}"
            );
        }
        // Deterministic, and the same after a round trip through the file.
        assert_eq!(p, Projection::fit(&tokens, 4, 2).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.safetensors");
        p.save(&path).unwrap();
        assert_eq!(Projection::load(&path, 4, 2).unwrap(), p);
        let err = Projection::load(&path, 4, 3).unwrap_err();
        assert!(format!("{err:#}").contains("rebuild the index"), "{err:#}");
    }

    #[test]
    fn projecting_to_as_many_dimensions_or_more_is_refused() {
        let err = Projection::fit(&[1.0, 0.0, 0.0, 1.0], 2, 2).unwrap_err();
        assert!(format!("{err}").contains("choose 1 to 1"), "{err}");
    }
}
