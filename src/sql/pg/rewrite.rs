//! Rewrites of a parsed PostgreSQL statement into one SQLite runs.
//!
//! Expressions are rewritten bottom-up ([`VisitorMut::post_visit_expr`]):
//! by the time a node is looked at, its children already speak SQLite.
//! Each rule says what it replaces and with what.

use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, CastKind, CharacterLength, ColumnOption, DataType, ExactNumberInfo, Expr,
    Function, FunctionArg, FunctionArgExpr, FunctionArgumentList, FunctionArguments, Ident,
    ObjectName, ObjectNamePart, Query, SelectItem, SetExpr, Statement, TableFactor, TableWithJoins,
    TimezoneInfo, UnaryOperator, Value, ValueWithSpan, VisitMut, VisitorMut,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// Applies every expression and name rule to `stmt`; returns whether
/// anything changed.
pub(super) fn rewrite_statement(stmt: &mut Statement) -> bool {
    let mut v = Rewriter { changed: false };
    let _ = stmt.visit(&mut v);
    v.changed
}

struct Rewriter {
    changed: bool,
}

fn ident(name: &str) -> Ident {
    Ident::new(name)
}

fn object_name(name: &str) -> ObjectName {
    ObjectName(vec![ObjectNamePart::Identifier(ident(name))])
}

/// `name(args…)`.
pub(super) fn call(name: &str, args: Vec<Expr>) -> Expr {
    Expr::Function(Function {
        name: object_name(name),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|e| FunctionArg::Unnamed(FunctionArgExpr::Expr(e)))
                .collect(),
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

fn string(s: &str) -> Expr {
    Expr::Value(ValueWithSpan::from(Value::SingleQuotedString(
        s.to_string(),
    )))
}

fn number(n: i64) -> Expr {
    Expr::Value(ValueWithSpan::from(Value::Number(n.to_string(), false)))
}

/// The first table of the FROM clause of `SELECT … FROM x` built from text.
fn first_table_factor(sql: &str) -> Option<TableFactor> {
    let q = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .ok()?
        .parse_query()
        .ok()?;
    let SetExpr::Select(select) = *q.body else {
        return None;
    };
    select.from.into_iter().next().map(|from| from.relation)
}

/// Parses a SQLite expression built from text (the pieces are printed
/// children, which always print as they parse).
fn parse_expr(sql: &str) -> Option<Expr> {
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .ok()?
        .parse_expr()
        .ok()
}

fn cast(expr: Expr, sqlite_type: DataType) -> Expr {
    Expr::Cast {
        kind: CastKind::Cast,
        expr: Box::new(expr),
        data_type: sqlite_type,
        format: None,
    }
}

/// The last part of a (possibly qualified) name, lower-cased.
fn last_name(name: &ObjectName) -> String {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(|i| i.value.to_ascii_lowercase())
        .unwrap_or_default()
}

fn function_args(f: &Function) -> Vec<Expr> {
    match &f.args {
        FunctionArguments::List(list) => list
            .args
            .iter()
            .filter_map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// How a cast to a PostgreSQL type is done in SQLite.
enum CastTo {
    /// `CAST(e AS <sqlite type>)`.
    Sqlite(DataType),
    /// A function of availdb's that converts (and that typing knows).
    Function(&'static str),
    /// Nothing to do: the value is kept as it is stored.
    Keep,
}

fn cast_to(ty: &DataType) -> CastTo {
    use DataType as D;
    match ty {
        D::Text
        | D::Varchar(_)
        | D::Char(_)
        | D::Character(_)
        | D::CharacterVarying(_)
        | D::CharVarying(_)
        | D::Nvarchar(_)
        | D::String(_)
        | D::Clob(_) => CastTo::Sqlite(D::Text),
        // SQLite's INTEGER affinity for all, spelled with the width so that
        // typing announces what PostgreSQL would (`::int` is int4).
        D::SmallInt(_) | D::Int2(_) | D::TinyInt(_) => CastTo::Sqlite(D::SmallInt(None)),
        D::Int(_) | D::Int4(_) | D::Integer(_) | D::MediumInt(_) => CastTo::Sqlite(D::Int4(None)),
        D::Int8(_) | D::BigInt(_) => CastTo::Sqlite(D::BigInt(None)),
        D::Real | D::Float4 | D::Float8 | D::Double(_) | D::DoublePrecision | D::Float(_) => {
            CastTo::Sqlite(D::Real)
        }
        D::Numeric(_) | D::Decimal(_) | D::Dec(_) => {
            CastTo::Sqlite(D::Numeric(ExactNumberInfo::None))
        }
        D::Bool | D::Boolean => CastTo::Function("pg_to_bool"),
        D::Bytea | D::Blob(_) | D::Binary(_) | D::Varbinary(_) => CastTo::Sqlite(D::Blob(None)),
        D::Date => CastTo::Function("pg_to_date"),
        D::Time(_, _) => CastTo::Function("pg_to_time"),
        D::Timestamp(_, TimezoneInfo::Tz) | D::Timestamp(_, TimezoneInfo::WithTimeZone) => {
            CastTo::Function("pg_to_timestamptz")
        }
        D::Timestamp(_, _) | D::Datetime(_) => CastTo::Function("pg_to_timestamp"),
        D::Uuid => CastTo::Function("pg_to_uuid"),
        D::Regclass => CastTo::Function("pg_to_regclass"),
        // Arrays are JSON: a text parameter in PostgreSQL's array syntax
        // (`{a,b}`, as psycopg sends a list of strings) becomes one.
        D::Array(_) => CastTo::Function("pg_to_array"),
        D::Custom(name, _) => match last_name(name).as_str() {
            "regclass" => CastTo::Function("pg_to_regclass"),
            "regtype" => CastTo::Function("pg_to_regtype"),
            "oid" | "regproc" | "regprocedure" | "regnamespace" | "regrole" | "xid"
            | "int2vector" | "oidvector" => CastTo::Keep,
            "name" | "bpchar" | "citext" => CastTo::Sqlite(D::Text),
            "timestamptz" => CastTo::Function("pg_to_timestamptz"),
            "int4" | "serial" => CastTo::Sqlite(D::Int4(None)),
            "int2" => CastTo::Sqlite(D::SmallInt(None)),
            "int8" => CastTo::Sqlite(D::BigInt(None)),
            "float4" | "float8" => CastTo::Sqlite(D::Real),
            _ => CastTo::Keep,
        },
        _ => CastTo::Keep,
    }
}

/// Whether `e` is `pg_to_regtype(x)` / `pg_to_regclass(x)`: then a cast to
/// text asks for the type's or relation's name.
fn reg_name(e: &Expr) -> Option<Expr> {
    let Expr::Function(f) = e else { return None };
    function_args(f).first()?;
    // The whole call: it turns a name or a number into the OID.
    let arg = e.clone();
    match last_name(&f.name).as_str() {
        "pg_to_regtype" => Some(call(
            "format_type",
            vec![arg, Expr::Value(Value::Null.into())],
        )),
        "pg_to_regclass" => parse_expr(&format!(
            "(SELECT availdb_rname FROM availdb_relnames WHERE availdb_roid = {arg})"
        )),
        _ => None,
    }
}

fn is_literal_string(e: &Expr) -> bool {
    matches!(e, Expr::Value(v) if matches!(v.value, Value::SingleQuotedString(_)))
}

/// The regular-expression operators and their (negated, case-insensitive)
/// meaning.
fn regex_op(op: &BinaryOperator) -> Option<(bool, bool)> {
    match op {
        BinaryOperator::PGRegexMatch => Some((false, false)),
        BinaryOperator::PGRegexIMatch => Some((false, true)),
        BinaryOperator::PGRegexNotMatch => Some((true, false)),
        BinaryOperator::PGRegexNotIMatch => Some((true, true)),
        BinaryOperator::PGCustomBinaryOperator(parts) => match parts.last()?.as_str() {
            "~" => Some((false, false)),
            "~*" => Some((false, true)),
            "!~" => Some((true, false)),
            "!~*" => Some((true, true)),
            _ => None,
        },
        _ => None,
    }
}

/// `OPERATOR(pg_catalog.=)` and friends: the plain operator.
fn plain_custom_op(op: &BinaryOperator) -> Option<BinaryOperator> {
    let BinaryOperator::PGCustomBinaryOperator(parts) = op else {
        return None;
    };
    Some(match parts.last()?.as_str() {
        "=" => BinaryOperator::Eq,
        "<>" | "!=" => BinaryOperator::NotEq,
        "<" => BinaryOperator::Lt,
        ">" => BinaryOperator::Gt,
        "<=" => BinaryOperator::LtEq,
        ">=" => BinaryOperator::GtEq,
        "||" => BinaryOperator::StringConcat,
        _ => return None,
    })
}

fn not(e: Expr) -> Expr {
    Expr::UnaryOp {
        op: UnaryOperator::Not,
        expr: Box::new(Expr::Nested(Box::new(e))),
    }
}

/// Elements of `ARRAY[…]`, or of `json_array(…)` an earlier rule made of it.
fn array_elements(e: &Expr) -> Option<Vec<Expr>> {
    match e {
        Expr::Array(a) => Some(a.elem.clone()),
        Expr::Function(f) if last_name(&f.name) == "json_array" => Some(function_args(f)),
        Expr::Nested(inner) => array_elements(inner),
        _ => None,
    }
}

impl Rewriter {
    fn expr(&mut self, expr: &mut Expr) -> Option<Expr> {
        match expr {
            Expr::Cast {
                expr: inner,
                data_type,
                ..
            } => {
                if matches!(cast_to(data_type), CastTo::Sqlite(DataType::Text)) {
                    if let Some(name) = reg_name(inner) {
                        return Some(name);
                    }
                    if is_literal_string(inner) {
                        return Some((**inner).clone());
                    }
                }
                Some(match cast_to(data_type) {
                    CastTo::Sqlite(ty) => {
                        if matches!(&**inner, Expr::Cast { data_type: d, kind: CastKind::Cast, .. } if *d == ty)
                        {
                            (**inner).clone()
                        } else {
                            cast((**inner).clone(), ty)
                        }
                    }
                    CastTo::Function(f) => call(f, vec![(**inner).clone()]),
                    CastTo::Keep => Expr::Nested(inner.clone()),
                })
            }
            Expr::Value(v) => match &v.value {
                Value::EscapedStringLiteral(s)
                | Value::DollarQuotedString(sqlparser::ast::DollarQuotedString {
                    value: s, ..
                })
                | Value::UnicodeStringLiteral(s) => Some(string(s)),
                _ => None,
            },
            Expr::BinaryOp { left, op, right } => {
                if let Some((negated, insensitive)) = regex_op(op) {
                    let m = call(
                        "pg_regex",
                        vec![
                            (**left).clone(),
                            (**right).clone(),
                            number(insensitive as i64),
                        ],
                    );
                    return Some(if negated { not(m) } else { m });
                }
                if let Some(plain) = plain_custom_op(op) {
                    return Some(Expr::BinaryOp {
                        left: left.clone(),
                        op: plain,
                        right: right.clone(),
                    });
                }
                match op {
                    BinaryOperator::PGLikeMatch | BinaryOperator::PGILikeMatch => {
                        Some(Expr::Like {
                            negated: false,
                            any: false,
                            expr: left.clone(),
                            pattern: right.clone(),
                            escape_char: None,
                        })
                    }
                    BinaryOperator::PGNotLikeMatch | BinaryOperator::PGNotILikeMatch => {
                        Some(Expr::Like {
                            negated: true,
                            any: false,
                            expr: left.clone(),
                            pattern: right.clone(),
                            escape_char: None,
                        })
                    }
                    _ => None,
                }
            }
            // `substring(x for n)`, `substring(x from i for n)`: SQLite
            // knows only the comma form.
            Expr::Substring {
                expr,
                substring_from,
                substring_for,
                special: false,
                shorthand,
            } => Some(Expr::Substring {
                expr: expr.clone(),
                substring_from: Some(
                    substring_from
                        .clone()
                        .unwrap_or_else(|| Box::new(number(1))),
                ),
                substring_for: substring_for.clone(),
                special: true,
                shorthand: *shorthand,
            }),
            // SQLite's LIKE already ignores ASCII case.
            Expr::ILike {
                negated,
                any,
                expr,
                pattern,
                escape_char,
            } => Some(Expr::Like {
                negated: *negated,
                any: *any,
                expr: expr.clone(),
                pattern: pattern.clone(),
                escape_char: escape_char.clone(),
            }),
            Expr::Collate { expr, collation } => {
                let name = last_name(collation);
                if matches!(name.as_str(), "nocase" | "binary" | "rtrim") {
                    None
                } else {
                    Some(Expr::Nested(expr.clone()))
                }
            }
            Expr::Array(a) => Some(call("json_array", a.elem.clone())),
            Expr::AnyOp {
                left,
                compare_op,
                right,
                ..
            } => Some(quantified(left, compare_op, right, true)),
            Expr::AllOp {
                left,
                compare_op,
                right,
            } => Some(quantified(left, compare_op, right, false)),
            Expr::Function(f) => self.function(f),
            // `a[i]` (1-based) on a JSON array.
            Expr::CompoundFieldAccess { root, access_chain } if access_chain.len() == 1 => {
                match &access_chain[0] {
                    sqlparser::ast::AccessExpr::Subscript(sqlparser::ast::Subscript::Index {
                        index,
                    }) => parse_expr(&format!(
                        "json_extract({root}, '$[' || (({index}) - 1) || ']')"
                    )),
                    _ => None,
                }
            }
            Expr::CompoundIdentifier(parts)
                if parts.len() == 3
                    && matches!(
                        parts[0].value.to_ascii_lowercase().as_str(),
                        "pg_catalog" | "public"
                    ) =>
            {
                Some(Expr::CompoundIdentifier(parts[1..].to_vec()))
            }
            _ => None,
        }
    }

    fn function(&mut self, f: &mut Function) -> Option<Expr> {
        // `pg_catalog.version()` → `version()`.
        if f.name.0.len() > 1 {
            let first = f.name.0[0]
                .as_ident()
                .map(|i| i.value.to_ascii_lowercase())
                .unwrap_or_default();
            if first == "pg_catalog" || first == "public" {
                f.name = ObjectName(f.name.0[1..].to_vec());
                self.changed = true;
            }
        }
        let name = last_name(&f.name);
        let args = function_args(f);
        match name.as_str() {
            "array" => {
                // ARRAY(subquery) → a JSON array of its first column.
                let FunctionArguments::Subquery(q) = &f.args else {
                    return None;
                };
                let mut q = q.clone();
                let SetExpr::Select(select) = q.body.as_mut() else {
                    return None;
                };
                let first = select.projection.first_mut()?;
                let e = match first {
                    SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                        e.clone()
                    }
                    _ => return None,
                };
                *first = SelectItem::ExprWithAlias {
                    expr: e,
                    alias: ident("availdb_elem"),
                };
                parse_expr(&format!(
                    "pg_array((SELECT json_group_array(availdb_elem) FROM ({q})))"
                ))
            }
            // `nextval('s'::regclass)`: the sequence functions take the name.
            "nextval" | "currval" | "setval" => {
                let mut args = args;
                let inner = match args.first()? {
                    Expr::Cast {
                        expr,
                        data_type: sqlparser::ast::DataType::Regclass,
                        ..
                    } => (**expr).clone(),
                    Expr::Function(g) if last_name(&g.name) == "pg_to_regclass" => {
                        function_args(g).into_iter().next()?
                    }
                    _ => return None,
                };
                args[0] = inner;
                Some(call(&name, args))
            }
            "array_upper" => parse_expr(&format!("json_array_length({})", args.first()?)),
            "array_lower" => Some(number(1)),
            "json_build_object" | "jsonb_build_object" => {
                f.name = object_name("json_object");
                self.changed = true;
                None
            }
            "json_build_array" | "jsonb_build_array" => {
                f.name = object_name("json_array");
                self.changed = true;
                None
            }
            "array_agg" => {
                // The array is JSON inside; `pg_array` marks it as one for
                // the client (announced `text[]`).
                let mut agg = f.clone();
                agg.name = object_name("json_group_array");
                Some(call("pg_array", vec![Expr::Function(agg)]))
            }
            "bool_and" | "every" => {
                f.name = object_name("min");
                self.changed = true;
                None
            }
            "bool_or" => {
                f.name = object_name("max");
                self.changed = true;
                None
            }
            "gen_random_uuid" | "uuid_generate_v4" => parse_expr(RANDOM_UUID),
            "transaction_timestamp" | "statement_timestamp" | "clock_timestamp" => {
                Some(call("now", vec![]))
            }
            "pg_get_indexdef" => {
                let oid = args.first()?.clone();
                let column = args.get(1).cloned();
                Some(match column {
                    Some(col) if !matches!(&col, Expr::Value(v) if v.value == Value::Number("0".into(), false)) => {
                        parse_expr(&format!(
                            "(SELECT quote_ident(availdb_icname) FROM availdb_indexcols WHERE availdb_icoid = {oid} AND availdb_icord = {col})"
                        ))?
                    }
                    _ => parse_expr(&format!(
                        "(SELECT availdb_idef FROM availdb_indexdefs WHERE availdb_ioid = {oid})"
                    ))?,
                })
            }
            "pg_get_constraintdef" => parse_expr(&format!(
                "(SELECT availdb_cdef FROM availdb_condefs WHERE availdb_coid = {})",
                args.first()?
            )),
            "to_regclass" => parse_expr(&format!(
                "(SELECT availdb_roid FROM availdb_relnames WHERE availdb_rname = pg_unqualify({}))",
                args.first()?
            )),
            "to_regtype" => Some(call("pg_to_regtype", args)),
            _ => None,
        }
    }
}

/// A random version-4 UUID from SQLite's own functions, so a column
/// DEFAULT using it works on any connection.
const RANDOM_UUID: &str = "lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))";

/// `l op ANY(r)` / `l op ALL(r)`. An `ARRAY[…]` becomes an IN list for
/// `=` (and NOT IN for `<> ALL`); anything else (a parameter bound to an
/// array, a column, `ARRAY(subquery)`) holds a JSON array, read with
/// `json_each`.
fn quantified(left: &Expr, op: &BinaryOperator, right: &Expr, any: bool) -> Expr {
    // A parameter the client sent untyped, as text (psycopg does for a list
    // of strings, which pgcli's `relkind = ANY(%s)` binds), or a string
    // literal (pgspecial's `\dt` composes `ANY('{r,p,""}')`), holds
    // PostgreSQL's array syntax, not JSON.
    let wrapped;
    let right = match right {
        Expr::Value(v)
            if matches!(
                v.value,
                Value::Placeholder(_) | Value::SingleQuotedString(_)
            ) =>
        {
            wrapped = call("pg_to_array", vec![right.clone()]);
            &wrapped
        }
        _ => right,
    };
    if let Expr::Subquery(q) = right {
        if matches!(op, BinaryOperator::Eq) && any {
            return Expr::InSubquery {
                expr: Box::new(left.clone()),
                subquery: q.clone(),
                negated: false,
            };
        }
    }
    let equality =
        (matches!(op, BinaryOperator::Eq) && any) || (matches!(op, BinaryOperator::NotEq) && !any);
    if equality {
        let negated = !any;
        if let Some(list) = array_elements(right) {
            return Expr::InList {
                expr: Box::new(left.clone()),
                list,
                negated,
            };
        }
        if let Some(e) = parse_expr(&format!(
            "({left}) IN (SELECT value FROM json_each({right}))"
        )) {
            return if negated { not(e) } else { e };
        }
    }
    let test = format!("({left}) {op} value");
    let sql = if any {
        format!("EXISTS (SELECT 1 FROM json_each({right}) WHERE {test})")
    } else {
        format!("NOT EXISTS (SELECT 1 FROM json_each({right}) WHERE NOT ({test}))")
    };
    parse_expr(&sql).unwrap_or_else(|| Expr::Value(Value::Null.into()))
}

impl VisitorMut for Rewriter {
    type Break = ();

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let Some(new) = self.expr(expr) {
            *expr = new;
            self.changed = true;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, name: &mut ObjectName) -> ControlFlow<()> {
        if name.0.len() == 2 {
            let schema = name.0[0]
                .as_ident()
                .map(|i| i.value.to_ascii_lowercase())
                .unwrap_or_default();
            let table = name.0[1].as_ident().map(|i| i.value.clone());
            match (schema.as_str(), table) {
                ("pg_catalog" | "public", Some(t)) => {
                    *name = ObjectName(vec![ObjectNamePart::Identifier(Ident::with_quote('"', t))]);
                    self.changed = true;
                }
                ("information_schema", Some(t)) => {
                    *name = ObjectName(vec![ObjectNamePart::Identifier(Ident::with_quote(
                        '"',
                        format!("information_schema.{}", t.to_ascii_lowercase()),
                    ))]);
                    self.changed = true;
                }
                _ => {}
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        // `(subquery) AS t(a, b)`: SQLite takes no column list; name the
        // subquery's columns instead (`VALUES` columns are column1, …).
        if let TableFactor::Derived {
            subquery,
            alias: Some(alias),
            ..
        } = factor
        {
            if !alias.columns.is_empty() {
                let names: Vec<String> = alias.columns.iter().map(|c| c.name.to_string()).collect();
                let renamed = match subquery.body.as_mut() {
                    SetExpr::Select(select) if select.projection.len() == names.len() => {
                        for (item, name) in select.projection.iter_mut().zip(&names) {
                            let e = match item {
                                SelectItem::UnnamedExpr(e)
                                | SelectItem::ExprWithAlias { expr: e, .. } => e.clone(),
                                _ => return ControlFlow::Continue(()),
                            };
                            *item = SelectItem::ExprWithAlias {
                                expr: e,
                                alias: ident(name),
                            };
                        }
                        true
                    }
                    SetExpr::Values(_) => {
                        let columns: Vec<String> = names
                            .iter()
                            .enumerate()
                            .map(|(i, n)| format!("column{} AS {n}", i + 1))
                            .collect();
                        let sql = format!("SELECT {} FROM ({subquery})", columns.join(", "));
                        match Parser::new(&PostgreSqlDialect {})
                            .try_with_sql(&sql)
                            .and_then(|mut p| p.parse_query())
                        {
                            Ok(q) => {
                                **subquery = *q;
                                true
                            }
                            Err(_) => false,
                        }
                    }
                    _ => false,
                };
                if renamed {
                    alias.columns.clear();
                    self.changed = true;
                }
            }
        }
        // `FROM unnest(a, b, …)` (Django's bulk INSERT … SELECT * FROM
        // UNNEST) → the arrays side by side, joined on their positions.
        if let TableFactor::UNNEST {
            alias,
            array_exprs,
            with_ordinality: false,
            ..
        } = factor
        {
            if array_exprs.len() > 1 || alias.is_none() {
                let alias_name = alias
                    .as_ref()
                    .map_or_else(|| "unnest".to_string(), |a| a.name.to_string());
                let columns: Vec<String> = (0..array_exprs.len())
                    .map(|i| {
                        let name = alias
                            .as_ref()
                            .and_then(|a| a.columns.get(i))
                            .map_or_else(|| format!("unnest{}", i + 1), |c| c.name.to_string());
                        format!("u{i}.value AS {name}")
                    })
                    .collect();
                let joins: Vec<String> = array_exprs
                    .iter()
                    .enumerate()
                    .map(|(i, e)| match i {
                        0 => format!("json_each({e}) AS u0"),
                        _ => format!("LEFT JOIN json_each({e}) AS u{i} ON u{i}.key = u0.key"),
                    })
                    .collect();
                let sql = format!(
                    "SELECT * FROM (SELECT {} FROM {}) AS {alias_name}",
                    columns.join(", "),
                    joins.join(" ")
                );
                if let Some(parsed) = first_table_factor(&sql) {
                    *factor = parsed;
                    self.changed = true;
                }
                return ControlFlow::Continue(());
            }
        }
        // `FROM unnest(a) AS x` → the elements of the JSON array `a`;
        // `FROM generate_series(…) AS s` → SQLite's, its `value` named `s`.
        let (source, alias, ordinality) = match factor {
            TableFactor::UNNEST {
                alias,
                array_exprs,
                with_ordinality,
                ..
            } if array_exprs.len() == 1 => (
                format!("json_each({})", array_exprs[0]),
                alias.clone(),
                *with_ordinality,
            ),
            TableFactor::Function {
                name, args, alias, ..
            } => match table_function_source(name, args) {
                Some(source) => (source, alias.clone(), false),
                None => return ControlFlow::Continue(()),
            },
            TableFactor::Table {
                name,
                args: Some(args),
                alias,
                with_ordinality,
                ..
            } => match table_function_source(name, &args.args) {
                Some(source) => (source, alias.clone(), *with_ordinality),
                None => return ControlFlow::Continue(()),
            },
            _ => return ControlFlow::Continue(()),
        };
        let Some(alias) = alias else {
            return ControlFlow::Continue(());
        };
        let alias_name = alias.name.to_string();
        let column = alias
            .columns
            .first()
            .map_or_else(|| alias_name.clone(), |c| c.name.to_string());
        let ord_col = match (ordinality, alias.columns.get(1)) {
            (true, Some(o)) => format!(", key + 1 AS {}", o.name),
            (true, None) => ", key + 1 AS ordinality".to_string(),
            _ => String::new(),
        };
        let sql = format!(
            "SELECT * FROM (SELECT value AS {column}{ord_col} FROM {source}) AS {alias_name}"
        );
        if let Some(parsed) = first_table_factor(&sql) {
            *factor = parsed;
            self.changed = true;
        }
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        // Row locks (FOR UPDATE/SHARE): the single writer already
        // serializes writes.
        if !query.locks.is_empty() {
            query.locks.clear();
            self.changed = true;
        }
        if let SetExpr::Select(select) = query.body.as_mut() {
            if unnest_projection(select) {
                self.changed = true;
            }
            // `AS default`: PostgreSQL takes any word after AS as a column
            // name, SQLite only non-reserved ones unless quoted.
            for item in select.projection.iter_mut() {
                if let SelectItem::ExprWithAlias { alias, .. } = item {
                    if alias.quote_style.is_none() && is_sqlite_reserved(&alias.value) {
                        alias.quote_style = Some('"');
                        self.changed = true;
                    }
                }
            }
            // A regclass in a result prints as the relation's name.
            for item in select.projection.iter_mut() {
                if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item
                {
                    if let Expr::Function(f) = e {
                        if last_name(&f.name) == "pg_to_regclass" {
                            if let Some(name) = reg_name(e) {
                                *e = name;
                                self.changed = true;
                            }
                        }
                    }
                }
            }
        }
        ControlFlow::Continue(())
    }
}

/// SQLite's keywords that cannot name a column unquoted (those without its
/// parser's fallback to an identifier), which PostgreSQL accepts after AS.
fn is_sqlite_reserved(word: &str) -> bool {
    const RESERVED: &[&str] = &[
        "add",
        "all",
        "alter",
        "and",
        "as",
        "autoincrement",
        "between",
        "case",
        "check",
        "collate",
        "commit",
        "constraint",
        "create",
        "default",
        "deferrable",
        "delete",
        "distinct",
        "drop",
        "else",
        "escape",
        "except",
        "exists",
        "foreign",
        "from",
        "group",
        "having",
        "in",
        "index",
        "insert",
        "intersect",
        "into",
        "is",
        "isnull",
        "join",
        "limit",
        "not",
        "nothing",
        "notnull",
        "null",
        "on",
        "or",
        "order",
        "primary",
        "references",
        "returning",
        "select",
        "set",
        "table",
        "then",
        "to",
        "transaction",
        "union",
        "unique",
        "update",
        "using",
        "values",
        "when",
        "where",
        "window",
    ];
    RESERVED.contains(&word.to_ascii_lowercase().as_str())
}

/// The SQLite table-valued function for a PostgreSQL set-returning one in
/// FROM.
fn table_function_source(name: &ObjectName, args: &[FunctionArg]) -> Option<String> {
    let args: Vec<String> = args.iter().map(ToString::to_string).collect();
    match last_name(name).as_str() {
        "unnest" if args.len() == 1 => Some(format!("json_each({})", args[0])),
        "generate_series" if args.len() >= 2 => {
            Some(format!("generate_series({})", args.join(", ")))
        }
        // No partitions: a relation's only ancestor is itself.
        "pg_partition_ancestors" if args.len() == 1 => {
            Some(format!("json_each(json_array({}))", args[0]))
        }
        _ => None,
    }
}

/// `SELECT …, unnest(a) AS x, generate_subscripts(a, 1) AS n FROM t` →
/// `SELECT …, availdb_u.value AS x, availdb_u.key + 1 AS n FROM t,
/// json_each(a) AS availdb_u`: set-returning functions in the projection
/// become a join with the array's elements (one array per query).
fn unnest_projection(select: &mut sqlparser::ast::Select) -> bool {
    let mut array: Option<Expr> = None;
    for item in select.projection.iter_mut() {
        let e = match item {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
            _ => continue,
        };
        let Expr::Function(f) = e else { continue };
        let name = last_name(&f.name);
        let args = function_args(f);
        let Some(arg) = args.first().cloned() else {
            continue;
        };
        if array.as_ref().is_some_and(|a| *a != arg) {
            // Another array unnested alongside: zipped by position.
            if name == "unnest" {
                if let Some(r) = parse_expr(&format!(
                    "json_extract({arg}, '$[' || availdb_u.key || ']')"
                )) {
                    *e = r;
                }
            }
            continue;
        }
        let replacement = match name.as_str() {
            "unnest" => parse_expr("availdb_u.value"),
            "generate_subscripts" => parse_expr("availdb_u.key + 1"),
            _ => None,
        };
        if let Some(r) = replacement {
            *e = r;
            array = Some(arg);
        }
    }
    let Some(array) = array else { return false };
    let Some(Expr::Function(each)) = parse_expr(&format!("json_each({array})")) else {
        return false;
    };
    select.from.push(TableWithJoins {
        relation: TableFactor::Function {
            lateral: false,
            name: each.name,
            args: match each.args {
                FunctionArguments::List(l) => l.args,
                _ => Vec::new(),
            },
            with_ordinality: false,
            alias: Some(sqlparser::ast::TableAlias {
                at: None,
                explicit: true,
                name: ident("availdb_u"),
                columns: vec![],
            }),
        },
        joins: vec![],
    });
    true
}

/// The SQLite column type for a PostgreSQL column type in CREATE TABLE:
/// the PostgreSQL name itself, spelled so SQLite's type-name grammar takes
/// it (words, then one parenthesised size at the end), which keeps the
/// declared type for the catalog and for announcing the column.
pub(super) fn column_type(ty: &DataType) -> String {
    use DataType as D;
    let len = |l: &Option<CharacterLength>| match l {
        Some(CharacterLength::IntegerLength { length, .. }) => format!("({length})"),
        _ => String::new(),
    };
    match ty {
        D::Varchar(l) | D::CharacterVarying(l) | D::CharVarying(l) | D::Nvarchar(l) => {
            format!("varchar{}", len(l))
        }
        D::Char(l) | D::Character(l) => format!("char{}", len(l)),
        D::Timestamp(_, TimezoneInfo::Tz | TimezoneInfo::WithTimeZone) => {
            "timestamp with time zone".into()
        }
        D::Timestamp(_, _) => "timestamp".into(),
        D::Time(_, TimezoneInfo::Tz | TimezoneInfo::WithTimeZone) => "time with time zone".into(),
        D::Time(_, _) => "time".into(),
        D::Interval { .. } => "interval".into(),
        D::Array(_) => {
            format!("{}", ty)
                .replace(['[', ']'], "")
                .to_ascii_lowercase()
                + " array"
        }
        D::Custom(name, modifiers) => {
            let base = last_name(name);
            match base.as_str() {
                "timestamptz" => "timestamp with time zone".into(),
                "serial" | "serial4" => "integer".into(),
                "bigserial" | "serial8" => "bigint".into(),
                "smallserial" | "serial2" => "smallint".into(),
                _ if modifiers.is_empty() => base,
                _ => format!("{base}({})", modifiers.join(",")),
            }
        }
        other => other.to_string().to_ascii_lowercase(),
    }
}

/// True for SERIAL, BIGSERIAL, SMALLSERIAL.
pub(super) fn is_serial(ty: &DataType) -> bool {
    matches!(ty, DataType::Custom(name, _) if matches!(last_name(name).as_str(),
        "serial" | "serial4" | "bigserial" | "serial8" | "smallserial" | "serial2"))
}

/// True for `GENERATED … AS IDENTITY` column options.
pub(super) fn is_identity(option: &ColumnOption) -> bool {
    matches!(
        option,
        ColumnOption::Generated {
            generation_expr: None,
            ..
        }
    ) || matches!(option, ColumnOption::Identity(_))
}
