//! Built-in stage kinds. A kind is one file: its params (typed, decoded with
//! located errors), the inputs it needs and the files it produces, and `run`.
//! Adding one: write `src/stages/NAME.rs` with a `pub const KIND: Kind`, its
//! template `stages/NAME.toml`, and list it in [`KINDS`].

pub mod cmd;
pub mod compute;
pub mod dataset;
pub mod eval;
pub mod index;
mod inputs;
pub mod merge;
pub mod profile;
pub mod ranks;
pub mod report;
pub mod train;

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cancel::CancelToken;
pub use crate::cancel::Cancelled;
use crate::pipeline::{ConfigError, Node, NodeValue, Origin, StageSpec, Templates};
pub use inputs::{assign_roles, Arity, Input, InputRole, Inputs, UpstreamStage};

/// What a running stage gets from the runner.
pub struct StageContext<'a> {
    pub stage: &'a str,
    /// Write outputs here; it starts empty and becomes the artifact's `out/`.
    pub out_dir: PathBuf,
    /// The needed stages' artifacts, by the role each plays (read-only).
    pub inputs: Inputs,
    /// Relative paths in params resolve against this.
    pub pipeline_dir: &'a Path,
    /// The pipeline's `name`, and where its reports go (`[pipeline] reports`).
    pub pipeline_name: &'a str,
    pub reports_dir: &'a Path,
    /// Survives an interrupted attempt at this key (checkpoints go here, so the
    /// next attempt resumes); removed once the artifact is published.
    pub work_dir: PathBuf,
    /// The stage's log; what it writes here is kept with the artifact.
    pub log: File,
    /// Set on Ctrl-C / SIGTERM: stop promptly and return [`Cancelled`].
    pub cancel: &'a CancelToken,
}

/// A configured stage: what it does once the runner has decided it must run.
pub trait Stage: Send + Sync {
    /// Produce the outputs in `ctx.out_dir`.
    fn run(&self, ctx: &StageContext<'_>) -> anyhow::Result<()>;
}

/// A file or directory whose contents enter a stage's key.
///
/// The key sees its name and its contents' digest, never where it is: the name
/// is the path as written in the pipeline (variables unexpanded, relative to the
/// pipeline file), so two checkouts at different places, or two machines whose
/// `${VAR}`s point at different directories holding the same files, compute the
/// same keys.
#[derive(Debug, Clone)]
pub struct Dep {
    /// How the key (and `status`) names it: the path as written.
    pub name: String,
    /// Where it is on this machine.
    pub path: PathBuf,
    /// Where it is written, for "does not exist" errors.
    pub origin: Origin,
}

impl Dep {
    /// A source root that the `sources[index].path` param resolved to: named as
    /// written, with the part a glob matched filled in.
    pub fn source_root(
        spec: &StageSpec,
        index: usize,
        root: &crate::dataset::sources::Root,
    ) -> Dep {
        let at = ["sources".to_string(), index.to_string(), "path".to_string()];
        Dep {
            name: root.display.clone(),
            path: root.path.clone(),
            origin: spec.params.origin_at(&at).clone(),
        }
    }
}

/// A stage decoded from its table: everything that enters its key, and the stage.
pub struct Configured {
    /// The params as the key sees them: defaults filled in, `device` resolved.
    pub params: serde_json::Value,
    pub deps: Vec<Dep>,
    pub stage: Box<dyn Stage>,
}

impl Configured {
    /// `params` serialised for the key; a value that cannot be (a NaN, a map with
    /// non-string keys) is an error here, never a silent `null` in the key.
    pub fn new(
        spec: &StageSpec,
        params: &impl Serialize,
        stage: impl Stage + 'static,
    ) -> Result<Configured, ConfigError> {
        let params = serde_json::to_value(params).map_err(|e| {
            ConfigError::new(
                Some(&spec.origin),
                format!("stage `{}`: params cannot enter the key: {e}", spec.name),
            )
        })?;
        if params.is_null() {
            return Err(ConfigError::new(
                Some(&spec.origin),
                format!("stage `{}`: params serialise to null", spec.name),
            ));
        }
        Ok(Configured {
            params,
            deps: Vec::new(),
            stage: Box::new(stage),
        })
    }

    pub fn with_deps(mut self, deps: Vec<Dep>) -> Configured {
        self.deps = deps;
        self
    }

    /// Enter the device a compute stage resolved to (not `auto`) into the key.
    pub fn with_compute(mut self, compute: &compute::Compute) -> Configured {
        self.params["device"] = compute.device.name().into();
        self.params["dtype"] = compute.dtype.name().into();
        self
    }
}

/// What a kind's artifact holds: one file or directory under `out/`.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub file: &'static str,
    pub what: &'static str,
}

/// A built-in kind of stage.
#[derive(Debug)]
pub struct Kind {
    pub name: &'static str,
    /// Bumped whenever what the kind computes changes, so old artifacts are not reused.
    pub version: u32,
    pub summary: &'static str,
    /// `stages/<name>.toml`: every param with its default, documented.
    pub template: &'static str,
    /// The inputs it takes, by role; a `needs` entry that fits no role is an error.
    pub inputs: &'static [InputRole],
    /// The files its artifact holds; consumers open them through [`Input::file`].
    pub outputs: &'static [Output],
    pub configure: fn(&StageSpec) -> Result<Configured, ConfigError>,
}

pub static KINDS: &[Kind] = &[
    cmd::KIND,
    dataset::KIND,
    profile::KIND,
    train::KIND,
    merge::KIND,
    index::KIND,
    eval::KIND,
    report::KIND,
];

/// The built-in kinds' templates, for `uses = "<kind>"` without a `stages/` directory.
pub struct BuiltinTemplates;

pub static BUILTIN: BuiltinTemplates = BuiltinTemplates;

impl Templates for BuiltinTemplates {
    fn get(&self, name: &str) -> Option<&'static str> {
        KINDS.iter().find(|k| k.name == name).map(|k| k.template)
    }
    fn names(&self) -> Vec<&'static str> {
        KINDS.iter().map(|k| k.name).collect()
    }
}

/// The kind called `name`.
pub fn kind(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

/// Find the stage's kind and decode its params.
pub fn configure(spec: &StageSpec) -> Result<(&'static Kind, Configured), ConfigError> {
    let Some(kind) = kind(&spec.kind) else {
        return Err(ConfigError::new(
            Some(&spec.origin),
            format!("stage `{}` has unknown kind `{}`", spec.name, spec.kind),
        )
        .suggesting(&spec.kind, KINDS.iter().map(|k| k.name), "known kinds"));
    };
    Ok((kind, (kind.configure)(spec)?))
}

/// The located error for a param whose value is wrong: `stage `s`: `key` must be ...`.
pub fn param_error(
    spec: &StageSpec,
    path: &[&str],
    message: impl std::fmt::Display,
) -> ConfigError {
    let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
    ConfigError::new(
        Some(spec.params.origin_at(&path)),
        format!("stage `{}`: {message}", spec.name),
    )
}

/// The error for a count param written as 0, located where it was written.
pub fn zero_count(spec: &StageSpec, name: &str) -> ConfigError {
    param_error(spec, &[name], format!("`{name}` must be at least 1"))
}

/// Refuses a count param written as 0 (`None`: not written).
pub fn at_least_one(spec: &StageSpec, name: &str, value: Option<usize>) -> Result<(), ConfigError> {
    match value {
        Some(0) => Err(zero_count(spec, name)),
        _ => Ok(()),
    }
}

/// Decode a stage's params into `P`, turning serde's errors into located ones.
/// Unknown keys are refused with a suggestion, also inside `#[serde(flatten)]`
/// parts (which serde cannot combine with `deny_unknown_fields`): every key
/// written must come back when `P` is serialised again, as it does for the key.
pub fn decode<P: DeserializeOwned + Serialize>(spec: &StageSpec) -> Result<P, ConfigError> {
    decode_node(&spec.params, &spec.name)
}

fn decode_node<P: DeserializeOwned + Serialize>(
    params: &Node,
    stage: &str,
) -> Result<P, ConfigError> {
    let decoded: P = serde_path_to_error::deserialize(params.to_toml()).map_err(|err| {
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
        if let Some((field, expected)) = parse_unknown_field(&message) {
            if path.last() != Some(&field) {
                path.push(field);
            }
            let names: Vec<&str> = expected.iter().map(String::as_str).collect();
            return unknown_key(params, stage, &path, &names);
        }
        if path.is_empty() {
            // Inside a `#[serde(flatten)]` part serde keeps no path: find the key.
            if let Some(key) = culprit::<P>(params, &message) {
                path.push(key);
            }
        }
        let text = if path.is_empty() {
            format!("stage `{stage}`: {message}")
        } else {
            format!("stage `{stage}`: `{}`: {message}", path.join("."))
        };
        ConfigError::new(Some(params.origin_at(&path)), text)
    })?;
    let echoed = serde_json::to_value(&decoded).map_err(|e| {
        ConfigError::new(
            Some(&params.origin),
            format!("stage `{stage}`: params cannot enter the key: {e}"),
        )
    })?;
    let mut path = Vec::new();
    if let Some(known) = first_unknown(params, &echoed, &mut path) {
        return Err(unknown_key(params, stage, &path, &known));
    }
    Ok(decoded)
}

/// The first top-level key whose removal changes decoding's error `message`:
/// the key that error is about.
fn culprit<P: DeserializeOwned>(params: &Node, message: &str) -> Option<String> {
    let table = params.as_table()?;
    table.keys().find_map(|key| {
        let mut without = table.clone();
        without.remove(key);
        let node = Node::table(without, params.origin.clone());
        let changed = match toml::Value::try_into::<P>(node.to_toml()) {
            Ok(_) => true,
            Err(e) => e.to_string() != message,
        };
        changed.then(|| key.clone())
    })
}

fn unknown_key(params: &Node, stage: &str, path: &[String], known: &[&str]) -> ConfigError {
    let word = path.last().map_or("", String::as_str);
    ConfigError::new(
        Some(params.origin_at(path)),
        format!("stage `{stage}`: unknown key `{}`", path.join(".")),
    )
    .suggesting(word, known.iter().copied(), "expected one of")
}

/// The first key written in `node` that `echo` (the decoded params, serialised)
/// lacks: its path is left in `path`, and the keys that level does know are returned.
fn first_unknown<'e>(
    node: &Node,
    echo: &'e serde_json::Value,
    path: &mut Vec<String>,
) -> Option<Vec<&'e str>> {
    match (&node.value, echo) {
        (NodeValue::Table(table), serde_json::Value::Object(known)) => {
            for (key, child) in table {
                path.push(key.clone());
                match known.get(key) {
                    None => return Some(known.keys().map(String::as_str).collect()),
                    Some(e) => {
                        if let Some(found) = first_unknown(child, e, path) {
                            return Some(found);
                        }
                    }
                }
                path.pop();
            }
            None
        }
        (NodeValue::Array(items), serde_json::Value::Array(echoed)) => {
            for (i, (item, e)) in items.iter().zip(echoed).enumerate() {
                path.push(i.to_string());
                if let Some(found) = first_unknown(item, e, path) {
                    return Some(found);
                }
                path.pop();
            }
            None
        }
        _ => None,
    }
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

/// A stage spec for `kind`'s template with `own` (TOML) over it, as
/// `uses = "<kind>"` gives: for tests that decode a template's defaults.
#[cfg(test)]
pub(crate) fn template_spec(kind: &Kind, own: &str) -> Result<StageSpec, ConfigError> {
    use crate::pipeline::source::parse_file;
    let mut params = parse_file(Path::new("template.toml"), kind.template.to_string())?;
    let own = parse_file(Path::new("p.toml"), own.to_string())?;
    params.merge(own);
    let mut table = params.as_table().cloned().unwrap_or_default();
    table.remove("kind");
    let params = Node::table(table, params.origin.clone());
    Ok(StageSpec {
        name: kind.name.into(),
        kind: kind.name.into(),
        description: None,
        needs: Vec::new(),
        need_origins: Vec::new(),
        origin: params.origin.clone(),
        params,
        dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::source::parse_file;

    #[derive(Debug, serde::Deserialize, serde::Serialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct P {
        cmd: String,
        #[serde(default)]
        lora: Lora,
    }

    #[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
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

    /// Params with a flattened part (as compute kinds flatten `ComputeParams`).
    #[derive(Debug, serde::Deserialize, serde::Serialize)]
    struct Flat {
        cmd: String,
        #[serde(flatten)]
        compute: crate::stages::compute::ComputeParams,
    }

    #[test]
    fn unknown_keys_are_refused_through_flatten() {
        let decode = |text: &str| {
            let node = parse_file(Path::new("s.toml"), text.to_string()).unwrap();
            decode_node::<Flat>(&node, "prof")
        };
        let flat = decode("cmd = \"x\"\ndevice = \"cpu\"\n").unwrap();
        assert_eq!(
            flat.compute.device,
            crate::stages::compute::DeviceParam::Cpu
        );
        let text = decode("cmd = \"x\"\ndevices = \"cpu\"\n")
            .unwrap_err()
            .render();
        assert!(
            text.starts_with("s.toml:2:1: stage `prof`: unknown key `devices`"),
            "{text}"
        );
        assert!(text.contains("did you mean `device`?"), "{text}");
    }

    #[test]
    fn missing_param_is_reported() {
        let err = decode_text("lora = { r = 1 }\n").unwrap_err().render();
        assert!(err.contains("missing field `cmd`"), "{err}");
    }
}
