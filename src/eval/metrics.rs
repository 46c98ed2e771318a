//! Retrieval metrics over one ranking and the set of ids that are relevant to its
//! query (binary relevance): P@1, reciprocal rank, Recall@k, nDCG@k; their means
//! over a query set; and latency percentiles (nearest rank).
//!
//! A ranking is read as given, best first; an id repeated in it counts once, at
//! its first place (several units may share one `path::symbol`).

use std::collections::HashSet;
use std::hash::Hash;
use std::time::Duration;

use serde::Serialize;

/// The ranking without repeats, first occurrence kept.
fn distinct<T: Eq + Hash>(ranking: &[T]) -> Vec<&T> {
    let mut seen = HashSet::new();
    ranking.iter().filter(|id| seen.insert(*id)).collect()
}

/// 1 when the first result is relevant, else 0.
pub fn precision_at_1<T: Eq + Hash>(ranking: &[T], relevant: &HashSet<T>) -> f64 {
    match ranking.first() {
        Some(first) if relevant.contains(first) => 1.0,
        _ => 0.0,
    }
}

/// 1 / (1-based rank of the first relevant result); 0 when none is ranked.
pub fn reciprocal_rank<T: Eq + Hash>(ranking: &[T], relevant: &HashSet<T>) -> f64 {
    distinct(ranking)
        .iter()
        .position(|id| relevant.contains(*id))
        .map_or(0.0, |i| 1.0 / (i + 1) as f64)
}

/// The share of the relevant ids found in the first `k` results; 0 when nothing is relevant.
pub fn recall_at<T: Eq + Hash>(ranking: &[T], relevant: &HashSet<T>, k: usize) -> f64 {
    if relevant.is_empty() {
        return 0.0;
    }
    let found = distinct(ranking)
        .into_iter()
        .take(k)
        .filter(|id| relevant.contains(*id))
        .count();
    found as f64 / relevant.len() as f64
}

/// Normalised discounted cumulative gain at `k` with binary gains: DCG over the
/// first `k` results (gain 1 / log2(rank + 1)) divided by the DCG of an ideal
/// ranking that puts every relevant id first.
pub fn ndcg_at<T: Eq + Hash>(ranking: &[T], relevant: &HashSet<T>, k: usize) -> f64 {
    let discount = |i: usize| 1.0 / ((i + 2) as f64).log2();
    let dcg: f64 = distinct(ranking)
        .into_iter()
        .take(k)
        .enumerate()
        .filter(|(_, id)| relevant.contains(*id))
        .map(|(i, _)| discount(i))
        .sum();
    let ideal: f64 = (0..relevant.len().min(k)).map(discount).sum();
    if ideal == 0.0 {
        0.0
    } else {
        dcg / ideal
    }
}

/// The metrics of one query.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct QueryScores {
    pub p_at_1: f64,
    pub rr: f64,
    pub recall_at_5: f64,
    pub recall_at_10: f64,
    pub ndcg_at_10: f64,
}

impl QueryScores {
    pub fn of<T: Eq + Hash>(ranking: &[T], relevant: &HashSet<T>) -> QueryScores {
        QueryScores {
            p_at_1: precision_at_1(ranking, relevant),
            rr: reciprocal_rank(ranking, relevant),
            recall_at_5: recall_at(ranking, relevant, 5),
            recall_at_10: recall_at(ranking, relevant, 10),
            ndcg_at_10: ndcg_at(ranking, relevant, 10),
        }
    }
}

/// Means over a query set (MRR is the mean reciprocal rank).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub queries: usize,
    pub p_at_1: f64,
    pub mrr: f64,
    pub recall_at_5: f64,
    pub recall_at_10: f64,
    pub ndcg_at_10: f64,
}

impl Summary {
    /// The means; all zero for no queries.
    pub fn of(scores: &[QueryScores]) -> Summary {
        let n = scores.len();
        let mean = |f: fn(&QueryScores) -> f64| {
            if n == 0 {
                0.0
            } else {
                scores.iter().map(f).sum::<f64>() / n as f64
            }
        };
        Summary {
            queries: n,
            p_at_1: mean(|s| s.p_at_1),
            mrr: mean(|s| s.rr),
            recall_at_5: mean(|s| s.recall_at_5),
            recall_at_10: mean(|s| s.recall_at_10),
            ndcg_at_10: mean(|s| s.ndcg_at_10),
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Nearest-rank percentiles (the p-th percentile is the smallest sample with at
    /// least p% of the samples at or below it); all zero for no samples.
    pub fn of(samples: &[Duration]) -> Latency {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let n = ms.len();
        let pct = |p: f64| {
            if n == 0 {
                return 0.0;
            }
            let rank = ((p / 100.0) * n as f64).ceil() as usize;
            ms[rank.clamp(1, n) - 1]
        };
        Latency {
            count: n,
            p50_ms: pct(50.0),
            p95_ms: pct(95.0),
            p99_ms: pct(99.0),
            mean_ms: if n == 0 {
                0.0
            } else {
                ms.iter().sum::<f64>() / n as f64
            },
            max_ms: ms.last().copied().unwrap_or(0.0),
        }
    }
}

/// The mean of per-query values and the half-width of its normal 95%
/// interval (1.96 standard errors): with 50 queries a recall of 0.94 is known
/// to about ±0.01. `(NaN, NaN)` for no values; a margin of 0 for one.
pub fn mean_and_margin(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, 1.96 * (var / n).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_margin_by_hand() {
        // Mean 0.5; sample variance 1/3 over 4 values; 1.96 * sqrt(1/12).
        let (mean, margin) = mean_and_margin(&[0.0, 0.0, 1.0, 1.0]);
        close(mean, 0.5);
        close(margin, 1.96 * (1.0f64 / 12.0).sqrt());
        assert_eq!(mean_and_margin(&[0.7]), (0.7, 0.0));
        assert!(mean_and_margin(&[]).0.is_nan());
    }

    fn set(ids: &[&'static str]) -> HashSet<&'static str> {
        ids.iter().copied().collect()
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    }

    #[test]
    fn precision_and_reciprocal_rank() {
        let rel = set(&["c"]);
        assert_eq!(precision_at_1(&["c", "a"], &rel), 1.0);
        assert_eq!(precision_at_1(&["a", "c"], &rel), 0.0);
        assert_eq!(precision_at_1::<&str>(&[], &rel), 0.0);
        close(reciprocal_rank(&["a", "b", "c"], &rel), 1.0 / 3.0);
        close(reciprocal_rank(&["a", "b"], &rel), 0.0);
        // A repeat does not push the relevant id down.
        close(reciprocal_rank(&["a", "a", "c"], &rel), 0.5);
    }

    #[test]
    fn recall_counts_relevant_ids_in_the_first_k() {
        let rel = set(&["a", "d", "z"]);
        let ranking = ["a", "b", "c", "d", "e"];
        close(recall_at(&ranking, &rel, 1), 1.0 / 3.0);
        close(recall_at(&ranking, &rel, 3), 1.0 / 3.0);
        close(recall_at(&ranking, &rel, 4), 2.0 / 3.0);
        close(recall_at(&ranking, &rel, 10), 2.0 / 3.0);
        close(recall_at(&["a", "a", "a"], &set(&["a"]), 3), 1.0);
        close(recall_at(&ranking, &set(&[]), 3), 0.0);
    }

    #[test]
    fn ndcg_by_hand() {
        // Relevant at ranks 2 and 4 of 2 relevant: DCG = 1/log2(3) + 1/log2(5)
        // = 0.630930 + 0.430677 = 1.061606; ideal = 1 + 0.630930 = 1.630930.
        let rel = set(&["b", "d"]);
        let got = ndcg_at(&["a", "b", "c", "d"], &rel, 10);
        close(
            got,
            (1.0 / 3f64.log2() + 1.0 / 5f64.log2()) / (1.0 + 1.0 / 3f64.log2()),
        );
        assert!((got - 0.650921).abs() < 1e-6, "{got}");
        close(ndcg_at(&["b", "d", "c"], &rel, 10), 1.0);
        // At k = 1 with a miss first: 0; the ideal is capped at k.
        close(ndcg_at(&["a", "b"], &rel, 1), 0.0);
        close(ndcg_at(&["b", "a"], &rel, 1), 1.0);
    }

    #[test]
    fn summary_means_each_metric() {
        let rel = set(&["x"]);
        let scores = [
            QueryScores::of(&["x", "y"], &rel),
            QueryScores::of(&["y", "x"], &rel),
            QueryScores::of(&["y", "z"], &rel),
        ];
        let s = Summary::of(&scores);
        assert_eq!(s.queries, 3);
        close(s.p_at_1, 1.0 / 3.0);
        close(s.mrr, (1.0 + 0.5 + 0.0) / 3.0);
        close(s.recall_at_10, 2.0 / 3.0);
        close(s.ndcg_at_10, (1.0 + 1.0 / 3f64.log2()) / 3.0);
        assert_eq!(Summary::of(&[]).mrr, 0.0);
    }

    #[test]
    fn latency_percentiles_by_nearest_rank() {
        let samples: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        let l = Latency::of(&samples);
        assert_eq!(l.count, 20);
        close(l.p50_ms, 10.0);
        close(l.p95_ms, 19.0);
        close(l.p99_ms, 20.0);
        close(l.mean_ms, 10.5);
        close(l.max_ms, 20.0);
        let one = Latency::of(&[Duration::from_micros(1500)]);
        close(one.p50_ms, 1.5);
        close(one.p95_ms, 1.5);
        assert_eq!(Latency::of(&[]).p50_ms, 0.0);
    }
}
