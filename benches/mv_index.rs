//! Benchmark of the compressed multi-vector index on synthetic clustered
//! embeddings (`xtr_pipe::search::synth`): build time (k-means + encoding +
//! writing), size per million tokens, query latency p50/p95 (one thread) and
//! recall@10 against exact MaxSim over the uncompressed vectors.
//!
//!   cargo bench --bench mv_index -- [--units 10000] [--dim 128] [--queries 100]
//!       [--qtokens 32] [--nbits 4] [--centroids K] [--nprobe 4] [--candidates 256] [--rerank 32]
//!       [--keep-vectors] [--topics 2048] [--spread 0.6] [--noise 0.3]
//!       [--seed 0] [--exhaustive] [--index PATH]
//!
//! `--index PATH` keeps the built index there, and a later run with the same
//! corpus flags opens it instead of building again (to try search settings).
//! `--keep-vectors` also writes the full vectors (`PATH.f16`, f16) beside it,
//! and every setting is then measured twice: reranked over those vectors, and
//! over the decompressed codes.
//!
//! `--nprobe`, `--candidates` and `--rerank` take comma lists: every
//! combination is measured on the same index.
//!
//! Documents have 20..=166 tokens (93 on average, as 10,000 Python stdlib units
//! embedded with all-MiniLM-L6-v2 had). Ground truth uses every core (rayon).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use xtr_pipe::cancel::CancelToken;
use xtr_pipe::eval::{mean_and_margin, Latency};
use xtr_pipe::search::codec::{Codec, CodecParams};
use xtr_pipe::search::maxsim;
use xtr_pipe::search::mv::{self, EncodedDocs, MvIndex, SearchParams};
use xtr_pipe::search::{synth, vectors};

struct Args {
    units: usize,
    dim: usize,
    queries: usize,
    qtokens: usize,
    nbits: u8,
    centroids: Option<usize>,
    nprobe: Vec<usize>,
    candidates: Vec<usize>,
    rerank: Vec<usize>,
    keep_vectors: bool,
    exhaustive: bool,
    topics: usize,
    spread: f32,
    noise: f32,
    seed: u64,
    index: Option<std::path::PathBuf>,
}

/// `8` or `4,8,16`.
fn list(value: &str) -> Result<Vec<usize>> {
    value
        .split(',')
        .map(|v| v.trim().parse().context("not a number"))
        .collect()
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        units: 10_000,
        dim: 128,
        queries: 100,
        qtokens: 32,
        nbits: 4,
        centroids: None,
        nprobe: vec![4],
        candidates: vec![256],
        rerank: vec![32],
        keep_vectors: false,
        exhaustive: false,
        topics: 2048,
        spread: 0.6,
        noise: 0.3,
        seed: 0,
        index: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--bench" {
            continue; // cargo bench passes it
        }
        if flag == "--exhaustive" {
            a.exhaustive = true;
            continue;
        }
        if flag == "--keep-vectors" {
            a.keep_vectors = true;
            continue;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let bad = || format!("bad value {value:?} for {flag}");
        match flag.as_str() {
            "--units" => a.units = value.parse().with_context(bad)?,
            "--dim" => a.dim = value.parse().with_context(bad)?,
            "--queries" => a.queries = value.parse().with_context(bad)?,
            "--qtokens" => a.qtokens = value.parse().with_context(bad)?,
            "--nbits" => a.nbits = value.parse().with_context(bad)?,
            "--centroids" => a.centroids = Some(value.parse().with_context(bad)?),
            "--nprobe" => a.nprobe = list(&value).with_context(bad)?,
            "--candidates" => a.candidates = list(&value).with_context(bad)?,
            "--rerank" => a.rerank = list(&value).with_context(bad)?,
            "--topics" => a.topics = value.parse().with_context(bad)?,
            "--spread" => a.spread = value.parse().with_context(bad)?,
            "--noise" => a.noise = value.parse().with_context(bad)?,
            "--seed" => a.seed = value.parse().with_context(bad)?,
            "--index" => a.index = Some(value.into()),
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

fn main() -> Result<()> {
    let a = parse_args()?;
    xtr_pipe::mlx::quiet_blas_threads();
    let started = Instant::now();
    let mut offsets = vec![0usize];
    let mut flat: Vec<f32> = Vec::new();
    for d in synth::corpus(a.units, 20, 166, a.dim, a.topics, a.spread, a.seed) {
        flat.extend_from_slice(&d);
        offsets.push(flat.len() / a.dim);
    }
    let tokens = flat.len() / a.dim;
    println!(
        "corpus: {} units, {} tokens, dim {}, generated in {:.1}s",
        a.units,
        tokens,
        a.dim,
        started.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir()?;
    let path = a.index.clone().unwrap_or_else(|| dir.path().join("mv.bin"));
    let vectors_path = path.with_extension("f16");
    if path.is_file() {
        println!("opening the index built before at {}", path.display());
        let mut index = MvIndex::open(&path)?;
        if a.keep_vectors {
            index.open_vectors(&vectors_path)?;
        }
        return search(&a, &flat, &offsets, index);
    }
    let build = Instant::now();
    let params = CodecParams {
        nbits: a.nbits,
        centroids: a.centroids,
        seed: a.seed,
        ..Default::default()
    };
    let codec = Codec::train(&flat, a.dim, &params, &CancelToken::new())?;
    let trained = build.elapsed();
    let encoded = codec.encode(&flat)?;
    let docs_encoded = EncodedDocs {
        offsets: offsets.clone(),
        tokens: encoded,
    };
    mv::write(&path, &codec, &docs_encoded)?;
    let built = build.elapsed();
    let mut index = MvIndex::open(&path)?;
    if a.keep_vectors {
        let started = Instant::now();
        vectors::write(&vectors_path, a.dim, &flat)?;
        index.open_vectors(&vectors_path)?;
        println!(
            "full vectors: written in {:.1}s, {:.1} MiB, {:.1} MiB per million tokens",
            started.elapsed().as_secs_f64(),
            index.vector_bytes() as f64 / (1 << 20) as f64,
            index.vector_bytes() as f64 / (1 << 20) as f64 / (tokens as f64 / 1e6)
        );
    }
    let mib_per_m = index.file_bytes() as f64 / (1 << 20) as f64 / (tokens as f64 / 1e6);
    println!(
        "build: {:.1}s (k-means {:.1}s, {} centroids, {} bits), {:.1} MiB, {:.1} MiB per million tokens",
        built.as_secs_f64(),
        trained.as_secs_f64(),
        codec.n_centroids(),
        a.nbits,
        index.file_bytes() as f64 / (1 << 20) as f64,
        mib_per_m
    );
    search(&a, &flat, &offsets, index)
}

/// Ground truth by exact MaxSim, then every search setting's latency and recall.
fn search(a: &Args, flat: &[f32], offsets: &[usize], index: MvIndex) -> Result<()> {
    let doc = |i: usize| &flat[offsets[i] * a.dim..offsets[i + 1] * a.dim];
    let sample: Vec<Vec<f32>> = (0..a.units.min(2000)).map(|i| doc(i).to_vec()).collect();
    let queries = synth::queries(&sample, a.dim, a.queries, a.qtokens, a.noise, a.seed);
    let truth_started = Instant::now();
    let truth: Vec<Vec<u32>> = queries
        .par_iter()
        .map(|(_, q)| {
            maxsim::top_k(q, (0..a.units).map(doc), 10)
                .into_iter()
                .map(|h| h.0)
                .collect()
        })
        .collect();
    println!(
        "exact MaxSim ground truth: {:.1}s for {} queries (all cores)",
        truth_started.elapsed().as_secs_f64(),
        queries.len()
    );

    let mut settings = Vec::new();
    for &nprobe in &a.nprobe {
        for &candidates in &a.candidates {
            for &rerank in &a.rerank {
                for use_vectors in [true, false] {
                    if use_vectors && !a.keep_vectors {
                        continue;
                    }
                    settings.push(SearchParams {
                        k: 10,
                        nprobe,
                        candidates,
                        rerank,
                        use_vectors,
                        exhaustive: false,
                        exhaustive_below: 0,
                    });
                }
            }
        }
    }
    if a.exhaustive {
        settings.push(SearchParams {
            exhaustive: true,
            ..settings[0]
        });
    }
    for p in settings {
        // A warm-up pass pages the file in.
        for (_, q) in queries.iter().take(5) {
            index.search(q, &p)?;
        }
        let mut times: Vec<Duration> = Vec::new();
        let mut recalls: Vec<f64> = Vec::new();
        for ((_, q), t) in queries.iter().zip(&truth) {
            let s = Instant::now();
            let hits = index.search(q, &p)?;
            times.push(s.elapsed());
            let found = hits.iter().filter(|h| t.contains(&h.0)).count();
            recalls.push(found as f64 / 10.0);
        }
        let (recall, margin) = mean_and_margin(&recalls);
        let l = Latency::of(&times);
        let over = if p.use_vectors && index.has_vectors() {
            "full vectors"
        } else {
            "decompressed codes"
        };
        let label = if p.exhaustive {
            format!("exhaustive (every document over its {over})")
        } else {
            format!(
                "nprobe {} candidates {} rerank {} over {over}",
                p.nprobe, p.candidates, p.rerank
            )
        };
        println!(
            "{label}: p50 {:.2} ms, p95 {:.2} ms, recall@10 vs exact {recall:.3} (±{margin:.3} at 95% over {} queries)",
            l.p50_ms,
            l.p95_ms,
            recalls.len()
        );
    }
    Ok(())
}
