//! `xtr-pipe bench encode`: inference throughput of a multi-vector encoder
//! (tokens per second, dropout off) on synthetic token ids, for side-by-side
//! figures against PyTorch (`scripts/bench_encode_torch.py`).

use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::random::{random_t5, t5_base_config};
use super::{LoadOptions, ModelDir, MultiVectorModel};
use crate::mlx::{random, Array, Device, Dtype};

/// The model name that builds a random t5-base-sized encoder instead of loading a directory.
pub const T5_BASE_RANDOM: &str = "t5-base-random";

/// Load `model` (a directory, or [`T5_BASE_RANDOM`]) in `dtype`; returns it and its vocabulary size.
pub fn load_for_bench(model: &str, dtype: Dtype) -> Result<(MultiVectorModel, i32)> {
    if model == T5_BASE_RANDOM {
        let config = t5_base_config();
        let vocab = config.vocab_size;
        return Ok((random_t5(config, 128, 0, dtype)?, vocab));
    }
    let dir = ModelDir::open(model).with_context(|| format!("opening model {model}"))?;
    let vocab = dir.vocab_size();
    Ok((dir.load_model(&LoadOptions { dtype })?, vocab))
}

/// Random ids in `[1, vocab)` (0 is padding for T5 and BERT alike) and an all-ones mask.
pub fn random_batch(key: &Array, batch: i32, len: i32, vocab: i32) -> Result<(Array, Array)> {
    let ids = random::uniform::<f32, f32>(1.0, vocab as f32, &[batch, len], key)?
        .as_dtype(Dtype::Int32)?;
    Ok((ids, Array::ones::<i32>(&[batch, len])?))
}

#[derive(Debug, Serialize)]
pub struct EncodeReport {
    pub model: String,
    pub device: String,
    pub batch: i32,
    pub len: i32,
    pub steps: usize,
    /// Median seconds per forward pass.
    pub step_seconds: f64,
    pub tokens_per_s: f64,
}

/// Time `steps` forward passes (after `warmup`) of `batch` texts of `len` tokens.
pub fn encode_throughput(
    model: &str,
    batch: i32,
    len: i32,
    steps: usize,
    warmup: usize,
) -> Result<EncodeReport> {
    if batch < 1 || len < 1 || steps == 0 {
        bail!("--batch, --len and --steps must be positive");
    }
    let (m, vocab) = load_for_bench(model, Dtype::Float32)?;
    let (ids, mask) = random_batch(&random::key(7)?, batch, len, vocab)?;
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let start = Instant::now();
        m.forward(&ids, &mask)?.embeddings.eval()?;
        if i >= warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    Ok(EncodeReport {
        model: model.to_string(),
        device: format!("{:?}", Device::default_device()?),
        batch,
        len,
        steps,
        step_seconds: median,
        tokens_per_s: (batch * len) as f64 / median,
    })
}
