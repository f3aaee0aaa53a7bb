//! Preparing, describing and running one SQLite statement on one connection.
//! Blocking: callers run these on a blocking thread, or on an async
//! worker only within a budget ([`run_briefly`]).

use std::cell::RefCell;
use std::collections::HashMap;

use rusqlite::types::Value;
use rusqlite::{CachedStatement, Connection, Statement};

use super::error::{Error, Result};
use super::memory::{Charge, SessionMemory};
use crate::sql::types::ValueType;
use crate::sql::typing::{self, Schema};

/// A result column as announced to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Column name (SQLite's: the alias, or the expression text).
    pub name: String,
    /// The type we announce for it.
    pub ty: ValueType,
}

/// What a prepared statement looks like before it runs.
#[derive(Debug, Clone)]
pub struct Described {
    /// Result columns (empty for statements returning no rows).
    pub columns: Vec<Column>,
    /// Types of `$1..$n`, None where nothing tells (announced as text).
    pub params: Vec<Option<ValueType>>,
    /// SQLite's verdict: the statement does not write the database.
    pub readonly: bool,
}

/// The result of running a statement to completion.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Result columns.
    pub columns: Vec<Column>,
    /// All result rows.
    pub rows: Vec<Vec<Value>>,
    /// Rows changed by an INSERT, UPDATE or DELETE.
    pub changes: u64,
}

/// Prepares `sql` and reports its columns, parameters and whether it writes.
pub fn describe(conn: &Connection, sql: &str) -> Result<Described> {
    // SQLite notices another connection's schema change only when a
    // statement runs (it then reloads the schema), and re-prepares a
    // cached statement only when it runs: until then a Describe would
    // report the declared types of before (an ALTER COLUMN … TYPE, made
    // by editing the table's definition, would go unseen). So a small
    // statement runs first, and the cache key carries the schema version.
    conn.prepare_cached("SELECT 1 FROM main.sqlite_schema LIMIT 1")?
        .exists([])?;
    let version: i64 = conn.query_row("PRAGMA main.schema_version", [], |r| r.get(0))?;
    let stmt = conn.prepare_cached(&format!("/* schema {version} */ {sql}"))?;
    let params = inferred_parameters(conn, sql, param_count(&stmt));
    Ok(Described {
        columns: columns(&stmt, sql, conn),
        params,
        readonly: stmt.readonly() && !super::sequence::writes_sequences(sql),
    })
}

/// True when `sql` does not write (SQLite's `sqlite3_stmt_readonly`, and
/// no call of a function that writes a sequence, which SQLite cannot see).
pub fn is_readonly(conn: &Connection, sql: &str) -> Result<bool> {
    Ok(conn.prepare_cached(sql)?.readonly() && !super::sequence::writes_sequences(sql))
}

/// Runs a statement that returns no rows and takes no parameters, such as
/// `BEGIN IMMEDIATE` or `COMMIT`, from the connection's statement cache:
/// one a session runs for every transaction is parsed once, not each time.
pub fn run_control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Runs `sql` with `params` (`params[i]` is `$i+1`), collecting all rows.
/// Column types are inferred only when `with_types` (the extended protocol
/// already announced them at Describe).
pub fn run(conn: &Connection, sql: &str, params: &[Value], with_types: bool) -> Result<Outcome> {
    run_charged(conn, sql, params, with_types, None).map(|(outcome, _)| outcome)
}

/// [`run`], charging the rows it holds to `memory` as they are read: a
/// result past the session's or the node's budget fails with 53200 instead
/// of growing the process. The charge lives as long as the rows should.
pub fn run_charged(
    conn: &Connection,
    sql: &str,
    params: &[Value],
    with_types: bool,
    memory: Option<&std::sync::Arc<SessionMemory>>,
) -> Result<(Outcome, Option<Charge>)> {
    let mut charge: Option<Charge> = None;
    let outcome = collect(conn, sql, params, with_types, |bytes| {
        if let Some(memory) = memory {
            match charge.as_mut() {
                Some(c) => c.grow(bytes as u64, "rows of a statement that writes")?,
                None => {
                    charge = Some(memory.charge(bytes as u64, "rows of a statement that writes")?)
                }
            }
        }
        Ok(true)
    })?
    .expect("rows are never refused here");
    Ok((outcome, charge))
}

/// Runs `sql` with `params`, collecting its rows; `keep` is told each
/// row's bytes ([`super::cursor::row_bytes`]) and stops the statement
/// (None) by answering false.
fn collect(
    conn: &Connection,
    sql: &str,
    params: &[Value],
    with_types: bool,
    mut keep: impl FnMut(usize) -> Result<bool>,
) -> Result<Option<Outcome>> {
    let (mut stmt, columns) = prepare(conn, sql, params, with_types)?;
    let ncols = columns.len();
    let mut rows = Vec::new();
    let mut cursor = stmt.raw_query();
    while let Some(row) = cursor.next()? {
        let mut values = Vec::with_capacity(ncols);
        for i in 0..ncols {
            values.push(row.get::<_, Value>(i)?);
        }
        if !keep(super::cursor::row_bytes(&values))? {
            return Ok(None);
        }
        rows.push(values);
    }
    drop(cursor);
    let changes = if ncols == 0 || !stmt.readonly() {
        conn.changes()
    } else {
        0
    };
    Ok(Some(Outcome {
        columns,
        rows,
        changes,
    }))
}

/// A read statement run whole within a budget ([`run_briefly`]).
#[derive(Debug)]
pub enum Brief {
    /// It ended within the budget: all its rows, charged to the session.
    Done(Outcome, Option<Charge>),
    /// It went past the budget (time, or bytes of rows) and was stopped;
    /// nothing of it is kept. A read can run again elsewhere.
    TooLong,
}

/// SQLite virtual-machine steps between two looks at the clock.
const STEPS_PER_CHECK: std::ffi::c_int = 1000;

/// Runs a read statement whole, as [`run_charged`] does, if it ends
/// within `time` and its rows within `bytes`; otherwise stops it (SQLite's
/// progress handler interrupts a step that runs past `time`) and answers
/// [`Brief::TooLong`]. For a statement the caller expects to be short and
/// runs where a long run would hold other work up (an async worker): a
/// statement that turns out long costs at most the budget, then runs
/// where it may take its time. Only for statements that do not write: a
/// stopped write inside a transaction would roll the transaction back.
pub fn run_briefly(
    conn: &Connection,
    sql: &str,
    params: &[Value],
    with_types: bool,
    memory: &std::sync::Arc<SessionMemory>,
    time: std::time::Duration,
    bytes: usize,
) -> Result<Brief> {
    let deadline = Deadline {
        at: std::time::Instant::now() + time,
        passed: std::cell::Cell::new(false),
    };
    let ran = {
        let _handler = DeadlineHandler::install(conn, &deadline);
        run_within_bytes(conn, sql, params, with_types, memory, bytes)
    };
    match ran {
        Ok(None) => Ok(Brief::TooLong),
        Err(_) if deadline.passed.get() => Ok(Brief::TooLong),
        Ok(Some((outcome, charge))) => Ok(Brief::Done(outcome, charge)),
        Err(e) => Err(e),
    }
}

/// Runs `f`, whose statements on `conn` SQLite stops (SQLITE_INTERRUPT,
/// as a cancel does) once `at` has passed; with no `at`, just `f`. For a
/// statement that runs where no other thread or task can be relied on to
/// interrupt it in time (a `statement_timeout` of a statement run on the
/// session's own async worker): the statement watches its own clock.
pub fn until<R>(conn: &Connection, at: Option<std::time::Instant>, f: impl FnOnce() -> R) -> R {
    let Some(at) = at else {
        return f();
    };
    let deadline = Deadline {
        at,
        passed: std::cell::Cell::new(false),
    };
    let _handler = DeadlineHandler::install(conn, &deadline);
    f()
}

/// When a statement must stop ([`run_briefly`], [`until`]), and whether it
/// was stopped.
struct Deadline {
    at: std::time::Instant,
    passed: std::cell::Cell<bool>,
}

/// SQLite's progress handler on a connection, stopping its statement at a
/// [`Deadline`], for as long as this lives. (rusqlite installs one only
/// through `&mut Connection`, which the callers do not have.)
struct DeadlineHandler<'a> {
    conn: &'a Connection,
}

impl<'a> DeadlineHandler<'a> {
    fn install(conn: &'a Connection, deadline: &'a Deadline) -> DeadlineHandler<'a> {
        // SAFETY: the handle is this open connection's; the pointer is to
        // `deadline`, which outlives the handler: `drop` removes it before
        // the borrow ends, and SQLite calls it only on this thread, from
        // inside a step of this connection.
        unsafe {
            rusqlite::ffi::sqlite3_progress_handler(
                conn.handle(),
                STEPS_PER_CHECK,
                Some(past_deadline),
                deadline as *const Deadline as *mut std::ffi::c_void,
            );
        }
        DeadlineHandler { conn }
    }
}

impl Drop for DeadlineHandler<'_> {
    fn drop(&mut self) {
        // SAFETY: as in `install`; no handler afterwards.
        unsafe {
            rusqlite::ffi::sqlite3_progress_handler(
                self.conn.handle(),
                0,
                None,
                std::ptr::null_mut(),
            );
        }
    }
}

/// The progress handler: non-zero (interrupt the statement) once the
/// deadline passed.
extern "C" fn past_deadline(deadline: *mut std::ffi::c_void) -> std::ffi::c_int {
    // SAFETY: the pointer `DeadlineHandler::install` gave, alive while the
    // handler is installed.
    let deadline = unsafe { &*(deadline as *const Deadline) };
    if std::time::Instant::now() >= deadline.at {
        deadline.passed.set(true);
        1
    } else {
        0
    }
}

/// [`run_charged`] for a read, stopping (None) once its rows pass `bytes`.
fn run_within_bytes(
    conn: &Connection,
    sql: &str,
    params: &[Value],
    with_types: bool,
    memory: &std::sync::Arc<SessionMemory>,
    bytes: usize,
) -> Result<Option<(Outcome, Option<Charge>)>> {
    let mut held = 0usize;
    let Some(outcome) = collect(conn, sql, params, with_types, |row| {
        held += row;
        Ok(held <= bytes)
    })?
    else {
        return Ok(None);
    };
    let charge = match held {
        0 => None,
        n => Some(memory.charge(n as u64, "rows waiting for the client")?),
    };
    Ok(Some((outcome, charge)))
}

/// Prepares `sql` (cached), binds `params` and reports its columns (typed
/// when `with_types`).
pub(super) fn prepare<'c>(
    conn: &'c Connection,
    sql: &str,
    params: &[Value],
    with_types: bool,
) -> Result<(CachedStatement<'c>, Vec<Column>)> {
    let mut stmt = conn.prepare_cached(sql)?;
    bind(&mut stmt, params)?;
    let columns = if with_types {
        columns(&stmt, sql, conn)
    } else {
        stmt.column_names()
            .map(|name| Column {
                name: name.to_string(),
                ty: ValueType::Text,
            })
            .collect()
    };
    Ok((stmt, columns))
}

/// The number of parameters as PostgreSQL counts them: the highest `$N`.
/// SQLite numbers distinct named parameters by first appearance, so `$2`
/// may be SQLite's parameter 1.
fn param_count(stmt: &Statement<'_>) -> usize {
    (1..=stmt.parameter_count())
        .map(|i| pg_index(stmt, i).map_or(i, |n| n))
        .max()
        .unwrap_or(0)
}

/// The PostgreSQL number (1-based) of SQLite parameter `i`, for `$N`/`?N`.
fn pg_index(stmt: &Statement<'_>, i: usize) -> Option<usize> {
    let name = stmt.parameter_name(i)?;
    name.strip_prefix('$')
        .or_else(|| name.strip_prefix('?'))
        .and_then(|n| n.parse().ok())
}

fn bind(stmt: &mut Statement<'_>, params: &[Value]) -> Result<()> {
    let wanted = param_count(stmt);
    if wanted != params.len() {
        return Err(Error::sql(
            "08P01",
            format!(
                "bind message supplies {} parameters, but prepared statement requires {wanted}",
                params.len()
            ),
        ));
    }
    for i in 1..=stmt.parameter_count() {
        let n = match (stmt.parameter_name(i), pg_index(stmt, i)) {
            (_, Some(n)) => n,
            (None, None) => i,
            (Some(name), None) => {
                return Err(Error::sql(
                    "42P02",
                    format!("parameter {name} cannot be bound: use $1, $2, … placeholders"),
                ))
            }
        };
        stmt.raw_bind_parameter(i, &params[n - 1])?;
    }
    Ok(())
}

fn columns(stmt: &Statement<'_>, sql: &str, conn: &Connection) -> Vec<Column> {
    let cols: Vec<_> = stmt.columns().collect();
    if cols.is_empty() {
        return Vec::new();
    }
    let declared: Vec<Option<ValueType>> = cols
        .iter()
        .map(|c| c.decl_type().map(ValueType::from_decltype))
        .collect();
    let types = inferred_types(conn, sql, &declared);
    cols.iter()
        .zip(types)
        .map(|(c, ty)| Column {
            name: c.name().to_string(),
            ty,
        })
        .collect()
}

/// The announced types of `sql`'s columns: [`typing::infer_column_types`]
/// (which parses the statement), remembered ([`remembered`]).
fn inferred_types(conn: &Connection, sql: &str, declared: &[Option<ValueType>]) -> Vec<ValueType> {
    remembered(&COLUMN_TYPES, conn, sql, declared, || {
        typing::infer_column_types(sql, declared, &ConnSchema::new(conn))
    })
}

/// The types of `sql`'s `count` parameters, None where nothing tells:
/// [`typing::infer_parameter_types`], remembered ([`remembered`]).
fn inferred_parameters(conn: &Connection, sql: &str, count: usize) -> Vec<Option<ValueType>> {
    remembered(&PARAMETER_TYPES, conn, sql, &vec![None; count], || {
        typing::infer_parameter_types(sql, count, &ConnSchema::new(conn))
    })
}

/// What `infer` works out for `sql` on `conn`, remembered per database
/// file and statement text for as long as the schema it was worked out
/// under, and as long as `check` (what SQLite reports of the statement:
/// its columns' declared types, its parameter count) is the same.
///
/// # Why it is safe to remember
/// Type inference reads only the statement text, what `check` holds and
/// the schema: the tables of `main` (their version, `PRAGMA
/// main.schema_version`, is part of the check; every DDL statement, and
/// availdb's own table rewrites, change it) and the catalog, the same on
/// every connection. A session's TEMP objects live in a schema of its own,
/// `pg_temp` (`engine::temp`), which another session's connections do not
/// have: a connection with `pg_temp` attached is never served from, nor
/// adds to, what is remembered. Statements longer than
/// [`Remembered::MAX_SQL_BYTES`] (bulk inserts with their values) are not
/// kept.
fn remembered<V: Clone>(
    cache: &Remembered<V>,
    conn: &Connection,
    sql: &str,
    check: &[Option<ValueType>],
    infer: impl FnOnce() -> V,
) -> V {
    let Some((path, version)) = cache_key(conn, sql) else {
        return infer();
    };
    if let Some(value) = cache.lookup(path, sql, version, check) {
        return value;
    }
    let value = infer();
    cache.remember(path, sql, version, check, &value);
    value
}

/// The database file and the schema version a remembered inference of
/// `sql` on `conn` is filed under; None when it must not be remembered
/// (see [`remembered`]).
fn cache_key<'c>(conn: &'c Connection, sql: &str) -> Option<(&'c str, i64)> {
    let path = conn.path().filter(|p| !p.is_empty())?;
    if sql.len() > Remembered::<()>::MAX_SQL_BYTES {
        return None;
    }
    let with_temp_space: i64 = conn
        .prepare_cached("SELECT count(*) FROM pragma_database_list WHERE name = ?1")
        .and_then(|mut s| s.query_row([super::temp::SCHEMA], |r| r.get(0)))
        .ok()?;
    if with_temp_space != 0 {
        return None;
    }
    let version = conn
        .prepare_cached("PRAGMA main.schema_version")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .ok()?;
    Some((path, version))
}

/// Inferred types by database file and statement text ([`remembered`]).
/// Bounded: past [`Remembered::MAX`] statements of one file it starts over.
struct Remembered<V> {
    files: std::sync::Mutex<HashMap<String, HashMap<String, Known<V>>>>,
}

struct Known<V> {
    schema_version: i64,
    check: Vec<Option<ValueType>>,
    value: V,
}

static COLUMN_TYPES: std::sync::LazyLock<Remembered<Vec<ValueType>>> =
    std::sync::LazyLock::new(Remembered::new);
static PARAMETER_TYPES: std::sync::LazyLock<Remembered<Vec<Option<ValueType>>>> =
    std::sync::LazyLock::new(Remembered::new);

impl<V: Clone> Remembered<V> {
    const MAX: usize = 1024;
    const MAX_SQL_BYTES: usize = 2048;

    fn new() -> Self {
        Remembered {
            files: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn lookup(
        &self,
        path: &str,
        sql: &str,
        schema_version: i64,
        check: &[Option<ValueType>],
    ) -> Option<V> {
        let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let known = files.get(path)?.get(sql)?;
        (known.schema_version == schema_version && known.check == check)
            .then(|| known.value.clone())
    }

    fn remember(
        &self,
        path: &str,
        sql: &str,
        schema_version: i64,
        check: &[Option<ValueType>],
        value: &V,
    ) {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let statements = files.entry(path.to_string()).or_default();
        if statements.len() >= Self::MAX {
            statements.clear();
        }
        statements.insert(
            sql.to_string(),
            Known {
                schema_version,
                check: check.to_vec(),
                value: value.clone(),
            },
        );
    }
}

/// Column types looked up with `PRAGMA table_info`, cached per statement.
struct ConnSchema<'c> {
    conn: &'c Connection,
    tables: RefCell<HashMap<String, Vec<(String, ValueType)>>>,
}

impl<'c> ConnSchema<'c> {
    fn new(conn: &'c Connection) -> Self {
        ConnSchema {
            conn,
            tables: RefCell::new(HashMap::new()),
        }
    }

    /// (lower-case name, type) of each column, in table order.
    fn load(&self, table: &str) -> Vec<(String, ValueType)> {
        let mut cols = Vec::new();
        let Ok(mut stmt) = self
            .conn
            .prepare_cached("SELECT name, type FROM pragma_table_info(?1)")
        else {
            return cols;
        };
        let Ok(rows) = stmt.query_map([table], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        }) else {
            return cols;
        };
        for (name, decl) in rows.flatten() {
            cols.push((name.to_ascii_lowercase(), ValueType::from_decltype(&decl)));
        }
        cols
    }
}

impl ConnSchema<'_> {
    fn with_table<T>(&self, table: &str, f: impl FnOnce(&[(String, ValueType)]) -> T) -> T {
        let mut tables = self.tables.borrow_mut();
        let cols = tables
            .entry(table.to_ascii_lowercase())
            .or_insert_with(|| self.load(table));
        f(cols)
    }
}

impl Schema for ConnSchema<'_> {
    fn column_type(&self, table: &str, column: &str) -> Option<ValueType> {
        if let Some(ty) = super::catalog::column_type(table, column) {
            return Some(ty);
        }
        let column = column.to_ascii_lowercase();
        self.with_table(table, |cols| {
            cols.iter()
                .find(|(name, _)| *name == column)
                .map(|(_, ty)| *ty)
        })
    }

    fn table_columns(&self, table: &str) -> Option<Vec<ValueType>> {
        self.with_table(table, |cols| {
            (!cols.is_empty()).then(|| cols.iter().map(|(_, ty)| *ty).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, score REAL, data BLOB)")
            .unwrap();
        c
    }

    fn max_a_type(conn: &Connection) -> ValueType {
        run(conn, "SELECT max(a) FROM t", &[], true)
            .unwrap()
            .columns[0]
            .ty
    }

    fn session_memory() -> std::sync::Arc<SessionMemory> {
        std::sync::Arc::new(super::super::memory::NodeMemory::new(1 << 30, 1 << 30)).session()
    }

    const COUNT_TO_200_000: &str =
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000) SELECT count(*) FROM n";

    const COUNT_TO_A_BILLION: &str = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000000) SELECT count(*) FROM n";

    #[test]
    fn a_brief_run_of_a_long_read_is_stopped_at_its_deadline_and_the_connection_is_left_as_it_was()
    {
        let c = db();
        let memory = session_memory();
        let started = std::time::Instant::now();
        let ran = run_briefly(
            &c,
            COUNT_TO_A_BILLION,
            &[],
            true,
            &memory,
            std::time::Duration::from_millis(20),
            1 << 20,
        )
        .unwrap();
        assert!(matches!(ran, Brief::TooLong), "{ran:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(memory.used(), 0, "nothing of a stopped run is charged");
        // The handler is gone: a statement runs to its end again.
        let n: i64 = c.query_row(COUNT_TO_200_000, [], |r| r.get(0)).unwrap();
        assert_eq!(n, 200_000);
    }

    #[test]
    fn a_statement_run_until_an_instant_is_interrupted_there_and_only_there() {
        let c = db();
        let at = std::time::Instant::now() + std::time::Duration::from_millis(20);
        let err = until(&c, Some(at), || {
            c.query_row(COUNT_TO_A_BILLION, [], |r| r.get::<_, i64>(0))
        })
        .expect_err("an endless count is stopped at the instant");
        assert_eq!(
            err.sqlite_error_code(),
            Some(rusqlite::ErrorCode::OperationInterrupted)
        );
        let n: i64 = until(&c, None, || c.query_row(COUNT_TO_200_000, [], |r| r.get(0))).unwrap();
        assert_eq!(
            n, 200_000,
            "no instant, no stop; and the earlier handler is gone"
        );
    }

    #[test]
    fn a_brief_run_ends_whole_within_its_budget_or_stops_at_its_bytes() {
        let c = db();
        c.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100) \
             INSERT INTO t(id, name) SELECT i, hex(randomblob(50)) FROM n",
        )
        .unwrap();
        let memory = session_memory();
        let long = std::time::Duration::from_secs(60);
        match run_briefly(
            &c,
            "SELECT id, name FROM t",
            &[],
            true,
            &memory,
            long,
            1 << 20,
        )
        .unwrap()
        {
            Brief::Done(outcome, charge) => {
                assert_eq!(outcome.rows.len(), 100);
                assert!(
                    charge.is_some() && memory.used() > 0,
                    "its rows are charged"
                );
            }
            Brief::TooLong => panic!("100 rows fit"),
        }
        let ran = run_briefly(
            &c,
            "SELECT id, name FROM t",
            &[],
            true,
            &memory,
            long,
            2_000,
        )
        .unwrap();
        assert!(
            matches!(ran, Brief::TooLong),
            "100 rows of 100 characters pass 2,000 bytes"
        );
        let err = run_briefly(&c, "SELECT nope FROM t", &[], true, &memory, long, 1 << 20);
        assert!(err.is_err(), "an error is the statement's, not a stop");
    }

    #[test]
    fn remembered_column_types_are_forgotten_when_the_schema_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("types.db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE t(a INTEGER)").unwrap();
        assert_eq!(max_a_type(&c), ValueType::Int4);
        assert_eq!(max_a_type(&c), ValueType::Int4, "remembered");
        // Another connection changes the table: this one sees it at once.
        let other = Connection::open(&path).unwrap();
        other
            .execute_batch("DROP TABLE t; CREATE TABLE t(a TEXT)")
            .unwrap();
        assert_eq!(max_a_type(&c), ValueType::Text);
        assert_eq!(max_a_type(&other), ValueType::Text);
    }

    #[test]
    fn a_connection_with_temp_tables_never_shares_remembered_column_types() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("types.db");
        let plain = Connection::open(&path).unwrap();
        plain.execute_batch("CREATE TABLE t(a INTEGER)").unwrap();
        // Two sessions' TEMP spaces (engine::temp), each with its own u.
        let (text, int) = (
            Connection::open(&path).unwrap(),
            Connection::open(&path).unwrap(),
        );
        let space = super::super::temp::SCHEMA;
        text.execute_batch(&format!(
            "ATTACH DATABASE ':memory:' AS {space}; CREATE TABLE {space}.u(a TEXT)"
        ))
        .unwrap();
        int.execute_batch(&format!(
            "ATTACH DATABASE ':memory:' AS {space}; CREATE TABLE {space}.u(a INTEGER)"
        ))
        .unwrap();
        let max_of = |conn: &Connection, table: &str| {
            let sql = format!("SELECT max(a) FROM {table}");
            run(conn, &sql, &[], true).unwrap().columns[0].ty
        };
        assert_eq!(max_of(&text, "u"), ValueType::Text);
        assert_eq!(max_of(&int, "u"), ValueType::Int4, "its own TEMP u");
        assert_eq!(max_of(&text, "u"), ValueType::Text);
        assert_eq!(max_of(&plain, "t"), ValueType::Int4);
    }

    #[test]
    fn remembered_parameter_types_are_forgotten_when_the_schema_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("types.db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE p(a INTEGER)").unwrap();
        let sql = "SELECT 1 FROM p WHERE a = $1";
        assert_eq!(describe(&c, sql).unwrap().params, [Some(ValueType::Int4)]);
        assert_eq!(describe(&c, sql).unwrap().params, [Some(ValueType::Int4)]);
        c.execute_batch("DROP TABLE p; CREATE TABLE p(a TEXT)")
            .unwrap();
        assert_eq!(describe(&c, sql).unwrap().params, [Some(ValueType::Text)]);
    }

    #[test]
    fn dollar_parameters_bind_by_number_not_by_appearance() {
        let c = db();
        let out = run(
            &c,
            "SELECT $2, $1",
            &[Value::Integer(1), Value::Integer(2)],
            false,
        )
        .unwrap();
        assert_eq!(out.rows, vec![vec![Value::Integer(2), Value::Integer(1)]]);
    }

    #[test]
    fn parameter_count_is_the_highest_dollar_number() {
        let c = db();
        let d = describe(&c, "SELECT * FROM t WHERE id = $2 OR name = $1").unwrap();
        assert_eq!(d.params.len(), 2);
        let err = run(&c, "SELECT $1", &[], false).unwrap_err();
        assert_eq!(err.sqlstate(), "08P01");
    }

    #[test]
    fn describe_reports_declared_column_types_and_readonly() {
        let c = db();
        let d = describe(&c, "SELECT id, name, score, data FROM t").unwrap();
        let types: Vec<_> = d.columns.iter().map(|c| c.ty).collect();
        assert_eq!(
            types,
            [
                // `INTEGER PRIMARY KEY`: int4, as `integer` in PostgreSQL.
                ValueType::Int4,
                ValueType::Text,
                ValueType::Float8,
                ValueType::Bytea
            ]
        );
        assert!(d.readonly);
        assert!(
            !describe(&c, "INSERT INTO t(name) VALUES ('x')")
                .unwrap()
                .readonly
        );
    }

    #[test]
    fn a_describe_after_a_column_type_changed_reports_the_new_type() {
        let c = db();
        let sql = "SELECT name FROM t";
        assert_eq!(describe(&c, sql).unwrap().columns[0].ty, ValueType::Text);
        let version: i64 = c
            .query_row("PRAGMA schema_version", [], |r| r.get(0))
            .unwrap();
        c.execute_batch(&format!(
            "PRAGMA writable_schema = ON;
             UPDATE sqlite_schema SET sql = replace(sql, 'name TEXT', 'name INT4') WHERE name = 't';
             PRAGMA schema_version = {};
             PRAGMA writable_schema = OFF",
            version + 1
        ))
        .unwrap();
        assert_eq!(describe(&c, sql).unwrap().columns[0].ty, ValueType::Int4);
    }

    #[test]
    fn changes_count_rows_of_dml_only() {
        let c = db();
        let out = run(&c, "INSERT INTO t(name) VALUES ('a'), ('b')", &[], false).unwrap();
        assert_eq!(out.changes, 2);
        let out = run(&c, "UPDATE t SET score = 1", &[], false).unwrap();
        assert_eq!(out.changes, 2);
        let out = run(&c, "SELECT * FROM t", &[], false).unwrap();
        assert_eq!((out.rows.len(), out.changes), (2, 0));
    }
}
