//! The token codec of the multi-vector index (PLAID's compression): spherical
//! k-means over token embeddings (assignments are MLX matrix products and
//! argmaxes), then each token is its nearest centroid's id plus its residual
//! quantised to 2 or 4 bits per dimension by a per-dimension least-squares
//! (Lloyd-Max) scalar quantiser, started from cutoffs at the residuals'
//! quantiles. Seeded: the same tokens and params give the same codec.

use anyhow::{bail, Context, Result};

use super::maxsim::{f16_to_f32, f32_to_f16};
use crate::cancel::CancelToken;
use crate::mlx::{ops, Array};

/// How a codec is trained.
#[derive(Debug, Clone, PartialEq)]
pub struct CodecParams {
    /// Bits per residual dimension: 2 or 4.
    pub nbits: u8,
    /// Number of centroids; `None`: the power of two nearest 4·√tokens (at most tokens / 4).
    pub centroids: Option<usize>,
    /// k-means iterations over the training sample.
    pub iterations: usize,
    /// At most this many tokens per centroid train k-means (a seeded sample).
    pub sample_per_centroid: usize,
    pub seed: u64,
}

impl Default for CodecParams {
    fn default() -> Self {
        CodecParams {
            nbits: 4,
            centroids: None,
            iterations: 4,
            sample_per_centroid: 32,
            seed: 0,
        }
    }
}

/// Centroids and residual buckets: enough to encode and decode tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Codec {
    pub(crate) dim: usize,
    pub(crate) nbits: u8,
    /// `[n_centroids, dim]`, unit rows, each value exact in f16 (how they are stored).
    pub(crate) centroids: Vec<f32>,
    /// `[dim, levels - 1]`, ascending per dimension.
    pub(crate) cutoffs: Vec<f32>,
    /// `[dim, levels]`: the value each bucket decodes to.
    pub(crate) weights: Vec<f32>,
}

/// Tokens encoded in document order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Encoded {
    /// Each token's centroid.
    pub centroids: Vec<u32>,
    /// Each token's packed residual codes, [`Codec::bytes_per_token`] bytes each.
    pub codes: Vec<u8>,
}

/// splitmix64: a small seeded generator, enough for sampling.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 11) as u128 * n as u128) >> 53) as usize
    }
}

/// The centroid count used when none is given.
pub fn default_centroids(tokens: usize) -> usize {
    let target = (4.0 * (tokens as f64).sqrt()).max(1.0);
    let pow2 = 2f64.powf(target.log2().round()) as usize;
    pow2.clamp(1, (tokens / 4).max(1))
}

impl Codec {
    /// Trains a codec on `tokens`, a `[n, dim]` row-major matrix of (unit) vectors.
    pub fn train(
        tokens: &[f32],
        dim: usize,
        params: &CodecParams,
        cancel: &CancelToken,
    ) -> Result<Codec> {
        if !matches!(params.nbits, 2 | 4) {
            bail!("residual bits must be 2 or 4, not {}", params.nbits);
        }
        if dim == 0 || !tokens.len().is_multiple_of(dim) {
            bail!(
                "{} values do not make tokens of dimension {dim}",
                tokens.len()
            );
        }
        let n = tokens.len() / dim;
        if n == 0 {
            bail!("no tokens to train the codec on");
        }
        let k = params
            .centroids
            .unwrap_or_else(|| default_centroids(n))
            .clamp(1, n);
        // A seeded sample, shuffled: its first k rows seed the centroids.
        let cap = k
            .saturating_mul(params.sample_per_centroid.max(1))
            .max(k)
            .min(n);
        let mut order: Vec<u32> = (0..n as u32).collect();
        let mut rng = Rng::new(params.seed);
        for i in 0..cap {
            let j = i + rng.below(n - i);
            order.swap(i, j);
        }
        let mut sample = Vec::with_capacity(cap * dim);
        for &t in &order[..cap] {
            let t = t as usize;
            sample.extend_from_slice(&tokens[t * dim..(t + 1) * dim]);
        }
        drop(order);
        let mut centroids = initial_centroids(&sample, dim, k);
        normalize_rows(&mut centroids, dim);
        for _ in 0..params.iterations {
            cancel.check()?;
            let assigned = assign(&sample, dim, &centroids)?;
            update_centroids(&sample, dim, &assigned, &mut centroids);
        }
        // Centroids are stored as f16: round them now so residuals are taken
        // against exactly what decoding will add back.
        for x in centroids.iter_mut() {
            *x = f16_to_f32(f32_to_f16(*x));
        }
        let assigned = assign(&sample, dim, &centroids)?;
        let (cutoffs, weights) = buckets(&sample, dim, &assigned, &centroids, params.nbits);
        Ok(Codec {
            dim,
            nbits: params.nbits,
            centroids,
            cutoffs,
            weights,
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn nbits(&self) -> u8 {
        self.nbits
    }

    pub fn n_centroids(&self) -> usize {
        self.centroids.len() / self.dim
    }

    pub(crate) fn levels(&self) -> usize {
        1 << self.nbits
    }

    /// Bytes of packed residual codes per token.
    pub fn bytes_per_token(&self) -> usize {
        (self.dim * self.nbits as usize).div_ceil(8)
    }

    /// Encodes a `[n, dim]` matrix of tokens: nearest centroid and residual codes.
    pub fn encode(&self, tokens: &[f32]) -> Result<Encoded> {
        if !tokens.len().is_multiple_of(self.dim) {
            bail!(
                "{} values do not make tokens of dimension {}",
                tokens.len(),
                self.dim
            );
        }
        let centroids = assign(tokens, self.dim, &self.centroids)?;
        let bpt = self.bytes_per_token();
        let per_byte = 8 / self.nbits as usize;
        let cuts = self.levels() - 1;
        let mut codes = vec![0u8; centroids.len() * bpt];
        for (t, (&c, x)) in centroids
            .iter()
            .zip(tokens.chunks_exact(self.dim))
            .enumerate()
        {
            let centroid = &self.centroids[c as usize * self.dim..(c as usize + 1) * self.dim];
            let out = &mut codes[t * bpt..(t + 1) * bpt];
            for d in 0..self.dim {
                let r = x[d] - centroid[d];
                let code = self.cutoffs[d * cuts..(d + 1) * cuts].partition_point(|&cut| cut <= r);
                out[d / per_byte] |= (code as u8) << ((d % per_byte) * self.nbits as usize);
            }
        }
        Ok(Encoded { centroids, codes })
    }

    /// The vector a token decodes to: its centroid plus its residual's bucket values.
    pub fn decode_into(&self, centroid: u32, codes: &[u8], out: &mut [f32]) {
        let c = centroid as usize;
        let centroid = &self.centroids[c * self.dim..(c + 1) * self.dim];
        // The rerank decodes every token of every reranked document: the
        // common widths take whole bytes with constant shifts (no division
        // per dimension), which is most of what this costs.
        if out.len() >= self.dim && self.dim.is_multiple_of(8) {
            match self.nbits {
                4 => {
                    // Per byte: two dimensions, their 2 x 16 bucket values.
                    let (out, _) = out[..self.dim].as_chunks_mut::<2>();
                    let (centroid, _) = centroid.as_chunks::<2>();
                    let (weights, _) = self.weights.as_chunks::<32>();
                    for (((o, c), w), &b) in out.iter_mut().zip(centroid).zip(weights).zip(codes) {
                        o[0] = c[0] + w[(b & 15) as usize];
                        o[1] = c[1] + w[16 + (b >> 4) as usize];
                    }
                    return;
                }
                2 => {
                    // Per byte: four dimensions, their 4 x 4 bucket values.
                    let (out, _) = out[..self.dim].as_chunks_mut::<4>();
                    let (centroid, _) = centroid.as_chunks::<4>();
                    let (weights, _) = self.weights.as_chunks::<16>();
                    for (((o, c), w), &b) in out.iter_mut().zip(centroid).zip(weights).zip(codes) {
                        for k in 0..4 {
                            o[k] = c[k] + w[4 * k + ((b >> (2 * k)) & 3) as usize];
                        }
                    }
                    return;
                }
                _ => {}
            }
        }
        self.decode_each_dim(centroid, codes, out);
    }

    /// [`Codec::decode_into`] one dimension at a time, any width.
    fn decode_each_dim(&self, centroid: &[f32], codes: &[u8], out: &mut [f32]) {
        let levels = self.levels();
        let per_byte = 8 / self.nbits as usize;
        let mask = (levels - 1) as u8;
        for d in 0..self.dim.min(out.len()) {
            let code = (codes[d / per_byte] >> ((d % per_byte) * self.nbits as usize)) & mask;
            out[d] = centroid[d] + self.weights[d * levels + code as usize];
        }
    }
}

/// The first `k` distinct rows of the (shuffled) sample, topped up with repeats
/// when it has fewer: two equal seeds would leave a centroid empty for good.
fn initial_centroids(sample: &[f32], dim: usize, k: usize) -> Vec<f32> {
    let mut seen = std::collections::HashSet::new();
    let mut chosen = Vec::with_capacity(k);
    let mut repeats = Vec::new();
    for (i, row) in sample.chunks_exact(dim).enumerate() {
        if chosen.len() == k {
            break;
        }
        let bits: Vec<u32> = row.iter().map(|x| x.to_bits()).collect();
        if seen.insert(bits) {
            chosen.push(i);
        } else if repeats.len() < k {
            repeats.push(i);
        }
    }
    chosen.extend(repeats.into_iter().take(k - chosen.len()));
    let mut out = Vec::with_capacity(k * dim);
    for i in chosen {
        out.extend_from_slice(&sample[i * dim..(i + 1) * dim]);
    }
    out
}

fn normalize_rows(m: &mut [f32], dim: usize) {
    for row in m.chunks_mut(dim) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|x| *x /= norm);
        }
    }
}

/// Each row's nearest centroid by dot product (MLX: `argmax(X · Cᵀ)`, in chunks
/// that keep the score matrix near 16 MiB: larger ones were fresh pages from the
/// kernel every time, a quarter of the build in page faults and zeroing).
pub(crate) fn assign(tokens: &[f32], dim: usize, centroids: &[f32]) -> Result<Vec<u32>> {
    let k = centroids.len() / dim;
    let n = tokens.len() / dim;
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return Ok(out);
    }
    let c = Array::from_slice(centroids, &[k as i32, dim as i32])
        .and_then(|c| c.transpose())
        .context("loading centroids into MLX")?;
    let rows = ((1usize << 22) / k.max(1)).clamp(1, 1 << 16);
    for chunk in tokens.chunks(rows * dim) {
        let m = chunk.len() / dim;
        let x = Array::from_slice(chunk, &[m as i32, dim as i32])?;
        let best = ops::argmax_axis(ops::matmul(&x, &c)?, 1, false)?.as_type::<u32>()?;
        out.extend(best.to_vec::<u32>().context("k-means assignment")?);
    }
    if out.iter().any(|&a| a as usize >= k) {
        bail!("k-means assignment returned a centroid out of range");
    }
    Ok(out)
}

/// Centroids become their members' normalised means; an empty one stays put.
fn update_centroids(sample: &[f32], dim: usize, assigned: &[u32], centroids: &mut [f32]) {
    let k = centroids.len() / dim;
    let mut sums = vec![0f32; k * dim];
    let mut counts = vec![0u32; k];
    for (x, &a) in sample.chunks_exact(dim).zip(assigned) {
        let a = a as usize;
        counts[a] += 1;
        for (s, v) in sums[a * dim..(a + 1) * dim].iter_mut().zip(x) {
            *s += v;
        }
    }
    for (c, &count) in counts.iter().enumerate() {
        if count > 0 {
            centroids[c * dim..(c + 1) * dim].copy_from_slice(&sums[c * dim..(c + 1) * dim]);
        }
    }
    normalize_rows(centroids, dim);
}

/// Lloyd iterations refining a dimension's quantile buckets.
const LLOYD_ROUNDS: usize = 300;

/// Per dimension, the scalar quantiser of the residuals with the least squared
/// error (Lloyd-Max): starting from cutoffs at the `j / levels` quantiles and
/// each bucket's mean as its value (ColBERTv2's buckets), alternately put each
/// cutoff midway between its neighbouring values and each value at its bucket's
/// mean. Every round can only lower the error; on Gaussian residuals at 4 bits
/// it falls from ~0.0115σ² (equal-count buckets) to Lloyd-Max's 0.0095σ²,
/// which is what separates near-tied documents once a corpus grows.
fn buckets(
    sample: &[f32],
    dim: usize,
    assigned: &[u32],
    centroids: &[f32],
    nbits: u8,
) -> (Vec<f32>, Vec<f32>) {
    let levels = 1usize << nbits;
    let n = assigned.len();
    let mut cutoffs = Vec::with_capacity(dim * (levels - 1));
    let mut weights = Vec::with_capacity(dim * levels);
    let mut column = vec![0f32; n];
    for d in 0..dim {
        for (t, (x, &a)) in sample.chunks_exact(dim).zip(assigned).enumerate() {
            column[t] = x[d] - centroids[a as usize * dim + d];
        }
        column.sort_by(f32::total_cmp);
        let (cuts, values) = lloyd_max(&column, levels);
        weights.extend(values);
        cutoffs.extend(cuts);
    }
    (cutoffs, weights)
}

/// The `levels - 1` cutoffs and `levels` values of the least-squares scalar
/// quantiser of `sorted` (ascending, non-empty), from quantile buckets.
fn lloyd_max(sorted: &[f32], levels: usize) -> (Vec<f32>, Vec<f32>) {
    let n = sorted.len();
    // prefix[i]: the sum of the first i values (f64: n may be in the millions).
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0f64);
    for &v in sorted {
        prefix.push(prefix[prefix.len() - 1] + f64::from(v));
    }
    let mut cuts: Vec<f32> = (1..levels)
        .map(|j| sorted[(j * n / levels).min(n - 1)])
        .collect();
    let mut values = vec![0f32; levels];
    for round in 0..=LLOYD_ROUNDS {
        if round > 0 {
            for j in 0..levels - 1 {
                cuts[j] = (values[j] + values[j + 1]) / 2.0;
            }
        }
        let mut lo = 0;
        for j in 0..levels {
            let hi = if j + 1 < levels {
                sorted.partition_point(|&v| v < cuts[j])
            } else {
                n
            };
            values[j] = if hi > lo {
                ((prefix[hi] - prefix[lo]) / (hi - lo) as f64) as f32
            } else if round > 0 {
                values[j] // an empty bucket keeps its value
            } else {
                // Empty from the start (many equal residuals): its cutoffs' midpoint.
                let below = cuts[j.saturating_sub(1)];
                let above = cuts[j.min(levels - 2)];
                (below + above) / 2.0
            };
            lo = hi;
        }
    }
    (cuts, values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::synth::clustered;

    #[test]
    fn default_centroid_counts() {
        assert_eq!(default_centroids(1), 1);
        // 4·√100 = 40 → 32, capped at 100 / 4.
        assert_eq!(default_centroids(100), 25);
        assert_eq!(default_centroids(1_000_000), 4096);
        assert_eq!(default_centroids(10_000), 512);
    }

    #[test]
    fn kmeans_keeps_well_separated_clusters_apart() {
        let dim = 16;
        let tokens = clustered(400, dim, 4, 0.05, 1);
        let params = CodecParams {
            centroids: Some(16),
            ..Default::default()
        };
        let codec = Codec::train(&tokens, dim, &params, &CancelToken::new()).unwrap();
        let enc = codec.encode(&tokens).unwrap();
        // No centroid holds tokens of two generating clusters (token i is of cluster i % 4).
        let mut owner = std::collections::HashMap::new();
        for (i, &c) in enc.centroids.iter().enumerate() {
            assert_eq!(*owner.entry(c).or_insert(i % 4), i % 4, "centroid {c}");
        }
        // Same seed, same codec.
        let again = Codec::train(&tokens, dim, &params, &CancelToken::new()).unwrap();
        assert_eq!(codec, again);
    }

    #[test]
    fn residuals_decode_close_to_the_tokens() {
        let dim = 32;
        let tokens = clustered(600, dim, 6, 0.3, 2);
        for (nbits, tolerance) in [(4u8, 0.03f32), (2, 0.12)] {
            let params = CodecParams {
                nbits,
                centroids: Some(6),
                ..Default::default()
            };
            let codec = Codec::train(&tokens, dim, &params, &CancelToken::new()).unwrap();
            assert_eq!(codec.bytes_per_token(), dim * nbits as usize / 8);
            let enc = codec.encode(&tokens).unwrap();
            let mut out = vec![0f32; dim];
            let mut err = 0f32;
            for (t, x) in tokens.chunks_exact(dim).enumerate() {
                let bpt = codec.bytes_per_token();
                codec.decode_into(
                    enc.centroids[t],
                    &enc.codes[t * bpt..(t + 1) * bpt],
                    &mut out,
                );
                err += x
                    .iter()
                    .zip(&out)
                    .map(|(a, b)| (a - b).powi(2))
                    .sum::<f32>();
                // The whole-byte path decodes exactly what the general one does.
                let c = enc.centroids[t] as usize;
                let mut slow = vec![0f32; dim];
                codec.decode_each_dim(
                    &codec.centroids[c * dim..(c + 1) * dim],
                    &enc.codes[t * bpt..(t + 1) * bpt],
                    &mut slow,
                );
                assert_eq!(out, slow, "{nbits} bits, token {t}");
            }
            let mse = err / tokens.len() as f32;
            assert!(mse < tolerance * tolerance, "{nbits} bits: mse {mse}");
        }
    }

    /// Squared error of quantising `sorted` with `cuts` and `values`.
    fn quantisation_mse(sorted: &[f32], cuts: &[f32], values: &[f32]) -> f64 {
        sorted
            .iter()
            .map(|&v| {
                let q = values[cuts.partition_point(|&c| c <= v)];
                f64::from(v - q).powi(2)
            })
            .sum::<f64>()
            / sorted.len() as f64
    }

    #[test]
    fn buckets_reach_the_lloyd_max_error_on_gaussian_residuals() {
        // Standard normal samples (Box-Muller over the codec's seeded Rng).
        let mut rng = Rng::new(7);
        let mut unit = || (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let mut sorted: Vec<f32> = (0..200_000)
            .map(|_| {
                let (u, v) = (unit().max(1e-300), unit());
                ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
            })
            .collect();
        sorted.sort_by(f32::total_cmp);
        // Max's tables: 16 levels 0.009497, 4 levels 0.1175 (unit variance).
        for (levels, optimum) in [(16usize, 0.009497f64), (4, 0.1175)] {
            let (cuts, values) = lloyd_max(&sorted, levels);
            let mse = quantisation_mse(&sorted, &cuts, &values);
            assert!(
                (mse - optimum).abs() < 0.04 * optimum,
                "{levels} levels: mse {mse}, Lloyd-Max {optimum}"
            );
            // The quantile start (equal-count buckets, bucket means) is worse.
            let n = sorted.len();
            let qcuts: Vec<f32> = (1..levels).map(|j| sorted[j * n / levels]).collect();
            let mut qvalues = Vec::new();
            let mut lo = 0;
            for j in 0..levels {
                let hi = if j + 1 < levels {
                    j * n / levels + n / levels
                } else {
                    n
                };
                let hi = hi.min(n);
                qvalues.push(
                    sorted[lo..hi].iter().map(|&v| f64::from(v)).sum::<f64>() as f32
                        / (hi - lo) as f32,
                );
                lo = hi;
            }
            let start = quantisation_mse(&sorted, &qcuts, &qvalues);
            assert!(
                mse < 0.95 * start,
                "{levels} levels: {mse} against the start's {start}"
            );
            assert!(values.windows(2).all(|w| w[0] < w[1]) && cuts.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn bad_params_are_errors() {
        let c = CancelToken::new();
        let p = CodecParams {
            nbits: 3,
            ..Default::default()
        };
        assert!(Codec::train(&[0.0; 8], 4, &p, &c).is_err());
        assert!(Codec::train(&[0.0; 7], 4, &CodecParams::default(), &c).is_err());
        assert!(Codec::train(&[], 4, &CodecParams::default(), &c).is_err());
    }
}
