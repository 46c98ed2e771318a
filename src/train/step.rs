//! One LoRA training step of a multi-vector model: encode queries and documents,
//! MaxSim InfoNCE + margin over in-batch negatives, gradients for the LoRA
//! adapters only, AdamW. The same code runs on the CPU and on a GPU (MLX's
//! default device), eagerly or compiled into one fused graph (`mx::compile`).
//! An eager step can be timed phase by phase (query forward, document forward,
//! MaxSim, loss, backward, optimizer), with an evaluation barrier after each.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;

use anyhow::{Context, Result};

use super::loss::{retrieval_loss, LossConfig};
use super::optim::{self, AdamW, AdamWConfig};
use crate::mlx::distributed::Group;
use crate::mlx::{self, ops, random, value_and_grad, Array, Compiled};
use crate::model::lora::{apply_lora, lora_params, set_lora_params};
use crate::model::{Ctx, LoraConfig, MultiVectorModel};

/// A batch of token ids and masks (`[B, Lq]` for queries, `[B, Ld]` for documents);
/// document `i` is the positive of query `i`, every other document a negative.
pub struct Batch {
    pub query_ids: Array,
    pub query_mask: Array,
    pub doc_ids: Array,
    pub doc_mask: Array,
}

/// Everything that determines a training step's result.
#[derive(Debug, Clone)]
pub struct StepConfig {
    pub lora: LoraConfig,
    pub loss: LossConfig,
    pub adamw: AdamWConfig,
    /// Dropout inside the encoder while training (at the model's own rate, e.g. T5's 0.1).
    pub train_dropout: bool,
    /// Trace the whole step (forward, backward, AdamW) once per input shape and
    /// replay it as one fused graph.
    pub compile: bool,
    pub seed: u64,
}

/// Seconds spent in each phase of a step, measured with evaluation barriers
/// (eager steps only; a compiled step is one graph).
///
/// The forward phases run inside `value_and_grad`'s closure, each ended by an
/// `eval` of what it produced (the query embeddings, the document embeddings,
/// the score matrix, the loss); `backward` is the rest of `value_and_grad`,
/// from the closure's return until every gradient is evaluated. So the forward
/// runs once, as in an untimed step, and the phases add up to the step.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct PhaseTimes {
    /// The five phases below up to the optimizer: the step's forward and backward.
    pub forward_backward: f64,
    /// The encoder (and head) on the query batch.
    pub forward_query: f64,
    /// The encoder (and head) on the document batch.
    pub forward_doc: f64,
    /// The `[B, B]` MaxSim score matrix.
    pub maxsim: f64,
    /// InfoNCE + margin from the scores.
    pub loss: f64,
    /// The LoRA gradients, given the evaluated forward.
    pub backward: f64,
    /// AdamW over the adapters.
    pub optimizer: f64,
}

impl PhaseTimes {
    /// The step the six phases make up (within microseconds of
    /// `forward_backward + optimizer`: the bookkeeping between barriers).
    pub fn total(&self) -> f64 {
        self.forward_query
            + self.forward_doc
            + self.maxsim
            + self.loss
            + self.backward
            + self.optimizer
    }

    /// Each phase scaled by `k` (e.g. `1 / steps` for a mean).
    pub fn scaled(&self, k: f64) -> PhaseTimes {
        PhaseTimes {
            forward_backward: self.forward_backward * k,
            forward_query: self.forward_query * k,
            forward_doc: self.forward_doc * k,
            maxsim: self.maxsim * k,
            loss: self.loss * k,
            backward: self.backward * k,
            optimizer: self.optimizer * k,
        }
    }

    /// Each phase as a fraction of [`PhaseTimes::total`] (all zero when it is zero).
    pub fn shares(&self) -> PhaseTimes {
        let total = self.total();
        if total > 0.0 {
            self.scaled(1.0 / total)
        } else {
            PhaseTimes::default()
        }
    }
}

/// The clock of a phase-timed forward: each [`Barriers::mark`] evaluates what
/// a phase produced and books the time since the previous mark to it.
struct Barriers {
    last: Cell<Instant>,
    /// `[forward_query, forward_doc, maxsim, loss]`.
    forward: Cell<[f64; 4]>,
}

impl Barriers {
    fn new() -> Barriers {
        Barriers {
            last: Cell::new(Instant::now()),
            forward: Cell::new([0.0; 4]),
        }
    }

    fn mark(&self, phase: usize, done: &[&Array]) -> mlx::Result<()> {
        mlx::eval(done.iter().copied())?;
        let now = Instant::now();
        let mut forward = self.forward.get();
        forward[phase] += now.duration_since(self.last.get()).as_secs_f64();
        self.forward.set(forward);
        self.last.set(now);
        Ok(())
    }
}

/// A model with LoRA adapters and the optimizer state over them.
pub struct Trainer {
    model: Rc<RefCell<MultiVectorModel>>,
    params: Vec<Array>,
    opt: AdamW,
    cfg: StepConfig,
    key: Array,
    compiled: Option<Compiled>,
    /// The compiled pieces of [`Trainer::accumulate_step`] (when compiling).
    accum: Option<AccumFns>,
    /// The adapters and their moments as the compiled update last left them,
    /// one flat vector each (`params`, `opt.m` and `opt.v` are views of it);
    /// `None` once anything else has changed them.
    flat: Option<Flat>,
    pub steps: u64,
}

/// The loss of `model` on `batch` with the LoRA adapters set to `params`;
/// with `barriers`, each forward phase is evaluated and timed as it ends.
fn loss_with(
    model: &RefCell<MultiVectorModel>,
    params: &[Array],
    batch: [&Array; 4],
    dropout_key: Option<&Array>,
    loss_cfg: &LossConfig,
    barriers: Option<&Barriers>,
) -> Result<Array> {
    set_lora_params(&mut model.borrow_mut().encoder, params)?;
    let model = model.borrow();
    let ctx = match dropout_key {
        Some(key) => Ctx::train(key.clone()),
        None => Ctx::eval(),
    };
    let mark = |phase: usize, done: &[&Array]| -> mlx::Result<()> {
        barriers.map_or(Ok(()), |b| b.mark(phase, done))
    };
    let [q_ids, q_mask, d_ids, d_mask] = batch;
    let q = model.forward_with(&ctx, q_ids, q_mask)?;
    mark(0, &[&q.embeddings, &q.mask])?;
    let d = model.forward_with(&ctx, d_ids, d_mask)?;
    mark(1, &[&d.embeddings, &d.mask])?;
    let (loss, scores) = retrieval_loss(&q.embeddings, &q.mask, &d.embeddings, &d.mask, loss_cfg)?;
    // `scores` is the node the loss is built on: evaluating it first runs the
    // MaxSim alone, and the loss after it only what remains.
    mark(2, &[&scores])?;
    mark(3, &[&loss])?;
    Ok(loss)
}

/// Loss and LoRA gradients, the closure's errors carried through MLX.
fn loss_and_grads(
    model: &RefCell<MultiVectorModel>,
    params: &[Array],
    batch: [&Array; 4],
    dropout_key: Option<&Array>,
    loss_cfg: &LossConfig,
) -> mlx::Result<(Array, Vec<Array>)> {
    loss_and_grads_timed(model, params, batch, dropout_key, loss_cfg, None)
}

/// [`loss_and_grads`], its forward phases timed by `barriers` when given.
fn loss_and_grads_timed(
    model: &RefCell<MultiVectorModel>,
    params: &[Array],
    batch: [&Array; 4],
    dropout_key: Option<&Array>,
    loss_cfg: &LossConfig,
    barriers: Option<&Barriers>,
) -> mlx::Result<(Array, Vec<Array>)> {
    let (values, grads) = value_and_grad(
        |p: &[Array]| {
            loss_with(model, p, batch, dropout_key, loss_cfg, barriers)
                .map(|l| vec![l])
                .map_err(|e| mlx::Exception::new(format!("{e:#}")))
        },
        params,
    )?;
    let loss = values
        .into_iter()
        .next()
        .ok_or_else(|| mlx::Exception::new("no loss"))?;
    Ok((loss, grads))
}

impl Trainer {
    /// Wrap `model`'s targeted layers with fresh LoRA adapters (seeded).
    pub fn new(mut model: MultiVectorModel, cfg: StepConfig) -> Result<Trainer> {
        let (init_key, key) = random::split2(&random::key(cfg.seed)?)?;
        let wrapped = apply_lora(&mut model.encoder, &cfg.lora, &init_key)?;
        anyhow::ensure!(
            wrapped > 0,
            "no layer matched the LoRA targets {:?}",
            cfg.lora.targets
        );
        let params = lora_params(&model.encoder);
        let opt = AdamW::new(cfg.adamw, &params)?;
        let model = Rc::new(RefCell::new(model));
        let (compiled, accum) = if cfg.compile {
            (
                Some(compile_step(Rc::clone(&model), &cfg, params.len())?),
                Some(compile_accum(Rc::clone(&model), &cfg, &params)?),
            )
        } else {
            (None, None)
        };
        Ok(Trainer {
            model,
            params,
            opt,
            cfg,
            key,
            compiled,
            accum,
            flat: None,
            steps: 0,
        })
    }

    /// Number of trainable scalars.
    pub fn trainable(&self) -> usize {
        self.params.iter().map(Array::size).sum()
    }

    /// The trained model (adapters set to the current parameters).
    pub fn model(&self) -> std::cell::Ref<'_, MultiVectorModel> {
        self.model.borrow()
    }

    /// One step at the configured learning rate; returns the loss (evaluated).
    pub fn step(&mut self, batch: &Batch, phases: Option<&mut PhaseTimes>) -> Result<f32> {
        self.step_with_lr(batch, self.cfg.adamw.lr, phases)
    }

    /// One step at learning rate `lr` (a schedule's value for this step).
    pub fn step_with_lr(
        &mut self,
        batch: &Batch,
        lr: f32,
        phases: Option<&mut PhaseTimes>,
    ) -> Result<f32> {
        let (dropout_key, next) = random::split2(&self.key)?;
        self.key = next;
        let inputs = [
            &batch.query_ids,
            &batch.query_mask,
            &batch.doc_ids,
            &batch.doc_mask,
        ];
        let loss = match self.compiled.take() {
            Some(f) => {
                let loss = self.step_compiled(&f, inputs, dropout_key, lr);
                self.compiled = Some(f);
                loss?
            }
            None => self.step_eager(inputs, dropout_key, lr, phases)?,
        };
        set_lora_params(&mut self.model.borrow_mut().encoder, &self.params)?;
        self.steps += 1;
        Ok(loss.item::<f32>()?)
    }

    fn step_eager(
        &mut self,
        batch: [&Array; 4],
        dropout_key: Array,
        lr: f32,
        phases: Option<&mut PhaseTimes>,
    ) -> Result<Array> {
        let start = Instant::now();
        let key = self.cfg.train_dropout.then_some(&dropout_key);
        let barriers = phases.is_some().then(Barriers::new);
        let (loss, grads) = loss_and_grads_timed(
            &self.model,
            &self.params,
            batch,
            key,
            &self.cfg.loss,
            barriers.as_ref(),
        )
        .context("forward/backward")?;
        let mut phases = phases;
        if let (Some(p), Some(b)) = (phases.as_deref_mut(), &barriers) {
            mlx::eval(grads.iter().chain([&loss]))?;
            let [query, doc, maxsim, loss] = b.forward.get();
            p.forward_query += query;
            p.forward_doc += doc;
            p.maxsim += maxsim;
            p.loss += loss;
            p.backward += b.last.get().elapsed().as_secs_f64();
            p.forward_backward += start.elapsed().as_secs_f64();
        }
        let opt_start = Instant::now();
        self.flat = None;
        self.params = self.opt.update(&self.params, &grads, lr)?;
        mlx::eval(self.params.iter().chain(self.opt.state()).chain([&loss]))?;
        if let Some(p) = phases {
            p.optimizer += opt_start.elapsed().as_secs_f64();
        }
        Ok(loss)
    }

    fn step_compiled(
        &mut self,
        f: &Compiled,
        batch: [&Array; 4],
        dropout_key: Array,
        lr: f32,
    ) -> Result<Array> {
        let n = self.params.len();
        let mut inputs: Vec<Array> = self
            .params
            .iter()
            .chain(&self.opt.m)
            .chain(&self.opt.v)
            .cloned()
            .collect();
        inputs.extend(batch.into_iter().cloned());
        inputs.push(dropout_key);
        inputs.extend(self.opt.next_scalars(lr));
        let out = f.call(&inputs).context("compiled train step")?;
        anyhow::ensure!(
            out.len() == 1 + 3 * n,
            "compiled step returned {} arrays",
            out.len()
        );
        mlx::eval(&out)?;
        let mut out = out.into_iter();
        let loss = out.next().context("the loss")?;
        self.flat = None;
        self.params = out.by_ref().take(n).collect();
        self.opt.m = out.by_ref().take(n).collect();
        self.opt.v = out.collect();
        Ok(loss)
    }
}

/// What one optimizer update over accumulated micro-batches did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateStats {
    /// Mean loss over the micro-batches (of every rank).
    pub loss: f32,
    /// Global L2 norm of the averaged gradient, before clipping.
    pub grad_norm: f32,
    /// Query-document pairs seen (by every rank).
    pub samples: usize,
    /// Seconds this rank spent in the all-sum (waiting for the others
    /// included), where [`Shard::time_sync`] asked for it to be timed.
    pub sync_seconds: Option<f64>,
    /// Whether some rank asked to stop ([`Shard::stop`]) during this update.
    pub stop: bool,
}

/// An update started by [`Trainer::launch`], to be read by [`Trainer::land`].
#[must_use = "an update's statistics must be landed"]
pub struct InFlight(Flight);

impl InFlight {
    /// Where the host's time went while it built and started this update
    /// (all zero for an eager update, which ran to its end).
    pub fn times(&self) -> LaunchTimes {
        match &self.0 {
            Flight::Done(_) => LaunchTimes::default(),
            Flight::Pending { times, .. } => *times,
        }
    }
}

/// The host's seconds in the pieces of a compiled update's launch: what
/// `XTR_PIPE_TRACE` records per update, to tell the host's share of an
/// update from the device's (MLX builds and encodes every kernel on the
/// calling thread; `async_eval` returns once they are queued).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct LaunchTimes {
    /// The micro-batches' forward/backward graphs, built and started.
    pub grads: f64,
    /// The loss totals and, with ranks, the all-sum and what surrounds it.
    pub reduce: f64,
    /// The norm, clip and AdamW graph.
    pub update: f64,
    /// Starting the update's evaluation.
    pub submit: f64,
    /// Of the above, the compiled functions' calls alone: building the
    /// update's graphs on the host, with no evaluation and so no wait for the
    /// device in it. The same graphs every update, so it gauges how fast the
    /// host runs, from run to run and rank to rank.
    pub calls: f64,
}

enum Flight {
    /// Evaluated already (the eager path).
    Done(UpdateStats),
    /// Launched on the device: its norm and totals, and the state before it.
    Pending {
        count: usize,
        norm: Array,
        total: Total,
        /// The state before it, restored if it turns out not finite.
        before: Box<TrainerState>,
        times: LaunchTimes,
    },
}

/// How an update is shared among the ranks of a data-parallel job.
pub struct Shard<'a> {
    pub group: &'a Group,
    /// The update's micro-batches over all ranks.
    pub count: usize,
    /// This rank wants the job to stop after this update (it was cancelled);
    /// every rank learns it through [`UpdateStats::stop`] at the same update.
    pub stop: bool,
    /// Evaluate the all-sum on its own and time it ([`UpdateStats::sync_seconds`]).
    /// It costs a host round trip per update, so it is for measurement; the
    /// result is the same either way (the same operations in the same order).
    pub time_sync: bool,
}

/// One rank's losses and pairs, before they are summed over the ranks. The
/// losses stay on the device: reading one would be a host round trip per
/// micro-batch.
#[derive(Default)]
struct Local {
    losses: Vec<Array>,
    samples: usize,
}

impl Local {
    fn add(&mut self, loss: Array, batch: &Batch) -> Result<()> {
        self.losses
            .push(loss.as_dtype(mlx::Dtype::Float32)?.reshape(&[1])?);
        self.samples += batch.query_ids.dim(0).unwrap_or(0) as usize;
        Ok(())
    }

    /// The gradient sums and these totals summed over the shard's ranks (as
    /// they are without one), in one all-sum of one flat buffer. Nothing is
    /// waited for here unless the shard asks for the all-sum to be timed: the
    /// caller reads the update once, totals included.
    fn reduce(self, sum: Vec<Array>, shard: Option<&Shard>) -> Result<(Vec<Array>, Total)> {
        let loss_sum = match self.losses.len() {
            0 => Array::from_slice(&[0f32], &[1])?,
            _ => ops::sum_axis(&ops::concatenate_axis(&self.losses, 0)?, 0, true)?,
        };
        let counts = Array::from_slice(
            &[
                self.samples as f32,
                f32::from(u8::from(shard.is_some_and(|s| s.stop))),
            ],
            &[2],
        )?;
        let tail = ops::concatenate_axis(&[loss_sum, counts], 0)?;
        let Some(shard) = shard else {
            return Ok((
                sum,
                Total {
                    tail,
                    sync_seconds: None,
                },
            ));
        };
        if shard.time_sync {
            // Finish the local work first, or the timer would hold it too.
            mlx::eval(sum.iter().chain([&tail]))?;
        }
        let started = Instant::now();
        let mut flat = sum
            .iter()
            .map(|g| g.as_dtype(mlx::Dtype::Float32)?.reshape(&[-1]))
            .collect::<mlx::Result<Vec<_>>>()?;
        flat.push(tail);
        let flat = ops::concatenate_axis(&flat, 0)?;
        // MLX's CUDA backend records each command buffer as a CUDA graph and
        // reuses it only if every node is of a kind it knows how to update;
        // otherwise the whole buffer is instantiated anew. A collective
        // captured from NCCL may bring such nodes, and would then cost the
        // instantiation of the hundreds of kernels beside it every update.
        // Starting the local work, then the all-sum on its own, keeps the
        // collective in a buffer of its own; the host waits for neither.
        // (Timed, the same split is made by waiting.)
        if !shard.time_sync {
            mlx::async_eval([&flat])?;
        }
        let total = shard
            .group
            .all_sum(&flat)
            .context("all-summing the gradients over the ranks")?;
        if !shard.time_sync {
            mlx::async_eval([&total])?;
        }
        let mut out = Vec::with_capacity(sum.len());
        let mut at = 0i32;
        for g in &sum {
            let len = g.size() as i32;
            out.push(
                ops::slice(&total, &[at], &[at + len], &[1])?
                    .reshape(g.shape())?
                    .as_dtype(g.dtype())?,
            );
            at += len;
        }
        let tail = ops::slice(&total, &[at], &[at + 3], &[1])?;
        let sync_seconds = if shard.time_sync {
            mlx::eval(out.iter().chain([&tail]))?;
            Some(started.elapsed().as_secs_f64())
        } else {
            None
        };
        Ok((out, Total { tail, sync_seconds }))
    }
}

/// The update's loss sum, pairs and stop flag over every rank, still on the
/// device until [`Total::read`].
struct Total {
    /// `[loss sum, pairs, stop]`.
    tail: Array,
    sync_seconds: Option<f64>,
}

impl Total {
    /// The update's statistics (the tail must be evaluated, or is evaluated
    /// now). A non-finite loss is an error: its update must not be applied.
    fn read(&self, count: usize, grad_norm: f32) -> Result<UpdateStats> {
        let tail = self.tail.to_vec::<f32>()?;
        anyhow::ensure!(
            tail.len() == 3,
            "the update's totals have {} values",
            tail.len()
        );
        let loss = tail[0] / count as f32;
        anyhow::ensure!(loss.is_finite(), "the loss is {loss}");
        Ok(UpdateStats {
            loss,
            grad_norm,
            samples: tail[1].round() as usize,
            sync_seconds: self.sync_seconds,
            stop: tail[2] > 0.0,
        })
    }
}

fn zeros_like(arrays: &[Array]) -> Result<Vec<Array>> {
    Ok(arrays
        .iter()
        .map(|p| ops::zeros_dtype(p.shape(), p.dtype()))
        .collect::<mlx::Result<Vec<_>>>()?)
}

/// Loss and in-batch accuracy on a batch, dropout off, no update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalStats {
    pub loss: f32,
    /// Queries whose highest-scoring document is their own.
    pub correct: usize,
    pub queries: usize,
}

/// The trainer's state that a checkpoint must hold to continue bit-identically.
pub struct TrainerState {
    pub params: Vec<Array>,
    pub adam_m: Vec<Array>,
    pub adam_v: Vec<Array>,
    /// Updates AdamW has made (its bias correction).
    pub adam_step: i32,
    /// The PRNG key the next dropout masks are drawn from.
    pub key: Array,
    pub steps: u64,
}

impl Trainer {
    /// Loss and LoRA gradients on `batch` at the current parameters, with the
    /// next dropout key (when dropout is on); evaluated.
    pub fn gradients(&mut self, batch: &Batch) -> Result<(f32, Vec<Array>)> {
        let (dropout_key, next) = random::split2(&self.key)?;
        self.key = next;
        self.gradients_with(batch, &dropout_key)
    }

    /// [`Trainer::gradients`] with the dropout key given.
    fn gradients_with(&mut self, batch: &Batch, dropout_key: &Array) -> Result<(f32, Vec<Array>)> {
        let key = self.cfg.train_dropout.then_some(dropout_key);
        let inputs = [
            &batch.query_ids,
            &batch.query_mask,
            &batch.doc_ids,
            &batch.doc_mask,
        ];
        let (loss, grads) = loss_and_grads(&self.model, &self.params, inputs, key, &self.cfg.loss)
            .context("forward/backward")?;
        set_lora_params(&mut self.model.borrow_mut().encoder, &self.params)?;
        mlx::eval(grads.iter().chain([&loss]))?;
        Ok((loss.item::<f32>()?, grads))
    }

    /// The dropout keys of the next `count` micro-batches (the key moves past them).
    fn next_keys(&mut self, count: usize) -> Result<Vec<Array>> {
        let mut keys = Vec::with_capacity(count);
        for _ in 0..count {
            let (dropout_key, next) = random::split2(&self.key)?;
            self.key = next;
            keys.push(dropout_key);
        }
        Ok(keys)
    }

    /// One AdamW update at rate `lr` from the mean gradient of `micro`
    /// batches, each its own group of in-batch negatives (so the result is the
    /// mean of per-micro-batch gradients, not the gradient of one big batch).
    /// With `clip`, the mean gradient is scaled to a global norm of at most
    /// `clip` (PyTorch's `clip_grad_norm_`). A non-finite loss or gradient
    /// stops before the update, leaving the parameters as they were. One
    /// micro-batch and no clipping is exactly [`Trainer::step_with_lr`] (eager).
    pub fn accumulate_step(
        &mut self,
        micro: &[Batch],
        lr: f32,
        clip: Option<f32>,
    ) -> Result<UpdateStats> {
        anyhow::ensure!(!micro.is_empty(), "no micro-batches to train on");
        let mine: Vec<(usize, &Batch)> = micro.iter().enumerate().collect();
        let flight = self.update(&mine, micro.len(), None, lr, clip)?;
        self.land(flight)
    }

    /// This rank's part of a data-parallel [`Trainer::accumulate_step`]: `micro`
    /// holds the micro-batches `(index in the update, batch)` that fell to this
    /// rank. Their gradient sum is all-summed over `shard.group` and divided
    /// by `shard.count` (the update's micro-batches over all ranks), so every
    /// rank makes the same update as one process given all of them would, up
    /// to the order of float additions: the dropout key of micro-batch `i` is
    /// the `i`-th of the update whatever rank draws it.
    pub fn accumulate_shard(
        &mut self,
        micro: &[(usize, Batch)],
        shard: &Shard,
        lr: f32,
        clip: Option<f32>,
    ) -> Result<UpdateStats> {
        let flight = self.launch(micro, Some(shard), lr, clip)?;
        self.land(flight)
    }

    /// Starts an update and returns without waiting for the device:
    /// [`Trainer::accumulate_shard`] (or, without a shard,
    /// [`Trainer::accumulate_step`] over `micro`'s batches) up to the read-back
    /// of its loss and norm, which [`Trainer::land`] does. The trainer's state
    /// is the update's result from here on, not yet computed, so the host can
    /// build (and launch) the next update while the device works on this one;
    /// every update's statistics must still be landed, in order. Compiled
    /// trainers only overlap: an eager one has finished the update on return.
    pub fn launch(
        &mut self,
        micro: &[(usize, Batch)],
        shard: Option<&Shard>,
        lr: f32,
        clip: Option<f32>,
    ) -> Result<InFlight> {
        let count = shard.map_or(micro.len(), |s| s.count);
        anyhow::ensure!(count > 0, "no micro-batches to train on");
        anyhow::ensure!(
            micro.iter().all(|(i, _)| *i < count),
            "a micro-batch index is past the update's {count}"
        );
        let mine: Vec<(usize, &Batch)> = micro.iter().map(|(i, b)| (*i, b)).collect();
        self.update(&mine, count, shard, lr, clip)
    }

    /// Waits for a launched update and reads its statistics. A non-finite
    /// loss or gradient norm is an error, and the trainer goes back to its
    /// state before that update (any update launched after it is dropped too):
    /// the parameters stay as they were.
    pub fn land(&mut self, flight: InFlight) -> Result<UpdateStats> {
        let (count, norm, total, before) = match flight.0 {
            Flight::Done(stats) => return Ok(stats),
            Flight::Pending {
                count,
                norm,
                total,
                before,
                ..
            } => (count, norm, total, before),
        };
        mlx::eval([&norm, &total.tail])?;
        let stats = norm
            .item::<f32>()
            .map_err(anyhow::Error::from)
            .and_then(|norm| total.read(count, norm))
            .and_then(|stats| {
                let n = stats.grad_norm;
                anyhow::ensure!(n.is_finite(), "the gradient norm is {n}");
                Ok(stats)
            });
        if stats.is_err() {
            // Back to the state before this update.
            self.restore(*before)?;
        }
        stats
    }

    fn update(
        &mut self,
        micro: &[(usize, &Batch)],
        count: usize,
        shard: Option<&Shard>,
        lr: f32,
        clip: Option<f32>,
    ) -> Result<InFlight> {
        // A compiled update lands later and may have to be undone then; an
        // eager one is checked before it is applied and needs no snapshot.
        let before = self.accum.is_some().then(|| self.state());
        let keys = self.next_keys(count)?;
        if let Some(before) = before {
            let fns = self.accum.take().context("the compiled update")?;
            let launched = self.accumulate_compiled(&fns, micro, &keys, shard, lr, clip);
            self.accum = Some(fns);
            let (norm, total, times) = launched?;
            return Ok(InFlight(Flight::Pending {
                count,
                norm,
                total,
                before: Box::new(before),
                times,
            }));
        }
        let mut sum: Option<Vec<Array>> = None;
        let mut local = Local::default();
        for (i, batch) in micro {
            let (loss, grads) = self.gradients_with(batch, &keys[*i])?;
            anyhow::ensure!(loss.is_finite(), "the loss is {loss}");
            local.add(Array::from_f32(loss), batch)?;
            sum = Some(match sum {
                None => grads,
                Some(acc) => {
                    let acc = acc
                        .iter()
                        .zip(&grads)
                        .map(|(a, g)| a.add(g))
                        .collect::<mlx::Result<Vec<_>>>()?;
                    // Bound the graph (and memory) to one micro-batch.
                    mlx::eval(&acc)?;
                    acc
                }
            });
        }
        let sum = match sum {
            Some(s) => s,
            None => zeros_like(&self.params)?,
        };
        let (mut grads, total) = local.reduce(sum, shard)?;
        if count > 1 {
            let n = Array::from_f32(count as f32);
            grads = grads
                .iter()
                .map(|g| g.divide(&n))
                .collect::<mlx::Result<Vec<_>>>()?;
        }
        let grad_norm = global_norm(&grads)?;
        let stats = total.read(count, grad_norm)?;
        anyhow::ensure!(grad_norm.is_finite(), "the gradient norm is {grad_norm}");
        if let Some(max) = clip {
            let coef = max / (grad_norm + 1e-6);
            if coef < 1.0 {
                let coef = Array::from_f32(coef);
                grads = grads
                    .iter()
                    .map(|g| g.multiply(&coef))
                    .collect::<mlx::Result<Vec<_>>>()?;
            }
        }
        self.flat = None;
        self.params = self.opt.update(&self.params, &grads, lr)?;
        mlx::eval(self.params.iter().chain(self.opt.state()))?;
        set_lora_params(&mut self.model.borrow_mut().encoder, &self.params)?;
        self.steps += 1;
        Ok(InFlight(Flight::Done(stats)))
    }

    /// [`Trainer::accumulate_step`] through two compiled graphs over flat
    /// vectors ([`Flat`]): loss and gradients added to a running sum (once per
    /// micro-batch), then the norm, the clip coefficient and AdamW. An update
    /// is then a fixed handful of operations whatever the number of adapter
    /// arrays, and the all-sum takes the sum as it is.
    fn accumulate_compiled(
        &mut self,
        fns: &AccumFns,
        micro: &[(usize, &Batch)],
        keys: &[Array],
        shard: Option<&Shard>,
        lr: f32,
        clip: Option<f32>,
    ) -> Result<(Array, Total, LaunchTimes)> {
        let mut times = LaunchTimes::default();
        let mut clock = Instant::now();
        let mut lap = |into: &mut f64| {
            let now = Instant::now();
            *into += now.duration_since(clock).as_secs_f64();
            clock = now;
        };
        let flat = match self.flat.take() {
            Some(flat) => flat,
            None => Flat {
                p: fns.layout.join(&self.params)?,
                m: fns.layout.join(&self.opt.m)?,
                v: fns.layout.join(&self.opt.v)?,
            },
        };
        let mut sum = fns.zeros.clone();
        let mut local = Local::default();
        for (i, batch) in micro {
            let inputs = AccumFns::grads_inputs(flat.p.clone(), sum, batch, keys[*i].clone());
            let called = Instant::now();
            let out = fns
                .grads
                .call(&inputs)
                .context("compiled forward/backward")?;
            times.calls += called.elapsed().as_secs_f64();
            if micro.len() > 1 {
                // Bound the graph (and memory) to one micro-batch, without
                // waiting for it: the host builds the next one meanwhile.
                mlx::async_eval(&out)?;
            }
            let [loss, next]: [Array; 2] = out.try_into().map_err(|out: Vec<Array>| {
                anyhow::anyhow!("compiled gradients returned {} arrays", out.len())
            })?;
            local.add(loss, batch)?;
            sum = next;
        }
        lap(&mut times.grads);
        let (sum, total) = local.reduce(vec![sum], shard)?;
        let sum = sum.into_iter().next().context("the gradient sum")?;
        lap(&mut times.reduce);
        // The norm, the clip coefficient and AdamW are one graph, evaluated
        // once: no read-back of the norm between them (a host round trip per
        // update that a data-parallel rank, with less GPU work per update,
        // cannot hide). The coefficient is the eager path's f32 arithmetic,
        // `min(clip / (norm + 1e-6), 1)`, done on the device; no clipping is
        // a clip of infinity, whose coefficient is exactly 1. A non-finite
        // norm is noticed when the update lands, and the state before it
        // restored.
        let mut inputs = vec![
            flat.p,
            sum,
            flat.m,
            flat.v,
            Array::from_f32(1.0 / keys.len() as f32),
            Array::from_f32(clip.unwrap_or(f32::INFINITY)),
        ];
        inputs.extend(self.opt.next_scalars(lr));
        let called = Instant::now();
        let out = fns.update.call(&inputs).context("compiled AdamW update")?;
        times.calls += called.elapsed().as_secs_f64();
        let [p, m, v, norm]: [Array; 4] = out.try_into().map_err(|out: Vec<Array>| {
            anyhow::anyhow!("compiled update returned {} arrays", out.len())
        })?;
        lap(&mut times.update);
        // The update's one evaluation (gradients, all-sum, norm and AdamW),
        // started here and waited for in `land`. The new state takes the old
        // one's place at once, unevaluated: the next update can be built on it.
        mlx::async_eval([&p, &m, &v, &norm, &total.tail])?;
        self.params = fns.layout.split(&p)?;
        self.opt.m = fns.layout.split(&m)?;
        self.opt.v = fns.layout.split(&v)?;
        self.flat = Some(Flat { p, m, v });
        set_lora_params(&mut self.model.borrow_mut().encoder, &self.params)?;
        self.steps += 1;
        lap(&mut times.submit);
        Ok((norm, total, times))
    }

    /// The operations one micro-batch's forward/backward on `batch` runs, by
    /// kind (see [`mlx::graph_ops`]): the compiled graph when compiling, built
    /// and dropped without being evaluated. On a GPU each is a kernel the
    /// host encodes, which is what a host-bound update pays for.
    pub fn micro_batch_ops(&mut self, batch: &Batch) -> Result<Vec<(String, usize)>> {
        let key = random::split2(&self.key)?.0;
        let out = match &self.accum {
            Some(fns) => {
                let p = match &self.flat {
                    Some(flat) => flat.p.clone(),
                    None => fns.layout.join(&self.params)?,
                };
                let inputs = AccumFns::grads_inputs(p, fns.zeros.clone(), batch, key);
                fns.grads
                    .call(&inputs)
                    .context("compiled forward/backward")?
            }
            None => {
                let inputs = [
                    &batch.query_ids,
                    &batch.query_mask,
                    &batch.doc_ids,
                    &batch.doc_mask,
                ];
                let key = self.cfg.train_dropout.then_some(&key);
                let (loss, mut grads) =
                    loss_and_grads(&self.model, &self.params, inputs, key, &self.cfg.loss)?;
                grads.push(loss);
                grads
            }
        };
        // Differentiating put the tracers into the model: the adapters back.
        set_lora_params(&mut self.model.borrow_mut().encoder, &self.params)?;
        Ok(mlx::graph_ops(&out)?)
    }

    /// Loss and in-batch accuracy on `batch` (dropout off, parameters unchanged).
    pub fn evaluate(&self, batch: &Batch) -> Result<EvalStats> {
        let model = self.model.borrow();
        let q = model.forward(&batch.query_ids, &batch.query_mask)?;
        let d = model.forward(&batch.doc_ids, &batch.doc_mask)?;
        let (loss, scores) = retrieval_loss(
            &q.embeddings,
            &q.mask,
            &d.embeddings,
            &d.mask,
            &self.cfg.loss,
        )?;
        let best = scores.argmax_axis(1, false)?.as_dtype(mlx::Dtype::Int32)?;
        mlx::eval([&loss, &best])?;
        let best = best.to_vec::<i32>()?;
        let correct = best
            .iter()
            .enumerate()
            .filter(|(i, &b)| usize::try_from(b).ok() == Some(*i))
            .count();
        Ok(EvalStats {
            loss: loss.item::<f32>()?,
            correct,
            queries: best.len(),
        })
    }

    /// Whether every adapter value is finite (copied to the host: call it
    /// now and then, not every step).
    pub fn params_finite(&self) -> Result<bool> {
        for p in &self.params {
            if !p
                .as_type::<f32>()?
                .to_vec::<f32>()?
                .iter()
                .all(|x| x.is_finite())
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A copy of everything that determines the next steps.
    pub fn state(&self) -> TrainerState {
        TrainerState {
            params: self.params.clone(),
            adam_m: self.opt.m.clone(),
            adam_v: self.opt.v.clone(),
            adam_step: self.opt.step_count(),
            key: self.key.clone(),
            steps: self.steps,
        }
    }

    /// Puts a saved state back (shapes checked against the current adapters).
    pub fn restore(&mut self, state: TrainerState) -> Result<()> {
        let n = self.params.len();
        anyhow::ensure!(
            state.params.len() == n && state.adam_m.len() == n && state.adam_v.len() == n,
            "the saved state holds {} / {} / {} arrays, the adapters {n}",
            state.params.len(),
            state.adam_m.len(),
            state.adam_v.len()
        );
        for (i, ((p, m), v)) in state
            .params
            .iter()
            .zip(&state.adam_m)
            .zip(&state.adam_v)
            .enumerate()
        {
            let want = self.params[i].shape();
            anyhow::ensure!(
                p.shape() == want && m.shape() == want && v.shape() == want,
                "saved array {i} has shape {:?}, the adapter {want:?}",
                p.shape()
            );
        }
        set_lora_params(&mut self.model.borrow_mut().encoder, &state.params)?;
        self.flat = None;
        self.params = state.params;
        self.opt.m = state.adam_m;
        self.opt.v = state.adam_v;
        self.opt.set_step_count(state.adam_step);
        self.key = state.key;
        self.steps = state.steps;
        Ok(())
    }
}

/// `sqrt(sum of squares)` over all arrays, on the host.
fn global_norm(arrays: &[Array]) -> Result<f32> {
    let mut total: Option<Array> = None;
    for a in arrays {
        let s = ops::sum(ops::square(a.as_dtype(mlx::Dtype::Float32)?)?, false)?;
        total = Some(match total {
            None => s,
            Some(t) => t.add(s)?,
        });
    }
    Ok(match total {
        Some(t) => ops::sqrt(t)?.item::<f32>()?,
        None => 0.0,
    })
}

/// The adapters, their first and second moments: one flat f32 vector each,
/// the arrays laid end to end in [`lora_params`] order ([`Layout`]).
struct Flat {
    p: Array,
    m: Array,
    v: Array,
}

/// Where each adapter array lies in a flat vector, and its shape and dtype.
/// Folding the arrays into one vector makes the update's graph a few
/// operations instead of a few per array: per update, MLX builds and encodes
/// each operation on the host, and a data-parallel rank has only its own
/// micro-batches to hide that behind.
#[derive(Clone)]
struct Layout {
    shapes: Vec<Vec<i32>>,
    dtypes: Vec<mlx::Dtype>,
    len: i32,
}

impl Layout {
    fn of(arrays: &[Array]) -> Layout {
        Layout {
            shapes: arrays.iter().map(|a| a.shape().to_vec()).collect(),
            dtypes: arrays.iter().map(Array::dtype).collect(),
            len: arrays.iter().map(|a| a.size() as i32).sum(),
        }
    }

    /// The arrays (shaped as this layout says) as one f32 vector.
    fn join(&self, arrays: &[Array]) -> mlx::Result<Array> {
        let parts = arrays
            .iter()
            .map(|a| a.as_dtype(mlx::Dtype::Float32)?.reshape(&[-1]))
            .collect::<mlx::Result<Vec<_>>>()?;
        ops::concatenate_axis(&parts, 0)
    }

    /// The arrays of a flat vector, in their shapes and dtypes.
    fn split(&self, flat: &Array) -> mlx::Result<Vec<Array>> {
        let mut at = 0i32;
        self.shapes
            .iter()
            .zip(&self.dtypes)
            .map(|(shape, dtype)| {
                let len = shape.iter().product::<i32>();
                let part = ops::slice(flat, &[at], &[at + len], &[1])?
                    .reshape(shape)?
                    .as_dtype(*dtype);
                at += len;
                part
            })
            .collect()
    }
}

/// The compiled pieces of an accumulated update over [`Flat`] vectors, and a
/// zero gradient sum to start from.
struct AccumFns {
    layout: Layout,
    /// `[params, sum, q_ids, q_mask, d_ids, d_mask, dropout_key]` -> `[loss, sum + grads]`.
    grads: Compiled,
    /// `[params, sum, m, v, 1/n, clip, decay, step_size, bias2]` ->
    /// `[params, m, v, norm]`: AdamW on the mean gradient `sum / n` scaled
    /// to a global L2 norm of at most `clip`, and the norm before clipping.
    update: Compiled,
    zeros: Array,
}

impl AccumFns {
    /// The inputs of [`AccumFns::grads`], in its order.
    fn grads_inputs(params: Array, sum: Array, batch: &Batch, key: Array) -> [Array; 7] {
        [
            params,
            sum,
            batch.query_ids.clone(),
            batch.query_mask.clone(),
            batch.doc_ids.clone(),
            batch.doc_mask.clone(),
            key,
        ]
    }
}

fn compile_accum(
    model: Rc<RefCell<MultiVectorModel>>,
    cfg: &StepConfig,
    params: &[Array],
) -> Result<AccumFns> {
    let layout = Layout::of(params);
    let (loss_cfg, adamw, dropout) = (cfg.loss, cfg.adamw, cfg.train_dropout);
    let arity = |what: &str, got: usize, want: usize| -> mlx::Result<()> {
        if got == want {
            Ok(())
        } else {
            Err(mlx::Exception::new(format!(
                "compiled {what}: {got} inputs, expected {want}"
            )))
        }
    };
    let split = layout.clone();
    let grads = move |inputs: &[Array]| -> mlx::Result<Vec<Array>> {
        arity("gradients", inputs.len(), 7)?;
        let params = split.split(&inputs[0])?;
        let batch = [&inputs[2], &inputs[3], &inputs[4], &inputs[5]];
        let key = dropout.then_some(&inputs[6]);
        let (loss, grads) = loss_and_grads(&model, &params, batch, key, &loss_cfg)?;
        Ok(vec![loss, ops::add(&inputs[1], split.join(&grads)?)?])
    };
    let update = move |inputs: &[Array]| -> mlx::Result<Vec<Array>> {
        arity("update", inputs.len(), 9)?;
        let (p, sum, m, v, inv_n, clip) = (
            &inputs[0], &inputs[1], &inputs[2], &inputs[3], &inputs[4], &inputs[5],
        );
        let norm = ops::sqrt(ops::sum(ops::square(ops::multiply(sum, inv_n)?)?, false)?)?;
        let coef = ops::minimum(
            ops::divide(clip, ops::add(&norm, Array::from_f32(1e-6))?)?,
            Array::from_f32(1.0),
        )?;
        let grad = ops::multiply(sum, ops::multiply(inv_n, coef)?)?;
        let scalars = [inputs[6].clone(), inputs[7].clone(), inputs[8].clone()];
        let (p, m, v) = optim::apply(
            &adamw,
            std::slice::from_ref(p),
            &[grad],
            std::slice::from_ref(m),
            std::slice::from_ref(v),
            &scalars,
        )?;
        Ok(p.into_iter().chain(m).chain(v).chain([norm]).collect())
    };
    let zeros = ops::zeros_dtype(&[layout.len], mlx::Dtype::Float32)?;
    mlx::eval([&zeros])?;
    Ok(AccumFns {
        layout,
        grads: mlx::compile(grads, false)?,
        update: mlx::compile(update, false)?,
        zeros,
    })
}

/// The whole step as one compiled function of
/// `[params.., m.., v.., q_ids, q_mask, d_ids, d_mask, dropout_key, decay, step_size, bias2]`
/// returning `[loss, params.., m.., v..]`.
fn compile_step(
    model: Rc<RefCell<MultiVectorModel>>,
    cfg: &StepConfig,
    n: usize,
) -> Result<Compiled> {
    let (loss_cfg, adamw, dropout) = (cfg.loss, cfg.adamw, cfg.train_dropout);
    let f = move |inputs: &[Array]| -> mlx::Result<Vec<Array>> {
        if inputs.len() != 3 * n + 8 {
            return Err(mlx::Exception::new(format!(
                "compiled step: {} inputs, expected {}",
                inputs.len(),
                3 * n + 8
            )));
        }
        let (params, rest) = inputs.split_at(n);
        let (m, rest) = rest.split_at(n);
        let (v, rest) = rest.split_at(n);
        let batch = [&rest[0], &rest[1], &rest[2], &rest[3]];
        let key = dropout.then_some(&rest[4]);
        let scalars = [rest[5].clone(), rest[6].clone(), rest[7].clone()];
        let (loss, grads) = loss_and_grads(&model, params, batch, key, &loss_cfg)?;
        let (p, m, v) = optim::apply(&adamw, params, &grads, m, v, &scalars)?;
        Ok([loss].into_iter().chain(p).chain(m).chain(v).collect())
    };
    Ok(mlx::compile(f, false)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LoadOptions, ModelDir};

    fn trainer(compile: bool) -> Trainer {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny_bert");
        let model = ModelDir::open(dir)
            .unwrap()
            .load_model(&LoadOptions::default())
            .unwrap();
        let cfg = StepConfig {
            lora: LoraConfig {
                r: 4,
                alpha: 8.0,
                ..LoraConfig::default()
            },
            loss: LossConfig::default(),
            adamw: AdamWConfig {
                lr: 1e-2,
                ..AdamWConfig::default()
            },
            train_dropout: false,
            compile,
            seed: 5,
        };
        Trainer::new(model, cfg).unwrap()
    }

    fn batch() -> Batch {
        let ids = |v: &[i32], len| Array::from_slice(v, &[3, len]).unwrap();
        Batch {
            query_ids: ids(&[5, 6, 7, 8, 9, 10, 11, 12, 0], 3),
            query_mask: ids(&[1, 1, 1, 1, 1, 1, 1, 1, 0], 3),
            doc_ids: ids(&[20, 21, 22, 23, 30, 31, 32, 0, 40, 41, 42, 43], 4),
            doc_mask: ids(&[1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1], 4),
        }
    }

    fn other_batch() -> Batch {
        let ids = |v: &[i32], len| Array::from_slice(v, &[3, len]).unwrap();
        Batch {
            query_ids: ids(&[50, 51, 52, 60, 61, 0], 2),
            query_mask: ids(&[1, 1, 1, 1, 1, 0], 2),
            doc_ids: ids(&[70, 71, 72, 80, 81, 0, 90, 91, 92], 3),
            doc_mask: ids(&[1, 1, 1, 1, 1, 0, 1, 1, 1], 3),
        }
    }

    fn host(arrays: &[Array]) -> Vec<Vec<f32>> {
        arrays.iter().map(|a| a.to_vec::<f32>().unwrap()).collect()
    }

    fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn one_micro_batch_without_clipping_is_exactly_todays_step() {
        let (mut today, mut accum) = (trainer(false), trainer(false));
        for b in [batch(), other_batch(), batch()] {
            let want = today.step_with_lr(&b, 3e-3, None).unwrap();
            let got = accum.accumulate_step(&[b], 3e-3, None).unwrap();
            assert_eq!(want, got.loss);
            assert_eq!(got.samples, 3);
        }
        assert_eq!(host(&today.state().params), host(&accum.state().params));
        assert_eq!(
            host(&today.state().adam_v),
            host(&accum.state().adam_v),
            "the optimizer state too"
        );
    }

    /// The update AdamW makes from `grads` on a fresh trainer's parameters.
    fn adamw_from(params: &[Array], grads: &[Array], lr: f32) -> Vec<Vec<f32>> {
        let cfg = AdamWConfig {
            lr: 1e-2,
            ..AdamWConfig::default()
        };
        let mut opt = AdamW::new(cfg, params).unwrap();
        host(&opt.update(params, grads, lr).unwrap())
    }

    #[test]
    fn accumulation_averages_the_micro_batch_gradients_and_clips_their_norm() {
        let (b1, b2) = (batch(), other_batch());
        let mut reference = trainer(false);
        let start = reference.state().params;
        let (l1, g1) = reference.gradients(&b1).unwrap();
        let (l2, g2) = reference.gradients(&b2).unwrap();
        let mean: Vec<Array> = g1
            .iter()
            .zip(&g2)
            .map(|(a, b)| a.add(b).unwrap().divide(Array::from_f32(2.0)).unwrap())
            .collect();
        let norm = host(&mean)
            .iter()
            .flatten()
            .map(|x| f64::from(*x).powi(2))
            .sum::<f64>()
            .sqrt() as f32;

        let mut accum = trainer(false);
        let stats = accum
            .accumulate_step(&[batch(), other_batch()], 5e-3, None)
            .unwrap();
        assert!((stats.loss - (l1 + l2) / 2.0).abs() < 1e-6, "{stats:?}");
        assert!(
            (stats.grad_norm - norm).abs() < 1e-5 * norm,
            "{stats:?} vs {norm}"
        );
        assert_eq!(stats.samples, 6);
        let d = max_diff(
            &host(&accum.state().params),
            &adamw_from(&start, &mean, 5e-3),
        );
        assert!(d < 1e-7, "accumulated update differs by {d}");

        // Clipped to a tenth of the norm: the same update from the scaled mean.
        let clip = norm / 10.0;
        let scaled: Vec<Array> = mean
            .iter()
            .map(|g| g.multiply(Array::from_f32(clip / (norm + 1e-6))).unwrap())
            .collect();
        let mut clipped = trainer(false);
        let stats = clipped
            .accumulate_step(&[batch(), other_batch()], 5e-3, Some(clip))
            .unwrap();
        assert!(
            (stats.grad_norm - norm).abs() < 1e-5 * norm,
            "norm before clipping"
        );
        let d = max_diff(
            &host(&clipped.state().params),
            &adamw_from(&start, &scaled, 5e-3),
        );
        assert!(d < 1e-7, "clipped update differs by {d}");
    }

    /// A shard that holds every micro-batch of the update, in a group of one,
    /// goes through the all-sum path (flatten, concatenate, split back) and
    /// must make exactly the unsharded update, in either execution mode.
    /// `b` padded with masked zeros to `query` and `doc` tokens.
    fn widened(b: &Batch, query: i32, doc: i32) -> Batch {
        let widen = |a: &Array, width: i32| {
            let (rows, cols) = (a.dim(0).unwrap(), a.dim(1).unwrap());
            let pad = ops::zeros_dtype(&[rows, width - cols], a.dtype()).unwrap();
            ops::concatenate_axis(&[a.clone(), pad], 1).unwrap()
        };
        Batch {
            query_ids: widen(&b.query_ids, query),
            query_mask: widen(&b.query_mask, query),
            doc_ids: widen(&b.doc_ids, doc),
            doc_mask: widen(&b.doc_mask, doc),
        }
    }

    /// Data-parallel ranks pad an update's micro-batches to one shape; the
    /// padding is masked, so the update must not change beyond float rounding.
    #[test]
    fn masked_padding_does_not_change_the_update() {
        for compile in [false, true] {
            let (mut narrow, mut wide) = (trainer(compile), trainer(compile));
            let a = narrow
                .accumulate_step(&[batch(), other_batch()], 1e-2, Some(0.5))
                .unwrap();
            let padded = [widened(&batch(), 5, 7), widened(&other_batch(), 5, 7)];
            let b = wide.accumulate_step(&padded, 1e-2, Some(0.5)).unwrap();
            assert!((a.loss - b.loss).abs() < 1e-5, "{} vs {}", a.loss, b.loss);
            assert!((a.grad_norm - b.grad_norm).abs() < 1e-5 * a.grad_norm.max(1.0));
            let d = max_diff(&host(&narrow.params), &host(&wide.params));
            assert!(d < 1e-6, "compile {compile}: adapters differ by {d}");
        }
    }

    #[test]
    fn a_shard_holding_the_whole_update_is_exactly_the_unsharded_step() {
        let group = mlx::distributed::Group::single().unwrap();
        for (compile, time_sync) in [(false, false), (true, false), (true, true)] {
            let mut whole = trainer(compile);
            let mut shard = trainer(compile);
            let a = whole
                .accumulate_step(&[batch(), other_batch()], 1e-2, Some(0.5))
                .unwrap();
            let s = Shard {
                group: &group,
                count: 2,
                stop: true,
                time_sync,
            };
            let b = shard
                .accumulate_shard(&[(0, batch()), (1, other_batch())], &s, 1e-2, Some(0.5))
                .unwrap();
            assert_eq!(
                host(&whole.params),
                host(&shard.params),
                "compile {compile}"
            );
            assert_eq!(host(&whole.opt.m), host(&shard.opt.m), "compile {compile}");
            assert_eq!((a.samples, a.grad_norm), (b.samples, b.grad_norm));
            assert!((a.loss - b.loss).abs() < 1e-6, "{} vs {}", a.loss, b.loss);
            assert!(b.stop, "the stop request did not come back");
            assert_eq!(b.sync_seconds.is_some(), time_sync, "compile {compile}");
            assert_eq!(a.sync_seconds, None);
        }
    }

    #[test]
    fn compiled_accumulation_matches_eager() {
        let (mut eager, mut compiled) = (trainer(false), trainer(true));
        for clip in [None, Some(0.05), Some(1e3)] {
            let (e, c) = (
                eager
                    .accumulate_step(&[batch(), other_batch()], 1e-2, clip)
                    .unwrap(),
                compiled
                    .accumulate_step(&[batch(), other_batch()], 1e-2, clip)
                    .unwrap(),
            );
            assert!((e.loss - c.loss).abs() < 1e-5, "{e:?} vs {c:?}");
            assert!(
                (e.grad_norm - c.grad_norm).abs() < 1e-4 * e.grad_norm,
                "{e:?} vs {c:?}"
            );
        }
        let d = max_diff(
            &host(&eager.state().params),
            &host(&compiled.state().params),
        );
        assert!(d < 1e-5, "params differ by {d}");
        let d = max_diff(
            &host(&lora_params(&eager.model().encoder)),
            &host(&lora_params(&compiled.model().encoder)),
        );
        assert!(d < 1e-5, "the model's adapters differ by {d}");
    }

    #[test]
    fn a_plain_step_between_accumulated_updates_is_not_lost() {
        // The compiled accumulation keeps the adapters as flat vectors; a
        // plain step in between changes them behind its back, and the next
        // accumulation must start from the step's result, as eager does.
        let (mut eager, mut compiled) = (trainer(false), trainer(true));
        for t in [&mut eager, &mut compiled] {
            t.accumulate_step(&[batch(), other_batch()], 1e-2, None)
                .unwrap();
            t.step(&other_batch(), None).unwrap();
            t.accumulate_step(&[batch()], 1e-2, Some(0.05)).unwrap();
        }
        let d = max_diff(
            &host(&eager.state().params),
            &host(&compiled.state().params),
        );
        assert!(d < 1e-5, "params differ by {d}");
        let d = max_diff(
            &host(&eager.state().adam_v),
            &host(&compiled.state().adam_v),
        );
        assert!(d < 1e-6, "second moments differ by {d}");
    }

    #[test]
    fn counting_a_micro_batch_leaves_the_trainer_as_it_was() {
        for compile in [false, true] {
            let mut t = trainer(compile);
            t.accumulate_step(&[batch()], 1e-2, None).unwrap();
            let before = t.evaluate(&batch()).unwrap();
            // A shape not traced yet: counting it traces the compiled step.
            let ops = t.micro_batch_ops(&other_batch()).unwrap();
            assert!(
                ops.iter().any(|(name, n)| name == "Matmul" && *n > 0),
                "{ops:?}"
            );
            // The model holds its adapters again, not the tracers of the count.
            assert_eq!(t.evaluate(&batch()).unwrap(), before);
            assert_eq!(t.steps, 1);
        }
    }

    #[test]
    fn evaluation_gives_the_step_loss_without_changing_anything() {
        let (mut t, b) = (trainer(false), batch());
        let before = host(&t.state().params);
        let eval = t.evaluate(&b).unwrap();
        assert_eq!(eval.queries, 3);
        assert!(eval.correct <= 3);
        assert_eq!(host(&t.state().params), before);
        let loss = t.step(&b, None).unwrap();
        assert!((eval.loss - loss).abs() < 1e-6, "{} vs {loss}", eval.loss);
    }

    #[test]
    fn non_finite_adapters_are_noticed() {
        let mut t = trainer(false);
        assert!(t.params_finite().unwrap());
        let mut state = t.state();
        let shape = state.params[1].shape().to_vec();
        let mut values = vec![0.0f32; state.params[1].size()];
        values[0] = f32::INFINITY;
        state.params[1] = Array::from_slice(&values, &shape).unwrap();
        t.restore(state).unwrap();
        assert!(!t.params_finite().unwrap());
    }

    /// The trainer's parameters and AdamW state, bit for bit.
    fn state_bits(t: &Trainer) -> (Vec<Vec<u32>>, i32) {
        let s = t.state();
        let all = [s.params, s.adam_m, s.adam_v].concat();
        let h = host(&all)
            .iter()
            .map(|v| v.iter().map(|x| x.to_bits()).collect())
            .collect();
        (h, s.adam_step)
    }

    /// Makes one adapter infinite, so the next update's loss is not finite.
    fn poison(t: &mut Trainer) {
        let mut state = t.state();
        let shape = state.params[1].shape().to_vec();
        let values = vec![f32::INFINITY; state.params[1].size()];
        state.params[1] = Array::from_slice(&values, &shape).unwrap();
        t.restore(state).unwrap();
    }

    /// The loss is read after the update's one evaluation, so a non-finite
    /// loss must still leave the parameters and AdamW's state as they were.
    #[test]
    fn a_non_finite_loss_applies_no_update() {
        for compile in [false, true] {
            let mut t = trainer(compile);
            poison(&mut t);
            let before = state_bits(&t);
            let err = t
                .accumulate_step(&[batch(), other_batch()], 1e-2, Some(1.0))
                .unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains("the loss is"), "compile {compile}: {msg}");
            assert!(
                before == state_bits(&t),
                "compile {compile}: the update was applied"
            );
        }
    }

    /// Launching an update before the previous one lands (the train loop's
    /// pipelining) gives exactly the updates of one at a time; a non-finite
    /// update that lands with another launched after it drops both.
    #[test]
    fn launched_updates_land_as_one_at_a_time_and_a_bad_one_drops_the_rest() {
        let one = |b: Batch| vec![(0usize, b)];
        let two = || vec![(0usize, batch()), (1, other_batch())];
        let mut a = trainer(true);
        let want = vec![
            a.accumulate_step(&[batch()], 1e-2, Some(1.0)).unwrap(),
            a.accumulate_step(&[batch(), other_batch()], 2e-2, Some(1.0))
                .unwrap(),
            a.accumulate_step(&[other_batch()], 1e-2, None).unwrap(),
        ];
        let mut b = trainer(true);
        let f1 = b.launch(&one(batch()), None, 1e-2, Some(1.0)).unwrap();
        let f2 = b.launch(&two(), None, 2e-2, Some(1.0)).unwrap();
        let s1 = b.land(f1).unwrap();
        let f3 = b.launch(&one(other_batch()), None, 1e-2, None).unwrap();
        let got = vec![s1, b.land(f2).unwrap(), b.land(f3).unwrap()];
        assert_eq!(got, want);
        assert!(
            state_bits(&a) == state_bits(&b) && a.steps == b.steps,
            "pipelined updates differ"
        );

        poison(&mut b);
        let (before, steps) = (state_bits(&b), b.steps);
        let bad = b.launch(&one(batch()), None, 1e-2, Some(1.0)).unwrap();
        let after = b
            .launch(&one(other_batch()), None, 1e-2, Some(1.0))
            .unwrap();
        let err = b.land(bad).unwrap_err();
        assert!(format!("{err:#}").contains("the loss is"), "{err:#}");
        drop(after);
        assert!(
            before == state_bits(&b) && steps == b.steps,
            "a dropped update was applied"
        );
        assert_eq!(
            host(&b.state().params),
            host(&lora_params(&b.model().encoder)),
            "the model's adapters are not the trainer's"
        );
    }

    #[test]
    fn a_restored_state_continues_bit_identically() {
        let mut a = trainer(false);
        a.accumulate_step(&[batch()], 1e-2, Some(1.0)).unwrap();
        a.accumulate_step(&[other_batch()], 1e-2, Some(1.0))
            .unwrap();
        let saved = a.state();
        let mut b = trainer(false);
        b.restore(TrainerState {
            params: saved
                .params
                .iter()
                .map(|p| Array::from_slice(&p.to_vec::<f32>().unwrap(), p.shape()).unwrap())
                .collect(),
            ..saved
        })
        .unwrap();
        assert_eq!(b.steps, 2);
        let (la, lb) = (
            a.accumulate_step(&[batch(), other_batch()], 1e-2, Some(1.0))
                .unwrap(),
            b.accumulate_step(&[batch(), other_batch()], 1e-2, Some(1.0))
                .unwrap(),
        );
        assert_eq!(la, lb);
        assert_eq!(host(&a.state().params), host(&b.state().params));
        assert_eq!(
            host(&lora_params(&a.model().encoder)),
            host(&lora_params(&b.model().encoder))
        );
    }

    #[test]
    fn the_eager_split_times_every_phase_and_adds_up_to_the_step() {
        let (mut timed, mut plain) = (trainer(false), trainer(false));
        let b = batch();
        let mut phases = PhaseTimes::default();
        let mut wall = 0.0;
        for _ in 0..3 {
            let start = Instant::now();
            let lt = timed.step(&b, Some(&mut phases)).unwrap();
            wall += start.elapsed().as_secs_f64();
            let lp = plain.step(&b, None).unwrap();
            assert_eq!(lt, lp, "the barriers changed the loss");
        }
        assert_eq!(
            host(&timed.state().params),
            host(&plain.state().params),
            "the barriers changed the update"
        );
        let p = phases;
        let split = [
            ("forward (query)", p.forward_query),
            ("forward (doc)", p.forward_doc),
            ("MaxSim", p.maxsim),
            ("loss", p.loss),
            ("backward", p.backward),
            ("optimizer", p.optimizer),
        ];
        for (name, seconds) in split {
            assert!(seconds > 0.0, "{name} took {seconds} s: {p:?}");
        }
        let five: f64 = split[..5].iter().map(|(_, s)| s).sum();
        assert!(
            five <= p.forward_backward && five >= 0.95 * p.forward_backward,
            "the forward and backward phases add to {five} s of {} s",
            p.forward_backward
        );
        assert!(
            p.total() <= wall && p.total() >= 0.75 * wall,
            "the phases add to {} s of a {wall} s step",
            p.total()
        );
        let shares: f64 = split
            .iter()
            .map(|(_, s)| s / p.total())
            .zip([
                p.shares().forward_query,
                p.shares().forward_doc,
                p.shares().maxsim,
                p.shares().loss,
                p.shares().backward,
                p.shares().optimizer,
            ])
            .map(|(want, got)| {
                assert!((want - got).abs() < 1e-12, "share {got} vs {want}");
                got
            })
            .sum();
        assert!((shares - 1.0).abs() < 1e-9, "the shares add to {shares}");
    }

    #[test]
    fn training_lowers_the_loss_and_compiled_matches_eager() {
        let (mut eager, mut compiled) = (trainer(false), trainer(true));
        let b = batch();
        let mut losses = Vec::new();
        for _ in 0..5 {
            let (le, lc) = (
                eager.step(&b, None).unwrap(),
                compiled.step(&b, None).unwrap(),
            );
            assert!((le - lc).abs() < 1e-4, "eager {le} vs compiled {lc}");
            losses.push(le);
        }
        assert!(
            losses[4] < losses[0],
            "the loss did not go down: {losses:?}"
        );
        // The adapters the model holds are the trained ones, equal in both modes.
        let (pe, pc) = (
            lora_params(&eager.model().encoder),
            lora_params(&compiled.model().encoder),
        );
        for (a, b) in pe.iter().zip(&pc) {
            let (a, b) = (a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
            let d = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(d < 1e-4, "params differ by {d}");
        }
    }
}
