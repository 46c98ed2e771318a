//! Exact late-interaction scoring: MaxSim(q, d) = Σ over query tokens of the
//! largest dot product with any document token. Vectors are rows of a row-major
//! matrix ([`TokenVectors`], f32) or raw IEEE half floats (f16 storage, half the
//! memory). Scoring many tokens at once ([`scores_by_row`]) is a broadcast-and-
//! accumulate kernel built for AVX-512, AVX2 or plain SIMD as the CPU allows.
//! This is the ground truth the compressed index is measured against.

use anyhow::{bail, Result};

/// A `[rows, dim]` row-major matrix of token embeddings.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenVectors {
    dim: usize,
    data: Vec<f32>,
}

impl TokenVectors {
    /// `data.len()` must be a multiple of `dim` (and `dim` > 0).
    pub fn new(dim: usize, data: Vec<f32>) -> Result<TokenVectors> {
        if dim == 0 || !data.len().is_multiple_of(dim) {
            bail!(
                "token vectors of {} values do not split into rows of {dim}",
                data.len()
            );
        }
        Ok(TokenVectors { dim, data })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn rows(&self) -> usize {
        self.data.len() / self.dim
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }

    /// Every row scaled to unit length (zero rows stay zero).
    pub fn normalized(mut self) -> TokenVectors {
        for row in self.data.chunks_mut(self.dim) {
            let norm = dot(row, row).sqrt();
            if norm > 0.0 {
                row.iter_mut().for_each(|x| *x /= norm);
            }
        }
        self
    }
}

/// The dot product of two equal-length slices.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let chunks = n / 8;
    for c in 0..chunks {
        let (x, y) = (&a[c * 8..c * 8 + 8], &b[c * 8..c * 8 + 8]);
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0.0;
    for i in chunks * 8..n {
        tail += a[i] * b[i];
    }
    acc.iter().sum::<f32>() + tail
}

/// MaxSim of `query` against one document's token vectors, a flat row-major
/// slice of the query's dimension. An empty document scores 0.
pub fn maxsim(query: &TokenVectors, doc: &[f32]) -> f32 {
    if doc.is_empty() {
        return 0.0;
    }
    let nq = query.rows();
    let mut scores = Vec::new();
    scores_by_row(query, doc, &mut scores);
    let mut best = vec![f32::NEG_INFINITY; nq];
    for row in scores.chunks_exact(nq.max(1)) {
        for (b, &x) in best.iter_mut().zip(row) {
            *b = b.max(x);
        }
    }
    best.iter().sum()
}

/// Query tokens per block of [`scores_by_row`]: 32 accumulators fill two
/// AVX-512 or four AVX2 registers.
const BLOCK: usize = 32;

/// `out[r * nq + i] = query_i · m_r` for every row `r` of the row-major matrix
/// `m` (of the query's dimension): all query tokens against all rows, computed as
/// broadcast-and-accumulate over a transposed block of query tokens so the inner
/// loop is one wide vector operation. Uses AVX-512 or AVX2 when the CPU has them.
pub fn scores_by_row(query: &TokenVectors, m: &[f32], out: &mut Vec<f32>) {
    let (dim, nq) = (query.dim, query.rows());
    let rows = m.len() / dim;
    out.clear();
    out.resize(rows * nq, 0.0);
    let mut qt = vec![[0f32; BLOCK]; dim];
    for base in (0..nq).step_by(BLOCK) {
        let nb = BLOCK.min(nq - base);
        qt.iter_mut().for_each(|x| *x = [0.0; BLOCK]);
        for i in 0..nb {
            for (slot, &x) in qt.iter_mut().zip(query.row(base + i)) {
                slot[i] = x;
            }
        }
        let block = Block {
            qt: &qt,
            dim,
            nq,
            base,
            nb,
        };
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F (checked just above).
                unsafe { block_avx512(&block, m, out) };
                continue;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has AVX2 and FMA (checked just above).
                unsafe { block_avx2(&block, m, out) };
                continue;
            }
        }
        block_scores(&block, m, out);
    }
}

struct Block<'a> {
    /// `[dim][BLOCK]`: the block's query tokens, transposed, zero-padded.
    qt: &'a [[f32; BLOCK]],
    dim: usize,
    nq: usize,
    base: usize,
    nb: usize,
}

#[inline(always)]
fn block_scores(b: &Block, m: &[f32], out: &mut [f32]) {
    for (r, row) in m.chunks_exact(b.dim).enumerate() {
        let mut acc = [0f32; BLOCK];
        for (&x, q) in row.iter().zip(b.qt) {
            for (a, &y) in acc.iter_mut().zip(q) {
                *a += x * y;
            }
        }
        out[r * b.nq + b.base..r * b.nq + b.base + b.nb].copy_from_slice(&acc[..b.nb]);
    }
}

/// Four rows at a time, two 16-lane accumulators per row: eight independent FMA
/// chains hide the FMA latency.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn block_avx512(b: &Block, m: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    const R: usize = 4;
    let dim = b.dim;
    let rows = m.len() / dim;
    let mut r = 0;
    while r + R <= rows {
        let mut acc = [_mm512_setzero_ps(); 2 * R];
        for (d, q) in b.qt.iter().enumerate() {
            // SAFETY: `q` holds 32 floats; the loads read [0, 16) and [16, 32).
            let (q0, q1) = unsafe {
                (
                    _mm512_loadu_ps(q.as_ptr()),
                    _mm512_loadu_ps(q.as_ptr().add(16)),
                )
            };
            for k in 0..R {
                let x = _mm512_set1_ps(m[(r + k) * dim + d]);
                acc[2 * k] = _mm512_fmadd_ps(x, q0, acc[2 * k]);
                acc[2 * k + 1] = _mm512_fmadd_ps(x, q1, acc[2 * k + 1]);
            }
        }
        for k in 0..R {
            let mut lanes = [0f32; BLOCK];
            // SAFETY: `lanes` holds 32 floats; the stores write [0, 16) and [16, 32).
            unsafe {
                _mm512_storeu_ps(lanes.as_mut_ptr(), acc[2 * k]);
                _mm512_storeu_ps(lanes.as_mut_ptr().add(16), acc[2 * k + 1]);
            }
            let at = (r + k) * b.nq + b.base;
            out[at..at + b.nb].copy_from_slice(&lanes[..b.nb]);
        }
        r += R;
    }
    block_scores(b, &m[r * dim..], &mut out[r * b.nq..]);
}

/// Two rows at a time, four 8-lane accumulators per row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn block_avx2(b: &Block, m: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    const R: usize = 2;
    let dim = b.dim;
    let rows = m.len() / dim;
    let mut r = 0;
    while r + R <= rows {
        let mut acc = [_mm256_setzero_ps(); 4 * R];
        for (d, q) in b.qt.iter().enumerate() {
            // SAFETY: `q` holds 32 floats; the loads read four runs of 8.
            let qv = unsafe {
                [
                    _mm256_loadu_ps(q.as_ptr()),
                    _mm256_loadu_ps(q.as_ptr().add(8)),
                    _mm256_loadu_ps(q.as_ptr().add(16)),
                    _mm256_loadu_ps(q.as_ptr().add(24)),
                ]
            };
            for (k, row_acc) in acc.chunks_exact_mut(4).enumerate() {
                let x = _mm256_set1_ps(m[(r + k) * dim + d]);
                for (a, &y) in row_acc.iter_mut().zip(&qv) {
                    *a = _mm256_fmadd_ps(x, y, *a);
                }
            }
        }
        for (k, row_acc) in acc.chunks_exact(4).enumerate() {
            let mut lanes = [0f32; BLOCK];
            for (j, &a) in row_acc.iter().enumerate() {
                // SAFETY: `lanes` holds 32 floats; each store writes 8 at 8·j.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr().add(8 * j), a) };
            }
            let at = (r + k) * b.nq + b.base;
            out[at..at + b.nb].copy_from_slice(&lanes[..b.nb]);
        }
        r += R;
    }
    block_scores(b, &m[r * dim..], &mut out[r * b.nq..]);
}

/// MaxSim against a document stored as IEEE binary16 bits (row-major).
pub fn maxsim_f16(query: &TokenVectors, doc: &[u16]) -> f32 {
    let mut row = vec![0f32; query.dim];
    let mut best = vec![f32::NEG_INFINITY; query.rows()];
    if doc.is_empty() {
        return 0.0;
    }
    for d in doc.chunks_exact(query.dim) {
        for (x, &h) in row.iter_mut().zip(d) {
            *x = f16_to_f32(h);
        }
        for (i, b) in best.iter_mut().enumerate() {
            *b = b.max(dot(query.row(i), &row));
        }
    }
    best.iter().sum()
}

/// IEEE binary16 to f32 (subnormals, infinities and NaN included).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: frac · 2^-24, exact in f32.
            let v = frac as f32 * (1.0 / (1u32 << 24) as f32);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, _) => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

/// f32 to IEEE binary16, rounding to nearest even (overflow to infinity).
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let frac = bits & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if frac != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = frac | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rest = m & ((1 << shift) - 1);
        let mut out = m >> shift;
        if rest > half || (rest == half && out & 1 == 1) {
            out += 1;
        }
        return sign | out as u16;
    }
    let mut out = ((e as u32) << 10) | (frac >> 13);
    let rest = frac & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && out & 1 == 1) {
        out += 1; // may carry into the exponent, which is the right rounding
    }
    sign | out as u16
}

/// The `k` best documents by exact MaxSim, best first, ties by index.
pub fn top_k<'a>(
    query: &TokenVectors,
    docs: impl IntoIterator<Item = &'a [f32]>,
    k: usize,
) -> Vec<(u32, f32)> {
    let scores: Vec<(u32, f32)> = docs
        .into_iter()
        .enumerate()
        .map(|(i, d)| (i as u32, maxsim(query, d)))
        .collect();
    best_k(scores, k)
}

/// The `k` highest scores, best first, ties by id.
pub fn best_k(mut scores: Vec<(u32, f32)>, k: usize) -> Vec<(u32, f32)> {
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if k < scores.len() {
        scores.select_nth_unstable_by(k, order);
        scores.truncate(k);
    }
    scores.sort_by(order);
    scores
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tv(dim: usize, data: &[f32]) -> TokenVectors {
        TokenVectors::new(dim, data.to_vec()).unwrap()
    }

    #[test]
    fn maxsim_by_hand() {
        // q1 = (1, 0), q2 = (0, 1); doc tokens (0.6, 0.8), (1, 0), (0, 0.5).
        // q1: max(0.6, 1, 0) = 1; q2: max(0.8, 0, 0.5) = 0.8; MaxSim = 1.8.
        let q = tv(2, &[1.0, 0.0, 0.0, 1.0]);
        let doc = [0.6, 0.8, 1.0, 0.0, 0.0, 0.5];
        assert!((maxsim(&q, &doc) - 1.8).abs() < 1e-6);
        // Negative similarities are kept (max of negatives, not 0).
        assert!((maxsim(&q, &[-1.0, -2.0]) - (-3.0)).abs() < 1e-6);
        assert_eq!(maxsim(&q, &[]), 0.0);
    }

    #[test]
    fn scores_by_row_matches_dot_products_across_blocks() {
        // 35 query tokens (two blocks, the second partial) of dimension 5, against
        // 9 rows (two runs of the 4-row SIMD kernel and a remainder).
        let dim = 5;
        let q: Vec<f32> = (0..35 * dim).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let q = tv(dim, &q);
        let m: Vec<f32> = (0..9 * dim).map(|i| ((i * 3) % 7) as f32 - 2.0).collect();
        let mut out = Vec::new();
        scores_by_row(&q, &m, &mut out);
        assert_eq!(out.len(), 9 * 35);
        for r in 0..9 {
            for i in 0..35 {
                let want = dot(q.row(i), &m[r * dim..(r + 1) * dim]);
                assert_eq!(out[r * 35 + i], want, "row {r}, token {i}");
            }
        }
    }

    #[test]
    fn dot_handles_lengths_off_the_lane_width() {
        let a: Vec<f32> = (0..19).map(|i| i as f32).collect();
        let b = vec![2.0; 19];
        assert_eq!(dot(&a, &b), 2.0 * (0..19).sum::<i32>() as f32);
    }

    #[test]
    fn top_k_ranks_documents_and_breaks_ties_by_index() {
        let q = tv(2, &[1.0, 0.0]);
        let docs: Vec<Vec<f32>> = vec![
            vec![0.5, 0.0],
            vec![0.9, 0.1],
            vec![0.5, 0.3],
            vec![0.1, 0.0],
        ];
        let top = top_k(&q, docs.iter().map(|d| d.as_slice()), 3);
        assert_eq!(top.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 0, 2]);
        assert_eq!(top_k(&q, docs.iter().map(|d| d.as_slice()), 10).len(), 4);
    }

    #[test]
    fn f16_round_trips_and_scores_like_f32() {
        for x in [0.0f32, 1.0, -2.5, 0.333_251_95, 65504.0, 6.0e-8, -1.0e-5] {
            let back = f16_to_f32(f32_to_f16(x));
            assert!((back - x).abs() <= x.abs() * 1e-3 + 6e-8, "{x} -> {back}");
        }
        assert_eq!(f32_to_f16(1.0), 0x3c00);
        assert_eq!(f32_to_f16(-2.0), 0xc000);
        assert_eq!(f32_to_f16(1e6), 0x7c00);
        assert!(f16_to_f32(0x7e00).is_nan());
        let q = tv(2, &[1.0, 0.0, 0.0, 1.0]);
        let doc: Vec<u16> = [0.6, 0.8, 1.0, 0.0, 0.0, 0.5]
            .iter()
            .map(|&x| f32_to_f16(x))
            .collect();
        assert!((maxsim_f16(&q, &doc) - 1.8).abs() < 1e-3);
    }

    #[test]
    fn rows_must_divide_the_data() {
        assert!(TokenVectors::new(3, vec![0.0; 4]).is_err());
        assert!(TokenVectors::new(0, vec![]).is_err());
        let n = tv(2, &[3.0, 4.0, 0.0, 0.0]).normalized();
        assert_eq!(n.as_slice(), &[0.6, 0.8, 0.0, 0.0]);
    }
}
