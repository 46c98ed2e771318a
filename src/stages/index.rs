//! `index`: a hybrid code-search index of source trees — BM25 (tantivy, a
//! code-aware tokenizer) and compressed multi-vector embeddings — with the model
//! a `merge` stage produced, or a model directory. The glue around
//! [`crate::search::Index`]: params, source roots (their files enter the key), the
//! embedding model, and with `gpus` > 1 the embedding pass split across rank
//! processes (see [`crate::search::shard`] for who embeds what), started
//! through [`super::ranks`] and served by [`run_rank`]; the build then goes on
//! in this process from the gathered embeddings, as it would from its own.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::compute::{Compute, ComputeParams, DeviceGuard};
use super::merge::MODEL_DIR;
use super::ranks::{
    abort_hook, hold_hook, job_device, launch_ranks, read_job, resolve_gpus, without_gpus, Gpus,
    RankLaunch, ABORT_ENV,
};
use super::train::{model_deps, resolve_model};
use super::{param_error, Arity, Configured, Dep, InputRole, Kind, Output, Stage, StageContext};
use crate::cancel::CancelToken;
use crate::dataset::{sources, Lang};
use crate::mlx::{launch, Array};
use crate::model::resolve::ModelSource;
use crate::pipeline::{ConfigError, StageSpec};
use crate::search::codec::CodecParams;
use crate::search::shard::{self, Shard};
use crate::search::{
    collect, embed_units, BuildOptions, BuildStats, CollectOptions, Embedder, Index, ModelEmbedder,
    SourceRoot, Unit,
};

pub const KIND: Kind = Kind {
    name: "index",
    // 2: residual buckets by Lloyd-Max, not quantiles alone.
    version: 2,
    summary: "index source trees for code search: BM25 + compressed multi-vector embeddings",
    template: include_str!("../../stages/index.toml"),
    inputs: &[InputRole {
        role: "model",
        kinds: &["merge"],
        arity: Arity::Optional,
    }],
    outputs: &[
        Output {
            file: INDEX_DIR,
            what: "the index: index.json, units.json, bm25/, mv.bin (and vectors.f16 with keep_vectors)",
        },
        Output {
            file: "metrics.json",
            what: "units, tokens, bytes, build seconds",
        },
    ],
    configure,
};

/// The index directory inside an index artifact.
pub const INDEX_DIR: &str = "index";

/// One source tree, as the dataset kind writes it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IndexSource {
    pub lang: Lang,
    /// A directory or file, relative to the pipeline file (variables and globs as
    /// in the dataset kind); result paths are relative to it.
    pub path: String,
    /// Put before every result path from this source (`"src/"`: paths read as
    /// from the repository root). Default: nothing for one source path, the path
    /// as written for several.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Globs, relative to the path, of files not to index (`"test/**"`), as
    /// in the dataset kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Params {
    pub sources: Vec<IndexSource>,
    /// The embedding model when no `merge` stage is needed: a directory or a
    /// Hugging Face repo id in the local cache.
    #[serde(default)]
    pub model: Option<String>,
    /// Lines per chunk of a file without documented items.
    #[serde(default = "default_chunk_lines")]
    pub chunk_lines: usize,
    /// Bits per residual dimension: 2 or 4.
    #[serde(default = "default_nbits")]
    pub nbits: u8,
    #[serde(default = "default_max_doc_tokens")]
    pub max_doc_tokens: usize,
    /// Project the model's token vectors to this many dimensions before they
    /// are compressed (a projection fitted to the indexed tokens; queries go
    /// through it too): a 384-dimensional model at 128 takes a third of the
    /// bytes and time. Default: the model's own dimension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dims: Option<usize>,
    /// Keep every token's full vector (f16) beside the compressed codes, so
    /// searches rerank their best documents over them, exactly, rather than
    /// over the decompressed codes (eval's `use_vectors`): 2 bytes per
    /// dimension per token more on disk, read only for those documents.
    /// Default: false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_vectors: bool,
    #[serde(default)]
    pub seed: u64,
    #[serde(flatten)]
    pub compute: ComputeParams,
    /// Embedding ranks: a count or "all" (every GPU MLX sees). Not in the key:
    /// the index is the same whoever embeds which unit (up to float rounding).
    #[serde(default)]
    pub gpus: Gpus,
}

fn default_chunk_lines() -> usize {
    CollectOptions::default().chunk_lines
}
fn default_nbits() -> u8 {
    CodecParams::default().nbits
}
fn default_max_doc_tokens() -> usize {
    256
}

struct IndexStage {
    params: Params,
    roots: Vec<SourceRoot>,
    model: Option<ModelSource>,
    compute: Compute,
    ranks: usize,
}

fn configure(spec: &StageSpec) -> Result<Configured, ConfigError> {
    let params: Params = super::decode(spec)?;
    if params.sources.is_empty() {
        return Err(param_error(spec, &["sources"], "`sources` is empty")
            .with_help("add one: sources = [{ lang = \"rust\", path = \"src\" }]"));
    }
    if ![2, 4].contains(&params.nbits) {
        return Err(param_error(spec, &["nbits"], "`nbits` must be 2 or 4"));
    }
    super::at_least_one(spec, "dims", params.dims).map_err(|e| {
        e.with_help("leave `dims` out to keep the model's dimension, or set e.g. dims = 128")
    })?;
    if params.model.is_none() && spec.needs.is_empty() {
        return Err(param_error(spec, &[], "index needs a model: none is named")
            .with_help("set `model = \"<directory>\"`, or add a merge stage to `needs`"));
    }
    let compute = Compute::configure(spec, &params.compute)?;
    let ranks = resolve_gpus(spec, &params.gpus, compute.device)?;
    let model = match &params.model {
        Some(m) => Some(resolve_model(spec, m)?),
        None => None,
    };
    let mut deps = model.as_ref().map_or_else(Vec::new, |m| {
        model_deps(spec, params.model.as_deref().unwrap_or(""), m)
    });
    let (roots, source_deps) = resolve_sources(spec, &params.sources)?;
    deps.extend(source_deps);
    let stage = IndexStage {
        params: params.clone(),
        roots,
        model,
        compute,
        ranks,
    };
    Ok(without_gpus(
        Configured::new(spec, &params, stage)?
            .with_deps(deps)
            .with_compute(&compute),
    ))
}

/// Each source's roots; unit paths are relative to the root, prefixed by the
/// source's path when the stage indexes more than one path.
fn resolve_sources(
    spec: &StageSpec,
    written: &[IndexSource],
) -> Result<(Vec<SourceRoot>, Vec<Dep>), ConfigError> {
    let one_path = written.iter().all(|s| s.path == written[0].path);
    let mut roots = Vec::new();
    let mut deps: Vec<Dep> = Vec::new();
    for (i, source) in written.iter().enumerate() {
        let index = i.to_string();
        let resolved = sources::resolve(&source.path, &spec.dir)
            .map_err(|e| param_error(spec, &["sources", &index, "path"], e))?;
        for root in resolved {
            let prefix = match &source.prefix {
                Some(p) => p.clone(),
                None if one_path => String::new(),
                None => format!("{}/", root.display),
            };
            if !deps.iter().any(|d| d.path == root.path) {
                deps.push(Dep::source_root(spec, i, &root));
            }
            roots.push(SourceRoot {
                path: root.path,
                prefix,
                langs: vec![source.lang],
                exclude: source.exclude.clone(),
            });
        }
    }
    Ok((roots, deps))
}

impl Stage for IndexStage {
    fn run(&self, ctx: &StageContext<'_>) -> Result<()> {
        let model_dir: PathBuf = match (ctx.inputs.optional("model"), &self.model) {
            (Some(input), _) => input.file(MODEL_DIR)?,
            (None, Some(ModelSource::Dir(dir))) => dir.root.clone(),
            (None, Some(ModelSource::RandomT5)) => {
                anyhow::bail!("the random model has no tokenizer: index with a model directory")
            }
            (None, None) => anyhow::bail!("no model: set `model` or need a merge stage"),
        };
        let mut log = ctx.log.try_clone()?;
        let collect_opts = CollectOptions {
            chunk_lines: self.params.chunk_lines,
            ..CollectOptions::default()
        };
        let units = collect(&self.roots, &collect_opts, ctx.cancel)?;
        writeln!(
            log,
            "{} units to index with {}",
            units.len(),
            model_dir.display()
        )?;
        let opts = BuildOptions {
            codec: CodecParams {
                nbits: self.params.nbits,
                seed: self.params.seed,
                ..CodecParams::default()
            },
            embed_batch: 0,
            dims: self.params.dims,
            keep_vectors: self.params.keep_vectors,
        };
        let (index, stats) = if self.ranks > 1 {
            self.build_on_ranks(ctx, &model_dir, units, &opts)?
        } else {
            let _mlx = self.compute.enter()?;
            let embedder = ModelEmbedder::open(&model_dir, self.params.max_doc_tokens, 32)
                .with_context(|| format!("loading the model {}", model_dir.display()))?;
            Index::build(
                &ctx.out_dir.join(INDEX_DIR),
                units,
                &embedder,
                &opts,
                ctx.cancel,
            )?
        };
        writeln!(
            log,
            "indexed {} units ({} tokens) in {:.2}s (embedding {:.2}s, {:.0} tokens/s; codec {:.2}s): {} bytes of multi-vector index in {} dimensions",
            stats.units,
            stats.tokens,
            stats.total_seconds,
            stats.embed_seconds,
            stats.tokens as f64 / stats.embed_seconds.max(1e-9),
            stats.codec_seconds,
            index.mv_bytes(),
            index.manifest().dim
        )?;
        let metrics = serde_json::json!({
            "units": stats.units,
            "tokens": stats.tokens,
            "mv_bytes": index.mv_bytes(),
            "vector_bytes": index.vector_bytes(),
            "dims": index.manifest().dim,
            "build_seconds": stats.total_seconds,
            "embed_seconds": stats.embed_seconds,
            "codec_seconds": stats.codec_seconds,
        });
        std::fs::write(ctx.out_dir.join("metrics.json"), metrics.to_string())
            .context("writing metrics.json")?;
        Ok(())
    }
}

/// The units file a ranked build hands its ranks (in the working directory).
const RANK_UNITS: &str = "rank-units.json";

/// Rank `rank`'s shard of the embeddings, in the working directory.
fn shard_path(dir: &Path, rank: usize) -> PathBuf {
    dir.join(format!("shard-{rank}.bin"))
}

/// Removes every shard in `dir`: one left by an interrupted attempt (maybe on
/// another number of ranks) must not stand in for this one's.
fn remove_shards(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("shard-") && name.ends_with(".bin") {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// What an embedding rank is given.
#[derive(Serialize, Deserialize)]
struct RankJob {
    /// The model directory as the stage names it (its name goes into the index).
    model: PathBuf,
    max_doc_tokens: usize,
    embed_batch: usize,
    device: String,
    ranks: usize,
    /// Every unit of the build, in index order ([`RANK_UNITS`]).
    units: PathBuf,
    /// Where each rank writes its shard.
    shards: PathBuf,
}

impl IndexStage {
    /// Embeds `units` on `self.ranks` rank processes of this binary (`xtr-pipe
    /// rank index JOB`), each writing its share to a shard file, then gathers
    /// the shards in unit order and builds the index here exactly as
    /// [`Index::build`] does after its own embedding pass.
    fn build_on_ranks(
        &self,
        ctx: &StageContext<'_>,
        model_dir: &Path,
        units: Vec<Unit>,
        opts: &BuildOptions,
    ) -> Result<(Index, BuildStats)> {
        let started = Instant::now();
        anyhow::ensure!(!units.is_empty(), "nothing to index: no units were found");
        let work = &ctx.work_dir;
        std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
        remove_shards(work)?;
        let units_path = work.join(RANK_UNITS);
        let json = serde_json::to_vec(&units)?;
        crate::atomic::write(&units_path, |out| out.write_all(&json))?;
        let job = RankJob {
            model: model_dir.to_path_buf(),
            max_doc_tokens: self.params.max_doc_tokens,
            embed_batch: opts.embed_batch,
            device: self.compute.device.name().to_string(),
            ranks: self.ranks,
            units: units_path.clone(),
            shards: work.clone(),
        };
        launch_ranks(
            ctx,
            &RankLaunch {
                kind: KIND.name,
                doing: "embedding",
                ranks: self.ranks,
                device: self.compute.device,
                job: &job,
            },
        )?;
        let shards = (0..self.ranks)
            .map(|rank| Shard::read(&shard_path(work, rank)))
            .collect::<Result<Vec<_>>>()
            .context("the ranks exited 0 but left no whole shard: nothing was published")?;
        let (embedded, model) = shard::gather(&shards, units.len())?;
        drop(shards);
        let embed_seconds = started.elapsed().as_secs_f64();
        let (index, stats) = {
            let _mlx = self.compute.enter()?;
            Index::build_embedded(
                &ctx.out_dir.join(INDEX_DIR),
                units,
                embedded,
                &model,
                opts,
                ctx.cancel,
            )?
        };
        remove_shards(work)?;
        let _ = std::fs::remove_file(&units_path);
        Ok((
            index,
            BuildStats {
                embed_seconds,
                total_seconds: started.elapsed().as_secs_f64(),
                ..stats
            },
        ))
    }
}

/// A rank of a ranked index build (the hidden `xtr-pipe rank index JOB`):
/// joins the group its launcher set up, embeds its share of the units
/// ([`shard::share`]) and writes it to its shard file; then an all-sum of the
/// units each rank embedded, which is a barrier and checks that the shares
/// covered every unit (counts are summed in f32: exact below 2^24 units).
pub fn run_rank(job: &Path, cancel: &CancelToken) -> Result<()> {
    let job: RankJob = read_job(job)?;
    let _mlx = DeviceGuard::acquire(job_device(&job.device))?;
    let group = launch::join()?;
    let (rank, ranks) = (group.rank(), group.size());
    anyhow::ensure!(
        ranks == job.ranks,
        "the group has {ranks} ranks, the job {}",
        job.ranks
    );
    let text =
        std::fs::read(&job.units).with_context(|| format!("reading {}", job.units.display()))?;
    let units: Vec<Unit> = serde_json::from_slice(&text)
        .with_context(|| format!("parsing {}", job.units.display()))?;
    let embedder = ModelEmbedder::open(&job.model, job.max_doc_tokens, 32)
        .with_context(|| format!("loading the model {}", job.model.display()))?;
    let mine = shard::share(units.len(), rank, ranks);
    let count = mine.len();
    let opts = BuildOptions {
        embed_batch: job.embed_batch,
        ..BuildOptions::default()
    };
    let started = Instant::now();
    let embedded = embed_units(&units, &mine, &embedder, &opts, cancel)?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "rank {rank} of {ranks}: embedded {} of {} units ({} tokens) in {seconds:.2}s, {:.0} tokens/s",
        count,
        units.len(),
        embedded.tokens(),
        embedded.tokens() as f64 / seconds.max(1e-9)
    );
    if abort_hook(rank)?.is_some() {
        eprintln!("rank {rank}: aborting before writing its shard ({ABORT_ENV})");
        std::process::abort();
    }
    Shard {
        rank,
        ranks,
        total_units: units.len(),
        model: embedder.name(),
        units: mine,
        embedded,
    }
    .write(&shard_path(&job.shards, rank))?;
    hold_hook(rank, cancel)?;
    let total = group.all_sum(&Array::from_slice(&[count as f32], &[1])?)?;
    total.eval()?;
    let total = total.to_vec::<f32>()?.first().copied().unwrap_or(0.0);
    anyhow::ensure!(
        total as usize == units.len(),
        "the ranks embedded {total} units of {}",
        units.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configured(own: &str) -> Result<Configured, String> {
        let base = "sources = [{ lang = \"rust\", path = \"src/search\" }]\n\
                    model = \"tests/fixtures/tiny_bert\"\ndevice = \"cpu\"\n";
        let spec =
            crate::stages::template_spec(&KIND, &format!("{base}{own}")).map_err(|e| e.render())?;
        configure(&spec).map_err(|e| e.render())
    }

    #[test]
    fn the_template_holds_the_defaults() -> Result<(), ConfigError> {
        let spec = crate::stages::template_spec(&KIND, "sources = []\n")?;
        let params: Params = crate::stages::decode(&spec)?;
        assert_eq!(params.gpus, Gpus::default());
        assert_eq!(params.chunk_lines, default_chunk_lines());
        assert_eq!(params.nbits, default_nbits());
        assert_eq!(params.max_doc_tokens, default_max_doc_tokens());
        assert_eq!(params.compute, ComputeParams::default());
        Ok(())
    }

    /// `gpus` is validated as train's is and never reaches the key.
    #[test]
    fn gpus_is_checked_and_left_out_of_the_key() {
        let one = configured("gpus = 1\n").unwrap();
        let two = configured("gpus = 2\n").unwrap();
        assert!(one.params.get("gpus").is_none(), "{}", one.params);
        assert_eq!(one.params, two.params);
        assert_eq!(one.params, configured("gpus = \"all\"\n").unwrap().params);
        let err = configured("gpus = 0\n").err().unwrap_or_default();
        assert!(err.contains("`gpus` must be at least 1"), "{err}");
        let err = configured("gpus = \"many\"\n").err().unwrap_or_default();
        assert!(
            err.contains("gpus must be a count or \"all\", not \"many\""),
            "{err}"
        );
    }

    /// `dims` and a source's `exclude` enter the key only when written (the
    /// keys of pipelines that predate them stay as they were).
    #[test]
    fn dims_and_exclude_are_checked_and_keyed_when_written() {
        let plain = configured("").unwrap();
        assert!(plain.params.get("dims").is_none(), "{}", plain.params);
        assert!(
            plain.params.get("keep_vectors").is_none(),
            "{}",
            plain.params
        );
        let kept = configured("keep_vectors = true\n").unwrap();
        assert_eq!(
            kept.params.get("keep_vectors"),
            Some(&serde_json::json!(true))
        );
        let dims = configured("dims = 8\n").unwrap();
        assert_eq!(dims.params.get("dims").and_then(|v| v.as_u64()), Some(8));
        let err = configured("dims = 0\n").err().unwrap_or_default();
        assert!(err.contains("`dims` must be at least 1"), "{err}");
        let spec = crate::stages::template_spec(
            &KIND,
            "sources = [{ lang = \"rust\", path = \"src/search\", exclude = [\"tests/**\"] }]\n\
             model = \"tests/fixtures/tiny_bert\"\ndevice = \"cpu\"\n",
        )
        .unwrap();
        let excluded = configure(&spec).map_err(|e| e.render()).unwrap();
        assert_ne!(excluded.params, plain.params);
    }
}
