//! xtr-pipe: a declarative experiment-pipeline runner. A TOML file describes a DAG
//! of stages; each stage's output is stored under the blake3 hash of everything
//! that determines it, so a run recomputes only what changed.
//!
//! Modules, each with one concern, lowest layer first: [`affinity`] (binding
//! processes to CPUs), [`atomic`] (files written whole or not at all), [`cancel`] (cooperative cancellation),
//! [`progress`] (progress bars), [`pipeline`] (the TOML schema and DAG),
//! [`store`] (content-addressed artifacts, history), [`mlx`] (our binding over
//! MLX's C++ API), [`model`] (T5/BERT encoders, heads, LoRA, merge),
//! [`dataset`] (code-search pairs from source trees), [`train`] (loss,
//! optimizer, the train step and loop), [`search`] (BM25, the multi-vector
//! index, fusion), [`eval`] (retrieval metrics, query sets), [`report`]
//! (markdown and SVG rendering), [`stages`] (the built-in stage kinds),
//! [`exec`] (planning and scheduling), [`cli`] (the commands).

pub mod affinity;
pub mod atomic;
pub mod cancel;
pub mod cli;
pub mod dataset;
pub mod eval;
pub mod exec;
pub mod mlx;
pub mod model;
pub mod pipeline;
pub mod progress;
pub mod report;
pub mod search;
pub mod stages;
pub mod store;
pub mod train;
