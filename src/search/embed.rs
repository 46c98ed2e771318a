//! The [`Embedder`] seam between the index and a model: text in, per-token unit
//! vectors out. [`ModelEmbedder`] is the real one (an HF-layout model directory
//! through [`crate::model::embed_texts`]); [`HashEmbedder`] is a model-free
//! stand-in for tests and benchmarks that counts what it embeds.

use std::cell::Cell;
use std::path::Path;

use anyhow::{Context, Result};

use super::maxsim::TokenVectors;
use super::tokenize::code_terms;
use crate::model::{self, LoadOptions, ModelDir, MultiVectorModel};

/// Turns texts into per-token embeddings of one dimension.
pub trait Embedder {
    /// The embedding dimension.
    fn dim(&self) -> usize;
    /// What the vectors come from (recorded in the index; another name on update
    /// means a full rebuild).
    fn name(&self) -> String;
    /// One matrix of token vectors per document text.
    fn embed_documents(&self, texts: &[&str]) -> Result<Vec<TokenVectors>>;
    /// The query's token vectors.
    fn embed_query(&self, text: &str) -> Result<TokenVectors>;
}

/// A multi-vector model loaded from its directory.
pub struct ModelEmbedder {
    model: MultiVectorModel,
    doc_tokenizer: tokenizers::Tokenizer,
    query_tokenizer: tokenizers::Tokenizer,
    vocab_size: i32,
    name: String,
}

impl ModelEmbedder {
    /// Loads the model in `dir` (f32): documents truncated to `doc_max_len`
    /// tokens, queries to `query_max_len`.
    pub fn open(dir: &Path, doc_max_len: usize, query_max_len: usize) -> Result<ModelEmbedder> {
        let md = ModelDir::open(dir)?;
        let model = md.load_model(&LoadOptions::default())?;
        Ok(ModelEmbedder {
            doc_tokenizer: md.load_tokenizer(doc_max_len)?,
            query_tokenizer: md.load_tokenizer(query_max_len)?,
            vocab_size: md.vocab_size(),
            name: dir.display().to_string(),
            model,
        })
    }

    fn run(&self, tokenizer: &tokenizers::Tokenizer, texts: &[&str]) -> Result<Vec<TokenVectors>> {
        let dim = self.dim();
        model::embed_texts(&self.model, tokenizer, self.vocab_size, texts)?
            .into_iter()
            .map(|(_, vectors)| {
                let data = vectors
                    .to_vec::<f32>()
                    .context("copying embeddings out of MLX")?;
                TokenVectors::new(dim, data)
            })
            .collect()
    }
}

impl Embedder for ModelEmbedder {
    fn dim(&self) -> usize {
        self.model.dim().max(0) as usize
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn embed_documents(&self, texts: &[&str]) -> Result<Vec<TokenVectors>> {
        self.run(&self.doc_tokenizer, texts)
    }

    fn embed_query(&self, text: &str) -> Result<TokenVectors> {
        self.run(&self.query_tokenizer, &[text])?
            .pop()
            .context("the model returned no embedding for the query")
    }
}

/// A model-free embedder: each code term of a text becomes one unit vector drawn
/// from the term's hash, so MaxSim with it is bag-of-words matching. For tests
/// and benchmarks; it counts the document texts it embeds.
#[derive(Debug)]
pub struct HashEmbedder {
    dim: usize,
    name: String,
    texts: Cell<usize>,
}

impl HashEmbedder {
    /// `dim` at most 32 (one hash byte per dimension).
    pub fn new(dim: usize) -> HashEmbedder {
        HashEmbedder {
            dim: dim.clamp(1, 32),
            name: "hash".to_string(),
            texts: Cell::new(0),
        }
    }

    /// The same embedder under another name (another "model").
    pub fn named(mut self, name: &str) -> HashEmbedder {
        self.name = name.to_string();
        self
    }

    /// Document texts embedded so far.
    pub fn texts_embedded(&self) -> usize {
        self.texts.get()
    }

    fn vectors(&self, text: &str) -> Result<TokenVectors> {
        let mut data = Vec::new();
        for term in code_terms(text).into_iter().take(128) {
            let h = blake3::hash(term.as_bytes());
            data.extend(h.as_bytes()[..self.dim].iter().map(|&b| b as f32 - 127.5));
        }
        if data.is_empty() {
            data = vec![1.0; self.dim];
        }
        Ok(TokenVectors::new(self.dim, data)?.normalized())
    }
}

impl Embedder for HashEmbedder {
    fn dim(&self) -> usize {
        self.dim
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn embed_documents(&self, texts: &[&str]) -> Result<Vec<TokenVectors>> {
        self.texts.set(self.texts.get() + texts.len());
        texts.iter().map(|t| self.vectors(t)).collect()
    }

    fn embed_query(&self, text: &str) -> Result<TokenVectors> {
        self.vectors(text)
    }
}
