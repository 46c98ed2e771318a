//! A shared artifact cache on S3-compatible storage: artifacts move between a
//! local [`Store`] and a bucket by key, verified against their manifest's blake3
//! before anything is published locally, and committed remotely by writing the
//! manifest last.
//!
//! Layout under the remote's prefix:
//! ```text
//! blobs/<blake3>          one object per distinct file content (outputs and logs)
//! artifacts/<key>.json    the commit marker: the artifact's manifest and its log's hash
//! ```
//! Blobs are named by their content, so two machines uploading one key at once
//! write identical bytes under each name, and whichever marker lands last names
//! blobs that are all there: one valid artifact either way. A reader only looks
//! for markers, so a killed upload leaves nothing it would read.

pub mod config;

use std::io::{Read, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use indicatif::ProgressBar;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
    WriteMultipart,
};
use serde::{Deserialize, Serialize};

pub use config::{AwsSettings, RemoteUrl};

use super::{
    hashing, read_manifest, ArtifactKey, KeyLock, Manifest, ManifestFile, Published, Store,
};
use crate::cancel::CancelToken;

/// Files up to this size move in one request; larger ones in parts of this size.
const PART: u64 = 16 << 20;
/// Requests in flight at once.
const CONCURRENCY: usize = 16;
/// Parts of one large file in flight at once.
const PART_CONCURRENCY: usize = 4;
/// Blobs at least this large are looked for before uploading (a cheap HEAD
/// saves a long PUT); smaller ones are simply written again.
const HEAD_BEFORE_PUT: u64 = 1 << 20;
const MARKER_SCHEMA: u32 = 1;
/// How long a small request (a probe, a manifest) may take, unless
/// `XTR_REMOTE_TIMEOUT_S` says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// One data request (a part of at most [`PART`] bytes).
const DATA_TIMEOUT: Duration = Duration::from_secs(120);

/// What goes wrong with a remote, by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The remote did not answer in time, refused, or failed: go on locally.
    #[error("{0}")]
    Unreachable(String),
    /// Not asked: the remote failed earlier in this process.
    #[error("{0}")]
    Down(String),
    /// The remote's artifact is incomplete or does not match its manifest:
    /// never use it.
    #[error("{0}")]
    Corrupt(String),
    /// Something local failed (disk, the store) or the run was cancelled.
    #[error(transparent)]
    Local(#[from] anyhow::Error),
}

/// The commit marker of one remote artifact.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteArtifact {
    pub schema: u32,
    pub manifest: Manifest,
    /// The stage's log, stored as a blob like the outputs.
    pub log: Option<Blob>,
}

/// A blob's identity: its size and blake3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blob {
    pub size: u64,
    pub blake3: String,
}

impl RemoteArtifact {
    /// Bytes of outputs and log.
    pub fn bytes(&self) -> u64 {
        self.manifest.files.iter().map(|f| f.size).sum::<u64>()
            + self.log.as_ref().map_or(0, |l| l.size)
    }
}

/// What an upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uploaded {
    /// Bytes sent (blobs already there are not sent again).
    pub bytes: u64,
    /// The key was already on the remote: nothing was written.
    pub already: bool,
}

/// A connected remote. Blocking methods; the async client runs on its own
/// small runtime so callers stay plain threads.
pub struct Remote {
    url: RemoteUrl,
    client: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Runtime,
    timeout: Duration,
    secrets: Vec<String>,
    /// Set once the remote failed to answer: later calls in this process fail
    /// at once instead of waiting out the timeout again.
    down: AtomicBool,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({})", self.url)
    }
}

impl Remote {
    /// Connect to `url` with the endpoint and credentials of the AWS environment
    /// (or profile). Nothing is sent yet; a bad URL or setting is an error here.
    pub fn connect(url: &str) -> Result<Remote, String> {
        Remote::connect_with(url, &AwsSettings::from_env())
    }

    pub fn connect_with(url: &str, aws: &AwsSettings) -> Result<Remote, String> {
        let url = RemoteUrl::parse(url)?;
        let allow_http = aws.check_endpoint()?;
        let timeout = std::env::var("XTR_REMOTE_TIMEOUT_S")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| *s > 0.0)
            .map_or(DEFAULT_TIMEOUT, Duration::from_secs_f64);
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&url.bucket)
            .with_region(aws.region.as_deref().unwrap_or("us-east-1"))
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(allow_http)
                    .with_connect_timeout(timeout.min(Duration::from_secs(5)))
                    .with_timeout(DATA_TIMEOUT),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(1),
                    base: 2.0,
                },
                max_retries: 2,
                retry_timeout: timeout,
            });
        if let Some(endpoint) = &aws.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if aws.skip_signature {
            builder = builder.with_skip_signature(true);
        } else {
            // Without credentials the client would ask the cloud's metadata
            // service; say what to set instead.
            let (Some(id), Some(secret)) = (&aws.access_key_id, &aws.secret_access_key) else {
                return Err(format!(
                    "no credentials for the remote {url}: set AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials (AWS_PROFILE)"
                ));
            };
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
            if let Some(token) = &aws.session_token {
                builder = builder.with_token(token);
            }
        }
        let secrets = aws.secrets();
        let scrub = |e: String| scrub_text(e, &secrets);
        let client = builder
            .build()
            .map_err(|e| scrub(format!("remote {url}: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("xtr-remote")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the remote's I/O threads: {e}"))?;
        Ok(Remote {
            url,
            client: Arc::new(client),
            runtime,
            timeout,
            secrets,
            down: AtomicBool::new(false),
        })
    }

    /// `s3://bucket/prefix`, for messages.
    pub fn url(&self) -> String {
        self.url.to_string()
    }

    fn path(&self, rel: &str) -> ObjPath {
        if self.url.prefix.is_empty() {
            ObjPath::from(rel)
        } else {
            ObjPath::from(format!("{}/{rel}", self.url.prefix))
        }
    }

    fn marker_path(&self, key: &ArtifactKey) -> ObjPath {
        self.path(&format!("artifacts/{key}.json"))
    }

    fn blob_path(&self, blake3: &str) -> ObjPath {
        self.path(&format!("blobs/{blake3}"))
    }

    /// Run `fut` on the remote's runtime, giving up after `limit`.
    fn block<T>(
        &self,
        limit: Duration,
        fut: impl std::future::Future<Output = Result<T, RemoteError>>,
    ) -> Result<T, RemoteError> {
        if self.down.load(Ordering::Relaxed) {
            return Err(RemoteError::Down(format!(
                "remote {} did not answer earlier in this run",
                self.url
            )));
        }
        let result = self
            .runtime
            .block_on(async { tokio::time::timeout(limit, fut).await })
            .unwrap_or_else(|_| {
                Err(RemoteError::Unreachable(format!(
                    "remote {} did not answer within {:.0}s",
                    self.url,
                    limit.as_secs_f64()
                )))
            });
        match result {
            Err(RemoteError::Unreachable(why)) => {
                self.down.store(true, Ordering::Relaxed);
                Err(RemoteError::Unreachable(self.scrub(why)))
            }
            Err(RemoteError::Corrupt(why)) => Err(RemoteError::Corrupt(self.scrub(why))),
            other => other,
        }
    }

    fn scrub(&self, text: String) -> String {
        scrub_text(text, &self.secrets)
    }

    fn unreachable(&self, what: &str, e: object_store::Error) -> RemoteError {
        RemoteError::Unreachable(format!("remote {}: {what}: {e}", self.url))
    }

    /// Which of `keys` the remote holds (a marker exists).
    pub fn contains(&self, keys: &[ArtifactKey]) -> Result<Vec<bool>, RemoteError> {
        let limit = self.timeout * (1 + keys.len() as u32 / 64);
        self.block(limit, async {
            futures::stream::iter(keys)
                .map(|key| async move {
                    match self.client.head(&self.marker_path(key)).await {
                        Ok(_) => Ok(true),
                        Err(object_store::Error::NotFound { .. }) => Ok(false),
                        Err(e) => Err(self.unreachable("looking for artifacts", e)),
                    }
                })
                .buffered(CONCURRENCY)
                .try_collect()
                .await
        })
    }

    /// Every key the remote holds.
    pub fn keys(&self) -> Result<Vec<ArtifactKey>, RemoteError> {
        let prefix = self.path("artifacts");
        self.block(self.timeout * 6, async {
            let metas: Vec<_> = self
                .client
                .list(Some(&prefix))
                .try_collect()
                .await
                .map_err(|e| self.unreachable("listing artifacts", e))?;
            let mut keys: Vec<ArtifactKey> = metas
                .iter()
                .filter_map(|m| m.location.filename())
                .filter_map(|name| name.strip_suffix(".json"))
                .filter_map(ArtifactKey::parse)
                .collect();
            keys.sort();
            Ok(keys)
        })
    }

    /// The commit marker of `key`, if the remote has it; a marker that does not
    /// parse or names unsafe paths is [`RemoteError::Corrupt`].
    pub fn artifact(&self, key: &ArtifactKey) -> Result<Option<RemoteArtifact>, RemoteError> {
        let text = self.block(self.timeout, async {
            match self.client.get(&self.marker_path(key)).await {
                Ok(got) => got
                    .bytes()
                    .await
                    .map(Some)
                    .map_err(|e| self.unreachable("reading a manifest", e)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.unreachable("reading a manifest", e)),
            }
        })?;
        let Some(text) = text else {
            return Ok(None);
        };
        let corrupt = |why: String| {
            RemoteError::Corrupt(format!(
                "remote artifact {key} is corrupt: its manifest {why}"
            ))
        };
        let marker: RemoteArtifact =
            serde_json::from_slice(&text).map_err(|e| corrupt(format!("is not valid ({e})")))?;
        if marker.schema != MARKER_SCHEMA {
            return Err(corrupt(format!(
                "has schema {}, this xtr-pipe reads {MARKER_SCHEMA}",
                marker.schema
            )));
        }
        if &marker.manifest.key != key {
            return Err(corrupt(format!("names key {}", marker.manifest.key)));
        }
        if let Some(bad) = marker
            .manifest
            .files
            .iter()
            .find(|f| !safe_relative(&f.path))
        {
            return Err(corrupt(format!("lists an unsafe path `{}`", bad.path)));
        }
        let hashes = marker.manifest.files.iter().map(|f| &f.blake3);
        if let Some(bad) = hashes
            .chain(marker.log.iter().map(|l| &l.blake3))
            .find(|h| !is_hex64(h))
        {
            return Err(corrupt(format!("lists a malformed hash `{bad}`")));
        }
        Ok(Some(marker))
    }

    /// Download `artifact` into the store: every file into `.tmp/`, each checked
    /// against the manifest's size and blake3, then the store's atomic publish.
    /// The caller holds the key's lock. On any error nothing is published.
    pub fn download(
        &self,
        store: &Store,
        artifact: &RemoteArtifact,
        lock: &KeyLock,
        bar: &ProgressBar,
        cancel: &CancelToken,
    ) -> Result<Published, RemoteError> {
        let key = &artifact.manifest.key;
        let staging = store.stage_dir(key, lock)?;
        let out = staging.out_dir();
        let tmp_dir = out
            .parent()
            .map_or_else(|| out.clone(), FsPath::to_path_buf);
        let fetched = self.fetch_files(&out, &staging.log_path(), artifact, bar, cancel);
        if let Err(e) = fetched {
            let _ = std::fs::remove_dir_all(&tmp_dir);
            return Err(e);
        }
        let published = staging
            .publish(store, artifact.manifest.clone())
            .with_context(|| {
                format!(
                    "publishing artifact {} fetched from the remote",
                    key.short()
                )
            })?;
        Ok(published)
    }

    fn fetch_files(
        &self,
        out: &FsPath,
        log: &FsPath,
        artifact: &RemoteArtifact,
        bar: &ProgressBar,
        cancel: &CancelToken,
    ) -> Result<(), RemoteError> {
        let key = &artifact.manifest.key;
        let mut jobs: Vec<(PathBuf, Blob, String)> = artifact
            .manifest
            .files
            .iter()
            .map(|f| {
                let blob = Blob {
                    size: f.size,
                    blake3: f.blake3.clone(),
                };
                (out.join(&f.path), blob, format!("out/{}", f.path))
            })
            .collect();
        if let Some(l) = &artifact.log {
            jobs.push((log.to_path_buf(), l.clone(), "log.txt".to_string()));
        }
        for (path, _, _) in &jobs {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
        }
        // Bounded by the data volume: a stalled request still ends at DATA_TIMEOUT.
        let limit = self.timeout + DATA_TIMEOUT * (1 + (artifact.bytes() / (PART * 8)) as u32);
        self.block(limit, async {
            futures::stream::iter(&jobs)
                .map(|(path, blob, name)| async move {
                    cancel.check().map_err(anyhow::Error::from)?;
                    self.fetch_blob(path, blob, bar, cancel)
                        .await
                        .map_err(|e| match e {
                            RemoteError::Corrupt(why) => RemoteError::Corrupt(format!(
                                "remote artifact {key} is corrupt: {name} {why}"
                            )),
                            other => other,
                        })
                })
                .buffer_unordered(CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await
        })?;
        Ok(())
    }

    /// One blob into `dest`, verified. `Corrupt` errors say what is wrong with it.
    async fn fetch_blob(
        &self,
        dest: &FsPath,
        blob: &Blob,
        bar: &ProgressBar,
        cancel: &CancelToken,
    ) -> Result<(), RemoteError> {
        let location = self.blob_path(&blob.blake3);
        let missing = |e: object_store::Error| match e {
            object_store::Error::NotFound { .. } => {
                RemoteError::Corrupt("is missing on the remote".to_string())
            }
            e => self.unreachable("downloading", e),
        };
        let file = std::fs::File::create(dest)
            .with_context(|| format!("cannot create {}", dest.display()))?;
        if blob.size <= PART {
            let got = self.client.get(&location).await.map_err(missing)?;
            let bytes = got.bytes().await.map_err(missing)?;
            check_blob(blob, bytes.len() as u64, &blake3::hash(&bytes))?;
            (&file)
                .write_all(&bytes)
                .with_context(|| format!("cannot write {}", dest.display()))?;
            bar.inc(blob.size);
            return Ok(());
        }
        let meta = self.client.head(&location).await.map_err(missing)?;
        if meta.size != blob.size {
            return Err(RemoteError::Corrupt(format!(
                "is {} bytes on the remote, its manifest says {}",
                meta.size, blob.size
            )));
        }
        file.set_len(blob.size)
            .with_context(|| format!("cannot size {}", dest.display()))?;
        futures::stream::iter(parts(blob.size))
            .map(|range| {
                let (file, location) = (&file, &location);
                async move {
                    cancel.check().map_err(anyhow::Error::from)?;
                    let bytes = self
                        .client
                        .get_range(location, range.clone())
                        .await
                        .map_err(missing)?;
                    if bytes.len() as u64 != range.end - range.start {
                        return Err(RemoteError::Corrupt(
                            "is shorter than its manifest says".into(),
                        ));
                    }
                    file.write_all_at(&bytes, range.start)
                        .with_context(|| format!("cannot write {}", dest.display()))?;
                    bar.inc(bytes.len() as u64);
                    Ok(())
                }
            })
            .buffer_unordered(PART_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        let hash = hashing::hash_file(dest, blob.size)?;
        check_blob(blob, blob.size, &blake3::Hash::from_bytes(hash))
    }

    /// Upload the store's artifact `key`: blobs first, the marker last. A key the
    /// remote already holds is left alone unless `repair` (its copy was found
    /// corrupt), which rewrites every blob and the marker.
    pub fn upload(
        &self,
        store: &Store,
        key: &ArtifactKey,
        repair: bool,
        bar: &ProgressBar,
        cancel: &CancelToken,
    ) -> Result<Uploaded, RemoteError> {
        if !repair && self.contains(std::slice::from_ref(key))?[0] {
            return Ok(Uploaded {
                bytes: 0,
                already: true,
            });
        }
        let dir = store.artifact_dir(key);
        let manifest = read_manifest(&dir)?;
        let log_path = dir.join(super::LOG);
        let log = match std::fs::metadata(&log_path) {
            Ok(meta) => Some(Blob {
                size: meta.len(),
                blake3: hashing::hex(&hashing::hash_file(&log_path, meta.len())?),
            }),
            Err(_) => None,
        };
        let mut jobs: Vec<(PathBuf, Blob)> = manifest
            .files
            .iter()
            .map(|f: &ManifestFile| {
                let blob = Blob {
                    size: f.size,
                    blake3: f.blake3.clone(),
                };
                (dir.join(super::OUT).join(&f.path), blob)
            })
            .collect();
        if let Some(l) = &log {
            jobs.push((log_path, l.clone()));
        }
        // Two files with one content are one blob.
        jobs.sort_by(|a, b| a.1.blake3.cmp(&b.1.blake3));
        jobs.dedup_by(|a, b| a.1.blake3 == b.1.blake3);
        let total: u64 = jobs.iter().map(|j| j.1.size).sum();
        let limit = self.timeout + DATA_TIMEOUT * (1 + (total / (PART * 8)) as u32);
        let sent = self.block(limit, async {
            let sent: Vec<u64> = futures::stream::iter(&jobs)
                .map(|(path, blob)| async move {
                    cancel.check().map_err(anyhow::Error::from)?;
                    self.put_blob(path, blob, repair, bar, cancel).await
                })
                .buffer_unordered(CONCURRENCY)
                .try_collect()
                .await?;
            Ok(sent.iter().sum::<u64>())
        })?;
        let marker = RemoteArtifact {
            schema: MARKER_SCHEMA,
            manifest,
            log,
        };
        let body = serde_json::to_vec_pretty(&marker).context("encoding a manifest")?;
        self.block(self.timeout, async {
            self.client
                .put(&self.marker_path(key), PutPayload::from(body))
                .await
                .map_err(|e| self.unreachable("writing a manifest", e))
        })?;
        Ok(Uploaded {
            bytes: sent,
            already: false,
        })
    }

    /// One local file as the blob `blob`, re-hashed as it is read so that a file
    /// changed since it was hashed is never stored under the old hash. Returns
    /// the bytes sent.
    async fn put_blob(
        &self,
        path: &FsPath,
        blob: &Blob,
        repair: bool,
        bar: &ProgressBar,
        cancel: &CancelToken,
    ) -> Result<u64, RemoteError> {
        let location = self.blob_path(&blob.blake3);
        if !repair && blob.size >= HEAD_BEFORE_PUT {
            if let Ok(meta) = self.client.head(&location).await {
                if meta.size == blob.size {
                    bar.inc(blob.size);
                    return Ok(0);
                }
            }
        }
        let changed = || {
            RemoteError::Local(anyhow::anyhow!(
                "{} changed after its artifact was published; run `xtr-pipe run --verify`",
                path.display()
            ))
        };
        let mut file =
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        if blob.size <= PART {
            let mut bytes = Vec::with_capacity(blob.size as usize);
            file.read_to_end(&mut bytes)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if bytes.len() as u64 != blob.size
                || blake3::hash(&bytes).to_hex().as_str() != blob.blake3
            {
                return Err(changed());
            }
            self.client
                .put(&location, PutPayload::from(Bytes::from(bytes)))
                .await
                .map_err(|e| self.unreachable("uploading", e))?;
            bar.inc(blob.size);
            return Ok(blob.size);
        }
        let upload = self
            .client
            .put_multipart(&location)
            .await
            .map_err(|e| self.unreachable("uploading", e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART as usize);
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; PART as usize];
        let mut total = 0u64;
        let read = loop {
            if let Err(e) = cancel.check() {
                break Err(RemoteError::Local(e.into()));
            }
            if let Err(e) = writer.wait_for_capacity(PART_CONCURRENCY).await {
                break Err(self.unreachable("uploading", e));
            }
            let n = match read_full(&mut file, &mut buf) {
                Ok(n) => n,
                Err(e) => {
                    break Err(RemoteError::Local(
                        anyhow::Error::from(e).context(format!("cannot read {}", path.display())),
                    ))
                }
            };
            if n == 0 {
                break Ok(());
            }
            hasher.update(&buf[..n]);
            writer.write(&buf[..n]);
            total += n as u64;
            bar.inc(n as u64);
        };
        let verified = read.and_then(|()| {
            if total == blob.size && hasher.finalize().to_hex().as_str() == blob.blake3 {
                Ok(())
            } else {
                Err(changed())
            }
        });
        match verified {
            Ok(()) => {
                writer
                    .finish()
                    .await
                    .map_err(|e| self.unreachable("uploading", e))?;
                Ok(blob.size)
            }
            Err(e) => {
                // Best effort: an unfinished upload is invisible anyway.
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }
}

/// Read until `buf` is full or the file ends; the number of bytes read.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// `size` bytes as ranges of at most [`PART`].
fn parts(size: u64) -> Vec<Range<u64>> {
    (0..size.div_ceil(PART))
        .map(|i| i * PART..((i + 1) * PART).min(size))
        .collect()
}

fn check_blob(blob: &Blob, size: u64, hash: &blake3::Hash) -> Result<(), RemoteError> {
    if size != blob.size {
        return Err(RemoteError::Corrupt(format!(
            "is {size} bytes, its manifest says {}",
            blob.size
        )));
    }
    if hash.to_hex().as_str() != blob.blake3 {
        return Err(RemoteError::Corrupt("does not match its hash".to_string()));
    }
    Ok(())
}

/// A manifest path that stays inside `out/`.
fn safe_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\\')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn scrub_text(mut text: String, secrets: &[String]) -> String {
    for secret in secrets {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), "***");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_paths_must_stay_inside_out() {
        for ok in ["a.txt", "dir/b.bin", "model/x.safetensors"] {
            assert!(safe_relative(ok), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a\\b",
        ] {
            assert!(!safe_relative(bad), "{bad}");
        }
    }

    #[test]
    fn large_files_split_into_whole_parts() {
        assert!(parts(0).is_empty());
        assert_eq!(parts(PART), vec![0..PART]);
        let p = parts(2 * PART + 5);
        assert_eq!(p.len(), 3);
        assert_eq!(p[2], 2 * PART..2 * PART + 5);
    }

    #[test]
    fn secrets_are_scrubbed() {
        let text = "403: key GKabcd1234 signature for secretvalue".to_string();
        let out = scrub_text(text, &["GKabcd1234".into(), "secretvalue".into()]);
        assert_eq!(out, "403: key *** signature for ***");
    }

    #[test]
    fn connecting_without_credentials_says_what_to_set() {
        let err = Remote::connect_with("s3://b/p", &AwsSettings::default()).unwrap_err();
        assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");
    }
}
