//! One availability database: a SQLite file in WAL mode with exactly one
//! writer connection and a pool of read-only connections.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::functions::FunctionFlags;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::{Connection, InterruptHandle, OpenFlags};
use tokio::sync::{Notify, OwnedMutexGuard};

use super::error::{Error, Result};

/// PostgreSQL version we announce; libpq and drivers need ≥ 14 to enable
/// `target_session_attrs` and friends.
pub const PG_VERSION: &str = "16.0";

/// A SQLite connection and the handle that interrupts whatever it runs.
pub struct Conn {
    conn: Connection,
    interrupt: Arc<InterruptHandle>,
}

impl Conn {
    /// The SQLite connection.
    pub fn sqlite(&self) -> &Connection {
        &self.conn
    }

    /// A handle that makes the running statement fail with SQLITE_INTERRUPT.
    pub fn interrupt_handle(&self) -> Arc<InterruptHandle> {
        self.interrupt.clone()
    }

    /// Rolls back any transaction left open, e.g. by a failed session.
    pub fn reset(&self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

/// The single writer connection of a database. Holding the `OwnedMutexGuard`
/// of it is the database's write lock: sessions queue for it in FIFO order
/// (tokio's mutex is fair), so SQLITE_BUSY never reaches a client.
pub struct Writer {
    conn: Conn,
    commit_seq: Arc<AtomicU64>,
}

impl Writer {
    /// The connection.
    pub fn conn(&self) -> &Conn {
        &self.conn
    }

    /// Records that a write transaction committed on this connection.
    ///
    /// This is the one place every commit passes through, right after
    /// SQLite's COMMIT and before the next write: the log-shipping capture of
    /// the transaction's pages hooks in here.
    pub fn after_commit(&mut self) {
        self.commit_seq.fetch_add(1, Ordering::SeqCst);
    }
}

/// The write lock, held across awaits by a session's write transaction.
pub type WriterGuard = OwnedMutexGuard<Writer>;

/// A read-only connection borrowed from the pool; returned on drop.
pub struct Reader {
    conn: Option<Conn>,
    pool: Arc<Mutex<Vec<Conn>>>,
}

impl Reader {
    /// The connection.
    pub fn conn(&self) -> &Conn {
        self.conn.as_ref().expect("reader present until drop")
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.reset();
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < MAX_IDLE_READERS {
                pool.push(conn);
            }
        }
    }
}

const MAX_IDLE_READERS: usize = 16;

/// A database: its file, its writer and its readers.
pub struct Database {
    name: String,
    path: PathBuf,
    writer: Arc<tokio::sync::Mutex<Writer>>,
    readers: Arc<Mutex<Vec<Conn>>>,
    commit_seq: Arc<AtomicU64>,
}

impl Database {
    /// Opens (creating if needed) the database file at `path`.
    pub fn open(name: &str, path: &Path) -> Result<Database> {
        let conn = open_writer(path, name)?;
        let commit_seq = Arc::new(AtomicU64::new(0));
        Ok(Database {
            name: name.to_string(),
            path: path.to_path_buf(),
            writer: Arc::new(tokio::sync::Mutex::new(Writer {
                conn,
                commit_seq: commit_seq.clone(),
            })),
            readers: Arc::new(Mutex::new(Vec::new())),
            commit_seq,
        })
    }

    /// The database's name (as in `CREATE DATABASE name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of write transactions committed since the node started. A
    /// read snapshot taken when this was `n` is still the newest state while
    /// it is still `n` (checked under the write lock).
    pub fn commit_seq(&self) -> u64 {
        self.commit_seq.load(Ordering::SeqCst)
    }

    /// Takes the write lock, waiting in line for at most `timeout` (None:
    /// forever), and giving up early when `cancel` is notified.
    pub async fn writer(&self, timeout: Option<Duration>, cancel: &Notify) -> Result<WriterGuard> {
        let lock = self.writer.clone().lock_owned();
        let waited = async {
            match timeout {
                Some(t) => tokio::time::timeout(t, lock)
                    .await
                    .map_err(|_| Error::LockTimeout {
                        database: self.name.clone(),
                        waited_ms: t.as_millis() as u64,
                    }),
                None => Ok(lock.await),
            }
        };
        tokio::select! {
            guard = waited => guard,
            _ = cancel.notified() => Err(Error::Canceled),
        }
    }

    /// Borrows a read-only connection (opening one if none is idle).
    pub fn reader(&self) -> Result<Reader> {
        let pooled = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => open_reader(&self.path, &self.name)?,
        };
        Ok(Reader {
            conn: Some(conn),
            pool: self.readers.clone(),
        })
    }
}

fn open_writer(path: &Path, name: &str) -> Result<Conn> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| open_error(path, e))?;
    // FULL: a commit acknowledged to a client is on disk (the WAL is fsynced
    // at every commit), so a crash or power loss cannot take it back.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;",
    )?;
    finish_setup(conn, name)
}

fn open_reader(path: &Path, name: &str) -> Result<Conn> {
    // Readers are read-only at the SQLite level: nothing but the writer (and,
    // on a secondary, the redo applier) may ever write the file.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| open_error(path, e))?;
    conn.execute_batch("PRAGMA busy_timeout = 5000;")?;
    finish_setup(conn, name)
}

fn open_error(path: &Path, e: rusqlite::Error) -> Error {
    Error::Io {
        context: format!("cannot open database file {}", path.display()),
        source: std::io::Error::other(e.to_string()),
    }
}

/// Registers availdb's SQL functions and the authorizer on a new connection.
fn finish_setup(mut conn: Connection, name: &str) -> Result<Conn> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    let version = format!(
        "PostgreSQL {PG_VERSION} (availdb {}, SQLite {})",
        env!("CARGO_PKG_VERSION"),
        rusqlite::version()
    );
    conn.create_scalar_function("version", 0, flags, move |_| Ok(version.clone()))?;
    let db_name = name.to_string();
    conn.create_scalar_function("current_database", 0, flags, move |_| Ok(db_name.clone()))?;
    conn.create_scalar_function("pg_is_in_recovery", 0, flags, |_| Ok(false))?;
    conn.authorizer(Some(authorize))?;
    conn.set_prepared_statement_cache_capacity(64);
    let interrupt = Arc::new(conn.get_interrupt_handle());
    Ok(Conn { conn, interrupt })
}

/// Pragmas a client may run: introspection and application data. Everything
/// that changes how the file is stored or synced belongs to availdb, because
/// replication depends on it (WAL mode, sync level, checkpoints).
const ALLOWED_PRAGMAS: &[&str] = &[
    "application_id",
    "collation_list",
    "compile_options",
    "data_version",
    "database_list",
    "foreign_key_check",
    "foreign_key_list",
    "freelist_count",
    "function_list",
    "index_info",
    "index_list",
    "index_xinfo",
    "integrity_check",
    "module_list",
    "optimize",
    "page_count",
    "page_size",
    "pragma_list",
    "quick_check",
    "schema_version",
    "table_info",
    "table_list",
    "table_xinfo",
    "user_version",
];

fn authorize(ctx: AuthContext<'_>) -> Authorization {
    match ctx.action {
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => Authorization::Deny,
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => {
            let name = pragma_name.to_ascii_lowercase();
            let read_only_use =
                matches!(name.as_str(), "page_size" | "schema_version") && pragma_value.is_none();
            let allowed = ALLOWED_PRAGMAS.contains(&name.as_str())
                && (read_only_use || !matches!(name.as_str(), "page_size" | "schema_version"));
            if allowed {
                Authorization::Allow
            } else {
                Authorization::Deny
            }
        }
        _ => Authorization::Allow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_pragmas_and_attach_are_denied_introspection_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open("t", &dir.path().join("t.db")).unwrap();
        let w = db.writer.try_lock().unwrap();
        let c = w.conn().sqlite();
        for sql in [
            "PRAGMA journal_mode = DELETE",
            "PRAGMA synchronous = OFF",
            "PRAGMA wal_checkpoint",
            "PRAGMA writable_schema = 1",
            "PRAGMA page_size = 1024",
            "ATTACH 'x.db' AS x",
        ] {
            let err = Error::from(c.execute_batch(sql).expect_err(sql));
            assert_eq!(err.sqlstate(), "42501", "{sql}");
        }
        c.execute_batch("CREATE TABLE t(a INTEGER)").unwrap();
        for sql in [
            "PRAGMA table_info(t)",
            "PRAGMA page_size",
            "PRAGMA user_version = 7",
            "PRAGMA integrity_check",
        ] {
            c.execute_batch(sql).unwrap();
        }
    }

    #[test]
    fn readers_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open("t", &dir.path().join("t.db")).unwrap();
        db.writer
            .try_lock()
            .unwrap()
            .conn()
            .sqlite()
            .execute_batch("CREATE TABLE t(a)")
            .unwrap();
        let r = db.reader().unwrap();
        let err = Error::from(
            r.conn()
                .sqlite()
                .execute_batch("INSERT INTO t VALUES (1)")
                .unwrap_err(),
        );
        assert_eq!(err.sqlstate(), "25006");
    }
}
