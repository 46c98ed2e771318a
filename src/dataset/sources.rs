//! Where the dataset's files come from: `${VAR}` expansion in source paths, glob
//! paths resolved to roots, and a sorted, symlink-safe walk under each root with
//! include/exclude globs.
//!
//! Variables: `${CARGO_HOME}` (the environment's, else `~/.cargo`),
//! `${PYTHON_STDLIB}` and `${PYTHON_SITE_PACKAGES}` (the environment's, else asked
//! of `python3`'s `sysconfig`), and any other set environment variable.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use super::lang::Lang;

/// Expand `${NAME}` references. The error names the variable.
pub fn expand_vars(text: &str) -> Result<String, String> {
    expand_vars_with(text, &variable)
}

/// [`expand_vars`] with the variables looked up by `lookup` (tests use a map).
fn expand_vars_with(
    text: &str,
    lookup: &dyn Fn(&str) -> Result<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unclosed `${{` in `{text}`"));
        };
        let name = &after[..end];
        out.push_str(&lookup(name)?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn variable(name: &str) -> Result<String, String> {
    if let Some(v) = std::env::var_os(name).filter(|v| !v.is_empty()) {
        return Ok(v.to_string_lossy().into_owned());
    }
    match name {
        "CARGO_HOME" => std::env::var_os("HOME")
            .map(|h| Path::new(&h).join(".cargo").to_string_lossy().into_owned())
            .ok_or_else(|| "`${CARGO_HOME}`: neither CARGO_HOME nor HOME is set".to_string()),
        "PYTHON_STDLIB" => python_path("stdlib"),
        "PYTHON_SITE_PACKAGES" => python_path("purelib"),
        _ => Err(format!(
            "`${{{name}}}`: the environment variable {name} is not set"
        )),
    }
}

fn python_path(key: &str) -> Result<String, String> {
    let script = format!("import sysconfig; print(sysconfig.get_paths()['{key}'])");
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .map_err(|e| format!("cannot run python3 to find its {key} directory: {e}"))?;
    if !out.status.success() {
        return Err(format!("python3 could not tell its {key} directory"));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Byte offset of the first glob metacharacter outside `${...}`.
fn first_meta(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && b.get(i + 1) == Some(&b'{') {
            i += text[i..].find('}').map(|e| e + 1).unwrap_or(b.len() - i);
            continue;
        }
        if matches!(b[i], b'*' | b'?' | b'[' | b'{') {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// One directory or file a source path resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    /// As written, variables unexpanded, the matched part filled in: machine-independent.
    pub display: String,
    pub path: PathBuf,
}

/// Resolve a source path (variables, then a glob if it has one) against `dir`.
/// An error says which path did not exist or matched nothing.
pub fn resolve(written: &str, dir: &Path) -> Result<Vec<Root>, String> {
    resolve_with(written, dir, &variable)
}

fn resolve_with(
    written: &str,
    dir: &Path,
    lookup: &dyn Fn(&str) -> Result<String, String>,
) -> Result<Vec<Root>, String> {
    let expanded = expand_vars_with(written, lookup)?;
    let Some(meta) = first_meta(&expanded) else {
        let path = dir.join(&expanded);
        if std::fs::symlink_metadata(&path).is_err() {
            return Err(format!(
                "source path `{written}` does not exist ({})",
                path.display()
            ));
        }
        return Ok(vec![Root {
            display: written.trim_end_matches('/').to_string(),
            path: normal(&path),
        }]);
    };
    let base_len = expanded[..meta].rfind('/').map(|i| i + 1).unwrap_or(0);
    let base = dir.join(&expanded[..base_len]);
    let pattern = &expanded[base_len..];
    let written_meta = first_meta(written).unwrap_or(written.len());
    let written_base = &written[..written[..written_meta]
        .rfind('/')
        .map(|i| i + 1)
        .unwrap_or(0)];
    let glob = GlobBuilder::new(pattern.trim_end_matches('/'))
        .literal_separator(true)
        .build()
        .map_err(|e| format!("source path `{written}`: {e}"))?
        .compile_matcher();
    let max_depth = if pattern.contains("**") {
        usize::MAX
    } else {
        pattern.trim_end_matches('/').split('/').count()
    };
    let mut found = Vec::new();
    glob_walk(&base, "", 1, max_depth, &glob, &mut found);
    if found.is_empty() {
        return Err(format!(
            "source path `{written}` matches nothing ({})",
            base.join(pattern).display()
        ));
    }
    found.sort();
    Ok(found
        .into_iter()
        .map(|rel| Root {
            display: format!("{written_base}{rel}"),
            path: normal(&base.join(&rel)),
        })
        .collect())
}

fn glob_walk(
    dir: &Path,
    prefix: &str,
    depth: usize,
    max_depth: usize,
    glob: &globset::GlobMatcher,
    found: &mut Vec<String>,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut names: Vec<(String, bool)> = entries
        .flatten()
        .map(|e| {
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            (e.file_name().to_string_lossy().into_owned(), is_dir)
        })
        .collect();
    names.sort();
    for (name, is_dir) in names {
        let rel = format!("{prefix}{name}");
        if glob.is_match(&rel) {
            found.push(rel);
        } else if is_dir && depth < max_depth {
            glob_walk(
                &dir.join(&name),
                &format!("{rel}/"),
                depth + 1,
                max_depth,
                glob,
                found,
            );
        }
    }
}

/// `a/./b/../c` -> `a/c`, lexically.
fn normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// Compiled include/exclude globs of one source.
pub struct Filter {
    include: GlobSet,
    exclude: GlobSet,
}

impl Filter {
    pub fn new(lang: Lang, include: &[String], exclude: &[String]) -> Result<Filter> {
        let build = |patterns: &mut dyn Iterator<Item = &str>| -> Result<GlobSet> {
            let mut set = GlobSetBuilder::new();
            for p in patterns {
                set.add(Glob::new(p).with_context(|| format!("bad glob `{p}`"))?);
            }
            Ok(set.build()?)
        };
        let include = if include.is_empty() {
            build(&mut lang.default_include().iter().copied())?
        } else {
            build(&mut include.iter().map(String::as_str))?
        };
        let exclude = build(
            &mut exclude
                .iter()
                .map(String::as_str)
                .chain(lang.default_exclude().iter().copied()),
        )?;
        Ok(Filter { include, exclude })
    }

    pub fn wants(&self, rel: &str) -> bool {
        self.include.is_match(rel) && !self.exclude.is_match(rel)
    }
}

/// A file to read.
#[derive(Debug, Clone)]
pub struct FileEntry {
    /// Relative to its root (a root that is a file: its file name).
    pub rel: String,
    pub path: PathBuf,
    pub size: u64,
}

/// What the walk skipped.
#[derive(Debug, Default, Clone, Copy)]
pub struct WalkSkips {
    /// Symbolic links to directories: never followed (the key's hashing does not follow them either).
    pub symlinked_dirs: u64,
    /// Links that lead nowhere, or in a loop.
    pub broken_links: u64,
    /// Directories or files whose metadata could not be read.
    pub unreadable: u64,
}

/// The wanted regular files under `root`, sorted by relative path.
pub fn walk(root: &Path, filter: &Filter, skips: &mut WalkSkips) -> Result<Vec<FileEntry>> {
    let meta =
        std::fs::metadata(root).with_context(|| format!("cannot read {}", root.display()))?;
    if meta.is_file() {
        let rel = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Ok(vec![FileEntry {
            rel,
            path: root.to_path_buf(),
            size: meta.len(),
        }]);
    }
    if !meta.is_dir() {
        bail!("{} is neither a file nor a directory", root.display());
    }
    let mut out = Vec::new();
    walk_dir(root, "", filter, skips, &mut out);
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

fn walk_dir(
    dir: &Path,
    prefix: &str,
    filter: &Filter,
    skips: &mut WalkSkips,
    out: &mut Vec<FileEntry>,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        skips.unreadable += 1;
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = format!("{prefix}{name}");
        let path = entry.path();
        let Ok(file_type) = entry.file_type() else {
            skips.unreadable += 1;
            continue;
        };
        if file_type.is_dir() {
            walk_dir(&path, &format!("{rel}/"), filter, skips, out);
            continue;
        }
        let target = file_type.is_symlink().then(|| std::fs::metadata(&path));
        if let Some(Ok(m)) = &target {
            if m.is_dir() {
                skips.symlinked_dirs += 1;
                continue;
            }
        }
        if !filter.wants(&rel) {
            continue;
        }
        let meta = if let Some(target) = target {
            match target {
                Ok(m) => m,
                Err(_) => {
                    skips.broken_links += 1;
                    continue;
                }
            }
        } else {
            match entry.metadata() {
                Ok(m) => m,
                Err(_) => {
                    skips.unreadable += 1;
                    continue;
                }
            }
        };
        if meta.is_file() {
            out.push(FileEntry {
                rel,
                path,
                size: meta.len(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(map: &'a [(&'a str, String)]) -> impl Fn(&str) -> Result<String, String> + 'a {
        move |name: &str| {
            map.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| format!("`${{{name}}}` is not set"))
        }
    }

    #[test]
    fn variables_expand_and_unknown_ones_are_named() {
        let map = [("ROOT", "/data".to_string())];
        assert_eq!(
            expand_vars_with("${ROOT}/x", &vars(&map)).unwrap(),
            "/data/x"
        );
        let err = expand_vars_with("${NOPE}/x", &vars(&map)).unwrap_err();
        assert!(err.contains("NOPE"), "{err}");
        let err = expand_vars("${XTR_SURELY_UNSET_VARIABLE}").unwrap_err();
        assert!(
            err.contains("XTR_SURELY_UNSET_VARIABLE is not set"),
            "{err}"
        );
        assert_eq!(first_meta("${A}/b/*"), Some(7));
    }

    #[test]
    fn globs_resolve_to_sorted_roots_with_portable_names() {
        let dir = tempfile::tempdir().unwrap();
        for d in [
            "reg/idx/serde-1.0.1",
            "reg/idx/serde-1.0.2",
            "reg/idx/tokio-1.0.0",
        ] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let map = [("REG", dir.path().join("reg").to_string_lossy().into_owned())];
        let lookup = vars(&map);
        let roots = resolve_with("${REG}/*/serde-*", Path::new("/"), &lookup).unwrap();
        let names: Vec<&str> = roots.iter().map(|r| r.display.as_str()).collect();
        assert_eq!(names, ["${REG}/idx/serde-1.0.1", "${REG}/idx/serde-1.0.2"]);
        assert_eq!(roots[0].path, dir.path().join("reg/idx/serde-1.0.1"));
        let err = resolve_with("${REG}/*/nothing-*", Path::new("/"), &lookup).unwrap_err();
        assert!(err.contains("matches nothing"), "{err}");
        let err = resolve("missing/dir", dir.path()).unwrap_err();
        assert!(err.contains("`missing/dir` does not exist"), "{err}");
    }
}
