//! Folding LoRA adapters into their base model: every adapted weight becomes
//! `W + (alpha / r) · B A` (in f32, stored back in the base's dtype), every
//! other tensor is kept bit for bit, and the result is written as an HF-layout
//! directory (`config.json`, one `model.safetensors`, the tokenizer files, the
//! sentence-transformers `modules.json` and head folders) that
//! [`ModelDir::open`] — and `transformers` / `sentence-transformers` — load.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use super::lora::{load_adapters, LinearLayer};
use super::{LoadOptions, ModelDir};
use crate::mlx::{io, Array};

/// What [`merge`] did.
#[derive(Debug, Clone, Serialize)]
pub struct MergeSummary {
    /// The tensors that received an adapter update.
    pub fused: Vec<String>,
    /// Files written, relative to the output directory.
    pub files: Vec<String>,
    pub r: i32,
    pub alpha: f32,
}

/// Weight files of other formats hold the *unmerged* weights: never copied.
const SKIPPED_FILES: &[&str] = &[
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "tf_model.h5",
    "flax_model.msgpack",
    "rust_model.ot",
    "model.onnx",
    "model.safetensors.index.json",
];

/// Merges the adapters in `adapters` (PEFT names, as `save_adapters` writes
/// them) into `base` and writes the merged model into `out` (created).
pub fn merge(base: &ModelDir, adapters: &Path, out: &Path) -> Result<MergeSummary> {
    let mut encoder = base.load_encoder(&LoadOptions::default())?;
    let lora = load_adapters(&mut encoder, adapters, None)?;
    let mut fused: HashMap<String, Array> = HashMap::new();
    for (module, _, layer) in encoder.linears() {
        if let LinearLayer::Lora(l) = layer {
            let weight = l.fuse().with_context(|| format!("fusing {module}"))?.weight;
            fused.insert(format!("{module}.weight"), weight);
        }
    }

    let mut tensors: Vec<(String, Array)> = Vec::new();
    let mut used: Vec<String> = Vec::new();
    for file in base.weight_files()? {
        let loaded = io::load_safetensors(&file).map_err(|e| anyhow!("{}: {e}", file.display()))?;
        for (name, array) in loaded {
            let hit = fused
                .iter()
                .find(|(suffix, _)| name == **suffix || name.ends_with(&format!(".{suffix}")));
            let array = match hit {
                Some((suffix, w)) => {
                    if used.contains(suffix) {
                        bail!(
                            "{}: more than one tensor ends in {suffix}",
                            base.encoder_dir.display()
                        );
                    }
                    used.push(suffix.clone());
                    w.as_dtype(array.dtype())?
                }
                None => array,
            };
            tensors.push((name, array));
        }
    }
    if let Some(missing) = fused.keys().find(|k| !used.contains(k)) {
        bail!(
            "{}: no tensor {missing} to fold the adapter into",
            base.encoder_dir.display()
        );
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));

    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut files = copy_model_files(base, out)?;
    let rel_encoder = base
        .encoder_dir
        .strip_prefix(&base.root)
        .unwrap_or(Path::new(""))
        .to_path_buf();
    let weights = out.join(&rel_encoder).join("model.safetensors");
    if let Some(dir) = weights.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    io::save_safetensors(tensors.iter().map(|(k, v)| (k, v)), Some(meta), &weights)
        .with_context(|| format!("writing {}", weights.display()))?;
    files.push(rel_encoder.join("model.safetensors").display().to_string());
    files.sort();
    used.sort();
    Ok(MergeSummary {
        fused: used,
        files,
        r: lora.r,
        alpha: lora.alpha,
    })
}

/// Copies everything of `base` but its weights (configs, tokenizer files,
/// sentence-transformers modules and their own weights); returns the relative
/// paths copied. Links are followed (a Hugging Face cache snapshot is links).
fn copy_model_files(base: &ModelDir, out: &Path) -> Result<Vec<String>> {
    let mut copied = Vec::new();
    let mut stack: Vec<PathBuf> = vec![base.root.clone()];
    while let Some(dir) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?;
        for entry in entries {
            let path = entry
                .with_context(|| format!("listing {}", dir.display()))?
                .path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let is_encoder_weights = dir == base.encoder_dir && name.ends_with(".safetensors");
            if is_encoder_weights || SKIPPED_FILES.contains(&name.as_str()) {
                continue;
            }
            let rel = path.strip_prefix(&base.root).unwrap_or(&path).to_path_buf();
            let target = out.join(&rel);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::copy(&path, &target)
                .with_context(|| format!("copying {} to {}", path.display(), target.display()))?;
            copied.push(rel.display().to_string());
        }
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mlx::random;
    use crate::model::lora::{apply_lora, lora_params, save_adapters, set_lora_params};
    use crate::model::{LoraConfig, LoraTarget, MultiVectorModel};

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    /// The fixture with LoRA on `targets`, both matrices random (B = 0 would
    /// make the merge trivially right); its adapters saved in `dir`.
    fn adapted(name: &str, targets: Vec<LoraTarget>, dir: &Path) -> (MultiVectorModel, PathBuf) {
        let base = ModelDir::open(fixture(name)).unwrap();
        let mut model = base.load_model(&LoadOptions::default()).unwrap();
        let cfg = LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets,
        };
        apply_lora(&mut model.encoder, &cfg, &random::key(1).unwrap()).unwrap();
        let mut key = random::key(2).unwrap();
        let params: Vec<Array> = lora_params(&model.encoder)
            .iter()
            .map(|p| {
                let (next, sub) = random::split2(&key).unwrap();
                key = next;
                random::normal::<f32>(p.shape(), None, Some(0.3), &sub).unwrap()
            })
            .collect();
        set_lora_params(&mut model.encoder, &params).unwrap();
        let file = dir.join("adapters.safetensors");
        save_adapters(&model.encoder, &file).unwrap();
        (model, file)
    }

    fn golden_inputs() -> (Array, Array) {
        let g = io::load_safetensors(fixture("golden/tiny_bert.safetensors")).unwrap();
        (g["input_ids"].clone(), g["attention_mask"].clone())
    }

    #[test]
    fn merged_embeddings_equal_the_adapter_model_and_the_directory_loads() {
        for (name, targets) in [
            ("tiny_bert", vec![LoraTarget::Q, LoraTarget::V]),
            (
                "tiny_t5_gated",
                vec![LoraTarget::Q, LoraTarget::O, LoraTarget::Ffn],
            ),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let (model, file) = adapted(name, targets, tmp.path());
            let base = ModelDir::open(fixture(name)).unwrap();
            let out = tmp.path().join("merged");
            let summary = merge(&base, &file, &out).unwrap();
            assert!(summary.fused.len() >= 4, "{name}: {:?}", summary.fused);
            for f in [
                "config.json",
                "model.safetensors",
                "modules.json",
                "2_Dense/config.json",
                "2_Dense/model.safetensors",
            ] {
                assert!(out.join(f).is_file(), "{name}: {f} missing");
            }

            let merged = ModelDir::open(&out)
                .unwrap()
                .load_model(&LoadOptions::default())
                .unwrap();
            let (ids, mask) = golden_inputs();
            let want = model
                .forward(&ids, &mask)
                .unwrap()
                .embeddings
                .to_vec::<f32>()
                .unwrap();
            let got = merged
                .forward(&ids, &mask)
                .unwrap()
                .embeddings
                .to_vec::<f32>()
                .unwrap();
            let diff = want
                .iter()
                .zip(&got)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(diff < 1e-5, "{name}: merged embeddings differ by {diff}");
            let base_model = base.load_model(&LoadOptions::default()).unwrap();
            let before = base_model
                .forward(&ids, &mask)
                .unwrap()
                .embeddings
                .to_vec::<f32>()
                .unwrap();
            let moved = before
                .iter()
                .zip(&got)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(moved > 1e-2, "{name}: the merge changed nothing ({moved})");

            // Tensors without an adapter are copied bit for bit.
            let (a, b) = (
                io::load_safetensors(fixture(name).join("model.safetensors")).unwrap(),
                io::load_safetensors(out.join("model.safetensors")).unwrap(),
            );
            assert_eq!(a.len(), b.len(), "{name}: every tensor is kept");
            for (k, v) in &a {
                if !summary.fused.iter().any(|f| k.ends_with(f.as_str())) {
                    assert_eq!(
                        v.to_bytes().unwrap(),
                        b[k].to_bytes().unwrap(),
                        "{name}: {k}"
                    );
                }
            }
        }
    }

    /// PyTorch's side, from the golden fixtures: PEFT's `merge_and_unload()`
    /// weights and the PEFT model's `last_hidden_state` (what `transformers`
    /// computes); the merged directory must reproduce both.
    #[test]
    fn merging_peft_adapters_matches_peft_merge_and_unload() {
        for name in ["tiny_bert", "tiny_t5_gated"] {
            let tmp = tempfile::tempdir().unwrap();
            let base = ModelDir::open(fixture(name)).unwrap();
            let adapters = fixture(&format!("{name}_lora_peft/adapter_model.safetensors"));
            let out = tmp.path().join("merged");
            let summary = merge(&base, &adapters, &out).unwrap();
            assert_eq!((summary.r, summary.alpha), (4, 8.0), "{name}");
            let golden =
                io::load_safetensors(fixture(&format!("golden/{name}_lora.safetensors"))).unwrap();
            let merged = io::load_safetensors(out.join("model.safetensors")).unwrap();
            let mut checked = 0;
            for (key, want) in golden.iter().filter(|(k, _)| k.starts_with("fused.")) {
                let got = &merged[key.trim_start_matches("fused.")];
                let (g, w) = (got.to_vec::<f32>().unwrap(), want.to_vec::<f32>().unwrap());
                let d = g
                    .iter()
                    .zip(&w)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(d < 1e-6, "{name}: {key} differs from PEFT's merge by {d}");
                checked += 1;
            }
            assert_eq!(checked, 4, "{name}: q and v of two layers");

            let encoder = ModelDir::open(&out)
                .unwrap()
                .load_encoder(&LoadOptions::default())
                .unwrap();
            let hidden = encoder
                .forward(&golden["input_ids"], &golden["attention_mask"])
                .unwrap()
                .to_vec::<f32>()
                .unwrap();
            let want = golden["last_hidden_state"].to_vec::<f32>().unwrap();
            let d = hidden
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                d < 1e-4,
                "{name}: merged hidden states differ from PEFT's by {d}"
            );
        }
    }

    #[test]
    fn tokenizer_files_are_copied_and_other_weight_formats_are_not() {
        let tmp = tempfile::tempdir().unwrap();
        let base_dir = tmp.path().join("base");
        crate::model::tests::copy_dir(&fixture("tiny_bert"), &base_dir).unwrap();
        for f in [
            "tokenizer.json",
            "tokenizer_config.json",
            "vocab.txt",
            "pytorch_model.bin",
        ] {
            std::fs::write(base_dir.join(f), f).unwrap();
        }
        let (_, file) = adapted("tiny_bert", vec![LoraTarget::V], tmp.path());
        let out = tmp.path().join("merged");
        let summary = merge(&ModelDir::open(&base_dir).unwrap(), &file, &out).unwrap();
        for f in ["tokenizer.json", "tokenizer_config.json", "vocab.txt"] {
            assert_eq!(std::fs::read_to_string(out.join(f)).unwrap(), f);
        }
        assert!(
            !out.join("pytorch_model.bin").exists(),
            "unmerged weights must not travel"
        );
        assert_eq!(summary.fused.len(), 2, "v of two layers");
        assert_eq!((summary.r, summary.alpha), (4, 8.0));
    }

    #[test]
    fn adapters_of_another_model_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (_, file) = adapted("tiny_t5_gated", vec![LoraTarget::Q], tmp.path());
        let base = ModelDir::open(fixture("tiny_bert")).unwrap();
        let err = merge(&base, &file, &tmp.path().join("out")).unwrap_err();
        assert!(
            format!("{err:#}").contains("adapters for modules this encoder lacks"),
            "{err:#}"
        );
    }
}
