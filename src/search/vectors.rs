//! Full-precision token vectors kept beside the compressed index
//! (`vectors.f16`), for the last step of a search: the documents the codes
//! put on top are reranked over their stored vectors, so their order is exact
//! MaxSim's (up to f16 rounding) rather than the 4-bit codes'. This is the
//! refinement FAISS's `IndexRefine` and ScaNN's reordering make; it costs 2
//! bytes per dimension per token on disk (three and a half times the
//! compressed index at 128 dimensions and 4 bits), of which a query reads
//! only the reranked documents' rows, contiguous in document order (which
//! also makes them faster to score than the codes, scattered over the
//! cluster lists).
//!
//! The file is a 32-byte header (magic, version, dimension, token count) and
//! then every token's vector as little-endian IEEE binary16, in document
//! order. Its size must be exactly what the header implies, and the header
//! must agree with the index it is opened for.

use std::ops::Range;
use std::path::Path;

use anyhow::{bail, Context, Result};
use memmap2::Mmap;

use super::maxsim::{f16_to_f32, f32_to_f16};
use super::mv::{u32_at, u64_at};

const MAGIC: &[u8; 8] = b"XTRVF16\0";
const VERSION: u32 = 1;
const HEADER: usize = 32;

/// Writes `vectors` (`[tokens, dim]`, row-major, in document order) to
/// `path` through a sibling temporary file and one rename.
pub fn write(path: &Path, dim: usize, vectors: &[f32]) -> Result<()> {
    if dim == 0 || !vectors.len().is_multiple_of(dim) {
        bail!(
            "{} values do not make vectors of dimension {dim}",
            vectors.len()
        );
    }
    let tokens = (vectors.len() / dim) as u64;
    crate::atomic::write(path, |out| {
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&(dim as u32).to_le_bytes());
        header.extend_from_slice(&tokens.to_le_bytes());
        header.resize(HEADER, 0);
        out.write_all(&header)?;
        let mut bytes = Vec::with_capacity(dim * 2 * 1024);
        for rows in vectors.chunks(dim * 1024) {
            bytes.clear();
            bytes.extend(rows.iter().flat_map(|&x| f32_to_f16(x).to_le_bytes()));
            out.write_all(&bytes)?;
        }
        Ok(())
    })
}

/// An open `vectors.f16`, memory-mapped.
pub struct StoredVectors {
    map: Mmap,
    dim: usize,
    tokens: usize,
}

impl StoredVectors {
    /// Opens `path`, which must hold `tokens` vectors of dimension `dim` (the
    /// index's counts).
    pub fn open(path: &Path, dim: usize, tokens: usize) -> Result<StoredVectors> {
        let map = super::mv::map_file(path)?;
        Self::check(map, dim, tokens).with_context(|| {
            format!(
                "{} is not the stored vectors of this index; rebuild the index",
                path.display()
            )
        })
    }

    fn check(map: Mmap, dim: usize, tokens: usize) -> Result<StoredVectors> {
        if map.len() < HEADER || &map[..8] != MAGIC {
            bail!(
                "it does not start with the vectors header ({} bytes)",
                map.len()
            );
        }
        // After the magic: version and dimension (u32), then the token count (u64).
        let version = u32_at(&map[8..], 0);
        if version != VERSION {
            bail!("format version {version}, this build reads {VERSION}");
        }
        let (file_dim, file_tokens) = (
            u32_at(&map[8..], 1) as usize,
            u64_at(&map[16..], 0) as usize,
        );
        if (file_dim, file_tokens) != (dim, tokens) {
            bail!(
                "it holds {file_tokens} vectors of dimension {file_dim}, the index {tokens} of dimension {dim}"
            );
        }
        let expected = tokens
            .checked_mul(dim)
            .and_then(|v| v.checked_mul(2))
            .and_then(|v| v.checked_add(HEADER));
        if expected != Some(map.len()) {
            bail!(
                "it is {} bytes, its header implies {} (truncated or damaged)",
                map.len(),
                expected.map_or_else(|| "more".to_string(), |e| e.to_string())
            );
        }
        Ok(StoredVectors { map, dim, tokens })
    }

    /// Bytes of the file.
    pub fn file_bytes(&self) -> usize {
        self.map.len()
    }

    /// The vectors of tokens `rows` (a document's range), as f32, row-major.
    pub fn rows(&self, rows: Range<usize>) -> Vec<f32> {
        let rows = rows.start.min(self.tokens)..rows.end.min(self.tokens);
        let bytes = &self.map[HEADER + rows.start * self.dim * 2..HEADER + rows.end * self.dim * 2];
        let mut out = vec![0f32; rows.len() * self.dim];
        f16_bytes_to_f32(bytes, &mut out);
        out
    }
}

/// Little-endian binary16 values (`src`, two bytes each) to f32: F16C's
/// conversion where the CPU has it, the exact scalar one elsewhere (both are
/// exact, so they agree bit for bit).
pub fn f16_bytes_to_f32(src: &[u8], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dst.len() * 2);
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx")
        {
            // SAFETY: the features were detected just above.
            done = unsafe { f16c_to_f32(src, dst) };
        }
    }
    for (x, b) in dst[done..].iter_mut().zip(src[done * 2..].chunks_exact(2)) {
        *x = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    }
}

/// Converts whole groups of eight values; returns how many it converted.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn f16c_to_f32(src: &[u8], dst: &mut [f32]) -> usize {
    use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
    let n = dst.len().min(src.len() / 2) / 8 * 8;
    for i in (0..n).step_by(8) {
        // SAFETY: i + 8 <= n values, 16 bytes of `src` and 8 floats of `dst`
        // are in bounds; both accesses are unaligned loads and stores.
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().add(i * 2).cast::<__m128i>());
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip_through_f16_and_both_conversions_agree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vectors.f16");
        let dim = 12;
        // Values that f16 holds exactly (normals, a subnormal, signed zero) and
        // one that it rounds.
        let mut v: Vec<f32> = (0..dim * 5).map(|i| (i as f32 - 30.0) / 64.0).collect();
        v[3] = 2f32.powi(-20);
        v[4] = -0.0;
        v[5] = 0.1;
        write(&path, dim, &v).unwrap();
        let stored = StoredVectors::open(&path, dim, 5).unwrap();
        assert_eq!(stored.file_bytes(), HEADER + v.len() * 2);
        let back = stored.rows(0..5);
        for (i, (&a, &b)) in v.iter().zip(&back).enumerate() {
            if i == 5 {
                assert!((a - b).abs() < 1e-4, "{a} {b}");
            } else {
                assert_eq!(a.to_bits(), b.to_bits(), "value {i}: {a} {b}");
            }
        }
        assert_eq!(stored.rows(2..4), back[2 * dim..4 * dim]);
        // The scalar path alone gives the same bits as the vector path.
        let bytes: Vec<u8> = v
            .iter()
            .flat_map(|&x| f32_to_f16(x).to_le_bytes())
            .collect();
        let scalar: Vec<f32> = bytes
            .chunks_exact(2)
            .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
            .collect();
        assert_eq!(
            scalar.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            back.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_file_that_does_not_match_its_index_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vectors.f16");
        write(&path, 4, &[0.5; 4 * 3]).unwrap();
        let err = |dim, tokens| {
            StoredVectors::open(&path, dim, tokens)
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default()
        };
        assert!(
            err(4, 2).contains("3 vectors of dimension 4, the index 2"),
            "{}",
            err(4, 2)
        );
        assert!(err(8, 3).contains("rebuild the index"), "{}", err(8, 3));
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 2]).unwrap();
        assert!(err(4, 3).contains("truncated"), "{}", err(4, 3));
        std::fs::write(&path, b"not vectors").unwrap();
        assert!(err(4, 3).contains("header"), "{}", err(4, 3));
        assert!(write(&path, 5, &[0.0; 12]).is_err());
    }
}
