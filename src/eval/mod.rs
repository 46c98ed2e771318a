//! Evaluation of code search: [`metrics`] (P@1, MRR, Recall@k, nDCG@k, latency
//! percentiles), [`queries`] (query sets in TOML, their targets checked against
//! the index), [`run`] (a query set against an index, per search mode) and
//! [`csn`] (CodeSearchNet-style: each query against its code and sampled
//! distractors).

pub mod csn;
pub mod metrics;
pub mod queries;
pub mod run;

pub use csn::{evaluate_pairs, CsnOptions, CsnReport};
pub use metrics::{mean_and_margin, Latency, QueryScores, Summary};
pub use queries::{Query, QuerySet};
pub use run::{evaluate, EvalOptions, EvalReport, ModeReport, QueryOutcome};
