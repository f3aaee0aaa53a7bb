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
use super::error::{refusal_text, Error, Result};
use super::fence::{Closed, Fence, Writes};
use super::recover::recover;
use super::redo::{Applier, PageSet};
use crate::log::{Log, Lsn};

/// PostgreSQL version we announce; libpq and drivers need ≥ 14 to enable
/// `target_session_attrs` and friends.
pub const PG_VERSION: &str = "16.0";

/// A SQLite connection and the handle that interrupts whatever it runs.
pub struct Conn {
    conn: Connection,
    interrupt: Arc<InterruptHandle>,
    /// The URI of the session space attached as `pg_temp`, if any
    /// ([`super::temp`]).
    bound: std::cell::RefCell<Option<String>>,
    /// The borrowing session's `currval` state ([`super::sequence`]).
    sequences: super::sequence::Slot,
    /// Set while availdb itself edits the schema
    /// ([`Conn::add_table_constraint`]): the authorizer lets it through.
    editing: Arc<AtomicBool>,
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

    /// Lends the connection to a session: its `currval` state
    /// ([`super::sequence`]) and its TEMP objects, as schema `pg_temp`, and
    /// no other session's. Called whenever a session borrows the
    /// connection, before its transaction begins ([`super::temp`], rules 1
    /// and 2).
    pub fn bind(
        &self,
        space: Option<&super::TempSpace>,
        sequences: &Arc<Mutex<super::SessionSequences>>,
    ) -> Result<()> {
        *self.sequences.lock().unwrap_or_else(|e| e.into_inner()) = Some(sequences.clone());
        self.bind_space(space)
    }

    /// Changes table `table`'s definition (its `CREATE TABLE` text in
    /// `sqlite_schema`) to what `edit` makes of it, for the changes
    /// SQLite's ALTER TABLE cannot make (`sql::pg::definition`): SQLite's
    /// documented procedure for schema changes that leave the stored rows
    /// as they are ("Making Other Kinds Of Table Schema Changes"), with the
    /// schema version raised so every connection, on every replica, reads
    /// the table anew. Runs inside the caller's transaction, which undoes
    /// it on error. Before anything is written, both definitions are
    /// created on a scratch database and must store rows the same way:
    /// the same columns in the same order, the same keys, the same rowid;
    /// a change that would move the rows (a new rowid alias, WITHOUT
    /// ROWID) is refused (0A000). A column whose storage affinity changes
    /// (`ALTER COLUMN … TYPE`) is returned with its new affinity (SQLite's
    /// letter: `i`nteger, `r`eal, `n`umeric, `t`ext, `b`lob): the stored
    /// values stay valid records, and the caller converts them
    /// ([`Conn::rewrite_columns`]) in the same transaction.
    pub fn edit_table_definition(
        &self,
        table: &str,
        edit: impl FnOnce(&str) -> std::result::Result<String, String>,
    ) -> Result<Vec<(String, char)>> {
        use rusqlite::OptionalExtension;
        let conn = &self.conn;
        let sql: Option<String> = conn
            .query_row(
                "SELECT sql FROM main.sqlite_schema WHERE type = 'table' AND name = ?1",
                [table],
                |r| r.get(0),
            )
            .optional()?;
        let Some(sql) = sql else {
            return Err(Error::sql(
                "42P01",
                format!("relation \"{table}\" does not exist"),
            ));
        };
        let new_sql = edit(&sql).map_err(|why| Error::sql("42601", why))?;
        let (old_shape, new_shape) = (storage_shape(&sql, table)?, storage_shape(&new_sql, table)?);
        let same_place = |(a, b): (&(String, i64, char), &(String, i64, char))| {
            a.0 == b.0 && a.1 == b.1 && (a.2 == 'w') == (b.2 == 'w') && (a.2 != 'w' || a == b)
        };
        if old_shape.len() != new_shape.len() || !old_shape.iter().zip(&new_shape).all(same_place) {
            return Err(Error::sql(
                "0A000",
                format!("not supported in availdb: an ALTER TABLE of \"{table}\" that changes how its rows are stored"),
            )
            .with_hint("add a new column, copy the values with UPDATE, then drop the old one"));
        }
        self.editing.store(true, Ordering::SeqCst);
        let edited = (|| -> rusqlite::Result<()> {
            let version: i64 = conn.query_row("PRAGMA main.schema_version", [], |r| r.get(0))?;
            conn.execute_batch("PRAGMA writable_schema = ON")?;
            conn.execute(
                "UPDATE main.sqlite_schema SET sql = ?1 WHERE type = 'table' AND name = ?2",
                [new_sql.as_str(), table],
            )?;
            conn.execute_batch(&format!("PRAGMA main.schema_version = {}", version + 1))?;
            conn.execute_batch("PRAGMA writable_schema = OFF")
        })();
        self.editing.store(false, Ordering::SeqCst);
        edited?;
        Ok(old_shape
            .iter()
            .zip(new_shape)
            .filter(|(old, new)| new.2 != 'w' && old.2 != new.2)
            .map(|(_, (name, _, affinity))| (name, affinity))
            .collect())
    }

    /// Sets every row's `column` to `expr` (SQL over the row), for each
    /// `(column, expr)`, in one UPDATE, so that the values take the
    /// column's new type (`ALTER COLUMN … TYPE … [USING expr]`, after
    /// [`Conn::edit_table_definition`]): SQLite applies a column's
    /// affinity when a value is stored, and its indexes follow. The
    /// table's triggers are dropped around it and made again from their
    /// own text, so no trigger fires for a conversion, as in PostgreSQL's
    /// table rewrite. Runs inside the caller's transaction.
    pub fn rewrite_columns(&self, table: &str, rewrites: &[(String, String)]) -> Result<()> {
        if rewrites.is_empty() {
            return Ok(());
        }
        let quoted = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let conn = &self.conn;
        let triggers = conn
            .prepare(
                "SELECT name, sql FROM main.sqlite_schema WHERE type = 'trigger' AND tbl_name = ?1",
            )?
            .query_map([table], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for (name, _) in &triggers {
            conn.execute_batch(&format!("DROP TRIGGER main.{}", quoted(name)))?;
        }
        let set = rewrites
            .iter()
            .map(|(column, expr)| format!("{} = ({expr})", quoted(column)))
            .collect::<Vec<_>>()
            .join(", ");
        conn.execute_batch(&format!("UPDATE main.{} SET {set}", quoted(table)))?;
        for (_, sql) in &triggers {
            conn.execute_batch(sql)?;
        }
        Ok(())
    }

    /// Ends a session's loan (a reader going back to the pool).
    fn unbind(&self) -> Result<()> {
        *self.sequences.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.bind_space(None)
    }

    fn bind_space(&self, space: Option<&super::TempSpace>) -> Result<()> {
        let want = space.map(|s| s.uri());
        if self.bound.borrow().as_deref() == want {
            return Ok(());
        }
        if self.bound.borrow().is_some() {
            self.conn
                .execute_batch(&format!("DETACH DATABASE {}", super::temp::SCHEMA))?;
            *self.bound.borrow_mut() = None;
        }
        if let Some(uri) = want {
            // A literal, so that the authorizer sees the name (it is a
            // UUID: no quote to escape).
            self.conn.execute_batch(&format!(
                "ATTACH DATABASE '{uri}' AS {}",
                super::temp::SCHEMA
            ))?;
            *self.bound.borrow_mut() = Some(uri.to_string());
        }
        Ok(())
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
        match &captured {
            // The file holds the commit already: it is applied.
            Ok(end) => self.shared.applied.store(*end, Ordering::SeqCst),
            Err(e) => {
                tracing::error!(error = %e, "capture failed; the database takes no more writes");
                *self.shared.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                crate::failstop::announce(format!(
                    "a commit could not be captured into its log ({e})"
                ));
            }
        }
        captured
    }

    /// Whether capture was told of the WAL's changes by the VFS (tests).
    #[cfg(test)]
    fn capture_watches_the_wal(&self) -> bool {
        self.capture.watches_the_wal()
    }
}

/// Waits, after a commit is durable locally, for whatever replication
/// demands (synchronous-commit secondaries) before it is acknowledged.
#[async_trait]
pub trait CommitHook: Send + Sync {
    /// Returns once the commit ending at `lsn` may be acknowledged.
    async fn wait(&self, lsn: Lsn) -> Result<()>;
}

/// Admits a write transaction before it takes the write lock: may wait
/// (throttle) and refuse. Replication installs one to bound how far a
/// geo-secondary may fall behind (`GEO_MAX_LAG`).
#[async_trait]
pub trait WriteGate: Send + Sync {
    /// Returns once a write transaction on `database` may begin.
    async fn admit(&self, database: &str) -> Result<()>;
}

/// Where a database stands in an availability group, as sessions see it
/// (derived from the [`Fence`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not in a group, or the group's primary: takes writes (while the
    /// fence is open).
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
    /// The epoch new records carry: the fence's, copied here for capture
    /// whenever the fence changes (under the fence's lock).
    epoch: Arc<AtomicU64>,
    /// Lowest LSN a replica, or the next log backup, still needs
    /// (`u64::MAX`: none): the smaller of the two below, which
    /// `retain_lock` keeps in step.
    retain_from: Arc<AtomicU64>,
    /// Lowest LSN a replica still needs, as replication last said.
    replica_retain: AtomicU64,
    /// Where the next log backup starts, once a backup chain is in use.
    backup_retain: AtomicU64,
    retain_lock: Mutex<()>,
    in_recovery: Arc<AtomicBool>,
    failed: Mutex<Option<String>>,
    /// Everything before this LSN is in the database file: recovery sets it
    /// to the log's end, redo moves it on a secondary, and on a writable
    /// database every captured commit is in the file already.
    applied: AtomicU64,
    /// `SET READ_ONLY`: no writes, whatever the fence says.
    read_only: AtomicBool,
    fence: RwLock<Fence>,
    /// Admits write transactions (None: every one).
    write_gate: RwLock<Option<Arc<dyn WriteGate>>>,
}

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
            if conn.unbind().is_err() {
                // Still shows a session's TEMP objects: never reuse it.
                return;
            }
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
    /// The redo applier, opened on first use: on a secondary the only
    /// writer of the file. Held for a whole batch, so redo never runs twice
    /// at once whoever asks (a group restarted while its predecessor's
    /// batch is still running), and always starts from the applied LSN.
    redo: Mutex<Option<Applier>>,
    /// Held while records received from a primary are checked and
    /// appended to the log, so a promotion that closes the intake knows
    /// that nothing is in flight once it holds it.
    intake: Mutex<()>,
    /// Interrupts the writer connection's running statement.
    writer_interrupt: std::sync::OnceLock<Arc<InterruptHandle>>,
    /// Bumped when a promotion needs every read transaction on this
    /// database ended (see [`Database::promote`]); the front end follows
    /// it ([`Database::subscribe_read_ends`]).
    read_ends: tokio::sync::watch::Sender<u64>,
    /// Set once a copy seeded from the primary is to replace this one
    /// ([`Database::retire`]): its sessions end, so nothing holds it.
    retiring: AtomicBool,
    /// Bumped by each [`Database::retire`]; the front end follows it
    /// ([`Database::subscribe_retire`]).
    retire_requests: tokio::sync::watch::Sender<u64>,
    /// Where the full image that redo is inside starts (`u64::MAX`: none).
    /// The log is kept from there: a drain may have to cut a half image
    /// back to its start (`SecondaryDb`).
    image_from: AtomicU64,
}

/// How long a promotion keeps asking sessions to end their read
/// transactions before it gives up (the role driver then retries it).
const READERS_END_WITHIN: Duration = Duration::from_secs(15);
/// How soon a promotion first tries again to empty the WAL while readers
/// hold it (each try returns at once: no busy wait inside SQLite); the
/// pause doubles up to `READERS_ASK_EVERY`.
const READERS_RETRY_FIRST: Duration = Duration::from_millis(1);
/// How often a promotion asks the sessions again (a session that was
/// running a statement ends its transaction at the next request).
const READERS_ASK_EVERY: Duration = Duration::from_millis(20);
/// How long the writer's statements wait for SQLite's locks.
const WRITER_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What writing a repaired page did ([`Database::write_repaired_page`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageRepair {
    /// Written; the file holds it at this LSN (a primary: the LSN of the
    /// commit that logged it).
    Written {
        /// Where.
        at: Lsn,
    },
    /// A record after the partner's copy wrote the page again: the damaged
    /// copy is gone already.
    Replaced,
    /// The file is behind the partner's copy: redo up to it first.
    Behind {
        /// The file's applied LSN.
        at: Lsn,
    },
}

/// One batch of redo: what it applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redone {
    /// The applied LSN after the batch.
    pub end: Lsn,
    /// Bytes of log redone.
    pub bytes: u64,
    /// Commit time of the batch's last record (µs since the Unix epoch).
    pub commit_time_us: i64,
    /// The batch ended inside a full image: the file is part new, part old.
    pub inside_image: bool,
}

impl Database {
    /// Opens (creating if needed) the database file at `path` with its log
    /// in `log_dir`, recovering the file from the log first.
    pub fn open(name: &str, path: &Path, log_dir: &Path) -> Result<Database> {
        super::vfs::install();
        let (log, applied) = recover(name, path, log_dir)?;
        if applied < log.end_lsn() {
            // The log ends inside a transaction whose last part never
            // reached it: never acknowledged, never applied. Cut it, so the
            // log continues at a transaction boundary (a primary resends
            // it to a secondary; a writable database writes after it).
            log.truncate_from(applied)
                .map_err(|e| Error::sql("XX001", format!("database \"{name}\": {e}")))?;
        }
        let newest_epoch = crate::log::read_history(log_dir)
            .ok()
            .and_then(|h| h.last().map(|(e, _)| *e))
            .unwrap_or(1);
        let shared = Arc::new(Shared {
            commit_seq: AtomicU64::new(0),
            epoch: Arc::new(AtomicU64::new(newest_epoch)),
            retain_from: Arc::new(AtomicU64::new(u64::MAX)),
            replica_retain: AtomicU64::new(u64::MAX),
            backup_retain: AtomicU64::new(u64::MAX),
            retain_lock: Mutex::new(()),
            in_recovery: Arc::new(AtomicBool::new(false)),
            failed: Mutex::new(None),
            applied: AtomicU64::new(applied),
            read_only: AtomicBool::new(false),
            fence: RwLock::new(Fence::Standalone),
            write_gate: RwLock::new(None),
        });
        let wal_frames = Arc::new(AtomicU32::new(0));
        let conn = open_writer(path, name, &shared, &wal_frames)?;
        let writer_interrupt = std::sync::OnceLock::new();
        let _ = writer_interrupt.set(conn.interrupt_handle());
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
            redo: Mutex::new(None),
            intake: Mutex::new(()),
            writer_interrupt,
            read_ends: tokio::sync::watch::channel(0).0,
            retiring: AtomicBool::new(false),
            retire_requests: tokio::sync::watch::channel(0).0,
            image_from: AtomicU64::new(u64::MAX),
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

    /// The size of the database's file on disk (its WAL aside): what
    /// seeding a replica would copy, near enough to choose how.
    pub fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// The database's transaction log.
    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    /// The role in an availability group, as sessions see it.
    pub fn role(&self) -> Role {
        match &*self.read_fence() {
            Fence::Secondary { group, primary } => Role::Secondary {
                group: group.clone(),
                primary: primary.clone(),
            },
            Fence::GeoSecondary { server, database } => Role::Secondary {
                group: format!("geo-replication from {database} on server '{server}'"),
                primary: format!("{database} on server '{server}'"),
            },
            _ => Role::ReadWrite,
        }
    }

    fn read_fence(&self) -> std::sync::RwLockReadGuard<'_, Fence> {
        self.shared.fence.read().unwrap_or_else(|e| e.into_inner())
    }

    /// True while this node is a secondary of the database's group (its
    /// copy written by redo alone), without cloning the fence.
    pub fn is_secondary(&self) -> bool {
        matches!(*self.read_fence(), Fence::Secondary { .. })
    }

    /// The write fence as it stands now.
    pub fn fence(&self) -> Fence {
        self.read_fence().clone()
    }

    /// Replaces the write fence in one step (see [`Fence`]). A primary
    /// fence of an epoch newer than the log's epoch history records in the
    /// history that the epoch starts at the log's end.
    pub fn set_fence(&self, fence: Fence) -> Result<()> {
        let mut current = self.shared.fence.write().unwrap_or_else(|e| e.into_inner());
        if let Some(epoch) = fence.epoch() {
            crate::log::append_history(&self.log_dir, epoch, self.log.end_lsn())
                .map_err(|e| Error::sql("58030", e.to_string()))?;
            self.shared.epoch.store(epoch, Ordering::SeqCst);
        }
        self.shared
            .in_recovery
            .store(fence.is_secondary(), Ordering::SeqCst);
        *current = fence;
        Ok(())
    }

    /// Extends the lease of the primary fence of `epoch` to `until_us`
    /// ([`monotonic_us`]); false (nothing changes) when the fence is not
    /// that epoch's primary waiting for or holding a lease — a renewal that
    /// arrives after the role moved on must not reopen writes.
    pub fn renew_lease(&self, epoch: u64, until_us: u64) -> bool {
        let mut fence = self.shared.fence.write().unwrap_or_else(|e| e.into_inner());
        match &mut *fence {
            Fence::Primary(p)
                if p.epoch == epoch
                    && matches!(
                        p.writes,
                        Writes::Until(_)
                            | Writes::Closed(Closed::AwaitingLease | Closed::LeaseLost)
                    ) =>
            {
                p.writes = Writes::Until(until_us);
                true
            }
            _ => false,
        }
    }

    /// Closes the writes of the primary fence of `epoch` (false when the
    /// fence is not that epoch's primary).
    pub fn close_writes(&self, epoch: u64, why: Closed) -> bool {
        let mut fence = self.shared.fence.write().unwrap_or_else(|e| e.into_inner());
        match &mut *fence {
            Fence::Primary(p) if p.epoch == epoch => {
                p.writes = Writes::Closed(why);
                true
            }
            _ => false,
        }
    }

    /// Redoes the records that follow what the file holds: under the redo
    /// lock, `next(applied LSN)` returns them (whole records, in order,
    /// starting at that LSN; hardened only — the file must never hold what
    /// the log may lose), they are applied in one SQLite transaction
    /// (readers see all of them or none), and the applied LSN moves to
    /// their end. None when `next` had nothing.
    ///
    /// A batch that ends inside a full image leaves the file part new, part
    /// old (seeding); the image's last part makes it whole.
    ///
    /// A batch that holds no whole transaction starts one larger than what
    /// `next` returns at a time: it is redone part by part, `next` called
    /// again from the end of what it returned until the transaction's last
    /// part, all in one SQLite transaction and with one read of `next` in
    /// memory at a time (the caller returns records of such a transaction
    /// only once its last part is hardened). Records after a batch's last
    /// whole transaction are left for the next call.
    pub fn redo_next(
        &self,
        mut next: impl FnMut(Lsn) -> std::result::Result<Vec<crate::log::Record>, String>,
    ) -> std::result::Result<Option<Redone>, String> {
        let mut applier = self.redo.lock().unwrap_or_else(|e| e.into_inner());
        let from = self.applied_lsn();
        let mut records = next(from)?;
        let Some(first) = records.first() else {
            return Ok(None);
        };
        if first.lsn != from {
            return Err(format!(
                "redo of database \"{}\" must continue at LSN {from}, not {}",
                self.name, first.lsn
            ));
        }
        let a = match &mut *applier {
            Some(a) => a,
            None => applier.insert(Applier::open(&self.path).map_err(|e| e.to_string())?),
        };
        let whole = super::recover::whole_transactions(&records);
        let (applied, done) = if whole == 0 {
            self.redo_streamed(a, from, std::mem::take(&mut records), &mut next)
        } else {
            records.truncate(whole);
            let last = records.last().expect("whole > 0");
            let end = last.end_lsn();
            let done = Redone {
                end,
                bytes: end - from,
                commit_time_us: last.commit_time_us,
                inside_image: last.image_continues(),
            };
            let sets: Vec<PageSet<'_>> = records
                .iter()
                .map(|r| PageSet {
                    pages: &r.pages,
                    db_size: r.db_size,
                })
                .collect();
            let applied = if last.image_continues() {
                a.apply_partial(&sets)
            } else {
                a.apply(&sets)
            };
            (applied, done)
        };
        if let Err(e) = applied {
            // A failed batch may leave the connection in any state.
            *applier = None;
            return Err(e.to_string());
        }
        self.set_applied_lsn(done.end);
        if done.inside_image {
            if let Some(start) = records.iter().rfind(|r| r.starts_image()) {
                self.image_from.store(start.lsn, Ordering::SeqCst);
            }
        } else {
            self.image_from.store(u64::MAX, Ordering::SeqCst);
        }
        if !done.inside_image
            && self
                .log
                .image_pending()
                .is_some_and(|(start, _)| done.end > start)
        {
            // The image a restarted log began with is wholly in the file.
            self.log.image_done().map_err(|e| e.to_string())?;
        }
        Ok(Some(done))
    }

    /// Redoes the transaction at `from`, whose first records are `records`,
    /// part by part (see [`Database::redo_next`]).
    fn redo_streamed(
        &self,
        applier: &mut Applier,
        from: Lsn,
        records: Vec<crate::log::Record>,
        next: &mut impl FnMut(Lsn) -> std::result::Result<Vec<crate::log::Record>, String>,
    ) -> (std::result::Result<(), super::redo::RedoError>, Redone) {
        let mut queue = std::collections::VecDeque::from(records);
        let mut done = Redone {
            end: from,
            bytes: 0,
            commit_time_us: 0,
            inside_image: false,
        };
        let applied = applier.apply_streamed(|| {
            if queue.is_empty() {
                queue.extend(next(done.end)?);
            }
            let Some(record) = queue.pop_front() else {
                return Err(format!(
                    "the log has no record at LSN {} (the transaction started at LSN {from})",
                    done.end
                ));
            };
            if record.lsn != done.end {
                return Err(format!(
                    "the part at LSN {} was expected, LSN {} came",
                    done.end, record.lsn
                ));
            }
            if record.starts_image() || record.image_continues() {
                return Err(format!(
                    "the full image at LSN {} interrupts the transaction started at LSN {from}",
                    record.lsn
                ));
            }
            done.end = record.end_lsn();
            done.bytes = done.end - from;
            done.commit_time_us = record.commit_time_us;
            let last = !record.continues_transaction();
            Ok(super::redo::Part {
                pages: record.pages,
                db_size: record.db_size,
                last,
            })
        });
        (applied, done)
    }

    /// Copies redo's WAL into the file (PASSIVE: never waits for readers)
    /// and, when the copy was complete, syncs the file, records the
    /// checkpoint LSN and drops log segments before it that no replica
    /// needs. Returns whether it checkpointed.
    pub fn checkpoint_redone(&self) -> Result<bool> {
        let applier = self.redo.lock().unwrap_or_else(|e| e.into_inner());
        let Some(a) = applier.as_ref() else {
            return Ok(false);
        };
        let end = self.applied_lsn();
        if !super::capture::checkpoint_passive(a.connection())? {
            return Ok(false);
        }
        super::capture::sync_checkpointed_file(a.connection(), &self.path)?;
        crate::log::write_checkpoint(&self.log_dir, end)
            .map_err(|e| Error::sql("58030", e.to_string()))?;
        // Never past the start of an image redo is inside (see `image_from`).
        let keep = end
            .min(self.retain_from())
            .min(self.image_from.load(Ordering::SeqCst));
        self.log
            .truncate_before(keep)
            .map_err(|e| Error::sql("58030", e.to_string()))?;
        Ok(true)
    }

    /// Restarts the log at a full image that starts at `lsn` in `epoch`
    /// (seeding or rewinding this replica): under the redo lock, so no
    /// batch interleaves; the file is redone from the image on. The log
    /// then starts at the image, its history is the image's epoch alone and
    /// recovery starts there — all or nothing across a crash
    /// ([`crate::log::Log::restart_at`]).
    pub fn restart_log_at(&self, lsn: Lsn, epoch: u64) -> std::result::Result<(), String> {
        let _redo = self.redo.lock().unwrap_or_else(|e| e.into_inner());
        self.log.restart_at(lsn, epoch).map_err(|e| e.to_string())?;
        self.set_applied_lsn(lsn);
        // The image rewrites every page: what was damaged is gone.
        super::damage::forget_file(&self.path);
        Ok(())
    }

    /// Takes the intake lock: held while received records are checked and
    /// appended (see the field's documentation). Blocking.
    pub fn intake(&self) -> std::sync::MutexGuard<'_, ()> {
        self.intake.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True while the file is part new, part old: a full image is being
    /// redone (seeding, rewinding) and its last part is not in yet.
    pub fn inside_image(&self) -> bool {
        self.image_from.load(Ordering::SeqCst) != u64::MAX || self.log.image_pending().is_some()
    }

    /// Everything before this LSN is in the database file.
    pub fn applied_lsn(&self) -> Lsn {
        self.shared.applied.load(Ordering::SeqCst)
    }

    /// Records that redo brought the file up to `lsn` (a secondary's redo,
    /// or a log restarted at a full image, whose file starts over).
    pub fn set_applied_lsn(&self, lsn: Lsn) {
        self.shared.applied.store(lsn, Ordering::SeqCst);
    }

    /// Makes this database writable here at `epoch` (a secondary becoming
    /// primary), fenced: capture starts after whatever redo left in the WAL,
    /// new records will carry the new epoch (the epoch history records where
    /// it starts), and writes stay closed (`TakingOffice`) until the caller
    /// sets the open fence with its commit hook.
    ///
    /// Becoming writable empties SQLite's WAL, which a reader's open
    /// snapshot prevents: a session that left a read transaction open here
    /// would hold the promotion forever. So the promotion asks every session
    /// to end its read transactions on this database
    /// ([`Database::subscribe_read_ends`]; SQL Server likewise ends the
    /// sessions of a database whose role changes) and tries again, for at
    /// most 15 s (`READERS_END_WITHIN`).
    ///
    /// The tries do not wait inside SQLite, whose busy handler backs off in
    /// steps of up to 100 ms, and the first one does not wait for the
    /// sessions either (a fixed 20 ms pause and the busy handler made a
    /// geo-secondary's promotion at a planned termination 90–100 ms long,
    /// 50–55 ms without them, in `scripts/bench upgrade`): the first comes
    /// at once, the next after
    /// `READERS_RETRY_FIRST`, then after pauses that double up to
    /// `READERS_ASK_EVERY`; the sessions are asked again every
    /// `READERS_ASK_EVERY`.
    pub async fn promote(&self, group: &str, epoch: u64, log_epoch: u64) -> Result<()> {
        let deadline = std::time::Instant::now() + READERS_END_WITHIN;
        let mut asked: Option<std::time::Instant> = None;
        let mut pause = READERS_RETRY_FIRST;
        loop {
            if asked.is_none_or(|at| at.elapsed() >= READERS_ASK_EVERY) {
                self.read_ends.send_modify(|n| *n += 1);
                asked = Some(std::time::Instant::now());
            }
            match self.make_writable().await {
                Err(e) if e.sqlstate() == "55P03" && std::time::Instant::now() < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(READERS_ASK_EVERY);
                }
                Err(e) => return Err(e),
                Ok(()) => break,
            }
        }
        self.set_applied_lsn(self.log.end_lsn());
        self.set_fence(Fence::Primary(super::fence::PrimaryFence {
            group: group.to_string(),
            epoch,
            log_epoch,
            writes: Writes::Closed(Closed::TakingOffice),
            hook: None,
        }))
    }

    /// Follows the promotions' requests to end every read transaction on
    /// this database (see [`Database::promote`]).
    pub fn subscribe_read_ends(&self) -> tokio::sync::watch::Receiver<u64> {
        self.read_ends.subscribe()
    }

    /// Marks this copy as about to be replaced (a copy the primary seeded
    /// from a streamed backup takes its place) and asks the front end to
    /// end every session on it: idle ones at once, busy ones at their
    /// next message (FATAL 57P01, as SQL Server drops the connections of
    /// a database that is restored). Asking again asks again.
    pub fn retire(&self) {
        self.retiring.store(true, Ordering::SeqCst);
        self.retire_requests.send_modify(|n| *n += 1);
    }

    /// Takes back [`Database::retire`]: the copy meant to replace this one
    /// did not, so sessions may use it again.
    pub fn keep(&self) {
        self.retiring.store(false, Ordering::SeqCst);
    }

    /// Whether [`Database::retire`] was called: sessions on it must end.
    pub fn is_retiring(&self) -> bool {
        self.retiring.load(Ordering::SeqCst)
    }

    /// Follows [`Database::retire`]'s requests.
    pub fn subscribe_retire(&self) -> tokio::sync::watch::Receiver<u64> {
        self.retire_requests.subscribe()
    }

    /// The file and log part of [`Database::promote`]: cuts an unfinished
    /// transaction off the log and empties the WAL (55P03 while a reader's
    /// snapshot holds it).
    async fn make_writable(&self) -> Result<()> {
        let mut writer = self.writer.clone().lock_owned().await;
        let path = self.path.clone();
        let (log, applied) = (self.log.clone(), self.applied_lsn());
        tokio::task::spawn_blocking(move || {
            // Parts of a transaction that never got its last part (the old
            // primary stopped between them) may end the log: cut them before
            // this node writes after them — but never a whole transaction
            // that redo has not applied yet.
            let tail = log
                .read_from(applied)
                .map_err(|e| Error::sql("58030", e.to_string()))?;
            if let Some(whole) = tail.iter().rfind(|r| !r.continues_transaction()) {
                return Err(Error::sql(
                    "55000",
                    format!(
                        "redo has not applied LSN {applied}..{} yet: the database cannot become writable",
                        whole.end_lsn()
                    ),
                ));
            }
            log.truncate_from(applied)
                .map_err(|e| Error::sql("58030", e.to_string()))?;
            let Writer { conn, capture, .. } = &mut *writer;
            let sqlite = conn.sqlite();
            // A read of the header opens this connection's WAL first: a
            // checkpoint on a connection that never had a transaction (the
            // writer of a secondary) opens it with `PRAGMA table_list`,
            // which compiles every view of the connection's schema — the
            // catalog's TEMP views, 50 ms, inside an upgrade's read-only
            // window (`scripts/bench upgrade`).
            sqlite.query_row("PRAGMA schema_version", [], |_| Ok(()))?;
            // No busy wait: a reader's snapshot fails the try at once
            // (55P03), and the caller tries again (see `promote`).
            sqlite.busy_timeout(Duration::ZERO)?;
            let emptied = capture.skip_to_end(sqlite, &path);
            sqlite.busy_timeout(WRITER_BUSY_TIMEOUT)?;
            emptied
        })
        .await
        .map_err(|e| Error::sql("XX000", e.to_string()))?
    }

    /// The epoch history of this database's log.
    pub fn epoch_history(&self) -> Vec<(u64, Lsn)> {
        crate::log::read_history(&self.log_dir).unwrap_or_default()
    }

    /// The lowest LSN replicas or the next log backup still need
    /// (`u64::MAX`: none): log truncation stops there.
    pub fn retain_from(&self) -> Lsn {
        self.shared.retain_from.load(Ordering::SeqCst)
    }

    /// Keeps the log from `lsn` on until the next log backup moves it
    /// (`crate::backup`: a backup chain is in use here, SQL Server's
    /// `log_reuse_wait_desc = LOG_BACKUP`).
    pub fn hold_log_for_backups(&self, lsn: Lsn) {
        let s = &self.shared;
        let _lock = s.retain_lock.lock().unwrap_or_else(|e| e.into_inner());
        s.backup_retain.store(lsn, Ordering::SeqCst);
        let merged = s.replica_retain.load(Ordering::SeqCst).min(lsn);
        s.retain_from.store(merged, Ordering::SeqCst);
    }

    /// Where the log is held for the next log backup (`u64::MAX`: it is not).
    pub fn log_backup_hold(&self) -> Lsn {
        self.shared.backup_retain.load(Ordering::SeqCst)
    }

    /// Sets the lowest LSN replicas still need (log truncation stops there).
    pub fn set_retain_from(&self, lsn: Lsn) {
        let s = &self.shared;
        let _lock = s.retain_lock.lock().unwrap_or_else(|e| e.into_inner());
        s.replica_retain.store(lsn, Ordering::SeqCst);
        let merged = s.backup_retain.load(Ordering::SeqCst).min(lsn);
        s.retain_from.store(merged, Ordering::SeqCst);
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
        // The image is of the file as it stands: applied.
        self.shared.applied.fetch_max(end, Ordering::SeqCst);
        self.log
            .wait_durable(end)
            .await
            .map_err(|e| Error::sql("58030", e.to_string()))?;
        tracing::info!(database = %self.name, lsn = start, bytes = end - start, "wrote a full image to the log for seeding");
        Ok(start)
    }

    /// Waits until no commit sits between SQLite and the log, by taking the
    /// write lock for an instant (it is not held afterwards). A read
    /// snapshot begun before this call then holds only transactions whose
    /// records are in the log: a backup bounds its snapshot's LSN this way
    /// without holding the lock while it copies (`crate::backup`).
    pub async fn commits_settled(&self) {
        drop(self.writer.lock().await);
    }

    /// Waits until the commit ending at `lsn` may be acknowledged: hardened
    /// in the local log, then whatever the commit hook demands.
    pub async fn commit_durable(&self, lsn: Lsn) -> Result<()> {
        let hook = self.read_fence().hook();
        let shipping = hook.is_some();
        let local = async {
            // Tasks this commit woke on this worker went into its LIFO slot,
            // which no other worker steals from; the group commit's leader
            // then blocks this worker in the fsync. So yield once first
            // when one of them has work this fsync should not hold up:
            // - the link that ships the records (woken by the append): it
            //   sends them, so the secondaries harden while this replica
            //   does;
            // - the next writer (woken when this commit gave up the write
            //   lock, which it now holds): it commits meanwhile, and the
            //   fsync covers its commit too. Without this yield it waited
            //   out the fsync, lock in hand, and commits reached the log
            //   one fsync at a time (standalone `-c 16`: 11.6k commits/s
            //   with it waiting, 15.5k with the yield; BENCHMARKS.md).
            // With no other writer (one client) nothing is yielded to, and
            // the yield would only add a trip through the scheduler.
            if shipping || self.writer.try_lock().is_err() {
                tokio::task::yield_now().await;
            }
            self.log
                .wait_durable_here(lsn)
                .await
                .map_err(|e| Error::sql("58030", format!("cannot make the commit durable: {e}")))
        };
        // The local fsync and the secondaries' hardening run in parallel
        // (records are shipped before the local fsync); both must finish.
        match hook {
            Some(hook) => {
                let secondaries = async {
                    let started = std::time::Instant::now();
                    let hardened = hook.wait(lsn).await;
                    crate::telemetry::get()
                        .sync_commit_wait
                        .observe(started.elapsed());
                    hardened
                };
                tokio::try_join!(local, secondaries).map(|_| ())?
            }
            None => local.await?,
        }
        if let Err(refusal) = self.read_fence().check(monotonic_us()) {
            // Durable here, but the fence closed before the acknowledgement
            // (the lease ran out, the role moved on): a new primary may not
            // have it. The client must check.
            return Err(Error::sql(
                "40003",
                format!(
                    "the commit on database \"{}\" is durable on this replica, but it could not be acknowledged: this replica {}",
                    self.name,
                    refusal_text(&refusal)
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
            .or_else(|| self.log.failure())
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
        let gate = self
            .shared
            .write_gate
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(gate) = gate {
            tokio::select! {
                admitted = gate.admit(&self.name) => admitted?,
                _ = cancel.notified() => return Err(Error::Canceled),
            }
        }
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
        let guard = tokio::select! {
            guard = waited => guard?,
            _ = cancel.notified() => return Err(Error::Canceled),
        };
        // The wait may have been long (a planned termination holds the
        // lock): the database may have stopped taking writes meanwhile.
        self.check_writable()?;
        Ok(guard)
    }

    /// Holds the write lock without writing, whatever the fence (a READ_ONLY
    /// database too): no transaction commits here until the guard drops.
    /// A geo link's planned termination takes the log's end under it.
    /// Waits in line for at most `within`.
    pub async fn hold_writes(&self, within: Duration) -> Result<WriterGuard> {
        tokio::time::timeout(within, self.writer.clone().lock_owned())
            .await
            .map_err(|_| Error::LockTimeout {
                database: self.name.clone(),
                waited_ms: within.as_millis() as u64,
            })
    }

    /// Installs (or removes) what admits write transactions.
    pub fn set_write_gate(&self, gate: Option<Arc<dyn WriteGate>>) {
        *self
            .shared
            .write_gate
            .write()
            .unwrap_or_else(|e| e.into_inner()) = gate;
    }

    /// Refuses writes on a secondary, on a fenced primary (RESOLVING) and
    /// on a database whose log failed.
    pub fn check_writable(&self) -> Result<()> {
        if let Some(why) = self.failure() {
            return Err(Error::sql(
                "XX000",
                format!(
                    "database \"{}\" takes no writes after a failure: {why}",
                    self.name
                ),
            )
            .with_hint("restart the node; recovery rebuilds the database from its log"));
        }
        if self.is_read_only() {
            return Err(Error::NotWritable {
                database: self.name.clone(),
                refusal: super::fence::Refusal::ReadOnly,
            });
        }
        self.read_fence()
            .check(monotonic_us())
            .map_err(|refusal| Error::NotWritable {
                database: self.name.clone(),
                refusal,
            })
    }

    /// True while the database is READ_ONLY.
    pub fn is_read_only(&self) -> bool {
        self.shared.read_only.load(Ordering::SeqCst)
    }

    /// Makes the database READ_ONLY (or writable again). What happens to a
    /// write transaction open at that moment is the caller's choice (see
    /// [`Database::quiesce_writes`]); one that tries to commit afterwards is
    /// rolled back by the commit hook.
    pub fn set_read_only(&self, read_only: bool) {
        self.shared.read_only.store(read_only, Ordering::SeqCst);
    }

    /// Waits until no write transaction is open (`within`: at most that
    /// long, None: as long as it takes), holding the write lock while `f`
    /// runs, so no transaction starts in between.
    pub async fn quiesce_writes<T>(
        &self,
        within: Option<Duration>,
        f: impl FnOnce() -> T,
    ) -> Result<T> {
        let lock = self.writer.clone().lock_owned();
        let guard = match within {
            Some(t) => tokio::time::timeout(t, lock).await.map_err(|_| {
                Error::sql(
                    "55006",
                    format!("database \"{}\" has an open write transaction", self.name),
                )
                .with_hint("retry when it has ended, or use WITH ROLLBACK IMMEDIATE")
            })?,
            None => lock.await,
        };
        let out = f();
        drop(guard);
        Ok(out)
    }

    /// Interrupts whatever statement runs on the writer connection.
    pub fn interrupt_writer(&self) {
        if let Some(handle) = self.writer_interrupt.get() {
            handle.interrupt();
        }
    }

    /// True while this node holds the primary role but writes are closed
    /// (role RESOLVING).
    pub fn is_resolving(&self) -> bool {
        matches!(
            self.read_fence().check(monotonic_us()),
            Err(super::fence::Refusal::Resolving(_))
        )
    }

    /// Names this database and its damaged page in an
    /// [`Error::CorruptPage`] (SQLite's error knows neither); other errors
    /// pass unchanged.
    pub fn name_damage(&self, err: Error) -> Error {
        let Error::CorruptPage { pgno, .. } = err else {
            return err;
        };
        let damaged = super::damage::pages(&self.path);
        let page = pgno.or_else(|| damaged.last().map(|(p, _)| *p));
        let irreparable = damaged
            .iter()
            .any(|(p, status)| Some(*p) == page && *status == super::damage::Status::Irreparable);
        Error::CorruptPage {
            database: self.name.clone(),
            pgno: page,
            irreparable,
        }
    }

    /// Makes this database's file a suspect of damage when `err` is a
    /// SQLITE_CORRUPT (XX001) that no page checksum explains: the scrubber
    /// then reads the whole file at once ([`super::damage::suspect`]).
    /// True when it did.
    pub fn suspect_damage(&self, err: &Error) -> bool {
        match err {
            Error::Sql {
                sqlstate: "XX001",
                message,
                ..
            } => {
                tracing::warn!(database = %self.name, "SQLite found the file malformed where no page failed its checksum: {message}; scrubbing it at once");
                super::damage::suspect(&self.path, message);
                true
            }
            _ => false,
        }
    }

    /// Waits, at most `within`, for the repair of the pages of this
    /// database found damaged so far; true when none is left damaged.
    pub async fn wait_for_page_repair(&self, within: Duration) -> bool {
        super::damage::wait_repaired(&self.path, within).await
    }

    /// Page `pgno` as this replica's file holds it at rest — no commit (a
    /// primary: under the write lock) or redo batch (a secondary: under
    /// the redo lock) between reading the LSN and the page — and that LSN.
    /// The page is read with its checksum verified: `Err` inside when it is
    /// damaged here too.
    pub async fn page_at_rest(self: &Arc<Self>, pgno: u32) -> Result<(Lsn, Result<Vec<u8>>)> {
        let db = self.clone();
        if self.fence().is_secondary() {
            return tokio::task::spawn_blocking(move || {
                let _redo = db.redo.lock().unwrap_or_else(|e| e.into_inner());
                (db.applied_lsn(), db.read_page(pgno))
            })
            .await
            .map_err(|e| Error::sql("XX000", e.to_string()));
        }
        let writer = self.writer.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || {
            let at = (db.applied_lsn(), db.read_page(pgno));
            drop(writer);
            at
        })
        .await
        .map_err(|e| Error::sql("XX000", e.to_string()))
    }

    fn read_page(&self, pgno: u32) -> Result<Vec<u8>> {
        let reader = self.reader()?;
        let page: Vec<u8> = reader
            .conn()
            .sqlite()
            .query_row(PAGE_BY_NUMBER, [pgno], |r| r.get(0))?;
        if super::checksum::verify(&page) {
            Ok(page)
        } else {
            Err(Error::CorruptPage {
                database: self.name.clone(),
                pgno: Some(pgno),
                irreparable: false,
            })
        }
    }

    /// Writes `image`, page `pgno` as a partner's file held it at
    /// `valid_at`, over this replica's damaged copy — through the path
    /// every page change of this replica takes: on a secondary the redo
    /// applier (the file's only writer), on a primary the writer, whose
    /// commit is captured into the log (so every secondary redoes the page
    /// too) and made durable like any commit.
    ///
    /// The image is this replica's page only if nothing changed the page
    /// between `valid_at` and the file's applied LSN: a record there that
    /// wrote the page (or cut the file below it) replaced the damaged copy
    /// already ([`PageRepair::Replaced`]); a file behind `valid_at` must
    /// redo first ([`PageRepair::Behind`]).
    pub async fn write_repaired_page(
        self: &Arc<Self>,
        pgno: u32,
        image: Vec<u8>,
        valid_at: Lsn,
    ) -> Result<PageRepair> {
        let db = self.clone();
        if self.fence().is_secondary() {
            return tokio::task::spawn_blocking(move || {
                let mut applier = db.redo.lock().unwrap_or_else(|e| e.into_inner());
                let at = db.applied_lsn();
                if at < valid_at {
                    return Ok(PageRepair::Behind { at });
                }
                if db.page_written_between(pgno, valid_at, at)? {
                    return Ok(PageRepair::Replaced);
                }
                let a = match &mut *applier {
                    Some(a) => a,
                    None => applier.insert(
                        Applier::open(&db.path).map_err(|e| Error::sql("XX000", e.to_string()))?,
                    ),
                };
                let written = a.write_page(pgno, &image);
                if let Err(e) = written {
                    *applier = None;
                    return Err(Error::sql(
                        "XX000",
                        format!("cannot write the repaired page: {e}"),
                    ));
                }
                Ok(PageRepair::Written { at })
            })
            .await
            .map_err(|e| Error::sql("XX000", e.to_string()))?;
        }
        self.check_writable()?;
        let mut writer = self.writer.clone().lock_owned().await;
        let (at, written) = tokio::task::spawn_blocking(move || -> Result<(Lsn, Option<Lsn>)> {
            let at = db.applied_lsn();
            if at < valid_at {
                return Ok((at, None));
            }
            if db.page_written_between(pgno, valid_at, at)? {
                return Ok((at, Some(at)));
            }
            let conn = writer.conn.sqlite();
            // SQLite reads the page it overwrites: the damaged copy.
            let verified = super::vfs::set_verification(conn, false);
            let wrote = conn
                .execute_batch("BEGIN IMMEDIATE")
                .and_then(|()| {
                    conn.execute(
                        "INSERT INTO sqlite_dbpage(pgno, data) VALUES (?1, ?2)",
                        (pgno, &image),
                    )
                })
                .and_then(|_| conn.execute_batch("COMMIT"));
            super::vfs::set_verification(conn, verified);
            if let Err(e) = wrote {
                writer.conn.reset();
                return Err(e.into());
            }
            reset_cache(conn);
            let end = writer.after_commit()?;
            Ok((at, Some(end)))
        })
        .await
        .map_err(|e| Error::sql("XX000", e.to_string()))??;
        match written {
            None => Ok(PageRepair::Behind { at }),
            Some(end) if end == at => Ok(PageRepair::Replaced),
            Some(end) => {
                self.commit_durable(end).await?;
                Ok(PageRepair::Written { at: end })
            }
        }
    }

    /// Scrubs pages `from..from + count` of the file: reads each one from
    /// disk (the reader's cache dropped first) with its checksum verified,
    /// so a damaged page is reported like any read of it would report it.
    /// Returns the number of pages the file has and the page size; a
    /// damaged page ends the chunk with [`Error::CorruptPage`] naming it.
    pub fn scrub_pages(&self, from: u32, count: u32) -> Result<(u32, u32)> {
        let reader = self.reader()?;
        let conn = reader.conn().sqlite();
        reset_cache(conn);
        // One read transaction for the chunk, as one statement had.
        in_read_transaction(conn, || {
            // The B-tree's page count, which is sqlite_dbpage's row count,
            // without stepping through every row as count(*) would.
            let pages: u32 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            let page_size: u32 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            for_each_page(conn, from, count, |_, _| {}).map_err(|(pgno, e)| {
                self.name_damage(match Error::from(e) {
                    Error::CorruptPage { .. } => Error::CorruptPage {
                        database: self.name.clone(),
                        pgno: Some(pgno),
                        irreparable: false,
                    },
                    other => other,
                })
            })?;
            Ok((pages, page_size))
        })
    }

    /// The stored checksums of pages `from..from + count` (those that
    /// exist) as this replica's file holds them at one LSN, and that LSN —
    /// what a partner's scrub compares its own pages with.
    pub async fn page_sums_at_rest(
        self: &Arc<Self>,
        from: u32,
        count: u32,
    ) -> Result<(Lsn, Vec<u32>)> {
        let db = self.clone();
        let writer = self.hold_for_snapshot().await;
        tokio::task::spawn_blocking(move || {
            db.at_one_lsn(writer, |conn, at| Ok((at, page_sums(conn, from, count)?)))
        })
        .await
        .map_err(|e| Error::sql("XX000", e.to_string()))?
    }

    /// The pages from `from` on whose stored checksum differs from
    /// `theirs`, a partner's at `their_lsn`, leaving out the pages a record
    /// after `their_lsn` rewrote; None while this replica's file is behind
    /// `their_lsn`. This replica's pages are read in one snapshot at one
    /// LSN, begun under the write lock (primary) or the redo lock
    /// (secondary), which is let go before the pages are read.
    pub async fn differing_pages_at_rest(
        self: &Arc<Self>,
        from: u32,
        theirs: Vec<u32>,
        their_lsn: Lsn,
    ) -> Result<Option<Vec<u32>>> {
        let db = self.clone();
        let writer = self.hold_for_snapshot().await;
        tokio::task::spawn_blocking(move || {
            db.at_one_lsn(writer, |conn, at| {
                db.differing_pages(conn, at, from, &theirs, their_lsn)
            })
        })
        .await
        .map_err(|e| Error::sql("XX000", e.to_string()))?
    }

    /// On a primary, the write lock, which [`Database::at_one_lsn`] holds
    /// only while its read transaction begins; None on a secondary (it
    /// takes its redo lock there).
    async fn hold_for_snapshot(&self) -> Option<tokio::sync::OwnedMutexGuard<Writer>> {
        if self.fence().is_secondary() {
            None
        } else {
            Some(self.writer.clone().lock_owned().await)
        }
    }

    /// Runs `read` on a reader inside one read transaction that began at
    /// one LSN of this replica, given to `read`. The transaction begins
    /// while nothing can change the file: under `writer` (the write lock,
    /// on a primary: no commit between reading the applied LSN and
    /// beginning the snapshot) or else under the redo lock (a secondary);
    /// the lock is let go as soon as the transaction has begun, so commits
    /// and redo go on while the pages are read — SQLite's snapshot keeps
    /// showing the file as it was at that LSN. The reader's cache is
    /// dropped first (a page changed under SQLite would be masked by a
    /// cached copy), so every page comes from disk with its checksum
    /// verified. Blocking.
    fn at_one_lsn<T>(
        &self,
        writer: Option<tokio::sync::OwnedMutexGuard<Writer>>,
        read: impl FnOnce(&Connection, Lsn) -> Result<T>,
    ) -> Result<T> {
        let reader = self.reader()?;
        let conn = reader.conn().sqlite();
        reset_cache(conn);
        in_read_transaction(conn, || {
            let began = {
                let redo = writer
                    .is_none()
                    .then(|| self.redo.lock().unwrap_or_else(|e| e.into_inner()));
                // Any statement on the file begins the read transaction;
                // this one reads page 1 only.
                let begun = conn
                    .query_row(
                        "SELECT count(*) FROM sqlite_dbpage WHERE pgno = 1",
                        [],
                        |_| Ok(()),
                    )
                    .map_err(Error::from);
                let at = self.applied_lsn();
                drop(redo);
                drop(writer);
                begun.map(|()| at)
            };
            began.and_then(|at| read(conn, at))
        })
    }

    /// The pages from `from` on whose stored checksum (read on `conn`, a
    /// snapshot of this replica's file at `at`) differs from `theirs`, a
    /// partner's at `their_lsn` — leaving out the pages a record of this
    /// replica's log after `their_lsn` rewrote. None while this replica's
    /// file is behind `their_lsn`. Blocking.
    fn differing_pages(
        &self,
        conn: &Connection,
        at: Lsn,
        from: u32,
        theirs: &[u32],
        their_lsn: Lsn,
    ) -> Result<Option<Vec<u32>>> {
        if at < their_lsn {
            return Ok(None);
        }
        let ours = page_sums(conn, from, theirs.len() as u32)?;
        let mut differ = Vec::new();
        for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
            let pgno = from + i as u32;
            if a != b && !self.page_written_between(pgno, their_lsn, at)? {
                differ.push(pgno);
            }
        }
        Ok(Some(differ))
    }

    /// Whether a record of this replica's log in `from..to` wrote page
    /// `pgno` or cut the file below it.
    fn page_written_between(&self, pgno: u32, from: Lsn, to: Lsn) -> Result<bool> {
        let mut at = from;
        while at < to {
            let records = self
                .log
                .read_some(at, 8 << 20)
                .map_err(|e| Error::sql("XX000", e.to_string()))?;
            let Some(last) = records.last() else {
                return Err(Error::sql(
                    "XX000",
                    format!(
                        "the log of database \"{}\" has no record at LSN {at}",
                        self.name
                    ),
                ));
            };
            at = last.end_lsn();
            if records
                .iter()
                .filter(|r| r.lsn < to)
                .any(|r| r.db_size < pgno || r.pages.iter().any(|(p, _)| *p == pgno))
            {
                return Ok(true);
            }
        }
        Ok(false)
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
    shared: &Arc<Shared>,
    wal_frames: &Arc<AtomicU32>,
) -> Result<Conn> {
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| open_error(path, e))?;
    // A new file gets page checksums (`checksum`): the reserved bytes can
    // be set only before its first page is written.
    let pages: u32 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    if pages == 0 {
        let mut reserve = super::checksum::RESERVED as i32;
        conn.file_control(
            Some("main"),
            rusqlite::FileControl::ReserveBytes(&mut reserve),
        )?;
    }
    // The log, not SQLite's WAL, makes commits durable (it is fsynced before
    // a commit is acknowledged), and recovery discards the WAL, so SQLite
    // need not sync it, at commit or at a checkpoint. availdb checkpoints
    // itself, only as far as the log is durable, and syncs the file after
    // each checkpoint (`Capture::checkpoint`).
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = OFF;
         PRAGMA wal_autocheckpoint = 0;
         PRAGMA foreign_keys = ON;",
    )?;
    conn.busy_timeout(WRITER_BUSY_TIMEOUT)?;
    // After the pragma (it would replace the hook): SQLite's own count of
    // frames in the WAL after each commit, to cross-check capture.
    let frames = wal_frames.clone();
    conn.wal_hook(Some(
        move |_: &mut rusqlite::hooks::Wal, n: std::ffi::c_int| {
            frames.store(n.max(0) as u32, Ordering::SeqCst);
            Ok(())
        },
    ))?;
    // The fence, checked at the instant of every commit: a closed fence
    // turns the COMMIT into a rollback (SQLITE_CONSTRAINT_COMMITHOOK), so
    // nothing commits into the file of a database that may not be written.
    let fenced = shared.clone();
    conn.commit_hook(Some(move || {
        if fenced.read_only.load(Ordering::SeqCst) {
            return true;
        }
        let fence = fenced.fence.read().unwrap_or_else(|e| e.into_inner());
        fence.check(monotonic_us()).is_err()
    }))?;
    // A close after a failed capture must not checkpoint an uncaptured
    // transaction into the file: only availdb checkpoints.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )?;
    finish_setup(conn, path, name, &shared.in_recovery)
}

/// Drops every page `conn` caches (after a page was written under its
/// B-tree layer through `sqlite_dbpage`: redo's rule 1).
/// The stored checksums of pages `from..from + count` that exist, read on
/// `conn` (through the VFS, which verifies each page's checksum).
fn page_sums(conn: &Connection, from: u32, count: u32) -> Result<Vec<u32>> {
    let mut sums = Vec::with_capacity(count as usize);
    for_each_page(conn, from, count, |_, page| {
        sums.push(match page.len().checked_sub(super::checksum::RESERVED) {
            Some(at) => u32::from_le_bytes([page[at], page[at + 1], page[at + 2], page[at + 3]]),
            None => 0,
        })
    })
    .map_err(|(_, e)| Error::from(e))?;
    Ok(sums)
}

/// Reads one page by its number: the one constraint `sqlite_dbpage` uses
/// to find a row (its `xBestIndex` takes `pgno = ?` and nothing else).
const PAGE_BY_NUMBER: &str = "SELECT data FROM sqlite_dbpage WHERE pgno = ?1";

/// Calls `each` with the number and bytes of every page in
/// `from..from + count` that the file has, in order, each read on `conn`
/// through the VFS (which verifies its checksum). Fails with the number of
/// the page whose read failed.
///
/// One lookup per page, not one range query: `sqlite_dbpage` cannot seek
/// to a range, so `WHERE pgno >= ?1 AND pgno < ?2` stepped through every
/// page of the file to find the chunk's own. That made each scrub chunk
/// and each comparison cost as much as the whole file, a pass the square
/// of its size: a third of a core, on each idle replica of a 1 GB
/// database.
fn for_each_page(
    conn: &Connection,
    from: u32,
    count: u32,
    mut each: impl FnMut(u32, &[u8]),
) -> std::result::Result<(), (u32, rusqlite::Error)> {
    let mut read = conn.prepare_cached(PAGE_BY_NUMBER).map_err(|e| (from, e))?;
    for pgno in from.max(1)..from.saturating_add(count) {
        let mut rows = read.query([pgno]).map_err(|e| (pgno, e))?;
        match rows.next() {
            Ok(Some(row)) => {
                let page = row.get_ref(0).and_then(|v| Ok(v.as_blob()?));
                each(pgno, page.map_err(|e| (pgno, e))?);
            }
            // Past the file's last page.
            Ok(None) => break,
            Err(e) => return Err((pgno, e)),
        }
    }
    Ok(())
}

/// Runs `read` inside one read transaction of `conn` (`BEGIN` … `COMMIT`),
/// so that its statements all see one snapshot of the file.
fn in_read_transaction<T>(conn: &Connection, read: impl FnOnce() -> Result<T>) -> Result<T> {
    conn.execute_batch("BEGIN")?;
    let result = read();
    // Dropping the reader also rolls back whatever is left open.
    let _ = conn.execute_batch("COMMIT");
    result
}

fn reset_cache(conn: &Connection) {
    // SAFETY: the handle belongs to `conn`, which outlives the call;
    // SQLITE_FCNTL_RESET_CACHE takes no argument.
    unsafe {
        rusqlite::ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            rusqlite::ffi::SQLITE_FCNTL_RESET_CACHE,
            std::ptr::null_mut(),
        );
    }
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

/// How a table definition stores its rows: per column its name, key
/// position and storage affinity, and whether it is a rowid table; found
/// by creating the table on a scratch database.
fn storage_shape(create_sql: &str, table: &str) -> Result<Vec<(String, i64, char)>> {
    let scratch = Connection::open_in_memory()?;
    scratch.execute_batch(create_sql).map_err(|e| {
        Error::sql(
            "42601",
            format!("the new definition of table \"{table}\" does not read: {e}"),
        )
    })?;
    let mut shape = scratch
        .prepare("SELECT name, pk, type FROM pragma_table_info(?1)")?
        .query_map([table], |r| {
            let ty: String = r.get(2)?;
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                crate::sql::pg::definition::affinity(&ty),
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let without_rowid: bool =
        scratch.query_row("SELECT wr FROM pragma_table_list(?1)", [table], |r| {
            r.get(0)
        })?;
    // A rowid alias (INTEGER PRIMARY KEY) is stored as the rowid itself.
    let rowid_alias = scratch
        .prepare("SELECT name FROM pragma_table_info(?1) WHERE pk = 1 AND upper(type) = 'INTEGER' AND (SELECT count(*) FROM pragma_table_info(?1) WHERE pk > 0) = 1")?
        .query_row([table], |r| r.get::<_, String>(0))
        .ok();
    shape.push((
        rowid_alias.unwrap_or_default(),
        i64::from(without_rowid),
        'w',
    ));
    Ok(shape)
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
    let sequences = super::sequence::Slot::default();
    super::sequence::install(&conn, &sequences)?;
    let editing = Arc::new(AtomicBool::new(false));
    let availdb_edits = editing.clone();
    conn.authorizer(Some(move |ctx: AuthContext<'_>| {
        if availdb_edits.load(Ordering::SeqCst) {
            Authorization::Allow
        } else {
            authorize(ctx)
        }
    }))?;
    conn.set_prepared_statement_cache_capacity(64);
    let interrupt = Arc::new(conn.get_interrupt_handle());
    Ok(Conn {
        conn,
        interrupt,
        bound: std::cell::RefCell::new(None),
        sequences,
        editing,
    })
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
        // A session's TEMP space (`Conn::bind`); its name is random.
        AuthAction::Attach { filename } if filename.starts_with(super::temp::URI_PREFIX) => {
            Authorization::Allow
        }
        AuthAction::Detach {
            database_name: super::temp::SCHEMA,
        } => Authorization::Allow,
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => Authorization::Deny,
        // `ATTACH $1`: the name is a parameter, unknown here.
        AuthAction::Unknown {
            code: rusqlite::ffi::SQLITE_ATTACH | rusqlite::ffi::SQLITE_DETACH,
            ..
        } => Authorization::Deny,
        // SQLite's own TEMP schema holds the catalog, on a connection other
        // sessions use too: TEMP objects go to `pg_temp` (see `temp`).
        AuthAction::CreateTempTable { .. }
        | AuthAction::CreateTempView { .. }
        | AuthAction::CreateTempTrigger { .. }
        | AuthAction::CreateTempIndex { .. }
        | AuthAction::DropTempTable { .. }
        | AuthAction::DropTempView { .. }
        | AuthAction::DropTempTrigger { .. }
        | AuthAction::DropTempIndex { .. } => Authorization::Deny,
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
    fn a_chunk_of_pages_costs_its_own_pages_not_a_step_through_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE t(b BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 4000)
             INSERT INTO t SELECT randomblob(3000) FROM n;",
        )
        .unwrap();
        let pages: u32 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        let page_size = conn
            .query_row("PRAGMA page_size", [], |r| r.get::<_, u32>(0))
            .unwrap() as usize;
        assert!(pages > 4000, "{pages} pages");
        let steps = |sql: &str| {
            conn.prepare_cached(sql)
                .unwrap()
                .get_status(rusqlite::StatementStatus::VmStep)
        };

        // The chunk's pages, in order, with the file's bytes (a rollback
        // journal database: the file holds every page).
        let file = std::fs::read(&path).unwrap();
        let mut seen = Vec::new();
        for_each_page(&conn, 2000, 64, |pgno, page| {
            let at = (pgno as usize - 1) * page_size;
            assert_eq!(page, &file[at..at + page_size], "page {pgno}");
            seen.push(pgno);
        })
        .unwrap();
        assert_eq!(seen, (2000..2064).collect::<Vec<_>>());
        let chunk = steps(PAGE_BY_NUMBER);
        assert!(chunk < 64 * 20, "{chunk} VM steps for 64 pages");

        // What a range query costs on this SQLite: a step through every
        // page of the file, whichever chunk it asks for.
        let range = "SELECT data FROM sqlite_dbpage WHERE pgno >= ?1 AND pgno < ?2";
        let rows = conn
            .prepare_cached(range)
            .unwrap()
            .query_map((2000, 2064), |_| Ok(()))
            .unwrap()
            .count();
        assert_eq!(rows, 64);
        assert!(steps(range) > pages as i32, "{} VM steps", steps(range));

        // Past the last page, the pages that are.
        seen.clear();
        for_each_page(&conn, pages - 9, 64, |pgno, _| seen.push(pgno)).unwrap();
        assert_eq!(seen, (pages - 9..=pages).collect::<Vec<_>>());
    }

    #[test]
    fn a_retired_copy_asks_its_followers_each_time_and_a_kept_one_admits_sessions_again() {
        let dir = tempfile::tempdir().unwrap();
        let db =
            Database::open("app", &dir.path().join("app.db"), &dir.path().join("log")).unwrap();
        let mut follower = db.subscribe_retire();
        assert!(!db.is_retiring());
        db.retire();
        assert!(db.is_retiring());
        assert!(follower.has_changed().unwrap(), "the front end is asked");
        follower.borrow_and_update();
        db.retire();
        assert!(follower.has_changed().unwrap(), "and asked again");
        // The seeded copy did not take its place: sessions may come back.
        db.keep();
        assert!(!db.is_retiring());
    }

    #[test]
    fn a_replica_stopped_in_the_middle_of_an_image_opens_and_takes_the_image_again() {
        const LSN: Lsn = 1 << 20;
        let dir = tempfile::tempdir().unwrap();
        // The primary's database: several image parts.
        let src = Connection::open(dir.path().join("src.db")).unwrap();
        src.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
             INSERT INTO t SELECT i, randomblob(3000) FROM n;",
        )
        .unwrap();
        let mut parts = Vec::new();
        super::super::image::for_each_image_part_sized(&src, 3, 64 << 10, |r| {
            parts.push(r);
            Ok(())
        })
        .unwrap();
        assert!(parts.len() >= 3, "{} parts", parts.len());
        let mut lsn = LSN;
        for part in &mut parts {
            part.lsn = lsn;
            lsn += part.encoded_len() as u64;
        }
        let (path, log_dir) = (dir.path().join("r.db"), dir.path().join("rlog"));
        let db = Database::open("app", &path, &log_dir).unwrap();
        db.restart_log_at(LSN, 3).unwrap();
        for part in &parts[..2] {
            db.log().append_at(part).unwrap();
        }
        db.log().sync_blocking().unwrap();
        let done = db.redo_next(|_| Ok(parts[..2].to_vec())).unwrap().unwrap();
        assert!(done.inside_image);
        drop(db);

        // Stopped there (the file is part new): it opens, its log empty
        // at the image's LSN, and takes the whole image again.
        let db = Database::open("app", &path, &log_dir).unwrap();
        assert_eq!((db.log().end_lsn(), db.applied_lsn()), (LSN, LSN));
        assert_eq!(db.log().image_pending(), Some((LSN, 3)));
        for part in &parts {
            db.log().append_at(part).unwrap();
        }
        db.log().sync_blocking().unwrap();
        let log = db.log().clone();
        let done = db
            .redo_next(|from| Ok(log.read_from(from).unwrap()))
            .unwrap()
            .unwrap();
        assert!(!done.inside_image);
        assert_eq!(db.log().image_pending(), None, "the image is whole");
        drop(db);
        let db = Database::open("app", &path, &log_dir).unwrap();
        assert_eq!(db.log().image_pending(), None);
        let rows: i64 = db
            .reader()
            .unwrap()
            .conn()
            .sqlite()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 200);
    }

    /// Issue 16: a transaction many parts long is captured a part at a time
    /// and redone a read at a time, in one SQLite transaction: a reader on
    /// the replica sees none of it until the last part, then all of it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transaction_of_many_parts_is_redone_a_part_at_a_time_and_seen_whole() {
        let dir = tempfile::tempdir().unwrap();
        let primary =
            Database::open("app", &dir.path().join("p.db"), &dir.path().join("plog")).unwrap();
        let cancel = Notify::new();
        for sql in [
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)",
            "INSERT INTO t VALUES (0, 'before')",
            // About 26 MB of pages: many parts (`Record::PART_BYTES` each).
            "INSERT INTO t SELECT value, randomblob(3000) FROM generate_series(1, 8000)",
        ] {
            let mut w = primary.writer(None, &cancel).await.unwrap();
            super::super::run(w.conn().sqlite(), sql, &[], false).unwrap();
            w.after_commit().unwrap();
        }
        let log = primary.log().clone();
        let records = log.read_from(0).unwrap();
        let parts = records.iter().filter(|r| r.continues_transaction()).count();
        assert!(parts >= 3, "{parts} parts continue the large transaction");
        assert!(records
            .iter()
            .all(|r| r.pages.len() * 4096 <= crate::log::Record::PART_BYTES));

        let replica =
            Database::open("app", &dir.path().join("r.db"), &dir.path().join("rlog")).unwrap();
        let count = |db: &Database| -> i64 {
            db.reader()
                .unwrap()
                .conn()
                .sqlite()
                .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .unwrap()
        };
        // The small transactions first, as whole ones.
        let small = records.iter().take_while(|r| !r.continues_transaction());
        let small: Vec<crate::log::Record> = small.cloned().collect();
        replica.redo_next(|_| Ok(small.clone())).unwrap().unwrap();
        assert_eq!(count(&replica), 1);
        // Then the large one, handed over one record per call.
        let mut calls = 0;
        let done = replica
            .redo_next(|from| {
                calls += 1;
                assert_eq!(count(&replica), 1, "a reader sees part of the transaction");
                Ok(records.iter().filter(|r| r.lsn == from).cloned().collect())
            })
            .unwrap()
            .unwrap();
        assert_eq!(calls, parts + 1, "one call per part");
        assert_eq!(done.end, log.end_lsn());
        assert!(!done.inside_image);
        assert_eq!(count(&replica), 8001);
    }

    #[test]
    fn a_replica_killed_while_checkpointing_its_seed_image_rebuilds_the_file_from_the_image() {
        // Found by the fault campaign (seed 0x18edf63def44b543): a replica
        // seeded from a full image was killed while a checkpoint copied the
        // image from the WAL into the file, page by page in ascending order.
        // Recovery discards the WAL and redoes the log from the checkpoint
        // LSN — the image — but opened the torn file first and could not
        // load its schema ("database disk image is malformed"): the node
        // never started again. A log that holds a whole full image at its
        // checkpoint LSN does not need the file: it is rebuilt from the log.
        const LSN: Lsn = 1 << 20;
        let dir = tempfile::tempdir().unwrap();
        let src = Connection::open(dir.path().join("src.db")).unwrap();
        // Data first, then a schema large enough to take pages at the end.
        src.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
             INSERT INTO t SELECT i, randomblob(3000) FROM n;",
        )
        .unwrap();
        for i in 0..40 {
            src.execute_batch(&format!(
                "CREATE TABLE pad_{i}(a INTEGER, {} TEXT)",
                (0..20)
                    .map(|c| format!("column_with_a_long_name_{c}"))
                    .collect::<Vec<_>>()
                    .join(" TEXT, ")
            ))
            .unwrap();
        }
        let mut parts = Vec::new();
        super::super::image::for_each_image_part_sized(&src, 3, 64 << 10, |r| {
            parts.push(r);
            Ok(())
        })
        .unwrap();
        let mut lsn = LSN;
        for part in &mut parts {
            part.lsn = lsn;
            lsn += part.encoded_len() as u64;
        }
        let (path, log_dir) = (dir.path().join("r.db"), dir.path().join("rlog"));
        let db = Database::open("app", &path, &log_dir).unwrap();
        db.restart_log_at(LSN, 3).unwrap();
        for part in &parts {
            db.log().append_at(part).unwrap();
        }
        db.log().sync_blocking().unwrap();
        let log = db.log().clone();
        db.redo_next(|from| Ok(log.read_from(from).unwrap()))
            .unwrap()
            .unwrap();
        assert_eq!(db.log().image_pending(), None, "the image is whole");
        drop(db);

        // What the interrupted checkpoint left: page 1 of the image written,
        // and after it nothing, or zeros up to the full size.
        let page_size = parts[0].page_size as usize;
        let db_size = parts[0].db_size as usize;
        assert_eq!(parts[0].pages[0].0, 1);
        for len in [page_size, page_size * db_size] {
            let mut torn = vec![0u8; len];
            torn[..page_size].copy_from_slice(&parts[0].pages[0].1);
            std::fs::write(&path, &torn).unwrap();
            crate::log::write_checkpoint(&log_dir, LSN).unwrap();
            let db = Database::open("app", &path, &log_dir).unwrap_or_else(|e| {
                panic!("a torn file of {len} bytes: the replica starts again: {e}")
            });
            let reader = db.reader().unwrap();
            let rows: i64 = reader
                .conn()
                .sqlite()
                .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .unwrap();
            assert_eq!(rows, 200);
            let check: String = reader
                .conn()
                .sqlite()
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .unwrap();
            assert_eq!(check, "ok");
        }
    }

    #[test]
    fn a_database_killed_in_the_middle_of_a_checkpoint_starts_again() {
        // Found by the fault campaign (seed 0x18edf80799e8973b, fault 15: a
        // primary killed, never started again). A checkpoint copies the
        // WAL's pages into the file in ascending page order; killed after
        // page 1, the file holds a new page 1 over old pages. SQLite would
        // finish the copy from its WAL, but recovery discards the WAL (it
        // may hold commits the log never got) and redoes the log from the
        // checkpoint LSN — and could not: redo through SQLite loads the
        // schema from the torn file first ("database disk image is
        // malformed"). Recovery writes the log's page images into the file
        // itself, reading nothing from it.
        let dir = tempfile::tempdir().unwrap();
        let (path, log_dir) = (dir.path().join("a.db"), dir.path().join("log"));
        let commit = |db: &Database, sql: &str| {
            let mut w = db.writer.try_lock().unwrap();
            w.conn().sqlite().execute_batch(sql).unwrap();
            w.after_commit().unwrap();
        };
        {
            let db = Database::open("app", &path, &log_dir).unwrap();
            commit(&db, "CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB)");
            for _ in 0..50 {
                commit(&db, "INSERT INTO t(b) VALUES (randomblob(3000))");
            }
        }
        // Reopened: recovery checkpoints all of that into the file.
        let db = Database::open("app", &path, &log_dir).unwrap();
        let checkpoint = crate::log::read_checkpoint(&log_dir).unwrap();
        assert_eq!(checkpoint, db.log().end_lsn());
        // More commits, in the WAL only: the schema outgrows page 1.
        for i in 0..40 {
            let columns = (0..20)
                .map(|c| format!("column_with_a_long_name_{c} TEXT"))
                .collect::<Vec<_>>()
                .join(", ");
            commit(&db, &format!("CREATE TABLE pad_{i}(a INTEGER, {columns})"));
        }
        for _ in 0..20 {
            commit(&db, "INSERT INTO t(b) VALUES (randomblob(3000))");
        }
        db.log().sync_blocking().unwrap();
        let records = db.log().read_from(checkpoint).unwrap();
        drop(db);
        // The checkpoint killed after it wrote page 1.
        let page_one = records
            .iter()
            .rev()
            .find_map(|r| r.pages.iter().find(|(pgno, _)| *pgno == 1))
            .expect("page 1 changed")
            .1
            .clone();
        let mut file = std::fs::read(&path).unwrap();
        file[..page_one.len()].copy_from_slice(&page_one);
        std::fs::write(&path, &file).unwrap();

        let db = Database::open("app", &path, &log_dir).expect("the database opens again");
        let reader = db.reader().unwrap();
        let count = |sql: &str| -> i64 {
            reader
                .conn()
                .sqlite()
                .query_row(sql, [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(count("SELECT count(*) FROM t"), 70);
        assert_eq!(
            count("SELECT count(*) FROM sqlite_schema WHERE name LIKE 'pad%'"),
            40
        );
        let check: String = reader
            .conn()
            .sqlite()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }

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
            // SQLite's TEMP schema is the catalog's (sessions' TEMP
            // objects go to their own `pg_temp`).
            "CREATE TEMP TABLE x(a)",
            "DROP VIEW temp.pg_class",
        ] {
            let err = Error::from(c.execute_batch(sql).expect_err(sql));
            assert_eq!(err.sqlstate(), "42501", "{sql}");
        }
        // A name bound as a parameter is not seen by the authorizer.
        let err = c
            .execute("ATTACH ?1 AS x", ["x.db"])
            .expect_err("ATTACH $1");
        assert_eq!(Error::from(err).sqlstate(), "42501");
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
    fn a_session_space_shows_on_the_connections_it_is_bound_to_and_no_longer() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open("t", &dir.path().join("t.db"), &dir.path().join("log")).unwrap();
        let (one, two) = (
            super::super::TempSpace::new().unwrap(),
            super::super::TempSpace::new().unwrap(),
        );
        let seqs = Arc::default();
        let w = db.writer.try_lock().unwrap();
        w.conn().bind(Some(&one), &seqs).unwrap();
        w.conn()
            .sqlite()
            .execute_batch("CREATE TABLE pg_temp.tt(x); INSERT INTO tt VALUES (1)")
            .unwrap();
        let r = db.reader().unwrap();
        r.conn().bind(Some(&one), &seqs).unwrap();
        let n: i64 = r
            .conn()
            .sqlite()
            .query_row("SELECT count(*) FROM tt", [], |row| row.get(0))
            .unwrap();
        assert_eq!(n, 1);
        r.conn().bind(Some(&two), &seqs).unwrap();
        assert!(r.conn().sqlite().prepare("SELECT * FROM tt").is_err());
        drop(r);
        // Back in the pool, unbound.
        let r = db.reader().unwrap();
        assert!(r
            .conn()
            .sqlite()
            .prepare("SELECT * FROM pg_temp.tt")
            .is_err());
        w.conn().bind(None, &seqs).unwrap();
        assert!(w.conn().sqlite().prepare("SELECT * FROM tt").is_err());
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

    #[tokio::test]
    async fn a_promoted_database_takes_no_write_until_its_primary_part_opens_the_fence() {
        // Issue 9 cause 3: promotion made the database writable at once,
        // before its links and commit hook (and, under a cluster, its
        // lease) were in place, and a promotion that failed half way left
        // it so. It now stays RESOLVING until the primary part opens it.
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open("app", &dir.path().join("a.db"), &dir.path().join("log")).unwrap();
        db.set_fence(Fence::Secondary {
            group: "ag1".into(),
            primary: "r1".into(),
        })
        .unwrap();
        db.promote("ag1", 2, 2).await.unwrap();
        let cancel = Notify::new();
        let refused = db.writer(None, &cancel).await.err();
        assert!(
            matches!(
                &refused,
                Some(Error::NotWritable {
                    refusal: super::super::fence::Refusal::Resolving(Closed::TakingOffice),
                    ..
                })
            ),
            "a session's write: {refused:?}"
        );
        // Nor does a COMMIT on the writer connection get through (the
        // fence is checked again by SQLite's commit hook).
        let committed = db
            .writer
            .try_lock()
            .unwrap()
            .conn()
            .sqlite()
            .execute_batch("CREATE TABLE t(a)");
        assert!(
            committed.is_err(),
            "a commit while taking office: {committed:?}"
        );
        assert_eq!(db.log().end_lsn(), 0, "nothing was captured");
        db.set_fence(Fence::Primary(super::super::fence::PrimaryFence {
            group: "ag1".into(),
            epoch: 2,
            log_epoch: 2,
            writes: Writes::Until(monotonic_us() + 60_000_000),
            hook: None,
        }))
        .unwrap();
        let mut w = db.writer(None, &cancel).await.expect("open once leased");
        w.conn()
            .sqlite()
            .execute_batch("CREATE TABLE t(a)")
            .unwrap();
        w.after_commit().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scrub_comparison_reads_its_pages_at_one_lsn_without_holding_the_write_lock() {
        // Issue 13's measure found commits waiting behind the scrub: a
        // comparison read its pages from disk with the write lock held
        // (0.68x the TPS with the scrub at its default rate). The lock now
        // covers only the start of a read transaction, and the pages are
        // read in that snapshot: a commit made meanwhile goes through and
        // is not seen, and the LSN given is the snapshot's.
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(
            Database::open("app", &dir.path().join("a.db"), &dir.path().join("log")).unwrap(),
        );
        let cancel = Notify::new();
        {
            let mut w = db.writer(None, &cancel).await.unwrap();
            w.conn()
                .sqlite()
                .execute_batch(
                    "CREATE TABLE t(a); INSERT INTO t SELECT randomblob(3000) FROM generate_series(1, 20)",
                )
                .unwrap();
            w.after_commit().unwrap();
        }
        let (first_lsn, before) = db.page_sums_at_rest(1, 64).await.unwrap();
        assert_eq!(first_lsn, db.applied_lsn());
        let writer = db.hold_for_snapshot().await;
        assert!(
            writer.is_some(),
            "a primary's snapshot begins under its write lock"
        );
        let inside = db.clone();
        let handle = tokio::runtime::Handle::current();
        let (at, during, committed_lsn) = tokio::task::spawn_blocking(move || {
            inside
                .at_one_lsn(writer, |conn, at| {
                    let committed_lsn = handle.block_on(async {
                        let cancel = Notify::new();
                        let mut w = tokio::time::timeout(
                            Duration::from_secs(10),
                            inside.writer(None, &cancel),
                        )
                        .await
                        .expect("the write lock is free while the snapshot's pages are read")
                        .unwrap();
                        w.conn()
                            .sqlite()
                            .execute_batch("UPDATE t SET a = randomblob(3000)")
                            .unwrap();
                        w.after_commit().unwrap()
                    });
                    Ok((at, page_sums(conn, 1, 64)?, committed_lsn))
                })
                .unwrap()
        })
        .await
        .unwrap();
        assert_eq!(at, first_lsn, "the snapshot's LSN");
        assert_eq!(
            during, before,
            "the snapshot does not see the commit made during it"
        );
        let (after_lsn, after) = db.page_sums_at_rest(1, 64).await.unwrap();
        assert!(after_lsn >= committed_lsn && after_lsn > at);
        assert_ne!(after, before, "a later snapshot sees the commit");
    }

    /// Runs `sql` on the writer and captures its commit, as a session does.
    fn write_and_capture(db: &Database, sql: &str) {
        let mut w = db.writer.try_lock().unwrap();
        w.conn().sqlite().execute_batch(sql).unwrap();
        w.after_commit().unwrap();
    }

    /// Capture looks at the WAL's file and header only when the VFS says
    /// they changed (`vfs.rs`, "What capture learns from the shim"), and
    /// still follows every new generation and truncation: each commit's
    /// capture reads exactly the frames SQLite reports, and the log alone
    /// rebuilds every row.
    #[test]
    fn capture_told_of_the_wals_changes_follows_every_restart_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let (path, log_dir) = (dir.path().join("a.db"), dir.path().join("log"));
        {
            let db = Database::open("app", &path, &log_dir).unwrap();
            write_and_capture(&db, "CREATE TABLE t(a INTEGER PRIMARY KEY, b BLOB)");
            let mut w = db.writer.try_lock().unwrap();
            for i in 0..60 {
                if i % 10 == 5 {
                    // Everything is captured: the WAL may be emptied or
                    // restarted under the reader.
                    let mode = if i % 20 == 5 {
                        rusqlite::ffi::SQLITE_CHECKPOINT_RESTART
                    } else {
                        rusqlite::ffi::SQLITE_CHECKPOINT_TRUNCATE
                    };
                    super::super::capture::checkpoint(w.conn().sqlite(), mode).unwrap();
                }
                w.conn()
                    .sqlite()
                    .execute("INSERT INTO t VALUES (?1, randomblob(3000))", [i])
                    .unwrap();
                w.after_commit()
                    .unwrap_or_else(|e| panic!("commit {i} was not captured whole: {e}"));
            }
            assert!(
                w.capture_watches_the_wal(),
                "capture was not told of the WAL's changes"
            );
        }
        // Recovery rebuilds the file from the log.
        std::fs::remove_file(&path).unwrap();
        let _ = std::fs::remove_file(path.with_file_name("a.db-wal"));
        let db = Database::open("app", &path, &log_dir).unwrap();
        let (rows, sum): (i64, i64) = db
            .reader()
            .unwrap()
            .conn()
            .sqlite()
            .query_row("SELECT count(*), sum(a) FROM t", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((rows, sum), (60, (0..60).sum::<i64>()));
    }

    #[test]
    fn closing_a_database_never_checkpoints_a_commit_the_log_does_not_hold() {
        // A COMMIT whose capture failed is in SQLite's WAL but not in the
        // log. SQLite's default checkpoint when the last connection closes
        // would copy it into the file, where recovery (which discards the
        // WAL and redoes the log) cannot take it out again: the file would
        // hold a transaction no replica has. SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE
        // leaves checkpoints to availdb.
        let dir = tempfile::tempdir().unwrap();
        let (path, log_dir) = (dir.path().join("a.db"), dir.path().join("log"));
        {
            let db = Database::open("app", &path, &log_dir).unwrap();
            write_and_capture(&db, "CREATE TABLE t(a)");
        }
        let logged = {
            // Recovery puts the logged table into the file.
            let db = Database::open("app", &path, &log_dir).unwrap();
            let w = db.writer.try_lock().unwrap();
            // Committed in SQLite, never captured (as when capture fails).
            w.conn()
                .sqlite()
                .execute_batch("INSERT INTO t VALUES (1)")
                .unwrap();
            db.log().end_lsn()
        };
        let db = Database::open("app", &path, &log_dir).unwrap();
        assert_eq!(db.log().end_lsn(), logged);
        let rows: i64 = db
            .reader()
            .unwrap()
            .conn()
            .sqlite()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0, "the uncaptured commit reached the database file");
    }
}
