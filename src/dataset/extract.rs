//! Finding documented items in one file with tree-sitter: a query per language
//! names the items, their doc comments are the comment siblings right before them
//! (Python: the docstring), and the code is the item's text without the doc.

use std::cell::RefCell;
use std::collections::HashSet;

use anyhow::{anyhow, Result};
use tree_sitter::{Node, Parser, Query, QueryCursor, StreamingIterator};

use super::clean;
use super::lang::{self, Grammar, Lang};

/// A documented item found in a file, before any filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The item's name, qualified by enclosing modules/classes/impls.
    pub symbol: String,
    /// What it is: `function`, `struct`, `class`, `theorem`, ...
    pub item: String,
    /// 1-based, inclusive, of the code (doc excluded).
    pub start_line: u32,
    pub end_line: u32,
    /// Doc comment lines, markers stripped.
    pub doc: Vec<String>,
    pub code: String,
    /// Marked test-only (`#[test]`, `#[cfg(test)]`, `test_*` names, ...).
    pub test: bool,
    /// The item's subtree holds a syntax error.
    pub syntax_error: bool,
}

/// What extraction found in one file.
#[derive(Debug, Default)]
pub struct FileItems {
    pub items: Vec<Item>,
    /// The parse tree holds error or missing nodes somewhere.
    pub syntax_errors: bool,
}

/// A grammar with its compiled query, shared by the worker threads.
pub struct Compiled {
    grammar: Grammar,
    query: Query,
    item: u32,
    name: u32,
    doc: Option<u32>,
}

impl Compiled {
    pub fn new(grammar: Grammar) -> Result<Compiled> {
        let query = Query::new(&grammar.language, grammar.query)
            .map_err(|e| anyhow!("compiling a tree-sitter query: {e}"))?;
        let index = |name: &str| query.capture_index_for_name(name);
        let item = index("item").ok_or_else(|| anyhow!("query lacks @item"))?;
        let name = index("name").unwrap_or(u32::MAX);
        let doc = index("doc");
        Ok(Compiled {
            grammar,
            query,
            item,
            name,
            doc,
        })
    }
}

thread_local! {
    static PARSER: RefCell<Parser> = RefCell::new(Parser::new());
}

/// Parse `source` and return its documented items in source order.
pub fn extract(
    lang: Lang,
    compiled: &Compiled,
    source: &str,
    file_stem: &str,
) -> Result<FileItems> {
    let tree = PARSER.with(|p| -> Result<_> {
        let mut parser = p.borrow_mut();
        parser
            .set_language(&compiled.grammar.language)
            .map_err(|e| anyhow!("loading the {lang} grammar: {e}"))?;
        parser
            .parse(source, None)
            .ok_or_else(|| anyhow!("tree-sitter gave no tree"))
    })?;
    let root = tree.root_node();
    let mut out = FileItems {
        items: Vec::new(),
        syntax_errors: root.has_error(),
    };
    let bytes = source.as_bytes();
    let mut seen = HashSet::new();
    let mut cursor = QueryCursor::new();
    let mut matches = cursor.matches(&compiled.query, root, bytes);
    while let Some(m) = matches.next() {
        let mut item = None;
        let mut name = None;
        let mut doc = None;
        for c in m.captures {
            if c.index == compiled.item {
                item = Some(c.node);
            } else if c.index == compiled.name {
                name = name.or(Some(c.node));
            } else if Some(c.index) == compiled.doc {
                doc = Some(c.node);
            }
        }
        let Some(node) = item else { continue };
        if !seen.insert(node.id()) {
            continue;
        }
        if let Some(found) = build_item(lang, compiled, source, node, name, doc) {
            out.items.push(found);
        }
    }
    if lang == Lang::Rust {
        if let Some(found) = rust_file_module(source, root, file_stem) {
            out.items.push(found);
        }
    }
    out.items.sort_by_key(|i| (i.start_line, i.end_line));
    Ok(out)
}

fn text<'a>(source: &'a str, node: Node<'_>) -> &'a str {
    &source[node.byte_range()]
}

fn build_item(
    lang: Lang,
    compiled: &Compiled,
    source: &str,
    node: Node<'_>,
    name: Option<Node<'_>>,
    docstring: Option<Node<'_>>,
) -> Option<Item> {
    let g = &compiled.grammar;
    let anchor = match node.parent() {
        Some(p) if g.wrappers.contains(&p.kind()) => p,
        _ => node,
    };
    let mut remove = Vec::new();
    let doc: Vec<String>;
    let mut start = anchor;
    if let Some(ds) = docstring {
        doc = clean::docstring_lines(text(source, ds));
        let stmt = ds.parent().unwrap_or(ds);
        remove.push(docstring_lines_range(source, stmt.byte_range()));
    } else {
        let mut docs: Vec<Node> = Vec::new();
        let mut attrs_before = anchor;
        let mut next_row = anchor.start_position().row;
        let mut prev = anchor.prev_sibling();
        while let Some(p) = prev {
            if p.end_position().row + 1 < next_row {
                break;
            }
            let t = text(source, p);
            if p.kind().contains("comment") && (g.doc)(t) {
                docs.push(p);
            } else if g.attributes.contains(&p.kind()) {
                attrs_before = p;
            } else {
                break;
            }
            next_row = p.start_position().row;
            prev = p.prev_sibling();
        }
        if lang == Lang::Rust {
            if let Some(body) = node.child_by_field_name("body") {
                // `mod m { //! doc ... }`
                let mut inner = Vec::new();
                let mut walker = body.walk();
                for child in body.named_children(&mut walker) {
                    if child.kind().contains("comment") && lang::rust_inner_doc(text(source, child))
                    {
                        inner.push(child);
                    } else if !child.kind().contains("comment") {
                        break;
                    }
                }
                if docs.is_empty() {
                    docs = inner.into_iter().rev().collect();
                }
            }
        }
        if docs.is_empty() {
            return None;
        }
        docs.reverse();
        doc = docs
            .iter()
            .flat_map(|d| clean::comment_lines(text(source, *d)))
            .collect();
        for d in &docs {
            remove.push(d.byte_range());
        }
        start = attrs_before;
    }
    let begin = start.start_byte().min(anchor.start_byte());
    let end = anchor.end_byte();
    let code = code_text(source, begin, end, &remove);
    if code.trim().is_empty() {
        return None;
    }
    let begin_row = if start.start_byte() <= anchor.start_byte() {
        start.start_position().row
    } else {
        anchor.start_position().row
    };
    let first_line = code_start_line(source, begin, begin_row, &remove);
    let end_line = anchor.end_position().row as u32 + 1;
    let short = if node.kind() == "method_definition" && lang == Lang::Objc {
        objc_selector(source, node)
    } else {
        name.map(|n| {
            text(source, n)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| node.kind().replace("_declaration", ""))
    };
    // Swift's `class_declaration` also covers struct, enum, actor and extension.
    let kind = match node.child_by_field_name("declaration_kind") {
        Some(k) => text(source, k).to_string(),
        None => item_kind(node.kind()),
    };
    Some(Item {
        symbol: qualify(lang, source, node, short.clone()),
        item: kind,
        start_line: first_line,
        end_line,
        doc,
        code,
        test: is_test(lang, source, node, &short),
        syntax_error: anchor.has_error(),
    })
}

/// An Objective-C method's selector: `increment`, `resetTo:animated:`.
fn objc_selector(source: &str, node: Node<'_>) -> String {
    let mut parts = Vec::new();
    let mut takes_args = false;
    let mut walker = node.walk();
    for child in node.named_children(&mut walker) {
        match child.kind() {
            "identifier" => parts.push(text(source, child)),
            "method_parameter" => takes_args = true,
            _ => {}
        }
    }
    if takes_args {
        parts.iter().map(|p| format!("{p}:")).collect()
    } else {
        parts.concat()
    }
}

/// `//!` docs at the top of a Rust file document the file's module.
fn rust_file_module(source: &str, root: Node<'_>, stem: &str) -> Option<Item> {
    let mut docs = Vec::new();
    let mut walker = root.walk();
    for child in root.named_children(&mut walker) {
        if !child.kind().contains("comment") {
            break;
        }
        if lang::rust_inner_doc(text(source, child)) {
            docs.push(child);
        }
    }
    if docs.is_empty() {
        return None;
    }
    let doc = docs
        .iter()
        .flat_map(|d| clean::comment_lines(text(source, *d)))
        .collect();
    let remove: Vec<_> = docs.iter().map(|d| d.byte_range()).collect();
    let code = code_text(source, 0, source.len(), &remove);
    if code.trim().is_empty() {
        return None;
    }
    Some(Item {
        symbol: stem.to_string(),
        item: "module".to_string(),
        start_line: code_start_line(source, 0, 0, &remove),
        end_line: root.end_position().row as u32 + 1,
        doc,
        code,
        test: false,
        syntax_error: root.has_error(),
    })
}

fn item_kind(kind: &str) -> String {
    let k = kind
        .trim_end_matches("_item")
        .trim_end_matches("_definition")
        .trim_end_matches("_declaration")
        .trim_end_matches("_specifier");
    match k {
        "function_signature" => "function".to_string(),
        "mod" => "module".to_string(),
        "type" => "type_alias".to_string(),
        "macro" => "macro".to_string(),
        other => other.to_string(),
    }
}

/// Prefix the names of enclosing modules, classes, traits and impls.
fn qualify(lang: Lang, source: &str, node: Node<'_>, name: String) -> String {
    const CONTAINERS: &[&str] = &[
        "mod_item",
        "trait_item",
        "impl_item",
        "class_definition",
        "class_declaration",
        "abstract_class_declaration",
        "interface_declaration",
        "enum_declaration",
        "record_declaration",
        "protocol_declaration",
        "class_specifier",
        "struct_specifier",
        "namespace_definition",
        "class_implementation",
        "implementation_definition",
    ];
    let sep = match lang {
        Lang::Rust | Lang::Cpp => "::",
        _ => ".",
    };
    let mut parts = vec![name];
    let mut cur = node.parent();
    while let Some(p) = cur {
        if CONTAINERS.contains(&p.kind()) {
            let field = if p.kind() == "impl_item" {
                "type"
            } else {
                "name"
            };
            if let Some(n) = p.child_by_field_name(field) {
                let t = text(source, n).lines().next().unwrap_or_default().trim();
                parts.push(t.to_string());
            }
        }
        cur = p.parent();
    }
    parts.reverse();
    parts.join(sep)
}

/// Test-only items: Rust `#[test]`/`#[cfg(test)]` on the item or an enclosing item;
/// elsewhere `test_*`/`Test*` names and Java's `@Test`.
fn is_test(lang: Lang, source: &str, node: Node<'_>, name: &str) -> bool {
    match lang {
        Lang::Rust => {
            let mut cur = Some(node);
            while let Some(n) = cur {
                let mut prev = n.prev_sibling();
                while let Some(p) = prev {
                    if p.kind() == "attribute_item" {
                        let t: String = text(source, p).split_whitespace().collect();
                        if t.contains("cfg(test)")
                            || t.starts_with("#[test")
                            || t.starts_with("#[bench")
                            || t.ends_with("::test]")
                        {
                            return true;
                        }
                    } else if !p.kind().contains("comment") {
                        break;
                    }
                    prev = p.prev_sibling();
                }
                cur = n.parent();
            }
            false
        }
        Lang::Java => {
            let head = node
                .child_by_field_name("name")
                .map(|n| &source[node.start_byte()..n.start_byte()])
                .unwrap_or_default();
            head.contains("@Test") || name.starts_with("test")
        }
        _ => {
            let short = name.rsplit(['.', ':']).next().unwrap_or(name);
            short.starts_with("test_") || short.starts_with("Test") || short == "test"
        }
    }
}

/// A docstring statement's whole lines, with the blank lines after it.
fn docstring_lines_range(source: &str, range: std::ops::Range<usize>) -> std::ops::Range<usize> {
    let bytes = source.as_bytes();
    let start = source[..range.start]
        .rfind('\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    if !source[start..range.start].trim().is_empty() {
        return range;
    }
    let mut end = range.end;
    loop {
        let line_end = source[end..]
            .find('\n')
            .map(|i| end + i + 1)
            .unwrap_or(bytes.len());
        if !source[end..line_end].trim().is_empty() {
            return range;
        }
        end = line_end;
        if end >= bytes.len()
            || !source[end..]
                .split('\n')
                .next()
                .unwrap_or("x")
                .trim()
                .is_empty()
        {
            break;
        }
    }
    start..end
}

/// Expand a removed range to whole lines when only whitespace shares them.
fn line_range(source: &str, range: &std::ops::Range<usize>) -> (usize, usize) {
    let bytes = source.as_bytes();
    let at_start = |i: usize| i == 0 || bytes[i - 1] == b'\n';
    if at_start(range.start) && (range.end == bytes.len() || at_start(range.end)) {
        return (range.start, range.end);
    }
    let mut s = range.start;
    while s > 0 && (bytes[s - 1] == b' ' || bytes[s - 1] == b'\t') {
        s -= 1;
    }
    let at_line_start = s == 0 || bytes[s - 1] == b'\n';
    let mut e = range.end;
    while e < bytes.len() && (bytes[e] == b' ' || bytes[e] == b'\t' || bytes[e] == b'\r') {
        e += 1;
    }
    let at_line_end = e >= bytes.len() || bytes[e] == b'\n';
    if at_line_start && at_line_end {
        (s, (e + 1).min(bytes.len()))
    } else {
        (range.start, range.end)
    }
}

/// `source[begin..end]` without the `remove` ranges (whole lines where possible),
/// dedented by the first line's column.
pub fn code_text(
    source: &str,
    begin: usize,
    end: usize,
    remove: &[std::ops::Range<usize>],
) -> String {
    let mut cuts: Vec<(usize, usize)> = remove.iter().map(|r| line_range(source, r)).collect();
    cuts.sort();
    let column = begin - source[..begin].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let mut kept = String::with_capacity(end - begin);
    let mut pos = begin;
    for (s, e) in cuts {
        let (s, e) = (s.max(begin), e.min(end));
        if s > pos {
            kept.push_str(&source[pos..s]);
        }
        pos = pos.max(e);
    }
    if pos < end {
        kept.push_str(&source[pos..end]);
    }
    let kept = kept.trim_start_matches(['\n', '\r']);
    let mut out = String::with_capacity(kept.len());
    for (i, line) in kept.lines().enumerate() {
        if i > 0 {
            out.push('\n');
            let indent = line.len() - line.trim_start_matches([' ', '\t']).len();
            out.push_str(&line[indent.min(column)..]);
        } else {
            out.push_str(line);
        }
    }
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    out
}

/// The 1-based line where the kept code starts (after any removed leading doc).
fn code_start_line(
    source: &str,
    begin: usize,
    begin_row: usize,
    remove: &[std::ops::Range<usize>],
) -> u32 {
    let mut start = begin;
    let mut cuts: Vec<(usize, usize)> = remove.iter().map(|r| line_range(source, r)).collect();
    cuts.sort();
    for (s, e) in cuts {
        if s <= start && e > start {
            start = e;
        }
    }
    let bytes = source.as_bytes();
    while start < bytes.len() && bytes[start].is_ascii_whitespace() {
        start += 1;
    }
    let end = start.min(bytes.len());
    (begin_row + bytes[begin..end].iter().filter(|&&b| b == b'\n').count()) as u32 + 1
}
