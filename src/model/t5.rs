//! The T5 encoder (HF `T5EncoderModel` semantics): shared token embedding,
//! bucketed relative-position bias computed once and shared by every layer,
//! RMS layer norms, unscaled attention, a ReLU (v1.0) or gated-GELU (v1.1)
//! feed-forward, and a final norm. Returns the last hidden state.

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::layers::{mask_bias, multi_head_attention, rms_norm, Activation, Ctx, Linear};
use super::lora::{LinearLayer, LoraTarget};
use super::weights::Weights;
use crate::mlx::Array;

/// The fields of an HF T5 `config.json` the encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub struct T5Config {
    pub vocab_size: i32,
    pub d_model: i32,
    pub d_kv: i32,
    pub d_ff: i32,
    pub num_layers: i32,
    pub num_heads: i32,
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: i32,
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: i32,
    #[serde(default = "default_dropout")]
    pub dropout_rate: f32,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f32,
    #[serde(default = "default_ffn")]
    pub feed_forward_proj: String,
}

fn default_buckets() -> i32 {
    32
}
fn default_max_distance() -> i32 {
    128
}
fn default_dropout() -> f32 {
    0.1
}
fn default_eps() -> f32 {
    1e-6
}
fn default_ffn() -> String {
    "relu".to_string()
}

impl T5Config {
    /// The FFN activation and whether it is gated, as HF derives them from
    /// `feed_forward_proj` (`"gated-gelu"` means gated `gelu_new`).
    pub fn ffn_activation(&self) -> Result<(Activation, bool)> {
        let proj = self.feed_forward_proj.as_str();
        let (gated, name) = match proj.strip_prefix("gated-") {
            Some(act) => (true, act),
            None => (false, proj),
        };
        let name = if gated && name == "gelu" {
            "gelu_new"
        } else {
            name
        };
        let act =
            Activation::from_hf(name).with_context(|| format!("T5 feed_forward_proj {proj:?}"))?;
        Ok((act, gated))
    }
}

/// The feed-forward block: `wo(act(wi x))`, or `wo(act(wi_0 x) * wi_1 x)`.
struct T5Ffn {
    wi: LinearLayer,
    wi_gate: Option<LinearLayer>,
    wo: LinearLayer,
}

struct T5Block {
    q: LinearLayer,
    k: LinearLayer,
    v: LinearLayer,
    o: LinearLayer,
    attn_norm: Array,
    ffn: T5Ffn,
    ffn_norm: Array,
}

/// A T5 encoder stack.
pub struct T5Encoder {
    pub config: T5Config,
    /// Dropout rate (used only when a forward pass trains).
    pub dropout: f32,
    embed: Array,
    /// `[num_buckets, num_heads]`, from layer 0.
    rel_bias: Array,
    blocks: Vec<T5Block>,
    final_norm: Array,
    activation: Activation,
}

/// Whether a tensor name belongs to the encoder (the decoder and LM head of
/// `T5ForConditionalGeneration` are skipped when loading).
pub fn is_encoder_tensor(name: &str) -> bool {
    name.starts_with("encoder.") || name.starts_with("shared.")
}

impl T5Encoder {
    /// Builds the encoder from HF-named weights.
    pub fn load(config: T5Config, w: &Weights) -> Result<T5Encoder> {
        let (activation, gated) = config.ffn_activation()?;
        let (d, inner, ff) = (config.d_model, config.num_heads * config.d_kv, config.d_ff);
        let lin = |name: &str, out: i32, inp: i32| -> Result<LinearLayer> {
            Ok(Linear::new(w.get(&format!("{name}.weight"), &[out, inp])?, None).into())
        };
        let embed = w.get_any(
            &["shared.weight", "encoder.embed_tokens.weight"],
            &[config.vocab_size, d],
        )?;
        let rel_bias = w.get(
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            &[config.relative_attention_num_buckets, config.num_heads],
        )?;
        let mut blocks = Vec::new();
        for i in 0..config.num_layers {
            let att = format!("encoder.block.{i}.layer.0");
            let ffp = format!("encoder.block.{i}.layer.1");
            let ffn = if gated {
                T5Ffn {
                    wi: lin(&format!("{ffp}.DenseReluDense.wi_0"), ff, d)?,
                    wi_gate: Some(lin(&format!("{ffp}.DenseReluDense.wi_1"), ff, d)?),
                    wo: lin(&format!("{ffp}.DenseReluDense.wo"), d, ff)?,
                }
            } else {
                T5Ffn {
                    wi: lin(&format!("{ffp}.DenseReluDense.wi"), ff, d)?,
                    wi_gate: None,
                    wo: lin(&format!("{ffp}.DenseReluDense.wo"), d, ff)?,
                }
            };
            blocks.push(T5Block {
                q: lin(&format!("{att}.SelfAttention.q"), inner, d)?,
                k: lin(&format!("{att}.SelfAttention.k"), inner, d)?,
                v: lin(&format!("{att}.SelfAttention.v"), inner, d)?,
                o: lin(&format!("{att}.SelfAttention.o"), d, inner)?,
                attn_norm: w.get(&format!("{att}.layer_norm.weight"), &[d])?,
                ffn,
                ffn_norm: w.get(&format!("{ffp}.layer_norm.weight"), &[d])?,
            });
        }
        let final_norm = w.get("encoder.final_layer_norm.weight", &[d])?;
        Ok(T5Encoder {
            dropout: config.dropout_rate,
            config,
            embed,
            rel_bias,
            blocks,
            final_norm,
            activation,
        })
    }

    /// Hidden size.
    pub fn hidden_size(&self) -> i32 {
        self.config.d_model
    }

    /// The last hidden state `[batch, seq, d_model]` for `input_ids` and a
    /// 0/1 `attention_mask`, both `[batch, seq]`.
    pub fn forward(&self, ctx: &Ctx, input_ids: &Array, attention_mask: &Array) -> Result<Array> {
        if input_ids.ndim() != 2 || input_ids.shape() != attention_mask.shape() {
            bail!(
                "input_ids {:?} and attention_mask {:?} must both be [batch, seq]",
                input_ids.shape(),
                attention_mask.shape()
            );
        }
        let seq = input_ids.shape()[1];
        let dtype = self.embed.dtype();
        let eps = self.config.layer_norm_epsilon;
        let mut h = ctx.dropout(&self.embed.take_axis(input_ids, 0)?, self.dropout)?;
        // Position bias [1, H, L, L] plus the padding mask [B, 1, 1, L]: one
        // additive bias for every layer, as HF computes it in layer 0.
        let bias = self
            .position_bias(seq)?
            .add(mask_bias(attention_mask, dtype)?)?;
        for block in &self.blocks {
            let x = rms_norm(&h, &block.attn_norm, eps)?;
            let a = self.self_attention(ctx, block, &x, &bias)?;
            h = ctx.add_dropout(&h, &a, self.dropout)?;
            let x = rms_norm(&h, &block.ffn_norm, eps)?;
            let f = self.feed_forward(ctx, &block.ffn, &x)?;
            h = ctx.add_dropout(&h, &f, self.dropout)?;
        }
        let h = rms_norm(&h, &self.final_norm, eps)?;
        ctx.dropout(&h, self.dropout)
    }

    fn self_attention(&self, ctx: &Ctx, b: &T5Block, x: &Array, bias: &Array) -> Result<Array> {
        let heads = self.config.num_heads;
        let q = b.q.forward(ctx, x)?;
        let k = b.k.forward(ctx, x)?;
        let v = b.v.forward(ctx, x)?;
        // T5 folds the 1/sqrt(d) into its init, so scores are not scaled.
        let out = multi_head_attention(ctx, &q, &k, &v, heads, 1.0, bias, self.dropout)?;
        b.o.forward(ctx, &out)
    }

    fn feed_forward(&self, ctx: &Ctx, f: &T5Ffn, x: &Array) -> Result<Array> {
        let gate = match &f.wi_gate {
            Some(g) => Some(g.forward(ctx, x)?),
            None => None,
        };
        let hidden = ctx.activation_dropout(
            self.activation,
            &f.wi.forward(ctx, x)?,
            gate.as_ref(),
            self.dropout,
        )?;
        f.wo.forward(ctx, &hidden)
    }

    /// `[1, heads, seq, seq]` learned bias for bidirectional relative positions.
    fn position_bias(&self, seq: i32) -> Result<Array> {
        let buckets = relative_position_buckets(
            seq,
            self.config.relative_attention_num_buckets,
            self.config.relative_attention_max_distance,
        );
        let buckets = Array::from_slice(&buckets, &[seq, seq])?;
        let bias = self.rel_bias.take_axis(&buckets, 0)?; // [L, L, H]
        Ok(bias.transpose_axes(&[2, 0, 1])?.expand_dims(0)?)
    }

    /// Calls `f` on every linear layer with its HF module path and LoRA target.
    pub fn visit_linears(
        &mut self,
        f: &mut dyn FnMut(&str, LoraTarget, &mut LinearLayer) -> Result<()>,
    ) -> Result<()> {
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let att = format!("encoder.block.{i}.layer.0.SelfAttention");
            f(&format!("{att}.q"), LoraTarget::Q, &mut b.q)?;
            f(&format!("{att}.k"), LoraTarget::K, &mut b.k)?;
            f(&format!("{att}.v"), LoraTarget::V, &mut b.v)?;
            f(&format!("{att}.o"), LoraTarget::O, &mut b.o)?;
            let ffp = format!("encoder.block.{i}.layer.1.DenseReluDense");
            let wi = if b.ffn.wi_gate.is_some() {
                "wi_0"
            } else {
                "wi"
            };
            f(&format!("{ffp}.{wi}"), LoraTarget::Ffn, &mut b.ffn.wi)?;
            if let Some(g) = &mut b.ffn.wi_gate {
                f(&format!("{ffp}.wi_1"), LoraTarget::Ffn, g)?;
            }
            f(&format!("{ffp}.wo"), LoraTarget::Ffn, &mut b.ffn.wo)?;
        }
        Ok(())
    }

    /// Every linear layer with its HF module path and LoRA target.
    pub fn linears(&self) -> Vec<(String, LoraTarget, &LinearLayer)> {
        let mut out = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            let att = format!("encoder.block.{i}.layer.0.SelfAttention");
            out.push((format!("{att}.q"), LoraTarget::Q, &b.q));
            out.push((format!("{att}.k"), LoraTarget::K, &b.k));
            out.push((format!("{att}.v"), LoraTarget::V, &b.v));
            out.push((format!("{att}.o"), LoraTarget::O, &b.o));
            let ffp = format!("encoder.block.{i}.layer.1.DenseReluDense");
            let wi = if b.ffn.wi_gate.is_some() {
                "wi_0"
            } else {
                "wi"
            };
            out.push((format!("{ffp}.{wi}"), LoraTarget::Ffn, &b.ffn.wi));
            if let Some(g) = &b.ffn.wi_gate {
                out.push((format!("{ffp}.wi_1"), LoraTarget::Ffn, g));
            }
            out.push((format!("{ffp}.wo"), LoraTarget::Ffn, &b.ffn.wo));
        }
        out
    }
}

/// HF's `_relative_position_bucket` (bidirectional) for every (query, key)
/// pair of a `seq`-long input, row-major `[query, key]`. Computed on the host
/// in f32 like PyTorch, so the truncation to a bucket index agrees.
pub fn relative_position_buckets(seq: i32, num_buckets: i32, max_distance: i32) -> Vec<i32> {
    let half = num_buckets / 2;
    let max_exact = half / 2;
    let log_range = ((max_distance as f64) / (max_exact as f64)).ln() as f32;
    let mut out = Vec::with_capacity((seq * seq).max(0) as usize);
    for q in 0..seq {
        for k in 0..seq {
            let rel = k - q;
            let mut bucket = if rel > 0 { half } else { 0 };
            let n = rel.abs();
            bucket += if n < max_exact {
                n
            } else {
                let scaled = ((n as f32) / (max_exact as f32)).ln() / log_range
                    * ((half - max_exact) as f32);
                (max_exact + scaled as i32).min(half - 1)
            };
            out.push(bucket);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::relative_position_buckets;

    #[test]
    fn buckets_match_hf_for_small_and_large_distances() {
        // HF (num_buckets 32, max_distance 128): distance 0 -> 0, +1 -> 17,
        // -1 -> 1, -8 -> 8, -20 -> 10, +200 -> 31.
        let b = relative_position_buckets(201, 32, 128);
        let at = |q: usize, k: usize| b[q * 201 + k];
        assert_eq!(at(0, 0), 0);
        assert_eq!(at(0, 1), 17);
        assert_eq!(at(1, 0), 1);
        assert_eq!(at(8, 0), 8);
        assert_eq!(at(20, 0), 10);
        assert_eq!(at(0, 200), 31);
    }
}
