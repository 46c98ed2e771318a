//! Code search over an index directory of code units.
//!
//! - [`units`]: what is indexed — the documented items the dataset extractors find
//!   (path, symbol, line span, doc, code, content hash), line chunks of files
//!   without any.
//! - [`tokenize`] + [`bm25`]: BM25 with tantivy over symbol, doc and code, with a
//!   code-aware tokenizer (camelCase, snake_case, paths; whole identifiers kept).
//! - [`codec`] + [`mv`]: the compressed multi-vector index — k-means centroids
//!   (MLX) plus 2/4-bit residuals, memory-mapped, searched by probing centroids,
//!   scoring with missing-similarity imputation (WARP) and reranking exactly.
//! - [`vectors`]: the full token vectors an index may keep beside the codes
//!   (f16, memory-mapped), for an exact rerank.
//! - [`maxsim`]: exact MaxSim, the ground truth; [`fusion`]: RRF and weighted fusion.
//! - [`embed`]: the [`Embedder`] seam (a real model, or a test fake).
//! - [`index`]: [`Index`] ties them together: build, incremental update, open,
//!   search in four [`Mode`]s.
//! - [`shard`]: the embedding pass split across processes (which units each
//!   embeds, the shard files, the gather back into unit order).
//!
//! Knows nothing of training; [`synth`] makes synthetic embeddings for tests and
//! benchmarks.

pub mod bm25;
pub mod codec;
pub mod embed;
pub mod fusion;
pub mod index;
pub mod maxsim;
pub mod mv;
pub mod project;
pub mod shard;
pub mod synth;
pub mod tokenize;
pub mod units;
pub mod vectors;

pub use embed::{Embedder, HashEmbedder, ModelEmbedder};
pub use index::{
    embed_units, BuildOptions, BuildStats, Embedded, Hit, Index, Manifest, Mode, SearchOptions,
};
pub use maxsim::TokenVectors;
pub use units::{collect, CollectOptions, SourceRoot, Unit};
