//! Artifact keys: blake3 over a canonical encoding of everything that determines
//! a stage's output — its recipe.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Bumped only if the recipe encoding itself changes (which invalidates every key).
const KEY_DOMAIN: &str = "xtr-pipe artifact key v1";

/// The 64-hex-digit identity of an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ArtifactKey(String);

impl ArtifactKey {
    pub fn parse(s: &str) -> Option<ArtifactKey> {
        (s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then(|| ArtifactKey(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 digits, for human output.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl fmt::Display for ArtifactKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything that determines a stage's output. Threads, verbosity and other
/// settings that cannot change the result are deliberately absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    pub kind: String,
    pub version: u32,
    /// The kind's params after template merge, `--set`, and its own defaults;
    /// serialised with sorted keys.
    pub params: serde_json::Value,
    /// Needed stage name -> that stage's key.
    pub inputs: BTreeMap<String, ArtifactKey>,
    /// Declared external path (as written) -> tree digest of its contents.
    pub files: BTreeMap<String, String>,
}

impl Recipe {
    /// The canonical bytes: JSON with sorted object keys (serde_json's map is ordered)
    /// and shortest round-trip float formatting.
    pub fn canonical(&self) -> String {
        // serde_json::Value's maps are BTreeMaps, so re-encoding through Value sorts keys.
        serde_json::to_value(self)
            .and_then(|v| serde_json::to_string(&v))
            .unwrap_or_default()
    }

    pub fn key(&self) -> ArtifactKey {
        let mut hasher = blake3::Hasher::new_derive_key(KEY_DOMAIN);
        hasher.update(self.canonical().as_bytes());
        ArtifactKey(hasher.finalize().to_hex().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn recipe(params: serde_json::Value) -> Recipe {
        Recipe {
            kind: "cmd".into(),
            version: 1,
            params,
            inputs: BTreeMap::new(),
            files: BTreeMap::new(),
        }
    }

    #[test]
    fn key_ignores_param_order_but_not_values() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b": 1, "a": {"y": 2, "x": 1}}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str(r#"{"a": {"x": 1, "y": 2}, "b": 1}"#).unwrap();
        assert_eq!(recipe(a).key(), recipe(b).key());
        assert_ne!(recipe(json!({"b": 1})).key(), recipe(json!({"b": 2})).key());
    }

    #[test]
    fn key_covers_version_inputs_and_files() {
        let base = recipe(json!({}));
        let mut bumped = base.clone();
        bumped.version = 2;
        let mut with_input = base.clone();
        with_input.inputs.insert("a".into(), base.key());
        let mut with_file = base.clone();
        with_file.files.insert("data".into(), "00".into());
        let keys = [base.key(), bumped.key(), with_input.key(), with_file.key()];
        for i in 0..keys.len() {
            for j in i + 1..keys.len() {
                assert_ne!(keys[i], keys[j]);
            }
        }
    }

    #[test]
    fn floats_are_normalised() {
        // 1e-4 and 0.0001 are the same number, so the same key.
        let a = recipe(json!({ "lr": 1e-4 }));
        let b = recipe(serde_json::from_str(r#"{"lr": 0.00010}"#).unwrap());
        assert_eq!(a.key(), b.key());
        assert!(ArtifactKey::parse(a.key().as_str()).is_some());
    }
}
