//! Models: T5 and BERT encoders, the multi-vector head, LoRA, and
//! [`ModelDir`], which loads them from an HF-layout directory
//! (`config.json`, `model.safetensors` or its shards, `tokenizer.json`,
//! sentence-transformers `modules.json` + `*_Dense/`).
//!
//! Every load failure names the file (and tensor) at fault; nothing here
//! panics on bad input.
//!
//! Conventions: weights load as f32 by default ([`LoadOptions::dtype`] picks
//! another float type); `input_ids` / `attention_mask` are `[batch, seq]`
//! integer arrays (1 = real token); BERT token types are all 0. Encoder
//! outputs at padded positions are computed as HF does (they attend over the
//! real keys only); [`MultiVectorModel`] zeroes its embeddings there.
//! Dropout is off unless a forward pass is given a training [`Ctx`].

pub mod bench;
pub mod bert;
pub mod capacity;
pub mod head;
pub mod layers;
pub mod lora;
pub mod merge;
pub mod random;
pub mod resolve;
pub mod t5;
pub mod weights;

#[cfg(test)]
mod gpu_tests;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationParams};

pub use bert::{BertConfig, BertEncoder};
pub use head::{Dense, DenseActivation, Encoder, Head, MultiVectorModel, TokenEmbeddings};
pub use layers::{Ctx, Linear};
pub use lora::{LinearLayer, LoraConfig, LoraLinear, LoraTarget};
pub use t5::{T5Config, T5Encoder};
pub use weights::Weights;

use crate::mlx::{ops, Array, Dtype};

/// The encoder configuration, by architecture.
#[derive(Debug, Clone)]
pub enum ArchConfig {
    T5(T5Config),
    Bert(BertConfig),
}

/// The `architectures` entries read as T5 (only the encoder is used).
const T5_ARCHITECTURES: &[&str] = &["T5EncoderModel", "T5Model", "T5ForConditionalGeneration"];

/// How to load weights.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// The float type weights are converted to (and the model computes in).
    pub dtype: Dtype,
}

impl Default for LoadOptions {
    /// f32.
    fn default() -> Self {
        LoadOptions {
            dtype: Dtype::Float32,
        }
    }
}

/// A sentence-transformers Dense module as described on disk.
#[derive(Debug, Clone)]
pub struct DenseSpec {
    pub dir: PathBuf,
    pub in_features: i32,
    pub out_features: i32,
    pub bias: bool,
    pub activation: DenseActivation,
}

/// An HF-layout model directory, its configs parsed (weights not yet read).
#[derive(Debug, Clone)]
pub struct ModelDir {
    /// The directory given.
    pub root: PathBuf,
    /// Where the transformer's `config.json` and weights live (the root, or
    /// the Transformer module's folder named in `modules.json`).
    pub encoder_dir: PathBuf,
    pub config: ArchConfig,
    /// Dense modules from `modules.json`, in order (empty when absent).
    pub dense: Vec<DenseSpec>,
}

#[derive(Deserialize)]
struct StModule {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct StDenseConfig {
    in_features: i32,
    out_features: i32,
    #[serde(default = "yes")]
    bias: bool,
    #[serde(default = "tanh")]
    activation_function: String,
}

fn yes() -> bool {
    true
}
fn tanh() -> String {
    // sentence-transformers' Dense default.
    "torch.nn.modules.activation.Tanh".to_string()
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

impl ModelDir {
    /// Reads the configs of the model in `root` and checks the files exist.
    pub fn open(root: impl AsRef<Path>) -> Result<ModelDir> {
        let root = root.as_ref().to_path_buf();
        if !root.is_dir() {
            bail!("model directory {} does not exist", root.display());
        }
        let modules = read_modules(&root)?;
        let encoder_dir = modules
            .iter()
            .find(|m| m.kind.ends_with(".Transformer") && !m.path.is_empty())
            .map(|m| root.join(&m.path))
            .filter(|d| d.join("config.json").is_file())
            .unwrap_or_else(|| root.clone());
        let config = read_arch_config(&encoder_dir.join("config.json"))?;
        let dense = modules
            .iter()
            .filter(|m| m.kind.ends_with(".Dense"))
            .map(|m| read_dense_spec(&root.join(&m.path)))
            .collect::<Result<Vec<_>>>()?;
        let dir = ModelDir {
            root,
            encoder_dir,
            config,
            dense,
        };
        dir.weight_files()?;
        Ok(dir)
    }

    /// The safetensors files holding the encoder's weights.
    pub fn weight_files(&self) -> Result<Vec<PathBuf>> {
        let single = self.encoder_dir.join("model.safetensors");
        if single.is_file() {
            return Ok(vec![single]);
        }
        let index = self.encoder_dir.join("model.safetensors.index.json");
        if index.is_file() {
            #[derive(Deserialize)]
            struct Index {
                weight_map: std::collections::BTreeMap<String, String>,
            }
            let idx: Index = read_json(&index)?;
            let files: BTreeSet<&String> = idx.weight_map.values().collect();
            let files: Vec<PathBuf> = files
                .into_iter()
                .map(|f| self.encoder_dir.join(f))
                .collect();
            if let Some(missing) = files.iter().find(|f| !f.is_file()) {
                bail!(
                    "{} names shard {} which does not exist",
                    index.display(),
                    missing.display()
                );
            }
            return Ok(files);
        }
        let hint = if self.encoder_dir.join("pytorch_model.bin").is_file() {
            " (only pytorch_model.bin is there; convert it to safetensors)"
        } else {
            ""
        };
        bail!(
            "no weights in {}: expected model.safetensors or model.safetensors.index.json{hint}",
            self.encoder_dir.display()
        )
    }

    /// Loads the encoder's weights and builds it.
    pub fn load_encoder(&self, opts: &LoadOptions) -> Result<Encoder> {
        let files = self.weight_files()?;
        let context = || format!("loading the encoder from {}", self.encoder_dir.display());
        Ok(match &self.config {
            ArchConfig::T5(c) => {
                let w = Weights::load(&files, opts.dtype, t5::is_encoder_tensor)
                    .with_context(context)?;
                Encoder::T5(T5Encoder::load(c.clone(), &w).with_context(context)?)
            }
            ArchConfig::Bert(c) => {
                let w = Weights::load(&files, opts.dtype, |n| {
                    // Task heads and the pooler are not part of the encoder.
                    !(n.starts_with("cls.") || n.contains("pooler."))
                })
                .with_context(context)?;
                Encoder::Bert(BertEncoder::load(c.clone(), &w).with_context(context)?)
            }
        })
    }

    /// Loads the Dense modules into a head (identity projection when there
    /// are none: the normalised hidden state).
    pub fn load_head(&self, opts: &LoadOptions) -> Result<Head> {
        for pair in self.dense.windows(2) {
            if pair[1].in_features != pair[0].out_features {
                bail!(
                    "{}: in_features {} does not follow the previous Dense's out_features {}",
                    pair[1].dir.join("config.json").display(),
                    pair[1].in_features,
                    pair[0].out_features
                );
            }
        }
        let dense = self
            .dense
            .iter()
            .map(|spec| load_dense(spec, opts))
            .collect::<Result<Vec<_>>>()?;
        Ok(Head::new(dense))
    }

    /// Encoder + head.
    pub fn load_model(&self, opts: &LoadOptions) -> Result<MultiVectorModel> {
        capacity::check_default_device(Some(&self.weight_files()?), opts.dtype)?;
        let encoder = self.load_encoder(opts)?;
        let head = self.load_head(opts)?;
        if let (Some(spec), Some(first)) = (self.dense.first(), head.dense.first()) {
            if first.linear.in_dim() != encoder.hidden_size() {
                bail!(
                    "{}: Dense in_features {} does not match the encoder's hidden size {}",
                    spec.dir.join("config.json").display(),
                    first.linear.in_dim(),
                    encoder.hidden_size()
                );
            }
        }
        Ok(MultiVectorModel { encoder, head })
    }

    /// The HF fast tokenizer from `tokenizer.json`, padding off and
    /// truncation to `max_len` tokens (special tokens included).
    pub fn load_tokenizer(&self, max_len: usize) -> Result<Tokenizer> {
        let path = [
            self.root.join("tokenizer.json"),
            self.encoder_dir.join("tokenizer.json"),
        ]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("no tokenizer.json in {}", self.root.display()))?;
        let mut tok = Tokenizer::from_file(&path)
            .map_err(|e| anyhow!("loading tokenizer {}: {e}", path.display()))?;
        tok.with_padding(None);
        tok.with_truncation(Some(TruncationParams {
            max_length: max_len,
            ..Default::default()
        }))
        .map_err(|e| anyhow!("configuring truncation for {}: {e}", path.display()))?;
        Ok(tok)
    }

    /// The vocabulary size of the encoder's embedding table.
    pub fn vocab_size(&self) -> i32 {
        match &self.config {
            ArchConfig::T5(c) => c.vocab_size,
            ArchConfig::Bert(c) => c.vocab_size,
        }
    }
}

fn read_modules(root: &Path) -> Result<Vec<StModule>> {
    let path = root.join("modules.json");
    if path.is_file() {
        read_json(&path)
    } else {
        Ok(Vec::new())
    }
}

/// Parses `config.json`, dispatching on `architectures` (else `model_type`).
fn read_arch_config(path: &Path) -> Result<ArchConfig> {
    if !path.is_file() {
        bail!("missing {}", path.display());
    }
    let value: serde_json::Value = read_json(path)?;
    let archs: Vec<&str> = value
        .get("architectures")
        .and_then(|a| a.as_array())
        .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
        .unwrap_or_default();
    let model_type = value
        .get("model_type")
        .and_then(|m| m.as_str())
        .unwrap_or("");
    let is_t5 = archs.iter().any(|a| T5_ARCHITECTURES.contains(a))
        || (archs.is_empty() && model_type == "t5");
    let is_bert =
        archs.iter().any(|a| a.starts_with("Bert")) || (archs.is_empty() && model_type == "bert");
    let parse = |what: &str| format!("{}: not a valid {what} config", path.display());
    if is_t5 {
        Ok(ArchConfig::T5(
            serde_json::from_value(value).with_context(|| parse("T5"))?,
        ))
    } else if is_bert {
        Ok(ArchConfig::Bert(
            serde_json::from_value(value).with_context(|| parse("BERT"))?,
        ))
    } else {
        bail!(
            "{}: unsupported architecture {archs:?} (model_type {model_type:?}); supported: {}, Bert*",
            path.display(),
            T5_ARCHITECTURES.join(", ")
        )
    }
}

fn read_dense_spec(dir: &Path) -> Result<DenseSpec> {
    let c: StDenseConfig = read_json(&dir.join("config.json"))?;
    Ok(DenseSpec {
        dir: dir.to_path_buf(),
        in_features: c.in_features,
        out_features: c.out_features,
        bias: c.bias,
        activation: DenseActivation::from_st(&c.activation_function)
            .with_context(|| format!("{}", dir.join("config.json").display()))?,
    })
}

fn load_dense(spec: &DenseSpec, opts: &LoadOptions) -> Result<Dense> {
    let file = spec.dir.join("model.safetensors");
    if !file.is_file() {
        bail!(
            "missing {} (Dense weights must be safetensors)",
            file.display()
        );
    }
    let w = Weights::load(std::slice::from_ref(&file), opts.dtype, |_| true)?;
    let weight = w.get("linear.weight", &[spec.out_features, spec.in_features])?;
    let bias = if spec.bias {
        Some(w.get("linear.bias", &[spec.out_features])?)
    } else {
        None
    };
    Ok(Dense {
        linear: Linear::new(weight, bias),
        activation: spec.activation,
    })
}

/// Texts per forward pass in [`embed_texts`].
const EMBED_BATCH: usize = 16;

/// Tokenises `texts` (special tokens added, truncated to the tokenizer's
/// max length) and returns each text's tokens with its `[n_tokens, dim]`
/// unit vectors.
pub fn embed_texts(
    model: &MultiVectorModel,
    tokenizer: &Tokenizer,
    vocab_size: i32,
    texts: &[&str],
) -> Result<Vec<(Vec<String>, Array)>> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(EMBED_BATCH) {
        let encodings = tokenizer
            .encode_batch(chunk.to_vec(), true)
            .map_err(|e| anyhow!("tokenising: {e}"))?;
        let max = encodings.iter().map(|e| e.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0i32; chunk.len() * max];
        let mut mask = vec![0i32; chunk.len() * max];
        for (row, enc) in encodings.iter().enumerate() {
            for (col, &id) in enc.get_ids().iter().enumerate() {
                let id = i32::try_from(id)
                    .ok()
                    .filter(|&i| i < vocab_size)
                    .ok_or_else(|| {
                        anyhow!("token id {id} is outside the model's vocabulary of {vocab_size}")
                    })?;
                ids[row * max + col] = id;
                mask[row * max + col] = 1;
            }
        }
        let shape = [chunk.len() as i32, max as i32];
        let ids = Array::from_slice(&ids, &shape)?;
        let mask = Array::from_slice(&mask, &shape)?;
        let emb = model.forward(&ids, &mask)?.embeddings;
        emb.eval()?;
        let dim = model.dim();
        for (row, enc) in encodings.iter().enumerate() {
            let (r, n) = (row as i32, enc.len() as i32);
            let vecs =
                ops::slice(&emb, &[r, 0, 0], &[r + 1, n, dim], &[1, 1, 1])?.reshape(&[n, dim])?;
            out.push((enc.get_tokens().to_vec(), vecs));
        }
    }
    Ok(out)
}

/// Loads the model in `model_dir` (f32) and embeds `texts`, truncating each
/// to `max_len` tokens: each text's tokens and `[n_tokens, dim]` vectors.
pub fn embed(
    model_dir: impl AsRef<Path>,
    texts: &[&str],
    max_len: usize,
) -> Result<Vec<(Vec<String>, Array)>> {
    let dir = ModelDir::open(model_dir)?;
    let model = dir.load_model(&LoadOptions::default())?;
    let tokenizer = dir.load_tokenizer(max_len)?;
    embed_texts(&model, &tokenizer, dir.vocab_size(), texts)
}

#[cfg(test)]
pub(crate) mod tests;
