//! The remote artifact cache against a real S3-compatible server (Garage, on
//! loopback, started here): another machine reuses artifacts without running
//! anything, corruption is caught, a crash mid-upload leaves nothing visible,
//! concurrent pushes agree, and a run goes on when the remote is down.

mod common;
#[path = "remote/garage.rs"]
mod garage;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{stage, statuses, stderr, Project};
use futures::TryStreamExt;
use garage::{Garage, SECRET};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// Two stages: `a` writes a small file and a 20 MB one (uploaded in parts),
/// `b` copies from `a`. Each leaves a `ran-<stage>` mark in the project.
const TWO_STAGES: &str = r#"
[stage.a]
kind = "cmd"
cmd = '''mkdir -p $XTR_OUT/sub && printf 'alpha' > $XTR_OUT/data.txt && head -c 20000000 /dev/zero | tr '\0' 'x' > $XTR_OUT/sub/big.bin && echo made-a && touch ran-a'''
[stage.b]
kind = "cmd"
needs = ["a"]
cmd = '''{ cat $XTR_IN_A/data.txt; printf ' copied'; } > $XTR_OUT/copy.txt && touch ran-b'''
"#;

fn project(remote: &str, body: &str) -> Project {
    let p = Project::new();
    p.file(
        "p.toml",
        &format!("[pipeline]\nname = \"r\"\nremote = \"{remote}\"\n{body}"),
    );
    p
}

/// The binary with the server's AWS environment (and no other AWS settings).
fn command(p: &Project, env: &[(&'static str, String)], args: &[&str]) -> Command {
    let mut cmd = p.command(args);
    for var in [
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ALLOW_HTTP",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HOME", p.root())
        .envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

fn xtr(p: &Project, env: &[(&'static str, String)], args: &[&str]) -> Output {
    command(p, env, args).output().expect("run xtr-pipe")
}

/// Run with `--json`, expect success; the document and stderr.
fn json(p: &Project, env: &[(&'static str, String)], args: &[&str]) -> (serde_json::Value, String) {
    let mut all = args.to_vec();
    all.push("--json");
    let out = xtr(p, env, &all);
    let err = stderr(&out);
    assert!(
        out.status.success(),
        "xtr-pipe {all:?} failed ({}):\n{err}",
        out.status
    );
    (
        serde_json::from_slice(&out.stdout).expect("valid JSON on stdout"),
        err,
    )
}

/// Every file under `dir`, relative path -> bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).expect("list") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).expect("under root");
                out.insert(
                    rel.to_string_lossy().into_owned(),
                    std::fs::read(&path).expect("read"),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn artifact(report: &serde_json::Value, name: &str) -> std::path::PathBuf {
    stage(report, name)["artifact"]
        .as_str()
        .expect("an artifact")
        .into()
}

/// Everything under `dir` as text, for "the secret is nowhere" checks.
fn all_text(dir: &Path) -> String {
    let mut text = String::new();
    for (_, bytes) in tree(dir) {
        text.push_str(&String::from_utf8_lossy(&bytes));
    }
    text
}

/// Object names under `prefix` in the bucket.
fn objects(g: &Garage, prefix: &str) -> Vec<String> {
    let client = g.client();
    let rt = garage::runtime();
    let prefix = ObjPath::from(prefix);
    rt.block_on(client.list(Some(&prefix)).try_collect::<Vec<_>>())
        .expect("list the bucket")
        .into_iter()
        .map(|m| m.location.to_string())
        .collect()
}

#[test]
fn a_second_machine_reuses_every_artifact_without_running_anything() {
    let g = Garage::start();
    let env = g.env();
    let first = project(&g.url("team"), TWO_STAGES);
    let (report, err) = json(&first, &env, &["run", "p.toml"]);
    assert_eq!(
        statuses(&report),
        [("a".into(), "ran".into()), ("b".into(), "ran".into())]
    );
    assert_eq!(err.matches("\"event\":\"pushed\"").count(), 2, "{err}");
    assert_eq!(objects(&g, "team/artifacts").len(), 2);

    // Another machine: same sources, another directory, an empty store.
    let second = project(&g.url("team"), TWO_STAGES);
    let (status, _) = json(&second, &env, &["status", "p.toml"]);
    for s in status["stages"].as_array().expect("stages") {
        assert_eq!(s["where"], "remote", "{status}");
        assert!(
            s["reason"].as_str().unwrap().starts_with("on the remote"),
            "{s}"
        );
    }
    let (report, err) = json(&second, &env, &["run", "p.toml"]);
    assert_eq!(
        statuses(&report),
        [("a".into(), "cached".into()), ("b".into(), "cached".into())],
        "{err}"
    );
    assert_eq!(stage(&report, "a")["reason"], "fetched from the remote");
    assert!(!second.path("ran-a").exists() && !second.path("ran-b").exists());
    for name in ["a", "b"] {
        assert_eq!(
            tree(&artifact(&report, name)),
            tree(&first.path(&format!(
                "artifacts/{}/out",
                stage(&report, name)["key"].as_str().unwrap()
            ))),
            "stage {name}'s outputs differ between the machines"
        );
    }
    // The log came along; the metrics and history work as for a local cache hit.
    let key_a = stage(&report, "a")["key"].as_str().unwrap().to_string();
    assert!(second
        .read(&format!("artifacts/{key_a}/log.txt"))
        .contains("made-a"));
    let (status, _) = json(&second, &env, &["status", "p.toml"]);
    assert!(status["stages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["where"] == "local"));
    let out = xtr(&second, &env, &["status", "p.toml"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("up to date (local)"));

    // The secret key is in no output, log or artifact of either machine.
    for p in [&first, &second] {
        assert!(!all_text(&p.path("artifacts")).contains(SECRET));
    }
    for args in [
        &["run", "p.toml"][..],
        &["push", "p.toml"],
        &["pull", "p.toml"],
    ] {
        for extra in [&[][..], &["--json"]] {
            let out = xtr(&second, &env, &[args, extra].concat());
            assert!(out.status.success(), "{args:?}: {}", stderr(&out));
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
            assert!(
                !text.contains(SECRET) && !text.contains(garage::KEY_ID),
                "{text}"
            );
        }
    }
}

#[test]
fn pull_and_push_move_a_pipelines_artifacts_explicitly() {
    let g = Garage::start();
    let env = g.env();
    let first = project(&g.url("explicit"), TWO_STAGES);
    // Built locally only, then pushed.
    json(&first, &env, &["run", "p.toml", "--no-remote"]);
    assert!(objects(&g, "explicit/artifacts").is_empty());
    let (pushed, _) = json(&first, &env, &["push", "p.toml"]);
    let status: Vec<&str> = pushed["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["status"].as_str().unwrap())
        .collect();
    assert_eq!(status, ["pushed", "pushed"], "{pushed}");
    assert!(pushed["bytes"].as_u64().unwrap() >= 20_000_000);
    let (again, _) = json(&first, &env, &["push", "p.toml"]);
    assert!(again["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["status"] == "already"));
    assert_eq!(again["bytes"], 0);

    let second = project(&g.url("explicit"), TWO_STAGES);
    let (pulled, _) = json(&second, &env, &["pull", "p.toml", "--only", "b"]);
    let only: Vec<_> = pulled["artifacts"].as_array().unwrap().iter().collect();
    assert_eq!(only.len(), 1);
    assert_eq!(
        (only[0]["stage"].as_str(), only[0]["status"].as_str()),
        (Some("b"), Some("pulled"))
    );
    assert_eq!(second.artifacts().len(), 1);
    let (report, _) = json(
        &second,
        &env,
        &["run", "p.toml", "--no-remote", "--only", "b"],
    );
    assert_eq!(stage(&report, "b")["status"], "cached");
    assert!(!second.path("ran-b").exists());

    // Without a pipeline: every artifact of the remote, into a bare store.
    let third = Project::new();
    let url = g.url("explicit");
    let (all, _) = json(
        &third,
        &env,
        &["pull", "--store", "artifacts", "--remote", &url],
    );
    assert_eq!(all["artifacts"].as_array().unwrap().len(), 2, "{all}");
    assert_eq!(third.artifacts(), first.artifacts());
}

#[test]
fn a_corrupted_remote_object_is_reported_never_used_and_repaired() {
    let g = Garage::start();
    let env = g.env();
    let first = project(&g.url("c"), TWO_STAGES);
    let (report, _) = json(&first, &env, &["run", "p.toml"]);
    let key = stage(&report, "a")["key"].as_str().unwrap().to_string();
    // Same size, other bytes: only the hash can tell.
    let hash = blake3::hash(b"alpha").to_hex().to_string();
    let rt = garage::runtime();
    let blob = ObjPath::from(format!("c/blobs/{hash}"));
    rt.block_on(g.client().put(&blob, PutPayload::from_static(b"alphA")))
        .expect("corrupt the blob");

    let second = project(&g.url("c"), TWO_STAGES);
    let (report, err) = json(&second, &env, &["run", "p.toml"]);
    let a = stage(&report, "a");
    assert_eq!(a["status"], "ran", "the corrupt artifact was used:\n{err}");
    assert!(second.path("ran-a").exists());
    let warning = err
        .lines()
        .find(|l| l.contains("remote_warning"))
        .unwrap_or_else(|| panic!("no warning:\n{err}"));
    assert!(
        warning.contains(&key)
            && warning.contains("out/data.txt")
            && warning.contains("does not match its hash"),
        "{warning}"
    );
    assert_eq!(
        std::fs::read(artifact(&report, "a").join("data.txt")).unwrap(),
        b"alpha"
    );
    // b's key depends only on a's key, so its remote copy was fine to use.
    assert_eq!(stage(&report, "b")["status"], "cached");

    // The run uploaded its good copy over the corrupt one: a third machine fetches it.
    let third = project(&g.url("c"), TWO_STAGES);
    let (report, err) = json(&third, &env, &["run", "p.toml"]);
    assert_eq!(stage(&report, "a")["status"], "cached", "{err}");
    assert_eq!(
        std::fs::read(artifact(&report, "a").join("data.txt")).unwrap(),
        b"alpha"
    );

    // A blob that is gone is reported as missing, by name.
    rt.block_on(g.client().delete(&blob))
        .expect("delete the blob");
    let fourth = project(&g.url("c"), TWO_STAGES);
    let (pulled, _) = {
        let out = xtr(&fourth, &env, &["pull", "p.toml", "--json"]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        (
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
            (),
        )
    };
    let failed = &pulled["artifacts"][0];
    assert_eq!(failed["status"], "failed", "{pulled}");
    assert!(failed["error"]
        .as_str()
        .unwrap()
        .contains("out/data.txt is missing on the remote"));
    assert!(!fourth.path(&format!("artifacts/{key}")).exists());
}

/// A stage with many files, so that its upload takes a while.
const MANY_FILES: &str = r#"
[stage.many]
kind = "cmd"
cmd = '''for i in $(seq 1 3000); do printf "file $i" > $XTR_OUT/f$i.txt; done'''
"#;

#[test]
fn a_server_killed_mid_upload_leaves_no_partial_artifact() {
    let mut g = Garage::start();
    let env = g.env();
    let first = project(&g.url("k"), MANY_FILES);
    let mut child = command(&first, &env, &["run", "p.toml", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a run");
    // Kill the server once the upload has begun: blobs, but no manifest yet.
    let start = Instant::now();
    while objects(&g, "k/blobs").len() < 50 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the upload never began"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    g.kill();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "a failed upload failed the run:\n{err}");
    assert!(
        err.contains("remote_warning") && err.contains("going on locally"),
        "the upload finished before the kill (make the artifact bigger):\n{err}"
    );

    g.launch();
    assert!(
        objects(&g, "k/blobs").len() < 3000,
        "every blob was uploaded"
    );
    assert!(
        objects(&g, "k/artifacts").is_empty(),
        "a partial artifact is visible"
    );
    let second = project(&g.url("k"), MANY_FILES);
    let (status, _) = json(&second, &env, &["status", "p.toml"]);
    assert_eq!(status["stages"][0]["where"], serde_json::Value::Null);
    let (report, err) = json(&second, &env, &["run", "p.toml"]);
    assert_eq!(stage(&report, "many")["status"], "ran");
    assert!(err.contains("\"event\":\"pushed\""), "{err}");
    // Now complete: a third machine gets all 3000 files.
    let third = project(&g.url("k"), MANY_FILES);
    let (report, _) = json(&third, &env, &["run", "p.toml"]);
    assert_eq!(stage(&report, "many")["status"], "cached");
    assert_eq!(tree(&artifact(&report, "many")).len(), 3000);
}

#[test]
fn a_pull_killed_mid_download_leaves_nothing_visible() {
    let g = Garage::start();
    let env = g.env();
    let first = project(&g.url("dl"), MANY_FILES);
    let (report, _) = json(&first, &env, &["run", "p.toml"]);
    let key = stage(&report, "many")["key"].as_str().unwrap().to_string();
    let second = project(&g.url("dl"), MANY_FILES);
    let mut child = command(&second, &env, &["pull", "p.toml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a pull");
    // Kill it once files are arriving in `.tmp/`.
    let tmp = second.path("artifacts/.tmp");
    let arrived = || -> usize {
        std::fs::read_dir(&tmp)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| std::fs::read_dir(e.path().join("out")).ok())
                    .map(|out| out.count())
                    .sum()
            })
            .unwrap_or(0)
    };
    let start = Instant::now();
    while arrived() < 100 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the pull ended before it could be killed"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no download began"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !second.path(&format!("artifacts/{key}")).exists(),
        "a partial artifact was published"
    );
    // Nothing lost: the next run fetches it whole and runs nothing.
    let (report, err) = json(&second, &env, &["run", "p.toml"]);
    assert_eq!(stage(&report, "many")["status"], "cached", "{err}");
    assert_eq!(tree(&artifact(&report, "many")).len(), 3000);
}

/// Same key, different bytes on each machine (a nondeterministic stage).
const NONDETERMINISTIC: &str = r#"
[stage.noisy]
kind = "cmd"
cmd = '''for i in $(seq 1 300); do head -c 2000 /dev/urandom > $XTR_OUT/r$i.bin; done'''
"#;

#[test]
fn two_concurrent_pushes_of_one_key_leave_one_valid_artifact() {
    let g = Garage::start();
    let env = g.env();
    let machines: Vec<Project> = (0..2)
        .map(|_| project(&g.url("race"), NONDETERMINISTIC))
        .collect();
    let mut outputs = Vec::new();
    for m in &machines {
        let (report, _) = json(m, &env, &["run", "p.toml", "--no-remote"]);
        outputs.push((
            stage(&report, "noisy")["key"].clone(),
            tree(&artifact(&report, "noisy")),
        ));
    }
    assert_eq!(outputs[0].0, outputs[1].0, "one key");
    assert_ne!(outputs[0].1, outputs[1].1, "different bytes");
    let children: Vec<_> = machines
        .iter()
        .map(|m| {
            command(m, &env, &["push", "p.toml", "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start a push")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert_eq!(objects(&g, "race/artifacts").len(), 1);
    let third = project(&g.url("race"), NONDETERMINISTIC);
    let (report, err) = json(&third, &env, &["run", "p.toml"]);
    assert_eq!(stage(&report, "noisy")["status"], "cached", "{err}");
    let got = tree(&artifact(&report, "noisy"));
    assert!(
        got == outputs[0].1 || got == outputs[1].1,
        "the pulled artifact mixes the two machines' files"
    );
}

#[test]
fn a_run_with_the_server_down_goes_on_locally() {
    let mut g = Garage::start();
    let env = g.env();
    g.kill();
    let p = project(&g.url("down"), TWO_STAGES);
    let start = Instant::now();
    let (report, err) = json(&p, &env, &["run", "p.toml"]);
    assert_eq!(
        statuses(&report),
        [("a".into(), "ran".into()), ("b".into(), "ran".into())]
    );
    assert!(err.contains("going on locally"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "{:?}",
        start.elapsed()
    );

    // With remote_required the same run stops before running anything.
    let strict = Project::new();
    strict.file(
        "p.toml",
        &format!(
            "[pipeline]\nname = \"r\"\nremote = \"{}\"\nremote_required = true\n{TWO_STAGES}",
            g.url("down")
        ),
    );
    let out = xtr(&strict, &env, &["run", "p.toml"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("remote_required"), "{}", stderr(&out));
    assert!(!strict.path("ran-a").exists());
    // --no-remote gets past it.
    let (report, _) = json(&strict, &env, &["run", "p.toml", "--no-remote"]);
    assert_eq!(stage(&report, "b")["status"], "ran");
}

#[test]
fn a_remote_that_never_answers_costs_a_bounded_wait() {
    // Accepts connections, never replies: a hung server.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let mut env = vec![
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ACCESS_KEY_ID", "GKsilent0000".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "silentsecret00000000".to_string()),
        ("AWS_REGION", "garage".to_string()),
    ];
    env.push(("XTR_REMOTE_TIMEOUT_S", "1".to_string()));
    let p = project("s3://b/slow", TWO_STAGES);
    let start = Instant::now();
    let (report, err) = json(&p, &env, &["run", "p.toml"]);
    assert_eq!(stage(&report, "b")["status"], "ran");
    assert!(err.contains("did not answer"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    drop(silent);
}

#[test]
fn remote_settings_are_checked_before_anything_is_sent() {
    let p = project("s3://b/p", TWO_STAGES);
    // Plain http to a host that is not loopback: refused, the run goes on.
    let env = vec![
        ("AWS_ENDPOINT_URL", "http://192.0.2.7:3900".to_string()),
        ("AWS_ACCESS_KEY_ID", "GKx00000000".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "xsecret0000000000".to_string()),
    ];
    let (report, err) = json(&p, &env, &["run", "p.toml"]);
    assert_eq!(stage(&report, "a")["status"], "ran");
    assert!(err.contains("AWS_ALLOW_HTTP"), "{err}");
    // push needs the remote: the same setting is an error there.
    let out = xtr(&p, &env, &["push", "p.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // No credentials at all.
    let out = xtr(&p, &[], &["push", "p.toml"]);
    assert!(
        stderr(&out).contains("AWS_ACCESS_KEY_ID"),
        "{}",
        stderr(&out)
    );
    // A malformed URL points at the pipeline file.
    let bad = project("https://b/p", TWO_STAGES);
    let out = xtr(&bad, &env, &["run", "p.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("p.toml:3:1: remote `https://b/p` is not an s3:// URL"),
        "{}",
        stderr(&out)
    );
}
