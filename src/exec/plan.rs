//! Planning: decode every stage, match its inputs to roles, hash its declared
//! files, compute its key and decide — reuse, run or skip — saying why.

use std::collections::{BTreeMap, BTreeSet};

use super::{explain, Action, PlanError, RunOptions, Workspace};
use crate::pipeline::{ConfigError, Pipeline};
use crate::stages::{self, Configured, Kind, Stage, UpstreamStage};
use crate::store::{listing, ArtifactKey, ArtifactState, Manifest, Recipe};

/// One stage of a plan.
pub struct PlannedStage {
    pub name: String,
    pub kind: &'static Kind,
    pub stage: Box<dyn Stage>,
    /// The role each of the stage's needs plays (in `needs` order).
    pub roles: Vec<&'static str>,
    pub recipe: Recipe,
    pub key: ArtifactKey,
    pub action: Action,
    /// Why it runs, or why it is reused/skipped.
    pub reason: String,
    /// Problem found with an existing artifact under this key.
    pub corrupt: Option<String>,
    /// The artifact's manifest, when a valid one exists for this key.
    pub manifest: Option<Box<Manifest>>,
    pub forced: bool,
    /// The remote cache holds this key (set by `RemoteCache::locate`).
    pub on_remote: bool,
}

/// The plan of a whole pipeline, in topological order of `pipeline.stages` indices.
pub struct Plan {
    pub stages: Vec<PlannedStage>,
    pub order: Vec<usize>,
}

/// Decode every stage, hash its declared files, compute keys and decide actions.
pub fn plan(pipeline: &Pipeline, ws: &mut Workspace, opts: &RunOptions) -> Result<Plan, PlanError> {
    let configured = configure_all(pipeline)?;
    for name in opts.only.iter().chain(&opts.force).chain(&opts.from) {
        pipeline.require_stage(name)?;
    }
    let from_set: BTreeSet<usize> = match &opts.from {
        Some(name) => pipeline
            .dag
            .descendants(pipeline.require_stage(name)?)
            .into_iter()
            .collect(),
        None => BTreeSet::new(),
    };
    let selected = selection(pipeline, opts, &from_set);
    let order = pipeline.dag.topological().to_vec();
    let mut configured: Vec<Option<Decoded>> = configured.into_iter().map(Some).collect();
    let mut planned: Vec<Option<PlannedStage>> = (0..pipeline.stages.len()).map(|_| None).collect();
    for &i in &order {
        let spec = &pipeline.stages[i];
        let Decoded {
            kind,
            configured,
            roles,
        } = configured[i].take().expect("each stage is configured once");
        let files = hash_deps(ws, &spec.name, &configured)?;
        let inputs = spec
            .needs
            .iter()
            .map(|&n| {
                let up = planned[n].as_ref().expect("inputs are planned first");
                (up.name.clone(), up.key.clone())
            })
            .collect();
        let recipe = Recipe {
            kind: kind.name.to_string(),
            version: kind.version,
            params: configured.params,
            inputs,
            files,
        };
        let key = recipe.key();
        let state = ws.store.check(&key, &mut ws.hasher, opts.verify)?;
        let forced = opts.force.contains(&spec.name) || from_set.contains(&i);
        let manifest = match &state {
            ArtifactState::Valid(m) => Some(m.clone()),
            _ => None,
        };
        let corrupt = match &state {
            ArtifactState::Corrupt(why) => Some(why.clone()),
            _ => None,
        };
        let (action, reason) = if !selected.contains(&i) {
            (Action::Skip, "not selected".to_string())
        } else if opts.force.contains(&spec.name) {
            (Action::Run, "forced (--force)".to_string())
        } else if forced {
            (Action::Run, "forced (--from)".to_string())
        } else {
            match state {
                ArtifactState::Valid(_) => (Action::Reuse, "up to date".to_string()),
                ArtifactState::Corrupt(why) => (Action::Run, format!("artifact corrupt ({why})")),
                ArtifactState::Missing => {
                    (Action::Run, staleness(pipeline, ws, &spec.name, &recipe)?)
                }
            }
        };
        planned[i] = Some(PlannedStage {
            name: spec.name.clone(),
            kind,
            stage: configured.stage,
            roles,
            recipe,
            key,
            action,
            reason,
            corrupt,
            manifest,
            forced,
            on_remote: false,
        });
    }
    let stages: Vec<PlannedStage> = planned
        .into_iter()
        .map(|p| p.expect("every stage is planned"))
        .collect();
    check_unselected_inputs(pipeline, ws, &stages, &order)?;
    ws.hasher.flush(&mut ws.db)?;
    Ok(Plan { stages, order })
}

/// A stage decoded by its kind, with the role each of its inputs plays.
struct Decoded {
    kind: &'static Kind,
    configured: Configured,
    roles: Vec<&'static str>,
}

/// Every stage decoded: all configuration errors surface here, before any
/// file is hashed.
fn configure_all(pipeline: &Pipeline) -> Result<Vec<Decoded>, ConfigError> {
    let mut configured = Vec::with_capacity(pipeline.stages.len());
    for spec in &pipeline.stages {
        configured.push(stages::configure(spec)?);
    }
    let mut out = Vec::with_capacity(configured.len());
    for (i, (kind, _)) in configured.iter().enumerate() {
        let spec = &pipeline.stages[i];
        let upstream: Vec<UpstreamStage<'_>> = spec
            .needs
            .iter()
            .zip(&spec.need_origins)
            .map(|(&n, origin)| UpstreamStage {
                name: &pipeline.stages[n].name,
                kind: configured[n].0,
                origin,
            })
            .collect();
        let roles = stages::assign_roles(kind, spec, &upstream)?;
        out.push(roles);
    }
    Ok(configured
        .into_iter()
        .zip(out)
        .map(|((kind, configured), roles)| Decoded {
            kind,
            configured,
            roles,
        })
        .collect())
}

/// Hash each declared dep (a missing one is a located error) into `name -> digest`.
fn hash_deps(
    ws: &mut Workspace,
    stage: &str,
    configured: &Configured,
) -> Result<BTreeMap<String, String>, PlanError> {
    let mut files = BTreeMap::new();
    for dep in &configured.deps {
        if !dep.path.exists() {
            return Err(ConfigError::new(
                Some(&dep.origin),
                format!(
                    "stage `{stage}`: dep `{}` does not exist ({})",
                    dep.name,
                    dep.path.display()
                ),
            )
            .into());
        }
        // Walked once per run and shared by every stage that declares it.
        let tree = ws.hasher.tree(&dep.path)?;
        if ws.stored_trees.insert(tree.digest.clone()) {
            listing::store(&ws.db, &tree)?;
        }
        files.insert(dep.name.clone(), tree.digest);
    }
    Ok(files)
}

/// A selected stage that runs needs its unselected inputs to exist already.
fn check_unselected_inputs(
    pipeline: &Pipeline,
    ws: &Workspace,
    stages: &[PlannedStage],
    order: &[usize],
) -> Result<(), ConfigError> {
    for &i in order {
        if stages[i].action != Action::Run {
            continue;
        }
        for n in pipeline.dag.needs(i) {
            let up = &stages[n];
            if up.action == Action::Skip && !ws.store.artifact_dir(&up.key).exists() {
                return Err(ConfigError::new(
                    None,
                    format!(
                        "stage `{}` needs `{}`, which is not selected and has no artifact for its current key",
                        stages[i].name, up.name
                    ),
                )
                .with_help(format!("run `{}` first, or add `--only {}`", up.name, up.name)));
            }
        }
    }
    Ok(())
}

/// The stages a run considers: `--only`'s, else `--from`'s (`from_set`), else all.
fn selection(
    pipeline: &Pipeline,
    opts: &RunOptions,
    from_set: &BTreeSet<usize>,
) -> BTreeSet<usize> {
    if !opts.only.is_empty() {
        opts.only
            .iter()
            .filter_map(|n| pipeline.stage_index(n))
            .collect()
    } else if opts.from.is_some() {
        from_set.clone()
    } else {
        (0..pipeline.stages.len()).collect()
    }
}

/// Why a stage with no artifact for its key must run, in words. How a dep's
/// files changed is worked out once per pair of listings, however many stages
/// declare the dep.
fn staleness(
    pipeline: &Pipeline,
    ws: &mut Workspace,
    stage: &str,
    recipe: &Recipe,
) -> anyhow::Result<String> {
    let pipeline_id = pipeline.path.to_string_lossy();
    let Some(last) = ws.db.last_success(&pipeline_id, stage)? else {
        return Ok("never run".to_string());
    };
    let Some(before) = last
        .recipe
        .as_deref()
        .and_then(|r| serde_json::from_str::<Recipe>(r).ok())
    else {
        return Ok("no record of its last inputs".to_string());
    };
    let Workspace {
        db, tree_changes, ..
    } = ws;
    let reasons = explain::explain(&before, recipe, &mut |a, b| {
        *tree_changes
            .entry((a.to_string(), b.to_string()))
            .or_insert_with(|| listing::changes(db, a, b).ok().flatten())
    });
    Ok(if reasons.is_empty() {
        "artifact missing from the store".to_string()
    } else {
        reasons.join("; ")
    })
}
