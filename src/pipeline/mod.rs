//! Pipeline files: the TOML schema, stage templates (`uses`), `--set` overrides,
//! validation and the DAG. Knows nothing of how stages compute; every value keeps
//! its origin so that errors name `file:line:col`.

pub mod dag;
pub mod source;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use dag::Dag;
use source::parse_file;
pub use source::{ConfigError, Node, NodeValue, Origin};

/// The artifact store of a pipeline that names none, relative to its file.
pub const DEFAULT_STORE: &str = "artifacts";

/// Keys every stage table may hold besides its kind's params.
pub const STAGE_KEYS: &[&str] = &["kind", "uses", "needs", "description"];
const TOP_KEYS: &[&str] = &["pipeline", "stage"];
const PIPELINE_KEYS: &[&str] = &[
    "name",
    "store",
    "reports",
    "description",
    "remote",
    "remote_required",
];

/// Where `uses = "<name>"` finds a template that no `stages/` directory holds: the
/// built-in kinds' own (the runner passes `stages::BUILTIN`), so this module never
/// lists kinds itself.
pub trait Templates {
    /// The template's TOML text.
    fn get(&self, name: &str) -> Option<&'static str>;
    /// Every name `get` knows, for "did you mean".
    fn names(&self) -> Vec<&'static str>;
}

/// No built-in templates: only files on disk.
pub struct NoTemplates;

impl Templates for NoTemplates {
    fn get(&self, _: &str) -> Option<&'static str> {
        None
    }
    fn names(&self) -> Vec<&'static str> {
        Vec::new()
    }
}

/// A parsed, validated pipeline.
#[derive(Debug)]
pub struct Pipeline {
    pub name: String,
    pub description: Option<String>,
    /// The pipeline file, absolute.
    pub path: PathBuf,
    /// The directory relative paths resolve against.
    pub dir: PathBuf,
    pub store: PathBuf,
    pub reports: PathBuf,
    pub stages: Vec<StageSpec>,
    pub dag: Dag,
    /// `[pipeline] remote`: a shared artifact cache (`s3://bucket/prefix`), as
    /// written; `store::remote` parses it, errors point at its origin.
    pub remote: Option<RemoteSetting>,
    /// `[pipeline] remote_required`: a remote that cannot be reached fails the run.
    pub remote_required: bool,
}

/// A remote URL with where it was written.
#[derive(Debug, Clone)]
pub struct RemoteSetting {
    pub url: String,
    pub origin: Origin,
}

/// One stage as written (after template merge and overrides), before its kind decodes it.
#[derive(Debug)]
pub struct StageSpec {
    pub name: String,
    pub kind: String,
    pub description: Option<String>,
    /// Indices of needed stages.
    pub needs: Vec<usize>,
    /// Where each of `needs` is written (same order), for errors about an input.
    pub need_origins: Vec<Origin>,
    /// Kind-specific params: the stage table without the common keys.
    pub params: Node,
    /// Where the stage's table starts.
    pub origin: Origin,
    /// The pipeline file's directory: relative paths in params resolve against it.
    pub dir: PathBuf,
}

/// A `--set STAGE.PATH=VALUE` override.
#[derive(Debug, Clone)]
pub struct Override {
    pub stage: String,
    pub path: Vec<String>,
    pub value: toml::Value,
    pub flag: String,
}

impl Override {
    /// Parse `stage.a.b=value`; the value is TOML (`1e-4`, `true`, `[1, 2]`,
    /// `"s"`) and falls back to a plain string when it is not valid TOML.
    pub fn parse(flag: &str) -> Result<Override, ConfigError> {
        let origin = Origin::CommandLine(flag.to_string());
        let (lhs, raw) = flag.split_once('=').ok_or_else(|| {
            ConfigError::new(Some(&origin), "expected STAGE.PARAM=VALUE")
                .with_help("for example: --set train.lr=1e-4")
        })?;
        let mut path: Vec<String> = lhs.trim().split('.').map(str::to_string).collect();
        if path.len() < 2 || path.iter().any(String::is_empty) {
            return Err(ConfigError::new(
                Some(&origin),
                format!("`{lhs}` is not STAGE.PARAM (a dotted path that starts with a stage name)"),
            ));
        }
        let stage = path.remove(0);
        let raw = raw.trim();
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_string()));
        Ok(Override {
            stage,
            path,
            value,
            flag: flag.to_string(),
        })
    }
}

impl Pipeline {
    /// Read, merge templates (files, else `templates`), apply overrides, validate
    /// names, needs and the DAG.
    pub fn load(
        path: &Path,
        overrides: &[Override],
        templates: &dyn Templates,
    ) -> Result<Pipeline, ConfigError> {
        let path = std::path::absolute(path).map_err(|e| {
            ConfigError::new(None, format!("cannot resolve {}: {e}", path.display()))
        })?;
        let text = std::fs::read_to_string(&path).map_err(|e| {
            ConfigError::new(
                None,
                format!("cannot read pipeline {}: {e}", path.display()),
            )
        })?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let root = parse_file(&path, text)?;
        let top = root
            .as_table()
            .ok_or_else(|| ConfigError::new(None, "empty pipeline"))?;
        check_keys(top, TOP_KEYS, "at the top level")?;

        let header = top.get("pipeline").ok_or_else(|| {
            ConfigError::new(Some(&root.origin), "missing the [pipeline] table")
                .with_help("add:\n[pipeline]\nname = \"my-pipeline\"")
        })?;
        let header_table = expect_table(header, "[pipeline]")?;
        check_keys(header_table, PIPELINE_KEYS, "in [pipeline]")?;
        let name = required_str(header_table, "name", header)?.to_string();
        let description = optional_str(header_table, "description")?.map(str::to_string);
        let store =
            normalize(&dir.join(optional_str(header_table, "store")?.unwrap_or(DEFAULT_STORE)));
        let reports =
            normalize(&dir.join(optional_str(header_table, "reports")?.unwrap_or("reports")));
        let (remote, remote_required) = remote_setting(header_table)?;

        let empty = BTreeMap::new();
        let stage_tables = match top.get("stage") {
            Some(node) => expect_table(node, "[stage]")?,
            None => &empty,
        };
        if stage_tables.is_empty() {
            return Err(ConfigError::new(Some(&root.origin), "the pipeline has no stages")
                .with_help("add a stage:\n[stage.hello]\nkind = \"cmd\"\ncmd = \"echo hello > $XTR_OUT/hello.txt\""));
        }
        let names: Vec<&str> = stage_tables.keys().map(String::as_str).collect();
        let mut raw_stages = Vec::with_capacity(names.len());
        for (name, node) in stage_tables {
            raw_stages.push(RawStage::build(name, node, &dir, templates)?);
        }
        for o in overrides {
            let stage = raw_stages
                .iter_mut()
                .find(|s| s.name == o.stage)
                .ok_or_else(|| {
                    ConfigError::new(
                        Some(&Origin::CommandLine(o.flag.clone())),
                        format!("no stage named `{}`", o.stage),
                    )
                    .suggesting(&o.stage, names.iter().copied(), "stages")
                })?;
            stage.apply(o)?;
        }

        let index: BTreeMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let mut stages = Vec::with_capacity(raw_stages.len());
        for raw in raw_stages {
            let mut needs = Vec::new();
            let mut need_origins = Vec::new();
            for need in &raw.needs {
                let Some(&i) = need.as_str().and_then(|n| index.get(n)) else {
                    let wanted = need.as_str().unwrap_or_default();
                    return Err(ConfigError::new(
                        Some(&need.origin),
                        format!(
                            "stage `{}` needs `{wanted}`, but no stage has that name",
                            raw.name
                        ),
                    )
                    .suggesting(wanted, names.iter().copied(), "stages"));
                };
                if !needs.contains(&i) {
                    needs.push(i);
                    need_origins.push(need.origin.clone());
                }
            }
            stages.push(StageSpec {
                name: raw.name,
                kind: raw.kind,
                description: raw.description,
                needs,
                need_origins,
                params: raw.params,
                origin: raw.origin,
                dir: dir.clone(),
            });
        }
        let all_needs: Vec<Vec<usize>> = stages.iter().map(|s| s.needs.clone()).collect();
        let dag = Dag::new(&all_needs).map_err(|dag::Cycle(path)| {
            let first = &stages[path[0]];
            let names: Vec<&str> = path.iter().map(|&i| stages[i].name.as_str()).collect();
            ConfigError::new(
                Some(&first.origin),
                format!("dependency cycle: {}", names.join(" -> ")),
            )
            .with_help("remove one of these `needs` entries")
        })?;
        Ok(Pipeline {
            name,
            description,
            path,
            dir,
            store,
            reports,
            stages,
            dag,
            remote,
            remote_required,
        })
    }

    /// The names of the stages stage `i` needs, as its `needs` lists them.
    pub fn need_names(&self, i: usize) -> Vec<&str> {
        self.stages[i]
            .needs
            .iter()
            .map(|&n| self.stages[n].name.as_str())
            .collect()
    }

    pub fn stage_index(&self, name: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.name == name)
    }

    /// Resolve a stage name given on the command line, with a suggestion if unknown.
    pub fn require_stage(&self, name: &str) -> Result<usize, ConfigError> {
        self.stage_index(name).ok_or_else(|| {
            ConfigError::new(
                None,
                format!("no stage named `{name}` in {}", self.path.display()),
            )
            .suggesting(name, self.stages.iter().map(|s| s.name.as_str()), "")
        })
    }
}

/// A stage table after template merge, before `needs` are resolved.
struct RawStage {
    name: String,
    kind: String,
    description: Option<String>,
    needs: Vec<Node>,
    params: Node,
    origin: Origin,
}

impl RawStage {
    fn build(
        name: &str,
        node: &Node,
        dir: &Path,
        templates: &dyn Templates,
    ) -> Result<RawStage, ConfigError> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ConfigError::new(
                Some(&node.origin),
                format!("stage name `{name}` may only hold letters, digits, `_` and `-`"),
            ));
        }
        let table = expect_table(node, &format!("[stage.{name}]"))?;
        let mut params = match table.get("uses") {
            Some(uses) => load_template(uses, dir, templates)?,
            None => Node::table(BTreeMap::new(), node.origin.clone()),
        };
        let own: BTreeMap<String, Node> = table
            .iter()
            .filter(|(k, _)| k.as_str() != "uses")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        params.merge(Node::table(own, node.origin.clone()));
        let NodeValue::Table(mut entries) = params.value else {
            unreachable!("a merge of two tables is a table")
        };
        let kind_node = entries.remove("kind").ok_or_else(|| {
            ConfigError::new(Some(&node.origin), format!("stage `{name}` has no `kind`"))
                .with_help("add `kind = \"cmd\"` (or `uses = \"<template>\"` that sets one)")
        })?;
        let kind = kind_node
            .as_str()
            .ok_or_else(|| type_error(&kind_node, "kind", "a string"))?
            .to_string();
        let description = match entries.remove("description") {
            Some(d) => Some(
                d.as_str()
                    .ok_or_else(|| type_error(&d, "description", "a string"))?
                    .to_string(),
            ),
            None => None,
        };
        let needs = match entries.remove("needs") {
            None => Vec::new(),
            Some(n) => match n.value {
                NodeValue::Array(items) if items.iter().all(|i| i.as_str().is_some()) => items,
                _ => return Err(type_error(&n, "needs", "an array of stage names")),
            },
        };
        Ok(RawStage {
            name: name.to_string(),
            kind,
            description,
            needs,
            params: Node::table(entries, node.origin.clone()),
            origin: node.origin.clone(),
        })
    }

    fn apply(&mut self, o: &Override) -> Result<(), ConfigError> {
        let origin = Origin::CommandLine(o.flag.clone());
        if STAGE_KEYS.contains(&o.path[0].as_str()) {
            return Err(ConfigError::new(
                Some(&origin),
                format!("`{}` is not a param; --set changes params only", o.path[0]),
            )
            .with_help("edit the pipeline file to change a stage's kind, template or needs"));
        }
        let mut value = Node::from_toml(&o.value, &origin);
        for key in o.path.iter().rev() {
            value = Node::table(BTreeMap::from([(key.clone(), value)]), origin.clone());
        }
        self.params.merge(value);
        Ok(())
    }
}

/// `uses = "stages/x.toml"` (relative to the pipeline) or `uses = "<kind>"`
/// (`stages/<kind>.toml` in the pipeline's directory or any parent, else built in).
fn load_template(uses: &Node, dir: &Path, templates: &dyn Templates) -> Result<Node, ConfigError> {
    let spec = uses
        .as_str()
        .ok_or_else(|| type_error(uses, "uses", "a string"))?;
    let is_name = !spec.contains('/') && !spec.ends_with(".toml");
    let path = if is_name {
        dir.ancestors()
            .map(|d| d.join("stages").join(format!("{spec}.toml")))
            .find(|p| p.is_file())
    } else {
        Some(dir.join(spec))
    };
    let (path, text) = match path {
        Some(p) => match std::fs::read_to_string(&p) {
            Ok(text) => (p, text),
            Err(e) => {
                return Err(ConfigError::new(
                    Some(&uses.origin),
                    format!("cannot read template {}: {e}", p.display()),
                ))
            }
        },
        None => match templates.get(spec) {
            Some(text) => (
                PathBuf::from(format!("<built-in stages/{spec}.toml>")),
                text.to_string(),
            ),
            None => {
                return Err(ConfigError::new(
                    Some(&uses.origin),
                    format!("no template `{spec}`: no stages/{spec}.toml next to the pipeline or above it"),
                )
                .suggesting(spec, templates.names(), "built-in templates"));
            }
        },
    };
    let node = parse_file(&path, text)?;
    let table = node
        .as_table()
        .ok_or_else(|| ConfigError::new(Some(&node.origin), "template is not a table"))?;
    for key in ["uses", "needs"] {
        if let Some(bad) = table.get(key) {
            return Err(ConfigError::new(
                Some(&bad.origin),
                format!("a template may not set `{key}`; set it in the pipeline's stage table"),
            ));
        }
    }
    Ok(node)
}

/// `a/b/../c` -> `a/c`, lexically (paths shown to users and recorded in history).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn check_keys(
    table: &BTreeMap<String, Node>,
    allowed: &[&str],
    context: &str,
) -> Result<(), ConfigError> {
    for (key, node) in table {
        if !allowed.contains(&key.as_str()) {
            return Err(ConfigError::new(
                Some(&node.origin),
                format!("unknown key `{key}` {context}"),
            )
            .suggesting(key, allowed.iter().copied(), "expected one of"));
        }
    }
    Ok(())
}

fn expect_table<'a>(node: &'a Node, what: &str) -> Result<&'a BTreeMap<String, Node>, ConfigError> {
    node.as_table().ok_or_else(|| {
        ConfigError::new(
            Some(&node.origin),
            format!("{what} must be a table, found {}", node.type_name()),
        )
    })
}

fn type_error(node: &Node, key: &str, expected: &str) -> ConfigError {
    ConfigError::new(
        Some(&node.origin),
        format!("`{key}` must be {expected}, found {}", node.type_name()),
    )
}

fn required_str<'a>(
    table: &'a BTreeMap<String, Node>,
    key: &str,
    parent: &Node,
) -> Result<&'a str, ConfigError> {
    match table.get(key) {
        Some(node) => node
            .as_str()
            .ok_or_else(|| type_error(node, key, "a string")),
        None => Err(ConfigError::new(
            Some(&parent.origin),
            format!("missing `{key}`"),
        )),
    }
}

fn optional_str<'a>(
    table: &'a BTreeMap<String, Node>,
    key: &str,
) -> Result<Option<&'a str>, ConfigError> {
    table
        .get(key)
        .map(|node| {
            node.as_str()
                .ok_or_else(|| type_error(node, key, "a string"))
        })
        .transpose()
}

/// `remote` and `remote_required` from the `[pipeline]` table.
fn remote_setting(
    table: &BTreeMap<String, Node>,
) -> Result<(Option<RemoteSetting>, bool), ConfigError> {
    let remote = table.get("remote").map(|node| {
        node.as_str()
            .map(|url| RemoteSetting {
                url: url.to_string(),
                origin: node.origin.clone(),
            })
            .ok_or_else(|| type_error(node, "remote", "a string (s3://bucket/prefix)"))
    });
    let required = match table.get("remote_required") {
        None => false,
        Some(node) => match &node.value {
            NodeValue::Scalar(toml::Value::Boolean(b)) => *b,
            _ => return Err(type_error(node, "remote_required", "true or false")),
        },
    };
    Ok((remote.transpose()?, required))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn store_paths_are_normalised() {
        assert_eq!(
            normalize(Path::new("/a/b/../c/./d")),
            PathBuf::from("/a/c/d")
        );
        assert_eq!(normalize(Path::new("../x")), PathBuf::from("../x"));
    }

    #[test]
    fn set_values_parse_as_toml_or_string() {
        let o = Override::parse("train.lr=1e-4").unwrap();
        assert_eq!(
            (o.stage.as_str(), o.path.clone()),
            ("train", vec!["lr".to_string()])
        );
        assert_eq!(o.value.as_float(), Some(1e-4));
        let o = Override::parse("a.msg=hello world").unwrap();
        assert_eq!(o.value.as_str(), Some("hello world"));
        let o = Override::parse("a.lora.r=[1, 2]").unwrap();
        assert_eq!(o.path, vec!["lora".to_string(), "r".to_string()]);
        assert!(o.value.is_array());
        assert!(Override::parse("nodot=1").is_err());
        assert!(Override::parse("a.b").is_err());
    }

    #[test]
    fn template_defaults_sit_under_stage_params() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "stages/t.toml",
            "kind = \"cmd\"\ncmd = \"echo t\"\nparams = { a = 1, b = 2 }\n",
        );
        let p = write(
            dir.path(),
            "p.toml",
            "[pipeline]\nname = \"x\"\n[stage.s]\nuses = \"t\"\nparams = { b = 3 }\n",
        );
        let pipeline = Pipeline::load(
            &p,
            &[Override::parse("s.params.c=4").unwrap()],
            &NoTemplates,
        )
        .unwrap();
        let params = pipeline.stages[0].params.to_toml();
        assert_eq!(pipeline.stages[0].kind, "cmd");
        assert_eq!(params["cmd"].as_str(), Some("echo t"));
        assert_eq!(params["params"]["a"].as_integer(), Some(1));
        assert_eq!(params["params"]["b"].as_integer(), Some(3));
        assert_eq!(params["params"]["c"].as_integer(), Some(4));
    }

    #[test]
    fn errors_name_the_place() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("[pipeline]\nname = \"x\"\n[stage.a]\nkind = \"cmd\"\nneeds = [\"b\"]\n", "p.toml:5:10", "no stage has that name"),
            ("[pipeline]\nname = \"x\"\nstorr = \"a\"\n[stage.a]\nkind = \"cmd\"\n", "p.toml:3:1", "did you mean `store`?"),
            ("[pipeline]\nname = \"x\"\n[stage.a]\nneeds = [\"b\"]\nkind = \"cmd\"\n[stage.b]\nneeds = [\"a\"]\nkind = \"cmd\"\n", "dependency cycle: a -> b -> a", ""),
            ("[pipeline]\nname = 3\n[stage.a]\nkind = \"cmd\"\n", "p.toml:2:1", "must be a string"),
            ("[pipeline]\nname = \"x\"\n[stage.a]\nuses = \"nope\"\n", "p.toml:4:1", "no template `nope`"),
            ("[pipeline]\nname = \"x\"\n[stage.\"a.b\"]\nkind = \"cmd\"\n", "p.toml:3:", "may only hold"),
        ];
        for (text, place, what) in cases {
            let p = write(dir.path(), "p.toml", text);
            let err = Pipeline::load(&p, &[], &NoTemplates).unwrap_err().render();
            assert!(
                err.contains(place) && err.contains(what),
                "expected {place} / {what} in:\n{err}"
            );
        }
    }

    #[test]
    fn unknown_stage_in_set_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "p.toml",
            "[pipeline]\nname = \"x\"\n[stage.train]\nkind = \"cmd\"\n",
        );
        let err = Pipeline::load(&p, &[Override::parse("trian.lr=1").unwrap()], &NoTemplates)
            .unwrap_err();
        assert!(
            err.render().contains("did you mean `train`?"),
            "{}",
            err.render()
        );
        let err = Pipeline::load(
            &p,
            &[Override::parse("train.kind=x").unwrap()],
            &NoTemplates,
        )
        .unwrap_err();
        assert!(err.render().contains("params only"), "{}", err.render());
    }
}
