//! `xtr-pipe bench train-step`: the reference LoRA train step on synthetic token
//! ids, timed per step (median) with a per-phase split (eager steps), for
//! side-by-side figures against PyTorch; and its MFU: the step's matmul FLOPs
//! per second over the GEMM peak measured on the same device and dtype.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::loss::LossConfig;
use super::optim::AdamWConfig;
use super::step::{Batch, PhaseTimes, StepConfig, Trainer};
use crate::cancel::CancelToken;
use crate::mlx::{self, ops, random, Device, DeviceType, Dtype};
use crate::model::bench::{load_for_bench, random_batch};
use crate::model::{Encoder, LoraConfig, MultiVectorModel};

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
    /// Each phase's fraction of the mean eager step (zero when compiled).
    pub phase_shares: PhaseTimes,
    /// Matmul FLOPs of one step (see [`MatmulShape::step_flops`]).
    pub step_flops: f64,
    /// FLOP/s of a square matmul in the step's dtype on this device (see [`gemm_peak`]).
    pub gemm_peak_flops: f64,
    /// Model FLOPs utilisation: `step_flops / step_seconds / gemm_peak_flops`.
    pub mfu: f64,
    /// OpenBLAS's kernel set for the CPU's GEMMs (`SkylakeX`, `Haswell`, ...;
    /// empty for another BLAS): see [`crate::mlx::blas_core`].
    pub blas: String,
    pub final_loss: f32,
}

/// The phase split as table rows: each phase's mean seconds and share of the step.
pub fn phase_table(phases: &PhaseTimes) -> Vec<String> {
    let shares = phases.shares();
    let rows = [
        (
            "forward (query)",
            phases.forward_query,
            shares.forward_query,
        ),
        ("forward (doc)", phases.forward_doc, shares.forward_doc),
        ("MaxSim", phases.maxsim, shares.maxsim),
        ("loss", phases.loss, shares.loss),
        ("backward", phases.backward, shares.backward),
        ("optimizer", phases.optimizer, shares.optimizer),
        ("step", phases.total(), 1.0),
    ];
    let mut lines = vec![format!("  {:<16} {:>10} {:>7}", "phase", "s/step", "share")];
    lines.extend(
        rows.iter()
            .map(|(name, s, share)| format!("  {name:<16} {s:>10.5} {:>6.1}%", 100.0 * share)),
    );
    lines
}

/// Model FLOPs utilisation: the achieved FLOP/s of a step over the peak.
pub fn mfu(step_flops: f64, step_seconds: f64, peak_flops: f64) -> f64 {
    if step_seconds > 0.0 && peak_flops > 0.0 {
        step_flops / step_seconds / peak_flops
    } else {
        0.0
    }
}

/// The matmuls of a multi-vector model, from its config: what its FLOPs are
/// counted from (elementwise work, norms, softmax and gathers are not counted,
/// as is usual for MFU).
#[derive(Debug, Clone, PartialEq)]
pub struct MatmulShape {
    pub layers: f64,
    pub hidden: f64,
    /// The attention width, heads x head size (BERT: hidden; T5: `num_heads * d_kv`).
    pub attention: f64,
    pub intermediate: f64,
    /// Weight matrices in the feed-forward block: 2, or 3 when gated (T5 v1.1).
    pub ffn_matrices: f64,
    /// `(in, out)` of each Dense layer of the head.
    pub head: Vec<(f64, f64)>,
    /// The embedding width (MaxSim's inner dimension).
    pub dim: f64,
}

impl MatmulShape {
    pub fn of(model: &MultiVectorModel) -> Result<MatmulShape> {
        let (layers, hidden, attention, intermediate, gated) = match &model.encoder {
            Encoder::Bert(e) => {
                let c = &e.config;
                (
                    c.num_hidden_layers,
                    c.hidden_size,
                    c.hidden_size,
                    c.intermediate_size,
                    false,
                )
            }
            Encoder::T5(e) => {
                let c = &e.config;
                let (_, gated) = c.ffn_activation()?;
                (c.num_layers, c.d_model, c.num_heads * c.d_kv, c.d_ff, gated)
            }
        };
        let head = model
            .head
            .dense
            .iter()
            .map(|d| (f64::from(d.linear.in_dim()), f64::from(d.linear.out_dim())))
            .collect();
        Ok(MatmulShape {
            layers: f64::from(layers),
            hidden: f64::from(hidden),
            attention: f64::from(attention),
            intermediate: f64::from(intermediate),
            ffn_matrices: if gated { 3.0 } else { 2.0 },
            head,
            dim: f64::from(model.dim()),
        })
    }

    /// Forward FLOPs of the weight matmuls on one sequence of `len` tokens
    /// (2 per multiply-add): per layer, q, k, v and o (`4 * hidden * attention`)
    /// and the FFN (`ffn_matrices * hidden * intermediate`); then the head.
    pub fn linear_flops(&self, len: f64) -> f64 {
        let layer = 4.0 * self.hidden * self.attention
            + self.ffn_matrices * self.hidden * self.intermediate;
        let head: f64 = self.head.iter().map(|(i, o)| i * o).sum();
        2.0 * len * (self.layers * layer + head)
    }

    /// Forward FLOPs of attention on one sequence of `len` tokens: scores
    /// `Q Kᵀ` and context `P V`, each `2 * len² * attention` per layer.
    pub fn attention_flops(&self, len: f64) -> f64 {
        self.layers * 2.0 * 2.0 * len * len * self.attention
    }

    /// Forward FLOPs of the MaxSim GEMM over a batch: `[B*Lq, dim] x [dim, B*Ld]`.
    pub fn maxsim_flops(&self, batch: f64, qlen: f64, dlen: f64) -> f64 {
        2.0 * batch * qlen * batch * dlen * self.dim
    }

    /// Matmul FLOPs of one LoRA train step (forward, backward) on `batch`
    /// pairs of `qlen` / `dlen` tokens:
    ///
    /// ```text
    /// W = B * (linear(Lq) + linear(Ld))                          weight matmuls
    /// A = B * (attention(Lq) + attention(Ld)) + maxsim(B, Lq, Ld) activation x activation
    /// step = (W + A)   forward
    ///      + (W + 2A)  backward
    /// ```
    ///
    /// The base weights are frozen, so a weight matmul's backward is its input
    /// gradient only (1x forward; no weight gradient), while a product of two
    /// activations (attention, MaxSim) needs the gradient of both (2x). Left
    /// out: the LoRA adapters themselves (forward, input and weight
    /// gradients: about `6 * 2r / hidden` of the targeted q and v projections,
    /// 1 to 2% of the step at r 16), and the first layer's input gradient is
    /// counted although nothing upstream needs it (an overcount of
    /// `1 / layers` of W's backward). The optimizer's elementwise work is not a matmul.
    pub fn step_flops(&self, batch: i32, qlen: i32, dlen: i32) -> f64 {
        let (b, lq, ld) = (f64::from(batch), f64::from(qlen), f64::from(dlen));
        let weights = b * (self.linear_flops(lq) + self.linear_flops(ld));
        let activations = b * (self.attention_flops(lq) + self.attention_flops(ld))
            + self.maxsim_flops(b, lq, ld);
        2.0 * weights + 3.0 * activations
    }
}

/// The side of the square matmul [`gemm_peak`] times on `device`: large enough
/// to saturate it, small enough to take well under a second.
pub fn gemm_size(device: &Device) -> i32 {
    match device.device_type {
        DeviceType::Gpu => 4096,
        DeviceType::Cpu => 1024,
    }
}

/// The matmul throughput of the default device in `dtype` (FLOP/s): the median
/// of `reps` timed `n x n x n` products (`2 n³` FLOPs each), each evaluated,
/// after one untimed product.
pub fn gemm_peak(n: i32, dtype: Dtype, reps: usize) -> Result<f64> {
    if n < 1 || reps == 0 {
        bail!("a GEMM of side {n}, {reps} times, measures nothing");
    }
    let (ka, kb) = random::split2(&random::key(7)?)?;
    let a = random::normal::<f32>(&[n, n], None, None, &ka)?.as_dtype(dtype)?;
    let b = random::normal::<f32>(&[n, n], None, None, &kb)?.as_dtype(dtype)?;
    mlx::eval([&a, &b])?;
    mlx::eval([&ops::matmul(&a, &b)?])?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        mlx::eval([&ops::matmul(&a, &b)?])?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    Ok(2.0 * f64::from(n).powi(3) / median.max(f64::MIN_POSITIVE))
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
    let step_flops = MatmulShape::of(&model)
        .context("counting the step's FLOPs")?
        .step_flops(opts.batch, opts.qlen, opts.dlen);
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
    let phases = phases.scaled(1.0 / opts.steps as f64);
    let device = Device::default_device()?;
    stop()?;
    let gemm_peak_flops =
        gemm_peak(gemm_size(&device), opts.dtype, 5).context("measuring the device's GEMM peak")?;
    Ok(BenchReport {
        model: opts.model.clone(),
        device: format!("{device:?}"),
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
        phases,
        phase_shares: phases.shares(),
        step_flops,
        gemm_peak_flops,
        mfu: mfu(step_flops, median, gemm_peak_flops),
        blas: crate::mlx::blas_core(),
        final_loss: loss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY_BERT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny_bert");

    /// tiny_bert: 2 layers, hidden 32, 4 heads (attention 32), intermediate 64,
    /// a 32 -> 16 Dense head; batch 2, q 3 / d 5 tokens.
    #[test]
    fn the_step_flops_of_tiny_bert_are_counted_by_hand() -> Result<()> {
        let (model, _) = load_for_bench(TINY_BERT, Dtype::Float32)?;
        let shape = MatmulShape::of(&model)?;
        assert_eq!(
            shape,
            MatmulShape {
                layers: 2.0,
                hidden: 32.0,
                attention: 32.0,
                intermediate: 64.0,
                ffn_matrices: 2.0,
                head: vec![(32.0, 16.0)],
                dim: 16.0,
            }
        );
        // Weights per token: 2 * (2 * (4*32*32 + 2*32*64) + 32*16) = 33792 FLOPs,
        // W = 2 pairs * (3 + 5) tokens * 33792 = 540672.
        assert_eq!(shape.linear_flops(3.0), 3.0 * 33792.0);
        // Attention: 2 layers * 2 matmuls * 2 * L² * 32 = 256 L²;
        // MaxSim: 2 * (2*3) * (2*5) * 16 = 1920; A = 2 * 256 * (9 + 25) + 1920 = 19328.
        assert_eq!(shape.attention_flops(5.0), 6400.0);
        assert_eq!(shape.maxsim_flops(2.0, 3.0, 5.0), 1920.0);
        // step = 2W + 3A.
        assert_eq!(shape.step_flops(2, 3, 5), 2.0 * 540672.0 + 3.0 * 19328.0);
        Ok(())
    }

    #[test]
    fn a_gated_t5_counts_three_ffn_matrices() -> Result<()> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny_t5_gated");
        let (model, _) = load_for_bench(dir, Dtype::Float32)?;
        let shape = MatmulShape::of(&model)?;
        assert_eq!(shape.ffn_matrices, 3.0);
        let Encoder::T5(e) = &model.encoder else {
            panic!("tiny_t5_gated is not a T5")
        };
        assert_eq!(
            shape.attention,
            f64::from(e.config.num_heads * e.config.d_kv)
        );
        Ok(())
    }

    #[test]
    fn mfu_is_achieved_flops_over_the_peak() {
        assert_eq!(mfu(2e9, 0.5, 8e9), 0.5);
        assert_eq!(mfu(3e12, 2.0, 1e12), 1.5, "the formula, not a cap");
        assert_eq!(mfu(1e9, 0.0, 1e9), 0.0);
        assert_eq!(mfu(1e9, 1.0, 0.0), 0.0);
    }

    #[test]
    fn the_gemm_peak_is_a_positive_rate() -> Result<()> {
        let peak = gemm_peak(64, Dtype::Float32, 3)?;
        assert!(peak.is_finite() && peak > 0.0, "{peak}");
        assert!(gemm_peak(0, Dtype::Float32, 3).is_err());
        Ok(())
    }

    #[test]
    fn an_eager_bench_reports_the_split_and_the_mfu() -> Result<()> {
        let shape = StepShape {
            batch: 2,
            qlen: 3,
            dlen: 5,
            steps: 2,
            warmup: 1,
            dropout: None,
            compile: false,
        };
        let report = run(&BenchOptions::new(TINY_BERT.into(), &shape, Dtype::Float32))?;
        assert_eq!(report.step_flops, 2.0 * 540672.0 + 3.0 * 19328.0);
        assert!(report.gemm_peak_flops > 0.0);
        let want = mfu(
            report.step_flops,
            report.step_seconds,
            report.gemm_peak_flops,
        );
        assert_eq!(report.mfu, want);
        assert!(report.phases.backward > 0.0 && report.phase_shares.backward > 0.0);
        let table = phase_table(&report.phases);
        assert_eq!(table.len(), 8, "{table:?}");
        assert!(table[7].contains("100.0%"), "{table:?}");
        Ok(())
    }
}
