//! The store's embedded database (SQLite): the file-hash cache, dependency-tree
//! listings (so `status` can say which files changed), and the run history.

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
CREATE TABLE IF NOT EXISTS file_hashes(
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL, inode INTEGER NOT NULL, hash BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS trees(digest TEXT PRIMARY KEY, listing TEXT NOT NULL) WITHOUT ROWID;
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

impl Db {
    pub fn open(path: &Path) -> Result<Db> {
        let conn = Connection::open(path)
            .with_context(|| format!("opening database {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(60))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Reading the file-hash cache dominates a no-op run: map the file instead of pread.
        conn.pragma_update(None, "mmap_size", 1i64 << 30)?;
        conn.execute_batch(SCHEMA)
            .with_context(|| format!("initialising database {}", path.display()))?;
        Ok(Db { conn })
    }

    /// Every cached file hash (loaded once per process; a few MB for 100k files).
    pub fn load_file_hashes(&self) -> Result<Vec<(String, FileStamp, [u8; 32])>> {
        let mut stmt = self
            .conn
            .prepare("SELECT path, size, mtime_ns, ctime_ns, inode, hash FROM file_hashes")?;
        let rows = stmt.query_map([], |r| {
            let hash: Vec<u8> = r.get(5)?;
            Ok((
                r.get::<_, String>(0)?,
                FileStamp {
                    size: r.get::<_, i64>(1)? as u64,
                    mtime_ns: r.get(2)?,
                    ctime_ns: r.get(3)?,
                    inode: r.get::<_, i64>(4)? as u64,
                },
                hash,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (path, stamp, hash) = row?;
            if let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) {
                out.push((path, stamp, hash));
            }
        }
        Ok(out)
    }

    pub fn store_file_hashes(&mut self, entries: &[(String, FileStamp, [u8; 32])]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare(
                "INSERT OR REPLACE INTO file_hashes(path, size, mtime_ns, ctime_ns, inode, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for (path, s, hash) in entries {
                stmt.execute(params![
                    path,
                    s.size as i64,
                    s.mtime_ns,
                    s.ctime_ns,
                    s.inode as i64,
                    &hash[..]
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn store_tree(&self, digest: &str, listing: &str) -> Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO trees(digest, listing) VALUES (?1, ?2)",
            params![digest, listing],
        )?;
        Ok(())
    }

    pub fn has_tree(&self, digest: &str) -> Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM trees WHERE digest = ?1",
                [digest],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    pub fn tree(&self, digest: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT listing FROM trees WHERE digest = ?1",
                [digest],
                |r| r.get(0),
            )
            .optional()?)
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
