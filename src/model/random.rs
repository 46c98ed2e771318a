//! Randomly initialised models of real sizes, for benchmarks and tests that need
//! the shapes of a checkpoint without its weights (none is downloadable here).

use std::collections::HashMap;

use anyhow::Result;

use super::head::{Encoder, Head, MultiVectorModel};
use super::t5::{T5Config, T5Encoder};
use super::weights::Weights;
use crate::mlx::{random, Array, Dtype};

/// The encoder of T5 v1.1 base (the XTR-base backbone): 12 layers, d_model 768,
/// 12 heads of 64, gated-GELU FFN of 2048, vocabulary 32128, dropout 0.1.
pub fn t5_base_config() -> T5Config {
    T5Config {
        vocab_size: 32128,
        d_model: 768,
        d_kv: 64,
        d_ff: 2048,
        num_layers: 12,
        num_heads: 12,
        relative_attention_num_buckets: 32,
        relative_attention_max_distance: 128,
        dropout_rate: 0.1,
        layer_norm_epsilon: 1e-6,
        feed_forward_proj: "gated-gelu".to_string(),
    }
}

/// A T5 encoder with random weights (linears ~ N(0, 1/fan_in), embeddings ~ N(0, 1),
/// norms 1) and a random `d_model -> head_dim` head, seeded, stored in `dtype`.
pub fn random_t5(
    config: T5Config,
    head_dim: i32,
    seed: u64,
    dtype: Dtype,
) -> Result<MultiVectorModel> {
    super::capacity::check_default_device(None, dtype)?;
    let mut key = random::key(seed)?;
    let mut draw = |shape: &[i32], std: f32| -> Result<Array> {
        let (next, sub) = random::split2(&key)?;
        key = next;
        Ok(random::normal::<f32>(shape, None, Some(std), &sub)?)
    };
    let (d, inner, ff) = (config.d_model, config.num_heads * config.d_kv, config.d_ff);
    let gated = config.feed_forward_proj.starts_with("gated-");
    let mut w: HashMap<String, Array> = HashMap::new();
    w.insert("shared.weight".into(), draw(&[config.vocab_size, d], 1.0)?);
    w.insert(
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight".into(),
        draw(
            &[config.relative_attention_num_buckets, config.num_heads],
            0.1,
        )?,
    );
    let ones = |n: i32| Array::ones::<f32>(&[n]);
    for i in 0..config.num_layers {
        let att = format!("encoder.block.{i}.layer.0");
        let ffp = format!("encoder.block.{i}.layer.1.DenseReluDense");
        for (name, out, inp) in [
            ("q", inner, d),
            ("k", inner, d),
            ("v", inner, d),
            ("o", d, inner),
        ] {
            w.insert(
                format!("{att}.SelfAttention.{name}.weight"),
                draw(&[out, inp], (inp as f32).powf(-0.5))?,
            );
        }
        w.insert(format!("{att}.layer_norm.weight"), ones(d)?);
        let wi: &[&str] = if gated { &["wi_0", "wi_1"] } else { &["wi"] };
        for name in wi {
            w.insert(
                format!("{ffp}.{name}.weight"),
                draw(&[ff, d], (d as f32).powf(-0.5))?,
            );
        }
        w.insert(
            format!("{ffp}.wo.weight"),
            draw(&[d, ff], (ff as f32).powf(-0.5))?,
        );
        w.insert(
            format!("encoder.block.{i}.layer.1.layer_norm.weight"),
            ones(d)?,
        );
    }
    w.insert("encoder.final_layer_norm.weight".into(), ones(d)?);
    let w = w
        .into_iter()
        .map(|(k, v)| Ok((k, v.as_dtype(dtype)?)))
        .collect::<Result<HashMap<_, _>>>()?;
    // Materialise the draws now. Left lazy, every graph that uses a weight
    // would carry its generator with it, and a compiled train step captures
    // them as part of its graph: it redrew all 110M weights on every step.
    crate::mlx::eval(w.values())?;
    let weights = Weights::from_arrays(w, dtype, "<random t5>");
    let encoder = Encoder::T5(T5Encoder::load(config, &weights)?);
    let (_, head_key) = random::split2(&random::key(seed.wrapping_add(1))?)?;
    let mut head = Head::random(d, head_dim, &head_key)?;
    let cast = head
        .params()
        .iter()
        .map(|p| p.as_dtype(dtype))
        .collect::<Result<Vec<_>, _>>()?;
    head.set_params(&cast)?;
    Ok(MultiVectorModel { encoder, head })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_random_t5_runs_and_gives_unit_vectors() -> Result<()> {
        let config = T5Config {
            vocab_size: 50,
            d_model: 16,
            d_kv: 4,
            d_ff: 32,
            num_layers: 2,
            num_heads: 4,
            ..t5_base_config()
        };
        let model = random_t5(config, 8, 3, Dtype::Float32)?;
        let ids = Array::from_slice(&[1i32, 2, 3, 4, 5, 0], &[2, 3])?;
        let mask = Array::from_slice(&[1i32, 1, 1, 1, 1, 0], &[2, 3])?;
        let out = model.forward(&ids, &mask)?.embeddings;
        assert_eq!(out.shape(), &[2, 3, 8]);
        let v = out.to_vec::<f32>()?;
        let norm = |i: usize| {
            v[i * 8..(i + 1) * 8]
                .iter()
                .map(|x| x * x)
                .sum::<f32>()
                .sqrt()
        };
        assert!((norm(0) - 1.0).abs() < 1e-5 && (norm(4) - 1.0).abs() < 1e-5);
        assert_eq!(norm(5), 0.0, "padding is zeroed");
        Ok(())
    }
}
