//! Scheduling: settle what needs no work (reused, skipped), launch ready stages
//! on worker threads up to `-j`, publish what they produce, and record every
//! outcome. What happens is told to a [`Reporter`]; nothing here prints.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context, Result};

use super::record::{finish, read_metrics, record, RunReport, StageResult};
use super::remote::{self, RemoteCache};
use super::report::{Event, Reporter};
use super::{Action, Plan, PlannedStage, RunOptions, Status, Workspace};
use crate::cancel::{CancelToken, Cancelled};
use crate::pipeline::Pipeline;
use crate::stages::{Input, Inputs, StageContext};
use crate::store::{self, ArtifactState, Db, Hasher, Manifest, Store};

/// How a stage's worker thread ended.
enum Finished {
    Ran(Box<store::Published>, f64, PathBuf),
    CachedByOther(Box<Manifest>),
    /// Downloaded from the remote cache: bytes, seconds.
    Fetched(Box<store::Published>, u64, f64),
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
    let reporter = opts.progress.reporter();
    let _store_lock = ws.store.lock_shared()?;
    let pipeline_id = pipeline.path.to_string_lossy().into_owned();
    let run_id = ws
        .db
        .begin_run(&pipeline_id, &pipeline.name, store::now_unix())?;
    quarantine_corrupt(ws, &plan, reporter)?;
    let mut run = Scheduler {
        pipeline,
        plan: &plan,
        run_id,
        reporter,
        cancel,
        results: vec![None; plan.stages.len()],
        launched: vec![false; plan.stages.len()],
        running: 0,
        jobs: opts.jobs.max(1),
    };
    let (tx, rx) = mpsc::channel::<(usize, Finished)>();
    std::thread::scope(|scope| -> Result<()> {
        loop {
            run.settle(&ws.store, &ws.db)?;
            for i in run.ready() {
                let p = &plan.stages[i];
                reporter.report(&Event::Running {
                    stage: &p.name,
                    reason: &p.reason,
                });
                let inputs = run.inputs(&ws.store, i);
                let (tx, store, remote) = (tx.clone(), &ws.store, ws.remote.as_ref());
                let log_name = format!("{run_id}-{}.log", p.name);
                scope.spawn(move || {
                    let outcome = run_one(
                        store, remote, p, inputs, pipeline, cancel, &log_name, reporter,
                    );
                    let _ = tx.send((i, outcome));
                });
            }
            if run.running == 0 {
                return Ok(());
            }
            let (i, outcome) = rx.recv().context("a stage thread vanished")?;
            run.finished(&ws.store, &ws.db, &mut ws.hasher, i, outcome)?;
        }
    })?;
    ws.hasher.flush(&mut ws.db)?;

    let mut results = std::mem::take(&mut run.results);
    let stages: Vec<StageResult> = plan
        .order
        .iter()
        .map(|&i| {
            results[i].take().unwrap_or_else(|| {
                let p = &plan.stages[i];
                finish(
                    &ws.store,
                    p,
                    Status::Skipped,
                    0.0,
                    "interrupted".into(),
                    None,
                )
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

/// Move corrupt artifacts aside before anything can read them.
fn quarantine_corrupt(ws: &Workspace, plan: &Plan, reporter: &dyn Reporter) -> Result<()> {
    for p in &plan.stages {
        if let (Some(why), Action::Run) = (&p.corrupt, p.action) {
            let to = ws.store.quarantine(&p.key)?;
            reporter.report(&Event::Quarantined {
                stage: &p.name,
                key: p.key.as_str(),
                why,
                to: &to,
            });
        }
    }
    Ok(())
}

/// The state of one run's scheduling.
struct Scheduler<'a> {
    pipeline: &'a Pipeline,
    plan: &'a Plan,
    run_id: i64,
    reporter: &'a dyn Reporter,
    cancel: &'a CancelToken,
    results: Vec<Option<StageResult>>,
    launched: Vec<bool>,
    running: usize,
    jobs: usize,
}

impl Scheduler<'_> {
    fn status(&self, i: usize) -> Option<Status> {
        self.results[i].as_ref().map(|r| r.status)
    }

    /// Settle every stage whose fate is known without running it (one transaction).
    fn settle(&mut self, store: &Store, db: &Db) -> Result<()> {
        db.begin()?;
        for &i in &self.plan.order {
            if self.results[i].is_some() || self.launched[i] {
                continue;
            }
            let p = &self.plan.stages[i];
            let blocked = self.pipeline.dag.needs(i).into_iter().find(|&u| {
                matches!(self.status(u), Some(Status::Failed | Status::Skipped))
                    && self.plan.stages[u].action == Action::Run
            });
            let r = match p.action {
                Action::Reuse => finish(store, p, Status::Cached, 0.0, p.reason.clone(), None),
                Action::Skip => finish(store, p, Status::Skipped, 0.0, p.reason.clone(), None),
                Action::Run if self.cancel.is_cancelled() => {
                    finish(store, p, Status::Skipped, 0.0, "interrupted".into(), None)
                }
                Action::Run => match blocked {
                    Some(u) => {
                        let why =
                            format!("needs {}, which did not complete", self.plan.stages[u].name);
                        finish(store, p, Status::Skipped, 0.0, why, None)
                    }
                    None => continue,
                },
            };
            if r.status == Status::Cached {
                self.reporter.report(&Event::Cached {
                    stage: &p.name,
                    by_other_run: false,
                });
            } else if r.reason != "not selected" {
                self.reporter.report(&Event::Skipped {
                    stage: &p.name,
                    reason: &r.reason,
                });
            }
            record(db, self.run_id, p, &r)?;
            self.results[i] = Some(r);
        }
        db.commit()
    }

    /// Stages to launch now (marked launched), within `-j` and unless cancelled.
    fn ready(&mut self) -> Vec<usize> {
        let mut ready = Vec::new();
        for &i in &self.plan.order {
            if self.running >= self.jobs || self.cancel.is_cancelled() {
                break;
            }
            let inputs_done = self.pipeline.dag.needs(i).iter().all(|&u| {
                matches!(self.status(u), Some(Status::Ran | Status::Cached))
                    || self.plan.stages[u].action == Action::Skip
            });
            if !self.launched[i]
                && self.results[i].is_none()
                && self.plan.stages[i].action == Action::Run
                && inputs_done
            {
                self.launched[i] = true;
                self.running += 1;
                ready.push(i);
            }
        }
        ready
    }

    /// Stage `i`'s inputs: each needed stage's artifact, with the role it plays.
    fn inputs(&self, store: &Store, i: usize) -> Inputs {
        let spec = &self.pipeline.stages[i];
        let p = &self.plan.stages[i];
        Inputs::new(
            spec.needs
                .iter()
                .zip(&p.roles)
                .map(|(&u, &role)| {
                    let up = &self.plan.stages[u];
                    Input {
                        stage: up.name.clone(),
                        role,
                        kind: up.kind,
                        dir: store.output_dir(&up.key),
                    }
                })
                .collect(),
        )
    }

    /// Take in a worker's outcome: report it, record it.
    fn finished(
        &mut self,
        store: &Store,
        db: &Db,
        hasher: &mut Hasher,
        i: usize,
        outcome: Finished,
    ) -> Result<()> {
        self.running -= 1;
        let p = &self.plan.stages[i];
        let r = match outcome {
            Finished::Ran(published, secs, log) => {
                hasher.remember(&published.stamps);
                self.reporter.report(&Event::Ran {
                    stage: &p.name,
                    seconds: secs,
                });
                let mut r = finish(store, p, Status::Ran, secs, p.reason.clone(), Some(log));
                r.metrics = published.manifest.metrics.clone();
                r
            }
            Finished::CachedByOther(manifest) => {
                self.reporter.report(&Event::Cached {
                    stage: &p.name,
                    by_other_run: true,
                });
                let why = "computed by a concurrent run".to_string();
                let mut r = finish(store, p, Status::Cached, 0.0, why, None);
                r.metrics = manifest.metrics;
                r
            }
            Finished::Fetched(published, bytes, secs) => {
                hasher.remember(&published.stamps);
                self.reporter.report(&Event::Fetched {
                    stage: &p.name,
                    key: p.key.as_str(),
                    bytes,
                    seconds: secs,
                });
                let why = "fetched from the remote".to_string();
                let mut r = finish(store, p, Status::Cached, secs, why, None);
                r.metrics = published.manifest.metrics.clone();
                r
            }
            Finished::Failed(err, secs, log) => {
                let interrupted = err.is::<Cancelled>();
                let status = if interrupted {
                    Status::Skipped
                } else {
                    Status::Failed
                };
                let mut r = finish(store, p, status, secs, p.reason.clone(), log.clone());
                r.artifact = None;
                if interrupted {
                    r.reason = "interrupted".into();
                    self.reporter.report(&Event::Stopped { stage: &p.name });
                } else {
                    let text = format!("{err:#}");
                    self.reporter.report(&Event::Failed {
                        stage: &p.name,
                        seconds: secs,
                        error: &text,
                        log: log.as_deref(),
                    });
                    r.error = Some(text);
                }
                r
            }
        };
        record(db, self.run_id, p, &r)?;
        self.results[i] = Some(r);
        Ok(())
    }
}

/// Compute one stage into the store (runs on a worker thread).
// One more than clippy's limit: the remote cache's two hooks need it.
#[allow(clippy::too_many_arguments)]
fn run_one(
    store: &Store,
    remote: Option<&RemoteCache>,
    p: &PlannedStage,
    inputs: Inputs,
    pipeline: &Pipeline,
    cancel: &CancelToken,
    log_name: &str,
    reporter: &dyn Reporter,
) -> Finished {
    let start = Instant::now();
    let lock = match store.lock_key(&p.key, cancel, || {
        reporter.report(&Event::Waiting {
            stage: &p.name,
            key: p.key.as_str(),
        })
    }) {
        Ok(l) => l,
        Err(e) => {
            let e = if cancel.is_cancelled() {
                Cancelled.into()
            } else {
                e
            };
            return Finished::Failed(e, 0.0, None);
        }
    };
    // Another run may have published this key while we waited.
    if !p.forced && store.artifact_dir(&p.key).exists() {
        let mut hasher = Hasher::without_cache(vec![]);
        if let Ok(ArtifactState::Valid(m)) = store.check(&p.key, &mut hasher, true) {
            return Finished::CachedByOther(m);
        }
    }
    // The remote cache: a local miss asks it by key.
    let repair = match remote::fetch_on_miss(remote, store, p, &lock, cancel, reporter) {
        Ok(remote::Miss::Fetched(published, bytes)) => {
            return Finished::Fetched(published, bytes, start.elapsed().as_secs_f64())
        }
        Ok(remote::Miss::Run { repair }) => repair,
        Err(e) => return Finished::Failed(e, 0.0, None),
    };
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
            pipeline_dir: &pipeline.dir,
            pipeline_name: &pipeline.name,
            reports_dir: &pipeline.reports,
            work_dir: store.work_dir(&p.key)?,
            log: staging.log()?,
            cancel,
        };
        p.stage.run(&ctx)?;
        cancel.check()?;
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
    let elapsed = || start.elapsed().as_secs_f64();
    let outcome = match built {
        Ok(manifest) => match staging.publish(store, manifest) {
            Ok(published) => {
                store.drop_work_dir(&p.key);
                let log = store.artifact_dir(&p.key).join("log.txt");
                Finished::Ran(Box::new(published), elapsed(), log)
            }
            // What was left in `.tmp/` is removed by the next attempt at this key.
            Err(e) => Finished::Failed(e, elapsed(), None),
        },
        Err(e) => {
            let log = staging.abandon(store, log_name);
            Finished::Failed(e, elapsed(), log)
        }
    };
    drop(lock);
    // The remote cache: what ran is uploaded (after the lock, which only guards
    // computing).
    if let Finished::Ran(_, secs, log) = &outcome {
        if let Err(e) = remote::upload_after_run(remote, store, p, repair, cancel, reporter) {
            return Finished::Failed(e, *secs, Some(log.clone()));
        }
    }
    outcome
}
