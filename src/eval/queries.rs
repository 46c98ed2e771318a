//! Evaluation query sets: TOML files under `datasets/`, one `[[query]]` table per
//! query with its text, the `path::symbol` targets that answer it and why. Every
//! key is checked (`deny_unknown_fields`), and [`QuerySet::check_targets`] makes an
//! expected target that the index does not hold an error naming the query, so a
//! typo never counts as a miss.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// One query and the targets that answer it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    /// What a user would type.
    pub text: String,
    /// `path::symbol` of each right answer (path relative to the indexed root).
    pub expect: Vec<String>,
    /// Why these targets are right (for reviewers; not used in scoring).
    #[serde(default)]
    pub why: String,
}

/// A query set as written in its file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuerySet {
    /// What the set covers.
    #[serde(default)]
    pub description: String,
    #[serde(rename = "query", default)]
    pub queries: Vec<Query>,
}

impl QuerySet {
    /// Parses a query set; `origin` names it in errors (a file name).
    pub fn parse(text: &str, origin: &str) -> Result<QuerySet> {
        let set: QuerySet = toml::from_str(text).with_context(|| format!("parsing {origin}"))?;
        if set.queries.is_empty() {
            bail!("{origin}: no [[query]] tables");
        }
        for (i, q) in set.queries.iter().enumerate() {
            if q.text.trim().is_empty() {
                bail!("{origin}: query {} has an empty `text`", i + 1);
            }
            if q.expect.is_empty() {
                bail!("{origin}: query {} ({:?}) expects nothing", i + 1, q.text);
            }
        }
        Ok(set)
    }

    /// Reads and parses a query-set file.
    pub fn load(path: &Path) -> Result<QuerySet> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading query set {}", path.display()))?;
        QuerySet::parse(&text, &path.display().to_string())
    }

    /// An error naming the first query whose expected target `known` rejects,
    /// with the closest known target when one is near (`candidates` are all the
    /// targets the index holds).
    pub fn check_targets<'a>(
        &self,
        known: impl Fn(&str) -> bool,
        candidates: impl Iterator<Item = &'a str> + Clone,
    ) -> Result<()> {
        for (i, q) in self.queries.iter().enumerate() {
            for target in &q.expect {
                if known(target) {
                    continue;
                }
                let near = candidates
                    .clone()
                    .map(|c| (strsim::jaro_winkler(c, target), c))
                    .filter(|(s, _)| *s > 0.85)
                    .max_by(|a, b| a.0.total_cmp(&b.0));
                let hint = near
                    .map(|(_, c)| format!(" (did you mean `{c}`?)"))
                    .unwrap_or_default();
                bail!(
                    "query {} ({:?}) expects `{target}`, which is not in the index{hint}",
                    i + 1,
                    q.text
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET: &str = r#"
description = "two queries"

[[query]]
text = "where are artifacts hashed"
expect = ["src/store/key.rs::ArtifactKey::compute"]
why = "it hashes kind, params and inputs"

[[query]]
text = "split camel case"
expect = ["src/search/tokenize.rs::split_parts", "src/search/tokenize.rs::code_terms"]
"#;

    #[test]
    fn parses_queries_with_targets_and_reasons() {
        let set = QuerySet::parse(SET, "q.toml").unwrap();
        assert_eq!(set.description, "two queries");
        assert_eq!(set.queries.len(), 2);
        assert_eq!(
            set.queries[0].expect,
            ["src/store/key.rs::ArtifactKey::compute"]
        );
        assert_eq!(set.queries[0].why, "it hashes kind, params and inputs");
        assert_eq!(set.queries[1].why, "");
    }

    #[test]
    fn unknown_keys_and_empty_queries_are_errors() {
        let typo = "[[query]]\ntext = \"x\"\nexpects = [\"a::b\"]\n";
        let err = format!("{:#}", QuerySet::parse(typo, "q.toml").unwrap_err());
        assert!(err.contains("q.toml") && err.contains("expects"), "{err}");
        let empty = "[[query]]\ntext = \"x\"\nexpect = []\n";
        let err = format!("{:#}", QuerySet::parse(empty, "q.toml").unwrap_err());
        assert!(
            err.contains("query 1") && err.contains("expects nothing"),
            "{err}"
        );
        assert!(QuerySet::parse("", "q.toml").is_err());
    }

    #[test]
    fn a_target_missing_from_the_index_names_the_query_and_the_near_miss() {
        let set = QuerySet::parse(SET, "q.toml").unwrap();
        let held = [
            "src/store/key.rs::ArtifactKey::compute",
            "src/search/tokenize.rs::split_parts",
            "src/search/tokenize.rs::code_terms2",
        ];
        let err = set
            .check_targets(|t| held.contains(&t), held.iter().copied())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("query 2") && err.contains("split camel case"),
            "{err}"
        );
        assert!(
            err.contains("expects `src/search/tokenize.rs::code_terms`"),
            "{err}"
        );
        assert!(
            err.contains("did you mean `src/search/tokenize.rs::code_terms2`"),
            "{err}"
        );
        let all = [
            "src/store/key.rs::ArtifactKey::compute",
            "src/search/tokenize.rs::split_parts",
            "src/search/tokenize.rs::code_terms",
        ];
        set.check_targets(|t| all.contains(&t), all.iter().copied())
            .unwrap();
    }
}
