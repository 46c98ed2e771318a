//! What an index holds: [`Unit`]s, the documented items that the dataset
//! extractors find in source trees (path, symbol, line span, doc, code), and
//! line chunks of files in which they find none. Each unit carries the hash of the
//! text it is embedded from, so a re-index embeds only what changed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::cancel::CancelToken;
use crate::dataset::extract::{self, Compiled};
use crate::dataset::lang::{self, Lang};
use crate::dataset::lean;
use crate::dataset::sources::{self, Filter, WalkSkips};

/// One searchable unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unit {
    /// Relative to the indexed root (with the root's prefix when several are indexed), `/`-separated.
    pub path: String,
    /// As the dataset kind names it (`Type::method`, `Class.method`); `L10-59` for a chunk.
    pub symbol: String,
    /// `function`, `struct`, ..., or `chunk`.
    pub kind: String,
    pub lang: Lang,
    /// 1-based, inclusive.
    pub start_line: u32,
    pub end_line: u32,
    /// The doc comment, markers stripped.
    pub doc: String,
    pub code: String,
    /// blake3 (hex) of [`Unit::embed_text`].
    pub hash: String,
}

impl Unit {
    /// `path::symbol`, how query sets name a target.
    pub fn key(&self) -> String {
        format!("{}::{}", self.path, self.symbol)
    }

    /// The text the model embeds: the doc comment, then the code.
    pub fn embed_text(&self) -> String {
        if self.doc.is_empty() {
            self.code.clone()
        } else {
            format!("{}\n{}", self.doc, self.code)
        }
    }

    fn hashed(mut self) -> Unit {
        self.hash = blake3::hash(self.embed_text().as_bytes())
            .to_hex()
            .to_string();
        self
    }
}

/// One tree to index.
#[derive(Debug, Clone)]
pub struct SourceRoot {
    /// A directory or a file.
    pub path: PathBuf,
    /// Put before every unit path from this root (`""` for one root).
    pub prefix: String,
    /// The languages to read (their default file globs).
    pub langs: Vec<Lang>,
    /// Globs (relative to the root) never read, besides [`CollectOptions::exclude`].
    pub exclude: Vec<String>,
}

/// How files become units.
#[derive(Debug, Clone)]
pub struct CollectOptions {
    /// Lines per chunk of a file without items.
    pub chunk_lines: usize,
    /// Larger files are skipped.
    pub max_file_bytes: u64,
    /// Globs (relative to a root) never read.
    pub exclude: Vec<String>,
}

impl Default for CollectOptions {
    fn default() -> Self {
        CollectOptions {
            chunk_lines: 50,
            max_file_bytes: 1 << 20,
            exclude: [
                "target/**",
                "**/.git/**",
                "**/node_modules/**",
                "**/__pycache__/**",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// The units of every root, in (root, path, line) order.
pub fn collect(
    roots: &[SourceRoot],
    opts: &CollectOptions,
    cancel: &CancelToken,
) -> Result<Vec<Unit>> {
    let mut units = Vec::new();
    for root in roots {
        for &lang in &root.langs {
            let exclude: Vec<String> = opts.exclude.iter().chain(&root.exclude).cloned().collect();
            let filter = Filter::new(lang, &[], &exclude)?;
            let mut skips = WalkSkips::default();
            let files = sources::walk(&root.path, &filter, &mut skips)
                .with_context(|| format!("walking {}", root.path.display()))?;
            let grammar = lang::grammar(lang).map(Compiled::new).transpose()?;
            let tsx = if lang == Lang::Typescript {
                Some(Compiled::new(lang::tsx())?)
            } else {
                None
            };
            for file in files {
                cancel.check()?;
                if file.size > opts.max_file_bytes {
                    continue;
                }
                let Some(text) = read_text(&file.path) else {
                    continue;
                };
                let path = if root.prefix.is_empty() {
                    file.rel.clone()
                } else {
                    format!("{}/{}", root.prefix.trim_end_matches('/'), file.rel)
                };
                let g = if file.rel.ends_with(".tsx") {
                    tsx.as_ref()
                } else {
                    grammar.as_ref()
                };
                units.extend(file_units(lang, g, &path, &text, opts.chunk_lines));
            }
        }
    }
    Ok(units)
}

fn read_text(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    if bytes[..bytes.len().min(8192)].contains(&0) {
        return None;
    }
    String::from_utf8(bytes).ok()
}

/// The units of one file: its documented items, or line chunks when it has none.
pub fn file_units(
    lang: Lang,
    grammar: Option<&Compiled>,
    path: &str,
    text: &str,
    chunk_lines: usize,
) -> Vec<Unit> {
    let stem = path
        .rsplit('/')
        .next()
        .and_then(|f| f.split('.').next())
        .unwrap_or_default();
    let items = match (lang, grammar) {
        (Lang::Lean, _) => lean::extract(text).items,
        (_, Some(g)) => extract::extract(lang, g, text, stem)
            .map(|f| f.items)
            .unwrap_or_default(),
        (_, None) => Vec::new(),
    };
    if items.is_empty() {
        return chunks(lang, path, text, chunk_lines.max(1));
    }
    items
        .into_iter()
        .map(|item| {
            Unit {
                path: path.to_string(),
                symbol: item.symbol,
                kind: item.item,
                lang,
                start_line: item.start_line,
                end_line: item.end_line,
                doc: item.doc.join("\n").trim().to_string(),
                code: item.code,
                hash: String::new(),
            }
            .hashed()
        })
        .collect()
}

fn chunks(lang: Lang, path: &str, text: &str, lines_per_chunk: usize) -> Vec<Unit> {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks(lines_per_chunk)
        .enumerate()
        .filter(|(_, c)| c.iter().any(|l| !l.trim().is_empty()))
        .map(|(i, c)| {
            let start = (i * lines_per_chunk + 1) as u32;
            let end = start + c.len() as u32 - 1;
            Unit {
                path: path.to_string(),
                symbol: format!("L{start}-{end}"),
                kind: "chunk".to_string(),
                lang,
                start_line: start,
                end_line: end,
                doc: String::new(),
                code: c.join("\n"),
                hash: String::new(),
            }
            .hashed()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_become_units_and_bare_files_become_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(
            src.join("lib.rs"),
            "/// Adds two numbers.\npub fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n\npub struct P;\n\nimpl P {\n    /// Makes a P.\n    pub fn new() -> P {\n        P\n    }\n}\n",
        )
        .unwrap();
        std::fs::write(src.join("bare.rs"), "fn a() {}\n\nfn b() {}\nfn c() {}\n").unwrap();
        std::fs::create_dir_all(dir.path().join("target")).unwrap();
        std::fs::write(dir.path().join("target/gen.rs"), "/// x\nfn gen() {}\n").unwrap();
        let roots = [SourceRoot {
            path: dir.path().to_path_buf(),
            prefix: String::new(),
            langs: vec![Lang::Rust],
            exclude: Vec::new(),
        }];
        let opts = CollectOptions {
            chunk_lines: 2,
            ..Default::default()
        };
        let units = collect(&roots, &opts, &CancelToken::new()).unwrap();
        let keys: Vec<String> = units.iter().map(Unit::key).collect();
        assert_eq!(
            keys,
            [
                "src/bare.rs::L1-2",
                "src/bare.rs::L3-4",
                "src/lib.rs::add",
                "src/lib.rs::P::new"
            ]
        );
        let add = &units[2];
        assert_eq!((add.start_line, add.end_line), (2, 4));
        assert_eq!(add.doc, "Adds two numbers.");
        assert_eq!(add.kind, "function");
        assert_eq!(
            add.embed_text(),
            "Adds two numbers.\npub fn add(a: i32, b: i32) -> i32 {\n    a + b\n}"
        );
        assert_eq!(
            add.hash,
            blake3::hash(add.embed_text().as_bytes())
                .to_hex()
                .to_string()
        );
        assert_eq!(units[0].kind, "chunk");
        assert_eq!(units[0].code, "fn a() {}\n");

        // A root's own excludes are added to the defaults.
        let roots = [SourceRoot {
            exclude: vec!["src/bare.rs".to_string()],
            ..roots[0].clone()
        }];
        let units = collect(&roots, &opts, &CancelToken::new()).unwrap();
        let keys: Vec<String> = units.iter().map(Unit::key).collect();
        assert_eq!(keys, ["src/lib.rs::add", "src/lib.rs::P::new"]);
    }
}
