//! Behaviour of `xtr-pipe run` through the real binary: caching, invalidation,
//! selection flags, failures.

mod common;

use common::{stage, statuses, Project};

/// prep (deps on src/) -> count -> report; lone is independent.
fn project() -> Project {
    let p = Project::new();
    p.file("src/a.txt", "alpha\n")
        .file("src/b.txt", "beta\n")
        .file(
            "p.toml",
            r#"[pipeline]
name = "demo"

[stage.prep]
kind = "cmd"
cmd = "cat src/*.txt > $XTR_OUT/all.txt && echo prep >> runs.log"
deps = ["src"]

[stage.count]
kind = "cmd"
needs = ["prep"]
cmd = "wc -l < $XTR_IN_PREP/all.txt | tr -d ' ' > $XTR_OUT/n && echo \"{\\\"lines\\\": $(cat $XTR_OUT/n), \\\"k\\\": $XTR_PARAM_K}\" > $XTR_OUT/metrics.json && echo count >> runs.log"
params = { k = 1 }

[stage.report]
kind = "cmd"
needs = ["count"]
cmd = "echo lines=$(cat $XTR_IN_COUNT/n) > $XTR_OUT/report.md && echo report >> runs.log"

[stage.lone]
kind = "cmd"
cmd = "echo $XTR_PARAM_MSG > $XTR_OUT/msg && echo lone >> runs.log"
params = { msg = "hi" }
"#,
        );
    p
}

fn ran(report: &serde_json::Value) -> Vec<String> {
    statuses(report)
        .into_iter()
        .filter(|(_, s)| s == "ran")
        .map(|(n, _)| n)
        .collect()
}

#[test]
fn second_run_with_nothing_changed_runs_nothing() {
    let p = project();
    let first = p.json(&["run", "p.toml"]);
    assert_eq!(ran(&first), ["count", "lone", "prep", "report"]);
    assert_eq!(stage(&first, "count")["metrics"]["lines"], 2);
    let second = p.json(&["run", "p.toml"]);
    assert!(
        statuses(&second).iter().all(|(_, s)| s == "cached"),
        "{second}"
    );
    assert_eq!(
        p.read("runs.log").lines().count(),
        4,
        "no stage command ran twice"
    );
    // Reused stages still report their artifacts and metrics.
    assert_eq!(stage(&second, "count")["metrics"]["lines"], 2);
    let report = stage(&second, "report")["artifact"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        std::fs::read_to_string(format!("{report}/report.md")).unwrap(),
        "lines=2\n"
    );
}

#[test]
fn set_invalidates_the_stage_and_its_descendants_only() {
    let p = project();
    p.json(&["run", "p.toml"]);
    let report = p.json(&["run", "p.toml", "--set", "count.params.k=2"]);
    assert_eq!(ran(&report), ["count", "report"]);
    assert_eq!(
        stage(&report, "count")["reason"],
        "param params.k changed 1 -> 2"
    );
    assert_eq!(stage(&report, "report")["reason"], "input count changed");
    assert_eq!(stage(&report, "count")["metrics"]["k"], 2);
}

#[test]
fn editing_a_dep_file_invalidates_downstream() {
    let p = project();
    p.json(&["run", "p.toml"]);
    p.file("src/b.txt", "beta\ngamma\n");
    // Status says in words what is stale and why.
    let out = p.xtr(&["status", "p.toml"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.lines()
            .any(|l| l.starts_with("lone ") && l.ends_with("up to date")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("count ") && l.ends_with("stale: input prep changed")),
        "{text}"
    );
    let status = p.json(&["status", "p.toml"]);
    let stale: Vec<&str> = status["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["stale"] == true)
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(stale, ["prep", "count", "report"]);
    assert_eq!(
        stage(&status, "prep")["reason"],
        "1 file changed under src (1 modified)"
    );
    let report = p.json(&["run", "p.toml"]);
    assert_eq!(ran(&report), ["count", "prep", "report"]);
    assert_eq!(stage(&report, "count")["metrics"]["lines"], 3);
}

#[test]
fn dry_run_plans_without_running() {
    let p = project();
    let plan = p.json(&["run", "p.toml", "--dry-run"]);
    assert!(plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["action"] == "run" && s["reason"] == "never run"));
    assert!(!p.path("runs.log").exists(), "a dry run ran a stage");
    assert!(p.artifacts().is_empty());
}

#[test]
fn only_from_and_force_select_stages() {
    let p = project();
    p.json(&["run", "p.toml"]);
    let forced = p.json(&["run", "p.toml", "--force", "prep"]);
    assert_eq!(
        ran(&forced),
        ["prep"],
        "force reruns the stage; its key, so downstream, is unchanged"
    );
    let from = p.json(&["run", "p.toml", "--from", "count"]);
    assert_eq!(ran(&from), ["count", "report"]);
    assert_eq!(stage(&from, "prep")["status"], "skipped");
    let only = p.json(&[
        "run",
        "p.toml",
        "--only",
        "lone",
        "--set",
        "lone.params.msg=bye",
    ]);
    assert_eq!(ran(&only), ["lone"]);
    assert_eq!(stage(&only, "report")["status"], "skipped");
    // --only on a stage whose input was never built is refused up front.
    let out = p.xtr(&[
        "run",
        "p.toml",
        "--only",
        "count",
        "--set",
        "prep.cmd=\"true\"",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", common::stderr(&out));
    assert!(
        common::stderr(&out).contains("needs `prep`"),
        "{}",
        common::stderr(&out)
    );
}

#[test]
fn a_failing_stage_fails_the_run_and_skips_its_dependents() {
    let p = Project::new();
    p.file(
        "p.toml",
        "[pipeline]\nname = \"f\"\n\
         [stage.bad]\nkind = \"cmd\"\ncmd = \"echo partial > $XTR_OUT/x; echo 'something broke' >&2; exit 3\"\n\
         [stage.after]\nkind = \"cmd\"\nneeds = [\"bad\"]\ncmd = \"true\"\n\
         [stage.ok]\nkind = \"cmd\"\ncmd = \"echo fine > $XTR_OUT/y\"\n",
    );
    let out = p.xtr(&["run", "p.toml", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], "failed");
    let bad = stage(&report, "bad");
    assert_eq!(bad["status"], "failed");
    assert_eq!(bad["error"], "command exited with status 3");
    let log = std::fs::read_to_string(bad["log"].as_str().unwrap()).unwrap();
    assert!(log.contains("something broke"), "{log}");
    assert_eq!(stage(&report, "after")["status"], "skipped");
    assert_eq!(stage(&report, "ok")["status"], "ran");
    assert_eq!(
        p.artifacts().len(),
        1,
        "only the good stage published an artifact"
    );
    // Human output shows the log's tail.
    let out = p.xtr(&["run", "p.toml"]);
    assert!(
        common::stderr(&out).contains("| something broke"),
        "{}",
        common::stderr(&out)
    );
}

#[test]
fn independent_stages_run_in_parallel() {
    // Each stage announces itself, then waits (bounded) for the other: both can
    // only succeed if they were running at the same time.
    let p = Project::new();
    let wait = |me: &str, other: &str| {
        format!(
            "touch {me}.started; for i in $(seq 200); do [ -f {other}.started ] && exit 0; sleep 0.05; done; exit 1"
        )
    };
    p.file(
        "p.toml",
        &format!(
            "[pipeline]\nname = \"par\"\n[stage.a]\nkind = \"cmd\"\ncmd = \"{}\"\n[stage.b]\nkind = \"cmd\"\ncmd = \"{}\"\n",
            wait("a", "b"),
            wait("b", "a")
        ),
    );
    let report = p.json(&["run", "p.toml", "-j", "2"]);
    assert_eq!(ran(&report), ["a", "b"]);
}

#[test]
fn show_reports_the_last_run() {
    let p = project();
    p.json(&["run", "p.toml"]);
    let show = p.json(&["show", "p.toml"]);
    assert_eq!(show["run"]["status"], "ok");
    let count = stage(&show, "count");
    assert_eq!(count["status"], "ran");
    assert_eq!(count["metrics"]["lines"], 2);
    assert!(count["artifact"].as_str().unwrap().ends_with("/out"));
    assert_eq!(count["key"].as_str().unwrap().len(), 64);
    let order: Vec<&str> = show["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    let at = |n: &str| order.iter().position(|x| *x == n).unwrap();
    assert!(
        at("prep") < at("count") && at("count") < at("report"),
        "{order:?}"
    );
    let dag = p.json(&["dag", "p.toml"]);
    let names: Vec<&str> = dag["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(names.iter().position(|n| *n == "prep") < names.iter().position(|n| *n == "report"));
    let dot = p.xtr(&["dag", "p.toml", "--dot"]);
    assert!(String::from_utf8_lossy(&dot.stdout).contains("\"count\" -> \"report\";"));
}

#[test]
fn templates_supply_defaults() {
    let p = Project::new();
    p.file("stages/greet.toml", "kind = \"cmd\"\ncmd = \"echo $XTR_PARAM_WHO > $XTR_OUT/g\"\nparams = { who = \"world\" }\n")
        .file(
            "pipelines/p.toml",
            "[pipeline]\nname = \"t\"\n[stage.a]\nuses = \"greet\"\n[stage.b]\nuses = \"greet\"\nparams = { who = \"you\" }\n",
        );
    let report = p.json(&["run", "pipelines/p.toml"]);
    let read = |s: &str| {
        std::fs::read_to_string(format!(
            "{}/g",
            stage(&report, s)["artifact"].as_str().unwrap()
        ))
        .unwrap()
    };
    assert_eq!(
        (read("a"), read("b")),
        ("world\n".to_string(), "you\n".to_string())
    );
    assert!(
        p.path("pipelines/artifacts").is_dir(),
        "the store sits next to the pipeline file"
    );
}

#[test]
fn an_input_its_kind_does_not_take_is_refused_before_anything_runs() {
    let p = Project::new();
    p.file(
        "p.toml",
        "[pipeline]\nname = \"roles\"\n\n[stage.prep]\nkind = \"cmd\"\ncmd = \"touch ran\"\n\n\
         [stage.prof]\nkind = \"profile\"\nmodel = \"t5-base-random\"\nneeds = [\"prep\"]\n",
    );
    let out = p.xtr(&["run", "p.toml"]);
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "p.toml:11:10: stage `prof`: profile takes no inputs; stage `prep` is of kind cmd"
        ),
        "{err}"
    );
    assert!(err.contains("remove `prep` from `needs`"), "{err}");
    assert!(
        !p.path("ran").exists(),
        "nothing may run before the plan is valid"
    );
}
