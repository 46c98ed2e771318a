//! Code search: [`tokenize`] (code-aware terms), [`fusion`] (rank fusion),
//! [`maxsim`] (exact late interaction).

pub mod fusion;
pub mod maxsim;
pub mod tokenize;
