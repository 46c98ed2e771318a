//! Evaluation of code search: [`metrics`] (P@1, MRR, Recall@k, nDCG@k, latency
//! percentiles), [`queries`] (query sets in TOML, their targets checked against
//! the index) and [`run`] (a query set against an index, per search mode).

pub mod metrics;
pub mod queries;
pub mod run;

pub use metrics::{Latency, QueryScores, Summary};
pub use queries::{Query, QuerySet};
pub use run::{evaluate, EvalOptions, EvalReport, ModeReport, QueryOutcome};
