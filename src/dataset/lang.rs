//! The languages the dataset stage reads: file extensions, the tree-sitter grammar
//! and the query that finds documentable items, and what counts as a doc comment.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A source language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    Rust,
    Python,
    Lean,
    Swift,
    Java,
    Typescript,
    Cpp,
    Objc,
}

impl Lang {
    pub const ALL: [Lang; 8] = [
        Lang::Rust,
        Lang::Python,
        Lang::Lean,
        Lang::Swift,
        Lang::Java,
        Lang::Typescript,
        Lang::Cpp,
        Lang::Objc,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Lean => "lean",
            Lang::Swift => "swift",
            Lang::Java => "java",
            Lang::Typescript => "typescript",
            Lang::Cpp => "cpp",
            Lang::Objc => "objc",
        }
    }

    /// The include globs used when a source gives none.
    pub fn default_include(self) -> &'static [&'static str] {
        match self {
            Lang::Rust => &["**/*.rs"],
            Lang::Python => &["**/*.py"],
            Lang::Lean => &["**/*.lean"],
            Lang::Swift => &["**/*.swift"],
            Lang::Java => &["**/*.java"],
            Lang::Typescript => &["**/*.ts", "**/*.tsx"],
            Lang::Cpp => &[
                "**/*.cc", "**/*.cpp", "**/*.cxx", "**/*.hh", "**/*.hpp", "**/*.hxx", "**/*.h",
            ],
            Lang::Objc => &["**/*.m", "**/*.mm"],
        }
    }

    /// The exclude globs always added to a source's own (declaration-only files).
    pub fn default_exclude(self) -> &'static [&'static str] {
        match self {
            Lang::Typescript => &["**/*.d.ts"],
            _ => &[],
        }
    }
}

impl Lang {
    /// Substrings that every doc comment of the language contains; a file with
    /// none of them holds no pair. `None`: no such cheap test (Python docstrings
    /// are plain strings).
    pub fn doc_markers(self) -> Option<&'static [&'static str]> {
        match self {
            Lang::Python => None,
            Lang::Lean => Some(&["/--"]),
            Lang::Java | Lang::Typescript => Some(&["/**"]),
            Lang::Rust | Lang::Swift | Lang::Cpp | Lang::Objc => {
                Some(&["///", "//!", "/**", "/*!"])
            }
        }
    }
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How one language's items and docs are found with tree-sitter (Lean uses its own scanner).
pub struct Grammar {
    pub language: tree_sitter::Language,
    /// Captures `@item` (the documentable node), `@name`, and for Python `@doc` (the docstring).
    pub query: &'static str,
    /// Parents that carry the item's leading comments instead of the item itself.
    pub wrappers: &'static [&'static str],
    /// Siblings between a doc comment and its item that belong to the item's code.
    pub attributes: &'static [&'static str],
    /// Which comment texts are doc comments.
    pub doc: fn(&str) -> bool,
}

/// The grammar of `lang`, or `None` for Lean (scanned without tree-sitter) and for
/// `.tsx` files the caller asks for [`tsx`].
pub fn grammar(lang: Lang) -> Option<Grammar> {
    let g = match lang {
        Lang::Rust => Grammar {
            language: tree_sitter_rust::LANGUAGE.into(),
            query: RUST_QUERY,
            wrappers: &[],
            attributes: &["attribute_item"],
            doc: rust_outer_doc,
        },
        Lang::Python => Grammar {
            language: tree_sitter_python::LANGUAGE.into(),
            query: PYTHON_QUERY,
            wrappers: &["decorated_definition"],
            attributes: &[],
            doc: |_| false,
        },
        Lang::Lean => return None,
        Lang::Swift => Grammar {
            language: tree_sitter_swift::LANGUAGE.into(),
            query: SWIFT_QUERY,
            wrappers: &[],
            attributes: &[],
            doc: slash_doc,
        },
        Lang::Java => Grammar {
            language: tree_sitter_java::LANGUAGE.into(),
            query: JAVA_QUERY,
            wrappers: &[],
            attributes: &[],
            doc: javadoc,
        },
        Lang::Typescript => Grammar {
            language: tree_sitter_typescript::LANGUAGE_TYPESCRIPT.into(),
            query: TS_QUERY,
            wrappers: &["export_statement"],
            attributes: &["decorator"],
            doc: javadoc,
        },
        Lang::Cpp => Grammar {
            language: tree_sitter_cpp::LANGUAGE.into(),
            query: CPP_QUERY,
            wrappers: &["template_declaration"],
            attributes: &["attribute_declaration"],
            doc: doxygen,
        },
        Lang::Objc => Grammar {
            language: tree_sitter_objc::LANGUAGE.into(),
            query: OBJC_QUERY,
            wrappers: &["implementation_definition"],
            attributes: &[],
            doc: doxygen,
        },
    };
    Some(g)
}

/// TypeScript with JSX, for `.tsx` files.
pub fn tsx() -> Grammar {
    Grammar {
        language: tree_sitter_typescript::LANGUAGE_TSX.into(),
        ..grammar(Lang::Typescript).expect("typescript has a grammar")
    }
}

/// `///` or `/** */` (not `////`, `/***`, `/**/`).
pub fn rust_outer_doc(text: &str) -> bool {
    (text.starts_with("///") && !text.starts_with("////"))
        || (text.starts_with("/**") && !text.starts_with("/***") && !text.starts_with("/**/"))
}

/// `//!` or `/*!`: a doc comment of the enclosing module.
pub fn rust_inner_doc(text: &str) -> bool {
    text.starts_with("//!") || text.starts_with("/*!")
}

fn javadoc(text: &str) -> bool {
    text.starts_with("/**") && !text.starts_with("/***") && !text.starts_with("/**/")
}

fn slash_doc(text: &str) -> bool {
    javadoc(text) || (text.starts_with("///") && !text.starts_with("////"))
}

fn doxygen(text: &str) -> bool {
    slash_doc(text) || text.starts_with("/*!") || text.starts_with("//!")
}

const RUST_QUERY: &str = r#"
(function_item name: (_) @name) @item
(function_signature_item name: (_) @name) @item
(struct_item name: (_) @name) @item
(enum_item name: (_) @name) @item
(union_item name: (_) @name) @item
(trait_item name: (_) @name) @item
(type_item name: (_) @name) @item
(const_item name: (_) @name) @item
(static_item name: (_) @name) @item
(macro_definition name: (_) @name) @item
(mod_item name: (_) @name body: (_)) @item
"#;

const PYTHON_QUERY: &str = r#"
(function_definition
  name: (_) @name
  body: (block . (expression_statement . (string) @doc .))) @item
(class_definition
  name: (_) @name
  body: (block . (expression_statement . (string) @doc .))) @item
"#;

const SWIFT_QUERY: &str = r#"
(function_declaration name: (_) @name) @item
(class_declaration name: (_) @name) @item
(protocol_declaration name: (_) @name) @item
(protocol_function_declaration name: (_) @name) @item
(typealias_declaration name: (_) @name) @item
(init_declaration) @item
"#;

const JAVA_QUERY: &str = r#"
(method_declaration name: (_) @name) @item
(constructor_declaration name: (_) @name) @item
(class_declaration name: (_) @name) @item
(interface_declaration name: (_) @name) @item
(enum_declaration name: (_) @name) @item
(record_declaration name: (_) @name) @item
"#;

const TS_QUERY: &str = r#"
(function_declaration name: (_) @name) @item
(generator_function_declaration name: (_) @name) @item
(class_declaration name: (_) @name) @item
(abstract_class_declaration name: (_) @name) @item
(interface_declaration name: (_) @name) @item
(type_alias_declaration name: (_) @name) @item
(enum_declaration name: (_) @name) @item
(method_definition name: (_) @name) @item
"#;

const CPP_QUERY: &str = r#"
(function_definition declarator: (function_declarator declarator: (_) @name)) @item
(function_definition declarator: (pointer_declarator declarator: (function_declarator declarator: (_) @name))) @item
(function_definition declarator: (reference_declarator (function_declarator declarator: (_) @name))) @item
(class_specifier name: (_) @name body: (_)) @item
(struct_specifier name: (_) @name body: (_)) @item
(enum_specifier name: (_) @name body: (_)) @item
"#;

const OBJC_QUERY: &str = r#"
(method_definition (identifier) @name) @item
(function_definition declarator: (function_declarator declarator: (_) @name)) @item
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_query_compiles_against_its_grammar() {
        for lang in Lang::ALL {
            if let Some(g) = grammar(lang) {
                tree_sitter::Query::new(&g.language, g.query)
                    .unwrap_or_else(|e| panic!("{lang}: {e}"));
            }
        }
        let g = tsx();
        tree_sitter::Query::new(&g.language, g.query).unwrap();
    }

    #[test]
    fn doc_comment_markers() {
        assert!(rust_outer_doc("/// x"));
        assert!(!rust_outer_doc("//// x"));
        assert!(rust_outer_doc("/** x */"));
        assert!(!rust_outer_doc("/**/"));
        assert!(!rust_outer_doc("// x"));
        assert!(rust_inner_doc("//! x"));
        assert!(javadoc("/** x */") && !javadoc("/* x */"));
        assert!(doxygen("/*! x */") && doxygen("/// x"));
    }
}
