//! `profile`: where a LoRA train step spends its time, as a pipeline stage. It
//! times the step `train` will run (MaxSim InfoNCE + margin, AdamW, LoRA on q
//! and v) on synthetic token ids, on the stage's `device` and `dtype`, and
//! writes `profile.json` (the `xtr-pipe bench train-step --json` document:
//! with `compile = false`, the share of each phase of the step; always the
//! step's FLOPs, the GEMM peak measured on the stage's device and dtype, and
//! the MFU) and `metrics.json` (samples/s, seconds per step, MFU, final loss).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::compute::{has_gpu, Compute, ComputeParams};
use super::{param_error, Configured, Kind, Output, Stage, StageContext};
use crate::model::resolve::ModelSource;
use crate::pipeline::{ConfigError, StageSpec};
use crate::progress;
use crate::train::bench::{run_until, BenchOptions, StepDone, StepShape, T5_BASE_RANDOM};

pub const KIND: Kind = Kind {
    name: "profile",
    version: 2,
    summary: "time a LoRA train step (samples/s, MFU, per-phase split) on the chosen device",
    template: include_str!("../../stages/profile.toml"),
    inputs: &[],
    outputs: &[
        Output {
            file: "profile.json",
            what: "the `bench train-step --json` document",
        },
        Output {
            file: "metrics.json",
            what: "samples_per_s, step_seconds, mfu, final_loss",
        },
    ],
    configure,
};

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Params {
    /// A model directory (relative to the pipeline file, or absolute), or
    /// `t5-base-random`.
    pub model: String,
    #[serde(flatten)]
    pub shape: StepShape,
    #[serde(flatten)]
    pub compute: ComputeParams,
}

struct ProfileStage {
    params: Params,
    /// The model directory, absolute; `None` for `t5-base-random`.
    model_dir: Option<PathBuf>,
    compute: Compute,
}

fn configure(spec: &StageSpec) -> Result<Configured, ConfigError> {
    configure_with(spec, has_gpu())
}

fn configure_with(spec: &StageSpec, has_gpu: bool) -> Result<Configured, ConfigError> {
    let params: Params = super::decode(spec)?;
    let compute = Compute::configure_with(spec, &params.compute, has_gpu)?;
    build(spec, params, compute)
}

fn build(
    spec: &StageSpec,
    mut params: Params,
    compute: Compute,
) -> Result<Configured, ConfigError> {
    let shape = &params.shape;
    let positive = [
        ("batch", shape.batch >= 2, "at least 2 (in-batch negatives)"),
        ("qlen", shape.qlen >= 1, "at least 1"),
        ("dlen", shape.dlen >= 1, "at least 1"),
        ("steps", shape.steps >= 1, "at least 1"),
    ];
    for (key, ok, want) in positive {
        if !ok {
            return Err(param_error(spec, &[key], format!("`{key}` must be {want}")));
        }
    }
    let model = super::train::resolve_model(spec, &params.model)?;
    let deps = super::train::model_deps(spec, &params.model, &model);
    let model_dir = match model {
        ModelSource::Dir(dir) => Some(dir.root),
        ModelSource::RandomT5 => None,
    };
    // The key holds what runs: dropout resolved for this model.
    params.shape.dropout = Some(params.shape.dropout_for(&params.model));
    let stage = ProfileStage {
        params: params.clone(),
        model_dir,
        compute,
    };
    Ok(Configured::new(spec, &params, stage)?
        .with_deps(deps)
        .with_compute(&compute))
}

impl Stage for ProfileStage {
    fn run(&self, ctx: &StageContext<'_>) -> Result<()> {
        let p = &self.params;
        let mut log = ctx.log.try_clone()?;
        let model = match &self.model_dir {
            Some(d) => d.to_string_lossy().into_owned(),
            None => T5_BASE_RANDOM.to_string(),
        };
        let opts = BenchOptions::new(model, &p.shape, self.compute.dtype.dtype());
        writeln!(
            log,
            "timing {} steps (+{} warm-up) of {}: batch {}, q {} / d {} tokens, {} {}",
            opts.steps,
            opts.warmup,
            opts.model,
            opts.batch,
            opts.qlen,
            opts.dlen,
            self.compute.device.name(),
            self.compute.dtype.name()
        )?;
        let bar = progress::bar(ctx.stage, (opts.warmup + opts.steps) as u64, "steps");
        let mut step_log = log.try_clone()?;
        let mut on_step = |s: StepDone| {
            bar.inc(1);
            // The log is best effort here; the report below is what the stage promises.
            let _ = writeln!(
                step_log,
                "{} step {}: {:.4} s, loss {:.4}",
                if s.warmup { "warm-up" } else { "timed" },
                s.index + 1,
                s.seconds,
                s.loss
            );
        };
        let report = {
            let _mlx = self.compute.enter()?;
            run_until(&opts, ctx.cancel, &mut on_step)
        };
        bar.finish_and_clear();
        let report = report?;
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(ctx.out_dir.join("profile.json"), json + "\n")
            .context("writing profile.json")?;
        let metrics = serde_json::json!({
            "samples_per_s": report.samples_per_s,
            "step_seconds": report.step_seconds,
            "mfu": report.mfu,
            "final_loss": report.final_loss,
        });
        std::fs::write(ctx.out_dir.join("metrics.json"), metrics.to_string())
            .context("writing metrics.json")?;
        writeln!(
            log,
            "{:.2} samples/s ({:.4} s/step, median), MFU {:.2}% of a {:.1} GFLOP/s GEMM, loss {:.4}",
            report.samples_per_s,
            report.step_seconds,
            100.0 * report.mfu,
            report.gemm_peak_flops / 1e9,
            report.final_loss
        )?;
        if !report.compiled {
            for line in crate::train::bench::phase_table(&report.phases) {
                writeln!(log, "{line}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::source::parse_file;
    use std::path::Path;

    fn spec(params: &str) -> StageSpec {
        let node = parse_file(Path::new("p.toml"), params.to_string()).expect("valid TOML");
        StageSpec {
            name: "prof".into(),
            kind: "profile".into(),
            description: None,
            needs: Vec::new(),
            need_origins: Vec::new(),
            origin: node.origin_at(&[]).clone(),
            params: node,
            dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        }
    }

    fn err(params: &str, has_gpu: bool) -> String {
        match configure_with(&spec(params), has_gpu) {
            Ok(_) => panic!("{params:?} was accepted"),
            Err(e) => e.render(),
        }
    }

    #[test]
    fn gpu_without_a_gpu_is_a_located_error() {
        let text = err("model = \"t5-base-random\"\ndevice = \"gpu\"\n", false);
        assert!(
            text.starts_with(
                "p.toml:2:1: stage `prof`: device = \"gpu\", but this MLX build has no GPU"
            ),
            "{text}"
        );
        assert!(text.contains("set device = \"cpu\" or \"auto\""), "{text}");
    }

    #[test]
    fn auto_enters_the_key_as_the_device_it_resolves_to() -> Result<(), ConfigError> {
        let text = "model = \"t5-base-random\"\n";
        let cpu = configure_with(&spec(text), false)?.params;
        let gpu = configure_with(&spec(text), true)?.params;
        assert_eq!(cpu["device"], "cpu");
        assert_eq!(gpu["device"], "gpu");
        let explicit = configure_with(
            &spec("model = \"t5-base-random\"\ndevice = \"cpu\"\n"),
            true,
        )?;
        assert_eq!(explicit.params["device"], "cpu");
        assert_eq!(cpu["dtype"], "f32");
        assert_eq!(cpu["batch"], 12);
        Ok(())
    }

    #[test]
    fn bad_params_are_located_errors() {
        let text = err("model = \"t5-base-random\"\ndevice = \"tpu\"\n", false);
        assert!(text.starts_with("p.toml:2:"), "{text}");
        assert!(text.contains("unknown variant `tpu`"), "{text}");
        let text = err("model = \"t5-base-random\"\ndtype = \"fp8\"\n", false);
        assert!(text.contains("unknown variant `fp8`"), "{text}");
        let text = err("model = \"t5-base-random\"\nbatch = 1\n", false);
        assert!(text.contains("`batch` must be at least 2"), "{text}");
        let text = err("model = \"no/such/model\"\n", false);
        assert!(text.contains("model \"no/such/model\" not found"), "{text}");
        let text = err("model = \"t5-base-random\"\ndevices = \"cpu\"\n", false);
        assert!(text.contains("did you mean `device`?"), "{text}");
    }

    /// The template documents the defaults; they are the code's, not a copy.
    #[test]
    fn the_template_holds_the_defaults() -> Result<(), ConfigError> {
        let spec = crate::stages::template_spec(&KIND, "model = \"t5-base-random\"\n")?;
        let params: Params = crate::stages::decode(&spec)?;
        assert_eq!(params.shape, StepShape::default());
        assert_eq!(params.compute, ComputeParams::default());
        Ok(())
    }

    #[test]
    fn a_model_directory_enters_the_key_as_a_dep() -> Result<(), ConfigError> {
        let stage = configure_with(&spec("model = \"tests/fixtures/tiny_t5_relu\"\n"), false)?;
        let deps = stage.deps;
        assert_eq!(deps.len(), 1);
        assert!(
            deps[0].name.ends_with("tests/fixtures/tiny_t5_relu"),
            "{deps:?}"
        );
        Ok(())
    }
}
