//! Session-scoped objects: a session's TEMP tables, views and triggers.
//!
//! A session's statements run on whichever connection is free (a pooled
//! reader, the shared writer), so SQLite's own TEMP schema, which belongs
//! to one connection, cannot hold them: the next statement may run
//! elsewhere, and another session may run on that connection next. Instead
//! each session that creates a TEMP object gets a [`TempSpace`]: a private
//! in-memory SQLite database (shared-cache, named with a random UUID),
//! attached as schema `pg_temp` to every connection the session uses, for
//! as long as it uses it ([`Conn::bind`](super::Conn::bind)).
//!
//! # Rules, and why
//! 1. **Bound at every borrow.** Whoever borrows a connection for a session
//!    binds it to that session's space, or to none: a connection last
//!    used by session A shows nothing of A to session B. Binding is a no-op
//!    when the connection is already bound that way (the common case:
//!    sessions without TEMP objects, connections without `pg_temp`).
//! 2. **Never in a transaction.** SQLite attaches and detaches only
//!    outside a transaction, so a connection is bound when it is borrowed,
//!    before its BEGIN; a pooled reader is unbound when it returns to the
//!    pool.
//! 3. **Never in the file, never replicated.** The space is memory of this
//!    process: its pages are not in the database's WAL, so capture never
//!    sees them and no secondary ever does. A write transaction that
//!    touches only TEMP objects commits no frame and appends no record.
//! 4. **Gone with the session.** The space lives while its session holds
//!    it (a keep-alive connection) or a connection is still bound to it; it
//!    is unreachable by anyone else meanwhile (its name is random and
//!    clients cannot ATTACH), and freed by SQLite when the last goes.
//! 5. **Private names.** `CREATE TEMP TABLE t` becomes `CREATE TABLE
//!    pg_temp.t` (the session does it, `frontend::session`); SQLite's own
//!    TEMP schema stays the catalog's (`catalog`): a client cannot create
//!    anything there.
//!
//! # Known limits
//! * Name lookup goes TEMP (the catalog), main, then `pg_temp`: a TEMP
//!   table named like a table of the database is hidden by it (PostgreSQL
//!   finds the TEMP one first); qualify it as `pg_temp.t`.
//! * A TEMP view or trigger lives in `pg_temp` and sees only the
//!   session's TEMP tables (SQLite binds a view's names to its own schema).
//! * A statement writing a TEMP table while a portal of the same session
//!   still reads it fails with SQLITE_LOCKED (shared-cache table locks).
//! * The emulated catalog lists the session's TEMP tables and views in
//!   schema `pg_temp` (`pg_class`, `pg_attribute`, `pg_tables`; read
//!   through `availdb_temp_relations()`) with their indexes, keys,
//!   foreign keys and defaults; `information_schema` does not list them.
//! * `CREATE INDEX i ON tt` goes to `pg_temp` when `tt` is one of the
//!   session's TEMP tables ([`TempSpace::has_table`]; the session places
//!   it), also when the database has a table `tt`, as in PostgreSQL.

use rusqlite::{Connection, OpenFlags};

use super::error::Result;

/// The schema name a session's TEMP objects live in on every connection it
/// uses (PostgreSQL's name for the session's temporary schema).
pub const SCHEMA: &str = "pg_temp";

/// How every space's URI begins; the authorizer lets availdb attach these.
pub(crate) const URI_PREFIX: &str = "file:availdb-temp-";

/// One session's private schema for TEMP objects (see the module page).
pub struct TempSpace {
    uri: String,
    /// Keeps the in-memory database alive while the session lives, and
    /// answers [`TempSpace::has_table`].
    keep: std::sync::Mutex<Connection>,
}

impl TempSpace {
    /// A new, empty space.
    pub fn new() -> Result<TempSpace> {
        let uri = format!(
            "{URI_PREFIX}{}?mode=memory&cache=shared",
            uuid::Uuid::new_v4().simple()
        );
        let keep = Connection::open_with_flags(
            &uri,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        Ok(TempSpace {
            uri,
            keep: std::sync::Mutex::new(keep),
        })
    }

    /// Whether the space holds a table named `name` (SQLite's rule:
    /// without regard to ASCII case). False when the space cannot be read
    /// just now (a session's own write transaction holds it).
    pub fn has_table(&self, name: &str) -> bool {
        let keep = self.keep.lock().unwrap_or_else(|e| e.into_inner());
        keep.query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
            [name],
            |r| r.get::<_, i64>(0),
        )
        .is_ok_and(|n| n > 0)
    }

    /// The URI a connection attaches.
    pub(crate) fn uri(&self) -> &str {
        &self.uri
    }
}

impl std::fmt::Debug for TempSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TempSpace").finish_non_exhaustive()
    }
}
