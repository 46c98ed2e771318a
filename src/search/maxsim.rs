//! Exact late-interaction scoring: MaxSim(q, d) = Σ over query tokens of the
//! largest dot product with any document token. Vectors are rows of a row-major
//! matrix ([`TokenVectors`], f32) or raw IEEE half floats (f16 storage, half the
//! memory). Dot products run on eight independent accumulators so the compiler can
//! vectorise them. This is the ground truth the compressed index is measured against.

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
    let dim = query.dim;
    (0..query.rows())
        .map(|i| {
            let q = query.row(i);
            doc.chunks_exact(dim)
                .map(|d| dot(q, d))
                .fold(f32::NEG_INFINITY, f32::max)
        })
        .sum()
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
