//! `train`: LoRA fine-tuning of a multi-vector model on a dataset artifact's
//! train split (validation on its eval split), resumable from the checkpoints
//! it keeps in the store's working directory for its key. The glue around
//! [`crate::train::run::train`]: params, model resolution before anything runs,
//! the progress bar, and with `gpus` > 1 the data-parallel job: one rank
//! process per GPU (or per CPU rank), started through [`super::ranks`] (the
//! helpers it shares with `index`) and served by [`run_rank`].

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::compute::{Compute, ComputeParams, DeviceGuard};
use super::ranks::{
    abort_hook, job_device, launch_ranks, read_job, resolve_gpus, time_sync, trace_dir,
    without_gpus, Gpus, RankLaunch, ABORT_ENV,
};
use super::{param_error, Arity, Configured, Dep, InputRole, Kind, Output, Stage, StageContext};
use crate::cancel::CancelToken;
use crate::dataset::sources::expand_vars;
use crate::dataset::PAIRS_FILE;
use crate::mlx::launch;
use crate::model::resolve::{resolve_in, HfCache, ModelSource};
use crate::pipeline::{ConfigError, StageSpec};
use crate::progress;
use crate::train::run::{train, Ranks, TrainConfig, TrainPaths, TrainSummary};

pub const KIND: Kind = Kind {
    name: "train",
    version: 1,
    summary: "LoRA fine-tuning (MaxSim InfoNCE + margin) on a dataset's train split, resumable",
    template: include_str!("../../stages/train.toml"),
    inputs: &[InputRole {
        role: "dataset",
        kinds: &["dataset"],
        arity: Arity::One,
    }],
    outputs: &[
        Output {
            file: ADAPTERS,
            what: "the LoRA adapters (PEFT names)",
        },
        Output {
            file: "lora_config.json",
            what: "the PEFT adapter config",
        },
        Output {
            file: PEFT_DIR,
            what: "the adapters under PEFT's file names, for PeftModel.from_pretrained",
        },
        Output {
            file: TRAIN_JSON,
            what: "the config as used, final loss, wall time, samples/s, device, engine",
        },
        Output {
            file: "metrics.parquet",
            what: "one row per step: loss, lr, grad norm, samples/s, validation",
        },
        Output {
            file: "metrics.json",
            what: "final_loss, val_loss, val_accuracy, samples_per_s, steps",
        },
    ],
    configure,
};

/// The adapters of a train artifact.
pub const ADAPTERS: &str = "adapters.safetensors";
/// The adapters under the names PEFT's `from_pretrained` looks for.
pub const PEFT_DIR: &str = "peft";
/// The summary of a train artifact (its `model` names the base it trained).
pub const TRAIN_JSON: &str = "train.json";

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Params {
    #[serde(flatten)]
    pub config: TrainConfig,
    #[serde(flatten)]
    pub compute: ComputeParams,
    /// Data-parallel ranks: a count or "all" (every GPU MLX sees). Not in the
    /// key: the global batch and its order do not depend on it.
    #[serde(default)]
    pub gpus: Gpus,
}

struct TrainStage {
    config: TrainConfig,
    model: ModelSource,
    compute: Compute,
    ranks: usize,
}

fn configure(spec: &StageSpec) -> Result<Configured, ConfigError> {
    let params: Params = super::decode(spec)?;
    if let Err(e) = params.config.validate() {
        return Err(param_error(spec, &[], format!("{e:#}")));
    }
    let compute = Compute::configure(spec, &params.compute)?;
    let ranks = resolve_gpus(spec, &params.gpus, compute.device)?;
    let model = resolve_model(spec, &params.config.model)?;
    let deps = model_deps(spec, &params.config.model, &model);
    let stage = TrainStage {
        config: params.config.clone(),
        model,
        compute,
        ranks,
    };
    let mut configured = without_gpus(
        Configured::new(spec, &params, stage)?
            .with_deps(deps)
            .with_compute(&compute),
    );
    // Since train v1 first shipped, an update's micro-batches are drawn from
    // one length bucket (`Batcher::with_group`): a different data order where
    // grad_accum > 1, so such keys change; with one micro-batch per update the
    // order, and the key, are as before.
    if params.config.grad_accum > 1 {
        if let Some(map) = configured.params.as_object_mut() {
            map.insert("batch_order".into(), "update-grouped".into());
        }
    }
    Ok(configured)
}

/// The `model` param resolved on this machine, or a located error saying
/// where to put it (before anything runs).
/// Variables expand as in source paths (`${PYTHON_SITE_PACKAGES}/pkg/model`).
pub(super) fn resolve_model(spec: &StageSpec, model: &str) -> Result<ModelSource, ConfigError> {
    let expanded = expand_vars(model).map_err(|e| param_error(spec, &["model"], e))?;
    resolve_in(&expanded, &spec.dir, &HfCache::from_env())
        .map_err(|e| param_error(spec, &["model"], format!("{e:#}")))
}

/// A model directory's files enter the key, named by the `model` param as
/// written (a directory relative to the pipeline file, `${VAR}/...`, or a
/// Hugging Face repo id found in this machine's cache): where it is does not.
pub(super) fn model_deps(spec: &StageSpec, written: &str, model: &ModelSource) -> Vec<Dep> {
    match model {
        ModelSource::Dir(dir) => vec![Dep {
            name: written.trim_end_matches('/').to_string(),
            path: dir.root.clone(),
            origin: spec.params.origin_at(&["model".to_string()]).clone(),
        }],
        ModelSource::RandomT5 => Vec::new(),
    }
}

impl Stage for TrainStage {
    fn run(&self, ctx: &StageContext<'_>) -> Result<()> {
        let pairs = ctx.inputs.one("dataset")?.file(PAIRS_FILE)?;
        let mut log = ctx.log.try_clone()?;
        let summary = if self.ranks > 1 {
            self.run_ranks(ctx, &pairs)?
        } else {
            let trace = trace_dir();
            let paths = TrainPaths {
                pairs: &pairs,
                work_dir: &ctx.work_dir,
                out_dir: &ctx.out_dir,
                trace: trace.as_deref(),
            };
            let bar = progress::bar(ctx.stage, 0, "steps");
            let mut on_step = |r: &crate::train::checkpoint::StepRecord| {
                bar.set_length(r.total_steps);
                bar.set_position(r.step);
                bar.set_message(format!(
                    "loss {:.4} {:.1} samples/s",
                    r.loss, r.samples_per_s
                ));
            };
            let summary = {
                let _mlx = self.compute.enter()?;
                train(
                    &self.config,
                    &self.model,
                    self.compute.dtype.dtype(),
                    &paths,
                    None,
                    ctx.cancel,
                    &mut log,
                    &mut on_step,
                )
            };
            bar.finish_and_clear();
            Brief::of(&summary?)
        };
        // PEFT finds adapter_model.safetensors + adapter_config.json in a directory.
        let peft = ctx.out_dir.join(PEFT_DIR);
        std::fs::create_dir_all(&peft).context("creating peft/")?;
        for (from, to) in [
            (ADAPTERS, "adapter_model.safetensors"),
            ("lora_config.json", "adapter_config.json"),
        ] {
            std::fs::copy(ctx.out_dir.join(from), peft.join(to))
                .with_context(|| format!("copying {from} to peft/{to}"))?;
        }
        writeln!(
            log,
            "trained {} steps: final loss {:.4}, {:.1} samples/s",
            summary.steps, summary.final_loss, summary.samples_per_s
        )?;
        Ok(())
    }
}

/// What the stage's last log line says of a run.
#[derive(Deserialize)]
struct Brief {
    steps: u64,
    final_loss: f32,
    samples_per_s: f64,
}

impl Brief {
    fn of(s: &TrainSummary) -> Brief {
        Brief {
            steps: s.steps,
            final_loss: s.final_loss,
            samples_per_s: s.samples_per_s,
        }
    }
}

/// What a rank process is given: everything [`train`] takes, resolved.
#[derive(Serialize, Deserialize)]
struct RankJob {
    config: TrainConfig,
    /// An absolute model directory, or `t5-base-random`.
    model: String,
    device: String,
    dtype: super::compute::DtypeParam,
    pairs: PathBuf,
    work_dir: PathBuf,
    out_dir: PathBuf,
}

impl TrainStage {
    /// Trains as `self.ranks` rank processes of this binary (`xtr-pipe rank
    /// train JOB`), rank 0's output in the stage log, the others' in the
    /// working directory; the outputs are rank 0's.
    fn run_ranks(&self, ctx: &StageContext<'_>, pairs: &Path) -> Result<Brief> {
        let device = self.compute.device;
        let model = match &self.model {
            ModelSource::Dir(dir) => std::fs::canonicalize(&dir.root)
                .with_context(|| format!("locating {}", dir.root.display()))?
                .to_string_lossy()
                .into_owned(),
            ModelSource::RandomT5 => self.model.describe(),
        };
        let job = RankJob {
            config: self.config.clone(),
            model,
            device: device.name().to_string(),
            dtype: self.compute.dtype,
            pairs: pairs.to_path_buf(),
            work_dir: ctx.work_dir.clone(),
            out_dir: ctx.out_dir.clone(),
        };
        launch_ranks(
            ctx,
            &RankLaunch {
                kind: KIND.name,
                doing: "training",
                ranks: self.ranks,
                device,
                job: &job,
            },
        )?;
        let train_json = ctx.out_dir.join(TRAIN_JSON);
        let text = std::fs::read_to_string(&train_json).with_context(|| {
            format!(
                "reading {} (rank 0 should have written it)",
                train_json.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", train_json.display()))
    }
}

/// A rank of a data-parallel train stage (the hidden `xtr-pipe rank train
/// JOB`): joins the group its launcher set up and trains its share; rank 0
/// writes the checkpoints and the outputs. Its output is the rank's log.
pub fn run_rank(job: &Path, cancel: &CancelToken) -> Result<()> {
    let job: RankJob = read_job(job)?;
    let model = resolve_in(&job.model, Path::new("/"), &HfCache::from_env())
        .with_context(|| format!("model {}", job.model))?;
    let _mlx = DeviceGuard::acquire(job_device(&job.device))?;
    let group = launch::join()?;
    let ranks = Ranks {
        group: &group,
        time_sync: time_sync(),
    };
    let abort_at = abort_hook(group.rank())?;
    let trace = trace_dir();
    let paths = TrainPaths {
        pairs: &job.pairs,
        work_dir: &job.work_dir,
        out_dir: &job.out_dir,
        trace: trace.as_deref(),
    };
    let mut out = std::io::stdout();
    train(
        &job.config,
        &model,
        job.dtype.dtype(),
        &paths,
        Some(&ranks),
        cancel,
        &mut out,
        &mut |r| {
            if abort_at == Some(r.step) {
                eprintln!(
                    "rank {}: aborting at step {} ({ABORT_ENV})",
                    group.rank(),
                    r.step
                );
                std::process::abort();
            }
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The template documents the defaults (the reference run); they are the code's.
    #[test]
    fn the_template_holds_the_defaults() -> Result<(), ConfigError> {
        let spec = crate::stages::template_spec(&KIND, "")?;
        let params: Params = crate::stages::decode(&spec)?;
        assert_eq!(params.config, TrainConfig::default());
        assert_eq!(params.compute, ComputeParams::default());
        Ok(())
    }

    #[test]
    fn the_grouped_batch_order_enters_keys_only_with_accumulation() {
        let params = |own: &str| {
            let own = format!("model = \"tests/fixtures/tiny_bert\"\ndevice = \"cpu\"\n{own}");
            let spec = crate::stages::template_spec(&KIND, &own).unwrap();
            configure(&spec).map_err(|e| e.render()).unwrap().params
        };
        // One micro-batch per update: the order, and so the key, are as before.
        assert!(params("grad_accum = 1\n").get("batch_order").is_none());
        let grouped = params("grad_accum = 4\n");
        assert_eq!(grouped["batch_order"], "update-grouped");
        assert!(grouped.get("gpus").is_none(), "gpus is not in the key");
    }

    #[test]
    fn bad_values_are_located_errors() {
        let spec = crate::stages::template_spec(&KIND, "batch_size = 1\nlrr = 1\n").unwrap();
        let err = configure(&spec)
            .err()
            .map(|e| e.render())
            .unwrap_or_default();
        assert!(err.contains("unknown key `lrr`"), "{err}");
        assert!(err.contains("did you mean `lr`?"), "{err}");
        let spec = crate::stages::template_spec(&KIND, "batch_size = 1\n").unwrap();
        let err = configure(&spec)
            .err()
            .map(|e| e.render())
            .unwrap_or_default();
        assert!(err.contains("batch_size must be at least 2"), "{err}");
    }
}
