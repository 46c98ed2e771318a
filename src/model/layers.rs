//! The building blocks both encoders share: a dense `Linear` layer, the
//! activations HF configs name, dropout driven by an explicit PRNG key, and
//! multi-head attention over `[batch, heads, seq, dim]` tensors.

use std::cell::RefCell;

use anyhow::{bail, Context, Result};

use crate::mlx::fast::{self, scaled_dot_product_attention, ScaledDotProductAttentionMask};
use crate::mlx::{kernels, ops, random, Array, Dtype};

/// The large negative number added to attention scores at masked keys
/// (HF uses `finfo(dtype).min`; any value whose `exp` underflows to 0 gives
/// the same softmax, and this one cannot overflow when added to a bias).
pub const MASK_NEG: f32 = -1e9;

/// `y = x Wᵀ + b`, with `weight` shaped `[out, in]` as in PyTorch.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Array,
    pub bias: Option<Array>,
}

impl Linear {
    /// A layer from its weight and optional bias.
    pub fn new(weight: Array, bias: Option<Array>) -> Linear {
        Linear { weight, bias }
    }

    /// PyTorch's `nn.Linear` default init (uniform in ±1/sqrt(in)), for
    /// layers trained from scratch.
    pub fn random(in_dim: i32, out_dim: i32, bias: bool, key: &Array) -> Result<Linear> {
        let bound = 1.0 / (in_dim as f32).sqrt();
        let (k_w, k_b) = random::split2(key)?;
        let weight = random::uniform::<f32, f32>(-bound, bound, &[out_dim, in_dim], &k_w)?;
        let bias = if bias {
            Some(random::uniform::<f32, f32>(
                -bound,
                bound,
                &[out_dim],
                &k_b,
            )?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    /// Input features.
    pub fn in_dim(&self) -> i32 {
        self.weight.dim(1).unwrap_or(0)
    }

    /// Output features.
    pub fn out_dim(&self) -> i32 {
        self.weight.dim(0).unwrap_or(0)
    }

    /// Applies the layer over the last axis of `x`.
    pub fn forward(&self, x: &Array) -> Result<Array> {
        let y = ops::matmul(x, self.weight.transpose()?)?;
        Ok(match &self.bias {
            Some(b) => ops::add(&y, b)?,
            None => y,
        })
    }
}

/// The activations that appear in HF T5 / BERT configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Relu,
    /// The exact (erf) GELU: HF's `"gelu"`.
    Gelu,
    /// The tanh approximation of GELU: HF's `"gelu_new"` / `"gelu_pytorch_tanh"`.
    GeluTanh,
    /// `x * sigmoid(x)`: HF's `"silu"` / `"swish"`.
    Silu,
}

impl Activation {
    /// Parses an HF activation name.
    pub fn from_hf(name: &str) -> Result<Activation> {
        Ok(match name {
            "relu" => Activation::Relu,
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "silu" | "swish" => Activation::Silu,
            other => {
                bail!("unsupported activation {other:?} (supported: relu, gelu, gelu_new, silu)")
            }
        })
    }

    /// The activation's code in our GPU kernels (`xtr_act` in src/mlx/gpu/kernels.cc).
    pub fn code(self) -> i32 {
        match self {
            Activation::Relu => 0,
            Activation::Gelu => 1,
            Activation::GeluTanh => 2,
            Activation::Silu => 3,
        }
    }

    /// Applies the activation elementwise.
    pub fn apply(self, x: &Array) -> Result<Array> {
        Ok(match self {
            Activation::Relu => ops::maximum(x, Array::from_f32(0.0).as_dtype(x.dtype())?)?,
            Activation::Gelu if kernels::applies(x) => kernels::gelu(x, false)?,
            Activation::GeluTanh if kernels::applies(x) => kernels::gelu(x, true)?,
            Activation::Gelu => {
                let half = scalar(0.5, x.dtype())?;
                let inner =
                    ops::erf(x.multiply(scalar(std::f32::consts::FRAC_1_SQRT_2, x.dtype())?)?)?;
                x.multiply(&half)?
                    .multiply(inner.add(scalar(1.0, x.dtype())?)?)?
            }
            Activation::GeluTanh => {
                // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
                let dt = x.dtype();
                let cube = x.multiply(x)?.multiply(x)?;
                let inner = x
                    .add(cube.multiply(scalar(0.044_715, dt)?)?)?
                    .multiply(scalar((2.0 / std::f32::consts::PI).sqrt(), dt)?)?;
                x.multiply(scalar(0.5, dt)?)?
                    .multiply(ops::tanh(inner)?.add(scalar(1.0, dt)?)?)?
            }
            Activation::Silu => x.multiply(ops::sigmoid(x)?)?,
        })
    }
}

/// Layer norm over the last axis with affine `weight` and `bias`: our fused
/// CPU kernel for f32 on the CPU (MLX composes it from reductions there),
/// MLX's fused op elsewhere.
pub fn layer_norm(x: &Array, weight: &Array, bias: &Array, eps: f32) -> Result<Array> {
    if kernels::applies(x) {
        return Ok(kernels::layer_norm(x, weight, bias, eps)?);
    }
    Ok(fast::layer_norm(x, Some(weight), Some(bias), eps)?)
}

/// RMS norm over the last axis, scaled by `weight`: our fused CPU kernel for
/// f32 on the CPU, MLX's fused op elsewhere.
pub fn rms_norm(x: &Array, weight: &Array, eps: f32) -> Result<Array> {
    if kernels::applies(x) {
        return Ok(kernels::rms_norm(x, weight, eps)?);
    }
    Ok(fast::rms_norm(x, weight, eps)?)
}

/// A scalar of the given float dtype (keeps half-precision graphs half).
pub fn scalar(v: f32, dtype: Dtype) -> Result<Array> {
    Ok(Array::from_f32(v).as_dtype(dtype)?)
}

/// Whether a forward pass trains (dropout on) and the PRNG key it draws
/// dropout masks from. Each mask splits the key, so consecutive masks differ.
pub struct Ctx {
    pub train: bool,
    rng: RefCell<Option<Array>>,
}

impl Ctx {
    /// Inference: dropout off.
    pub fn eval() -> Ctx {
        Ctx {
            train: false,
            rng: RefCell::new(None),
        }
    }

    /// Training with dropout masks drawn from `key`.
    pub fn train(key: Array) -> Ctx {
        Ctx {
            train: true,
            rng: RefCell::new(Some(key)),
        }
    }

    /// A fresh key (advances the context's own).
    fn next_key(&self) -> Result<Array> {
        let mut rng = self.rng.borrow_mut();
        let current = match rng.take() {
            Some(k) => k,
            None => random::key(0)?,
        };
        let (next, sub) = random::split2(&current)?;
        *rng = Some(next);
        Ok(sub)
    }

    /// Inverted dropout with drop probability `rate` (identity at inference).
    pub fn dropout(&self, x: &Array, rate: f32) -> Result<Array> {
        if !self.train || rate <= 0.0 {
            return Ok(x.clone());
        }
        if rate >= 1.0 {
            return Ok(ops::zeros_dtype(x.shape(), x.dtype())?);
        }
        let key = self.next_key()?;
        if kernels::applies(x) {
            return Ok(kernels::dropout(x, &key, rate)?);
        }
        if kernels::gpu_applies(x) {
            return Ok(kernels::gpu_dropout(x, &key, rate)?);
        }
        let keep = random::bernoulli(&Array::from_f32(1.0 - rate), x.shape(), &key)?;
        let scaled = x.multiply(scalar(1.0 / (1.0 - rate), x.dtype())?)?;
        Ok(ops::r#where(keep, scaled, scalar(0.0, x.dtype())?)?)
    }
}

impl Ctx {
    /// Whether a dropout of `rate` on `x` runs as one of our fused GPU kernels.
    fn fused_gpu_dropout(&self, x: &Array, rate: f32) -> bool {
        self.train && rate > 0.0 && rate < 1.0 && kernels::gpu_applies(x)
    }

    /// `h + dropout(x, rate)`: a residual connection (one GPU kernel when
    /// training there).
    pub fn add_dropout(&self, h: &Array, x: &Array, rate: f32) -> Result<Array> {
        if self.fused_gpu_dropout(x, rate) && h.shape() == x.shape() && h.dtype() == x.dtype() {
            let key = self.next_key()?;
            return Ok(kernels::gpu_add_dropout(h, x, &key, rate)?);
        }
        Ok(h.add(self.dropout(x, rate)?)?)
    }

    /// `dropout(act(a) * gate, rate)` (no gate: `dropout(act(a))`): a
    /// feed-forward's activation (one GPU kernel when training there).
    pub fn activation_dropout(
        &self,
        act: Activation,
        a: &Array,
        gate: Option<&Array>,
        rate: f32,
    ) -> Result<Array> {
        let gate_fits = gate.is_none_or(|g| g.shape() == a.shape() && g.dtype() == a.dtype());
        if self.fused_gpu_dropout(a, rate) && gate_fits {
            let key = self.next_key()?;
            return Ok(kernels::gpu_act_dropout(a, gate, act.code(), &key, rate)?);
        }
        let mut hidden = act.apply(a)?;
        if let Some(g) = gate {
            hidden = hidden.multiply(g)?;
        }
        self.dropout(&hidden, rate)
    }

    /// Attention probabilities: softmax over the last axis of `scores + bias`,
    /// then dropout `rate` when training. On the GPU one fused kernel does the
    /// softmax and dropout (and draws the mask [`Ctx::dropout`] would); on
    /// the CPU our softmax kernel adds the bias in its pass, for f32.
    pub fn attention_probs(&self, scores: &Array, bias: &Array, rate: f32) -> Result<Array> {
        if kernels::applies(scores) && bias.ndim() == scores.ndim() {
            let probs = kernels::softmax_last_bias(scores, bias)?;
            return self.dropout(&probs, rate);
        }
        let scores = scores.add(bias)?;
        let scores = &scores;
        if self.fused_gpu_dropout(scores, rate)
            && scores
                .dim(-1)
                .is_some_and(|n| n <= kernels::GPU_SOFTMAX_MAX_ROW)
        {
            let key = self.next_key()?;
            return Ok(kernels::gpu_softmax_dropout(scores, &key, rate)?);
        }
        let probs = if kernels::applies(scores) {
            kernels::softmax_last(scores)?
        } else {
            ops::softmax_axis(scores, -1, true)?
        };
        self.dropout(&probs, rate)
    }
}

/// `[batch, seq]` 0/1 mask → `[batch, 1, 1, seq]` additive bias (0 where
/// attended, [`MASK_NEG`] where masked), in `dtype`.
pub fn mask_bias(attention_mask: &Array, dtype: Dtype) -> Result<Array> {
    if attention_mask.ndim() != 2 {
        bail!(
            "attention_mask must be [batch, seq], got shape {:?}",
            attention_mask.shape()
        );
    }
    let keep = ops::ne(attention_mask, Array::from_int(0))?;
    let bias = ops::r#where(keep, scalar(0.0, dtype)?, scalar(MASK_NEG, dtype)?)?;
    Ok(ops::expand_dims_axes(bias, &[1, 2])?)
}

/// `[batch, seq, heads*dim]` → `[batch, heads, seq, dim]`.
pub fn split_heads(x: &Array, heads: i32) -> Result<Array> {
    let s = x.shape();
    let (b, l) = (s[0], s[1]);
    Ok(x.reshape(&[b, l, heads, -1])?
        .transpose_axes(&[0, 2, 1, 3])?)
}

/// `[batch, heads, seq, dim]` → `[batch, seq, heads*dim]`.
pub fn merge_heads(x: &Array) -> Result<Array> {
    let s = x.shape();
    let (b, l) = (s[0], s[2]);
    Ok(x.transpose_axes(&[0, 2, 1, 3])?.reshape(&[b, l, -1])?)
}

/// Multi-head attention from the projections `q` `[B, S, heads·D]`, `k` and `v`
/// `[B, T, heads·D]` to the merged heads `[B, S, heads·D]`: per head,
/// `softmax(q kᵀ · scale + bias) v` with dropout `rate` on the probabilities
/// when training. On the CPU (f32) our kernels take each head's matrices in
/// place; elsewhere the heads are split out for [`attention`].
#[allow(clippy::too_many_arguments)]
pub fn multi_head_attention(
    ctx: &Ctx,
    q: &Array,
    k: &Array,
    v: &Array,
    heads: i32,
    scale: f32,
    bias: &Array,
    rate: f32,
) -> Result<Array> {
    if kernels::applies(q) {
        let scores = kernels::attention_scores(q, k, heads, scale)?;
        let probs = ctx.attention_probs(&scores, bias, rate)?;
        return kernels::attention_values(&probs, v, heads).context("attention");
    }
    let (q, k, v) = (
        split_heads(q, heads)?,
        split_heads(k, heads)?,
        split_heads(v, heads)?,
    );
    merge_heads(&attention(ctx, &q, &k, &v, scale, bias, rate)?)
}

/// `softmax(q kᵀ · scale + bias) v`, with dropout `rate` on the attention
/// probabilities when training. MLX's fused kernel runs it when dropout is off,
/// except where our CPU softmax applies: MLX's CPU attention is the same
/// composition with its scalar softmax.
pub fn attention(
    ctx: &Ctx,
    q: &Array,
    k: &Array,
    v: &Array,
    scale: f32,
    bias: &Array,
    rate: f32,
) -> Result<Array> {
    let ours = kernels::applies(q);
    if (!ctx.train || rate <= 0.0) && !ours {
        return scaled_dot_product_attention(
            q,
            k,
            v,
            scale,
            Some(ScaledDotProductAttentionMask::Array(bias)),
        )
        .context("attention");
    }
    let scores = ops::matmul(q, k.swap_axes(-1, -2)?)?;
    let scores = if scale != 1.0 {
        scores.multiply(scalar(scale, scores.dtype())?)?
    } else {
        scores
    };
    let probs = ctx.attention_probs(&scores, bias, rate)?;
    Ok(ops::matmul(probs, v)?)
}
