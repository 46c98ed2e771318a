//! The index build with the embeddings given, on real code: the units of a
//! source tree embedded once by a model (cached in a shard file, so later runs
//! skip the model), then timed: the build from those embeddings (k-means, the
//! codec, BM25, the files), the index size per million tokens, and queries —
//! each a documented unit's doc comment embedded as a query — on one thread:
//! semantic p50/p95 and recall@10 against exact MaxSim over the uncompressed
//! vectors, and hybrid (BM25 + semantic, RRF) p50/p95 with the query's vectors
//! given.
//!
//!   cargo bench --bench index_real -- --path DIR --lang python --model DIR \
//!       [--cache FILE] [--exclude GLOB]... [--queries 100] [--nbits 4] \
//!       [--nprobe 2,4] [--candidates 256] [--rerank 32,64] [--dims 128] [--repeat 1] \
//!       [--keep-vectors]
//!
//! `--keep-vectors` builds the index with its full vectors (`keep_vectors`):
//! every setting, and hybrid search, is then measured twice, reranked over
//! those vectors and over the decompressed codes.
//!
//! With `--dims`, the index projects the vectors (`index`'s `dims`): recall is
//! then given twice, against exact MaxSim over the projected vectors (what the
//! engine is asked to find) and over the model's own (what projecting costs).
//!
//! Without `--cache` the embeddings are made and dropped. The embedding pass
//! prints its own throughput (units/s, tokens/s) when it runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;
use xtr_pipe::cancel::CancelToken;
use xtr_pipe::dataset::Lang;
use xtr_pipe::eval::{mean_and_margin, Latency};
use xtr_pipe::search::codec::CodecParams;
use xtr_pipe::search::maxsim::{self, TokenVectors};
use xtr_pipe::search::mv::{MvIndex, SearchParams};
use xtr_pipe::search::shard::Shard;
use xtr_pipe::search::{
    collect, embed_units, BuildOptions, CollectOptions, Embedded, Embedder, Index, Mode,
    ModelEmbedder, SearchOptions, SourceRoot,
};

/// `8` or `4,8,16`.
fn list(value: &str) -> Result<Vec<usize>> {
    value
        .split(',')
        .map(|v| v.trim().parse().context("not a number"))
        .collect()
}

/// Serves the queries' precomputed vectors, so a hybrid search is timed with
/// its embedding given; documents were embedded before.
struct Given {
    dim: usize,
    name: String,
    queries: HashMap<String, TokenVectors>,
}

impl Embedder for Given {
    fn dim(&self) -> usize {
        self.dim
    }
    fn name(&self) -> String {
        self.name.clone()
    }
    fn embed_documents(&self, _: &[&str]) -> Result<Vec<TokenVectors>> {
        bail!("the documents' embeddings are given")
    }
    fn embed_query(&self, text: &str) -> Result<TokenVectors> {
        self.queries
            .get(text)
            .cloned()
            .with_context(|| format!("no vectors given for the query {text:?}"))
    }
}

/// The units' embeddings: read from `cache` when it holds this tree's, else
/// made with `model` (and written to `cache`).
fn embeddings(
    units: &[xtr_pipe::search::Unit],
    model: &ModelEmbedder,
    cache: Option<&Path>,
) -> Result<Embedded> {
    if let Some(path) = cache.filter(|p| p.exists()) {
        let shard = Shard::read(path)?;
        ensure!(
            shard.total_units == units.len() && shard.model == model.name(),
            "{} holds {} units of {}, not {} of {}: delete it to embed again",
            path.display(),
            shard.total_units,
            shard.model,
            units.len(),
            model.name()
        );
        println!("embeddings: read from {}", path.display());
        return Ok(shard.embedded);
    }
    let started = Instant::now();
    let all: Vec<usize> = (0..units.len()).collect();
    let embedded = embed_units(
        units,
        &all,
        model,
        &BuildOptions::default(),
        &CancelToken::new(),
    )?;
    let s = started.elapsed().as_secs_f64();
    println!(
        "embedding: {} units, {} tokens in {s:.1}s ({:.1} units/s, {:.0} tokens/s, both cores)",
        units.len(),
        embedded.tokens(),
        units.len() as f64 / s,
        embedded.tokens() as f64 / s
    );
    if let Some(path) = cache {
        Shard {
            rank: 0,
            ranks: 1,
            total_units: units.len(),
            model: model.name(),
            units: all,
            embedded: embedded.clone(),
        }
        .write(path)?;
    }
    Ok(embedded)
}

fn main() -> Result<()> {
    let mut path: Option<PathBuf> = None;
    let mut lang = "python".to_string();
    let mut model: Option<PathBuf> = None;
    let mut cache: Option<PathBuf> = None;
    let mut exclude: Vec<String> = Vec::new();
    let mut queries = 100usize;
    let mut nbits = 4u8;
    let mut nprobe = vec![2, 4];
    let mut candidates = vec![256];
    let mut rerank = vec![32, 64];
    let mut dims: Option<usize> = None;
    let mut repeat = 1usize;
    let mut keep_vectors = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--bench" {
            continue; // cargo bench passes it
        }
        if flag == "--keep-vectors" {
            keep_vectors = true;
            continue;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let bad = || format!("bad value {value:?} for {flag}");
        match flag.as_str() {
            "--path" => path = Some(value.into()),
            "--lang" => lang = value,
            "--model" => model = Some(value.into()),
            "--cache" => cache = Some(value.into()),
            "--exclude" => exclude.push(value),
            "--queries" => queries = value.parse().with_context(bad)?,
            "--nbits" => nbits = value.parse().with_context(bad)?,
            "--nprobe" => nprobe = list(&value).with_context(bad)?,
            "--candidates" => candidates = list(&value).with_context(bad)?,
            "--rerank" => rerank = list(&value).with_context(bad)?,
            "--dims" => dims = Some(value.parse().with_context(bad)?),
            "--repeat" => repeat = value.parse().with_context(bad)?,
            other => bail!("unknown flag {other}"),
        }
    }
    let path = path.context("--path DIR: the source tree to index")?;
    let model_dir = model.context("--model DIR: the model that embeds it")?;
    xtr_pipe::mlx::quiet_blas_threads();
    let lang: Lang = serde_json::from_value(serde_json::Value::String(lang))?;
    let cancel = CancelToken::new();
    let mut opts = CollectOptions::default();
    opts.exclude.extend(exclude);
    let units = collect(
        &[SourceRoot {
            path: path.clone(),
            prefix: String::new(),
            langs: vec![lang],
            exclude: Vec::new(),
        }],
        &opts,
        &cancel,
    )?;
    ensure!(!units.is_empty(), "no units under {}", path.display());
    let model = ModelEmbedder::open(&model_dir, 256, 32)?;
    let embedded = embeddings(&units, &model, cache.as_deref())?;
    let tokens = embedded.tokens();
    println!(
        "corpus: {} units, {tokens} tokens, dim {}",
        units.len(),
        embedded.dim
    );

    // Queries: the doc comments of documented units, evenly spaced.
    let documented: Vec<usize> = (0..units.len())
        .filter(|&i| units[i].doc.split_whitespace().count() >= 4)
        .collect();
    ensure!(!documented.is_empty(), "no documented units to query with");
    let step = (documented.len() / queries.max(1)).max(1);
    let picked: Vec<usize> = documented
        .iter()
        .step_by(step)
        .take(queries)
        .copied()
        .collect();
    let mut texts = Vec::new();
    let mut given = HashMap::new();
    for &i in &picked {
        let text = units[i].doc.clone();
        given.insert(text.clone(), model.embed_query(&text)?);
        texts.push(text);
    }
    let query_vectors: Vec<&TokenVectors> = texts.iter().map(|t| &given[t]).collect();
    let truth: Vec<Vec<u32>> = query_vectors
        .par_iter()
        .map(|q| {
            let docs = (0..embedded.docs()).map(|d| embedded.doc(d));
            maxsim::top_k(q, docs, 10)
                .into_iter()
                .map(|h| h.0)
                .collect()
        })
        .collect();

    let dir = tempfile::tempdir()?;
    let build = BuildOptions {
        codec: CodecParams {
            nbits,
            ..CodecParams::default()
        },
        dims,
        keep_vectors,
        ..BuildOptions::default()
    };
    // The model's vectors stay for the projected ground truth.
    let original = dims.map(|_| embedded.clone());
    let started = Instant::now();
    let (index, stats) = Index::build_embedded(
        &dir.path().join("index"),
        units,
        embedded,
        &model.name(),
        &build,
        &cancel,
    )?;
    let built = started.elapsed().as_secs_f64();
    // Queries and the ground truth in the index's space; `model_truth` is the
    // model's own where the two differ.
    let (query_vectors, truth, model_truth) = match (index.projection(), original) {
        (Some(p), Some(original)) => {
            let projected: Vec<TokenVectors> = query_vectors
                .iter()
                .map(|q| index.query_vectors((*q).clone()))
                .collect::<Result<_>>()?;
            let docs = Embedded {
                dim: p.to_dim(),
                offsets: original.offsets.clone(),
                vectors: p.apply(&original.vectors)?,
            };
            let exact: Vec<Vec<u32>> = projected
                .par_iter()
                .map(|q| {
                    let all = (0..docs.docs()).map(|d| docs.doc(d));
                    maxsim::top_k(q, all, 10).into_iter().map(|h| h.0).collect()
                })
                .collect();
            (projected, exact, Some(truth))
        }
        _ => (query_vectors.into_iter().cloned().collect(), truth, None),
    };
    let mib = index.mv_bytes() as f64 / f64::from(1 << 20);
    println!(
        "build from the embeddings: {built:.1}s (codec {:.1}s), mv.bin {mib:.1} MiB = {:.1} MiB per million tokens, {nbits} bits",
        stats.codec_seconds,
        mib / (tokens as f64 / 1e6)
    );
    if keep_vectors {
        let mib = index.vector_bytes() as f64 / f64::from(1 << 20);
        println!(
            "full vectors: {mib:.1} MiB = {:.1} MiB per million tokens",
            mib / (tokens as f64 / 1e6)
        );
    }

    let mut mv = MvIndex::open(&dir.path().join("index").join("mv.bin"))?;
    if keep_vectors {
        mv.open_vectors(&dir.path().join("index").join("vectors.f16"))?;
    }
    let over = |use_vectors: bool| {
        if use_vectors {
            "full vectors"
        } else {
            "decompressed codes"
        }
    };
    let mut settings = Vec::new();
    for &probe in &nprobe {
        for &cands in &candidates {
            for &re in &rerank {
                for use_vectors in [true, false] {
                    if use_vectors && !keep_vectors {
                        continue;
                    }
                    settings.push(SearchParams {
                        k: 10,
                        nprobe: probe,
                        candidates: cands,
                        rerank: re,
                        use_vectors,
                        exhaustive: false,
                        exhaustive_below: 0,
                    });
                }
            }
        }
    }
    for p in settings {
        for q in query_vectors.iter().take(5) {
            mv.search(q, &p)?; // pages the file in
        }
        let mut times: Vec<Duration> = Vec::new();
        let (mut recalls, mut model_recalls) = (Vec::new(), Vec::new());
        for _ in 1..repeat {
            for q in &query_vectors {
                let s = Instant::now();
                mv.search(q, &p)?;
                times.push(s.elapsed());
            }
        }
        for (i, (q, t)) in query_vectors.iter().zip(&truth).enumerate() {
            let s = Instant::now();
            let hits = mv.search(q, &p)?;
            times.push(s.elapsed());
            let recall = |t: &[u32]| hits.iter().filter(|h| t.contains(&h.0)).count() as f64 / 10.0;
            recalls.push(recall(t));
            if let Some(m) = &model_truth {
                model_recalls.push(recall(&m[i]));
            }
        }
        let l = Latency::of(&times);
        let (recall, margin) = mean_and_margin(&recalls);
        let against_model = match &model_truth {
            Some(_) => {
                let (r, m) = mean_and_margin(&model_recalls);
                format!(
                    ", vs exact over the model's {} dimensions {r:.3} (±{m:.3})",
                    model.dim()
                )
            }
            None => String::new(),
        };
        println!(
            "semantic nprobe {} candidates {} rerank {} over {}: p50 {:.2} ms, p95 {:.2} ms, recall@10 vs exact {recall:.3} (±{margin:.3} at 95% over {} queries){against_model}",
            p.nprobe,
            p.candidates,
            p.rerank,
            over(p.use_vectors),
            l.p50_ms,
            l.p95_ms,
            recalls.len()
        );
    }

    let given = Given {
        dim: model.dim(),
        name: model.name(),
        queries: given,
    };
    // The engine's default settings; where the index keeps its vectors, also
    // reranked over the decompressed codes.
    for use_vectors in [true, false] {
        if use_vectors && !keep_vectors {
            continue;
        }
        let search = SearchOptions {
            mode: Mode::HybridRrf,
            mv: SearchParams {
                use_vectors,
                ..SearchParams::default()
            },
            ..SearchOptions::default()
        };
        for text in texts.iter().take(5) {
            index.search(text, Some(&given), &search)?;
        }
        let mut times: Vec<Duration> = Vec::new();
        for _ in 0..repeat.max(1) {
            for text in &texts {
                let s = Instant::now();
                index.search(text, Some(&given), &search)?;
                times.push(s.elapsed());
            }
        }
        let l = Latency::of(&times);
        println!(
            "hybrid (rrf, default engine settings, over {}, query vectors given): p50 {:.2} ms, p95 {:.2} ms",
            over(use_vectors),
            l.p50_ms,
            l.p95_ms
        );
    }
    Ok(())
}
