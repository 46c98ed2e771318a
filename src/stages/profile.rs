//! `profile`: where a LoRA train step spends its time, as a pipeline stage. It
//! times the step `train` will run (MaxSim InfoNCE + margin, AdamW, LoRA on q
//! and v) on synthetic token ids, on the stage's `device` and `dtype`, and
//! writes `profile.json` (the `xtr-pipe bench train-step --json` document) and
//! `metrics.json` (samples/s, seconds per step, final loss).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::compute::{self, DeviceGuard, DeviceParam, DtypeParam, Resolved};
use super::{Kind, Stage, StageContext};
use crate::pipeline::{ConfigError, StageSpec};
use crate::train::bench::{run_until, BenchOptions, StepDone, T5_BASE_RANDOM};

pub const KIND: Kind = Kind {
    name: "profile",
    version: 1,
    summary: "time a LoRA train step (samples/s, per-phase split) on the chosen device",
    configure,
};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// A model directory (relative to the pipeline file, or absolute), or
    /// `t5-base-random`.
    pub model: String,
    #[serde(default = "default_batch")]
    pub batch: i32,
    #[serde(default = "default_qlen")]
    pub qlen: i32,
    #[serde(default = "default_dlen")]
    pub dlen: i32,
    #[serde(default = "default_steps")]
    pub steps: usize,
    #[serde(default = "default_warmup")]
    pub warmup: usize,
    /// Dropout inside the encoder at the model's own rate.
    #[serde(default = "yes")]
    pub dropout: bool,
    /// One compiled graph per step (false: eager, which gives the phase split).
    #[serde(default = "yes")]
    pub compile: bool,
    #[serde(default)]
    pub device: DeviceParam,
    #[serde(default)]
    pub dtype: DtypeParam,
}

fn default_batch() -> i32 {
    12
}
fn default_qlen() -> i32 {
    32
}
fn default_dlen() -> i32 {
    128
}
fn default_steps() -> usize {
    10
}
fn default_warmup() -> usize {
    2
}
fn yes() -> bool {
    true
}

struct ProfileStage {
    params: Params,
    /// The model directory, absolute; `None` for `t5-base-random`.
    model_dir: Option<PathBuf>,
    device: Resolved,
}

fn configure(spec: &StageSpec) -> Result<Box<dyn Stage>, ConfigError> {
    configure_with(spec, compute::has_gpu())
}

fn configure_with(spec: &StageSpec, has_gpu: bool) -> Result<Box<dyn Stage>, ConfigError> {
    let params: Params = super::decode(spec)?;
    let at = |key: &str| spec.params.origin_at(&[key.to_string()]).clone();
    let positive = [
        (
            "batch",
            params.batch >= 2,
            "at least 2 (in-batch negatives)",
        ),
        ("qlen", params.qlen >= 1, "at least 1"),
        ("dlen", params.dlen >= 1, "at least 1"),
        ("steps", params.steps >= 1, "at least 1"),
    ];
    for (key, ok, want) in positive {
        if !ok {
            return Err(ConfigError::new(
                Some(&at(key)),
                format!("stage `{}`: `{key}` must be {want}", spec.name),
            ));
        }
    }
    let model_dir = if params.model == T5_BASE_RANDOM {
        None
    } else {
        let dir = spec.dir.join(&params.model);
        if !dir.join("config.json").is_file() {
            return Err(ConfigError::new(
                Some(&at("model")),
                format!(
                    "stage `{}`: model `{}` is not a model directory (no {})",
                    spec.name,
                    params.model,
                    dir.join("config.json").display()
                ),
            )
            .with_help(format!(
                "give an HF-layout directory (config.json, model.safetensors, tokenizer.json) or `{T5_BASE_RANDOM}`"
            )));
        }
        Some(dir)
    };
    let device = compute::resolve_device(spec, params.device, has_gpu)?;
    Ok(Box::new(ProfileStage {
        params,
        model_dir,
        device,
    }))
}

impl Stage for ProfileStage {
    /// The params with `device` resolved (`auto` enters the key as `cpu` or `gpu`).
    fn params(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.params).unwrap_or_default();
        v["device"] = self.device.name().into();
        v
    }

    /// The model directory's files, when it is one.
    fn deps(&self) -> Vec<String> {
        self.model_dir
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect()
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<()> {
        let p = &self.params;
        let mut log = ctx.log.try_clone()?;
        let model = match &self.model_dir {
            Some(d) => d.to_string_lossy().into_owned(),
            None => T5_BASE_RANDOM.to_string(),
        };
        writeln!(
            log,
            "timing {} steps (+{} warm-up) of {model}: batch {}, q {} / d {} tokens, {} {:?}",
            p.steps,
            p.warmup,
            p.batch,
            p.qlen,
            p.dlen,
            self.device.name(),
            p.dtype
        )?;
        let opts = BenchOptions {
            model,
            batch: p.batch,
            qlen: p.qlen,
            dlen: p.dlen,
            steps: p.steps,
            warmup: p.warmup,
            dropout: p.dropout,
            compile: p.compile,
            dtype: p.dtype.dtype(),
        };
        let bar = progress_bar(ctx.stage, (p.warmup + p.steps) as u64);
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
            let _device = DeviceGuard::acquire(self.device)?;
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
            "final_loss": report.final_loss,
        });
        std::fs::write(ctx.out_dir.join("metrics.json"), metrics.to_string())
            .context("writing metrics.json")?;
        writeln!(
            log,
            "{:.2} samples/s ({:.4} s/step, median), loss {:.4}",
            report.samples_per_s, report.step_seconds, report.final_loss
        )?;
        Ok(())
    }
}

/// Steps done, on a terminal only (the first step includes compiling the graph).
fn progress_bar(stage: &str, steps: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(steps);
    let template = format!("  {stage}  [{{bar:30}}] {{pos}}/{{len}} steps {{elapsed}}");
    if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
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
        let cpu = configure_with(&spec(text), false)?.params();
        let gpu = configure_with(&spec(text), true)?.params();
        assert_eq!(cpu["device"], "cpu");
        assert_eq!(gpu["device"], "gpu");
        let explicit = configure_with(
            &spec("model = \"t5-base-random\"\ndevice = \"cpu\"\n"),
            true,
        )?;
        assert_eq!(explicit.params()["device"], "cpu");
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
        assert!(text.contains("is not a model directory"), "{text}");
        let text = err("model = \"t5-base-random\"\ndevices = \"cpu\"\n", false);
        assert!(text.contains("did you mean `device`?"), "{text}");
    }

    #[test]
    fn a_model_directory_enters_the_key_as_a_dep() -> Result<(), ConfigError> {
        let stage = configure_with(&spec("model = \"tests/fixtures/tiny_t5_relu\"\n"), false)?;
        let deps = stage.deps();
        assert_eq!(deps.len(), 1);
        assert!(deps[0].ends_with("tests/fixtures/tiny_t5_relu"), "{deps:?}");
        Ok(())
    }
}
