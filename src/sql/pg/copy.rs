//! `COPY … FROM STDIN` and `COPY … TO STDOUT`: the statement's options and
//! the text, CSV and (FROM STDIN only) binary formats (PostgreSQL's
//! documentation, "COPY", "File Formats"). Pure: rows in, bytes out, and
//! back.

use sqlparser::ast::{CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget};

/// The data format of a COPY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    /// Tab-separated, `\N` for NULL, backslash escapes.
    Text,
    /// Comma-separated values with quoting.
    Csv,
    /// PostgreSQL's binary COPY format, FROM STDIN only (`parse_binary`).
    Binary,
}

/// A COPY statement availdb runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySpec {
    /// `COPY t [(cols)] …`: the table.
    pub table: Option<String>,
    /// The listed columns (empty: all of the table's).
    pub columns: Vec<String>,
    /// `COPY (query) TO STDOUT`: the query, as SQLite runs it.
    pub query: Option<String>,
    /// FROM STDIN (true) or TO STDOUT (false).
    pub from_stdin: bool,
    /// Text or CSV.
    pub format: CopyFormat,
    /// Field separator.
    pub delimiter: char,
    /// How NULL is written.
    pub null: String,
    /// CSV: the first line names the columns.
    pub header: bool,
    /// CSV quote character.
    pub quote: char,
    /// CSV escape character (inside quotes).
    pub escape: char,
}

impl CopySpec {
    /// Reads a parsed `COPY`; `Err` says what is not supported.
    pub(super) fn from_parts(
        source: &CopySource,
        to: bool,
        target: &CopyTarget,
        options: &[CopyOption],
        legacy: &[CopyLegacyOption],
        query: Option<String>,
    ) -> Result<CopySpec, String> {
        match (to, target) {
            (false, CopyTarget::Stdin) | (true, CopyTarget::Stdout) => {}
            _ => {
                return Err("not supported in availdb: COPY to or from a file or program; use COPY … FROM STDIN or TO STDOUT (psql's \\copy)".into())
            }
        }
        let (table, columns) = match source {
            CopySource::Table {
                table_name,
                columns,
            } => (
                Some(
                    table_name
                        .0
                        .last()
                        .and_then(|p| p.as_ident())
                        .map(|i| i.value.clone())
                        .unwrap_or_default(),
                ),
                columns.iter().map(|c| c.value.clone()).collect(),
            ),
            CopySource::Query(_) => (None, Vec::new()),
        };
        let mut spec = CopySpec {
            table,
            columns,
            query,
            from_stdin: !to,
            format: CopyFormat::Text,
            delimiter: '\t',
            null: "\\N".into(),
            header: false,
            quote: '"',
            escape: '"',
        };
        let mut delimiter = None;
        let mut null = None;
        let mut escape = None;
        for option in options {
            match option {
                CopyOption::Format(name) => match name.value.to_ascii_lowercase().as_str() {
                    "text" => spec.format = CopyFormat::Text,
                    "csv" => spec.format = CopyFormat::Csv,
                    "binary" if !to => spec.format = CopyFormat::Binary,
                    "binary" => {
                        return Err(
                            "not supported in availdb: COPY … TO STDOUT in binary format; use text or csv".into()
                        )
                    }
                    other => {
                        return Err(format!(
                            "not supported in availdb: COPY format \"{other}\"; use text or csv"
                        ))
                    }
                },
                CopyOption::Delimiter(c) => delimiter = Some(*c),
                CopyOption::Null(s) => null = Some(s.clone()),
                CopyOption::Header(h) => spec.header = *h,
                CopyOption::Quote(c) => spec.quote = *c,
                CopyOption::Escape(c) => escape = Some(*c),
                CopyOption::Freeze(_) | CopyOption::Encoding(_) => {}
                CopyOption::ForceQuote(_)
                | CopyOption::ForceNotNull(_)
                | CopyOption::ForceNull(_) => {}
            }
        }
        for option in legacy {
            match option {
                CopyLegacyOption::Binary if !to => spec.format = CopyFormat::Binary,
                CopyLegacyOption::Binary => return Err(
                    "not supported in availdb: COPY … TO STDOUT in binary format; use text or csv"
                        .into(),
                ),
                CopyLegacyOption::Delimiter(c) => delimiter = Some(*c),
                CopyLegacyOption::Null(s) => null = Some(s.clone()),
                CopyLegacyOption::Csv(csv) => {
                    spec.format = CopyFormat::Csv;
                    for o in csv {
                        match o {
                            CopyLegacyCsvOption::Header => spec.header = true,
                            CopyLegacyCsvOption::Quote(c) => spec.quote = *c,
                            CopyLegacyCsvOption::Escape(c) => escape = Some(*c),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if spec.format == CopyFormat::Csv {
            spec.delimiter = ',';
            spec.null = String::new();
            spec.escape = spec.quote;
        }
        if let Some(d) = delimiter {
            spec.delimiter = d;
        }
        if let Some(n) = null {
            spec.null = n;
        }
        if let Some(e) = escape {
            spec.escape = e;
        }
        Ok(spec)
    }

    /// Splits COPY data into rows of fields (None for NULL). The text
    /// format's `\.` end marker ends the data.
    pub fn parse_rows(&self, data: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        match self.format {
            CopyFormat::Text => Ok(self.parse_text(data)),
            CopyFormat::Csv => self.parse_csv(data),
            CopyFormat::Binary => Err("binary COPY data is read with parse_binary".into()),
        }
    }

    fn parse_text(&self, data: &str) -> Vec<Vec<Option<String>>> {
        let mut rows = Vec::new();
        let data = data.strip_suffix('\n').unwrap_or(data);
        if data.is_empty() {
            return rows;
        }
        for line in data.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line == "\\." {
                break;
            }
            let fields = line
                .split(self.delimiter)
                .map(|raw| {
                    if raw == self.null {
                        None
                    } else {
                        Some(unescape_text(raw))
                    }
                })
                .collect();
            rows.push(fields);
        }
        rows
    }

    fn parse_csv(&self, data: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        let mut rows = Vec::new();
        let mut chars = data.chars().peekable();
        let mut row: Vec<Option<String>> = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut any = false;
        let mut first = true;
        loop {
            let Some(c) = chars.next() else {
                if any || !row.is_empty() {
                    row.push(self.csv_field(field, quoted));
                    rows.push(row);
                }
                break;
            };
            if c == self.quote {
                quoted = true;
                any = true;
                // A quoted run, up to the closing quote.
                loop {
                    match chars.next() {
                        None => return Err("unterminated CSV quoted field".into()),
                        Some(e) if e == self.escape && chars.peek() == Some(&self.quote) => {
                            chars.next();
                            field.push(self.quote);
                        }
                        Some(q) if q == self.quote => break,
                        Some(other) => field.push(other),
                    }
                }
            } else if c == self.delimiter {
                row.push(self.csv_field(std::mem::take(&mut field), quoted));
                quoted = false;
                any = true;
            } else if c == '\n' || c == '\r' {
                if c == '\r' && chars.peek() == Some(&'\n') {
                    chars.next();
                }
                if any || !field.is_empty() {
                    row.push(self.csv_field(std::mem::take(&mut field), quoted));
                    let done = std::mem::take(&mut row);
                    if !(first && self.header) {
                        if done.len() == 1 && done[0].as_deref() == Some("\\.") {
                            break;
                        }
                        rows.push(done);
                    }
                    first = false;
                }
                quoted = false;
                any = false;
            } else {
                field.push(c);
                any = true;
            }
        }
        Ok(rows)
    }

    fn csv_field(&self, field: String, quoted: bool) -> Option<String> {
        (quoted || field != self.null).then_some(field)
    }

    /// One row as a line of COPY output (text or CSV: binary output is
    /// refused when the statement is read, and written as text here).
    pub fn format_row(&self, fields: &[Option<String>]) -> String {
        let mut out = String::new();
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                out.push(self.delimiter);
            }
            match (f, self.format) {
                (None, _) => out.push_str(&self.null),
                (Some(v), CopyFormat::Text | CopyFormat::Binary) => {
                    escape_text(v, self.delimiter, &mut out)
                }
                (Some(v), CopyFormat::Csv) => {
                    let needs = v.is_empty() && !self.null.is_empty()
                        || v == &self.null
                        || v.contains(self.delimiter)
                        || v.contains(self.quote)
                        || v.contains('\n')
                        || v.contains('\r');
                    if needs {
                        out.push(self.quote);
                        for c in v.chars() {
                            if c == self.quote || c == self.escape {
                                out.push(self.escape);
                            }
                            out.push(c);
                        }
                        out.push(self.quote);
                    } else {
                        out.push_str(v);
                    }
                }
            }
        }
        out.push('\n');
        out
    }

    /// The header line of CSV output (column names).
    pub fn header_line(&self, names: &[String]) -> Option<String> {
        (self.format == CopyFormat::Csv && self.header)
            .then(|| self.format_row(&names.iter().cloned().map(Some).collect::<Vec<_>>()))
    }
}

/// Splits binary COPY data into rows of raw fields (None for NULL), each
/// in its type's binary form: the signature `PGCOPY\n\xff\r\n\0`, a
/// flags word and a header extension, then per row a 16-bit field count
/// and per field a 32-bit length (-1: NULL) and its bytes; a count of -1
/// ends the data.
pub fn parse_binary(data: &[u8]) -> Result<Vec<Vec<Option<Vec<u8>>>>, String> {
    const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
    let rest = data
        .strip_prefix(SIGNATURE)
        .ok_or("binary COPY data does not start with the PGCOPY signature")?;
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let bytes = rest
            .get(at..at + n)
            .ok_or("binary COPY data ends in the middle of a row")?;
        at += n;
        Ok(bytes)
    };
    let word = |b: &[u8]| i32::from_be_bytes(b.try_into().expect("4 bytes"));
    let flags = word(take(4)?);
    if flags & (1 << 16) != 0 {
        return Err("binary COPY data with OIDs is not supported".into());
    }
    let extension = word(take(4)?);
    take(usize::try_from(extension).map_err(|_| "negative header extension length")?)?;
    let mut rows = Vec::new();
    loop {
        let count = i16::from_be_bytes(take(2)?.try_into().expect("2 bytes"));
        if count == -1 {
            return Ok(rows);
        }
        let mut row = Vec::with_capacity(count.max(0) as usize);
        for _ in 0..count {
            let len = word(take(4)?);
            row.push(match usize::try_from(len) {
                Ok(n) => Some(take(n)?.to_vec()),
                Err(_) => None,
            });
        }
        rows.push(row);
    }
}

fn unescape_text(raw: &str) -> String {
    if !raw.contains('\\') {
        return raw.to_string();
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('v') => out.push('\u{b}'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

fn escape_text(v: &str, delimiter: char, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' if delimiter == '\t' => out.push_str("\\t"),
            c if c == delimiter => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(format: CopyFormat) -> CopySpec {
        CopySpec {
            table: Some("t".into()),
            columns: vec![],
            query: None,
            from_stdin: true,
            format,
            delimiter: if format == CopyFormat::Csv { ',' } else { '\t' },
            null: if format == CopyFormat::Csv {
                String::new()
            } else {
                "\\N".into()
            },
            header: false,
            quote: '"',
            escape: '"',
        }
    }

    #[test]
    fn binary_rows_are_split_into_fields_until_the_trailer() {
        let mut data = b"PGCOPY\n\xff\r\n\0".to_vec();
        data.extend_from_slice(&0i32.to_be_bytes());
        data.extend_from_slice(&0i32.to_be_bytes());
        data.extend_from_slice(&2i16.to_be_bytes());
        data.extend_from_slice(&4i32.to_be_bytes());
        data.extend_from_slice(&7i32.to_be_bytes());
        data.extend_from_slice(&(-1i32).to_be_bytes());
        data.extend_from_slice(&(-1i16).to_be_bytes());
        assert_eq!(
            parse_binary(&data).unwrap(),
            vec![vec![Some(7i32.to_be_bytes().to_vec()), None]]
        );
        assert!(parse_binary(&data[..data.len() - 3]).is_err());
        assert!(parse_binary(b"PGCOPX").is_err());
    }

    #[test]
    fn text_format_round_trips_escapes_and_nulls() {
        let s = spec(CopyFormat::Text);
        let rows = vec![
            vec![Some("1".to_string()), Some("a\tb\nc\\d".to_string()), None],
            vec![Some("2".to_string()), Some(String::new()), Some("x".into())],
        ];
        let data: String = rows.iter().map(|r| s.format_row(r)).collect();
        assert_eq!(data, "1\ta\\tb\\nc\\\\d\t\\N\n2\t\tx\n");
        assert_eq!(s.parse_rows(&data).unwrap(), rows);
        assert_eq!(s.parse_rows("1\tx\n\\.\n").unwrap().len(), 1);
    }

    #[test]
    fn csv_quotes_what_needs_it_and_reads_it_back() {
        let mut s = spec(CopyFormat::Csv);
        let rows = vec![
            vec![Some("1".to_string()), Some("a,\"b\"".to_string()), None],
            vec![
                Some("2".to_string()),
                Some(String::new()),
                Some("line\nbreak".into()),
            ],
        ];
        let data: String = rows.iter().map(|r| s.format_row(r)).collect();
        assert_eq!(data, "1,\"a,\"\"b\"\"\",\n2,\"\",\"line\nbreak\"\n");
        assert_eq!(s.parse_rows(&data).unwrap(), rows);
        s.header = true;
        let with_header = format!("id,name,note\n{data}");
        assert_eq!(s.parse_rows(&with_header).unwrap(), rows);
    }
}
