//! The PostgreSQL types availdb speaks, and how SQLite's declared column types
//! map onto them.
//!
//! SQLite is dynamically typed: a column has a *declared type* whose name
//! decides its affinity, and any value may still be stored in it. SQLite
//! keeps the declared type exactly as written, so a table created with
//! PostgreSQL types (`timestamp with time zone`, `varchar(40)`, `uuid`,
//! `jsonb`) keeps them: availdb reads them back from the schema and
//! announces each column with its real PostgreSQL type and OID. Values are
//! stored as SQLite holds them — integers, reals, text (dates, times,
//! timestamps, intervals and UUIDs as ISO-8601 / canonical text, JSON as
//! text), blobs — and converted at the edge (`frontend::encode`), failing
//! with a clear error when a stored value does not fit the declared type in
//! binary format.
//!
//! Integers follow PostgreSQL's widths: `integer`, `int`, `int4` (and a
//! rowid alias, `INTEGER PRIMARY KEY`) are `int4`, `smallint`/`int2` are
//! `int2`, `bigint`/`int8` are `int8`, as clients such as node-postgres
//! expect (they read int4 as numbers, int8 as strings). SQLite stores any
//! 64-bit integer in any of them; a value that does not fit its column's
//! announced width is sent as it is in text format and refused with 22003
//! in binary format (`frontend::encode`): declare such columns `bigint`.
//! Expressions compute in SQLite's 64-bit integers and are `int8`
//! (`typing`), as is a SQLite-style `CAST(x AS INTEGER)`.

/// A value type as announced to PostgreSQL clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// `int2` (declared SMALLINT, INT2, TINYINT).
    Int2,
    /// `int4` (declared INTEGER, INT, INT4, MEDIUMINT, SERIAL).
    Int4,
    /// `int8` (declared BIGINT, INT8; other names with "INT").
    Int8,
    /// `float4` (declared FLOAT4).
    Float4,
    /// `float8` (SQLite REAL affinity: REAL, DOUBLE PRECISION, FLOAT).
    Float8,
    /// `text` (SQLite TEXT affinity).
    Text,
    /// `varchar` (declared VARCHAR(n), CHARACTER VARYING).
    Varchar,
    /// `bpchar` (declared CHAR(n), CHARACTER).
    Bpchar,
    /// `bytea` (SQLite BLOB, or no declared type).
    Bytea,
    /// `bool` (declared BOOL/BOOLEAN; stored as 0/1).
    Bool,
    /// `numeric` (declared NUMERIC/DECIMAL; stored as integer or real).
    Numeric,
    /// `date` (stored as `YYYY-MM-DD` text).
    Date,
    /// `time` (stored as `HH:MM:SS[.ffffff]` text).
    Time,
    /// `timestamp` (stored as `YYYY-MM-DD HH:MM:SS[.ffffff]` text).
    Timestamp,
    /// `timestamptz` (stored as ISO-8601 text with its offset).
    Timestamptz,
    /// `interval` (stored as text, PostgreSQL's output form).
    Interval,
    /// `uuid` (stored as canonical hyphenated text).
    Uuid,
    /// `json` (stored as text).
    Json,
    /// `jsonb` (stored as text).
    Jsonb,
    /// `oid` (catalog identifiers; also regclass, regtype, regproc).
    Oid,
    /// `text[]`: an array, kept as a JSON array (`array_agg`, `ARRAY(…)`).
    TextArray,
    /// `int2vector` (catalog key lists), kept as a JSON array.
    Int2Vector,
    /// `bool[]`, kept as a JSON array.
    BoolArray,
    /// `int8[]`, kept as a JSON array.
    Int8Array,
}

impl ValueType {
    /// Maps a SQLite declared column type to the PostgreSQL type we announce.
    ///
    /// PostgreSQL type names are recognised first (with their length or
    /// precision ignored), then SQLite's own affinity rules (section 3.1 of
    /// <https://sqlite.org/datatype3.html>): "INT" → integer; "CHAR", "CLOB",
    /// "TEXT" → text; "BLOB" or empty → blob; "REAL", "FLOA", "DOUB" → real;
    /// anything else → numeric.
    pub fn from_decltype(decltype: &str) -> ValueType {
        let lower = decltype.trim().to_ascii_lowercase();
        // `varchar(20)`, `numeric(10, 2)`, `timestamp(3) with time zone`.
        let mut base = String::with_capacity(lower.len());
        let mut depth = 0;
        for c in lower.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ if depth == 0 => base.push(c),
                _ => {}
            }
        }
        if base.trim_end().ends_with("[]") {
            return ValueType::Text;
        }
        let words: Vec<&str> = base.split_whitespace().collect();
        let name = words.join(" ");
        let exact = match name.as_str() {
            "integer" | "int" | "int4" | "mediumint" | "serial" | "serial4" => {
                Some(ValueType::Int4)
            }
            "smallint" | "int2" | "tinyint" | "smallserial" | "serial2" => Some(ValueType::Int2),
            "bigint" | "int8" | "bigserial" | "serial8" => Some(ValueType::Int8),
            "float4" => Some(ValueType::Float4),
            "bool" | "boolean" => Some(ValueType::Bool),
            "varchar" | "character varying" | "nvarchar" | "varying character" => {
                Some(ValueType::Varchar)
            }
            "char" | "character" | "bpchar" | "nchar" | "native character" => {
                Some(ValueType::Bpchar)
            }
            "date" => Some(ValueType::Date),
            "time" | "time without time zone" => Some(ValueType::Time),
            "timestamp" | "timestamp without time zone" | "datetime" => Some(ValueType::Timestamp),
            "timestamptz" | "timestamp with time zone" => Some(ValueType::Timestamptz),
            "interval" => Some(ValueType::Interval),
            "uuid" => Some(ValueType::Uuid),
            "json" => Some(ValueType::Json),
            "jsonb" => Some(ValueType::Jsonb),
            "oid" | "regclass" | "regtype" | "regproc" | "regprocedure" | "xid" => {
                Some(ValueType::Oid)
            }
            "name" => Some(ValueType::Text),
            _ => None,
        };
        if let Some(ty) = exact {
            return ty;
        }
        let t = lower.to_ascii_uppercase();
        if t.starts_with("BOOL") {
            ValueType::Bool
        } else if t.contains("DECIMAL") || t.starts_with("NUMERIC") {
            ValueType::Numeric
        } else if t.contains("DATE")
            || t.contains("TIME")
            || t.contains("UUID")
            || t.contains("JSON")
        {
            ValueType::Text
        } else if t.contains("BYTEA") || t.contains("BLOB") || t.trim().is_empty() {
            ValueType::Bytea
        } else if t.contains("INT") {
            ValueType::Int8
        } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
            ValueType::Text
        } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
            ValueType::Float8
        } else {
            ValueType::Numeric
        }
    }

    /// The PostgreSQL type name, as `CAST` and error messages spell it.
    pub fn pg_name(self) -> &'static str {
        match self {
            ValueType::Int2 => "smallint",
            ValueType::Int4 => "integer",
            ValueType::Int8 => "bigint",
            ValueType::Float4 => "real",
            ValueType::Float8 => "double precision",
            ValueType::Text => "text",
            ValueType::Varchar => "character varying",
            ValueType::Bpchar => "character",
            ValueType::Bytea => "bytea",
            ValueType::Bool => "boolean",
            ValueType::Numeric => "numeric",
            ValueType::Date => "date",
            ValueType::Time => "time without time zone",
            ValueType::Timestamp => "timestamp without time zone",
            ValueType::Timestamptz => "timestamp with time zone",
            ValueType::Interval => "interval",
            ValueType::Uuid => "uuid",
            ValueType::Json => "json",
            ValueType::Jsonb => "jsonb",
            ValueType::Oid => "oid",
            ValueType::TextArray => "text[]",
            ValueType::Int2Vector => "int2vector",
            ValueType::BoolArray => "boolean[]",
            ValueType::Int8Array => "bigint[]",
        }
    }

    /// The PostgreSQL OID of the type.
    pub fn oid(self) -> u32 {
        match self {
            ValueType::Int2 => 21,
            ValueType::Int4 => 23,
            ValueType::Int8 => 20,
            ValueType::Float4 => 700,
            ValueType::Float8 => 701,
            ValueType::Text => 25,
            ValueType::Varchar => 1043,
            ValueType::Bpchar => 1042,
            ValueType::Bytea => 17,
            ValueType::Bool => 16,
            ValueType::Numeric => 1700,
            ValueType::Date => 1082,
            ValueType::Time => 1083,
            ValueType::Timestamp => 1114,
            ValueType::Timestamptz => 1184,
            ValueType::Interval => 1186,
            ValueType::Uuid => 2950,
            ValueType::Json => 114,
            ValueType::Jsonb => 3802,
            ValueType::Oid => 26,
            ValueType::TextArray => 1009,
            ValueType::Int2Vector => 22,
            ValueType::BoolArray => 1000,
            ValueType::Int8Array => 1016,
        }
    }

    /// The SQLite storage class the type computes in (for arithmetic and
    /// comparison typing): `Int8`, `Float8`, `Numeric`, `Text`, `Bytea` or
    /// `Bool`.
    pub fn storage(self) -> ValueType {
        match self {
            ValueType::Int2 | ValueType::Int4 | ValueType::Int8 | ValueType::Oid => ValueType::Int8,
            ValueType::Float4 | ValueType::Float8 => ValueType::Float8,
            ValueType::Bool => ValueType::Bool,
            ValueType::Numeric => ValueType::Numeric,
            ValueType::Bytea => ValueType::Bytea,
            _ => ValueType::Text,
        }
    }

    /// True for the integer types.
    pub fn is_integer(self) -> bool {
        self.storage() == ValueType::Int8
    }
}

#[cfg(test)]
mod tests {
    use super::ValueType::{self, *};

    #[test]
    fn declared_types_map_to_postgres_types_then_sqlite_affinity() {
        let cases = [
            ("INTEGER", Int4),
            ("integer", Int4),
            ("int", Int4),
            ("int4", Int4),
            ("smallint", Int2),
            ("BIGINT", Int8),
            ("VARCHAR(20)", Varchar),
            ("character varying(5)", Varchar),
            ("char(84)", Bpchar),
            ("TEXT", Text),
            ("CLOB", Text),
            ("BLOB", Bytea),
            ("bytea", Bytea),
            ("", Bytea),
            ("REAL", Float8),
            ("float4", Float4),
            ("DOUBLE PRECISION", Float8),
            ("FLOAT", Float8),
            ("NUMERIC(10,2)", Numeric),
            ("DECIMAL", Numeric),
            ("BOOLEAN", Bool),
            ("bool", Bool),
            ("TIMESTAMP", Timestamp),
            ("timestamp with time zone", Timestamptz),
            ("timestamp(3) without time zone", Timestamp),
            ("timestamptz", Timestamptz),
            ("DATE", Date),
            ("time", Time),
            ("interval", Interval),
            ("uuid", Uuid),
            ("json", Json),
            ("jsonb", Jsonb),
            ("text[]", Text),
            ("MONEY", Numeric),
            ("UNSIGNED BIG INT", Int8),
        ];
        for (decl, want) in cases {
            assert_eq!(ValueType::from_decltype(decl), want, "{decl}");
        }
    }
}
