//! Evaluation of code search: [`metrics`] (P@1, MRR, Recall@k, nDCG@k, latency
//! percentiles) and [`queries`] (query sets in TOML, their targets checked against
//! the index).

pub mod metrics;
pub mod queries;

pub use metrics::{Latency, QueryScores, Summary};
pub use queries::{Query, QuerySet};
