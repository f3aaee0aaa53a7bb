//! Parameter and result-column types, inferred from the SQL text.
//!
//! PostgreSQL clients describe a prepared statement before running it and
//! expect a type for every `$N` parameter and every result column;
//! tokio-postgres then encodes parameters in binary for exactly those types.
//! SQLite has no such notion: types are decided per value at run time, and
//! the only static information it gives is the *declared type* of result
//! columns that are direct column references. This module fills the gaps the
//! way PostgreSQL would, by reading the statement:
//!
//! * a parameter takes the type of what it is compared with, assigned to,
//!   inserted into, combined with arithmetically or cast to (`a = $1`,
//!   `SET a = $1`, `INSERT INTO t (a) VALUES ($1)`, `a + $1`,
//!   `CAST($1 AS INTEGER)`, `LIMIT $1`); the outermost clue met first wins;
//! * a result column's type follows from its expression: literals, column
//!   references (through [`Schema`]), operators, well-known SQLite functions,
//!   `CAST`, `CASE` and scalar subqueries.
//!
//! Names resolve through scopes as in SQL itself: the tables and aliases of
//! each FROM (and the target of INSERT/UPDATE/DELETE, with `excluded` in an
//! upsert), CTEs, and subqueries in FROM, whose output columns are inferred
//! in turn; subqueries also see the scopes around them.
//!
//! Parsing uses sqlparser's SQLite dialect, after rewriting the few SQLite
//! spellings it rejects (`a IS b`, `a IS NOT b`, `ISNULL`, `INDEXED BY`,
//! `NOT INDEXED`, `<<`, `>>`) into ones that type the same, and telling
//! `0x1F` integers from `X'1F'` blobs, which it tokenizes alike; when that
//! still fails, the generic and PostgreSQL dialects get a try.
//!
//! Limits: this is a best guess from the text, not SQLite's own analysis.
//! Statements that do not parse, or are neither queries nor INSERT, UPDATE
//! or DELETE, get no inference (parameters `None`, columns declared-or-text).
//! A projection containing `*` leaves its columns to SQLite's declared types,
//! since the schema cannot list a table's columns. Parameters without a clue
//! stay `None`: `SELECT $1`, `INSERT INTO t VALUES ($1)` without a column
//! list, arguments of most functions, window clauses. Only `$N` placeholders
//! are recognised. So that a hostile statement cannot exhaust the stack,
//! expressions nested deeper than a fixed bound are not looked into, and a
//! statement with an operator chain of thousands of terms is not parsed.

use std::cell::Cell;
use std::iter;

use sqlparser::ast::{
    Assignment, AssignmentTarget, BinaryOperator, DataType, Delete, Expr, FromTable, Function,
    FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident, Insert, JoinConstraint,
    JoinOperator, LimitClause, ObjectName, ObjectNamePart, OnConflict, OnConflictAction, OnInsert,
    OrderBy, OrderByExpr, OrderByKind, Query, Select, SelectItem, SelectItemQualifiedWildcardKind,
    SetExpr, Statement, TableAlias, TableFactor, TableObject, TableWithJoins, UnaryOperator,
    Update, UpdateTableFromKind, Value, Values,
};
use sqlparser::dialect::{Dialect, GenericDialect, PostgreSqlDialect, SQLiteDialect};
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, Whitespace};

use crate::sql::types::ValueType;

/// What the inference may ask about the database's schema.
pub trait Schema {
    /// Declared type of `column` in `table` (case-insensitive names), or None if unknown.
    fn column_type(&self, table: &str, column: &str) -> Option<ValueType>;

    /// Declared types of all columns of `table`, in table order (for
    /// `INSERT INTO t VALUES (…)` without a column list), or None if unknown.
    fn table_columns(&self, table: &str) -> Option<Vec<ValueType>>;
}

/// Types of parameters $1..=$n_params of `sql` (a single SQLite statement
/// using PostgreSQL-style `$N` placeholders). Index 0 is $1. None where the
/// SQL gives no clue (the caller then announces `text`).
pub fn infer_parameter_types(
    sql: &str,
    n_params: usize,
    schema: &dyn Schema,
) -> Vec<Option<ValueType>> {
    let ctx = Ctx::new(schema);
    let root = Scope::root(&ctx);
    let mut walker = ParamWalker {
        ctx: &ctx,
        types: vec![None; n_params],
    };
    for stmt in parse(sql) {
        walker.walk_statement(&stmt, &root);
    }
    walker.types
}

/// Types of the result columns of `sql`. `declared[i]` is SQLite's declared
/// type for column i when it is a direct column reference (it wins when Some);
/// the function fills in the others from the expression; `Text` when unknown.
/// The returned Vec always has `declared.len()` entries.
pub fn infer_column_types(
    sql: &str,
    declared: &[Option<ValueType>],
    schema: &dyn Schema,
) -> Vec<ValueType> {
    let ctx = Ctx::new(schema);
    let root = Scope::root(&ctx);
    // SQLite prepares only the first statement of a string.
    let inferred = parse(sql)
        .first()
        .map(|stmt| statement_projection(stmt, &root))
        .and_then(|p| p.types())
        // A different column count means we misread the statement: trust none of it.
        .filter(|types| types.len() == declared.len())
        .unwrap_or_else(|| vec![None; declared.len()]);
    declared
        .iter()
        .zip(inferred)
        .map(|(declared, inferred)| declared.or(inferred).unwrap_or(ValueType::Text))
        .collect()
}

// ---------------------------------------------------------------------------
// Parsing

/// Parses `sql` into statements, or none at all when no dialect accepts it.
fn parse(sql: &str) -> Vec<Statement> {
    // Later dialects only see what the SQLite one rejects; PostgreSQL's
    // knows `INSERT INTO t AS alias`, which SQLite accepts too.
    let dialects: [&dyn Dialect; 3] =
        [&SQLiteDialect {}, &GenericDialect {}, &PostgreSqlDialect {}];
    dialects
        .into_iter()
        .find_map(|dialect| parse_with(dialect, sql))
        .unwrap_or_default()
}

fn parse_with(dialect: &dyn Dialect, sql: &str) -> Option<Vec<Statement>> {
    let tokens = Tokenizer::new(dialect, sql).tokenize_with_location().ok()?;
    if longest_run(&tokens) > MAX_RUN {
        return None;
    }
    Parser::new(dialect)
        .with_tokens_with_locations(normalize(sql, tokens))
        .parse_statements()
        .ok()
}

/// The longest run of tokens [`longest_run`] lets through to the parser.
///
/// sqlparser builds operator chains (`1+1+…`, `a OR b OR …`, `… UNION …`)
/// into trees as deep as the chain is long, and drops them recursively: in a
/// thread with a 2 MiB stack (tokio's default) that overflows somewhere past
/// 25,000 levels. A chain level takes at least two tokens, so this keeps
/// trees under 10,000 levels.
const MAX_RUN: usize = 20_000;

/// The most tokens found between two commas (or semicolons) at the same
/// parenthesis level: a bound on how long an operator chain can be.
fn longest_run(tokens: &[TokenWithSpan]) -> usize {
    // runs[d]: tokens since the last separator at parenthesis depth d.
    let mut runs = vec![0usize];
    let mut longest = 0;
    for tok in tokens {
        match tok.token {
            Token::Whitespace(_) => continue,
            Token::LParen => runs.push(0),
            Token::RParen if runs.len() > 1 => {
                runs.pop();
            }
            Token::Comma | Token::SemiColon => {
                if let Some(run) = runs.last_mut() {
                    *run = 0;
                }
            }
            _ => {}
        }
        if let Some(run) = runs.last_mut() {
            *run += 1;
            longest = longest.max(*run);
        }
    }
    longest
}

/// Rewrites the SQLite spellings sqlparser rejects or misreads into ones it
/// parses with the same typing. The result is only ever typed, never run.
fn normalize(sql: &str, tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let mut out = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while let Some(tok) = tokens.get(i) {
        i += 1;
        if is_hex_integer(sql, tok) {
            // Only the type matters here, not the value.
            out.push(TokenWithSpan::wrap(Token::Number("0".into(), false)));
        } else if matches!(tok.token, Token::ShiftLeft | Token::ShiftRight) {
            // The SQLite dialect has no shifts; `&` types the same (integer
            // operands, integer result) and binds as tightly in SQLite.
            out.push(TokenWithSpan::wrap(Token::Ampersand));
        } else if is_word(tok, "ISNULL") {
            out.extend(words(&["IS", "NULL"]));
        } else if is_word(tok, "NOT") && next_is_word(&tokens, i, "INDEXED") {
            // `NOT INDEXED` only steers the planner.
            i = after_next(&tokens, i);
        } else if is_word(tok, "INDEXED") && next_is_word(&tokens, i, "BY") {
            // Nor does `INDEXED BY index_name`.
            i = after_next(&tokens, after_next(&tokens, i));
        } else if is_word(tok, "IS") && !is_standard_is(&tokens, i) {
            // SQLite's `a IS b` and `a IS NOT b` are null-safe comparisons,
            // which sqlparser only knows as `IS [NOT] DISTINCT FROM`.
            match next_significant(&tokens, i).filter(|&n| is_word(&tokens[n], "NOT")) {
                Some(not) => {
                    out.extend(words(&["IS", "DISTINCT", "FROM"]));
                    i = not + 1;
                }
                None => out.extend(words(&["IS", "NOT", "DISTINCT", "FROM"])),
            }
        } else {
            out.push(tok.clone());
        }
    }
    out
}

/// Whether the `IS` just before `i` is one sqlparser parses as it stands:
/// `IS [NOT] NULL`, `IS [NOT] TRUE`, `IS [NOT] DISTINCT FROM`, ….
fn is_standard_is(tokens: &[TokenWithSpan], i: usize) -> bool {
    let mut next = next_significant(tokens, i);
    if let Some(not) = next.filter(|&n| is_word(&tokens[n], "NOT")) {
        next = next_significant(tokens, not + 1);
    }
    next.is_none_or(|n| is_is_keyword(&tokens[n]))
}

/// Words that may follow `IS [NOT]` in sqlparser's grammar.
fn is_is_keyword(tok: &TokenWithSpan) -> bool {
    const KEYWORDS: [&str; 11] = [
        "NULL",
        "TRUE",
        "FALSE",
        "DISTINCT",
        "UNKNOWN",
        "JSON",
        "NORMALIZED",
        "NFC",
        "NFD",
        "NFKC",
        "NFKD",
    ];
    KEYWORDS.iter().any(|k| is_word(tok, k))
}

/// `0x1F` and `X'1F'` both tokenize as a hex string; only the source text
/// tells the integer from the blob.
fn is_hex_integer(sql: &str, tok: &TokenWithSpan) -> bool {
    if !matches!(tok.token, Token::HexStringLiteral(_)) {
        return false;
    }
    let start = tok.span.start;
    let first_char = (start.line.checked_sub(1))
        .zip(start.column.checked_sub(1))
        .and_then(|(line, column)| {
            let line = sql.lines().nth(usize::try_from(line).ok()?)?;
            line.chars().nth(usize::try_from(column).ok()?)
        });
    first_char == Some('0')
}

fn is_word(tok: &TokenWithSpan, word: &str) -> bool {
    matches!(&tok.token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
}

/// Index of the first non-whitespace token at or after `i`.
fn next_significant(tokens: &[TokenWithSpan], i: usize) -> Option<usize> {
    (i..tokens.len()).find(|&j| !matches!(tokens[j].token, Token::Whitespace(_)))
}

fn next_is_word(tokens: &[TokenWithSpan], i: usize, word: &str) -> bool {
    next_significant(tokens, i).is_some_and(|n| is_word(&tokens[n], word))
}

/// Index just past the next non-whitespace token at or after `i`.
fn after_next(tokens: &[TokenWithSpan], i: usize) -> usize {
    next_significant(tokens, i).map_or(tokens.len(), |n| n + 1)
}

/// Keyword tokens, each followed by a space.
fn words(keywords: &[&str]) -> Vec<TokenWithSpan> {
    keywords
        .iter()
        .flat_map(|k| [Token::make_keyword(k), Token::Whitespace(Whitespace::Space)])
        .map(TokenWithSpan::wrap)
        .collect()
}

// ---------------------------------------------------------------------------
// Scopes: what names mean at a point of the statement

/// How deep inference follows nested expressions and queries. The parser
/// bounds parentheses and subqueries, but not operator chains such as
/// `1+1+…+1`, whose trees are as deep as they are long.
const MAX_DEPTH: usize = 200;

/// State shared by the whole inference of one statement.
struct Ctx<'a> {
    schema: &'a dyn Schema,
    depth: Cell<usize>,
}

impl<'a> Ctx<'a> {
    fn new(schema: &'a dyn Schema) -> Self {
        Ctx {
            schema,
            depth: Cell::new(0),
        }
    }

    /// One more level of recursion, or None when the bound is reached.
    fn enter(&self) -> Option<DepthGuard<'_>> {
        let depth = self.depth.get();
        (depth < MAX_DEPTH).then(|| {
            self.depth.set(depth + 1);
            DepthGuard(&self.depth)
        })
    }
}

/// Gives its level back when the recursive call returns.
struct DepthGuard<'c>(&'c Cell<usize>);

impl Drop for DepthGuard<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// A named row source visible in a scope: a table, an alias, a CTE.
struct Binding {
    /// The name it is referred to by (empty for an unaliased subquery).
    name: String,
    source: Source,
}

/// Where a binding's columns come from.
#[derive(Clone)]
enum Source {
    /// A table (or view) of the database, by name.
    Table(String),
    /// A subquery or CTE, by its inferred output columns.
    Derived(Projection),
}

impl Source {
    fn column_type(&self, column: &str, schema: &dyn Schema) -> Option<ValueType> {
        match self {
            // The schema does not list the implicit rowid.
            Source::Table(table) => schema
                .column_type(table, column)
                .or_else(|| is_rowid(column).then_some(ValueType::Int8)),
            Source::Derived(projection) => projection.column_type(column, schema),
        }
    }
}

fn is_rowid(column: &str) -> bool {
    ["rowid", "oid", "_rowid_"]
        .iter()
        .any(|r| r.eq_ignore_ascii_case(column))
}

/// The output columns of a query.
#[derive(Clone, Default)]
struct Projection {
    /// The columns listed explicitly, in order.
    columns: Vec<Column>,
    /// The sources a `*` or `t.*` in the projection expands.
    star: Vec<Source>,
    /// Whether the positions of `columns` are unreliable: the projection
    /// has a wildcard, or could not be read at all.
    wildcard: bool,
}

#[derive(Clone)]
struct Column {
    name: Option<String>,
    ty: Option<ValueType>,
}

impl Projection {
    /// A projection nothing is known about.
    fn unknown() -> Self {
        Projection {
            wildcard: true,
            ..Projection::default()
        }
    }

    /// Column types by position, when positions can be trusted.
    fn types(&self) -> Option<Vec<Option<ValueType>>> {
        (!self.wildcard).then(|| self.columns.iter().map(|c| c.ty).collect())
    }

    fn column_type(&self, column: &str, schema: &dyn Schema) -> Option<ValueType> {
        let named = self.columns.iter().find(|c| {
            c.name
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(column))
        });
        match named {
            Some(c) => c.ty,
            None => self.star.iter().find_map(|s| s.column_type(column, schema)),
        }
    }
}

/// The names visible at one level of a statement, and the levels around it.
struct Scope<'s> {
    ctx: &'s Ctx<'s>,
    parent: Option<&'s Scope<'s>>,
    /// CTEs defined at this level (by `WITH`).
    ctes: Vec<(String, Source)>,
    /// Tables and subqueries of this level's FROM or DML target.
    bindings: Vec<Binding>,
}

impl<'s> Scope<'s> {
    fn root(ctx: &'s Ctx<'s>) -> Self {
        Scope {
            ctx,
            parent: None,
            ctes: Vec::new(),
            bindings: Vec::new(),
        }
    }

    fn child(parent: &'s Scope<'s>, bindings: Vec<Binding>) -> Self {
        Scope {
            ctx: parent.ctx,
            parent: Some(parent),
            ctes: Vec::new(),
            bindings,
        }
    }

    /// The scope of a FROM list (or UPDATE/DELETE tables) inside `parent`.
    fn over_tables<'t>(
        parent: &'s Scope<'s>,
        tables: impl IntoIterator<Item = &'t TableWithJoins>,
    ) -> Self {
        let mut bindings = Vec::new();
        for table in tables {
            bind_factor(&table.relation, parent, &mut bindings);
            for join in &table.joins {
                bind_factor(&join.relation, parent, &mut bindings);
            }
        }
        Scope::child(parent, bindings)
    }

    /// The scope of a query's `WITH` clause; each CTE sees those before it.
    fn with_ctes(query: &Query, parent: &'s Scope<'s>) -> Self {
        let mut scope = Scope::child(parent, Vec::new());
        for cte in query.with.iter().flat_map(|w| &w.cte_tables) {
            let source = derived_source(query_projection(&cte.query, &scope), Some(&cte.alias));
            scope.ctes.push((cte.alias.name.value.clone(), source));
        }
        scope
    }

    fn ancestors(&self) -> impl Iterator<Item = &Scope<'s>> {
        iter::successors(Some(self), |s| s.parent)
    }

    fn cte(&self, name: &str) -> Option<&Source> {
        self.ancestors()
            .flat_map(|s| &s.ctes)
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, source)| source)
    }

    fn binding(&self, name: &str) -> Option<&Binding> {
        self.ancestors()
            .flat_map(|s| &s.bindings)
            .find(|b| b.name.eq_ignore_ascii_case(name))
    }

    /// Type of a column reference, `qualifier.column` or plain `column`,
    /// looked up from the innermost scope outwards.
    fn column_type(&self, qualifier: Option<&str>, column: &str) -> Option<ValueType> {
        let schema = self.ctx.schema;
        match qualifier {
            Some(q) => self.binding(q)?.source.column_type(column, schema),
            None => self
                .ancestors()
                .flat_map(|s| &s.bindings)
                .find_map(|b| b.source.column_type(column, schema)),
        }
    }
}

/// Adds the bindings a FROM item introduces.
fn bind_factor(factor: &TableFactor, outer: &Scope, out: &mut Vec<Binding>) {
    match factor {
        TableFactor::Table { name, alias, .. } => {
            let table = last_name(name);
            let cte = match name.0.len() {
                1 => outer.cte(&table).cloned(),
                _ => None,
            };
            out.push(Binding {
                name: alias
                    .as_ref()
                    .map_or_else(|| table.clone(), |a| a.name.value.clone()),
                source: cte.unwrap_or(Source::Table(table)),
            });
        }
        TableFactor::Derived {
            subquery, alias, ..
        } => out.push(Binding {
            name: alias
                .as_ref()
                .map(|a| a.name.value.clone())
                .unwrap_or_default(),
            source: derived_source(query_projection(subquery, outer), alias.as_ref()),
        }),
        TableFactor::NestedJoin {
            table_with_joins, ..
        } => {
            bind_factor(&table_with_joins.relation, outer, out);
            for join in &table_with_joins.joins {
                bind_factor(&join.relation, outer, out);
            }
        }
        _ => {}
    }
}

/// A subquery's columns, renamed by an alias column list (`AS s(x, y)`).
fn derived_source(projection: Projection, alias: Option<&TableAlias>) -> Source {
    let names = alias.map_or(&[][..], |a| &a.columns);
    if names.is_empty() {
        return Source::Derived(projection);
    }
    let types = projection.types().unwrap_or_default();
    let columns = names
        .iter()
        .enumerate()
        .map(|(i, def)| Column {
            name: Some(def.name.value.clone()),
            ty: types.get(i).copied().flatten(),
        })
        .collect();
    Source::Derived(Projection {
        columns,
        ..Projection::default()
    })
}

/// Bindings of an INSERT: its target and, for upserts, `excluded`.
fn insert_scope<'s>(insert: &Insert, outer: &'s Scope<'s>) -> Option<Scope<'s>> {
    let TableObject::TableName(name) = &insert.table else {
        return None;
    };
    let table = last_name(name);
    let alias = insert.table_alias.as_ref().map(|a| a.alias.value.clone());
    let bindings = [
        alias.unwrap_or_else(|| table.clone()),
        "excluded".to_string(),
    ]
    .into_iter()
    .map(|name| Binding {
        name,
        source: Source::Table(table.clone()),
    })
    .collect();
    Some(Scope::child(outer, bindings))
}

fn update_scope<'s>(update: &Update, outer: &'s Scope<'s>) -> Scope<'s> {
    let from = match &update.from {
        Some(UpdateTableFromKind::BeforeSet(tables) | UpdateTableFromKind::AfterSet(tables)) => {
            &tables[..]
        }
        None => &[],
    };
    Scope::over_tables(outer, iter::once(&update.table).chain(from))
}

fn delete_scope<'s>(delete: &Delete, outer: &'s Scope<'s>) -> Scope<'s> {
    let (FromTable::WithFromKeyword(tables) | FromTable::WithoutKeyword(tables)) = &delete.from;
    Scope::over_tables(outer, tables.iter().chain(delete.using.iter().flatten()))
}

// ---------------------------------------------------------------------------
// Output columns of statements and queries

/// The result columns of a statement: a query's projection, or the
/// RETURNING clause of INSERT, UPDATE and DELETE.
fn statement_projection(stmt: &Statement, scope: &Scope) -> Projection {
    let returning = |items: &Option<Vec<SelectItem>>, scope: &Scope| match items {
        Some(items) => items_projection(items, scope),
        None => Projection::unknown(),
    };
    match stmt {
        Statement::Query(query) => query_projection(query, scope),
        Statement::Insert(insert) => match insert_scope(insert, scope) {
            Some(target) => returning(&insert.returning, &target),
            None => Projection::unknown(),
        },
        Statement::Update(update) => returning(&update.returning, &update_scope(update, scope)),
        Statement::Delete(delete) => returning(&delete.returning, &delete_scope(delete, scope)),
        _ => Projection::unknown(),
    }
}

fn query_projection(query: &Query, outer: &Scope) -> Projection {
    set_expr_projection(&query.body, &Scope::with_ctes(query, outer))
}

fn set_expr_projection(body: &SetExpr, scope: &Scope) -> Projection {
    let Some(_depth) = scope.ctx.enter() else {
        return Projection::unknown();
    };
    match body {
        SetExpr::Select(select) => {
            items_projection(&select.projection, &Scope::over_tables(scope, &select.from))
        }
        SetExpr::Query(query) => query_projection(query, scope),
        SetExpr::SetOperation { left, right, .. } => {
            let mut projection = set_expr_projection(left, scope);
            fill_open_types(&mut projection, &set_expr_projection(right, scope));
            projection
        }
        SetExpr::Values(values) => values_projection(values, scope),
        SetExpr::Insert(stmt) | SetExpr::Update(stmt) | SetExpr::Delete(stmt) => {
            statement_projection(stmt, scope)
        }
        _ => Projection::unknown(),
    }
}

/// Completes the types a compound's first SELECT leaves open (say with a
/// NULL) from a later SELECT; names stay those of the first.
fn fill_open_types(first: &mut Projection, later: &Projection) {
    let (Some(first_types), Some(later_types)) = (first.types(), later.types()) else {
        return;
    };
    if first_types.len() == later_types.len() {
        for (column, ty) in first.columns.iter_mut().zip(later_types) {
            column.ty = column.ty.or(ty);
        }
    }
}

/// A VALUES list: SQLite names its columns column1, column2, …; each takes
/// the first type any row tells.
fn values_projection(values: &Values, scope: &Scope) -> Projection {
    let width = values.rows.first().map_or(0, |row| row.content.len());
    let columns = (0..width)
        .map(|i| Column {
            name: Some(format!("column{}", i + 1)),
            ty: values
                .rows
                .iter()
                .find_map(|row| scope.type_of(row.content.get(i)?)),
        })
        .collect();
    Projection {
        columns,
        ..Projection::default()
    }
}

fn items_projection(items: &[SelectItem], scope: &Scope) -> Projection {
    let mut projection = Projection::default();
    for item in items {
        let (expr, alias) = match item {
            SelectItem::UnnamedExpr(expr) => (expr, None),
            SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias)),
            SelectItem::ExprWithAliases { expr, aliases } => (expr, aliases.first()),
            SelectItem::Wildcard(_) => {
                projection.wildcard = true;
                projection
                    .star
                    .extend(scope.bindings.iter().map(|b| b.source.clone()));
                continue;
            }
            SelectItem::QualifiedWildcard(kind, _) => {
                projection.wildcard = true;
                if let SelectItemQualifiedWildcardKind::ObjectName(name) = kind {
                    projection
                        .star
                        .extend(scope.binding(&last_name(name)).map(|b| b.source.clone()));
                }
                continue;
            }
        };
        projection.columns.push(Column {
            name: alias.map(|a| a.value.clone()).or_else(|| expr_name(expr)),
            ty: scope.type_of(expr),
        });
    }
    projection
}

/// The name SQLite gives an unaliased column reference.
fn expr_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(ident) => Some(ident.value.clone()),
        Expr::CompoundIdentifier(parts) => parts.last().map(|p| p.value.clone()),
        _ => None,
    }
}

fn last_name(name: &ObjectName) -> String {
    name.0
        .last()
        .and_then(ObjectNamePart::as_ident)
        .map(|ident| ident.value.clone())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Expression types

impl Scope<'_> {
    /// The type `expr` evaluates to, if its text tells.
    fn type_of(&self, expr: &Expr) -> Option<ValueType> {
        let _depth = self.ctx.enter()?;
        match expr {
            Expr::Value(v) => literal_type(&v.value),
            Expr::TypedString(typed) => Some(decltype(&typed.data_type)),
            Expr::Identifier(ident) => self.column_type(None, &ident.value),
            Expr::CompoundIdentifier(parts) => self.compound_column_type(parts),
            Expr::Nested(inner) | Expr::Collate { expr: inner, .. } => self.type_of(inner),
            Expr::UnaryOp { op, expr } => self.unary_type(*op, expr),
            Expr::BinaryOp { left, op, right } => self.binary_type(left, op, right),
            Expr::Cast { data_type, .. } => Some(decltype(data_type)),
            Expr::Function(function) => self.function_type(function),
            // CASE: the first branch whose type is known.
            Expr::Case {
                conditions,
                else_result,
                ..
            } => conditions
                .iter()
                .map(|c| &c.result)
                .chain(else_result.as_deref())
                .find_map(|result| self.type_of(result)),
            Expr::Subquery(query) => self.scalar_type(query),
            Expr::Ceil { expr, .. } | Expr::Floor { expr, .. } => {
                Some(integral_type(self.type_of(expr)))
            }
            Expr::Substring { .. } | Expr::Trim { .. } => Some(ValueType::Text),
            Expr::Position { .. } => Some(ValueType::Int8),
            expr if is_predicate(expr) => Some(ValueType::Bool),
            _ => None,
        }
    }

    /// `a.b.c`: the last part is the column, the one before it the table.
    fn compound_column_type(&self, parts: &[Ident]) -> Option<ValueType> {
        match parts {
            [.., table, column] => self.column_type(Some(&table.value), &column.value),
            [column] => self.column_type(None, &column.value),
            [] => None,
        }
    }

    fn unary_type(&self, op: UnaryOperator, operand: &Expr) -> Option<ValueType> {
        match op {
            UnaryOperator::Minus | UnaryOperator::Plus => self.type_of(operand),
            UnaryOperator::Not => Some(ValueType::Bool),
            UnaryOperator::BitwiseNot => Some(ValueType::Int8),
            _ => None,
        }
    }

    fn binary_type(&self, left: &Expr, op: &BinaryOperator, right: &Expr) -> Option<ValueType> {
        use BinaryOperator::*;
        match op {
            Plus | Minus | Multiply | Divide | Modulo => {
                arithmetic_type(self.type_of(left), self.type_of(right))
            }
            StringConcat | Arrow | LongArrow => Some(ValueType::Text),
            BitwiseAnd | BitwiseOr | BitwiseXor | PGBitwiseShiftLeft | PGBitwiseShiftRight => {
                Some(ValueType::Int8)
            }
            Eq | NotEq | Lt | LtEq | Gt | GtEq | Spaceship | And | Or | Xor | Glob | Regexp
            | Match => Some(ValueType::Bool),
            _ => None,
        }
    }

    fn function_type(&self, function: &Function) -> Option<ValueType> {
        let name = function_name(function);
        let args = function_args(function);
        let first_arg = || args.first().and_then(|arg| self.type_of(arg));
        if name == "pg_array" {
            // pg_array(json_group_array(x)): an array of x's type.
            let element = match args.first() {
                Some(Expr::Function(inner)) => {
                    function_args(inner).first().and_then(|a| self.type_of(a))
                }
                _ => None,
            };
            return Some(match element.map(ValueType::storage) {
                Some(ValueType::Bool) => ValueType::BoolArray,
                Some(ValueType::Int8) => ValueType::Int8Array,
                _ => ValueType::TextArray,
            });
        }
        if let Some(ty) = fixed_result_type(&name) {
            return Some(ty);
        }
        match name.as_str() {
            // As PostgreSQL: the sum of int2 or int4 values is int8.
            "sum" => first_arg().map(|ty| if ty.is_integer() { ValueType::Int8 } else { ty }),
            "abs" | "first_value" | "last_value" | "nth_value" | "lag" | "lead" | "likely"
            | "unlikely" | "likelihood" => first_arg(),
            "ceil" | "ceiling" | "floor" | "trunc" => Some(integral_type(first_arg())),
            _ => shared_type_args(&name, &args)
                .iter()
                .find_map(|arg| self.type_of(arg)),
        }
    }

    /// Type of a subquery's only (first) column.
    fn scalar_type(&self, query: &Query) -> Option<ValueType> {
        query_projection(query, self)
            .types()?
            .first()
            .copied()
            .flatten()
    }
}

fn literal_type(value: &Value) -> Option<ValueType> {
    match value {
        // Integers beyond 64 bits are read as REAL by SQLite.
        Value::Number(..) => Some(if value.to_string().parse::<i64>().is_ok() {
            ValueType::Int8
        } else {
            ValueType::Float8
        }),
        Value::SingleQuotedString(_)
        | Value::DoubleQuotedString(_)
        | Value::EscapedStringLiteral(_)
        | Value::NationalStringLiteral(_)
        | Value::DollarQuotedString(_) => Some(ValueType::Text),
        Value::HexStringLiteral(_) => Some(ValueType::Bytea),
        Value::Boolean(_) => Some(ValueType::Bool),
        _ => None,
    }
}

/// The type a `CAST` (or typed literal) gives. `CAST(x AS INTEGER)` is
/// SQLite's cast to its 64-bit integer, so int8, unlike a column declared
/// `integer` (int4); the compatibility layer spells PostgreSQL's `::int4`
/// and `::integer` as `CAST(x AS INT4)`, which is int4.
fn decltype(data_type: &DataType) -> ValueType {
    match data_type {
        DataType::Integer(_) => ValueType::Int8,
        _ => ValueType::from_decltype(&data_type.to_string()),
    }
}

fn is_predicate(expr: &Expr) -> bool {
    matches!(
        expr,
        Expr::IsNull(_)
            | Expr::IsNotNull(_)
            | Expr::IsTrue(_)
            | Expr::IsNotTrue(_)
            | Expr::IsFalse(_)
            | Expr::IsNotFalse(_)
            | Expr::IsUnknown(_)
            | Expr::IsNotUnknown(_)
            | Expr::IsDistinctFrom(..)
            | Expr::IsNotDistinctFrom(..)
            | Expr::InList { .. }
            | Expr::InSubquery { .. }
            | Expr::Between { .. }
            | Expr::Like { .. }
            | Expr::ILike { .. }
            | Expr::SimilarTo { .. }
            | Expr::RLike { .. }
            | Expr::Exists { .. }
            | Expr::AnyOp { .. }
            | Expr::AllOp { .. }
    )
}

/// `+ - * / %`: SQLite computes in INTEGER when both sides are integers
/// (booleans are 0/1), in REAL when either is real, and converts text and
/// blobs to whichever number they spell.
fn arithmetic_type(left: Option<ValueType>, right: Option<ValueType>) -> Option<ValueType> {
    use ValueType::*;
    let numeric = |ty: ValueType| match ty.storage() {
        Int8 | Bool => Int8,
        Float8 => Float8,
        _ => Numeric,
    };
    match (left.map(numeric), right.map(numeric)) {
        (Some(Float8), _) | (_, Some(Float8)) => Some(Float8),
        (Some(Numeric), _) | (_, Some(Numeric)) => Some(Numeric),
        (left, right) => left.or(right),
    }
}

/// `ceil`, `floor`, `trunc`: integers stay integers, anything else is REAL.
fn integral_type(arg: Option<ValueType>) -> ValueType {
    match arg {
        Some(ty) if ty.is_integer() => ty,
        _ => ValueType::Float8,
    }
}

/// Functions whose result type does not depend on their arguments.
fn fixed_result_type(name: &str) -> Option<ValueType> {
    use ValueType::*;
    let ty = match name {
        "count"
        | "length"
        | "octet_length"
        | "instr"
        | "unicode"
        | "random"
        | "changes"
        | "total_changes"
        | "last_insert_rowid"
        | "row_number"
        | "rank"
        | "dense_rank"
        | "ntile"
        | "sign"
        | "unixepoch"
        | "json_array_length"
        | "json_valid"
        | "json_error_position" => Int8,
        "avg" | "total" | "round" | "julianday" | "percent_rank" | "cume_dist" | "acos"
        | "acosh" | "asin" | "asinh" | "atan" | "atan2" | "atanh" | "cos" | "cosh" | "degrees"
        | "exp" | "ln" | "log" | "log10" | "log2" | "mod" | "pi" | "pow" | "power" | "radians"
        | "sin" | "sinh" | "sqrt" | "tan" | "tanh" => Float8,
        "zeroblob" | "randomblob" | "unhex" => Bytea,
        "upper" | "lower" | "substr" | "substring" | "trim" | "ltrim" | "rtrim" | "replace"
        | "printf" | "format" | "hex" | "quote" | "typeof" | "char" | "group_concat"
        | "string_agg" | "date" | "time" | "datetime" | "strftime" | "timediff"
        | "sqlite_version" | "sqlite_source_id" | "concat" | "concat_ws" | "soundex" => Text,
        // availdb's own functions (engine/database.rs registers them).
        "version" | "current_database" => Text,
        "pg_is_in_recovery" | "pg_to_bool" | "pg_regex" | "pg_table_is_visible" => Bool,
        "pg_to_date" => Date,
        "pg_to_time" => Time,
        "pg_to_timestamp" => Timestamp,
        "pg_to_timestamptz" | "now" => Timestamptz,
        "pg_to_uuid" => Uuid,
        "pg_to_regclass" | "pg_to_regtype" | "pg_oid" => Oid,
        "format_type"
        | "array_to_string"
        | "current_schema"
        | "pg_get_userbyid"
        | "pg_encoding_to_char"
        | "quote_ident"
        | "pg_get_expr" => Text,
        "pg_backend_pid" => Int4,
        // Sequences are int8 whatever their `AS` type, as in PostgreSQL.
        "nextval" | "currval" | "lastval" | "setval" => Int8,
        // JSONB functions build SQLite's binary JSON, a blob.
        _ if name.starts_with("jsonb") => Bytea,
        _ if name.starts_with("json") => Text,
        _ => return None,
    };
    Some(ty)
}

/// The arguments of functions that return one of them unchanged
/// (`coalesce`, `min`, …): they all share the result's type.
fn shared_type_args<'a, 'e>(name: &str, args: &'a [&'e Expr]) -> &'a [&'e Expr] {
    match name {
        "coalesce" | "ifnull" | "nullif" | "max" | "min" => args,
        // iif(condition, then, else)
        "iif" => args.get(1..).unwrap_or_default(),
        _ => &[],
    }
}

/// The type a function expects at argument `position`, for the few string
/// functions where PostgreSQL would infer one too.
fn argument_type(name: &str, position: usize) -> Option<ValueType> {
    match (name, position) {
        ("upper" | "lower" | "ltrim" | "rtrim" | "trim" | "replace" | "instr", _) => {
            Some(ValueType::Text)
        }
        ("printf" | "format", 0) => Some(ValueType::Text),
        // What a PostgreSQL cast of a parameter became (`$1::uuid` →
        // `pg_to_uuid($1)`): the parameter has the cast's type, as there.
        ("pg_to_uuid", 0) => Some(ValueType::Uuid),
        ("pg_to_date", 0) => Some(ValueType::Date),
        ("pg_to_time", 0) => Some(ValueType::Time),
        ("pg_to_timestamp", 0) => Some(ValueType::Timestamp),
        ("pg_to_timestamptz", 0) => Some(ValueType::Timestamptz),
        ("pg_to_bool", 0) => Some(ValueType::Bool),
        _ => None,
    }
}

fn function_name(function: &Function) -> String {
    last_name(&function.name).to_ascii_lowercase()
}

fn function_args(function: &Function) -> Vec<&Expr> {
    let FunctionArguments::List(list) = &function.args else {
        return Vec::new();
    };
    list.args
        .iter()
        .filter_map(|arg| match arg {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(expr))
            | FunctionArg::Named {
                arg: FunctionArgExpr::Expr(expr),
                ..
            }
            | FunctionArg::ExprNamed {
                arg: FunctionArgExpr::Expr(expr),
                ..
            } => Some(expr),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Parameters

/// Walks a statement, noting for each `$N` the type its context implies.
struct ParamWalker<'c> {
    ctx: &'c Ctx<'c>,
    /// `types[N - 1]` for `$N`; the first clue wins.
    types: Vec<Option<ValueType>>,
}

impl ParamWalker<'_> {
    /// Records `ty` for `expr` if it is a placeholder not typed yet.
    fn hint(&mut self, expr: &Expr, ty: Option<ValueType>) {
        let (Some(n), Some(ty)) = (placeholder_number(expr), ty) else {
            return;
        };
        if let Some(slot) = n.checked_sub(1).and_then(|i| self.types.get_mut(i)) {
            slot.get_or_insert(ty);
        }
    }

    /// Two expressions that must have the same type (compared, combined):
    /// a placeholder on either side takes the other side's type.
    fn unify(&mut self, a: &Expr, b: &Expr, scope: &Scope) {
        if let (Expr::Tuple(xs), Expr::Tuple(ys)) = (a, b) {
            for (x, y) in xs.iter().zip(ys) {
                self.unify(x, y, scope);
            }
            return;
        }
        self.hint(a, scope.type_of(b));
        self.hint(b, scope.type_of(a));
    }

    fn walk_statement(&mut self, stmt: &Statement, scope: &Scope) {
        match stmt {
            Statement::Query(query) => self.walk_query(query, scope),
            Statement::Insert(insert) => self.walk_insert(insert, scope),
            Statement::Update(update) => self.walk_update(update, scope),
            Statement::Delete(delete) => self.walk_delete(delete, scope),
            _ => {}
        }
    }

    fn walk_insert(&mut self, insert: &Insert, outer: &Scope) {
        let Some(scope) = insert_scope(insert, outer) else {
            return;
        };
        let target = scope.bindings.first().map(|b| &b.source);
        if let Some(source) = &insert.source {
            let column_types: Vec<_> = match target {
                // No column list: the values fill the table's columns in order.
                Some(Source::Table(table)) if insert.columns.is_empty() => self
                    .ctx
                    .schema
                    .table_columns(table)
                    .unwrap_or_default()
                    .into_iter()
                    .map(Some)
                    .collect(),
                _ => insert
                    .columns
                    .iter()
                    .map(|column| self.target_column_type(target, column))
                    .collect(),
            };
            self.assign_output_types(&source.body, &column_types);
            self.walk_query(source, outer);
        }
        self.walk_assignments(&insert.assignments, target, &scope);
        if let Some(OnInsert::OnConflict(OnConflict {
            action: OnConflictAction::DoUpdate(update),
            ..
        })) = &insert.on
        {
            self.walk_assignments(&update.assignments, target, &scope);
            self.walk_opt_expr(update.selection.as_ref(), &scope);
        }
        self.walk_items(insert.returning.iter().flatten(), &scope);
    }

    fn walk_update(&mut self, update: &Update, outer: &Scope) {
        if let Some(UpdateTableFromKind::BeforeSet(from) | UpdateTableFromKind::AfterSet(from)) =
            &update.from
        {
            self.walk_from(from, outer);
        }
        let scope = update_scope(update, outer);
        let target = scope.bindings.first().map(|b| &b.source);
        self.walk_assignments(&update.assignments, target, &scope);
        self.walk_opt_expr(update.selection.as_ref(), &scope);
        self.walk_items(update.returning.iter().flatten(), &scope);
        self.walk_dml_tail(&update.order_by, update.limit.as_ref(), &scope);
    }

    fn walk_delete(&mut self, delete: &Delete, outer: &Scope) {
        let scope = delete_scope(delete, outer);
        self.walk_opt_expr(delete.selection.as_ref(), &scope);
        self.walk_items(delete.returning.iter().flatten(), &scope);
        self.walk_dml_tail(&delete.order_by, delete.limit.as_ref(), &scope);
    }

    /// `ORDER BY … LIMIT n` of UPDATE and DELETE.
    fn walk_dml_tail(&mut self, order_by: &[OrderByExpr], limit: Option<&Expr>, scope: &Scope) {
        for item in order_by {
            self.walk_expr(&item.expr, scope);
        }
        self.walk_count(limit, scope);
    }

    fn target_column_type(
        &self,
        target: Option<&Source>,
        column: &ObjectName,
    ) -> Option<ValueType> {
        target?.column_type(&last_name(column), self.ctx.schema)
    }

    /// `SET column = value`: the value takes the column's type.
    fn walk_assignments(
        &mut self,
        assignments: &[Assignment],
        target: Option<&Source>,
        scope: &Scope,
    ) {
        for assignment in assignments {
            match (&assignment.target, &assignment.value) {
                (AssignmentTarget::ColumnName(column), value) => {
                    self.hint(value, self.target_column_type(target, column));
                }
                (AssignmentTarget::Tuple(columns), Expr::Tuple(values)) => {
                    for (column, value) in columns.iter().zip(values) {
                        self.hint(value, self.target_column_type(target, column));
                    }
                }
                _ => {}
            }
            self.walk_expr(&assignment.value, scope);
        }
    }

    /// Types bare placeholders in the output of `body` by position, as the
    /// columns of an `INSERT … SELECT`/`VALUES` or a UNION's other side.
    fn assign_output_types(&mut self, body: &SetExpr, types: &[Option<ValueType>]) {
        let ctx = self.ctx;
        let Some(_depth) = ctx.enter() else {
            return;
        };
        match body {
            SetExpr::Select(select) => {
                for (item, ty) in select.projection.iter().zip(types) {
                    if let SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } =
                        item
                    {
                        self.hint(expr, *ty);
                    }
                }
            }
            SetExpr::Values(values) => {
                for row in &values.rows {
                    for (expr, ty) in row.content.iter().zip(types) {
                        self.hint(expr, *ty);
                    }
                }
            }
            SetExpr::Query(query) => self.assign_output_types(&query.body, types),
            SetExpr::SetOperation { left, right, .. } => {
                self.assign_output_types(left, types);
                self.assign_output_types(right, types);
            }
            _ => {}
        }
    }

    fn walk_query(&mut self, query: &Query, outer: &Scope) {
        let scope = Scope::with_ctes(query, outer);
        for cte in query.with.iter().flat_map(|w| &w.cte_tables) {
            self.walk_query(&cte.query, &scope);
        }
        // ORDER BY sees the FROM of a simple SELECT.
        let select_scope = match query.body.as_ref() {
            SetExpr::Select(select) => Some(self.walk_select(select, &scope)),
            body => {
                self.walk_set_expr(body, &scope);
                None
            }
        };
        self.walk_order_by(
            query.order_by.as_ref(),
            select_scope.as_ref().unwrap_or(&scope),
        );
        match &query.limit_clause {
            Some(LimitClause::LimitOffset { limit, offset, .. }) => {
                self.walk_count(limit.as_ref(), &scope);
                self.walk_count(offset.as_ref().map(|o| &o.value), &scope);
            }
            Some(LimitClause::OffsetCommaLimit { offset, limit }) => {
                self.walk_count(Some(offset), &scope);
                self.walk_count(Some(limit), &scope);
            }
            None => {}
        }
    }

    /// A row count (LIMIT, OFFSET) is an integer.
    fn walk_count(&mut self, count: Option<&Expr>, scope: &Scope) {
        if let Some(count) = count {
            self.hint(count, Some(ValueType::Int8));
            self.walk_expr(count, scope);
        }
    }

    fn walk_order_by(&mut self, order_by: Option<&OrderBy>, scope: &Scope) {
        if let Some(OrderBy {
            kind: OrderByKind::Expressions(items),
            ..
        }) = order_by
        {
            for item in items {
                self.walk_expr(&item.expr, scope);
            }
        }
    }

    fn walk_set_expr(&mut self, body: &SetExpr, scope: &Scope) {
        let ctx = self.ctx;
        let Some(_depth) = ctx.enter() else {
            return;
        };
        // `… UNION … UNION …` chains: left spine in a loop, as in walk_expr.
        let mut node = body;
        while let SetExpr::SetOperation { left, right, .. } = node {
            self.walk_set_expr(right, scope);
            // Each side's columns type the other's bare placeholders.
            if let Some(types) = set_expr_projection(left, scope).types() {
                self.assign_output_types(right, &types);
            }
            if let Some(types) = set_expr_projection(right, scope).types() {
                self.assign_output_types(left, &types);
            }
            node = left;
        }
        match node {
            SetExpr::Select(select) => {
                self.walk_select(select, scope);
            }
            SetExpr::Query(query) => self.walk_query(query, scope),
            SetExpr::Values(values) => {
                for row in &values.rows {
                    self.walk_exprs(&row.content, scope);
                }
                // A column's placeholders take the type of its other rows.
                if let Some(types) = values_projection(values, scope).types() {
                    self.assign_output_types(node, &types);
                }
            }
            SetExpr::Insert(stmt) | SetExpr::Update(stmt) | SetExpr::Delete(stmt) => {
                self.walk_statement(stmt, scope);
            }
            _ => {}
        }
    }

    /// Walks a SELECT and returns its scope, which its query's ORDER BY uses.
    fn walk_select<'s>(&mut self, select: &Select, outer: &'s Scope<'s>) -> Scope<'s> {
        self.walk_from(&select.from, outer);
        let scope = Scope::over_tables(outer, &select.from);
        for table in &select.from {
            for join in &table.joins {
                self.walk_opt_expr(join_condition(&join.join_operator), &scope);
            }
        }
        self.walk_items(&select.projection, &scope);
        self.walk_opt_expr(select.selection.as_ref(), &scope);
        if let GroupByExpr::Expressions(exprs, _) = &select.group_by {
            self.walk_exprs(exprs, &scope);
        }
        self.walk_opt_expr(select.having.as_ref(), &scope);
        self.walk_opt_expr(select.qualify.as_ref(), &scope);
        scope
    }

    /// Subqueries in FROM, which see the scope around the SELECT.
    fn walk_from(&mut self, tables: &[TableWithJoins], outer: &Scope) {
        for table in tables {
            self.walk_factor(&table.relation, outer);
            for join in &table.joins {
                self.walk_factor(&join.relation, outer);
            }
        }
    }

    fn walk_factor(&mut self, factor: &TableFactor, outer: &Scope) {
        match factor {
            TableFactor::Derived { subquery, .. } => self.walk_query(subquery, outer),
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => {
                self.walk_from(std::slice::from_ref(table_with_joins.as_ref()), outer);
            }
            _ => {}
        }
    }

    fn walk_items<'i>(&mut self, items: impl IntoIterator<Item = &'i SelectItem>, scope: &Scope) {
        for item in items {
            if let SelectItem::UnnamedExpr(expr)
            | SelectItem::ExprWithAlias { expr, .. }
            | SelectItem::ExprWithAliases { expr, .. } = item
            {
                self.walk_expr(expr, scope);
            }
        }
    }

    fn walk_exprs(&mut self, exprs: &[Expr], scope: &Scope) {
        for expr in exprs {
            self.walk_expr(expr, scope);
        }
    }

    fn walk_opt_expr(&mut self, expr: Option<&Expr>, scope: &Scope) {
        if let Some(expr) = expr {
            self.walk_expr(expr, scope);
        }
    }

    fn walk_expr(&mut self, expr: &Expr, scope: &Scope) {
        let ctx = self.ctx;
        let Some(_depth) = ctx.enter() else {
            return;
        };
        // Operator chains (`a = $1 OR a = $2 OR …`) are as deep as they are
        // long: follow their left spine in a loop, so that the depth bound
        // does not hide the operands of long chains.
        let mut node = expr;
        while let Expr::BinaryOp { left, right, .. } = node {
            self.hint_from_context(node, scope);
            self.walk_expr(right, scope);
            node = left;
        }
        self.hint_from_context(node, scope);
        for child in children(node) {
            self.walk_expr(child, scope);
        }
        if let Some(query) = subquery(node) {
            self.walk_query(query, scope);
        }
    }

    /// The rules: what an expression tells about the placeholders directly
    /// inside it.
    fn hint_from_context(&mut self, expr: &Expr, scope: &Scope) {
        use ValueType::*;
        match expr {
            Expr::BinaryOp { left, op, right } => self.hint_binary(left, op, right, scope),
            Expr::IsDistinctFrom(a, b) | Expr::IsNotDistinctFrom(a, b) => self.unify(a, b, scope),
            Expr::InList { expr, list, .. } => {
                for item in list {
                    self.unify(expr, item, scope);
                }
            }
            Expr::InSubquery { expr, subquery, .. } => self.hint(expr, scope.scalar_type(subquery)),
            Expr::Between {
                expr, low, high, ..
            } => {
                self.unify(expr, low, scope);
                self.unify(expr, high, scope);
                self.unify(low, high, scope);
            }
            Expr::Like {
                expr,
                pattern,
                escape_char,
                ..
            }
            | Expr::ILike {
                expr,
                pattern,
                escape_char,
                ..
            } => {
                for operand in [expr, pattern].into_iter().chain(escape_char) {
                    self.hint(operand, Some(Text));
                }
            }
            Expr::Cast {
                expr, data_type, ..
            } => self.hint(expr, Some(decltype(data_type))),
            Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                // `CASE x WHEN $1`: compared with x.
                if let Some(operand) = operand {
                    for when in conditions {
                        self.unify(operand, &when.condition, scope);
                    }
                }
                // Every branch has the type of the whole.
                let ty = scope.type_of(expr);
                for result in conditions
                    .iter()
                    .map(|c| &c.result)
                    .chain(else_result.as_deref())
                {
                    self.hint(result, ty);
                }
            }
            Expr::Function(function) => self.hint_function_args(function, scope),
            Expr::Substring {
                expr,
                substring_from,
                substring_for,
                ..
            } => {
                self.hint(expr, Some(Text));
                for bound in substring_from.iter().chain(substring_for) {
                    self.hint(bound, Some(Int8));
                }
            }
            Expr::Trim { .. } | Expr::Position { .. } => {
                for operand in children(expr) {
                    self.hint(operand, Some(Text));
                }
            }
            _ => {}
        }
    }

    fn hint_binary(&mut self, left: &Expr, op: &BinaryOperator, right: &Expr, scope: &Scope) {
        use BinaryOperator::*;
        let both = match op {
            Eq | NotEq | Lt | LtEq | Gt | GtEq | Spaceship | Plus | Minus | Multiply | Divide
            | Modulo => {
                return self.unify(left, right, scope);
            }
            StringConcat | Glob | Regexp | Match => ValueType::Text,
            BitwiseAnd | BitwiseOr | BitwiseXor | PGBitwiseShiftLeft | PGBitwiseShiftRight => {
                ValueType::Int8
            }
            And | Or | Xor => ValueType::Bool,
            _ => return,
        };
        self.hint(left, Some(both));
        self.hint(right, Some(both));
    }

    fn hint_function_args(&mut self, function: &Function, scope: &Scope) {
        let name = function_name(function);
        let args = function_args(function);
        let shared = shared_type_args(&name, &args);
        if !shared.is_empty() {
            let ty = scope.function_type(function);
            for arg in shared {
                self.hint(arg, ty);
            }
        }
        for (position, arg) in args.iter().enumerate() {
            self.hint(arg, argument_type(&name, position));
        }
    }
}

/// The number N of a `$N` placeholder, seen through parentheses, COLLATE
/// and a sign.
fn placeholder_number(expr: &Expr) -> Option<usize> {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::Placeholder(p) => p.strip_prefix('$')?.parse().ok(),
            _ => None,
        },
        Expr::Nested(inner)
        | Expr::Collate { expr: inner, .. }
        | Expr::UnaryOp {
            op: UnaryOperator::Minus | UnaryOperator::Plus,
            expr: inner,
        } => placeholder_number(inner),
        _ => None,
    }
}

fn join_condition(op: &JoinOperator) -> Option<&Expr> {
    use JoinOperator::*;
    let constraint = match op {
        Join(c) | Inner(c) | Left(c) | LeftOuter(c) | Right(c) | RightOuter(c) | FullOuter(c)
        | CrossJoin(c) | Semi(c) | LeftSemi(c) | RightSemi(c) | Anti(c) | LeftAnti(c)
        | RightAnti(c) | StraightJoin(c) => c,
        AsOf { constraint, .. } => constraint,
        _ => return None,
    };
    match constraint {
        JoinConstraint::On(expr) => Some(expr),
        _ => None,
    }
}

/// The sub-expressions parameters may hide in (subqueries aside).
fn children(expr: &Expr) -> Vec<&Expr> {
    match expr {
        Expr::BinaryOp { left, right, .. }
        | Expr::AnyOp { left, right, .. }
        | Expr::AllOp { left, right, .. }
        | Expr::IsDistinctFrom(left, right)
        | Expr::IsNotDistinctFrom(left, right) => vec![left, right],
        Expr::UnaryOp { expr, .. }
        | Expr::Nested(expr)
        | Expr::Collate { expr, .. }
        | Expr::Cast { expr, .. }
        | Expr::Ceil { expr, .. }
        | Expr::Floor { expr, .. }
        | Expr::InSubquery { expr, .. }
        | Expr::IsNull(expr)
        | Expr::IsNotNull(expr)
        | Expr::IsTrue(expr)
        | Expr::IsNotTrue(expr)
        | Expr::IsFalse(expr)
        | Expr::IsNotFalse(expr)
        | Expr::IsUnknown(expr)
        | Expr::IsNotUnknown(expr) => vec![expr],
        Expr::InList { expr, list, .. } => iter::once(expr.as_ref()).chain(list).collect(),
        Expr::Between {
            expr, low, high, ..
        } => vec![expr, low, high],
        Expr::Like {
            expr,
            pattern,
            escape_char,
            ..
        }
        | Expr::ILike {
            expr,
            pattern,
            escape_char,
            ..
        } => [expr.as_ref(), pattern]
            .into_iter()
            .chain(escape_char.as_deref())
            .collect(),
        Expr::Function(function) => {
            let mut args = function_args(function);
            args.extend(function.filter.as_deref());
            args
        }
        Expr::Case {
            operand,
            conditions,
            else_result,
            ..
        } => operand
            .as_deref()
            .into_iter()
            .chain(conditions.iter().flat_map(|c| [&c.condition, &c.result]))
            .chain(else_result.as_deref())
            .collect(),
        Expr::Tuple(items) => items.iter().collect(),
        Expr::Substring {
            expr,
            substring_from,
            substring_for,
            ..
        } => iter::once(expr.as_ref())
            .chain(substring_from.as_deref())
            .chain(substring_for.as_deref())
            .collect(),
        Expr::Trim {
            expr,
            trim_what,
            trim_characters,
            ..
        } => iter::once(expr.as_ref())
            .chain(trim_what.as_deref())
            .chain(trim_characters.iter().flatten())
            .collect(),
        Expr::Position { expr, r#in } => vec![expr, r#in],
        _ => Vec::new(),
    }
}

fn subquery(expr: &Expr) -> Option<&Query> {
    match expr {
        Expr::InSubquery { subquery, .. }
        | Expr::Exists { subquery, .. }
        | Expr::Subquery(subquery) => Some(subquery),
        Expr::Function(Function {
            args: FunctionArguments::Subquery(query),
            ..
        }) => Some(query),
        _ => None,
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use ValueType::*;

    /// users(id INTEGER, name TEXT, score REAL, balance NUMERIC,
    ///       active BOOLEAN, avatar BLOB, created TIMESTAMP);
    /// orders(id INTEGER, user_id INTEGER, total REAL, note TEXT).
    struct TestSchema(Vec<((String, String), ValueType)>);

    impl TestSchema {
        fn new() -> Self {
            let columns = [
                ("users", "id", Int8),
                ("users", "name", Text),
                ("users", "score", Float8),
                ("users", "balance", Numeric),
                ("users", "active", Bool),
                ("users", "avatar", Bytea),
                ("users", "created", Text),
                ("orders", "id", Int8),
                ("orders", "user_id", Int8),
                ("orders", "total", Float8),
                ("orders", "note", Text),
            ];
            TestSchema(
                columns
                    .into_iter()
                    .map(|(t, c, ty)| ((t.to_string(), c.to_string()), ty))
                    .collect(),
            )
        }
    }

    impl Schema for TestSchema {
        fn column_type(&self, table: &str, column: &str) -> Option<ValueType> {
            let key = (table.to_ascii_lowercase(), column.to_ascii_lowercase());
            self.0.iter().find(|(k, _)| *k == key).map(|(_, ty)| *ty)
        }

        fn table_columns(&self, table: &str) -> Option<Vec<ValueType>> {
            let table = table.to_ascii_lowercase();
            let cols: Vec<_> = self
                .0
                .iter()
                .filter(|((t, _), _)| *t == table)
                .map(|(_, ty)| *ty)
                .collect();
            (!cols.is_empty()).then_some(cols)
        }
    }

    /// Checks `infer_parameter_types` on (sql, expected types of $1..) cases.
    fn check_params(cases: &[(&str, &[Option<ValueType>])]) {
        let schema = TestSchema::new();
        for (sql, want) in cases {
            let got = infer_parameter_types(sql, want.len(), &schema);
            assert_eq!(&got, want, "{sql}");
        }
    }

    /// Checks `infer_column_types` on (sql, expected column types) cases,
    /// with no declared types.
    fn check_columns(cases: &[(&str, &[ValueType])]) {
        let schema = TestSchema::new();
        for (sql, want) in cases {
            let got = infer_column_types(sql, &vec![None; want.len()], &schema);
            assert_eq!(&got, want, "{sql}");
        }
    }

    #[test]
    fn insert_values_take_target_column_types() {
        check_params(&[
            (
                "INSERT INTO users (id, name, score) VALUES ($1, $2, $3)",
                &[Some(Int8), Some(Text), Some(Float8)],
            ),
            (
                "INSERT INTO users (name, active) VALUES ($1, $2), ($3, $4)",
                &[Some(Text), Some(Bool), Some(Text), Some(Bool)],
            ),
            ("INSERT INTO Users (NAME) VALUES ($1)", &[Some(Text)]),
            (
                "INSERT INTO main.users (avatar) VALUES ($1)",
                &[Some(Bytea)],
            ),
            (
                "INSERT OR REPLACE INTO users (balance) VALUES ($1)",
                &[Some(Numeric)],
            ),
            ("REPLACE INTO users (id) VALUES ($1)", &[Some(Int8)]),
            // An expression around the placeholder types it by its own rules.
            ("INSERT INTO users (name) VALUES ($1 + 1)", &[Some(Int8)]),
        ]);
    }

    #[test]
    fn a_parameter_cast_to_a_postgresql_type_takes_that_type() {
        check_params(&[(
            "SELECT pg_to_uuid($1), pg_to_date($2), pg_to_time($3), pg_to_timestamp($4), pg_to_timestamptz($5), pg_to_bool($6)",
            &[Some(Uuid), Some(Date), Some(Time), Some(Timestamp), Some(Timestamptz), Some(Bool)],
        )]);
    }

    #[test]
    fn insert_without_column_list_takes_table_column_order() {
        check_params(&[
            (
                "INSERT INTO users VALUES ($1, $2)",
                &[Some(Int8), Some(Text)],
            ),
            (
                "INSERT INTO orders VALUES ($1, $2, $3, $4)",
                &[Some(Int8), Some(Int8), Some(Float8), Some(Text)],
            ),
            ("INSERT INTO nosuch VALUES ($1)", &[None]),
        ]);
    }

    #[test]
    fn insert_select_types_projection_by_position() {
        check_params(&[
            (
                "INSERT INTO orders (user_id, note) SELECT $1, $2",
                &[Some(Int8), Some(Text)],
            ),
            (
                "INSERT INTO orders (user_id, total) SELECT id, $1 FROM users WHERE name = $2",
                &[Some(Float8), Some(Text)],
            ),
        ]);
    }

    #[test]
    fn upsert_assignments_take_target_column_types() {
        check_params(&[
            (
                "INSERT INTO users (id, name) VALUES ($1, $2) \
                 ON CONFLICT (id) DO UPDATE SET score = $3",
                &[Some(Int8), Some(Text), Some(Float8)],
            ),
            (
                "INSERT INTO users (id) VALUES (1) ON CONFLICT (id) \
                 DO UPDATE SET name = excluded.name WHERE excluded.score > $1",
                &[Some(Float8)],
            ),
            (
                "INSERT INTO users AS u (id) VALUES ($1) \
                 ON CONFLICT DO UPDATE SET name = $2 WHERE u.score > $3",
                &[Some(Int8), Some(Text), Some(Float8)],
            ),
        ]);
    }

    #[test]
    fn update_set_and_where_take_column_types() {
        check_params(&[
            ("UPDATE users SET name = $1 WHERE id = $2", &[Some(Text), Some(Int8)]),
            (
                "UPDATE users AS u SET score = $1, active = $2 WHERE u.balance < $3",
                &[Some(Float8), Some(Bool), Some(Numeric)],
            ),
            ("UPDATE users SET (name, score) = ($1, $2)", &[Some(Text), Some(Float8)]),
            (
                "UPDATE orders SET total = $1 FROM users WHERE users.id = orders.user_id AND users.name = $2",
                &[Some(Float8), Some(Text)],
            ),
            ("UPDATE users SET score = score * $1", &[Some(Float8)]),
        ]);
    }

    #[test]
    fn delete_where_takes_column_types() {
        check_params(&[(
            "DELETE FROM users WHERE created < $1 AND id <> $2",
            &[Some(Text), Some(Int8)],
        )]);
    }

    #[test]
    fn comparisons_type_either_side() {
        check_params(&[
            (
                "SELECT * FROM users WHERE id = $1 AND $2 = name AND score <> $3 AND score != $4",
                &[Some(Int8), Some(Text), Some(Float8), Some(Float8)],
            ),
            (
                "SELECT * FROM users WHERE id < $1 OR id <= $2 OR $3 > score OR $4 >= balance",
                &[Some(Int8), Some(Int8), Some(Float8), Some(Numeric)],
            ),
            ("SELECT * FROM users WHERE (id = $1)", &[Some(Int8)]),
            (
                "SELECT * FROM users WHERE name = $1 COLLATE NOCASE",
                &[Some(Text)],
            ),
            (
                "SELECT * FROM users WHERE (id, name) = ($1, $2)",
                &[Some(Int8), Some(Text)],
            ),
        ]);
    }

    #[test]
    fn comparisons_resolve_qualified_names_and_aliases() {
        check_params(&[
            ("SELECT * FROM users u WHERE u.score = $1", &[Some(Float8)]),
            ("SELECT * FROM users AS u WHERE u.name = $1", &[Some(Text)]),
            ("SELECT * FROM main.users WHERE users.active = $1", &[Some(Bool)]),
            (
                "SELECT * FROM users u JOIN orders o ON o.user_id = u.id AND o.total > $1 WHERE u.name = $2",
                &[Some(Float8), Some(Text)],
            ),
            // Unqualified names are looked up in every table of the FROM.
            (
                "SELECT * FROM users, orders WHERE note = $1 AND score = $2",
                &[Some(Text), Some(Float8)],
            ),
            (
                "SELECT * FROM users LEFT JOIN orders ON user_id = $1",
                &[Some(Int8)],
            ),
        ]);
    }

    #[test]
    fn like_glob_and_concat_take_text() {
        check_params(&[
            ("SELECT * FROM users WHERE name LIKE $1", &[Some(Text)]),
            (
                "SELECT * FROM users WHERE id NOT LIKE $1 ESCAPE $2",
                &[Some(Text), Some(Text)],
            ),
            ("SELECT * FROM users WHERE name GLOB $1", &[Some(Text)]),
            ("SELECT name || $1 FROM users", &[Some(Text)]),
        ]);
    }

    #[test]
    fn in_lists_and_between_take_the_other_operand_type() {
        check_params(&[
            (
                "SELECT * FROM users WHERE id IN ($1, $2, 3)",
                &[Some(Int8), Some(Int8)],
            ),
            ("SELECT * FROM users WHERE $1 IN (name, 'x')", &[Some(Text)]),
            (
                "SELECT * FROM users WHERE score BETWEEN $1 AND $2",
                &[Some(Float8), Some(Float8)],
            ),
            (
                "SELECT * FROM users WHERE $1 BETWEEN 1 AND 10",
                &[Some(Int8)],
            ),
        ]);
    }

    #[test]
    fn having_and_group_by_are_searched() {
        check_params(&[(
            "SELECT user_id FROM orders GROUP BY user_id HAVING count(*) > $1 AND user_id <> $2",
            &[Some(Int8), Some(Int8)],
        )]);
    }

    #[test]
    fn arithmetic_types_parameters_from_the_other_side() {
        check_params(&[
            ("SELECT score + $1 FROM users", &[Some(Float8)]),
            ("SELECT $1 * balance FROM users", &[Some(Numeric)]),
            ("SELECT $1 + 1", &[Some(Int8)]),
            ("SELECT $1 + 1.5", &[Some(Float8)]),
            ("SELECT -$1 - 2", &[Some(Int8)]),
            ("SELECT id & $1 FROM users", &[Some(Int8)]),
        ]);
    }

    #[test]
    fn limit_and_offset_take_int8() {
        check_params(&[
            (
                "SELECT * FROM users LIMIT $1 OFFSET $2",
                &[Some(Int8), Some(Int8)],
            ),
            (
                "SELECT * FROM users LIMIT $1, $2",
                &[Some(Int8), Some(Int8)],
            ),
            ("SELECT * FROM users ORDER BY id LIMIT $1", &[Some(Int8)]),
            (
                "UPDATE users SET score = 0 ORDER BY id LIMIT $1",
                &[Some(Int8)],
            ),
            ("DELETE FROM users WHERE name = '' LIMIT $1", &[Some(Int8)]),
        ]);
    }

    #[test]
    fn cast_types_its_operand() {
        check_params(&[(
            "SELECT CAST($1 AS INTEGER), CAST($2 AS TEXT), CAST($3 AS REAL), CAST($4 AS BLOB), \
             CAST($5 AS NUMERIC), CAST($6 AS BOOLEAN)",
            &[
                Some(Int8),
                Some(Text),
                Some(Float8),
                Some(Bytea),
                Some(Numeric),
                Some(Bool),
            ],
        )]);
    }

    #[test]
    fn bare_placeholders_stay_unknown() {
        check_params(&[
            ("SELECT $1", &[None]),
            ("SELECT $1, $2 FROM users", &[None, None]),
            ("SELECT length($1)", &[None]),
            ("SELECT $1 IS NULL", &[None]),
        ]);
    }

    #[test]
    fn parameter_vector_matches_n_params() {
        let schema = TestSchema::new();
        // $3 is beyond n_params; $2 is never used.
        let sql = "SELECT * FROM users WHERE id = $1 AND name = $3";
        assert_eq!(
            infer_parameter_types(sql, 2, &schema),
            vec![Some(Int8), None]
        );
        assert_eq!(infer_parameter_types(sql, 0, &schema), vec![]);
        // `$0` and non-numbered placeholders are ignored.
        let sql = "SELECT * FROM users WHERE id = $0 AND name = ?";
        assert_eq!(infer_parameter_types(sql, 1, &schema), vec![None]);
    }

    #[test]
    fn subqueries_resolve_names_in_their_own_from() {
        check_params(&[
            (
                "SELECT * FROM users WHERE id IN (SELECT user_id FROM orders WHERE total > $1)",
                &[Some(Float8)],
            ),
            (
                "SELECT * FROM users WHERE $1 IN (SELECT total FROM orders)",
                &[Some(Float8)],
            ),
            (
                "SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id AND o.note = $1)",
                &[Some(Text)],
            ),
            (
                "SELECT name, (SELECT max(total) FROM orders WHERE user_id = users.id AND total < $1) FROM users \
                 WHERE (SELECT count(*) FROM orders) > $2",
                &[Some(Float8), Some(Int8)],
            ),
            // Correlated: the inner `score` is found in the outer FROM.
            (
                "SELECT * FROM users WHERE EXISTS (SELECT 1 FROM orders WHERE score = $1)",
                &[Some(Float8)],
            ),
            (
                "SELECT * FROM (SELECT name AS n, score FROM users) AS s WHERE s.n = $1 AND score > $2",
                &[Some(Text), Some(Float8)],
            ),
            (
                "SELECT * FROM (SELECT * FROM users) WHERE balance = $1",
                &[Some(Numeric)],
            ),
            (
                "SELECT x FROM (SELECT id, name FROM users) AS s(x, y) WHERE y = $1",
                &[Some(Text)],
            ),
        ]);
    }

    #[test]
    fn ctes_are_resolved_like_tables() {
        check_params(&[
            (
                "WITH big AS (SELECT user_id, total AS amount FROM orders WHERE total > $1) \
                 SELECT * FROM big WHERE amount < $2 AND big.user_id = $3",
                &[Some(Float8), Some(Float8), Some(Int8)],
            ),
            (
                "WITH c(n) AS (SELECT 1) SELECT * FROM c WHERE n = $1",
                &[Some(Int8)],
            ),
            (
                "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < $1) SELECT n FROM c",
                &[Some(Int8)],
            ),
        ]);
    }

    #[test]
    fn compound_and_values_columns_type_each_other() {
        check_params(&[
            ("SELECT id FROM users UNION SELECT $1", &[Some(Int8)]),
            (
                "SELECT $1, 'x' UNION ALL SELECT score, $2 FROM users",
                &[Some(Float8), Some(Text)],
            ),
            ("VALUES (1, $1), ($2, 'a')", &[Some(Text), Some(Int8)]),
        ]);
    }

    #[test]
    fn case_and_coalesce_share_their_result_type() {
        check_params(&[
            (
                "SELECT CASE WHEN active THEN name ELSE $1 END FROM users",
                &[Some(Text)],
            ),
            (
                "SELECT CASE id WHEN $1 THEN 'one' END FROM users",
                &[Some(Int8)],
            ),
            ("SELECT coalesce(score, $1) FROM users", &[Some(Float8)]),
            ("SELECT ifnull($1, balance) FROM users", &[Some(Numeric)]),
            ("SELECT iif(active, $1, id) FROM users", &[Some(Int8)]),
            ("SELECT max(id, $1) FROM users", &[Some(Int8)]),
        ]);
    }

    #[test]
    fn string_functions_take_text_arguments() {
        check_params(&[
            (
                "SELECT upper($1), replace($2, 'a', 'b')",
                &[Some(Text), Some(Text)],
            ),
            (
                "SELECT substr($1, $2, $3)",
                &[Some(Text), Some(Int8), Some(Int8)],
            ),
            ("SELECT printf($1, 1)", &[Some(Text)]),
            ("SELECT trim($1)", &[Some(Text)]),
        ]);
    }

    #[test]
    fn returning_and_logic_operands_are_searched() {
        check_params(&[
            (
                "DELETE FROM users WHERE id = 1 RETURNING score + $1",
                &[Some(Float8)],
            ),
            ("SELECT * FROM users WHERE active AND $1", &[Some(Bool)]),
            (
                "SELECT * FROM users WHERE count(id) FILTER (WHERE id > $1) > 0",
                &[Some(Int8)],
            ),
        ]);
    }

    #[test]
    fn sqlite_only_syntax_is_understood() {
        check_params(&[
            ("SELECT * FROM users WHERE name IS $1", &[Some(Text)]),
            ("SELECT * FROM users WHERE score IS NOT $1", &[Some(Float8)]),
            (
                "SELECT * FROM users WHERE name ISNULL AND id = $1",
                &[Some(Int8)],
            ),
            (
                "SELECT * FROM users WHERE name NOTNULL AND id = $1",
                &[Some(Int8)],
            ),
            (
                "SELECT * FROM users INDEXED BY users_name WHERE name = $1",
                &[Some(Text)],
            ),
            (
                "SELECT * FROM users NOT INDEXED WHERE score = $1",
                &[Some(Float8)],
            ),
            ("SELECT * FROM users WHERE id << 2 = $1", &[Some(Int8)]),
            ("SELECT * FROM users WHERE rowid = $1", &[Some(Int8)]),
            (
                "SELECT * FROM users WHERE id IS NOT NULL AND name = $1",
                &[Some(Text)],
            ),
        ]);
    }

    #[test]
    fn unparsable_statements_give_no_parameter_types() {
        check_params(&[
            ("SELEC oops $1", &[None]),
            ("", &[None]),
            ("PRAGMA table_info(users)", &[None]),
            (
                "CREATE TRIGGER t AFTER INSERT ON users BEGIN UPDATE orders SET note = 'x' WHERE id = new.id; END",
                &[None],
            ),
            ("SELECT * FROM users WHERE id = $1 AND (", &[None]),
            ("CREATE TABLE x (a INTEGER DEFAULT $1)", &[None]),
        ]);
    }

    #[test]
    fn literal_columns_have_their_literal_types() {
        check_columns(&[(
            "SELECT 1, -2, 1.5, 1e3, 99999999999999999999, 'a', X'01', 0x1F, NULL, TRUE, FALSE",
            &[
                Int8, Int8, Float8, Float8, Float8, Text, Bytea, Int8, Text, Bool, Bool,
            ],
        )]);
    }

    #[test]
    fn function_columns_have_known_result_types() {
        check_columns(&[
            (
                "SELECT count(*), count(id), length(name), instr(name, 'a'), unicode(name), random(), \
                 changes(), total_changes(), last_insert_rowid(), octet_length(name) FROM users",
                &[Int8; 10],
            ),
            (
                "SELECT row_number() OVER (), rank() OVER (ORDER BY id), dense_rank() OVER (ORDER BY id), \
                 ntile(2) OVER () FROM users",
                &[Int8; 4],
            ),
            ("SELECT avg(id), total(id), round(score), round(score, 2) FROM users", &[Float8; 4]),
            (
                "SELECT sum(id), sum(score), max(name), min(balance), abs(score), coalesce(NULL, score), \
                 ifnull(name, 'x'), nullif(id, 0) FROM users",
                &[Int8, Float8, Text, Numeric, Float8, Float8, Text, Int8],
            ),
            (
                "SELECT first_value(name) OVER (), last_value(score) OVER (), lag(id) OVER (), \
                 lead(balance) OVER () FROM users",
                &[Text, Float8, Int8, Numeric],
            ),
            (
                "SELECT upper(name), lower(name), substr(name, 1), substring(name, 1, 2), trim(name), ltrim(name), \
                 rtrim(name), replace(name, 'a', 'b'), printf('%d', id), format('%d', id), hex(id), quote(id), \
                 typeof(id), char(65), group_concat(name), string_agg(name, ','), date('now'), time('now'), \
                 datetime('now'), strftime('%s', 'now'), json_extract(name, '$.a'), json_object('a', 1), \
                 sqlite_version() FROM users",
                &[Text; 23],
            ),
            ("SELECT zeroblob(4), randomblob(4), unhex('00')", &[Bytea; 3]),
            ("SELECT version(), current_database(), pg_is_in_recovery()", &[Text, Text, Bool]),
            // Exceptions to json* → text: SQLite returns integers and blobs.
            (
                "SELECT json_array_length('[]'), json_valid('1'), jsonb('1'), jsonb_object('a', 1)",
                &[Int8, Int8, Bytea, Bytea],
            ),
            ("SELECT julianday('now'), sqrt(2), ceil(id), floor(score) FROM users", &[Float8, Float8, Int8, Float8]),
            ("SELECT no_such_function(1)", &[Text]),
        ]);
    }

    #[test]
    fn cast_and_column_reference_columns() {
        check_columns(&[
            (
                "SELECT CAST(name AS INTEGER), CAST(id AS TEXT), CAST(1 AS REAL), CAST(1 AS DECIMAL(10,2)) FROM users",
                &[Int8, Text, Float8, Numeric],
            ),
            (
                "SELECT u.id + 1, score * 2, (active), avatar, users.balance FROM users u, users",
                &[Int8, Float8, Bool, Bytea, Numeric],
            ),
            ("SELECT rowid, _rowid_ FROM users", &[Int8, Int8]),
        ]);
    }

    #[test]
    fn arithmetic_columns_combine_operand_types() {
        check_columns(&[(
            "SELECT id + id, id * score, id - balance, score / balance, id % 2, id + $1, $1 + $2, \
             name + 1, 2.0 * 3 FROM users",
            &[
                Int8, Float8, Numeric, Float8, Int8, Int8, Text, Numeric, Float8,
            ],
        )]);
    }

    #[test]
    fn operator_columns_have_operator_types() {
        check_columns(&[(
            "SELECT name || id, id = 1, id < 2 AND active, NOT active, name IS NULL, name IS NOT NULL, \
             name LIKE 'a%', name GLOB 'a*', id IN (1, 2), id BETWEEN 1 AND 2, \
             EXISTS (SELECT 1 FROM orders), -score, ~id, id << 1, name IS 'x', name ISNULL, \
             name NOTNULL FROM users",
            &[
                Text, Bool, Bool, Bool, Bool, Bool, Bool, Bool, Bool, Bool, Bool, Float8, Int8, Int8, Bool,
                Bool, Bool,
            ],
        )]);
    }

    #[test]
    fn case_and_subquery_columns() {
        check_columns(&[
            (
                "SELECT CASE WHEN id > 1 THEN NULL WHEN id > 0 THEN score ELSE 0 END, \
                 CASE id WHEN 1 THEN 'one' ELSE 'many' END, CASE WHEN active THEN NULL END FROM users",
                &[Float8, Text, Text],
            ),
            (
                "SELECT (SELECT max(total) FROM orders WHERE orders.user_id = users.id), \
                 (SELECT count(*) FROM orders), (SELECT * FROM orders) FROM users",
                &[Float8, Int8, Text],
            ),
            ("SELECT ((id + 1) * 2) FROM users", &[Int8]),
        ]);
    }

    #[test]
    fn declared_types_win() {
        let schema = TestSchema::new();
        let got = infer_column_types(
            "SELECT name, id + 1, 'x' FROM users",
            &[Some(Bytea), None, Some(Int8)],
            &schema,
        );
        assert_eq!(got, vec![Bytea, Int8, Int8]);
    }

    #[test]
    fn wildcard_projections_trust_only_declared_types() {
        let schema = TestSchema::new();
        let sql = "SELECT *, id + 1 FROM users";
        let declared = [Some(Int8), None, None];
        assert_eq!(
            infer_column_types(sql, &declared, &schema),
            vec![Int8, Text, Text]
        );
        let sql = "SELECT 1.5, u.* FROM users u";
        assert_eq!(
            infer_column_types(sql, &[None, Some(Text)], &schema),
            vec![Text, Text]
        );
    }

    #[test]
    fn column_count_mismatch_falls_back_to_declared() {
        let schema = TestSchema::new();
        let got = infer_column_types("SELECT 1, 2", &[Some(Float8), None, None], &schema);
        assert_eq!(got, vec![Float8, Text, Text]);
    }

    #[test]
    fn ctes_compounds_and_values_type_their_columns() {
        check_columns(&[
            (
                "WITH s AS (SELECT id + 1 AS next, score FROM users) SELECT next, score * 2, s.next FROM s",
                &[Int8, Float8, Int8],
            ),
            ("WITH c(a, b) AS (VALUES (1, 'x')) SELECT b, a FROM c", &[Text, Int8]),
            ("SELECT 1, NULL UNION SELECT 2.5, 'x'", &[Int8, Text]),
            ("SELECT NULL UNION ALL SELECT score FROM users", &[Float8]),
            ("VALUES (1, NULL), (2, X'00')", &[Int8, Bytea]),
            ("SELECT column2 FROM (VALUES (1, 2.5))", &[Float8]),
        ]);
    }

    #[test]
    fn returning_columns_use_the_target_table() {
        check_columns(&[
            (
                "INSERT INTO users (name) VALUES ('a') RETURNING id + 1, name || 'x', score",
                &[Int8, Text, Float8],
            ),
            (
                "UPDATE users SET name = 'a' RETURNING balance * 2, length(name)",
                &[Numeric, Int8],
            ),
            ("DELETE FROM orders RETURNING total / 2", &[Float8]),
        ]);
    }

    #[test]
    fn statements_without_columns_fall_back() {
        let schema = TestSchema::new();
        let cases: [(&str, &[Option<ValueType>]); 6] = [
            ("SELEC oops", &[None]),
            ("", &[]),
            ("PRAGMA table_info(users)", &[None, Some(Text), None]),
            (
                "CREATE TRIGGER t AFTER INSERT ON users BEGIN SELECT 1; END",
                &[None],
            ),
            ("INSERT INTO users (id) VALUES (1)", &[]),
            ("SELECT 1; SELECT 'a'", &[None]),
        ];
        let wants: [&[ValueType]; 6] = [&[Text], &[], &[Text, Text, Text], &[Text], &[], &[Int8]];
        for ((sql, declared), want) in cases.iter().zip(wants) {
            assert_eq!(infer_column_types(sql, declared, &schema), want, "{sql}");
        }
    }

    #[test]
    fn long_chains_and_deep_nesting_do_not_exhaust_the_stack() {
        let n_or = 3_000;
        let or_chain = (1..=n_or)
            .map(|i| format!("id = ${i}"))
            .collect::<Vec<_>>()
            .join(" OR ");
        // (sql, type of its column, types of its parameters)
        let cases = vec![
            // Too long for sqlparser to drop safely: not parsed at all.
            (
                format!("SELECT id = $1{} FROM users", " + 1".repeat(50_000)),
                Text,
                vec![None],
            ),
            (
                format!("SELECT id = $1{} FROM users", " + 1".repeat(9_000)),
                Bool,
                vec![Some(Int8)],
            ),
            // Deeper than the bound: the type of the whole is not looked for.
            (
                format!("SELECT $1{}", " UNION SELECT 1".repeat(5_000)),
                Text,
                vec![Some(Int8)],
            ),
            (
                format!("SELECT {}$1 + 1{}", "(".repeat(40), ")".repeat(40)),
                Int8,
                vec![Some(Int8)],
            ),
            (
                format!("SELECT 1 FROM users WHERE {or_chain}"),
                Int8,
                vec![Some(Int8); n_or],
            ),
        ];
        // Run on a thread with a small stack, as tokio's workers have.
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let schema = TestSchema::new();
                for (sql, column, params) in cases {
                    let what = &sql[..60];
                    assert_eq!(
                        infer_column_types(&sql, &[None], &schema),
                        vec![column],
                        "{what}"
                    );
                    assert_eq!(
                        infer_parameter_types(&sql, params.len(), &schema),
                        params,
                        "{what}"
                    );
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
