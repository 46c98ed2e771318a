//! An index directory of code units searched three ways: BM25, multi-vector
//! (semantic) and their fusion.
//!
//! A directory holds `index.json` (format, model, dimension, counts),
//! `units.json` (every [`Unit`]), `bm25/` (tantivy), `mv.bin` (the compressed
//! token embeddings, document `i` being unit `i`) and, where the vectors were
//! projected to fewer dimensions, `projection.safetensors` (queries go through
//! the same matrix), and, where the build keeps them, `vectors.f16` (the
//! full vectors, for an exact rerank). It is built in a sibling
//! temporary directory and swapped in, so a failed build leaves the old index.
//! [`Index::update`] re-embeds only units whose content hash is new, reusing the
//! stored codes of the others under the existing codec (PLAID-style appends).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::bm25::{Bm25Doc, Bm25Index};
use super::codec::{Codec, CodecParams};
use super::embed::Embedder;
use super::fusion;
use super::maxsim::TokenVectors;
use super::mv::{self, EncodedDocs, MvIndex, SearchParams};
use super::project::Projection;
use super::units::Unit;
use crate::cancel::CancelToken;

/// The on-disk format this build writes and reads.
pub const FORMAT: u32 = 1;

/// What `index.json` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// The embedder's name.
    pub model: String,
    /// The stored vectors' dimension (the model's, or the projection's).
    pub dim: usize,
    /// The model's dimension where its vectors were projected to `dim`
    /// (`projection.safetensors` holds the matrix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projected_from: Option<usize>,
    pub units: usize,
    pub tokens: usize,
    pub nbits: u8,
    pub centroids: usize,
    /// Whether `vectors.f16` holds the full vectors (absent: false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub vectors: bool,
}

/// The stored full vectors in an index directory.
const VECTORS_FILE: &str = "vectors.f16";

/// How an index is built.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    pub codec: CodecParams,
    /// Texts per embedder call (0: 32).
    pub embed_batch: usize,
    /// Project the model's vectors to this many dimensions before they are
    /// compressed (fitted to the indexed tokens, [`Projection`]); `None`, or
    /// the model's own dimension, keeps them as they are.
    pub dims: Option<usize>,
    /// Keep the full vectors (f16) beside the compressed ones, so searches
    /// rerank over them, exactly ([`SearchParams::use_vectors`]): 2 bytes per
    /// dimension per token more on disk.
    pub keep_vectors: bool,
}

/// The projection file in an index directory.
const PROJECTION_FILE: &str = "projection.safetensors";

/// What a build or an update did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BuildStats {
    pub units: usize,
    pub tokens: usize,
    /// Units whose text went through the embedder.
    pub embedded: usize,
    /// Units whose stored codes were kept.
    pub reused: usize,
    /// The codec was trained anew (a first build, or the model changed).
    pub retrained: bool,
    pub embed_seconds: f64,
    pub codec_seconds: f64,
    pub total_seconds: f64,
}

/// How results are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Semantic,
    Bm25,
    /// Reciprocal rank fusion (k = 60) of BM25 and semantic.
    HybridRrf,
    /// Weighted sum of min-max normalised BM25 and semantic scores.
    HybridWeighted,
}

impl Mode {
    pub const ALL: [Mode; 4] = [
        Mode::Semantic,
        Mode::Bm25,
        Mode::HybridRrf,
        Mode::HybridWeighted,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Semantic => "semantic",
            Mode::Bm25 => "bm25",
            Mode::HybridRrf => "hybrid_rrf",
            Mode::HybridWeighted => "hybrid_weighted",
        }
    }

    fn needs_model(self) -> bool {
        self != Mode::Bm25
    }
}

impl FromStr for Mode {
    type Err = anyhow::Error;

    /// `semantic`, `bm25`, `hybrid` (= `hybrid_rrf`), `hybrid_rrf`, `hybrid_weighted`
    /// (`-` and `_` alike).
    fn from_str(s: &str) -> Result<Mode> {
        Ok(match s.replace('-', "_").as_str() {
            "semantic" => Mode::Semantic,
            "bm25" => Mode::Bm25,
            "hybrid" | "hybrid_rrf" | "rrf" => Mode::HybridRrf,
            "hybrid_weighted" | "weighted" => Mode::HybridWeighted,
            other => bail!(
                "unknown search mode `{other}`: semantic, bm25, hybrid, hybrid_rrf or hybrid_weighted"
            ),
        })
    }
}

/// How one search runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchOptions {
    pub mode: Mode,
    pub k: usize,
    /// The multi-vector engine's knobs (its `k` is set from the depth needed).
    pub mv: SearchParams,
    /// Hits each retriever contributes to a fusion.
    pub fusion_depth: usize,
    /// The semantic share in weighted fusion (BM25 gets 1 - this).
    pub semantic_weight: f32,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            mode: Mode::HybridRrf,
            k: 10,
            mv: SearchParams::default(),
            fusion_depth: 50,
            semantic_weight: 0.5,
        }
    }
}

/// One result, as `xtr-pipe search --json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    /// Relative to the indexed root.
    pub path: String,
    pub symbol: String,
    /// First line of the unit's code (1-based).
    pub line: u32,
    pub end_line: u32,
    pub kind: String,
    pub score: f32,
    /// The first lines of the code.
    pub snippet: String,
    /// The unit's position in the index.
    pub unit: u32,
}

impl Hit {
    /// `path::symbol`, as query sets name targets.
    pub fn key(&self) -> String {
        format!("{}::{}", self.path, self.symbol)
    }
}

/// An open index.
pub struct Index {
    dir: PathBuf,
    manifest: Manifest,
    units: Vec<Unit>,
    bm25: Bm25Index,
    mv: MvIndex,
    projection: Option<Projection>,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is corrupt", path.display()))
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string(value).context("encoding JSON")?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

impl Index {
    /// Builds an index of `units` into `dir` (replacing any index there).
    pub fn build(
        dir: &Path,
        units: Vec<Unit>,
        embedder: &dyn Embedder,
        opts: &BuildOptions,
        cancel: &CancelToken,
    ) -> Result<(Index, BuildStats)> {
        let started = Instant::now();
        // No units embed to nothing, and build_embedded refuses them.
        let all: Vec<usize> = (0..units.len()).collect();
        let embedded = embed_units(&units, &all, embedder, opts, cancel)?;
        let embed_seconds = started.elapsed().as_secs_f64();
        let (index, stats) =
            Index::build_embedded(dir, units, embedded, &embedder.name(), opts, cancel)?;
        let stats = BuildStats {
            embed_seconds,
            total_seconds: started.elapsed().as_secs_f64(),
            ..stats
        };
        Ok((index, stats))
    }

    /// Builds an index of `units` from their token embeddings, made elsewhere
    /// (e.g. by several processes, gathered in unit order): `embedded` holds
    /// unit `i`'s vectors as its `i`-th document, `model` names what made them.
    /// The codec, BM25 and the files are [`Index::build`]'s, which ends here.
    pub fn build_embedded(
        dir: &Path,
        units: Vec<Unit>,
        embedded: Embedded,
        model: &str,
        opts: &BuildOptions,
        cancel: &CancelToken,
    ) -> Result<(Index, BuildStats)> {
        let started = Instant::now();
        if units.is_empty() {
            bail!("nothing to index: no units were found");
        }
        if embedded.docs() != units.len() {
            bail!(
                "{} embedded documents for {} units",
                embedded.docs(),
                units.len()
            );
        }
        let mut stats = BuildStats {
            units: units.len(),
            embedded: units.len(),
            retrained: true,
            ..Default::default()
        };
        let Embedded {
            dim,
            offsets,
            vectors,
        } = embedded;
        let projection = match opts.dims {
            Some(to) if to != dim => Some(
                Projection::fit(&vectors, dim, to)
                    .with_context(|| format!("projecting {model}'s vectors (`dims`)"))?,
            ),
            _ => None,
        };
        let vectors = project(projection.as_ref(), vectors)?;
        let dim = projection.as_ref().map_or(dim, Projection::to_dim);
        let codec =
            Codec::train(&vectors, dim, &opts.codec, cancel).context("training the codec")?;
        let tokens = codec.encode(&vectors)?;
        stats.codec_seconds = started.elapsed().as_secs_f64();
        let encoded = EncodedDocs { offsets, tokens };
        stats.tokens = encoded.tokens.centroids.len();
        let kept = opts.keep_vectors.then_some(vectors.as_slice());
        let index = publish(
            dir,
            units,
            &codec,
            projection.as_ref(),
            &encoded,
            kept,
            model,
        )?;
        stats.total_seconds = started.elapsed().as_secs_f64();
        Ok((index, stats))
    }

    /// Brings the index in `dir` up to `units`: units whose hash the index already
    /// holds keep their stored codes (and full vectors); only new texts are
    /// embedded, and encoded with the index's codec. Without an index there, when
    /// the embedder's name or dimension differ from the index's, or when full
    /// vectors are asked of an index that kept none, it builds from scratch.
    pub fn update(
        dir: &Path,
        units: Vec<Unit>,
        embedder: &dyn Embedder,
        opts: &BuildOptions,
        cancel: &CancelToken,
    ) -> Result<(Index, BuildStats)> {
        if !dir.join("index.json").is_file() {
            return Index::build(dir, units, embedder, opts, cancel);
        }
        let old = Index::open(dir)?;
        let wanted_dim = opts.dims.unwrap_or(embedder.dim());
        if old.manifest.model != embedder.name()
            || old.model_dim() != embedder.dim()
            || old.manifest.dim != wanted_dim
            || (opts.keep_vectors && !old.manifest.vectors)
        {
            drop(old);
            return Index::build(dir, units, embedder, opts, cancel);
        }
        if units.is_empty() {
            bail!("nothing to index: no units were found");
        }
        let started = Instant::now();
        let by_hash: HashMap<&str, usize> = old
            .units
            .iter()
            .enumerate()
            .rev()
            .map(|(i, u)| (u.hash.as_str(), i))
            .collect();
        let fresh: Vec<usize> = (0..units.len())
            .filter(|&i| !by_hash.contains_key(units[i].hash.as_str()))
            .collect();
        let Embedded {
            offsets: fresh_offsets,
            vectors,
            ..
        } = embed_units(&units, &fresh, embedder, opts, cancel)?;
        let embed_seconds = started.elapsed().as_secs_f64();
        let vectors = project(old.projection.as_ref(), vectors)?;
        let codec = old.mv.codec().clone();
        let encoded_fresh = codec.encode(&vectors)?;
        let (bpt, dim) = (codec.bytes_per_token(), codec.dim());
        let mut encoded = EncodedDocs::default();
        // The full vectors in document order, where the index keeps them.
        let mut full: Vec<f32> = Vec::new();
        let mut next_fresh = 0;
        for unit in &units {
            match by_hash.get(unit.hash.as_str()) {
                Some(&i) => {
                    let (c, codes) = old.mv.doc_tokens(i);
                    encoded.push(&c, &codes);
                    if opts.keep_vectors {
                        // (Asked of an index that kept none, the update rebuilt.)
                        let v = old
                            .mv
                            .stored_vectors(i)
                            .context("the index keeps no vectors")?;
                        full.extend_from_slice(&v);
                    }
                }
                None => {
                    let (a, b) = (fresh_offsets[next_fresh], fresh_offsets[next_fresh + 1]);
                    encoded.push(
                        &encoded_fresh.centroids[a..b],
                        &encoded_fresh.codes[a * bpt..b * bpt],
                    );
                    if opts.keep_vectors {
                        full.extend_from_slice(&vectors[a * dim..b * dim]);
                    }
                    next_fresh += 1;
                }
            }
        }
        let model = old.manifest.model.clone();
        let projection = old.projection.clone();
        drop(old);
        let stats = BuildStats {
            units: units.len(),
            tokens: encoded.tokens.centroids.len(),
            embedded: fresh.len(),
            reused: units.len() - fresh.len(),
            retrained: false,
            embed_seconds,
            codec_seconds: 0.0,
            total_seconds: 0.0,
        };
        let kept = opts.keep_vectors.then_some(full.as_slice());
        let index = publish(
            dir,
            units,
            &codec,
            projection.as_ref(),
            &encoded,
            kept,
            &model,
        )?;
        let stats = BuildStats {
            total_seconds: started.elapsed().as_secs_f64(),
            ..stats
        };
        Ok((index, stats))
    }

    /// Opens the index in `dir`, checking that its parts agree.
    pub fn open(dir: &Path) -> Result<Index> {
        let manifest: Manifest = read_json(&dir.join("index.json"))
            .with_context(|| format!("{} is not an index directory", dir.display()))?;
        if manifest.format != FORMAT {
            bail!(
                "{}: index format {}, this build reads {FORMAT}; rebuild the index",
                dir.display(),
                manifest.format
            );
        }
        let units: Vec<Unit> = read_json(&dir.join("units.json"))?;
        let bm25 = Bm25Index::open(&dir.join("bm25"))?;
        let mut mv = MvIndex::open(&dir.join("mv.bin"))?;
        if manifest.vectors {
            mv.open_vectors(&dir.join(VECTORS_FILE))?;
        }
        if units.len() != manifest.units
            || mv.n_docs() != units.len()
            || bm25.len() != units.len() as u64
            || mv.dim() != manifest.dim
        {
            bail!(
                "{}: the index's parts disagree ({} units listed, {} in units.json, {} in mv.bin, {} in bm25/); rebuild it",
                dir.display(),
                manifest.units,
                units.len(),
                mv.n_docs(),
                bm25.len()
            );
        }
        let projection = match manifest.projected_from {
            Some(from) => Some(Projection::load(
                &dir.join(PROJECTION_FILE),
                from,
                manifest.dim,
            )?),
            None => None,
        };
        Ok(Index {
            dir: dir.to_path_buf(),
            manifest,
            units,
            bm25,
            mv,
            projection,
        })
    }

    /// The projection the stored vectors went through, if any.
    pub fn projection(&self) -> Option<&Projection> {
        self.projection.as_ref()
    }

    /// A query's vectors from the model as the index compares them: through
    /// the index's projection where it has one.
    pub fn query_vectors(&self, q: TokenVectors) -> Result<TokenVectors> {
        match &self.projection {
            Some(p) => TokenVectors::new(p.to_dim(), p.apply(q.as_slice())?),
            None => Ok(q),
        }
    }

    /// The dimension of the model's vectors (before any projection).
    pub fn model_dim(&self) -> usize {
        self.manifest.projected_from.unwrap_or(self.manifest.dim)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn units(&self) -> &[Unit] {
        &self.units
    }

    /// Bytes of the compressed embeddings file.
    pub fn mv_bytes(&self) -> usize {
        self.mv.file_bytes()
    }

    /// Bytes of the stored full vectors (0 where the index keeps none).
    pub fn vector_bytes(&self) -> usize {
        self.mv.vector_bytes()
    }

    /// Search `query`; semantic and hybrid modes need the embedder that built the index.
    pub fn search(
        &self,
        query: &str,
        embedder: Option<&dyn Embedder>,
        opts: &SearchOptions,
    ) -> Result<Vec<Hit>> {
        if self.units.is_empty() {
            bail!("the index in {} is empty", self.dir.display());
        }
        let depth = if opts.mode == Mode::Semantic || opts.mode == Mode::Bm25 {
            opts.k
        } else {
            opts.fusion_depth.max(opts.k)
        };
        let semantic = if opts.mode.needs_model() {
            let embedder = embedder.with_context(|| {
                format!(
                    "{} search needs the model the index was built with",
                    opts.mode.name()
                )
            })?;
            if embedder.dim() != self.model_dim() {
                bail!(
                    "the model {} embeds in {} dimensions, the index in {} was built with {} ({} dimensions)",
                    embedder.name(),
                    embedder.dim(),
                    self.dir.display(),
                    self.manifest.model,
                    self.model_dim()
                );
            }
            let q = self.query_vectors(embedder.embed_query(query)?)?;
            let params = SearchParams {
                k: depth,
                ..opts.mv
            };
            self.mv.search(&q, &params)?
        } else {
            Vec::new()
        };
        let lexical = if opts.mode == Mode::Semantic {
            Vec::new()
        } else {
            self.bm25.search(query, depth)?
        };
        let ranked = match opts.mode {
            Mode::Semantic => semantic,
            Mode::Bm25 => lexical,
            Mode::HybridRrf => {
                fusion::reciprocal_rank(&[lexical.as_slice(), semantic.as_slice()], fusion::RRF_K)
            }
            Mode::HybridWeighted => fusion::weighted(&[
                (lexical.as_slice(), 1.0 - opts.semantic_weight),
                (semantic.as_slice(), opts.semantic_weight),
            ]),
        };
        ranked
            .into_iter()
            .take(opts.k)
            .map(|(unit, score)| self.hit(unit, score))
            .collect()
    }

    fn hit(&self, unit: u32, score: f32) -> Result<Hit> {
        let u = self
            .units
            .get(unit as usize)
            .with_context(|| format!("a hit names unit {unit} of {}", self.units.len()))?;
        Ok(Hit {
            path: u.path.clone(),
            symbol: u.symbol.clone(),
            line: u.start_line,
            end_line: u.end_line,
            kind: u.kind.clone(),
            score,
            snippet: snippet(&u.code),
            unit,
        })
    }
}

/// The first three non-blank lines, each cut at 120 characters.
fn snippet(code: &str) -> String {
    code.lines()
        .filter(|l| !l.trim().is_empty())
        .take(3)
        .map(|l| match l.char_indices().nth(120) {
            Some((i, _)) => format!("{}…", &l[..i]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Token embeddings of several documents in one flat matrix: document `d`'s
/// rows are `offsets[d]..offsets[d + 1]` of `vectors` (rows of `dim`).
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    pub dim: usize,
    pub offsets: Vec<usize>,
    pub vectors: Vec<f32>,
}

impl Embedded {
    /// No documents yet, in `dim` dimensions.
    pub fn empty(dim: usize) -> Embedded {
        Embedded {
            dim,
            offsets: vec![0],
            vectors: Vec::new(),
        }
    }

    /// Number of documents.
    pub fn docs(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Number of token rows.
    pub fn tokens(&self) -> usize {
        self.offsets.last().copied().unwrap_or(0)
    }

    /// Document `d`'s rows, flat.
    pub fn doc(&self, d: usize) -> &[f32] {
        &self.vectors[self.offsets[d] * self.dim..self.offsets[d + 1] * self.dim]
    }

    /// Appends one document of `rows.len() / dim` rows.
    pub fn push(&mut self, rows: &[f32]) {
        self.offsets
            .push(self.tokens() + rows.len() / self.dim.max(1));
        self.vectors.extend_from_slice(rows);
    }
}

/// Embeds `units[which]` in batches of `opts.embed_batch`, in `which`'s order
/// (document `d` of the result is unit `which[d]`).
pub fn embed_units(
    units: &[Unit],
    which: &[usize],
    embedder: &dyn Embedder,
    opts: &BuildOptions,
    cancel: &CancelToken,
) -> Result<Embedded> {
    let dim = embedder.dim();
    let batch = if opts.embed_batch == 0 {
        32
    } else {
        opts.embed_batch
    };
    let mut embedded = Embedded::empty(dim);
    for chunk in which.chunks(batch) {
        cancel.check()?;
        let texts: Vec<String> = chunk.iter().map(|&i| units[i].embed_text()).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let out = embedder.embed_documents(&refs)?;
        if out.len() != chunk.len() {
            bail!(
                "the embedder returned {} results for {} texts",
                out.len(),
                chunk.len()
            );
        }
        for (m, &i) in out.into_iter().zip(chunk) {
            if m.dim() != dim {
                bail!(
                    "the embedder gave {} dimensions for {}, not {dim}",
                    m.dim(),
                    units[i].key()
                );
            }
            embedded.push(m.as_slice());
        }
    }
    Ok(embedded)
}

/// Token rows as the index stores them: through `projection` where there is
/// one. The model's rows are dropped as soon as the projected ones exist (for
/// a whole corpus, gigabytes that the codec's training need not share memory
/// with).
fn project(projection: Option<&Projection>, rows: Vec<f32>) -> Result<Vec<f32>> {
    match projection {
        Some(p) => p.apply(&rows),
        None => Ok(rows),
    }
}

/// Writes every part into a sibling temporary directory, then swaps it in.
fn publish(
    dir: &Path,
    units: Vec<Unit>,
    codec: &Codec,
    projection: Option<&Projection>,
    encoded: &EncodedDocs,
    vectors: Option<&[f32]>,
    model: &str,
) -> Result<Index> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "index".to_string());
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = parent.join(format!(".{name}.building"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let manifest = Manifest {
        format: FORMAT,
        model: model.to_string(),
        dim: codec.dim(),
        projected_from: projection.map(Projection::from_dim),
        units: units.len(),
        tokens: encoded.tokens.centroids.len(),
        nbits: codec.nbits(),
        centroids: codec.n_centroids(),
        vectors: vectors.is_some(),
    };
    mv::write(&tmp.join("mv.bin"), codec, encoded)?;
    if let Some(v) = vectors {
        super::vectors::write(&tmp.join(VECTORS_FILE), codec.dim(), v)?;
    }
    if let Some(p) = projection {
        p.save(&tmp.join(PROJECTION_FILE))?;
    }
    Bm25Index::build(
        &tmp.join("bm25"),
        units.iter().enumerate().map(|(i, u)| Bm25Doc {
            unit: i as u32,
            path: &u.path,
            line: u.start_line,
            symbol: &u.symbol,
            doc: &u.doc,
            code: &u.code,
        }),
    )?;
    write_json(&tmp.join("units.json"), &units)?;
    write_json(&tmp.join("index.json"), &manifest)?;
    if dir.exists() {
        let old = parent.join(format!(".{name}.old"));
        if old.exists() {
            std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        }
        std::fs::rename(dir, &old)
            .with_context(|| format!("moving the old index {} aside", dir.display()))?;
        std::fs::rename(&tmp, dir).with_context(|| format!("publishing {}", dir.display()))?;
        std::fs::remove_dir_all(&old).ok();
    } else {
        std::fs::rename(&tmp, dir).with_context(|| format!("publishing {}", dir.display()))?;
    }
    Index::open(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Lang;
    use crate::search::embed::HashEmbedder as FakeEmbedder;
    use crate::search::units::{collect, CollectOptions, SourceRoot};

    const LIB: &str = "\
/// Parse a pipeline file from TOML text.
pub fn parse_pipeline(text: &str) -> Pipeline {
    toml::from_str(text)
}

/// Hash every input of a stage into its artifact key.
pub fn artifact_key(inputs: &[u8]) -> Key {
    blake3::hash(inputs)
}

/// Delete artifacts that no run references.
pub fn garbage_collect(store: &Store) {
    store.sweep()
}
";

    fn tree(lib: &str) -> (tempfile::TempDir, Vec<Unit>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join("src/lib.rs"), lib).unwrap();
        std::fs::write(
            dir.path().join("notes.rs"),
            "// scratch\nfn scratch_pad() {}\n",
        )
        .unwrap();
        let roots = [SourceRoot {
            path: dir.path().to_path_buf(),
            prefix: String::new(),
            langs: vec![Lang::Rust],
            exclude: Vec::new(),
        }];
        let units = collect(&roots, &CollectOptions::default(), &CancelToken::new()).unwrap();
        (dir, units)
    }

    fn opts(mode: Mode) -> SearchOptions {
        SearchOptions {
            mode,
            k: 3,
            ..Default::default()
        }
    }

    #[test]
    fn builds_and_finds_units_in_every_mode() {
        let (src, units) = tree(LIB);
        assert_eq!(units.len(), 4);
        let out = tempfile::tempdir().unwrap();
        let dir = out.path().join("idx");
        let emb = FakeEmbedder::new(16);
        let (built, stats) = Index::build(
            &dir,
            units,
            &emb,
            &BuildOptions::default(),
            &CancelToken::new(),
        )
        .unwrap();
        assert_eq!((stats.units, stats.embedded, stats.reused), (4, 4, 0));
        assert_eq!(emb.texts_embedded(), 4);
        drop(built);
        drop(src);
        let index = Index::open(&dir).unwrap();
        assert_eq!(index.manifest().dim, 16);
        for mode in Mode::ALL {
            let hits = index
                .search("artifact key hash", Some(&emb), &opts(mode))
                .unwrap();
            assert_eq!(
                hits[0].key(),
                "src/lib.rs::artifact_key",
                "{mode:?}: {hits:?}"
            );
            assert_eq!(hits[0].line, 7, "{mode:?}");
            assert!(hits.len() <= 3);
        }
        let hits = index
            .search("garbage collect", None, &opts(Mode::Bm25))
            .unwrap();
        assert_eq!(hits[0].symbol, "garbage_collect");
        assert_eq!(
            hits[0].snippet,
            "pub fn garbage_collect(store: &Store) {\n    store.sweep()\n}"
        );
        let json = serde_json::to_value(&hits[0]).unwrap();
        for key in ["path", "symbol", "line", "score", "snippet"] {
            assert!(json.get(key).is_some(), "{key} missing from {json}");
        }
    }

    #[test]
    fn update_re_embeds_only_changed_units() {
        let (_src, units) = tree(LIB);
        let out = tempfile::tempdir().unwrap();
        let dir = out.path().join("idx");
        let emb = FakeEmbedder::new(16);
        let cancel = CancelToken::new();
        Index::build(&dir, units, &emb, &BuildOptions::default(), &cancel).unwrap();
        assert_eq!(emb.texts_embedded(), 4);

        let edited = LIB.replace("store.sweep()", "store.sweep_unreferenced()");
        let (_src2, units) = tree(&edited);
        let (index, stats) =
            Index::update(&dir, units.clone(), &emb, &BuildOptions::default(), &cancel).unwrap();
        assert_eq!(
            (stats.embedded, stats.reused, stats.retrained),
            (1, 3, false)
        );
        assert_eq!(emb.texts_embedded(), 5, "only the edited unit was embedded");
        let hits = index
            .search("sweep unreferenced", Some(&emb), &opts(Mode::Semantic))
            .unwrap();
        assert_eq!(hits[0].symbol, "garbage_collect");
        drop(index);

        // Nothing changed: nothing embedded.
        let (_, stats) =
            Index::update(&dir, units.clone(), &emb, &BuildOptions::default(), &cancel).unwrap();
        assert_eq!((stats.embedded, stats.reused), (0, 4));
        assert_eq!(emb.texts_embedded(), 5);

        // Another model: everything again.
        let other = FakeEmbedder::new(16).named("other");
        let (_, stats) =
            Index::update(&dir, units, &other, &BuildOptions::default(), &cancel).unwrap();
        assert!(stats.retrained);
        assert_eq!(other.texts_embedded(), 4);
    }

    /// `dims`: the vectors are stored projected, queries are projected the
    /// same way, an update with the same `dims` keeps the stored codes and
    /// another `dims` rebuilds; a damaged projection file is named.
    /// An index built with `keep_vectors` holds every unit's full vectors;
    /// an update carries the kept units' vectors over beside the new ones or
    /// drops them all, and a missing file is an error.
    #[test]
    fn kept_vectors_follow_updates_and_are_checked_on_open() {
        let (_src, units) = tree(LIB);
        let out = tempfile::tempdir().unwrap();
        let dir = out.path().join("idx");
        let emb = FakeEmbedder::new(16);
        let cancel = CancelToken::new();
        let keep = BuildOptions {
            keep_vectors: true,
            ..BuildOptions::default()
        };
        // Each unit's stored vectors are its embedding, to f16's precision.
        let check = |index: &Index, units: &[Unit]| {
            let all: Vec<usize> = (0..units.len()).collect();
            let fresh = embed_units(units, &all, &emb, &keep, &cancel).unwrap();
            for d in 0..units.len() {
                let stored = index.mv.stored_vectors(d).unwrap();
                assert_eq!(stored.len(), fresh.doc(d).len(), "unit {d}");
                for (a, b) in stored.iter().zip(fresh.doc(d)) {
                    assert!((a - b).abs() < 1e-3, "unit {d}: {a} {b}");
                }
            }
        };
        let (index, _) = Index::build(&dir, units.clone(), &emb, &keep, &cancel).unwrap();
        assert!(index.manifest().vectors && dir.join(VECTORS_FILE).is_file());
        assert_eq!(index.vector_bytes(), 32 + index.manifest().tokens * 16 * 2);
        check(&index, &units);
        let hits = index
            .search("artifact key hash", Some(&emb), &opts(Mode::Semantic))
            .unwrap();
        assert_eq!(hits[0].key(), "src/lib.rs::artifact_key", "{hits:?}");
        drop(index);

        let edited = LIB.replace("store.sweep()", "store.sweep_unreferenced()");
        let (_src2, edited_units) = tree(&edited);
        let (index, stats) =
            Index::update(&dir, edited_units.clone(), &emb, &keep, &cancel).unwrap();
        assert_eq!(
            (stats.embedded, stats.reused, stats.retrained),
            (1, 3, false)
        );
        check(&index, &edited_units);
        drop(index);

        std::fs::rename(dir.join(VECTORS_FILE), out.path().join("aside")).unwrap();
        let err = Index::open(&dir).err().map(|e| format!("{e:#}")).unwrap();
        assert!(err.contains(VECTORS_FILE), "{err}");
        std::fs::rename(out.path().join("aside"), dir.join(VECTORS_FILE)).unwrap();

        let (index, stats) =
            Index::update(&dir, edited_units, &emb, &BuildOptions::default(), &cancel).unwrap();
        assert_eq!(
            (stats.embedded, stats.retrained),
            (0, false),
            "dropping the vectors keeps the codes"
        );
        assert!(!index.manifest().vectors && index.vector_bytes() == 0);
        assert!(!dir.join(VECTORS_FILE).exists());
    }

    #[test]
    fn a_projected_index_searches_updates_and_rebuilds() {
        let (_src, units) = tree(LIB);
        let out = tempfile::tempdir().unwrap();
        let dir = out.path().join("idx");
        let emb = FakeEmbedder::new(16);
        let cancel = CancelToken::new();
        let projected = BuildOptions {
            dims: Some(8),
            ..BuildOptions::default()
        };
        let (index, _) = Index::build(&dir, units.clone(), &emb, &projected, &cancel).unwrap();
        assert_eq!(
            (index.manifest().dim, index.manifest().projected_from),
            (8, Some(16))
        );
        assert_eq!(index.model_dim(), 16);
        assert!(dir.join(PROJECTION_FILE).is_file());
        let hits = index
            .search("artifact key hash", Some(&emb), &opts(Mode::Semantic))
            .unwrap();
        assert_eq!(hits[0].key(), "src/lib.rs::artifact_key", "{hits:?}");
        drop(index);

        let (_, stats) = Index::update(&dir, units.clone(), &emb, &projected, &cancel).unwrap();
        assert_eq!((stats.embedded, stats.retrained), (0, false));
        let (index, stats) =
            Index::update(&dir, units.clone(), &emb, &BuildOptions::default(), &cancel).unwrap();
        assert!(stats.retrained, "another `dims` must rebuild");
        assert_eq!(
            (index.manifest().dim, index.manifest().projected_from),
            (16, None)
        );
        assert!(!dir.join(PROJECTION_FILE).exists());
        drop(index);

        let err = Index::build(
            &dir,
            units.clone(),
            &emb,
            &BuildOptions {
                dims: Some(32),
                ..BuildOptions::default()
            },
            &cancel,
        )
        .err()
        .unwrap();
        assert!(format!("{err:#}").contains("choose 1 to 15"), "{err:#}");

        Index::build(&dir, units, &emb, &projected, &cancel).unwrap();
        std::fs::write(dir.join(PROJECTION_FILE), b"not safetensors").unwrap();
        let err = format!("{:#}", Index::open(&dir).err().unwrap());
        assert!(
            err.contains(PROJECTION_FILE) && err.contains("rebuild"),
            "{err}"
        );
    }

    #[test]
    fn clear_errors_for_bad_input() {
        let (_src, units) = tree(LIB);
        let out = tempfile::tempdir().unwrap();
        let dir = out.path().join("idx");
        let emb = FakeEmbedder::new(16);
        let cancel = CancelToken::new();
        let err = Index::build(&dir, Vec::new(), &emb, &BuildOptions::default(), &cancel)
            .err()
            .unwrap();
        assert!(err.to_string().contains("nothing to index"), "{err}");
        let (index, _) =
            Index::build(&dir, units, &emb, &BuildOptions::default(), &cancel).unwrap();

        let narrow = FakeEmbedder::new(8);
        let err = index
            .search("x", Some(&narrow), &opts(Mode::Semantic))
            .unwrap_err();
        assert!(
            err.to_string().contains("8 dimensions") && err.to_string().contains("(16 dimensions)"),
            "{err}"
        );
        let err = index.search("x", None, &opts(Mode::HybridRrf)).unwrap_err();
        assert!(err.to_string().contains("needs the model"), "{err}");
        drop(index);

        let mv = dir.join("mv.bin");
        let bytes = std::fs::read(&mv).unwrap();
        std::fs::write(&mv, &bytes[..bytes.len() / 2]).unwrap();
        let err = format!("{:#}", Index::open(&dir).err().unwrap());
        assert!(err.contains("mv.bin") && err.contains("truncated"), "{err}");

        let err = format!("{:#}", Index::open(out.path()).err().unwrap());
        assert!(err.contains("not an index directory"), "{err}");
    }

    #[test]
    fn modes_parse_from_flags() {
        assert_eq!("hybrid".parse::<Mode>().unwrap(), Mode::HybridRrf);
        assert_eq!(
            "hybrid-weighted".parse::<Mode>().unwrap(),
            Mode::HybridWeighted
        );
        assert_eq!("bm25".parse::<Mode>().unwrap(), Mode::Bm25);
        assert!("fuzzy".parse::<Mode>().is_err());
    }
}
