//! Code search. [`tokenize`]: the code-aware tokenizer shared by BM25 and tests.

pub mod tokenize;
