//! Running a query set against an index: per search mode, every query's top-k
//! keys, its metrics, their means and the latency percentiles; serialisable as
//! the `eval.json` a report reads. Targets are checked against the index first.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use super::csn::CsnReport;
use super::metrics::{Latency, QueryScores, Summary};
use super::queries::QuerySet;
use crate::cancel::CancelToken;
use crate::search::{Embedder, Index, Mode, SearchOptions};

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub modes: Vec<Mode>,
    /// Everything but the mode (its `k` is the depth ranked, default 10).
    pub search: SearchOptions,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            modes: Mode::ALL.to_vec(),
            search: SearchOptions::default(),
        }
    }
}

/// One query's outcome in one mode.
#[derive(Debug, Clone, Serialize)]
pub struct QueryOutcome {
    pub text: String,
    pub expect: Vec<String>,
    /// `path::symbol` of the hits, best first.
    pub ranked: Vec<String>,
    pub scores: QueryScores,
    pub millis: f64,
}

/// One mode over the whole set.
#[derive(Debug, Clone, Serialize)]
pub struct ModeReport {
    pub mode: Mode,
    pub summary: Summary,
    pub latency: Latency,
    pub queries: Vec<QueryOutcome>,
}

/// Everything `eval.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub model: String,
    pub units: usize,
    pub k: usize,
    pub modes: Vec<ModeReport>,
    /// The CodeSearchNet-style ranking of a dataset split, when one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csn: Option<CsnEval>,
}

/// A dataset split ranked CodeSearchNet-style with the index's model.
#[derive(Debug, Clone, Serialize)]
pub struct CsnEval {
    /// The stage whose pairs were ranked.
    pub dataset: String,
    pub split: String,
    #[serde(flatten)]
    pub report: CsnReport,
}

/// Runs `set` against `index` in each mode. An expected target the index does not
/// hold is an error naming the query; semantic and hybrid modes need `embedder`.
pub fn evaluate(
    index: &Index,
    set: &QuerySet,
    embedder: Option<&dyn Embedder>,
    opts: &EvalOptions,
    cancel: &CancelToken,
) -> Result<EvalReport> {
    let keys: Vec<String> = index.units().iter().map(|u| u.key()).collect();
    let known: HashSet<&str> = keys.iter().map(String::as_str).collect();
    set.check_targets(|t| known.contains(t), keys.iter().map(String::as_str))?;
    let mut modes = Vec::new();
    for &mode in &opts.modes {
        let search = SearchOptions {
            mode,
            ..opts.search
        };
        let mut queries = Vec::new();
        let mut times = Vec::new();
        for q in &set.queries {
            cancel.check()?;
            let started = Instant::now();
            let hits = index.search(&q.text, embedder, &search)?;
            let took = started.elapsed();
            times.push(took);
            let ranked: Vec<String> = hits.iter().map(|h| h.key()).collect();
            let relevant: HashSet<String> = q.expect.iter().cloned().collect();
            queries.push(QueryOutcome {
                text: q.text.clone(),
                expect: q.expect.clone(),
                scores: QueryScores::of(&ranked, &relevant),
                ranked,
                millis: took.as_secs_f64() * 1e3,
            });
        }
        let scores: Vec<QueryScores> = queries.iter().map(|q| q.scores).collect();
        modes.push(ModeReport {
            mode,
            summary: Summary::of(&scores),
            latency: Latency::of(&times),
            queries,
        });
    }
    Ok(EvalReport {
        model: index.manifest().model.clone(),
        units: index.units().len(),
        k: opts.search.k,
        modes,
        csn: None,
    })
}

/// The mean metrics of each mode by name, for a compact `metrics.json`.
pub fn summaries(report: &EvalReport) -> HashMap<&'static str, Summary> {
    report
        .modes
        .iter()
        .map(|m| (m.mode.name(), m.summary))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Lang;
    use crate::search::units::file_units;
    use crate::search::{BuildOptions, HashEmbedder};

    const CODE: &str = "\
/// Read the whole configuration file.
pub fn load_config(path: &str) -> String {
    std::fs::read_to_string(path)
}

/// Sum a list of prices.
pub fn total_price(prices: &[u32]) -> u32 {
    prices.iter().sum()
}
";

    #[test]
    fn evaluates_every_mode_and_rejects_unknown_targets() {
        let grammar = crate::dataset::lang::grammar(Lang::Rust)
            .map(crate::dataset::extract::Compiled::new)
            .transpose()
            .unwrap();
        let units = file_units(Lang::Rust, grammar.as_ref(), "src/shop.rs", CODE, 50);
        let out = tempfile::tempdir().unwrap();
        let emb = HashEmbedder::new(16);
        let cancel = CancelToken::new();
        let (index, _) = Index::build(
            &out.path().join("i"),
            units,
            &emb,
            &BuildOptions::default(),
            &cancel,
        )
        .unwrap();
        let set = QuerySet::parse(
            "[[query]]\ntext = \"total price sum\"\nexpect = [\"src/shop.rs::total_price\"]\n\
             [[query]]\ntext = \"load config\"\nexpect = [\"src/shop.rs::load_config\"]\n",
            "q.toml",
        )
        .unwrap();
        let report = evaluate(&index, &set, Some(&emb), &EvalOptions::default(), &cancel).unwrap();
        assert_eq!(report.modes.len(), 4);
        for m in &report.modes {
            assert_eq!(m.summary.queries, 2);
            assert_eq!(m.summary.p_at_1, 1.0, "{:?}: {:?}", m.mode, m.queries);
            assert_eq!(m.summary.mrr, 1.0);
            assert_eq!(m.latency.count, 2);
        }
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["modes"][2]["mode"], "hybrid_rrf");
        assert_eq!(summaries(&report)["bm25"].p_at_1, 1.0);

        let typo = QuerySet::parse(
            "[[query]]\ntext = \"load config\"\nexpect = [\"src/shop.rs::load_conf\"]\n",
            "q.toml",
        )
        .unwrap();
        let err = evaluate(&index, &typo, Some(&emb), &EvalOptions::default(), &cancel)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("query 1") && err.contains("load config"),
            "{err}"
        );
        assert!(
            err.contains("did you mean `src/shop.rs::load_config`"),
            "{err}"
        );
    }

    #[test]
    fn the_shipped_query_set_names_units_of_this_repository() {
        use crate::search::{collect, CollectOptions, SourceRoot};
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let set = QuerySet::load(&root.join("datasets/xtr-pipe-queries.toml")).unwrap();
        assert!(set.queries.len() >= 40);
        assert!(set.queries.iter().all(|q| !q.why.is_empty()));
        let roots = [SourceRoot {
            path: root.join("src"),
            prefix: "src".to_string(),
            langs: vec![Lang::Rust],
            exclude: Vec::new(),
        }];
        let units = collect(&roots, &CollectOptions::default(), &CancelToken::new()).unwrap();
        let keys: Vec<String> = units.iter().map(|u| u.key()).collect();
        let known: HashSet<&str> = keys.iter().map(String::as_str).collect();
        set.check_targets(|t| known.contains(t), keys.iter().map(String::as_str))
            .unwrap();
    }
}
