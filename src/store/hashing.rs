//! Content hashing of declared files and directories, with a stat-keyed cache
//! so an unchanged tree costs one `stat` per file, not one read.
//!
//! A tree's digest covers each file's relative path and content hash, in sorted
//! order; its listing is kept in the database so `status` can say which files changed.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::{Context, Result};
use rayon::prelude::*;

use super::db::{Db, FileStamp};

/// Files at least this large are hashed with blake3's memory-mapped, multithreaded path.
const MMAP_THRESHOLD: u64 = 4 << 20;
/// Files modified this recently may still change within the stat granularity: never cache them.
const RACY_WINDOW_NS: i64 = 2_000_000_000;

/// A hashed file or directory: a digest over its sorted `(relative path, hash)` listing.
#[derive(Debug, Clone)]
pub struct Tree {
    pub digest: String,
    /// `(path relative to the root, blake3 hex)`; a single file has the path "".
    pub files: Vec<(String, String)>,
    pub bytes: u64,
}

/// Statistics of the hashing work done, for benchmarks and `--verbose`.
#[derive(Debug, Default, Clone, Copy)]
pub struct HashStats {
    pub files_hashed: u64,
    pub bytes_hashed: u64,
    pub cache_hits: u64,
}

/// Hashes files, consulting and refreshing the file-hash cache.
pub struct Hasher {
    cache: HashMap<String, (FileStamp, [u8; 32])>,
    fresh: Vec<(String, FileStamp, [u8; 32])>,
    trees: HashMap<PathBuf, Tree>,
    walked: Mutex<HashMap<PathBuf, Arc<Vec<Entry>>>>,
    exclude: Vec<PathBuf>,
    pub stats: HashStats,
}

impl Hasher {
    /// `exclude` lists directories never descended into (the store itself).
    pub fn new(db: &Db, exclude: Vec<PathBuf>) -> Result<Hasher> {
        let cache = db
            .load_file_hashes()?
            .into_iter()
            .map(|(path, stamp, hash)| (path, (stamp, hash)))
            .collect();
        Ok(Hasher {
            cache,
            ..Hasher::without_cache(exclude)
        })
    }

    /// A hasher with an empty cache: every file is read.
    pub fn without_cache(exclude: Vec<PathBuf>) -> Hasher {
        Hasher {
            cache: HashMap::new(),
            fresh: Vec::new(),
            trees: HashMap::new(),
            walked: Mutex::new(HashMap::new()),
            exclude,
            stats: HashStats::default(),
        }
    }

    /// Record hashes computed elsewhere (a just-published artifact's files, which
    /// nothing writes again, so the racy-mtime rule does not apply).
    pub fn remember(&mut self, entries: Vec<(String, FileStamp, [u8; 32])>) {
        for (path, stamp, hash) in &entries {
            self.cache.insert(path.clone(), (*stamp, *hash));
        }
        self.fresh.extend(entries);
    }

    /// Write the hashes computed so far back to the cache.
    pub fn flush(&mut self, db: &mut Db) -> Result<()> {
        db.store_file_hashes(&self.fresh)?;
        self.fresh.clear();
        Ok(())
    }

    /// Hash a file or directory (memoised for the life of this hasher).
    pub fn tree(&mut self, root: &Path) -> Result<Tree> {
        if let Some(tree) = self.trees.get(root) {
            return Ok(tree.clone());
        }
        let meta =
            std::fs::metadata(root).with_context(|| format!("cannot read {}", root.display()))?;
        let mut entries = if meta.is_dir() {
            walk(root, &self.exclude, &self.walked)?.as_ref().clone()
        } else {
            vec![(String::new(), root.to_path_buf(), meta)]
        };
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let paths: Vec<(PathBuf, std::fs::Metadata)> = entries
            .iter()
            .map(|(_, p, m)| (p.clone(), m.clone()))
            .collect();
        let hashes = self.hash_files(&paths, false)?;
        let mut digest = blake3::Hasher::new();
        let mut files = Vec::with_capacity(entries.len());
        let mut bytes = 0;
        for ((rel, _, meta), hash) in entries.into_iter().zip(hashes) {
            digest.update(rel.as_bytes());
            digest.update(&[0]);
            digest.update(&hash);
            bytes += meta.len();
            files.push((rel, hex(&hash)));
        }
        let tree = Tree {
            digest: digest.finalize().to_hex().to_string(),
            files,
            bytes,
        };
        self.trees.insert(root.to_path_buf(), tree.clone());
        Ok(tree)
    }

    /// Content hashes of `files`, from the cache where the stat fields still match
    /// (unless `full`), else read and hashed in parallel.
    pub fn hash_files(
        &mut self,
        files: &[(PathBuf, std::fs::Metadata)],
        full: bool,
    ) -> Result<Vec<[u8; 32]>> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(i64::MAX);
        let mut out = vec![[0u8; 32]; files.len()];
        let mut todo = Vec::new();
        for (i, (path, meta)) in files.iter().enumerate() {
            let stamp = stamp_of(meta);
            let key = path.to_string_lossy();
            match self.cache.get(key.as_ref()) {
                Some((cached, hash)) if !full && *cached == stamp => {
                    out[i] = *hash;
                    self.stats.cache_hits += 1;
                }
                _ => todo.push((i, stamp)),
            }
        }
        let computed: Vec<Result<[u8; 32]>> = todo
            .par_iter()
            .map(|(i, stamp)| hash_file(&files[*i].0, stamp.size))
            .collect();
        for ((i, stamp), hash) in todo.into_iter().zip(computed) {
            let hash = hash?;
            out[i] = hash;
            self.stats.files_hashed += 1;
            self.stats.bytes_hashed += stamp.size;
            let key = files[i].0.to_string_lossy().into_owned();
            self.cache.insert(key.clone(), (stamp, hash));
            if now - stamp.mtime_ns > RACY_WINDOW_NS {
                self.fresh.push((key, stamp, hash));
            }
        }
        Ok(out)
    }
}

/// Hash one file's content.
pub fn hash_file(path: &Path, size: u64) -> Result<[u8; 32]> {
    let mut hasher = blake3::Hasher::new();
    if size >= MMAP_THRESHOLD {
        hasher
            .update_mmap_rayon(path)
            .with_context(|| format!("cannot hash {}", path.display()))?;
    } else {
        let mut file =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut buf = Vec::with_capacity(size as usize + 1);
        file.read_to_end(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        hasher.update(&buf);
    }
    Ok(*hasher.finalize().as_bytes())
}

pub fn stamp_of(meta: &std::fs::Metadata) -> FileStamp {
    FileStamp {
        size: meta.len(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        inode: meta.ino(),
    }
}

pub fn hex(bytes: &[u8; 32]) -> String {
    blake3::Hash::from_bytes(*bytes).to_hex().to_string()
}

/// One regular file found by a walk: path relative to the walked directory, and its stat.
type Entry = (String, PathBuf, std::fs::Metadata);

/// Regular files under `dir`, memoised per directory so overlapping deps (a
/// directory and its parent) stat each file once; subdirectories are walked in
/// parallel (a no-op run is mostly `stat` calls). Symlinks to files are followed,
/// symlinked directories are not, so a link loop cannot trap the walk; dangling
/// links (and link loops) are skipped.
fn walk(
    dir: &Path,
    exclude: &[PathBuf],
    memo: &Mutex<HashMap<PathBuf, Arc<Vec<Entry>>>>,
) -> Result<Arc<Vec<Entry>>> {
    if let Some(found) = memo.lock().ok().and_then(|m| m.get(dir).cloned()) {
        return Ok(found);
    }
    let mut out = Vec::new();
    let mut subdirs = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            if !exclude.iter().any(|e| e == &path) {
                subdirs.push((name, path));
            }
            continue;
        }
        let meta = if file_type.is_symlink() {
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => m,
                Ok(_) => continue,
                // A dangling link or a link loop has no content: it cannot
                // change a stage's output, so it does not enter the digest.
                Err(_) => continue,
            }
        } else if file_type.is_file() {
            entry.metadata()?
        } else {
            continue;
        };
        out.push((name, path, meta));
    }
    let nested: Vec<Arc<Vec<Entry>>> = subdirs
        .par_iter()
        .map(|(_, path)| walk(path, exclude, memo))
        .collect::<Result<_>>()?;
    for ((name, _), entries) in subdirs.iter().zip(nested) {
        out.extend(
            entries
                .iter()
                .map(|(rel, p, m)| (format!("{name}/{rel}"), p.clone(), m.clone())),
        );
    }
    let out = Arc::new(out);
    if let Ok(mut m) = memo.lock() {
        m.insert(dir.to_path_buf(), Arc::clone(&out));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite")).unwrap();
        (dir, db)
    }

    #[test]
    fn digest_tracks_content_and_names() {
        let (dir, db) = setup();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("a.txt"), "a").unwrap();
        std::fs::write(src.join("sub/b.txt"), "b").unwrap();
        let d1 = Hasher::new(&db, vec![]).unwrap().tree(&src).unwrap();
        assert_eq!(d1.files.len(), 2);
        assert_eq!(d1.files[1].0, "sub/b.txt");
        std::fs::write(src.join("sub/b.txt"), "B").unwrap();
        let d2 = Hasher::new(&db, vec![]).unwrap().tree(&src).unwrap();
        assert_ne!(d1.digest, d2.digest);
        std::fs::rename(src.join("sub/b.txt"), src.join("sub/c.txt")).unwrap();
        let d3 = Hasher::new(&db, vec![]).unwrap().tree(&src).unwrap();
        assert_ne!(d2.digest, d3.digest);
    }

    #[test]
    fn cache_is_used_only_when_stat_matches() {
        let (dir, mut db) = setup();
        let file = dir.path().join("f");
        std::fs::write(&file, "hello").unwrap();
        // Backdate so the entry is outside the racy window and gets cached.
        let old = SystemTime::now() - std::time::Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let mut h = Hasher::new(&db, vec![]).unwrap();
        let first = h.tree(&file).unwrap();
        assert_eq!(h.stats.files_hashed, 1);
        h.flush(&mut db).unwrap();
        let mut h = Hasher::new(&db, vec![]).unwrap();
        assert_eq!(h.tree(&file).unwrap().digest, first.digest);
        assert_eq!((h.stats.files_hashed, h.stats.cache_hits), (0, 1));
        std::fs::write(&file, "hellp").unwrap();
        let mut h = Hasher::new(&db, vec![]).unwrap();
        assert_ne!(h.tree(&file).unwrap().digest, first.digest);
        assert_eq!(h.stats.files_hashed, 1);
    }

    #[test]
    fn dangling_links_and_link_loops_are_skipped() {
        let (dir, db) = setup();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("a.txt"), "a").unwrap();
        std::os::unix::fs::symlink(src.join("nowhere"), src.join("dangling")).unwrap();
        std::os::unix::fs::symlink(src.join("loop2"), src.join("loop1")).unwrap();
        std::os::unix::fs::symlink(src.join("loop1"), src.join("loop2")).unwrap();
        let tree = Hasher::new(&db, vec![]).unwrap().tree(&src).unwrap();
        let names: Vec<&str> = tree.files.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(names, ["a.txt"]);
    }

    #[test]
    fn large_files_hash_like_small_ones() {
        let (dir, _db) = setup();
        let data: Vec<u8> = (0..(MMAP_THRESHOLD as usize + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        let file = dir.path().join("big");
        std::fs::write(&file, &data).unwrap();
        let got = hash_file(&file, data.len() as u64).unwrap();
        assert_eq!(got, *blake3::hash(&data).as_bytes());
    }
}
