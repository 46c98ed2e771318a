//! BM25 over code units with tantivy: fields `symbol`, `doc` and `code` are
//! tokenized by [`super::tokenize::CodeTokenizer`]; `unit` (a fast field), `path`
//! and `line` are kept so a hit maps back to its unit. Queries are the code terms
//! of the text, OR-ed over the three fields (the symbol boosted), so no query
//! syntax can fail to parse.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, Result};
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, BoostQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST, INDEXED, STORED, STRING,
};
use tantivy::{Index, IndexReader, ReloadPolicy, TantivyDocument, Term};

use super::tokenize::{self, CodeTokenizer};

/// How much a term in the symbol's name counts against one in its doc or code.
const SYMBOL_BOOST: f32 = 2.0;

/// The writer's memory budget: one segment for any corpus we index (10k units is ~15 MB).
const WRITER_BUDGET: usize = 64 << 20;

/// One unit as BM25 sees it.
#[derive(Debug, Clone, Copy)]
pub struct Bm25Doc<'a> {
    pub unit: u32,
    pub path: &'a str,
    pub line: u32,
    pub symbol: &'a str,
    pub doc: &'a str,
    pub code: &'a str,
}

/// An open BM25 index.
pub struct Bm25Index {
    reader: IndexReader,
    fields: Fields,
}

#[derive(Clone, Copy)]
struct Fields {
    unit: Field,
    symbol: Field,
    doc: Field,
    code: Field,
    path: Field,
    line: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(tokenize::NAME)
            .set_index_option(IndexRecordOption::WithFreqs),
    );
    let fields = Fields {
        unit: b.add_u64_field("unit", FAST | STORED | INDEXED),
        symbol: b.add_text_field("symbol", text.clone()),
        doc: b.add_text_field("doc", text.clone()),
        code: b.add_text_field("code", text),
        path: b.add_text_field("path", STRING | STORED),
        line: b.add_u64_field("line", STORED),
    };
    (b.build(), fields)
}

fn register(index: &Index) {
    index.tokenizers().register(tokenize::NAME, CodeTokenizer);
}

impl Bm25Index {
    /// Builds an index of `docs` into the empty or absent directory `dir`.
    pub fn build<'a>(dir: &Path, docs: impl IntoIterator<Item = Bm25Doc<'a>>) -> Result<Bm25Index> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let (schema, f) = schema();
        let index = Index::create_in_dir(dir, schema)
            .with_context(|| format!("creating a BM25 index in {}", dir.display()))?;
        register(&index);
        let mut writer = index
            .writer_with_num_threads::<TantivyDocument>(1, WRITER_BUDGET)
            .context("opening the BM25 writer")?;
        for d in docs {
            let mut doc = TantivyDocument::default();
            doc.add_u64(f.unit, d.unit as u64);
            doc.add_text(f.symbol, d.symbol);
            doc.add_text(f.doc, d.doc);
            doc.add_text(f.code, d.code);
            doc.add_text(f.path, d.path);
            doc.add_u64(f.line, d.line as u64);
            writer.add_document(doc)?;
        }
        writer.commit().context("committing the BM25 index")?;
        writer
            .wait_merging_threads()
            .context("finishing the BM25 index")?;
        Self::from_index(index, dir)
    }

    /// Opens the index in `dir`; a missing or damaged index is an error naming it.
    pub fn open(dir: &Path) -> Result<Bm25Index> {
        let index = Index::open_in_dir(dir)
            .with_context(|| format!("opening the BM25 index in {}", dir.display()))?;
        register(&index);
        Self::from_index(index, dir)
    }

    fn from_index(index: Index, dir: &Path) -> Result<Bm25Index> {
        let schema = index.schema();
        let field = |name: &str| {
            schema.get_field(name).with_context(|| {
                format!(
                    "{}: the BM25 index has no `{name}` field (built by another version?)",
                    dir.display()
                )
            })
        };
        let fields = Fields {
            unit: field("unit")?,
            symbol: field("symbol")?,
            doc: field("doc")?,
            code: field("code")?,
            path: field("path")?,
            line: field("line")?,
        };
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .with_context(|| format!("reading the BM25 index in {}", dir.display()))?;
        Ok(Bm25Index { reader, fields })
    }

    /// Units indexed.
    pub fn len(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `k` best units for `query`: `(unit, score)`, best first. A query with
    /// no terms finds nothing.
    pub fn search(&self, query: &str, k: usize) -> Result<Vec<(u32, f32)>> {
        let mut seen = HashSet::new();
        let terms: Vec<String> = tokenize::code_terms(query)
            .into_iter()
            .filter(|t| seen.insert(t.clone()))
            .collect();
        if terms.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let f = self.fields;
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for (field, boost) in [(f.symbol, SYMBOL_BOOST), (f.doc, 1.0), (f.code, 1.0)] {
            for t in &terms {
                let q = TermQuery::new(
                    Term::from_field_text(field, t),
                    IndexRecordOption::WithFreqs,
                );
                clauses.push((Occur::Should, Box::new(BoostQuery::new(Box::new(q), boost))));
            }
        }
        let searcher = self.reader.searcher();
        let top = searcher
            .search(
                &BooleanQuery::new(clauses),
                &TopDocs::with_limit(k).order_by_score(),
            )
            .context("BM25 search")?;
        let mut out = Vec::with_capacity(top.len());
        let mut columns = Vec::new();
        for reader in searcher.segment_readers() {
            columns.push(reader.fast_fields().u64("unit").context("BM25 unit ids")?);
        }
        for (score, addr) in top {
            let unit = columns
                .get(addr.segment_ord as usize)
                .and_then(|c| c.first(addr.doc_id))
                .context("a BM25 hit without a unit id (corrupt index?)")?;
            let unit = u32::try_from(unit).context("a BM25 unit id out of range")?;
            out.push((unit, score));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs() -> Vec<Bm25Doc<'static>> {
        vec![
            Bm25Doc {
                unit: 10,
                path: "src/store/key.rs",
                line: 5,
                symbol: "ArtifactKey::compute",
                doc: "Hash the kind, params and inputs of a stage.",
                code: "fn compute(kind: &str) -> ArtifactKey { blake3::hash(kind) }",
            },
            Bm25Doc {
                unit: 11,
                path: "src/search/tokenize.rs",
                line: 40,
                symbol: "split_parts",
                doc: "Split a word at camel-case humps and underscores.",
                code: "fn split_parts(word: &str) -> Vec<(usize, usize)> { todo!() }",
            },
            Bm25Doc {
                unit: 12,
                path: "src/exec/mod.rs",
                line: 1,
                symbol: "execute",
                doc: "Run the stages in order.",
                code: "fn execute(plan: &Plan) { for s in plan { s.run() } }",
            },
        ]
    }

    #[test]
    fn builds_opens_and_ranks_by_code_terms() {
        let dir = tempfile::tempdir().unwrap();
        let built = Bm25Index::build(dir.path(), docs()).unwrap();
        assert_eq!(built.len(), 3);
        drop(built);
        let index = Bm25Index::open(dir.path()).unwrap();
        // `splitParts` reaches `split_parts` through the shared parts.
        let hits = index.search("splitParts camel", 10).unwrap();
        assert_eq!(hits[0].0, 11, "{hits:?}");
        // The symbol's own words rank it first; unrelated units are absent.
        let hits = index.search("artifact key hash", 10).unwrap();
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), [10]);
        assert!(hits[0].1 > 0.0);
        assert!(index.search(":: ()", 10).unwrap().is_empty());
        assert!(index.search("nothing matches zzz", 10).unwrap().is_empty());
    }

    #[test]
    fn k_limits_the_hits() {
        let dir = tempfile::tempdir().unwrap();
        let index = Bm25Index::build(dir.path(), docs()).unwrap();
        assert_eq!(index.search("fn", 2).unwrap().len(), 2);
        assert!(index.search("fn", 0).unwrap().is_empty());
    }

    #[test]
    fn a_directory_without_an_index_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = format!("{:#}", Bm25Index::open(dir.path()).err().unwrap());
        assert!(err.contains("opening the BM25 index"), "{err}");
    }
}
