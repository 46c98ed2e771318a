//! One LoRA training step of a multi-vector model: encode queries and documents,
//! MaxSim InfoNCE + margin over in-batch negatives, gradients for the LoRA
//! adapters only, AdamW. The same code runs on the CPU and on a GPU (MLX's
//! default device).

use std::time::Instant;

use anyhow::{Context, Result};

use super::loss::{retrieval_loss, LossConfig};
use super::optim::{AdamW, AdamWConfig};
use crate::mlx::{self, random, value_and_grad, Array};
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
    /// Dropout rate inside the encoder while training (the model's own, e.g. T5's 0.1).
    pub train_dropout: bool,
    pub seed: u64,
}

/// Seconds spent in each phase of a step, measured with evaluation barriers
/// (only when asked: the barriers cost a little overlap).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PhaseTimes {
    pub forward_backward: f64,
    pub optimizer: f64,
}

/// A model with LoRA adapters and the optimizer state over them.
pub struct Trainer {
    pub model: MultiVectorModel,
    params: Vec<Array>,
    opt: AdamW,
    cfg: StepConfig,
    key: Array,
    pub steps: u64,
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
        Ok(Trainer {
            model,
            params,
            opt,
            cfg,
            key,
            steps: 0,
        })
    }

    /// Number of trainable scalars.
    pub fn trainable(&self) -> usize {
        self.params.iter().map(Array::size).sum()
    }

    /// One step; returns the loss (evaluated).
    pub fn step(&mut self, batch: &Batch, phases: Option<&mut PhaseTimes>) -> Result<f32> {
        let start = Instant::now();
        let (dropout_key, next) = random::split2(&self.key)?;
        self.key = next;
        let train = self.cfg.train_dropout;
        let loss_cfg = self.cfg.loss;
        let model = &mut self.model;
        let (values, grads) = value_and_grad(
            |p: &[Array]| {
                let mut inner = || -> Result<Vec<Array>> {
                    set_lora_params(&mut model.encoder, p)?;
                    let ctx = if train {
                        Ctx::train(dropout_key.clone())
                    } else {
                        Ctx::eval()
                    };
                    let q = model.forward_with(&ctx, &batch.query_ids, &batch.query_mask)?;
                    let d = model.forward_with(&ctx, &batch.doc_ids, &batch.doc_mask)?;
                    let (loss, _) =
                        retrieval_loss(&q.embeddings, &q.mask, &d.embeddings, &d.mask, &loss_cfg)?;
                    Ok(vec![loss])
                };
                inner().map_err(|e| mlx::Exception::new(format!("{e:#}")))
            },
            &self.params,
        )
        .context("forward/backward")?;
        let loss = values.into_iter().next().context("the loss")?;
        let mut phases = phases;
        if let Some(p) = phases.as_deref_mut() {
            mlx::eval(grads.iter().chain([&loss]))?;
            p.forward_backward += start.elapsed().as_secs_f64();
        }
        let opt_start = Instant::now();
        self.params = self.opt.update(&self.params, &grads, self.cfg.adamw.lr)?;
        set_lora_params(&mut self.model.encoder, &self.params)?;
        mlx::eval(self.params.iter().chain(self.opt.state()).chain([&loss]))?;
        if let Some(p) = phases {
            p.optimizer += opt_start.elapsed().as_secs_f64();
        }
        self.steps += 1;
        Ok(loss.item::<f32>()?)
    }
}
