//! Fusing ranked lists from several retrievers (BM25, multi-vector) into one:
//! reciprocal rank fusion, which needs only ranks, and a weighted sum of min-max
//! normalised scores. Ties break by id so results are deterministic.

use std::collections::HashMap;

/// The `k` of reciprocal rank fusion (Cormack et al. 2009).
pub const RRF_K: f32 = 60.0;

/// One retriever's results, best first: `(id, score)`.
pub type Ranked = [(u32, f32)];

/// `score(d) = Σ over lists holding d of 1 / (k + rank)`, rank 1-based. Returns
/// every id of any list, best first.
pub fn reciprocal_rank(lists: &[&Ranked], k: f32) -> Vec<(u32, f32)> {
    let mut fused: HashMap<u32, f32> = HashMap::new();
    for list in lists {
        for (rank, &(id, _)) in list.iter().enumerate() {
            *fused.entry(id).or_default() += 1.0 / (k + (rank + 1) as f32);
        }
    }
    sorted(fused)
}

/// `score(d) = Σ weight_l · norm_l(d)` where `norm_l` maps list `l`'s scores
/// linearly onto [0, 1] (its best 1, its worst 0; all 1 when they are equal) and
/// an id absent from a list gets 0 there.
pub fn weighted(lists: &[(&Ranked, f32)]) -> Vec<(u32, f32)> {
    let mut fused: HashMap<u32, f32> = HashMap::new();
    for &(list, weight) in lists {
        let (lo, hi) = list
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &(_, s)| {
                (lo.min(s), hi.max(s))
            });
        for &(id, score) in list.iter() {
            let norm = if hi > lo {
                (score - lo) / (hi - lo)
            } else {
                1.0
            };
            *fused.entry(id).or_default() += weight * norm;
        }
    }
    sorted(fused)
}

fn sorted(fused: HashMap<u32, f32>) -> Vec<(u32, f32)> {
    let mut out: Vec<(u32, f32)> = fused.into_iter().collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f32) {
        assert!((a - b).abs() < 1e-6, "{a} != {b}");
    }

    #[test]
    fn rrf_by_hand() {
        // bm25: 7, 3, 9; semantic: 3, 5.
        // 3: 1/62 + 1/61 = 0.0325225; 7: 1/61 = 0.0163934; 5: 1/62 = 0.0161290;
        // 9: 1/63 = 0.0158730.
        let bm25: &Ranked = &[(7, 12.0), (3, 8.0), (9, 1.0)];
        let sem: &Ranked = &[(3, 0.9), (5, 0.8)];
        let fused = reciprocal_rank(&[bm25, sem], RRF_K);
        let ids: Vec<u32> = fused.iter().map(|p| p.0).collect();
        assert_eq!(ids, [3, 7, 5, 9]);
        close(fused[0].1, 1.0 / 62.0 + 1.0 / 61.0);
        close(fused[1].1, 1.0 / 61.0);
        close(fused[3].1, 1.0 / 63.0);
    }

    #[test]
    fn rrf_ties_break_by_id() {
        let a: &Ranked = &[(4, 1.0)];
        let b: &Ranked = &[(2, 1.0)];
        let fused = reciprocal_rank(&[a, b], RRF_K);
        assert_eq!(fused.iter().map(|p| p.0).collect::<Vec<_>>(), [2, 4]);
    }

    #[test]
    fn weighted_fusion_by_hand() {
        // bm25 scores 10, 6, 2 -> 1, 0.5, 0; semantic 0.9, 0.7 -> 1, 0.
        // weights 0.3 bm25, 0.7 semantic:
        // 1: 0.3·1 + 0.7·0 = 0.3; 2: 0.3·0.5 + 0.7·1 = 0.85; 3: 0.3·0 = 0.
        let bm25: &Ranked = &[(1, 10.0), (2, 6.0), (3, 2.0)];
        let sem: &Ranked = &[(2, 0.9), (1, 0.7)];
        let fused = weighted(&[(bm25, 0.3), (sem, 0.7)]);
        assert_eq!(fused.iter().map(|p| p.0).collect::<Vec<_>>(), [2, 1, 3]);
        close(fused[0].1, 0.85);
        close(fused[1].1, 0.3);
        close(fused[2].1, 0.0);
    }

    #[test]
    fn a_list_of_equal_scores_normalises_to_one() {
        let flat: &Ranked = &[(5, 3.0), (6, 3.0)];
        let fused = weighted(&[(flat, 0.5)]);
        assert_eq!(fused, [(5, 0.5), (6, 0.5)]);
        assert!(weighted(&[]).is_empty());
    }
}
