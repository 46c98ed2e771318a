//! Lean 4 declarations with doc comments, found by a small scanner instead of a
//! tree-sitter grammar: `tree-sitter-lean4` 0.3 predates the `module` /
//! `public import` / `@[expose] public section` syntax that current Lean code
//! (Batteries) uses, and reports parse errors in most files (see BENCHMARKS.md).
//!
//! The scanner knows comments (nested `/- -/`, `--`), strings and char literals;
//! it takes each `/-- -/` doc comment, skips attributes (`@[...]`) and modifiers,
//! expects a declaration keyword, and takes the body up to the next line indented
//! no deeper than the declaration that is not a continuation (`|`, `where`,
//! `deriving`, `termination_by`, `decreasing_by`). Names are qualified by the
//! enclosing `namespace`s.

use super::clean;
use super::extract::{code_text, FileItems, Item};

const KEYWORDS: &[&str] = &[
    "def",
    "theorem",
    "lemma",
    "abbrev",
    "instance",
    "structure",
    "class",
    "inductive",
    "axiom",
    "opaque",
];
const MODIFIERS: &[&str] = &[
    "private",
    "protected",
    "public",
    "noncomputable",
    "partial",
    "unsafe",
    "nonrec",
    "scoped",
    "local",
    "meta",
];
const CONTINUATIONS: &[&str] = &[
    "|",
    "where",
    "deriving",
    "termination_by",
    "decreasing_by",
    "with",
    ")",
    "]",
    "}",
];

/// A doc comment found at nesting depth 0: byte range of `/-- ... -/`.
struct Doc {
    start: usize,
    end: usize,
}

/// One pass over the text: doc comments, and for each line whether it starts
/// inside a comment or string (such lines never end a declaration).
fn scan(src: &str) -> (Vec<Doc>, Vec<bool>) {
    let b = src.as_bytes();
    let mut docs = Vec::new();
    let mut inside = vec![false];
    let mut depth = 0usize;
    let mut doc_start = None;
    let mut in_string = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            inside.push(depth > 0 || in_string);
            i += 1;
            continue;
        }
        let next = b.get(i + 1).copied();
        if in_string {
            match c {
                // An escape, but never past a line end (string gaps).
                b'\\' if next != Some(b'\n') => i += 2,
                b'"' => {
                    in_string = false;
                    i += 1;
                }
                _ => i += 1,
            }
            continue;
        }
        if depth > 0 {
            if c == b'/' && next == Some(b'-') {
                depth += 1;
                i += 2;
            } else if c == b'-' && next == Some(b'/') {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    if let Some(start) = doc_start.take() {
                        docs.push(Doc { start, end: i });
                    }
                }
            } else {
                i += 1;
            }
            continue;
        }
        match (c, next) {
            (b'/', Some(b'-')) => {
                let is_doc = b.get(i + 2) == Some(&b'-') && b.get(i + 3) != Some(&b'/');
                doc_start = is_doc.then_some(i);
                depth = 1;
                i += if is_doc { 3 } else { 2 };
            }
            (b'-', Some(b'-')) => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            (b'"', _) => {
                in_string = true;
                i += 1;
            }
            (b'\'', Some(n)) if b.get(i + 2) == Some(&b'\'') && n != b'\\' && n != b'\n' => i += 3,
            (b'\'', Some(b'\\'))
                if b.get(i + 3) == Some(&b'\'') && b.get(i + 2) != Some(&b'\n') =>
            {
                i += 4
            }
            _ => i += 1,
        }
    }
    (docs, inside)
}

fn line_starts(src: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(src.match_indices('\n').map(|(i, _)| i + 1))
        .collect()
}

fn line_of(starts: &[usize], byte: usize) -> usize {
    starts.partition_point(|&s| s <= byte) - 1
}

/// Skip whitespace, `@[...]` attributes and modifiers; return the byte offset of
/// the keyword and the keyword.
fn header(src: &str, mut i: usize) -> Option<(usize, usize, &'static str)> {
    let b = src.as_bytes();
    let code_start = skip_ws(src, i);
    i = code_start;
    loop {
        i = skip_ws(src, i);
        if src[i..].starts_with("@[") {
            let mut depth = 0;
            while i < b.len() {
                match b[i] {
                    b'[' => depth += 1,
                    b']' => {
                        depth -= 1;
                        if depth == 0 {
                            i += 1;
                            break;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            continue;
        }
        let word = word_at(src, i);
        if MODIFIERS.contains(&word) {
            i += word.len();
            continue;
        }
        if word == "class" && word_at(src, skip_ws(src, i + 5)) == "inductive" {
            return Some((code_start, i, "inductive"));
        }
        return KEYWORDS
            .iter()
            .find(|k| **k == word)
            .map(|k| (code_start, i, *k));
    }
}

fn skip_ws(src: &str, mut i: usize) -> usize {
    let b = src.as_bytes();
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// The identifier-ish word at `i` (up to whitespace or a bracket/colon).
fn word_at(src: &str, i: usize) -> &str {
    let rest = &src[i.min(src.len())..];
    let end = rest
        .find(|c: char| c.is_whitespace() || "([{:,".contains(c))
        .unwrap_or(rest.len());
    &rest[..end]
}

/// The declared name: the word after the keyword; for an anonymous instance,
/// its class (`instance : ToString Foo where` -> `ToString Foo`).
fn decl_name(src: &str, keyword_at: usize, keyword: &str) -> String {
    let mut i = skip_ws(src, keyword_at + word_at(src, keyword_at).len());
    if keyword == "inductive" && word_at(src, i) == "inductive" {
        i = skip_ws(src, i + "inductive".len());
    }
    if keyword == "instance" {
        if src[i..].starts_with("(priority") {
            if let Some(close) = src[i..].find(')') {
                i = skip_ws(src, i + close + 1);
            }
        }
        if src[i..].starts_with(':') {
            let line = src[i + 1..].lines().next().unwrap_or_default();
            let end = [" where", ":=", " := "]
                .iter()
                .filter_map(|t| line.find(t))
                .min()
                .unwrap_or(line.len());
            return line[..end].trim().to_string();
        }
    }
    word_at(src, i).to_string()
}

/// Documented declarations of one Lean file, in source order.
pub fn extract(src: &str) -> FileItems {
    let (docs, inside) = scan(src);
    let starts = line_starts(src);
    let lines: Vec<&str> = src.split('\n').collect();
    let mut out = FileItems::default();
    let mut namespaces: Vec<Option<String>> = Vec::new();
    let mut next_line = 0;
    for doc in docs {
        let doc_line = line_of(&starts, doc.start);
        while next_line < doc_line {
            if !inside.get(next_line).copied().unwrap_or(false) {
                track_scope(lines[next_line], &mut namespaces);
            }
            next_line += 1;
        }
        let Some((code_start, keyword_at, keyword)) = header(src, doc.end) else {
            continue;
        };
        let first = line_of(&starts, code_start);
        let indent = code_start - starts[first];
        let mut last = first;
        let mut l = first + 1;
        while l < lines.len() {
            let line = lines[l];
            let t = line.trim_start();
            let col = line.len() - t.len();
            if !t.is_empty() && !inside.get(l).copied().unwrap_or(false) && col <= indent {
                let continues = CONTINUATIONS.iter().any(|c| t.starts_with(c));
                if t.starts_with("--") {
                    l += 1;
                    continue;
                }
                if !continues {
                    break;
                }
            }
            if !t.is_empty() && !t.starts_with("--") {
                last = l;
            }
            l += 1;
        }
        let end = starts
            .get(last + 1)
            .map(|s| s.saturating_sub(1))
            .unwrap_or(src.len());
        let code = code_text(src, code_start, end.max(code_start), &[]);
        let short = decl_name(src, keyword_at, keyword);
        let prefix: Vec<&str> = namespaces.iter().flatten().map(String::as_str).collect();
        let symbol = if prefix.is_empty() || short.starts_with("_root_.") {
            short.trim_start_matches("_root_.").to_string()
        } else {
            format!("{}.{short}", prefix.join("."))
        };
        out.items.push(Item {
            symbol,
            item: keyword.to_string(),
            start_line: first as u32 + 1,
            end_line: last as u32 + 1,
            doc: clean::comment_lines(&src[doc.start..doc.end]),
            code,
            test: false,
            syntax_error: false,
        });
    }
    out
}

/// `namespace A.B` / `section` / `end`, at the start of a line.
fn track_scope(line: &str, stack: &mut Vec<Option<String>>) {
    let mut words = line.split_whitespace();
    let mut first = words.next().unwrap_or_default();
    while matches!(first, "noncomputable" | "public" | "@[expose]") {
        first = words.next().unwrap_or_default();
    }
    match first {
        "namespace" => {
            if let Some(name) = words.next() {
                stack.push(Some(name.to_string()));
            }
        }
        "section" => stack.push(None),
        "end" if !line.starts_with(' ') => {
            stack.pop();
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(src: &str) -> Vec<(String, u32, u32)> {
        extract(src)
            .items
            .into_iter()
            .map(|i| (i.symbol, i.start_line, i.end_line))
            .collect()
    }

    #[test]
    fn field_docs_and_syntax_docs_are_not_declarations() {
        let src = "structure S where\n  /-- A field. -/\n  x : Nat\n\n/-- Syntax. -/\nsyntax \"foo\" : term\n\n/-- Kept. -/\ndef k := 1\n";
        assert_eq!(names(src), [("k".to_string(), 9, 9)]);
    }

    #[test]
    fn string_gaps_and_char_literals_keep_lines_aligned() {
        let src = "/-- One. -/\ndef a : String := \"x\\\n  y\"\n/-- Two. -/\ndef b : Char := '\\n'\n/-- Three. -/\nclass inductive C | mk\n";
        assert_eq!(
            names(src),
            [
                ("a".to_string(), 2, 3),
                ("b".to_string(), 5, 5),
                ("C".to_string(), 7, 7)
            ]
        );
    }
}
