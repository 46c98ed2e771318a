//! The multi-vector (XTR / ColBERT) model: an `Encoder` (T5 or BERT) giving
//! the last hidden state, and a head of sentence-transformers Dense layers
//! followed by per-token L2 normalisation, giving one unit vector per token.

use anyhow::{bail, Result};

use super::bert::BertEncoder;
use super::layers::{Ctx, Linear};
use super::lora::{LinearLayer, LoraTarget};
use super::t5::T5Encoder;
use crate::mlx::{ops, Array};

/// One of the supported encoder architectures.
pub enum Encoder {
    T5(T5Encoder),
    Bert(BertEncoder),
}

impl Encoder {
    /// The last hidden state `[batch, seq, hidden]`, dropout off.
    pub fn forward(&self, input_ids: &Array, attention_mask: &Array) -> Result<Array> {
        self.forward_with(&Ctx::eval(), input_ids, attention_mask)
    }

    /// The last hidden state under `ctx` (training: dropout on).
    pub fn forward_with(
        &self,
        ctx: &Ctx,
        input_ids: &Array,
        attention_mask: &Array,
    ) -> Result<Array> {
        match self {
            Encoder::T5(e) => e.forward(ctx, input_ids, attention_mask),
            Encoder::Bert(e) => e.forward(ctx, input_ids, attention_mask),
        }
    }

    /// Hidden size (the head's input width).
    pub fn hidden_size(&self) -> i32 {
        match self {
            Encoder::T5(e) => e.hidden_size(),
            Encoder::Bert(e) => e.hidden_size(),
        }
    }

    /// Calls `f` on every linear layer with its HF module path and LoRA target.
    pub fn visit_linears(
        &mut self,
        f: &mut dyn FnMut(&str, LoraTarget, &mut LinearLayer) -> Result<()>,
    ) -> Result<()> {
        match self {
            Encoder::T5(e) => e.visit_linears(f),
            Encoder::Bert(e) => e.visit_linears(f),
        }
    }

    /// Every linear layer with its HF module path and LoRA target.
    pub fn linears(&self) -> Vec<(String, LoraTarget, &LinearLayer)> {
        match self {
            Encoder::T5(e) => e.linears(),
            Encoder::Bert(e) => e.linears(),
        }
    }
}

/// The activation after a sentence-transformers Dense layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenseActivation {
    Identity,
    Tanh,
}

impl DenseActivation {
    /// Parses sentence-transformers' `activation_function` (a torch class path).
    pub fn from_st(name: &str) -> Result<DenseActivation> {
        Ok(match name.rsplit('.').next().unwrap_or(name) {
            "Identity" => DenseActivation::Identity,
            "Tanh" => DenseActivation::Tanh,
            _ => bail!("unsupported Dense activation_function {name:?} (Identity or Tanh)"),
        })
    }
}

/// A sentence-transformers `Dense` module.
#[derive(Debug, Clone)]
pub struct Dense {
    pub linear: Linear,
    pub activation: DenseActivation,
}

impl Dense {
    fn forward(&self, x: &Array) -> Result<Array> {
        let y = self.linear.forward(x)?;
        Ok(match self.activation {
            DenseActivation::Identity => y,
            DenseActivation::Tanh => ops::tanh(y)?,
        })
    }
}

/// Dense projection(s), then L2 normalisation of every token vector.
#[derive(Debug, Clone)]
pub struct Head {
    pub dense: Vec<Dense>,
}

impl Head {
    /// A head from loaded Dense modules (none: normalise the hidden state).
    pub fn new(dense: Vec<Dense>) -> Head {
        Head { dense }
    }

    /// A fresh `in_dim → out_dim` projection (no bias, identity activation,
    /// PyTorch's default init) for training a head from scratch.
    pub fn random(in_dim: i32, out_dim: i32, key: &Array) -> Result<Head> {
        Ok(Head {
            dense: vec![Dense {
                linear: Linear::random(in_dim, out_dim, false, key)?,
                activation: DenseActivation::Identity,
            }],
        })
    }

    /// The trainable arrays, `[weight, (bias)]` per Dense layer in order
    /// (for a head trained from scratch).
    pub fn params(&self) -> Vec<Array> {
        self.dense
            .iter()
            .flat_map(|d| std::iter::once(d.linear.weight.clone()).chain(d.linear.bias.clone()))
            .collect()
    }

    /// Puts arrays shaped like [`Head::params`]'s output back.
    pub fn set_params(&mut self, params: &[Array]) -> Result<()> {
        let expected = self.params();
        if params.len() != expected.len() {
            bail!(
                "got {} head params, the head has {}",
                params.len(),
                expected.len()
            );
        }
        if let Some((i, (p, e))) = params
            .iter()
            .zip(&expected)
            .enumerate()
            .find(|(_, (p, e))| p.shape() != e.shape())
        {
            bail!(
                "head param {i}: shape {:?}, expected {:?}",
                p.shape(),
                e.shape()
            );
        }
        let mut it = params.iter().cloned();
        for d in &mut self.dense {
            if let Some(w) = it.next() {
                d.linear.weight = w;
            }
            if d.linear.bias.is_some() {
                d.linear.bias = it.next();
            }
        }
        Ok(())
    }

    /// Output width given the encoder's hidden size.
    pub fn out_dim(&self, hidden: i32) -> i32 {
        self.dense.last().map_or(hidden, |d| d.linear.out_dim())
    }

    /// `[batch, seq, hidden]` → unit vectors `[batch, seq, dim]`.
    pub fn forward(&self, hidden: &Array) -> Result<Array> {
        let mut x = hidden.clone();
        for d in &self.dense {
            x = d.forward(&x)?;
        }
        l2_normalize(&x)
    }
}

/// `x / max(‖x‖₂, 1e-12)` over the last axis (PyTorch's `F.normalize`).
pub fn l2_normalize(x: &Array) -> Result<Array> {
    let norm = ops::sqrt(ops::sum_axis(ops::square(x)?, -1, true)?)?;
    let floor = Array::from_f32(1e-12).as_dtype(x.dtype())?;
    Ok(x.divide(ops::maximum(norm, floor)?)?)
}

/// Per-token embeddings of a batch with the mask saying which are real.
pub struct TokenEmbeddings {
    /// `[batch, seq, dim]`, unit vectors at real tokens, zeros at padding.
    pub embeddings: Array,
    /// `[batch, seq]`, 1 at real tokens (the input attention mask).
    pub mask: Array,
}

/// Encoder + head: text tokens in, one unit vector per token out.
pub struct MultiVectorModel {
    pub encoder: Encoder,
    pub head: Head,
}

impl MultiVectorModel {
    /// Embedding width.
    pub fn dim(&self) -> i32 {
        self.head.out_dim(self.encoder.hidden_size())
    }

    /// Per-token embeddings, dropout off.
    pub fn forward(&self, input_ids: &Array, attention_mask: &Array) -> Result<TokenEmbeddings> {
        self.forward_with(&Ctx::eval(), input_ids, attention_mask)
    }

    /// Per-token embeddings under `ctx`; padded positions are zeroed so
    /// they never win a MaxSim.
    pub fn forward_with(
        &self,
        ctx: &Ctx,
        input_ids: &Array,
        attention_mask: &Array,
    ) -> Result<TokenEmbeddings> {
        let hidden = self.encoder.forward_with(ctx, input_ids, attention_mask)?;
        let emb = self.head.forward(&hidden)?;
        let keep = attention_mask.as_dtype(emb.dtype())?.expand_dims(-1)?;
        Ok(TokenEmbeddings {
            embeddings: emb.multiply(keep)?,
            mask: attention_mask.clone(),
        })
    }
}
