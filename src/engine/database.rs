//! One availability database: a SQLite file in WAL mode with exactly one
//! writer connection and a pool of read-only connections.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;

use rusqlite::functions::FunctionFlags;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::{Connection, InterruptHandle, OpenFlags};
use tokio::sync::{Notify, OwnedMutexGuard};

use super::capture::Capture;
use super::error::{Error, Result};
use super::recover::recover;
use crate::log::{Log, Lsn};

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
    capture: Capture,
    shared: Arc<Shared>,
}

impl Writer {
    /// The connection.
    pub fn conn(&self) -> &Conn {
        &self.conn
    }

    /// Records that a write transaction committed on this connection and
    /// captures it into the log; returns the LSN the commit must wait for
    /// ([`Database::commit_durable`]) before it is acknowledged.
    ///
    /// This is the one place every commit passes through, right after
    /// SQLite's COMMIT and before the next write. If capture fails, the
    /// database stops taking writes: its file and its log would disagree.
    pub fn after_commit(&mut self) -> Result<Lsn> {
        self.shared.commit_seq.fetch_add(1, Ordering::SeqCst);
        let captured = self.capture.after_commit(self.conn.sqlite());
        if let Err(e) = &captured {
            tracing::error!(error = %e, "capture failed; the database takes no more writes");
            *self.shared.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
        }
        captured
    }
}

/// Waits, after a commit is durable locally, for whatever replication
/// demands (synchronous-commit secondaries) before it is acknowledged.
#[async_trait]
pub trait CommitHook: Send + Sync {
    /// Returns once the commit ending at `lsn` may be acknowledged.
    async fn wait(&self, lsn: Lsn) -> Result<()>;
}

/// Where a database stands in an availability group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not in a group, or the group's primary: takes writes.
    ReadWrite,
    /// A secondary: read-only, written only by redo.
    Secondary {
        /// The availability group.
        group: String,
        /// The primary replica's name, for error messages.
        primary: String,
    },
}

/// State shared by a database, its writer and the replication layer.
struct Shared {
    commit_seq: AtomicU64,
    epoch: Arc<AtomicU64>,
    /// Lowest LSN a replica still needs (`u64::MAX`: none).
    retain_from: Arc<AtomicU64>,
    in_recovery: Arc<AtomicBool>,
    failed: Mutex<Option<String>>,
    /// Writes allowed until this monotonic time (µs); `NO_LEASE`: always.
    lease_until_us: AtomicU64,
    role: RwLock<Role>,
    hook: RwLock<Option<Arc<dyn CommitHook>>>,
}

/// No lease: writes need none.
const NO_LEASE: u64 = u64::MAX;

/// Microseconds on this process's monotonic clock (leases are measured on
/// it, never on the wall clock).
pub fn monotonic_us() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_micros() as u64
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

/// A database: its file, its log, its writer and its readers.
pub struct Database {
    name: String,
    path: PathBuf,
    log_dir: PathBuf,
    log: Arc<Log>,
    writer: Arc<tokio::sync::Mutex<Writer>>,
    readers: Arc<Mutex<Vec<Conn>>>,
    shared: Arc<Shared>,
}

impl Database {
    /// Opens (creating if needed) the database file at `path` with its log
    /// in `log_dir`, recovering the file from the log first.
    pub fn open(name: &str, path: &Path, log_dir: &Path) -> Result<Database> {
        let log = recover(name, path, log_dir)?;
        let shared = Arc::new(Shared {
            commit_seq: AtomicU64::new(0),
            epoch: Arc::new(AtomicU64::new(1)),
            retain_from: Arc::new(AtomicU64::new(u64::MAX)),
            in_recovery: Arc::new(AtomicBool::new(false)),
            failed: Mutex::new(None),
            lease_until_us: AtomicU64::new(NO_LEASE),
            role: RwLock::new(Role::ReadWrite),
            hook: RwLock::new(None),
        });
        let wal_frames = Arc::new(AtomicU32::new(0));
        let conn = open_writer(path, name, &shared.in_recovery, &wal_frames)?;
        let capture = Capture::new(
            path,
            log.clone(),
            log_dir.to_path_buf(),
            shared.epoch.clone(),
            shared.retain_from.clone(),
            wal_frames,
        );
        Ok(Database {
            name: name.to_string(),
            path: path.to_path_buf(),
            log_dir: log_dir.to_path_buf(),
            log,
            writer: Arc::new(tokio::sync::Mutex::new(Writer {
                conn,
                capture,
                shared: shared.clone(),
            })),
            readers: Arc::new(Mutex::new(Vec::new())),
            shared,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The log directory.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// The database's transaction log.
    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    /// The role in an availability group.
    pub fn role(&self) -> Role {
        self.shared
            .role
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Makes the database a secondary (read-only, written by redo) or
    /// read-write again.
    pub fn set_role(&self, role: Role) {
        self.shared
            .in_recovery
            .store(matches!(role, Role::Secondary { .. }), Ordering::SeqCst);
        *self.shared.role.write().unwrap_or_else(|e| e.into_inner()) = role;
    }

    /// Makes this database writable here at `epoch` (a secondary becoming
    /// primary): capture starts after whatever redo left in the WAL, and new
    /// records carry the new epoch, which the epoch history records.
    pub async fn promote(&self, epoch: u64) -> Result<()> {
        let mut writer = self.writer.clone().lock_owned().await;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let Writer { conn, capture, .. } = &mut *writer;
            capture.skip_to_end(conn.sqlite(), &path)
        })
        .await
        .map_err(|e| Error::sql("XX000", e.to_string()))??;
        self.set_epoch(epoch)?;
        self.set_role(Role::ReadWrite);
        Ok(())
    }

    /// Installs (or removes) what commits wait for after local durability.
    pub fn set_commit_hook(&self, hook: Option<Arc<dyn CommitHook>>) {
        *self.shared.hook.write().unwrap_or_else(|e| e.into_inner()) = hook;
    }

    /// Sets the epoch new records carry, and records in the epoch history
    /// where it starts (the log's end now).
    pub fn set_epoch(&self, epoch: u64) -> Result<()> {
        crate::log::append_history(&self.log_dir, epoch, self.log.end_lsn())
            .map_err(|e| Error::sql("58030", e.to_string()))?;
        self.shared.epoch.store(epoch, Ordering::SeqCst);
        Ok(())
    }

    /// The epoch history of this database's log.
    pub fn epoch_history(&self) -> Vec<(u64, Lsn)> {
        crate::log::read_history(&self.log_dir).unwrap_or_default()
    }

    /// The lowest LSN replicas still need (`u64::MAX`: none).
    pub fn retain_from(&self) -> Lsn {
        self.shared.retain_from.load(Ordering::SeqCst)
    }

    /// Sets the lowest LSN replicas still need (log truncation stops there).
    pub fn set_retain_from(&self, lsn: Lsn) {
        self.shared.retain_from.store(lsn, Ordering::SeqCst);
    }

    /// Appends a full image of the database (every page) to the log, under
    /// the write lock, and waits until it is durable; returns its LSN. A
    /// replica that redoes the log from there gets the whole database: this
    /// is how secondaries are seeded.
    pub async fn write_base_image(&self) -> Result<Lsn> {
        self.check_writable()?;
        let writer = self.writer.clone().lock_owned().await;
        let log = self.log.clone();
        let epoch = self.shared.epoch.load(Ordering::SeqCst);
        let (start, end) = tokio::task::spawn_blocking(move || -> Result<(Lsn, Lsn)> {
            let start = log.end_lsn();
            let mut end = start;
            super::image::for_each_image_part(writer.conn().sqlite(), epoch, |part| {
                end = log
                    .append(part)
                    .map_err(|e| Error::sql("58030", e.to_string()))?;
                Ok(())
            })?;
            drop(writer);
            Ok((start, end))
        })
        .await
        .map_err(|e| Error::sql("XX000", e.to_string()))??;
        self.log
            .wait_durable(end)
            .await
            .map_err(|e| Error::sql("58030", e.to_string()))?;
        tracing::info!(database = %self.name, lsn = start, bytes = end - start, "wrote a full image to the log for seeding");
        Ok(start)
    }

    /// Waits until the commit ending at `lsn` may be acknowledged: hardened
    /// in the local log, then whatever the commit hook demands.
    pub async fn commit_durable(&self, lsn: Lsn) -> Result<()> {
        let local = async {
            self.log
                .wait_durable(lsn)
                .await
                .map_err(|e| Error::sql("58030", format!("cannot make the commit durable: {e}")))
        };
        let hook = self
            .shared
            .hook
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // The local fsync and the secondaries' hardening run in parallel
        // (records are shipped before the local fsync); both must finish.
        match hook {
            Some(hook) => tokio::try_join!(local, hook.wait(lsn)).map(|_| ())?,
            None => local.await?,
        }
        if self.is_resolving() {
            // Durable here, but the lease ran out before the acknowledgement:
            // a new primary may not have it. The client must check.
            return Err(Error::sql(
                "40003",
                format!(
                    "the commit on database \"{}\" is durable on this replica, but its lease as primary ran out before it could be acknowledged",
                    self.name
                ),
            )
            .with_hint("reconnect to the primary and check whether the transaction is there"));
        }
        Ok(())
    }

    /// Why the database stopped taking writes (capture or log failure).
    pub fn failure(&self) -> Option<String> {
        self.shared
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The database's name (as in `CREATE DATABASE name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of write transactions committed since the node started. A
    /// read snapshot taken when this was `n` is still the newest state while
    /// it is still `n` (checked under the write lock).
    pub fn commit_seq(&self) -> u64 {
        self.shared.commit_seq.load(Ordering::SeqCst)
    }

    /// Takes the write lock, waiting in line for at most `timeout` (None:
    /// forever), and giving up early when `cancel` is notified.
    pub async fn writer(&self, timeout: Option<Duration>, cancel: &Notify) -> Result<WriterGuard> {
        self.check_writable()?;
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

    /// Refuses writes on a secondary or a database whose log failed.
    pub fn check_writable(&self) -> Result<()> {
        if let Role::Secondary { group, primary } = self.role() {
            return Err(Error::sql(
                "25006",
                format!(
                    "database \"{}\" is read-only on this replica: it is a secondary of availability group \"{group}\"",
                    self.name
                ),
            )
            .with_hint(format!(
                "write on the primary replica \"{primary}\", or connect with target_session_attrs=read-write"
            )));
        }
        if let Some(why) = self
            .shared
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            return Err(Error::sql(
                "XX000",
                format!(
                    "database \"{}\" takes no writes after a failure: {why}",
                    self.name
                ),
            )
            .with_hint("restart the node; recovery rebuilds the database from its log"));
        }
        let deadline = self.shared.lease_until_us.load(Ordering::SeqCst);
        if deadline != NO_LEASE && monotonic_us() >= deadline {
            return Err(Error::sql(
                "25006",
                format!(
                    "database \"{}\" is RESOLVING on this replica: its lease as primary ran out, so another replica may be primary now",
                    self.name
                ),
            )
            .with_hint("reconnect, with target_session_attrs=read-write to find the primary"));
        }
        Ok(())
    }

    /// Writes are allowed until `until_us` on [`monotonic_us`]'s clock: the
    /// primary's lease as the cluster granted it (None: no lease needed —
    /// a node outside a cluster, or a read-scale group).
    pub fn set_lease(&self, until_us: Option<u64>) {
        self.shared
            .lease_until_us
            .store(until_us.unwrap_or(NO_LEASE), Ordering::SeqCst);
    }

    /// True while writes wait for a lease that ran out (role RESOLVING).
    pub fn is_resolving(&self) -> bool {
        let deadline = self.shared.lease_until_us.load(Ordering::SeqCst);
        deadline != NO_LEASE && monotonic_us() >= deadline
    }

    /// Borrows a read-only connection (opening one if none is idle).
    pub fn reader(&self) -> Result<Reader> {
        let pooled = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => open_reader(&self.path, &self.name, &self.shared.in_recovery)?,
        };
        Ok(Reader {
            conn: Some(conn),
            pool: self.readers.clone(),
        })
    }
}

fn open_writer(
    path: &Path,
    name: &str,
    in_recovery: &Arc<AtomicBool>,
    wal_frames: &Arc<AtomicU32>,
) -> Result<Conn> {
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| open_error(path, e))?;
    // The log, not SQLite's WAL, makes commits durable (it is fsynced before
    // a commit is acknowledged), so SQLite need not sync at commit. NORMAL
    // still syncs the WAL before, and the file after, each checkpoint.
    // availdb checkpoints itself, only as far as the log is durable.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA wal_autocheckpoint = 0;
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;",
    )?;
    // After the pragma (it would replace the hook): SQLite's own count of
    // frames in the WAL after each commit, to cross-check capture.
    let frames = wal_frames.clone();
    conn.wal_hook(Some(
        move |_: &mut rusqlite::hooks::Wal, n: std::ffi::c_int| {
            frames.store(n.max(0) as u32, Ordering::SeqCst);
            Ok(())
        },
    ))?;
    finish_setup(conn, path, name, in_recovery)
}

fn open_reader(path: &Path, name: &str, in_recovery: &Arc<AtomicBool>) -> Result<Conn> {
    // Readers are read-only at the SQLite level: nothing but the writer (and,
    // on a secondary, the redo applier) may ever write the file.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| open_error(path, e))?;
    conn.execute_batch("PRAGMA busy_timeout = 5000;")?;
    finish_setup(conn, path, name, in_recovery)
}

fn open_error(path: &Path, e: rusqlite::Error) -> Error {
    Error::Io {
        context: format!("cannot open database file {}", path.display()),
        source: std::io::Error::other(e.to_string()),
    }
}

/// Registers availdb's SQL functions and the authorizer on a new connection.
fn finish_setup(
    mut conn: Connection,
    path: &Path,
    name: &str,
    in_recovery: &Arc<AtomicBool>,
) -> Result<Conn> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    let version = format!(
        "PostgreSQL {PG_VERSION} (availdb {}, SQLite {})",
        env!("CARGO_PKG_VERSION"),
        rusqlite::version()
    );
    conn.create_scalar_function("version", 0, flags, move |_| Ok(version.clone()))?;
    let db_name = name.to_string();
    conn.create_scalar_function("current_database", 0, flags, move |_| Ok(db_name.clone()))?;
    let recovering = in_recovery.clone();
    conn.create_scalar_function(
        "pg_is_in_recovery",
        0,
        FunctionFlags::SQLITE_UTF8,
        move |_| Ok(recovering.load(Ordering::SeqCst)),
    )?;
    // Each connection answers pg_backend_pid() with its own number.
    static NEXT_PID: AtomicU32 = AtomicU32::new(1000);
    let pid = NEXT_PID.fetch_add(1, Ordering::Relaxed);
    let dir = path.parent().unwrap_or(Path::new("."));
    super::catalog::install(&conn, dir, i64::from(pid))?;
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
        // VACUUM attaches a nameless temporary database; that one is fine.
        AuthAction::Attach { filename: "" } => Authorization::Allow,
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
        let db = Database::open("t", &dir.path().join("t.db"), &dir.path().join("log")).unwrap();
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
        c.execute_batch("VACUUM")
            .expect("VACUUM attaches a temporary database");
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
        let db = Database::open("t", &dir.path().join("t.db"), &dir.path().join("log")).unwrap();
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
