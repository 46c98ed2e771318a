//! Content hashing of declared files and directories, with a stat-keyed cache
//! so an unchanged tree costs one `stat` per file, not one read.
//!
//! A declared directory is walked once per run (subdirectories and the files of
//! large directories in parallel): each file is stat'ed once and its content hash
//! taken from the cache or computed right there, into a tree of [`Dir`] nodes
//! shared through `Arc`. Every stage that declares the tree, and every dep inside
//! it, shares that one walk; no listing is copied per stage.
//!
//! A tree's digest (what keys see) covers each file's relative path and content
//! hash, in sorted order. Each directory also has a node digest over its own
//! entries (files by content hash, subdirectories by node digest), so the database
//! keeps one row per distinct directory ([`super::listing`]) and `status` finds
//! which files changed by descending only where nodes differ.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::{Context, Result};
use rayon::prelude::*;

use super::db::{path_key, Db, FileStamp};

/// Files at least this large are hashed with blake3's memory-mapped, multithreaded path.
const MMAP_THRESHOLD: u64 = 4 << 20;
/// Files modified this recently may still change within the stat granularity: never cache them.
const RACY_WINDOW_NS: i64 = 2_000_000_000;
/// Files of one directory handed to a rayon task together (stat, cache lookup, maybe read).
const FILES_PER_TASK: usize = 64;
/// How much of a tree's listing is fed to its digest at once.
const DIGEST_BUF: usize = 64 << 10;
/// Read buffer for small files (one per thread).
const READ_BUF: usize = 256 << 10;

/// One file of a [`Dir`]: where its name ends in the directory's name arena, its
/// size and content hash.
#[derive(Debug, Clone, Copy)]
struct FileEntry {
    name_end: u32,
    size: u64,
    hash: [u8; 32],
}

/// A walked directory: its files (sorted by name, names in one arena) and its
/// subdirectories (sorted as their paths sort: by `name/`), each shared.
#[derive(Debug)]
pub struct Dir {
    names: String,
    files: Vec<FileEntry>,
    dirs: Vec<(Box<str>, Arc<Dir>)>,
    node: [u8; 32],
    file_count: u64,
    bytes: u64,
}

/// One entry of a directory, in the order full paths sort.
pub enum DirEntry<'a> {
    File { name: &'a str, hash: &'a [u8; 32] },
    Dir { name: &'a str, dir: &'a Arc<Dir> },
}

impl Dir {
    fn new(names: String, files: Vec<FileEntry>, dirs: Vec<(Box<str>, Arc<Dir>)>) -> Dir {
        let mut dir = Dir {
            file_count: files.len() as u64 + dirs.iter().map(|(_, d)| d.file_count).sum::<u64>(),
            bytes: files.iter().map(|f| f.size).sum::<u64>()
                + dirs.iter().map(|(_, d)| d.bytes).sum::<u64>(),
            names,
            files,
            dirs,
            node: [0; 32],
        };
        // Hashed in one piece: blake3 then hashes its 1 KiB chunks in parallel lanes.
        let mut buf =
            Vec::with_capacity(dir.names.len() + 34 * dir.files.len() + 64 * dir.dirs.len());
        for entry in dir.entries() {
            let (tag, name, hash) = match entry {
                DirEntry::File { name, hash } => (b'f', name, hash),
                DirEntry::Dir { name, dir } => (b'd', name, &dir.node),
            };
            buf.push(tag);
            buf.extend_from_slice(name.as_bytes());
            buf.push(0);
            buf.extend_from_slice(hash);
        }
        dir.node = *blake3::hash(&buf).as_bytes();
        dir
    }

    fn file_name(&self, i: usize) -> &str {
        let start = if i == 0 {
            0
        } else {
            self.files[i - 1].name_end as usize
        };
        &self.names[start..self.files[i].name_end as usize]
    }

    /// The node digest: this directory's entries, subdirectories by their node digest.
    pub fn node(&self) -> &[u8; 32] {
        &self.node
    }

    /// Files in this directory and below.
    pub fn file_count(&self) -> u64 {
        self.file_count
    }

    /// Bytes of the files in this directory and below.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The entries, files and subdirectories merged in the order their full paths sort.
    pub fn entries(&self) -> impl Iterator<Item = DirEntry<'_>> {
        let (mut f, mut d) = (0, 0);
        std::iter::from_fn(move || {
            let take_file = match (f < self.files.len(), d < self.dirs.len()) {
                (false, false) => return None,
                (true, false) => true,
                (false, true) => false,
                (true, true) => {
                    file_before_dir(self.file_name(f), &self.dirs[d].0) == Ordering::Less
                }
            };
            Some(if take_file {
                f += 1;
                DirEntry::File {
                    name: self.file_name(f - 1),
                    hash: &self.files[f - 1].hash,
                }
            } else {
                d += 1;
                DirEntry::Dir {
                    name: &self.dirs[d - 1].0,
                    dir: &self.dirs[d - 1].1,
                }
            })
        })
    }

    /// Call `f(relative path, content hash)` for every file below, in sorted path order.
    pub fn for_each_file(&self, prefix: &mut String, f: &mut dyn FnMut(&str, &[u8; 32])) {
        let len = prefix.len();
        for entry in self.entries() {
            match entry {
                DirEntry::File { name, hash } => {
                    prefix.push_str(name);
                    f(prefix, hash);
                }
                DirEntry::Dir { name, dir } => {
                    prefix.push_str(name);
                    prefix.push('/');
                    dir.for_each_file(prefix, f);
                }
            }
            prefix.truncate(len);
        }
    }
}

/// How a file name sorts against a subdirectory's entries (`dir/...`).
fn file_before_dir(file: &str, dir: &str) -> Ordering {
    file.bytes().cmp(dir.bytes().chain(std::iter::once(b'/')))
}

/// A hashed file or directory, cheap to clone (its listing is shared).
#[derive(Debug, Clone)]
pub struct Tree {
    /// Over the sorted `(relative path, hash)` listing: what keys see.
    pub digest: String,
    /// The listing; a single file is a directory holding one file named "".
    pub root: Arc<Dir>,
}

impl Tree {
    /// The listing as `(relative path, blake3 hex)` pairs (tests, small trees).
    pub fn files(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        self.root.for_each_file(&mut String::new(), &mut |p, h| {
            out.push((p.to_string(), hex(h)))
        });
        out
    }

    pub fn bytes(&self) -> u64 {
        self.root.bytes
    }
}

/// Statistics of the hashing work done, for benchmarks, `--verbose` and the
/// tests that hold a no-op run to one walk of each tree.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HashStats {
    pub files_hashed: u64,
    pub bytes_hashed: u64,
    pub cache_hits: u64,
    /// Files stat'ed by walks (each file of a declared tree once per run).
    pub files_statted: u64,
    /// Directories listed by walks.
    pub dirs_listed: u64,
    /// Tree digests computed (one per distinct declared path per run).
    pub trees_digested: u64,
}

#[derive(Default)]
struct Counters {
    files_hashed: AtomicU64,
    bytes_hashed: AtomicU64,
    cache_hits: AtomicU64,
    files_statted: AtomicU64,
    dirs_listed: AtomicU64,
    trees_digested: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Cached {
    stamp: FileStamp,
    hash: [u8; 32],
}

/// The file-hash cache in memory, keyed as in the database by [`path_key`] of
/// the absolute path (no string per file). Two paths meeting on one key only
/// cost a re-hash: an entry is used only when the file's stat fields (inode,
/// size, times) match.
type FileCache = HashMap<u64, Cached, BuildHasherDefault<KeyHasher>>;

/// The keys are already hashes: use them as they are.
#[derive(Default)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A freshly computed hash to write back to the cache: path key, stamp, hash.
type Fresh = (u64, FileStamp, [u8; 32]);

/// Hashes files, consulting and refreshing the file-hash cache.
pub struct Hasher {
    cache: FileCache,
    fresh: Mutex<Vec<Fresh>>,
    trees: HashMap<PathBuf, Tree>,
    walked: Mutex<HashMap<PathBuf, Arc<Dir>>>,
    exclude: Vec<PathBuf>,
    counters: Counters,
}

impl Hasher {
    /// `exclude` lists directories never descended into (the store itself).
    pub fn new(db: &Db, exclude: Vec<PathBuf>) -> Result<Hasher> {
        let mut hasher = Hasher::without_cache(exclude);
        hasher.cache.reserve(db.file_hash_count()?);
        db.for_each_file_hash(|key, stamp, hash| {
            hasher.cache.insert(key, Cached { stamp, hash: *hash });
        })?;
        Ok(hasher)
    }

    /// A hasher with an empty cache: every file is read.
    pub fn without_cache(exclude: Vec<PathBuf>) -> Hasher {
        Hasher {
            cache: FileCache::default(),
            fresh: Mutex::new(Vec::new()),
            trees: HashMap::new(),
            walked: Mutex::new(HashMap::new()),
            exclude,
            counters: Counters::default(),
        }
    }

    pub fn stats(&self) -> HashStats {
        let c = &self.counters;
        HashStats {
            files_hashed: c.files_hashed.load(Relaxed),
            bytes_hashed: c.bytes_hashed.load(Relaxed),
            cache_hits: c.cache_hits.load(Relaxed),
            files_statted: c.files_statted.load(Relaxed),
            dirs_listed: c.dirs_listed.load(Relaxed),
            trees_digested: c.trees_digested.load(Relaxed),
        }
    }

    /// Record hashes computed elsewhere (a just-published artifact's files, which
    /// nothing writes again, so the racy-mtime rule does not apply).
    pub fn remember(&mut self, entries: &[(String, FileStamp, [u8; 32])]) {
        for (path, stamp, hash) in entries {
            let key = path_key(path);
            self.cache.insert(
                key,
                Cached {
                    stamp: *stamp,
                    hash: *hash,
                },
            );
            self.fresh_mut().push((key, *stamp, *hash));
        }
    }

    fn fresh_mut(&mut self) -> &mut Vec<Fresh> {
        self.fresh.get_mut().unwrap_or_else(|e| e.into_inner())
    }

    /// Write the hashes computed so far back to the cache, in key order (rows
    /// appended to the table's B-tree rather than inserted all over it: 1M fresh
    /// entries cost seconds less). The sort is stable, so of two entries for one
    /// file the later wins.
    pub fn flush(&mut self, db: &mut Db) -> Result<()> {
        let mut fresh = std::mem::take(self.fresh_mut());
        fresh.sort_by_key(|e| e.0);
        db.store_file_hashes(&fresh)
    }

    /// Hash a file or directory: walked once for the life of this hasher, and
    /// shared (a clone is a pointer copy).
    pub fn tree(&mut self, root: &Path) -> Result<Tree> {
        if let Some(tree) = self.trees.get(root) {
            return Ok(tree.clone());
        }
        let meta =
            std::fs::metadata(root).with_context(|| format!("cannot read {}", root.display()))?;
        let walker = self.walker();
        let dir = if meta.is_dir() {
            walker.dir(root)?
        } else {
            let key = root.to_string_lossy();
            let open = || std::fs::File::open(root);
            let file = walker.file(&key, open, || root.to_path_buf(), &meta)?;
            Arc::new(Dir::new(String::new(), vec![file], Vec::new()))
        };
        // Fed to blake3 in large pieces, which it hashes in parallel lanes.
        let mut digest = blake3::Hasher::new();
        let mut buf = Vec::with_capacity(DIGEST_BUF + 4096);
        dir.for_each_file(&mut String::new(), &mut |rel, hash| {
            buf.extend_from_slice(rel.as_bytes());
            buf.push(0);
            buf.extend_from_slice(hash);
            if buf.len() >= DIGEST_BUF {
                digest.update(&buf);
                buf.clear();
            }
        });
        digest.update(&buf);
        self.counters.trees_digested.fetch_add(1, Relaxed);
        let tree = Tree {
            digest: digest.finalize().to_hex().to_string(),
            root: dir,
        };
        self.trees.insert(root.to_path_buf(), tree.clone());
        Ok(tree)
    }

    fn walker(&self) -> Walker<'_> {
        let now_ns = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(i64::MAX);
        Walker {
            cache: &self.cache,
            exclude: &self.exclude,
            memo: &self.walked,
            fresh: &self.fresh,
            counters: &self.counters,
            now_ns,
        }
    }

    /// Content hashes of `files`, from the cache where the stat fields still match
    /// (unless `full`), else read and hashed in parallel.
    pub fn hash_files(
        &mut self,
        files: &[(PathBuf, std::fs::Metadata)],
        full: bool,
    ) -> Result<Vec<[u8; 32]>> {
        let mut out = vec![[0u8; 32]; files.len()];
        let mut todo = Vec::new();
        for (i, (path, meta)) in files.iter().enumerate() {
            let stamp = stamp_of(meta);
            let key = path_key(&path.to_string_lossy());
            match self.cache.get(&key) {
                Some(c) if !full && c.stamp == stamp => {
                    out[i] = c.hash;
                    self.counters.cache_hits.fetch_add(1, Relaxed);
                }
                _ => todo.push((i, key, stamp)),
            }
        }
        let walker = self.walker();
        let hash = |(i, key, stamp): &(usize, u64, FileStamp)| {
            let path = &files[*i].0;
            walker.hash_fresh(*key, stamp, || std::fs::File::open(path), || path.clone())
        };
        // The pool only for real work: waking it costs more than a cache hit.
        let computed = if todo.len() > 1 {
            todo.par_iter().map(hash).collect::<Result<Vec<_>>>()?
        } else {
            todo.iter().map(hash).collect::<Result<Vec<_>>>()?
        };
        for ((i, key, stamp), hash) in todo.into_iter().zip(computed) {
            out[i] = hash;
            self.cache.insert(key, Cached { stamp, hash });
        }
        Ok(out)
    }
}

/// What a walk shares between its parallel tasks.
struct Walker<'a> {
    cache: &'a FileCache,
    exclude: &'a [PathBuf],
    memo: &'a Mutex<HashMap<PathBuf, Arc<Dir>>>,
    fresh: &'a Mutex<Vec<Fresh>>,
    counters: &'a Counters,
    now_ns: i64,
}

impl Walker<'_> {
    /// One file's entry: its hash from the cache when its stat fields match,
    /// else read and hashed (and queued for the cache unless modified very
    /// recently). `open` is only called for a file that must be read, `path` only
    /// to name it in an error.
    fn file(
        &self,
        key: &str,
        open: impl FnOnce() -> std::io::Result<std::fs::File>,
        path: impl FnOnce() -> PathBuf,
        meta: &std::fs::Metadata,
    ) -> Result<FileEntry> {
        let stamp = stamp_of(meta);
        let key = path_key(key);
        let hash = match self.cache.get(&key) {
            Some(c) if c.stamp == stamp => {
                self.counters.cache_hits.fetch_add(1, Relaxed);
                c.hash
            }
            _ => self.hash_fresh(key, &stamp, open, path)?,
        };
        Ok(FileEntry {
            name_end: 0,
            size: stamp.size,
            hash,
        })
    }

    fn hash_fresh(
        &self,
        key: u64,
        stamp: &FileStamp,
        open: impl FnOnce() -> std::io::Result<std::fs::File>,
        path: impl FnOnce() -> PathBuf,
    ) -> Result<[u8; 32]> {
        let hash = open()
            .and_then(|file| hash_open(file, stamp.size))
            .with_context(|| format!("cannot hash {}", path().display()))?;
        self.counters.files_hashed.fetch_add(1, Relaxed);
        self.counters.bytes_hashed.fetch_add(stamp.size, Relaxed);
        if self.now_ns - stamp.mtime_ns > RACY_WINDOW_NS {
            if let Ok(mut fresh) = self.fresh.lock() {
                fresh.push((key, *stamp, hash));
            }
        }
        Ok(hash)
    }

    /// Regular files under `dir`, memoised per directory so overlapping deps (a
    /// directory and its parent) stat each file once; subdirectories are walked in
    /// parallel, and a large directory's files too (a no-op run is mostly `stat`
    /// calls). Symlinks to files are followed, symlinked directories are not, so a
    /// link loop cannot trap the walk; dangling links (and link loops) are skipped.
    fn dir(&self, dir: &Path) -> Result<Arc<Dir>> {
        if let Some(found) = self.memo.lock().ok().and_then(|m| m.get(dir).cloned()) {
            return Ok(found);
        }
        self.counters.dirs_listed.fetch_add(1, Relaxed);
        let mut candidates = Vec::new();
        let mut subdirs = Vec::new();
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            let file_type = entry.file_type()?;
            if file_type.is_dir() {
                let path = entry.path();
                if !self.exclude.iter().any(|e| e == &path) {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    subdirs.push((name.into_boxed_str(), path));
                }
            } else if file_type.is_file() || file_type.is_symlink() {
                candidates.push((entry, file_type.is_symlink()));
            }
        }
        let base = dir.to_string_lossy();
        let sep = if base.ends_with('/') { "" } else { "/" };
        // Opened on the first file that must be read: files open relative to it.
        let dir_file = std::sync::OnceLock::new();
        let open = |entry: &std::fs::DirEntry| match dir_file
            .get_or_init(|| std::fs::File::open(dir).ok())
        {
            Some(d) => open_at(d, &entry.file_name()),
            None => std::fs::File::open(entry.path()),
        };
        let files = candidates
            .par_iter()
            .with_min_len(FILES_PER_TASK)
            .map_init(String::new, |key, (entry, link)| -> Result<Option<_>> {
                let meta = if *link {
                    match std::fs::metadata(entry.path()) {
                        Ok(m) if m.is_file() => m,
                        // A dangling link or a link loop has no content: it cannot
                        // change a stage's output, so it does not enter the digest.
                        _ => return Ok(None),
                    }
                } else {
                    entry.metadata()?
                };
                self.counters.files_statted.fetch_add(1, Relaxed);
                let name = entry
                    .file_name()
                    .into_string()
                    .unwrap_or_else(|n| n.to_string_lossy().into_owned());
                key.clear();
                key.push_str(&base);
                key.push_str(sep);
                key.push_str(&name);
                let file = self.file(key, || open(entry), || entry.path(), &meta)?;
                Ok(Some((name, file)))
            })
            .collect::<Result<Vec<_>>>()?;
        drop(candidates);
        let mut files: Vec<(String, FileEntry)> = files.into_iter().flatten().collect();
        files.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut names = String::with_capacity(files.iter().map(|f| f.0.len()).sum());
        let files = files
            .into_iter()
            .map(|(name, mut file)| {
                names.push_str(&name);
                file.name_end = names.len() as u32;
                file
            })
            .collect();
        subdirs.sort_unstable_by(|a, b| {
            let slash = |s: &str| s.bytes().chain(std::iter::once(b'/')).collect::<Vec<u8>>();
            slash(&a.0).cmp(&slash(&b.0))
        });
        let nested: Vec<Arc<Dir>> = subdirs
            .par_iter()
            .map(|(_, path)| self.dir(path))
            .collect::<Result<_>>()?;
        let dirs = subdirs
            .into_iter()
            .zip(nested)
            .map(|((name, _), d)| (name, d))
            .collect();
        let out = Arc::new(Dir::new(names, files, dirs));
        if let Ok(mut m) = self.memo.lock() {
            m.insert(dir.to_path_buf(), Arc::clone(&out));
        }
        Ok(out)
    }
}

thread_local! {
    static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Hash one file's content.
pub fn hash_file(path: &Path, size: u64) -> Result<[u8; 32]> {
    std::fs::File::open(path)
        .and_then(|file| hash_open(file, size))
        .with_context(|| format!("cannot hash {}", path.display()))
}

/// Hash an open file of `size` bytes (its size when stat'ed: a file that grows
/// between its stat and this read is hashed as its first `size` bytes, and again
/// on the next run, its stat having changed). Large files are memory-mapped and
/// hashed on several threads; small ones read through a per-thread buffer.
fn hash_open(mut file: std::fs::File, size: u64) -> std::io::Result<[u8; 32]> {
    let mut hasher = blake3::Hasher::new();
    if size >= MMAP_THRESHOLD {
        // SAFETY: the map is only read, and dropped before returning; a file
        // truncated meanwhile is the same hazard any reader of it has.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        hasher.update_rayon(&map);
        return Ok(*hasher.finalize().as_bytes());
    }
    BUF.with_borrow_mut(|buf| -> std::io::Result<()> {
        buf.resize(READ_BUF, 0);
        let mut left = size as usize;
        while left > 0 {
            let want = left.min(buf.len());
            let n = match file.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
            left -= n;
        }
        Ok(())
    })?;
    Ok(*hasher.finalize().as_bytes())
}

/// Open `name` in the directory open as `dir` (no walk of the whole path).
fn open_at(dir: &std::fs::File, name: &std::ffi::OsStr) -> std::io::Result<std::fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(name.as_bytes())?;
    // SAFETY: both the directory fd and the name outlive the call; a returned fd
    // is owned by the File made from it.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
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
        let files = d1.files();
        assert_eq!(files.len(), 2);
        assert_eq!(files[1].0, "sub/b.txt");
        std::fs::write(src.join("sub/b.txt"), "B").unwrap();
        let d2 = Hasher::new(&db, vec![]).unwrap().tree(&src).unwrap();
        assert_ne!(d1.digest, d2.digest);
        std::fs::rename(src.join("sub/b.txt"), src.join("sub/c.txt")).unwrap();
        let d3 = Hasher::new(&db, vec![]).unwrap().tree(&src).unwrap();
        assert_ne!(d2.digest, d3.digest);
    }

    /// The digest is the one earlier versions computed (a flat, sorted listing),
    /// so existing artifacts keep their keys: names that sort differently as
    /// whole paths than as directory entries (`a-b` < `a/` < `a0`) included.
    #[test]
    fn digest_is_over_the_listing_sorted_as_whole_paths() {
        let (dir, db) = setup();
        let src = dir.path().join("src");
        for f in ["a/x", "a-b", "a0", "a.txt", "b/c/d", "b/c.e", "Z", "a/y/z"] {
            let p = src.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, f).unwrap();
        }
        let tree = Hasher::new(&db, vec![]).unwrap().tree(&src).unwrap();
        let got: Vec<String> = tree.files().into_iter().map(|f| f.0).collect();
        let mut want = got.clone();
        want.sort();
        assert_eq!(got, want);
        let mut digest = blake3::Hasher::new();
        for name in &want {
            digest.update(name.as_bytes());
            digest.update(&[0]);
            digest.update(blake3::hash(name.as_bytes()).as_bytes());
        }
        assert_eq!(tree.digest, digest.finalize().to_hex().to_string());
        assert_eq!(tree.root.file_count(), 8);
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
        assert_eq!(h.stats().files_hashed, 1);
        h.flush(&mut db).unwrap();
        let mut h = Hasher::new(&db, vec![]).unwrap();
        assert_eq!(h.tree(&file).unwrap().digest, first.digest);
        assert_eq!((h.stats().files_hashed, h.stats().cache_hits), (0, 1));
        std::fs::write(&file, "hellp").unwrap();
        let mut h = Hasher::new(&db, vec![]).unwrap();
        assert_ne!(h.tree(&file).unwrap().digest, first.digest);
        assert_eq!(h.stats().files_hashed, 1);
    }

    #[test]
    fn overlapping_deps_share_one_walk() {
        let (dir, db) = setup();
        let src = dir.path().join("src");
        for i in 0..300 {
            let p = src.join(format!("d{}/f{i}", i % 3));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, i.to_string()).unwrap();
        }
        let mut h = Hasher::new(&db, vec![]).unwrap();
        let sub = h.tree(&src.join("d1")).unwrap();
        let all = h.tree(&src).unwrap();
        for _ in 0..10 {
            assert_eq!(h.tree(&src).unwrap().digest, all.digest);
        }
        let s = h.stats();
        assert_eq!(
            (s.files_statted, s.dirs_listed, s.trees_digested),
            (300, 4, 2)
        );
        assert!(Arc::ptr_eq(&sub.root, &all.root.dirs[1].1));
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
        let names: Vec<String> = tree.files().into_iter().map(|f| f.0).collect();
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
        let small = dir.path().join("small");
        std::fs::write(&small, &data[..READ_BUF + 5]).unwrap();
        let got = hash_file(&small, READ_BUF as u64 + 5).unwrap();
        assert_eq!(got, *blake3::hash(&data[..READ_BUF + 5]).as_bytes());
    }
}
