//! Where a model named in a pipeline lives: a local HF-layout directory, a
//! Hugging Face cache entry by repo id (`google/xtr-base-en` under
//! `$HF_HUB_CACHE`, `$HF_HOME/hub` or `~/.cache/huggingface/hub`), or
//! [`T5_BASE_RANDOM`] (random weights, for timing). A model that is not there
//! is an error that says exactly where to put it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::bench::T5_BASE_RANDOM;
use super::random::{random_t5, t5_base_config};
use super::{LoadOptions, ModelDir, MultiVectorModel};
use crate::mlx::Dtype;

/// A model that exists.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// An HF-layout directory (a cache snapshot resolves to its directory).
    Dir(ModelDir),
    /// A t5-base-sized encoder with seeded random weights and no tokenizer.
    RandomT5,
}

impl ModelSource {
    /// Loads the model in `dtype`; returns it and its vocabulary size.
    pub fn load(&self, dtype: Dtype) -> Result<(MultiVectorModel, i32)> {
        match self {
            ModelSource::Dir(dir) => {
                Ok((dir.load_model(&LoadOptions { dtype })?, dir.vocab_size()))
            }
            ModelSource::RandomT5 => {
                let config = t5_base_config();
                let vocab = config.vocab_size;
                Ok((random_t5(config, 128, 0, dtype)?, vocab))
            }
        }
    }

    /// The directory, or the name of the random model.
    pub fn describe(&self) -> String {
        match self {
            ModelSource::Dir(dir) => dir.root.display().to_string(),
            ModelSource::RandomT5 => T5_BASE_RANDOM.to_string(),
        }
    }
}

/// The Hugging Face hub cache directory and how it was found (for messages).
#[derive(Debug, Clone)]
pub struct HfCache {
    pub hub: PathBuf,
    pub found_by: String,
}

impl HfCache {
    /// `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`,
    /// else `~/.cache/huggingface/hub` (the order `huggingface_hub` uses).
    pub fn from_env() -> HfCache {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        if let Some(p) = var("HF_HUB_CACHE") {
            return HfCache::at(p, "$HF_HUB_CACHE");
        }
        if let Some(p) = var("HF_HOME") {
            return HfCache::at(p.join("hub"), "$HF_HOME/hub");
        }
        if let Some(p) = var("XDG_CACHE_HOME") {
            return HfCache::at(p.join("huggingface/hub"), "$XDG_CACHE_HOME/huggingface/hub");
        }
        let home = var("HOME").unwrap_or_else(|| PathBuf::from("~"));
        HfCache::at(
            home.join(".cache/huggingface/hub"),
            "the default, ~/.cache/huggingface/hub; set HF_HOME to use another",
        )
    }

    pub fn at(hub: impl Into<PathBuf>, found_by: &str) -> HfCache {
        HfCache {
            hub: hub.into(),
            found_by: found_by.to_string(),
        }
    }

    /// `models--org--name` for `org/name`.
    fn entry(&self, repo_id: &str) -> PathBuf {
        self.hub
            .join(format!("models--{}", repo_id.replace('/', "--")))
    }
}

/// Resolves `spec` against the current directory and the environment's HF cache.
pub fn resolve(spec: &str) -> Result<ModelSource> {
    resolve_in(spec, Path::new("."), &HfCache::from_env())
}

/// Resolves `spec`: [`T5_BASE_RANDOM`]; a directory (relative to `base`); or
/// a repo id `org/name` in `cache` (the snapshot `refs/main` names, else the
/// only snapshot).
pub fn resolve_in(spec: &str, base: &Path, cache: &HfCache) -> Result<ModelSource> {
    if spec == T5_BASE_RANDOM {
        return Ok(ModelSource::RandomT5);
    }
    let local = base.join(spec);
    if local.is_dir() {
        let dir = ModelDir::open(&local).with_context(|| format!("model {spec:?}"))?;
        return Ok(ModelSource::Dir(dir));
    }
    let shown_local = std::path::absolute(&local).unwrap_or(local);
    if !is_repo_id(spec) {
        bail!(
            "model {spec:?} not found: there is no directory {}. Put an HF-layout model directory there \
             (config.json, model.safetensors, tokenizer.json; for a multi-vector head the \
             sentence-transformers modules.json and *_Dense/), or name a Hugging Face repo id \
             (org/name) that is in the local cache, or {T5_BASE_RANDOM} for random weights",
            shown_local.display()
        );
    }
    let entry = cache.entry(spec);
    match snapshot(&entry)? {
        Some(dir) => {
            let dir = ModelDir::open(&dir)
                .with_context(|| format!("model {spec:?} from the Hugging Face cache"))?;
            Ok(ModelSource::Dir(dir))
        }
        None => bail!(
            "model {spec:?} not found: there is no directory {} and no Hugging Face cache entry {}/snapshots/<revision>/ \
             (the cache is {}, {}). Put the model there: on a machine with network run \
             `huggingface-cli download {spec}` and copy its {} here, or place an HF-layout directory \
             (config.json, model.safetensors, tokenizer.json, modules.json, *_Dense/) at {}",
            shown_local.display(),
            entry.display(),
            cache.hub.display(),
            cache.found_by,
            entry.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            shown_local.display()
        ),
    }
}

/// `org/name` with the characters the hub allows.
fn is_repo_id(spec: &str) -> bool {
    let mut parts = spec.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// The snapshot directory of a cache entry, if the entry has one.
fn snapshot(entry: &Path) -> Result<Option<PathBuf>> {
    let snapshots = entry.join("snapshots");
    if !snapshots.is_dir() {
        return Ok(None);
    }
    let refs_main = entry.join("refs/main");
    if refs_main.is_file() {
        let rev = std::fs::read_to_string(&refs_main)
            .with_context(|| format!("reading {}", refs_main.display()))?;
        let dir = snapshots.join(rev.trim());
        if dir.is_dir() {
            return Ok(Some(dir));
        }
        bail!(
            "{} names revision {} but {} does not exist (an incomplete download?)",
            refs_main.display(),
            rev.trim(),
            dir.display()
        );
    }
    let mut revs: Vec<PathBuf> = std::fs::read_dir(&snapshots)
        .with_context(|| format!("listing {}", snapshots.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    revs.sort();
    match revs.len() {
        0 => Ok(None),
        1 => Ok(revs.pop()),
        _ => bail!(
            "{} holds {} snapshots and no refs/main says which to use: name the snapshot directory itself",
            snapshots.display(),
            revs.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_bert")
    }

    /// Copies the tiny BERT into `dir` (files and the Dense folder).
    fn copy_model(dir: &Path) {
        crate::model::tests::copy_dir(&fixture(), dir).unwrap();
    }

    fn err(spec: &str, base: &Path, cache: &HfCache) -> String {
        match resolve_in(spec, base, cache) {
            Ok(m) => panic!("{spec} resolved to {}", m.describe()),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn a_local_directory_and_the_random_model() {
        let cache = HfCache::at("/nonexistent/hub", "test");
        let m = resolve_in(
            "tests/fixtures/tiny_bert",
            Path::new(env!("CARGO_MANIFEST_DIR")),
            &cache,
        )
        .unwrap();
        assert!(matches!(m, ModelSource::Dir(ref d) if d.root.ends_with("tiny_bert")));
        assert!(matches!(
            resolve_in(T5_BASE_RANDOM, Path::new("."), &cache).unwrap(),
            ModelSource::RandomT5
        ));
    }

    #[test]
    fn a_repo_id_resolves_to_the_snapshot_refs_main_names() {
        let tmp = tempfile::tempdir().unwrap();
        let entry = tmp.path().join("hub/models--google--xtr-base-en");
        copy_model(&entry.join("snapshots/abc123"));
        std::fs::create_dir_all(entry.join("snapshots/old999")).unwrap();
        std::fs::create_dir_all(entry.join("refs")).unwrap();
        std::fs::write(entry.join("refs/main"), "abc123\n").unwrap();
        let cache = HfCache::at(tmp.path().join("hub"), "test");
        let m = resolve_in("google/xtr-base-en", tmp.path(), &cache).unwrap();
        assert!(matches!(m, ModelSource::Dir(ref d) if d.root == entry.join("snapshots/abc123")));

        // Without refs/main, two snapshots are ambiguous; one is not.
        std::fs::remove_file(entry.join("refs/main")).unwrap();
        let msg = err("google/xtr-base-en", tmp.path(), &cache);
        assert!(msg.contains("2 snapshots"), "{msg}");
        std::fs::remove_dir(entry.join("snapshots/old999")).unwrap();
        assert!(resolve_in("google/xtr-base-en", tmp.path(), &cache).is_ok());
    }

    #[test]
    fn a_missing_model_says_where_to_put_it() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = HfCache::at(tmp.path().join("hub"), "$HF_HOME/hub");
        let msg = err("google/xtr-base-en", tmp.path(), &cache);
        let entry = tmp.path().join("hub/models--google--xtr-base-en");
        assert!(
            msg.contains(&format!("{}/snapshots/<revision>/", entry.display())),
            "{msg}"
        );
        assert!(msg.contains("$HF_HOME/hub"), "{msg}");
        assert!(
            msg.contains("huggingface-cli download google/xtr-base-en"),
            "{msg}"
        );
        assert!(
            msg.contains(&tmp.path().join("google/xtr-base-en").display().to_string()),
            "{msg}"
        );

        let msg = err("models/./mine/x", tmp.path(), &cache);
        assert!(msg.contains("there is no directory"), "{msg}");
        assert!(
            msg.contains("config.json, model.safetensors, tokenizer.json"),
            "{msg}"
        );
    }

    #[test]
    fn a_directory_that_is_not_a_model_is_an_error_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("empty")).unwrap();
        let msg = err("empty", tmp.path(), &HfCache::at("/nonexistent", "test"));
        assert!(msg.contains("config.json"), "{msg}");
    }
}
