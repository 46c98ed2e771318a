//! A temp project and the real binary, for tests that drive the CLI.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The tiny word-level BERT fixture (vocabulary `w2`..`w99`).
pub const TINY_BERT_WORDS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/tiny_bert_words"
);

/// A Python package whose functions' docstrings and bodies use the fixture's
/// words: function i (in its own module, so splits by file spread them) is
/// documented by two words that its body repeats.
pub fn write_word_sources(p: &Project, n: usize) {
    let word = |i: usize| format!("w{}", 2 + i % 98);
    for i in 0..n {
        let (a, b) = (word(i * 3), word(i * 7 + 1));
        let text = format!(
            "def f{i}(x):\n    \"\"\"{a} {b} of the input.\"\"\"\n    y = \"{a} {} {b}\"\n    return \"{} {}\" + y\n\n",
            word(i * 5 + 2),
            word(i * 11 + 3),
            word(i + 40)
        );
        p.file(&format!("src/pkg/m{i}.py"), &text);
    }
}

pub struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Project {
        Project {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn file(&self, rel: &str, text: &str) -> &Project {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
        self
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtr-pipe"));
        cmd.args(args).current_dir(self.root()).stdin(Stdio::null());
        cmd
    }

    /// Run the binary to completion.
    pub fn xtr(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run xtr-pipe")
    }

    /// Run with `--json`, expect success, return the parsed document.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.xtr(&all);
        assert!(
            out.status.success(),
            "xtr-pipe {all:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("valid JSON on stdout")
    }

    /// Artifact directories currently published in the store.
    pub fn artifacts(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.path("artifacts")) else {
            return Vec::new();
        };
        let mut keys: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.len() == 64)
            .collect();
        keys.sort();
        keys
    }
}

/// `stage name -> status` from a `run --json` document.
pub fn statuses(report: &serde_json::Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = report["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

pub fn stage<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {report}"))
}

/// Wait (bounded) until `path` exists: the test's side of a handshake with a stage.
pub fn wait_for_file(path: &Path, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
