//! `stats.json`: what the dataset holds (pairs per language and split, length
//! percentiles) and what was left out on the way (skipped files, filters, dedupe,
//! caps). Maps are ordered, numbers are integers: the file is byte-stable.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Lang, Pair};

#[derive(Debug, Default, Serialize)]
pub struct Stats {
    pub pairs: u64,
    pub per_language: BTreeMap<Lang, SplitCounts>,
    pub per_split: SplitCounts,
    pub files: FileStats,
    /// Bytes of source read from the files that were parsed.
    pub bytes: u64,
    pub bytes_per_language: BTreeMap<Lang, u64>,
    pub filtered: Filtered,
    pub deduped: Deduped,
    /// Pairs dropped by `caps`, per language.
    pub capped: BTreeMap<Lang, u64>,
    pub query_chars: Percentiles,
    pub code_lines: Percentiles,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct SplitCounts {
    pub train: u64,
    pub eval: u64,
    pub test: u64,
    pub total: u64,
}

impl SplitCounts {
    fn add(&mut self, split: &str) {
        match split {
            "train" => self.train += 1,
            "eval" => self.eval += 1,
            _ => self.test += 1,
        }
        self.total += 1;
    }
}

#[derive(Debug, Default, Serialize)]
pub struct FileStats {
    /// Files that matched a source's globs.
    pub seen: u64,
    /// Files read and searched for pairs (all but the skipped ones below).
    pub parsed: u64,
    /// Of those, files without any doc comment marker (`///`, `/**`, ...): not
    /// handed to tree-sitter, since they cannot hold a pair.
    pub without_doc_comments: u64,
    /// Parsed files whose tree holds syntax errors (their broken items are dropped).
    pub with_syntax_errors: u64,
    pub too_large: u64,
    pub binary: u64,
    pub invalid_utf8: u64,
    pub unreadable: u64,
    pub generated: u64,
    pub test_files: u64,
    pub parse_failed: u64,
    pub symlinked_dirs: u64,
    pub broken_links: u64,
}

impl FileStats {
    pub fn count_skip(&mut self, why: &str) {
        let slot = match why {
            "too_large" => &mut self.too_large,
            "binary" => &mut self.binary,
            "invalid_utf8" => &mut self.invalid_utf8,
            "unreadable" => &mut self.unreadable,
            "generated" => &mut self.generated,
            "test_files" => &mut self.test_files,
            _ => &mut self.parse_failed,
        };
        *slot += 1;
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Filtered {
    /// Items with a doc comment found in parsed files (before any filter).
    pub documented_items: u64,
    pub test_items: u64,
    pub syntax_error_items: u64,
    pub query_too_short: u64,
    pub query_too_long: u64,
    pub code_too_short: u64,
    pub code_too_long: u64,
}

impl Filtered {
    pub fn add(&mut self, o: &Filtered) {
        self.documented_items += o.documented_items;
        self.test_items += o.test_items;
        self.syntax_error_items += o.syntax_error_items;
        self.query_too_short += o.query_too_short;
        self.query_too_long += o.query_too_long;
        self.code_too_short += o.code_too_short;
        self.code_too_long += o.code_too_long;
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Deduped {
    /// Same whitespace-normalised code as an earlier pair.
    pub code: u64,
    /// Same (query, code) as an earlier pair.
    pub pairs: u64,
}

/// Nearest-rank percentiles.
#[derive(Debug, Default, Serialize)]
pub struct Percentiles {
    pub min: u64,
    pub p10: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(mut values: Vec<u64>) -> Percentiles {
        if values.is_empty() {
            return Percentiles::default();
        }
        values.sort_unstable();
        let at = |p: f64| {
            let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
            values[rank.clamp(1, values.len()) - 1]
        };
        Percentiles {
            min: values[0],
            p10: at(10.0),
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            max: values[values.len() - 1],
        }
    }
}

impl Stats {
    pub fn record_pairs(&mut self, pairs: &[Pair]) {
        self.pairs = pairs.len() as u64;
        for p in pairs {
            self.per_language.entry(p.lang).or_default().add(p.split);
            self.per_split.add(p.split);
        }
        self.query_chars = Percentiles::of(
            pairs
                .iter()
                .map(|p| p.query.chars().count() as u64)
                .collect(),
        );
        self.code_lines = Percentiles::of(
            pairs
                .iter()
                .map(|p| p.code.lines().count() as u64)
                .collect(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let p = Percentiles::of((1..=100).collect());
        assert_eq!(
            (p.min, p.p10, p.p50, p.p90, p.p99, p.max),
            (1, 10, 50, 90, 99, 100)
        );
        let p = Percentiles::of(vec![7]);
        assert_eq!((p.min, p.p50, p.max), (7, 7, 7));
    }
}
