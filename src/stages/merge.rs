//! `merge`: fold a `train` artifact's LoRA adapters into the base model it
//! trained (`W + (alpha/r)·B·A`) and write the result as an HF-layout model
//! directory that `transformers`, `sentence-transformers` and every
//! `--model` flag here load. The glue around [`crate::model::merge::merge`].

use std::io::Write;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::compute::{Compute, Resolved};
use super::train::{ADAPTERS, TRAIN_JSON};
use super::{Arity, Configured, InputRole, Kind, Output, Stage, StageContext};
use crate::model::merge::merge;
use crate::model::ModelDir;
use crate::pipeline::{ConfigError, StageSpec};

pub const KIND: Kind = Kind {
    name: "merge",
    version: 1,
    summary: "fold a train stage's LoRA adapters into its base model (HF layout, safetensors)",
    template: include_str!("../../stages/merge.toml"),
    inputs: &[InputRole {
        role: "adapters",
        kinds: &["train"],
        arity: Arity::One,
    }],
    outputs: &[
        Output {
            file: MODEL_DIR,
            what: "the merged model: config.json, model.safetensors, tokenizer, sentence-transformers modules",
        },
        Output {
            file: "merge.json",
            what: "which tensors received an adapter update, r, alpha, the files written",
        },
    ],
    configure,
};

/// The merged model's directory inside a merge artifact.
pub const MODEL_DIR: &str = "model";

/// No params: the adapters and the base are the input's.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Params {}

struct MergeStage;

fn configure(spec: &StageSpec) -> Result<Configured, ConfigError> {
    let params: Params = super::decode(spec)?;
    Configured::new(spec, &params, MergeStage)
}

/// The base model a train artifact adapted: its `model` param as written,
/// resolved on this machine (keys do not depend on where a model is, so the
/// artifact may have been trained from a copy elsewhere), else the directory
/// the training recorded.
fn base_model(summary: &serde_json::Value, pipeline_dir: &std::path::Path) -> Result<ModelDir> {
    if let Some(written) = summary["config"]["model"].as_str() {
        if let Ok(expanded) = crate::dataset::sources::expand_vars(written) {
            let cache = crate::model::resolve::HfCache::from_env();
            if let Ok(crate::model::resolve::ModelSource::Dir(dir)) =
                crate::model::resolve::resolve_in(&expanded, pipeline_dir, &cache)
            {
                return Ok(dir);
            }
        }
    }
    let recorded = summary["model"]
        .as_str()
        .context("it names no base model (`model`)")?;
    ModelDir::open(recorded).with_context(|| format!("opening `{recorded}`"))
}

impl Stage for MergeStage {
    fn run(&self, ctx: &StageContext<'_>) -> Result<()> {
        let input = ctx.inputs.one("adapters")?;
        let adapters = input.file(ADAPTERS)?;
        let summary_path = input.file(TRAIN_JSON)?;
        let summary: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&summary_path)
                .with_context(|| format!("reading {}", summary_path.display()))?,
        )
        .with_context(|| format!("{} is not JSON", summary_path.display()))?;
        let base = base_model(&summary, ctx.pipeline_dir).with_context(|| {
            format!(
                "the base model that `{}` trained (named in {}; a random model cannot be merged)",
                input.stage,
                summary_path.display()
            )
        })?;
        let mut log = ctx.log.try_clone()?;
        writeln!(
            log,
            "merging {} into {}",
            adapters.display(),
            base.root.display()
        )?;
        let merged = {
            let _mlx = Compute {
                device: Resolved::Cpu,
                dtype: Default::default(),
            }
            .enter()?;
            merge(&base, &adapters, &ctx.out_dir.join(MODEL_DIR))?
        };
        writeln!(
            log,
            "folded {} adapted tensors (r {}, alpha {})",
            merged.fused.len(),
            merged.r,
            merged.alpha
        )?;
        std::fs::write(
            ctx.out_dir.join("merge.json"),
            serde_json::to_string_pretty(&merged)? + "\n",
        )
        .context("writing merge.json")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A train artifact made where the model was elsewhere: the base is found by
    /// the `model` param as written, on this machine.
    #[test]
    fn the_base_model_is_resolved_as_written_before_the_recorded_path() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let summary = serde_json::json!({
            "config": {"model": "tiny_bert"},
            "model": "/elsewhere/on/another/machine/tiny_bert",
        });
        let base = base_model(&summary, &fixtures).unwrap();
        assert_eq!(base.root, fixtures.join("tiny_bert"));
        // Written relative to a pipeline elsewhere: the recorded directory.
        let summary = serde_json::json!({
            "config": {"model": "no/such/model_dir"},
            "model": fixtures.join("tiny_bert").to_string_lossy(),
        });
        assert_eq!(
            base_model(&summary, &fixtures).unwrap().root,
            fixtures.join("tiny_bert")
        );
        let summary = serde_json::json!({"config": {"model": "no/such/model_dir"}});
        assert!(base_model(&summary, &fixtures).is_err());
    }
}
