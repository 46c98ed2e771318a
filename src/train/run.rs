//! The training loop a `train` stage runs: LoRA fine-tuning of a multi-vector
//! model on the train split of a dataset artifact, with gradient accumulation,
//! a learning-rate schedule, validation on the eval split, and checkpoints.
//!
//! Promises: a run stopped at any point (cancelled, killed) and started again
//! with the same config and working directory continues from its last
//! checkpoint, and on the CPU ends with adapters bit-identical to a run that
//! was never stopped. Outputs (see [`train`]): `adapters.safetensors`,
//! `lora_config.json`, `metrics.parquet`, `train.json`, `metrics.json`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, Checkpoint, RunState, StepRecord};
use super::data::{self, Batcher, DataPosition, TextEncoder, TextPair, TokenizeStats};
use super::loss::LossConfig;
use super::optim::AdamWConfig;
use super::schedule::{LrSchedule, Schedule};
use super::step::{Batch, InFlight, Shard, StepConfig, Trainer};
use crate::cancel::{CancelToken, Cancelled};
use crate::mlx::distributed::Group;
use crate::mlx::{ops, Array, Device, Dtype};
use crate::model::lora::{save_adapters, LinearLayer};
use crate::model::resolve::ModelSource;
use crate::model::LoraConfig;

/// The MLX version the binding is built against (build.rs refuses any other).
const MLX_VERSION: &str = "0.32.4";

/// A train stage's params. Defaults are the reference run (XTR-base, LoRA r16
/// / alpha 32 on q and v, batch 12 x 4 accumulated, 3 epochs, lr 2e-5 cosine
/// with 500 warmup steps, InfoNCE t 0.07 + margin 0.2 weight 0.1).
// No `deny_unknown_fields`: the `train` kind flattens this beside the compute
// params, and its decoding refuses unknown keys itself (`stages::decode`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// A directory, a Hugging Face repo id in the local cache, or `t5-base-random`
    /// (see [`crate::model::resolve`]).
    pub model: String,
    /// Pairs per micro-batch (each its own group of in-batch negatives).
    pub batch_size: usize,
    /// Micro-batches whose gradients are averaged into one update.
    pub grad_accum: usize,
    pub epochs: u64,
    /// Stop after this many updates (the schedule spans them).
    pub max_steps: Option<u64>,
    /// Peak learning rate.
    pub lr: f32,
    pub warmup_steps: u64,
    pub schedule: Schedule,
    /// Seeds the adapters' init, the data order and dropout.
    pub seed: u64,
    pub max_query_tokens: usize,
    pub max_doc_tokens: usize,
    /// Pad each batch to its longest text rounded up to a multiple of this
    /// (1: exactly the longest); fewer shapes, fewer traces of the compiled step.
    pub pad_multiple: usize,
    /// Clip the gradient to this global L2 norm; 0 turns clipping off.
    pub grad_clip: f32,
    pub weight_decay: f32,
    /// Write a checkpoint every this many updates (and when cancelled).
    pub checkpoint_every: u64,
    /// Validate on the eval split every this many updates (and at the end); 0: only at the end.
    pub eval_every: u64,
    /// At most this many eval-split batches per validation.
    pub eval_batches: usize,
    /// The encoder's own dropout while training (e.g. T5's 0.1).
    pub dropout: bool,
    /// Trace the step once per batch shape and replay it as fused graphs
    /// (faster, most of all on a GPU); false runs it op by op.
    pub compile: bool,
    pub lora: LoraConfig,
    pub loss: LossConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: "google/xtr-base-en".to_string(),
            batch_size: 12,
            grad_accum: 4,
            epochs: 3,
            max_steps: None,
            lr: 2e-5,
            warmup_steps: 500,
            schedule: Schedule::Cosine,
            seed: 0,
            max_query_tokens: 32,
            max_doc_tokens: 128,
            pad_multiple: 8,
            grad_clip: 1.0,
            weight_decay: 0.01,
            checkpoint_every: 1000,
            eval_every: 1000,
            eval_batches: 50,
            dropout: true,
            compile: true,
            lora: LoraConfig::default(),
            loss: LossConfig::default(),
        }
    }
}

impl TrainConfig {
    /// Values no run can use, named.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.batch_size >= 2,
            "batch_size must be at least 2 (in-batch negatives), got {}",
            self.batch_size
        );
        ensure!(self.grad_accum >= 1, "grad_accum must be at least 1");
        ensure!(self.epochs >= 1, "epochs must be at least 1");
        ensure!(self.max_steps != Some(0), "max_steps must be at least 1");
        ensure!(
            self.lr.is_finite() && self.lr > 0.0,
            "lr must be positive, got {}",
            self.lr
        );
        ensure!(
            self.grad_clip.is_finite() && self.grad_clip >= 0.0,
            "grad_clip must be 0 (off) or positive"
        );
        ensure!(
            self.checkpoint_every >= 1,
            "checkpoint_every must be at least 1"
        );
        ensure!(
            self.max_query_tokens >= 1 && self.max_doc_tokens >= 1,
            "max_query_tokens and max_doc_tokens must be at least 1"
        );
        ensure!(self.lora.r >= 1, "lora.r must be at least 1");
        ensure!(
            (0.0..1.0).contains(&self.lora.dropout),
            "lora.dropout must be in [0, 1)"
        );
        ensure!(
            !self.lora.targets.is_empty(),
            "lora.targets must name at least one projection"
        );
        ensure!(
            self.loss.temperature > 0.0,
            "loss.temperature must be positive"
        );
        Ok(())
    }
}

/// Where a run reads and writes.
pub struct TrainPaths<'a> {
    /// A dataset artifact's `pairs.parquet`.
    pub pairs: &'a Path,
    /// Checkpoints (kept between attempts; the store owns it per key).
    pub work_dir: &'a Path,
    /// The artifact's files.
    pub out_dir: &'a Path,
    /// Where to write the host's timeline of every update
    /// (`train-rank{R}.jsonl`, see [`TraceLine`]), when asked for.
    pub trace: Option<&'a Path>,
}

/// One update in the host's timeline (milliseconds): what the host spent on
/// it (its batches, and [`LaunchTimes`]'s pieces of building and starting it),
/// how long it then waited for the device to finish it, and the update's
/// period as the step log counts it. An update whose `land_ms` stays near zero
/// was finished before the host asked: the host, not the device, set the pace.
#[derive(Serialize)]
struct TraceLine {
    rank: usize,
    step: u64,
    data_ms: f64,
    grads_ms: f64,
    reduce_ms: f64,
    update_ms: f64,
    submit_ms: f64,
    calls_ms: f64,
    launch_ms: f64,
    land_ms: f64,
    period_ms: f64,
}

/// The open `train-rank{R}.jsonl` of [`TrainPaths::trace`].
struct Trace(std::io::BufWriter<fs::File>);

impl Trace {
    /// Opens the timeline, and writes `train-ops-rank{R}.tsv` beside it: the
    /// operations of one micro-batch's forward/backward by kind (`ops`, from
    /// [`Trainer::micro_batch_ops`]), the kernels a GPU's host encodes for it.
    fn open(dir: &Path, rank: usize, ops: &[(String, usize)]) -> Result<Trace> {
        fs::create_dir_all(dir)
            .with_context(|| format!("creating the trace directory {}", dir.display()))?;
        let total: usize = ops.iter().map(|(_, n)| n).sum();
        let mut tsv = format!("# {total} operations in one micro-batch's forward/backward\n");
        for (name, n) in ops {
            tsv.push_str(&format!("{name}\t{n}\n"));
        }
        let path = dir.join(format!("train-ops-rank{rank}.tsv"));
        fs::write(&path, tsv).with_context(|| format!("writing {}", path.display()))?;
        let path = dir.join(format!("train-rank{rank}.jsonl"));
        let file = fs::File::create(&path)
            .with_context(|| format!("creating the trace {}", path.display()))?;
        Ok(Trace(std::io::BufWriter::new(file)))
    }

    fn write(&mut self, line: &TraceLine) -> Result<()> {
        serde_json::to_writer(&mut self.0, line)?;
        writeln!(self.0)?;
        Ok(())
    }
}

/// What a finished run did (`train.json`).
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub config: TrainConfig,
    pub model: String,
    pub dtype: String,
    pub device: String,
    pub engine: String,
    pub train_pairs: usize,
    pub eval_pairs: usize,
    /// Pairs whose query or code has no tokens.
    pub dropped_empty: usize,
    /// Train pairs whose (truncated) document another pair also has.
    pub duplicate_docs: usize,
    pub batches_per_epoch: Vec<usize>,
    pub steps: u64,
    pub trainable_params: usize,
    /// The step the run continued from (None: from scratch).
    pub resumed_from: Option<u64>,
    pub final_loss: f32,
    pub val_loss: Option<f32>,
    pub val_accuracy: Option<f32>,
    /// Seconds spent in training steps, over every attempt.
    pub train_seconds: f64,
    /// This attempt's wall time, data preparation included.
    pub wall_seconds: f64,
    /// Pairs per second of training steps in this attempt.
    pub samples_per_s: f64,
    /// Seconds of this attempt's steps spent assembling batches (the data
    /// path's share of the step; tokenization happens before the first step).
    pub data_seconds: f64,
    /// Processes that trained data-parallel (1: this one alone).
    pub ranks: usize,
    /// Seconds of this attempt's steps that rank 0 spent all-summing
    /// gradients (waiting for the slowest rank included), where
    /// [`Ranks::time_sync`] asked for it; `None` otherwise.
    pub sync_seconds: Option<f64>,
}

/// The data-parallel job a [`train`] call is one rank of: every rank runs the
/// same loop on its share of each update's micro-batches (micro-batch `i` of
/// an update goes to rank `i % size`), the gradients are all-summed before
/// AdamW, validation batches are shared the same way, and rank 0 alone
/// writes checkpoints and the outputs.
pub struct Ranks<'a> {
    pub group: &'a Group,
    /// Evaluate and time each update's all-sum on its own (a host round trip
    /// more per update; the same result): `sync_seconds` in the log and summary.
    pub time_sync: bool,
}

impl Ranks<'_> {
    fn rank(&self) -> usize {
        self.group.rank()
    }
    fn size(&self) -> usize {
        self.group.size()
    }
}

/// Trains LoRA adapters for `model` (already resolved, loaded in `dtype` on
/// MLX's default device) on `paths.pairs`. Resumes from the checkpoint in
/// `paths.work_dir` when one of the same config is there. Logs each step to
/// `log` and tells `on_step`. Writes into `paths.out_dir`:
/// `adapters.safetensors` and `lora_config.json` (PEFT names and config),
/// `metrics.parquet` (one row per step: step, epoch, loss, lr, grad_norm,
/// samples_per_s, val_loss, val_accuracy), `train.json` (the summary) and
/// `metrics.json` (headline numbers). A cancelled run writes a checkpoint and
/// returns [`Cancelled`]; a non-finite loss stops it with an error naming the
/// step and keeps the last good checkpoint. With `ranks`, this process is one
/// rank of a data-parallel job (see [`Ranks`]); only rank 0 writes files, and
/// a cancelled rank stops every rank at the same update.
#[allow(clippy::too_many_arguments)]
pub fn train(
    cfg: &TrainConfig,
    model: &ModelSource,
    dtype: Dtype,
    paths: &TrainPaths,
    ranks: Option<&Ranks>,
    cancel: &CancelToken,
    log: &mut dyn Write,
    on_step: &mut dyn FnMut(&StepRecord),
) -> Result<TrainSummary> {
    let wall = Instant::now();
    cfg.validate()?;
    cancel.check()?;
    let (loaded, vocab) = model.load(dtype)?;
    let data = Prepared::new(cfg, model, vocab, paths.pairs, log)?;
    let stream = Stream::new(&data.batcher, cfg.epochs);
    let total_steps = (stream.total / cfg.grad_accum as u64).min(cfg.max_steps.unwrap_or(u64::MAX));
    ensure!(
        total_steps > 0,
        "the train split of {} gives {} batches of {} over {} epochs, fewer than grad_accum {}: not one update",
        paths.pairs.display(),
        stream.total,
        cfg.batch_size,
        cfg.epochs,
        cfg.grad_accum
    );
    let schedule = LrSchedule {
        kind: cfg.schedule,
        peak: cfg.lr,
        warmup_steps: cfg.warmup_steps,
        total_steps,
    };
    let mut trainer = Trainer::new(loaded, step_config(cfg))?;
    let (rank, size) = ranks.map_or((0, 1), |r| (r.rank(), r.size()));
    let leader = rank == 0;
    if size > 1 {
        writeln!(
            log,
            "train: rank {rank} of {size}: micro-batches i % {size} == {rank} of each update"
        )?;
    }
    writeln!(
        log,
        "train: {} pairs ({} eval), {} batches of {} per epoch, {} epochs, {total_steps} updates of {} x {}, {} trainable params",
        data.train.pairs,
        data.eval.pairs,
        stream.per_epoch.first().copied().unwrap_or(0),
        cfg.batch_size,
        cfg.epochs,
        cfg.grad_accum,
        cfg.batch_size,
        trainer.trainable()
    )?;
    let mut ckpt = Checkpoints::new(paths.work_dir, cfg, dtype, leader)?;
    let (mut run, resumed_from) = ckpt.resume(&mut trainer, total_steps, log)?;

    let clip = (cfg.grad_clip > 0.0).then_some(cfg.grad_clip);
    let mut session = Session::default();
    let mut micro_cache = EpochCache::default();
    // With ranks, a cancelled rank is heard by all at the next update's all-sum.
    let mut stop_agreed = false;
    // Updates are pipelined: the next one is built and launched while the
    // device still computes the one before, whose loss is read afterwards
    // (a rank otherwise idles its GPU while the host builds every graph). An
    // update after which the run validates, checkpoints or ends lands before
    // anything else is launched, so those see exactly its parameters.
    let mut flying: Option<Flying> = None;
    let mut last_landed = Instant::now();
    let mut trace = match paths.trace {
        Some(dir) => {
            // The census of the next micro-batch (none when resuming a run
            // that has no update left).
            let ops = if run.step < total_steps {
                let next = micro_cache.batch(&stream, run.step * cfg.grad_accum as u64)?;
                trainer.micro_batch_ops(&next)?
            } else {
                Vec::new()
            };
            Some(Trace::open(dir, rank, &ops)?)
        }
        None => None,
    };
    let validates_after = |step: u64| {
        step == total_steps || (cfg.eval_every > 0 && step.is_multiple_of(cfg.eval_every))
    };
    let checkpoints_after =
        |step: u64| step.is_multiple_of(cfg.checkpoint_every) || step == total_steps;
    loop {
        let stop_now = match ranks {
            Some(_) => stop_agreed,
            None => cancel.is_cancelled(),
        };
        let next = run.step + u64::from(flying.is_some());
        let launch_next =
            !stop_now && next < total_steps && flying.as_ref().is_none_or(|f| !f.boundary);
        let launched = if launch_next {
            let started = Instant::now();
            let first = next * cfg.grad_accum as u64;
            let mine = (0..cfg.grad_accum)
                .filter(|i| i % size == rank)
                .map(|i| Ok((i, micro_cache.batch(&stream, first + i as u64)?)))
                .collect::<Result<Vec<(usize, Batch)>>>()?;
            let data = started.elapsed().as_secs_f64();
            session.data_seconds += data;
            let lr = schedule.lr(next);
            let shard = ranks.map(|r| Shard {
                group: r.group,
                count: cfg.grad_accum,
                stop: cancel.is_cancelled(),
                time_sync: r.time_sync,
            });
            let launching = Instant::now();
            let flight = trainer
                .launch(&mine, shard.as_ref(), lr, clip)
                .with_context(|| stopped_at(next + 1, total_steps, &ckpt))?;
            Some(Flying {
                flight,
                first,
                lr,
                started,
                data,
                launch: launching.elapsed().as_secs_f64(),
                boundary: validates_after(next + 1) || checkpoints_after(next + 1),
            })
        } else {
            None
        };
        let Some(done) = flying.take() else {
            flying = launched;
            if flying.is_some() {
                continue;
            }
            if stop_now {
                if ckpt.saved_step != Some(run.step) {
                    ckpt.save(&run, &trainer)?;
                }
                writeln!(
                    log,
                    "train: interrupted at step {}; {}",
                    run.step,
                    ckpt.kept()
                )?;
                return Err(Cancelled.into());
            }
            break;
        };
        flying = launched;
        let times = done.flight.times();
        let landing = Instant::now();
        let stats = trainer
            .land(done.flight)
            .with_context(|| stopped_at(run.step + 1, total_steps, &ckpt))?;
        let land = landing.elapsed().as_secs_f64();
        stop_agreed |= stats.stop;
        if let Some(s) = stats.sync_seconds {
            *session.sync_seconds.get_or_insert(0.0) += s;
        }
        // An update's time: from its launch, or from when the one before it
        // landed if it was launched earlier (the steady pipelined period).
        let now = Instant::now();
        let seconds = now
            .duration_since(done.started.max(last_landed))
            .as_secs_f64();
        last_landed = now;
        session.seconds += seconds;
        session.samples += stats.samples;
        run.train_seconds += seconds;
        run.step += 1;
        if let Some(trace) = trace.as_mut() {
            let ms = |s: f64| s * 1e3;
            trace.write(&TraceLine {
                rank,
                step: run.step,
                data_ms: ms(done.data),
                grads_ms: ms(times.grads),
                reduce_ms: ms(times.reduce),
                update_ms: ms(times.update),
                submit_ms: ms(times.submit),
                calls_ms: ms(times.calls),
                launch_ms: ms(done.launch),
                land_ms: ms(land),
                period_ms: ms(seconds),
            })?;
        }
        let validate_now = validates_after(run.step);
        let checkpoint_now = checkpoints_after(run.step);
        if flying.is_none() {
            // The trainer holds exactly this update's state.
            run.adam_step = trainer.state().adam_step;
        } else {
            debug_assert!(!validate_now && !checkpoint_now);
            run.adam_step += 1;
        }
        run.position = stream.position(run.step * cfg.grad_accum as u64);
        let (val_loss, val_accuracy) = match (&data.eval_set, validate_now) {
            (Some(set), true) => {
                let (l, a) = validate(&trainer, set, ranks)?;
                (Some(l), Some(a))
            }
            _ => (None, None),
        };
        let record = StepRecord {
            step: run.step,
            total_steps,
            epoch: stream.position(done.first).epoch,
            loss: stats.loss,
            lr: done.lr,
            grad_norm: stats.grad_norm,
            samples_per_s: stats.samples as f64 / seconds.max(1e-9),
            val_loss,
            val_accuracy,
        };
        log_step(log, &record, stats.sync_seconds)?;
        on_step(&record);
        run.records.push(record);
        if leader && checkpoint_now {
            // A finite loss can still leave overflowed adapters behind: never
            // let them replace the last good checkpoint.
            ensure!(
                trainer.params_finite()?,
                "step {} of {total_steps}: the adapters are no longer finite; training stopped; {}",
                run.step,
                ckpt.kept()
            );
            ckpt.save(&run, &trainer)?;
        }
    }

    let final_val = run.records.iter().rev().find(|r| r.val_loss.is_some());
    let summary = TrainSummary {
        config: cfg.clone(),
        model: model.describe(),
        dtype: format!("{dtype:?}").to_lowercase(),
        device: format!("{:?}", Device::default_device()?),
        engine: format!(
            "xtr-pipe {} on MLX {MLX_VERSION}",
            env!("CARGO_PKG_VERSION")
        ),
        train_pairs: data.train.pairs,
        eval_pairs: data.eval.pairs,
        dropped_empty: data.train.dropped_empty + data.eval.dropped_empty,
        duplicate_docs: data.duplicate_docs,
        batches_per_epoch: stream.per_epoch.clone(),
        steps: run.step,
        trainable_params: trainer.trainable(),
        resumed_from,
        final_loss: run.records.last().map_or(f32::NAN, |r| r.loss),
        val_loss: final_val.and_then(|r| r.val_loss),
        val_accuracy: final_val.and_then(|r| r.val_accuracy),
        train_seconds: run.train_seconds,
        wall_seconds: wall.elapsed().as_secs_f64(),
        samples_per_s: session.samples as f64 / session.seconds.max(1e-9),
        data_seconds: session.data_seconds,
        ranks: size,
        sync_seconds: session.sync_seconds,
    };
    if leader {
        write_outputs(paths.out_dir, &trainer, &summary, &run.records)?;
    }
    Ok(summary)
}

/// The AdamW / LoRA / loss settings of one step.
fn step_config(cfg: &TrainConfig) -> StepConfig {
    StepConfig {
        lora: cfg.lora.clone(),
        loss: cfg.loss,
        adamw: AdamWConfig {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..AdamWConfig::default()
        },
        train_dropout: cfg.dropout,
        compile: cfg.compile,
        seed: cfg.seed,
    }
}

/// An update launched and not yet landed, with what its record needs.
struct Flying {
    flight: InFlight,
    /// Its first micro-batch's index in the stream.
    first: u64,
    lr: f32,
    /// When the host began it (fetching its batches).
    started: Instant,
    /// Seconds spent fetching its batches, and building and starting it.
    data: f64,
    launch: f64,
    /// The run validates, checkpoints or ends after it.
    boundary: bool,
}

/// What a failed update's error says: its step, and what is kept.
fn stopped_at(step: u64, total_steps: u64, ckpt: &Checkpoints) -> String {
    format!(
        "step {step} of {total_steps}: training stopped; {}",
        ckpt.kept()
    )
}

/// This attempt's training time, pairs, and time spent assembling batches.
#[derive(Default)]
struct Session {
    seconds: f64,
    samples: usize,
    data_seconds: f64,
    sync_seconds: Option<f64>,
}

/// The tokenized train split as a batcher, and the eval split's batches.
struct Prepared {
    batcher: Batcher,
    eval_set: Option<Vec<Batch>>,
    train: TokenizeStats,
    eval: TokenizeStats,
    duplicate_docs: usize,
}

impl Prepared {
    fn new(
        cfg: &TrainConfig,
        model: &ModelSource,
        vocab: i32,
        pairs: &Path,
        log: &mut dyn Write,
    ) -> Result<Prepared> {
        let shown = pairs.display();
        let train_text = data::read_pairs(pairs, "train")?;
        ensure!(
            !train_text.is_empty(),
            "the train split of {shown} is empty: nothing to train on"
        );
        let eval_text = data::read_pairs(pairs, "eval")?;
        let (max_q, max_d) = (cfg.max_query_tokens, cfg.max_doc_tokens);
        let encoder = match model {
            ModelSource::Dir(dir) => TextEncoder::from_model_dir(dir, max_q, max_d)?,
            ModelSource::RandomT5 => TextEncoder::Hashing {
                vocab: vocab as u32,
            },
        };
        let tokenize = |pairs: &[TextPair], split: &str| {
            data::tokenize(&encoder, pairs, max_q, max_d, vocab)
                .with_context(|| format!("tokenizing the {split} split of {shown}"))
        };
        let (train_examples, train) = tokenize(&train_text, "train")?;
        let (eval_examples, eval) = tokenize(&eval_text, "eval")?;
        let duplicate_docs = data::duplicate_docs(&train_examples);
        let what = format!("the train split of {shown}");
        let batcher = Batcher::new(train_examples, cfg.batch_size, cfg.seed, &what)?
            .with_pad_multiple(cfg.pad_multiple)
            .with_group(cfg.grad_accum);
        let eval_set = eval_batches(cfg, eval_examples, log)?;
        Ok(Prepared {
            batcher,
            eval_set,
            train,
            eval,
            duplicate_docs,
        })
    }
}

/// The run's checkpoint file and what it must have been made under.
struct Checkpoints {
    path: PathBuf,
    identity: serde_json::Value,
    /// The step of the checkpoint on disk, if any.
    saved_step: Option<u64>,
    /// Whether this process writes checkpoints (rank 0 of a job does; the others read).
    writes: bool,
}

impl Checkpoints {
    fn new(work_dir: &Path, cfg: &TrainConfig, dtype: Dtype, writes: bool) -> Result<Checkpoints> {
        std::fs::create_dir_all(work_dir)
            .with_context(|| format!("creating {}", work_dir.display()))?;
        // Parsed from its text, as the checkpoint's copy is, so floats compare exactly.
        let identity = serde_json::json!({ "config": cfg, "dtype": format!("{dtype:?}") });
        Ok(Checkpoints {
            path: checkpoint::path_in(work_dir),
            identity: serde_json::from_str(&identity.to_string())?,
            saved_step: None,
            writes,
        })
    }

    /// The state to continue from (a fresh one when there is no usable
    /// checkpoint), and the step resumed from.
    fn resume(
        &mut self,
        trainer: &mut Trainer,
        total_steps: u64,
        log: &mut dyn Write,
    ) -> Result<(RunState, Option<u64>)> {
        let fresh = RunState {
            step: 0,
            position: DataPosition::default(),
            adam_step: 0,
            config: self.identity.clone(),
            records: Vec::new(),
            train_seconds: 0.0,
        };
        match checkpoint::load(&self.path)? {
            Some(c) if c.run.config == self.identity && c.run.step <= total_steps => {
                trainer
                    .restore(c.trainer)
                    .with_context(|| format!("resuming from {}", self.path.display()))?;
                writeln!(
                    log,
                    "train: resuming from the checkpoint at step {}",
                    c.run.step
                )?;
                self.saved_step = Some(c.run.step);
                let step = c.run.step;
                Ok((c.run, Some(step)))
            }
            Some(_) => {
                writeln!(
                    log,
                    "train: {} was made under another config; starting over",
                    self.path.display()
                )?;
                Ok((fresh, None))
            }
            None => Ok((fresh, None)),
        }
    }

    fn save(&mut self, run: &RunState, trainer: &Trainer) -> Result<()> {
        if !self.writes {
            return Ok(());
        }
        let ckpt = Checkpoint {
            run: run.clone(),
            trainer: trainer.state(),
        };
        checkpoint::save(&self.path, &ckpt)?;
        self.saved_step = Some(run.step);
        Ok(())
    }

    /// Where the last good state is, for messages.
    fn kept(&self) -> String {
        match self.saved_step {
            Some(s) => format!(
                "the last good checkpoint (step {s}) is kept in {}",
                self.path.display()
            ),
            None => "no checkpoint was written yet".to_string(),
        }
    }
}

/// One step's log line; `sync`: the seconds this rank spent in the all-sum.
fn log_step(log: &mut dyn Write, r: &StepRecord, sync: Option<f64>) -> Result<()> {
    write!(
        log,
        "step {}/{} epoch {} loss {:.4} lr {:.3e} grad_norm {:.3} {:.1} samples/s",
        r.step, r.total_steps, r.epoch, r.loss, r.lr, r.grad_norm, r.samples_per_s
    )?;
    if let (Some(l), Some(a)) = (r.val_loss, r.val_accuracy) {
        write!(log, " val_loss {l:.4} val_accuracy {a:.3}")?;
    }
    if let Some(s) = sync {
        write!(log, " sync {:.2} ms", s * 1e3)?;
    }
    writeln!(log)?;
    Ok(())
}

/// The eval split's batches (a fixed, seeded selection), or `None` when the
/// split is too small to make a batch of two different documents.
fn eval_batches(
    cfg: &TrainConfig,
    examples: Vec<data::Example>,
    log: &mut dyn Write,
) -> Result<Option<Vec<Batch>>> {
    let distinct = examples
        .iter()
        .map(|e| e.doc_key)
        .collect::<std::collections::HashSet<_>>()
        .len();
    let size = cfg.batch_size.min(distinct);
    if size < 2 {
        writeln!(
            log,
            "train: the eval split has {} pairs ({distinct} distinct documents): no validation",
            examples.len()
        )?;
        return Ok(None);
    }
    let batcher = Batcher::new(examples, size, cfg.seed, "the eval split")?
        .with_pad_multiple(cfg.pad_multiple);
    let batches = batcher
        .epoch(0)
        .iter()
        .take(cfg.eval_batches.max(1))
        .map(|idx| batcher.batch(idx))
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(batches))
}

/// Mean loss and in-batch accuracy over `set` (with ranks: batch `i` on rank
/// `i % size`, the sums all-summed).
fn validate(trainer: &Trainer, set: &[Batch], ranks: Option<&Ranks>) -> Result<(f32, f32)> {
    let (rank, size) = ranks.map_or((0, 1), |r| (r.rank(), r.size()));
    let (mut loss, mut correct, mut queries) = (0.0f64, 0usize, 0usize);
    for b in set.iter().skip(rank).step_by(size) {
        let e = trainer.evaluate(b).context("validating")?;
        loss += f64::from(e.loss);
        correct += e.correct;
        queries += e.queries;
    }
    if let Some(r) = ranks {
        let local = Array::from_slice(&[loss as f32, correct as f32, queries as f32], &[3])?;
        let total = r
            .group
            .all_sum(&local)
            .context("all-summing the validation over the ranks")?;
        let total = ops::as_dtype(&total, Dtype::Float32)?.to_vec::<f32>()?;
        loss = f64::from(total[0]);
        correct = total[1].round() as usize;
        queries = total[2].round() as usize;
    }
    Ok((
        (loss / set.len().max(1) as f64) as f32,
        correct as f32 / queries.max(1) as f32,
    ))
}

/// The run's micro-batches: epoch after epoch, each epoch's batches in order.
struct Stream<'a> {
    batcher: &'a Batcher,
    per_epoch: Vec<usize>,
    total: u64,
}

impl<'a> Stream<'a> {
    fn new(batcher: &'a Batcher, epochs: u64) -> Stream<'a> {
        let per_epoch: Vec<usize> = (0..epochs).map(|e| batcher.epoch(e).len()).collect();
        let total = per_epoch.iter().map(|&n| n as u64).sum();
        Stream {
            batcher,
            per_epoch,
            total,
        }
    }

    /// The (epoch, batch) of micro-batch `global` (the end: one past the last epoch).
    fn position(&self, mut global: u64) -> DataPosition {
        for (epoch, &n) in self.per_epoch.iter().enumerate() {
            if global < n as u64 {
                return DataPosition {
                    epoch: epoch as u64,
                    batch: global,
                };
            }
            global -= n as u64;
        }
        DataPosition {
            epoch: self.per_epoch.len() as u64,
            batch: global,
        }
    }
}

/// The batches of the epoch being trained on, computed once per epoch.
#[derive(Default)]
struct EpochCache {
    epoch: Option<u64>,
    batches: Vec<Vec<usize>>,
}

impl EpochCache {
    fn batch(&mut self, stream: &Stream, global: u64) -> Result<Batch> {
        let pos = stream.position(global);
        if self.epoch != Some(pos.epoch) {
            self.batches = stream.batcher.epoch(pos.epoch);
            self.epoch = Some(pos.epoch);
        }
        let Some(indices) = self.batches.get(pos.batch as usize) else {
            bail!(
                "micro-batch {global} (epoch {}, batch {}) is past the end of the data",
                pos.epoch,
                pos.batch
            );
        };
        stream.batcher.batch(indices)
    }
}

fn write_outputs(
    out: &Path,
    trainer: &Trainer,
    summary: &TrainSummary,
    records: &[StepRecord],
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let model = trainer.model();
    save_adapters(&model.encoder, &out.join("adapters.safetensors"))?;
    let mut modules: Vec<String> = model
        .encoder
        .linears()
        .into_iter()
        .filter(|(_, _, l)| matches!(l, LinearLayer::Lora(_)))
        .map(|(path, _, _)| path.rsplit('.').next().unwrap_or(&path).to_string())
        .collect();
    modules.sort();
    modules.dedup();
    let lora = &summary.config.lora;
    let peft = serde_json::json!({
        "peft_type": "LORA",
        "task_type": null,
        "base_model_name_or_path": summary.model,
        "r": lora.r,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "use_rslora": false,
        "use_dora": false,
        "modules_to_save": null,
    });
    write_json(&out.join("lora_config.json"), &peft)?;
    write_json(&out.join("train.json"), summary)?;
    let metrics = serde_json::json!({
        "final_loss": summary.final_loss,
        "val_loss": summary.val_loss,
        "val_accuracy": summary.val_accuracy,
        "steps": summary.steps,
        "train_pairs": summary.train_pairs,
        "samples_per_s": summary.samples_per_s,
        "train_seconds": summary.train_seconds,
    });
    write_json(&out.join("metrics.json"), &metrics)?;
    write_metrics_parquet(&out.join("metrics.parquet"), records)
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

fn write_metrics_parquet(path: &Path, records: &[StepRecord]) -> Result<()> {
    use polars::prelude::{Column, DataFrame, ParquetWriter};
    let col = |name: &str, values: Vec<f32>| Column::new(name.into(), values);
    let columns = vec![
        Column::new(
            "step".into(),
            records.iter().map(|r| r.step).collect::<Vec<u64>>(),
        ),
        Column::new(
            "epoch".into(),
            records.iter().map(|r| r.epoch).collect::<Vec<u64>>(),
        ),
        col("loss", records.iter().map(|r| r.loss).collect()),
        col("lr", records.iter().map(|r| r.lr).collect()),
        col("grad_norm", records.iter().map(|r| r.grad_norm).collect()),
        Column::new(
            "samples_per_s".into(),
            records
                .iter()
                .map(|r| r.samples_per_s)
                .collect::<Vec<f64>>(),
        ),
        Column::new(
            "val_loss".into(),
            records
                .iter()
                .map(|r| r.val_loss)
                .collect::<Vec<Option<f32>>>(),
        ),
        Column::new(
            "val_accuracy".into(),
            records
                .iter()
                .map(|r| r.val_accuracy)
                .collect::<Vec<Option<f32>>>(),
        ),
    ];
    let mut df = DataFrame::new(records.len(), columns).context("building the metrics table")?;
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    ParquetWriter::new(file)
        .finish(&mut df)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests;
