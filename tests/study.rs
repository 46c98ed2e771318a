//! The study's stages end to end through the CLI, on a micro config: a source
//! tree written here, the tiny word-level BERT fixture, a handful of steps.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{stage, stderr, wait_for_file, Project};

const MODEL: &str = common::TINY_BERT_WORDS;

/// The fixture-word sources, and eight queries made of their docstrings' words.
fn write_sources(p: &Project, n: usize) {
    common::write_word_sources(p, n);
    let word = |i: usize| format!("w{}", 2 + i % 98);
    let mut queries = String::new();
    for i in 0..8 {
        queries.push_str(&format!(
            "[[query]]\ntext = \"{} {}\"\nexpect = [\"pkg/m{i}.py::f{i}\"]\nwhy = \"its docstring\"\n\n",
            word(i * 3),
            word(i * 7 + 1)
        ));
    }
    p.file("queries.toml", &queries);
}

/// The dataset stage both pipelines start from: the written sources, split by file.
const DATASET: &str = r#"[stage.dataset]
kind = "dataset"
sources = [{ lang = "python", path = "src" }]
split = { train = 0.8, eval = 0.2, test = 0.0 }
drop_tests = false
"#;

fn micro_pipeline(p: &Project) {
    write_sources(p, 48);
    p.file(
        "p.toml",
        &format!(
            r#"[pipeline]
name = "micro"

{DATASET}
[stage.profile]
kind = "profile"
model = "{MODEL}"
batch = 2
qlen = 8
dlen = 16
steps = 1
warmup = 0
device = "cpu"

[stage.train]
uses = "train"
needs = ["dataset"]
model = "{MODEL}"
batch_size = 4
grad_accum = 1
epochs = 1
max_steps = 3
warmup_steps = 1
checkpoint_every = 2
eval_every = 0
eval_batches = 2
max_query_tokens = 16
max_doc_tokens = 32
compile = false
device = "cpu"

[stage.merge]
uses = "merge"
needs = ["train"]

[stage.index]
uses = "index"
needs = ["merge"]
sources = [{{ lang = "python", path = "src" }}]
device = "cpu"

[stage.eval]
uses = "eval"
needs = ["index", "dataset"]
queries = "queries.toml"
csn_split = "eval"
device = "cpu"

[stage.index_base]
uses = "index"
model = "{MODEL}"
sources = [{{ lang = "python", path = "src" }}]
device = "cpu"

[stage.eval_base]
uses = "eval"
needs = ["index_base"]
queries = "queries.toml"
device = "cpu"

[stage.report]
uses = "report"
needs = ["dataset", "profile", "train", "merge", "index", "eval_base", "eval"]
target = {{ eval = "eval", metric = "bm25_p_at_1", value = 0.5 }}
"#
        ),
    );
}

#[test]
fn every_study_stage_runs_caches_and_reruns_what_a_change_touches() {
    let p = Project::new();
    micro_pipeline(&p);
    let first = p.json(&["run", "p.toml"]);
    const ALL: [&str; 9] = [
        "dataset",
        "profile",
        "train",
        "merge",
        "index",
        "eval",
        "index_base",
        "eval_base",
        "report",
    ];
    for name in ALL {
        assert_eq!(stage(&first, name)["status"], "ran", "{first}");
    }
    let eval = &stage(&first, "eval")["metrics"];
    for metric in ["semantic_p_at_1", "bm25_mrr", "hybrid_rrf_ndcg_at_10"] {
        let v = eval[metric].as_f64().unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&v), "{metric} = {v} in {eval}");
    }
    // Every query's words are its target's docstring: BM25 finds them all.
    assert_eq!(eval["bm25_p_at_1"], 1.0, "{eval}");
    // With the dataset among its needs, eval also ranks its eval split CSN-style;
    // eval_base, without one, does not.
    for metric in ["csn_p_at_1", "csn_mrr", "csn_ndcg_at_10"] {
        let v = eval[metric].as_f64().unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&v), "{metric} = {v} in {eval}");
    }
    assert!(stage(&first, "eval_base")["metrics"]
        .get("csn_mrr")
        .is_none());
    let eval_dir = std::path::PathBuf::from(stage(&first, "eval")["artifact"].as_str().unwrap());
    let eval_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(eval_dir.join("eval.json")).unwrap())
            .unwrap();
    let csn = &eval_json["csn"];
    let pairs = csn["pairs"].as_u64().unwrap_or(0);
    assert!(pairs >= 2, "{csn}");
    assert_eq!(csn["distractors"].as_u64(), Some(pairs - 1), "{csn}");
    assert_eq!(
        (csn["dataset"].as_str(), csn["split"].as_str()),
        (Some("dataset"), Some("eval"))
    );
    let report = p.read("reports/micro.md");
    for section in [
        "## Summary",
        "## Profile: one train step",
        "## Training configuration",
        "## Training results",
        "## Loss curve",
        "## Dataset",
        "## Evaluation",
        "## Speed",
        "## Files created",
        "## Usage",
        "## Run facts",
    ] {
        assert!(report.contains(section), "no {section} in:\n{report}");
    }
    assert!(
        report.contains("**Target met**: eval bm25_p_at_1 = 1.00"),
        "{report}"
    );
    let csn_row = format!(
        "| eval | csn | {:.2} | {:.2} |",
        eval["csn_p_at_1"].as_f64().unwrap(),
        eval["csn_mrr"].as_f64().unwrap()
    );
    assert!(report.contains(&csn_row), "{csn_row} not in:\n{report}");
    assert!(report.contains("CodeSearchNet-style"), "{report}");
    assert!(p.path("reports/micro-loss.svg").is_file());
    // The numbers are the artifacts': eval's semantic P@1, as the table prints it.
    let semantic = format!(
        "| semantic | {:.3} |",
        eval["semantic_p_at_1"].as_f64().unwrap()
    );
    assert!(report.contains(&semantic), "{semantic} not in:\n{report}");
    let train_out = std::path::PathBuf::from(stage(&first, "train")["artifact"].as_str().unwrap());
    for f in [
        "adapters.safetensors",
        "lora_config.json",
        "train.json",
        "metrics.parquet",
        "peft/adapter_model.safetensors",
        "peft/adapter_config.json",
    ] {
        assert!(train_out.join(f).is_file(), "train artifact lacks {f}");
    }
    assert_eq!(stage(&first, "train")["metrics"]["steps"], 3, "{first}");
    let merged = std::path::PathBuf::from(stage(&first, "merge")["artifact"].as_str().unwrap());
    assert!(merged.join("model/config.json").is_file());
    assert!(merged.join("model/model.safetensors").is_file());
    // The merged model is a model: embed loads it.
    let embedded = p.json(&["embed", "--model", merged.to_str().unwrap(), "w2 w3"]);
    assert_eq!(
        embedded["texts"][0]["tokens"].as_array().map(Vec::len),
        Some(2)
    );

    let again = p.json(&["run", "p.toml"]);
    for name in ALL {
        assert_eq!(stage(&again, name)["status"], "cached", "{again}");
    }
    let k = p.json(&["run", "p.toml", "--set", "eval.k=5"]);
    let ran: Vec<&str> = ALL
        .into_iter()
        .filter(|n| stage(&k, n)["status"] == "ran")
        .collect();
    assert_eq!(ran, ["eval", "report"], "{k}");
    // An empty split is named, with what to change, and nothing is published.
    let empty = p.xtr(&["run", "p.toml", "--set", "eval.csn_split=test"]);
    assert!(!empty.status.success());
    let err = stderr(&empty);
    assert!(
        err.contains("has 0 pairs in its \"test\" split") && err.contains("csn_split"),
        "{err}"
    );
    let lr = p.json(&["run", "p.toml", "--set", "train.lr=1e-4"]);
    let ran: Vec<&str> = ALL
        .into_iter()
        .filter(|n| stage(&lr, n)["status"] == "ran")
        .collect();
    assert_eq!(ran, ["train", "merge", "index", "eval", "report"], "{lr}");
    // The report compares this run with the previous report's figures.
    let report = p.read("reports/micro.md");
    assert!(report.contains("## Against the previous run"), "{report}");
    // diff: the last two runs differ in train's lr, and what followed from it.
    let diff = p.json(&["diff", "p.toml"]);
    let stages = diff["diff"]["stages"].as_array().unwrap();
    let train = stages.iter().find(|s| s["stage"] == "train").unwrap();
    assert_eq!(train["key_changed"], true, "{diff}");
    assert!(
        train["params"][0]
            .as_str()
            .unwrap()
            .starts_with("param lr changed"),
        "{diff}"
    );
    assert!(stages.iter().all(|s| s["stage"] != "dataset"), "{diff}");
}

#[test]
fn a_train_stage_without_its_dataset_or_model_is_refused_before_anything_runs() {
    let p = Project::new();
    micro_pipeline(&p);
    let out = p.xtr(&["run", "p.toml", "--set", "train.model=no/such-model"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "--set train.model=no/such-model: stage `train`: model \"no/such-model\" not found"
        ),
        "{err}"
    );
    assert!(err.contains("Put the model there"), "{err}");
    assert!(p.artifacts().is_empty(), "nothing ran: {err}");

    let text = p
        .read("p.toml")
        .replace("needs = [\"dataset\"]\nmodel", "model");
    p.file("p.toml", &text);
    let out = p.xtr(&["run", "p.toml"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("stage `train`: train needs a dataset input (a stage of kind dataset)"),
        "{err}"
    );
}

#[test]
fn index_and_search_outside_a_pipeline_update_incrementally() {
    let p = Project::new();
    write_sources(&p, 12);
    let built = p.json(&[
        "index", "src", "--model", MODEL, "--out", "idx", "--lang", "python",
    ]);
    assert_eq!(built["stats"]["units"], 12, "{built}");
    assert_eq!(built["stats"]["embedded"], 12, "{built}");
    // Query 5's words are f5's docstring.
    let found = p.json(&[
        "search", "w17 w38", "--index", "idx", "--mode", "bm25", "-k", "3",
    ]);
    let top = &found["hits"][0];
    assert_eq!(top["path"], "pkg/m5.py", "{found}");
    assert_eq!(top["symbol"], "f5", "{found}");
    assert_eq!(top["line"], 1, "{found}");
    assert!(top["score"].as_f64().is_some(), "{found}");
    let hybrid = p.json(&["search", "w17 w38", "--index", "idx", "-k", "3"]);
    assert_eq!(hybrid["mode"], "hybrid_rrf");
    assert_eq!(hybrid["hits"].as_array().map(Vec::len), Some(3), "{hybrid}");
    // One edited file: one unit embedded again.
    let edited = p
        .read("src/pkg/m3.py")
        .replace("of the input", "of the output");
    p.file("src/pkg/m3.py", &edited);
    let again = p.json(&[
        "index", "src", "--model", MODEL, "--out", "idx", "--lang", "python",
    ]);
    assert_eq!(again["stats"]["embedded"], 1, "{again}");
    assert_eq!(again["stats"]["reused"], 11, "{again}");
    let out = p.xtr(&["search", "x", "--index", "nowhere"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is not an index"), "{}", stderr(&out));

    // Projected to 8 dimensions with one file excluded; the engine's settings as flags.
    let projected = p.json(&[
        "index",
        "src",
        "--model",
        MODEL,
        "--out",
        "idx8",
        "--lang",
        "python",
        "--dims",
        "8",
        "--exclude",
        "pkg/m0.py",
        "--keep-vectors",
    ]);
    assert_eq!(projected["stats"]["units"], 11, "{projected}");
    let tokens = projected["stats"]["tokens"].as_u64().unwrap_or(0);
    assert_eq!(
        projected["vector_bytes"],
        32 + tokens * 8 * 2,
        "{projected}"
    );
    let manifest: serde_json::Value = serde_json::from_str(&p.read("idx8/index.json")).unwrap();
    assert_eq!(manifest["dim"], 8, "{manifest}");
    assert_eq!(manifest["vectors"], true, "{manifest}");
    let found = p.json(&[
        "search", "w17 w38", "--index", "idx8", "--mode", "semantic", "-k", "3", "--nprobe", "2",
        "--rerank", "48",
    ]);
    assert_eq!(found["hits"].as_array().map(Vec::len), Some(3), "{found}");
    // The same search reranked over the decompressed codes rather than the
    // kept vectors: scores that differ by the codes' error.
    let coded = p.json(&[
        "search",
        "w17 w38",
        "--index",
        "idx8",
        "--mode",
        "semantic",
        "-k",
        "3",
        "--nprobe",
        "2",
        "--rerank",
        "48",
        "--decompressed",
    ]);
    assert_eq!(coded["hits"].as_array().map(Vec::len), Some(3), "{coded}");
    assert_ne!(
        coded["hits"][0]["score"], found["hits"][0]["score"],
        "{coded} {found}"
    );
    let out = p.xtr(&["search", "x", "--index", "idx8", "--rerank", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// The report without its run-facts block.
fn report_body(p: &Project) -> String {
    let text = p.read("reports/micro.md");
    text.split("\n---\n").next().unwrap_or_default().to_string()
}

#[test]
fn two_clean_runs_agree_on_every_key_and_on_the_report() {
    let p = Project::new();
    micro_pipeline(&p);
    let keys = |r: &serde_json::Value| -> Vec<(String, String)> {
        r["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["name"].to_string(), s["key"].to_string()))
            .collect()
    };
    let first = p.json(&["run", "p.toml"]);
    let body = report_body(&p);
    // A clean second run: the store and the reports moved aside.
    std::fs::rename(p.path("artifacts"), p.path("artifacts-1")).unwrap();
    std::fs::rename(p.path("reports"), p.path("reports-1")).unwrap();
    let second = p.json(&["run", "p.toml"]);
    assert!(
        second["stages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "ran"),
        "{second}"
    );
    assert_eq!(keys(&first), keys(&second));
    assert_eq!(body, report_body(&p));
    let svg = |dir: &str| std::fs::read(p.path(&format!("{dir}/micro-loss.svg"))).unwrap();
    assert_eq!(svg("reports-1"), svg("reports"));
}

/// dataset -> train only, long enough to kill mid-run, a checkpoint every 5 steps.
fn resumable_pipeline(p: &Project) {
    write_sources(p, 48);
    p.file(
        "p.toml",
        &format!(
            r#"[pipeline]
name = "resume"

{DATASET}
[stage.train]
uses = "train"
needs = ["dataset"]
model = "{MODEL}"
batch_size = 4
grad_accum = 2
epochs = 100
max_steps = 400
warmup_steps = 5
checkpoint_every = 5
eval_every = 0
eval_batches = 2
max_query_tokens = 16
max_doc_tokens = 32
compile = false
device = "cpu"
"#
        ),
    );
}

fn adapters(report: &serde_json::Value) -> Vec<u8> {
    let dir = stage(report, "train")["artifact"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::read(format!("{dir}/adapters.safetensors")).unwrap()
}

#[test]
fn a_train_stage_killed_with_sigkill_resumes_to_bit_identical_adapters() {
    let reference = Project::new();
    resumable_pipeline(&reference);
    let uninterrupted = reference.json(&["run", "p.toml"]);

    let p = Project::new();
    resumable_pipeline(&p);
    let plan = p.json(&["run", "p.toml", "--dry-run"]);
    let key = stage(&plan, "train")["key"].as_str().unwrap().to_string();
    let checkpoint = p.path(&format!("artifacts/.work/{key}/checkpoint.safetensors"));
    let mut child = p
        .command(&["run", "p.toml"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_for_file(&checkpoint, Duration::from_secs(120)),
        "no checkpoint was written"
    );
    child.kill().unwrap(); // SIGKILL, mid-training
    child.wait().unwrap();
    let resumed = p.json(&["run", "p.toml"]);
    let train = stage(&resumed, "train");
    assert_eq!(train["status"], "ran", "{resumed}");
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{}/train.json",
            train["artifact"].as_str().unwrap()
        ))
        .unwrap(),
    )
    .unwrap();
    assert!(
        summary["resumed_from"]
            .as_u64()
            .is_some_and(|s| s > 0 && s < 400),
        "the second run did not resume mid-way: {summary}"
    );
    assert!(
        adapters(&uninterrupted) == adapters(&resumed),
        "adapters differ after resume"
    );
    assert!(
        !checkpoint.exists(),
        "the working directory outlived the published artifact"
    );
}
