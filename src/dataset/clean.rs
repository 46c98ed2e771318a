//! Turning a raw doc comment into a query: strip the comment markers, drop code
//! blocks and parameter lists, unwrap inline markup, and keep the first paragraph.

/// Lines of one doc comment without its markers (`///`, `//!`, `/** */`, `/*! */`,
/// Lean's `/-- -/`), the leading ` * ` of C-style block lines removed.
pub fn comment_lines(raw: &str) -> Vec<String> {
    let raw = raw.trim_end();
    for marker in ["///", "//!"] {
        if raw.starts_with(marker) {
            return raw
                .lines()
                .map(|line| {
                    let line = line.trim_start();
                    let line = line.strip_prefix(marker).unwrap_or(line);
                    line.strip_prefix(' ').unwrap_or(line).to_string()
                })
                .collect();
        }
    }
    let (body, starred) = if let Some(rest) = raw.strip_prefix("/--") {
        (rest.strip_suffix("-/").unwrap_or(rest), false)
    } else if let Some(rest) = raw.strip_prefix("/**").or_else(|| raw.strip_prefix("/*!")) {
        (rest.strip_suffix("*/").unwrap_or(rest), true)
    } else {
        (raw, false)
    };
    let mut lines: Vec<String> = body
        .lines()
        .map(|line| {
            if starred {
                let t = line.trim_start();
                if let Some(rest) = t.strip_prefix('*') {
                    return rest.strip_prefix(' ').unwrap_or(rest).to_string();
                }
            }
            line.to_string()
        })
        .collect();
    dedent(&mut lines);
    lines
}

/// The text of a Python docstring literal: prefixes and quotes removed, indentation
/// cleaned the way `inspect.cleandoc` does it.
pub fn docstring_lines(literal: &str) -> Vec<String> {
    let s = literal.trim_start_matches(|c: char| "rRuUbBfF".contains(c));
    let body = ["\"\"\"", "'''", "\"", "'"]
        .iter()
        .find_map(|q| s.strip_prefix(q).and_then(|r| r.strip_suffix(q)))
        .unwrap_or(s);
    let mut lines: Vec<String> = body.lines().map(str::to_string).collect();
    if lines.len() > 1 {
        let mut rest = lines.split_off(1);
        dedent(&mut rest);
        lines.extend(rest);
    }
    lines
}

/// Remove the indentation common to all non-blank lines.
fn dedent(lines: &mut [String]) {
    // Only ASCII blanks count as indentation, so slicing stays on char boundaries.
    let indent = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start_matches([' ', '\t']).len())
        .min()
        .unwrap_or(0);
    for line in lines.iter_mut() {
        if line.trim().is_empty() {
            line.clear();
        } else {
            *line = line[indent..].trim_end().to_string();
        }
    }
}

/// A line that starts a parameter list, an example or another section that is not
/// part of the description.
fn starts_section(line: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "@param",
        "@return",
        "@throws",
        "@exception",
        "@see",
        "@since",
        "@author",
        "@deprecated",
        "@brief",
        "\\param",
        "\\return",
        ":param",
        ":type",
        ":return",
        ":rtype",
        ":raises",
        ":raise",
        "Args:",
        "Arguments:",
        "Parameters:",
        "Returns:",
        "Return:",
        "Raises:",
        "Yields:",
        "Examples:",
        "Example:",
        ">>>",
        "- Parameter",
        "- Returns:",
        "- Throws:",
        "- Note:",
        "```",
        "~~~",
        "# ",
    ];
    let t = line.trim_start();
    // Javadoc/JSDoc block tags: `@param`, `@typeParam`, `@returns`, ...
    let block_tag = t.starts_with('@') && t[1..].starts_with(|c: char| c.is_ascii_alphabetic());
    block_tag
        || PREFIXES.iter().any(|p| t.starts_with(p))
        || ((t == "Parameters" || t == "Returns" || t == "Examples") || t.starts_with("----"))
}

/// The query text: the description's first paragraph (or all of it) as cleaned prose.
pub fn query(lines: &[String], first_paragraph: bool) -> String {
    let mut paragraphs: Vec<String> = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for line in lines {
        let t = line.trim();
        if starts_section(t)
            && !(paragraphs.is_empty() && current.is_empty() && t.starts_with("# "))
        {
            break;
        }
        if t.is_empty() {
            if !current.is_empty() {
                paragraphs.push(current.join(" "));
                current.clear();
                if first_paragraph {
                    break;
                }
            }
            continue;
        }
        if t.starts_with("# ") {
            // A heading first: skip it, the description follows.
            continue;
        }
        current.push(t);
    }
    if !current.is_empty() && (!first_paragraph || paragraphs.is_empty()) {
        paragraphs.push(current.join(" "));
    }
    paragraphs
        .iter()
        .map(|p| collapse_spaces(&inline(p)))
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn collapse_spaces(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Unwrap inline markup: code spans (backticks, reST roles), links, `{@code x}`,
/// HTML tags and `**bold**`. Text inside code spans is kept verbatim.
pub fn inline(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, segment) in text.split('`').enumerate() {
        if i % 2 == 1 {
            out.push_str(segment);
        } else {
            out.push_str(&prose(segment));
        }
    }
    out
}

fn prose(text: &str) -> String {
    let text = javadoc_tags(text);
    let text = strip_html(&text);
    let text = text.replace("**", "");
    let text = strip_role_suffix(&text);
    links(&text)
}

/// `{@code x}` / `{@link a.b#c label}` -> `x` / `label` (or `a.b#c`).
fn javadoc_tags(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{@") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let inner = &after[..end];
        let mut words = inner.split_whitespace();
        let tag = words.next().unwrap_or_default();
        let args: Vec<&str> = words.collect();
        let shown = if tag.starts_with("link") && args.len() > 1 {
            args[1..].join(" ")
        } else {
            args.join(" ")
        };
        out.push_str(&shown);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Drop `<tag>` / `</tag>` (letters only, so `a < b > c` survives).
fn strip_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let name_end = after
            .char_indices()
            .find(|&(i, c)| !(c.is_ascii_alphanumeric() || (i == 0 && c == '/')))
            .map(|(i, _)| i)
            .unwrap_or(after.len());
        let name = after[..name_end].trim_start_matches('/');
        let close = after.find('>');
        match close {
            Some(end) if after[..end].contains("://") => {
                out.push_str(&after[..end]);
                rest = &after[end + 1..];
            }
            Some(end)
                if !name.is_empty()
                    && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                    && !after[..end].contains('<') =>
            {
                rest = &after[end + 1..];
            }
            _ => {
                out.push('<');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A reST role written just before a code span (`:func:` in ``:func:`f` ``) is dropped.
fn strip_role_suffix(text: &str) -> String {
    let t = text.trim_end();
    if !t.ends_with(':') {
        return text.to_string();
    }
    let body = &t[..t.len() - 1];
    let start = body
        .char_indices()
        .rev()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == ':' || c == '_'))
        .map(|(i, c)| i + c.len_utf8())
        .unwrap_or(0);
    let role = &body[start..];
    if role.starts_with(':') && role.len() > 1 {
        text[..start].to_string()
    } else {
        text.to_string()
    }
}

/// `[text](url)` and `[text][ref]` -> `text`; `[text]` -> `text`.
fn links(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    let bytes = text.as_bytes();
    while let Some((i, c)) = chars.next() {
        match c {
            '[' | ']' => {
                if c == ']' {
                    let next = bytes.get(i + 1).copied();
                    let closer = match next {
                        Some(b'(') => Some(')'),
                        Some(b'[') => Some(']'),
                        _ => None,
                    };
                    if let Some(closer) = closer {
                        if let Some(end) = text[i + 2..].find(closer) {
                            let target_end = i + 2 + end;
                            while chars.peek().is_some_and(|&(j, _)| j <= target_end) {
                                chars.next();
                            }
                        }
                    }
                }
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(raw: &str) -> String {
        query(&comment_lines(raw), true)
    }

    #[test]
    fn rust_line_docs_keep_the_first_paragraph() {
        let raw = "/// Returns the [`Vec`] of `items`, sorted.\n/// Stable.\n///\n/// # Panics\n/// Never.";
        assert_eq!(q(raw), "Returns the Vec of items, sorted. Stable.");
    }

    #[test]
    fn links_and_bold_are_unwrapped() {
        assert_eq!(
            q("/// See [the docs](https://x.y/z) and [`Foo::bar`][bar], **now**."),
            "See the docs and Foo::bar, now."
        );
    }

    #[test]
    fn javadoc_tags_html_and_params_go() {
        let raw = "/**\n * Adds {@code n} to the <b>total</b>, see {@link Acc#sum the sum}.\n * @param n the amount\n */";
        assert_eq!(q(raw), "Adds n to the total, see the sum.");
    }

    #[test]
    fn docstrings_are_dedented_and_cut_at_sections() {
        let lines = docstring_lines("\"\"\"Parse a :class:`Config` from\n    ``text``.\n\n    Args:\n        text: input\n    \"\"\"");
        assert_eq!(query(&lines, true), "Parse a Config from text.");
        let lines =
            docstring_lines("r'''One.\n\n    Two\n    lines.\n    Returns:\n        x\n'''");
        assert_eq!(query(&lines, false), "One.\n\nTwo lines.");
    }

    #[test]
    fn lean_docs_and_comparisons_survive() {
        assert_eq!(
            q("/-- `a < b` holds iff\n  `b > a` (see <https://x>). -/"),
            "a < b holds iff b > a (see https://x)."
        );
        assert_eq!(q("/-- x <y -/"), "x <y");
    }

    #[test]
    fn unicode_blanks_and_accents_do_not_split_chars() {
        let lines = docstring_lines("\"\"\"Résumé.\n\u{3000}Wide indent.\n  Narrow.\n\"\"\"");
        assert_eq!(query(&lines, true), "Résumé. Wide indent. Narrow.");
        assert_eq!(inline("café:meth:`x`"), "caféx");
        assert_eq!(inline("é :meth:`x`"), "é x");
    }

    #[test]
    fn a_leading_heading_is_skipped() {
        assert_eq!(q("//! # Title\n//! Body text."), "Body text.");
    }
}
