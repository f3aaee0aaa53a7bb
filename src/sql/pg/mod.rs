//! The PostgreSQL compatibility layer: PostgreSQL SQL in, SQLite SQL out.
//!
//! Applications written for PostgreSQL (ORMs, migration tools, psql's `\d`
//! commands, pgbench) send PostgreSQL's dialect; availdb runs SQLite. A
//! statement that may need it is parsed with `sqlparser`'s PostgreSQL
//! dialect, rewritten on the AST (`rewrite.rs`) and printed back as SQLite
//! SQL. Statements without a PostgreSQL-only marker (a cheap scan,
//! [`needs_translation`]) pass through untouched, and so does anything the
//! PostgreSQL parser rejects (SQLite's own dialect: `INSERT OR REPLACE`,
//! `PRAGMA`, trigger bodies), for SQLite to judge. The extended protocol
//! translates once, at Parse, and keeps the result with the prepared
//! statement.
//!
//! # What is translated
//! * Casts (`x::int`, `CAST(x AS varchar)`, `$1::VARCHAR`, `$1::TIMESTAMP
//!   WITHOUT TIME ZONE`): to SQLite's `CAST` for text, integers, reals,
//!   numerics and blobs; to availdb functions (`pg_to_date`,
//!   `pg_to_timestamptz`, `pg_to_bool`, `pg_to_regclass`, …) for the types
//!   SQLite does not have; `::regtype::text` and `::regclass::text` give
//!   names.
//! * `E'…'`, `U&'…'` and dollar-quoted strings → plain literals.
//! * `~ ~* !~ !~*` and `OPERATOR(pg_catalog.~)` → `pg_regex(text, pattern,
//!   case_insensitive)` (Rust's `regex`); `ILIKE` → `LIKE` (SQLite's LIKE
//!   ignores ASCII case); `COLLATE "C"`, `COLLATE pg_catalog.default`
//!   dropped.
//! * Arrays are JSON arrays: `ARRAY[…]` → `json_array(…)`, `ARRAY(subquery)`
//!   → `json_group_array`, `array_agg` → `json_group_array`; `x = ANY(ARRAY[…])`
//!   → `x IN (…)`, `x::type[]` → `pg_to_array(x)` (an array literal such as
//!   `{a,b}` becomes JSON), `FROM unnest(a, b, …)` → the arrays joined on
//!   their positions, `x = ANY($1)` (an array parameter, decoded to JSON,
//!   or sent untyped in PostgreSQL's array syntax) and `x = ANY('{a,b}')`
//!   → `x IN (SELECT value FROM json_each(pg_to_array(…)))`, other
//!   operators through `EXISTS`; `unnest(a)` and `generate_subscripts(a,
//!   1)` in a projection → a join with `json_each(a)`.
//! * `substring(x FROM i FOR n)` → `substring(x, i, n)`; a column alias
//!   that SQLite reserves (`AS default`) is quoted.
//! * Integer casts keep their width for typing: `::int`, `::integer` →
//!   `CAST(x AS INT4)` (int4), `::smallint` → `SMALLINT`, `::bigint` →
//!   `BIGINT`.
//! * `pg_catalog.` and `public.` qualifiers dropped (the catalog is a set of
//!   TEMP views, found first); `information_schema.x` →
//!   `"information_schema.x"` (see `engine::catalog`).
//! * `now()`, `gen_random_uuid()` (as SQLite expressions, so they work in
//!   column defaults), `pg_get_indexdef`, `pg_get_constraintdef`,
//!   `to_regclass`, `to_regtype`.
//! * `CREATE TABLE`: `SERIAL`/`BIGSERIAL`/`SMALLSERIAL` and `GENERATED …
//!   AS IDENTITY` columns, the key or not → as PostgreSQL makes them: a
//!   sequence `<table>_<column>_seq` (with the IDENTITY's own `(START
//!   WITH … INCREMENT BY …)`, in any order) and `DEFAULT (nextval('…'))`
//!   on an `int4`, `int8` or `int2` column, NOT NULL (so node-postgres reads
//!   SERIAL ids as numbers); in a TEMP table only the key, → `INTEGER
//!   PRIMARY KEY AUTOINCREMENT` (SQLite's rowid alias, which never takes a
//!   number back either; another column is refused, 0A000);
//!   PostgreSQL type names kept as the
//!   declared type; `WITH (…)`, `TABLESPACE`, `UNLOGGED` dropped;
//!   non-constant defaults (`now()`) → `CURRENT_TIMESTAMP`.
//! * `CREATE INDEX`: `USING btree`, `CONCURRENTLY`, operator classes,
//!   `INCLUDE` and `WITH (…)` dropped.
//! * `DROP TABLE a, b [CASCADE]` → one DROP per table; `TRUNCATE a, b` →
//!   `DELETE FROM` each; `ALTER TABLE … ADD PRIMARY KEY / ADD CONSTRAINT …
//!   UNIQUE` → a unique index (named `<table>_pkey` for a primary key);
//!   `ADD CONSTRAINT … FOREIGN KEY`, `ADD [CONSTRAINT n] CHECK (…)` and
//!   `ALTER COLUMN … DROP/SET NOT NULL,
//!   SET/DROP DEFAULT, TYPE [USING expr]` → edits of the table's
//!   definition, made at run time, with every row's value converted
//!   after a TYPE change ([`definition`], [`Translated::AlterDefinition`]);
//!   `VACUUM [ANALYZE] t` → `ANALYZE t` (a bare `VACUUM` is SQLite's); `EXPLAIN [ANALYZE]` → `EXPLAIN
//!   QUERY PLAN`; `FOR UPDATE`/`FOR SHARE` dropped (one writer serializes
//!   writes anyway).
//! * `CREATE SEQUENCE` (INCREMENT, MINVALUE, MAXVALUE, START, CACHE
//!   ignored, CYCLE, `AS smallint|integer|bigint`, in any order, as
//!   PostgreSQL takes them) → a row of
//!   `availdb_sequences`; `DROP SEQUENCE a, b` → their rows deleted;
//!   `nextval('s'::regclass)` → `nextval('s')` (`engine::sequence`).
//!   `CREATE TEMP SEQUENCE` is refused.
//! * `CREATE TEMP TABLE|VIEW|TRIGGER t` → `CREATE … pg_temp.t`, the
//!   session's own schema ([`temp_object`], `engine::temp`).
//! * `COPY … FROM STDIN` in text, CSV and binary (asyncpg's
//!   `copy_records_to_table`), `COPY … TO STDOUT` in text and CSV
//!   ([`copy`]).
//! * `(VALUES …) AS t(a, b)` and `(SELECT …) AS t(a, b)`: SQLite takes no
//!   column list, so the subquery's columns are named instead
//!   (SQLAlchemy's multi-row INSERT sends this).
//! * `json_build_object` → `json_object`, `bool_and`/`bool_or` → `min`/`max`;
//!   `array_agg` and `ARRAY(subquery)` are wrapped in `pg_array()`, which
//!   typing announces as `text[]`, `bool[]` or `int8[]` (sent as
//!   PostgreSQL array literals).
//!
//! What SQLite cannot do and no rewrite fixes is refused with 0A000 and a
//! message saying what to use instead ([`Translated::Unsupported`]).

pub mod copy;
pub mod definition;
mod rewrite;

use sqlparser::ast::{
    AlterTableOperation, ColumnOption, ColumnOptionDef, CreateTableOptions, DataType, Expr, Ident,
    ObjectName, ObjectNamePart, ObjectType, PrimaryKeyConstraint, Statement, TableConstraint,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

pub use copy::{CopyFormat, CopySpec};

/// A statement after translation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Translated {
    /// One SQLite statement (maybe the input unchanged).
    Sql(String),
    /// SQLite statements that together do what the one statement asked,
    /// run in order in one transaction; `tag` is the command tag.
    Batch {
        /// The statements.
        statements: Vec<String>,
        /// What the client is told (`DROP TABLE`, `TRUNCATE TABLE`).
        tag: String,
    },
    /// `COPY … FROM STDIN` / `TO STDOUT`.
    Copy(CopySpec),
    /// `ALTER TABLE t ADD CONSTRAINT … FOREIGN KEY …` and `ALTER COLUMN`
    /// forms: edits of the table's definition, made at run time
    /// ([`definition`]; SQLite's ALTER TABLE cannot).
    AlterDefinition {
        /// The table (unquoted).
        table: String,
        /// The changes, in order.
        edits: Vec<definition::Edit>,
    },
    /// Refused: SQLSTATE 0A000 with this message and hint.
    Unsupported {
        /// What is not supported.
        message: String,
        /// What to do instead.
        hint: String,
    },
}

/// Words and symbols only PostgreSQL's dialect uses. A statement without
/// any of them is passed to SQLite as it is, unparsed.
const MARKERS: &[&str] = &[
    "::",
    "pg_",
    "information_schema",
    "~",
    "e'",
    "u&'",
    "$$",
    "any",
    "all",
    "array",
    "serial",
    "identity",
    "ilike",
    "now(",
    "timestamp",
    "truncate",
    "with (",
    "copy",
    "collate",
    "operator",
    "drop ",
    "alter ",
    "create ",
    "explain",
    "uuid",
    "public.",
    "for update",
    "for share",
    "for no key",
    "for key share",
    "regclass",
    "regtype",
    "format_type",
    "to_reg",
    "unnest",
];

/// Whether `sql` may contain PostgreSQL-only syntax (a quick scan).
pub fn needs_translation(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    MARKERS.iter().any(|m| lower.contains(m))
}

/// Translates one statement (already split, without its `;`).
pub fn translate(sql: &str) -> Translated {
    let first = sql.split_whitespace().next().unwrap_or_default();
    if first.eq_ignore_ascii_case("vacuum") {
        return vacuum(sql);
    }
    if !needs_translation(sql) {
        return Translated::Sql(sql.to_string());
    }
    let normalized;
    let sql = if first.eq_ignore_ascii_case("copy") {
        // sqlparser reads COPY's booleans only as TRUE/FALSE.
        static BOOLEAN_OPTION: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
            regex::Regex::new(r"(?i)\b(freeze|header)\s+(on|off)\b").expect("valid regex")
        });
        normalized = BOOLEAN_OPTION.replace_all(sql, |c: &regex::Captures<'_>| {
            let value = if c[2].eq_ignore_ascii_case("on") {
                "true"
            } else {
                "false"
            };
            format!("{} {value}", &c[1])
        });
        normalized.as_ref()
    } else if let Some(ordered) = sequence_options_in_parser_order(sql) {
        normalized = ordered.into();
        normalized.as_ref()
    } else {
        sql
    };
    let Ok(mut statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return Translated::Sql(sql.to_string());
    };
    if statements.len() != 1 {
        return Translated::Sql(sql.to_string());
    }
    let mut stmt = statements.remove(0);
    match translate_statement(&mut stmt) {
        Some(t) => t,
        None => {
            if rewrite::rewrite_statement(&mut stmt) {
                Translated::Sql(stmt.to_string())
            } else {
                Translated::Sql(sql.to_string())
            }
        }
    }
}

/// Sequence options in the order `sqlparser` reads them (AS, INCREMENT,
/// MINVALUE, MAXVALUE, START, CACHE, CYCLE, OWNED BY), in `CREATE
/// SEQUENCE` and in an IDENTITY column's `(…)`: PostgreSQL takes them in
/// any order (`START 100 INCREMENT 3`), the parser only in that one. None
/// when the statement has neither, or when something other than those
/// options is among them (left for the parser to refuse).
fn sequence_options_in_parser_order(sql: &str) -> Option<String> {
    static HEAD: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r#"(?is)^\s*CREATE\s+(?:(?:TEMP|TEMPORARY|UNLOGGED)\s+)?SEQUENCE\s+(?:IF\s+NOT\s+EXISTS\s+)?(?:"[^"]*"|[\w$]+)(?:\.(?:"[^"]*"|[\w$]+))?"#,
        )
        .expect("valid regex")
    });
    static IDENTITY: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r#"(?is)\bAS\s+IDENTITY\s*\(([^()]*)\)"#).expect("valid regex")
    });
    if let Some(head) = HEAD.find(sql) {
        let rest = sql[head.end()..].trim_end().trim_end_matches(';');
        return Some(format!(
            "{}{}",
            head.as_str(),
            options_in_parser_order(rest)?
        ));
    }
    if !IDENTITY.is_match(sql) {
        return None;
    }
    let mut failed = false;
    let ordered = IDENTITY.replace_all(
        sql,
        |c: &regex::Captures<'_>| match options_in_parser_order(&c[1]) {
            Some(options) => format!("AS IDENTITY ({})", options.trim_start()),
            None => {
                failed = true;
                c[0].to_string()
            }
        },
    );
    (!failed).then(|| ordered.into_owned())
}

/// `options` (sequence options, each after a space) in `sqlparser`'s
/// order; None when something else is among them.
fn options_in_parser_order(mut options: &str) -> Option<String> {
    static OPTION: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        let number = r"[+-]?\s*\d+";
        regex::Regex::new(&format!(
            r#"(?is)^\s*(?:(AS\s+(?:smallint|integer|int|bigint|int2|int4|int8))|(INCREMENT(?:\s+BY)?\s+{number})|(NO\s+MINVALUE|MINVALUE\s+{number})|(NO\s+MAXVALUE|MAXVALUE\s+{number})|(START(?:\s+WITH)?\s+{number})|(CACHE\s+{number})|(NO\s+CYCLE|CYCLE)|(OWNED\s+BY\s+(?:"[^"]*"|[\w$]+)(?:\.(?:"[^"]*"|[\w$]+)){{0,2}}))\b"#
        ))
        .expect("valid regex")
    });
    let mut clauses: Vec<(usize, &str)> = Vec::new();
    while !options.trim().is_empty() {
        let c = OPTION.captures(options)?;
        let (rank, m) = c
            .iter()
            .enumerate()
            .skip(1)
            .find_map(|(i, m)| m.map(|m| (i, m)))?;
        clauses.push((rank, m.as_str()));
        options = &options[c.get(0).expect("whole match").end()..];
    }
    clauses.sort_by_key(|(rank, _)| *rank);
    Some(clauses.iter().map(|(_, c)| format!(" {c}")).collect())
}

/// A statement that creates a TEMP object, with the object placed in the
/// session's private schema (`CREATE TEMP TABLE t` → `CREATE TABLE
/// pg_temp.t`; see `engine::temp`); None for any other statement. The
/// session makes sure its `pg_temp` exists before running it.
pub fn temp_object(sql: &str) -> Option<String> {
    static TEMP: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r#"(?is)^\s*CREATE\s+(?:GLOBAL\s+|LOCAL\s+)?(?:TEMP|TEMPORARY)\s+(TABLE|VIEW|TRIGGER)\s+(IF\s+NOT\s+EXISTS\s+)?(?:"?pg_temp"?\.)?"#,
        )
        .expect("valid regex")
    });
    static QUALIFIED: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r#"(?is)^\s*CREATE\s+(?:UNIQUE\s+)?(?:TABLE|VIEW|TRIGGER|INDEX)\s+(?:IF\s+NOT\s+EXISTS\s+)?"?pg_temp"?\."#,
        )
        .expect("valid regex")
    });
    let head = sql.trim_start().get(..6)?;
    if !head.eq_ignore_ascii_case("create") {
        return None;
    }
    if let Some(c) = TEMP.captures(sql) {
        let end = c.get(0).expect("whole match").end();
        let exists = if c.get(2).is_some() {
            "IF NOT EXISTS "
        } else {
            ""
        };
        return Some(format!(
            "CREATE {} {exists}pg_temp.{}",
            c[1].to_ascii_uppercase(),
            &sql[end..]
        ));
    }
    QUALIFIED.is_match(sql).then(|| sql.to_string())
}

/// `CREATE [UNIQUE] INDEX [IF NOT EXISTS] i ON t …` with neither name
/// qualified: the table `t` (unquoted) and the statement with the index
/// placed in `pg_temp`, for the session to run when `t` is one of its
/// TEMP tables (SQLite puts an index in its table's schema only when the
/// index's name says so). None for any other statement.
pub fn index_on_temp_table(sql: &str) -> Option<(String, String)> {
    static INDEX: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r#"(?is)^\s*CREATE\s+(UNIQUE\s+)?INDEX\s+(IF\s+NOT\s+EXISTS\s+)?("[^"]+"|[\w$]+)\s+ON\s+("[^"]+"|[\w$]+)\s*\("#,
        )
        .expect("valid regex")
    });
    let c = INDEX.captures(sql)?;
    let table = c[4].trim_matches('"').to_string();
    let name = c.get(3).expect("index name");
    let placed = format!("{}pg_temp.{}", &sql[..name.start()], &sql[name.start()..]);
    Some((table, placed))
}

fn unsupported(message: impl Into<String>, hint: impl Into<String>) -> Translated {
    Translated::Unsupported {
        message: message.into(),
        hint: hint.into(),
    }
}

/// `VACUUM [FULL] [ANALYZE]` with no table → SQLite's `VACUUM` (the whole
/// file is rewritten and shrunk; replicated like any transaction; its
/// statistics are not refreshed); `VACUUM [ANALYZE] t` → `ANALYZE t`: SQLite
/// cannot vacuum one table, and statistics are what callers of the
/// per-table form (pgbench -i) want.
fn vacuum(sql: &str) -> Translated {
    let table = sql
        .split_whitespace()
        .skip(1)
        .find(|w| {
            !matches!(
                w.trim_end_matches(';').to_ascii_lowercase().as_str(),
                "full" | "freeze" | "verbose" | "analyze" | "analyse" | ""
            ) && !w.starts_with('(')
        })
        .map(|t| t.trim_end_matches(';').to_string());
    match table {
        Some(t) => Translated::Batch {
            statements: vec![format!("ANALYZE {t}")],
            tag: "VACUUM".into(),
        },
        // Alone: SQLite's VACUUM cannot run inside the transaction a batch
        // runs in.
        None => Translated::Sql("VACUUM".into()),
    }
}

fn name_of(name: &ObjectName) -> String {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(|i| i.to_string())
        .unwrap_or_default()
}

fn unqualified(name: &ObjectName) -> ObjectName {
    ObjectName(name.0.last().cloned().into_iter().collect())
}

/// Statement-level translations; None leaves the statement to the
/// expression rules.
fn translate_statement(stmt: &mut Statement) -> Option<Translated> {
    match stmt {
        Statement::CreateTable(_) => {
            rewrite::rewrite_statement(stmt);
            let Statement::CreateTable(ct) = stmt else {
                unreachable!()
            };
            let sequences = match create_table(ct) {
                Ok(sequences) => sequences,
                Err(refused) => return Some(refused),
            };
            if sequences.is_empty() {
                return Some(Translated::Sql(stmt.to_string()));
            }
            let mut statements = vec![crate::engine::sequence::CREATE_TABLE.to_string()];
            statements.extend(sequences);
            statements.push(stmt.to_string());
            Some(Translated::Batch {
                statements,
                tag: "CREATE TABLE".into(),
            })
        }
        Statement::CreateIndex(ci) => {
            ci.using = None;
            ci.concurrently = false;
            ci.include.clear();
            ci.with.clear();
            ci.nulls_distinct = None;
            ci.table_name = unqualified(&ci.table_name);
            for c in &mut ci.columns {
                c.operator_class = None;
            }
            rewrite::rewrite_statement(stmt);
            Some(Translated::Sql(stmt.to_string()))
        }
        Statement::Drop {
            object_type: ObjectType::Sequence,
            if_exists,
            names,
            ..
        } => {
            let mut statements = vec![crate::engine::sequence::CREATE_TABLE.to_string()];
            for n in names.iter() {
                let name = literal(&sequence_ident(n));
                if !*if_exists {
                    statements.push(format!("SELECT availdb_sequence_exists({name})"));
                }
                statements.push(format!("DELETE FROM availdb_sequences WHERE name = {name}"));
            }
            Some(Translated::Batch {
                statements,
                tag: "DROP SEQUENCE".into(),
            })
        }
        Statement::Drop {
            object_type,
            if_exists,
            names,
            ..
        } => {
            let kind = match object_type {
                ObjectType::Table => "TABLE",
                ObjectType::View => "VIEW",
                ObjectType::Index => "INDEX",
                _ => return None,
            };
            let exists = if *if_exists { "IF EXISTS " } else { "" };
            let statements = names
                .iter()
                .map(|n| format!("DROP {kind} {exists}{}", unqualified(n)))
                .collect();
            Some(Translated::Batch {
                statements,
                tag: format!("DROP {kind}"),
            })
        }
        Statement::Truncate(t) => Some(Translated::Batch {
            statements: t
                .table_names
                .iter()
                .map(|n| format!("DELETE FROM {}", unqualified(&n.name)))
                .collect(),
            tag: "TRUNCATE TABLE".into(),
        }),
        Statement::Copy {
            source,
            to,
            target,
            options,
            legacy_options,
            ..
        } => {
            let query = match source {
                sqlparser::ast::CopySource::Query(q) => {
                    let mut s = Statement::Query(q.clone());
                    rewrite::rewrite_statement(&mut s);
                    Some(s.to_string())
                }
                _ => None,
            };
            Some(
                match CopySpec::from_parts(source, *to, target, options, legacy_options, query) {
                    Ok(spec) => Translated::Copy(spec),
                    Err(why) => unsupported(
                        why,
                        "run COPY through psql's \\copy, or a driver's copy API",
                    ),
                },
            )
        }
        Statement::Explain { statement, .. } => {
            let mut inner = (**statement).clone();
            let inner_sql = match translate_statement(&mut inner) {
                Some(Translated::Sql(s)) => s,
                Some(_) => {
                    return Some(unsupported(
                        "not supported in availdb: EXPLAIN of this statement",
                        "EXPLAIN the SELECT, INSERT, UPDATE or DELETE itself",
                    ))
                }
                None => {
                    rewrite::rewrite_statement(&mut inner);
                    inner.to_string()
                }
            };
            Some(Translated::Sql(format!("EXPLAIN QUERY PLAN {inner_sql}")))
        }
        Statement::AlterTable(alter) => {
            let table = unqualified(&alter.name);
            if let Some(edits) = definition_edits(&alter.operations) {
                return Some(Translated::AlterDefinition {
                    table: name_of(&table).trim_matches('"').to_string(),
                    edits,
                });
            }
            let mut statements = Vec::new();
            for op in &alter.operations {
                match op {
                    AlterTableOperation::AddConstraint { constraint, .. } => {
                        match unique_index(&table, constraint) {
                            Some(sql) => statements.push(sql),
                            None => {
                                return Some(unsupported(
                                    format!(
                                        "not supported in availdb: ALTER TABLE … ADD {}",
                                        constraint_kind(constraint)
                                    ),
                                    "declare the constraint in CREATE TABLE",
                                ))
                            }
                        }
                    }
                    AlterTableOperation::AddColumn { column_def, .. } => {
                        let mut def = column_def.clone();
                        def.data_type = sqlite_type(&def.data_type);
                        statements.push(format!("ALTER TABLE {table} ADD COLUMN {def}"));
                    }
                    AlterTableOperation::DropColumn { column_names, .. } => {
                        for c in column_names {
                            statements.push(format!("ALTER TABLE {table} DROP COLUMN {c}"));
                        }
                    }
                    AlterTableOperation::RenameColumn {
                        old_column_name,
                        new_column_name,
                    } => statements.push(format!(
                        "ALTER TABLE {table} RENAME COLUMN {old_column_name} TO {new_column_name}"
                    )),
                    AlterTableOperation::RenameTable { table_name } => {
                        statements.push(format!("ALTER TABLE {table} RENAME TO {table_name}"))
                    }
                    other => {
                        return Some(unsupported(
                            format!("not supported in availdb: ALTER TABLE … {other}"),
                            "create the table anew with the definition you want and copy the rows (INSERT INTO new SELECT … FROM old)",
                        ))
                    }
                }
            }
            Some(Translated::Batch {
                statements,
                tag: "ALTER TABLE".into(),
            })
        }
        Statement::CreateSequence {
            temporary,
            if_not_exists,
            name,
            data_type,
            sequence_options,
            ..
        } => Some(if *temporary {
            unsupported(
                "not supported in availdb: TEMP sequences",
                "create a regular sequence (and DROP SEQUENCE it when done)",
            )
        } else {
            create_sequence(*if_not_exists, name, data_type.as_ref(), sequence_options)
        }),
        _ => None,
    }
}

/// ALTER TABLE operations that are all edits of the table's definition
/// ([`definition`]), as those edits; None when any is not.
fn definition_edits(operations: &[AlterTableOperation]) -> Option<Vec<definition::Edit>> {
    use definition::Edit;
    use sqlparser::ast::AlterColumnOperation as C;
    operations
        .iter()
        .map(|op| match op {
            AlterTableOperation::AddConstraint {
                constraint: TableConstraint::ForeignKey(fk),
                ..
            } => {
                let mut fk = fk.clone();
                fk.foreign_table = unqualified(&fk.foreign_table);
                Some(vec![Edit::AddConstraint(
                    TableConstraint::ForeignKey(fk).to_string(),
                )])
            }
            AlterTableOperation::AddConstraint {
                constraint: TableConstraint::Check(check),
                not_valid,
            } => {
                let expr = sqlite_expr(&check.expr)?;
                let name = check
                    .name
                    .as_ref()
                    .map(|n| format!("CONSTRAINT {n} "))
                    .unwrap_or_default();
                Some(vec![Edit::AddCheck {
                    constraint: format!("{name}CHECK ({expr})"),
                    expr,
                    not_valid: *not_valid,
                }])
            }
            AlterTableOperation::AlterColumn { column_name, op } => {
                let c = column_name.value.clone();
                Some(match op {
                    C::DropNotNull => Edit::DropNotNull(c),
                    C::SetNotNull => Edit::SetNotNull(c),
                    C::DropDefault => Edit::DropDefault(c),
                    C::SetDefault { value } => Edit::SetDefault(c, sqlite_expr(value)?),
                    C::SetDataType {
                        data_type,
                        using: None,
                        ..
                    } => Edit::SetType(c, rewrite::column_type(data_type)),
                    C::SetDataType {
                        data_type,
                        using: Some(using),
                        ..
                    } => {
                        return Some(vec![
                            Edit::SetType(c.clone(), rewrite::column_type(data_type)),
                            Edit::Rewrite(c, sqlite_expr(using)?),
                        ])
                    }
                    _ => return None,
                })
                .map(|edit| vec![edit])
            }
            _ => None,
        })
        .collect::<Option<Vec<Vec<definition::Edit>>>>()
        .map(|edits| edits.into_iter().flatten().collect())
}

/// A PostgreSQL expression as SQLite reads it (the rewrites of a
/// statement applied to it alone).
fn sqlite_expr(expr: &Expr) -> Option<String> {
    let mut e = Statement::Query(Box::new(
        Parser::parse_sql(&PostgreSqlDialect {}, &format!("SELECT {expr}"))
            .ok()?
            .into_iter()
            .next()
            .and_then(|s| match s {
                Statement::Query(q) => Some(*q),
                _ => None,
            })?,
    ));
    rewrite::rewrite_statement(&mut e);
    Some(e.to_string().strip_prefix("SELECT ")?.to_string())
}

/// A sequence's name as stored: unquoted names fold to lower case.
fn sequence_ident(name: &ObjectName) -> String {
    match name.0.last().and_then(|p| p.as_ident()) {
        Some(i) if i.quote_style.is_some() => i.value.clone(),
        Some(i) => i.value.to_ascii_lowercase(),
        None => String::new(),
    }
}

/// A SQL string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `CREATE SEQUENCE` → a row of `availdb_sequences` (`engine::sequence`),
/// with PostgreSQL's defaults: ascending from 1 to the type's maximum, or
/// descending from -1 to its minimum.
fn create_sequence(
    if_not_exists: bool,
    name: &ObjectName,
    data_type: Option<&DataType>,
    options: &[sqlparser::ast::SequenceOptions],
) -> Translated {
    let (type_min, type_max) = match data_type {
        Some(DataType::SmallInt(_) | DataType::Int2(_)) => {
            (i64::from(i16::MIN), i64::from(i16::MAX))
        }
        Some(DataType::Int(_) | DataType::Integer(_) | DataType::Int4(_)) => {
            (i64::from(i32::MIN), i64::from(i32::MAX))
        }
        _ => (i64::MIN, i64::MAX),
    };
    let verb = if if_not_exists {
        "INSERT OR IGNORE"
    } else {
        "INSERT"
    };
    match sequence_row(&sequence_ident(name), (type_min, type_max), options) {
        Ok(row) => Translated::Batch {
            statements: vec![
                crate::engine::sequence::CREATE_TABLE.to_string(),
                format!("{verb} INTO availdb_sequences VALUES {row}"),
            ],
            tag: "CREATE SEQUENCE".into(),
        },
        Err(refusal) => refusal,
    }
}

/// The row of `availdb_sequences` for sequence `name` of an integer type
/// with bounds `(type_min, type_max)` and `options` (`CREATE SEQUENCE`'s,
/// or an IDENTITY column's `(START WITH …)`), with PostgreSQL's defaults:
/// ascending from 1 to the type's maximum, or descending from -1 to its
/// minimum.
fn sequence_row(
    name: &str,
    (type_min, type_max): (i64, i64),
    options: &[sqlparser::ast::SequenceOptions],
) -> Result<String, Translated> {
    use sqlparser::ast::SequenceOptions as O;
    let number = |e: &Expr| e.to_string().replace(' ', "").parse::<i64>().ok();
    let (mut increment, mut min, mut max, mut start, mut cycle) =
        (Some(1), None, None, None, false);
    for o in options {
        match o {
            O::IncrementBy(e, _) => increment = number(e),
            O::MinValue(e) => min = e.as_ref().map(number),
            O::MaxValue(e) => max = e.as_ref().map(number),
            O::StartWith(e, _) => start = Some(number(e)),
            O::Cache(_) => {}
            O::Cycle(no) => cycle = !*no,
        }
    }
    let bad = || {
        unsupported(
            "not supported in availdb: a sequence option that is not an integer constant",
            "write INCREMENT, MINVALUE, MAXVALUE and START as integer literals",
        )
    };
    let Some(increment) = increment.filter(|i| *i != 0) else {
        return Err(bad());
    };
    let (Some(min), Some(max)) = (
        min.unwrap_or(Some(if increment > 0 { 1 } else { type_min })),
        max.unwrap_or(Some(if increment > 0 { type_max } else { -1 })),
    ) else {
        return Err(bad());
    };
    let Some(start) = start.unwrap_or(Some(if increment > 0 { min } else { max })) else {
        return Err(bad());
    };
    if !(min..=max).contains(&start) {
        return Err(unsupported(
            format!("START value ({start}) is outside MINVALUE ({min}) .. MAXVALUE ({max})"),
            "choose a START between MINVALUE and MAXVALUE",
        ));
    }
    Ok(format!(
        "({}, {start}, {start}, {increment}, {min}, {max}, {}, 0)",
        literal(name),
        i64::from(cycle)
    ))
}

fn constraint_kind(c: &TableConstraint) -> &'static str {
    match c {
        TableConstraint::ForeignKey(_) => "FOREIGN KEY",
        TableConstraint::Check(_) => "CHECK",
        TableConstraint::PrimaryKey(_) => "PRIMARY KEY",
        TableConstraint::Unique(_) => "UNIQUE",
        _ => "CONSTRAINT",
    }
}

/// `ADD PRIMARY KEY (a)` / `ADD CONSTRAINT n UNIQUE (a, b)` as a unique
/// index (SQLite cannot add constraints to a table).
fn unique_index(table: &ObjectName, c: &TableConstraint) -> Option<String> {
    let (name, columns) = match c {
        TableConstraint::PrimaryKey(pk) => (
            pk.name
                .as_ref()
                .map(|n| n.to_string())
                .unwrap_or_else(|| format!("{}_pkey", name_of(table).trim_matches('"'))),
            &pk.columns,
        ),
        TableConstraint::Unique(u) => (
            u.name
                .as_ref()
                .map(|n| n.to_string())
                .unwrap_or_else(|| format!("{}_key", name_of(table).trim_matches('"'))),
            &u.columns,
        ),
        _ => return None,
    };
    let cols: Vec<String> = columns.iter().map(|c| c.column.expr.to_string()).collect();
    Some(format!(
        "CREATE UNIQUE INDEX {} ON {table} ({})",
        Ident::with_quote('"', name.trim_matches('"')),
        cols.join(", ")
    ))
}

fn sqlite_type(ty: &DataType) -> DataType {
    DataType::Custom(
        ObjectName(vec![ObjectNamePart::Identifier(Ident::new(
            rewrite::column_type(ty),
        ))]),
        vec![],
    )
}

/// The CREATE TABLE rules (see the module page); returns the statements
/// that create the sequences of its SERIAL and IDENTITY columns, or the
/// refusal of a form availdb cannot build.
fn create_table(ct: &mut sqlparser::ast::CreateTable) -> Result<Vec<String>, Translated> {
    // `pg_temp.t` is a TEMP table (the session places it).
    let schema = ct.name.0.first().and_then(|p| p.as_ident());
    if ct.name.0.len() > 1 && schema.is_some_and(|s| s.value.eq_ignore_ascii_case("pg_temp")) {
        ct.temporary = true;
    }
    if matches!(ct.on_commit, Some(sqlparser::ast::OnCommit::PreserveRows)) {
        ct.on_commit = None;
    }
    ct.name = unqualified(&ct.name);
    ct.unlogged = false;
    ct.table_options = CreateTableOptions::None;
    // The single-column primary key, from a column option or a table
    // constraint.
    let table_pk: Option<String> = ct.constraints.iter().find_map(|c| match c {
        TableConstraint::PrimaryKey(PrimaryKeyConstraint { columns, .. }) if columns.len() == 1 => {
            Some(
                columns[0]
                    .column
                    .expr
                    .to_string()
                    .trim_matches('"')
                    .to_string(),
            )
        }
        _ => None,
    });
    let mut moved_pk = false;
    let mut sequences = Vec::new();
    let table = name_of(&ct.name).trim_matches('"').to_string();
    for col in &mut ct.columns {
        let serial = rewrite::is_serial(&col.data_type);
        let identity = col.options.iter().any(|o| rewrite::is_identity(&o.option));
        let column_pk = col
            .options
            .iter()
            .any(|o| matches!(o.option, ColumnOption::PrimaryKey(_)));
        let is_pk = column_pk || table_pk.as_deref() == Some(col.name.value.as_str());
        // `GENERATED … AS IDENTITY (START WITH 10 …)`: its sequence's options.
        let identity_options = col
            .options
            .iter()
            .find_map(|o| match &o.option {
                ColumnOption::Generated {
                    generation_expr: None,
                    sequence_options: Some(options),
                    ..
                } => Some(options.clone()),
                _ => None,
            })
            .unwrap_or_default();
        col.options.retain(|o| !rewrite::is_identity(&o.option));
        if (serial || identity) && !ct.temporary {
            // As PostgreSQL does it, key or not: the column's own sequence,
            // `t_id_seq`, and a default that takes its next value; the
            // column keeps its integer width (int4 for SERIAL and
            // `integer`) and, as PostgreSQL's, is NOT NULL.
            if !is_pk
                && !col
                    .options
                    .iter()
                    .any(|o| matches!(o.option, ColumnOption::NotNull))
            {
                col.options.push(ColumnOptionDef {
                    name: None,
                    option: ColumnOption::NotNull,
                });
            }
            let int8 = (i64::MIN, i64::MAX);
            let int2 = (i64::from(i16::MIN), i64::from(i16::MAX));
            let int4 = (i64::from(i32::MIN), i64::from(i32::MAX));
            let (ty, bounds) = match &col.data_type {
                DataType::Custom(name, _) => match name.to_string().to_ascii_lowercase().as_str() {
                    "bigserial" | "serial8" => ("int8", int8),
                    "smallserial" | "serial2" => ("int2", int2),
                    _ => ("int4", int4),
                },
                DataType::BigInt(_) | DataType::Int8(_) => ("int8", int8),
                DataType::SmallInt(_) | DataType::Int2(_) => ("int2", int2),
                _ => ("int4", int4),
            };
            let sequence = format!("{table}_{}_seq", col.name.value);
            col.data_type = DataType::Custom(
                ObjectName(vec![ObjectNamePart::Identifier(Ident::new(ty))]),
                vec![],
            );
            col.options
                .retain(|o| !matches!(o.option, ColumnOption::Default(_)));
            col.options.push(ColumnOptionDef {
                name: None,
                option: ColumnOption::Default(Expr::Nested(Box::new(rewrite::call(
                    "nextval",
                    vec![Expr::Value(
                        sqlparser::ast::Value::SingleQuotedString(sequence.clone()).into(),
                    )],
                )))),
            });
            let verb = if ct.if_not_exists {
                "INSERT OR IGNORE"
            } else {
                "INSERT OR REPLACE"
            };
            sequences.push(format!(
                "{verb} INTO availdb_sequences VALUES {}",
                sequence_row(&sequence, bounds, &identity_options)?
            ));
            continue;
        }
        if (serial || identity) && !is_pk {
            // A TEMP table's numbering is its rowid (sequences are in the
            // database, so never a TEMP table's): only its key can have it.
            return Err(unsupported(
                format!(
                    "not supported in availdb: SERIAL or IDENTITY on column \"{}\" of a TEMP table, which is not its primary key",
                    col.name.value
                ),
                "make that column the TEMP table's primary key, or create the table without TEMP",
            ));
        }
        if serial || identity {
            // SQLite's rowid alias: exactly `INTEGER PRIMARY KEY`.
            col.data_type = DataType::Integer(None);
            col.options.retain(|o| {
                !matches!(
                    o.option,
                    ColumnOption::PrimaryKey(_) | ColumnOption::Default(_)
                )
            });
            col.options.insert(
                0,
                ColumnOptionDef {
                    name: None,
                    option: ColumnOption::PrimaryKey(PrimaryKeyConstraint {
                        name: None,
                        index_name: None,
                        index_type: None,
                        columns: vec![],
                        include: vec![],
                        index_options: vec![],
                        characteristics: None,
                    }),
                },
            );
            // Never reuses a number, as a sequence never does (a plain
            // rowid alias takes max + 1, which a DELETE lowers).
            col.options.insert(
                1,
                ColumnOptionDef {
                    name: None,
                    option: ColumnOption::DialectSpecific(vec![
                        sqlparser::tokenizer::Token::make_keyword("AUTOINCREMENT"),
                    ]),
                },
            );
            if !column_pk {
                moved_pk = true;
            }
        } else {
            col.data_type = sqlite_type(&col.data_type);
        }
        for o in &mut col.options {
            if let ColumnOption::Default(e) = &mut o.option {
                if let Some(d) = constant_default(e) {
                    *e = d;
                }
            }
        }
    }
    if moved_pk {
        ct.constraints
            .retain(|c| !matches!(c, TableConstraint::PrimaryKey(_)));
    }
    Ok(sequences)
}

/// SQLite wants constant defaults in parentheses; `now()` and friends
/// become `CURRENT_TIMESTAMP`, other function calls are parenthesised.
fn constant_default(e: &Expr) -> Option<Expr> {
    let Expr::Function(f) = e else { return None };
    let name = f
        .name
        .0
        .last()
        .and_then(|p| p.as_ident())
        .map(|i| i.value.to_ascii_lowercase())
        .unwrap_or_default();
    if name == "now" || name == "current_timestamp" {
        return Some(Expr::Identifier(Ident::new("CURRENT_TIMESTAMP")));
    }
    Some(Expr::Nested(Box::new(e.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(input: &str) -> String {
        match translate(input) {
            Translated::Sql(s) => s,
            other => panic!("{input}: {other:?}"),
        }
    }

    #[test]
    fn sqlite_statements_pass_through_untouched() {
        for s in [
            "SELECT 1",
            "INSERT OR REPLACE INTO t VALUES (1)",
            "SELECT * FROM t WHERE a = $1",
            "PRAGMA table_info(t)",
        ] {
            assert_eq!(sql(s), s);
        }
    }

    #[test]
    fn casts_become_sqlite_casts_or_availdb_functions() {
        let cases = [
            ("SELECT $1::VARCHAR", "SELECT CAST($1 AS TEXT)"),
            ("SELECT '1'::int + 1", "SELECT CAST('1' AS INT4) + 1"),
            (
                "SELECT $1::TIMESTAMP WITHOUT TIME ZONE",
                "SELECT pg_to_timestamp($1)",
            ),
            ("SELECT 'a'::text", "SELECT 'a'"),
            (
                "SELECT t.oid::regtype::text FROM pg_type t",
                "SELECT format_type(pg_to_regtype(t.oid), NULL) FROM pg_type t",
            ),
            (
                "SELECT 1 FROM t WHERE a = 'x'::regclass",
                "SELECT 1 FROM t WHERE a = pg_to_regclass('x')",
            ),
            ("SELECT E'a\\nb'", "SELECT 'a\nb'"),
        ];
        for (input, want) in cases {
            assert_eq!(sql(input), want, "{input}");
        }
    }

    #[test]
    fn operators_arrays_and_catalog_names_are_rewritten() {
        let cases = [
            (
                "SELECT relname FROM pg_catalog.pg_class WHERE relname !~ '^pg_'",
                "SELECT relname FROM \"pg_class\" WHERE NOT (pg_regex(relname, '^pg_', 0))",
            ),
            (
                "SELECT 1 WHERE 'a' OPERATOR(pg_catalog.~) '^a' COLLATE pg_catalog.default",
                "SELECT 1 WHERE pg_regex('a', ('^a'), 0)",
            ),
            (
                "SELECT * FROM t WHERE a = ANY(ARRAY['x', 'y'])",
                "SELECT * FROM t WHERE a IN ('x', 'y')",
            ),
            (
                "SELECT substring(pg_get_expr(d.adbin, d.adrelid, true) for 128) AS default FROM pg_attrdef d",
                "SELECT SUBSTRING(pg_get_expr(d.adbin, d.adrelid, true), 1, 128) AS \"default\" FROM pg_attrdef d",
            ),
            (
                "SELECT * FROM t WHERE a = ANY($1)",
                "SELECT * FROM t WHERE (a) IN (SELECT value FROM json_each(pg_to_array($1)))",
            ),
            (
                "SELECT * FROM t WHERE a = ANY('{r,p,\"\"}')",
                "SELECT * FROM t WHERE (a) IN (SELECT value FROM json_each(pg_to_array('{r,p,\"\"}')))",
            ),
            (
                "SELECT table_name FROM information_schema.tables",
                "SELECT table_name FROM \"information_schema.tables\"",
            ),
            ("SELECT pg_catalog.version()", "SELECT version()"),
            ("SELECT * FROM t FOR UPDATE", "SELECT * FROM t"),
            (
                "SELECT * FROM t WHERE a ILIKE 'x%'",
                "SELECT * FROM t WHERE a LIKE 'x%'",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(sql(input), want, "{input}");
        }
    }

    #[test]
    fn create_table_keeps_postgres_types_and_numbers_serial_keys() {
        assert_eq!(
            sql("create table pgbench_tellers(tid int not null,bid int,tbalance int,filler char(84)) with (fillfactor=100)"),
            "CREATE TABLE pgbench_tellers (tid int NOT NULL, bid int, tbalance int, filler char(84))"
        );
        // SERIAL and IDENTITY keys: a sequence each, and its nextval as
        // the default, as PostgreSQL does it.
        let create = crate::engine::sequence::CREATE_TABLE.to_string();
        let cases = [
            (
                "CREATE TABLE t (id SERIAL NOT NULL, name VARCHAR(40), at TIMESTAMP WITHOUT TIME ZONE DEFAULT now(), PRIMARY KEY (id))",
                format!("INSERT OR REPLACE INTO availdb_sequences VALUES ('t_id_seq', 1, 1, 1, 1, {}, 0, 0)", i32::MAX),
                "CREATE TABLE t (id int4 NOT NULL DEFAULT (nextval('t_id_seq')), name varchar(40), at timestamp DEFAULT CURRENT_TIMESTAMP, PRIMARY KEY (id))",
            ),
            (
                "CREATE TABLE IF NOT EXISTS \"a\" (\"id\" bigint NOT NULL PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY, \"t\" timestamp with time zone NOT NULL)",
                format!("INSERT OR IGNORE INTO availdb_sequences VALUES ('a_id_seq', 1, 1, 1, 1, {}, 0, 0)", i64::MAX),
                "CREATE TABLE IF NOT EXISTS \"a\" (\"id\" int8 NOT NULL PRIMARY KEY DEFAULT (nextval('a_id_seq')), \"t\" timestamp with time zone NOT NULL)",
            ),
        ];
        for (input, sequence, table) in cases {
            assert_eq!(
                translate(input),
                Translated::Batch {
                    statements: vec![create.clone(), sequence, table.to_string()],
                    tag: "CREATE TABLE".into()
                },
                "{input}"
            );
        }
        // Not the key: the same, and NOT NULL as in PostgreSQL.
        assert_eq!(
            translate("CREATE TABLE o (code text PRIMARY KEY, n bigserial, k int GENERATED ALWAYS AS IDENTITY)"),
            Translated::Batch {
                statements: vec![
                    create.clone(),
                    format!("INSERT OR REPLACE INTO availdb_sequences VALUES ('o_n_seq', 1, 1, 1, 1, {}, 0, 0)", i64::MAX),
                    format!("INSERT OR REPLACE INTO availdb_sequences VALUES ('o_k_seq', 1, 1, 1, 1, {}, 0, 0)", i32::MAX),
                    "CREATE TABLE o (code text PRIMARY KEY, n int8 NOT NULL DEFAULT (nextval('o_n_seq')), k int4 NOT NULL DEFAULT (nextval('o_k_seq')))".into(),
                ],
                tag: "CREATE TABLE".into()
            }
        );
        // An IDENTITY column's own sequence options (SQLAlchemy's
        // `Identity(start=10)`), as PostgreSQL keeps them.
        assert_eq!(
            translate("CREATE TABLE p (id INTEGER GENERATED BY DEFAULT AS IDENTITY (START WITH 10 INCREMENT BY 5), PRIMARY KEY (id))"),
            Translated::Batch {
                statements: vec![
                    create.clone(),
                    format!("INSERT OR REPLACE INTO availdb_sequences VALUES ('p_id_seq', 10, 10, 5, 1, {}, 0, 0)", i32::MAX),
                    "CREATE TABLE p (id int4 DEFAULT (nextval('p_id_seq')), PRIMARY KEY (id))".into(),
                ],
                tag: "CREATE TABLE".into()
            }
        );
        // A TEMP table numbers only its key (its rowid).
        assert!(matches!(
            translate("CREATE TEMP TABLE tt (code text PRIMARY KEY, n serial)"),
            Translated::Unsupported { message, .. } if message.contains("\"n\"")
        ));
    }

    #[test]
    fn temp_objects_go_to_the_sessions_pg_temp_schema() {
        let cases = [
            (
                "CREATE TEMP TABLE tt(x int)",
                Some("CREATE TABLE pg_temp.tt(x int)"),
            ),
            (
                "create temporary table if not exists \"T\" (x int)",
                Some("CREATE TABLE IF NOT EXISTS pg_temp.\"T\" (x int)"),
            ),
            (
                "CREATE TEMPORARY VIEW v AS SELECT 1",
                Some("CREATE VIEW pg_temp.v AS SELECT 1"),
            ),
            (
                "CREATE TEMP TABLE pg_temp.t (x int)",
                Some("CREATE TABLE pg_temp.t (x int)"),
            ),
            (
                "CREATE TABLE pg_temp.t (x int)",
                Some("CREATE TABLE pg_temp.t (x int)"),
            ),
            (
                "CREATE INDEX pg_temp.i ON t (x)",
                Some("CREATE INDEX pg_temp.i ON t (x)"),
            ),
            ("CREATE TABLE t (x int)", None),
            ("SELECT 'CREATE TEMP TABLE'", None),
        ];
        for (input, want) in cases {
            assert_eq!(temp_object(input).as_deref(), want, "{input}");
        }
        // Translated first: the TEMP keyword survives (and so does a
        // pg_temp qualifier).
        assert_eq!(
            temp_object(&sql("CREATE TEMP TABLE tt (id serial PRIMARY KEY, at timestamp) ON COMMIT PRESERVE ROWS")).as_deref(),
            Some("CREATE TABLE pg_temp.tt (id INTEGER PRIMARY KEY AUTOINCREMENT, at timestamp)")
        );
        assert_eq!(
            temp_object(&sql("CREATE TABLE pg_temp.t (x int)")).as_deref(),
            Some("CREATE TABLE pg_temp.t (x int)")
        );
    }

    #[test]
    fn an_index_on_a_table_names_the_table_and_can_be_placed_in_pg_temp() {
        assert_eq!(
            index_on_temp_table("CREATE UNIQUE INDEX IF NOT EXISTS \"tt_n\" ON \"tt\"(n)"),
            Some((
                "tt".into(),
                "CREATE UNIQUE INDEX IF NOT EXISTS pg_temp.\"tt_n\" ON \"tt\"(n)".into()
            ))
        );
        assert_eq!(
            index_on_temp_table("create index tt_n on tt (n)").map(|(_, sql)| sql),
            Some("create index pg_temp.tt_n on tt (n)".into())
        );
        for other in [
            "CREATE INDEX pg_temp.i ON tt (n)",
            "CREATE INDEX i ON main.t (n)",
            "CREATE TABLE i (n int)",
        ] {
            assert_eq!(index_on_temp_table(other), None, "{other}");
        }
    }

    #[test]
    fn sequences_are_rows_of_availdb_sequences() {
        let create = crate::engine::sequence::CREATE_TABLE.to_string();
        let cases = [
            (
                "CREATE SEQUENCE s",
                vec![
                    create.clone(),
                    format!("INSERT INTO availdb_sequences VALUES ('s', 1, 1, 1, 1, {}, 0, 0)", i64::MAX),
                ],
            ),
            (
                "create sequence if not exists public.\"S\" as integer increment by -2 start with -10 cycle",
                vec![
                    create.clone(),
                    format!("INSERT OR IGNORE INTO availdb_sequences VALUES ('S', -10, -10, -2, {}, -1, 1, 0)", i32::MIN),
                ],
            ),
        ];
        for (input, statements) in cases {
            assert_eq!(
                translate(input),
                Translated::Batch {
                    statements,
                    tag: "CREATE SEQUENCE".into()
                },
                "{input}"
            );
        }
        assert_eq!(
            translate("DROP SEQUENCE a, b"),
            Translated::Batch {
                statements: vec![
                    create.clone(),
                    "SELECT availdb_sequence_exists('a')".into(),
                    "DELETE FROM availdb_sequences WHERE name = 'a'".into(),
                    "SELECT availdb_sequence_exists('b')".into(),
                    "DELETE FROM availdb_sequences WHERE name = 'b'".into(),
                ],
                tag: "DROP SEQUENCE".into()
            }
        );
        assert_eq!(
            sql("SELECT nextval('t_id_seq'::regclass)"),
            "SELECT nextval('t_id_seq')"
        );
        assert_eq!(
            translate("CREATE SEQUENCE s START 100 INCREMENT 3 NO CYCLE MAXVALUE 1000"),
            Translated::Batch {
                statements: vec![
                    create.clone(),
                    "INSERT INTO availdb_sequences VALUES ('s', 100, 100, 3, 1, 1000, 0, 0)".into(),
                ],
                tag: "CREATE SEQUENCE".into()
            },
            "options in any order, as PostgreSQL takes them"
        );
        assert_eq!(
            sequence_options_in_parser_order(
                "CREATE SEQUENCE s CYCLE START WITH -5 AS int MINVALUE -9 INCREMENT BY - 1"
            )
            .as_deref(),
            Some("CREATE SEQUENCE s AS int INCREMENT BY - 1 MINVALUE -9 START WITH -5 CYCLE")
        );
        assert_eq!(
            sequence_options_in_parser_order("CREATE SEQUENCE s START 1 BOGUS 2"),
            None
        );
        assert!(matches!(
            translate("CREATE TEMP SEQUENCE s"),
            Translated::Unsupported { .. }
        ));
    }

    #[test]
    fn migration_alter_table_forms_become_definition_edits() {
        use definition::Edit;
        assert_eq!(
            translate("ALTER TABLE \"b\" ADD CONSTRAINT \"b_a_fk\" FOREIGN KEY (\"a_id\") REFERENCES \"public\".\"a\" (\"id\") DEFERRABLE INITIALLY DEFERRED"),
            Translated::AlterDefinition {
                table: "b".into(),
                edits: vec![Edit::AddConstraint(
                    "CONSTRAINT \"b_a_fk\" FOREIGN KEY (\"a_id\") REFERENCES \"a\"(\"id\") DEFERRABLE INITIALLY DEFERRED".into()
                )],
            }
        );
        assert_eq!(
            translate("ALTER TABLE t ALTER COLUMN \"name\" DROP NOT NULL, ALTER COLUMN e TYPE varchar(254), ALTER COLUMN n SET DEFAULT 3"),
            Translated::AlterDefinition {
                table: "t".into(),
                edits: vec![
                    Edit::DropNotNull("name".into()),
                    Edit::SetType("e".into(), "varchar(254)".into()),
                    Edit::SetDefault("n".into(), "3".into()),
                ],
            }
        );
        assert_eq!(
            translate("ALTER TABLE t ADD CONSTRAINT price_positive CHECK (price > 0 AND name !~ '^x'), ADD CHECK (n::int < 10) NOT VALID"),
            Translated::AlterDefinition {
                table: "t".into(),
                edits: vec![
                    Edit::AddCheck {
                        constraint: "CONSTRAINT price_positive CHECK (price > 0 AND NOT (pg_regex(name, '^x', 0)))".into(),
                        expr: "price > 0 AND NOT (pg_regex(name, '^x', 0))".into(),
                        not_valid: false,
                    },
                    Edit::AddCheck {
                        constraint: "CHECK (CAST(n AS INT4) < 10)".into(),
                        expr: "CAST(n AS INT4) < 10".into(),
                        not_valid: true,
                    },
                ],
            }
        );
        assert_eq!(
            translate("ALTER TABLE t ALTER COLUMN e TYPE int USING e::int * 100"),
            Translated::AlterDefinition {
                table: "t".into(),
                edits: vec![
                    Edit::SetType("e".into(), "int".into()),
                    Edit::Rewrite("e".into(), "CAST(e AS INT4) * 100".into()),
                ],
            }
        );
    }

    #[test]
    fn unnest_of_several_arrays_joins_them_on_their_positions() {
        assert_eq!(
            sql("INSERT INTO t (a, b) SELECT * FROM UNNEST(($1)::varchar[], ($2)::integer[])"),
            "INSERT INTO t (a, b) SELECT * FROM (SELECT u0.value AS unnest1, u1.value AS unnest2 FROM json_each(pg_to_array(($1))) AS u0 LEFT JOIN json_each(pg_to_array(($2))) AS u1 ON u1.key = u0.key) AS unnest"
        );
    }

    #[test]
    fn multi_table_statements_become_batches() {
        assert_eq!(
            translate("drop table if exists a, b"),
            Translated::Batch {
                statements: vec![
                    "DROP TABLE IF EXISTS a".into(),
                    "DROP TABLE IF EXISTS b".into()
                ],
                tag: "DROP TABLE".into()
            }
        );
        assert_eq!(
            translate("truncate table a, b"),
            Translated::Batch {
                statements: vec!["DELETE FROM a".into(), "DELETE FROM b".into()],
                tag: "TRUNCATE TABLE".into()
            }
        );
        assert_eq!(
            translate("alter table pgbench_branches add primary key (bid)"),
            Translated::Batch {
                statements: vec![
                    "CREATE UNIQUE INDEX \"pgbench_branches_pkey\" ON pgbench_branches (bid)"
                        .into()
                ],
                tag: "ALTER TABLE".into()
            }
        );
        assert_eq!(
            translate("vacuum analyze t"),
            Translated::Batch {
                statements: vec!["ANALYZE t".into()],
                tag: "VACUUM".into()
            }
        );
        // A bare VACUUM is SQLite's: it shrinks the file (and replicates).
        assert_eq!(translate("VACUUM"), Translated::Sql("VACUUM".into()));
        assert_eq!(
            translate("vacuum full analyze;"),
            Translated::Sql("VACUUM".into())
        );
    }

    #[test]
    fn copy_reads_its_options() {
        let Translated::Copy(_) = translate("copy pgbench_accounts from stdin with (freeze on)")
        else {
            panic!()
        };
        let Translated::Copy(spec) =
            translate("COPY t (a, b) FROM STDIN WITH (FORMAT csv, HEADER true)")
        else {
            panic!()
        };
        assert_eq!(spec.table.as_deref(), Some("t"));
        assert_eq!(spec.columns, vec!["a", "b"]);
        assert!(spec.from_stdin && spec.header);
        assert_eq!(spec.format, CopyFormat::Csv);
        assert!(matches!(
            translate("COPY t TO '/tmp/x'"),
            Translated::Unsupported { .. }
        ));
    }
}
