//! Staleness in words: compare a stage's recipe now with the one it last ran
//! with, and say which param, input or file changed.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::store::listing::FileChanges;
use crate::store::Recipe;

/// Describe why `now` differs from `before`; `changes(old digest, new digest)`
/// says how a dep's files changed, when both listings are known.
pub fn explain(
    before: &Recipe,
    now: &Recipe,
    changes: &mut dyn FnMut(&str, &str) -> Option<FileChanges>,
) -> Vec<String> {
    let mut reasons = Vec::new();
    if before.kind != now.kind {
        reasons.push(format!("kind changed {} -> {}", before.kind, now.kind));
    } else if before.version != now.version {
        reasons.push(format!(
            "{} stage implementation changed (version {} -> {})",
            now.kind, before.version, now.version
        ));
    }
    reasons.extend(param_changes(&before.params, &now.params));
    for (name, key) in &now.inputs {
        match before.inputs.get(name) {
            Some(old) if old == key => {}
            Some(_) => reasons.push(format!("input {name} changed")),
            None => reasons.push(format!("input {name} added")),
        }
    }
    for name in before
        .inputs
        .keys()
        .filter(|n| !now.inputs.contains_key(*n))
    {
        reasons.push(format!("input {name} removed"));
    }
    for (path, digest) in &now.files {
        match before.files.get(path) {
            Some(old) if old == digest => {}
            Some(old) => reasons.push(file_changes(path, changes(old, digest))),
            None => reasons.push(format!("dep {path} added")),
        }
    }
    for path in before.files.keys().filter(|p| !now.files.contains_key(*p)) {
        reasons.push(format!("dep {path} removed"));
    }
    reasons
}

/// Each param that differs between two params documents, as `path a -> b`.
pub fn param_changes(before: &Value, now: &Value) -> Vec<String> {
    let (mut old, mut new) = (BTreeMap::new(), BTreeMap::new());
    flatten("", before, &mut old);
    flatten("", now, &mut new);
    let mut out = Vec::new();
    for (path, value) in &new {
        match old.get(path) {
            Some(prev) if prev == value => {}
            Some(prev) => out.push(format!(
                "param {path} changed {} -> {}",
                show(prev),
                show(value)
            )),
            None => out.push(format!("param {path} set to {}", show(value))),
        }
    }
    for (path, value) in &old {
        if !new.contains_key(path) {
            out.push(format!("param {path} removed (was {})", show(value)));
        }
    }
    out
}

/// Dotted paths to leaves; arrays are leaves (a changed list reads best whole).
fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&path, v, out);
            }
        }
        _ if prefix.is_empty() => {}
        _ => {
            out.insert(prefix.to_string(), value.clone());
        }
    }
}

fn show(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 60 {
        format!("{}…", text.chars().take(57).collect::<String>())
    } else {
        text
    }
}

fn file_changes(path: &str, changes: Option<FileChanges>) -> String {
    let Some(c) = changes else {
        return format!("files under {path} changed");
    };
    if c.single_file {
        return format!("file {path} changed");
    }
    let total = c.modified + c.added + c.removed;
    let mut parts = Vec::new();
    for (n, what) in [
        (c.modified, "modified"),
        (c.added, "added"),
        (c.removed, "removed"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    let noun = if total == 1 { "file" } else { "files" };
    format!("{total} {noun} changed under {path} ({})", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn recipe(params: Value) -> Recipe {
        Recipe {
            kind: "cmd".into(),
            version: 1,
            params,
            inputs: BTreeMap::new(),
            files: BTreeMap::new(),
        }
    }

    #[test]
    fn names_changed_params_by_dotted_path() {
        let before = recipe(json!({"lora": {"r": 8, "alpha": 16}, "lr": 0.001}));
        let now = recipe(json!({"lora": {"r": 16, "alpha": 16}, "seed": 1}));
        let reasons = explain(&before, &now, &mut |_, _| None);
        assert_eq!(
            reasons,
            vec![
                "param lora.r changed 8 -> 16".to_string(),
                "param seed set to 1".to_string(),
                "param lr removed (was 0.001)".to_string(),
            ]
        );
    }

    #[test]
    fn counts_changed_files_under_a_dep() {
        let mut before = recipe(json!({}));
        before.files.insert("src".into(), "d1".into());
        let mut now = before.clone();
        now.files.insert("src".into(), "d2".into());
        let mut changes = |a: &str, b: &str| {
            assert_eq!((a, b), ("d1", "d2"));
            Some(FileChanges {
                modified: 1,
                added: 1,
                removed: 1,
                single_file: false,
            })
        };
        let reasons = explain(&before, &now, &mut changes);
        assert_eq!(
            reasons,
            vec!["3 files changed under src (1 modified, 1 added, 1 removed)"]
        );
    }
}
