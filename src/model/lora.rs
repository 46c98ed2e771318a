//! LoRA as a wrapper layer (PEFT semantics): `LoraLinear` adds a trainable
//! low-rank update to a frozen `Linear` and can be fused back into it;
//! helpers apply it to chosen projections of an encoder, expose the trainable
//! matrices as a flat `Vec<Array>` for `value_and_grad`, and save/load them as
//! an adapter file of their own.
//!
//! Adapter files are safetensors with PEFT's key names, so PEFT can read ours
//! and we can read PEFT's `adapter_model.safetensors`:
//!
//! ```text
//! base_model.model.<module path>.lora_A.weight   [r, in]
//! base_model.model.<module path>.lora_B.weight   [out, r]
//! ```
//!
//! `<module path>` is the HF module path of the wrapped linear layer, e.g.
//! `encoder.block.0.layer.0.SelfAttention.q` (T5) or
//! `encoder.layer.0.attention.self.query` (BERT). The header metadata holds
//! `r`, `lora_alpha`, `lora_dropout` and `target_modules` (comma-separated
//! HF names). On load, a PEFT `adapter_config.json` beside the file supplies
//! `lora_alpha` when the metadata lacks it; module paths are matched by
//! suffix, so a `bert.` or other wrapper prefix in the keys is tolerated.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};

use super::layers::{Ctx, Linear};
use super::Encoder;
use crate::mlx::{io, ops, random, Array, Dtype};

/// `y = x Wᵀ + b + (alpha / r) · dropout(x) Aᵀ Bᵀ` with `W`, `b` frozen.
#[derive(Debug, Clone)]
pub struct LoraLinear {
    /// The frozen base layer.
    pub base: Linear,
    /// `[r, in]`.
    pub a: Array,
    /// `[out, r]`.
    pub b: Array,
    pub alpha: f32,
    pub r: i32,
    /// Dropout rate on the adapter's input (training only).
    pub dropout: f32,
}

impl LoraLinear {
    /// Wraps `base` with PEFT's init: `A` uniform in ±1/sqrt(in) (kaiming
    /// uniform with a = sqrt(5)), `B` zero, so the wrapped layer starts out
    /// equal to the base. The adapters are kept in f32 whatever the base's
    /// dtype (mixed precision: f32 master weights, compute in the input's dtype).
    pub fn new(base: Linear, r: i32, alpha: f32, dropout: f32, key: &Array) -> Result<LoraLinear> {
        if r <= 0 {
            bail!("LoRA rank must be positive, got {r}");
        }
        let (in_dim, out_dim) = (base.in_dim(), base.out_dim());
        let bound = 1.0 / (in_dim as f32).sqrt();
        let a = random::uniform::<f32, f32>(-bound, bound, &[r, in_dim], key)?;
        let b = ops::zeros_dtype(&[out_dim, r], Dtype::Float32)?;
        Ok(LoraLinear {
            base,
            a,
            b,
            alpha,
            r,
            dropout,
        })
    }

    /// `alpha / r`.
    pub fn scale(&self) -> f32 {
        self.alpha / self.r as f32
    }

    /// The wrapped layer's output.
    pub fn forward(&self, ctx: &Ctx, x: &Array) -> Result<Array> {
        let y = self.base.forward(x)?;
        let xd = ctx.dropout(x, self.dropout)?;
        let (a, b) = (self.a.as_dtype(x.dtype())?, self.b.as_dtype(x.dtype())?);
        let low = ops::matmul(ops::matmul(&xd, a.transpose()?)?, b.transpose()?)?;
        let scale = Array::from_f32(self.scale()).as_dtype(low.dtype())?;
        Ok(y.add(low.multiply(scale)?)?)
    }

    /// The plain layer with the update merged: `W + (alpha / r) · B A`.
    pub fn fuse(&self) -> Result<Linear> {
        let dtype = self.base.weight.dtype();
        let delta = ops::matmul(&self.b, &self.a)?.as_dtype(dtype)?;
        let scale = Array::from_f32(self.scale()).as_dtype(delta.dtype())?;
        let weight = self.base.weight.add(delta.multiply(scale)?)?;
        Ok(Linear::new(weight, self.base.bias.clone()))
    }
}

/// A linear layer of an encoder: plain, or wrapped by LoRA.
#[derive(Debug, Clone)]
pub enum LinearLayer {
    Plain(Linear),
    Lora(LoraLinear),
}

impl LinearLayer {
    /// The layer's output.
    pub fn forward(&self, ctx: &Ctx, x: &Array) -> Result<Array> {
        match self {
            LinearLayer::Plain(l) => l.forward(x),
            LinearLayer::Lora(l) => l.forward(ctx, x),
        }
    }

    /// The frozen base layer.
    pub fn base(&self) -> &Linear {
        match self {
            LinearLayer::Plain(l) => l,
            LinearLayer::Lora(l) => &l.base,
        }
    }
}

impl From<Linear> for LinearLayer {
    fn from(l: Linear) -> Self {
        LinearLayer::Plain(l)
    }
}

/// Which projections LoRA wraps (the same names for T5 and BERT; in configs
/// lowercase: `q`, `k`, `v`, `o`, `ffn`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LoraTarget {
    /// Attention query (`q` / `query`).
    Q,
    /// Attention key (`k` / `key`).
    K,
    /// Attention value (`v` / `value`).
    V,
    /// Attention output (`o` / `attention.output.dense`).
    O,
    /// Every feed-forward linear (`wi`, `wi_0`, `wi_1`, `wo` /
    /// `intermediate.dense`, `output.dense`).
    Ffn,
}

impl FromStr for LoraTarget {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "q" => LoraTarget::Q,
            "k" => LoraTarget::K,
            "v" => LoraTarget::V,
            "o" => LoraTarget::O,
            "ffn" => LoraTarget::Ffn,
            other => bail!("unknown LoRA target {other:?} (expected one of q, k, v, o, ffn)"),
        })
    }
}

impl fmt::Display for LoraTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LoraTarget::Q => "q",
            LoraTarget::K => "k",
            LoraTarget::V => "v",
            LoraTarget::O => "o",
            LoraTarget::Ffn => "ffn",
        })
    }
}

/// How to wrap an encoder (a train config's `lora = { r, alpha, dropout, targets }`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    pub r: i32,
    pub alpha: f32,
    pub dropout: f32,
    pub targets: Vec<LoraTarget>,
}

impl Default for LoraConfig {
    /// r 16, alpha 32, no dropout, on q and v.
    fn default() -> Self {
        LoraConfig {
            r: 16,
            alpha: 32.0,
            dropout: 0.0,
            targets: vec![LoraTarget::Q, LoraTarget::V],
        }
    }
}

/// Wraps every targeted linear layer of `encoder` (each with its own key
/// drawn from `key`); returns how many were wrapped. Already wrapped layers
/// are re-initialised.
pub fn apply_lora(encoder: &mut Encoder, config: &LoraConfig, key: &Array) -> Result<usize> {
    let mut key = key.clone();
    let mut count = 0;
    encoder.visit_linears(&mut |path, target, layer| {
        if !config.targets.contains(&target) {
            return Ok(());
        }
        let (next, sub) = random::split2(&key)?;
        key = next;
        let base = layer.base().clone();
        *layer = LinearLayer::Lora(
            LoraLinear::new(base, config.r, config.alpha, config.dropout, &sub)
                .with_context(|| format!("wrapping {path} with LoRA"))?,
        );
        count += 1;
        Ok(())
    })?;
    Ok(count)
}

/// The trainable arrays, `[A, B]` per wrapped layer in module order.
pub fn lora_params(encoder: &Encoder) -> Vec<Array> {
    encoder
        .linears()
        .into_iter()
        .filter_map(|(_, _, l)| match l {
            LinearLayer::Lora(l) => Some([l.a.clone(), l.b.clone()]),
            LinearLayer::Plain(_) => None,
        })
        .flatten()
        .collect()
}

/// Puts arrays shaped like [`lora_params`]'s output back (e.g. the tracers
/// inside `value_and_grad`, or optimizer updates).
pub fn set_lora_params(encoder: &mut Encoder, params: &[Array]) -> Result<()> {
    let mut it = params.iter();
    let mut used = 0;
    encoder.visit_linears(&mut |path, _, layer| {
        if let LinearLayer::Lora(l) = layer {
            for (slot, name) in [(&mut l.a, "lora_A"), (&mut l.b, "lora_B")] {
                let p = it
                    .next()
                    .ok_or_else(|| anyhow!("too few LoRA params: ran out at {path}.{name}"))?;
                if p.shape() != slot.shape() {
                    bail!(
                        "LoRA param {path}.{name}: shape {:?}, expected {:?}",
                        p.shape(),
                        slot.shape()
                    );
                }
                *slot = p.clone();
                used += 1;
            }
        }
        Ok(())
    })?;
    if used != params.len() {
        bail!("got {} LoRA params, the encoder has {used}", params.len());
    }
    Ok(())
}

/// Merges every LoRA layer back into a plain one.
pub fn fuse_lora(encoder: &mut Encoder) -> Result<()> {
    encoder.visit_linears(&mut |path, _, layer| {
        if let LinearLayer::Lora(l) = layer {
            *layer = LinearLayer::Plain(l.fuse().with_context(|| format!("fusing {path}"))?);
        }
        Ok(())
    })
}

const PEFT_PREFIX: &str = "base_model.model.";

/// Saves the adapters (only the LoRA matrices) with PEFT key names.
pub fn save_adapters(encoder: &Encoder, path: &Path) -> Result<()> {
    let mut tensors: Vec<(String, Array)> = Vec::new();
    let mut meta: Option<(i32, f32, f32)> = None;
    let mut modules: Vec<String> = Vec::new();
    for (module, _, layer) in encoder.linears() {
        if let LinearLayer::Lora(l) = layer {
            tensors.push((format!("{PEFT_PREFIX}{module}.lora_A.weight"), l.a.clone()));
            tensors.push((format!("{PEFT_PREFIX}{module}.lora_B.weight"), l.b.clone()));
            meta.get_or_insert((l.r, l.alpha, l.dropout));
            let leaf = module.rsplit('.').next().unwrap_or(&module).to_string();
            if !modules.contains(&leaf) {
                modules.push(leaf);
            }
        }
    }
    let (r, alpha, dropout) = meta.ok_or_else(|| anyhow!("the encoder has no LoRA layers"))?;
    let metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("r".to_string(), r.to_string()),
        ("lora_alpha".to_string(), alpha.to_string()),
        ("lora_dropout".to_string(), dropout.to_string()),
        ("target_modules".to_string(), modules.join(",")),
    ]);
    io::save_safetensors(tensors.iter().map(|(k, v)| (k, v)), Some(metadata), path)
        .with_context(|| format!("saving LoRA adapters to {}", path.display()))
}

/// The `lora_A` / `lora_B` pair found for one module.
struct AdapterPair {
    a: Option<Array>,
    b: Option<Array>,
}

/// Loads adapters saved by [`save_adapters`] (or PEFT) into `encoder`,
/// wrapping the layers they name (replacing existing adapters). `alpha`
/// comes from the file's metadata, else from `adapter_config.json` beside
/// it, else from `fallback`. Returns the effective config.
pub fn load_adapters(
    encoder: &mut Encoder,
    path: &Path,
    fallback: Option<&LoraConfig>,
) -> Result<LoraConfig> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).with_context(|| format!("reading LoRA adapters {file}"))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow!("{file}: not a valid safetensors file: {e}"))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let tensors = io::load_safetensors_bytes(&bytes).map_err(|e| anyhow!("{file}: {e}"))?;

    let mut pairs: BTreeMap<String, AdapterPair> = BTreeMap::new();
    for (key, array) in tensors {
        let stem = key.strip_prefix(PEFT_PREFIX).unwrap_or(&key);
        let (module, is_a) = if let Some(m) = stem.strip_suffix(".lora_A.weight") {
            (m, true)
        } else if let Some(m) = stem.strip_suffix(".lora_B.weight") {
            (m, false)
        } else {
            bail!("{file}: tensor {key:?} is not a LoRA matrix (expected *.lora_A.weight / *.lora_B.weight)");
        };
        let entry = pairs
            .entry(module.to_string())
            .or_insert(AdapterPair { a: None, b: None });
        let array = array.as_type::<f32>()?;
        if is_a {
            entry.a = Some(array);
        } else {
            entry.b = Some(array);
        }
    }
    if pairs.is_empty() {
        bail!("{file}: holds no LoRA matrices");
    }

    let r_meta = meta.get("r").and_then(|v| v.parse::<i32>().ok());
    let alpha = match meta.get("lora_alpha").and_then(|v| v.parse::<f32>().ok()) {
        Some(a) => a,
        None => match peft_config_alpha(path)? {
            Some(a) => a,
            None => fallback.map(|c| c.alpha).ok_or_else(|| {
                anyhow!("{file}: no lora_alpha in its metadata, no adapter_config.json beside it, and no fallback config")
            })?,
        },
    };
    let dropout = meta
        .get("lora_dropout")
        .and_then(|v| v.parse::<f32>().ok())
        .or(fallback.map(|c| c.dropout))
        .unwrap_or(0.0);

    let mut targets = Vec::new();
    let mut rank = None;
    let mut matched = 0;
    let dtype_of = |l: &LinearLayer| l.base().weight.dtype();
    encoder.visit_linears(&mut |module, target, layer| {
        let Some((key, pair)) = pairs
            .iter()
            .find(|(k, _)| *k == module || k.ends_with(&format!(".{module}")))
        else {
            return Ok(());
        };
        let (Some(a), Some(b)) = (&pair.a, &pair.b) else {
            bail!("{file}: {key} has only one of lora_A / lora_B");
        };
        let base = layer.base().clone();
        let (r, in_dim) = (a.dim(0).unwrap_or(0), a.dim(1).unwrap_or(0));
        if in_dim != base.in_dim() || b.shape() != [base.out_dim(), r] {
            bail!(
                "{file}: {key}: lora_A {:?} / lora_B {:?} do not fit a [{}, {}] layer",
                a.shape(),
                b.shape(),
                base.out_dim(),
                base.in_dim()
            );
        }
        let dt = dtype_of(layer);
        *layer = LinearLayer::Lora(LoraLinear {
            base,
            a: a.as_dtype(dt)?,
            b: b.as_dtype(dt)?,
            alpha,
            r,
            dropout,
        });
        rank.get_or_insert(r);
        if !targets.contains(&target) {
            targets.push(target);
        }
        matched += 1;
        Ok(())
    })?;
    if matched != pairs.len() {
        let known: Vec<String> = encoder.linears().into_iter().map(|(p, _, _)| p).collect();
        let unmatched: Vec<&String> = pairs
            .keys()
            .filter(|k| {
                !known
                    .iter()
                    .any(|m| *k == m || k.ends_with(&format!(".{m}")))
            })
            .collect();
        bail!("{file}: adapters for modules this encoder lacks: {unmatched:?}");
    }
    let r = rank.or(r_meta).unwrap_or(0);
    targets.sort();
    Ok(LoraConfig {
        r,
        alpha,
        dropout,
        targets,
    })
}

/// `lora_alpha` from a PEFT `adapter_config.json` beside `path`, if any.
fn peft_config_alpha(path: &Path) -> Result<Option<f32>> {
    let Some(cfg) = path.parent().map(|d| d.join("adapter_config.json")) else {
        return Ok(None);
    };
    if !cfg.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&cfg).with_context(|| format!("reading {}", cfg.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", cfg.display()))?;
    Ok(v.get("lora_alpha")
        .and_then(|a| a.as_f64())
        .map(|a| a as f32))
}
