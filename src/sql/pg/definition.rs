//! Table changes SQLite's ALTER TABLE cannot make, done by editing the
//! table's definition (its `CREATE TABLE` text in `sqlite_schema`): adding
//! a FOREIGN KEY or a CHECK, and `ALTER COLUMN … SET/DROP NOT NULL`,
//! `SET/DROP DEFAULT`, `TYPE [USING expr]`, as migration tools emit them.
//! SQLite documents this way for changes that leave the stored rows as
//! they are ("Making Other Kinds Of Table Schema Changes");
//! `engine::Conn::edit_table_definition` makes sure the rows stay where
//! they are (same columns in the same order, same keys, same rowid) and
//! the session checks the rows already there ([`Edit::check`]).
//!
//! A TYPE change is the one edit that touches the rows: once the
//! definition says the new type, every row's value is set again — to the
//! USING expression, or to itself when the storage affinity changed, which
//! SQLite applies as it stores it ([`rewrites`],
//! `engine::Conn::rewrite_columns`) — in the same transaction, with the
//! table's indexes kept up to date by SQLite and its triggers set aside.
//! That is what SQLite's 12-step rebuild (new table, copy, drop, rename)
//! would give here, without its DROP of the old table, which with foreign
//! keys on (they cannot be turned off inside a transaction, and
//! migrations run in one) would fire the ON DELETE actions of the tables
//! that reference it. A value that does not convert to an integer or
//! real type is refused (22P02), and text to bytea needs USING (42804),
//! as in PostgreSQL. Pure: text in, text out.

use sqlparser::ast::{ColumnOption, ColumnOptionDef, DataType, Ident, ObjectName, ObjectNamePart};
use sqlparser::ast::{Expr, Statement};
use sqlparser::dialect::SQLiteDialect;
use sqlparser::parser::Parser;

/// One change of a table's definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// A table constraint (a FOREIGN KEY), as SQLite reads it.
    AddConstraint(String),
    /// `ADD [CONSTRAINT n] CHECK (expr) [NOT VALID]`: SQLite checks it on
    /// every later write, and the rows already there must satisfy it when
    /// it is added (23514). NOT VALID, which in PostgreSQL leaves them
    /// unchecked, is refused (0A000) when some row violates it: SQLite's
    /// integrity check, which availdb runs on backups and page repairs,
    /// would report that row as corruption.
    AddCheck {
        /// The table constraint, as SQLite reads it.
        constraint: String,
        /// Its expression, as SQLite reads it.
        expr: String,
        /// Written NOT VALID.
        not_valid: bool,
    },
    /// `ALTER COLUMN c DROP NOT NULL`.
    DropNotNull(String),
    /// `ALTER COLUMN c SET NOT NULL`.
    SetNotNull(String),
    /// `ALTER COLUMN c SET DEFAULT expr` (the expression as SQLite reads it).
    SetDefault(String, String),
    /// `ALTER COLUMN c DROP DEFAULT`.
    DropDefault(String),
    /// `ALTER COLUMN c TYPE t` (the declared type as availdb keeps it).
    SetType(String, String),
    /// `ALTER COLUMN c TYPE t USING expr`: after the type changes, every
    /// row's `c` is set to `expr` (as SQLite reads it), in the same
    /// transaction (`engine::Conn::rewrite_columns`).
    Rewrite(String, String),
}

impl Edit {
    /// True when [`Edit::check`] runs before the definition changes: SQLite
    /// answers `c IS NULL` with false, unread, for a NOT NULL column.
    pub fn checked_before(&self) -> bool {
        matches!(self, Edit::SetNotNull(_))
    }

    /// A query counting the rows of `table` the change would leave
    /// invalid (must be 0), with the SQLSTATE and message to refuse with.
    pub fn check(&self, table: &str) -> Option<(String, &'static str, String)> {
        let quoted = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        match self {
            Edit::AddConstraint(_) => Some((
                format!("SELECT count(*) FROM pragma_foreign_key_check({})", literal(table)),
                "23503",
                format!("cannot add the foreign key to table \"{table}\": rows of it reference no row (PRAGMA foreign_key_check lists them)"),
            )),
            Edit::AddCheck {
                constraint,
                expr,
                not_valid,
            } => Some((
                // A CHECK fails only when its expression is false, not NULL.
                format!("SELECT count(*) FROM {} WHERE NOT ({expr})", quoted(table)),
                if *not_valid { "0A000" } else { "23514" },
                if *not_valid {
                    format!("not supported in availdb: a NOT VALID check constraint ({constraint}) that rows of relation \"{table}\" already violate; update or delete those rows first (SELECT … WHERE NOT ({expr}) lists them)")
                } else {
                    format!("check constraint {constraint} of relation \"{table}\" is violated by some row; update or delete those rows first (SELECT … WHERE NOT ({expr}) lists them)")
                },
            )),
            Edit::SetType(c, ty) if matches!(affinity(ty), 'i' | 'r') => Some((
                // SQLite keeps a text that does not read as a number as it
                // is; PostgreSQL refuses the conversion.
                format!("SELECT count(*) FROM {} WHERE typeof({}) = 'text'", quoted(table), quoted(c)),
                "22P02",
                format!("column \"{c}\" of relation \"{table}\" has values that are not of type {ty}; give ALTER COLUMN … TYPE {ty} USING an expression that converts them, or fix those rows first"),
            )),
            Edit::SetNotNull(c) => Some((
                format!("SELECT count(*) FROM {} WHERE {} IS NULL", quoted(table), quoted(c)),
                "23502",
                format!("column \"{c}\" of relation \"{table}\" contains null values"),
            )),
            _ => None,
        }
    }
}

/// SQLite's column affinity of a declared type, as its letter (section
/// 3.1 of <https://sqlite.org/datatype3.html>): `i`nteger, `t`ext,
/// `b`lob, `r`eal, `n`umeric.
pub fn affinity(decltype: &str) -> char {
    let t = decltype.to_ascii_uppercase();
    if t.contains("INT") {
        'i'
    } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
        't'
    } else if t.contains("BLOB") || t.is_empty() {
        'b'
    } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
        'r'
    } else {
        'n'
    }
}

/// The `(column, expression)` pairs to rewrite every row with once the
/// definition changed (`engine::Conn::rewrite_columns`): each USING
/// expression, and each column whose storage affinity changed without one
/// (`changed`, from `engine::Conn::edit_table_definition`), set to itself
/// so that its values take the new affinity. A change to `bytea` (or
/// SQLite's BLOB) without USING is refused, as PostgreSQL refuses it
/// (42804): a text would keep its characters, or turn into a number.
pub fn rewrites(
    edits: &[Edit],
    changed: &[(String, char)],
) -> Result<Vec<(String, String)>, (String, String)> {
    let mut out: Vec<(String, String)> = edits
        .iter()
        .filter_map(|e| match e {
            Edit::Rewrite(c, expr) => Some((c.clone(), expr.clone())),
            _ => None,
        })
        .collect();
    for (column, _) in changed {
        if out.iter().any(|(c, _)| c.eq_ignore_ascii_case(column)) {
            continue;
        }
        let to_bytes = edits.iter().any(|e| match e {
            Edit::SetType(c, ty) => {
                let ty = ty.to_ascii_lowercase();
                c.eq_ignore_ascii_case(column) && (ty.starts_with("bytea") || affinity(&ty) == 'b')
            }
            _ => false,
        });
        if to_bytes {
            return Err((
                format!("column \"{column}\" cannot be cast automatically to its new type"),
                format!("give ALTER COLUMN … TYPE … USING an expression that converts it, e.g. USING {column}::bytea"),
            ));
        }
        out.push((
            column.clone(),
            format!("\"{}\"", column.replace('"', "\"\"")),
        ));
    }
    Ok(out)
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The table's `CREATE TABLE` text with `edits` applied.
pub fn apply(create_sql: &str, edits: &[Edit]) -> Result<String, String> {
    let mut statements = Parser::parse_sql(&SQLiteDialect {}, create_sql)
        .map_err(|e| format!("cannot read the table's definition: {e}"))?;
    let Some(Statement::CreateTable(ct)) = statements.first_mut() else {
        return Err("the table's definition is not a CREATE TABLE".into());
    };
    let mut constraints = Vec::new();
    for edit in edits {
        let name = match edit {
            Edit::AddConstraint(c) | Edit::AddCheck { constraint: c, .. } => {
                constraints.push(c.clone());
                continue;
            }
            Edit::Rewrite(..) => continue,
            Edit::DropNotNull(c)
            | Edit::SetNotNull(c)
            | Edit::SetDefault(c, _)
            | Edit::DropDefault(c)
            | Edit::SetType(c, _) => c,
        };
        let col = ct
            .columns
            .iter_mut()
            .find(|col| col.name.value.eq_ignore_ascii_case(name))
            .ok_or_else(|| format!("column \"{name}\" does not exist"))?;
        let option = |option| ColumnOptionDef { name: None, option };
        match edit {
            Edit::DropNotNull(_) => col
                .options
                .retain(|o| !matches!(o.option, ColumnOption::NotNull)),
            Edit::SetNotNull(_) => {
                if !col
                    .options
                    .iter()
                    .any(|o| matches!(o.option, ColumnOption::NotNull))
                {
                    col.options.push(option(ColumnOption::NotNull));
                }
            }
            Edit::SetDefault(_, expr) => {
                let expr = Parser::new(&SQLiteDialect {})
                    .try_with_sql(expr)
                    .and_then(|mut p| p.parse_expr())
                    .map_err(|e| format!("cannot read the default {expr}: {e}"))?;
                col.options
                    .retain(|o| !matches!(o.option, ColumnOption::Default(_)));
                col.options
                    .push(option(ColumnOption::Default(Expr::Nested(Box::new(expr)))));
            }
            Edit::DropDefault(_) => col
                .options
                .retain(|o| !matches!(o.option, ColumnOption::Default(_))),
            Edit::SetType(_, ty) => {
                col.data_type = DataType::Custom(
                    ObjectName(vec![ObjectNamePart::Identifier(Ident::new(ty))]),
                    vec![],
                )
            }
            Edit::AddConstraint(_) | Edit::AddCheck { .. } | Edit::Rewrite(..) => {
                unreachable!("handled above")
            }
        }
    }
    let mut sql = statements[0].to_string();
    if !constraints.is_empty() {
        let close = sql.rfind(')').unwrap_or(sql.len());
        let (head, tail) = sql.split_at(close);
        sql = format!("{head}, {}{tail}", constraints.join(", "));
    }
    Ok(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_edits_and_constraints_rewrite_the_definition() {
        // (sqlparser prints type names it knows in upper case: SQLite and
        // availdb read declared types without regard to case.)
        let sql = "CREATE TABLE \"t\" (\"id\" int8 NOT NULL PRIMARY KEY DEFAULT (nextval('t_id_seq')), \"name\" varchar(100) NOT NULL, \"n\" int4 DEFAULT 3)";
        let edited = apply(
            sql,
            &[
                Edit::DropNotNull("name".into()),
                Edit::SetType("name".into(), "varchar(254)".into()),
                Edit::DropDefault("n".into()),
                Edit::SetNotNull("n".into()),
                Edit::AddConstraint(
                    "CONSTRAINT \"fk\" FOREIGN KEY (\"n\") REFERENCES \"o\" (\"id\") DEFERRABLE INITIALLY DEFERRED".into(),
                ),
            ],
        )
        .unwrap();
        assert_eq!(
            edited,
            "CREATE TABLE \"t\" (\"id\" INT8 NOT NULL PRIMARY KEY DEFAULT (nextval('t_id_seq')), \"name\" varchar(254), \"n\" INT4 NOT NULL, CONSTRAINT \"fk\" FOREIGN KEY (\"n\") REFERENCES \"o\" (\"id\") DEFERRABLE INITIALLY DEFERRED)"
        );
        assert!(apply(sql, &[Edit::DropNotNull("nope".into())]).is_err());
        assert_eq!(
            apply(sql, &[Edit::SetDefault("n".into(), "'x'".into())]).unwrap(),
            "CREATE TABLE \"t\" (\"id\" INT8 NOT NULL PRIMARY KEY DEFAULT (nextval('t_id_seq')), \"name\" VARCHAR(100) NOT NULL, \"n\" INT4 DEFAULT ('x'))"
        );
    }
}
