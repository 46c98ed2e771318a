//! Ranked stages through the real launch: `gpus = 2` on the CPU runs two rank
//! processes of the binary joined by MLX's ring backend over loopback. Train:
//! each rank trains on its share of every update, gradients all-summed. Index:
//! each rank embeds its share of the units into a shard, the stage gathers them.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{stage, stderr, wait_for_file, Project};

const MODEL: &str = common::TINY_BERT_WORDS;

/// dataset -> train on `gpus` ranks: 4 updates of 2 micro-batches of 4 pairs
/// (one micro-batch per rank at 2), a checkpoint after every update, dropout on.
fn project(gpus: u32) -> Project {
    let p = Project::new();
    common::write_word_sources(&p, 48);
    p.file(
        "p.toml",
        &format!(
            r#"[pipeline]
name = "dist"

[stage.dataset]
kind = "dataset"
sources = [{{ lang = "python", path = "src" }}]
split = {{ train = 0.8, eval = 0.2, test = 0.0 }}
drop_tests = false

[stage.train]
uses = "train"
needs = ["dataset"]
model = "{MODEL}"
gpus = {gpus}
batch_size = 4
grad_accum = 2
epochs = 10
max_steps = 4
warmup_steps = 1
lr = 1e-3
checkpoint_every = 1
eval_every = 2
eval_batches = 3
max_query_tokens = 16
max_doc_tokens = 32
device = "cpu"
"#
        ),
    );
    p
}

fn artifact(report: &serde_json::Value) -> String {
    stage(report, "train")["artifact"]
        .as_str()
        .expect("a train artifact")
        .to_string()
}

/// Every tensor of an adapters file, by name, as f32.
fn adapters(dir: &str) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(format!("{dir}/adapters.safetensors")).expect("adapters");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut out: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            let v = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Largest |a - b| over all adapter values, and the largest |a|.
fn max_diff(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> (f32, f32) {
    assert_eq!(
        a.iter().map(|t| &t.0).collect::<Vec<_>>(),
        b.iter().map(|t| &t.0).collect::<Vec<_>>()
    );
    let (mut diff, mut scale) = (0.0f32, 0.0f32);
    for ((_, x), (_, y)) in a.iter().zip(b) {
        for (u, v) in x.iter().zip(y) {
            diff = diff.max((u - v).abs());
            scale = scale.max(u.abs());
        }
    }
    (diff, scale)
}

fn train_json(dir: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{dir}/train.json")).unwrap()).unwrap()
}

fn the_same_model(a: &str, b: &str) {
    let (diff, scale) = max_diff(&adapters(a), &adapters(b));
    assert!(scale > 0.0, "empty adapters");
    // One process adds ((g0 + g1)), two all-sum g0 + g1: float order only.
    assert!(
        diff <= 1e-5 * scale.max(1.0),
        "adapters differ by {diff} (largest value {scale})"
    );
    let (la, lb) = (train_json(a), train_json(b));
    let val = |j: &serde_json::Value| j["val_loss"].as_f64().expect("a val_loss");
    assert!(
        (val(&la) - val(&lb)).abs() <= 1e-4 * val(&la).abs().max(1.0),
        "validation losses differ: {} vs {}",
        val(&la),
        val(&lb)
    );
}

/// Runs `p.toml` with rank 1 of 2 aborting as `XTR_TEST_RANK_ABORT=abort`
/// says; `stage` must fail naming that rank and saying nothing was published.
/// Returns the run's report.
fn run_with_a_dead_rank(p: &Project, abort: &str, name: &str) -> serde_json::Value {
    let out = p
        .command(&["run", "p.toml", "--json"])
        .env("XTR_TEST_RANK_ABORT", abort)
        .output()
        .expect("run xtr-pipe");
    assert!(!out.status.success(), "the stage survived a dead rank");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let failed = stage(&report, name);
    assert_eq!(failed["status"], "failed", "{report}");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("rank 1 of 2") && error.contains("nothing was published"),
        "{error}\n{}",
        stderr(&out)
    );
    report
}

/// Sends SIGINT to `child` (a `run --json` whose ranks are all running) and
/// waits: the run must end interrupted with exit 130, well inside launch's
/// 30 s grace (the ranks stopped on SIGTERM themselves). Returns its report.
fn interrupt(child: Child) -> serde_json::Value {
    let interrupted = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert!(
        interrupted.elapsed() < Duration::from_secs(20),
        "the ranks took {:?} to stop",
        interrupted.elapsed()
    );
    assert_eq!(out.status.code(), Some(130));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], "interrupted", "{report}");
    report
}

#[test]
fn two_cpu_ranks_train_the_model_one_process_trains_under_the_same_key() {
    let one = project(1);
    let two = project(2);
    let key = |gpus: &str| {
        let plan = one.json(&["run", "p.toml", "--dry-run", "--set", gpus]);
        stage(&plan, "train")["key"].as_str().unwrap().to_string()
    };
    assert_eq!(
        key("train.gpus=1"),
        key("train.gpus=2"),
        "gpus entered the artifact key"
    );
    let single = artifact(&one.json(&["run", "p.toml"]));
    let report = two.json(&["run", "p.toml"]);
    let dual = artifact(&report);
    the_same_model(&single, &dual);
    assert_eq!(train_json(&dual)["ranks"], 2);
    assert_eq!(train_json(&single)["ranks"], 1);
    let log = std::fs::read_to_string(stage(&report, "train")["log"].as_str().unwrap()).unwrap();
    assert!(
        log.contains("2 ranks on the cpu with the ring backend"),
        "{log}"
    );
    assert!(log.contains("rank 0 of 2"), "{log}");
}

#[test]
fn a_rank_that_dies_fails_the_stage_and_a_one_rank_run_resumes_its_checkpoint() {
    let p = project(2);
    let report = run_with_a_dead_rank(&p, "1:2", "train");
    let dataset = stage(&report, "dataset")["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(p.artifacts(), vec![dataset], "a failed job published");

    // The same key on one rank picks up rank 0's last checkpoint.
    let resumed = p.json(&["run", "p.toml", "--set", "train.gpus=1"]);
    let dir = artifact(&resumed);
    let summary = train_json(&dir);
    assert!(
        summary["resumed_from"].as_u64().is_some_and(|s| s >= 1),
        "did not resume: {summary}"
    );
    let reference = project(1);
    the_same_model(&artifact(&reference.json(&["run", "p.toml"])), &dir);
}

/// The step a `train: interrupted at step N` line in `log` names.
fn interrupted_at(log: &str) -> Option<u64> {
    let rest = log.split("train: interrupted at step ").nth(1)?;
    rest.split(';').next()?.trim().parse().ok()
}

#[test]
fn ctrl_c_stops_every_training_rank_at_the_same_update_and_keeps_the_checkpoint() {
    let p = project(2);
    // Far more updates than the test waits for: it interrupts after the first checkpoint.
    let long = [
        "--set",
        "train.max_steps=1000000",
        "--set",
        "train.epochs=100000",
    ];
    let args = |first: &[&'static str]| -> Vec<&'static str> {
        first.iter().chain(&long).copied().collect()
    };
    let plan = p.json(&args(&["run", "p.toml", "--dry-run"]));
    let key = stage(&plan, "train")["key"].as_str().unwrap().to_string();
    let dataset = stage(&plan, "dataset")["key"].as_str().unwrap().to_string();
    let work = p.path(&format!("artifacts/.work/{key}"));
    let child = p
        .command(&args(&["run", "p.toml", "--json"]))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run xtr-pipe");
    assert!(
        wait_for_file(
            &work.join("checkpoint.safetensors"),
            Duration::from_secs(120)
        ),
        "no checkpoint was written"
    );
    let report = interrupt(child);
    assert_eq!(p.artifacts(), vec![dataset], "an interrupted job published");
    assert!(
        work.join("checkpoint.safetensors").exists(),
        "the checkpoint is gone"
    );
    // Both ranks stopped after the same update (the stop travels with the all-sum).
    let log0 = stage(&report, "train")["log"]
        .as_str()
        .map(|path| std::fs::read_to_string(path).unwrap_or_default())
        .unwrap_or_default();
    let log1 = std::fs::read_to_string(work.join("rank-1.log")).unwrap_or_default();
    let step0 = interrupted_at(&log0);
    assert!(step0.is_some(), "rank 0 did not log its stop:\n{log0}");
    assert_eq!(
        step0,
        interrupted_at(&log1),
        "rank 1 stopped elsewhere:\n{log1}"
    );
}

/// An index of 40 documented Python functions with the word-level fixture, its
/// embedding pass on `gpus` ranks (at 2: two batches of 20 units where one
/// process embeds 32 + 8, so padding and batch shapes differ).
fn index_project(gpus: u32) -> Project {
    let p = Project::new();
    common::write_word_sources(&p, 40);
    p.file(
        "p.toml",
        &format!(
            r#"[pipeline]
name = "dist-index"

[stage.index]
uses = "index"
sources = [{{ lang = "python", path = "src" }}]
model = "{MODEL}"
max_doc_tokens = 64
gpus = {gpus}
device = "cpu"
"#
        ),
    );
    p
}

/// `(unit, score)` of each semantic hit for `query` in the index artifact `dir`.
fn semantic_hits(p: &Project, dir: &str, query: &str) -> Vec<(u64, f64)> {
    let found = p.json(&[
        "search", query, "--index", dir, "--mode", "semantic", "-k", "10",
    ]);
    found["hits"]
        .as_array()
        .expect("hits")
        .iter()
        .map(|h| (h["unit"].as_u64().unwrap(), h["score"].as_f64().unwrap()))
        .collect()
}

fn index_file(dir: &str, name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(format!("{dir}/index/{name}")).expect(name);
    serde_json::from_str(&text).expect("JSON")
}

#[test]
fn two_cpu_ranks_embed_the_index_one_process_builds_under_the_same_key() {
    let one = index_project(1);
    let two = index_project(2);
    let key = |gpus: &str| {
        let plan = one.json(&["run", "p.toml", "--dry-run", "--set", gpus]);
        stage(&plan, "index")["key"].as_str().unwrap().to_string()
    };
    assert_eq!(
        key("index.gpus=1"),
        key("index.gpus=2"),
        "gpus entered the artifact key"
    );
    let artifact =
        |r: &serde_json::Value| stage(r, "index")["artifact"].as_str().unwrap().to_string();
    let single = artifact(&one.json(&["run", "p.toml"]));
    // Both ranks bound to the first CPU this test may use.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let allowed = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap();
    let cpu = allowed.trim().split([',', '-']).next().unwrap();
    let out = two
        .command(&["run", "p.toml", "--json"])
        .env("XTR_PIPE_CPU_BIND", format!("{cpu};{cpu}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let dual = artifact(&report);
    let log = std::fs::read_to_string(stage(&report, "index")["log"].as_str().unwrap()).unwrap();
    assert!(
        log.contains(&format!(
            "index: 2 ranks on the cpu with the ring backend, on CPUs {cpu} / {cpu}"
        )),
        "{log}"
    );
    assert!(
        log.contains("rank 0 of 2: embedded 20 of 40 units"),
        "{log}"
    );
    // The same units in the same order, the same token count, dims and codec
    // size: the shards were gathered in unit order, none lost or doubled.
    assert_eq!(
        index_file(&single, "units.json"),
        index_file(&dual, "units.json")
    );
    assert_eq!(
        index_file(&single, "index.json"),
        index_file(&dual, "index.json")
    );
    // Embeddings agree to float rounding (batch shapes differ), so semantic
    // search ranks the same units with scores within 1e-4 (a score is a sum of
    // at most 32 cosine similarities).
    for query in ["w17 w38 of the input", "w5 w70", "w42 w2 w9"] {
        let (a, b) = (
            semantic_hits(&one, &single, query),
            semantic_hits(&two, &dual, query),
        );
        assert!(!a.is_empty(), "no hits for {query}");
        assert_eq!(
            a.iter().map(|h| h.0).collect::<Vec<_>>(),
            b.iter().map(|h| h.0).collect::<Vec<_>>(),
            "{query}: one process {a:?}, two ranks {b:?}"
        );
        for ((_, x), (_, y)) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-4, "{query}: scores {x} vs {y}");
        }
    }
}

#[test]
fn an_embedding_rank_that_dies_fails_the_index_stage_publishing_nothing() {
    let p = index_project(2);
    run_with_a_dead_rank(&p, "1:0", "index");
    assert!(p.artifacts().is_empty(), "a failed job published");
}

#[test]
fn ctrl_c_stops_every_embedding_rank_and_publishes_nothing() {
    let p = index_project(2);
    let hold = p.path("hold");
    std::fs::create_dir_all(&hold).unwrap();
    let child = p
        .command(&["run", "p.toml", "--json"])
        .env("XTR_TEST_RANK_HOLD", &hold)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run xtr-pipe");
    let pid_file = |rank: usize| hold.join(format!("rank-{rank}.pid"));
    for rank in 0..2 {
        assert!(
            wait_for_file(&pid_file(rank), Duration::from_secs(60)),
            "rank {rank} never got to its shard"
        );
    }
    interrupt(child);
    assert!(p.artifacts().is_empty(), "an interrupted job published");
    for rank in 0..2 {
        let pid: i32 = std::fs::read_to_string(pid_file(rank))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            unsafe { libc::kill(pid, 0) } != 0,
            "rank {rank} (pid {pid}) still alive"
        );
    }
}
