//! The PostgreSQL types availdb speaks, and how SQLite's declared column types
//! map onto them.
//!
//! SQLite is dynamically typed: a column has a *declared type* whose name
//! decides its affinity, and any value may still be stored in it. Clients of
//! the PostgreSQL protocol need one type per column and per parameter, so we
//! pick the type the declaration asks for and convert values at the edge
//! (`frontend::encode`), failing with a clear error when a stored value does
//! not fit the declared type in binary format.

/// A value type as announced to PostgreSQL clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// `int8` (SQLite INTEGER affinity).
    Int8,
    /// `float8` (SQLite REAL affinity).
    Float8,
    /// `text` (SQLite TEXT affinity; also dates and times, stored as text).
    Text,
    /// `bytea` (SQLite BLOB, or no declared type).
    Bytea,
    /// `bool` (declared BOOL/BOOLEAN; stored as 0/1).
    Bool,
    /// `numeric` (declared NUMERIC/DECIMAL; stored as integer or real).
    Numeric,
}

impl ValueType {
    /// Maps a SQLite declared column type to the PostgreSQL type we announce.
    ///
    /// Specific names are checked first (BOOL, DECIMAL/NUMERIC, DATE/TIME,
    /// BLOB/BYTEA), then SQLite's own affinity rules (section 3.1 of
    /// <https://sqlite.org/datatype3.html>): "INT" → integer; "CHAR", "CLOB",
    /// "TEXT" → text; "BLOB" or empty → blob; "REAL", "FLOA", "DOUB" → real;
    /// anything else → numeric.
    pub fn from_decltype(decltype: &str) -> ValueType {
        let t = decltype.to_ascii_uppercase();
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
            ValueType::Int8 => "bigint",
            ValueType::Float8 => "double precision",
            ValueType::Text => "text",
            ValueType::Bytea => "bytea",
            ValueType::Bool => "boolean",
            ValueType::Numeric => "numeric",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ValueType::{self, *};

    #[test]
    fn declared_types_map_by_sqlite_affinity_rules() {
        let cases = [
            ("INTEGER", Int8),
            ("int", Int8),
            ("BIGINT", Int8),
            ("VARCHAR(20)", Text),
            ("TEXT", Text),
            ("CLOB", Text),
            ("BLOB", Bytea),
            ("bytea", Bytea),
            ("", Bytea),
            ("REAL", Float8),
            ("DOUBLE PRECISION", Float8),
            ("FLOAT", Float8),
            ("NUMERIC(10,2)", Numeric),
            ("DECIMAL", Numeric),
            ("BOOLEAN", Bool),
            ("bool", Bool),
            ("TIMESTAMP", Text),
            ("DATE", Text),
            ("MONEY", Numeric),
        ];
        for (decl, want) in cases {
            assert_eq!(ValueType::from_decltype(decl), want, "{decl}");
        }
    }
}
