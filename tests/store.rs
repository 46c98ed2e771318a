//! The store's promises through the real binary: bad pipelines run nothing,
//! corruption is caught, crashes and interrupts leave nothing half-written,
//! concurrent runs agree, gc keeps what runs reference.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{stage, stderr, wait_for_file, Project};

const HEADER: &str = "[pipeline]\nname = \"s\"\n";

#[test]
fn invalid_pipelines_exit_2_with_the_place_and_run_nothing() {
    let cases = [
        (
            "[stage.a]\nkind = \"cmd\"\ncmd = \"touch ran\"\nneeds = [\"b\"]\n[stage.b]\nkind = \"cmd\"\ncmd = \"touch ran\"\nneeds = [\"a\"]\n",
            "p.toml:3:8: dependency cycle: a -> b -> a",
        ),
        ("[stage.a]\nkind = \"cmd\"\ncmd = \"touch ran\"\ndepz = []\n", "p.toml:6:1: stage `a`: unknown key `depz`"),
        ("[stage.a]\nkind = \"cmd\"\ncmd = [\"touch\"]\n", "p.toml:5:1: stage `a`: `cmd`: invalid type: sequence"),
        ("[stage.a]\nkind = \"cmd\"\ncmd = \"touch ran\"\nneeds = [\"nope\"]\n", "p.toml:6:10: stage `a` needs `nope`"),
        ("[stage.a]\nkind = \"cmd\"\ncmd = \"touch ran\"\ndeps = [\"missing.txt\"]\n", "p.toml:6:1: stage `a`: dep `missing.txt` does not exist"),
        ("[stage.a]\nkind = \"cmdd\"\ncmd = \"touch ran\"\n", "stage `a` has unknown kind `cmdd`"),
        ("[stage.a]\nkind = \"cmd\"\ncmd = \"touch ran\"\n[stage.b\n", "p.toml:6:9: invalid TOML"),
    ];
    for (body, expected) in cases {
        let p = Project::new();
        p.file("p.toml", &format!("{HEADER}{body}"));
        let out = p.xtr(&["run", "p.toml"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{body}\n{err}");
        assert!(err.contains(expected), "expected `{expected}` in:\n{err}");
        assert!(!p.path("ran").exists(), "a stage ran despite: {expected}");
        assert!(p.artifacts().is_empty());
    }
    // Suggestions for near misses.
    let p = Project::new();
    p.file(
        "p.toml",
        &format!("{HEADER}[stage.a]\nkind = \"cmd\"\ncmd = \"true\"\nparms = {{}}\n"),
    );
    assert!(stderr(&p.xtr(&["run", "p.toml"])).contains("did you mean `params`?"));
    let out = p.xtr(&["run", "p.toml", "--set", "b.x=1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--set b.x=1: no stage named `b`"),
        "{}",
        stderr(&out)
    );
}

fn one_stage(cmd: &str) -> Project {
    let p = Project::new();
    p.file(
        "p.toml",
        &format!("{HEADER}[stage.a]\nkind = \"cmd\"\ncmd = '''{cmd}'''\n"),
    );
    p
}

#[test]
fn a_corrupted_artifact_is_detected_quarantined_and_recomputed() {
    let p = one_stage("printf 'hello world' > $XTR_OUT/data.txt; echo run >> runs.log");
    let first = p.json(&["run", "p.toml"]);
    let data = format!(
        "{}/data.txt",
        stage(&first, "a")["artifact"].as_str().unwrap()
    );
    // Flip one byte, same size.
    std::fs::write(&data, "hello_world").unwrap();
    let second = p.json(&["run", "p.toml"]);
    let a = stage(&second, "a");
    assert_eq!(a["status"], "ran");
    assert!(
        a["reason"]
            .as_str()
            .unwrap()
            .contains("does not match its hash"),
        "{a}"
    );
    assert_eq!(std::fs::read_to_string(&data).unwrap(), "hello world");
    assert_eq!(p.read("runs.log").lines().count(), 2);
    let quarantined = std::fs::read_dir(p.path("artifacts/.quarantine"))
        .unwrap()
        .count();
    assert_eq!(quarantined, 1);
    // A deleted file and a truncated manifest are caught too.
    std::fs::remove_file(&data).unwrap();
    assert_eq!(stage(&p.json(&["run", "p.toml"]), "a")["status"], "ran");
    let key = p.artifacts().pop().unwrap();
    std::fs::write(
        p.path(&format!("artifacts/{key}/manifest.json")),
        "{\"schema\": 1, \"ke",
    )
    .unwrap();
    assert_eq!(stage(&p.json(&["run", "p.toml"]), "a")["status"], "ran");
    assert_eq!(
        stage(&p.json(&["run", "p.toml", "--verify"]), "a")["status"],
        "cached"
    );
}

/// A stage that writes a partial output, says so, and blocks until released.
const BLOCKING: &str = "echo partial > $XTR_OUT/out.txt; echo $$ > started; \
    while [ ! -f release ]; do sleep 0.02; done; echo complete > $XTR_OUT/out.txt";

#[test]
fn kill_9_mid_stage_leaves_nothing_that_a_later_run_uses() {
    let p = one_stage(BLOCKING);
    let mut child = p
        .command(&["run", "p.toml"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_for_file(&p.path("started"), Duration::from_secs(20)),
        "stage never started"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The orphaned stage command is still blocked; end it like a reboot would.
    let pid: i32 = p.read("started").trim().parse().unwrap();
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    assert!(
        p.artifacts().is_empty(),
        "a half-written artifact was published"
    );
    std::fs::remove_file(p.path("started")).unwrap();
    p.file("release", "");
    let report = p.json(&["run", "p.toml"]);
    let a = stage(&report, "a");
    assert_eq!(a["status"], "ran");
    let out =
        std::fs::read_to_string(format!("{}/out.txt", a["artifact"].as_str().unwrap())).unwrap();
    assert_eq!(out, "complete\n");
    let leftovers = std::fs::read_dir(p.path("artifacts/.tmp")).unwrap().count();
    assert_eq!(leftovers, 0, "the rerun cleans the dead run's staging dir");
}

#[test]
fn sigint_stops_the_stage_and_exits_130() {
    let p = one_stage(BLOCKING);
    let child = p
        .command(&["run", "p.toml", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_for_file(&p.path("started"), Duration::from_secs(20)),
        "stage never started"
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], "interrupted");
    assert_eq!(stage(&report, "a")["status"], "skipped");
    assert!(p.artifacts().is_empty());
    // The stage's process group was terminated, not orphaned.
    let pid: i32 = p.read("started").trim().parse().unwrap();
    assert!(
        unsafe { libc::kill(pid, 0) } != 0,
        "stage process {pid} still alive"
    );
    let show = p.json(&["show", "p.toml"]);
    assert_eq!(show["run"]["status"], "interrupted");
}

#[test]
fn concurrent_runs_compute_each_stage_once_and_agree() {
    let p = one_stage(
        "echo run >> runs.log; echo $$ > $XTR_OUT/pid; sleep 0.5; echo done >> $XTR_OUT/pid",
    );
    let spawn = || {
        p.command(&["run", "p.toml", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    for out in [&a, &b] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (ra, rb): (serde_json::Value, serde_json::Value) = (
        serde_json::from_slice(&a.stdout).unwrap(),
        serde_json::from_slice(&b.stdout).unwrap(),
    );
    assert_eq!(stage(&ra, "a")["key"], stage(&rb, "a")["key"]);
    let mut statuses = [
        stage(&ra, "a")["status"].clone(),
        stage(&rb, "a")["status"].clone(),
    ];
    statuses.sort_by_key(|s| s.to_string());
    assert_eq!(statuses, ["cached", "ran"]);
    assert_eq!(p.read("runs.log").lines().count(), 1, "the stage ran twice");
    assert_eq!(p.artifacts().len(), 1);
}

#[test]
fn gc_keeps_referenced_artifacts() {
    let p = one_stage("echo $XTR_PARAM_N > $XTR_OUT/n");
    p.file("p.toml", &format!("{HEADER}[stage.a]\nkind = \"cmd\"\ncmd = \"echo $XTR_PARAM_N > $XTR_OUT/n\"\nparams = {{ n = 1 }}\n"));
    let v1 = p.json(&["run", "p.toml"]);
    let v2 = p.json(&["run", "p.toml", "--set", "a.params.n=2"]);
    let (k1, k2) = (
        stage(&v1, "a")["key"].as_str().unwrap().to_string(),
        stage(&v2, "a")["key"].as_str().unwrap().to_string(),
    );
    // An artifact no run references (e.g. from a deleted history).
    let stray = "f".repeat(64);
    std::fs::create_dir_all(p.path(&format!("artifacts/{stray}/out"))).unwrap();
    let dry = p.json(&["gc", "p.toml", "--dry-run"]);
    assert_eq!(dry["removed"], serde_json::json!([stray]));
    assert_eq!(p.artifacts().len(), 3, "a dry run deletes nothing");
    let gc = p.json(&["gc", "p.toml"]);
    assert_eq!(gc["removed"], serde_json::json!([stray]));
    assert_eq!(p.artifacts(), {
        let mut v = vec![k1.clone(), k2.clone()];
        v.sort();
        v
    });
    let gc = p.json(&["gc", "p.toml", "--keep-last", "1"]);
    assert_eq!(gc["removed"], serde_json::json!([k1]));
    assert_eq!(p.artifacts(), vec![k2]);
    assert_eq!(
        stage(&p.json(&["run", "p.toml", "--set", "a.params.n=2"]), "a")["status"],
        "cached"
    );
}

#[test]
fn gc_refuses_while_a_run_holds_the_store() {
    let p = one_stage(BLOCKING);
    let mut child = p
        .command(&["run", "p.toml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for_file(&p.path("started"), Duration::from_secs(20)));
    let out = p.xtr(&["gc", "p.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is using the store"),
        "{}",
        stderr(&out)
    );
    p.file("release", "");
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_working_directory_survives_a_failed_attempt_and_goes_with_success() {
    // The first attempt leaves a checkpoint and fails; the second resumes from it.
    let p = one_stage(
        "if [ -f $XTR_WORK/ckpt ]; then cat $XTR_WORK/ckpt > $XTR_OUT/resumed; \
         else echo step-7 > $XTR_WORK/ckpt; exit 3; fi",
    );
    let out = p.xtr(&["run", "p.toml", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stage(&first, "a")["status"], "failed");
    let key = stage(&first, "a")["key"].as_str().unwrap().to_string();
    let work = p.path(&format!("artifacts/.work/{key}"));
    assert!(
        work.join("ckpt").is_file(),
        "the checkpoint outlives the attempt"
    );
    // gc keeps what the last run can resume.
    assert_eq!(p.json(&["gc", "p.toml"])["work_dirs"], 0);
    assert!(work.exists());
    let second = p.json(&["run", "p.toml"]);
    assert_eq!(stage(&second, "a")["status"], "ran");
    let out = std::path::PathBuf::from(stage(&second, "a")["artifact"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(out.join("resumed")).unwrap(),
        "step-7\n"
    );
    assert!(!work.exists(), "published: the working directory is gone");
    // A stale one (no last run names its key) is gc's.
    let stale = p.path(&format!("artifacts/.work/{}", "e".repeat(64)));
    std::fs::create_dir_all(&stale).unwrap();
    assert_eq!(p.json(&["gc", "p.toml"])["work_dirs"], 1);
    assert!(!stale.exists());
}
