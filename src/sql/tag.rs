//! PostgreSQL command tags (`INSERT 0 1`, `UPDATE 3`, `CREATE TABLE`) for
//! SQLite statements; drivers read row counts from them.

/// The tag for a statement that returned `rows` rows and changed `changes`.
pub fn command_tag(sql: &str, rows: usize, changes: u64) -> String {
    let words = leading_words(sql, 3);
    let first = words.first().map(String::as_str).unwrap_or("");
    let verb = if first == "WITH" {
        main_verb_after_cte(sql)
    } else {
        first.to_string()
    };
    match verb.as_str() {
        "INSERT" | "REPLACE" => {
            format!("INSERT 0 {}", if rows > 0 { rows as u64 } else { changes })
        }
        "UPDATE" => format!("UPDATE {}", if rows > 0 { rows as u64 } else { changes }),
        "DELETE" => format!("DELETE {}", if rows > 0 { rows as u64 } else { changes }),
        "SELECT" | "VALUES" | "WITH" | "PRAGMA" | "EXPLAIN" | "TABLE" => format!("SELECT {rows}"),
        "CREATE" | "DROP" | "ALTER" => {
            let object: Vec<&str> = words[1..]
                .iter()
                .map(String::as_str)
                .filter(|w| !matches!(*w, "UNIQUE" | "TEMP" | "TEMPORARY" | "VIRTUAL" | "IF"))
                .take(1)
                .collect();
            format!("{verb} {}", object.join(" "))
                .trim_end()
                .to_string()
        }
        "" => String::new(),
        other => other.to_string(),
    }
}

fn leading_words(sql: &str, n: usize) -> Vec<String> {
    sql.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
        .take(n)
        .map(str::to_ascii_uppercase)
        .collect()
}

/// `WITH x AS (…) INSERT …`: the first DML keyword at parenthesis depth 0.
fn main_verb_after_cte(sql: &str) -> String {
    let mut depth = 0i32;
    let mut word = String::new();
    let mut in_str = false;
    for c in sql.chars().chain(std::iter::once(' ')) {
        if in_str {
            in_str = c != '\'';
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c.to_ascii_uppercase());
            continue;
        }
        if depth == 0
            && matches!(
                word.as_str(),
                "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "REPLACE" | "VALUES"
            )
        {
            return word;
        }
        word.clear();
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            '\'' => in_str = true,
            _ => {}
        }
    }
    "SELECT".to_string()
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
        ];
        for (sql, rows, changes, want) in cases {
            assert_eq!(command_tag(sql, rows, changes), want, "{sql}");
        }
    }
}
