//! PostgreSQL command tags (`INSERT 0 1`, `UPDATE 3`, `CREATE TABLE`) for
//! SQLite statements; drivers read row counts from them.

/// The tag for a statement that returned `rows` rows and changed `changes`.
///
/// It is built for every statement a session runs, so it reads the
/// statement's words where they lie and allocates only the tag.
pub fn command_tag(sql: &str, rows: usize, changes: u64) -> String {
    let mut words = sql
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty());
    let Some(first) = words.next() else {
        return String::new();
    };
    let verb = if first.eq_ignore_ascii_case("WITH") {
        main_verb_after_cte(sql)
    } else {
        first
    };
    let counted = if rows > 0 { rows as u64 } else { changes };
    let is = |word: &str| verb.eq_ignore_ascii_case(word);
    if is("INSERT") || is("REPLACE") {
        format!("INSERT 0 {counted}")
    } else if is("UPDATE") || is("DELETE") {
        format!("{} {counted}", verb.to_ascii_uppercase())
    } else if ["SELECT", "VALUES", "WITH", "PRAGMA", "EXPLAIN", "TABLE"]
        .iter()
        .any(|w| is(w))
    {
        format!("SELECT {rows}")
    } else if is("CREATE") || is("DROP") || is("ALTER") {
        // The object's kind is among the next two words, after the
        // modifiers: `CREATE UNIQUE INDEX`, `DROP TABLE IF EXISTS`.
        let object = words.take(2).find(|w| {
            !["UNIQUE", "TEMP", "TEMPORARY", "VIRTUAL", "IF"]
                .iter()
                .any(|m| w.eq_ignore_ascii_case(m))
        });
        match object {
            Some(object) => format!(
                "{} {}",
                verb.to_ascii_uppercase(),
                object.to_ascii_uppercase()
            ),
            None => verb.to_ascii_uppercase(),
        }
    } else {
        verb.to_ascii_uppercase()
    }
}

/// `WITH x AS (…) INSERT …`: the first DML keyword at parenthesis depth 0
/// (`SELECT` when there is none).
fn main_verb_after_cte(sql: &str) -> &str {
    let bytes = sql.as_bytes();
    let mut depth = 0i32;
    let mut word_start = None;
    let mut in_str = false;
    for (i, &b) in bytes.iter().chain(std::iter::once(&b' ')).enumerate() {
        if in_str {
            in_str = b != b'\'';
            continue;
        }
        if b.is_ascii_alphanumeric() || b == b'_' {
            word_start.get_or_insert(i);
            continue;
        }
        if let Some(start) = word_start.take() {
            let word = &sql[start..i];
            if depth == 0
                && ["SELECT", "INSERT", "UPDATE", "DELETE", "REPLACE", "VALUES"]
                    .iter()
                    .any(|w| word.eq_ignore_ascii_case(w))
            {
                return word;
            }
        }
        match b {
            b'(' => depth += 1,
            b')' => depth -= 1,
            b'\'' => in_str = true,
            _ => {}
        }
    }
    "SELECT"
}

#[cfg(test)]
mod tests {
    use super::command_tag;

    #[test]
    fn tags_carry_the_counts_drivers_read() {
        let cases = [
            ("INSERT INTO t VALUES (1)", 0, 1, "INSERT 0 1"),
            ("insert into t select * from u", 0, 5, "INSERT 0 5"),
            ("INSERT INTO t VALUES (1) RETURNING id", 1, 1, "INSERT 0 1"),
            ("UPDATE t SET a = 1", 0, 3, "UPDATE 3"),
            ("DELETE FROM t", 0, 0, "DELETE 0"),
            ("SELECT * FROM t", 4, 0, "SELECT 4"),
            ("WITH x AS (SELECT 1) SELECT * FROM x", 1, 0, "SELECT 1"),
            (
                "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
                0,
                1,
                "INSERT 0 1",
            ),
            ("CREATE TABLE t(a)", 0, 0, "CREATE TABLE"),
            ("CREATE UNIQUE INDEX i ON t(a)", 0, 0, "CREATE INDEX"),
            ("DROP TABLE IF EXISTS t", 0, 0, "DROP TABLE"),
            ("ALTER TABLE t ADD COLUMN b", 0, 0, "ALTER TABLE"),
            ("VACUUM", 0, 0, "VACUUM"),
            ("vacuum", 0, 0, "VACUUM"),
            ("delete from t where a = 'x'", 0, 2, "DELETE 2"),
            ("create temp table t(a)", 0, 0, "CREATE TABLE"),
            ("CREATE", 0, 0, "CREATE"),
            (
                "with x as (select 'a(') update t set a = 1",
                0,
                2,
                "UPDATE 2",
            ),
            ("", 0, 0, ""),
        ];
        for (sql, rows, changes, want) in cases {
            assert_eq!(command_tag(sql, rows, changes), want, "{sql}");
        }
    }
}
