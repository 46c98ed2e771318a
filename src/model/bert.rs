//! The BERT encoder (HF `BertModel` semantics without the pooler): word +
//! absolute position + token-type embeddings, post-LN transformer layers with
//! scaled attention and a GELU feed-forward. Returns the last hidden state.

use anyhow::{bail, Result};
use serde::Deserialize;

use super::layers::{layer_norm, mask_bias, multi_head_attention, Activation, Ctx, Linear};
use super::lora::{LinearLayer, LoraTarget};
use super::weights::Weights;
use crate::mlx::{ops, Array};

/// The fields of an HF BERT `config.json` the encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: i32,
    pub hidden_size: i32,
    pub num_hidden_layers: i32,
    pub num_attention_heads: i32,
    pub intermediate_size: i32,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f32,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f32,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: i32,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: i32,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f32,
    #[serde(default = "default_position_type")]
    pub position_embedding_type: String,
}

fn default_act() -> String {
    "gelu".to_string()
}
fn default_dropout() -> f32 {
    0.1
}
fn default_positions() -> i32 {
    512
}
fn default_type_vocab() -> i32 {
    2
}
fn default_eps() -> f32 {
    1e-12
}
fn default_position_type() -> String {
    "absolute".to_string()
}

/// A LayerNorm's affine parameters.
struct Norm {
    weight: Array,
    bias: Array,
}

impl Norm {
    fn load(w: &Weights, prefix: &str, dim: i32) -> Result<Norm> {
        // Old TF-converted checkpoints name them gamma / beta.
        Ok(Norm {
            weight: w.get_any(
                &[&format!("{prefix}.weight"), &format!("{prefix}.gamma")],
                &[dim],
            )?,
            bias: w.get_any(
                &[&format!("{prefix}.bias"), &format!("{prefix}.beta")],
                &[dim],
            )?,
        })
    }

    fn forward(&self, x: &Array, eps: f32) -> Result<Array> {
        layer_norm(x, &self.weight, &self.bias, eps)
    }
}

struct BertLayer {
    query: LinearLayer,
    key: LinearLayer,
    value: LinearLayer,
    attn_out: LinearLayer,
    attn_norm: Norm,
    intermediate: LinearLayer,
    output: LinearLayer,
    out_norm: Norm,
}

/// A BERT encoder stack.
pub struct BertEncoder {
    pub config: BertConfig,
    /// Dropout rates (used only when a forward pass trains).
    pub hidden_dropout: f32,
    pub attention_dropout: f32,
    word: Array,
    position: Array,
    token_type: Array,
    embed_norm: Norm,
    layers: Vec<BertLayer>,
    activation: Activation,
}

/// The prefix before `embeddings.` / `encoder.` in a checkpoint's names:
/// empty for `BertModel`, `bert.` for the task heads (`BertForMaskedLM`, ...).
pub fn tensor_prefix(w: &Weights) -> &'static str {
    if w.contains("bert.embeddings.word_embeddings.weight") {
        "bert."
    } else {
        ""
    }
}

impl BertEncoder {
    /// Builds the encoder from HF-named weights.
    pub fn load(config: BertConfig, w: &Weights) -> Result<BertEncoder> {
        if config.position_embedding_type != "absolute" {
            bail!(
                "BERT position_embedding_type {:?} is not supported (only \"absolute\")",
                config.position_embedding_type
            );
        }
        let activation = Activation::from_hf(&config.hidden_act)?;
        let p = tensor_prefix(w);
        let (d, ff) = (config.hidden_size, config.intermediate_size);
        let lin = |name: &str, out: i32, inp: i32| -> Result<LinearLayer> {
            Ok(Linear::new(
                w.get(&format!("{p}{name}.weight"), &[out, inp])?,
                Some(w.get(&format!("{p}{name}.bias"), &[out])?),
            )
            .into())
        };
        let mut layers = Vec::new();
        for i in 0..config.num_hidden_layers {
            let l = format!("encoder.layer.{i}");
            layers.push(BertLayer {
                query: lin(&format!("{l}.attention.self.query"), d, d)?,
                key: lin(&format!("{l}.attention.self.key"), d, d)?,
                value: lin(&format!("{l}.attention.self.value"), d, d)?,
                attn_out: lin(&format!("{l}.attention.output.dense"), d, d)?,
                attn_norm: Norm::load(w, &format!("{p}{l}.attention.output.LayerNorm"), d)?,
                intermediate: lin(&format!("{l}.intermediate.dense"), ff, d)?,
                output: lin(&format!("{l}.output.dense"), d, ff)?,
                out_norm: Norm::load(w, &format!("{p}{l}.output.LayerNorm"), d)?,
            });
        }
        let e = format!("{p}embeddings");
        Ok(BertEncoder {
            word: w.get(
                &format!("{e}.word_embeddings.weight"),
                &[config.vocab_size, d],
            )?,
            position: w.get(
                &format!("{e}.position_embeddings.weight"),
                &[config.max_position_embeddings, d],
            )?,
            token_type: w.get(
                &format!("{e}.token_type_embeddings.weight"),
                &[config.type_vocab_size, d],
            )?,
            embed_norm: Norm::load(w, &format!("{e}.LayerNorm"), d)?,
            hidden_dropout: config.hidden_dropout_prob,
            attention_dropout: config.attention_probs_dropout_prob,
            config,
            layers,
            activation,
        })
    }

    /// Hidden size.
    pub fn hidden_size(&self) -> i32 {
        self.config.hidden_size
    }

    /// The last hidden state `[batch, seq, hidden]` for `input_ids` and a
    /// 0/1 `attention_mask`, both `[batch, seq]` (token types all 0).
    pub fn forward(&self, ctx: &Ctx, input_ids: &Array, attention_mask: &Array) -> Result<Array> {
        if input_ids.ndim() != 2 || input_ids.shape() != attention_mask.shape() {
            bail!(
                "input_ids {:?} and attention_mask {:?} must both be [batch, seq]",
                input_ids.shape(),
                attention_mask.shape()
            );
        }
        let seq = input_ids.shape()[1];
        if seq > self.config.max_position_embeddings {
            bail!(
                "sequence of {seq} tokens is longer than BERT's {} positions",
                self.config.max_position_embeddings
            );
        }
        let eps = self.config.layer_norm_eps;
        let positions = ops::slice(&self.position, &[0, 0], &[seq, self.hidden_size()], &[1, 1])?;
        let token_type = ops::slice(&self.token_type, &[0, 0], &[1, self.hidden_size()], &[1, 1])?;
        let x = self
            .word
            .take_axis(input_ids, 0)?
            .add(positions)?
            .add(token_type)?;
        let mut h = ctx.dropout(&self.embed_norm.forward(&x, eps)?, self.hidden_dropout)?;
        let bias = mask_bias(attention_mask, self.word.dtype())?;
        for layer in &self.layers {
            let a = self.self_attention(ctx, layer, &h, &bias)?;
            let a = layer.attn_out.forward(ctx, &a)?;
            h = layer
                .attn_norm
                .forward(&ctx.add_dropout(&h, &a, self.hidden_dropout)?, eps)?;
            let f = self
                .activation
                .apply(&layer.intermediate.forward(ctx, &h)?)?;
            let f = layer.output.forward(ctx, &f)?;
            h = layer
                .out_norm
                .forward(&ctx.add_dropout(&h, &f, self.hidden_dropout)?, eps)?;
        }
        Ok(h)
    }

    fn self_attention(&self, ctx: &Ctx, l: &BertLayer, x: &Array, bias: &Array) -> Result<Array> {
        let heads = self.config.num_attention_heads;
        let q = l.query.forward(ctx, x)?;
        let k = l.key.forward(ctx, x)?;
        let v = l.value.forward(ctx, x)?;
        let head_dim = self.hidden_size() / heads;
        let scale = 1.0 / (head_dim as f32).sqrt();
        multi_head_attention(ctx, &q, &k, &v, heads, scale, bias, self.attention_dropout)
    }

    /// Calls `f` on every linear layer with its HF module path and LoRA target.
    pub fn visit_linears(
        &mut self,
        f: &mut dyn FnMut(&str, LoraTarget, &mut LinearLayer) -> Result<()>,
    ) -> Result<()> {
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = format!("encoder.layer.{i}");
            f(
                &format!("{p}.attention.self.query"),
                LoraTarget::Q,
                &mut l.query,
            )?;
            f(
                &format!("{p}.attention.self.key"),
                LoraTarget::K,
                &mut l.key,
            )?;
            f(
                &format!("{p}.attention.self.value"),
                LoraTarget::V,
                &mut l.value,
            )?;
            f(
                &format!("{p}.attention.output.dense"),
                LoraTarget::O,
                &mut l.attn_out,
            )?;
            f(
                &format!("{p}.intermediate.dense"),
                LoraTarget::Ffn,
                &mut l.intermediate,
            )?;
            f(&format!("{p}.output.dense"), LoraTarget::Ffn, &mut l.output)?;
        }
        Ok(())
    }

    /// Every linear layer with its HF module path and LoRA target.
    pub fn linears(&self) -> Vec<(String, LoraTarget, &LinearLayer)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("encoder.layer.{i}");
            out.push((format!("{p}.attention.self.query"), LoraTarget::Q, &l.query));
            out.push((format!("{p}.attention.self.key"), LoraTarget::K, &l.key));
            out.push((format!("{p}.attention.self.value"), LoraTarget::V, &l.value));
            out.push((
                format!("{p}.attention.output.dense"),
                LoraTarget::O,
                &l.attn_out,
            ));
            out.push((
                format!("{p}.intermediate.dense"),
                LoraTarget::Ffn,
                &l.intermediate,
            ));
            out.push((format!("{p}.output.dense"), LoraTarget::Ffn, &l.output));
        }
        out
    }
}
