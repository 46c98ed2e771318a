//! Scheduling: resolve every stage's key, decide what to reuse and what to run
//! (and say why), run independent stages in parallel, publish artifacts, record
//! the run. Knows stages only through the `Stage` trait.

pub mod explain;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cancel::CancelToken;
use crate::pipeline::{ConfigError, Pipeline};
use crate::stages::{self, Cancelled, Kind, Stage, StageContext};
use crate::store::{self, ArtifactKey, ArtifactState, Db, Hasher, Manifest, Recipe, Store};

/// How to run a pipeline; none of these enter any key.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Parallel stages (at least 1).
    pub jobs: usize,
    /// Run only these stages (their inputs must already be in the store).
    pub only: Vec<String>,
    /// Rerun this stage and everything downstream, ignoring the cache.
    pub from: Option<String>,
    /// Rerun these stages even if cached.
    pub force: Vec<String>,
    /// Plan only.
    pub dry_run: bool,
    /// Re-hash every file of reused artifacts instead of trusting unchanged stat fields.
    pub verify: bool,
    /// Print progress lines to stderr.
    pub progress: bool,
}

/// What the plan does with a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Run,
    Reuse,
    Skip,
}

/// A stage's final status in a run (the `status` field of `--json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ran,
    Cached,
    Failed,
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ran => "ran",
            Status::Cached => "cached",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        }
    }
}

/// One stage of a plan.
pub struct PlannedStage {
    pub name: String,
    pub kind: &'static Kind,
    pub stage: Box<dyn Stage>,
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
}

/// The plan of a whole pipeline, in topological order of `pipeline.stages` indices.
pub struct Plan {
    pub stages: Vec<PlannedStage>,
    pub order: Vec<usize>,
}

/// Everything a plan needs: the store, its database and the hasher.
pub struct Workspace {
    pub store: Store,
    pub db: Db,
    pub hasher: Hasher,
}

impl Workspace {
    pub fn open(pipeline: &Pipeline) -> Result<Workspace> {
        let store = Store::open(&pipeline.store)?;
        let db = store.open_db()?;
        let hasher = Hasher::new(&db, vec![pipeline.store.clone()])?;
        Ok(Workspace { store, db, hasher })
    }
}

/// Errors that stop a command before anything runs: bad configuration (exit 2) or I/O.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Decode every stage, hash its declared files, compute keys and decide actions.
pub fn plan(pipeline: &Pipeline, ws: &mut Workspace, opts: &RunOptions) -> Result<Plan, PlanError> {
    let mut configured = Vec::with_capacity(pipeline.stages.len());
    for spec in &pipeline.stages {
        configured.push(Some(stages::configure(spec)?));
    }
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
    let mut planned: Vec<Option<PlannedStage>> = (0..pipeline.stages.len()).map(|_| None).collect();
    for &i in &order {
        let spec = &pipeline.stages[i];
        let (kind, stage) = configured[i].take().expect("each stage is configured once");
        let mut files = BTreeMap::new();
        for dep in stage.deps() {
            let path = pipeline.dir.join(&dep);
            if !path.exists() {
                let origin = spec.params.origin_at(&["deps".to_string()]);
                return Err(ConfigError::new(
                    Some(origin),
                    format!(
                        "stage `{}`: dep `{dep}` does not exist ({})",
                        spec.name,
                        path.display()
                    ),
                )
                .into());
            }
            let tree = ws.hasher.tree(&path)?;
            if !ws.db.has_tree(&tree.digest)? {
                ws.db.store_tree(
                    &tree.digest,
                    &serde_json::to_string(&tree.files).context("encoding a tree")?,
                )?;
            }
            files.insert(dep, tree.digest);
        }
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
            params: stage.params(),
            inputs,
            files,
        };
        let key = recipe.key();
        let state = ws.store.check(&key, &mut ws.hasher, opts.verify)?;
        let forced = opts.force.contains(&spec.name) || from_set.contains(&i);
        let mut corrupt = None;
        let manifest = match &state {
            ArtifactState::Valid(m) => Some(m.clone()),
            _ => None,
        };
        let (action, reason) = if !selected.contains(&i) {
            (Action::Skip, "not selected".to_string())
        } else if forced {
            let why = if opts.force.contains(&spec.name) {
                "forced (--force)"
            } else {
                "forced (--from)"
            };
            (Action::Run, why.to_string())
        } else {
            match state {
                ArtifactState::Valid(_) => (Action::Reuse, "up to date".to_string()),
                ArtifactState::Corrupt(why) => {
                    corrupt = Some(why.clone());
                    (Action::Run, format!("artifact corrupt ({why})"))
                }
                ArtifactState::Missing => {
                    (Action::Run, staleness(pipeline, ws, &spec.name, &recipe)?)
                }
            }
        };
        planned[i] = Some(PlannedStage {
            name: spec.name.clone(),
            kind,
            stage,
            recipe,
            key,
            action,
            reason,
            corrupt,
            manifest,
            forced,
        });
    }
    let stages: Vec<PlannedStage> = planned
        .into_iter()
        .map(|p| p.expect("every stage is planned"))
        .collect();
    // A selected stage that runs needs its unselected inputs to exist already.
    for &i in &order {
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
                .with_help(format!("run `{}` first, or add `--only {}`", up.name, up.name))
                .into());
            }
        }
    }
    ws.hasher.flush(&mut ws.db)?;
    Ok(Plan { stages, order })
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

/// Why a stage with no artifact for its key must run, in words.
fn staleness(pipeline: &Pipeline, ws: &Workspace, stage: &str, recipe: &Recipe) -> Result<String> {
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
    let reasons = explain::explain(&before, recipe, &|d| explain::db_listing(&ws.db, d));
    Ok(if reasons.is_empty() {
        "artifact missing from the store".to_string()
    } else {
        reasons.join("; ")
    })
}

/// One stage's outcome, as `run --json` reports it.
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

enum Finished {
    Ran(Box<store::Published>, f64, PathBuf),
    CachedByOther(Box<Manifest>),
    Failed(anyhow::Error, f64, Option<PathBuf>),
}

/// Run the plan: reuse what is valid, run the rest in parallel, publish, record.
pub fn execute(
    pipeline: &Pipeline,
    ws: &mut Workspace,
    mut plan: Plan,
    opts: &RunOptions,
    cancel: &CancelToken,
) -> Result<RunReport> {
    let started = Instant::now();
    let _store_lock = ws.store.lock_shared()?;
    let pipeline_id = pipeline.path.to_string_lossy().into_owned();
    let run_id = ws
        .db
        .begin_run(&pipeline_id, &pipeline.name, store::now_unix())?;
    let n = plan.stages.len();
    let mut results: Vec<Option<StageResult>> = vec![None; n];
    let mut running = 0usize;
    let mut launched = vec![false; n];
    let jobs = opts.jobs.max(1);
    let (tx, rx) = mpsc::channel::<(usize, Finished)>();
    let progress = |line: String| {
        if opts.progress {
            let _ = writeln!(std::io::stderr(), "{line}");
        }
    };

    // Quarantine corrupt artifacts before anything can read them.
    for p in &plan.stages {
        if let (Some(why), Action::Run) = (&p.corrupt, p.action) {
            let to = ws.store.quarantine(&p.key)?;
            progress(format!(
                "  warning  {}: artifact {} corrupt ({why}); moved to {}",
                p.name,
                p.key.short(),
                to.display()
            ));
        }
    }

    std::thread::scope(|scope| -> Result<()> {
        loop {
            // Settle every stage whose fate is known without running it (one transaction).
            ws.db.begin()?;
            for &i in &plan.order {
                if results[i].is_some() || launched[i] {
                    continue;
                }
                let p = &plan.stages[i];
                let needs = pipeline.dag.needs(i);
                let blocked = needs.iter().find(|&&u| {
                    matches!(
                        results[u].as_ref().map(|r| r.status),
                        Some(Status::Failed | Status::Skipped)
                    ) && plan.stages[u].action == Action::Run
                });
                let result = match p.action {
                    Action::Reuse => {
                        Some(finish(ws, p, Status::Cached, 0.0, p.reason.clone(), None))
                    }
                    Action::Skip => {
                        Some(finish(ws, p, Status::Skipped, 0.0, p.reason.clone(), None))
                    }
                    Action::Run if cancel.is_cancelled() => Some(finish(
                        ws,
                        p,
                        Status::Skipped,
                        0.0,
                        "interrupted".into(),
                        None,
                    )),
                    Action::Run => blocked.map(|&u| {
                        let why = format!("needs {}, which did not complete", plan.stages[u].name);
                        finish(ws, p, Status::Skipped, 0.0, why, None)
                    }),
                };
                if let Some(r) = result {
                    if r.status == Status::Cached {
                        progress(format!("  cached   {}", p.name));
                    } else if r.reason != "not selected" {
                        progress(format!("  skipped  {} ({})", p.name, r.reason));
                    }
                    record(ws, run_id, p, &r)?;
                    results[i] = Some(r);
                }
            }
            ws.db.commit()?;
            // Launch what is ready.
            for &i in &plan.order {
                if running >= jobs || cancel.is_cancelled() {
                    break;
                }
                let ready = !launched[i]
                    && results[i].is_none()
                    && plan.stages[i].action == Action::Run
                    && pipeline.dag.needs(i).iter().all(|&u| {
                        matches!(
                            results[u].as_ref().map(|r| r.status),
                            Some(Status::Ran | Status::Cached)
                        ) || (plan.stages[u].action == Action::Skip)
                    });
                if !ready {
                    continue;
                }
                launched[i] = true;
                running += 1;
                let p = &plan.stages[i];
                progress(format!("  running  {} ({})", p.name, p.reason));
                let inputs = pipeline
                    .dag
                    .needs(i)
                    .into_iter()
                    .map(|u| {
                        (
                            plan.stages[u].name.clone(),
                            ws.store.output_dir(&plan.stages[u].key),
                        )
                    })
                    .collect();
                let tx = tx.clone();
                let store = &ws.store;
                let dir = &pipeline.dir;
                let log_name = format!("{run_id}-{}.log", p.name);
                scope.spawn(move || {
                    let outcome = run_one(store, p, inputs, dir, cancel, &log_name, opts.progress);
                    let _ = tx.send((i, outcome));
                });
            }
            if running == 0 {
                break;
            }
            let (i, outcome) = rx.recv().context("a stage thread vanished")?;
            running -= 1;
            let p = &plan.stages[i];
            let r = match outcome {
                Finished::Ran(published, secs, log) => {
                    ws.hasher.remember(published.stamps.clone());
                    progress(format!("  ran      {} ({secs:.2}s)", p.name));
                    let mut r = finish(ws, p, Status::Ran, secs, p.reason.clone(), Some(log));
                    r.metrics = published.manifest.metrics.clone();
                    r
                }
                Finished::CachedByOther(manifest) => {
                    progress(format!(
                        "  cached   {} (computed by a concurrent run)",
                        p.name
                    ));
                    let mut r = finish(
                        ws,
                        p,
                        Status::Cached,
                        0.0,
                        "computed by a concurrent run".into(),
                        None,
                    );
                    r.metrics = manifest.metrics;
                    r
                }
                Finished::Failed(err, secs, log) => {
                    let interrupted = err.is::<Cancelled>();
                    let mut r = finish(
                        ws,
                        p,
                        if interrupted {
                            Status::Skipped
                        } else {
                            Status::Failed
                        },
                        secs,
                        p.reason.clone(),
                        log.clone(),
                    );
                    r.artifact = None;
                    if interrupted {
                        r.reason = "interrupted".into();
                        progress(format!("  stopped  {} (interrupted)", p.name));
                    } else {
                        let text = format!("{err:#}");
                        progress(format!("  FAILED   {} ({secs:.2}s): {text}", p.name));
                        if let Some(log) = &log {
                            progress(log_tail(log));
                        }
                        r.error = Some(text);
                    }
                    r
                }
            };
            record(ws, run_id, p, &r)?;
            results[i] = Some(r);
        }
        Ok(())
    })?;
    drop(tx);
    ws.hasher.flush(&mut ws.db)?;

    let stages: Vec<StageResult> = plan
        .order
        .iter()
        .map(|&i| {
            results[i].take().unwrap_or_else(|| {
                let p = &plan.stages[i];
                finish(ws, p, Status::Skipped, 0.0, "interrupted".into(), None)
            })
        })
        .collect();
    plan.stages.clear();
    let status = if cancel.is_cancelled() {
        "interrupted"
    } else if stages.iter().any(|s| s.status == Status::Failed) {
        "failed"
    } else {
        "ok"
    };
    ws.db.finish_run(run_id, store::now_unix(), status)?;
    Ok(RunReport {
        schema: 1,
        pipeline: pipeline_id,
        name: pipeline.name.clone(),
        run_id,
        status: status.to_string(),
        seconds: started.elapsed().as_secs_f64(),
        stages,
    })
}

fn finish(
    ws: &Workspace,
    p: &PlannedStage,
    status: Status,
    seconds: f64,
    reason: String,
    log: Option<PathBuf>,
) -> StageResult {
    let has_artifact = matches!(status, Status::Ran | Status::Cached);
    let metrics = if status == Status::Cached {
        store::read_manifest(&ws.store.artifact_dir(&p.key))
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
        artifact: has_artifact.then(|| ws.store.output_dir(&p.key)),
        metrics,
        error: None,
        log: log.or_else(|| has_artifact.then(|| ws.store.artifact_dir(&p.key).join("log.txt"))),
    }
}

fn record(ws: &Workspace, run_id: i64, p: &PlannedStage, r: &StageResult) -> Result<()> {
    ws.db.record_stage(
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

/// Compute one stage into the store (runs on a worker thread).
fn run_one(
    store: &Store,
    p: &PlannedStage,
    inputs: BTreeMap<String, PathBuf>,
    dir: &std::path::Path,
    cancel: &CancelToken,
    log_name: &str,
    progress: bool,
) -> Finished {
    let start = Instant::now();
    let lock = match store.lock_key(&p.key, cancel, || {
        if progress {
            eprintln!(
                "  waiting  {}: another run is computing {}",
                p.name,
                p.key.short()
            );
        }
    }) {
        Ok(l) => l,
        Err(e) => {
            return Finished::Failed(
                if cancel.is_cancelled() {
                    Cancelled.into()
                } else {
                    e
                },
                0.0,
                None,
            )
        }
    };
    // Another run may have published this key while we waited.
    if !p.forced && store.artifact_dir(&p.key).exists() {
        let mut hasher = Hasher::without_cache(vec![]);
        if let Ok(ArtifactState::Valid(m)) = store.check(&p.key, &mut hasher, true) {
            return Finished::CachedByOther(m);
        }
    }
    let staging = match store.stage_dir(&p.key, &lock) {
        Ok(s) => s,
        Err(e) => return Finished::Failed(e, 0.0, None),
    };
    let started_unix = store::now_unix();
    let built = (|| -> Result<Manifest> {
        let ctx = StageContext {
            stage: &p.name,
            out_dir: staging.out_dir(),
            inputs,
            pipeline_dir: dir,
            log: staging.log()?,
            cancel,
        };
        p.stage.run(&ctx)?;
        if cancel.is_cancelled() {
            return Err(Cancelled.into());
        }
        Ok(Manifest {
            schema: 1,
            key: p.key.clone(),
            stage: p.name.clone(),
            kind: p.kind.name.to_string(),
            version: p.kind.version,
            started_unix,
            finished_unix: store::now_unix(),
            files: Vec::new(),
            metrics: read_metrics(&staging.out_dir())?,
            recipe: p.recipe.clone(),
        })
    })();
    let outcome = match built {
        Ok(manifest) => match staging.publish(store, manifest) {
            Ok(published) => {
                let log = store.artifact_dir(&p.key).join("log.txt");
                Finished::Ran(Box::new(published), start.elapsed().as_secs_f64(), log)
            }
            // What was left in `.tmp/` is removed by the next attempt at this key.
            Err(e) => Finished::Failed(e, start.elapsed().as_secs_f64(), None),
        },
        Err(e) => {
            let log = staging.abandon(store, log_name);
            Finished::Failed(e, start.elapsed().as_secs_f64(), log)
        }
    };
    drop(lock);
    outcome
}

fn read_metrics(out: &std::path::Path) -> Result<serde_json::Map<String, serde_json::Value>> {
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

fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(20)..];
    let mut out = format!("           log: {}", path.display());
    for line in tail {
        out.push_str("\n           | ");
        out.push_str(line);
    }
    out
}
