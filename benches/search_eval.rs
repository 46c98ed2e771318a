//! Index a source tree with a model and evaluate a query set against it in every
//! search mode: build time, embedding throughput (units/s, tokens/s), index size,
//! and per mode P@1, MRR, Recall@5/10, nDCG@10 and latency p50/p95.
//!
//!   cargo bench --bench search_eval -- --root . --queries datasets/xtr-pipe-queries.toml \
//!       (--model DIR | --hash) [--prefix src --path src] [--lang rust] [--k 10] \
//!       [--doc-len 256] [--query-len 32] [--dims 128] [--out eval.json]
//!
//! `--hash` uses the model-free HashEmbedder (bag of code terms) instead of a model.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use xtr_pipe::cancel::CancelToken;
use xtr_pipe::dataset::Lang;
use xtr_pipe::eval::{evaluate, EvalOptions, QuerySet};
use xtr_pipe::search::{
    collect, BuildOptions, CollectOptions, Embedder, HashEmbedder, Index, ModelEmbedder,
    SearchOptions, SourceRoot,
};

fn main() -> Result<()> {
    let mut root = PathBuf::from(".");
    let mut path: Option<String> = None;
    let mut queries = PathBuf::from("datasets/xtr-pipe-queries.toml");
    let mut model: Option<PathBuf> = None;
    let mut hash = false;
    let mut lang = "rust".to_string();
    let mut k = 10;
    let mut doc_len = 256;
    let mut query_len = 32;
    let mut out: Option<PathBuf> = None;
    let mut dims: Option<usize> = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--bench" => {}
            "--hash" => hash = true,
            "--root" => root = value()?.into(),
            "--path" => path = Some(value()?),
            "--queries" => queries = value()?.into(),
            "--model" => model = Some(value()?.into()),
            "--lang" => lang = value()?,
            "--k" => k = value()?.parse()?,
            "--doc-len" => doc_len = value()?.parse()?,
            "--query-len" => query_len = value()?.parse()?,
            "--out" => out = Some(value()?.into()),
            "--dims" => dims = Some(value()?.parse()?),
            other => bail!("unknown flag {other}"),
        }
    }
    xtr_pipe::mlx::quiet_blas_threads();
    let lang: Lang = serde_json::from_value(serde_json::Value::String(lang))?;
    let embedder: Box<dyn Embedder> = match (&model, hash) {
        (Some(dir), false) => Box::new(ModelEmbedder::open(dir, doc_len, query_len)?),
        (None, true) => Box::new(HashEmbedder::new(32)),
        _ => bail!("give one of --model DIR or --hash"),
    };
    let set = QuerySet::load(&queries)?;
    let (scan, prefix) = match &path {
        Some(p) => (root.join(p), p.clone()),
        None => (root.clone(), String::new()),
    };
    let cancel = CancelToken::new();
    let units = collect(
        &[SourceRoot {
            path: scan,
            prefix,
            langs: vec![lang],
            exclude: Vec::new(),
        }],
        &CollectOptions::default(),
        &cancel,
    )?;
    let dir = tempfile::tempdir()?;
    let (index, stats) = Index::build(
        &dir.path().join("index"),
        units,
        embedder.as_ref(),
        &BuildOptions {
            dims,
            ..BuildOptions::default()
        },
        &cancel,
    )?;
    println!(
        "indexed {} units, {} tokens ({} dims) with {}: embedding {:.1}s ({:.1} units/s, {:.0} tokens/s), codec {:.1}s, total {:.1}s, mv.bin {:.2} MiB",
        stats.units,
        stats.tokens,
        index.manifest().dim,
        embedder.name(),
        stats.embed_seconds,
        stats.units as f64 / stats.embed_seconds,
        stats.tokens as f64 / stats.embed_seconds,
        stats.codec_seconds,
        stats.total_seconds,
        index.mv_bytes() as f64 / (1 << 20) as f64
    );
    let opts = EvalOptions {
        search: SearchOptions {
            k,
            ..Default::default()
        },
        ..Default::default()
    };
    let report = evaluate(&index, &set, Some(embedder.as_ref()), &opts, &cancel)?;
    println!("| mode | P@1 | MRR | R@5 | R@10 | nDCG@10 | p50 ms | p95 ms |");
    println!("|---|---|---|---|---|---|---|---|");
    for m in &report.modes {
        let s = m.summary;
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            m.mode.name(),
            s.p_at_1,
            s.mrr,
            s.recall_at_5,
            s.recall_at_10,
            s.ndcg_at_10,
            m.latency.p50_ms,
            m.latency.p95_ms
        );
    }
    if let Some(out) = out {
        std::fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
