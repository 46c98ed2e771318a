//! Keys are machine-independent: they depend on contents and on paths as written
//! in the pipeline (variables unexpanded, relative to the pipeline file), never
//! on where a checkout, a `${VAR}` or a model directory is. Two checkouts of one
//! pipeline at different places, whose variables point at different directories
//! holding the same files, agree on every key, of every kind of stage.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{stage, Project};

const MODEL: &str = common::TINY_BERT_WORDS;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// A checkout: sources and a model beside the pipeline file, and a library
/// and a second model found through `${XTR_TEST_LIB}` and `${XTR_TEST_MODELS}`
/// (in `outside`, as a machine's site-packages or model cache would be).
fn checkout(outside: &Path, store: Option<&Path>) -> Project {
    let p = Project::new();
    for i in 0..6 {
        p.file(
            &format!("src/pkg/m{i}.py"),
            &format!(
                "def f{i}(x):\n    \"\"\"w{i} w{} of x.\"\"\"\n    return x + {i}\n",
                i + 7
            ),
        );
    }
    p.file(
        "queries.toml",
        "[[query]]\ntext = \"w1 w8\"\nexpect = [\"pkg/m1.py::f1\"]\nwhy = \"docstring\"\n",
    );
    copy_dir(Path::new(MODEL), &p.path("models/tiny"));
    let lib = outside.join("lib/libfoo");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::write(
        lib.join("foo.py"),
        "def foo():\n    \"\"\"w3 w4.\"\"\"\n    return 1\n",
    )
    .unwrap();
    copy_dir(Path::new(MODEL), &outside.join("models/tiny"));
    let store = store.map_or(String::new(), |s| format!("store = {:?}\n", s));
    p.file(
        "p.toml",
        &format!(
            r#"[pipeline]
name = "portable"
{store}
[stage.tree]
kind = "cmd"
cmd = "ls -R src ${{XTR_TEST_LIB}} > $XTR_OUT/ls.txt"
deps = ["src", "queries.toml"]

[stage.dataset]
kind = "dataset"
sources = [{{ lang = "python", path = "src" }}, {{ lang = "python", path = "${{XTR_TEST_LIB}}/lib*" }}]
split = {{ train = 0.5, eval = 0.5, test = 0.0 }}
drop_tests = false

[stage.profile]
kind = "profile"
model = "${{XTR_TEST_MODELS}}/tiny"
batch = 2
qlen = 8
dlen = 16
steps = 1
warmup = 0
device = "cpu"

[stage.train]
uses = "train"
needs = ["dataset"]
model = "${{XTR_TEST_MODELS}}/tiny/"
max_steps = 1
device = "cpu"

[stage.merge]
uses = "merge"
needs = ["train"]

[stage.index]
uses = "index"
needs = ["merge"]
sources = [{{ lang = "python", path = "src" }}, {{ lang = "python", path = "${{XTR_TEST_LIB}}/libfoo" }}]
device = "cpu"

[stage.index_base]
uses = "index"
model = "models/tiny"
sources = [{{ lang = "python", path = "src" }}]
device = "cpu"

[stage.eval]
uses = "eval"
needs = ["index"]
queries = "queries.toml"
device = "cpu"
"#
        ),
    );
    p
}

fn xtr(p: &Project, outside: &Path, args: &[&str]) -> std::process::Output {
    let out = p
        .command(args)
        .env("XTR_TEST_LIB", outside.join("lib"))
        .env("XTR_TEST_MODELS", outside.join("models"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "xtr-pipe {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(p: &Project, outside: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    serde_json::from_slice(&xtr(p, outside, &all).stdout).unwrap()
}

/// Stage name -> key, as `run --dry-run` plans them.
fn keys(p: &Project, outside: &Path) -> BTreeMap<String, String> {
    json(p, outside, &["run", "p.toml", "--dry-run"])["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().into(),
                s["key"].as_str().unwrap().into(),
            )
        })
        .collect()
}

#[test]
fn two_checkouts_with_the_same_sources_compute_the_same_keys() {
    let (outside_a, outside_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = checkout(outside_a.path(), None);
    let b = checkout(outside_b.path(), None);
    assert_ne!(a.root(), b.root());
    let (ka, kb) = (keys(&a, outside_a.path()), keys(&b, outside_b.path()));
    assert_eq!(ka.len(), 8);
    assert_eq!(
        ka, kb,
        "keys differ between two checkouts of the same sources"
    );

    // Contents still count: the same edit under ${XTR_TEST_LIB} in one of them
    // changes exactly the stages that read the library.
    std::fs::write(
        outside_b.path().join("lib/libfoo/foo.py"),
        "def foo():\n    return 2\n",
    )
    .unwrap();
    let kb = keys(&b, outside_b.path());
    let changed: Vec<&str> = ka
        .iter()
        .filter(|(name, key)| kb[*name] != **key)
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(changed, ["dataset", "eval", "index", "merge", "train"]);

    // So does the model's: one weight file differing under ${XTR_TEST_MODELS}.
    let weights = outside_a.path().join("models/tiny/model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&weights, bytes).unwrap();
    let ka2 = keys(&a, outside_a.path());
    let changed: Vec<&str> = ka
        .iter()
        .filter(|(name, key)| ka2[*name] != **key)
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(changed, ["eval", "index", "merge", "profile", "train"]);
}

#[test]
fn a_second_checkout_reuses_the_first_ones_artifacts_and_status_names_roots_as_written() {
    let store = tempfile::tempdir().unwrap();
    let (outside_a, outside_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = checkout(outside_a.path(), Some(store.path()));
    let b = checkout(outside_b.path(), Some(store.path()));
    let only = ["run", "p.toml", "--only", "tree", "--only", "dataset"];
    let first = json(&a, outside_a.path(), &only);
    assert_eq!(stage(&first, "dataset")["status"], "ran", "{first}");
    let second = json(&b, outside_b.path(), &only);
    for name in ["tree", "dataset"] {
        assert_eq!(stage(&second, name)["status"], "cached", "{second}");
    }

    // An edit under the variable's directory: `status` names the root as
    // written, not where it is on this machine.
    std::fs::write(
        outside_b.path().join("lib/libfoo/foo.py"),
        "def foo():\n    return 3\n",
    )
    .unwrap();
    let out = xtr(&b, outside_b.path(), &["status", "p.toml"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("dataset"))
        .unwrap_or_else(|| panic!("no dataset line in:\n{text}"));
    assert!(
        line.contains("1 file changed under ${XTR_TEST_LIB}/libfoo (1 modified)"),
        "{line}"
    );
    assert!(
        !line.contains(&*outside_b.path().to_string_lossy()),
        "{line}"
    );
}
