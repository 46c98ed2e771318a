//! One LoRA training step of a multi-vector model: encode queries and documents,
//! MaxSim InfoNCE + margin over in-batch negatives, gradients for the LoRA
//! adapters only, AdamW. The same code runs on the CPU and on a GPU (MLX's
//! default device), eagerly or compiled into one fused graph (`mx::compile`).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use anyhow::{Context, Result};

use super::loss::{retrieval_loss, LossConfig};
use super::optim::{self, AdamW, AdamWConfig};
use crate::mlx::{self, random, value_and_grad, Array, Compiled};
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
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PhaseTimes {
    pub forward_backward: f64,
    pub optimizer: f64,
}

/// A model with LoRA adapters and the optimizer state over them.
pub struct Trainer {
    model: Rc<RefCell<MultiVectorModel>>,
    params: Vec<Array>,
    opt: AdamW,
    cfg: StepConfig,
    key: Array,
    compiled: Option<Compiled>,
    pub steps: u64,
}

/// The loss of `model` on `batch` with the LoRA adapters set to `params`.
fn loss_with(
    model: &RefCell<MultiVectorModel>,
    params: &[Array],
    batch: [&Array; 4],
    dropout_key: Option<&Array>,
    loss_cfg: &LossConfig,
) -> Result<Array> {
    set_lora_params(&mut model.borrow_mut().encoder, params)?;
    let model = model.borrow();
    let ctx = match dropout_key {
        Some(key) => Ctx::train(key.clone()),
        None => Ctx::eval(),
    };
    let [q_ids, q_mask, d_ids, d_mask] = batch;
    let q = model.forward_with(&ctx, q_ids, q_mask)?;
    let d = model.forward_with(&ctx, d_ids, d_mask)?;
    Ok(retrieval_loss(&q.embeddings, &q.mask, &d.embeddings, &d.mask, loss_cfg)?.0)
}

/// Loss and LoRA gradients, the closure's errors carried through MLX.
fn loss_and_grads(
    model: &RefCell<MultiVectorModel>,
    params: &[Array],
    batch: [&Array; 4],
    dropout_key: Option<&Array>,
    loss_cfg: &LossConfig,
) -> mlx::Result<(Array, Vec<Array>)> {
    let (values, grads) = value_and_grad(
        |p: &[Array]| {
            loss_with(model, p, batch, dropout_key, loss_cfg)
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
        let compiled = if cfg.compile {
            Some(compile_step(Rc::clone(&model), &cfg, params.len())?)
        } else {
            None
        };
        Ok(Trainer {
            model,
            params,
            opt,
            cfg,
            key,
            compiled,
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

    /// One step; returns the loss (evaluated).
    pub fn step(&mut self, batch: &Batch, phases: Option<&mut PhaseTimes>) -> Result<f32> {
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
                let loss = self.step_compiled(&f, inputs, dropout_key);
                self.compiled = Some(f);
                loss?
            }
            None => self.step_eager(inputs, dropout_key, phases)?,
        };
        set_lora_params(&mut self.model.borrow_mut().encoder, &self.params)?;
        self.steps += 1;
        Ok(loss.item::<f32>()?)
    }

    fn step_eager(
        &mut self,
        batch: [&Array; 4],
        dropout_key: Array,
        phases: Option<&mut PhaseTimes>,
    ) -> Result<Array> {
        let start = Instant::now();
        let key = self.cfg.train_dropout.then_some(&dropout_key);
        let (loss, grads) = loss_and_grads(&self.model, &self.params, batch, key, &self.cfg.loss)
            .context("forward/backward")?;
        let mut phases = phases;
        if let Some(p) = phases.as_deref_mut() {
            mlx::eval(grads.iter().chain([&loss]))?;
            p.forward_backward += start.elapsed().as_secs_f64();
        }
        let opt_start = Instant::now();
        self.params = self.opt.update(&self.params, &grads, self.cfg.adamw.lr)?;
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
        inputs.extend(self.opt.next_scalars(self.cfg.adamw.lr));
        let out = f.call(&inputs).context("compiled train step")?;
        anyhow::ensure!(
            out.len() == 1 + 3 * n,
            "compiled step returned {} arrays",
            out.len()
        );
        mlx::eval(&out)?;
        let mut out = out.into_iter();
        let loss = out.next().context("the loss")?;
        self.params = out.by_ref().take(n).collect();
        self.opt.m = out.by_ref().take(n).collect();
        self.opt.v = out.collect();
        Ok(loss)
    }
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
