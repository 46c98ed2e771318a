//! The loop through its real code paths, on the tiny BERT fixture with a word
//! tokenizer written here and a small dataset of word pairs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use polars::prelude::{Column, DataFrame, ParquetReader, ParquetWriter, SerReader};

use super::*;
use crate::mlx::io;
use crate::model::{LoraTarget, ModelDir};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny_bert");

/// The tiny BERT (vocabulary 100) plus a whitespace word tokenizer over
/// `[PAD]`, `[UNK]`, `w2` ... `w99`.
pub(crate) fn tiny_model_with_tokenizer(dir: &Path) -> PathBuf {
    tiny_model_with_words(dir, 100)
}

/// The tiny BERT with a word tokenizer of `words` entries.
fn tiny_model_with_words(dir: &Path, words: usize) -> PathBuf {
    let root = dir.join("model");
    crate::model::tests::copy_dir(Path::new(FIXTURE), &root).unwrap();
    let mut vocab = serde_json::Map::new();
    vocab.insert("[PAD]".into(), 0.into());
    vocab.insert("[UNK]".into(), 1.into());
    for i in 2..words {
        vocab.insert(format!("w{i}"), i.into());
    }
    let tokenizer = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    std::fs::write(root.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    root
}

/// `n` train and `n_eval` eval pairs: query i is two words, its code those
/// two words and four more, so a query's words find its code.
pub(crate) fn write_pairs(path: &Path, n: usize, n_eval: usize) {
    let word = |i: usize| format!("w{}", 2 + i % 98);
    let (mut q, mut c, mut s) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n + n_eval {
        let (a, b) = (word(i * 3), word(i * 7 + 1));
        q.push(format!("{a} {b}"));
        c.push(format!(
            "{a} {} {b} {} {} {}",
            word(i * 5 + 2),
            word(i * 11 + 3),
            word(i + 40),
            word(i * 13)
        ));
        s.push(if i < n { "train" } else { "eval" }.to_string());
    }
    let mut df = DataFrame::new(
        n + n_eval,
        vec![
            Column::new("query".into(), q),
            Column::new("code".into(), c),
            Column::new("split".into(), s),
        ],
    )
    .unwrap();
    ParquetWriter::new(std::fs::File::create(path).unwrap())
        .finish(&mut df)
        .unwrap();
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    model: ModelSource,
    pairs: PathBuf,
}

fn setup(n: usize, n_eval: usize) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tiny_model_with_tokenizer(tmp.path());
    let pairs = tmp.path().join("pairs.parquet");
    write_pairs(&pairs, n, n_eval);
    Setup {
        root: tmp.path().to_path_buf(),
        model: ModelSource::Dir(ModelDir::open(&model_dir).unwrap()),
        pairs,
        _tmp: tmp,
    }
}

fn config() -> TrainConfig {
    TrainConfig {
        model: "tiny".into(),
        batch_size: 4,
        grad_accum: 2,
        epochs: 2,
        lr: 1e-2,
        warmup_steps: 2,
        max_query_tokens: 8,
        max_doc_tokens: 8,
        checkpoint_every: 2,
        eval_every: 3,
        eval_batches: 2,
        lora: LoraConfig {
            r: 4,
            alpha: 8.0,
            // Dropout draws from the PRNG key: resuming must restore it.
            dropout: 0.1,
            targets: vec![LoraTarget::Q, LoraTarget::V],
        },
        ..TrainConfig::default()
    }
}

/// Runs `cfg` in `name/{work,out}` under the setup's directory.
fn run(
    s: &Setup,
    cfg: &TrainConfig,
    name: &str,
    cancel: &CancelToken,
    on_step: &mut dyn FnMut(&StepRecord),
) -> Result<TrainSummary> {
    run_traced(s, cfg, name, None, cancel, on_step)
}

/// [`run`], writing the host's timeline to `trace` when given.
fn run_traced(
    s: &Setup,
    cfg: &TrainConfig,
    name: &str,
    trace: Option<&Path>,
    cancel: &CancelToken,
    on_step: &mut dyn FnMut(&StepRecord),
) -> Result<TrainSummary> {
    let (work, out) = (
        s.root.join(name).join("work"),
        s.root.join(name).join("out"),
    );
    let paths = TrainPaths {
        pairs: &s.pairs,
        work_dir: &work,
        out_dir: &out,
        trace,
    };
    train(
        cfg,
        &s.model,
        Dtype::Float32,
        &paths,
        None,
        cancel,
        &mut Vec::new(),
        on_step,
    )
}

#[test]
fn a_trace_times_every_compiled_update_on_the_host() {
    // 24 pairs, batches of 4, 2 per update, 2 epochs: 6 updates.
    let s = setup(24, 8);
    let cfg = TrainConfig {
        compile: true,
        ..config()
    };
    let dir = s.root.join("trace");
    let traced = || {
        run_traced(
            &s,
            &cfg,
            "traced",
            Some(&dir),
            &CancelToken::new(),
            &mut |_| {},
        )
    };
    let summary = traced().unwrap();
    // One micro-batch's operations by kind: the matmuls of the encoder's
    // linear layers among them, and a total that adds up.
    let ops = std::fs::read_to_string(dir.join("train-ops-rank0.tsv")).unwrap();
    let counts: Vec<(&str, usize)> = ops
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (name, n) = l.split_once('\t').unwrap();
            (name, n.parse().unwrap())
        })
        .collect();
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    assert!(ops.starts_with(&format!("# {total} operations")), "{ops}");
    assert!(
        counts.iter().any(|(name, n)| *name == "Matmul" && *n > 10),
        "{ops}"
    );
    let text = std::fs::read_to_string(dir.join("train-rank0.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, summary.steps);
    for (i, line) in lines.iter().enumerate() {
        let ms = |k: &str| line[k].as_f64().unwrap_or_else(|| panic!("{k} in {line}"));
        assert_eq!(line["step"].as_u64(), Some(i as u64 + 1));
        assert_eq!(line["rank"].as_u64(), Some(0));
        // A compiled update builds its micro-batches' graphs on the host,
        // and the launch holds its pieces.
        assert!(ms("grads_ms") > 0.0, "{line}");
        let pieces = ms("grads_ms") + ms("reduce_ms") + ms("update_ms") + ms("submit_ms");
        assert!(pieces <= ms("launch_ms") + 1e-6, "{line}");
        assert!(ms("calls_ms") > 0.0 && ms("calls_ms") <= pieces, "{line}");
        assert!(ms("land_ms") >= 0.0 && ms("period_ms") > 0.0, "{line}");
    }
    // Run again over the finished run's checkpoint: nothing is left to do,
    // nor to count.
    let again = traced().unwrap();
    assert_eq!(again.resumed_from, Some(summary.steps));
    let ops = std::fs::read_to_string(dir.join("train-ops-rank0.tsv")).unwrap();
    assert_eq!(
        ops,
        "# 0 operations in one micro-batch's forward/backward\n"
    );
}

fn adapters(s: &Setup, name: &str) -> HashMap<String, Vec<u8>> {
    io::load_safetensors(s.root.join(name).join("out/adapters.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.to_bytes().unwrap()))
        .collect()
}

#[test]
fn an_interrupted_and_a_killed_run_resume_to_bit_identical_adapters() {
    resume_to_bit_identical_adapters(false);
}

#[test]
fn compiled_runs_resume_to_bit_identical_adapters_too() {
    resume_to_bit_identical_adapters(true);
}

fn resume_to_bit_identical_adapters(compile: bool) {
    // 24 pairs, batches of 4: 6 per epoch, 2 epochs, 2 per update: 6 updates.
    let s = setup(24, 8);
    let cfg = TrainConfig {
        compile,
        ..config()
    };
    let whole = run(&s, &cfg, "whole", &CancelToken::new(), &mut |_| {}).unwrap();
    assert_eq!(whole.steps, 6);
    assert_eq!(whole.resumed_from, None);

    // Cancelled after step 3: a checkpoint is written at 3 and the run resumes there.
    let cancel = CancelToken::new();
    let c = cancel.clone();
    let err = run(&s, &cfg, "cancelled", &cancel, &mut |r| {
        if r.step == 3 {
            c.cancel();
        }
    })
    .unwrap_err();
    assert!(err.downcast_ref::<Cancelled>().is_some(), "{err:#}");
    let resumed = run(&s, &cfg, "cancelled", &CancelToken::new(), &mut |_| {}).unwrap();
    assert_eq!(resumed.resumed_from, Some(3));

    // Killed during step 5 (nothing after the step-4 checkpoint survives).
    let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(&s, &cfg, "killed", &CancelToken::new(), &mut |r| {
            assert!(r.step < 5, "killed at step 5");
        })
    }));
    assert!(killed.is_err());
    let mut seen = Vec::new();
    let resumed = run(&s, &cfg, "killed", &CancelToken::new(), &mut |r| {
        seen.push(r.step)
    })
    .unwrap();
    assert_eq!(resumed.resumed_from, Some(4));
    assert_eq!(seen, [5, 6], "only the lost steps are redone");

    let want = adapters(&s, "whole");
    assert_eq!(want.len(), 2 * 2 * 2, "A and B for q and v of two layers");
    assert_eq!(adapters(&s, "cancelled"), want, "cancelled + resumed");
    assert_eq!(adapters(&s, "killed"), want, "killed + resumed");

    // The metrics of the resumed run cover every step once.
    let file = std::fs::File::open(s.root.join("killed/out/metrics.parquet")).unwrap();
    let df = ParquetReader::new(file).finish().unwrap();
    let steps: Vec<u64> = df
        .column("step")
        .unwrap()
        .u64()
        .unwrap()
        .into_no_null_iter()
        .collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6]);
    let val = df.column("val_loss").unwrap().f32().unwrap();
    assert_eq!(val.null_count(), 4, "validation at steps 3 and 6 only");
}

#[test]
fn the_loss_falls_and_the_outputs_are_written() {
    let s = setup(32, 8);
    let cfg = TrainConfig {
        batch_size: 4,
        grad_accum: 1,
        epochs: 8,
        lr: 2e-2,
        warmup_steps: 0,
        schedule: Schedule::Constant,
        checkpoint_every: 1000,
        eval_every: 0,
        lora: LoraConfig {
            dropout: 0.0,
            ..config().lora
        },
        ..config()
    };
    let mut losses = Vec::new();
    let summary = run(&s, &cfg, "fall", &CancelToken::new(), &mut |r| {
        losses.push(r.loss)
    })
    .unwrap();
    assert_eq!(losses.len(), 64);
    let mean = |xs: &[f32]| xs.iter().sum::<f32>() / xs.len() as f32;
    let (first, last) = (mean(&losses[..8]), mean(&losses[56..]));
    assert!(last < 0.7 * first, "loss {first} -> {last}");
    assert!(summary.val_accuracy.is_some() && summary.val_loss.is_some());

    let out = s.root.join("fall/out");
    let train_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("train.json")).unwrap()).unwrap();
    assert_eq!(train_json["config"]["batch_size"], 4);
    assert_eq!(train_json["steps"], 64);
    assert!(train_json["engine"].as_str().unwrap().contains("MLX"));
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert!(metrics
        .as_object()
        .unwrap()
        .values()
        .all(|v| !v.is_object() && !v.is_array()));
    assert_eq!(
        metrics["final_loss"].as_f64().unwrap() as f32,
        summary.final_loss
    );
    let peft: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("lora_config.json")).unwrap())
            .unwrap();
    assert_eq!(peft["peft_type"], "LORA");
    assert_eq!(
        peft["target_modules"],
        serde_json::json!(["query", "value"])
    );
    assert_eq!(peft["r"], 4);

    // The adapters load back (PEFT names) into the base to the trained model.
    let dir = ModelDir::open(s.root.join("model")).unwrap();
    let mut enc = dir
        .load_encoder(&crate::model::LoadOptions::default())
        .unwrap();
    let got = crate::model::lora::load_adapters(&mut enc, &out.join("adapters.safetensors"), None)
        .unwrap();
    assert_eq!((got.r, got.alpha), (4, 8.0));
}

#[test]
fn a_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint() {
    let s = setup(24, 0);
    let cfg = TrainConfig {
        lr: 1e30,
        warmup_steps: 0,
        schedule: Schedule::Constant,
        checkpoint_every: 1,
        grad_clip: 0.0,
        ..config()
    };
    let msg = format!(
        "{:#}",
        run(&s, &cfg, "nan", &CancelToken::new(), &mut |_| {}).unwrap_err()
    );
    assert!(msg.contains("step 2 of 6: training stopped"), "{msg}");
    assert!(msg.contains("last good checkpoint (step 1)"), "{msg}");
    assert!(msg.contains("is NaN") || msg.contains("is inf"), "{msg}");
    let ckpt = checkpoint::load(&checkpoint::path_in(&s.root.join("nan/work")))
        .unwrap()
        .unwrap();
    assert_eq!(ckpt.run.step, 1);
    assert!(
        !s.root.join("nan/out/adapters.safetensors").exists(),
        "nothing published"
    );
}

#[test]
fn an_empty_split_or_too_large_a_batch_is_a_clear_error() {
    let s = setup(0, 5);
    let msg = format!(
        "{:#}",
        run(&s, &config(), "empty", &CancelToken::new(), &mut |_| {}).unwrap_err()
    );
    assert!(
        msg.contains("the train split of") && msg.contains("is empty"),
        "{msg}"
    );

    let s = setup(6, 0);
    let cfg = TrainConfig {
        batch_size: 8,
        ..config()
    };
    let msg = format!(
        "{:#}",
        run(&s, &cfg, "big", &CancelToken::new(), &mut |_| {}).unwrap_err()
    );
    assert!(
        msg.contains("batch_size 8 is larger than the train split"),
        "{msg}"
    );
    assert!(msg.contains("(6 pairs)"), "{msg}");
}

#[test]
fn a_tokenizer_larger_than_the_model_vocabulary_is_refused() {
    let s = setup(8, 0);
    let tmp = tempfile::tempdir().unwrap();
    let dir = ModelDir::open(tiny_model_with_words(tmp.path(), 150)).unwrap();
    let paths = TrainPaths {
        pairs: &s.pairs,
        work_dir: &tmp.path().join("work"),
        out_dir: &tmp.path().join("out"),
        trace: None,
    };
    let err = train(
        &config(),
        &ModelSource::Dir(dir),
        Dtype::Float32,
        &paths,
        None,
        &CancelToken::new(),
        &mut Vec::new(),
        &mut |_| {},
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("has 150 tokens but the model's embedding table has 100"),
        "{msg}"
    );
    assert!(msg.contains("does not match the model"), "{msg}");
}

#[test]
fn the_config_reads_like_the_reference_and_rejects_unknown_nested_keys() {
    let cfg: TrainConfig =
        toml::from_str("lr = 1e-4\nlora = { r = 8, targets = [\"q\", \"k\"] }\n").unwrap();
    assert_eq!(cfg.lr, 1e-4);
    assert_eq!(cfg.lora.r, 8);
    assert_eq!(cfg.lora.alpha, 32.0, "unset keys keep their defaults");
    assert_eq!(cfg.lora.targets, [LoraTarget::Q, LoraTarget::K]);
    let d = TrainConfig::default();
    assert_eq!(
        (d.batch_size, d.grad_accum, d.epochs, d.warmup_steps),
        (12, 4, 3, 500)
    );
    assert_eq!(
        (d.lr, d.schedule, d.checkpoint_every),
        (2e-5, Schedule::Cosine, 1000)
    );
    assert_eq!(
        (d.loss.temperature, d.loss.margin, d.loss.margin_weight),
        (0.07, 0.2, 0.1)
    );
    // A top-level unknown key (`batchsize`) is refused by the `train` kind's
    // decoding, which flattens this struct (tested in `stages::train`).
    assert!(toml::from_str::<TrainConfig>("lora = { rank = 3 }").is_err());
    assert!(toml::from_str::<TrainConfig>("schedule = \"step\"").is_err());
}

/// A benchmark, not a test (`benches/train_loop_cpu.sh` runs it): the loop on
/// `XTR_BENCH_MODEL` (an HF directory, e.g. all-MiniLM-L6-v2, or
/// `t5-base-random`) and `XTR_BENCH_PAIRS` (a dataset artifact's
/// pairs.parquet) against `bench train-step` at the same batch and the
/// batches' mean padded lengths; prints one JSON line. `XTR_BENCH_DEVICE=gpu`
/// runs both on the GPU, `XTR_BENCH_BATCH` sets the batch (default 12).
#[test]
#[ignore = "a benchmark: needs XTR_BENCH_MODEL and XTR_BENCH_PAIRS"]
fn bench_train_loop_against_the_step() {
    use crate::train::bench::{self, BenchOptions};
    let (Ok(model), Ok(pairs)) = (
        std::env::var("XTR_BENCH_MODEL"),
        std::env::var("XTR_BENCH_PAIRS"),
    ) else {
        panic!("set XTR_BENCH_MODEL and XTR_BENCH_PAIRS");
    };
    let env_num = |name: &str, default: u64| -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let (steps, batch) = (
        env_num("XTR_BENCH_STEPS", 20),
        env_num("XTR_BENCH_BATCH", 12),
    );
    if std::env::var("XTR_BENCH_DEVICE").as_deref() == Ok("gpu") {
        crate::mlx::Device::set_default(&crate::mlx::Device::gpu()).unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        model: model.clone(),
        batch_size: batch as usize,
        grad_accum: 1,
        max_steps: Some(steps),
        dropout: false,
        eval_every: 0,
        eval_batches: 8,
        // Short enough a warmup that the loss moves within the steps timed.
        lr: 1e-4,
        warmup_steps: 10,
        ..TrainConfig::default()
    };
    let source = crate::model::resolve::resolve(&model).unwrap();
    let (work, out) = (tmp.path().join("work"), tmp.path().join("out"));
    let paths = TrainPaths {
        pairs: Path::new(&pairs),
        work_dir: &work,
        out_dir: &out,
        trace: None,
    };
    let (mut qlen, mut dlen, mut times) = (0usize, 0usize, Vec::new());
    let mut last = Instant::now();
    let summary = train(
        &cfg,
        &source,
        Dtype::Float32,
        &paths,
        None,
        &CancelToken::new(),
        &mut std::io::sink(),
        &mut |r| {
            times.push((r.loss, last.elapsed().as_secs_f64(), r.samples_per_s));
            last = Instant::now();
        },
    )
    .unwrap();
    // The step alone at the mean padded shape of the run's batches.
    let batcher_shapes = {
        let text = data::read_pairs(Path::new(&pairs), "train").unwrap();
        let (enc, vocab) = match &source {
            ModelSource::Dir(dir) => (
                TextEncoder::from_model_dir(dir, 32, 128).unwrap(),
                dir.vocab_size(),
            ),
            ModelSource::RandomT5 => (TextEncoder::Hashing { vocab: 32128 }, 32128),
        };
        let (ex, _) = data::tokenize(&enc, &text, 32, 128, vocab).unwrap();
        let b = Batcher::new(ex, batch as usize, 0, "train").unwrap();
        let batches = b.epoch(0);
        for idx in batches.iter().take(steps as usize) {
            qlen += idx
                .iter()
                .map(|&i| b.examples()[i].query.len())
                .max()
                .unwrap();
            dlen += idx
                .iter()
                .map(|&i| b.examples()[i].doc.len())
                .max()
                .unwrap();
        }
        let n = batches.len().min(steps as usize).max(1);
        (qlen / n, dlen / n)
    };
    let report = bench::run(&BenchOptions {
        model: model.clone(),
        batch: batch as i32,
        qlen: batcher_shapes.0 as i32,
        dlen: batcher_shapes.1 as i32,
        steps: 10,
        warmup: 2,
        dropout: false,
        compile: true,
        dtype: Dtype::Float32,
    })
    .unwrap();
    // Steady state: the steps after the first few (compiles per new shape).
    let tail: Vec<f64> = times.iter().skip(times.len() / 2).map(|t| t.2).collect();
    let median = {
        let mut t = tail.clone();
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let tenth = (times.len() / 10).max(1);
    let mean_loss = |t: &[(f32, f64, f64)]| t.iter().map(|x| x.0).sum::<f32>() / t.len() as f32;
    println!(
        "{}",
        serde_json::json!({
            "loss_first_tenth": mean_loss(&times[..tenth]),
            "loss_last_tenth": mean_loss(&times[times.len() - tenth..]),
            "val_loss": summary.val_loss,
            "val_accuracy": summary.val_accuracy,
            "train_pairs": summary.train_pairs,
            "train_samples_per_s_all_steps": summary.samples_per_s,
            "train_samples_per_s_median_second_half": median,
            "data_seconds": summary.data_seconds,
            "train_seconds": summary.train_seconds,
            "data_share": summary.data_seconds / summary.train_seconds,
            "mean_padded_qlen": batcher_shapes.0,
            "mean_padded_dlen": batcher_shapes.1,
            "bench_train_step_samples_per_s": report.samples_per_s,
            "steps": summary.steps,
            "device": summary.device,
            "batch": batch,
        })
    );
}
