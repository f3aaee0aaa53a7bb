//! The emulated `pg_catalog` and `information_schema`, and the SQL
//! functions PostgreSQL clients call.
//!
//! Every connection (writer and readers) gets the catalog as **TEMP views**
//! over SQLite's own schema (`sqlite_schema`, `pragma_table_info`,
//! `pragma_index_list`, `pragma_foreign_key_list`): they are computed anew
//! by each query, so they always show the database as it is, and they live
//! in the connection's temp schema — nothing is ever written to the
//! database file (which is replicated page by page). Unqualified names
//! find temp objects first, and the translation layer (`sql::pg`) drops
//! `pg_catalog.` and turns `information_schema.x` into the view
//! `"information_schema.x"`.
//!
//! OIDs are stable: a relation's is a hash of its kind and name
//! (`pg_oid`), the same on every replica and across restarts; types have
//! PostgreSQL's own OIDs.
//!
//! What is emulated: pg_namespace, pg_class, pg_attribute, pg_attrdef,
//! pg_type, pg_index, pg_indexes, pg_constraint, pg_database, pg_roles,
//! pg_user, pg_authid, pg_auth_members, pg_am, pg_description,
//! pg_shdescription, pg_tables, pg_views, pg_collation, pg_inherits,
//! pg_enum, pg_range, pg_extension, pg_trigger, pg_policy, pg_proc,
//! pg_tablespace, pg_sequence, pg_sequences (and sequences in pg_class, relkind
//! `S`, from `engine::sequence`), pg_depend (empty), pg_settings (a few),
//! pg_statistic_ext, pg_publication, pg_partitioned_table, pg_rewrite,
//! pg_foreign_table, pg_cursors, pg_stat_activity; information_schema
//! schemata, tables, columns, views, table_constraints,
//! key_column_usage, referential_constraints, sequences.
//! The session's TEMP tables and views (`engine::temp`) are relations of
//! the namespace `pg_temp` in pg_class, pg_attribute and pg_tables, while
//! it has some, and so are their indexes (pg_class, pg_index, pg_indexes),
//! keys and foreign keys (pg_constraint) and defaults (pg_attrdef), with
//! OIDs of their own (`pg_oid` of `pg_temp.<name>`). CHECK constraints
//! The node's `sys` views and tables ([`publish_sys_relations`]) are
//! relations of the namespace `sys` in pg_namespace, pg_class and
//! pg_attribute, not visible (`pg_table_is_visible`), so psql's
//! `\d sys.dm_exec_requests` describes them and nothing that lists the
//! user's tables shows them. CHECK constraints
//! are read from each table's `CREATE TABLE` text
//! (`availdb_check_constraints`), a TEMP table's too. Limits: expression
//! indexes are not listed;
//! comments (`obj_description`) are always NULL. Roles: the built-in
//! `availdb` and the cluster's roles ([`publish_roles`]); pg_auth_members
//! is empty (roles are not members of roles).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::types::{Value, ValueRef};
use rusqlite::Connection;

use crate::sql::types::ValueType;

/// The roles of the cluster ([`crate::auth`]) as pg_roles lists them after
/// the built-in `availdb`: a JSON array of `{name, login, admin}`, set by
/// [`publish_roles`] whenever the cluster's state changes (on a node in no
/// cluster: whenever its own roles do, [`crate::auth::local`]). One per process,
/// as the roles are the node's, whatever the database.
static ROLES: std::sync::RwLock<String> = std::sync::RwLock::new(String::new());

/// Sets the roles pg_roles, pg_authid and pg_user list (never a password
/// or verifier: `rolpassword` shows `********`).
pub fn publish_roles<'a>(roles: impl IntoIterator<Item = &'a crate::auth::RoleRecord>) {
    let rows: Vec<serde_json::Value> = roles
        .into_iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name,
                "login": r.login,
                "admin": r.privileges.contains(&crate::auth::Privilege::Admin),
                "connlimit": r.connection_limit.map_or(-1, i64::from),
            })
        })
        .collect();
    let text = serde_json::Value::from(rows).to_string();
    let mut published = ROLES.write().unwrap_or_else(|e| e.into_inner());
    if *published != text {
        *published = text;
    }
}

/// The node's `sys` views and tables as pg_namespace, pg_class and
/// pg_attribute list them (namespace `sys`, [`SYS_NAMESPACE_OID`]): a JSON
/// array of `{name, kind: "r" | "v", columns: [[name, declared type], …]}`,
/// set once by [`publish_sys_relations`] (the replication layer owns the
/// views). Their rows are never in the database: a statement naming
/// `sys.` runs elsewhere (`ag::views`); these rows only let tools such as
/// psql's `\d sys.*` describe them.
static SYS_RELATIONS: std::sync::OnceLock<(String, std::collections::HashSet<i64>)> =
    std::sync::OnceLock::new();

/// The OID of the namespace `sys`.
pub const SYS_NAMESPACE_OID: i64 = 12_100;

/// A relation of the `sys` namespace, for [`publish_sys_relations`].
#[derive(Debug, Clone)]
pub struct SysRelation {
    /// Its name, without `sys.`.
    pub name: String,
    /// A view (else a table).
    pub view: bool,
    /// Its columns: (name, declared type).
    pub columns: Vec<(String, String)>,
}

/// Publishes the `sys` relations the catalog lists, which `relations`
/// reads; only the first call reads them (they are fixed for the life of
/// the process). They are not visible (`pg_table_is_visible` is false for
/// them: `sys` is not on the search path), so tools listing the user's
/// tables do not see them.
pub fn publish_sys_relations(relations: impl FnOnce() -> Vec<SysRelation>) {
    SYS_RELATIONS.get_or_init(|| {
        let relations = relations();
        let rows: Vec<serde_json::Value> = relations
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name,
                    "kind": if r.view { "v" } else { "r" },
                    "columns": r.columns.iter().map(|(n, t)| serde_json::json!([n, t])).collect::<Vec<_>>(),
                })
            })
            .collect();
        let oids = relations
            .iter()
            .map(|r| object_oid("r", &format!("sys.{}", r.name)))
            .collect();
        (serde_json::Value::from(rows).to_string(), oids)
    });
}

/// The PostgreSQL types the catalog lists: (oid, name, length, category,
/// array oid, element oid).
const TYPES: &[(u32, &str, i32, &str, u32, u32)] = &[
    (16, "bool", 1, "B", 1000, 0),
    (17, "bytea", -1, "U", 1001, 0),
    (18, "char", 1, "S", 1002, 0),
    (19, "name", 64, "S", 1003, 0),
    (20, "int8", 8, "N", 1016, 0),
    (21, "int2", 2, "N", 1005, 0),
    (23, "int4", 4, "N", 1007, 0),
    (24, "regproc", 4, "N", 1008, 0),
    (25, "text", -1, "S", 1009, 0),
    (26, "oid", 4, "N", 1028, 0),
    (114, "json", -1, "U", 199, 0),
    (700, "float4", 4, "N", 1021, 0),
    (701, "float8", 8, "N", 1022, 0),
    (1042, "bpchar", -1, "S", 1014, 0),
    (1043, "varchar", -1, "S", 1015, 0),
    (1082, "date", 4, "D", 1182, 0),
    (1083, "time", 8, "D", 1183, 0),
    (1114, "timestamp", 8, "D", 1115, 0),
    (1184, "timestamptz", 8, "D", 1185, 0),
    (1186, "interval", 16, "T", 1187, 0),
    (1700, "numeric", -1, "N", 1231, 0),
    (2205, "regclass", 4, "N", 2210, 0),
    (2206, "regtype", 4, "N", 2211, 0),
    (2950, "uuid", 16, "U", 2951, 0),
    (3802, "jsonb", -1, "U", 3807, 0),
    (1000, "_bool", -1, "A", 0, 16),
    (1001, "_bytea", -1, "A", 0, 17),
    (1005, "_int2", -1, "A", 0, 21),
    (1007, "_int4", -1, "A", 0, 23),
    (1009, "_text", -1, "A", 0, 25),
    (1015, "_varchar", -1, "A", 0, 1043),
    (1016, "_int8", -1, "A", 0, 20),
    (1021, "_float4", -1, "A", 0, 700),
    (1022, "_float8", -1, "A", 0, 701),
    (1028, "_oid", -1, "A", 0, 26),
    (1115, "_timestamp", -1, "A", 0, 1114),
    (1182, "_date", -1, "A", 0, 1082),
    (1185, "_timestamptz", -1, "A", 0, 1184),
    (1231, "_numeric", -1, "A", 0, 1700),
    (2951, "_uuid", -1, "A", 0, 2950),
    (3807, "_jsonb", -1, "A", 0, 3802),
    (199, "_json", -1, "A", 0, 114),
];

/// `format_type`'s name for a type OID.
fn type_display_name(oid: u32) -> Option<&'static str> {
    Some(match oid {
        16 => "boolean",
        17 => "bytea",
        18 => "\"char\"",
        19 => "name",
        20 => "bigint",
        21 => "smallint",
        23 => "integer",
        24 => "regproc",
        25 => "text",
        26 => "oid",
        114 => "json",
        700 => "real",
        701 => "double precision",
        1042 => "character",
        1043 => "character varying",
        1082 => "date",
        1083 => "time without time zone",
        1114 => "timestamp without time zone",
        1184 => "timestamp with time zone",
        1186 => "interval",
        1700 => "numeric",
        2205 => "regclass",
        2206 => "regtype",
        2950 => "uuid",
        3802 => "jsonb",
        _ => {
            let (_, _, _, _, _, elem) = TYPES.iter().find(|t| t.0 == oid)?;
            return type_display_name(*elem).map(|n| {
                let s: &'static str = Box::leak(format!("{n}[]").into_boxed_str());
                s
            });
        }
    })
}

/// `format_type(oid, typmod)`.
pub fn format_type(oid: u32, typmod: Option<i64>) -> Option<String> {
    let name = type_display_name(oid)?;
    let typmod = typmod.filter(|m| *m >= 0);
    Some(match (oid, typmod) {
        (1042 | 1043, Some(m)) => format!("{name}({})", m - 4),
        (1700, Some(m)) => {
            let m = m - 4;
            format!("numeric({},{})", (m >> 16) & 0xffff, m & 0xffff)
        }
        _ => name.to_string(),
    })
}

/// The type OID a declared column type maps to.
fn decltype_oid(decl: &str) -> u32 {
    let lower = decl.trim().to_ascii_lowercase();
    if lower.ends_with("[]") || lower.ends_with(" array") {
        return 1009;
    }
    ValueType::from_decltype(decl).oid()
}

/// PostgreSQL's type modifier for a declared type: `varchar(n)` is n + 4,
/// `numeric(p, s)` is `(p << 16 | s) + 4`; -1 without one.
fn decltype_typmod(decl: &str) -> i64 {
    let Some(open) = decl.find('(') else {
        return -1;
    };
    let inner = decl[open + 1..].trim_end_matches(|c: char| c != ')');
    let inner = inner.trim_end_matches(')');
    let nums: Vec<i64> = inner
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    match (ValueType::from_decltype(decl), nums.as_slice()) {
        (ValueType::Varchar | ValueType::Bpchar, [n]) => n + 4,
        (ValueType::Numeric, [p]) => (p << 16) + 4,
        (ValueType::Numeric, [p, s]) => ((p << 16) | s) + 4,
        _ => -1,
    }
}

fn type_len(oid: u32) -> i32 {
    TYPES.iter().find(|t| t.0 == oid).map_or(-1, |t| t.2)
}

/// A stable OID for a relation (or other object) of `kind` named `name`:
/// FNV-1a, above PostgreSQL's reserved range and below 2^31.
pub fn object_oid(kind: &str, name: &str) -> i64 {
    let mut h: u32 = 0x811c_9dc5;
    for b in kind.bytes().chain([0u8]).chain(name.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    16_384 + i64::from(h % (0x7fff_ffff - 16_384))
}

/// `'public."Name"'` → `Name`; `'name'` → `name`.
fn unqualify(name: &str) -> String {
    let last = name.rsplit('.').next().unwrap_or(name).trim();
    match last.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(q) => q.replace("\"\"", "\""),
        None => last.to_ascii_lowercase(),
    }
}

/// PostgreSQL's `quote_ident`: quoted only when needed.
fn quote_ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// A one-dimensional array literal (`{a,"b c",NULL}`) as a JSON array of
/// strings; None when `text` is not one (a JSON array stays as it is).
fn array_literal_to_json(text: &str) -> Option<String> {
    let inner = text.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut items = Vec::new();
    let mut chars = inner.chars().peekable();
    while chars.peek().is_some() {
        let mut item = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => item.extend(chars.next()),
                    '"' => break,
                    c => item.push(c),
                }
            }
            while chars.peek().is_some_and(|c| *c != ',') {
                chars.next();
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                item.push(c);
            }
        }
        chars.next();
        let item = if quoted {
            item
        } else {
            item.trim().to_string()
        };
        items.push(if !quoted && item.eq_ignore_ascii_case("null") {
            serde_json::Value::Null
        } else {
            serde_json::Value::String(item)
        });
    }
    Some(serde_json::Value::Array(items).to_string())
}

fn text_arg(ctx: &Context<'_>, i: usize) -> Option<String> {
    if i >= ctx.len() {
        return None;
    }
    match ctx.get_raw(i) {
        ValueRef::Null => None,
        ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Integer(n) => Some(n.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Blob(b) => Some(String::from_utf8_lossy(b).into_owned()),
    }
}

/// JSON array text → its elements as text (None for JSON null).
fn json_elements(text: &str) -> Option<Vec<Option<String>>> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let serde_json::Value::Array(items) = v else {
        return None;
    };
    Some(
        items
            .into_iter()
            .map(|i| match i {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some(s),
                other => Some(other.to_string()),
            })
            .collect(),
    )
}

thread_local! {
    static REGEXES: std::cell::RefCell<HashMap<(String, bool), Option<regex::Regex>>> =
        std::cell::RefCell::new(HashMap::new());
}

fn regex_match(text: &str, pattern: &str, insensitive: bool) -> Option<bool> {
    REGEXES.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.len() > 256 {
            cache.clear();
        }
        let re = cache
            .entry((pattern.to_string(), insensitive))
            .or_insert_with(|| {
                regex::RegexBuilder::new(pattern)
                    .case_insensitive(insensitive)
                    .build()
                    .ok()
            });
        re.as_ref().map(|re| re.is_match(text))
    })
}

fn now_text() -> String {
    crate::sql::temporal::format_timestamptz(chrono::Utc::now())
}

/// The session's TEMP tables, views and indexes (`engine::temp`: schema
/// `pg_temp`, attached only to the connections of a session that has
/// some) as a JSON array of `{name, type, tbl, sql}`; `[]` where it is
/// not attached.
fn temp_relations(conn: &Connection) -> rusqlite::Result<String> {
    let attached = conn
        .prepare_cached("SELECT count(*) FROM pragma_database_list WHERE name = ?1")?
        .query_row([super::temp::SCHEMA], |r| r.get::<_, i64>(0))?
        > 0;
    if !attached {
        return Ok("[]".into());
    }
    conn.prepare_cached(
        "SELECT json_group_array(json_object('name', name, 'type', type, 'tbl', tbl_name, 'sql', sql)) \
         FROM pg_temp.sqlite_schema WHERE (type IN ('table', 'view') \
         AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\') OR type = 'index'",
    )?
    .query_row([], |r| r.get(0))
}

/// The CHECK constraints of the table whose definition is `create_sql`,
/// as a JSON array of `{name, def, col}` (`col`: the column of a column
/// constraint, its number from 1; 0 for a table constraint), named as
/// PostgreSQL names unnamed ones: `<table>_<column>_check` for a column's,
/// `<table>_check` for the table's (then `…_check1`, `…_check2`).
fn check_constraints(table: &str, create_sql: &str) -> String {
    use sqlparser::ast::{ColumnOption, Statement, TableConstraint};
    let Ok(mut statements) =
        sqlparser::parser::Parser::parse_sql(&sqlparser::dialect::SQLiteDialect {}, create_sql)
    else {
        return "[]".into();
    };
    let Some(Statement::CreateTable(ct)) = statements.pop() else {
        return "[]".into();
    };
    let mut checks = Vec::new();
    let mut taken = std::collections::HashSet::new();
    let mut unique = |base: String| {
        let mut name = base.clone();
        let mut n = 0;
        while !taken.insert(name.clone()) {
            n += 1;
            name = format!("{base}{n}");
        }
        name
    };
    for (i, col) in ct.columns.iter().enumerate() {
        for option in &col.options {
            if let ColumnOption::Check(check) = &option.option {
                let name = option
                    .name
                    .as_ref()
                    .or(check.name.as_ref())
                    .map(|n| n.value.clone())
                    .unwrap_or_else(|| unique(format!("{table}_{}_check", col.name.value)));
                checks.push(serde_json::json!({"name": name, "def": format!("CHECK ({})", check.expr), "col": i + 1}));
            }
        }
    }
    for constraint in &ct.constraints {
        if let TableConstraint::Check(check) = constraint {
            let name = check
                .name
                .as_ref()
                .map(|n| n.value.clone())
                .unwrap_or_else(|| unique(format!("{table}_check")));
            checks.push(serde_json::json!({"name": name, "def": format!("CHECK ({})", check.expr), "col": 0}));
        }
    }
    serde_json::Value::Array(checks).to_string()
}

/// Registers availdb's PostgreSQL functions and creates the catalog views
/// on a new connection. `dir` is the directory of the database files
/// (`pg_database` lists it); `pid` is what `pg_backend_pid()` answers.
pub fn install(conn: &Connection, dir: &Path, pid: i64) -> rusqlite::Result<()> {
    let det = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    let volatile = FunctionFlags::SQLITE_UTF8;
    conn.create_scalar_function("availdb_temp_relations", 0, volatile, |ctx| {
        // SAFETY: the reference is used on this thread, inside this call.
        let conn = unsafe { ctx.get_connection()? };
        temp_relations(&conn)
    })?;
    conn.create_scalar_function("availdb_check_constraints", 2, det, |ctx| {
        let table = text_arg(ctx, 0).unwrap_or_default();
        let sql = text_arg(ctx, 1).unwrap_or_default();
        Ok(check_constraints(&table, &sql))
    })?;
    conn.create_scalar_function("pg_oid", 2, det, |ctx| {
        let kind = text_arg(ctx, 0).unwrap_or_default();
        let name = text_arg(ctx, 1).unwrap_or_default();
        Ok(object_oid(&kind, &name))
    })?;
    conn.create_scalar_function("pg_regex", 3, det, |ctx| {
        let (Some(text), Some(pattern)) = (text_arg(ctx, 0), text_arg(ctx, 1)) else {
            return Ok(None);
        };
        let insensitive = ctx.get::<i64>(2).unwrap_or(0) != 0;
        regex_match(&text, &pattern, insensitive)
            .map(Some)
            .ok_or_else(|| {
                rusqlite::Error::UserFunctionError(
                    format!("invalid regular expression: {pattern}").into(),
                )
            })
    })?;
    conn.create_scalar_function("format_type", 2, det, |ctx| {
        let oid = ctx.get::<Option<i64>>(0)?;
        let typmod = ctx.get::<Option<i64>>(1).ok().flatten();
        Ok(oid.and_then(|o| format_type(o as u32, typmod)))
    })?;
    conn.create_scalar_function("pg_decltype_oid", 1, det, |ctx| {
        Ok(decltype_oid(&text_arg(ctx, 0).unwrap_or_default()))
    })?;
    conn.create_scalar_function("pg_decltype_typmod", 1, det, |ctx| {
        Ok(decltype_typmod(&text_arg(ctx, 0).unwrap_or_default()))
    })?;
    conn.create_scalar_function("pg_type_len", 1, det, |ctx| {
        Ok(type_len(ctx.get::<i64>(0).unwrap_or(0) as u32))
    })?;
    conn.create_scalar_function("pg_unqualify", 1, det, |ctx| {
        Ok(text_arg(ctx, 0).map(|n| unqualify(&n)))
    })?;
    conn.create_scalar_function("quote_ident", 1, det, |ctx| {
        Ok(text_arg(ctx, 0).map(|n| quote_ident(&n)))
    })?;
    // PostgreSQL's string literal of a value (asyncpg builds COPY queries
    // with it); quote_nullable answers 'NULL' for NULL.
    let literal = |ctx: &Context<'_>| {
        text_arg(ctx, 0).map(|v| {
            let body = v.replace('\'', "''");
            if body.contains('\\') {
                format!("E'{}'", body.replace('\\', "\\\\"))
            } else {
                format!("'{body}'")
            }
        })
    };
    conn.create_scalar_function("quote_literal", 1, det, move |ctx| Ok(literal(ctx)))?;
    conn.create_scalar_function("quote_nullable", 1, det, move |ctx| {
        Ok(literal(ctx).unwrap_or_else(|| "NULL".into()))
    })?;
    conn.create_scalar_function("pg_to_array", 1, det, |ctx| {
        Ok(text_arg(ctx, 0).map(|t| array_literal_to_json(&t).unwrap_or(t)))
    })?;
    conn.create_scalar_function("now", 0, volatile, |_| Ok(now_text()))?;
    conn.create_scalar_function("pg_to_bool", 1, det, |ctx| {
        Ok(match ctx.get_raw(0) {
            ValueRef::Null => None,
            ValueRef::Integer(i) => Some(i != 0),
            ValueRef::Real(f) => Some(f != 0.0),
            _ => match text_arg(ctx, 0)
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
                .as_str()
            {
                "t" | "true" | "1" | "on" | "yes" | "y" => Some(true),
                "f" | "false" | "0" | "off" | "no" | "n" => Some(false),
                other => {
                    return Err(rusqlite::Error::UserFunctionError(
                        format!("invalid input syntax for type boolean: \"{other}\"").into(),
                    ))
                }
            },
        })
    })?;
    let temporal = |name: &'static str, f: fn(&str) -> Option<String>| {
        conn.create_scalar_function(name, 1, det, move |ctx| {
            Ok(text_arg(ctx, 0).map(|t| f(&t).unwrap_or(t)))
        })
    };
    temporal("pg_to_date", |t| {
        crate::sql::temporal::parse_date(t).map(|d| d.format("%Y-%m-%d").to_string())
    })?;
    temporal("pg_to_time", |t| {
        crate::sql::temporal::parse_timestamp(t)
            .map(|(ts, _)| ts.time())
            .or_else(|| crate::sql::temporal::parse_time(t))
            .map(crate::sql::temporal::format_time)
    })?;
    temporal("pg_to_timestamp", |t| {
        crate::sql::temporal::parse_timestamp(t)
            .map(|(ts, _)| crate::sql::temporal::format_timestamp(ts))
    })?;
    temporal("pg_to_timestamptz", |t| {
        crate::sql::temporal::parse_timestamptz(t).map(crate::sql::temporal::format_timestamptz)
    })?;
    temporal("pg_to_uuid", |t| {
        uuid::Uuid::parse_str(t.trim())
            .ok()
            .map(|u| u.hyphenated().to_string())
    })?;
    conn.create_scalar_function("pg_to_regclass", 1, det, |ctx| {
        Ok(match ctx.get_raw(0) {
            ValueRef::Null => None,
            ValueRef::Integer(i) => Some(i),
            _ => text_arg(ctx, 0).map(|n| match n.trim().parse::<i64>() {
                Ok(i) => i,
                Err(_) => object_oid("r", &unqualify(&n)),
            }),
        })
    })?;
    conn.create_scalar_function("pg_to_regtype", 1, det, |ctx| {
        Ok(match ctx.get_raw(0) {
            ValueRef::Null => None,
            ValueRef::Integer(i) => Some(i),
            _ => text_arg(ctx, 0).and_then(|n| {
                let n = unqualify(&n);
                TYPES
                    .iter()
                    .find(|t| t.1 == n || type_display_name(t.0) == Some(n.as_str()))
                    .map(|t| i64::from(t.0))
                    .or_else(|| {
                        let ty = ValueType::from_decltype(&n);
                        (ty != ValueType::Numeric || n.starts_with("numeric"))
                            .then(|| i64::from(ty.oid()))
                    })
            }),
        })
    })?;
    conn.create_scalar_function("array_to_string", -1, det, |ctx| {
        let Some(array) = text_arg(ctx, 0) else {
            return Ok(None);
        };
        let sep = text_arg(ctx, 1).unwrap_or_default();
        let null = text_arg(ctx, 2);
        let Some(items) = json_elements(&array) else {
            return Ok(Some(array));
        };
        Ok(Some(
            items
                .into_iter()
                .filter_map(|i| i.or_else(|| null.clone()))
                .collect::<Vec<_>>()
                .join(&sep),
        ))
    })?;
    conn.create_scalar_function("array_length", 2, det, |ctx| {
        Ok(text_arg(ctx, 0)
            .and_then(|a| json_elements(&a))
            .and_then(|v| (!v.is_empty()).then_some(v.len() as i64)))
    })?;
    conn.create_scalar_function("cardinality", 1, det, |ctx| {
        Ok(text_arg(ctx, 0)
            .and_then(|a| json_elements(&a))
            .map(|v| v.len() as i64))
    })?;
    let constant = |name: &'static str, n_args: i32, value: Value| {
        conn.create_scalar_function(name, n_args, det, move |_| Ok(value.clone()))
    };
    constant("pg_get_userbyid", 1, Value::Text("availdb".into()))?;
    constant("pg_encoding_to_char", 1, Value::Text("UTF8".into()))?;
    conn.create_scalar_function("pg_table_is_visible", 1, det, |ctx| {
        let oid = ctx.get::<Option<i64>>(0).ok().flatten();
        let sys = SYS_RELATIONS
            .get()
            .is_some_and(|(_, oids)| oid.is_some_and(|o| oids.contains(&o)));
        Ok(!sys)
    })?;
    constant("pg_type_is_visible", 1, Value::Integer(1))?;
    constant("pg_function_is_visible", 1, Value::Integer(1))?;
    constant("pg_collation_is_visible", 1, Value::Integer(1))?;
    constant("pg_is_other_temp_schema", 1, Value::Integer(0))?;
    constant("current_schema", 0, Value::Text("public".into()))?;
    constant(
        "current_schemas",
        1,
        Value::Text("[\"pg_catalog\",\"public\"]".into()),
    )?;
    constant("obj_description", -1, Value::Null)?;
    constant("col_description", 2, Value::Null)?;
    constant("shobj_description", 2, Value::Null)?;
    constant("pg_get_serial_sequence", 2, Value::Null)?;
    constant("pg_database_size", 1, Value::Integer(0))?;
    constant("pg_relation_size", -1, Value::Integer(0))?;
    constant("pg_total_relation_size", 1, Value::Integer(0))?;
    constant("pg_table_size", 1, Value::Integer(0))?;
    constant("pg_indexes_size", 1, Value::Integer(0))?;
    constant("txid_current", 0, Value::Integer(1))?;
    constant("pg_get_statisticsobjdef_columns", 1, Value::Null)?;
    constant("pg_relation_is_publishable", 1, Value::Integer(0))?;
    constant("pg_get_triggerdef", -1, Value::Null)?;
    constant("pg_get_ruledef", -1, Value::Null)?;
    constant("pg_get_viewdef", -1, Value::Null)?;
    constant("pg_get_partkeydef", 1, Value::Null)?;
    constant("pg_get_partition_constraintdef", 1, Value::Null)?;
    constant("pg_get_function_arguments", 1, Value::Null)?;
    constant("pg_get_function_result", 1, Value::Null)?;
    constant("pg_get_function_identity_arguments", 1, Value::Null)?;
    constant("pg_backend_pid", 0, Value::Integer(pid))?;
    for privilege in [
        "has_table_privilege",
        "has_schema_privilege",
        "has_database_privilege",
        "has_column_privilege",
        "has_sequence_privilege",
        "has_function_privilege",
        "pg_has_role",
    ] {
        constant(privilege, -1, Value::Integer(1))?;
    }
    conn.create_scalar_function("pg_get_expr", -1, det, |ctx| Ok(text_arg(ctx, 0)))?;
    // Marks a JSON array as a PostgreSQL array for the client (typing
    // announces `text[]`); the value is unchanged.
    conn.create_scalar_function("pg_array", 1, det, |ctx| Ok(text_arg(ctx, 0)))?;
    // No partitions: a relation's only ancestor is itself.
    conn.create_scalar_function("pg_partition_ancestors", 1, det, |ctx| {
        Ok(ctx.get::<Option<i64>>(0).ok().flatten())
    })?;
    conn.create_scalar_function("set_config", 3, volatile, |ctx| Ok(text_arg(ctx, 1)))?;
    conn.create_scalar_function("current_setting", -1, det, |ctx| {
        let name = text_arg(ctx, 0).unwrap_or_default().to_ascii_lowercase();
        Ok(crate::frontend::Settings::default().show(&name))
    })?;
    conn.create_scalar_function("pg_size_pretty", 1, det, |ctx| {
        let n = ctx.get::<Option<i64>>(0)?.unwrap_or(0);
        Ok(if n < 10 * 1024 {
            format!("{n} bytes")
        } else if n < 10 * 1024 * 1024 {
            format!("{} kB", n / 1024)
        } else if n < 10 * 1024 * 1024 * 1024 {
            format!("{} MB", n / (1024 * 1024))
        } else {
            format!("{} GB", n / (1024 * 1024 * 1024))
        })
    })?;
    conn.create_scalar_function("pg_availdb_sys", 0, det, |_| {
        Ok(SYS_RELATIONS
            .get()
            .map_or_else(|| "[]".to_string(), |(json, _)| json.clone()))
    })?;
    conn.create_scalar_function("pg_availdb_roles", 0, volatile, |_| {
        let roles = ROLES.read().unwrap_or_else(|e| e.into_inner());
        Ok(if roles.is_empty() {
            "[]".to_string()
        } else {
            roles.clone()
        })
    })?;
    let dir: PathBuf = dir.to_path_buf();
    conn.create_scalar_function("pg_availdb_databases", 0, volatile, move |_| {
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|f| f.strip_suffix(".db"))
                            .map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        Ok(serde_json::Value::from(names).to_string())
    })?;
    rusqlite::vtab::series::load_module(conn)?;
    conn.execute_batch(&views_sql())
}

fn types_values() -> String {
    TYPES
        .iter()
        .map(|(oid, name, len, cat, array, elem)| {
            let typtype = "b";
            format!("({oid}, '{name}', {len}, '{typtype}', '{cat}', {array}, {elem})")
        })
        .collect::<Vec<_>>()
        .join(",\n")
}

/// The OID of the namespace `pg_temp` (the session's TEMP objects), listed
/// while the session has some.
const TEMP_NAMESPACE_OID: i64 = 12_000;

/// The catalog, as TEMP views (`CREATE TEMP VIEW IF NOT EXISTS`).
fn views_sql() -> String {
    // Not SQLite's own tables, nor availdb's sequences (`engine::sequence`).
    let user = |name: &str| {
        format!(r"{name} NOT LIKE 'sqlite\_%' ESCAPE '\' AND {name} <> 'availdb_sequences'")
    };
    let (user_table, t_user_table) = (user("name"), user("t.name"));
    format!(
        r#"
CREATE TEMP VIEW IF NOT EXISTS availdb_tables AS
  SELECT name, type, sql FROM main.sqlite_schema
  WHERE type IN ('table', 'view') AND {user_table};
CREATE TEMP VIEW IF NOT EXISTS availdb_temp_objects AS
  SELECT r.value ->> 'name' AS name, r.value ->> 'type' AS type, r.value ->> 'tbl' AS tbl,
    r.value ->> 'sql' AS sql
  FROM json_each(availdb_temp_relations()) r;
CREATE TEMP VIEW IF NOT EXISTS availdb_temp_tables AS
  SELECT name, type, CAST(pg_oid('r', 'pg_temp.' || name) AS INTEGER) AS oid, sql
  FROM availdb_temp_objects WHERE type IN ('table', 'view');
CREATE TEMP VIEW IF NOT EXISTS availdb_seqs AS
  SELECT s.value ->> 'name' AS name, s.value ->> 'last_value' AS last_value,
    s.value ->> 'start_value' AS start_value, s.value ->> 'increment' AS increment,
    s.value ->> 'min_value' AS min_value, s.value ->> 'max_value' AS max_value,
    s.value ->> 'cycle' AS cycle, s.value ->> 'is_called' AS is_called
  FROM json_each(availdb_sequence_list()) s;
CREATE TEMP VIEW IF NOT EXISTS availdb_rowid_pk AS
  SELECT t.name AS tbl, p.name AS col, p.cid AS cid, CAST(pg_oid('r', t.name) AS INTEGER) AS reloid, 2200 AS nsp
  FROM main.sqlite_schema t, pragma_table_info(t.name) p
  WHERE t.type = 'table' AND {t_user_table} AND p.pk = 1 AND upper(p.type) = 'INTEGER'
    AND (SELECT count(*) FROM pragma_table_info(t.name) q WHERE q.pk > 0) = 1
  UNION ALL
  SELECT t.name, p.name, p.cid, t.oid, {temp_oid}
  FROM availdb_temp_tables t, pragma_table_info(t.name, 'pg_temp') p
  WHERE t.type = 'table' AND p.pk = 1 AND upper(p.type) = 'INTEGER'
    AND (SELECT count(*) FROM pragma_table_info(t.name, 'pg_temp') q WHERE q.pk > 0) = 1;
CREATE TEMP VIEW IF NOT EXISTS availdb_index_list AS
  SELECT t.name AS tbl,
    CASE WHEN il.origin = 'pk' THEN t.name || '_pkey'
         WHEN il.name LIKE 'sqlite\_autoindex\_%' ESCAPE '\'
           THEN t.name || '_' || (SELECT group_concat(ii.name, '_') FROM pragma_index_info(il.name) ii) || '_key'
         ELSE il.name END AS name,
    il."unique" AS isunique,
    (il.origin = 'pk' OR il.name = t.name || '_pkey') AS isprimary,
    il.origin AS origin, il.partial AS partial,
    (SELECT json_group_array(ii.cid + 1) FROM pragma_index_info(il.name) ii) AS indkey,
    (SELECT json_group_array(ii.name) FROM pragma_index_info(il.name) ii) AS colnames,
    (SELECT group_concat(quote_ident(ii.name), ', ') FROM pragma_index_info(il.name) ii) AS cols,
    (SELECT s.sql FROM main.sqlite_schema s WHERE s.type = 'index' AND s.name = il.name) AS sql,
    CAST(pg_oid('r', t.name) AS INTEGER) AS reloid, 2200 AS nsp
  FROM main.sqlite_schema t, pragma_index_list(t.name) il
  WHERE t.type = 'table' AND {t_user_table}
  UNION ALL
  SELECT t.name,
    CASE WHEN il.origin = 'pk' THEN t.name || '_pkey'
         WHEN il.name LIKE 'sqlite\_autoindex\_%' ESCAPE '\'
           THEN t.name || '_' || (SELECT group_concat(ii.name, '_') FROM pragma_index_info(il.name, 'pg_temp') ii) || '_key'
         ELSE il.name END,
    il."unique", (il.origin = 'pk' OR il.name = t.name || '_pkey'), il.origin, il.partial,
    (SELECT json_group_array(ii.cid + 1) FROM pragma_index_info(il.name, 'pg_temp') ii),
    (SELECT json_group_array(ii.name) FROM pragma_index_info(il.name, 'pg_temp') ii),
    (SELECT group_concat(quote_ident(ii.name), ', ') FROM pragma_index_info(il.name, 'pg_temp') ii),
    (SELECT x.sql FROM availdb_temp_objects x WHERE x.type = 'index' AND x.name = il.name),
    t.oid, {temp_oid}
  FROM availdb_temp_tables t, pragma_index_list(t.name, 'pg_temp') il
  WHERE t.type = 'table'
  UNION ALL
  SELECT tbl, tbl || '_pkey', 1, 1, 'pk', 0, json_array(cid + 1), json_array(col), quote_ident(col), NULL, reloid, nsp
  FROM availdb_rowid_pk;
CREATE TEMP VIEW IF NOT EXISTS availdb_indexes AS
  SELECT *, CAST(pg_oid('i', CASE WHEN nsp = 2200 THEN name ELSE 'pg_temp.' || name END) AS INTEGER) AS oid,
    CASE WHEN nsp = 2200 THEN 'public' ELSE 'pg_temp' END AS schema
  FROM availdb_index_list;
CREATE TEMP VIEW IF NOT EXISTS availdb_fks AS
  SELECT t.name AS tbl, f.id AS id, f."table" AS ref,
    json_group_array((SELECT p.cid + 1 FROM pragma_table_info(t.name) p WHERE p.name = f."from")) AS conkey,
    json_group_array(coalesce((SELECT p.cid + 1 FROM pragma_table_info(f."table") p WHERE p.name = f."to"),
                              (SELECT p.cid + 1 FROM pragma_table_info(f."table") p WHERE p.pk = 1))) AS confkey,
    group_concat(quote_ident(f."from"), ', ') AS cols,
    group_concat(quote_ident(coalesce(f."to", (SELECT p.name FROM pragma_table_info(f."table") p WHERE p.pk = 1))), ', ') AS refcols,
    group_concat(f."from", '_') AS colnames,
    min(f.on_update) AS on_update, min(f.on_delete) AS on_delete,
    CAST(pg_oid('r', t.name) AS INTEGER) AS reloid, CAST(pg_oid('r', f."table") AS INTEGER) AS refoid, 2200 AS nsp
  FROM availdb_tables t, pragma_foreign_key_list(t.name) f
  GROUP BY t.name, f.id
  UNION ALL
  SELECT t.name, f.id, f."table",
    json_group_array((SELECT p.cid + 1 FROM pragma_table_info(t.name, 'pg_temp') p WHERE p.name = f."from")),
    json_group_array(coalesce((SELECT p.cid + 1 FROM pragma_table_info(f."table", 'pg_temp') p WHERE p.name = f."to"),
                              (SELECT p.cid + 1 FROM pragma_table_info(f."table", 'pg_temp') p WHERE p.pk = 1))),
    group_concat(quote_ident(f."from"), ', '),
    group_concat(quote_ident(coalesce(f."to", (SELECT p.name FROM pragma_table_info(f."table", 'pg_temp') p WHERE p.pk = 1))), ', '),
    group_concat(f."from", '_'),
    min(f.on_update), min(f.on_delete),
    t.oid, CAST(pg_oid('r', 'pg_temp.' || f."table") AS INTEGER), {temp_oid}
  FROM availdb_temp_tables t, pragma_foreign_key_list(t.name, 'pg_temp') f
  WHERE t.type = 'table'
  GROUP BY t.name, f.id;
CREATE TEMP VIEW IF NOT EXISTS availdb_sys_relations(oid, name, kind, columns) AS
  SELECT CAST(pg_oid('r', 'sys.' || json_extract(j.value, '$.name')) AS INTEGER),
    json_extract(j.value, '$.name'), json_extract(j.value, '$.kind'), json_extract(j.value, '$.columns')
  FROM json_each(pg_availdb_sys()) j;
CREATE TEMP VIEW IF NOT EXISTS pg_namespace AS
  SELECT 11 AS oid, 'pg_catalog' AS nspname, 10 AS nspowner, NULL AS nspacl
  UNION ALL SELECT 2200, 'public', 10, NULL
  UNION ALL SELECT 13000, 'information_schema', 10, NULL
  UNION ALL SELECT {sys_oid}, 'sys', 10, NULL WHERE EXISTS (SELECT 1 FROM availdb_sys_relations)
  UNION ALL SELECT {temp_oid}, 'pg_temp', 10, NULL WHERE EXISTS (SELECT 1 FROM availdb_temp_tables);
CREATE TEMP VIEW IF NOT EXISTS pg_class AS
  SELECT CAST(pg_oid('r', name) AS INTEGER) AS oid, name AS relname, 2200 AS relnamespace,
    CAST(pg_oid('t', name) AS INTEGER) AS reltype, 0 AS reloftype, 10 AS relowner,
    CASE type WHEN 'table' THEN 2 ELSE 0 END AS relam, CAST(pg_oid('r', name) AS INTEGER) AS relfilenode,
    0 AS reltablespace, 0 AS relpages, -1 AS reltuples, 0 AS relallvisible, 0 AS reltoastrelid,
    EXISTS (SELECT 1 FROM availdb_indexes i WHERE i.tbl = t.name AND i.nsp = 2200) AS relhasindex,
    0 AS relisshared, 'p' AS relpersistence,
    CASE type WHEN 'table' THEN 'r' ELSE 'v' END AS relkind,
    (SELECT count(*) FROM pragma_table_info(t.name)) AS relnatts,
    CASE type WHEN 'table' THEN json_array_length(availdb_check_constraints(t.name, t.sql)) ELSE 0 END AS relchecks, 0 AS relhasrules,
    (EXISTS (SELECT 1 FROM main.sqlite_schema tr WHERE tr.type = 'trigger' AND tr.tbl_name = t.name)
      OR EXISTS (SELECT 1 FROM availdb_fks f WHERE f.nsp = 2200 AND (f.tbl = t.name OR f.ref = t.name))) AS relhastriggers,
    0 AS relhassubclass, 0 AS relrowsecurity, 0 AS relforcerowsecurity, 1 AS relispopulated,
    'd' AS relreplident, 0 AS relispartition, 0 AS relrewrite, 0 AS relfrozenxid, 0 AS relminmxid,
    NULL AS relacl, NULL AS reloptions, NULL AS relpartbound
  FROM availdb_tables t
  UNION ALL
  SELECT oid, name, nsp, 0, 0, 10, 403, oid, 0, 0, -1, 0, 0,
    0, 0, CASE WHEN nsp = 2200 THEN 'p' ELSE 't' END, 'i', json_array_length(indkey), 0, 0, 0, 0, 0, 0, 1, 'n', 0, 0, 0, 0, NULL, NULL, NULL
  FROM availdb_indexes
  UNION ALL
  SELECT CAST(pg_oid('S', name) AS INTEGER), name, 2200, 0, 0, 10, 0, CAST(pg_oid('S', name) AS INTEGER), 0, 1, 1, 0, 0,
    0, 0, 'p', 'S', 3, 0, 0, 0, 0, 0, 0, 1, 'n', 0, 0, 0, 0, NULL, NULL, NULL
  FROM availdb_seqs
  UNION ALL
  SELECT oid, name, {temp_oid}, 0, 0, 10, CASE type WHEN 'table' THEN 2 ELSE 0 END, oid, 0, 0, -1, 0, 0,
    EXISTS (SELECT 1 FROM availdb_indexes i WHERE i.reloid = t.oid), 0, 't', CASE type WHEN 'table' THEN 'r' ELSE 'v' END,
    (SELECT count(*) FROM pragma_table_info(t.name, 'pg_temp')),
    CASE type WHEN 'table' THEN json_array_length(availdb_check_constraints(t.name, t.sql)) ELSE 0 END, 0,
    EXISTS (SELECT 1 FROM availdb_fks f WHERE f.nsp <> 2200 AND (f.reloid = t.oid OR f.refoid = t.oid)),
    0, 0, 0, 1, 'd', 0, 0, 0, 0, NULL, NULL, NULL
  FROM availdb_temp_tables t
  UNION ALL
  SELECT oid, name, {sys_oid}, 0, 0, 10, CASE kind WHEN 'r' THEN 2 ELSE 0 END, oid, 0, 0, -1, 0, 0,
    0, 0, 'p', kind, json_array_length(columns), 0, 0, 0, 0, 0, 0, 1, 'n', 0, 0, 0, 0, NULL, NULL, NULL
  FROM availdb_sys_relations;
CREATE TEMP VIEW IF NOT EXISTS pg_attribute AS
  SELECT CAST(pg_oid('r', t.name) AS INTEGER) AS attrelid, p.name AS attname, pg_decltype_oid(p.type) AS atttypid,
    -1 AS attstattarget, pg_type_len(pg_decltype_oid(p.type)) AS attlen, p.cid + 1 AS attnum,
    CASE WHEN pg_decltype_oid(p.type) = 1009 THEN 1 ELSE 0 END AS attndims, -1 AS attcacheoff,
    pg_decltype_typmod(p.type) AS atttypmod, 0 AS attbyval,
    CASE WHEN pg_type_len(pg_decltype_oid(p.type)) < 0 THEN 'x' ELSE 'p' END AS attstorage, 'i' AS attalign,
    (p."notnull" OR p.pk > 0) AS attnotnull,
    (p.dflt_value IS NOT NULL OR EXISTS (SELECT 1 FROM availdb_rowid_pk r WHERE r.tbl = t.name AND r.nsp = 2200 AND r.col = p.name)) AS atthasdef,
    0 AS atthasmissing, '' AS attidentity,
    CASE WHEN p.hidden IN (2, 3) THEN 's' ELSE '' END AS attgenerated,
    0 AS attisdropped, 1 AS attislocal, 0 AS attinhcount, 0 AS attcollation,
    NULL AS attacl, NULL AS attoptions, NULL AS attfdwoptions, NULL AS attmissingval, '' AS attcompression
  FROM availdb_tables t, pragma_table_xinfo(t.name) p
  UNION ALL
  SELECT t.oid, p.name, pg_decltype_oid(p.type), -1, pg_type_len(pg_decltype_oid(p.type)), p.cid + 1,
    CASE WHEN pg_decltype_oid(p.type) = 1009 THEN 1 ELSE 0 END, -1, pg_decltype_typmod(p.type), 0,
    CASE WHEN pg_type_len(pg_decltype_oid(p.type)) < 0 THEN 'x' ELSE 'p' END, 'i', (p."notnull" OR p.pk > 0),
    (p.dflt_value IS NOT NULL OR EXISTS (SELECT 1 FROM availdb_rowid_pk r WHERE r.reloid = t.oid AND r.col = p.name)), 0, '', CASE WHEN p.hidden IN (2, 3) THEN 's' ELSE '' END, 0, 1, 0, 0,
    NULL, NULL, NULL, NULL, ''
  FROM availdb_temp_tables t, pragma_table_xinfo(t.name, 'pg_temp') p
  UNION ALL
  SELECT i.oid, j.value, 0, -1, -1, j.key + 1, 0, -1, -1, 0, 'p', 'i', 0, 0, 0, '', '',
    0, 1, 0, 0, NULL, NULL, NULL, NULL, ''
  FROM availdb_indexes i, json_each(i.colnames) j
  UNION ALL
  SELECT s.oid, json_extract(c.value, '$[0]'), pg_decltype_oid(json_extract(c.value, '$[1]')), -1,
    pg_type_len(pg_decltype_oid(json_extract(c.value, '$[1]'))), c.key + 1, 0, -1,
    pg_decltype_typmod(json_extract(c.value, '$[1]')), 0,
    CASE WHEN pg_type_len(pg_decltype_oid(json_extract(c.value, '$[1]'))) < 0 THEN 'x' ELSE 'p' END, 'i',
    0, 0, 0, '', '', 0, 1, 0, 0, NULL, NULL, NULL, NULL, ''
  FROM availdb_sys_relations s, json_each(s.columns) c;
CREATE TEMP VIEW IF NOT EXISTS pg_attrdef AS
  SELECT CAST(pg_oid('d', t.name || '.' || p.name) AS INTEGER) AS oid, CAST(pg_oid('r', t.name) AS INTEGER) AS adrelid, p.cid + 1 AS adnum,
    CASE WHEN r.col IS NOT NULL THEN 'nextval(''' || t.name || '_' || p.name || '_seq''::regclass)'
         WHEN p.dflt_value GLOB 'nextval(''*'')'
           THEN replace(p.dflt_value, ''')', '''::regclass)')
         WHEN p.dflt_value GLOB '(nextval(''*''))'
           THEN 'nextval(' || substr(p.dflt_value, 10, length(p.dflt_value) - 11) || '::regclass)'
         ELSE p.dflt_value END AS adbin
  FROM availdb_tables t JOIN pragma_table_info(t.name) p
    LEFT JOIN availdb_rowid_pk r ON r.tbl = t.name AND r.nsp = 2200 AND r.col = p.name
  WHERE p.dflt_value IS NOT NULL OR r.col IS NOT NULL
  UNION ALL
  SELECT CAST(pg_oid('d', 'pg_temp.' || t.name || '.' || p.name) AS INTEGER), t.oid, p.cid + 1,
    CASE WHEN r.col IS NOT NULL THEN 'nextval(''' || t.name || '_' || p.name || '_seq''::regclass)'
         ELSE p.dflt_value END
  FROM availdb_temp_tables t JOIN pragma_table_info(t.name, 'pg_temp') p
    LEFT JOIN availdb_rowid_pk r ON r.reloid = t.oid AND r.col = p.name
  WHERE t.type = 'table' AND (p.dflt_value IS NOT NULL OR r.col IS NOT NULL);
CREATE TEMP VIEW IF NOT EXISTS availdb_types(oid, typname, typlen, typtype, typcategory, typarray, typelem) AS
  VALUES {types};
CREATE TEMP VIEW IF NOT EXISTS pg_type AS
  SELECT oid, typname, 11 AS typnamespace, 10 AS typowner, typlen, typlen > 0 AND typlen <= 8 AS typbyval,
    typtype, typcategory, 0 AS typispreferred, 1 AS typisdefined, ',' AS typdelim, 0 AS typrelid,
    0 AS typsubscript, typelem, typarray, typname || 'in' AS typinput, typname || 'out' AS typoutput,
    typname || 'recv' AS typreceive, typname || 'send' AS typsend, 0 AS typmodin, 0 AS typmodout,
    0 AS typanalyze, 'i' AS typalign, 'p' AS typstorage, 0 AS typnotnull, 0 AS typbasetype,
    -1 AS typtypmod, 0 AS typndims, CASE WHEN typcategory = 'S' THEN 100 ELSE 0 END AS typcollation,
    NULL AS typdefaultbin, NULL AS typdefault, NULL AS typacl
  FROM availdb_types;
CREATE TEMP VIEW IF NOT EXISTS pg_index AS
  SELECT oid AS indexrelid, reloid AS indrelid,
    json_array_length(indkey) AS indnatts, json_array_length(indkey) AS indnkeyatts,
    isunique AS indisunique, 0 AS indnullsnotdistinct, isprimary AS indisprimary,
    0 AS indisexclusion, 1 AS indimmediate, 0 AS indisclustered, 1 AS indisvalid,
    0 AS indcheckxmin, 1 AS indisready, 1 AS indislive, 0 AS indisreplident,
    indkey, (SELECT json_group_array(0) FROM json_each(indkey)) AS indcollation,
    (SELECT json_group_array(0) FROM json_each(indkey)) AS indclass,
    (SELECT json_group_array(0) FROM json_each(indkey)) AS indoption, NULL AS indexprs,
    CASE WHEN partial THEN substr(sql, instr(upper(sql), ' WHERE ') + 7) END AS indpred
  FROM availdb_indexes;
CREATE TEMP VIEW IF NOT EXISTS pg_index_column AS
  SELECT i.oid AS indexrelid, j.key + 1 AS ord, j.value AS attname
  FROM availdb_indexes i, json_each(i.colnames) j;
CREATE TEMP VIEW IF NOT EXISTS pg_indexes AS
  SELECT schema AS schemaname, tbl AS tablename, name AS indexname, NULL AS tablespace,
    'CREATE ' || CASE WHEN isunique THEN 'UNIQUE ' ELSE '' END || 'INDEX ' || quote_ident(name)
      || ' ON ' || schema || '.' || quote_ident(tbl) || ' USING btree (' || coalesce(cols, '') || ')'
      || CASE WHEN partial THEN ' WHERE ' || substr(sql, instr(upper(sql), ' WHERE ') + 7) ELSE '' END AS indexdef,
    oid AS availdb_oid
  FROM availdb_indexes;
CREATE TEMP VIEW IF NOT EXISTS pg_constraint AS
  SELECT CAST(pg_oid('c', CASE WHEN nsp = 2200 THEN name ELSE 'pg_temp.' || name END) AS INTEGER) AS oid,
    name AS conname, nsp AS connamespace,
    CASE WHEN isprimary THEN 'p' ELSE 'u' END AS contype, 0 AS condeferrable, 0 AS condeferred,
    1 AS convalidated, reloid AS conrelid, 0 AS contypid, oid AS conindid,
    0 AS conparentid, 0 AS confrelid, ' ' AS confupdtype, ' ' AS confdeltype, ' ' AS confmatchtype,
    1 AS conislocal, 0 AS coninhcount, 1 AS connoinherit, indkey AS conkey, NULL AS confkey,
    NULL AS conpfeqop, NULL AS conppeqop, NULL AS conffeqop, NULL AS confdelsetcols, NULL AS conexclop,
    NULL AS conbin,
    CASE WHEN isprimary THEN 'PRIMARY KEY (' ELSE 'UNIQUE (' END || cols || ')' AS condef
  FROM availdb_indexes WHERE isprimary OR origin = 'u'
  UNION ALL
  SELECT CAST(pg_oid('f', CASE WHEN nsp = 2200 THEN '' ELSE 'pg_temp.' END || tbl || '.' || id) AS INTEGER),
    tbl || '_' || colnames || '_fkey', nsp, 'f', 0, 0, 1, reloid, 0, 0, 0, refoid,
    CASE on_update WHEN 'CASCADE' THEN 'c' WHEN 'SET NULL' THEN 'n' WHEN 'SET DEFAULT' THEN 'd' WHEN 'RESTRICT' THEN 'r' ELSE 'a' END,
    CASE on_delete WHEN 'CASCADE' THEN 'c' WHEN 'SET NULL' THEN 'n' WHEN 'SET DEFAULT' THEN 'd' WHEN 'RESTRICT' THEN 'r' ELSE 'a' END,
    's', 1, 0, 1, conkey, confkey, NULL, NULL, NULL, NULL, NULL, NULL,
    'FOREIGN KEY (' || cols || ') REFERENCES ' || quote_ident(ref) || '(' || refcols || ')'
      || CASE on_delete WHEN 'CASCADE' THEN ' ON DELETE CASCADE' WHEN 'SET NULL' THEN ' ON DELETE SET NULL' ELSE '' END
  FROM availdb_fks
  UNION ALL
  SELECT CAST(pg_oid('k', t.name || '.' || (k.value ->> 'name')) AS INTEGER), k.value ->> 'name', 2200, 'c', 0, 0, 1,
    CAST(pg_oid('r', t.name) AS INTEGER), 0, 0, 0, 0, ' ', ' ', ' ', 1, 0, 0,
    CASE WHEN (k.value ->> 'col') > 0 THEN json_array(k.value ->> 'col') ELSE '[]' END, NULL,
    NULL, NULL, NULL, NULL, NULL, k.value ->> 'def', k.value ->> 'def'
  FROM availdb_tables t, json_each(availdb_check_constraints(t.name, t.sql)) k
  WHERE t.type = 'table'
  UNION ALL
  SELECT CAST(pg_oid('k', 'pg_temp.' || t.name || '.' || (k.value ->> 'name')) AS INTEGER), k.value ->> 'name',
    {temp_oid}, 'c', 0, 0, 1, t.oid, 0, 0, 0, 0, ' ', ' ', ' ', 1, 0, 0,
    CASE WHEN (k.value ->> 'col') > 0 THEN json_array(k.value ->> 'col') ELSE '[]' END, NULL,
    NULL, NULL, NULL, NULL, NULL, k.value ->> 'def', k.value ->> 'def'
  FROM availdb_temp_tables t, json_each(availdb_check_constraints(t.name, t.sql)) k
  WHERE t.type = 'table';
CREATE TEMP VIEW IF NOT EXISTS pg_database AS
  SELECT CAST(pg_oid('b', j.value) AS INTEGER) AS oid, j.value AS datname, 10 AS datdba, 6 AS encoding,
    'c' AS datlocprovider, 0 AS datistemplate, 1 AS datallowconn, -1 AS datconnlimit,
    0 AS datfrozenxid, 0 AS datminmxid, 1663 AS dattablespace, 'C.UTF-8' AS datcollate,
    'C.UTF-8' AS datctype, NULL AS daticulocale, NULL AS daticurules, NULL AS datcollversion,
    NULL AS datacl
  FROM json_each(pg_availdb_databases()) j;
CREATE TEMP VIEW IF NOT EXISTS pg_roles AS
  SELECT 'availdb' AS rolname, 1 AS rolsuper, 1 AS rolinherit, 1 AS rolcreaterole, 1 AS rolcreatedb,
    1 AS rolcanlogin, 0 AS rolreplication, -1 AS rolconnlimit, '********' AS rolpassword,
    NULL AS rolvaliduntil, 1 AS rolbypassrls, NULL AS rolconfig, 10 AS oid
  UNION ALL
  SELECT json_extract(j.value, '$.name'), json_extract(j.value, '$.admin'), 1,
    json_extract(j.value, '$.admin'), json_extract(j.value, '$.admin'),
    json_extract(j.value, '$.login'), 0, json_extract(j.value, '$.connlimit'), '********', NULL, 0, NULL,
    CAST(pg_oid('o', json_extract(j.value, '$.name')) AS INTEGER)
  FROM json_each(pg_availdb_roles()) j;
CREATE TEMP VIEW IF NOT EXISTS pg_authid AS SELECT * FROM pg_roles;
CREATE TEMP VIEW IF NOT EXISTS pg_user AS
  SELECT 'availdb' AS usename, 10 AS usesysid, 1 AS usecreatedb, 1 AS usesuper, 0 AS userepl,
    1 AS usebypassrls, '********' AS passwd, NULL AS valuntil, NULL AS useconfig
  UNION ALL
  SELECT rolname, oid, rolcreatedb, rolsuper, 0, 0, '********', NULL, NULL
  FROM pg_roles WHERE rolcanlogin AND oid <> 10;
CREATE TEMP VIEW IF NOT EXISTS pg_auth_members AS
  SELECT 0 AS oid, 0 AS roleid, 0 AS member, 0 AS grantor, 0 AS admin_option,
    0 AS inherit_option, 0 AS set_option WHERE 0;
CREATE TEMP VIEW IF NOT EXISTS pg_am AS
  SELECT 2 AS oid, 'heap' AS amname, 'heap_tableam_handler' AS amhandler, 't' AS amtype
  UNION ALL SELECT 403, 'btree', 'bthandler', 'i';
CREATE TEMP VIEW IF NOT EXISTS pg_description AS
  SELECT 0 AS objoid, 0 AS classoid, 0 AS objsubid, '' AS description WHERE 0;
CREATE TEMP VIEW IF NOT EXISTS pg_shdescription AS
  SELECT 0 AS objoid, 0 AS classoid, '' AS description WHERE 0;
CREATE TEMP VIEW IF NOT EXISTS pg_tables AS
  SELECT 'public' AS schemaname, name AS tablename, 'availdb' AS tableowner, NULL AS tablespace,
    EXISTS (SELECT 1 FROM availdb_indexes i WHERE i.tbl = t.name AND i.nsp = 2200) AS hasindexes, 0 AS hasrules,
    EXISTS (SELECT 1 FROM main.sqlite_schema tr WHERE tr.type = 'trigger' AND tr.tbl_name = t.name) AS hastriggers,
    0 AS rowsecurity
  FROM availdb_tables t WHERE type = 'table'
  UNION ALL
  SELECT 'pg_temp', name, 'availdb', NULL, EXISTS (SELECT 1 FROM availdb_indexes i WHERE i.reloid = t.oid), 0, 0, 0
  FROM availdb_temp_tables t WHERE type = 'table';
CREATE TEMP VIEW IF NOT EXISTS pg_views AS
  SELECT 'public' AS schemaname, name AS viewname, 'availdb' AS viewowner, sql AS definition
  FROM availdb_tables WHERE type = 'view';
CREATE TEMP VIEW IF NOT EXISTS pg_collation AS
  SELECT 100 AS oid, 'default' AS collname, 11 AS collnamespace, 10 AS collowner, 'd' AS collprovider,
    1 AS collisdeterministic, -1 AS collencoding, NULL AS collcollate, NULL AS collctype
  UNION ALL SELECT 950, 'C', 11, 10, 'c', 1, -1, 'C', 'C';
CREATE TEMP VIEW IF NOT EXISTS pg_tablespace AS
  SELECT 1663 AS oid, 'pg_default' AS spcname, 10 AS spcowner, NULL AS spcacl, NULL AS spcoptions;
CREATE TEMP VIEW IF NOT EXISTS pg_inherits AS
  SELECT 0 AS inhrelid, 0 AS inhparent, 0 AS inhseqno, 0 AS inhdetachpending WHERE 0;
CREATE TEMP VIEW IF NOT EXISTS pg_enum AS
  SELECT 0 AS oid, 0 AS enumtypid, 0 AS enumsortorder, '' AS enumlabel WHERE 0;
CREATE TEMP VIEW IF NOT EXISTS pg_range AS
  SELECT 0 AS rngtypid, 0 AS rngsubtype, 0 AS rngmultitypid WHERE 0;
CREATE TEMP VIEW IF NOT EXISTS pg_extension AS
  SELECT 0 AS oid, '' AS extname, 10 AS extowner, 11 AS extnamespace, '' AS extversion WHERE 0;
CREATE TEMP VIEW IF NOT EXISTS pg_trigger AS
  SELECT 0 AS oid, 0 AS tgrelid, 0 AS tgparentid, '' AS tgname, 0 AS tgfoid, 0 AS tgtype,
    'O' AS tgenabled, 0 AS tgisinternal, 0 AS tgconstrrelid, 0 AS tgconstrindid, 0 AS tgconstraint WHERE 0;
CREATE TEMP VIEW IF NOT EXISTS pg_policy AS
  SELECT 0 AS oid, '' AS polname, 0 AS polrelid, 'r' AS polcmd, 1 AS polpermissive,
    '[]' AS polroles, NULL AS polqual, NULL AS polwithcheck WHERE 0;
CREATE TEMP VIEW IF NOT EXISTS pg_proc AS
  SELECT 0 AS oid, '' AS proname, 11 AS pronamespace, 0 AS prorettype, '' AS proargtypes, 'f' AS prokind,
    NULL AS proargnames, NULL AS proallargtypes, NULL AS proargmodes, 0 AS proretset,
    NULL AS proargdefaults, 12 AS prolang, '' AS prosrc, 0 AS proisagg, 0 AS proiswindow,
    10 AS proowner, 0 AS pronargs, 'v' AS provolatile, NULL AS proacl WHERE 0;
CREATE TEMP VIEW IF NOT EXISTS pg_sequence AS
  SELECT CAST(pg_oid('S', name) AS INTEGER) AS seqrelid, 20 AS seqtypid, start_value AS seqstart,
    increment AS seqincrement, max_value AS seqmax, min_value AS seqmin, 1 AS seqcache, cycle AS seqcycle
  FROM availdb_seqs;
CREATE TEMP VIEW IF NOT EXISTS pg_sequences AS
  SELECT 'public' AS schemaname, name AS sequencename, 'availdb' AS sequenceowner,
    'bigint' AS data_type, start_value, min_value, max_value, increment AS increment_by, cycle,
    1 AS cache_size, CASE WHEN is_called THEN last_value END AS last_value
  FROM availdb_seqs;
CREATE TEMP VIEW IF NOT EXISTS pg_statistic_ext AS
  SELECT 0 AS oid, 0 AS stxrelid, '' AS stxname, 2200 AS stxnamespace, '[]' AS stxkind,
    -1 AS stxstattarget, 10 AS stxowner, '' AS stxkeys, NULL AS stxexprs WHERE 0;
CREATE TEMP VIEW IF NOT EXISTS pg_publication AS
  SELECT 0 AS oid, '' AS pubname, 0 AS puballtables, 0 AS pubinsert, 0 AS pubupdate,
    0 AS pubdelete, 0 AS pubtruncate, 0 AS pubviaroot WHERE 0;
CREATE TEMP VIEW IF NOT EXISTS pg_publication_rel AS
  SELECT 0 AS oid, 0 AS prpubid, 0 AS prrelid, NULL AS prqual, NULL AS prattrs WHERE 0;
CREATE TEMP VIEW IF NOT EXISTS pg_publication_namespace AS
  SELECT 0 AS oid, 0 AS pnpubid, 0 AS pnnspid WHERE 0;
CREATE TEMP VIEW IF NOT EXISTS pg_partitioned_table AS
  SELECT 0 AS partrelid, '' AS partstrat WHERE 0;
CREATE TEMP VIEW IF NOT EXISTS pg_rewrite AS SELECT 0 AS oid, '' AS rulename, 0 AS ev_class WHERE 0;
CREATE TEMP VIEW IF NOT EXISTS pg_foreign_table AS SELECT 0 AS ftrelid, 0 AS ftserver WHERE 0;
CREATE TEMP VIEW IF NOT EXISTS pg_depend AS
  SELECT 0 AS classid, 0 AS objid, 0 AS objsubid, 0 AS refclassid, 0 AS refobjid,
    0 AS refobjsubid, '' AS deptype WHERE 0;
CREATE TEMP VIEW IF NOT EXISTS pg_opclass AS
  SELECT 0 AS oid, '' AS opcname, 403 AS opcmethod, 11 AS opcnamespace, 1 AS opcdefault WHERE 0;
CREATE TEMP VIEW IF NOT EXISTS pg_cursors AS SELECT '' AS name, '' AS statement WHERE 0;
CREATE TEMP VIEW IF NOT EXISTS pg_stat_activity AS
  SELECT current_database() AS datname, pg_backend_pid() AS pid, 'availdb' AS usename,
    'active' AS state, '' AS query;
CREATE TEMP VIEW IF NOT EXISTS pg_settings AS
  SELECT 'server_version' AS name, '{pg_version}' AS setting, NULL AS unit, 'Preset Options' AS category
  UNION ALL SELECT 'server_encoding', 'UTF8', NULL, 'Preset Options'
  UNION ALL SELECT 'max_identifier_length', '63', NULL, 'Preset Options'
  UNION ALL SELECT 'standard_conforming_strings', 'on', NULL, 'Version and Platform Compatibility';
CREATE TEMP VIEW IF NOT EXISTS "information_schema.schemata" AS
  SELECT current_database() AS catalog_name, nspname AS schema_name, 'availdb' AS schema_owner,
    NULL AS default_character_set_catalog, NULL AS default_character_set_schema,
    NULL AS default_character_set_name, NULL AS sql_path
  FROM pg_namespace;
CREATE TEMP VIEW IF NOT EXISTS "information_schema.tables" AS
  SELECT current_database() AS table_catalog, 'public' AS table_schema, name AS table_name,
    CASE type WHEN 'table' THEN 'BASE TABLE' ELSE 'VIEW' END AS table_type,
    NULL AS self_referencing_column_name, NULL AS reference_generation,
    NULL AS user_defined_type_catalog, NULL AS user_defined_type_schema, NULL AS user_defined_type_name,
    'YES' AS is_insertable_into, 'NO' AS is_typed, NULL AS commit_action
  FROM availdb_tables;
CREATE TEMP VIEW IF NOT EXISTS "information_schema.views" AS
  SELECT current_database() AS table_catalog, 'public' AS table_schema, name AS table_name,
    sql AS view_definition, 'NONE' AS check_option, 'NO' AS is_updatable, 'NO' AS is_insertable_into
  FROM availdb_tables WHERE type = 'view';
CREATE TEMP VIEW IF NOT EXISTS "information_schema.columns" AS
  SELECT current_database() AS table_catalog, 'public' AS table_schema, t.name AS table_name,
    a.attname AS column_name, a.attnum AS ordinal_position, d.adbin AS column_default,
    CASE WHEN a.attnotnull THEN 'NO' ELSE 'YES' END AS is_nullable,
    format_type(a.atttypid, NULL) AS data_type,
    CASE WHEN a.atttypid IN (1042, 1043) AND a.atttypmod > 0 THEN a.atttypmod - 4 END AS character_maximum_length,
    CASE WHEN a.atttypid = 1700 AND a.atttypmod > 0 THEN ((a.atttypmod - 4) >> 16) & 65535
         WHEN a.atttypid = 21 THEN 16 WHEN a.atttypid = 23 THEN 32 WHEN a.atttypid = 20 THEN 64
         WHEN a.atttypid = 700 THEN 24 WHEN a.atttypid = 701 THEN 53 END AS numeric_precision,
    CASE WHEN a.atttypid = 1700 AND a.atttypmod > 0 THEN (a.atttypmod - 4) & 65535
         WHEN a.atttypid IN (20, 21, 23) THEN 0 END AS numeric_scale,
    CASE WHEN a.atttypid IN (1082, 1083, 1114, 1184) THEN 6 END AS datetime_precision,
    (SELECT typname FROM pg_type ty WHERE ty.oid = a.atttypid) AS udt_name,
    'NO' AS is_identity, 'NEVER' AS is_generated, 'YES' AS is_updatable
  FROM availdb_tables t JOIN pg_attribute a ON a.attrelid = CAST(pg_oid('r', t.name) AS INTEGER)
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum;
CREATE TEMP VIEW IF NOT EXISTS "information_schema.table_constraints" AS
  SELECT current_database() AS constraint_catalog, 'public' AS constraint_schema, c.conname AS constraint_name,
    current_database() AS table_catalog, 'public' AS table_schema, cl.relname AS table_name,
    CASE c.contype WHEN 'p' THEN 'PRIMARY KEY' WHEN 'u' THEN 'UNIQUE' WHEN 'f' THEN 'FOREIGN KEY' ELSE 'CHECK' END AS constraint_type,
    'NO' AS is_deferrable, 'NO' AS initially_deferred, 'YES' AS enforced
  FROM pg_constraint c JOIN pg_class cl ON cl.oid = c.conrelid;
CREATE TEMP VIEW IF NOT EXISTS "information_schema.key_column_usage" AS
  SELECT current_database() AS constraint_catalog, 'public' AS constraint_schema, c.conname AS constraint_name,
    current_database() AS table_catalog, 'public' AS table_schema, cl.relname AS table_name,
    a.attname AS column_name, k.key + 1 AS ordinal_position,
    CASE WHEN c.contype = 'f' THEN k.key + 1 END AS position_in_unique_constraint
  FROM pg_constraint c JOIN pg_class cl ON cl.oid = c.conrelid, json_each(c.conkey) k
    JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.value;
CREATE TEMP VIEW IF NOT EXISTS "information_schema.referential_constraints" AS
  SELECT current_database() AS constraint_catalog, 'public' AS constraint_schema, c.conname AS constraint_name,
    current_database() AS unique_constraint_catalog, 'public' AS unique_constraint_schema,
    NULL AS unique_constraint_name, 'NONE' AS match_option,
    CASE c.confupdtype WHEN 'c' THEN 'CASCADE' WHEN 'n' THEN 'SET NULL' WHEN 'd' THEN 'SET DEFAULT' WHEN 'r' THEN 'RESTRICT' ELSE 'NO ACTION' END AS update_rule,
    CASE c.confdeltype WHEN 'c' THEN 'CASCADE' WHEN 'n' THEN 'SET NULL' WHEN 'd' THEN 'SET DEFAULT' WHEN 'r' THEN 'RESTRICT' ELSE 'NO ACTION' END AS delete_rule
  FROM pg_constraint c WHERE c.contype = 'f';
CREATE TEMP VIEW IF NOT EXISTS availdb_relnames(availdb_roid, availdb_rname) AS
  SELECT oid, relname FROM pg_class;
CREATE TEMP VIEW IF NOT EXISTS availdb_condefs(availdb_coid, availdb_cdef) AS
  SELECT oid, condef FROM pg_constraint;
CREATE TEMP VIEW IF NOT EXISTS availdb_indexdefs(availdb_ioid, availdb_idef) AS
  SELECT availdb_oid, indexdef FROM pg_indexes;
CREATE TEMP VIEW IF NOT EXISTS availdb_indexcols(availdb_icoid, availdb_icord, availdb_icname) AS
  SELECT indexrelid, ord, attname FROM pg_index_column;
CREATE TEMP VIEW IF NOT EXISTS "information_schema.sequences" AS
  SELECT current_database() AS sequence_catalog, 'public' AS sequence_schema, name AS sequence_name,
    'bigint' AS data_type, 64 AS numeric_precision, 2 AS numeric_precision_radix, 0 AS numeric_scale,
    CAST(start_value AS TEXT) AS start_value, CAST(min_value AS TEXT) AS minimum_value,
    CAST(max_value AS TEXT) AS maximum_value, CAST(increment AS TEXT) AS increment,
    CASE WHEN cycle THEN 'YES' ELSE 'NO' END AS cycle_option
  FROM availdb_seqs;
"#,
        types = types_values(),
        temp_oid = TEMP_NAMESPACE_OID,
        sys_oid = SYS_NAMESPACE_OID,
        pg_version = super::PG_VERSION,
    )
}

/// Columns of the catalog views that are not text, for announcing them:
/// booleans (`t`/`f` to psql) and integers.
pub fn column_type(table: &str, column: &str) -> Option<ValueType> {
    let t = table.to_ascii_lowercase();
    if !(t.starts_with("pg_") || t.starts_with("information_schema.") || t.starts_with("availdb_"))
    {
        return None;
    }
    let c = column.to_ascii_lowercase();
    if t.starts_with("availdb_") {
        return Some(match c.as_str() {
            "availdb_roid" | "availdb_coid" | "availdb_ioid" | "availdb_icoid" => ValueType::Oid,
            "availdb_icord" => ValueType::Int2,
            _ => ValueType::Text,
        });
    }
    if t == "pg_sequence" || t == "pg_sequences" {
        match c.as_str() {
            "seqstart" | "seqincrement" | "seqmax" | "seqmin" | "seqcache" | "start_value"
            | "min_value" | "max_value" | "increment_by" | "cache_size" | "last_value" => {
                return Some(ValueType::Int8)
            }
            "seqcycle" | "cycle" => return Some(ValueType::Bool),
            "schemaname" | "sequencename" | "sequenceowner" | "data_type" => {
                return Some(ValueType::Text)
            }
            _ => {}
        }
    }
    const BOOLS: &[&str] = &[
        "proretset",
        "proisagg",
        "proiswindow",
        "relhasindex",
        "relisshared",
        "relhasrules",
        "relhastriggers",
        "relhassubclass",
        "relrowsecurity",
        "relforcerowsecurity",
        "relispopulated",
        "relispartition",
        "attnotnull",
        "atthasdef",
        "atthasmissing",
        "attisdropped",
        "attislocal",
        "attbyval",
        "indisunique",
        "indisprimary",
        "indisexclusion",
        "indimmediate",
        "indisclustered",
        "indisvalid",
        "indcheckxmin",
        "indisready",
        "indislive",
        "indisreplident",
        "indnullsnotdistinct",
        "condeferrable",
        "condeferred",
        "convalidated",
        "conislocal",
        "connoinherit",
        "typbyval",
        "typisdefined",
        "typnotnull",
        "typispreferred",
        "datistemplate",
        "datallowconn",
        "rolsuper",
        "rolinherit",
        "rolcreaterole",
        "rolcreatedb",
        "rolcanlogin",
        "rolreplication",
        "rolbypassrls",
        "usecreatedb",
        "usesuper",
        "userepl",
        "usebypassrls",
        "hasindexes",
        "hasrules",
        "hastriggers",
        "rowsecurity",
        "tgisinternal",
        "admin_option",
        "inhdetachpending",
        "collisdeterministic",
        "inherit_option",
        "set_option",
    ];
    const TEXTS: &[&str] = &[
        "prosrc",
        "proargnames",
        "proallargtypes",
        "proargmodes",
        "proargdefaults",
        "provolatile",
        "proacl",
        "relname",
        "relkind",
        "relpersistence",
        "relreplident",
        "attname",
        "attstorage",
        "attalign",
        "attidentity",
        "attgenerated",
        "attcompression",
        "adbin",
        "typname",
        "typtype",
        "typcategory",
        "typdelim",
        "typinput",
        "typoutput",
        "typreceive",
        "typsend",
        "typalign",
        "typstorage",
        "nspname",
        "conname",
        "contype",
        "confupdtype",
        "confdeltype",
        "confmatchtype",
        "condef",
        "datname",
        "datlocprovider",
        "datcollate",
        "datctype",
        "rolname",
        "rolpassword",
        "usename",
        "passwd",
        "amname",
        "amhandler",
        "amtype",
        "indexdef",
        "schemaname",
        "tablename",
        "indexname",
        "viewname",
        "definition",
        "tableowner",
        "viewowner",
        "description",
        "collname",
        "collprovider",
        "spcname",
        "conkey",
        "confkey",
        "indkey",
        "indoption",
        "indpred",
        "indexprs",
        "prokind",
        "proname",
        "tgname",
        "tgenabled",
        "name",
        "setting",
        "category",
        "state",
        "query",
        "usename",
        "attmissingval",
        "reloptions",
        "relacl",
        "attacl",
    ];
    if BOOLS.contains(&c.as_str()) {
        return Some(ValueType::Bool);
    }
    if matches!(
        c.as_str(),
        "indkey" | "indoption" | "indclass" | "indcollation"
    ) {
        return Some(ValueType::Int2Vector);
    }
    if matches!(c.as_str(), "conkey" | "confkey") {
        return Some(ValueType::TextArray);
    }
    if t.starts_with("information_schema.") {
        return match c.as_str() {
            "ordinal_position"
            | "character_maximum_length"
            | "numeric_precision"
            | "numeric_scale"
            | "datetime_precision"
            | "position_in_unique_constraint" => Some(ValueType::Int4),
            _ => Some(ValueType::Text),
        };
    }
    if TEXTS.contains(&c.as_str()) {
        return Some(ValueType::Text);
    }
    if c == "oid"
        || c.ends_with("oid")
        || c.ends_with("relid")
        || c.ends_with("namespace")
        || c.ends_with("owner")
        || c == "reltype"
        || c == "relam"
        || c.ends_with("typid")
        || c == "typelem"
        || c == "typarray"
        || c == "typrelid"
        || c == "typbasetype"
        || c == "typcollation"
        || c == "attcollation"
        || c == "reltablespace"
        || c == "dattablespace"
        || c == "datdba"
        || c == "conindid"
        || c == "usesysid"
    {
        return Some(ValueType::Oid);
    }
    if matches!(
        c.as_str(),
        "attnum"
            | "attlen"
            | "typlen"
            | "indnatts"
            | "indnkeyatts"
            | "relnatts"
            | "relchecks"
            | "ord"
    ) {
        return Some(ValueType::Int2);
    }
    Some(ValueType::Int4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_type_spells_postgres_names_with_modifiers() {
        assert_eq!(format_type(23, None).as_deref(), Some("integer"));
        assert_eq!(
            format_type(1043, Some(44)).as_deref(),
            Some("character varying(40)")
        );
        assert_eq!(
            format_type(1700, Some(((10 << 16) | 2) + 4)).as_deref(),
            Some("numeric(10,2)")
        );
        assert_eq!(format_type(1009, None).as_deref(), Some("text[]"));
        assert_eq!(decltype_typmod("varchar(40)"), 44);
        assert_eq!(decltype_typmod("numeric(10,2)"), ((10 << 16) | 2) + 4);
        assert_eq!(decltype_typmod("text"), -1);
    }

    #[test]
    fn catalog_views_describe_tables_indexes_and_keys() {
        let c = Connection::open_in_memory().unwrap();
        c.create_scalar_function("current_database", 0, FunctionFlags::SQLITE_UTF8, |_| {
            Ok("t".to_string())
        })
        .unwrap();
        install(&c, Path::new("/nonexistent"), 7).unwrap();
        // The catalog lists sequences through the sequence functions.
        crate::engine::sequence::install(&c, &Default::default()).unwrap();
        c.execute_batch(
            "CREATE TABLE p (id INTEGER PRIMARY KEY, code varchar(10) UNIQUE NOT NULL);
             CREATE TABLE k (id INTEGER PRIMARY KEY, p_id INTEGER REFERENCES p(id), at timestamp with time zone);
             CREATE INDEX k_at ON k (at);",
        )
        .unwrap();
        let rows = |sql: &str| -> Vec<String> {
            let mut st = c.prepare(sql).unwrap();
            st.query_map([], |r| r.get::<_, String>(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        assert_eq!(
            rows(&format!("SELECT relname || ':' || relkind FROM pg_class WHERE relnamespace <> {SYS_NAMESPACE_OID} ORDER BY relname")),
            [
                "k:r",
                "k_at:i",
                "k_pkey:i",
                "p:r",
                "p_code_key:i",
                "p_pkey:i"
            ]
        );
        assert_eq!(
            rows("SELECT attname || ':' || format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = pg_oid('r', 'k') ORDER BY attnum"),
            ["id:integer", "p_id:integer", "at:timestamp with time zone"]
        );
        assert_eq!(
            rows("SELECT conname || ' ' || contype || ' ' || condef FROM pg_constraint ORDER BY conname"),
            [
                "k_p_id_fkey f FOREIGN KEY (p_id) REFERENCES p(id)",
                "k_pkey p PRIMARY KEY (id)",
                "p_code_key u UNIQUE (code)",
                "p_pkey p PRIMARY KEY (id)"
            ]
        );
        assert_eq!(
            rows("SELECT indexdef FROM pg_indexes WHERE indexname = 'k_at'"),
            ["CREATE INDEX k_at ON public.k USING btree (at)"]
        );
        assert_eq!(
            rows("SELECT table_name FROM \"information_schema.tables\" ORDER BY 1"),
            ["k", "p"]
        );

        // CHECK constraints, named as PostgreSQL names them.
        c.execute_batch(
            "CREATE TABLE ck (a int CHECK (a > 0), b int CONSTRAINT b_small CHECK (b < 10), CHECK (a < b), CHECK (a <> 5))",
        )
        .unwrap();
        assert_eq!(
            rows("SELECT conname || ' ' || condef || ' ' || conkey FROM pg_constraint WHERE conrelid = pg_oid('r', 'ck') AND contype = 'c' ORDER BY conname"),
            [
                "b_small CHECK (b < 10) [2]",
                "ck_a_check CHECK (a > 0) [1]",
                "ck_check CHECK (a < b) []",
                "ck_check1 CHECK (a <> 5) []"
            ]
        );
        assert_eq!(
            rows("SELECT CAST(relchecks AS TEXT) FROM pg_class WHERE relname = 'ck'"),
            ["4"]
        );
        c.execute_batch("DROP TABLE ck").unwrap();

        // A session's TEMP table: its indexes, keys, foreign key and
        // defaults are listed like a permanent table's, in `pg_temp`.
        c.execute_batch(
            "ATTACH DATABASE ':memory:' AS pg_temp;
             CREATE TABLE pg_temp.tt (id INTEGER PRIMARY KEY AUTOINCREMENT, code text UNIQUE, n int DEFAULT 5 CHECK (n > 0), up int REFERENCES tt (id), CHECK (n < up));
             CREATE INDEX pg_temp.tt_n ON tt (n);",
        )
        .unwrap();
        let temp = format!(
            "SELECT oid FROM pg_class WHERE relname = 'tt' AND relnamespace = {TEMP_NAMESPACE_OID}"
        );
        assert_eq!(
            rows(&format!("SELECT c.relname || ':' || c.relkind || ':' || c.relpersistence FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = ({temp}) ORDER BY 1")),
            ["tt_code_key:i:t", "tt_n:i:t", "tt_pkey:i:t"]
        );
        assert_eq!(
            rows(&format!("SELECT conname || ' ' || contype || ' ' || condef FROM pg_constraint WHERE conrelid = ({temp}) ORDER BY conname")),
            [
                "tt_check c CHECK (n < up)",
                "tt_code_key u UNIQUE (code)",
                "tt_n_check c CHECK (n > 0)",
                "tt_pkey p PRIMARY KEY (id)",
                "tt_up_fkey f FOREIGN KEY (up) REFERENCES tt(id)"
            ]
        );
        assert_eq!(
            rows(&format!("SELECT CAST(relchecks AS TEXT) || ' ' || CAST(connamespace AS TEXT) FROM pg_class JOIN pg_constraint ON conrelid = pg_class.oid WHERE pg_class.oid = ({temp}) AND conname = 'tt_n_check'")),
            [format!("2 {TEMP_NAMESPACE_OID}")]
        );
        assert_eq!(
            rows(&format!("SELECT adnum || ' ' || adbin FROM pg_attrdef WHERE adrelid = ({temp}) ORDER BY adnum")),
            ["1 nextval('tt_id_seq'::regclass)", "3 5"]
        );
        assert_eq!(
            rows("SELECT indexdef FROM pg_indexes WHERE indexname = 'tt_n'"),
            ["CREATE INDEX tt_n ON pg_temp.tt USING btree (n)"]
        );
        assert_eq!(
            rows(&format!("SELECT CAST((confrelid = ({temp}) AND relhasindex) AS TEXT) FROM pg_constraint JOIN pg_class ON pg_class.oid = conrelid WHERE contype = 'f' AND conrelid = ({temp})")),
            ["1"]
        );
        // The permanent tables' entries are as they were.
        assert_eq!(
            rows("SELECT indexdef FROM pg_indexes WHERE indexname = 'k_at'"),
            ["CREATE INDEX k_at ON public.k USING btree (at)"]
        );
    }
}
