//! A code-aware tokenizer, for tantivy and for anything else that wants the same
//! terms: words are runs of letters, digits and `_`; every identifier is emitted
//! whole (lowercased) and, when it has several parts, also split at `_`, at
//! camelCase humps and at acronym ends (`HTTPServer` → `http`, `server`). Paths,
//! `::`, `.` and punctuation separate words. Digits stay with the letters before
//! them (`utf8`, `base64`).

use tantivy::tokenizer::{Token, TokenStream, Tokenizer};

/// The name [`CodeTokenizer`] is registered under in our tantivy indexes.
pub const NAME: &str = "code";

/// Words longer than this (bytes) are dropped: base64 blobs and hashes, not terms.
const MAX_WORD_BYTES: usize = 80;

/// The tantivy face of [`code_terms`].
#[derive(Debug, Clone, Default)]
pub struct CodeTokenizer;

/// The tokens of one text, computed up front (texts are units of code, small).
pub struct CodeTokenStream {
    tokens: Vec<Token>,
    next: usize,
    /// What `token()` shows before the first `advance()` (tantivy never asks).
    none: Token,
}

impl Tokenizer for CodeTokenizer {
    type TokenStream<'a> = CodeTokenStream;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> CodeTokenStream {
        let mut tokens = Vec::new();
        for_each_term(text, |term, start, end| {
            tokens.push(Token {
                offset_from: start,
                offset_to: end,
                position: tokens.len(),
                text: term,
                position_length: 1,
            });
        });
        CodeTokenStream {
            tokens,
            next: 0,
            none: Token::default(),
        }
    }
}

impl TokenStream for CodeTokenStream {
    fn advance(&mut self) -> bool {
        if self.next < self.tokens.len() {
            self.next += 1;
            true
        } else {
            false
        }
    }

    fn token(&self) -> &Token {
        match self.next.checked_sub(1) {
            Some(i) => &self.tokens[i],
            None => &self.none,
        }
    }

    fn token_mut(&mut self) -> &mut Token {
        match self.next.checked_sub(1) {
            Some(i) => &mut self.tokens[i],
            None => &mut self.none,
        }
    }
}

/// The terms of `text` in order: each word whole, then its parts when it has
/// more than one. `parse_HTTPRequest` → `parse_httprequest`, `parse`, `http`, `request`.
pub fn code_terms(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for_each_term(text, |term, _, _| out.push(term));
    out
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Calls `emit(term, byte_start, byte_end)` for every term, in text order.
fn for_each_term(text: &str, mut emit: impl FnMut(String, usize, usize)) {
    let mut start = None;
    for (i, c) in text
        .char_indices()
        .chain(std::iter::once((text.len(), ' ')))
    {
        match (start, is_word_char(c)) {
            (None, true) => start = Some(i),
            (Some(s), false) => {
                word_terms(&text[s..i], s, &mut emit);
                start = None;
            }
            _ => {}
        }
    }
}

/// One word: emitted whole, then its parts (each part's offsets are its own).
fn word_terms(word: &str, offset: usize, emit: &mut impl FnMut(String, usize, usize)) {
    if word.len() > MAX_WORD_BYTES || word.chars().all(|c| c == '_') {
        return;
    }
    let parts = split_parts(word);
    emit(word.to_lowercase(), offset, offset + word.len());
    if parts.len() > 1 {
        for (s, e) in parts {
            emit(word[s..e].to_lowercase(), offset + s, offset + e);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Lower,
    Upper,
    Digit,
    Other,
}

fn class(c: char) -> Class {
    if c.is_lowercase() {
        Class::Lower
    } else if c.is_uppercase() {
        Class::Upper
    } else if c.is_numeric() {
        Class::Digit
    } else {
        Class::Other
    }
}

/// Byte ranges of a word's parts: split at `_`, before an upper-case letter that
/// follows a lower-case letter or digit, and before the last capital of an
/// acronym that a lower-case letter follows (`HTTPServer` → `HTTP`, `Server`).
fn split_parts(word: &str) -> Vec<(usize, usize)> {
    let chars: Vec<(usize, char)> = word.char_indices().collect();
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    for (n, &(i, c)) in chars.iter().enumerate() {
        if c == '_' {
            if let Some(s) = start.take() {
                parts.push((s, i));
            }
            continue;
        }
        let Some(s) = start else {
            start = Some(i);
            continue;
        };
        let prev = class(chars[n - 1].1);
        let here = class(c);
        let next = chars.get(n + 1).map(|&(_, c)| class(c));
        let hump = here == Class::Upper && matches!(prev, Class::Lower | Class::Digit);
        let acronym_end =
            here == Class::Upper && prev == Class::Upper && next == Some(Class::Lower);
        if (hump || acronym_end) && s < i {
            parts.push((s, i));
            start = Some(i);
        }
    }
    if let Some(s) = start {
        parts.push((s, word.len()));
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(text: &str) -> Vec<String> {
        code_terms(text)
    }

    #[test]
    fn snake_case_is_kept_whole_and_split() {
        assert_eq!(terms("parse_toml"), ["parse_toml", "parse", "toml"]);
        assert_eq!(terms("__init__"), ["__init__"]);
        assert_eq!(terms("_private_name"), ["_private_name", "private", "name"]);
    }

    #[test]
    fn camel_case_and_acronyms_split() {
        assert_eq!(terms("HashMap"), ["hashmap", "hash", "map"]);
        assert_eq!(
            terms("parseHTTPRequest"),
            ["parsehttprequest", "parse", "http", "request"]
        );
        assert_eq!(terms("HTTPServer"), ["httpserver", "http", "server"]);
        assert_eq!(terms("IOError"), ["ioerror", "io", "error"]);
    }

    #[test]
    fn digits_stay_with_the_letters_before_them() {
        assert_eq!(terms("utf8"), ["utf8"]);
        assert_eq!(terms("base64Encode"), ["base64encode", "base64", "encode"]);
        assert_eq!(terms("to_u32"), ["to_u32", "to", "u32"]);
    }

    #[test]
    fn paths_and_double_colons_separate_words() {
        assert_eq!(
            terms("std::collections::HashMap"),
            ["std", "collections", "hashmap", "hash", "map"]
        );
        assert_eq!(terms("src/search/mv.rs"), ["src", "search", "mv", "rs"]);
        assert_eq!(
            terms("self.read_all()"),
            ["self", "read_all", "read", "all"]
        );
    }

    #[test]
    fn lowercases_unicode_and_drops_long_blobs() {
        assert_eq!(terms("Größe ÜBER"), ["größe", "über"]);
        let blob = "a".repeat(MAX_WORD_BYTES + 1);
        assert_eq!(terms(&format!("x {blob} y")), ["x", "y"]);
        assert!(terms("  ::  // ").is_empty());
    }

    #[test]
    fn the_tantivy_stream_carries_offsets_of_each_part() {
        let text = "fn readAll()";
        let mut tok = CodeTokenizer;
        let mut stream = tok.token_stream(text);
        let mut seen = Vec::new();
        while stream.advance() {
            let t = stream.token();
            seen.push((
                t.text.clone(),
                &text[t.offset_from..t.offset_to],
                t.position,
            ));
        }
        assert_eq!(
            seen,
            [
                ("fn".to_string(), "fn", 0),
                ("readall".to_string(), "readAll", 1),
                ("read".to_string(), "read", 2),
                ("all".to_string(), "All", 3),
            ]
        );
    }
}
