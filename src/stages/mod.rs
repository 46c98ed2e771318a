//! Built-in stage kinds behind one small trait. A kind decodes its params from the
//! pipeline (typed, with located errors), names what enters its key, and runs.

pub mod cmd;
pub mod compute;
pub mod dataset;
pub mod profile;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::cancel::CancelToken;
use crate::pipeline::source::suggest;
use crate::pipeline::{ConfigError, Node, StageSpec};

/// What a running stage gets from the runner.
pub struct StageContext<'a> {
    pub stage: &'a str,
    /// Write outputs here; it starts empty and becomes the artifact's `out/`.
    pub out_dir: PathBuf,
    /// Needed stage name -> its output directory (read-only by convention).
    pub inputs: BTreeMap<String, PathBuf>,
    /// Relative paths in params resolve against this.
    pub pipeline_dir: &'a Path,
    /// The stage's log; what it writes here is kept with the artifact.
    pub log: File,
    /// Set on Ctrl-C / SIGTERM: stop promptly and return [`Cancelled`].
    pub cancel: &'a CancelToken,
}

/// A configured stage: params decoded and validated.
pub trait Stage: Send + Sync {
    /// The params that enter the artifact key, with defaults filled in.
    fn params(&self) -> serde_json::Value;
    /// Files or directories (as written, relative to the pipeline) whose contents enter the key.
    fn deps(&self) -> Vec<String>;
    /// Produce the outputs in `ctx.out_dir`.
    fn run(&self, ctx: &StageContext<'_>) -> anyhow::Result<()>;
}

/// A built-in kind of stage.
pub struct Kind {
    pub name: &'static str,
    /// Bumped whenever what the kind computes changes, so old artifacts are not reused.
    pub version: u32,
    pub summary: &'static str,
    configure: fn(&StageSpec) -> Result<Box<dyn Stage>, ConfigError>,
}

pub static KINDS: &[Kind] = &[cmd::KIND, dataset::KIND, profile::KIND];

pub use crate::cancel::Cancelled;

/// Find the stage's kind and decode its params.
pub fn configure(spec: &StageSpec) -> Result<(&'static Kind, Box<dyn Stage>), ConfigError> {
    let Some(kind) = KINDS.iter().find(|k| k.name == spec.kind) else {
        let err = ConfigError::new(
            Some(&spec.origin),
            format!("stage `{}` has unknown kind `{}`", spec.name, spec.kind),
        );
        let names: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
        return Err(match suggest(&spec.kind, names.iter().copied()) {
            Some(s) => err.with_help(format!("did you mean `{s}`?")),
            None => err.with_help(format!("known kinds: {}", names.join(", "))),
        });
    };
    Ok((kind, (kind.configure)(spec)?))
}

/// Decode a stage's params into `P` (which should `deny_unknown_fields`), turning
/// serde's errors into located ones: unknown keys get a suggestion.
pub fn decode<P: DeserializeOwned>(spec: &StageSpec) -> Result<P, ConfigError> {
    decode_node(&spec.params, &spec.name)
}

fn decode_node<P: DeserializeOwned>(params: &Node, stage: &str) -> Result<P, ConfigError> {
    serde_path_to_error::deserialize(params.to_toml()).map_err(|err| {
        let mut path: Vec<String> = err
            .path()
            .iter()
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                _ => None,
            })
            .collect();
        let message = err.inner().to_string();
        let mut help = None;
        let text = if let Some((field, expected)) = parse_unknown_field(&message) {
            if path.last() != Some(&field) {
                path.push(field.clone());
            }
            let names: Vec<&str> = expected.iter().map(String::as_str).collect();
            help = Some(match suggest(&field, names.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("expected one of: {}", names.join(", ")),
            });
            format!("stage `{stage}`: unknown key `{}`", path.join("."))
        } else if path.is_empty() {
            format!("stage `{stage}`: {message}")
        } else {
            format!("stage `{stage}`: `{}`: {message}", path.join("."))
        };
        let err = ConfigError::new(Some(params.origin_at(&path)), text);
        match help {
            Some(h) => err.with_help(h),
            None => err,
        }
    })
}

/// serde's wording: "unknown field `x`, expected one of `a`, `b`" (or "expected `a`").
fn parse_unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((field.to_string(), expected))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::source::parse_file;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct P {
        cmd: String,
        #[serde(default)]
        lora: Lora,
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Lora {
        r: u32,
    }

    fn decode_text(text: &str) -> Result<P, ConfigError> {
        let node = parse_file(Path::new("s.toml"), text.to_string()).unwrap();
        decode_node(&node, "train")
    }

    #[test]
    fn unknown_nested_key_is_located_with_a_suggestion() {
        let err = decode_text("cmd = \"x\"\nlora = { r = 1, rr = 2 }\n").unwrap_err();
        let text = err.render();
        assert!(
            text.starts_with("s.toml:2:17: stage `train`: unknown key `lora.rr`"),
            "{text}"
        );
        assert!(text.contains("did you mean `r`?"), "{text}");
    }

    #[test]
    fn wrong_type_names_the_param() {
        let err = decode_text("cmd = 3\n").unwrap_err().render();
        assert!(
            err.starts_with("s.toml:1:1: stage `train`: `cmd`: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn missing_param_is_reported() {
        let err = decode_text("lora = { r = 1 }\n").unwrap_err().render();
        assert!(err.contains("missing field `cmd`"), "{err}");
    }
}
