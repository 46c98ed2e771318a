//! Code search: [`tokenize`] (code-aware terms), [`fusion`] (rank fusion).

pub mod fusion;
pub mod tokenize;
