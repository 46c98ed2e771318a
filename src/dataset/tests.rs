//! Extraction on the fixtures in `tests/fixtures/dataset/`: the exact pairs per language.

use super::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dataset");

fn params() -> Params {
    serde_json::from_value(serde_json::json!({ "sources": [] })).expect("defaults")
}

/// (symbol, item, start line, end line, query)
type Row = (String, String, u32, u32, String);

/// (symbol, item, start, end, query) of every pair in one fixture file, and the codes.
fn pairs(lang: Lang, rel: &str) -> (Vec<Row>, Vec<String>, Stats) {
    let path = std::path::Path::new(FIXTURES).join(rel);
    let size = std::fs::metadata(&path).expect("fixture").len();
    let job = Job {
        lang,
        root: "fixtures",
        file: FileEntry {
            rel: rel.to_string(),
            path,
            size,
        },
    };
    let compiled = lang::grammar(lang).map(|g| extract::Compiled::new(g).expect("query"));
    let p = params();
    let mut stats = Stats::default();
    let FileOutcome::Parsed(items) = read_and_extract(&p, &job, compiled.as_ref()).1 else {
        panic!("{rel} was skipped");
    };
    assert!(!items.syntax_errors, "{rel} has syntax errors");
    let mut rows = Vec::new();
    let mut codes = Vec::new();
    for item in items.items {
        if let Some(pair) = admit(&p, &job, item, &mut stats.filtered) {
            rows.push((
                pair.symbol,
                pair.item,
                pair.start_line,
                pair.end_line,
                pair.query,
            ));
            codes.push(pair.code);
        }
    }
    (rows, codes, stats)
}

fn row(symbol: &str, item: &str, start: u32, end: u32, query: &str) -> Row {
    (symbol.into(), item.into(), start, end, query.into())
}

fn rows(lang: Lang, rel: &str) -> Vec<Row> {
    pairs(lang, rel).0
}

#[test]
fn rust_pairs() {
    let (got, codes, stats) = pairs(Lang::Rust, "rust/src/lib.rs");
    assert_eq!(
        got,
        [
            row("lib", "module", 5, 85, "Tiny geometry helpers."),
            row("Point", "struct", 8, 13, "A point in the plane."),
            row(
                "Point::distance",
                "function",
                23,
                26,
                "Distance to other, in the same units."
            ),
            row(
                "Point::fmt",
                "function",
                36,
                38,
                "Formats as (x, y), see Point."
            ),
            row(
                "total",
                "function",
                42,
                48,
                "Sum the items of any iterator whose items add up."
            ),
            row("shapes", "module", 50, 59, "Shapes built from points."),
            row(
                "shapes::Polygon",
                "trait",
                55,
                58,
                "A closed polygon, given by its corners in order."
            ),
            row("LIMITS", "const", 62, 65, "Block doc for the limits table."),
        ]
    );
    assert_eq!(
        codes[1],
        "#[derive(Debug, Clone, Copy)]\npub struct Point {\n    /// Horizontal.\n    pub x: f64,\n    pub y: f64,\n}"
    );
    assert_eq!(
        codes[2],
        "#[inline]\npub fn distance(&self, other: &Point) -> f64 {\n    ((self.x - other.x).powi(2) + (self.y - other.y).powi(2)).sqrt()\n}"
    );
    assert_eq!(
        codes[4],
        "pub fn total<I, T>(items: I) -> T\nwhere\n    I: IntoIterator<Item = T>,\n    T: std::iter::Sum<T>,\n{\n    items.into_iter().sum()\n}"
    );
    assert!(
        codes[5].starts_with("pub mod shapes {\n    /// A closed polygon"),
        "{}",
        codes[5]
    );
    assert!(!codes[0].contains("//! Tiny") && codes[0].starts_with("use std::fmt;"));
    // `#[cfg(test)]` items, one-line code (`fn area`) and short docs are dropped.
    let f = &stats.filtered;
    assert_eq!(
        (f.test_items, f.code_too_short, f.query_too_short),
        (1, 1, 1)
    );
}

#[test]
fn python_pairs() {
    let (got, codes, stats) = pairs(Lang::Python, "python/pkg/shapes.py");
    assert_eq!(
        got,
        [
            row("plain", "function", 6, 13, "Add two numbers."),
            row(
                "cached",
                "function",
                16,
                21,
                "Return the n-th Fibonacci number, memoised."
            ),
            row("Stack", "class", 24, 40, "A last-in, first-out stack."),
            row(
                "Stack.top",
                "function",
                33,
                36,
                "The top item, or None when the stack is empty."
            ),
            row(
                "Stack.Frame",
                "class",
                38,
                40,
                "One frame of the stack, with its depth."
            ),
            row(
                "fetch",
                "function",
                47,
                49,
                "Fetch url and return the body."
            ),
        ]
    );
    assert_eq!(codes[0], "def plain(a, b):\n    return a + b");
    assert_eq!(
        codes[1],
        "@functools.lru_cache(maxsize=None)\ndef cached(n):\n    if n < 2:\n        return n\n    return cached(n - 1) + cached(n - 2)"
    );
    assert!(
        codes[2].starts_with("class Stack:\n    def __init__(self):"),
        "{}",
        codes[2]
    );
    assert!(
        codes[2].contains("r\"\"\"The top item"),
        "nested docstrings stay"
    );
    assert_eq!(
        codes[3],
        "@property\ndef top(self):\n    return self.items[-1] if self.items else None"
    );
    assert_eq!(codes[4], "class Frame:\n    depth = 0");
    // `test_plain` is test-only; `only_doc` has no code once its docstring is gone.
    assert_eq!(
        (stats.filtered.test_items, stats.filtered.code_too_short),
        (1, 1)
    );
}

#[test]
fn lean_pairs() {
    let (got, codes, stats) = pairs(Lang::Lean, "lean/Geo/Basic.lean");
    assert_eq!(
        got,
        [
            row(
                "Geo.Point",
                "structure",
                15,
                18,
                "A point with natural coordinates."
            ),
            row(
                "Geo.Point.dist",
                "def",
                22,
                24,
                "Manhattan distance between two points. It is symmetric."
            ),
            row(
                "Geo.Point.dist_self",
                "theorem",
                27,
                28,
                "dist is zero from a point to itself."
            ),
            row(
                "Geo.ToString Point",
                "instance",
                31,
                32,
                "Points print as pairs."
            ),
            row(
                "Geo.sum",
                "def",
                37,
                40,
                "Sum of a list, by structural recursion."
            ),
            row(
                "Geo.quote",
                "def",
                47,
                48,
                "Strings and chars that hold comment markers do not confuse the scanner."
            ),
            row(
                "instInhabitedPoint",
                "instance",
                53,
                54,
                "A named instance; a nested comment /- inside -/ stays."
            ),
        ]
    );
    assert_eq!(
        codes[0],
        "structure Point where\n  x : Nat\n  y : Nat\n  deriving Repr, BEq"
    );
    assert_eq!(
        codes[4],
        "def sum : List Nat → Nat\n| [] => 0\n| n :: ns => n + sum ns\ntermination_by l => l.length"
    );
    assert!(
        codes[1].starts_with("@[simp] protected def Point.dist"),
        "{}",
        codes[1]
    );
    // `abbrev Pt := Point` is one line.
    assert_eq!(stats.filtered.code_too_short, 1);
}

#[test]
fn swift_pairs() {
    let (got, codes, _) = pairs(Lang::Swift, "swift/Shapes.swift");
    assert_eq!(
        got,
        [
            row("Shape", "protocol", 4, 7, "A shape that knows its area."),
            row("Circle", "struct", 12, 25, "A circle given by its radius."),
            row(
                "Circle.init",
                "init",
                16,
                18,
                "Creates a circle with the given radius."
            ),
            row(
                "Circle.area",
                "function",
                21,
                24,
                "Area of the circle: pi times the radius squared."
            ),
            row(
                "scaledAreas",
                "function",
                31,
                33,
                "Scales every shape's area by factor."
            ),
        ]
    );
    assert_eq!(
        codes[3],
        "@inlinable\nfunc area() -> Double {\n    return Double.pi * radius * radius\n}"
    );
}

#[test]
fn java_pairs() {
    let (got, codes, _) = pairs(Lang::Java, "java/src/main/Stack.java");
    assert_eq!(
        got,
        [
            row(
                "Stack",
                "class",
                10,
                38,
                "A simple generic stack backed by an ArrayList."
            ),
            row(
                "Stack.Stack",
                "constructor",
                14,
                16,
                "Creates an empty stack with no items."
            ),
            row(
                "Stack.push",
                "method",
                22,
                25,
                "Pushes item onto the top of the stack."
            ),
            row(
                "Stack.Entry",
                "record",
                33,
                37,
                "Nested: an entry with its position in the stack."
            ),
        ]
    );
    assert_eq!(
        codes[2],
        "@SuppressWarnings(\"unchecked\")\npublic void push(T item) {\n    items.add(item);\n}"
    );
}

#[test]
fn typescript_pairs() {
    let (got, codes, _) = pairs(Lang::Typescript, "typescript/queue.ts");
    assert_eq!(
        got,
        [
            row("Queue", "class", 5, 20, "A first-in, first-out queue."),
            row(
                "Queue.enqueue",
                "method",
                9,
                11,
                "Adds an item at the back of the queue."
            ),
            row(
                "Queue.dequeue",
                "method",
                17,
                19,
                "Removes and returns the front item, or undefined."
            ),
            row(
                "DrainOptions",
                "interface",
                23,
                26,
                "Options that control how a queue drains."
            ),
            row(
                "drain",
                "function",
                29,
                32,
                "Drains queue into an array, at most limit items."
            ),
        ]
    );
    assert!(codes[0].starts_with("export class Queue<T> {"));
}

#[test]
fn cpp_pairs() {
    let (got, codes, _) = pairs(Lang::Cpp, "cpp/vec.cpp");
    assert_eq!(
        got,
        [
            row("geo::Vec2", "struct", 6, 14, "A 2-D vector of doubles."),
            row(
                "geo::Vec2::length",
                "function",
                11,
                13,
                "Euclidean length of the vector."
            ),
            row(
                "geo::add",
                "function",
                20,
                22,
                "Adds two vectors component-wise."
            ),
            row(
                "geo::max_of",
                "function",
                25,
                28,
                "Returns the larger of two values, for any ordered type."
            ),
            row(
                "geo::unit_x",
                "function",
                31,
                34,
                "Pointer to the static unit vector along x."
            ),
        ]
    );
    assert_eq!(
        codes[3],
        "template <typename T>\nT max_of(T a, T b) {\n    return a < b ? b : a;\n}"
    );
}

#[test]
fn objc_pairs() {
    assert_eq!(
        rows(Lang::Objc, "objc/Counter.m"),
        [
            row(
                "increment",
                "method",
                6,
                9,
                "Increments the counter by one and returns the new value."
            ),
            row(
                "resetTo:animated:",
                "method",
                14,
                16,
                "Resets the counter to the given value."
            ),
            row(
                "twice",
                "function",
                25,
                27,
                "A C helper that doubles its argument."
            ),
        ]
    );
}

#[test]
fn test_and_generated_files_are_recognised() {
    for p in [
        "tests/a.rs",
        "pkg/test_x.py",
        "src/FooTest.java",
        "a/b.spec.ts",
        "x_test.go",
    ] {
        assert!(is_test_path(p), "{p}");
    }
    for p in ["src/lib.rs", "pkg/testing_utils_not.py", "contest.py"] {
        assert!(!is_test_path(p), "{p}");
    }
    assert!(is_generated("// @generated by build.rs\nfn x() {}"));
    assert!(is_generated("# Code generated by protoc. DO NOT EDIT.\n"));
    assert!(!is_generated("/// Generates code.\nfn gen() {}"));
}

#[test]
fn splits_are_seeded_and_grouped_by_file() {
    let p = params();
    let pair = |path: &str, line: u32| Pair {
        lang: Lang::Rust,
        root: "r".into(),
        path: path.into(),
        symbol: "s".into(),
        item: "function".into(),
        start_line: line,
        end_line: line,
        query: String::new(),
        code: String::new(),
        split: "",
    };
    let mut counts = BTreeMap::new();
    for i in 0..1000 {
        let path = format!("f{i}.rs");
        let s = split_of(&p, &pair(&path, 1));
        assert_eq!(s, split_of(&p, &pair(&path, 99)), "one file, one split");
        *counts.entry(s).or_insert(0) += 1;
    }
    assert!((750..850).contains(&counts["train"]), "{counts:?}");
    assert!((60..140).contains(&counts["eval"]), "{counts:?}");
    let other = Params {
        seed: 7,
        ..params()
    };
    let moved = (0..100)
        .filter(|i| {
            let q = pair(&format!("f{i}.rs"), 1);
            split_of(&p, &q) != split_of(&other, &q)
        })
        .count();
    assert!(moved > 10, "the seed changes the split");
}

#[test]
fn truncated_sources_never_panic() {
    for (lang, rel) in [
        (Lang::Rust, "rust/src/lib.rs"),
        (Lang::Python, "python/pkg/shapes.py"),
        (Lang::Lean, "lean/Geo/Basic.lean"),
        (Lang::Swift, "swift/Shapes.swift"),
        (Lang::Java, "java/src/main/Stack.java"),
        (Lang::Typescript, "typescript/queue.ts"),
        (Lang::Cpp, "cpp/vec.cpp"),
        (Lang::Objc, "objc/Counter.m"),
    ] {
        let text = std::fs::read_to_string(std::path::Path::new(FIXTURES).join(rel)).unwrap();
        let compiled = lang::grammar(lang).map(|g| extract::Compiled::new(g).unwrap());
        let cuts: Vec<usize> = text.char_indices().map(|(i, _)| i).step_by(5).collect();
        for cut in cuts {
            let part = &text[..cut];
            let items = match &compiled {
                Some(g) => extract::extract(lang, g, part, "x").unwrap().items,
                None => lean::extract(part).items,
            };
            for item in items {
                let q = clean::query(&item.doc, true);
                assert!(
                    item.start_line <= item.end_line + 1,
                    "{rel} cut at {cut}: {q}"
                );
            }
        }
    }
}
