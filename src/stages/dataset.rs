//! `dataset`: build a code-search dataset of (doc comment, code) pairs from source
//! trees. The stage's glue: params, resolving source paths (their files enter the
//! key as deps), and running [`crate::dataset::build`].

use std::io::Write;

use anyhow::Result;

use super::{param_error, Configured, Dep, Kind, Output, Stage, StageContext};
use crate::dataset::{self, sources, Params};
use crate::pipeline::{ConfigError, StageSpec};

pub const KIND: Kind = Kind {
    name: "dataset",
    version: 1,
    summary: "extract (doc comment, code) pairs from source trees into Parquet",
    template: include_str!("../../stages/dataset.toml"),
    inputs: &[],
    outputs: &[
        Output {
            file: dataset::PAIRS_FILE,
            what: "the pairs, one row each, with their split (see dataset::writer::COLUMNS)",
        },
        Output {
            file: "stats.json",
            what: "what was read, kept and dropped, and why",
        },
        Output {
            file: "metrics.json",
            what: "pairs, files, bytes",
        },
    ],
    configure,
};

struct DatasetStage {
    params: Params,
    /// Per source: the roots its path resolved to.
    roots: Vec<Vec<sources::Root>>,
    /// Optional sources that resolved to nothing on this machine, with why.
    skipped: Vec<String>,
}

fn configure(spec: &StageSpec) -> Result<Configured, ConfigError> {
    let params: Params = super::decode(spec)?;
    if params.sources.is_empty() {
        return Err(param_error(spec, &["sources"], "`sources` is empty")
            .with_help("add one: sources = [{ lang = \"rust\", path = \"src\" }]"));
    }
    let s = &params.split;
    if [s.train, s.eval, s.test]
        .iter()
        .any(|f| !f.is_finite() || *f < 0.0)
        || s.train + s.eval + s.test <= 0.0
    {
        return Err(param_error(
            spec,
            &["split"],
            "split fractions must be non-negative with a positive sum",
        ));
    }
    let mut roots = Vec::with_capacity(params.sources.len());
    let mut deps = Vec::new();
    let mut skipped = Vec::new();
    for (i, source) in params.sources.iter().enumerate() {
        let index = i.to_string();
        let resolved = match sources::resolve(&source.path, &spec.dir) {
            Ok(resolved) => resolved,
            Err(e) if source.optional => {
                skipped.push(format!("{} ({e})", source.path));
                roots.push(Vec::new());
                continue;
            }
            Err(e) => {
                return Err(param_error(spec, &["sources", &index, "path"], e)
                    .with_help("if it may be absent on some machines, add `optional = true`"))
            }
        };
        if let Err(e) = sources::Filter::new(source.lang, &source.include, &source.exclude) {
            return Err(param_error(spec, &["sources", &index], format!("{e:#}")));
        }
        // The resolved roots: adding or editing a source file reruns the stage.
        deps.extend(resolved.iter().map(|r| Dep::source_root(spec, i, r)));
        roots.push(resolved);
    }
    deps.sort_by(|a, b| a.name.cmp(&b.name));
    deps.dedup_by(|a, b| a.name == b.name);
    let stage = DatasetStage {
        params: params.clone(),
        roots,
        skipped,
    };
    Ok(Configured::new(spec, &params, stage)?.with_deps(deps))
}

impl Stage for DatasetStage {
    fn run(&self, ctx: &StageContext<'_>) -> Result<()> {
        let mut log = ctx.log.try_clone()?;
        for source in &self.skipped {
            writeln!(log, "note: optional source skipped: {source}")?;
        }
        let stats = dataset::build(
            &self.params,
            &self.roots,
            &ctx.out_dir,
            ctx.cancel,
            &mut log,
        )?;
        let metrics = serde_json::json!({
            "pairs": stats.pairs,
            "files": stats.files.parsed,
            "bytes": stats.bytes,
            "skipped_sources": self.skipped.len(),
        });
        std::fs::write(ctx.out_dir.join("metrics.json"), metrics.to_string())?;
        log.flush()?;
        Ok(())
    }
}
