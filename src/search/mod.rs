//! Code search: [`tokenize`] + [`bm25`] (tantivy), [`codec`] + [`mv`] (the
//! compressed multi-vector index), [`maxsim`] (exact late interaction),
//! [`fusion`] (rank fusion), [`synth`] (synthetic embeddings for tests and benches).

pub mod bm25;
pub mod codec;
pub mod fusion;
pub mod maxsim;
pub mod mv;
pub mod synth;
pub mod tokenize;
