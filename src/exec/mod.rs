//! Running pipelines, in three parts that know stages only through the
//! `stages` kit: [`plan`] (keys, and what to reuse, run or skip, and why),
//! [`schedule`] (running stages in parallel, publishing, cancellation) and
//! [`record`] (the outcome of each stage, and the run history read back).
//! Progress goes through one [`report::Reporter`]; [`remote`] hooks the shared
//! artifact cache into a run (fetch on a miss, upload after a stage runs).

pub mod explain;
pub mod plan;
pub mod record;
pub mod remote;
pub mod report;
pub mod schedule;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

pub use plan::{plan, Plan, PlannedStage};
pub use record::{diff_runs, last_run, RunDiff, RunReport, StageResult};
pub use report::Progress;
pub use schedule::execute;

use crate::pipeline::{ConfigError, Override, Pipeline};
use crate::store::listing::FileChanges;
use crate::store::{Db, GcReport, Hasher, Store};

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
    /// How progress is shown.
    pub progress: Progress,
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

    /// The status a history row recorded with [`Status::as_str`].
    pub fn parse(text: &str) -> Option<Status> {
        [Status::Ran, Status::Cached, Status::Failed, Status::Skipped]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// Load a pipeline file with the built-in kinds' templates.
pub fn load(path: &Path, overrides: &[Override]) -> Result<Pipeline, ConfigError> {
    Pipeline::load(path, overrides, &crate::stages::BUILTIN)
}

/// Everything a plan needs: the store, its database and the hasher.
pub struct Workspace {
    pub store: Store,
    pub db: Db,
    pub hasher: Hasher,
    /// The shared artifact cache, once connected ([`Workspace::connect_remote`]).
    pub remote: Option<remote::RemoteCache>,
    /// Tree digests whose listings are known to be stored (checked once a run).
    pub stored_trees: HashSet<String>,
    /// How a dep's files changed, by (old digest, new digest), for `status`.
    pub tree_changes: HashMap<(String, String), Option<FileChanges>>,
}

impl Workspace {
    pub fn open(pipeline: &Pipeline) -> Result<Workspace> {
        let store = Store::open(&pipeline.store)?;
        let db = store.open_db()?;
        let hasher = Hasher::new(&db, vec![pipeline.store.clone()])?;
        Ok(Workspace {
            store,
            db,
            hasher,
            remote: None,
            stored_trees: HashSet::new(),
            tree_changes: HashMap::new(),
        })
    }
}

/// Delete the artifacts of the store at `root` that no recorded run references
/// (or, with `keep_last`, none of each pipeline's last N runs).
pub fn gc(root: &Path, keep_last: Option<u32>, dry_run: bool) -> Result<GcReport> {
    let store = Store::open_existing(root)?;
    let db = store.open_db()?;
    let keep = db.referenced_keys(keep_last)?;
    store.gc(&keep, &db.last_run_keys()?, dry_run)
}

/// The store a command uses: the pipeline's, the one named, or the default.
pub fn store_root(pipeline: Option<&Path>, store: Option<&Path>) -> Result<PathBuf, ConfigError> {
    Ok(match (pipeline, store) {
        (Some(p), _) => load(p, &[])?.store,
        (None, Some(s)) => s.to_path_buf(),
        (None, None) => PathBuf::from(crate::pipeline::DEFAULT_STORE),
    })
}

/// Errors that stop a command before anything runs: bad configuration (exit 2) or I/O.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}
