//! `eval`: a query set against the index of the `index` stage it needs, in each
//! search mode: P@1, MRR, Recall@5/10, nDCG@10 and latency. The glue around
//! [`crate::eval::run::evaluate`]: params, the query set (its file enters the
//! key; an expected target the index lacks is an error naming the query). Given a
//! `dataset` stage too, it also ranks that dataset's test split CodeSearchNet-style
//! (each query against its own code and sampled distractors) with the index's model.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::compute::{Compute, ComputeParams};
use super::index::INDEX_DIR;
use super::{param_error, Arity, Configured, Dep, InputRole, Kind, Output, Stage, StageContext};
use crate::dataset::PAIRS_FILE;
use crate::eval::csn::{evaluate_pairs, CsnOptions};
use crate::eval::metrics::Summary;
use crate::eval::queries::QuerySet;
use crate::eval::run::{evaluate, CsnEval, EvalOptions};
use crate::pipeline::{ConfigError, StageSpec};
use crate::search::mv::SearchParams;
use crate::search::{Index, Mode, ModelEmbedder, SearchOptions};
use crate::train::data::read_pairs;

pub const KIND: Kind = Kind {
    name: "eval",
    version: 2,
    summary: "code-search quality of an index: P@1, MRR, R@5/10, nDCG@10, latency per mode",
    template: include_str!("../../stages/eval.toml"),
    inputs: &[
        InputRole {
            role: "index",
            kinds: &["index"],
            arity: Arity::One,
        },
        InputRole {
            role: "dataset",
            kinds: &["dataset"],
            arity: Arity::Optional,
        },
    ],
    outputs: &[
        Output {
            file: EVAL_JSON,
            what: "per mode: the means, latency, and every query's ranking and scores; \
                   the CodeSearchNet-style figures of the dataset split, when given",
        },
        Output {
            file: "metrics.json",
            what: "<mode>_p_at_1, <mode>_mrr, ... for every mode (and csn_p_at_1, csn_mrr, ...)",
        },
    ],
    configure,
};

/// The full report of an eval artifact.
pub const EVAL_JSON: &str = "eval.json";

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Params {
    /// The query set (TOML), relative to the pipeline file.
    pub queries: String,
    /// Hits ranked per query.
    #[serde(default = "default_k")]
    pub k: usize,
    #[serde(default = "all_modes")]
    pub modes: Vec<Mode>,
    /// The semantic share of weighted fusion (BM25 gets the rest).
    #[serde(default = "default_weight")]
    pub semantic_weight: f32,
    /// Hits each retriever contributes to a fusion.
    #[serde(default = "default_depth")]
    pub fusion_depth: usize,
    /// The multi-vector engine: centroids probed per query token, documents
    /// kept by approximate MaxSim, documents reranked exactly (defaults: the
    /// engine's, 4 / 256 / 32). Recall against exact MaxSim grows with
    /// `rerank` (BENCHMARKS.md: 48 reaches 0.95 on real code at 128 dims).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nprobe: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerank: Option<usize>,
    /// Rerank over the index's full vectors where it keeps them
    /// (`keep_vectors`), rather than over the decompressed codes. Default:
    /// true; written as true, an index without them is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_vectors: Option<bool>,
    #[serde(default = "default_query_tokens")]
    pub max_query_tokens: usize,
    /// The split of the `dataset` input ranked CodeSearchNet-style.
    #[serde(default = "default_csn_split")]
    pub csn_split: String,
    /// Distractors per query in that ranking (at most the split's other pairs).
    #[serde(default = "default_csn_distractors")]
    pub csn_distractors: usize,
    /// At most this many of the split's pairs (in file order) are ranked.
    #[serde(default = "default_csn_pairs")]
    pub csn_max_pairs: usize,
    #[serde(flatten)]
    pub compute: ComputeParams,
}

/// `use_vectors = true` written in the params needs an index that kept its
/// vectors (the default applies only where it did).
fn check_use_vectors(p: &Params, index: &Index) -> Result<()> {
    if p.use_vectors == Some(true) && !index.manifest().vectors {
        bail!(
            "`use_vectors` reranks over the index's full vectors, and this index keeps none: \
             set keep_vectors = true on the index stage, or leave `use_vectors` out"
        );
    }
    Ok(())
}

/// The engine's settings, the params' where written.
fn engine_params(p: &Params) -> SearchParams {
    let d = SearchParams::default();
    SearchParams {
        nprobe: p.nprobe.unwrap_or(d.nprobe),
        candidates: p.candidates.unwrap_or(d.candidates),
        rerank: p.rerank.unwrap_or(d.rerank),
        use_vectors: p.use_vectors.unwrap_or(d.use_vectors),
        ..d
    }
}

fn default_k() -> usize {
    SearchOptions::default().k
}
fn all_modes() -> Vec<Mode> {
    Mode::ALL.to_vec()
}
fn default_weight() -> f32 {
    SearchOptions::default().semantic_weight
}
fn default_depth() -> usize {
    SearchOptions::default().fusion_depth
}
fn default_query_tokens() -> usize {
    32
}
fn default_csn_split() -> String {
    "test".into()
}
fn default_csn_distractors() -> usize {
    CsnOptions::default().distractors
}
fn default_csn_pairs() -> usize {
    1000
}

struct EvalStage {
    params: Params,
    queries: QuerySet,
    compute: Compute,
}

fn configure(spec: &StageSpec) -> Result<Configured, ConfigError> {
    let params: Params = super::decode(spec)?;
    super::at_least_one(spec, "k", Some(params.k))?;
    if !["train", "eval", "test"].contains(&params.csn_split.as_str()) {
        return Err(param_error(
            spec,
            &["csn_split"],
            "`csn_split` must be \"train\", \"eval\" or \"test\"",
        ));
    }
    if params.csn_max_pairs < 2 || params.csn_distractors == 0 {
        return Err(param_error(
            spec,
            &["csn_max_pairs"],
            "`csn_max_pairs` must be at least 2 and `csn_distractors` at least 1",
        ));
    }
    if params.modes.is_empty() {
        return Err(param_error(spec, &["modes"], "`modes` is empty"));
    }
    for (name, value) in [
        ("nprobe", params.nprobe),
        ("candidates", params.candidates),
        ("rerank", params.rerank),
    ] {
        super::at_least_one(spec, name, value)?;
    }
    if !(0.0..=1.0).contains(&params.semantic_weight) {
        return Err(param_error(
            spec,
            &["semantic_weight"],
            "`semantic_weight` must be in [0, 1]",
        ));
    }
    let path: PathBuf = spec.dir.join(&params.queries);
    let queries =
        QuerySet::load(&path).map_err(|e| param_error(spec, &["queries"], format!("{e:#}")))?;
    let compute = Compute::configure(spec, &params.compute)?;
    let dep = Dep {
        name: params.queries.clone(),
        path,
        origin: spec.params.origin_at(&["queries".to_string()]).clone(),
    };
    let stage = EvalStage {
        params: params.clone(),
        queries,
        compute,
    };
    Ok(Configured::new(spec, &params, stage)?
        .with_deps(vec![dep])
        .with_compute(&compute))
}

impl Stage for EvalStage {
    fn run(&self, ctx: &StageContext<'_>) -> Result<()> {
        let index = Index::open(&ctx.inputs.one("index")?.file(INDEX_DIR)?)?;
        let p = &self.params;
        check_use_vectors(p, &index)?;
        let opts = EvalOptions {
            modes: p.modes.clone(),
            search: SearchOptions {
                k: p.k,
                semantic_weight: p.semantic_weight,
                fusion_depth: p.fusion_depth,
                mv: engine_params(p),
                ..SearchOptions::default()
            },
        };
        let dataset = ctx.inputs.optional("dataset");
        let pairs = match dataset {
            Some(input) => {
                let path = input.file(PAIRS_FILE)?;
                let mut pairs = read_pairs(&path, &p.csn_split)?;
                if pairs.len() < 2 {
                    bail!(
                        "dataset stage `{}` has {} pairs in its {:?} split; the \
                         CodeSearchNet-style ranking needs at least 2 (give the split a \
                         share in the dataset's `split`, or set `csn_split`)",
                        input.stage,
                        pairs.len(),
                        p.csn_split
                    );
                }
                pairs.truncate(p.csn_max_pairs);
                pairs
            }
            None => Vec::new(),
        };
        let needs_model = !pairs.is_empty() || p.modes.iter().any(|m| *m != Mode::Bm25);
        let report = {
            let _mlx = self.compute.enter()?;
            let embedder = if needs_model {
                let model = Path::new(&index.manifest().model);
                Some(
                    ModelEmbedder::open(model, 512, p.max_query_tokens).with_context(|| {
                        format!("loading the index's model {}", model.display())
                    })?,
                )
            } else {
                None
            };
            let embedder = embedder.as_ref().map(|e| e as &dyn crate::search::Embedder);
            let mut report = evaluate(&index, &self.queries, embedder, &opts, ctx.cancel)?;
            if let (Some(input), Some(embedder)) = (dataset, embedder) {
                let queries: Vec<&str> = pairs.iter().map(|x| x.query.as_str()).collect();
                let codes: Vec<&str> = pairs.iter().map(|x| x.code.as_str()).collect();
                let csn = CsnOptions {
                    distractors: p.csn_distractors,
                    ..CsnOptions::default()
                };
                report.csn = Some(CsnEval {
                    dataset: input.stage.clone(),
                    split: p.csn_split.clone(),
                    report: evaluate_pairs(&queries, &codes, embedder, &csn, ctx.cancel)?,
                });
            }
            report
        };
        let mut log = ctx.log.try_clone()?;
        let mut metrics = serde_json::Map::new();
        for m in &report.modes {
            let tail = format!("p50 {:.2} ms", m.latency.p50_ms);
            record(&mut log, &mut metrics, m.mode.name(), &m.summary, &tail)?;
        }
        if let Some(csn) = &report.csn {
            let tail = format!(
                "({} pairs of {}'s {} split, {} distractors each)",
                csn.report.pairs, csn.dataset, csn.split, csn.report.distractors
            );
            record(&mut log, &mut metrics, "csn", &csn.report.summary, &tail)?;
        }
        std::fs::write(
            ctx.out_dir.join(EVAL_JSON),
            serde_json::to_string_pretty(&report)? + "\n",
        )
        .context("writing eval.json")?;
        std::fs::write(
            ctx.out_dir.join("metrics.json"),
            serde_json::Value::Object(metrics).to_string(),
        )
        .context("writing metrics.json")?;
        Ok(())
    }
}

/// One line of the stage log, and `<name>_<metric>` entries of metrics.json.
fn record(
    log: &mut impl Write,
    metrics: &mut serde_json::Map<String, serde_json::Value>,
    name: &str,
    s: &Summary,
    tail: &str,
) -> Result<()> {
    writeln!(
        log,
        "{name:<16} P@1 {:.3}  MRR {:.3}  R@5 {:.3}  R@10 {:.3}  nDCG@10 {:.3}  {tail}",
        s.p_at_1, s.mrr, s.recall_at_5, s.recall_at_10, s.ndcg_at_10,
    )?;
    for (metric, value) in [
        ("p_at_1", s.p_at_1),
        ("mrr", s.mrr),
        ("recall_at_5", s.recall_at_5),
        ("recall_at_10", s.recall_at_10),
        ("ndcg_at_10", s.ndcg_at_10),
    ] {
        metrics.insert(format!("{name}_{metric}"), value.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configured(own: &str) -> Result<Configured, String> {
        let base = "queries = \"datasets/xtr-pipe-queries.toml\"\ndevice = \"cpu\"\n";
        let spec =
            crate::stages::template_spec(&KIND, &format!("{base}{own}")).map_err(|e| e.render())?;
        configure(&spec).map_err(|e| e.render())
    }

    /// The engine's settings reach the search, enter the key only when
    /// written, and a zero is refused naming the param.
    #[test]
    fn engine_settings_are_checked_keyed_when_written_and_used() {
        let plain = configured("").unwrap();
        assert!(plain.params.get("rerank").is_none(), "{}", plain.params);
        let tuned = configured("rerank = 48\nnprobe = 2\n").unwrap();
        assert_ne!(tuned.params, plain.params);
        let err = configured("rerank = 0\n").err().unwrap_or_default();
        assert!(err.contains("`rerank` must be at least 1"), "{err}");
        let spec = crate::stages::template_spec(
            &KIND,
            "queries = \"datasets/xtr-pipe-queries.toml\"\nrerank = 48\nnprobe = 2\n",
        )
        .unwrap();
        let params: Params = crate::stages::decode(&spec).unwrap();
        let mv = engine_params(&params);
        assert_eq!((mv.nprobe, mv.candidates, mv.rerank), (2, 256, 48));
        assert!(mv.use_vectors);
        let refined = configured("use_vectors = false\n").unwrap();
        assert_ne!(
            refined.params, plain.params,
            "use_vectors = false is a setting"
        );
    }

    /// A written `use_vectors = true` is refused for an index without them
    /// (a pipeline must not silently measure without them); the default
    /// applies to either.
    #[test]
    fn use_vectors_written_needs_an_index_that_kept_its_vectors() {
        use crate::cancel::CancelToken;
        use crate::dataset::Lang;
        use crate::search::{collect, BuildOptions, CollectOptions, HashEmbedder, SourceRoot};
        let roots = [SourceRoot {
            path: "src/search/fusion.rs".into(),
            prefix: String::new(),
            langs: vec![Lang::Rust],
            exclude: Vec::new(),
        }];
        let units = collect(&roots, &CollectOptions::default(), &CancelToken::new()).unwrap();
        let out = tempfile::tempdir().unwrap();
        let params = |own: &str| -> Params {
            let text = format!("queries = \"datasets/xtr-pipe-queries.toml\"\n{own}");
            crate::stages::decode(&crate::stages::template_spec(&KIND, &text).unwrap()).unwrap()
        };
        for keep_vectors in [false, true] {
            let opts = BuildOptions {
                keep_vectors,
                ..BuildOptions::default()
            };
            let dir = out.path().join(format!("kept-{keep_vectors}"));
            let emb = HashEmbedder::new(8);
            let (index, _) =
                Index::build(&dir, units.clone(), &emb, &opts, &CancelToken::new()).unwrap();
            let written = check_use_vectors(&params("use_vectors = true\n"), &index);
            assert_eq!(written.is_ok(), keep_vectors, "{written:?}");
            if let Err(e) = written {
                assert!(e.to_string().contains("keep_vectors = true"), "{e}");
            }
            assert!(check_use_vectors(&params(""), &index).is_ok());
            assert!(check_use_vectors(&params("use_vectors = false\n"), &index).is_ok());
        }
    }
}
