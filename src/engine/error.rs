//! Engine errors, each with the SQLSTATE a PostgreSQL client expects and a
//! message that says what to do next.

use rusqlite::ffi;
use rusqlite::ErrorCode;

use super::fence::Refusal;

/// Engine result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the engine can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite refused or failed a statement.
    #[error("{message}")]
    Sql {
        /// SQLSTATE derived from SQLite's extended result code and message.
        sqlstate: &'static str,
        /// SQLite's own message, or ours when we know better.
        message: String,
        /// What the user can do about it, when we know.
        hint: Option<String>,
    },
    /// No database of that name on this node.
    #[error("database \"{0}\" does not exist")]
    NoSuchDatabase(String),
    /// CREATE DATABASE of an existing name.
    #[error("database \"{0}\" already exists")]
    DatabaseExists(String),
    /// A database name we cannot turn into a file name.
    #[error("invalid database name \"{0}\": use 1-63 letters, digits or underscores, starting with a letter or underscore")]
    InvalidDatabaseName(String),
    /// DROP DATABASE while sessions are connected to it.
    #[error("database \"{0}\" is being accessed by other users")]
    DatabaseInUse(String),
    /// The single writer of a database stayed busy longer than `lock_timeout`.
    #[error("could not obtain the write lock of database \"{database}\" within {waited_ms} ms: another session holds an open write transaction")]
    LockTimeout {
        /// Database whose writer was busy.
        database: String,
        /// How long we waited.
        waited_ms: u64,
    },
    /// The statement was cancelled (cancel request or statement_timeout).
    #[error("canceling statement due to user request")]
    Canceled,
    /// The database's write fence refuses writes here: it is a secondary,
    /// or this node holds the primary role with writes closed (RESOLVING).
    #[error("database \"{database}\" {}", refusal_text(refusal))]
    NotWritable {
        /// The database.
        database: String,
        /// Why.
        refusal: Refusal,
    },
    /// SQLite's commit hook found the write fence closed at the instant of
    /// COMMIT (the lease ran out, the role moved on): the transaction was
    /// rolled back, nothing of it is in the database.
    #[error("the transaction was rolled back: this database stopped taking writes here before it could commit (its lease as primary ran out, another replica is primary now, or it became READ_ONLY or a geo-secondary)")]
    CommitFenced,
    /// A buffer of availdb's would pass its memory budget
    /// ([`super::memory`]): the statement fails, nothing else.
    #[error("out of memory: {what} needs {wanted} more bytes, and this {scope}'s buffers already hold {used} of the {limit}-byte {scope} limit")]
    OutOfMemory {
        /// What wanted the memory.
        what: String,
        /// Bytes asked for.
        wanted: u64,
        /// Bytes held when it was refused.
        used: u64,
        /// The limit that refused it.
        limit: u64,
        /// `session` or `node`.
        scope: &'static str,
        /// The setting that raises the limit.
        setting: &'static str,
    },
    /// A page of the database failed its checksum ([`super::checksum`]):
    /// the page is damaged on this node. Retryable while it is repaired
    /// from a replica; `irreparable` when no replica had a good copy.
    #[error("{}", corrupt_page_text(database, *pgno, *irreparable))]
    CorruptPage {
        /// The database (empty until the session names it).
        database: String,
        /// The damaged page, when the VFS reported it.
        pgno: Option<u32>,
        /// Every replica was asked and none had a good copy.
        irreparable: bool,
    },
    /// A file-system problem with the data directory.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl Error {
    /// The SQLSTATE for this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Error::Sql { sqlstate, .. } => sqlstate,
            Error::NoSuchDatabase(_) => "3D000",
            Error::DatabaseExists(_) => "42P04",
            Error::InvalidDatabaseName(_) => "42602",
            Error::DatabaseInUse(_) => "55006",
            Error::LockTimeout { .. } => "55P03",
            Error::Canceled => "57014",
            Error::OutOfMemory { .. } => "53200",
            Error::Io { .. } => "58030",
            Error::CorruptPage { .. } => "XX001",
            Error::NotWritable { .. } | Error::CommitFenced => "25006",
        }
    }

    /// A hint telling the user what to do next, when there is one.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Sql { hint, .. } => hint.clone(),
            Error::NoSuchDatabase(_) => {
                Some("create it with CREATE DATABASE, or connect to dbname=availdb".into())
            }
            Error::DatabaseInUse(_) => Some(
                "disconnect the other sessions first, and connect to another database to drop it"
                    .into(),
            ),
            Error::OutOfMemory { setting, .. } => Some(format!(
                "read the result in smaller parts (a cursor or a fetch size, LIMIT, COPY in pieces), or raise {setting}"
            )),
            Error::LockTimeout { .. } => Some(
                "retry the transaction, or raise lock_timeout (SET lock_timeout = '60s')".into(),
            ),
            Error::NotWritable {
                refusal: Refusal::Secondary { primary, .. },
                ..
            } => Some(format!(
                "write on the primary replica \"{primary}\", or connect with target_session_attrs=read-write"
            )),
            Error::NotWritable {
                refusal: Refusal::ReadOnly,
                database,
            } => Some(format!(
                "ALTER DATABASE {database} SET READ_WRITE on the primary makes it writable again"
            )),
            Error::NotWritable {
                refusal: Refusal::GeoSecondary { server, .. },
                database,
            } => Some(format!(
                "write in region '{server}', or make this region's copy the primary with ALTER DATABASE {database} FAILOVER"
            )),
            Error::NotWritable { .. } | Error::CommitFenced => {
                Some("reconnect, with target_session_attrs=read-write to find the primary".into())
            }
            Error::CorruptPage { irreparable: false, .. } => Some(
                "retry the statement: the page is being repaired from a replica (sys.dm_hadr_auto_page_repair shows it)".into(),
            ),
            Error::CorruptPage { irreparable: true, .. } => Some(
                "restore the database from a backup; the statements that do not need this page still run".into(),
            ),
            _ => None,
        }
    }

    /// Builds an error with a SQLSTATE and message of our own.
    pub fn sql(sqlstate: &'static str, message: impl Into<String>) -> Error {
        Error::Sql {
            sqlstate,
            message: message.into(),
            hint: None,
        }
    }

    /// Adds a hint to an [`Error::Sql`]; other variants keep their own.
    pub fn with_hint(self, new_hint: impl Into<String>) -> Error {
        match self {
            Error::Sql {
                sqlstate, message, ..
            } => Error::Sql {
                sqlstate,
                message,
                hint: Some(new_hint.into()),
            },
            other => other,
        }
    }

    /// True when SQLite itself rolled back the surrounding transaction, so a
    /// session must forget it (see <https://sqlite.org/lang_transaction.html>,
    /// "Response To Errors Within A Transaction").
    pub fn ends_transaction(&self) -> bool {
        matches!(self, Error::CommitFenced | Error::CorruptPage { .. })
            || matches!(self, Error::Sql { sqlstate, .. } if matches!(*sqlstate, "53100" | "53200" | "58030" | "XX001" | "57014"))
    }
}

/// What [`Error::CorruptPage`] says.
fn corrupt_page_text(database: &str, pgno: Option<u32>, irreparable: bool) -> String {
    let page = pgno.map_or_else(|| "a page".to_string(), |p| format!("page {p}"));
    let of = if database.is_empty() {
        String::new()
    } else {
        format!(" of database \"{database}\"")
    };
    if irreparable {
        format!("{page}{of} failed its checksum and no replica has a good copy: it is irreparable")
    } else {
        format!("{page}{of} failed its checksum on this replica and is being repaired from a partner replica")
    }
}

/// What a [`Refusal`] means, completing "database \"x\" …".
pub(crate) fn refusal_text(refusal: &Refusal) -> String {
    match refusal {
        Refusal::Secondary { group, .. } => format!(
            "is read-only on this replica: it is a secondary of availability group \"{group}\""
        ),
        Refusal::Resolving(why) => format!("is RESOLVING on this replica: {}", why.describe()),
        Refusal::ReadOnly => "is READ_ONLY: it takes no writes on any replica".to_string(),
        Refusal::GeoSecondary { server, database } => format!(
            "is a geo-secondary of database \"{database}\" on server '{server}': it is read-only in this region"
        ),
    }
}

impl From<rusqlite::Error> for Error {
    fn from(err: rusqlite::Error) -> Error {
        match err {
            rusqlite::Error::SqliteFailure(code, _)
                if code.extended_code == ffi::SQLITE_CONSTRAINT_COMMITHOOK =>
            {
                Error::CommitFenced
            }
            rusqlite::Error::SqliteFailure(code, _)
                if code.extended_code == ffi::SQLITE_IOERR_DATA =>
            {
                Error::CorruptPage {
                    database: String::new(),
                    pgno: None,
                    irreparable: false,
                }
            }
            rusqlite::Error::SqliteFailure(code, message) => {
                let message = message.unwrap_or_else(|| code.to_string());
                from_sqlite(code, message)
            }
            rusqlite::Error::InvalidParameterCount(given, wanted) => Error::sql(
                "08P01",
                format!(
                    "bind message supplies {given} parameters, but the statement requires {wanted}"
                ),
            ),
            rusqlite::Error::MultipleStatement => Error::sql(
                "42601",
                "cannot insert multiple commands into a prepared statement",
            ),
            rusqlite::Error::SqlInputError {
                error, msg, offset, ..
            } => {
                let mut e = from_sqlite(error, msg);
                if let Error::Sql { hint, .. } = &mut e {
                    *hint = Some(format!("at character {}", offset + 1));
                }
                e
            }
            other => Error::sql("XX000", other.to_string()),
        }
    }
}

/// Maps a SQLite failure to a SQLSTATE. Constraint kinds come from extended
/// result codes; the generic SQLITE_ERROR is refined by its message, which is
/// stable across SQLite releases for these cases.
fn from_sqlite(code: ffi::Error, message: String) -> Error {
    let sqlstate = match code.extended_code {
        ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => "23505",
        ffi::SQLITE_CONSTRAINT_NOTNULL => "23502",
        ffi::SQLITE_CONSTRAINT_CHECK => "23514",
        ffi::SQLITE_CONSTRAINT_FOREIGNKEY => "23503",
        ffi::SQLITE_CONSTRAINT_TRIGGER => "P0001",
        _ => match code.code {
            ErrorCode::ConstraintViolation => "23000",
            ErrorCode::ReadOnly => "25006",
            ErrorCode::OperationInterrupted => "57014",
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => "55P03",
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => "XX001",
            ErrorCode::DiskFull => "53100",
            ErrorCode::OutOfMemory => "53200",
            ErrorCode::CannotOpen | ErrorCode::SystemIoFailure => "58030",
            ErrorCode::TooBig => "54000",
            ErrorCode::TypeMismatch => "42804",
            ErrorCode::AuthorizationForStatementDenied => "42501",
            ErrorCode::ParameterOutOfRange => "22023",
            _ => sqlstate_from_message(&message),
        },
    };
    let hint = match sqlstate {
        "42501" => Some(
            "availdb manages ATTACH, DETACH and storage PRAGMAs (journal_mode, synchronous, wal_*, locking_mode, writable_schema) itself".to_string(),
        ),
        "XX001" => Some("the database file is damaged: restore it from a replica or a backup".to_string()),
        _ => None,
    };
    let message = if sqlstate == "42501" {
        "statement not allowed on availdb databases".to_string()
    } else {
        message
    };
    Error::Sql {
        sqlstate,
        message,
        hint,
    }
}

fn sqlstate_from_message(message: &str) -> &'static str {
    const BY_PREFIX: &[(&str, &str)] = &[
        ("no such table", "42P01"),
        ("no such column", "42703"),
        ("no such function", "42883"),
        ("no such index", "42704"),
        ("no such savepoint", "3B001"),
        ("no such collation", "42704"),
        ("syntax error", "42601"),
        ("incomplete input", "42601"),
        ("unrecognized token", "42601"),
        ("near \"", "42601"),
        ("attempt to write a readonly database", "25006"),
        ("ambiguous column name", "42702"),
        ("wrong number of arguments", "42883"),
        ("misuse of aggregate", "42803"),
        ("too many SQL variables", "54023"),
        ("integer overflow", "22003"),
        // The sequence functions (`sequence.rs`), in PostgreSQL's words.
        ("nextval: reached", "2200H"),
        ("currval of sequence", "55000"),
        ("lastval is not yet defined", "55000"),
        ("setval: value", "22003"),
        ("relation \"", "42P01"),
    ];
    for (prefix, state) in BY_PREFIX {
        if message.starts_with(prefix) {
            return state;
        }
    }
    if message.contains("already exists") {
        return if message.starts_with("index") {
            "42P07"
        } else if message.starts_with("trigger") || message.starts_with("view") {
            "42710"
        } else {
            "42P07"
        };
    }
    if message.contains("has no column named") {
        return "42703";
    }
    "42000"
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn fail(conn: &Connection, sql: &str) -> Error {
        Error::from(conn.execute_batch(sql).expect_err(sql))
    }

    #[test]
    fn sqlite_failures_map_to_postgres_sqlstates() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "PRAGMA foreign_keys=ON;
             CREATE TABLE p(id INTEGER PRIMARY KEY);
             CREATE TABLE t(id INTEGER PRIMARY KEY, u TEXT UNIQUE, n TEXT NOT NULL,
                            c INTEGER CHECK (c > 0), p INTEGER REFERENCES p(id));
             INSERT INTO t VALUES (1, 'a', 'x', 1, NULL);",
        )
        .unwrap();
        let cases = [
            ("INSERT INTO t VALUES (1, 'b', 'x', 1, NULL)", "23505"),
            ("INSERT INTO t VALUES (2, 'a', 'x', 1, NULL)", "23505"),
            ("INSERT INTO t VALUES (2, 'b', NULL, 1, NULL)", "23502"),
            ("INSERT INTO t VALUES (2, 'b', 'x', 0, NULL)", "23514"),
            ("INSERT INTO t VALUES (2, 'b', 'x', 1, 99)", "23503"),
            ("SELECT * FROM nope", "42P01"),
            ("SELEC 1", "42601"),
            ("SELECT nope FROM t", "42703"),
            ("SELECT nope(1)", "42883"),
            ("CREATE TABLE t(x)", "42P07"),
        ];
        for (sql, want) in cases {
            assert_eq!(fail(&conn, sql).sqlstate(), want, "{sql}");
        }
    }
}
