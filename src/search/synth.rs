//! Synthetic multi-vector data for tests and benchmarks: unit token vectors drawn
//! around seeded random directions ("topics"), documents as bags of such tokens,
//! and queries made from a document's tokens plus noise, so that each query has a
//! document it should find. Deterministic for a seed.

use super::codec::Rng;
use super::maxsim::{dot, TokenVectors};

fn gauss(rng: &mut Rng) -> f32 {
    // Sum of four uniforms, centred: close enough to normal for test data.
    (0..4)
        .map(|_| rng.below(1 << 20) as f32 / (1 << 20) as f32)
        .sum::<f32>()
        - 2.0
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let norm = dot(&v, &v).sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// `n` unit vectors, the i-th around direction `i % clusters`, `spread` the noise
/// scale relative to the directions' (≈ unit per coordinate) scale; row-major.
pub fn clustered(n: usize, dim: usize, clusters: usize, spread: f32, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let centers: Vec<f32> = (0..clusters * dim).map(|_| gauss(&mut rng)).collect();
    let mut out = Vec::with_capacity(n * dim);
    for i in 0..n {
        let c = &centers[(i % clusters) * dim..(i % clusters + 1) * dim];
        out.extend(unit(
            c.iter().map(|x| x + spread * gauss(&mut rng)).collect(),
        ));
    }
    out
}

/// A corpus of `n_docs` documents of `min_tokens..=max_tokens` tokens each. Each
/// document draws its tokens from a few of `topics` topics (as code mixes a few
/// concepts), each token off its topic's direction by `spread`.
pub fn corpus(
    n_docs: usize,
    min_tokens: usize,
    max_tokens: usize,
    dim: usize,
    topics: usize,
    spread: f32,
    seed: u64,
) -> Vec<Vec<f32>> {
    let mut rng = Rng::new(seed);
    let topics = topics.max(1);
    let centers: Vec<f32> = (0..topics * dim).map(|_| gauss(&mut rng)).collect();
    let span = max_tokens.saturating_sub(min_tokens) + 1;
    (0..n_docs)
        .map(|_| {
            let n = min_tokens + rng.below(span);
            let mine: Vec<usize> = (0..4).map(|_| rng.below(topics)).collect();
            let mut doc = Vec::with_capacity(n * dim);
            for _ in 0..n {
                let t = mine[rng.below(mine.len())];
                let c = &centers[t * dim..(t + 1) * dim];
                doc.extend(unit(
                    c.iter().map(|x| x + spread * gauss(&mut rng)).collect(),
                ));
            }
            doc
        })
        .collect()
}

/// `n` queries of `tokens` tokens: each picks a document (returned beside it) and
/// takes random tokens of it, moved by `noise`.
pub fn queries(
    docs: &[Vec<f32>],
    dim: usize,
    n: usize,
    tokens: usize,
    noise: f32,
    seed: u64,
) -> Vec<(usize, TokenVectors)> {
    let mut rng = Rng::new(seed ^ 0x5eed);
    (0..n)
        .filter_map(|_| {
            let d = rng.below(docs.len().max(1));
            let doc = docs.get(d)?;
            let rows = doc.len() / dim;
            if rows == 0 {
                return None;
            }
            let mut q = Vec::with_capacity(tokens * dim);
            for _ in 0..tokens {
                let r = rng.below(rows);
                let row = &doc[r * dim..(r + 1) * dim];
                q.extend(unit(
                    row.iter().map(|x| x + noise * gauss(&mut rng)).collect(),
                ));
            }
            TokenVectors::new(dim, q).ok().map(|q| (d, q))
        })
        .collect()
}
