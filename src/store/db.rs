//! The store's embedded database (SQLite): the file-hash cache, dependency-tree
//! listings (so `status` can say which files changed; one row per distinct
//! directory, see [`super::listing`]), and the run history.

use std::path::Path;

use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension};

/// A cached content hash, valid while the file's stat fields are unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub inode: u64,
}

/// One stage's row in a recorded run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageRecord {
    pub stage: String,
    pub kind: String,
    pub key: String,
    pub status: String,
    pub seconds: f64,
    pub reason: String,
    pub recipe: Option<String>,
    pub metrics: Option<String>,
    pub error: Option<String>,
}

/// A recorded run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub pipeline: String,
    pub name: String,
    pub started_unix: f64,
    pub finished_unix: Option<f64>,
    pub status: String,
}

pub struct Db {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS file_cache(key INTEGER PRIMARY KEY, entry BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS tree_nodes(node BLOB PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS tree_roots(digest TEXT PRIMARY KEY, node BLOB NOT NULL) WITHOUT ROWID;
DROP TABLE IF EXISTS trees;
CREATE TABLE IF NOT EXISTS runs(
    id INTEGER PRIMARY KEY, pipeline TEXT NOT NULL, name TEXT NOT NULL, pid INTEGER NOT NULL,
    started REAL NOT NULL, finished REAL, status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS run_stages(
    run_id INTEGER NOT NULL REFERENCES runs(id), stage TEXT NOT NULL, kind TEXT NOT NULL,
    key TEXT NOT NULL, status TEXT NOT NULL, seconds REAL NOT NULL, reason TEXT NOT NULL,
    recipe TEXT, metrics TEXT, error TEXT, PRIMARY KEY(run_id, stage)
);
CREATE INDEX IF NOT EXISTS run_stages_key ON run_stages(key);
CREATE INDEX IF NOT EXISTS runs_pipeline ON runs(pipeline, id);
";

/// How long a connection waits for another process's lock.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Puts the database in WAL mode (a setting stored in the file: done once).
/// Switching needs the database to itself, and SQLite answers "locked" at
/// once, without its busy handler, while another process opens or switches
/// the same new file; so a busy answer is retried, for as long as any other
/// lock is waited for.
fn set_wal(conn: &Connection) -> Result<()> {
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    if mode.eq_ignore_ascii_case("wal") {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0)) {
            Ok(_) => return Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && started.elapsed() < BUSY_TIMEOUT =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(e).context("switching to WAL mode"),
        }
    }
}

impl Db {
    pub fn open(path: &Path) -> Result<Db> {
        let conn = Connection::open(path)
            .with_context(|| format!("opening database {}", path.display()))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        set_wal(&conn).with_context(|| format!("opening database {}", path.display()))?;
        // Keep the WAL file when the last connection closes (emptied, not deleted):
        // every run would otherwise delete it and create it again.
        conn.file_control(
            Some(rusqlite::MAIN_DB),
            rusqlite::FileControl::PersistWal(&mut 1),
        )?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .and_then(|()| {
                // Reading the file-hash cache dominates a no-op run: map the
                // file instead of pread.
                conn.pragma_update(None, "mmap_size", 1i64 << 30)
            })
            .with_context(|| format!("opening database {}", path.display()))?;
        conn.execute_batch(SCHEMA)
            .with_context(|| format!("initialising database {}", path.display()))?;
        let db = Db { conn };
        db.migrate_file_hashes()
            .with_context(|| format!("upgrading database {}", path.display()))?;
        Ok(db)
    }

    /// Stores written by earlier versions kept the cache as one row per path
    /// (text): carry the entries over to `file_cache`, once.
    fn migrate_file_hashes(&self) -> Result<()> {
        let old: bool = self.conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'file_hashes'",
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !old {
            return Ok(());
        }
        self.in_transaction(|db| {
            let mut entries = Vec::new();
            {
                let mut stmt = db.conn.prepare(
                    "SELECT path, size, mtime_ns, ctime_ns, inode, hash FROM file_hashes",
                )?;
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    let Ok(hash) = <[u8; 32]>::try_from(r.get_ref(5)?.as_blob()?) else {
                        continue;
                    };
                    let stamp = FileStamp {
                        size: r.get::<_, i64>(1)? as u64,
                        mtime_ns: r.get(2)?,
                        ctime_ns: r.get(3)?,
                        inode: r.get::<_, i64>(4)? as u64,
                    };
                    entries.push((path_key(r.get_ref(0)?.as_str()?), stamp, hash));
                }
            }
            db.insert_file_hashes(&entries)?;
            db.conn.execute_batch("DROP TABLE file_hashes")?;
            Ok(())
        })
    }

    /// Call `f(path key, stamp, hash)` on every cached file hash (read once per
    /// process: fixed-size rows under an integer key, a few MB for 100k files).
    pub fn for_each_file_hash(&self, mut f: impl FnMut(u64, FileStamp, &[u8; 32])) -> Result<()> {
        let mut stmt = self.conn.prepare("SELECT key, entry FROM file_cache")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let key = r.get::<_, i64>(0)? as u64;
            if let Some((stamp, hash)) = decode_entry(r.get_ref(1)?.as_blob()?) {
                f(key, stamp, hash);
            }
        }
        Ok(())
    }

    pub fn file_hash_count(&self) -> Result<usize> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM file_cache", [], |r| {
                r.get::<_, i64>(0)
            })? as usize)
    }

    /// Keep `(path key, stamp, hash)` entries (one transaction).
    pub fn store_file_hashes(&mut self, entries: &[(u64, FileStamp, [u8; 32])]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        self.in_transaction(|db| db.insert_file_hashes(entries))
    }

    fn insert_file_hashes(&self, entries: &[(u64, FileStamp, [u8; 32])]) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare_cached("INSERT OR REPLACE INTO file_cache(key, entry) VALUES (?1, ?2)")?;
        for (key, stamp, hash) in entries {
            stmt.execute(params![*key as i64, &encode_entry(stamp, hash)[..]])?;
        }
        Ok(())
    }

    /// Whether the listing of the tree with this digest is stored.
    pub fn has_tree(&self, digest: &str) -> Result<bool> {
        Ok(self.tree_root(digest)?.is_some())
    }

    /// The root directory node of the tree with this digest.
    pub fn tree_root(&self, digest: &str) -> Result<Option<[u8; 32]>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT node FROM tree_roots WHERE digest = ?1")?;
        let node: Option<Vec<u8>> = stmt.query_row([digest], |r| r.get(0)).optional()?;
        Ok(node.and_then(|n| <[u8; 32]>::try_from(n.as_slice()).ok()))
    }

    pub fn put_tree_root(&self, digest: &str, node: &[u8; 32]) -> Result<()> {
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO tree_roots(digest, node) VALUES (?1, ?2)")?
            .execute(params![digest, &node[..]])?;
        Ok(())
    }

    pub fn has_tree_node(&self, node: &[u8; 32]) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM tree_nodes WHERE node = ?1")?
            .query_row([&node[..]], |_| Ok(()))
            .optional()?
            .is_some())
    }

    pub fn put_tree_node(&self, node: &[u8; 32], body: &[u8]) -> Result<()> {
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO tree_nodes(node, body) VALUES (?1, ?2)")?
            .execute(params![&node[..], body])?;
        Ok(())
    }

    /// The encoded entries of one directory node.
    pub fn tree_node(&self, node: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .prepare_cached("SELECT body FROM tree_nodes WHERE node = ?1")?
            .query_row([&node[..]], |r| r.get(0))
            .optional()?)
    }

    /// Run `f` in one immediate transaction, rolled back if it fails.
    pub fn in_transaction<T>(&self, f: impl FnOnce(&Db) -> Result<T>) -> Result<T> {
        let tx = rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )?;
        let out = f(self)?;
        tx.commit()?;
        Ok(out)
    }

    /// Group the following writes into one transaction, until [`Db::commit`].
    pub fn begin(&self) -> Result<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(())
    }

    pub fn commit(&self) -> Result<()> {
        self.conn.execute_batch("COMMIT")?;
        Ok(())
    }

    pub fn begin_run(&self, pipeline: &str, name: &str, started: f64) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO runs(pipeline, name, pid, started, status) VALUES (?1, ?2, ?3, ?4, 'running')",
            params![pipeline, name, std::process::id(), started],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn record_stage(&self, run_id: i64, r: &StageRecord) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO run_stages(run_id, stage, kind, key, status, seconds, reason, recipe, metrics, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![run_id, r.stage, r.kind, r.key, r.status, r.seconds, r.reason, r.recipe, r.metrics, r.error],
        )?;
        Ok(())
    }

    pub fn finish_run(&self, run_id: i64, finished: f64, status: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE runs SET finished = ?2, status = ?3 WHERE id = ?1",
            params![run_id, finished, status],
        )?;
        Ok(())
    }

    /// The newest run of a pipeline (by its absolute path).
    pub fn last_run(&self, pipeline: &str) -> Result<Option<RunRecord>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, pipeline, name, started, finished, status FROM runs
                 WHERE pipeline = ?1 ORDER BY id DESC LIMIT 1",
                [pipeline],
                |r| {
                    Ok(RunRecord {
                        id: r.get(0)?,
                        pipeline: r.get(1)?,
                        name: r.get(2)?,
                        started_unix: r.get(3)?,
                        finished_unix: r.get(4)?,
                        status: r.get(5)?,
                    })
                },
            )
            .optional()?)
    }

    /// The ids of a pipeline's recorded runs, newest first.
    pub fn run_ids(&self, pipeline: &str) -> Result<Vec<i64>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM runs WHERE pipeline = ?1 ORDER BY id DESC")?;
        let rows = stmt.query_map([pipeline], |r| r.get::<_, i64>(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn run_stages(&self, run_id: i64) -> Result<Vec<StageRecord>> {
        let mut stmt = self.conn.prepare(
            "SELECT stage, kind, key, status, seconds, reason, recipe, metrics, error
             FROM run_stages WHERE run_id = ?1 ORDER BY rowid",
        )?;
        let rows = stmt.query_map([run_id], stage_record)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The last time this stage of this pipeline produced or reused an artifact.
    pub fn last_success(&self, pipeline: &str, stage: &str) -> Result<Option<StageRecord>> {
        Ok(self
            .conn
            .query_row(
                "SELECT s.stage, s.kind, s.key, s.status, s.seconds, s.reason, s.recipe, s.metrics, s.error
                 FROM run_stages s JOIN runs r ON r.id = s.run_id
                 WHERE r.pipeline = ?1 AND s.stage = ?2 AND s.status IN ('ran', 'cached')
                 ORDER BY s.run_id DESC LIMIT 1",
                [pipeline, stage],
                stage_record,
            )
            .optional()?)
    }

    /// Keys of every stage (whatever its status) of each pipeline's latest run:
    /// the attempts a next run may resume.
    pub fn last_run_keys(&self) -> Result<std::collections::HashSet<String>> {
        let mut stmt = self.conn.prepare(
            "SELECT DISTINCT s.key FROM run_stages s WHERE s.run_id IN (
               SELECT MAX(id) FROM runs GROUP BY pipeline)",
        )?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Keys referenced by runs: every recorded run, or only each pipeline's last `keep_last`.
    pub fn referenced_keys(
        &self,
        keep_last: Option<u32>,
    ) -> Result<std::collections::HashSet<String>> {
        let sql = match keep_last {
            None => "SELECT DISTINCT key FROM run_stages WHERE status IN ('ran', 'cached')".to_string(),
            Some(n) => format!(
                "SELECT DISTINCT s.key FROM run_stages s WHERE s.status IN ('ran', 'cached') AND s.run_id IN (
                   SELECT id FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY pipeline ORDER BY id DESC) AS rn FROM runs)
                   WHERE rn <= {n})"
            ),
        };
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// The file-hash cache's key for a path: a stable 64-bit hash of its bytes
/// (stored, so it must never change; a collision only costs re-hashing a file,
/// since an entry is used only when the file's stat fields match it).
pub fn path_key(path: &str) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes = path.as_bytes();
    let mut h = 0x243f_6a88_85a3_08d3 ^ bytes.len() as u64;
    let mut step = |w: u64| h = (h ^ w).wrapping_mul(K).rotate_left(29);
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        step(u64::from_le_bytes(w.try_into().expect("8 bytes")));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        step(u64::from_le_bytes(w));
    }
    // murmur3's finaliser: every input bit reaches every output bit.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn encode_entry(stamp: &FileStamp, hash: &[u8; 32]) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[0..8].copy_from_slice(&stamp.size.to_le_bytes());
    out[8..16].copy_from_slice(&stamp.mtime_ns.to_le_bytes());
    out[16..24].copy_from_slice(&stamp.ctime_ns.to_le_bytes());
    out[24..32].copy_from_slice(&stamp.inode.to_le_bytes());
    out[32..].copy_from_slice(hash);
    out
}

fn decode_entry(entry: &[u8]) -> Option<(FileStamp, &[u8; 32])> {
    let entry: &[u8; 64] = entry.try_into().ok()?;
    let word = |i: usize| <[u8; 8]>::try_from(&entry[i * 8..i * 8 + 8]).expect("8 bytes");
    let stamp = FileStamp {
        size: u64::from_le_bytes(word(0)),
        mtime_ns: i64::from_le_bytes(word(1)),
        ctime_ns: i64::from_le_bytes(word(2)),
        inode: u64::from_le_bytes(word(3)),
    };
    Some((stamp, entry[32..].try_into().ok()?))
}

fn stage_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<StageRecord> {
    Ok(StageRecord {
        stage: r.get(0)?,
        kind: r.get(1)?,
        key: r.get(2)?,
        status: r.get(3)?,
        seconds: r.get(4)?,
        reason: r.get(5)?,
        recipe: r.get(6)?,
        metrics: r.get(7)?,
        error: r.get(8)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys are stored: the function must give these values forever.
    #[test]
    fn path_keys_are_stable() {
        let got: Vec<u64> = ["", "/a", "/work/src/d001/file-00001.txt"]
            .iter()
            .map(|p| path_key(p))
            .collect();
        assert_eq!(got, PINNED);
        assert_ne!(path_key("/src/a"), path_key("/src/b"));
    }

    const PINNED: [u64; 3] = [
        8848935107335307795,
        4504919938315650301,
        8459066399362048422,
    ];

    #[test]
    fn a_cache_of_an_earlier_version_is_carried_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE file_hashes(
                path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
                ctime_ns INTEGER NOT NULL, inode INTEGER NOT NULL, hash BLOB NOT NULL
            ) WITHOUT ROWID;
            INSERT INTO file_hashes VALUES ('/src/a', 5, 10, 11, 12, zeroblob(32));",
        )
        .unwrap();
        drop(conn);
        let db = Db::open(&path).unwrap();
        let mut got = Vec::new();
        db.for_each_file_hash(|k, s, h| got.push((k, s, *h)))
            .unwrap();
        let stamp = FileStamp {
            size: 5,
            mtime_ns: 10,
            ctime_ns: 11,
            inode: 12,
        };
        assert_eq!(got, [(path_key("/src/a"), stamp, [0u8; 32])]);
        drop(db);
        // Once: the old table is gone.
        let db = Db::open(&path).unwrap();
        assert_eq!(db.file_hash_count().unwrap(), 1);
    }
}
