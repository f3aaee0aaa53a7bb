//! PostgreSQL sequences: `nextval`, `currval`, `setval`, `lastval`.
//!
//! A sequence is a row of the table [`TABLE`] in the database itself,
//! created by the first `CREATE SEQUENCE` (`sql::pg` translates it): it is
//! written by the writer like any row, so it is in the log, on every
//! secondary, and follows the primary across a failover. A value a
//! committed transaction took is never handed out again, on any replica.
//!
//! `nextval` and `setval` write that row from inside the statement that
//! calls them (a nested statement on the same connection, in the same
//! transaction); statements that call them are routed to the writer
//! ([`writes_sequences`]). `currval` and `lastval` read what this session's
//! own `nextval` returned last, kept in [`SessionSequences`], which the
//! session lends to every connection it borrows (`Conn::bind`).
//!
//! # Differences from PostgreSQL
//! * A sequence is transactional: a `nextval` in a transaction that rolls
//!   back is undone, and the value is handed out again (PostgreSQL never
//!   reuses it). Nothing committed is ever handed out twice.
//! * `CACHE` is accepted and ignored (every `nextval` writes the row).
//! * The catalog (`engine::catalog`: `pg_class` with relkind `S`,
//!   `pg_sequence`, `pg_sequences`, `information_schema.sequences`) reads
//!   them through `availdb_sequence_list()`; every sequence shows as
//!   `bigint`, whatever its `AS` type (only its bounds are kept).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::{Connection, OptionalExtension};

/// The table that holds every sequence of a database (hidden from the
/// emulated catalog).
pub const TABLE: &str = "availdb_sequences";

/// Its definition (`CREATE TABLE IF NOT EXISTS`).
pub const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS availdb_sequences (\
name TEXT PRIMARY KEY, last_value INTEGER NOT NULL, start_value INTEGER NOT NULL, \
increment INTEGER NOT NULL, min_value INTEGER NOT NULL, max_value INTEGER NOT NULL, \
cycle INTEGER NOT NULL, is_called INTEGER NOT NULL)";

/// What a session's `nextval` returned last, per sequence (`currval`) and
/// overall (`lastval`).
#[derive(Debug, Default)]
pub struct SessionSequences {
    values: HashMap<String, i64>,
    last: Option<i64>,
}

/// The session whose statement runs on a connection (set at each borrow).
pub(crate) type Slot = Arc<Mutex<Option<Arc<Mutex<SessionSequences>>>>>;

/// True when `sql` may call `nextval` or `setval`, which write although
/// SQLite sees a read: such a statement must run on the writer.
pub fn writes_sequences(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    lower.contains("nextval") || lower.contains("setval")
}

fn user_error(message: String) -> rusqlite::Error {
    rusqlite::Error::UserFunctionError(message.into())
}

/// A sequence name as `nextval('public.s')` or `nextval('"S"')` gives it.
fn sequence_name(ctx: &Context<'_>) -> rusqlite::Result<String> {
    let raw: String = ctx.get(0)?;
    let last = raw.rsplit('.').next().unwrap_or(&raw);
    Ok(
        match last.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            Some(quoted) => quoted.to_string(),
            None => last.to_ascii_lowercase(),
        },
    )
}

struct Row {
    last_value: i64,
    increment: i64,
    min_value: i64,
    max_value: i64,
    cycle: bool,
    is_called: bool,
}

fn read(conn: &Connection, name: &str) -> rusqlite::Result<Row> {
    let row = if table_exists(conn)? {
        conn.prepare_cached(
            "SELECT last_value, increment, min_value, max_value, cycle, is_called \
             FROM main.availdb_sequences WHERE name = ?1",
        )?
        .query_row([name], |r| {
            Ok(Row {
                last_value: r.get(0)?,
                increment: r.get(1)?,
                min_value: r.get(2)?,
                max_value: r.get(3)?,
                cycle: r.get(4)?,
                is_called: r.get(5)?,
            })
        })
        .optional()?
    } else {
        None
    };
    row.ok_or_else(|| user_error(format!("relation \"{name}\" does not exist")))
}

fn table_exists(conn: &Connection) -> rusqlite::Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND name = ?1",
            [TABLE],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// The rows of [`TABLE`] as a JSON array of objects named by its columns.
fn list(conn: &Connection) -> rusqlite::Result<String> {
    if !table_exists(conn)? {
        return Ok("[]".into());
    }
    conn.prepare_cached(
        "SELECT json_group_array(json_object('name', name, 'last_value', last_value, \
         'start_value', start_value, 'increment', increment, 'min_value', min_value, \
         'max_value', max_value, 'cycle', cycle, 'is_called', is_called)) \
         FROM main.availdb_sequences",
    )?
    .query_row([], |r| r.get(0))
}

fn write(conn: &Connection, name: &str, value: i64, is_called: bool) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE main.availdb_sequences SET last_value = ?2, is_called = ?3 WHERE name = ?1",
    )?
    .execute(rusqlite::params![name, value, is_called])?;
    Ok(())
}

fn next(row: &Row, name: &str) -> rusqlite::Result<i64> {
    if !row.is_called {
        return Ok(row.last_value);
    }
    match row.last_value.checked_add(row.increment) {
        Some(v) if v >= row.min_value && v <= row.max_value => Ok(v),
        _ if row.cycle => Ok(if row.increment > 0 {
            row.min_value
        } else {
            row.max_value
        }),
        _ => Err(user_error(if row.increment > 0 {
            format!(
                "nextval: reached maximum value of sequence \"{name}\" ({})",
                row.max_value
            )
        } else {
            format!(
                "nextval: reached minimum value of sequence \"{name}\" ({})",
                row.min_value
            )
        })),
    }
}

/// Registers the sequence functions on a connection; `slot` is where the
/// session that borrows it puts its [`SessionSequences`].
pub(crate) fn install(conn: &Connection, slot: &Slot) -> rusqlite::Result<()> {
    let volatile = FunctionFlags::SQLITE_UTF8;
    let session = |slot: &Slot| {
        slot.lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default()
    };
    let s = slot.clone();
    conn.create_scalar_function("nextval", 1, volatile, move |ctx| {
        let name = sequence_name(ctx)?;
        // SAFETY: the reference is used on this thread, inside this call.
        let conn = unsafe { ctx.get_connection()? };
        let row = read(&conn, &name)?;
        let value = next(&row, &name)?;
        write(&conn, &name, value, true)?;
        let state = session(&s);
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        state.values.insert(name, value);
        state.last = Some(value);
        Ok(value)
    })?;
    let s = slot.clone();
    conn.create_scalar_function("currval", 1, volatile, move |ctx| {
        let name = sequence_name(ctx)?;
        let state = session(&s);
        let state = state.lock().unwrap_or_else(|e| e.into_inner());
        state.values.get(&name).copied().ok_or_else(|| {
            user_error(format!(
                "currval of sequence \"{name}\" is not yet defined in this session"
            ))
        })
    })?;
    let s = slot.clone();
    conn.create_scalar_function("lastval", 0, volatile, move |_| {
        let state = session(&s);
        let state = state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .last
            .ok_or_else(|| user_error("lastval is not yet defined in this session".into()))
    })?;
    // DROP SEQUENCE without IF EXISTS checks first (`sql::pg`).
    conn.create_scalar_function("availdb_sequence_exists", 1, volatile, |ctx| {
        let name = sequence_name(ctx)?;
        // SAFETY: as in nextval.
        let conn = unsafe { ctx.get_connection()? };
        read(&conn, &name).map(|_| true)
    })?;
    // Every sequence as a JSON array of objects, for the catalog's views
    // (`engine::catalog`): `[]` in a database that has none yet (no table).
    conn.create_scalar_function("availdb_sequence_list", 0, volatile, |ctx| {
        // SAFETY: as in nextval.
        let conn = unsafe { ctx.get_connection()? };
        list(&conn)
    })?;
    for args in [2, 3] {
        conn.create_scalar_function("setval", args, volatile, move |ctx| {
            let name = sequence_name(ctx)?;
            let value: i64 = ctx.get(1)?;
            let is_called = if args == 3 { ctx.get(2)? } else { true };
            // SAFETY: as in nextval.
            let conn = unsafe { ctx.get_connection()? };
            let row = read(&conn, &name)?;
            if value < row.min_value || value > row.max_value {
                return Err(user_error(format!(
                    "setval: value {value} is out of bounds for sequence \"{name}\" ({}..{})",
                    row.min_value, row.max_value
                )));
            }
            write(&conn, &name, value, is_called)?;
            Ok(value)
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nextval_counts_by_its_increment_within_bounds_and_setval_moves_it() {
        let conn = Connection::open_in_memory().unwrap();
        let slot: Slot = Arc::default();
        *slot.lock().unwrap() = Some(Arc::default());
        install(&conn, &slot).unwrap();
        conn.execute_batch(CREATE_TABLE).unwrap();
        conn.execute_batch(
            "INSERT INTO availdb_sequences VALUES ('s', 10, 10, 5, 1, 24, 0, 0);
             INSERT INTO availdb_sequences VALUES ('c', 1, 1, 1, 1, 2, 1, 0);",
        )
        .unwrap();
        let one = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0));
        let err = |sql: &str| one(sql).unwrap_err().to_string();
        assert!(err("SELECT currval('s')").contains("not yet defined"));
        assert_eq!(one("SELECT nextval('s')").unwrap(), 10);
        assert_eq!(one("SELECT nextval('public.S')").unwrap(), 15);
        assert_eq!(one("SELECT currval('s')").unwrap(), 15);
        assert_eq!(one("SELECT nextval('s')").unwrap(), 20);
        assert!(err("SELECT nextval('s')").contains("reached maximum value"));
        assert_eq!(one("SELECT setval('s', 12, false)").unwrap(), 12);
        assert_eq!(one("SELECT nextval('s')").unwrap(), 12);
        assert_eq!(one("SELECT lastval()").unwrap(), 12);
        assert!(err("SELECT setval('s', 99)").contains("out of bounds"));
        let cycled: Vec<i64> = (0..3)
            .map(|_| one("SELECT nextval('c')").unwrap())
            .collect();
        assert_eq!(cycled, [1, 2, 1]);
        assert!(err("SELECT nextval('nope')").contains("\"nope\" does not exist"));
    }
}
