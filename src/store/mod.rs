//! The content-addressed artifact store: one directory per key, published by an
//! atomic rename with a manifest, verified before reuse, quarantined when corrupt,
//! guarded by file locks against concurrent runs, and garbage-collected.
//!
//! Layout under the store root:
//! ```text
//! <key>/manifest.json   what the artifact holds (files, sizes, blake3), its recipe, metrics
//! <key>/out/...         the stage's outputs
//! <key>/log.txt         what the stage printed
//! .tmp/                 artifacts being written (never read)
//! .quarantine/          corrupt artifacts moved aside
//! .locks/               one lock file per key being computed; store.lock held by every run
//! .logs/                logs of failed stages
//! xtr.db                file-hash cache and run history (SQLite)
//! ```

pub mod db;
pub mod hashing;
pub mod key;
pub mod listing;
pub mod remote;

use std::fs::{File, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub use db::Db;

/// The store's database file, under its root.
pub const DB_FILE: &str = "xtr.db";
pub use hashing::Hasher;
pub use key::{ArtifactKey, Recipe};

use crate::cancel::CancelToken;
use db::FileStamp;

const MANIFEST: &str = "manifest.json";
const OUT: &str = "out";
const LOG: &str = "log.txt";
const MANIFEST_SCHEMA: u32 = 1;

/// What an artifact directory holds, written last, before publishing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: u32,
    pub key: ArtifactKey,
    pub stage: String,
    pub kind: String,
    pub version: u32,
    pub started_unix: f64,
    pub finished_unix: f64,
    pub files: Vec<ManifestFile>,
    pub metrics: serde_json::Map<String, serde_json::Value>,
    pub recipe: Recipe,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Relative to the artifact's `out/` directory.
    pub path: String,
    pub size: u64,
    pub blake3: String,
}

/// The result of checking an artifact before reuse.
#[derive(Debug)]
pub enum ArtifactState {
    Valid(Box<Manifest>),
    Missing,
    Corrupt(String),
}

/// A local-directory store.
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Open (creating if needed) a store rooted at `root`.
    pub fn open(root: &Path) -> Result<Store> {
        for sub in [".tmp", ".quarantine", ".locks", ".logs", ".work"] {
            std::fs::create_dir_all(root.join(sub)).with_context(|| {
                format!("cannot create the artifact store at {}", root.display())
            })?;
        }
        let readme = root.join("README.md");
        if !readme.exists() {
            // Best effort: the store works without its README.
            let _ = std::fs::write(&readme, STORE_README);
        }
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    /// Open a store that must already exist (commands that only read or delete).
    pub fn open_existing(root: &Path) -> Result<Store> {
        if !root.join(DB_FILE).exists() {
            bail!("{} is not an xtr-pipe store (no {DB_FILE})", root.display());
        }
        Store::open(root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn open_db(&self) -> Result<Db> {
        Db::open(&self.root.join(DB_FILE))
    }

    pub fn artifact_dir(&self, key: &ArtifactKey) -> PathBuf {
        self.root.join(key.as_str())
    }

    /// Where a stage reads an input artifact's outputs.
    pub fn output_dir(&self, key: &ArtifactKey) -> PathBuf {
        self.artifact_dir(key).join(OUT)
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.root.join(".logs")
    }

    /// Check that an artifact is complete and unmodified. Sizes are always
    /// compared; contents are re-hashed where the file's stat changed since it was
    /// hashed, or for every file when `full`.
    pub fn check(
        &self,
        key: &ArtifactKey,
        hasher: &mut Hasher,
        full: bool,
    ) -> Result<ArtifactState> {
        let dir = self.artifact_dir(key);
        if !dir.exists() {
            return Ok(ArtifactState::Missing);
        }
        let manifest = match read_manifest(&dir) {
            Ok(m) => m,
            Err(e) => return Ok(ArtifactState::Corrupt(format!("{e:#}"))),
        };
        if &manifest.key != key {
            return Ok(ArtifactState::Corrupt(format!(
                "manifest names key {}, not {}",
                manifest.key.short(),
                key.short()
            )));
        }
        let out = dir.join(OUT);
        let mut present = Vec::new();
        if out.is_dir() {
            list_files(&out, &out, &mut present)?;
        }
        if present.len() != manifest.files.len() {
            return Ok(ArtifactState::Corrupt(format!(
                "holds {} files, its manifest lists {}",
                present.len(),
                manifest.files.len()
            )));
        }
        let mut stats = Vec::with_capacity(manifest.files.len());
        for f in &manifest.files {
            let path = out.join(&f.path);
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(_) => return Ok(ArtifactState::Corrupt(format!("out/{} is missing", f.path))),
            };
            if meta.len() != f.size {
                return Ok(ArtifactState::Corrupt(format!(
                    "out/{} is {} bytes, its manifest says {}",
                    f.path,
                    meta.len(),
                    f.size
                )));
            }
            stats.push((path, meta));
        }
        let hashes = hasher.hash_files(&stats, full)?;
        for (f, hash) in manifest.files.iter().zip(hashes) {
            if hashing::hex(&hash) != f.blake3 {
                return Ok(ArtifactState::Corrupt(format!(
                    "out/{} does not match its hash",
                    f.path
                )));
            }
        }
        Ok(ArtifactState::Valid(Box::new(manifest)))
    }

    /// Move an artifact aside so it is never used again; returns where it went.
    pub fn quarantine(&self, key: &ArtifactKey) -> Result<PathBuf> {
        let dest =
            self.root
                .join(".quarantine")
                .join(format!("{}.{}", key.as_str(), unique_suffix()));
        std::fs::rename(self.artifact_dir(key), &dest)
            .with_context(|| format!("cannot quarantine artifact {}", key.short()))?;
        Ok(dest)
    }

    /// Take the per-key lock that guards computing `key`. Waits while another
    /// run holds it (calling `on_wait` once), and gives up if `cancel` is set.
    pub fn lock_key(
        &self,
        key: &ArtifactKey,
        cancel: &CancelToken,
        on_wait: impl FnOnce(),
    ) -> Result<KeyLock> {
        let path = self
            .root
            .join(".locks")
            .join(format!("{}.lock", key.as_str()));
        let file = File::create(&path)
            .with_context(|| format!("cannot create lock {}", path.display()))?;
        let mut on_wait = Some(on_wait);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(KeyLock { _file: file }),
                Err(TryLockError::WouldBlock) => {
                    if let Some(f) = on_wait.take() {
                        f();
                    }
                    if cancel.is_cancelled() {
                        bail!("interrupted while waiting for another run");
                    }
                    // A blocking flock would not wake for Ctrl-C; poll instead.
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(TryLockError::Error(e)) => return Err(e).context("locking the store"),
            }
        }
    }

    /// Held (shared) by every run for its whole life; `gc` needs it exclusively.
    pub fn lock_shared(&self) -> Result<File> {
        let file = self.store_lock_file()?;
        file.lock_shared().context("locking the store")?;
        Ok(file)
    }

    fn store_lock_file(&self) -> Result<File> {
        let path = self.root.join(".locks").join("store.lock");
        File::create(&path).with_context(|| format!("cannot create lock {}", path.display()))
    }

    /// Begin writing the artifact for `key`; the caller must hold its key lock.
    /// Leftovers of runs that died while writing this key are removed first.
    pub fn stage_dir(&self, key: &ArtifactKey, _lock: &KeyLock) -> Result<Staging> {
        let tmp = self.root.join(".tmp");
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(key.as_str())
                {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = tmp.join(format!("{}.{}", key.as_str(), unique_suffix()));
        std::fs::create_dir_all(dir.join(OUT))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let log = File::create(dir.join(LOG)).context("cannot create the stage log")?;
        Ok(Staging {
            dir,
            log,
            key: key.clone(),
        })
    }

    /// A stage's working directory for `key` (checkpoints): kept across
    /// interrupted attempts at that key so the next one resumes, removed once
    /// the artifact is published. Created on demand.
    pub fn work_dir(&self, key: &ArtifactKey) -> Result<PathBuf> {
        let dir = self.root.join(".work").join(key.as_str());
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the working directory {}", dir.display()))?;
        Ok(dir)
    }

    /// Drop `key`'s working directory (best effort: it only holds checkpoints).
    pub fn drop_work_dir(&self, key: &ArtifactKey) {
        let _ = std::fs::remove_dir_all(self.root.join(".work").join(key.as_str()));
    }

    /// Delete every artifact whose key is not in `keep`, every working directory
    /// whose key is not in `resumable`, and leftovers in `.tmp/` and
    /// `.quarantine/`. Fails rather than waits if a run holds the store.
    pub fn gc(
        &self,
        keep: &std::collections::HashSet<String>,
        resumable: &std::collections::HashSet<String>,
        dry_run: bool,
    ) -> Result<GcReport> {
        let lock = self.store_lock_file()?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                bail!(
                    "an xtr-pipe run is using the store {}; run gc when it has finished",
                    self.root.display()
                )
            }
            Err(TryLockError::Error(e)) => return Err(e).context("locking the store"),
        }
        let mut report = GcReport::default();
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let doomed = match ArtifactKey::parse(&name) {
                Some(_) => !keep.contains(&name),
                None => false,
            };
            if doomed {
                report.removed.push(name.clone());
                report.bytes += dir_size(&entry.path());
                if !dry_run {
                    std::fs::remove_dir_all(entry.path())
                        .with_context(|| format!("cannot remove {}", entry.path().display()))?;
                    let _ =
                        std::fs::remove_file(self.root.join(".locks").join(format!("{name}.lock")));
                }
            } else if ArtifactKey::parse(&name).is_some() {
                report.kept += 1;
            }
        }
        // Created lazily: an older store may not have `.work/`.
        if let Ok(entries) = std::fs::read_dir(self.root.join(".work")) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if resumable.contains(&name) {
                    continue;
                }
                report.bytes += dir_size(&entry.path());
                report.work_dirs += 1;
                if !dry_run {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        for sub in [".tmp", ".quarantine"] {
            for entry in std::fs::read_dir(self.root.join(sub))?.flatten() {
                report.bytes += dir_size(&entry.path());
                report.leftovers += 1;
                if !dry_run {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        report.removed.sort();
        Ok(report)
    }
}

/// What `gc` removed (or would remove).
#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub removed: Vec<String>,
    pub kept: usize,
    pub leftovers: usize,
    /// Working directories of attempts no pipeline's last run can resume.
    pub work_dirs: usize,
    pub bytes: u64,
}

/// Held while a key is being computed.
pub struct KeyLock {
    _file: File,
}

/// An artifact being written in `.tmp/`: invisible until `publish`.
pub struct Staging {
    dir: PathBuf,
    log: File,
    key: ArtifactKey,
}

/// A published artifact and the stat fields of its files, for the hash cache.
pub struct Published {
    pub manifest: Manifest,
    pub stamps: Vec<(String, FileStamp, [u8; 32])>,
}

impl Staging {
    pub fn out_dir(&self) -> PathBuf {
        self.dir.join(OUT)
    }

    pub fn log(&self) -> Result<File> {
        Ok(self.log.try_clone()?)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join(LOG)
    }

    /// Hash the outputs, write the manifest, fsync everything, and rename the
    /// directory into place. An artifact already under this key (forced rerun,
    /// or one found corrupt) is quarantined first.
    pub fn publish(self, store: &Store, mut manifest: Manifest) -> Result<Published> {
        let out = self.out_dir();
        let mut files = Vec::new();
        list_files(&out, &out, &mut files)?;
        files.sort();
        let mut entries = Vec::with_capacity(files.len());
        for rel in &files {
            let path = out.join(rel);
            let meta = std::fs::metadata(&path)?;
            let hash = hashing::hash_file(&path, meta.len())?;
            File::open(&path)?
                .sync_all()
                .with_context(|| format!("cannot sync {}", path.display()))?;
            entries.push((rel.clone(), hashing::stamp_of(&meta), hash));
        }
        manifest.files = entries
            .iter()
            .map(|(rel, stamp, hash)| ManifestFile {
                path: rel.clone(),
                size: stamp.size,
                blake3: hashing::hex(hash),
            })
            .collect();
        let mut f = File::create(self.dir.join(MANIFEST))?;
        f.write_all(serde_json::to_string_pretty(&manifest)?.as_bytes())?;
        f.sync_all()?;
        self.log.sync_all()?;
        sync_dirs(&out)?;
        let target = store.artifact_dir(&self.key);
        if target.exists() {
            store.quarantine(&self.key)?;
        }
        std::fs::rename(&self.dir, &target)
            .with_context(|| format!("cannot publish artifact {}", target.display()))?;
        File::open(store.root())?.sync_all()?;
        let final_out = target.join(OUT);
        let stamps = entries
            .into_iter()
            .map(|(rel, stamp, hash)| {
                (
                    final_out.join(rel).to_string_lossy().into_owned(),
                    stamp,
                    hash,
                )
            })
            .collect();
        Ok(Published { manifest, stamps })
    }

    /// Give up on this artifact, keeping its log under `.logs/` for the user.
    pub fn abandon(self, store: &Store, log_name: &str) -> Option<PathBuf> {
        let dest = store.logs_dir().join(log_name);
        let kept = std::fs::rename(self.log_path(), &dest).is_ok();
        let _ = std::fs::remove_dir_all(&self.dir);
        kept.then_some(dest)
    }
}

pub fn read_manifest(artifact_dir: &Path) -> Result<Manifest> {
    let path = artifact_dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let manifest: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid manifest", path.display()))?;
    if manifest.schema != MANIFEST_SCHEMA {
        bail!(
            "{} has manifest schema {}, expected {MANIFEST_SCHEMA}",
            path.display(),
            manifest.schema
        );
    }
    Ok(manifest)
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Relative paths of regular files under `dir` (symlinks count as files).
fn list_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            list_files(root, &path, out)?;
        } else {
            out.push(
                path.strip_prefix(root)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    Ok(())
}

fn sync_dirs(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.file_type()?.is_dir() {
            sync_dirs(&entry.path())?;
        }
    }
    File::open(dir)?.sync_all()?;
    if let Some(parent) = dir.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

fn dir_size(path: &Path) -> u64 {
    let mut files = Vec::new();
    if list_files(path, path, &mut files).is_err() {
        return 0;
    }
    files
        .iter()
        .filter_map(|f| std::fs::metadata(path.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

const STORE_README: &str = "# xtr-pipe artifact store\n\n\
Each directory named by a 64-digit key is one artifact: `manifest.json` (files, sizes,\n\
blake3 hashes, the recipe that produced it, metrics), `out/` (the stage's outputs) and\n\
`log.txt`. The key is the blake3 hash of the recipe: the stage kind and version, its\n\
params, the keys of its inputs and the hashes of its declared files.\n\n\
`.tmp/` holds artifacts being written, `.quarantine/` corrupt ones moved aside,\n\
`.logs/` the logs of failed stages, `xtr.db` the file-hash cache and run history.\n\
Delete anything here at will; `xtr-pipe gc` does it safely.\n";
