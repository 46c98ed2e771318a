//! Inputs by role. A kind declares what it takes (`one dataset`, `one model`,
//! `any number of anything`); before anything runs, each `needs` entry is matched
//! to a role, so a wrong or missing input is a located configuration error. A
//! running stage opens an input's files through the producing kind's declared
//! outputs, never through a file name it guessed.

use std::path::PathBuf;

use anyhow::{bail, Result};

use super::Kind;
use crate::pipeline::{ConfigError, Origin, StageSpec};

/// How many inputs may play a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arity {
    One,
    Optional,
    Many,
}

/// One role a kind's inputs can play.
#[derive(Debug, Clone, Copy)]
pub struct InputRole {
    pub role: &'static str,
    /// The kinds that can play it; empty means any kind.
    pub kinds: &'static [&'static str],
    pub arity: Arity,
}

impl InputRole {
    fn accepts(&self, kind: &str) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&kind)
    }

    /// "a dataset input (a stage of kind dataset)".
    fn describe(&self) -> String {
        if self.kinds.is_empty() {
            format!("a {} input", self.role)
        } else {
            format!(
                "a {} input (a stage of kind {})",
                self.role,
                self.kinds.join(" or ")
            )
        }
    }
}

/// A stage that another needs, as role matching sees it.
pub struct UpstreamStage<'a> {
    pub name: &'a str,
    pub kind: &'static Kind,
    /// Where the `needs` entry naming it is written.
    pub origin: &'a Origin,
}

/// The role each of `spec`'s needs plays (in the order of `upstream`, which
/// lists them as `spec.needs` does), or a located error.
pub fn assign_roles(
    kind: &Kind,
    spec: &StageSpec,
    upstream: &[UpstreamStage<'_>],
) -> Result<Vec<&'static str>, ConfigError> {
    let mut roles = Vec::with_capacity(upstream.len());
    let mut taken: Vec<(&'static str, &str)> = Vec::new();
    for up in upstream {
        let Some(role) = kind.inputs.iter().find(|r| r.accepts(up.kind.name)) else {
            let wanted = if kind.inputs.is_empty() {
                "no inputs".to_string()
            } else {
                kind.inputs
                    .iter()
                    .map(InputRole::describe)
                    .collect::<Vec<_>>()
                    .join(" or ")
            };
            let verb = if kind.inputs.is_empty() {
                "takes"
            } else {
                "needs"
            };
            return Err(ConfigError::new(
                Some(up.origin),
                format!(
                    "stage `{}`: {} {verb} {wanted}; stage `{}` is of kind {}",
                    spec.name, kind.name, up.name, up.kind.name
                ),
            )
            .with_help(format!("remove `{}` from `needs`", up.name)));
        };
        if role.arity != Arity::Many {
            if let Some((_, first)) = taken.iter().find(|(r, _)| *r == role.role) {
                return Err(ConfigError::new(
                    Some(up.origin),
                    format!(
                        "stage `{}`: {} takes one {} input, but `{first}` and `{}` both are one",
                        spec.name, kind.name, role.role, up.name
                    ),
                )
                .with_help("keep one of them in `needs`"));
            }
        }
        taken.push((role.role, up.name));
        roles.push(role.role);
    }
    for role in kind.inputs.iter().filter(|r| r.arity == Arity::One) {
        if !roles.contains(&role.role) {
            let origin = spec.params.origin_at(&[]).clone();
            let at = spec.need_origins.first().unwrap_or(&origin);
            return Err(ConfigError::new(
                Some(at),
                format!(
                    "stage `{}`: {} needs {}, and none of its `needs` is one",
                    spec.name,
                    kind.name,
                    role.describe()
                ),
            )
            .with_help(format!(
                "add the stage that produces it to `needs = [..]`{}",
                match role.kinds {
                    [only] => format!(" (a stage with kind = \"{only}\")"),
                    _ => String::new(),
                }
            )));
        }
    }
    Ok(roles)
}

/// One needed stage's artifact, as a running stage sees it.
#[derive(Debug, Clone)]
pub struct Input {
    /// The needed stage's name.
    pub stage: String,
    pub role: &'static str,
    pub kind: &'static Kind,
    /// Its artifact's output directory.
    pub dir: PathBuf,
}

impl Input {
    /// The path of `file`, one of the outputs the producing kind declares; an
    /// undeclared or absent file is an error naming both stages.
    pub fn file(&self, file: &str) -> Result<PathBuf> {
        if !self.kind.outputs.iter().any(|o| o.file == file) {
            bail!(
                "input `{}` is a {} artifact, which declares no output `{file}`",
                self.stage,
                self.kind.name
            );
        }
        let path = self.dir.join(file);
        if !path.exists() {
            bail!(
                "input `{}` has no {file} ({} is missing): its artifact is incomplete; \
                 rerun it with --force {}",
                self.stage,
                path.display(),
                self.stage
            );
        }
        Ok(path)
    }
}

/// A running stage's inputs.
#[derive(Debug, Clone, Default)]
pub struct Inputs(Vec<Input>);

impl Inputs {
    pub fn new(inputs: Vec<Input>) -> Inputs {
        Inputs(inputs)
    }

    pub fn all(&self) -> &[Input] {
        &self.0
    }

    /// The input playing `role` (planning made sure a required role is filled).
    pub fn one(&self, role: &str) -> Result<&Input> {
        match self.optional(role) {
            Some(input) => Ok(input),
            None => bail!("no `{role}` input"),
        }
    }

    pub fn optional(&self, role: &str) -> Option<&Input> {
        self.0.iter().find(|i| i.role == role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::source::parse_file;
    use crate::stages::{Configured, Output};
    use std::path::Path;

    fn never(_: &StageSpec) -> Result<Configured, ConfigError> {
        Err(ConfigError::new(None, "not configured in these tests"))
    }

    const SOURCE: Kind = Kind {
        name: "dataset",
        version: 1,
        summary: "",
        template: "",
        inputs: &[],
        outputs: &[Output {
            file: "pairs.parquet",
            what: "pairs",
        }],
        configure: never,
    };
    const OTHER: Kind = Kind {
        name: "cmd",
        version: 1,
        summary: "",
        template: "",
        inputs: &[],
        outputs: &[],
        configure: never,
    };
    const TRAIN: Kind = Kind {
        name: "train",
        version: 1,
        summary: "",
        template: "",
        inputs: &[InputRole {
            role: "dataset",
            kinds: &["dataset"],
            arity: Arity::One,
        }],
        outputs: &[],
        configure: never,
    };

    /// `[stage.t]` needing `needs` (names of stages `a`, `b`, `c` on later lines).
    fn spec_and_origins(needs: &[&str]) -> (StageSpec, Vec<Origin>) {
        let list: Vec<String> = needs.iter().map(|n| format!("\"{n}\"")).collect();
        let text = format!("lr = 1\nneeds = [{}]\n", list.join(", "));
        let node = parse_file(Path::new("p.toml"), text).expect("valid TOML");
        let origins: Vec<Origin> = (0..needs.len())
            .map(|i| {
                node.origin_at(&["needs".to_string(), i.to_string()])
                    .clone()
            })
            .collect();
        let spec = StageSpec {
            name: "t".into(),
            kind: "train".into(),
            description: None,
            needs: (0..needs.len()).collect(),
            need_origins: origins.clone(),
            origin: node.origin.clone(),
            params: node,
            dir: PathBuf::from("."),
        };
        (spec, origins)
    }

    fn assign(needs: &[(&'static str, &'static Kind)]) -> Result<Vec<&'static str>, String> {
        let names: Vec<&str> = needs.iter().map(|(n, _)| *n).collect();
        let (spec, origins) = spec_and_origins(&names);
        let upstream: Vec<UpstreamStage<'_>> = needs
            .iter()
            .zip(&origins)
            .map(|((name, kind), origin)| UpstreamStage { name, kind, origin })
            .collect();
        assign_roles(&TRAIN, &spec, &upstream).map_err(|e| e.render())
    }

    #[test]
    fn a_fitting_input_gets_its_role() {
        assert_eq!(assign(&[("pairs", &SOURCE)]), Ok(vec!["dataset"]));
    }

    #[test]
    fn a_wrong_input_kind_is_refused_where_it_is_named() {
        let err = assign(&[("pairs", &SOURCE), ("x", &OTHER)]).unwrap_err();
        assert!(
            err.starts_with(
                "p.toml:2:19: stage `t`: train needs a dataset input (a stage of kind dataset); \
                 stage `x` is of kind cmd"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_missing_required_input_is_refused() {
        let err = assign(&[]).unwrap_err();
        assert!(
            err.contains(
                "stage `t`: train needs a dataset input (a stage of kind dataset), and none"
            ),
            "{err}"
        );
        assert!(err.contains("kind = \"dataset\""), "{err}");
    }

    #[test]
    fn two_inputs_for_one_role_are_refused() {
        let err = assign(&[("a", &SOURCE), ("b", &SOURCE)]).unwrap_err();
        assert!(err.starts_with("p.toml:2:15:"), "{err}");
        assert!(
            err.contains("takes one dataset input, but `a` and `b`"),
            "{err}"
        );
    }

    #[test]
    fn files_are_opened_through_the_producers_declaration() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pairs.parquet"), b"x").unwrap();
        let input = Input {
            stage: "pairs".into(),
            role: "dataset",
            kind: &SOURCE,
            dir: dir.path().to_path_buf(),
        };
        assert_eq!(
            input.file("pairs.parquet").unwrap(),
            dir.path().join("pairs.parquet")
        );
        let err = input.file("guess.parquet").unwrap_err().to_string();
        assert!(err.contains("declares no output `guess.parquet`"), "{err}");
        let inputs = Inputs::new(vec![input]);
        assert_eq!(inputs.one("dataset").unwrap().stage, "pairs");
        assert!(inputs.one("model").is_err());
    }
}
