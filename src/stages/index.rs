//! `index`: a hybrid code-search index of source trees — BM25 (tantivy, a
//! code-aware tokenizer) and compressed multi-vector embeddings — with the model
//! a `merge` stage produced, or a model directory. The glue around
//! [`crate::search::Index`]: params, source roots (their files enter the key), the
//! embedding model.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::compute::{Compute, ComputeParams};
use super::merge::MODEL_DIR;
use super::train::{model_deps, resolve_model};
use super::{param_error, Arity, Configured, Dep, InputRole, Kind, Output, Stage, StageContext};
use crate::dataset::{sources, Lang};
use crate::model::resolve::ModelSource;
use crate::pipeline::{ConfigError, StageSpec};
use crate::search::codec::CodecParams;
use crate::search::{collect, BuildOptions, CollectOptions, Index, ModelEmbedder, SourceRoot};

pub const KIND: Kind = Kind {
    name: "index",
    version: 1,
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
            what: "the index: index.json, units.json, bm25/, mv.bin",
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
    #[serde(default)]
    pub seed: u64,
    #[serde(flatten)]
    pub compute: ComputeParams,
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
    if params.model.is_none() && spec.needs.is_empty() {
        return Err(param_error(spec, &[], "index needs a model: none is named")
            .with_help("set `model = \"<directory>\"`, or add a merge stage to `needs`"));
    }
    let compute = Compute::configure(spec, &params.compute)?;
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
    };
    Ok(Configured::new(spec, &params, stage)?
        .with_deps(deps)
        .with_compute(&compute))
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
        };
        let (index, stats) = {
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
            "indexed {} units ({} tokens) in {:.2}s: {} bytes of multi-vector index",
            stats.units,
            stats.tokens,
            stats.total_seconds,
            index.mv_bytes()
        )?;
        let metrics = serde_json::json!({
            "units": stats.units,
            "tokens": stats.tokens,
            "mv_bytes": index.mv_bytes(),
            "build_seconds": stats.total_seconds,
        });
        std::fs::write(ctx.out_dir.join("metrics.json"), metrics.to_string())
            .context("writing metrics.json")?;
        Ok(())
    }
}
