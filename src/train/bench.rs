//! `xtr-pipe bench train-step`: the reference LoRA train step on synthetic token
//! ids, timed per step (median) with a per-phase split, for side-by-side figures
//! against PyTorch.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::loss::LossConfig;
use super::optim::AdamWConfig;
use super::step::{Batch, PhaseTimes, StepConfig, Trainer};
use crate::mlx::{random, Array, Dtype};
use crate::model::random::{random_t5, t5_base_config};
use crate::model::{LoadOptions, LoraConfig, ModelDir, MultiVectorModel};

/// The model name that builds a random t5-base-sized encoder instead of loading a directory.
pub const T5_BASE_RANDOM: &str = "t5-base-random";

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub model: String,
    pub batch: i32,
    pub qlen: i32,
    pub dlen: i32,
    pub steps: usize,
    pub warmup: usize,
    /// Dropout in the encoder while training (the model's own rate).
    pub dropout: bool,
    /// Compile the whole step into one graph.
    pub compile: bool,
    /// Compute dtype: f32, or bf16 (frozen weights in bf16, LoRA adapters and
    /// optimizer state in f32, loss in f32).
    pub dtype: Dtype,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub device: String,
    pub dtype: String,
    pub batch: i32,
    pub qlen: i32,
    pub dlen: i32,
    pub steps: usize,
    pub dropout: bool,
    pub compiled: bool,
    pub trainable_params: usize,
    /// Median over the timed steps.
    pub step_seconds: f64,
    pub samples_per_s: f64,
    /// Mean seconds per step in each phase (eager steps only; zero when compiled).
    pub phases: PhaseTimes,
    pub final_loss: f32,
}

fn load(model: &str, dtype: Dtype) -> Result<(MultiVectorModel, i32)> {
    if model == T5_BASE_RANDOM {
        let config = t5_base_config();
        let vocab = config.vocab_size;
        return Ok((random_t5(config, 128, 0, dtype)?, vocab));
    }
    let dir = ModelDir::open(model).with_context(|| format!("opening model {model}"))?;
    let vocab = dir.vocab_size();
    Ok((dir.load_model(&LoadOptions { dtype })?, vocab))
}

fn random_ids(key: &Array, batch: i32, len: i32, vocab: i32) -> Result<(Array, Array)> {
    // Ids in [1, vocab): 0 is padding for T5 and BERT alike.
    let ids = random::uniform::<f32, f32>(1.0, vocab as f32, &[batch, len], key)?
        .as_dtype(Dtype::Int32)?;
    Ok((ids, Array::ones::<i32>(&[batch, len])?))
}

pub fn run(opts: &BenchOptions) -> Result<BenchReport> {
    if opts.batch < 2 {
        bail!("--batch must be at least 2 (in-batch negatives)");
    }
    if opts.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let (model, vocab) = load(&opts.model, opts.dtype)?;
    let cfg = StepConfig {
        lora: LoraConfig::default(),
        loss: LossConfig::default(),
        adamw: AdamWConfig::default(),
        train_dropout: opts.dropout,
        compile: opts.compile,
        seed: 0,
    };
    let mut trainer = Trainer::new(model, cfg)?;
    let (kq, kd) = random::split2(&random::key(42)?)?;
    let (query_ids, query_mask) = random_ids(&kq, opts.batch, opts.qlen, vocab)?;
    let (doc_ids, doc_mask) = random_ids(&kd, opts.batch, opts.dlen, vocab)?;
    let batch = Batch {
        query_ids,
        query_mask,
        doc_ids,
        doc_mask,
    };
    let mut loss = f32::NAN;
    for _ in 0..opts.warmup {
        loss = trainer.step(&batch, None)?;
    }
    let mut times = Vec::with_capacity(opts.steps);
    let mut phases = PhaseTimes::default();
    for _ in 0..opts.steps {
        let start = Instant::now();
        loss = trainer.step(&batch, Some(&mut phases))?;
        times.push(start.elapsed().as_secs_f64());
    }
    if !loss.is_finite() {
        bail!("the loss is {loss}: the step diverged");
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let n = opts.steps as f64;
    Ok(BenchReport {
        model: opts.model.clone(),
        device: format!("{:?}", crate::mlx::Device::default_device()?),
        dtype: if opts.dtype == Dtype::Float32 {
            "f32"
        } else {
            "bf16"
        }
        .into(),
        batch: opts.batch,
        qlen: opts.qlen,
        dlen: opts.dlen,
        steps: opts.steps,
        dropout: opts.dropout,
        compiled: opts.compile,
        trainable_params: trainer.trainable(),
        step_seconds: median,
        samples_per_s: opts.batch as f64 / median,
        phases: PhaseTimes {
            forward_backward: phases.forward_backward / n,
            optimizer: phases.optimizer / n,
        },
        final_loss: loss,
    })
}
