//! Tree listings in the database, so `status` can say which files of a dep
//! changed. One row per distinct directory node (its entries: names, file
//! hashes, subdirectory node digests), shared by every tree that holds it; a
//! tree digest maps to its root node. Storing a tree skips every subtree already
//! stored, so after one file is edited only the directories on its path are new
//! rows, and a diff descends only where nodes differ.

use anyhow::{bail, Result};

use super::db::Db;
use super::hashing::{Dir, DirEntry, Tree};

/// How two listings of one dep differ.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileChanges {
    pub modified: u64,
    pub added: u64,
    pub removed: u64,
    /// Both are a single file (the dep is a file, not a directory).
    pub single_file: bool,
}

/// Store `tree`'s listing unless it is already stored; returns the directory
/// nodes written.
pub fn store(db: &Db, tree: &Tree) -> Result<u64> {
    if db.has_tree(&tree.digest)? {
        return Ok(0);
    }
    db.in_transaction(|db| {
        let mut written = 0;
        store_node(db, &tree.root, &mut written)?;
        db.put_tree_root(&tree.digest, tree.root.node())?;
        Ok(written)
    })
}

/// A stored node's subtree is stored (children are written before parents, in
/// one transaction), so a known node ends the descent.
fn store_node(db: &Db, dir: &Dir, written: &mut u64) -> Result<()> {
    if db.has_tree_node(dir.node())? {
        return Ok(());
    }
    for entry in dir.entries() {
        if let DirEntry::Dir { dir: sub, .. } = entry {
            store_node(db, sub, written)?;
        }
    }
    db.put_tree_node(dir.node(), &encode(dir))?;
    *written += 1;
    Ok(())
}

/// One entry of a stored node.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    dir: bool,
    name: String,
    /// A file's content hash, or a subdirectory's node digest.
    hash: [u8; 32],
    /// Files at or below it.
    files: u64,
}

fn encode(dir: &Dir) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in dir.entries() {
        let (tag, name, hash, files) = match entry {
            DirEntry::File { name, hash } => (b'f', name, hash, 1),
            DirEntry::Dir { name, dir } => (b'd', name, dir.node(), dir.file_count()),
        };
        out.push(tag);
        varint(&mut out, name.len() as u64);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(hash);
        if tag == b'd' {
            varint(&mut out, files);
        }
    }
    out
}

fn decode(mut body: &[u8]) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    while let Some((&tag, rest)) = body.split_first() {
        body = rest;
        let len = read_varint(&mut body)? as usize;
        if body.len() < len + 32 {
            bail!("truncated tree node");
        }
        let name = String::from_utf8_lossy(&body[..len]).into_owned();
        let hash: [u8; 32] = body[len..len + 32].try_into()?;
        body = &body[len + 32..];
        let (dir, files) = match tag {
            b'f' => (false, 1),
            b'd' => (true, read_varint(&mut body)?),
            _ => bail!("bad tree node entry"),
        };
        out.push(Entry {
            dir,
            name,
            hash,
            files,
        });
    }
    Ok(out)
}

fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn read_varint(body: &mut &[u8]) -> Result<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let Some((&b, rest)) = body.split_first() else {
            bail!("truncated tree node");
        };
        *body = rest;
        n |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(n);
        }
    }
    bail!("bad varint in tree node")
}

/// How the tree with digest `now` differs from the one with digest `before`;
/// `None` when either listing is not stored.
pub fn changes(db: &Db, before: &str, now: &str) -> Result<Option<FileChanges>> {
    let (Some(a), Some(b)) = (db.tree_root(before)?, db.tree_root(now)?) else {
        return Ok(None);
    };
    let load = |node: &[u8; 32]| -> Result<Option<Vec<Entry>>> {
        db.tree_node(node)?.map(|body| decode(&body)).transpose()
    };
    let (Some(ra), Some(rb)) = (load(&a)?, load(&b)?) else {
        return Ok(None);
    };
    let single = |e: &[Entry]| e.len() == 1 && !e[0].dir && e[0].name.is_empty();
    let mut out = FileChanges {
        single_file: single(&ra) && single(&rb),
        ..FileChanges::default()
    };
    if diff(&load, ra, rb, &mut out)? {
        Ok(Some(out))
    } else {
        Ok(None)
    }
}

/// Reads a stored node's entries (`None`: not stored).
type Load<'a> = dyn Fn(&[u8; 32]) -> Result<Option<Vec<Entry>>> + 'a;

/// Count what differs between two nodes' entries, descending into subdirectories
/// whose node digests differ; false when a node is missing.
fn diff(
    load: &Load<'_>,
    before: Vec<Entry>,
    now: Vec<Entry>,
    out: &mut FileChanges,
) -> Result<bool> {
    let mut old: std::collections::HashMap<(bool, &str), &Entry> = before
        .iter()
        .map(|e| ((e.dir, e.name.as_str()), e))
        .collect();
    for e in &now {
        match old.remove(&(e.dir, e.name.as_str())) {
            Some(o) if o.hash == e.hash => {}
            Some(_) if !e.dir => out.modified += 1,
            Some(o) => {
                let (Some(a), Some(b)) = (load(&o.hash)?, load(&e.hash)?) else {
                    return Ok(false);
                };
                if !diff(load, a, b, out)? {
                    return Ok(false);
                }
            }
            None => out.added += e.files,
        }
    }
    out.removed += old.values().map(|e| e.files).sum::<u64>();
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Hasher;

    #[test]
    fn a_one_file_edit_stores_only_the_directories_on_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite")).unwrap();
        let src = dir.path().join("src");
        for i in 0..60 {
            let p = src.join(format!("a{}/b{}/f{i}", i % 2, i % 3));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, i.to_string()).unwrap();
        }
        let first = Hasher::new(&db, vec![]).unwrap().tree(&src).unwrap();
        // src, a0, a1 and three b's under each.
        assert_eq!(store(&db, &first).unwrap(), 9);
        assert_eq!(store(&db, &first).unwrap(), 0);
        std::fs::write(src.join("a0/b0/f0"), "changed").unwrap();
        std::fs::write(src.join("a1/new"), "new").unwrap();
        std::fs::remove_file(src.join("a1/b2/f5")).unwrap();
        let now = Hasher::new(&db, vec![]).unwrap().tree(&src).unwrap();
        // src, a0, a0/b0, a1, a1/b2.
        assert_eq!(store(&db, &now).unwrap(), 5);
        let c = changes(&db, &first.digest, &now.digest).unwrap().unwrap();
        assert_eq!((c.modified, c.added, c.removed), (1, 1, 1));
        assert!(!c.single_file);
        // A directory replaced by a file of the same name: all its files removed.
        std::fs::remove_dir_all(src.join("a0/b1")).unwrap();
        std::fs::write(src.join("a0/b1"), "file").unwrap();
        let later = Hasher::new(&db, vec![]).unwrap().tree(&src).unwrap();
        store(&db, &later).unwrap();
        let c = changes(&db, &now.digest, &later.digest).unwrap().unwrap();
        assert_eq!((c.modified, c.added, c.removed), (0, 1, 10));
        assert_eq!(changes(&db, &now.digest, "unknown").unwrap(), None);
    }

    #[test]
    fn nodes_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite")).unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("a"), "a").unwrap();
        std::fs::write(src.join("sub/b"), "b").unwrap();
        let tree = Hasher::new(&db, vec![]).unwrap().tree(&src).unwrap();
        let entries = decode(&encode(&tree.root)).unwrap();
        let names: Vec<(bool, &str, u64)> = entries
            .iter()
            .map(|e| (e.dir, e.name.as_str(), e.files))
            .collect();
        assert_eq!(names, [(false, "a", 1), (true, "sub", 1)]);
        assert_eq!(entries[0].hash, *blake3::hash(b"a").as_bytes());
    }
}
