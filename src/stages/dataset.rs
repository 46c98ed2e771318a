//! `dataset`: build a code-search dataset of (doc comment, code) pairs from source
//! trees. The stage's glue: params, resolving source paths (their files enter the
//! key as deps), and running [`crate::dataset::build`].

use std::io::Write;

use anyhow::Result;

use super::{Kind, Stage, StageContext};
use crate::dataset::{self, sources, Params};
use crate::pipeline::{ConfigError, StageSpec};

pub const KIND: Kind = Kind {
    name: "dataset",
    version: 1,
    summary: "extract (doc comment, code) pairs from source trees into Parquet",
    configure,
};

struct DatasetStage {
    params: Params,
    /// Per source: the roots its path resolved to.
    roots: Vec<Vec<sources::Root>>,
}

fn configure(spec: &StageSpec) -> Result<Box<dyn Stage>, ConfigError> {
    let params: Params = super::decode(spec)?;
    let at = |path: &[&str]| {
        let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        spec.params.origin_at(&path).clone()
    };
    if params.sources.is_empty() {
        return Err(ConfigError::new(
            Some(&at(&["sources"])),
            format!("stage `{}`: `sources` is empty", spec.name),
        )
        .with_help("add one: sources = [{ lang = \"rust\", path = \"src\" }]"));
    }
    let s = &params.split;
    if [s.train, s.eval, s.test]
        .iter()
        .any(|f| !f.is_finite() || *f < 0.0)
        || s.train + s.eval + s.test <= 0.0
    {
        return Err(ConfigError::new(
            Some(&at(&["split"])),
            format!(
                "stage `{}`: split fractions must be non-negative with a positive sum",
                spec.name
            ),
        ));
    }
    let mut roots = Vec::with_capacity(params.sources.len());
    for (i, source) in params.sources.iter().enumerate() {
        let index = i.to_string();
        let resolved = sources::resolve(&source.path, &spec.dir).map_err(|e| {
            ConfigError::new(
                Some(&at(&["sources", &index, "path"])),
                format!("stage `{}`: {e}", spec.name),
            )
        })?;
        if let Err(e) = sources::Filter::new(source.lang, &source.include, &source.exclude) {
            return Err(ConfigError::new(
                Some(&at(&["sources", &index])),
                format!("stage `{}`: {e:#}", spec.name),
            ));
        }
        roots.push(resolved);
    }
    Ok(Box::new(DatasetStage { params, roots }))
}

impl Stage for DatasetStage {
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }

    /// Every resolved root, absolute: its files' contents enter the key, so adding or
    /// editing a source file reruns the stage.
    fn deps(&self) -> Vec<String> {
        let mut deps: Vec<String> = self
            .roots
            .iter()
            .flatten()
            .map(|r| r.path.to_string_lossy().into_owned())
            .collect();
        deps.sort();
        deps.dedup();
        deps
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<()> {
        let mut log = ctx.log.try_clone()?;
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
        });
        std::fs::write(ctx.out_dir.join("metrics.json"), metrics.to_string())?;
        log.flush()?;
        Ok(())
    }
}
