//! The ML commands through the real binary: `embed` and `bench train-step`.

mod common;

use common::{stderr, Project};

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn bench_train_step_runs_the_lora_step_on_a_tiny_model() {
    let p = Project::new();
    for model in ["tiny_bert", "tiny_t5_gated"] {
        let report = p.json(&[
            "bench",
            "train-step",
            "--model",
            &fixture(model),
            "--batch",
            "3",
            "--qlen",
            "4",
            "--dlen",
            "6",
            "--steps",
            "3",
            "--warmup",
            "1",
        ]);
        assert!(report["samples_per_s"].as_f64().unwrap() > 0.0, "{report}");
        assert!(
            report["final_loss"].as_f64().unwrap().is_finite(),
            "{report}"
        );
        // LoRA r16 on q and v of two layers of width 32: 2 layers x 2 targets x (16x32 + 32x16).
        assert_eq!(
            report["trainable_params"],
            2 * 2 * (16 * 32 + 32 * 16),
            "{model}"
        );
        assert_blas_named(&report);
    }
}

/// The report names OpenBLAS's kernel set (Linux builds link OpenBLAS).
fn assert_blas_named(report: &serde_json::Value) {
    let blas = report["blas"].as_str().unwrap_or_default();
    #[cfg(target_os = "linux")]
    assert!(!blas.is_empty(), "no OpenBLAS kernel set named: {report}");
    #[cfg(not(target_os = "linux"))]
    let _ = blas;
}

#[test]
fn an_eager_bench_prints_the_phase_table_and_the_mfu() {
    let p = Project::new();
    let out = p.xtr(&[
        "bench",
        "train-step",
        "--model",
        &fixture("tiny_bert"),
        "--eager",
        "--batch",
        "3",
        "--qlen",
        "4",
        "--dlen",
        "6",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--device",
        "cpu",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    for row in [
        "MFU ",
        "GEMM peak",
        "forward (query)",
        "forward (doc)",
        "MaxSim",
        "loss",
        "backward",
        "optimizer",
        "100.0%",
    ] {
        assert!(text.contains(row), "no {row:?} in:\n{text}");
    }
}

#[test]
fn gpu_without_a_gpu_is_a_clear_error() {
    let p = Project::new();
    let out = p.xtr(&[
        "bench",
        "train-step",
        "--model",
        &fixture("tiny_bert"),
        "--device",
        "gpu",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("this MLX build has no GPU"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_model_dir_without_config_names_the_file() {
    let p = Project::new();
    p.file("empty/readme.txt", "nothing here");
    let out = p.xtr(&["embed", "--model", "empty", "hello"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("config.json"), "{}", stderr(&out));
}

#[test]
fn bench_encode_reports_tokens_per_second() {
    let p = Project::new();
    let r = p.json(&[
        "bench",
        "encode",
        "--model",
        &fixture("tiny_t5_relu"),
        "--batch",
        "2",
        "--len",
        "5",
        "--steps",
        "2",
    ]);
    assert_eq!((r["batch"].as_i64(), r["len"].as_i64()), (Some(2), Some(5)));
    let (tps, secs) = (
        r["tokens_per_s"].as_f64().unwrap(),
        r["step_seconds"].as_f64().unwrap(),
    );
    assert!((tps * secs - 10.0).abs() < 1e-6, "{r}");
}

/// The `profile` stage through `xtr-pipe run`: it times the step on the stage's
/// device, writes profile.json and metrics.json, is cached on a rerun, and a
/// `device = "gpu"` stage on a CPU-only build stops before anything runs.
#[test]
fn profile_stage_times_the_step_and_refuses_a_missing_gpu() {
    let p = Project::new();
    let pipeline = |device: &str| {
        format!(
            r#"
[pipeline]
name = "prof"
store = "artifacts"

[stage.step]
kind = "profile"
model = "{}"
batch = 3
qlen = 4
dlen = 6
steps = 2
warmup = 1
device = "{device}"
"#,
            fixture("tiny_t5_gated")
        )
    };
    p.file("p.toml", &pipeline("cpu"));
    let first = p.json(&["run", "p.toml"]);
    let step = common::stage(&first, "step");
    assert_eq!(step["status"], "ran");
    assert!(
        step["metrics"]["samples_per_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{step}"
    );
    let dir = step["artifact"].as_str().expect("artifact");
    let profile: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{dir}/profile.json")).expect("profile.json"),
    )
    .expect("profile.json is JSON");
    assert_eq!(profile["batch"], 3);
    assert_eq!(profile["steps"], 2);
    assert!(profile["final_loss"].as_f64().is_some_and(f64::is_finite));
    for key in ["step_flops", "gemm_peak_flops", "mfu"] {
        assert!(
            profile[key].as_f64().unwrap_or(0.0) > 0.0,
            "{key}: {profile}"
        );
    }
    assert!(
        step["metrics"]["mfu"].as_f64().unwrap_or(0.0) > 0.0,
        "{step}"
    );
    let log = std::fs::read_to_string(step["log"].as_str().expect("a log path")).expect("log");
    for line in [
        "warm-up step 1:",
        "timed step 1:",
        "timed step 2:",
        "samples/s",
    ] {
        assert!(log.contains(line), "log lacks {line:?}:\n{log}");
    }
    let again = p.json(&["run", "p.toml"]);
    assert_eq!(common::stage(&again, "step")["status"], "cached");

    p.file("p.toml", &pipeline("gpu"));
    let out = p.xtr(&["run", "p.toml"]);
    if !xtr_pipe::mlx::gpu_is_available().expect("MLX answers") {
        let err = stderr(&out);
        assert!(!out.status.success(), "ran without a GPU: {err}");
        assert!(
            err.contains("p.toml:14:1: stage `step`: device = \"gpu\""),
            "{err}"
        );
        assert!(err.contains("set device = \"cpu\" or \"auto\""), "{err}");
        assert_eq!(p.artifacts().len(), 1, "no new artifact");
    }
}
