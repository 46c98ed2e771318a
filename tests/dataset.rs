//! The `dataset` stage through the CLI: fixtures in, Parquet and stats out;
//! reruns are cached, a new source file changes the key, outputs are byte-stable,
//! and bad input is skipped and counted.

mod common;

use common::{stage, stderr, Project};
use polars::prelude::{ParquetReader, SerReader};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dataset");

fn copy_fixture(p: &Project, from: &str, to: &str) {
    let src = std::path::Path::new(FIXTURES).join(from);
    let text = std::fs::read_to_string(&src).expect("fixture");
    p.file(to, &text);
}

fn pipeline(store: &str) -> String {
    format!(
        r#"
[pipeline]
name = "ds"
store = "{store}"

[stage.data]
kind = "dataset"
sources = [
  {{ lang = "rust", path = "code/rust" }},
  {{ lang = "python", path = "code/py" }},
  {{ lang = "lean", path = "code/lean" }},
]
seed = 3
"#
    )
}

fn project() -> Project {
    let p = Project::new();
    copy_fixture(&p, "rust/src/lib.rs", "code/rust/src/lib.rs");
    copy_fixture(&p, "python/pkg/shapes.py", "code/py/pkg/shapes.py");
    copy_fixture(&p, "lean/Geo/Basic.lean", "code/lean/Geo/Basic.lean");
    p.file("p.toml", &pipeline("artifacts"));
    p
}

fn stats(report: &serde_json::Value) -> serde_json::Value {
    let dir = stage(report, "data")["artifact"]
        .as_str()
        .expect("artifact")
        .to_string();
    let text = std::fs::read_to_string(format!("{dir}/stats.json")).expect("stats.json");
    serde_json::from_str(&text).expect("stats is JSON")
}

fn artifact_file(report: &serde_json::Value, name: &str) -> Vec<u8> {
    let dir = stage(report, "data")["artifact"]
        .as_str()
        .expect("artifact")
        .to_string();
    std::fs::read(format!("{dir}/{name}")).expect(name)
}

#[test]
fn builds_caches_and_rebuilds_when_a_source_file_is_added() {
    let p = project();
    let first = p.json(&["run", "p.toml"]);
    assert_eq!(stage(&first, "data")["status"], "ran");
    let s = stats(&first);
    assert_eq!(s["pairs"], 21, "{s}");
    assert_eq!(s["per_language"]["rust"]["total"], 8);
    assert_eq!(s["per_language"]["python"]["total"], 6);
    assert_eq!(s["per_language"]["lean"]["total"], 7);
    assert_eq!(stage(&first, "data")["metrics"]["pairs"], 21);

    let dir = stage(&first, "data")["artifact"]
        .as_str()
        .unwrap()
        .to_string();
    let file = std::fs::File::open(format!("{dir}/pairs.parquet")).unwrap();
    let df = ParquetReader::new(file).finish().expect("readable Parquet");
    let names: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(
        names,
        [
            "lang",
            "root",
            "path",
            "symbol",
            "item",
            "start_line",
            "end_line",
            "query",
            "code",
            "split"
        ]
    );
    assert_eq!(df.height(), 21);
    let roots = df
        .column("root")
        .unwrap()
        .str()
        .unwrap()
        .get(0)
        .map(str::to_string);
    assert_eq!(
        roots.as_deref(),
        Some("code/rust"),
        "rows are sorted by language first"
    );

    let again = p.json(&["run", "p.toml"]);
    assert_eq!(stage(&again, "data")["status"], "cached");

    p.file(
        "code/py/pkg/extra.py",
        "def halve(x):\n    \"\"\"Half of x, rounded down.\"\"\"\n    return x // 2\n",
    );
    let third = p.json(&["run", "p.toml"]);
    assert_eq!(stage(&third, "data")["status"], "ran");
    assert_ne!(stage(&third, "data")["key"], stage(&first, "data")["key"]);
    assert_eq!(stats(&third)["per_language"]["python"]["total"], 7);
}

#[test]
fn same_sources_and_params_give_byte_identical_outputs() {
    let p = project();
    p.file("q.toml", &pipeline("other-store"));
    let a = p.json(&["run", "p.toml"]);
    let b = p.json(&["run", "q.toml"]);
    assert_eq!(
        stage(&b, "data")["status"],
        "ran",
        "a separate store recomputes"
    );
    for name in ["pairs.parquet", "stats.json"] {
        assert_eq!(
            artifact_file(&a, name),
            artifact_file(&b, name),
            "{name} differs"
        );
    }
}

#[test]
fn bad_input_is_skipped_and_counted() {
    let p = Project::new();
    let good = "/// Doubles the value it is given.\npub fn double(x: u32) -> u32 {\n    x * 2\n}\n";
    p.file("code/good.rs", good);
    p.file(
        "code/broken.rs",
        "/// A broken function body here.\nfn broken( {\n    1\n}\n",
    );
    p.file("code/big.rs", &good.repeat(100));
    std::fs::write(
        p.path("code/latin1.rs"),
        b"/// caf\xe9 au lait\nfn f() {}\n",
    )
    .unwrap();
    std::fs::write(p.path("code/blob.rs"), b"fn main() {}\0\0\0").unwrap();
    std::os::unix::fs::symlink(p.path("code/loop_b.rs"), p.path("code/loop_a.rs")).unwrap();
    std::os::unix::fs::symlink(p.path("code/loop_a.rs"), p.path("code/loop_b.rs")).unwrap();
    std::os::unix::fs::symlink(p.path("code"), p.path("code/self")).unwrap();
    p.file(
        "p.toml",
        "[pipeline]\nname = \"bad\"\n[stage.data]\nkind = \"dataset\"\nmax_file_bytes = 1000\nsources = [{ lang = \"rust\", path = \"code\" }]\n",
    );
    let report = p.json(&["run", "p.toml"]);
    let s = stats(&report);
    let f = &s["files"];
    assert_eq!(s["pairs"], 1, "{s}");
    assert_eq!(f["too_large"], 1, "{f}");
    assert_eq!(f["invalid_utf8"], 1, "{f}");
    assert_eq!(f["binary"], 1, "{f}");
    assert_eq!(f["broken_links"], 2, "{f}");
    assert_eq!(f["symlinked_dirs"], 1, "{f}");
    assert_eq!(f["with_syntax_errors"], 1, "{f}");
    assert_eq!(s["filtered"]["syntax_error_items"], 1, "{s}");
}

#[test]
fn a_missing_source_path_is_a_located_error() {
    let p = Project::new();
    p.file(
        "p.toml",
        "[pipeline]\nname = \"m\"\n[stage.data]\nkind = \"dataset\"\nsources = [\n  { lang = \"rust\", path = \"nowhere\" },\n]\n",
    );
    let out = p.xtr(&["run", "p.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("p.toml:6:") && err.contains("source path `nowhere` does not exist"),
        "{err}"
    );
}

#[test]
fn an_optional_source_that_is_absent_is_skipped_with_a_note() {
    let p = Project::new();
    p.file(
        "src/lib.rs",
        "/// Adds one to a number.\npub fn inc(x: u32) -> u32 {\n    x + 1\n}\n",
    );
    p.file(
        "p.toml",
        "[pipeline]\nname = \"m\"\n[stage.data]\nkind = \"dataset\"\nsources = [\n  { lang = \"rust\", path = \"src\" },\n  { lang = \"lean\", path = \"lean-toolchain/src\", optional = true },\n]\n",
    );
    let report = p.json(&["run", "p.toml"]);
    let data = stage(&report, "data");
    assert_eq!(data["status"], "ran", "{report}");
    assert_eq!(data["metrics"]["skipped_sources"], 1, "{report}");
    assert_eq!(data["metrics"]["pairs"], 1, "{report}");
    let log = std::fs::read_to_string(data["log"].as_str().unwrap()).unwrap();
    assert!(
        log.contains("note: optional source skipped: lean-toolchain/src"),
        "{log}"
    );
    // Without `optional`, the same source stops the run and says how to allow it.
    let text = p.read("p.toml").replace(", optional = true", "");
    p.file("p.toml", &text);
    let out = p.xtr(&["run", "p.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("add `optional = true`"),
        "{}",
        stderr(&out)
    );
}
