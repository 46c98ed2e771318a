//! Located configuration values: every value read from a pipeline file, a stage
//! template or a `--set` flag remembers where it came from, so that errors can
//! point at `file:line:col` long after templates and overrides were merged.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A source text (pipeline file or template) kept for error rendering.
#[derive(Debug)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

/// Where a configuration value came from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A byte span in a source file.
    File {
        file: Arc<SourceFile>,
        start: usize,
        end: usize,
    },
    /// A `--set` flag on the command line (the whole flag text).
    CommandLine(String),
    /// A value the runner filled in itself.
    Builtin,
}

impl Origin {
    pub fn file(file: &Arc<SourceFile>, span: Option<std::ops::Range<usize>>) -> Origin {
        let span = span.unwrap_or(0..0);
        Origin::File {
            file: Arc::clone(file),
            start: span.start,
            end: span.end,
        }
    }

    /// 1-based line and column of the start of a file span.
    pub fn line_col(&self) -> Option<(usize, usize)> {
        match self {
            Origin::File { file, start, .. } => Some(line_col(&file.text, *start)),
            _ => None,
        }
    }

    /// Render a rustc-style snippet pointing at the span, for human output.
    pub fn snippet(&self) -> Option<String> {
        let Origin::File { file, start, end } = self else {
            return None;
        };
        let (line, col) = line_col(&file.text, *start);
        let text = file.text.lines().nth(line - 1)?;
        let width = (*end).saturating_sub(*start).max(1);
        let width = width.min(text.chars().count().saturating_sub(col - 1).max(1));
        let gutter = line.to_string().len();
        Some(format!(
            "{pad} |\n{line} | {text}\n{pad} | {spaces}{carets}",
            pad = " ".repeat(gutter),
            spaces = " ".repeat(col - 1),
            carets = "^".repeat(width),
        ))
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { file, start, .. } => {
                let (line, col) = line_col(&file.text, *start);
                write!(f, "{}:{line}:{col}", file.path.display())
            }
            Origin::CommandLine(flag) => write!(f, "--set {flag}"),
            Origin::Builtin => write!(f, "<built-in>"),
        }
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = text[line_start..offset].chars().count() + 1;
    (line, col)
}

/// An error in the configuration, pointing at its origin.
#[derive(Debug)]
pub struct ConfigError {
    pub origin: Option<Origin>,
    pub message: String,
    pub help: Option<String>,
}

impl ConfigError {
    pub fn new(origin: Option<&Origin>, message: impl Into<String>) -> Self {
        ConfigError {
            origin: origin.cloned(),
            message: message.into(),
            help: None,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Help for a misspelt name: "did you mean `x`?" when one of `candidates` is
    /// close to `word`, else "`label`: every candidate" (nothing when `label` is empty).
    pub fn suggesting<'a>(
        self,
        word: &str,
        candidates: impl IntoIterator<Item = &'a str>,
        label: &str,
    ) -> Self {
        let candidates: Vec<&str> = candidates.into_iter().collect();
        match suggest(word, candidates.iter().copied()) {
            Some(s) => self.with_help(format!("did you mean `{s}`?")),
            None if label.is_empty() => self,
            None => self.with_help(format!("{label}: {}", candidates.join(", "))),
        }
    }

    /// The multi-line human rendering: location, message, snippet, help.
    pub fn render(&self) -> String {
        let mut out = match &self.origin {
            Some(origin) => format!("{origin}: {}", self.message),
            None => self.message.clone(),
        };
        if let Some(snippet) = self.origin.as_ref().and_then(Origin::snippet) {
            out.push('\n');
            out.push_str(&snippet);
        }
        if let Some(help) = &self.help {
            out.push_str("\n  = help: ");
            out.push_str(help);
        }
        out
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

impl std::error::Error for ConfigError {}

/// A configuration value with its origin; tables and arrays hold located children.
#[derive(Debug, Clone)]
pub struct Node {
    pub value: NodeValue,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub enum NodeValue {
    Scalar(toml::Value),
    Array(Vec<Node>),
    Table(BTreeMap<String, Node>),
}

impl Node {
    pub fn table(entries: BTreeMap<String, Node>, origin: Origin) -> Node {
        Node {
            value: NodeValue::Table(entries),
            origin,
        }
    }

    pub fn as_table(&self) -> Option<&BTreeMap<String, Node>> {
        match &self.value {
            NodeValue::Table(t) => Some(t),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            NodeValue::Scalar(toml::Value::String(s)) => Some(s),
            _ => None,
        }
    }

    /// A short name of the value's TOML type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match &self.value {
            NodeValue::Table(_) => "table",
            NodeValue::Array(_) => "array",
            NodeValue::Scalar(v) => v.type_str(),
        }
    }

    /// Drop origins: the plain TOML value, for typed decoding.
    pub fn to_toml(&self) -> toml::Value {
        match &self.value {
            NodeValue::Scalar(v) => v.clone(),
            NodeValue::Array(items) => {
                toml::Value::Array(items.iter().map(Node::to_toml).collect())
            }
            NodeValue::Table(t) => toml::Value::Table(
                t.iter()
                    .map(|(k, v)| (k.clone(), v.to_toml()))
                    .collect::<toml::Table>(),
            ),
        }
    }

    /// Build a node tree from a plain value, every node at `origin`.
    pub fn from_toml(value: &toml::Value, origin: &Origin) -> Node {
        let value = match value {
            toml::Value::Array(items) => {
                NodeValue::Array(items.iter().map(|v| Node::from_toml(v, origin)).collect())
            }
            toml::Value::Table(t) => NodeValue::Table(
                t.iter()
                    .map(|(k, v)| (k.clone(), Node::from_toml(v, origin)))
                    .collect(),
            ),
            scalar => NodeValue::Scalar(scalar.clone()),
        };
        Node {
            value,
            origin: origin.clone(),
        }
    }

    /// The origin of the deepest node along `path` (keys into tables, indices
    /// into arrays); falls back to the nearest ancestor that exists.
    pub fn origin_at(&self, path: &[String]) -> &Origin {
        let mut node = self;
        for segment in path {
            let next = match &node.value {
                NodeValue::Table(t) => t.get(segment),
                NodeValue::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
                NodeValue::Scalar(_) => None,
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        &node.origin
    }

    /// Deep-merge `over` onto `self`: tables merge key by key, anything else is replaced.
    pub fn merge(&mut self, over: Node) {
        match (&mut self.value, over.value) {
            (NodeValue::Table(base), NodeValue::Table(over_entries)) => {
                for (key, value) in over_entries {
                    match base.get_mut(&key) {
                        Some(existing) => existing.merge(value),
                        None => {
                            base.insert(key, value);
                        }
                    }
                }
            }
            (_, value) => {
                self.value = value;
                self.origin = over.origin;
            }
        }
    }
}

/// Parse a TOML text into a located node tree.
pub fn parse_file(path: &Path, text: String) -> Result<Node, ConfigError> {
    let file = Arc::new(SourceFile {
        path: path.to_path_buf(),
        text,
    });
    let doc = toml_edit::Document::parse(file.text.clone()).map_err(|e| ConfigError {
        origin: Some(Origin::file(&file, e.span())),
        message: format!("invalid TOML: {}", e.message().trim_end()),
        help: None,
    })?;
    Ok(convert_table(
        doc.as_table(),
        &file,
        Origin::file(&file, Some(0..0)),
    ))
}

fn convert_table(table: &toml_edit::Table, file: &Arc<SourceFile>, origin: Origin) -> Node {
    let entries = table
        .iter()
        .map(|(key, item)| {
            let key_span = table.key(key).and_then(toml_edit::Key::span);
            (key.to_string(), convert_item(item, file, key_span))
        })
        .collect();
    Node::table(entries, origin)
}

fn convert_item(
    item: &toml_edit::Item,
    file: &Arc<SourceFile>,
    key_span: Option<std::ops::Range<usize>>,
) -> Node {
    // Point at the key where we have it: "unknown key" and "wrong type" both read best there.
    let origin = Origin::file(file, key_span.clone().or_else(|| item.span()));
    match item {
        toml_edit::Item::None => Node::from_toml(&toml::Value::Table(toml::Table::new()), &origin),
        toml_edit::Item::Value(v) => convert_value(v, file, origin),
        toml_edit::Item::Table(t) => convert_table(t, file, origin),
        toml_edit::Item::ArrayOfTables(a) => Node {
            value: NodeValue::Array(
                a.iter()
                    .map(|t| convert_table(t, file, Origin::file(file, t.span())))
                    .collect(),
            ),
            origin,
        },
    }
}

fn convert_value(value: &toml_edit::Value, file: &Arc<SourceFile>, origin: Origin) -> Node {
    use toml_edit::Value as V;
    let scalar = |v: toml::Value| Node {
        value: NodeValue::Scalar(v),
        origin: origin.clone(),
    };
    match value {
        V::String(s) => scalar(toml::Value::String(s.value().clone())),
        V::Integer(i) => scalar(toml::Value::Integer(*i.value())),
        V::Float(f) => scalar(toml::Value::Float(*f.value())),
        V::Boolean(b) => scalar(toml::Value::Boolean(*b.value())),
        V::Datetime(d) => scalar(toml::Value::Datetime(*d.value())),
        V::Array(items) => Node {
            value: NodeValue::Array(
                items
                    .iter()
                    .map(|v| convert_value(v, file, Origin::file(file, v.span())))
                    .collect(),
            ),
            origin,
        },
        V::InlineTable(t) => {
            let entries = t
                .iter()
                .map(|(key, v)| {
                    let key_span = t.key(key).and_then(toml_edit::Key::span);
                    let child = Origin::file(file, key_span.or_else(|| v.span()));
                    (key.to_string(), convert_value(v, file, child))
                })
                .collect();
            Node::table(entries, origin)
        }
    }
}

/// The nearest of `candidates` to `word`, if one is close enough to be a likely typo.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Node {
        parse_file(Path::new("p.toml"), text.to_string()).expect("valid toml")
    }

    #[test]
    fn origins_point_at_keys() {
        let node = parse("[stage.a]\nkind = \"cmd\"\n  cmd = \"echo\"\n");
        let path = ["stage".to_string(), "a".to_string(), "cmd".to_string()];
        assert_eq!(node.origin_at(&path).to_string(), "p.toml:3:3");
    }

    #[test]
    fn inline_table_children_are_located() {
        let node = parse("x = { a = 1, bb = 2 }\n");
        let path = ["x".to_string(), "bb".to_string()];
        assert_eq!(node.origin_at(&path).to_string(), "p.toml:1:14");
    }

    #[test]
    fn syntax_error_has_location() {
        let err = parse_file(Path::new("p.toml"), "a = 1\nb = \n".to_string()).unwrap_err();
        assert!(err.render().starts_with("p.toml:2:"), "{}", err.render());
    }

    #[test]
    fn merge_overrides_leaves_and_keeps_siblings() {
        let mut base = parse("[t]\na = 1\nb = { c = 2, d = 3 }\n");
        let over = parse("[t]\nb = { d = 4 }\n");
        base.merge(over);
        let value = base.to_toml();
        assert_eq!(value["t"]["a"].as_integer(), Some(1));
        assert_eq!(value["t"]["b"]["c"].as_integer(), Some(2));
        assert_eq!(value["t"]["b"]["d"].as_integer(), Some(4));
    }

    #[test]
    fn suggestions_catch_typos_only() {
        assert_eq!(suggest("kidn", ["kind", "needs", "uses"]), Some("kind"));
        assert_eq!(suggest("zzzz", ["kind", "needs", "uses"]), None);
        let near = ConfigError::new(None, "x").suggesting("kidn", ["kind", "uses"], "keys");
        assert_eq!(near.help.as_deref(), Some("did you mean `kind`?"));
        let far = ConfigError::new(None, "x").suggesting("zzzz", ["kind", "uses"], "keys");
        assert_eq!(far.help.as_deref(), Some("keys: kind, uses"));
        let bare = ConfigError::new(None, "x").suggesting("zzzz", ["kind"], "");
        assert_eq!(bare.help, None);
    }

    #[test]
    fn snippet_underlines_the_span() {
        let node = parse("a = 1\nbad_key = 2\n");
        let snippet = node.origin_at(&["bad_key".to_string()]).snippet().unwrap();
        assert!(snippet.contains("2 | bad_key = 2"), "{snippet}");
        assert!(snippet.contains("^^^^^^^"), "{snippet}");
    }
}
