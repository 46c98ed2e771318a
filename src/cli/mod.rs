//! The command line: parse arguments, call into `exec`/`store`, print human
//! output or a stable JSON document (`--json`, schema 1, see README). The
//! pipeline commands live here, the ML ones in [`ml`].

mod ml;
mod remote;
mod search;

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use serde_json::json;

use crate::cancel::CancelToken;
use crate::exec::{self, Action, PlanError, Progress, RunOptions, Status, Workspace};
use crate::pipeline::{ConfigError, Override, Pipeline};

/// Exit status for configuration and usage errors (nothing ran).
const EXIT_CONFIG: u8 = 2;
/// Exit status after Ctrl-C / SIGTERM.
const EXIT_INTERRUPTED: u8 = 130;

/// A command's exit status. `std::process::ExitCode` keeps its number to
/// itself, and `main` needs it: see `xtr_pipe::mlx::exit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitCode(pub u8);

impl ExitCode {
    pub const SUCCESS: ExitCode = ExitCode(0);
    pub const FAILURE: ExitCode = ExitCode(1);
}

impl From<u8> for ExitCode {
    fn from(code: u8) -> ExitCode {
        ExitCode(code)
    }
}

#[derive(Parser)]
#[command(
    name = "xtr-pipe",
    version,
    about = "Run declarative experiment pipelines with content-addressed caching",
    long_about = "Run declarative experiment pipelines with content-addressed caching.\n\n\
        A pipeline is a TOML file: a [pipeline] table and [stage.NAME] tables with a `kind`,\n\
        `needs = [..]` and the kind's params. Every stage's output is stored under the blake3\n\
        hash of its kind, params, inputs and declared files, so a rerun recomputes only the\n\
        stages whose hash changed.",
    after_help = "Examples:\n  \
        xtr-pipe run pipelines/quickstart.toml\n  \
        xtr-pipe run pipelines/mlx.toml --set train.lr=1e-4 --dry-run\n  \
        xtr-pipe status pipelines/mlx.toml\n  \
        xtr-pipe show pipelines/mlx.toml --json\n\n\
        Exit status: 0 success, 1 a stage failed or an error occurred, 2 invalid pipeline or\n\
        arguments (nothing ran), 130 interrupted."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline: reuse cached stages, run the stale ones.
    Run(RunArgs),
    /// Say which stages are stale and why, and where a reusable artifact is.
    Status(StatusArgs),
    /// Print the stage graph (text, or Graphviz with --dot).
    Dag(DagArgs),
    /// Show the last recorded run: keys, artifacts, timings, metrics.
    Show(ShowArgs),
    /// What changed between two recorded runs: params and metrics, stage by stage.
    Diff(DiffArgs),
    /// Delete artifacts that no recorded run references.
    Gc(GcArgs),
    /// Upload local artifacts to the remote cache (those of a pipeline's stages, or all).
    Push(remote::TransferArgs),
    /// Download artifacts from the remote cache, verified (a pipeline's stages, or all).
    Pull(remote::TransferArgs),
    /// List the built-in stage kinds.
    Kinds(JsonFlag),
    /// Index source trees for code search (BM25 + multi-vector), outside a pipeline.
    Index(search::IndexArgs),
    /// Search an index: ranked hits with path:line, symbol, score and a snippet.
    Search(search::SearchArgs),
    /// Print each text's per-token embeddings from a model directory.
    Embed(ml::EmbedArgs),
    /// Benchmarks (release builds only give meaningful figures).
    #[command(subcommand)]
    Bench(ml::BenchCommand),
    /// One rank of a data-parallel stage; started by the stage itself.
    #[command(hide = true)]
    Rank(RankArgs),
}

#[derive(Args)]
struct RankArgs {
    /// The stage kind (`train`, `index`).
    kind: String,
    /// The job file the launching stage wrote.
    job: PathBuf,
}

#[derive(Args)]
pub(crate) struct JsonFlag {
    /// Print one JSON document on stdout (schema documented in the README).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
struct PipelineArgs {
    /// The pipeline file.
    pipeline: PathBuf,
    /// Override a param: STAGE.PATH=VALUE (TOML value; bare words are strings). Repeatable.
    #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
    set: Vec<String>,
    #[command(flatten)]
    json: JsonFlag,
}

#[derive(Args)]
struct StatusArgs {
    #[command(flatten)]
    common: PipelineArgs,
    #[command(flatten)]
    remote: remote::RemoteFlags,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    common: PipelineArgs,
    #[command(flatten)]
    remote: remote::RemoteFlags,
    /// Stages to run at once [default: number of cores].
    #[arg(short = 'j', long)]
    jobs: Option<usize>,
    /// Run only this stage (repeatable); its inputs must already be built.
    #[arg(long, value_name = "STAGE")]
    only: Vec<String>,
    /// Rerun this stage and everything downstream of it, ignoring the cache.
    #[arg(long, value_name = "STAGE", conflicts_with = "only")]
    from: Option<String>,
    /// Rerun this stage even if cached (repeatable). Downstream stages rerun only if their key changes.
    #[arg(long, value_name = "STAGE")]
    force: Vec<String>,
    /// Print the plan and the reason for each stage; run nothing.
    #[arg(long)]
    dry_run: bool,
    /// Re-hash every file of reused artifacts (default: re-hash only files whose stat changed).
    #[arg(long)]
    verify: bool,
}

#[derive(Args)]
struct DagArgs {
    pipeline: PathBuf,
    /// Graphviz output.
    #[arg(long, conflicts_with = "json")]
    dot: bool,
    #[command(flatten)]
    json: JsonFlag,
}

#[derive(Args)]
struct ShowArgs {
    pipeline: PathBuf,
    #[command(flatten)]
    json: JsonFlag,
}

#[derive(Args)]
struct DiffArgs {
    pipeline: PathBuf,
    /// The earlier run's id (`show --json` gives ids) [default: the second newest].
    run_a: Option<i64>,
    /// The later run's id [default: the newest].
    run_b: Option<i64>,
    #[command(flatten)]
    json: JsonFlag,
}

#[derive(Args)]
struct GcArgs {
    /// Use this pipeline's store (default: ./artifacts).
    pipeline: Option<PathBuf>,
    /// The store directory, when no pipeline is given.
    #[arg(long, conflicts_with = "pipeline")]
    store: Option<PathBuf>,
    /// Keep only artifacts referenced by each pipeline's last N runs (default: any recorded run).
    #[arg(long, value_name = "N")]
    keep_last: Option<u32>,
    /// Say what would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    json: JsonFlag,
}

/// A failure with the exit status it maps to.
pub(crate) enum Failure {
    Config(ConfigError),
    Other(anyhow::Error),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Config(e)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

impl From<crate::mlx::Exception> for Failure {
    fn from(e: crate::mlx::Exception) -> Self {
        Failure::Other(e.into())
    }
}

impl From<PlanError> for Failure {
    fn from(e: PlanError) -> Self {
        match e {
            PlanError::Config(c) => Failure::Config(c),
            PlanError::Other(o) => Failure::Other(o),
        }
    }
}

/// Runs the command line; returns the exit status.
pub fn main() -> u8 {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => cmd_run(args),
        Command::Status(args) => cmd_status(args),
        Command::Dag(args) => cmd_dag(args),
        Command::Show(args) => cmd_show(args),
        Command::Diff(args) => cmd_diff(args),
        Command::Gc(args) => cmd_gc(args),
        Command::Push(args) => remote::cmd_push(args),
        Command::Pull(args) => remote::cmd_pull(args),
        Command::Kinds(args) => cmd_kinds(args),
        Command::Index(args) => search::cmd_index(args),
        Command::Search(args) => search::cmd_search(args),
        Command::Embed(args) => ml::cmd_embed(args),
        Command::Bench(command) => ml::bench(command),
        Command::Rank(args) => cmd_rank(args),
    };
    let code = match result {
        Ok(code) => code,
        Err(Failure::Config(e)) => {
            eprintln!("error: {}", e.render());
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    code.0
}

fn load(args: &PipelineArgs) -> Result<Pipeline, Failure> {
    let overrides = args
        .set
        .iter()
        .map(|s| Override::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(exec::load(&args.pipeline, &overrides)?)
}

pub(crate) fn print_json(value: &impl Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

fn cmd_rank(args: RankArgs) -> Result<ExitCode, Failure> {
    let cancel = cancel_on_signals()?;
    let Some(run_rank) = crate::stages::ranks::entry(&args.kind) else {
        return Err(anyhow::anyhow!("no rank entry for kind `{}`", args.kind).into());
    };
    match run_rank(&args.job, &cancel) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.is::<crate::stages::Cancelled>() => Ok(ExitCode::from(EXIT_INTERRUPTED)),
        Err(e) => Err(e.into()),
    }
}

fn cmd_run(args: RunArgs) -> Result<ExitCode, Failure> {
    let pipeline = load(&args.common)?;
    let json = args.common.json.json;
    let opts = RunOptions {
        jobs: args
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        only: args.only,
        from: args.from,
        force: args.force,
        dry_run: args.dry_run,
        verify: args.verify,
        progress: if json {
            Progress::JsonLines
        } else {
            Progress::Human
        },
    };
    if opts.jobs == 0 {
        return Err(ConfigError::new(None, "-j must be at least 1").into());
    }
    let cancel = cancel_on_signals()?;
    let mut ws = Workspace::open(&pipeline)?;
    ws.connect_remote(&pipeline, &args.remote.choice(), opts.progress.reporter())?;
    let mut plan = exec::plan(&pipeline, &mut ws, &opts)?;
    if let Some(cache) = &ws.remote {
        cache.locate(&mut plan, opts.progress.reporter())?;
    }
    if opts.dry_run {
        print_plan(&pipeline, &plan, json)?;
        return Ok(ExitCode::SUCCESS);
    }
    let report = exec::execute(&pipeline, &mut ws, plan, &opts, &cancel)?;
    if json {
        print_json(&report)?;
    } else {
        let count = |s: Status| report.stages.iter().filter(|r| r.status == s).count();
        println!(
            "{}: {} ran, {} cached, {} failed, {} skipped in {:.2}s ({})",
            report.name,
            count(Status::Ran),
            count(Status::Cached),
            count(Status::Failed),
            count(Status::Skipped),
            report.seconds,
            report.status
        );
    }
    Ok(match report.status.as_str() {
        "ok" => ExitCode::SUCCESS,
        "interrupted" => ExitCode::from(EXIT_INTERRUPTED),
        _ => ExitCode::FAILURE,
    })
}

/// A token that Ctrl-C and SIGTERM set; a second signal exits at once.
pub(crate) fn cancel_on_signals() -> Result<CancelToken> {
    let cancel = CancelToken::new();
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(
            signal,
            EXIT_INTERRUPTED as i32,
            cancel.flag(),
        )
        .context("installing signal handlers")?;
        signal_hook::flag::register(signal, cancel.flag()).context("installing signal handlers")?;
    }
    Ok(cancel)
}

#[derive(Serialize)]
struct PlanEntry<'a> {
    name: &'a str,
    kind: &'a str,
    key: &'a str,
    action: Action,
    stale: bool,
    reason: &'a str,
    /// Where a reusable artifact is: `local`, `remote`, or none.
    #[serde(rename = "where")]
    location: Option<&'static str>,
}

fn plan_entries(plan: &exec::Plan) -> Vec<PlanEntry<'_>> {
    plan.order
        .iter()
        .map(|&i| {
            let p = &plan.stages[i];
            PlanEntry {
                name: &p.name,
                kind: p.kind.name,
                key: p.key.as_str(),
                action: p.action,
                stale: p.action == Action::Run,
                reason: &p.reason,
                location: if p.manifest.is_some() {
                    Some("local")
                } else if p.on_remote {
                    Some("remote")
                } else {
                    None
                },
            }
        })
        .collect()
}

fn print_plan(pipeline: &Pipeline, plan: &exec::Plan, json: bool) -> Result<()> {
    let entries = plan_entries(plan);
    if json {
        return print_json(&json!({"schema": 1, "pipeline": pipeline.path, "stages": entries}));
    }
    let width = entries.iter().map(|e| e.name.len()).max().unwrap_or(0);
    for e in &entries {
        let action = match e.action {
            Action::Run => "run",
            Action::Reuse => "reuse",
            Action::Skip => "skip",
        };
        println!(
            "{action:<6} {:<width$}  {}  {}",
            e.name,
            &e.key[..12],
            e.reason
        );
    }
    Ok(())
}

fn cmd_status(status: StatusArgs) -> Result<ExitCode, Failure> {
    let args = status.common;
    let pipeline = load(&args)?;
    let mut ws = Workspace::open(&pipeline)?;
    let reporter = if args.json.json {
        Progress::JsonLines
    } else {
        Progress::Human
    }
    .reporter();
    ws.connect_remote(&pipeline, &status.remote.choice(), reporter)?;
    let mut plan = exec::plan(&pipeline, &mut ws, &RunOptions::default())?;
    if let Some(cache) = &ws.remote {
        cache.locate(&mut plan, reporter)?;
    }
    let entries = plan_entries(&plan);
    if args.json.json {
        print_json(&json!({"schema": 1, "pipeline": pipeline.path, "stages": entries}))?;
    } else {
        let width = entries.iter().map(|e| e.name.len()).max().unwrap_or(0);
        for e in &entries {
            let state = match (e.stale, ws.remote.is_some()) {
                (true, _) => "stale",
                (false, false) => "up to date",
                (false, true) => "up to date (local)",
            };
            let reason = if e.stale {
                format!(": {}", e.reason)
            } else {
                String::new()
            };
            println!("{:<width$}  {state}{reason}", e.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_dag(args: DagArgs) -> Result<ExitCode, Failure> {
    let pipeline = exec::load(&args.pipeline, &[])?;
    let order = pipeline.dag.topological();
    if args.json.json {
        let stages: Vec<_> = order
            .iter()
            .map(|&i| {
                let s = &pipeline.stages[i];
                json!({"name": s.name, "kind": s.kind, "needs": pipeline.need_names(i)})
            })
            .collect();
        print_json(&json!({"schema": 1, "pipeline": pipeline.path, "stages": stages}))?;
    } else if args.dot {
        println!(
            "digraph \"{}\" {{\n  rankdir=LR;",
            pipeline.name.replace('"', "\\\"")
        );
        for &i in order {
            let s = &pipeline.stages[i];
            println!("  \"{}\" [label=\"{}\\n({})\"];", s.name, s.name, s.kind);
            for &n in &s.needs {
                println!("  \"{}\" -> \"{}\";", pipeline.stages[n].name, s.name);
            }
        }
        println!("}}");
    } else {
        let width = pipeline
            .stages
            .iter()
            .map(|s| s.name.len())
            .max()
            .unwrap_or(0);
        for &i in order {
            let s = &pipeline.stages[i];
            let needs = pipeline.need_names(i);
            let arrow = if needs.is_empty() {
                String::new()
            } else {
                format!("  <- {}", needs.join(", "))
            };
            println!("{:<width$}  [{}]{arrow}", s.name, s.kind);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_show(args: ShowArgs) -> Result<ExitCode, Failure> {
    let pipeline = exec::load(&args.pipeline, &[])?;
    let Some((run, stages)) = exec::last_run(&pipeline)? else {
        return Err(Failure::Other(anyhow::anyhow!(
            "no recorded run of {}; run it first with `xtr-pipe run {}`",
            pipeline.path.display(),
            args.pipeline.display()
        )));
    };
    if args.json.json {
        print_json(&json!({"schema": 1, "run": run, "stages": stages}))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "run {} of {} ({}), {}",
        run.id, run.name, run.pipeline, run.status
    );
    for s in &stages {
        println!(
            "  {:<8} {}  {}  {:.2}s",
            s.status.as_str(),
            s.name,
            &s.key[..s.key.len().min(12)],
            s.seconds
        );
        if let Some(a) = &s.artifact {
            println!("           artifact: {}", a.display());
        }
        if !s.metrics.is_empty() {
            let text: Vec<String> = s.metrics.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("           metrics: {}", text.join(" "));
        }
        if let Some(e) = &s.error {
            println!("           error: {e}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_diff(args: DiffArgs) -> Result<ExitCode, Failure> {
    let pipeline = exec::load(&args.pipeline, &[])?;
    let diff = exec::diff_runs(&pipeline, args.run_a, args.run_b)?;
    if args.json.json {
        print_json(&json!({"schema": 1, "diff": diff}))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("run {} -> run {}", diff.a, diff.b);
    if diff.stages.is_empty() {
        println!("  no differences");
    }
    for s in &diff.stages {
        let key = if s.key_changed {
            "new artifact"
        } else {
            "same artifact"
        };
        println!("  {} ({key})", s.stage);
        for p in &s.params {
            println!("    param {p}");
        }
        for (name, a, b) in &s.metrics {
            println!("    metric {name}: {a} -> {b}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_gc(args: GcArgs) -> Result<ExitCode, Failure> {
    let root = exec::store_root(args.pipeline.as_deref(), args.store.as_deref())?;
    let report = exec::gc(&root, args.keep_last, args.dry_run)?;
    if args.json.json {
        print_json(
            &json!({"schema": 1, "store": root, "dry_run": args.dry_run, "removed": report.removed,
                           "kept": report.kept, "leftovers": report.leftovers,
                           "work_dirs": report.work_dirs, "bytes": report.bytes}),
        )?;
    } else {
        let verb = if args.dry_run {
            "would remove"
        } else {
            "removed"
        };
        for key in &report.removed {
            println!("{verb} {key}");
        }
        println!(
            "{verb} {} artifacts, {} leftovers and {} stale working directories ({:.1} MB); kept {}",
            report.removed.len(),
            report.leftovers,
            report.work_dirs,
            report.bytes as f64 / 1e6,
            report.kept
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_kinds(args: JsonFlag) -> Result<ExitCode, Failure> {
    use crate::stages::{Arity, KINDS};
    let arity = |a: Arity| match a {
        Arity::One => "one",
        Arity::Optional => "optional",
        Arity::Many => "any number",
    };
    if args.json {
        let kinds: Vec<_> = KINDS
            .iter()
            .map(|k| {
                let inputs: Vec<_> = k
                    .inputs
                    .iter()
                    .map(|r| json!({"role": r.role, "kinds": r.kinds, "arity": arity(r.arity)}))
                    .collect();
                let outputs: Vec<_> = k
                    .outputs
                    .iter()
                    .map(|o| json!({"file": o.file, "what": o.what}))
                    .collect();
                json!({"name": k.name, "version": k.version, "summary": k.summary,
                       "inputs": inputs, "outputs": outputs})
            })
            .collect();
        print_json(&json!({"schema": 1, "kinds": kinds}))?;
        return Ok(ExitCode::SUCCESS);
    }
    // "an index", "a merge": the article by the word's first letter.
    let a = |word: &str| {
        let vowel = word.starts_with(['a', 'e', 'i', 'o', 'u']);
        format!("{} {word}", if vowel { "an" } else { "a" })
    };
    for k in KINDS {
        println!("{:<10} v{}  {}", k.name, k.version, k.summary);
        for r in k.inputs {
            let from = if r.kinds.is_empty() {
                "any stage".to_string()
            } else {
                format!("{} stage", a(&r.kinds.join(" or ")))
            };
            let verb = match r.arity {
                Arity::One => format!("needs the {}", r.role),
                Arity::Optional => format!("may take the {}", r.role),
                Arity::Many => format!("takes any number of {}s", r.role),
            };
            let of = if r.arity == Arity::Many { "from" } else { "of" };
            println!("             {verb} {of} {from}");
        }
        for o in k.outputs {
            println!("             makes {}: {}", o.file, o.what);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Make `device` MLX's default; `gpu` without one is an error naming the fix.
pub(crate) fn select_device(device: crate::stages::compute::DeviceParam) -> Result<()> {
    let Some(chosen) = device.resolve(crate::mlx::gpu_is_available()?) else {
        anyhow::bail!(
            "--device gpu: this MLX build has no GPU (the mlx-cpu wheel); install mlx-cuda-13 \
             (Linux + NVIDIA) or mlx-metal (macOS) of the same version, or use --device cpu"
        );
    };
    crate::mlx::Device::set_default(&chosen.device())?;
    Ok(())
}

/// The directory `path` names that holds `marker`: `path` itself, or `sub/`
/// in it (an artifact's `out/`), or `out/sub/` (the artifact's directory).
pub(crate) fn artifact_dir(path: &std::path::Path, sub: &str, marker: &str) -> Option<PathBuf> {
    [
        path.to_path_buf(),
        path.join(sub),
        path.join("out").join(sub),
    ]
    .into_iter()
    .find(|dir| dir.join(marker).is_file())
}

/// The model directory `path` names: itself, or a merge artifact's `model/`.
pub(crate) fn model_dir(path: &std::path::Path) -> Result<PathBuf> {
    artifact_dir(path, "model", "config.json").ok_or_else(|| {
        anyhow::anyhow!(
            "{} is not a model: no config.json in it (nor in model/, as a merge artifact has)",
            path.display()
        )
    })
}
