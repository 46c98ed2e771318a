//! `xtr-pipe bench train-step`: the reference LoRA train step on synthetic token
//! ids, timed per step (median) with a per-phase split, for side-by-side figures
//! against PyTorch.

use std::time::Instant;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::loss::LossConfig;
use super::optim::AdamWConfig;
use super::step::{Batch, PhaseTimes, StepConfig, Trainer};
use crate::cancel::CancelToken;
use crate::mlx::{random, Dtype};
use crate::model::bench::{load_for_bench, random_batch};
use crate::model::LoraConfig;

pub use crate::model::bench::T5_BASE_RANDOM;

/// What is timed, with its defaults in this one place: the `profile` kind's
/// params and `bench train-step`'s flags are both this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StepShape {
    /// Query/document pairs per step (in-batch negatives: at least 2).
    pub batch: i32,
    /// Query length in tokens.
    pub qlen: i32,
    /// Document length in tokens.
    pub dlen: i32,
    /// Timed steps (the median is reported).
    pub steps: usize,
    /// Untimed steps first (the first compiles the graph).
    pub warmup: usize,
    /// Dropout in the encoder at the model's own rate; unset: on for
    /// `t5-base-random`, off for a model directory.
    pub dropout: Option<bool>,
    /// One compiled graph per step (false: eager, which gives the phase split).
    pub compile: bool,
}

impl Default for StepShape {
    fn default() -> Self {
        StepShape {
            batch: 12,
            qlen: 32,
            dlen: 128,
            steps: 10,
            warmup: 2,
            dropout: None,
            compile: true,
        }
    }
}

impl StepShape {
    /// Whether dropout is on for `model` (see [`StepShape::dropout`]).
    pub fn dropout_for(&self, model: &str) -> bool {
        self.dropout.unwrap_or(model == T5_BASE_RANDOM)
    }
}

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

impl BenchOptions {
    pub fn new(model: String, shape: &StepShape, dtype: Dtype) -> BenchOptions {
        BenchOptions {
            dropout: shape.dropout_for(&model),
            model,
            batch: shape.batch,
            qlen: shape.qlen,
            dlen: shape.dlen,
            steps: shape.steps,
            warmup: shape.warmup,
            compile: shape.compile,
            dtype,
        }
    }
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

/// Times the step as `opts` says.
pub fn run(opts: &BenchOptions) -> Result<BenchReport> {
    run_until(opts, &CancelToken::new(), &mut |_| {})
}

/// One finished step, as [`run_until`] reports it.
#[derive(Debug, Clone, Copy)]
pub struct StepDone {
    /// An untimed warm-up step (the first compiles the graph).
    pub warmup: bool,
    /// 0-based among the warm-up or among the timed steps.
    pub index: usize,
    pub seconds: f64,
    pub loss: f32,
}

/// Like [`run`], checking `cancel` before each step (once it is cancelled the
/// run stops with [`Cancelled`](crate::cancel::Cancelled)) and telling `on_step` about
/// each step as it finishes.
pub fn run_until(
    opts: &BenchOptions,
    cancel: &CancelToken,
    on_step: &mut dyn FnMut(StepDone),
) -> Result<BenchReport> {
    if opts.batch < 2 {
        bail!("--batch must be at least 2 (in-batch negatives)");
    }
    if opts.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let (model, vocab) = load_for_bench(&opts.model, opts.dtype)?;
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
    let (query_ids, query_mask) = random_batch(&kq, opts.batch, opts.qlen, vocab)?;
    let (doc_ids, doc_mask) = random_batch(&kd, opts.batch, opts.dlen, vocab)?;
    let batch = Batch {
        query_ids,
        query_mask,
        doc_ids,
        doc_mask,
    };
    let mut loss = f32::NAN;
    let stop = || -> Result<()> { Ok(cancel.check()?) };
    for index in 0..opts.warmup {
        stop()?;
        let start = Instant::now();
        loss = trainer.step(&batch, None)?;
        on_step(StepDone {
            warmup: true,
            index,
            seconds: start.elapsed().as_secs_f64(),
            loss,
        });
    }
    let mut times = Vec::with_capacity(opts.steps);
    let mut phases = PhaseTimes::default();
    for index in 0..opts.steps {
        stop()?;
        let start = Instant::now();
        loss = trainer.step(&batch, Some(&mut phases))?;
        let seconds = start.elapsed().as_secs_f64();
        times.push(seconds);
        on_step(StepDone {
            warmup: false,
            index,
            seconds,
            loss,
        });
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
