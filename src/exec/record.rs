//! Recording: each stage's outcome as the run reports it and as the history
//! database keeps it, and reading the last recorded run back for `show`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Serialize;

use super::{PlannedStage, Status};
use crate::pipeline::Pipeline;
use crate::store::{self, db::RunRecord, ArtifactKey, Db, Store};

/// One stage's outcome, as `run --json` and `show --json` report it.
#[derive(Debug, Clone, Serialize)]
pub struct StageResult {
    pub name: String,
    pub kind: String,
    pub status: Status,
    pub key: String,
    pub seconds: f64,
    pub reason: String,
    /// The artifact's outputs directory, when there is one.
    pub artifact: Option<PathBuf>,
    pub metrics: serde_json::Map<String, serde_json::Value>,
    pub error: Option<String>,
    /// The stage's log (in the artifact, or under `.logs/` when it failed).
    pub log: Option<PathBuf>,
}

/// A finished (or interrupted) run.
#[derive(Debug, Serialize)]
pub struct RunReport {
    pub schema: u32,
    pub pipeline: String,
    pub name: String,
    pub run_id: i64,
    /// `ok`, `failed` or `interrupted`.
    pub status: String,
    pub seconds: f64,
    pub stages: Vec<StageResult>,
}

/// The result of stage `p` ending with `status`; a cached stage's metrics come
/// from its artifact's manifest.
pub(super) fn finish(
    store: &Store,
    p: &PlannedStage,
    status: Status,
    seconds: f64,
    reason: String,
    log: Option<PathBuf>,
) -> StageResult {
    let has_artifact = matches!(status, Status::Ran | Status::Cached);
    let metrics = if status == Status::Cached {
        store::read_manifest(&store.artifact_dir(&p.key))
            .map(|m| m.metrics)
            .unwrap_or_default()
    } else {
        Default::default()
    };
    StageResult {
        name: p.name.clone(),
        kind: p.kind.name.to_string(),
        status,
        key: p.key.to_string(),
        seconds,
        reason,
        artifact: has_artifact.then(|| store.output_dir(&p.key)),
        metrics,
        error: None,
        log: log.or_else(|| has_artifact.then(|| store.artifact_dir(&p.key).join("log.txt"))),
    }
}

/// Keep `r` in the run history (with the recipe, so `status` can explain changes).
pub(super) fn record(db: &Db, run_id: i64, p: &PlannedStage, r: &StageResult) -> Result<()> {
    db.record_stage(
        run_id,
        &store::db::StageRecord {
            stage: r.name.clone(),
            kind: r.kind.clone(),
            key: r.key.clone(),
            status: r.status.as_str().to_string(),
            seconds: r.seconds,
            reason: r.reason.clone(),
            recipe: Some(p.recipe.canonical()),
            metrics: (!r.metrics.is_empty())
                .then(|| serde_json::Value::Object(r.metrics.clone()).to_string()),
            error: r.error.clone(),
        },
    )
}

/// `metrics.json` of a stage's outputs, when it wrote one (it must be an object).
pub(super) fn read_metrics(
    out: &std::path::Path,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let path = out.join("metrics.json");
    if !path.exists() {
        return Ok(Default::default());
    }
    let text = std::fs::read_to_string(&path)?;
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        _ => anyhow::bail!("{} must hold a JSON object", path.display()),
    }
}

/// The last recorded run of `pipeline`, its stages in the pipeline's order.
pub fn last_run(pipeline: &Pipeline) -> Result<Option<(RunRecord, Vec<StageResult>)>> {
    let store = Store::open(&pipeline.store)?;
    let db = store.open_db()?;
    let Some(run) = db.last_run(&pipeline.path.to_string_lossy())? else {
        return Ok(None);
    };
    let order = pipeline.dag.topological();
    // Records are stored in completion order; show them in the pipeline's order.
    let position = |name: &str| {
        pipeline
            .stage_index(name)
            .and_then(|i| order.iter().position(|&j| j == i))
            .unwrap_or(usize::MAX)
    };
    let mut records = db.run_stages(run.id)?;
    records.sort_by_key(|r| position(&r.stage));
    let stages = records
        .into_iter()
        .map(|r| {
            let status = Status::parse(&r.status).unwrap_or(Status::Skipped);
            let key = ArtifactKey::parse(&r.key);
            let has_artifact = matches!(status, Status::Ran | Status::Cached);
            let artifact = key
                .as_ref()
                .filter(|_| has_artifact)
                .map(|k| store.output_dir(k));
            let log = key
                .as_ref()
                .filter(|_| has_artifact)
                .map(|k| store.artifact_dir(k).join("log.txt"));
            let metrics = r
                .metrics
                .as_deref()
                .and_then(|m| serde_json::from_str(m).ok())
                .unwrap_or_default();
            StageResult {
                name: r.stage,
                kind: r.kind,
                status,
                key: r.key,
                seconds: r.seconds,
                reason: r.reason,
                artifact,
                metrics,
                error: r.error,
                log,
            }
        })
        .collect();
    Ok(Some((run, stages)))
}

/// What differs between two recorded runs of one pipeline, stage by stage.
#[derive(Debug, Serialize)]
pub struct RunDiff {
    pub a: i64,
    pub b: i64,
    pub stages: Vec<StageDiff>,
}

#[derive(Debug, Serialize)]
pub struct StageDiff {
    pub stage: String,
    /// Whether the two runs resolved it to different artifacts.
    pub key_changed: bool,
    /// `path a -> b` for each param that differs.
    pub params: Vec<String>,
    /// Metrics whose values differ: name, a, b.
    pub metrics: Vec<(String, serde_json::Value, serde_json::Value)>,
}

/// Compare runs `a` and `b` of `pipeline` (default: the two newest).
pub fn diff_runs(pipeline: &Pipeline, a: Option<i64>, b: Option<i64>) -> Result<RunDiff> {
    let store = Store::open_existing(&pipeline.store)?;
    let db = store.open_db()?;
    let ids = db.run_ids(&pipeline.path.to_string_lossy())?;
    let (a, b) = match (a, b) {
        (Some(a), Some(b)) => (a, b),
        (Some(a), None) => (a, *ids.first().context("no recorded run")?),
        _ => match ids.as_slice() {
            [newest, previous, ..] => (*previous, *newest),
            _ => anyhow::bail!(
                "{} has fewer than two recorded runs; name them: `xtr-pipe diff P.toml A B`",
                pipeline.path.display()
            ),
        },
    };
    for id in [a, b] {
        if !ids.contains(&id) {
            anyhow::bail!("no run {id} of {} (runs: {ids:?})", pipeline.path.display());
        }
    }
    let (ra, rb) = (db.run_stages(a)?, db.run_stages(b)?);
    let parse = |text: &Option<String>| -> serde_json::Value {
        text.as_deref()
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_default()
    };
    let mut stages = Vec::new();
    for sb in &rb {
        let Some(sa) = ra.iter().find(|s| s.stage == sb.stage) else {
            continue;
        };
        let (pa, pb) = (parse(&sa.recipe), parse(&sb.recipe));
        let params = super::explain::param_changes(&pa["params"], &pb["params"]);
        let (ma, mb) = (parse(&sa.metrics), parse(&sb.metrics));
        let mut metrics = Vec::new();
        let names: std::collections::BTreeSet<&String> = ma
            .as_object()
            .into_iter()
            .chain(mb.as_object())
            .flat_map(|m| m.keys())
            .collect();
        for name in names {
            if ma[name] != mb[name] {
                metrics.push((name.clone(), ma[name].clone(), mb[name].clone()));
            }
        }
        if sa.key != sb.key || !params.is_empty() || !metrics.is_empty() {
            stages.push(StageDiff {
                stage: sb.stage.clone(),
                key_changed: sa.key != sb.key,
                params,
                metrics,
            });
        }
    }
    Ok(RunDiff { a, b, stages })
}
