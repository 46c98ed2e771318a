//! The remote cache's commands: `push` and `pull` move artifacts between the
//! store and the remote (`exec::remote` does the work), and the `--remote` /
//! `--no-remote` flags `run` and `status` share.

use std::path::PathBuf;

use clap::Args;

use super::{cancel_on_signals, print_json, ExitCode, Failure, JsonFlag};
use crate::exec::remote::{self, RemoteCache, RemoteChoice, TransferReport};
use crate::exec::{self, Progress, RunOptions, Workspace};
use crate::pipeline::{ConfigError, Override};
use crate::store::{Hasher, Store};

/// `--remote URL` / `--no-remote`, for `run` and `status`.
#[derive(Args)]
pub(crate) struct RemoteFlags {
    /// Use this remote artifact cache (s3://bucket/prefix) instead of the pipeline's `remote`.
    #[arg(long, value_name = "URL", conflicts_with = "no_remote")]
    remote: Option<String>,
    /// Use no remote cache, whatever the pipeline says.
    #[arg(long)]
    no_remote: bool,
}

impl RemoteFlags {
    pub(crate) fn choice(&self) -> RemoteChoice {
        match (&self.remote, self.no_remote) {
            (_, true) => RemoteChoice::Off,
            (Some(url), false) => RemoteChoice::Url(url.clone()),
            (None, false) => RemoteChoice::Pipeline,
        }
    }
}

#[derive(Args)]
pub(crate) struct TransferArgs {
    /// The pipeline whose stages' artifacts move [default: every artifact, of the
    /// store (push) or of the remote (pull)].
    pipeline: Option<PathBuf>,
    /// The store directory, when no pipeline is given [default: ./artifacts].
    #[arg(long, conflicts_with = "pipeline")]
    store: Option<PathBuf>,
    /// The remote (s3://bucket/prefix) [default: the pipeline's `remote`].
    #[arg(long, value_name = "URL")]
    remote: Option<String>,
    /// Override a param: STAGE.PATH=VALUE, as for `run` (keys follow params). Repeatable.
    #[arg(long = "set", value_name = "STAGE.PARAM=VALUE", requires = "pipeline")]
    set: Vec<String>,
    /// Only this stage's artifact (repeatable; needs a pipeline).
    #[arg(long, value_name = "STAGE", requires = "pipeline")]
    only: Vec<String>,
    #[command(flatten)]
    json: JsonFlag,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Push,
    Pull,
}

pub(crate) fn cmd_push(args: TransferArgs) -> Result<ExitCode, Failure> {
    transfer(args, Direction::Push)
}

pub(crate) fn cmd_pull(args: TransferArgs) -> Result<ExitCode, Failure> {
    transfer(args, Direction::Pull)
}

fn transfer(args: TransferArgs, direction: Direction) -> Result<ExitCode, Failure> {
    let json = args.json.json;
    let progress = if json {
        Progress::JsonLines
    } else {
        Progress::Human
    };
    let overrides = args
        .set
        .iter()
        .map(|s| Override::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let pipeline = match &args.pipeline {
        Some(p) => Some(exec::load(p, &overrides)?),
        None => None,
    };
    let choice = match &args.remote {
        Some(url) => RemoteChoice::Url(url.clone()),
        None => RemoteChoice::Pipeline,
    };
    let cache = RemoteCache::connect(pipeline.as_ref(), &choice, true, progress.reporter())?
        .ok_or_else(|| {
            ConfigError::new(None, "no remote to use")
                .with_help("give --remote s3://bucket/prefix, or set `remote` in the pipeline's [pipeline] table")
        })?;
    let cancel = cancel_on_signals()?;
    let report = match &pipeline {
        Some(pipeline) => {
            for name in &args.only {
                pipeline.require_stage(name)?;
            }
            let mut ws = Workspace::open(pipeline)?;
            let plan = exec::plan(pipeline, &mut ws, &RunOptions::default())?;
            let wanted = remote::candidates(Some(&plan), &args.only, Vec::new());
            let report = move_artifacts(
                direction,
                &ws.store,
                &mut ws.hasher,
                &cache,
                wanted,
                &cancel,
            )?;
            ws.hasher.flush(&mut ws.db)?;
            report
        }
        None => {
            let root = exec::store_root(None, args.store.as_deref())?;
            let store = match direction {
                Direction::Push => Store::open_existing(&root)?,
                Direction::Pull => Store::open(&root)?,
            };
            let mut db = store.open_db()?;
            let mut hasher = Hasher::new(&db, vec![root.clone()])?;
            let all = match direction {
                Direction::Push => remote::local_keys(&store)?,
                Direction::Pull => cache.remote.keys().map_err(anyhow::Error::from)?,
            };
            let wanted = remote::candidates(None, &[], all);
            let report = move_artifacts(direction, &store, &mut hasher, &cache, wanted, &cancel)?;
            hasher.flush(&mut db)?;
            report
        }
    };
    if json {
        print_json(&report)?;
    } else {
        print_report(&report, direction);
    }
    Ok(if report.failed() > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn move_artifacts(
    direction: Direction,
    store: &Store,
    hasher: &mut Hasher,
    cache: &RemoteCache,
    wanted: Vec<(Option<String>, crate::store::ArtifactKey)>,
    cancel: &crate::cancel::CancelToken,
) -> anyhow::Result<TransferReport> {
    match direction {
        Direction::Push => remote::push(store, hasher, &cache.remote, wanted, cancel),
        Direction::Pull => remote::pull(store, hasher, &cache.remote, wanted, cancel),
    }
}

fn print_report(report: &TransferReport, direction: Direction) {
    let width = report
        .artifacts
        .iter()
        .map(|t| t.stage.as_deref().map_or(0, str::len))
        .max()
        .unwrap_or(0);
    for t in &report.artifacts {
        let stage = t.stage.as_deref().unwrap_or("");
        let what = match (t.status, direction) {
            ("absent", Direction::Push) => "not in the local store".to_string(),
            ("absent", Direction::Pull) => "not on the remote".to_string(),
            ("already", Direction::Push) => "already on the remote".to_string(),
            ("already", Direction::Pull) => "already in the local store".to_string(),
            ("failed", _) => t.error.clone().unwrap_or_default(),
            _ => format!("{:.1} MB", t.bytes as f64 / 1e6),
        };
        println!(
            "  {:<8} {stage:<width$}  {}  {what}",
            t.status,
            &t.key[..12]
        );
    }
    let count = |s: &str| report.artifacts.iter().filter(|t| t.status == s).count();
    let (verb, place) = match direction {
        Direction::Push => ("pushed", "to"),
        Direction::Pull => ("pulled", "from"),
    };
    let secs = report.seconds.max(1e-9);
    println!(
        "{} {verb}, {} already there, {} absent, {} failed: {:.1} MB in {:.2}s ({:.1} MB/s) {place} {}",
        count(verb),
        count("already"),
        count("absent"),
        count("failed"),
        report.bytes as f64 / 1e6,
        report.seconds,
        report.bytes as f64 / 1e6 / secs,
        report.remote
    );
}
