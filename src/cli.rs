//! The command line: parse arguments, call into `exec`/`store`, print human
//! output or a stable JSON document (`--json`, schema 1, see README).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use serde_json::json;

use crate::cancel::CancelToken;
use crate::exec::{self, Action, PlanError, RunOptions, Status, Workspace};
use crate::pipeline::{ConfigError, Override, Pipeline};
use crate::stages::compute::DeviceParam;
use crate::store::Store;

/// Exit status for configuration and usage errors (nothing ran).
const EXIT_CONFIG: u8 = 2;
/// Exit status after Ctrl-C / SIGTERM.
const EXIT_INTERRUPTED: u8 = 130;

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
    /// Say which stages are stale and why, without running anything.
    Status(PipelineArgs),
    /// Print the stage graph (text, or Graphviz with --dot).
    Dag(DagArgs),
    /// Show the last recorded run: keys, artifacts, timings, metrics.
    Show(ShowArgs),
    /// Delete artifacts that no recorded run references.
    Gc(GcArgs),
    /// List the built-in stage kinds.
    Kinds(JsonFlag),
    /// Print each text's per-token embeddings from a model directory.
    Embed(EmbedArgs),
    /// Benchmarks (release builds only give meaningful figures).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Time the LoRA train step (MaxSim InfoNCE + margin, AdamW) on synthetic ids.
    TrainStep(TrainStepArgs),
    /// Encoder inference throughput (tokens/s) on synthetic ids.
    Encode(EncodeBenchArgs),
    /// Our CPU kernels (GELU, softmax, dropout and their gradients) against the
    /// MLX graphs they replace, in elements/s at the train step's sizes.
    Kernels(KernelsBenchArgs),
}

#[derive(Args)]
struct KernelsBenchArgs {
    /// Timed evaluations per kernel (the median is reported).
    #[arg(long, default_value_t = 20)]
    reps: usize,
    /// Instruction set: auto, avx512, avx2 or scalar (the portable fallback).
    #[arg(long, default_value = "auto")]
    isa: String,
    #[command(flatten)]
    json: JsonFlag,
}

#[derive(Args)]
struct EncodeBenchArgs {
    /// A model directory, or `t5-base-random`.
    #[arg(long)]
    model: String,
    #[arg(long, default_value_t = 32)]
    batch: i32,
    /// Tokens per text.
    #[arg(long, default_value_t = 128)]
    len: i32,
    #[arg(long, default_value_t = 10)]
    steps: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, value_enum, default_value_t = DeviceParam::Cpu)]
    device: DeviceParam,
    #[command(flatten)]
    json: JsonFlag,
}

#[derive(Args)]
struct EmbedArgs {
    /// An HF-layout model directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Truncate each text to this many tokens (special tokens included).
    #[arg(long, default_value_t = 512)]
    max_len: usize,
    #[arg(long, value_enum, default_value_t = DeviceParam::Cpu)]
    device: DeviceParam,
    /// The texts to embed.
    #[arg(required = true)]
    texts: Vec<String>,
    #[command(flatten)]
    json: JsonFlag,
}

#[derive(Args)]
struct TrainStepArgs {
    /// A model directory, or `t5-base-random` (a random T5 v1.1-base encoder + 128-dim head).
    #[arg(long)]
    model: String,
    #[arg(long, default_value_t = 12)]
    batch: i32,
    /// Query length in tokens.
    #[arg(long, default_value_t = 32)]
    qlen: i32,
    /// Document length in tokens.
    #[arg(long, default_value_t = 128)]
    dlen: i32,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, value_enum, default_value_t = DeviceParam::Cpu)]
    device: DeviceParam,
    /// Compute dtype: f32, or bf16 (frozen weights bf16; LoRA, optimizer state and loss f32).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    dtype: String,
    /// Run the step eagerly, op by op, instead of as one compiled graph (gives the phase split).
    #[arg(long)]
    eager: bool,
    /// Dropout in the encoder (its configured rate) [default: on for t5-base-random, off otherwise].
    #[arg(long)]
    dropout: Option<bool>,
    #[command(flatten)]
    json: JsonFlag,
}

#[derive(Args)]
struct JsonFlag {
    /// Print one JSON document on stdout (schema documented in the README).
    #[arg(long)]
    json: bool,
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
struct RunArgs {
    #[command(flatten)]
    common: PipelineArgs,
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
enum Failure {
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

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => cmd_run(args),
        Command::Status(args) => cmd_status(args),
        Command::Dag(args) => cmd_dag(args),
        Command::Show(args) => cmd_show(args),
        Command::Gc(args) => cmd_gc(args),
        Command::Kinds(args) => cmd_kinds(args),
        Command::Embed(args) => cmd_embed(args),
        Command::Bench(BenchCommand::TrainStep(args)) => cmd_bench_train_step(args),
        Command::Bench(BenchCommand::Encode(args)) => cmd_bench_encode(args),
        Command::Bench(BenchCommand::Kernels(args)) => cmd_bench_kernels(args),
    };
    match result {
        Ok(code) => code,
        Err(Failure::Config(e)) => {
            eprintln!("error: {}", e.render());
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(args: &PipelineArgs) -> Result<Pipeline, Failure> {
    let overrides = args
        .set
        .iter()
        .map(|s| Override::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Pipeline::load(&args.pipeline, &overrides)?)
}

fn print_json(value: &impl Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
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
        progress: !json,
    };
    if opts.jobs == 0 {
        return Err(ConfigError::new(None, "-j must be at least 1").into());
    }
    let cancel = CancelToken::new();
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while we are shutting down exits at once.
        signal_hook::flag::register_conditional_shutdown(
            signal,
            EXIT_INTERRUPTED as i32,
            cancel.flag(),
        )
        .context("installing signal handlers")?;
        signal_hook::flag::register(signal, cancel.flag())
            .context("installing signal handlers")?;
    }
    let mut ws = Workspace::open(&pipeline)?;
    let plan = exec::plan(&pipeline, &mut ws, &opts)?;
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

#[derive(Serialize)]
struct PlanEntry<'a> {
    name: &'a str,
    kind: &'a str,
    key: &'a str,
    action: Action,
    stale: bool,
    reason: &'a str,
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

fn cmd_status(args: PipelineArgs) -> Result<ExitCode, Failure> {
    let pipeline = load(&args)?;
    let mut ws = Workspace::open(&pipeline)?;
    let plan = exec::plan(&pipeline, &mut ws, &RunOptions::default())?;
    let entries = plan_entries(&plan);
    if args.json.json {
        print_json(&json!({"schema": 1, "pipeline": pipeline.path, "stages": entries}))?;
    } else {
        let width = entries.iter().map(|e| e.name.len()).max().unwrap_or(0);
        for e in &entries {
            let state = if e.stale { "stale" } else { "up to date" };
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
    let pipeline = Pipeline::load(&args.pipeline, &[])?;
    let order = pipeline.dag.topological();
    if args.json.json {
        let stages: Vec<_> = order
            .iter()
            .map(|&i| {
                let s = &pipeline.stages[i];
                let needs: Vec<&str> = s
                    .needs
                    .iter()
                    .map(|&n| pipeline.stages[n].name.as_str())
                    .collect();
                json!({"name": s.name, "kind": s.kind, "needs": needs})
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
            let needs: Vec<&str> = s
                .needs
                .iter()
                .map(|&n| pipeline.stages[n].name.as_str())
                .collect();
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
    let pipeline = Pipeline::load(&args.pipeline, &[])?;
    let store = Store::open(&pipeline.store)?;
    let db = store.open_db()?;
    let Some(run) = db.last_run(&pipeline.path.to_string_lossy())? else {
        return Err(Failure::Other(anyhow::anyhow!(
            "no recorded run of {}; run it first with `xtr-pipe run {}`",
            pipeline.path.display(),
            args.pipeline.display()
        )));
    };
    // Records are stored in completion order; show them in the pipeline's order.
    let position = |name: &str| {
        let order = pipeline.dag.topological();
        pipeline
            .stage_index(name)
            .and_then(|i| order.iter().position(|&j| j == i))
            .unwrap_or(usize::MAX)
    };
    let mut records = db.run_stages(run.id)?;
    records.sort_by_key(|r| position(&r.stage));
    let stages: Vec<_> = records
        .into_iter()
        .map(|r| {
            let artifact = matches!(r.status.as_str(), "ran" | "cached")
                .then(|| pipeline.store.join(&r.key).join("out"));
            let metrics: serde_json::Value = r
                .metrics
                .as_deref()
                .and_then(|m| serde_json::from_str(m).ok())
                .unwrap_or_else(|| json!({}));
            json!({"name": r.stage, "kind": r.kind, "status": r.status, "key": r.key, "seconds": r.seconds,
                   "reason": r.reason, "artifact": artifact, "metrics": metrics, "error": r.error})
        })
        .collect();
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
            s["status"].as_str().unwrap_or_default(),
            s["name"].as_str().unwrap_or_default(),
            &s["key"].as_str().unwrap_or_default()[..12.min(s["key"].as_str().map_or(0, str::len))],
            s["seconds"].as_f64().unwrap_or_default()
        );
        if let Some(a) = s["artifact"].as_str() {
            println!("           artifact: {a}");
        }
        if let Some(m) = s["metrics"].as_object().filter(|m| !m.is_empty()) {
            let text: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("           metrics: {}", text.join(" "));
        }
        if let Some(e) = s["error"].as_str() {
            println!("           error: {e}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_gc(args: GcArgs) -> Result<ExitCode, Failure> {
    let root = match (&args.pipeline, &args.store) {
        (Some(p), _) => Pipeline::load(p, &[])?.store,
        (None, Some(s)) => s.clone(),
        (None, None) => PathBuf::from("artifacts"),
    };
    if !root.join("xtr.db").exists() {
        return Err(Failure::Other(anyhow::anyhow!(
            "{} is not an xtr-pipe store (no xtr.db)",
            root.display()
        )));
    }
    let store = Store::open(&root)?;
    let keep = store.open_db()?.referenced_keys(args.keep_last)?;
    let report = store.gc(&keep, args.dry_run)?;
    if args.json.json {
        print_json(
            &json!({"schema": 1, "store": root, "dry_run": args.dry_run, "removed": report.removed,
                           "kept": report.kept, "leftovers": report.leftovers, "bytes": report.bytes}),
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
            "{verb} {} artifacts and {} leftovers ({:.1} MB); kept {}",
            report.removed.len(),
            report.leftovers,
            report.bytes as f64 / 1e6,
            report.kept
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_kinds(args: JsonFlag) -> Result<ExitCode, Failure> {
    let kinds: Vec<_> = crate::stages::KINDS
        .iter()
        .map(|k| json!({"name": k.name, "version": k.version, "summary": k.summary}))
        .collect();
    if args.json {
        print_json(&json!({"schema": 1, "kinds": kinds}))?;
    } else {
        for k in crate::stages::KINDS {
            println!("{:<10} v{}  {}", k.name, k.version, k.summary);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Make `device` MLX's default; `gpu` without one is an error naming the fix.
fn select_device(device: DeviceParam) -> Result<()> {
    let Some(chosen) = device.resolve(crate::mlx::gpu_is_available()?) else {
        anyhow::bail!(
            "--device gpu: this MLX build has no GPU (the mlx-cpu wheel); install mlx-cuda-13 \
             (Linux + NVIDIA) or mlx-metal (macOS) of the same version, or use --device cpu"
        );
    };
    crate::mlx::Device::set_default(&chosen.device())?;
    Ok(())
}

fn cmd_embed(args: EmbedArgs) -> Result<ExitCode, Failure> {
    select_device(args.device)?;
    let texts: Vec<&str> = args.texts.iter().map(String::as_str).collect();
    let out = crate::model::embed(&args.model, &texts, args.max_len)?;
    if args.json.json {
        let items = out
            .iter()
            .zip(&texts)
            .map(|((tokens, vecs), text)| -> Result<serde_json::Value> {
                let dim = vecs.shape().get(1).copied().unwrap_or(0) as usize;
                let flat = vecs.to_vec::<f32>()?;
                let rows: Vec<&[f32]> = if dim == 0 { Vec::new() } else { flat.chunks(dim).collect() };
                Ok(json!({"text": text, "tokens": tokens, "shape": vecs.shape(), "embeddings": rows}))
            })
            .collect::<Result<Vec<_>>>()?;
        print_json(&json!({"schema": 1, "model": args.model, "texts": items}))?;
    } else {
        for ((tokens, vecs), text) in out.iter().zip(&texts) {
            println!(
                "{text:?}: {} tokens x {} dims",
                tokens.len(),
                vecs.shape().get(1).unwrap_or(&0)
            );
            let first = vecs.to_vec::<f32>()?;
            let dim = vecs.shape().get(1).copied().unwrap_or(0) as usize;
            for (i, token) in tokens.iter().enumerate() {
                let head: Vec<String> = first[i * dim..(i * dim + 4.min(dim))]
                    .iter()
                    .map(|v| format!("{v:+.4}"))
                    .collect();
                println!("  {token:<16} [{} ...]", head.join(", "));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_bench_train_step(args: TrainStepArgs) -> Result<ExitCode, Failure> {
    select_device(args.device)?;
    let dtype = if args.dtype == "bf16" {
        crate::mlx::Dtype::Bfloat16
    } else {
        crate::mlx::Dtype::Float32
    };
    let opts = crate::train::bench::BenchOptions {
        dropout: args
            .dropout
            .unwrap_or(args.model == crate::train::bench::T5_BASE_RANDOM),
        model: args.model,
        batch: args.batch,
        qlen: args.qlen,
        dlen: args.dlen,
        steps: args.steps,
        warmup: args.warmup,
        compile: !args.eager,
        dtype,
    };
    if !args.json.json {
        eprintln!(
            "timing {} train steps of {} (batch {}, q {} / d {} tokens) ...",
            opts.steps, opts.model, opts.batch, opts.qlen, opts.dlen
        );
    }
    let report = crate::train::bench::run(&opts)?;
    if args.json.json {
        print_json(&report)?;
    } else {
        println!(
            "{}: {:.2} samples/s ({:.3} s/step, median of {}), on {} {}, loss {:.4}",
            report.model,
            report.samples_per_s,
            report.step_seconds,
            report.steps,
            report.device,
            report.dtype,
            report.final_loss
        );
        if report.compiled {
            println!("  compiled: the step is one graph; --eager gives a per-phase split");
        } else {
            println!(
                "  phases per step: forward+backward {:.3} s, optimizer {:.3} s",
                report.phases.forward_backward, report.phases.optimizer
            );
        }
        println!("  {} trainable params", report.trainable_params);
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_bench_kernels(args: KernelsBenchArgs) -> Result<ExitCode, Failure> {
    crate::mlx::kernels::set_isa(&args.isa)?;
    let r = crate::mlx::kernels::bench::run(args.reps)?;
    if args.json.json {
        print_json(&r)?;
    } else {
        println!(
            "CPU kernels ({}, {} threads) vs MLX (compiled), elements/s, median of {}:",
            r.isa, r.threads, r.reps
        );
        println!(
            "  {:<28} {:>18} {:>10} {:>10} {:>8}",
            "kernel", "shape", "ours M/s", "MLX M/s", "speedup"
        );
        for row in &r.rows {
            println!(
                "  {:<28} {:>18} {:>10.0} {:>10.0} {:>7.1}x",
                row.kernel,
                format!("{:?}", row.shape),
                row.ours / 1e6,
                row.mlx / 1e6,
                row.speedup
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_bench_encode(args: EncodeBenchArgs) -> Result<ExitCode, Failure> {
    select_device(args.device)?;
    let r = crate::model::bench::encode_throughput(
        &args.model,
        args.batch,
        args.len,
        args.steps,
        args.warmup,
    )?;
    if args.json.json {
        print_json(&r)?;
    } else {
        println!(
            "{}: {:.0} tokens/s ({:.3} s per batch of {} x {} tokens, median of {}) on {}",
            r.model, r.tokens_per_s, r.step_seconds, r.batch, r.len, r.steps, r.device
        );
    }
    Ok(ExitCode::SUCCESS)
}
