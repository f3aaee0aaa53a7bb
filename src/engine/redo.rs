//! Redo: making a database file page-identical to the primary's by writing
//! the primary's committed page images into it.
//!
//! # Protocol
//! The primary ships each committed transaction as the page images it
//! appended to SQLite's WAL plus the database size in pages after the commit
//! (a [`PageSet`]). A node redoes transactions with its single [`Applier`]
//! connection, which writes the images through SQLite's `sqlite_dbpage`
//! virtual table. One call to [`Applier::apply`] redoes a batch of whole
//! transactions, in order, as **one** SQLite write transaction:
//!
//! 1. Check every image's length against the database's page size; a batch
//!    with a wrong-size page is refused before anything is written.
//! 2. Merge the batch: for every page the newest image wins, and after each
//!    transaction the pages beyond its database size are forgotten (they were
//!    cut off; a later transaction that grows the file again ships every page
//!    it adds).
//! 3. Reset the page cache; `BEGIN IMMEDIATE`; read the file's page count.
//! 4. One single-row `INSERT INTO sqlite_dbpage(pgno, data) VALUES (?, ?)` per
//!    page, in page order, page 1 last.
//! 5. When the final size is below the page count read in step 3, a separate
//!    `INSERT … VALUES (db_size + 1, NULL)`, last: `sqlite_dbpage` cuts the file
//!    at commit.
//! 6. `COMMIT`; reset the page cache; if page 1 was written, force a schema
//!    reload and reset the cache again.
//!
//! Readers on the node's other connections see the batch appear at once, as
//! with any SQLite commit, and the file equals the primary's at the end of the
//! batch, page 1's volatile bytes aside (see [`first_difference`]).
//!
//! # The seven rules, and why
//! Each of these broke correctness when left out (how that showed, and the
//! torture run that passes with the first six: `docs/sqlite-notes.md`, "Applying
//! pages on a secondary"):
//! 1. **Reset the cache around every batch; reload the schema after page 1.**
//!    `sqlite_dbpage` overwrites page bytes under SQLite's B-tree layer, which
//!    keeps a parsed form of each cached page and the parsed schema. Pages the
//!    owner read between batches, or the schema read at the start of a batch,
//!    would be parsed from the old bytes and used after redo replaced them:
//!    "database disk image is malformed" or "malformed database schema" once
//!    the schema spans several pages. The reset before a batch drops the
//!    owner's pages; the reset after it drops the pages redo wrote; the forced
//!    reload loads a changed schema from committed pages at once, not inside
//!    the next batch, where it would parse schema pages the batch then
//!    overwrites.
//! 2. **One write transaction per batch of whole transactions, page 1 last.**
//!    Readers must never see part of a primary transaction (safety rule 4),
//!    and page 1 (schema cookie, freelist, size) describes all other pages.
//! 3. **Single-row inserts; the truncation alone and last.** `sqlite_dbpage`
//!    forgets a pending truncation when any page is written after it, and the
//!    multi-row forms skip it silently: the data stays right but the file
//!    never shrinks. It also truncates only below the size the B-tree read
//!    from page 1 at `BEGIN`, so step 2 drops pages a later transaction cut
//!    off instead of writing them: written, they would grow the WAL's commit
//!    size while page 1's header (and `PRAGMA page_count`, which reads it)
//!    still shows the right size; only the file after a checkpoint shows them.
//! 4. **Only the applier writes.** Readers open the file
//!    `SQLITE_OPEN_READ_ONLY`; any other write makes the file diverge.
//! 5. **Page 1 is never byte-identical.** Every pager rewrites bytes 24..28 and
//!    92..96 (change counter) and 96..100 (SQLite version) of page 1 when it
//!    commits; comparisons and checksums mask them. Every other page is
//!    identical.
//! 6. **Page size and reserved bytes are fixed once in WAL mode.** They must
//!    match the primary's before the first page is written.
//! 7. **The file is as long as the last batch says.** A part of a full image
//!    declares the image's whole size but carries only some pages; SQLite
//!    refuses to checkpoint (SQLITE_CORRUPT) a WAL whose database is larger
//!    than the file plus the WAL could fill, so without this the WAL of a
//!    replica being seeded grows to the whole database. After each batch the
//!    file is grown (sparse, through SQLite's own file handle) to the batch's
//!    size; the pages not redone yet read as zeros, as they would after the
//!    checkpoint grew the file itself.
//!
//! # Seeding an empty replica
//! A replica starts either from a byte copy of the primary (taken after a
//! `TRUNCATE` checkpoint) or as an empty file fed the primary's log from its
//! first transaction. [`Applier::open`] of an empty file therefore leaves it
//! empty and *not* in WAL mode; the first [`Applier::apply`] seeds it: it takes
//! the page size from the length of page 1's image (which must agree with the
//! header's bytes 16..18, where 1 means 65536) and the reserved bytes from
//! header byte 20, sets them, switches to WAL mode, and then applies the batch
//! like any other. The first transaction of that batch must carry page 1 (the
//! primary's first transaction always does: it creates the schema), otherwise
//! [`RedoError::Unseeded`]. Seeding lazily needs no out-of-band page size and
//! cannot pick a wrong one.
//!
//! # Connection settings
//! WAL mode, `synchronous = OFF` (the availdb log, not the SQLite file, is
//! the source of truth: a power loss that drops the last redone transactions
//! is repaired by redoing them from the log, and recovery discards the WAL,
//! so nothing syncs it; `Database::checkpoint_redone` syncs the file after a
//! checkpoint, before it records the checkpoint LSN), `wal_autocheckpoint =
//! 0` (the owner checkpoints, through [`Applier::connection`], when its
//! bookkeeping allows), and a 5 s busy timeout for the moments a checkpoint
//! or a reader's recovery holds a lock.
//!
//! # Limits
//! * A transaction that grows the file must carry every page it adds (SQLite's
//!   WAL commits do); one that does not leaves the replica's file short.
//! * An empty replica fed a stream that does not start at the primary's first
//!   transaction is not detected: pages the stream never carried read as zeros.
//! * Page size and reserved bytes never change after seeding: a primary that
//!   changes them (possible only outside WAL mode) needs a reseed.
//! * The primary runs in WAL mode; its page 1 says so (bytes 18 and 19 are 2),
//!   and the replica's must too.
//! * `sqlite_dbpage` exists only when SQLite is built with
//!   `SQLITE_ENABLE_DBPAGE_VTAB` (set through `LIBSQLITE3_FLAGS` in
//!   `.cargo/config.toml`), and refuses writes in defensive mode.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::types::Null;
use rusqlite::{ffi, Connection, FileControl, OpenFlags, TransactionBehavior};

/// Byte ranges of page 1 that each pager rewrites when it commits: the file
/// change counter, the "version-valid-for" number and the SQLite version.
const VOLATILE_PAGE_ONE_BYTES: [Range<usize>; 3] = [24..28, 92..96, 96..100];

/// How long the applier waits for a lock held by a checkpoint or a reader.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// One transaction's effect on a database file.
#[derive(Debug, Clone, Copy)]
pub struct PageSet<'a> {
    /// (page number, full page image), any order, each page at most once.
    pub pages: &'a [(u32, Vec<u8>)],
    /// Database size in pages after the transaction (shrinks the file when
    /// smaller).
    pub db_size: u32,
}

/// Why a batch could not be redone. Nothing of a refused batch is applied.
#[derive(Debug, thiserror::Error)]
pub enum RedoError {
    /// SQLite failed; the batch was rolled back.
    #[error("redo failed in SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A page image does not have the database's page size.
    #[error(
        "page {pgno} is {got} bytes but this database's pages are {want} bytes: \
         the record belongs to a database with another page size; reseed this replica"
    )]
    PageSize {
        /// Page whose image has the wrong length.
        pgno: u32,
        /// Length of the image.
        got: usize,
        /// The database's page size.
        want: usize,
    },
    /// SQLite was built without `sqlite_dbpage`.
    #[error(
        "SQLite was built without the sqlite_dbpage table that redo writes through: \
         build with LIBSQLITE3_FLAGS=-DSQLITE_ENABLE_DBPAGE_VTAB (see .cargo/config.toml)"
    )]
    NoDbpage,
    /// The connection is in defensive mode, where `sqlite_dbpage` is read-only.
    #[error(
        "the redo connection is in defensive mode (SQLITE_DBCONFIG_DEFENSIVE), \
         which makes sqlite_dbpage read-only: open it without defensive mode"
    )]
    Defensive,
    /// The replica is empty and the batch does not start with page 1.
    #[error(
        "the replica is empty and the first transaction of the batch does not carry page 1: \
         feed it the primary's log from its first transaction, or seed it from a byte copy"
    )]
    Unseeded,
    /// The next part of a transaction redone part by part could not be had
    /// (see [`Applier::apply_streamed`]); nothing of it was applied.
    #[error("the parts of a transaction stopped arriving: {0}")]
    Incomplete(String),
    /// A transaction of the batch contradicts itself.
    #[error("transaction {index} of the batch is malformed: {reason}")]
    Malformed {
        /// Position of the transaction in the batch.
        index: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// One part of a transaction redone part by part
/// ([`Applier::apply_streamed`]).
#[derive(Debug)]
pub struct Part {
    /// (page number, full page image), each page in at most one part of the
    /// transaction.
    pub pages: Vec<(u32, Vec<u8>)>,
    /// Database size in pages after the transaction (the same in every part).
    pub db_size: u32,
    /// Whether this is the transaction's last part.
    pub last: bool,
}

/// The single connection that writes a database by redo.
pub struct Applier {
    conn: Connection,
    /// The database's page size; `None` while the file is empty and waits
    /// for the batch that seeds it.
    page_size: Option<usize>,
}

/// The merged effect of a batch: what one SQLite transaction must write.
struct Plan<'b> {
    /// Newest image of every page at or below `db_size`, page 1 included.
    pages: BTreeMap<u32, &'b [u8]>,
    /// Database size after the batch.
    db_size: u32,
}

impl Applier {
    /// Opens `path` (creating an empty database if missing) in WAL mode for
    /// redo. An empty file stays empty, outside WAL mode, until the first
    /// [`apply`](Self::apply) seeds it (see the module doc).
    ///
    /// Fails with [`RedoError::NoDbpage`] when SQLite lacks `sqlite_dbpage`
    /// and [`RedoError::Defensive`] when the connection is in defensive mode.
    pub fn open(path: &Path) -> Result<Applier, RedoError> {
        super::vfs::install();
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        Applier::with_connection(conn)
    }

    fn with_connection(conn: Connection) -> Result<Applier, RedoError> {
        if !dbpage_compiled_in(&conn)? {
            return Err(RedoError::NoDbpage);
        }
        if conn.db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE)? {
            return Err(RedoError::Defensive);
        }
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Redo overwrites pages whole and never serves a reader: a page
        // that fails its checksum here is replaced, not refused (`vfs`).
        super::vfs::set_verification(&conn, false);
        conn.pragma_update(None, "synchronous", "OFF")?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let pages: u32 = conn.pragma_query_value(None, "page_count", |row| row.get(0))?;
        let mut applier = Applier {
            conn,
            page_size: None,
        };
        if pages > 0 {
            applier.enter_wal_mode()?;
            applier.page_size = Some(applier.current_page_size()?);
        }
        Ok(applier)
    }

    /// Applies whole transactions, in order, in one SQLite write transaction
    /// (see the module doc for the steps and the rules behind them). On error
    /// nothing of the batch is applied.
    pub fn apply(&mut self, batch: &[PageSet<'_>]) -> Result<(), RedoError> {
        self.apply_settling(batch, true)
    }

    /// Like [`Applier::apply`] for a batch that ends inside a full image
    /// (`log::record`): the file is part new, part old until the image's
    /// last part, so the schema is not loaded from it yet.
    pub fn apply_partial(&mut self, batch: &[PageSet<'_>]) -> Result<(), RedoError> {
        self.apply_settling(batch, false)
    }

    fn apply_settling(&mut self, batch: &[PageSet<'_>], consistent: bool) -> Result<(), RedoError> {
        if batch.is_empty() {
            return Ok(());
        }
        let page_size = match self.page_size {
            Some(size) => size,
            None => seed_page_size(batch[0])?,
        };
        let plan = plan(batch, page_size)?;
        if self.page_size.is_none() {
            self.seed(page_size, plan.pages[&1])?;
        }
        self.reset_cache()?;
        let written = self
            .write(&plan)
            .and_then(|()| self.grow_file(plan.db_size, page_size));
        // A failed batch may have loaded a schema from pages it then rolled
        // back: reload from the committed state then too.
        let reload = consistent && (plan.pages.contains_key(&1) || written.is_err());
        let settled = self.settle(reload);
        written.and(settled)
    }

    /// Redoes one transaction that arrives in parts, one part in memory at a
    /// time, as **one** SQLite write transaction (readers see all of it or
    /// nothing): `next_part` is called until it returns the last part. The
    /// rules of [`Applier::apply`] hold: page 1 is held back and written
    /// last, the truncation after it; SQLite spills the written pages to its
    /// WAL as its cache fills, so memory does not grow with the
    /// transaction. On error nothing of the transaction is applied.
    pub fn apply_streamed(
        &mut self,
        mut next_part: impl FnMut() -> Result<Part, String>,
    ) -> Result<(), RedoError> {
        let first = next_part().map_err(RedoError::Incomplete)?;
        let page_size = match self.page_size {
            Some(size) => size,
            None => {
                let first_set = PageSet {
                    pages: &first.pages,
                    db_size: first.db_size,
                };
                let size = seed_page_size(first_set)?;
                let page_one = first.pages.iter().find(|(pgno, _)| *pgno == 1);
                let page_one = page_one
                    .map(|(_, data)| data.clone())
                    .expect("seed_page_size found page 1");
                self.seed(size, &page_one)?;
                size
            }
        };
        self.reset_cache()?;
        let written = self.write_streamed(first, &mut next_part, page_size);
        let reload = written.as_ref().map_or(true, |(_, page_one)| *page_one);
        let written = written.and_then(|(db_size, _)| self.grow_file(db_size, page_size));
        let settled = self.settle(reload);
        written.and(settled)
    }

    /// The write transaction of [`Applier::apply_streamed`]; returns the
    /// database size and whether page 1 was written.
    fn write_streamed(
        &mut self,
        mut part: Part,
        next_part: &mut impl FnMut() -> Result<Part, String>,
        page_size: usize,
    ) -> Result<(u32, bool), RedoError> {
        let db_size = part.db_size;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let pages_at_begin: u32 = tx.query_row("PRAGMA page_count", [], |row| row.get(0))?;
        let mut page_one = None;
        {
            let mut insert =
                tx.prepare_cached("INSERT INTO sqlite_dbpage(pgno, data) VALUES (?1, ?2)")?;
            for index in 0.. {
                if part.db_size == 0 {
                    return Err(RedoError::Malformed {
                        index,
                        reason: "database size 0 (every database has page 1)",
                    });
                }
                if part.db_size != db_size {
                    return Err(RedoError::Malformed {
                        index,
                        reason: "the parts of one transaction declare different database sizes",
                    });
                }
                for (pgno, data) in part.pages {
                    if pgno == 0 {
                        return Err(RedoError::Malformed {
                            index,
                            reason: "page number 0 (pages count from 1)",
                        });
                    }
                    if data.len() != page_size {
                        return Err(RedoError::PageSize {
                            pgno,
                            got: data.len(),
                            want: page_size,
                        });
                    }
                    if pgno == 1 {
                        page_one = Some(data);
                    } else if pgno <= db_size {
                        insert.execute((pgno, data))?;
                    }
                }
                if part.last {
                    break;
                }
                part = next_part().map_err(RedoError::Incomplete)?;
            }
            if let Some(page_one) = &page_one {
                insert.execute((1, page_one))?;
            }
            if db_size < pages_at_begin {
                insert.execute((db_size + 1, Null))?;
            }
        }
        tx.commit()?;
        Ok((db_size, page_one.is_some()))
    }

    /// Writes one page whole — a page repaired from a partner replica — in
    /// a write transaction of its own, then drops the cache as after a batch
    /// (rule 1; page 1 reloads the schema). The applied LSN does not move:
    /// the page is the one the file should hold at it.
    pub fn write_page(&mut self, pgno: u32, image: &[u8]) -> Result<(), RedoError> {
        if let Some(size) = self.page_size {
            if image.len() != size {
                return Err(RedoError::PageSize {
                    pgno,
                    got: image.len(),
                    want: size,
                });
            }
        }
        self.reset_cache()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO sqlite_dbpage(pgno, data) VALUES (?1, ?2)",
            (pgno, image),
        )?;
        tx.commit()?;
        self.settle(pgno == 1)
    }

    /// The connection, for checkpoints and reads by the owner. Writing
    /// through it makes the file diverge from the primary's.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Sets an empty file's page size and reserved bytes from the primary's
    /// page 1, before WAL mode fixes them (rule 6).
    fn seed(&mut self, page_size: usize, page_one: &[u8]) -> Result<(), RedoError> {
        self.conn
            .pragma_update(None, "page_size", page_size as i64)?;
        let mut reserve = i32::from(page_one[20]);
        self.conn
            .file_control(Some("main"), FileControl::ReserveBytes(&mut reserve))?;
        self.enter_wal_mode()?;
        let actual = self.current_page_size()?;
        if actual != page_size {
            return Err(RedoError::PageSize {
                pgno: 1,
                got: page_size,
                want: actual,
            });
        }
        self.page_size = Some(page_size);
        Ok(())
    }

    fn current_page_size(&self) -> Result<usize, RedoError> {
        let size: u32 = self
            .conn
            .pragma_query_value(None, "page_size", |row| row.get(0))?;
        Ok(size as usize)
    }

    fn enter_wal_mode(&self) -> Result<(), RedoError> {
        let mode: String =
            self.conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if mode.eq_ignore_ascii_case("wal") {
            Ok(())
        } else {
            Err(RedoError::Sqlite(rusqlite::Error::SqliteFailure(
                ffi::Error::new(ffi::SQLITE_ERROR),
                Some(format!(
                    "cannot switch the replica to WAL mode: it stays in {mode} mode"
                )),
            )))
        }
    }

    /// Steps 3 to 6 of the protocol, cache resets excluded.
    fn write(&mut self, plan: &Plan<'_>) -> Result<(), RedoError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // The size the B-tree saw at BEGIN: sqlite_dbpage truncates only
        // below it.
        let pages_at_begin: u32 = tx.query_row("PRAGMA page_count", [], |row| row.get(0))?;
        {
            let mut insert =
                tx.prepare_cached("INSERT INTO sqlite_dbpage(pgno, data) VALUES (?1, ?2)")?;
            for (pgno, data) in plan.pages.range(2..) {
                insert.execute((pgno, data))?;
            }
            if let Some(page_one) = plan.pages.get(&1) {
                insert.execute((1, page_one))?;
            }
            if plan.db_size < pages_at_begin {
                insert.execute((plan.db_size + 1, Null))?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Rule 7: makes the file at least `db_size` pages long, so a checkpoint
    /// of a part of a full image passes SQLite's size check (see the module
    /// doc). Grows through SQLite's own file handle: a second descriptor of
    /// the file, once closed, would drop the POSIX locks SQLite holds on it.
    fn grow_file(&self, db_size: u32, page_size: usize) -> Result<(), RedoError> {
        let want = i64::from(db_size) * page_size as i64;
        let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
        // SAFETY: the handle belongs to `self.conn`, which outlives the call;
        // SQLITE_FCNTL_FILE_POINTER stores the main database's open file in
        // `file`, which lives as long as the connection.
        let rc = unsafe {
            ffi::sqlite3_file_control(
                self.conn.handle(),
                c"main".as_ptr(),
                ffi::SQLITE_FCNTL_FILE_POINTER,
                (&raw mut file).cast(),
            )
        };
        let failed = |rc: std::ffi::c_int, what: &str| {
            RedoError::Sqlite(rusqlite::Error::SqliteFailure(
                ffi::Error::new(rc),
                Some(format!(
                    "cannot grow the replica's file to {want} bytes: {what}"
                )),
            ))
        };
        if rc != ffi::SQLITE_OK {
            return Err(failed(rc, "no file handle"));
        }
        // SAFETY: `file` is the connection's open main database file (or
        // null); its methods are those of the VFS that opened it, called on
        // the thread that owns the connection, outside any transaction.
        unsafe {
            let Some(methods) = file.as_ref().and_then(|f| f.pMethods.as_ref()) else {
                return Err(failed(ffi::SQLITE_MISUSE, "no file handle"));
            };
            let (Some(size_of), Some(truncate)) = (methods.xFileSize, methods.xTruncate) else {
                return Err(failed(ffi::SQLITE_MISUSE, "the VFS cannot size files"));
            };
            let mut size: i64 = 0;
            let rc = size_of(file, &mut size);
            if rc != ffi::SQLITE_OK {
                return Err(failed(rc, "cannot read its size"));
            }
            if size < want {
                let rc = truncate(file, want);
                if rc != ffi::SQLITE_OK {
                    return Err(failed(rc, "the file system refused"));
                }
            }
        }
        Ok(())
    }

    /// Drops every cached page, so the B-tree re-reads what redo wrote
    /// (rule 1). A no-op inside a transaction.
    fn reset_cache(&self) -> Result<(), RedoError> {
        // SAFETY: the handle belongs to `self.conn`, which outlives the call;
        // SQLITE_FCNTL_RESET_CACHE takes no argument.
        let rc = unsafe {
            ffi::sqlite3_file_control(
                self.conn.handle(),
                c"main".as_ptr(),
                ffi::SQLITE_FCNTL_RESET_CACHE,
                std::ptr::null_mut(),
            )
        };
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(RedoError::Sqlite(rusqlite::Error::SqliteFailure(
                ffi::Error::new(rc),
                Some("cannot reset the page cache of the redo connection".to_string()),
            )))
        }
    }

    /// Rule 1 after a batch: drops the pages redo wrote from the cache and,
    /// when the schema may have changed, loads it now from the committed
    /// pages rather than lazily inside the next batch, then drops the pages
    /// that read.
    fn settle(&self, reload_schema: bool) -> Result<(), RedoError> {
        self.reset_cache()?;
        if reload_schema {
            self.conn
                .pragma_query_value(None, "page_count", |row| row.get::<_, u32>(0))?;
            self.reset_cache()?;
        }
        Ok(())
    }
}

/// Whether SQLite was built with `sqlite_dbpage` registered.
fn dbpage_compiled_in(conn: &Connection) -> Result<bool, RedoError> {
    Ok(conn.query_row(
        "SELECT sqlite_compileoption_used('ENABLE_DBPAGE_VTAB')",
        [],
        |row| row.get(0),
    )?)
}

/// The page size an empty replica takes from the first transaction's page 1.
fn seed_page_size(first: PageSet<'_>) -> Result<usize, RedoError> {
    let Some((_, page_one)) = first.pages.iter().find(|(pgno, _)| *pgno == 1) else {
        return Err(RedoError::Unseeded);
    };
    let Some(header) = page_one.get(16..18) else {
        return Err(RedoError::Malformed {
            index: 0,
            reason: "page 1 is too short for a database header",
        });
    };
    let declared = match u16::from_be_bytes([header[0], header[1]]) {
        1 => 65536,
        size => usize::from(size),
    };
    if declared < 512 || !declared.is_power_of_two() {
        return Err(RedoError::Malformed {
            index: 0,
            reason: "page 1 declares an invalid page size",
        });
    }
    if declared != page_one.len() {
        return Err(RedoError::PageSize {
            pgno: 1,
            got: page_one.len(),
            want: declared,
        });
    }
    Ok(declared)
}

/// Validates a batch and merges it into what one SQLite transaction writes.
fn plan<'b>(batch: &[PageSet<'b>], page_size: usize) -> Result<Plan<'b>, RedoError> {
    let mut pages = BTreeMap::new();
    for (index, set) in batch.iter().enumerate() {
        if set.db_size == 0 {
            return Err(RedoError::Malformed {
                index,
                reason: "database size 0 (every database has page 1)",
            });
        }
        for (pgno, data) in set.pages {
            if *pgno == 0 {
                return Err(RedoError::Malformed {
                    index,
                    reason: "page number 0 (pages count from 1)",
                });
            }
            if data.len() != page_size {
                return Err(RedoError::PageSize {
                    pgno: *pgno,
                    got: data.len(),
                    want: page_size,
                });
            }
            if *pgno <= set.db_size {
                pages.insert(*pgno, data.as_slice());
            }
        }
        // Pages this transaction cut off are gone; a later transaction that
        // grows the file again ships every page it adds.
        pages.split_off(&(set.db_size + 1));
    }
    let db_size = batch[batch.len() - 1].db_size;
    Ok(Plan { pages, db_size })
}

/// Compares two database files page by page, masking page 1's volatile bytes
/// (24..28, 92..96, 96..100); returns the first differing page number, or
/// `None`. A page only one of them has counts as differing.
pub fn first_difference(a: &Connection, b: &Connection) -> Result<Option<u32>, RedoError> {
    const ALL_PAGES: &str = "SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno";
    let mut a_pages = a.prepare(ALL_PAGES)?;
    let mut b_pages = b.prepare(ALL_PAGES)?;
    let mut a_rows = a_pages.query([])?;
    let mut b_rows = b_pages.query([])?;
    loop {
        match (a_rows.next()?, b_rows.next()?) {
            (None, None) => return Ok(None),
            (Some(row), None) | (None, Some(row)) => return Ok(Some(row.get(0)?)),
            (Some(a_row), Some(b_row)) => {
                let a_pgno: u32 = a_row.get(0)?;
                let b_pgno: u32 = b_row.get(0)?;
                if a_pgno != b_pgno {
                    return Ok(Some(a_pgno.min(b_pgno)));
                }
                let a_data = a_row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
                let b_data = b_row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
                if !same_page(a_pgno, a_data, b_data) {
                    return Ok(Some(a_pgno));
                }
            }
        }
    }
}

/// Page equality, with page 1's volatile bytes masked (rule 5).
fn same_page(pgno: u32, a: &[u8], b: &[u8]) -> bool {
    if pgno != 1 || a.len() != b.len() || a.len() < 100 {
        return a == b;
    }
    let mut from = 0;
    for range in VOLATILE_PAGE_ONE_BYTES {
        if a[from..range.start] != b[from..range.start] {
            return false;
        }
        from = range.end;
    }
    a[from..] == b[from..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, File};
    use std::io::{Read, Seek, SeekFrom};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::thread;
    use std::time::Instant;

    /// One committed transaction as the primary's WAL recorded it.
    struct Txn {
        pages: Vec<(u32, Vec<u8>)>,
        db_size: u32,
    }

    impl Txn {
        fn set(&self) -> PageSet<'_> {
            PageSet {
                pages: &self.pages,
                db_size: self.db_size,
            }
        }
    }

    fn sets(txns: &[Txn]) -> Vec<PageSet<'_>> {
        txns.iter().map(Txn::set).collect()
    }

    /// A primary in WAL mode whose committed transactions are read back from
    /// its `-wal` file right after each write, as availdb's capture does.
    struct Primary {
        conn: Connection,
        wal: PathBuf,
        /// Salts of the WAL generation being read.
        salts: [u8; 8],
        /// Byte offset just past the last commit frame read.
        offset: u64,
        /// Cumulative checksum of the frames up to `offset`.
        checksum: (u32, u32),
        /// Whether the checksum reads big-endian words (WAL magic bit 0).
        big_endian_words: bool,
    }

    impl Primary {
        fn create(path: &Path, page_size: u32, reserve: i32) -> Primary {
            // As in the server: every connection goes through the VFS.
            crate::engine::vfs::install();
            let conn = Connection::open(path).unwrap();
            conn.pragma_update(None, "page_size", page_size).unwrap();
            let mut reserve = reserve;
            conn.file_control(Some("main"), FileControl::ReserveBytes(&mut reserve))
                .unwrap();
            conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
            let mode: String = conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
            Primary {
                conn,
                wal: PathBuf::from(format!("{}-wal", path.display())),
                salts: [0; 8],
                offset: 0,
                checksum: (0, 0),
                big_endian_words: false,
            }
        }

        /// Runs `sql` and returns the transactions it committed.
        fn run(&mut self, sql: &str) -> Vec<Txn> {
            if sql.starts_with("PRAGMA incremental_vacuum") {
                // It frees one page per row it returns.
                let mut stmt = self.conn.prepare(sql).unwrap();
                let mut rows = stmt.query([]).unwrap();
                while rows.next().unwrap().is_some() {}
            } else {
                self.conn.execute_batch(sql).unwrap();
            }
            self.capture()
        }

        /// Reads the transactions committed to the WAL since the last call:
        /// valid frames (salts match, checksums chain) up to the last commit
        /// frame.
        fn capture(&mut self) -> Vec<Txn> {
            let Ok(mut file) = File::open(&self.wal) else {
                return Vec::new();
            };
            let mut header = [0u8; 32];
            if file.read_exact(&mut header).is_err() {
                return Vec::new();
            }
            if header[16..24] != self.salts {
                // A new WAL generation: the writer restarted the log.
                self.salts.copy_from_slice(&header[16..24]);
                self.big_endian_words = be32(&header[0..4]) & 1 == 1;
                self.checksum = (be32(&header[24..28]), be32(&header[28..32]));
                self.offset = 32;
            }
            let frame_len = 24 + be32(&header[8..12]) as usize;
            let start = self.offset;
            let mut tail = Vec::new();
            file.seek(SeekFrom::Start(start)).unwrap();
            file.read_to_end(&mut tail).unwrap();
            let mut txns = Vec::new();
            let mut pending = BTreeMap::new();
            let mut checksum = self.checksum;
            for (index, frame) in tail.chunks_exact(frame_len).enumerate() {
                checksum = wal_checksum(checksum, &frame[..8], self.big_endian_words);
                checksum = wal_checksum(checksum, &frame[24..], self.big_endian_words);
                let stored = (be32(&frame[16..20]), be32(&frame[20..24]));
                if frame[8..16] != self.salts || checksum != stored {
                    break;
                }
                pending.insert(be32(&frame[0..4]), frame[24..].to_vec());
                let db_size = be32(&frame[4..8]);
                if db_size > 0 {
                    pending.split_off(&(db_size + 1));
                    txns.push(Txn {
                        pages: std::mem::take(&mut pending).into_iter().collect(),
                        db_size,
                    });
                    self.checksum = checksum;
                    self.offset = start + ((index + 1) * frame_len) as u64;
                }
            }
            txns
        }
    }

    /// Copies the whole WAL into the file and truncates the file to the
    /// database size of the last commit.
    const CHECKPOINT: &str = "PRAGMA wal_checkpoint(TRUNCATE)";

    fn be32(bytes: &[u8]) -> u32 {
        u32::from_be_bytes(bytes.try_into().unwrap())
    }

    /// SQLite's WAL checksum: two running sums over pairs of 32-bit words.
    fn wal_checksum(mut sum: (u32, u32), data: &[u8], big_endian_words: bool) -> (u32, u32) {
        let word = |bytes: &[u8]| {
            let bytes = bytes.try_into().unwrap();
            if big_endian_words {
                u32::from_be_bytes(bytes)
            } else {
                u32::from_le_bytes(bytes)
            }
        };
        for pair in data.chunks_exact(8) {
            sum.0 = sum.0.wrapping_add(word(&pair[..4])).wrapping_add(sum.1);
            sum.1 = sum.1.wrapping_add(word(&pair[4..])).wrapping_add(sum.0);
        }
        sum
    }

    /// A deterministic pseudo-random sequence for workloads.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % bound
        }
    }

    /// `SELECT x` for x in 1..=n.
    fn series(n: u32) -> String {
        format!(
            "(WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) \
             SELECT x FROM c)"
        )
    }

    fn number(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |row| row.get(0)).unwrap()
    }

    fn text(conn: &Connection, sql: &str) -> String {
        conn.query_row(sql, [], |row| row.get(0)).unwrap()
    }

    fn all_pages(conn: &Connection) -> Vec<(u32, Vec<u8>)> {
        let mut stmt = conn
            .prepare("SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno")
            .unwrap();
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)));
        rows.unwrap().map(Result::unwrap).collect()
    }

    fn read_only(path: &Path) -> Connection {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .unwrap();
        conn.busy_timeout(BUSY_TIMEOUT).unwrap();
        conn
    }

    fn assert_identical(primary: &Connection, replica: &Applier, context: &str) {
        assert_eq!(
            first_difference(primary, replica.connection()).unwrap(),
            None,
            "replica differs from primary {context}"
        );
    }

    /// DDL, DML, a 3 MB blob, DROP TABLE, VACUUM, shrinking by VACUUM, by
    /// incremental vacuum and by auto-vacuum, and checkpoints (WAL restarts)
    /// on the primary. Each step is at most one transaction.
    fn mixed_workload() -> Vec<String> {
        let mut steps = vec![
            "CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT, n INTEGER)".to_string(),
            "CREATE INDEX kv_v ON kv(v)".to_string(),
            format!(
                "INSERT INTO kv(v, n) SELECT printf('value-%d', x), x FROM {}",
                series(2000)
            ),
            "UPDATE kv SET v = v || '-updated' WHERE k % 3 = 0".to_string(),
            "DELETE FROM kv WHERE k % 5 = 0".to_string(),
            "CREATE TABLE blobs(id INTEGER PRIMARY KEY, b BLOB)".to_string(),
            "INSERT INTO blobs VALUES (1, randomblob(3 * 1024 * 1024))".to_string(),
            "UPDATE blobs SET b = randomblob(1000) WHERE id = 1".to_string(),
        ];
        for group in 0..8 {
            let mut ddl = String::from("BEGIN;");
            for table in 0..5 {
                let columns: Vec<String> = (0..12)
                    .map(|c| format!("column_with_a_long_name_{c} TEXT DEFAULT 'x'"))
                    .collect();
                ddl += &format!("CREATE TABLE wide_{group}_{table}({});", columns.join(", "));
            }
            steps.push(ddl + "COMMIT;");
        }
        steps.extend([
            "INSERT INTO blobs VALUES (2, randomblob(3 * 1024 * 1024))".to_string(),
            "DROP TABLE blobs".to_string(),
            "VACUUM".to_string(),
            "PRAGMA wal_checkpoint(TRUNCATE)".to_string(),
            format!(
                "INSERT INTO kv(v, n) SELECT hex(randomblob(1500)), -x FROM {}",
                series(600)
            ),
            "DELETE FROM kv WHERE n < 0".to_string(),
            "VACUUM".to_string(),
            "PRAGMA auto_vacuum = INCREMENTAL".to_string(),
            "VACUUM".to_string(),
            format!(
                "INSERT INTO kv(v, n) SELECT hex(randomblob(1500)), -x FROM {}",
                series(400)
            ),
            "DELETE FROM kv WHERE n < 0".to_string(),
            "PRAGMA incremental_vacuum(100)".to_string(),
            "PRAGMA incremental_vacuum".to_string(),
            "PRAGMA wal_checkpoint(PASSIVE)".to_string(),
            "DROP INDEX kv_v".to_string(),
            "ALTER TABLE kv ADD COLUMN extra TEXT".to_string(),
            "UPDATE kv SET extra = 'x' WHERE k % 7 = 0".to_string(),
            "PRAGMA user_version = 7".to_string(),
            "PRAGMA auto_vacuum = FULL".to_string(),
            "VACUUM".to_string(),
            "CREATE TABLE big(b BLOB)".to_string(),
            "INSERT INTO big VALUES (randomblob(1000000))".to_string(),
            "DELETE FROM big".to_string(),
            "BEGIN; DROP TABLE wide_3_1; DROP TABLE wide_5_4; COMMIT".to_string(),
            "PRAGMA auto_vacuum = NONE".to_string(),
            "VACUUM".to_string(),
        ]);
        steps
    }

    /// Runs the mixed workload on a fresh primary in `dir`.
    fn record_mixed_workload(dir: &Path) -> (Primary, Vec<Txn>) {
        let mut primary = Primary::create(&dir.join("primary.db"), 4096, 0);
        let txns = mixed_workload()
            .iter()
            .flat_map(|step| primary.run(step))
            .collect();
        (primary, txns)
    }

    #[test]
    fn safety_rule_3_replica_is_page_identical_after_every_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let replica_path = dir.path().join("replica.db");
        let mut primary = Primary::create(&dir.path().join("primary.db"), 4096, 0);
        let mut replica = Applier::open(&replica_path).unwrap();
        let (mut applied, mut shrinks, mut largest) = (0, 0, 0);
        let mut previous_size = 0;
        for step in mixed_workload() {
            let txns = primary.run(&step);
            // One transaction per step, so the primary's current state is
            // the state after each transaction.
            assert!(
                txns.len() <= 1,
                "`{step}` committed {} transactions",
                txns.len()
            );
            for txn in &txns {
                replica.apply(&[txn.set()]).unwrap();
                assert_identical(&primary.conn, &replica, &format!("after `{step}`"));
                let pages = number(replica.connection(), "PRAGMA page_count");
                assert_eq!(pages, i64::from(txn.db_size), "after `{step}`");
                // The header's size is not the WAL's: the file after a
                // checkpoint shows what the commit really left.
                replica.connection().execute_batch(CHECKPOINT).unwrap();
                let file = fs::metadata(&replica_path).unwrap().len();
                assert_eq!(file, u64::from(txn.db_size) * 4096, "after `{step}`");
                shrinks += usize::from(txn.db_size < previous_size);
                largest = largest.max(txn.db_size);
                previous_size = txn.db_size;
                applied += 1;
            }
        }
        assert!(applied > 30, "{applied} transactions");
        assert!(
            shrinks >= 4,
            "the workload shrank the file only {shrinks} times"
        );
        assert!(
            largest > 1000,
            "the workload never grew past {largest} pages"
        );
        assert_eq!(text(replica.connection(), "PRAGMA integrity_check"), "ok");
    }

    #[test]
    fn apply_rule_1_applier_connection_reads_the_current_schema_and_pages() {
        let dir = tempfile::tempdir().unwrap();
        let mut primary = Primary::create(&dir.path().join("primary.db"), 1024, 0);
        let mut replica = Applier::open(&dir.path().join("replica.db")).unwrap();
        let mut rng = Lcg(7);
        let mut largest_schema = 0;
        let columns: Vec<String> = (0..8)
            .map(|c| format!("a_rather_long_column_name_to_grow_the_schema_{c} TEXT"))
            .collect();
        let columns = columns.join(", ");
        for round in 0..120 {
            let table = rng.below(40);
            let create = format!(
                "CREATE TABLE IF NOT EXISTS t{table}(a INTEGER PRIMARY KEY, b BLOB, {columns})"
            );
            let step = match rng.below(6) {
                0 | 1 => format!("{create}; CREATE INDEX IF NOT EXISTS t{table}_b ON t{table}(b)"),
                2 | 3 => format!(
                    "{create}; INSERT INTO t{table}(b) SELECT randomblob(300) FROM {}",
                    series(20)
                ),
                4 => format!("DROP TABLE IF EXISTS t{table}"),
                _ => "VACUUM".to_string(),
            };
            for txn in primary.run(&step) {
                replica.apply(&[txn.set()]).unwrap();
                let reader = replica.connection();
                assert_eq!(text(reader, "PRAGMA quick_check"), "ok", "round {round}");
            }
            let schema = "SELECT count(*), sum(length(sql)) FROM sqlite_schema";
            let expected: (i64, Option<i64>) = primary
                .conn
                .query_row(schema, [], |row| Ok((row.get(0)?, row.get(1)?)))
                .unwrap();
            let got: (i64, Option<i64>) = replica
                .connection()
                .query_row(schema, [], |row| Ok((row.get(0)?, row.get(1)?)))
                .unwrap();
            assert_eq!(got, expected, "round {round}");
            largest_schema = largest_schema.max(got.1.unwrap_or(0));
        }
        assert!(
            largest_schema > 4 * 1024,
            "a schema of {largest_schema} bytes spans too few 1 KB pages"
        );
        assert_identical(&primary.conn, &replica, "at the end");
    }

    #[test]
    fn apply_rule_1_schema_changes_then_shrinks_with_no_reads_between_batches() {
        let dir = tempfile::tempdir().unwrap();
        let mut primary = Primary::create(&dir.path().join("primary.db"), 1024, 0);
        let mut replica = Applier::open(&dir.path().join("replica.db")).unwrap();
        let columns: Vec<String> = (0..10)
            .map(|c| format!("a_long_column_name_that_fills_the_schema_{c} TEXT"))
            .collect();
        let columns = columns.join(", ");
        let mut rng = Lcg(5);
        for round in 0..60 {
            let step = match round % 4 {
                0 => format!(
                    "CREATE TABLE t{round}(b BLOB, {columns});\
                     INSERT INTO t{round}(b) SELECT randomblob(900) FROM {}",
                    series(30)
                ),
                1 => format!("CREATE INDEX i{round} ON t{}(b)", round - 1),
                2 => format!("DROP TABLE t{}", rng.below(round) / 4 * 4),
                _ => "VACUUM".to_string(),
            };
            let step = step.replace("DROP TABLE", "DROP TABLE IF EXISTS");
            for txn in primary.run(&step) {
                replica.apply(&[txn.set()]).unwrap();
            }
        }
        assert_identical(&primary.conn, &replica, "at the end");
        assert_eq!(text(replica.connection(), "PRAGMA integrity_check"), "ok");
    }

    #[test]
    fn safety_rule_4_readers_see_whole_transactions_and_new_tables() {
        const ACCOUNTS: i64 = 200;
        let dir = tempfile::tempdir().unwrap();
        let replica_path = dir.path().join("replica.db");
        let mut primary = Primary::create(&dir.path().join("primary.db"), 4096, 0);
        let mut replica = Applier::open(&replica_path).unwrap();
        let setup = primary.run(&format!(
            "CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL, pad BLOB);\
             INSERT INTO accounts(balance, pad) SELECT 1000, randomblob(200) FROM {}",
            series(ACCOUNTS as u32)
        ));
        replica.apply(&sets(&setup)).unwrap();

        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (stop, path) = (stop.clone(), replica_path.clone());
                thread::spawn(move || {
                    let conn = read_only(&path);
                    let (mut reads, mut tables) = (0, 0);
                    while !stop.load(Ordering::Relaxed) {
                        let total = "SELECT sum(balance), count(*) FROM accounts";
                        let (sum, count): (i64, i64) = conn
                            .query_row(total, [], |row| Ok((row.get(0)?, row.get(1)?)))
                            .unwrap();
                        assert_eq!((sum, count), (ACCOUNTS * 1000, ACCOUNTS));
                        // One snapshot, held across applies, read twice.
                        conn.execute_batch("BEGIN").unwrap();
                        let first = number(&conn, "SELECT sum(balance) FROM accounts");
                        let schema = number(&conn, "SELECT count(*) FROM sqlite_schema");
                        thread::yield_now();
                        let mut stmt = conn.prepare("SELECT balance FROM accounts").unwrap();
                        let again: i64 = stmt
                            .query_map([], |row| row.get::<_, i64>(0))
                            .unwrap()
                            .map(Result::unwrap)
                            .sum();
                        drop(stmt);
                        conn.execute_batch("COMMIT").unwrap();
                        assert_eq!((first, again), (ACCOUNTS * 1000, ACCOUNTS * 1000));
                        assert!(
                            schema >= tables,
                            "schema went back from {tables} to {schema}"
                        );
                        tables = schema;
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();

        let watcher = read_only(&replica_path);
        let mut rng = Lcg(11);
        let mut pending = Vec::new();
        let batch_sizes = [1, 3, 7, 2];
        for i in 0..1500u32 {
            let new_table = i % 100 == 50;
            let step = if new_table {
                format!("CREATE TABLE t{i}(x); INSERT INTO t{i} VALUES ({i})")
            } else if i % 500 == 499 {
                "VACUUM".to_string()
            } else {
                let (from, to) = (rng.below(200) + 1, rng.below(200) + 1);
                let amount = rng.below(500);
                format!(
                    "BEGIN;\
                     UPDATE accounts SET balance = balance - {amount} WHERE id = {from};\
                     UPDATE accounts SET balance = balance + {amount} WHERE id = {to};\
                     COMMIT"
                )
            };
            pending.extend(primary.run(&step));
            if new_table || pending.len() >= batch_sizes[i as usize % batch_sizes.len()] {
                replica.apply(&sets(&pending)).unwrap();
                pending.clear();
            }
            if new_table {
                assert_eq!(
                    number(&watcher, &format!("SELECT x FROM t{i}")),
                    i64::from(i)
                );
            }
            if i % 300 == 299 {
                replica
                    .connection()
                    .query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
                    .unwrap();
            }
        }
        replica.apply(&sets(&pending)).unwrap();
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            let reads = reader
                .join()
                .expect("a reader saw a torn transaction or an error");
            assert!(reads > 10, "a reader read only {reads} times");
        }
        assert_identical(&primary.conn, &replica, "at the end");
    }

    #[test]
    fn apply_rule_3_truncation_shrinks_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let replica_path = dir.path().join("replica.db");
        let mut primary = Primary::create(&dir.path().join("primary.db"), 4096, 0);
        let mut replica = Applier::open(&replica_path).unwrap();
        let grow = primary.run(&format!(
            "CREATE TABLE t(b BLOB); INSERT INTO t SELECT randomblob(3000) FROM {}",
            series(400)
        ));
        replica.apply(&sets(&grow)).unwrap();
        replica.connection().execute_batch(CHECKPOINT).unwrap();
        let grown = fs::metadata(&replica_path).unwrap().len();
        assert!(grown > 400 * 4096, "file of {grown} bytes");

        let shrink = primary.run("DELETE FROM t; VACUUM");
        let db_size = shrink.last().unwrap().db_size;
        assert!(db_size < 10, "VACUUM left {db_size} pages");
        for txn in &shrink {
            replica.apply(&[txn.set()]).unwrap();
        }
        let pages = number(replica.connection(), "PRAGMA page_count");
        assert_eq!(pages, i64::from(db_size));
        assert_eq!(pages, number(&primary.conn, "PRAGMA page_count"));
        replica.connection().execute_batch(CHECKPOINT).unwrap();
        let shrunk = fs::metadata(&replica_path).unwrap().len();
        assert_eq!(shrunk, u64::from(db_size) * 4096);
        assert_identical(&primary.conn, &replica, "after the shrink");
    }

    #[test]
    fn batched_apply_gives_the_same_file_as_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let (primary, txns) = record_mixed_workload(dir.path());
        let mut one_by_one = Applier::open(&dir.path().join("one.db")).unwrap();
        let mut batched = Applier::open(&dir.path().join("batched.db")).unwrap();
        let mut rest = &txns[..];
        for size in [1, 2, 5, 1, 13, 3, 8].iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (batch, tail) = rest.split_at((*size).min(rest.len()));
            for txn in batch {
                one_by_one.apply(&[txn.set()]).unwrap();
            }
            batched.apply(&sets(batch)).unwrap();
            let difference =
                first_difference(one_by_one.connection(), batched.connection()).unwrap();
            assert_eq!(difference, None, "{} transactions left", tail.len());
            rest = tail;
        }
        assert_identical(&primary.conn, &batched, "at the end");
        assert_eq!(text(batched.connection(), "PRAGMA integrity_check"), "ok");
    }

    #[test]
    fn page_cut_off_by_a_later_transaction_of_the_batch_is_not_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut primary = Primary::create(&dir.path().join("primary.db"), 4096, 0);
        let mut replica = Applier::open(&dir.path().join("replica.db")).unwrap();
        // The primary's file already has page 1: auto-vacuum needs a VACUUM.
        let setup = primary.run("PRAGMA auto_vacuum = FULL; VACUUM; CREATE TABLE t(b BLOB)");
        replica.apply(&sets(&setup)).unwrap();
        let before = setup.last().unwrap().db_size;

        let mut batch = primary.run("INSERT INTO t VALUES (randomblob(1000000))");
        batch.extend(primary.run("DELETE FROM t"));
        let (grown, shrunk) = (batch[0].db_size, batch[1].db_size);
        assert!(
            grown > 200 && shrunk <= before,
            "{before} -> {grown} -> {shrunk}"
        );
        assert!(batch[1].pages.iter().all(|(pgno, _)| *pgno <= shrunk));

        replica.apply(&sets(&batch)).unwrap();
        let pages = number(replica.connection(), "PRAGMA page_count");
        assert_eq!(pages, i64::from(shrunk));
        assert_identical(&primary.conn, &replica, "after the batch");
        assert_eq!(text(replica.connection(), "PRAGMA integrity_check"), "ok");
        // The header's size can be right while the WAL's commit frame is not:
        // only the file after a checkpoint tells.
        replica.connection().execute_batch(CHECKPOINT).unwrap();
        let file = fs::metadata(dir.path().join("replica.db")).unwrap().len();
        assert_eq!(file, u64::from(shrunk) * 4096);
    }

    #[test]
    fn wrong_page_size_is_refused_and_nothing_changes() {
        let dir = tempfile::tempdir().unwrap();
        let mut primary = Primary::create(&dir.path().join("primary.db"), 4096, 0);
        let mut replica = Applier::open(&dir.path().join("replica.db")).unwrap();
        let setup = primary.run("CREATE TABLE t(x); INSERT INTO t VALUES (1)");
        replica.apply(&sets(&setup)).unwrap();
        let before = all_pages(replica.connection());

        let good = primary.run("INSERT INTO t VALUES (2)").pop().unwrap();
        let mut bad = primary.run("INSERT INTO t VALUES (3)").pop().unwrap();
        let (pgno, image) = &mut bad.pages[0];
        let pgno = *pgno;
        image.pop();
        let err = replica.apply(&[good.set(), bad.set()]).unwrap_err();
        assert!(
            matches!(err, RedoError::PageSize { pgno: p, got: 4095, want: 4096 } if p == pgno),
            "{err}"
        );
        assert_eq!(all_pages(replica.connection()), before);
        assert_eq!(number(replica.connection(), "SELECT count(*) FROM t"), 1);

        replica.apply(&[good.set()]).unwrap();
        assert_eq!(number(replica.connection(), "SELECT count(*) FROM t"), 2);
    }

    #[test]
    fn malformed_transactions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut primary = Primary::create(&dir.path().join("primary.db"), 4096, 0);
        let mut replica = Applier::open(&dir.path().join("replica.db")).unwrap();
        replica
            .apply(&sets(&primary.run("CREATE TABLE t(x)")))
            .unwrap();
        let page = vec![0u8; 4096];
        let zero_size = [(2, page.clone())];
        let zero_page = [(0, page)];
        for (pages, db_size, reason) in [
            (&zero_size, 0, "database size 0"),
            (&zero_page, 2, "page number 0"),
        ] {
            let set = PageSet { pages, db_size };
            let err = replica.apply(&[set]).unwrap_err();
            assert!(
                matches!(err, RedoError::Malformed { index: 0, .. }),
                "{err}"
            );
            assert!(err.to_string().contains(reason), "{err}");
        }
    }

    #[test]
    fn apply_rule_5_only_page_1_volatile_bytes_are_masked() {
        let page = vec![7u8; 512];
        for (pgno, byte, same) in [
            (1, 24, true),
            (1, 27, true),
            (1, 92, true),
            (1, 99, true),
            (1, 23, false),
            (1, 28, false),
            (1, 91, false),
            (1, 100, false),
            (2, 24, false),
            (2, 99, false),
        ] {
            let mut other = page.clone();
            other[byte] ^= 0xff;
            assert_eq!(
                same_page(pgno, &page, &other),
                same,
                "page {pgno} byte {byte}"
            );
        }
        assert!(!same_page(1, &page, &page[..511]));

        let dir = tempfile::tempdir().unwrap();
        let mut primary = Primary::create(&dir.path().join("primary.db"), 4096, 0);
        let mut replica = Applier::open(&dir.path().join("replica.db")).unwrap();
        let setup = primary.run("CREATE TABLE t(x); INSERT INTO t VALUES (1)");
        replica.apply(&sets(&setup)).unwrap();
        assert_identical(&primary.conn, &replica, "after the setup");
        primary.conn.execute_batch("UPDATE t SET x = 2").unwrap();
        let difference = first_difference(&primary.conn, replica.connection()).unwrap();
        assert_eq!(difference, Some(2));
        primary.conn.execute_batch("CREATE TABLE u(y)").unwrap();
        let difference = first_difference(replica.connection(), &primary.conn).unwrap();
        assert_eq!(difference, Some(1));
    }

    #[test]
    fn apply_rule_6_empty_replica_takes_page_size_and_reserved_bytes_from_page_1() {
        for (page_size, reserve) in [(8192, 8), (65536, 0), (1024, 32)] {
            let dir = tempfile::tempdir().unwrap();
            let replica_path = dir.path().join("replica.db");
            let mut primary = Primary::create(&dir.path().join("primary.db"), page_size, reserve);
            let mut replica = Applier::open(&replica_path).unwrap();
            let early_reader = read_only(&replica_path);
            let first = primary.run(&format!(
                "CREATE TABLE t(x, pad); INSERT INTO t SELECT x, randomblob(700) FROM {}",
                series(300)
            ));
            replica.apply(&sets(&first)).unwrap();
            let conn = replica.connection();
            let context = format!("page size {page_size}, reserve {reserve}");
            assert_eq!(
                number(conn, "PRAGMA page_size"),
                i64::from(page_size),
                "{context}"
            );
            assert_eq!(text(conn, "PRAGMA journal_mode"), "wal", "{context}");
            assert_eq!(all_pages(conn)[0].1[20], reserve as u8, "{context}");
            assert_identical(&primary.conn, &replica, &context);
            assert_eq!(
                number(&early_reader, "SELECT count(*) FROM t"),
                300,
                "{context}"
            );
            drop(replica);

            let mut reopened = Applier::open(&replica_path).unwrap();
            let more = primary.run("UPDATE t SET pad = randomblob(100) WHERE x % 2 = 0");
            reopened.apply(&sets(&more)).unwrap();
            assert_identical(&primary.conn, &reopened, &context);
            let conn = reopened.connection();
            assert_eq!(text(conn, "PRAGMA integrity_check"), "ok", "{context}");
        }
    }

    #[test]
    fn empty_replica_refuses_a_batch_without_page_1() {
        let dir = tempfile::tempdir().unwrap();
        let mut primary = Primary::create(&dir.path().join("primary.db"), 4096, 0);
        let mut replica = Applier::open(&dir.path().join("replica.db")).unwrap();
        let first = primary.run("CREATE TABLE t(x)");
        let second = primary.run("INSERT INTO t VALUES (1)");
        assert!(second[0].pages.iter().all(|(pgno, _)| *pgno != 1));

        let err = replica.apply(&sets(&second)).unwrap_err();
        assert!(matches!(err, RedoError::Unseeded), "{err}");
        assert_eq!(number(replica.connection(), "PRAGMA page_count"), 0);

        replica.apply(&[first[0].set(), second[0].set()]).unwrap();
        assert_identical(&primary.conn, &replica, "after seeding");
    }

    #[test]
    fn open_checks_that_sqlite_dbpage_is_compiled_in() {
        let conn = Connection::open_in_memory().unwrap();
        assert!(dbpage_compiled_in(&conn).unwrap());
        let message = RedoError::NoDbpage.to_string();
        assert!(message.contains("LIBSQLITE3_FLAGS=-DSQLITE_ENABLE_DBPAGE_VTAB"));
    }

    #[test]
    fn open_refuses_a_defensive_connection() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("replica.db")).unwrap();
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)
            .unwrap();
        let err = Applier::with_connection(conn).err().unwrap();
        assert!(matches!(err, RedoError::Defensive), "{err}");
    }

    /// Apply rate for small transactions. Run with
    /// `cargo test --release -- --ignored --nocapture apply_rate`.
    #[test]
    #[ignore]
    fn apply_rate() {
        const TXNS: usize = 5000;
        let dir = tempfile::tempdir().unwrap();
        let mut primary = Primary::create(&dir.path().join("primary.db"), 4096, 0);
        let setup = primary.run(&format!(
            "CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER, pad BLOB);\
             CREATE INDEX accounts_balance ON accounts(balance);\
             INSERT INTO accounts(balance, pad) SELECT 1000, randomblob(100) FROM {}",
            series(20000)
        ));
        let mut rng = Lcg(3);
        let txns: Vec<Txn> = (0..TXNS)
            .flat_map(|_| {
                let (from, to, amount) = (rng.below(20000) + 1, rng.below(20000) + 1, rng.below(9));
                primary.run(&format!(
                    "BEGIN;\
                     UPDATE accounts SET balance = balance - {amount} WHERE id = {from};\
                     UPDATE accounts SET balance = balance + {amount} WHERE id = {to};\
                     COMMIT"
                ))
            })
            .collect();
        let pages: usize = txns.iter().map(|txn| txn.pages.len()).sum();
        for batch_size in [1, 16] {
            let path = dir.path().join(format!("replica-{batch_size}.db"));
            let mut replica = Applier::open(&path).unwrap();
            replica.apply(&sets(&setup)).unwrap();
            let started = Instant::now();
            for batch in txns.chunks(batch_size) {
                replica.apply(&sets(batch)).unwrap();
            }
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "batches of {batch_size}: {TXNS} txns ({:.1} pages each) in {seconds:.2} s = {:.0} txn/s",
                pages as f64 / TXNS as f64,
                TXNS as f64 / seconds
            );
            assert_identical(&primary.conn, &replica, "after the run");
        }
    }
}
