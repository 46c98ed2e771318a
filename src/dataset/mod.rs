//! Code-search datasets from source trees: (doc comment, code) pairs extracted per
//! language, filtered, deduplicated, capped and split by file, written as Parquet
//! with a `stats.json`. Same sources and params give byte-identical outputs.

pub mod clean;
pub mod extract;
pub mod lang;
pub mod lean;
pub mod sources;
pub mod stats;
pub mod writer;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cancel::CancelToken;
pub use lang::Lang;
use sources::{FileEntry, Filter, Root, WalkSkips};
use stats::{Filtered, Stats};

/// One source of files.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub lang: Lang,
    /// A directory, a file, or a glob; `${VAR}`s are expanded (see [`sources`]).
    pub path: String,
    /// Globs over paths relative to each root; empty: the language's extensions.
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    /// A source that may be absent on some machines (a toolchain's sources, say):
    /// when its path resolves to nothing it is skipped with a note in the stage's
    /// log and `metrics.json`, instead of stopping the run.
    #[serde(default)]
    pub optional: bool,
}

/// How files are grouped so that no group spans two splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    /// Each file is a group.
    File,
    /// Each resolved root (a crate, a package: one glob match) is a group.
    Root,
}

/// Split fractions (normalised by their sum).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitFractions {
    pub train: f64,
    pub eval: f64,
    pub test: f64,
}

impl Default for SplitFractions {
    fn default() -> Self {
        SplitFractions {
            train: 0.8,
            eval: 0.1,
            test: 0.1,
        }
    }
}

fn default_seed() -> u64 {
    0
}
fn yes() -> bool {
    true
}
fn default_min_query() -> usize {
    10
}
fn default_max_query() -> usize {
    1000
}
fn default_min_lines() -> usize {
    2
}
fn default_max_lines() -> usize {
    200
}
fn default_max_file_bytes() -> u64 {
    1 << 20
}
fn default_group_by() -> GroupBy {
    GroupBy::File
}

/// The dataset stage's params, defaults filled in.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub sources: Vec<SourceSpec>,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default)]
    pub split: SplitFractions,
    #[serde(default = "default_group_by")]
    pub group_by: GroupBy,
    /// Cut the doc to its first paragraph (else: every paragraph before a section).
    #[serde(default = "yes")]
    pub first_paragraph: bool,
    #[serde(default = "default_min_query")]
    pub min_query_chars: usize,
    #[serde(default = "default_max_query")]
    pub max_query_chars: usize,
    #[serde(default = "default_min_lines")]
    pub min_code_lines: usize,
    #[serde(default = "default_max_lines")]
    pub max_code_lines: usize,
    /// Larger files are skipped (and counted).
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    #[serde(default = "yes")]
    pub drop_tests: bool,
    #[serde(default = "yes")]
    pub drop_generated: bool,
    /// Drop a pair whose whitespace-normalised code was seen before.
    #[serde(default = "yes")]
    pub dedupe_code: bool,
    /// Drop a pair whose (query, code) was seen before.
    #[serde(default = "yes")]
    pub dedupe_pairs: bool,
    /// At most this many pairs per language (a seeded sample); absent: no cap.
    #[serde(default)]
    pub caps: BTreeMap<Lang, usize>,
}

/// One output row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub lang: Lang,
    pub root: String,
    pub path: String,
    pub symbol: String,
    pub item: String,
    pub start_line: u32,
    pub end_line: u32,
    pub query: String,
    pub code: String,
    pub split: &'static str,
}

/// What became of one file once filtered.
enum Admitted {
    Skipped(&'static str),
    NoDocs,
    Parsed {
        syntax_errors: bool,
        pairs: Vec<Pair>,
        filtered: Filtered,
    },
}

/// What became of one file.
enum FileOutcome {
    Skipped(&'static str),
    /// Read, but it holds no doc comment marker: not parsed.
    NoDocs,
    Parsed(extract::FileItems),
}

struct Job<'a> {
    lang: Lang,
    root: &'a str,
    file: FileEntry,
}

/// The pairs of a built dataset, in its output directory.
pub const PAIRS_FILE: &str = "pairs.parquet";

/// Build the dataset into `out_dir` ([`PAIRS_FILE`], `stats.json`).
pub fn build(
    params: &Params,
    roots: &[Vec<Root>],
    out_dir: &Path,
    cancel: &CancelToken,
    log: &mut dyn std::io::Write,
) -> Result<Stats> {
    let mut stats = Stats::default();
    let mut skips = WalkSkips::default();
    let mut jobs = Vec::new();
    for (spec, roots) in params.sources.iter().zip(roots) {
        let filter = Filter::new(spec.lang, &spec.include, &spec.exclude)
            .with_context(|| format!("source `{}`", spec.path))?;
        for root in roots {
            for file in sources::walk(&root.path, &filter, &mut skips)? {
                jobs.push(Job {
                    lang: spec.lang,
                    root: &root.display,
                    file,
                });
            }
        }
    }
    stats.files.symlinked_dirs = skips.symlinked_dirs;
    stats.files.broken_links = skips.broken_links;
    stats.files.unreadable = skips.unreadable;
    writeln!(log, "{} files to read", jobs.len())?;

    let mut compiled = BTreeMap::new();
    for lang in params.sources.iter().map(|s| s.lang) {
        if let (std::collections::btree_map::Entry::Vacant(e), Some(g)) =
            (compiled.entry(lang), lang::grammar(lang))
        {
            e.insert(extract::Compiled::new(g)?);
        }
    }
    let tsx = if params.sources.iter().any(|s| s.lang == Lang::Typescript) {
        Some(extract::Compiled::new(lang::tsx())?)
    } else {
        None
    };

    let bar = crate::progress::bar("dataset", jobs.len() as u64, "files");
    let started = std::time::Instant::now();
    let outcomes: Vec<(u64, Admitted)> = jobs
        .par_iter()
        .map(|job| {
            cancel.check()?;
            let grammar = if job.file.rel.ends_with(".tsx") {
                tsx.as_ref()
            } else {
                compiled.get(&job.lang)
            };
            let (bytes, outcome) = read_and_extract(params, job, grammar);
            // Filters run here too, in parallel; only their counts are merged below.
            let outcome = match outcome {
                FileOutcome::Parsed(items) => {
                    let mut filtered = Filtered::default();
                    let syntax_errors = items.syntax_errors;
                    let pairs = items
                        .items
                        .into_iter()
                        .filter_map(|item| {
                            filtered.documented_items += 1;
                            admit(params, job, item, &mut filtered)
                        })
                        .collect();
                    Admitted::Parsed {
                        syntax_errors,
                        pairs,
                        filtered,
                    }
                }
                FileOutcome::Skipped(why) => Admitted::Skipped(why),
                FileOutcome::NoDocs => Admitted::NoDocs,
            };
            bar.inc(1);
            Ok((bytes, outcome))
        })
        .collect::<Result<_>>()?;
    bar.finish_and_clear();
    let extracted_at = std::time::Instant::now();

    let mut candidates = Vec::new();
    for (job, (bytes, outcome)) in jobs.iter().zip(outcomes) {
        stats.files.seen += 1;
        let (syntax_errors, pairs, filtered) = match outcome {
            Admitted::Skipped(why) => {
                stats.files.count_skip(why);
                continue;
            }
            Admitted::Parsed {
                syntax_errors,
                pairs,
                filtered,
            } => (syntax_errors, pairs, filtered),
            Admitted::NoDocs => {
                stats.files.without_doc_comments += 1;
                (false, Vec::new(), Filtered::default())
            }
        };
        stats.files.parsed += 1;
        stats.bytes += bytes;
        *stats.bytes_per_language.entry(job.lang).or_default() += bytes;
        if syntax_errors {
            stats.files.with_syntax_errors += 1;
        }
        stats.filtered.add(&filtered);
        candidates.extend(pairs);
    }

    let mut seen_code = HashSet::new();
    let mut seen_pair = HashSet::new();
    let mut kept = Vec::with_capacity(candidates.len());
    for pair in candidates {
        let norm: String = pair.code.split_whitespace().collect::<Vec<_>>().join(" ");
        let code_hash = blake3::hash(norm.as_bytes());
        let mut pair_hasher = blake3::Hasher::new();
        pair_hasher.update(pair.query.as_bytes());
        pair_hasher.update(&[0]);
        pair_hasher.update(pair.code.as_bytes());
        let pair_hash = pair_hasher.finalize();
        if params.dedupe_pairs && !seen_pair.insert(pair_hash) {
            stats.deduped.pairs += 1;
            continue;
        }
        if params.dedupe_code && !seen_code.insert(code_hash) {
            stats.deduped.code += 1;
            continue;
        }
        kept.push(pair);
    }

    let mut pairs = apply_caps(params, kept, &mut stats);
    for pair in &mut pairs {
        pair.split = split_of(params, pair);
    }
    pairs.sort_by(|a, b| {
        (a.lang, &a.root, &a.path, a.start_line, &a.symbol).cmp(&(
            b.lang,
            &b.root,
            &b.path,
            b.start_line,
            &b.symbol,
        ))
    });
    stats.record_pairs(&pairs);
    let written_at = std::time::Instant::now();
    writer::write_parquet(&pairs, &out_dir.join(PAIRS_FILE))?;
    writeln!(
        log,
        "timings: read+parse+filter {:.1}s, dedupe+split {:.1}s, parquet {:.1}s",
        (extracted_at - started).as_secs_f64(),
        (written_at - extracted_at).as_secs_f64(),
        written_at.elapsed().as_secs_f64()
    )?;
    let json = serde_json::to_string_pretty(&stats).context("encoding stats.json")?;
    std::fs::write(out_dir.join("stats.json"), json + "\n").context("writing stats.json")?;
    writeln!(
        log,
        "{} pairs from {} files ({} bytes)",
        pairs.len(),
        stats.files.parsed,
        stats.bytes
    )?;
    Ok(stats)
}

/// Files named or placed like tests (`tests/`, `test_x.py`, `FooTest.java`, ...).
pub fn is_test_path(rel: &str) -> bool {
    let mut parts: Vec<&str> = rel.split('/').collect();
    let file = parts.pop().unwrap_or_default();
    if parts
        .iter()
        .any(|p| matches!(*p, "tests" | "test" | "testing" | "__tests__" | "benches"))
    {
        return true;
    }
    let stem = file.split('.').next().unwrap_or(file);
    stem.starts_with("test_")
        || stem.ends_with("_test")
        || stem.ends_with("_tests")
        || stem.ends_with("Test")
        || stem.ends_with("Tests")
        || stem == "tests"
        || stem == "conftest"
        || file.contains(".test.")
        || file.contains(".spec.")
}

/// A generated-code marker in the first 2 KiB.
pub fn is_generated(text: &str) -> bool {
    let mut end = text.len().min(2048);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let head = text[..end].to_ascii_lowercase();
    [
        "@generated",
        "do not edit",
        "code generated",
        "auto-generated",
        "autogenerated",
        "automatically generated",
        "this file is generated",
    ]
    .iter()
    .any(|m| head.contains(m))
}

fn read_and_extract(
    params: &Params,
    job: &Job<'_>,
    grammar: Option<&extract::Compiled>,
) -> (u64, FileOutcome) {
    if job.file.size > params.max_file_bytes {
        return (0, FileOutcome::Skipped("too_large"));
    }
    if params.drop_tests && is_test_path(&job.file.rel) {
        return (0, FileOutcome::Skipped("test_files"));
    }
    let Ok(bytes) = std::fs::read(&job.file.path) else {
        return (0, FileOutcome::Skipped("unreadable"));
    };
    if bytes.len() as u64 > params.max_file_bytes {
        return (0, FileOutcome::Skipped("too_large"));
    }
    if bytes[..bytes.len().min(8192)].contains(&0) {
        return (0, FileOutcome::Skipped("binary"));
    }
    let Ok(text) = String::from_utf8(bytes) else {
        return (0, FileOutcome::Skipped("invalid_utf8"));
    };
    if params.drop_generated && is_generated(&text) {
        return (0, FileOutcome::Skipped("generated"));
    }
    let size = text.len() as u64;
    let stem = job
        .file
        .rel
        .rsplit('/')
        .next()
        .and_then(|f| f.split('.').next())
        .unwrap_or_default();
    if let Some(markers) = job.lang.doc_markers() {
        if !markers.iter().any(|m| text.contains(m)) {
            // No doc comment, so no pair: skip the parse.
            return (size, FileOutcome::NoDocs);
        }
    }
    let items = match (job.lang, grammar) {
        (Lang::Lean, _) => lean::extract(&text),
        (_, Some(g)) => match extract::extract(job.lang, g, &text, stem) {
            Ok(items) => items,
            Err(_) => return (size, FileOutcome::Skipped("parse_failed")),
        },
        (_, None) => return (size, FileOutcome::Skipped("parse_failed")),
    };
    (size, FileOutcome::Parsed(items))
}

/// Apply the per-item filters; `None` when one drops it (counted).
fn admit(params: &Params, job: &Job<'_>, item: extract::Item, f: &mut Filtered) -> Option<Pair> {
    if params.drop_tests && item.test {
        f.test_items += 1;
        return None;
    }
    if item.syntax_error {
        f.syntax_error_items += 1;
        return None;
    }
    let query = clean::query(&item.doc, params.first_paragraph);
    let chars = query.chars().count();
    if chars < params.min_query_chars {
        f.query_too_short += 1;
        return None;
    }
    if chars > params.max_query_chars {
        f.query_too_long += 1;
        return None;
    }
    let lines = item.code.lines().count();
    if lines < params.min_code_lines {
        f.code_too_short += 1;
        return None;
    }
    if lines > params.max_code_lines {
        f.code_too_long += 1;
        return None;
    }
    Some(Pair {
        lang: job.lang,
        root: job.root.to_string(),
        path: job.file.rel.clone(),
        symbol: item.symbol,
        item: item.item,
        start_line: item.start_line,
        end_line: item.end_line,
        query,
        code: item.code,
        split: "",
    })
}

/// A seeded number in [0, 1) from some text: stable across runs and machines.
fn unit(seed: u64, parts: &[&str]) -> f64 {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    for p in parts {
        h.update(p.as_bytes());
        h.update(&[0]);
    }
    let bytes = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes.as_bytes()[..8]);
    (u64::from_le_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

fn split_of(params: &Params, pair: &Pair) -> &'static str {
    let group: Vec<&str> = match params.group_by {
        GroupBy::File => vec![&pair.root, &pair.path],
        GroupBy::Root => vec![&pair.root],
    };
    let s = &params.split;
    let total = s.train + s.eval + s.test;
    let u = unit(params.seed, &group) * total;
    if u < s.train {
        "train"
    } else if u < s.train + s.eval {
        "eval"
    } else {
        "test"
    }
}

/// Keep at most `caps[lang]` pairs of each language: the ones with the smallest
/// seeded hash, so the sample is stable and spread over all files.
fn apply_caps(params: &Params, pairs: Vec<Pair>, stats: &mut Stats) -> Vec<Pair> {
    if params.caps.is_empty() {
        return pairs;
    }
    let mut by_lang: BTreeMap<Lang, Vec<Pair>> = BTreeMap::new();
    for p in pairs {
        by_lang.entry(p.lang).or_default().push(p);
    }
    let mut out = Vec::new();
    for (lang, mut group) in by_lang {
        if let Some(&cap) = params.caps.get(&lang) {
            if group.len() > cap {
                let line = |p: &Pair| p.start_line.to_string();
                group.sort_by(|a, b| {
                    let ka = unit(params.seed, &[&a.root, &a.path, &line(a), &a.symbol]);
                    let kb = unit(params.seed, &[&b.root, &b.path, &line(b), &b.symbol]);
                    ka.total_cmp(&kb)
                });
                *stats.capped.entry(lang).or_default() += (group.len() - cap) as u64;
                group.truncate(cap);
            }
        }
        out.extend(group);
    }
    out
}

#[cfg(test)]
mod tests;
