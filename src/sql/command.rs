//! Recognising the statements availdb answers itself before SQLite sees
//! them: transaction control, session settings, database DDL and the
//! start-up chatter of PostgreSQL clients.

/// What a single statement asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `BEGIN`, `START TRANSACTION` (with READ ONLY / READ WRITE), SQLite's
    /// `BEGIN DEFERRED | IMMEDIATE | EXCLUSIVE`.
    Begin {
        /// Some(true) for READ ONLY, Some(false) for READ WRITE.
        read_only: Option<bool>,
        /// Some(true) for ISOLATION LEVEL SERIALIZABLE or REPEATABLE READ,
        /// Some(false) for READ COMMITTED or READ UNCOMMITTED.
        strict: Option<bool>,
    },
    /// `COMMIT`, `END` (also `… WORK`, `… TRANSACTION`).
    Commit,
    /// `ROLLBACK`, `ABORT` — but not `ROLLBACK TO SAVEPOINT`.
    Rollback,
    /// `SAVEPOINT x`, `RELEASE [SAVEPOINT] x`, `ROLLBACK TO [SAVEPOINT] x`:
    /// run by SQLite, only inside a transaction block.
    Savepoint {
        /// The statement, run as is.
        sql: String,
        /// True for `ROLLBACK TO`, which also clears a failed transaction.
        rollback_to: bool,
    },
    /// `SET TRANSACTION …` / `SET SESSION CHARACTERISTICS AS TRANSACTION …`.
    SetTransaction {
        /// Some(true) for READ ONLY, Some(false) for READ WRITE.
        read_only: Option<bool>,
        /// As for `Begin`.
        strict: Option<bool>,
        /// True for the session default (`SESSION CHARACTERISTICS`).
        session: bool,
    },
    /// `SET [SESSION | LOCAL] name {TO | =} value`, `SET TIME ZONE value`.
    Set {
        /// Lower-cased setting name.
        name: String,
        /// The value, unquoted; `DEFAULT` resets.
        value: Option<String>,
    },
    /// `RESET name`, `RESET ALL` (name None).
    Reset {
        /// Lower-cased setting name, None for ALL.
        name: Option<String>,
    },
    /// `SHOW name`, `SHOW ALL`.
    Show {
        /// Lower-cased setting name.
        name: String,
    },
    /// `CREATE DATABASE name [options]`.
    CreateDatabase {
        /// Database name (identifier case folded as PostgreSQL does).
        name: String,
    },
    /// `DROP DATABASE [IF EXISTS] name`.
    DropDatabase {
        /// Database name.
        name: String,
        /// IF EXISTS given.
        if_exists: bool,
    },
    /// `SELECT current_user` and friends, which SQLite cannot parse.
    SessionUser,
    /// `SELECT current_schema()` / `current_schema`.
    CurrentSchema,
    /// `SELECT sys.wait_for_database_copy_sync('db', 'server')`: returns
    /// once the geo-secondary of `db` on `server` has hardened everything
    /// `db` committed here (Azure's `sp_wait_for_database_copy_sync`).
    WaitForCopySync {
        /// The database here.
        database: String,
        /// The geo-secondary's server.
        server: String,
    },
    /// `SELECT sys.fn_hadr_backup_is_preferred_replica('db')`: 1 when this
    /// replica is where backups of `db` should run, else 0.
    BackupPreferred {
        /// The database.
        database: String,
    },
    /// `DISCARD …`, `DEALLOCATE …`, `LISTEN`/`UNLISTEN`: accepted, nothing to do.
    NoOp {
        /// The command tag to answer with.
        tag: String,
    },
    /// Availability group DDL (`CREATE AVAILABILITY GROUP …`, `ALTER
    /// DATABASE … SET HADR …`), parsed by [`crate::sql::ag`].
    Ag(String),
    /// `BACKUP …` / `RESTORE …`, parsed by [`crate::sql::backup`].
    Backup(String),
    /// Role and privilege statements (`CREATE ROLE`, `GRANT`, …), parsed
    /// by [`crate::sql::role`].
    Role(String),
    /// Anything else: a SQLite statement, translated from PostgreSQL's
    /// dialect where needed ([`crate::sql::pg`]).
    Sql(String),
    /// A PostgreSQL statement that takes several SQLite statements (`DROP
    /// TABLE a, b`, `TRUNCATE`), run in one transaction.
    Batch {
        /// The SQLite statements, in order.
        statements: Vec<String>,
        /// The command tag.
        tag: String,
    },
    /// `COPY … FROM STDIN` / `TO STDOUT`.
    Copy(crate::sql::pg::CopySpec),
    /// ALTER TABLE forms SQLite cannot run, made as edits of the table's
    /// definition ([`crate::sql::pg::definition`]).
    AlterDefinition {
        /// The table.
        table: String,
        /// The changes, in order.
        edits: Vec<crate::sql::pg::definition::Edit>,
    },
    /// `DECLARE name [NO SCROLL] CURSOR [WITH[OUT] HOLD] FOR query`.
    Declare {
        /// The cursor's name (case folded as PostgreSQL does).
        name: String,
        /// The query, translated for SQLite.
        query: String,
        /// WITH HOLD: the cursor outlives its transaction.
        hold: bool,
    },
    /// `FETCH [NEXT | FORWARD [n | ALL] | n | ALL] [FROM | IN] name`, and
    /// `MOVE` with the same forms.
    Fetch {
        /// The cursor.
        name: String,
        /// Rows to fetch; None for ALL.
        count: Option<u64>,
        /// MOVE: skip the rows instead of returning them.
        move_only: bool,
    },
    /// `CLOSE name`, `CLOSE ALL` (None).
    CloseCursor {
        /// The cursor, None for all.
        name: Option<String>,
    },
    /// PostgreSQL syntax availdb refuses (0A000).
    Unsupported {
        /// What is not supported.
        message: String,
        /// What to do instead.
        hint: String,
    },
}

/// What a statement needs of its session's role: the one place that sorts
/// statements into privilege classes ([`crate::auth`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A fixed need.
    Fixed(crate::auth::Need),
    /// READ if SQLite finds the prepared statement read-only (the same
    /// test that sends a statement to a reader or to the writer), else
    /// WRITE.
    ReadOrWrite,
}

impl Command {
    /// The privilege this statement needs.
    pub fn access(&self) -> Access {
        use crate::auth::Need;
        Access::Fixed(match self {
            Command::Begin { .. }
            | Command::Commit
            | Command::Rollback
            | Command::Savepoint { .. }
            | Command::SetTransaction { .. }
            | Command::Set { .. }
            | Command::Reset { .. }
            | Command::Show { .. }
            | Command::SessionUser
            | Command::CurrentSchema
            | Command::NoOp { .. }
            | Command::Fetch { .. }
            | Command::CloseCursor { .. }
            | Command::Unsupported { .. } => Need::Nothing,
            Command::WaitForCopySync { .. } | Command::BackupPreferred { .. } => Need::Read,
            Command::Declare { .. } => Need::Read,
            Command::Copy(spec) if spec.from_stdin => Need::Write,
            Command::Copy(_) => Need::Read,
            Command::AlterDefinition { .. } | Command::Batch { .. } => Need::Write,
            Command::CreateDatabase { .. }
            | Command::DropDatabase { .. }
            | Command::Ag(_)
            | Command::Backup(_)
            | Command::Role(_) => Need::Admin,
            Command::Sql(_) => return Access::ReadOrWrite,
        })
    }
}

/// Classifies one statement (already split, without its trailing `;`).
pub fn classify(stmt: &str) -> Command {
    if super::ag::is_ag_statement(stmt) {
        return Command::Ag(stmt.to_string());
    }
    if super::backup::is_backup_statement(stmt) {
        return Command::Backup(stmt.to_string());
    }
    if super::role::is_role_statement(stmt) {
        return Command::Role(stmt.to_string());
    }
    let tokens = tokenize(stmt);
    let words: Vec<String> = tokens.iter().map(|t| t.lower()).collect();
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    match w.as_slice() {
        ["begin" | "start", rest @ ..] if begin_ok(w[0], rest) => Command::Begin {
            read_only: access_mode(rest),
            strict: isolation_strict(rest),
        },
        ["commit" | "end", rest @ ..] if is_tx_noise(rest) => Command::Commit,
        ["rollback" | "abort", rest @ ..] if is_tx_noise(rest) => Command::Rollback,
        ["rollback", rest @ ..] if rest.contains(&"to") => Command::Savepoint {
            sql: stmt.to_string(),
            rollback_to: true,
        },
        ["savepoint", ..] | ["release", ..] => Command::Savepoint {
            sql: stmt.to_string(),
            rollback_to: false,
        },
        ["set", "transaction", rest @ ..] => Command::SetTransaction {
            read_only: access_mode(rest),
            strict: isolation_strict(rest),
            session: false,
        },
        ["set", "session", "characteristics", "as", "transaction", rest @ ..] => {
            Command::SetTransaction {
                read_only: access_mode(rest),
                strict: isolation_strict(rest),
                session: true,
            }
        }
        ["set", ..] => parse_set(&tokens[1..]),
        ["reset", "all"] => Command::Reset { name: None },
        ["reset", name] => Command::Reset {
            name: Some(name.to_string()),
        },
        ["show", name] => Command::Show {
            name: name.to_string(),
        },
        ["show", "time", "zone"] => Command::Show {
            name: "timezone".into(),
        },
        ["show", "transaction", "isolation", "level"] => Command::Show {
            name: "transaction_isolation".into(),
        },
        ["create", "database", ..] if tokens.len() >= 3 => Command::CreateDatabase {
            name: tokens[2].ident(),
        },
        ["drop", "database", "if", "exists", ..] if tokens.len() >= 5 => Command::DropDatabase {
            name: tokens[4].ident(),
            if_exists: true,
        },
        ["drop", "database", _, ..] => Command::DropDatabase {
            name: tokens[2].ident(),
            if_exists: false,
        },
        ["select", "current_user" | "session_user" | "user"]
        | ["select", "current_user" | "session_user", "(", ")"] => Command::SessionUser,
        ["select", "current_schema"] | ["select", "current_schema", "(", ")"] => {
            Command::CurrentSchema
        }
        ["select", "sys.wait_for_database_copy_sync", "(", _, ",", _, ")"]
            if matches!((&tokens[3], &tokens[5]), (Token::Str(_), Token::Str(_))) =>
        {
            Command::WaitForCopySync {
                database: tokens[3].unquoted(),
                server: tokens[5].unquoted(),
            }
        }
        ["select", "sys.fn_hadr_backup_is_preferred_replica", "(", _, ")"]
            if matches!(&tokens[3], Token::Str(_)) =>
        {
            Command::BackupPreferred {
                database: tokens[3].unquoted(),
            }
        }
        ["discard", ..] => Command::NoOp {
            tag: upper_words(&w, 2),
        },
        ["deallocate", ..] => Command::NoOp {
            tag: "DEALLOCATE".into(),
        },
        ["listen" | "unlisten", ..] => Command::NoOp {
            tag: w[0].to_ascii_uppercase(),
        },
        ["declare", _, ..] => declare(stmt, &tokens[1]),
        ["fetch" | "move", .., _] => fetch(
            w[0] == "move",
            &w[1..w.len() - 1],
            &tokens[tokens.len() - 1],
        ),
        ["close", "all"] => Command::CloseCursor { name: None },
        ["close", _] => Command::CloseCursor {
            name: Some(tokens[1].ident()),
        },
        _ => translated(stmt),
    }
}

/// A statement for SQLite, through the PostgreSQL compatibility layer.
fn translated(stmt: &str) -> Command {
    use crate::sql::pg::{translate, Translated};
    match translate(stmt) {
        Translated::Sql(sql) => Command::Sql(strip_pg_catalog(&sql)),
        Translated::Batch { statements, tag } => Command::Batch { statements, tag },
        Translated::Copy(spec) => Command::Copy(spec),
        Translated::AlterDefinition { table, edits } => Command::AlterDefinition { table, edits },
        Translated::Unsupported { message, hint } => Command::Unsupported { message, hint },
    }
}

/// `DECLARE name … CURSOR … FOR query`; its query is translated like any.
fn declare(stmt: &str, name: &Token) -> Command {
    static DECLARE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r#"(?is)^\s*declare\s+(?:"(?:[^"]|"")*"|\S+)\s+(.*?)\bcursor\s+(?:(with|without)\s+hold\s+)?for\s+(.*)$"#,
        )
        .expect("valid regex")
    });
    let Some(c) = DECLARE.captures(stmt) else {
        return Command::Unsupported {
            message: "not supported in availdb: this form of DECLARE".into(),
            hint: "write DECLARE name [NO SCROLL] CURSOR [WITH HOLD | WITHOUT HOLD] FOR query"
                .into(),
        };
    };
    if c[1].to_ascii_lowercase().contains("binary") {
        return Command::Unsupported {
            message: "not supported in availdb: BINARY cursors".into(),
            hint: "declare the cursor without BINARY; drivers ask for binary results per fetch"
                .into(),
        };
    }
    let hold = c
        .get(2)
        .is_some_and(|h| h.as_str().eq_ignore_ascii_case("with"));
    let first = c[3]
        .trim_start_matches(|ch: char| ch.is_whitespace() || ch == '(')
        .split(|ch: char| !ch.is_ascii_alphabetic())
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let query = if matches!(first.as_str(), "select" | "values" | "with" | "table") {
        translated(&c[3])
    } else {
        Command::NoOp { tag: String::new() }
    };
    match query {
        Command::Sql(query) => Command::Declare {
            name: name.ident(),
            query,
            hold,
        },
        Command::Unsupported { message, hint } => Command::Unsupported { message, hint },
        _ => Command::Unsupported {
            message: "not supported in availdb: a cursor over a statement that is not a query"
                .into(),
            hint: "DECLARE a cursor FOR a SELECT (or VALUES)".into(),
        },
    }
}

/// `FETCH`/`MOVE`: `how` is what stands between the verb and the name.
fn fetch(move_only: bool, how: &[&str], name: &Token) -> Command {
    let how = match how {
        [rest @ .., "from" | "in"] => rest,
        rest => rest,
    };
    let count = match how {
        [] | ["next"] | ["forward"] => Some(Some(1)),
        ["all"] | ["forward", "all"] => Some(None),
        [n] | ["forward", n] => n.parse::<u64>().ok().map(Some),
        _ => None,
    };
    match count {
        Some(count) => Command::Fetch {
            name: name.ident(),
            count,
            move_only,
        },
        None => Command::Unsupported {
            message: format!(
                "not supported in availdb: {} {} (availdb cursors move forward only)",
                if move_only { "MOVE" } else { "FETCH" },
                how.join(" ").to_ascii_uppercase()
            ),
            hint: "fetch forward (FETCH n, FETCH ALL), or DECLARE the cursor again".into(),
        },
    }
}

fn upper_words(w: &[&str], n: usize) -> String {
    w.iter()
        .take(n)
        .map(|s| s.to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `BEGIN` may be followed by SQLite's kinds and PostgreSQL's modes;
/// `START` only by `TRANSACTION`.
fn begin_ok(first: &str, rest: &[&str]) -> bool {
    match first {
        "start" => rest.first() == Some(&"transaction"),
        _ => rest.iter().all(|w| {
            matches!(
                *w,
                "work"
                    | "transaction"
                    | "deferred"
                    | "immediate"
                    | "exclusive"
                    | "isolation"
                    | "level"
                    | "serializable"
                    | "repeatable"
                    | "read"
                    | "committed"
                    | "uncommitted"
                    | "only"
                    | "write"
                    | "not"
                    | "deferrable"
                    | ","
            )
        }),
    }
}

fn is_tx_noise(rest: &[&str]) -> bool {
    matches!(
        rest,
        [] | ["work"] | ["transaction"] | ["and", "no", "chain"]
    )
}

/// `ISOLATION LEVEL …`: whether it asks for snapshot-level guarantees.
fn isolation_strict(rest: &[&str]) -> Option<bool> {
    let at = rest.windows(2).position(|p| p == ["isolation", "level"])?;
    match rest.get(at + 2..)? {
        ["serializable", ..] | ["repeatable", "read", ..] => Some(true),
        ["read", "committed", ..] | ["read", "uncommitted", ..] => Some(false),
        _ => None,
    }
}

/// True when an isolation level's name asks for snapshot-level guarantees.
pub fn is_strict_isolation(level: &str) -> bool {
    let level = level.trim().to_ascii_lowercase();
    level == "serializable" || level == "repeatable read"
}

fn access_mode(rest: &[&str]) -> Option<bool> {
    rest.windows(2).find_map(|pair| match pair {
        ["read", "only"] => Some(true),
        ["read", "write"] => Some(false),
        _ => None,
    })
}

fn parse_set(tokens: &[Token]) -> Command {
    let mut rest = tokens;
    if let Some(first) = rest.first() {
        if matches!(first.lower().as_str(), "session" | "local") {
            rest = &rest[1..];
        }
    }
    let lower: Vec<String> = rest.iter().map(Token::lower).collect();
    let (name, value_tokens) = match lower.as_slice() {
        [a, b, ..] if a == "time" && b == "zone" => ("timezone".to_string(), &rest[2..]),
        [_, sep, ..] if sep == "to" || sep == "=" => (lower[0].clone(), &rest[2..]),
        [_, ..] => (lower[0].clone(), &rest[1..]),
        [] => (String::new(), rest),
    };
    let value = value_tokens
        .iter()
        .map(Token::unquoted)
        .collect::<Vec<_>>()
        .join(" ")
        .replace(" , ", ", ");
    let value = if value.eq_ignore_ascii_case("default") || value.is_empty() {
        None
    } else {
        Some(value)
    };
    Command::Set { name, value }
}

/// `SELECT pg_catalog.version()` → `SELECT version()`: function calls with
/// the catalog prefix become our SQLite functions. Only outside quotes.
fn strip_pg_catalog(stmt: &str) -> String {
    if !stmt.to_ascii_lowercase().contains("pg_catalog.") {
        return stmt.to_string();
    }
    let mut out = String::with_capacity(stmt.len());
    let mut quote: Option<char> = None;
    let mut i = 0;
    let bytes = stmt.as_bytes();
    while i < stmt.len() {
        let c = stmt[i..].chars().next().expect("in bounds");
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            // Bytes, not `str` slices: i + 11 may fall inside a character.
            None if bytes.len() >= i + 11
                && bytes[i..i + 11].eq_ignore_ascii_case(b"pg_catalog.") =>
            {
                i += 11;
                continue;
            }
            None => {}
        }
        out.push(c);
        i += c.len_utf8();
    }
    out
}

#[derive(Debug, Clone)]
pub(super) enum Token {
    Word(String),
    Quoted(String),
    Str(String),
    Symbol(char),
}

impl Token {
    pub(super) fn lower(&self) -> String {
        match self {
            Token::Word(w) => w.to_ascii_lowercase(),
            Token::Quoted(q) => q.clone(),
            Token::Str(s) => format!("'{s}'"),
            Token::Symbol(c) => c.to_string(),
        }
    }

    pub(super) fn unquoted(&self) -> String {
        match self {
            Token::Word(w) => w.clone(),
            Token::Quoted(q) | Token::Str(q) => q.clone(),
            Token::Symbol(c) => c.to_string(),
        }
    }

    /// An identifier as PostgreSQL folds it: unquoted → lower case.
    pub(super) fn ident(&self) -> String {
        match self {
            Token::Word(w) => w.to_ascii_lowercase(),
            other => other.unquoted(),
        }
    }
}

pub(super) fn tokenize(sql: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut chars = sql.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '-' && sql_comment_follows(&mut chars.clone()) {
            for c in chars.by_ref() {
                if c == '\n' {
                    break;
                }
            }
        } else if c == '\'' || c == '"' {
            chars.next();
            let mut s = String::new();
            while let Some(ch) = chars.next() {
                if ch == c {
                    if chars.peek() == Some(&c) {
                        chars.next();
                        s.push(c);
                        continue;
                    }
                    break;
                }
                s.push(ch);
            }
            tokens.push(if c == '\'' {
                Token::Str(s)
            } else {
                Token::Quoted(s)
            });
        } else if c.is_alphanumeric() || c == '_' || c == '.' || c == '$' {
            let mut w = String::new();
            while let Some(&ch) = chars.peek() {
                if ch.is_alphanumeric()
                    || ch == '_'
                    || ch == '.'
                    || ch == '$'
                    || (ch == '-' && is_setting_value_char(&w))
                {
                    w.push(ch);
                    chars.next();
                } else {
                    break;
                }
            }
            tokens.push(Token::Word(w));
        } else {
            tokens.push(Token::Symbol(c));
            chars.next();
        }
    }
    tokens
}

/// Words like `ISO-8859-1` or `en-US` stay one token in setting values;
/// only words starting with a letter continue across a `-`.
fn is_setting_value_char(word: &str) -> bool {
    word.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
}

fn sql_comment_follows(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> bool {
    chars.next() == Some('-') && chars.next() == Some('-')
}

#[cfg(test)]
mod tests {
    use super::Command::*;
    use super::*;

    #[test]
    fn each_statement_class_needs_its_privilege() {
        use crate::auth::Need;
        let fixed = |n| Access::Fixed(n);
        for (sql, want) in [
            ("BEGIN", fixed(Need::Nothing)),
            ("SET statement_timeout = 5", fixed(Need::Nothing)),
            ("SHOW transaction_isolation", fixed(Need::Nothing)),
            ("SELECT current_user", fixed(Need::Nothing)),
            ("COMMIT", fixed(Need::Nothing)),
            ("SELECT * FROM t", Access::ReadOrWrite),
            ("INSERT INTO t VALUES (1)", Access::ReadOrWrite),
            ("COPY t FROM STDIN", fixed(Need::Write)),
            ("COPY t TO STDOUT", fixed(Need::Read)),
            ("TRUNCATE t", fixed(Need::Write)),
            ("DECLARE c CURSOR FOR SELECT 1", fixed(Need::Read)),
            ("CREATE DATABASE d", fixed(Need::Admin)),
            ("DROP DATABASE d", fixed(Need::Admin)),
            ("ALTER AVAILABILITY GROUP ag1 FAILOVER", fixed(Need::Admin)),
            ("CREATE CLUSTER", fixed(Need::Admin)),
            ("BACKUP DATABASE d TO DISK = 'f'", fixed(Need::Admin)),
            ("RESTORE DATABASE d FROM DISK = 'f'", fixed(Need::Admin)),
            ("CREATE USER u PASSWORD 'p'", fixed(Need::Admin)),
            ("GRANT READ ON DATABASE d TO u", fixed(Need::Admin)),
            ("REVOKE ADMIN FROM u", fixed(Need::Admin)),
        ] {
            assert_eq!(classify(sql).access(), want, "{sql}");
        }
    }

    /// Found by `src/fuzz.rs`: the `pg_catalog.` prefix test sliced the
    /// statement 11 bytes ahead, which panicked when that fell inside a
    /// multi-byte character.
    #[test]
    fn pg_catalog_prefixes_are_stripped_beside_multibyte_characters() {
        assert_eq!(
            strip_pg_catalog("SELECT pg_catalog.now() AS zeit, 'Grüße'"),
            "SELECT now() AS zeit, 'Grüße'"
        );
        assert_eq!(
            strip_pg_catalog("SELECT 'pg_catalog.x' ||ü"),
            "SELECT 'pg_catalog.x' ||ü"
        );
    }

    fn begin(read_only: Option<bool>, strict: Option<bool>) -> Command {
        Begin { read_only, strict }
    }

    #[test]
    fn cursor_statements_are_recognised_as_psycopg_and_psql_write_them() {
        let fetch = |name: &str, count, move_only| Fetch {
            name: name.into(),
            count,
            move_only,
        };
        let cases = [
            (
                "DECLARE \"My Cur\" NO SCROLL CURSOR WITH HOLD FOR SELECT 1::int",
                Declare {
                    name: "My Cur".into(),
                    query: "SELECT CAST(1 AS INT4)".into(),
                    hold: true,
                },
            ),
            (
                "declare c cursor without hold for select * from t where a = $1",
                Declare {
                    name: "c".into(),
                    query: "select * from t where a = $1".into(),
                    hold: false,
                },
            ),
            (
                "FETCH FORWARD 100 FROM \"My Cur\"",
                fetch("My Cur", Some(100), false),
            ),
            ("fetch all in c", fetch("c", None, false)),
            ("FETCH FORWARD ALL FROM c", fetch("c", None, false)),
            ("FETCH c", fetch("c", Some(1), false)),
            ("FETCH NEXT FROM C", fetch("c", Some(1), false)),
            ("MOVE 5 IN c", fetch("c", Some(5), true)),
            (
                "CLOSE c",
                CloseCursor {
                    name: Some("c".into()),
                },
            ),
            ("CLOSE ALL", CloseCursor { name: None }),
        ];
        for (sql, want) in cases {
            assert_eq!(classify(sql), want, "{sql}");
        }
        for sql in [
            "FETCH PRIOR FROM c",
            "FETCH BACKWARD 2 FROM c",
            "DECLARE c BINARY CURSOR FOR SELECT 1",
            "DECLARE c CURSOR FOR INSERT INTO t VALUES (1)",
        ] {
            assert!(matches!(classify(sql), Unsupported { .. }), "{sql}");
        }
    }

    #[test]
    fn transaction_control_is_recognised_in_postgres_and_sqlite_spellings() {
        let savepoint = |sql: &str, rollback_to| Savepoint {
            sql: sql.into(),
            rollback_to,
        };
        let cases = [
            ("BEGIN", begin(None, None)),
            ("begin transaction", begin(None, None)),
            ("BEGIN IMMEDIATE", begin(None, None)),
            (
                "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY",
                begin(Some(true), Some(true)),
            ),
            ("START TRANSACTION READ WRITE", begin(Some(false), None)),
            (
                "START TRANSACTION ISOLATION LEVEL REPEATABLE READ",
                begin(None, Some(true)),
            ),
            (
                "BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE",
                begin(Some(false), Some(false)),
            ),
            ("COMMIT", Commit),
            ("end", Commit),
            ("COMMIT WORK", Commit),
            ("ROLLBACK", Rollback),
            ("abort", Rollback),
            (
                "ROLLBACK TO SAVEPOINT a",
                savepoint("ROLLBACK TO SAVEPOINT a", true),
            ),
            (
                "rollback transaction to a",
                savepoint("rollback transaction to a", true),
            ),
            ("SAVEPOINT a", savepoint("SAVEPOINT a", false)),
            ("RELEASE a", savepoint("RELEASE a", false)),
            (
                "SET TRANSACTION READ ONLY",
                SetTransaction {
                    read_only: Some(true),
                    strict: None,
                    session: false,
                },
            ),
            (
                "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
                SetTransaction {
                    read_only: None,
                    strict: Some(true),
                    session: false,
                },
            ),
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
                SetTransaction {
                    read_only: Some(false),
                    strict: None,
                    session: true,
                },
            ),
        ];
        for (sql, want) in cases {
            assert_eq!(classify(sql), want, "{sql}");
        }
    }

    #[test]
    fn settings_parse_with_to_equals_and_quotes() {
        let set = |n: &str, v: Option<&str>| Set {
            name: n.into(),
            value: v.map(Into::into),
        };
        let cases = [
            (
                "SET extra_float_digits = 3",
                set("extra_float_digits", Some("3")),
            ),
            (
                "SET application_name TO 'my app'",
                set("application_name", Some("my app")),
            ),
            ("set SESSION DateStyle = ISO", set("datestyle", Some("ISO"))),
            ("SET TIME ZONE 'UTC'", set("timezone", Some("UTC"))),
            (
                "SET search_path = public, other",
                set("search_path", Some("public, other")),
            ),
            (
                "SET statement_timeout TO DEFAULT",
                set("statement_timeout", None),
            ),
            (
                "SET client_encoding = 'UTF8'",
                set("client_encoding", Some("UTF8")),
            ),
            (
                "SHOW transaction_read_only",
                Show {
                    name: "transaction_read_only".into(),
                },
            ),
            (
                "SHOW TRANSACTION ISOLATION LEVEL",
                Show {
                    name: "transaction_isolation".into(),
                },
            ),
            ("RESET ALL", Reset { name: None }),
        ];
        for (sql, want) in cases {
            assert_eq!(classify(sql), want, "{sql}");
        }
    }

    #[test]
    fn database_ddl_and_chatter_are_answered_by_availdb() {
        assert_eq!(
            classify("CREATE DATABASE App"),
            CreateDatabase { name: "app".into() }
        );
        assert_eq!(
            classify("create database \"Mixed\""),
            CreateDatabase {
                name: "Mixed".into()
            }
        );
        assert_eq!(
            classify("DROP DATABASE IF EXISTS x"),
            DropDatabase {
                name: "x".into(),
                if_exists: true
            }
        );
        assert_eq!(
            classify("DROP DATABASE x"),
            DropDatabase {
                name: "x".into(),
                if_exists: false
            }
        );
        assert_eq!(classify("SELECT current_user"), SessionUser);
        assert_eq!(
            classify("select SYS.wait_for_database_copy_sync('app', 'B')"),
            WaitForCopySync {
                database: "app".into(),
                server: "B".into()
            }
        );
        assert_eq!(classify("select current_schema()"), CurrentSchema);
        assert_eq!(
            classify("DISCARD ALL"),
            NoOp {
                tag: "DISCARD ALL".into()
            }
        );
    }

    #[test]
    fn pg_catalog_prefix_is_removed_outside_quotes_only() {
        assert_eq!(
            classify("SELECT pg_catalog.pg_is_in_recovery()"),
            Sql("SELECT pg_is_in_recovery()".into())
        );
        assert_eq!(
            classify("SELECT 'pg_catalog.x', PG_CATALOG.version()"),
            Sql("SELECT 'pg_catalog.x', version()".into())
        );
        assert_eq!(
            classify("INSERT INTO t VALUES (1)"),
            Sql("INSERT INTO t VALUES (1)".into())
        );
    }
}
