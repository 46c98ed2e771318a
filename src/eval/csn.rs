//! CodeSearchNet-style evaluation of a model on (query, code) pairs, such as a
//! dataset's test split: each query is ranked by exact MaxSim against its own code
//! and `distractors` codes sampled (seeded) from the other pairs. Every code is
//! embedded once. A distractor that ties the positive ranks above it.

use std::collections::HashSet;

use anyhow::{bail, Result};
use serde::Serialize;

use super::metrics::{QueryScores, Summary};
use crate::cancel::CancelToken;
use crate::search::codec::Rng;
use crate::search::maxsim::{maxsim, TokenVectors};
use crate::search::Embedder;

/// How the candidates are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsnOptions {
    /// Distractors per query (at most the other pairs).
    pub distractors: usize,
    pub seed: u64,
    /// Codes per embedder call.
    pub batch: usize,
}

impl Default for CsnOptions {
    fn default() -> Self {
        CsnOptions {
            distractors: 999,
            seed: 0,
            batch: 32,
        }
    }
}

/// The outcome over all pairs.
#[derive(Debug, Clone, Serialize)]
pub struct CsnReport {
    pub pairs: usize,
    pub distractors: usize,
    pub summary: Summary,
}

/// Ranks `queries[i]` against `codes[i]` and sampled other codes.
pub fn evaluate_pairs(
    queries: &[&str],
    codes: &[&str],
    embedder: &dyn Embedder,
    opts: &CsnOptions,
    cancel: &CancelToken,
) -> Result<CsnReport> {
    if queries.len() != codes.len() {
        bail!("{} queries but {} codes", queries.len(), codes.len());
    }
    let n = queries.len();
    if n < 2 {
        bail!("ranking needs at least two pairs, got {n}");
    }
    let mut docs: Vec<TokenVectors> = Vec::with_capacity(n);
    for chunk in codes.chunks(opts.batch.max(1)) {
        cancel.check()?;
        docs.extend(embedder.embed_documents(chunk)?);
    }
    if docs.len() != n {
        bail!(
            "the embedder returned {} embeddings for {n} codes",
            docs.len()
        );
    }
    let distractors = opts.distractors.min(n - 1);
    let mut rng = Rng::new(opts.seed);
    let mut scores = Vec::with_capacity(n);
    for (i, query) in queries.iter().enumerate() {
        cancel.check()?;
        let q = embedder.embed_query(query)?;
        let mut picked: HashSet<usize> = HashSet::with_capacity(distractors);
        if distractors == n - 1 {
            picked.extend((0..n).filter(|&j| j != i));
        } else {
            while picked.len() < distractors {
                let j = rng.below(n);
                if j != i {
                    picked.insert(j);
                }
            }
        }
        // Ties rank the distractor first: sort by score, then the positive last.
        let mut ranked: Vec<(usize, f32)> = picked
            .into_iter()
            .chain(std::iter::once(i))
            .map(|j| (j, maxsim(&q, docs[j].as_slice())))
            .collect();
        ranked.sort_by(|a, b| {
            b.1.total_cmp(&a.1)
                .then((a.0 == i).cmp(&(b.0 == i)))
                .then(a.0.cmp(&b.0))
        });
        let ranking: Vec<usize> = ranked.into_iter().map(|r| r.0).collect();
        scores.push(QueryScores::of(&ranking, &HashSet::from([i])));
    }
    Ok(CsnReport {
        pairs: n,
        distractors,
        summary: Summary::of(&scores),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::HashEmbedder;

    #[test]
    fn each_query_finds_its_code_among_distractors() {
        let queries = [
            "parse toml",
            "hash files",
            "sort names",
            "open socket",
            "draw chart",
        ];
        let codes = [
            "fn parse_toml(text: &str) {}",
            "fn hash_files(paths: &[Path]) {}",
            "fn sort_names(names: &mut Vec<String>) {}",
            "fn open_socket(addr: &str) {}",
            "fn draw_chart(points: &[f32]) {}",
        ];
        let emb = HashEmbedder::new(32);
        let opts = CsnOptions {
            distractors: 999,
            ..Default::default()
        };
        let report = evaluate_pairs(&queries, &codes, &emb, &opts, &CancelToken::new()).unwrap();
        assert_eq!((report.pairs, report.distractors), (5, 4));
        assert_eq!(report.summary.p_at_1, 1.0);
        assert_eq!(report.summary.mrr, 1.0);
        assert_eq!(emb.texts_embedded(), 5, "each code embedded once");

        // Identical codes tie: the distractor ranks first, the positive second.
        let same = ["fn x() {}", "fn x() {}"];
        let tied = evaluate_pairs(&["x", "x"], &same, &emb, &opts, &CancelToken::new()).unwrap();
        assert_eq!(tied.summary.p_at_1, 0.0);
        assert_eq!(tied.summary.mrr, 0.5);
    }

    #[test]
    fn mismatched_or_too_few_pairs_are_errors() {
        let emb = HashEmbedder::new(8);
        let c = CancelToken::new();
        let o = CsnOptions::default();
        assert!(evaluate_pairs(&["a"], &["b", "c"], &emb, &o, &c).is_err());
        assert!(evaluate_pairs(&["a"], &["b"], &emb, &o, &c).is_err());
    }
}
