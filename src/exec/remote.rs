//! The shared artifact cache in a run, and `push`/`pull`: which missing
//! artifacts the remote holds, fetching one on a local miss, uploading after a
//! stage runs. A remote that fails is a warning and the run goes on locally,
//! unless the pipeline says `remote_required = true`.

use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use serde::Serialize;

use super::report::{Event, Reporter};
use super::{Action, Plan, PlanError, PlannedStage, Workspace};
use crate::cancel::{CancelToken, Cancelled};
use crate::pipeline::{ConfigError, Origin, Pipeline};
use crate::store::remote::{Remote, RemoteError};
use crate::store::{ArtifactKey, ArtifactState, Hasher, KeyLock, Published, Store};

/// Which remote a command uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RemoteChoice {
    /// The pipeline's `[pipeline] remote`, if any.
    #[default]
    Pipeline,
    /// `--remote URL`.
    Url(String),
    /// `--no-remote`.
    Off,
}

/// A connected remote and whether the run may go on without it.
#[derive(Debug)]
pub struct RemoteCache {
    pub remote: Remote,
    pub required: bool,
}

impl RemoteCache {
    /// Connect as `choice` says. A malformed URL is a configuration error (exit
    /// 2); missing credentials or endpoint settings are a warning and no remote,
    /// unless `remote_required` or `need` (a command that only talks to it).
    pub fn connect(
        pipeline: Option<&Pipeline>,
        choice: &RemoteChoice,
        need: bool,
        reporter: &dyn Reporter,
    ) -> Result<Option<RemoteCache>, PlanError> {
        let required = pipeline.is_some_and(|p| p.remote_required);
        let (url, origin) = match (choice, pipeline.and_then(|p| p.remote.as_ref())) {
            (RemoteChoice::Off, _) | (RemoteChoice::Pipeline, None) => return Ok(None),
            (RemoteChoice::Url(url), _) => {
                (url.clone(), Origin::CommandLine(format!("--remote {url}")))
            }
            (RemoteChoice::Pipeline, Some(setting)) => {
                (setting.url.clone(), setting.origin.clone())
            }
        };
        if let Err(why) = crate::store::remote::RemoteUrl::parse(&url) {
            return Err(ConfigError::new(Some(&origin), why)
                .with_help("a remote is written s3://bucket/prefix; the endpoint and credentials come from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... or an AWS profile")
                .into());
        }
        match Remote::connect(&url) {
            Ok(remote) => Ok(Some(RemoteCache { remote, required })),
            Err(why) if required || need => Err(ConfigError::new(Some(&origin), why)
                .with_help("set the AWS environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION) or a profile; `run --no-remote` goes on without the remote")
                .into()),
            Err(why) => {
                reporter.report(&Event::RemoteWarning {
                    stage: None,
                    message: &format!("{why}; running without the remote"),
                });
                Ok(None)
            }
        }
    }

    /// Mark the stages the plan would run whose artifact the remote holds (and
    /// say so in their reason). A remote that does not answer is a warning.
    pub fn locate(&self, plan: &mut Plan, reporter: &dyn Reporter) -> Result<(), PlanError> {
        let wanted: Vec<usize> = (0..plan.stages.len())
            .filter(|&i| {
                let p = &plan.stages[i];
                p.action == Action::Run && !p.forced && p.manifest.is_none()
            })
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let keys: Vec<ArtifactKey> = wanted.iter().map(|&i| plan.stages[i].key.clone()).collect();
        match self.remote.contains(&keys) {
            Ok(found) => {
                for (&i, there) in wanted.iter().zip(found) {
                    let p = &mut plan.stages[i];
                    if there {
                        p.on_remote = true;
                        p.reason = format!("on the remote; here: {}", p.reason);
                    }
                }
                Ok(())
            }
            Err(e) => self.degrade(None, e, reporter).map_err(PlanError::Other),
        }
    }

    /// A remote failure: an error when the remote is required (or the run was
    /// cancelled), else a warning.
    fn degrade(&self, stage: Option<&str>, e: RemoteError, reporter: &dyn Reporter) -> Result<()> {
        // Said once: after the first failure the run stops asking.
        let said = matches!(e, RemoteError::Down(_));
        let text = match e {
            RemoteError::Local(e) if e.is::<Cancelled>() => return Err(e),
            RemoteError::Local(e) => format!("{e:#}"),
            other => other.to_string(),
        };
        if self.required {
            return Err(anyhow!(
                "{text} (the pipeline says remote_required = true; run with --no-remote to go on without it)"
            ));
        }
        if !said {
            reporter.report(&Event::RemoteWarning {
                stage,
                message: &format!("{text}; going on locally"),
            });
        }
        Ok(())
    }
}

/// What a local miss came to.
pub(super) enum Miss {
    /// Downloaded, verified and published: the stage need not run.
    Fetched(Box<Published>, u64),
    /// The stage must run; `repair` when the remote's copy was found corrupt
    /// (the upload after the run then rewrites it).
    Run { repair: bool },
}

/// On a local miss (the caller holds the key's lock), fetch the stage's
/// artifact when the remote holds it. A corrupt remote artifact is reported
/// and never used; a failing remote is a warning unless required.
pub(super) fn fetch_on_miss(
    remote: Option<&RemoteCache>,
    store: &Store,
    p: &PlannedStage,
    lock: &KeyLock,
    cancel: &CancelToken,
    reporter: &dyn Reporter,
) -> Result<Miss> {
    let Some(cache) = remote.filter(|_| p.on_remote && !p.forced) else {
        return Ok(Miss::Run { repair: false });
    };
    let bar = indicatif::ProgressBar::hidden();
    let fetched = cache.remote.artifact(&p.key).and_then(|found| match found {
        Some(artifact) => {
            let bytes = artifact.bytes();
            let published = cache
                .remote
                .download(store, &artifact, lock, &bar, cancel)?;
            Ok(Some((published, bytes)))
        }
        None => Ok(None),
    });
    match fetched {
        Ok(Some((published, bytes))) => Ok(Miss::Fetched(Box::new(published), bytes)),
        Ok(None) => Ok(Miss::Run { repair: false }),
        Err(RemoteError::Corrupt(why)) => {
            reporter.report(&Event::RemoteWarning {
                stage: Some(&p.name),
                message: &format!("{why}; not used, running the stage"),
            });
            Ok(Miss::Run { repair: true })
        }
        Err(e) => cache
            .degrade(Some(&p.name), e, reporter)
            .map(|()| Miss::Run { repair: false }),
    }
}

/// After a stage ran and published, upload its artifact (a no-op when the
/// remote has the key, unless `repair`).
pub(super) fn upload_after_run(
    remote: Option<&RemoteCache>,
    store: &Store,
    p: &PlannedStage,
    repair: bool,
    cancel: &CancelToken,
    reporter: &dyn Reporter,
) -> Result<()> {
    let Some(cache) = remote else {
        return Ok(());
    };
    let start = Instant::now();
    let bar = indicatif::ProgressBar::hidden();
    match cache.remote.upload(store, &p.key, repair, &bar, cancel) {
        Ok(up) => {
            reporter.report(&Event::Pushed {
                stage: &p.name,
                bytes: up.bytes,
                seconds: start.elapsed().as_secs_f64(),
                already: up.already,
            });
            Ok(())
        }
        Err(e) => cache.degrade(Some(&p.name), e, reporter),
    }
}

/// One artifact's fate in `push` or `pull`.
#[derive(Debug, Clone, Serialize)]
pub struct Transfer {
    /// The stage, when a pipeline named it.
    pub stage: Option<String>,
    pub key: String,
    /// `pushed`, `pulled`, `already` (nothing to move), `absent` (not where it
    /// would come from), `failed`.
    pub status: &'static str,
    pub bytes: u64,
    pub error: Option<String>,
}

/// What `push` or `pull` did.
#[derive(Debug, Serialize)]
pub struct TransferReport {
    pub schema: u32,
    pub remote: String,
    pub seconds: f64,
    pub bytes: u64,
    pub artifacts: Vec<Transfer>,
}

impl TransferReport {
    pub fn failed(&self) -> usize {
        self.artifacts
            .iter()
            .filter(|t| t.status == "failed")
            .count()
    }
}

/// The artifacts a push or pull considers: `(stage, key)`, from the plan when
/// there is a pipeline (only `only`'s stages, if any), else every key.
pub fn candidates(
    plan: Option<&Plan>,
    only: &[String],
    all: Vec<ArtifactKey>,
) -> Vec<(Option<String>, ArtifactKey)> {
    match plan {
        Some(plan) => plan
            .order
            .iter()
            .map(|&i| &plan.stages[i])
            .filter(|p| only.is_empty() || only.contains(&p.name))
            .map(|p| (Some(p.name.clone()), p.key.clone()))
            .collect(),
        None => all.into_iter().map(|k| (None, k)).collect(),
    }
}

/// Upload every valid local artifact among `wanted` the remote lacks, with a
/// progress bar over bytes.
pub fn push(
    store: &Store,
    hasher: &mut Hasher,
    remote: &Remote,
    wanted: Vec<(Option<String>, ArtifactKey)>,
    cancel: &CancelToken,
) -> Result<TransferReport> {
    let start = Instant::now();
    let mut local = Vec::new();
    let mut artifacts = Vec::new();
    for (stage, key) in wanted {
        match store.check(&key, hasher, false)? {
            ArtifactState::Valid(m) => {
                let bytes = m.files.iter().map(|f| f.size).sum::<u64>();
                local.push((stage, key, bytes));
            }
            ArtifactState::Missing | ArtifactState::Corrupt(_) => {
                artifacts.push(transfer(stage, &key, "absent", 0, None))
            }
        }
    }
    let total = local.iter().map(|l| l.2).sum();
    let bar = crate::progress::bytes_bar("push", total);
    for (stage, key, size) in local {
        cancel.check()?;
        let t = match remote.upload(store, &key, false, &bar, cancel) {
            Ok(up) => {
                if up.already {
                    bar.inc(size);
                }
                transfer(
                    stage,
                    &key,
                    if up.already { "already" } else { "pushed" },
                    up.bytes,
                    None,
                )
            }
            Err(RemoteError::Local(e)) if e.is::<Cancelled>() => return Err(e),
            Err(e) => transfer(stage, &key, "failed", 0, Some(error_text(e))),
        };
        artifacts.push(t);
    }
    bar.finish_and_clear();
    Ok(report(remote, start, artifacts))
}

/// Download every artifact among `wanted` the store lacks and the remote holds,
/// verified, with a progress bar over bytes.
pub fn pull(
    store: &Store,
    hasher: &mut Hasher,
    remote: &Remote,
    wanted: Vec<(Option<String>, ArtifactKey)>,
    cancel: &CancelToken,
) -> Result<TransferReport> {
    let start = Instant::now();
    let mut artifacts = Vec::new();
    let mut todo = Vec::new();
    for (stage, key) in wanted {
        if matches!(store.check(&key, hasher, false)?, ArtifactState::Valid(_)) {
            artifacts.push(transfer(stage, &key, "already", 0, None));
            continue;
        }
        match remote.artifact(&key) {
            Ok(Some(a)) => todo.push((stage, key, a)),
            Ok(None) => artifacts.push(transfer(stage, &key, "absent", 0, None)),
            Err(e) => artifacts.push(transfer(stage, &key, "failed", 0, Some(error_text(e)))),
        }
    }
    let total = todo.iter().map(|t| t.2.bytes()).sum();
    let bar = crate::progress::bytes_bar("pull", total);
    for (stage, key, artifact) in todo {
        cancel.check()?;
        let lock = store.lock_key(&key, cancel, || {})?;
        if matches!(store.check(&key, hasher, false)?, ArtifactState::Valid(_)) {
            bar.inc(artifact.bytes());
            artifacts.push(transfer(stage, &key, "already", 0, None));
            continue;
        }
        let t = match remote.download(store, &artifact, &lock, &bar, cancel) {
            Ok(published) => {
                hasher.remember(&published.stamps);
                transfer(stage, &key, "pulled", artifact.bytes(), None)
            }
            Err(RemoteError::Local(e)) if e.is::<Cancelled>() => return Err(e),
            Err(e) => transfer(stage, &key, "failed", 0, Some(error_text(e))),
        };
        artifacts.push(t);
    }
    bar.finish_and_clear();
    Ok(report(remote, start, artifacts))
}

/// The keys of the artifacts in the store (valid or not: `push` checks).
pub fn local_keys(store: &Store) -> Result<Vec<ArtifactKey>> {
    let mut keys: Vec<ArtifactKey> = std::fs::read_dir(store.root())
        .with_context(|| format!("cannot list {}", store.root().display()))?
        .flatten()
        .filter_map(|e| ArtifactKey::parse(&e.file_name().to_string_lossy()))
        .collect();
    keys.sort();
    Ok(keys)
}

fn transfer(
    stage: Option<String>,
    key: &ArtifactKey,
    status: &'static str,
    bytes: u64,
    error: Option<String>,
) -> Transfer {
    Transfer {
        stage,
        key: key.to_string(),
        status,
        bytes,
        error,
    }
}

fn error_text(e: RemoteError) -> String {
    match e {
        RemoteError::Local(e) => format!("{e:#}"),
        other => other.to_string(),
    }
}

fn report(remote: &Remote, start: Instant, artifacts: Vec<Transfer>) -> TransferReport {
    TransferReport {
        schema: 1,
        remote: remote.url(),
        seconds: start.elapsed().as_secs_f64(),
        bytes: artifacts.iter().map(|t| t.bytes).sum(),
        artifacts,
    }
}

impl Workspace {
    /// Connect the remote `choice` names (see [`RemoteCache::connect`]).
    pub fn connect_remote(
        &mut self,
        pipeline: &Pipeline,
        choice: &RemoteChoice,
        reporter: &dyn Reporter,
    ) -> Result<(), PlanError> {
        self.remote = RemoteCache::connect(Some(pipeline), choice, false, reporter)?;
        Ok(())
    }
}
