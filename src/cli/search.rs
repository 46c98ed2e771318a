//! `index` and `search`: build a code-search index of source trees outside a
//! pipeline, and query one (a directory `index` wrote, or an `index` artifact).
//! Thin: each parses its flags and calls `search`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::builder::RangedU64ValueParser;
use clap::{Args, ValueEnum};
use serde_json::json;

use super::{artifact_dir, model_dir, print_json, select_device, ExitCode, Failure, JsonFlag};
use crate::cancel::CancelToken;
use crate::dataset::Lang;
use crate::search::codec::CodecParams;
use crate::search::mv::SearchParams;
use crate::search::{
    collect, BuildOptions, CollectOptions, Embedder, Index, Mode, ModelEmbedder, SearchOptions,
    SourceRoot,
};
use crate::stages::compute::DeviceParam;

#[derive(Args)]
pub struct IndexArgs {
    /// Source trees (directories or files); result paths are relative to each as given.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// The embedding model: an HF-layout directory, or a `merge` artifact.
    #[arg(long)]
    model: PathBuf,
    /// Where the index goes; an index already there is updated (only changed units are embedded).
    #[arg(long)]
    out: PathBuf,
    /// Languages to read (repeatable) [default: all].
    #[arg(long = "lang", value_parser = parse_lang)]
    langs: Vec<Lang>,
    /// Bits per residual dimension (2 or 4).
    #[arg(long, default_value_t = CodecParams::default().nbits)]
    nbits: u8,
    /// Project the model's token vectors to this many dimensions before
    /// compressing them (fitted to the indexed tokens; queries go through the
    /// same projection): fewer bytes and faster queries, at some cost in
    /// ranking that BENCHMARKS.md measures [default: the model's dimension].
    #[arg(long)]
    dims: Option<usize>,
    /// Keep every token's full vector (f16) beside the compressed codes, so
    /// searches rerank over them, exactly, rather than over the decompressed
    /// codes: 2 bytes per dimension per token more on disk (3.5 times the
    /// compressed index at 128 dimensions), read only for reranked documents.
    #[arg(long)]
    keep_vectors: bool,
    /// Files not to index: a glob relative to each path (repeatable), e.g. 'test/**'.
    #[arg(long)]
    exclude: Vec<String>,
    #[arg(long, value_enum, default_value_t = DeviceParam::Cpu)]
    device: DeviceParam,
    #[command(flatten)]
    json: JsonFlag,
}

#[derive(Args)]
pub struct SearchArgs {
    /// What to look for, as you would say it.
    query: String,
    /// An index directory, or an `index` artifact.
    #[arg(long)]
    index: PathBuf,
    #[arg(long, value_enum, default_value_t = ModeArg::Hybrid)]
    mode: ModeArg,
    /// How `hybrid` fuses BM25 and semantic rankings.
    #[arg(long, value_enum, default_value_t = FusionArg::Rrf)]
    fusion: FusionArg,
    /// The semantic share of weighted fusion (BM25 gets the rest).
    #[arg(long, default_value_t = SearchOptions::default().semantic_weight)]
    weight: f32,
    /// Hits to show.
    #[arg(short, long, default_value_t = SearchOptions::default().k)]
    k: usize,
    /// Centroids probed per query token (more: better recall, slower).
    #[arg(long, default_value_t = SearchParams::default().nprobe, value_parser = at_least_one())]
    nprobe: usize,
    /// Documents kept by approximate MaxSim for the exact rerank to choose from.
    #[arg(long, default_value_t = SearchParams::default().candidates, value_parser = at_least_one())]
    candidates: usize,
    /// Documents scored over all their tokens, decompressed (or over the full
    /// vectors, where the index keeps them): more brings recall closer to
    /// exact MaxSim, at some latency.
    #[arg(long, default_value_t = SearchParams::default().rerank, value_parser = at_least_one())]
    rerank: usize,
    /// Rerank over the decompressed codes even where the index keeps its full
    /// vectors (`index --keep-vectors`), as an index without them does.
    #[arg(long)]
    decompressed: bool,
    #[arg(long, value_enum, default_value_t = DeviceParam::Cpu)]
    device: DeviceParam,
    #[command(flatten)]
    json: JsonFlag,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Hybrid,
    Semantic,
    Bm25,
}

#[derive(Clone, Copy, ValueEnum)]
enum FusionArg {
    Rrf,
    Weighted,
}

/// `--lang`: a language as the dataset kind names it.
fn parse_lang(name: &str) -> Result<Lang, String> {
    Lang::ALL
        .into_iter()
        .find(|l| l.name() == name)
        .ok_or_else(|| {
            let names: Vec<&str> = Lang::ALL.iter().map(|l| l.name()).collect();
            format!("expected one of {}", names.join(", "))
        })
}

/// The index directory `path` names: itself, or an index artifact's `index/`.
fn index_dir(path: &Path) -> Result<PathBuf> {
    artifact_dir(path, "index", "index.json").ok_or_else(|| {
        anyhow::anyhow!(
            "{} is not an index: no index.json in it (nor in index/, as an index artifact has); \
             build one with `xtr-pipe index PATH --model M --out DIR`",
            path.display()
        )
    })
}

pub fn cmd_index(args: IndexArgs) -> Result<ExitCode, Failure> {
    select_device(args.device)?;
    if ![2, 4].contains(&args.nbits) {
        return Err(Failure::Other(anyhow::anyhow!("--nbits must be 2 or 4")));
    }
    if args.dims == Some(0) {
        return Err(Failure::Other(anyhow::anyhow!(
            "--dims must be at least 1 (leave it out to keep the model's dimension)"
        )));
    }
    let langs: Vec<Lang> = if args.langs.is_empty() {
        Lang::ALL.to_vec()
    } else {
        args.langs.clone()
    };
    let several = args.paths.len() > 1;
    let roots: Vec<SourceRoot> = args
        .paths
        .iter()
        .map(|p| {
            if !p.exists() {
                bail!("{} does not exist", p.display());
            }
            Ok(SourceRoot {
                path: p.clone(),
                prefix: if several {
                    format!("{}/", p.display())
                } else {
                    String::new()
                },
                langs: langs.clone(),
                exclude: args.exclude.clone(),
            })
        })
        .collect::<Result<_>>()?;
    let cancel = CancelToken::new();
    signal_hook::flag::register(signal_hook::consts::SIGINT, cancel.flag())
        .context("installing signal handlers")?;
    let units = collect(&roots, &CollectOptions::default(), &cancel)?;
    let model = model_dir(&args.model)?;
    let embedder = ModelEmbedder::open(&model, 256, 32)?;
    let opts = BuildOptions {
        codec: CodecParams {
            nbits: args.nbits,
            ..CodecParams::default()
        },
        embed_batch: 0,
        dims: args.dims,
        keep_vectors: args.keep_vectors,
    };
    if !args.json.json {
        eprintln!(
            "indexing {} units with {} ...",
            units.len(),
            model.display()
        );
    }
    let (index, stats) = Index::update(&args.out, units, &embedder, &opts, &cancel)?;
    if args.json.json {
        print_json(&json!({"schema": 1, "index": args.out, "stats": stats,
                           "mv_bytes": index.mv_bytes(),
                           "vector_bytes": index.vector_bytes()}))?;
    } else {
        println!(
            "{}: {} units ({} embedded, {} reused), {} tokens, {:.1} MB multi-vector{}, in {:.2}s",
            args.out.display(),
            stats.units,
            stats.embedded,
            stats.reused,
            stats.tokens,
            index.mv_bytes() as f64 / 1e6,
            if index.manifest().vectors {
                format!(
                    " + {:.1} MB full vectors",
                    index.vector_bytes() as f64 / 1e6
                )
            } else {
                String::new()
            },
            stats.total_seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A count flag that refuses 0 (clap's usage error, exit 2).
fn at_least_one() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::<usize>::new().range(1..)
}

pub fn cmd_search(args: SearchArgs) -> Result<ExitCode, Failure> {
    select_device(args.device)?;
    if !(0.0..=1.0).contains(&args.weight) {
        return Err(Failure::Other(anyhow::anyhow!(
            "--weight must be in [0, 1]"
        )));
    }
    let index = Index::open(&index_dir(&args.index)?)?;
    let mode = match (args.mode, args.fusion) {
        (ModeArg::Semantic, _) => Mode::Semantic,
        (ModeArg::Bm25, _) => Mode::Bm25,
        (ModeArg::Hybrid, FusionArg::Rrf) => Mode::HybridRrf,
        (ModeArg::Hybrid, FusionArg::Weighted) => Mode::HybridWeighted,
    };
    let embedder = if mode == Mode::Bm25 {
        None
    } else {
        let model = PathBuf::from(&index.manifest().model);
        Some(ModelEmbedder::open(&model, 256, 32).with_context(|| {
            format!(
                "loading the index's model {} (use --mode bm25 to search without it)",
                model.display()
            )
        })?)
    };
    let opts = SearchOptions {
        mode,
        k: args.k,
        semantic_weight: args.weight,
        mv: SearchParams {
            nprobe: args.nprobe,
            candidates: args.candidates,
            rerank: args.rerank,
            use_vectors: !args.decompressed,
            ..SearchParams::default()
        },
        ..SearchOptions::default()
    };
    let hits = index.search(
        &args.query,
        embedder.as_ref().map(|e| e as &dyn Embedder),
        &opts,
    )?;
    if args.json.json {
        print_json(&json!({"schema": 1, "query": args.query, "mode": mode.name(), "hits": hits}))?;
        return Ok(ExitCode::SUCCESS);
    }
    if hits.is_empty() {
        println!("no hits");
    }
    for (rank, hit) in hits.iter().enumerate() {
        println!(
            "{:>2}. {}:{}  {}  ({:.3})",
            rank + 1,
            hit.path,
            hit.line,
            hit.symbol,
            hit.score
        );
        for line in hit.snippet.lines().take(3) {
            println!("      {line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
