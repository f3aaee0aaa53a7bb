//! Splitting a simple-protocol query string into statements.
//!
//! A `;` ends a statement only outside quotes and comments, and not inside a
//! `CREATE TRIGGER … BEGIN … END` body. SQLite's own `sqlite3_complete()`
//! knows all of that, so each candidate boundary is confirmed with it.

use std::ffi::CString;

/// Splits `sql` into complete statements, without their trailing `;`.
/// Whitespace-only pieces are dropped; an unterminated last statement is
/// returned as is (SQLite will report what is wrong with it).
pub fn split_statements(sql: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, _) in sql.match_indices(';') {
        let candidate = &sql[start..=i];
        if is_complete(candidate) {
            push_trimmed(&mut out, &sql[start..i]);
            start = i + 1;
        }
    }
    push_trimmed(&mut out, &sql[start..]);
    out
}

fn push_trimmed<'a>(out: &mut Vec<&'a str>, piece: &'a str) {
    let trimmed = piece.trim();
    if !trimmed.is_empty() && !is_only_comments(trimmed) {
        out.push(trimmed);
    }
}

fn is_complete(sql: &str) -> bool {
    match CString::new(sql) {
        // SAFETY: sqlite3_complete reads a NUL-terminated string and keeps no
        // reference to it.
        Ok(c) => unsafe { rusqlite::ffi::sqlite3_complete(c.as_ptr()) != 0 },
        Err(_) => false,
    }
}

/// A piece made only of comments is not a statement (psql sends `-- x` alone).
fn is_only_comments(piece: &str) -> bool {
    let mut rest = piece.trim_start();
    loop {
        if rest.is_empty() {
            return true;
        }
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r).trim_start();
        } else {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_statements;

    #[test]
    fn semicolons_in_strings_comments_and_trigger_bodies_do_not_split() {
        let cases: &[(&str, &[&str])] = &[
            ("SELECT 1", &["SELECT 1"]),
            ("SELECT 1; SELECT 2;", &["SELECT 1", "SELECT 2"]),
            ("SELECT 'a;b'; SELECT \"x;y\" FROM t", &["SELECT 'a;b'", "SELECT \"x;y\" FROM t"]),
            ("SELECT 1 -- c;\n; SELECT 2", &["SELECT 1 -- c;", "SELECT 2"]),
            ("/* ; */ SELECT 1;", &["/* ; */ SELECT 1"]),
            (
                "CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET a = 1; DELETE FROM u; END; SELECT 3",
                &[
                    "CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET a = 1; DELETE FROM u; END",
                    "SELECT 3",
                ],
            ),
            (" ; ;; ", &[]),
            ("-- only a comment", &[]),
            ("SELECT 'unterminated", &["SELECT 'unterminated"]),
        ];
        for (sql, want) in cases {
            assert_eq!(&split_statements(sql), want, "{sql}");
        }
    }
}
