//! `BACKUP` and `RESTORE`, as SQL Server writes them, parsed into
//! [`BackupStatement`]s (run by `crate::backup`).
//!
//! ```text
//! backup   = BACKUP ( DATABASE | LOG ) db TO device
//!              [ WITH backup_opt { "," backup_opt } ]
//! backup_opt = COPY_ONLY | COMPRESSION | NO_COMPRESSION | CHECKSUM
//!            | NO_CHECKSUM | STATS [ "=" n ] | INIT | FORMAT
//! restore  = RESTORE ( DATABASE | LOG ) db FROM device
//!              [ WITH restore_opt { "," restore_opt } ]
//!          | RESTORE DATABASE db WITH RECOVERY
//!          | RESTORE ( VERIFYONLY | HEADERONLY ) FROM device
//! device   = DISK "=" 'path' | URL "=" 's3://bucket/key'
//! restore_opt = RECOVERY | NORECOVERY | REPLACE | STATS [ "=" n ] | CHECKSUM
//!            | STOPAT "=" 'time' | STOPATLSN "=" 'lsn'
//! ```
//! Keywords are case-insensitive; a database name is an identifier,
//! `"quoted"` or `[bracketed]`; a trailing `;` is allowed.

/// A parsed BACKUP or RESTORE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupStatement {
    /// `BACKUP DATABASE | LOG`.
    Backup {
        /// True for `BACKUP LOG`.
        log: bool,
        /// The database.
        database: String,
        /// The destination file.
        path: String,
        /// WITH COPY_ONLY.
        copy_only: bool,
        /// WITH COMPRESSION.
        compression: bool,
        /// WITH CHECKSUM.
        checksum: bool,
        /// `STATS [= n]`: a notice every n percent (10 without a value).
        stats: Option<u8>,
    },
    /// `RESTORE DATABASE | LOG`.
    Restore {
        /// True for `RESTORE LOG`.
        log: bool,
        /// The database.
        database: String,
        /// The backup file (None: `RESTORE DATABASE x WITH RECOVERY`).
        path: Option<String>,
        /// RECOVERY (default) rather than NORECOVERY.
        recovery: bool,
        /// WITH REPLACE.
        replace: bool,
        /// `STOPAT = 'time'`, as written.
        stop_at: Option<String>,
        /// `STOPATLSN = 'lsn'`.
        stop_at_lsn: Option<u64>,
        /// `STATS [= n]`: a notice every n percent (10 without a value).
        stats: Option<u8>,
    },
    /// `RESTORE VERIFYONLY FROM DISK = 'path'`.
    VerifyOnly {
        /// The backup file.
        path: String,
    },
    /// `RESTORE HEADERONLY FROM DISK = 'path'`.
    HeaderOnly {
        /// The backup file.
        path: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Quoted(String),
    Number(u64),
    Punct(char),
}

fn lex(sql: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut chars = sql.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '-' if sql_comment(&mut chars) => {}
            '\'' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some('\'') if chars.peek() == Some(&'\'') => {
                            chars.next();
                            s.push('\'');
                        }
                        Some('\'') => break,
                        Some(c) => s.push(c),
                        None => return Err("a string is not terminated".into()),
                    }
                }
                out.push(Tok::Quoted(s));
            }
            '"' | '[' => {
                chars.next();
                let close = if c == '"' { '"' } else { ']' };
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some(x) if x == close => break,
                        Some(x) => s.push(x),
                        None => return Err("a quoted name is not terminated".into()),
                    }
                }
                out.push(Tok::Word(s));
            }
            c if c.is_ascii_digit() => {
                let mut n = String::new();
                while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    n.push(d);
                    chars.next();
                }
                out.push(Tok::Number(
                    n.parse().map_err(|_| format!("number {n} is too large"))?,
                ));
            }
            c if c.is_alphanumeric() || c == '_' => {
                let mut w = String::new();
                while let Some(&d) = chars.peek().filter(|d| d.is_alphanumeric() || **d == '_') {
                    w.push(d);
                    chars.next();
                }
                out.push(Tok::Word(w));
            }
            '=' | ',' | ';' => {
                chars.next();
                out.push(Tok::Punct(c));
            }
            other => return Err(format!("unexpected character {other:?}")),
        }
    }
    if out.last() == Some(&Tok::Punct(';')) {
        out.pop();
    }
    Ok(out)
}

fn sql_comment(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> bool {
    let mut ahead = chars.clone();
    ahead.next();
    if ahead.next() != Some('-') {
        return false;
    }
    for c in chars.by_ref() {
        if c == '\n' {
            break;
        }
    }
    true
}

/// True when `sql` starts with `BACKUP` or `RESTORE` followed by one of
/// their second words: the router sends it here.
pub fn is_backup_statement(sql: &str) -> bool {
    let Ok(tokens) = lex(sql) else {
        let first = sql.split_whitespace().next().unwrap_or("");
        return first.eq_ignore_ascii_case("BACKUP") || first.eq_ignore_ascii_case("RESTORE");
    };
    match tokens.as_slice() {
        [Tok::Word(a), Tok::Word(b), ..] => {
            (a.eq_ignore_ascii_case("BACKUP")
                && ["DATABASE", "LOG"]
                    .iter()
                    .any(|k| b.eq_ignore_ascii_case(k)))
                || (a.eq_ignore_ascii_case("RESTORE")
                    && ["DATABASE", "LOG", "VERIFYONLY", "HEADERONLY"]
                        .iter()
                        .any(|k| b.eq_ignore_ascii_case(k)))
        }
        _ => false,
    }
}

struct Parser {
    tokens: Vec<Tok>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn keyword(&mut self, kw: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw)) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, kw: &str) -> Result<(), String> {
        if self.keyword(kw) {
            Ok(())
        } else {
            Err(format!("expected {kw} {}", self.here()))
        }
    }

    fn punct(&mut self, c: char) -> bool {
        if self.peek() == Some(&Tok::Punct(c)) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn here(&self) -> String {
        match self.peek() {
            None => "at the end of the statement".into(),
            Some(Tok::Word(w)) => format!("at \"{w}\""),
            Some(Tok::Quoted(q)) => format!("at '{q}'"),
            Some(Tok::Number(n)) => format!("at {n}"),
            Some(Tok::Punct(p)) => format!("at \"{p}\""),
        }
    }

    fn name(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Tok::Word(w)) => Ok(w),
            _ => {
                self.at -= 1;
                Err(format!("expected a database name {}", self.here()))
            }
        }
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        match self.next() {
            Some(Tok::Quoted(s)) => Ok(s),
            _ => {
                self.at -= 1;
                Err(format!("expected {what} in single quotes {}", self.here()))
            }
        }
    }

    /// `DISK = 'path'` or `URL = 's3://bucket/key'`: the path or the URL
    /// (a URL always has `://`, a path never).
    fn disk(&mut self) -> Result<String, String> {
        let url = if self.keyword("URL") {
            true
        } else if self.keyword("DISK") {
            false
        } else {
            return Err(format!("expected DISK or URL {}", self.here()));
        };
        let device = if url { "URL" } else { "DISK" };
        if !self.punct('=') {
            return Err(format!("expected = after {device} {}", self.here()));
        }
        let path = self.string(if url { "the URL" } else { "the file's path" })?;
        if path.is_empty() {
            return Err(format!(
                "{device} = '' names no {}",
                if url { "object" } else { "file" }
            ));
        }
        match (url, path.contains("://")) {
            (true, false) => Err(format!("URL = '{path}' is not a URL: write URL = 's3://bucket/key', or DISK = '{path}' for a file")),
            (false, true) => Err(format!("DISK = '{path}' is a URL: write URL = '{path}'")),
            _ => Ok(path),
        }
    }

    fn options(
        &mut self,
        mut each: impl FnMut(&mut Parser, &str) -> Result<(), String>,
    ) -> Result<(), String> {
        if !self.keyword("WITH") {
            return Ok(());
        }
        loop {
            let word = match self.next() {
                Some(Tok::Word(w)) => w.to_ascii_uppercase(),
                _ => {
                    self.at -= 1;
                    return Err(format!("expected an option {}", self.here()));
                }
            };
            each(self, &word)?;
            if !self.punct(',') {
                return Ok(());
            }
        }
    }

    /// `STATS [= n]`: n, or 10 (SQL Server's default) without a value.
    fn stats(&mut self) -> Result<u8, String> {
        if self.punct('=') {
            match self.next() {
                Some(Tok::Number(n)) if (1..=100).contains(&n) => Ok(n as u8),
                _ => Err("STATS takes a percentage from 1 to 100".into()),
            }
        } else {
            Ok(10)
        }
    }

    fn end(&self) -> Result<(), String> {
        if self.at < self.tokens.len() {
            return Err(format!("unexpected words {}", self.here()));
        }
        Ok(())
    }
}

/// Parses one BACKUP or RESTORE statement; the error says what is wrong.
pub fn parse(sql: &str) -> Result<BackupStatement, String> {
    let mut p = Parser {
        tokens: lex(sql)?,
        at: 0,
    };
    let statement = if p.keyword("BACKUP") {
        let log = if p.keyword("LOG") {
            true
        } else {
            p.expect("DATABASE")?;
            false
        };
        let database = p.name()?;
        p.expect("TO")?;
        let path = p.disk()?;
        let (mut copy_only, mut compression, mut checksum) = (false, false, false);
        let mut stats = None;
        p.options(|p, word| {
            match word {
                "COPY_ONLY" => copy_only = true,
                "COMPRESSION" => compression = true,
                "NO_COMPRESSION" => compression = false,
                "CHECKSUM" => checksum = true,
                "NO_CHECKSUM" => checksum = false,
                "INIT" | "FORMAT" => {}
                "STATS" => stats = Some(p.stats()?),
                other => return Err(format!("BACKUP has no option {other} (options: COPY_ONLY, COMPRESSION, CHECKSUM, STATS = n)")),
            }
            Ok(())
        })?;
        BackupStatement::Backup {
            log,
            database,
            path,
            copy_only,
            compression,
            checksum,
            stats,
        }
    } else if p.keyword("RESTORE") {
        if p.keyword("VERIFYONLY") {
            p.expect("FROM")?;
            BackupStatement::VerifyOnly { path: p.disk()? }
        } else if p.keyword("HEADERONLY") {
            p.expect("FROM")?;
            BackupStatement::HeaderOnly { path: p.disk()? }
        } else {
            let log = if p.keyword("LOG") {
                true
            } else {
                p.expect("DATABASE")?;
                false
            };
            let database = p.name()?;
            let path = if p.keyword("FROM") {
                Some(p.disk()?)
            } else {
                None
            };
            let (mut recovery, mut replace) = (None, false);
            let (mut stop_at, mut stop_at_lsn) = (None, None);
            let mut stats = None;
            p.options(|p, word| {
                match word {
                    "RECOVERY" => recovery = Some(true),
                    "NORECOVERY" => recovery = Some(false),
                    "REPLACE" => replace = true,
                    "CHECKSUM" => {}
                    "STATS" => stats = Some(p.stats()?),
                    "STOPAT" | "STOPATLSN" => {
                        if !p.punct('=') {
                            return Err(format!("expected = after {word}"));
                        }
                        let value = match p.next() {
                            Some(Tok::Quoted(s)) => s,
                            Some(Tok::Number(n)) => n.to_string(),
                            _ => return Err(format!("{word} takes a value in single quotes")),
                        };
                        if word == "STOPAT" {
                            stop_at = Some(value);
                        } else {
                            stop_at_lsn = Some(value.trim().parse().map_err(|_| {
                                format!("STOPATLSN = '{value}' is not an LSN (a whole number)")
                            })?);
                        }
                    }
                    other => return Err(format!("RESTORE has no option {other} (options: RECOVERY, NORECOVERY, REPLACE, STOPAT = 'time', STOPATLSN = 'lsn')")),
                }
                Ok(())
            })?;
            if stop_at.is_some() && stop_at_lsn.is_some() {
                return Err("give STOPAT or STOPATLSN, not both".into());
            }
            if path.is_none()
                && (log
                    || recovery != Some(true)
                    || replace
                    || stop_at.is_some()
                    || stop_at_lsn.is_some())
            {
                return Err(
                    "without FROM DISK = '…', RESTORE takes only DATABASE name WITH RECOVERY"
                        .into(),
                );
            }
            BackupStatement::Restore {
                log,
                database,
                path,
                recovery: recovery.unwrap_or(true),
                replace,
                stop_at,
                stop_at_lsn,
                stats,
            }
        }
    } else {
        return Err("expected BACKUP or RESTORE".into());
    };
    p.end()?;
    Ok(statement)
}

/// Parses a STOPAT time: RFC 3339, or `YYYY-MM-DD HH:MM:SS[.f]` with an
/// optional zone (`+00`, `+02:00`, `Z`); no zone means UTC. Returns µs
/// since the Unix epoch.
pub fn parse_stop_time(text: &str) -> Result<i64, String> {
    let t = text.trim();
    if let Ok(dt) = chrono::DateTime::parse_from_rfc3339(t) {
        return Ok(dt.timestamp_micros());
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(dt) = chrono::DateTime::parse_from_str(t, format) {
            return Ok(dt.timestamp_micros());
        }
    }
    for format in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S",
    ] {
        if let Ok(dt) = chrono::NaiveDateTime::parse_from_str(t, format) {
            return Ok(dt.and_utc().timestamp_micros());
        }
    }
    Err(format!("STOPAT = '{text}' is not a time"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_and_restore_statements_parse_as_sql_server_writes_them() {
        assert_eq!(
            parse("BACKUP DATABASE app TO DISK = '/tmp/a.bak' WITH COPY_ONLY, COMPRESSION, CHECKSUM, STATS = 10;").unwrap(),
            BackupStatement::Backup {
                log: false,
                database: "app".into(),
                path: "/tmp/a.bak".into(),
                copy_only: true,
                compression: true,
                checksum: true,
                stats: Some(10),
            }
        );
        assert!(matches!(
            parse("backup log [app] to disk = 'x'").unwrap(),
            BackupStatement::Backup { log: true, .. }
        ));
        assert_eq!(
            parse(
                "RESTORE DATABASE b FROM DISK = 'it''s' WITH NORECOVERY, REPLACE, STOPATLSN = '42'"
            )
            .unwrap(),
            BackupStatement::Restore {
                log: false,
                database: "b".into(),
                path: Some("it's".into()),
                recovery: false,
                replace: true,
                stop_at: None,
                stop_at_lsn: Some(42),
                stats: None,
            }
        );
        assert!(matches!(
            parse("BACKUP LOG app TO URL = 's3://b/app/l.bak'").unwrap(),
            BackupStatement::Backup { path, .. } if path == "s3://b/app/l.bak"
        ));
        assert!(matches!(
            parse("RESTORE DATABASE b WITH RECOVERY").unwrap(),
            BackupStatement::Restore {
                path: None,
                recovery: true,
                ..
            }
        ));
        assert!(matches!(
            parse("RESTORE HEADERONLY FROM DISK = 'f'").unwrap(),
            BackupStatement::HeaderOnly { .. }
        ));
        assert!(matches!(
            parse("RESTORE VERIFYONLY FROM DISK = 'f'").unwrap(),
            BackupStatement::VerifyOnly { .. }
        ));
    }

    #[test]
    fn bad_backup_statements_say_what_is_wrong() {
        for (sql, expected) in [
            ("BACKUP DATABASE app TO DISK 'x'", "expected = after DISK"),
            ("BACKUP DATABASE app TO TAPE = 'x'", "expected DISK or URL"),
            ("BACKUP DATABASE app TO URL = '/b/x'", "is not a URL"),
            (
                "RESTORE DATABASE app FROM DISK = 's3://b/x'",
                "write URL = 's3://b/x'",
            ),
            (
                "BACKUP DATABASE app TO DISK = 'x' WITH FAST",
                "BACKUP has no option FAST",
            ),
            ("RESTORE DATABASE b WITH NORECOVERY", "without FROM DISK"),
            (
                "RESTORE LOG b FROM DISK = 'x' WITH STOPAT = 'a', STOPATLSN = '1'",
                "not both",
            ),
            (
                "RESTORE LOG b FROM DISK = 'x' WITH STOPATLSN = 'abc'",
                "is not an LSN",
            ),
            (
                "BACKUP DATABASE app TO DISK = 'x' extra",
                "unexpected words",
            ),
        ] {
            let e = parse(sql).unwrap_err();
            assert!(e.contains(expected), "{sql}: {e}");
        }
    }

    #[test]
    fn only_backup_and_restore_statements_are_routed_here() {
        assert!(is_backup_statement("BACKUP DATABASE app TO DISK = 'x'"));
        assert!(is_backup_statement("restore headeronly from disk = 'x'"));
        assert!(!is_backup_statement("SELECT 'BACKUP DATABASE'"));
        assert!(!is_backup_statement("CREATE TABLE backup (x)"));
    }

    #[test]
    fn stop_times_are_utc_unless_a_zone_is_given() {
        let utc = parse_stop_time("2026-01-02 03:04:05.5").unwrap();
        assert_eq!(parse_stop_time("2026-01-02T03:04:05.5Z").unwrap(), utc);
        assert_eq!(parse_stop_time("2026-01-02 05:04:05.5+02").unwrap(), utc);
        assert!(parse_stop_time("yesterday").is_err());
    }
}
