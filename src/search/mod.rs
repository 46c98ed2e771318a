//! Code search: [`tokenize`] + [`bm25`] (tantivy), [`fusion`] (rank fusion),
//! [`maxsim`] (exact late interaction).

pub mod bm25;
pub mod fusion;
pub mod maxsim;
pub mod tokenize;
