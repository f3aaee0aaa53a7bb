//! Values between SQLite and the wire: result rows out, parameters in.
//!
//! Text format is lenient: whatever SQLite stored is rendered as text, as a
//! dynamically typed database must. Binary format must match the announced
//! type exactly, so values are converted, and a value that cannot be (text
//! `'abc'` in an INTEGER column) fails with 22P02 naming the column; an
//! integer wider than its column's int2 or int4 (SQLite stores 64 bits in
//! any integer column) fails with 22003, never wrapped.

use std::sync::Arc;

use pgwire::api::portal::{Format, Portal};
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo};
use pgwire::api::Type;
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::types::format::FormatOptions;
use rusqlite::types::Value;
use rust_decimal::prelude::{FromPrimitive, ToPrimitive};
use rust_decimal::Decimal;
use tokio_postgres::types::Kind;

use crate::engine::{Column, Error};
use crate::sql::types::ValueType;

use crate::sql::temporal;

/// The PostgreSQL type announced for a value type.
pub fn pg_type(ty: ValueType) -> Type {
    Type::from_oid(ty.oid()).unwrap_or(Type::TEXT)
}

/// Row descriptions for `columns` in the client's requested formats.
pub fn fields(columns: &[Column], format: &Format) -> Vec<FieldInfo> {
    columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            FieldInfo::new(
                c.name.clone(),
                None,
                None,
                pg_type(c.ty),
                format.format_for(i),
            )
        })
        .collect()
}

/// Encodes all rows for `schema`.
pub fn encode_rows(
    schema: &Arc<Vec<FieldInfo>>,
    rows: Vec<Vec<Value>>,
) -> PgWireResult<Vec<DataRow>> {
    let mut encoder = DataRowEncoder::new(schema.clone());
    let opts = FormatOptions::default();
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        for (field, value) in schema.iter().zip(&row) {
            encode_value(&mut encoder, field, value, &opts)?;
        }
        out.push(encoder.take_row());
    }
    Ok(out)
}

fn encode_value(
    enc: &mut DataRowEncoder,
    field: &FieldInfo,
    value: &Value,
    opts: &FormatOptions,
) -> PgWireResult<()> {
    let format = field.format();
    let ty = field.datatype();
    if format == FieldFormat::Text {
        return match (ty, value) {
            (_, Value::Null) => {
                enc.encode_field_with_type_and_format(&None::<i64>, &Type::INT8, format, opts)
            }
            (&Type::BOOL, Value::Integer(i)) => {
                enc.encode_field_with_type_and_format(&(*i != 0), ty, format, opts)
            }
            (_, Value::Integer(i)) => {
                enc.encode_field_with_type_and_format(i, &Type::INT8, format, opts)
            }
            (_, Value::Real(f)) => {
                enc.encode_field_with_type_and_format(&float_text(*f), &Type::TEXT, format, opts)
            }
            (_, Value::Text(s)) => {
                let normalized = normalize_text(ty, s);
                let s = normalized.as_deref().unwrap_or(s);
                enc.encode_field_with_type_and_format(&s, &Type::TEXT, format, opts)
            }
            (&Type::TEXT, Value::Blob(b)) => enc.encode_field_with_type_and_format(
                &String::from_utf8_lossy(b).as_ref(),
                &Type::TEXT,
                format,
                opts,
            ),
            (_, Value::Blob(b)) => {
                enc.encode_field_with_type_and_format(&b.as_slice(), &Type::BYTEA, format, opts)
            }
        };
    }
    let mismatch = || {
        PgWireError::UserError(Box::new(to_user_error(
            &Error::sql(
                "22P02",
                format!(
                    "value {} of column \"{}\" cannot be sent as {} in binary format",
                    describe(value),
                    field.name(),
                    ty.name()
                ),
            )
            .with_hint("CAST the column to the type it holds, or request text format"),
        )))
    };
    if matches!(value, Value::Null) {
        return enc.encode_field_with_type_and_format(&None::<i64>, ty, format, opts);
    }
    match *ty {
        Type::INT2 | Type::INT4 | Type::OID => {
            let v = match value {
                Value::Integer(i) => *i,
                Value::Real(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => *f as i64,
                Value::Text(s) => s.trim().parse().map_err(|_| mismatch())?,
                _ => return Err(mismatch()),
            };
            match *ty {
                Type::INT2 => {
                    let v = i16::try_from(v).map_err(|_| out_of_range(field, v))?;
                    enc.encode_field_with_type_and_format(&v, ty, format, opts)
                }
                Type::INT4 => {
                    let v = i32::try_from(v).map_err(|_| out_of_range(field, v))?;
                    enc.encode_field_with_type_and_format(&v, ty, format, opts)
                }
                _ => {
                    let v = u32::try_from(v).map_err(|_| mismatch())?;
                    enc.encode_field_with_type_and_format(&v, ty, format, opts)
                }
            }
        }
        Type::FLOAT4 => {
            let v = match value {
                Value::Real(f) => *f as f32,
                Value::Integer(i) => *i as f32,
                Value::Text(s) => s.trim().parse().map_err(|_| mismatch())?,
                _ => return Err(mismatch()),
            };
            enc.encode_field_with_type_and_format(&v, ty, format, opts)
        }
        Type::DATE
        | Type::TIME
        | Type::TIMESTAMP
        | Type::TIMESTAMPTZ
        | Type::INTERVAL
        | Type::UUID
        | Type::JSONB
        | Type::TEXT_ARRAY => {
            let text = match value {
                Value::Text(s) => s.as_str(),
                _ => return Err(mismatch()),
            };
            let raw = binary_of_text(ty, text).ok_or_else(mismatch)?;
            enc.encode_field_with_type_and_format(&raw.as_slice(), &Type::BYTEA, format, opts)
        }
        Type::INT8 => {
            let v = match value {
                Value::Integer(i) => *i,
                Value::Real(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => *f as i64,
                Value::Text(s) => s.trim().parse().map_err(|_| mismatch())?,
                _ => return Err(mismatch()),
            };
            enc.encode_field_with_type_and_format(&v, ty, format, opts)
        }
        Type::FLOAT8 => {
            let v = match value {
                Value::Real(f) => *f,
                Value::Integer(i) => *i as f64,
                Value::Text(s) => s.trim().parse().map_err(|_| mismatch())?,
                _ => return Err(mismatch()),
            };
            enc.encode_field_with_type_and_format(&v, ty, format, opts)
        }
        Type::BOOL => {
            let v = match value {
                Value::Integer(i) => *i != 0,
                Value::Real(f) => *f != 0.0,
                Value::Text(s) => parse_bool(s).ok_or_else(mismatch)?,
                _ => return Err(mismatch()),
            };
            enc.encode_field_with_type_and_format(&v, ty, format, opts)
        }
        Type::NUMERIC => {
            let v = match value {
                Value::Integer(i) => Decimal::from(*i),
                Value::Real(f) => Decimal::from_f64(*f).ok_or_else(mismatch)?,
                Value::Text(s) => s.trim().parse().map_err(|_| mismatch())?,
                _ => return Err(mismatch()),
            };
            enc.encode_field_with_type_and_format(&v, ty, format, opts)
        }
        Type::BYTEA => {
            let v: &[u8] = match value {
                Value::Blob(b) => b,
                Value::Text(s) => s.as_bytes(),
                _ => return Err(mismatch()),
            };
            enc.encode_field_with_type_and_format(&v, ty, format, opts)
        }
        _ => {
            let v = match value {
                Value::Text(s) => s.clone(),
                Value::Integer(i) => i.to_string(),
                Value::Real(f) => f.to_string(),
                Value::Blob(b) => String::from_utf8(b.clone()).map_err(|_| mismatch())?,
                Value::Null => unreachable!("handled above"),
            };
            enc.encode_field_with_type_and_format(&v, &Type::TEXT, format, opts)
        }
    }
}

/// The binary form of a value stored as text, for the temporal types,
/// UUID and jsonb (a version byte, then the text).
fn binary_of_text(ty: &Type, text: &str) -> Option<Vec<u8>> {
    match *ty {
        Type::DATE => temporal::parse_date(text).map(temporal::date_to_binary),
        Type::TIME => temporal::parse_time(text).map(temporal::time_to_binary),
        Type::TIMESTAMP => temporal::timestamp_to_binary(temporal::parse_timestamp(text)?.0),
        Type::TIMESTAMPTZ => {
            temporal::timestamp_to_binary(temporal::parse_timestamptz(text)?.naive_utc())
        }
        Type::INTERVAL => Some(temporal::Interval::parse(text)?.to_binary()),
        Type::UUID => temporal::uuid_to_binary(text),
        Type::TEXT_ARRAY => json_to_array_binary(text),
        Type::JSONB => {
            let mut out = vec![1];
            out.extend_from_slice(text.as_bytes());
            Some(out)
        }
        _ => None,
    }
}

/// A JSON array as PostgreSQL's array literal (`{a,"b c",NULL}`).
fn json_to_array_text(text: &str) -> Option<String> {
    let serde_json::Value::Array(items) = serde_json::from_str(text).ok()? else {
        return None;
    };
    let mut out = String::from("{");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            serde_json::Value::Null => out.push_str("NULL"),
            serde_json::Value::String(s) => {
                let plain = !s.is_empty()
                    && !s.eq_ignore_ascii_case("null")
                    && !s.contains(|c: char| {
                        c.is_whitespace() || matches!(c, '{' | '}' | ',' | '"' | '\\')
                    });
                if plain {
                    out.push_str(s);
                } else {
                    out.push('"');
                    out.push_str(&s.replace('\\', "\\\\").replace('"', "\\\""));
                    out.push('"');
                }
            }
            serde_json::Value::Bool(b) => out.push(if *b { 't' } else { 'f' }),
            other => out.push_str(&other.to_string()),
        }
    }
    out.push('}');
    Some(out)
}

/// A JSON array as PostgreSQL's binary `text[]`.
fn json_to_array_binary(text: &str) -> Option<Vec<u8>> {
    let serde_json::Value::Array(items) = serde_json::from_str(text).ok()? else {
        return None;
    };
    let mut out = Vec::new();
    let has_null = items.iter().any(serde_json::Value::is_null);
    out.extend_from_slice(&1i32.to_be_bytes());
    out.extend_from_slice(&i32::from(has_null).to_be_bytes());
    out.extend_from_slice(&25u32.to_be_bytes());
    out.extend_from_slice(&(items.len() as i32).to_be_bytes());
    out.extend_from_slice(&1i32.to_be_bytes());
    for item in items {
        let text = match item {
            serde_json::Value::Null => {
                out.extend_from_slice(&(-1i32).to_be_bytes());
                continue;
            }
            serde_json::Value::String(s) => s,
            serde_json::Value::Bool(b) => if b { "t" } else { "f" }.to_string(),
            other => other.to_string(),
        };
        out.extend_from_slice(&(text.len() as i32).to_be_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    Some(out)
}

/// PostgreSQL's output form of a stored date, time or timestamp (text
/// format), when it is not in that form already; None keeps the text.
fn normalize_text(ty: &Type, text: &str) -> Option<String> {
    match *ty {
        Type::TEXT_ARRAY | Type::INT8_ARRAY => json_to_array_text(text),
        Type::BOOL_ARRAY => {
            let serde_json::Value::Array(items) = serde_json::from_str(text).ok()? else {
                return None;
            };
            let items: Vec<&str> = items
                .iter()
                .map(|i| match i {
                    serde_json::Value::Null => "NULL",
                    serde_json::Value::Bool(false) => "f",
                    serde_json::Value::Number(n) if n.as_f64() == Some(0.0) => "f",
                    _ => "t",
                })
                .collect();
            Some(format!("{{{}}}", items.join(",")))
        }
        Type::INT2_VECTOR => {
            let serde_json::Value::Array(items) = serde_json::from_str(text).ok()? else {
                return None;
            };
            Some(
                items
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        }
        Type::TIMESTAMPTZ => Some(temporal::format_timestamptz(temporal::parse_timestamptz(
            text,
        )?)),
        Type::TIMESTAMP if text.contains('T') => Some(temporal::format_timestamp(
            temporal::parse_timestamp(text)?.0,
        )),
        Type::BOOL => match parse_bool(text)? {
            true => Some("t".into()),
            false => Some("f".into()),
        },
        _ => None,
    }
}

/// A stored value as PostgreSQL's text output of `ty` (None for NULL):
/// what COPY TO writes.
pub fn value_text(ty: ValueType, value: &Value) -> Option<String> {
    let pg = pg_type(ty);
    Some(match value {
        Value::Null => return None,
        Value::Integer(i) if ty == ValueType::Bool => if *i != 0 { "t" } else { "f" }.into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => float_text(*f),
        Value::Text(s) => normalize_text(&pg, s).unwrap_or_else(|| s.clone()),
        Value::Blob(b) if ty == ValueType::Bytea => {
            let mut out = String::with_capacity(2 + b.len() * 2);
            out.push_str("\\x");
            for byte in b {
                out.push_str(&format!("{byte:02x}"));
            }
            out
        }
        Value::Blob(b) => String::from_utf8_lossy(b).into_owned(),
    })
}

/// A float as PostgreSQL prints float8: the shortest text that reads back
/// the same value, `2` rather than `2.0`, and an exponent outside 1e-4..1e15.
fn float_text(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    if f != 0.0 && !(-4..15).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else {
        let plain = f.to_string();
        plain
            .strip_suffix(".0")
            .map(str::to_string)
            .unwrap_or(plain)
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => f.to_string(),
        Value::Text(s) => format!("'{}'", s.chars().take(40).collect::<String>()),
        Value::Blob(b) => format!("<{} bytes>", b.len()),
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "1" | "on" | "yes" | "y" => Some(true),
        "f" | "false" | "0" | "off" | "no" | "n" => Some(false),
        _ => None,
    }
}

/// Decodes the parameters of a bound portal. `types[i]` is the type of
/// `$i+1`: the client's, else the one we inferred and announced.
pub fn decode_params<S: Clone>(portal: &Portal<S>, types: &[Type]) -> Result<Vec<Value>, Error> {
    (0..portal.parameter_len())
        .map(|i| {
            let ty = types.get(i).cloned().unwrap_or(Type::UNKNOWN);
            let Some(raw) = portal.parameters[i].as_ref() else {
                return Ok(Value::Null);
            };
            let bad = |why: &str| {
                Error::sql(
                    "22P02",
                    format!(
                        "invalid value for parameter ${} of type {}: {why}",
                        i + 1,
                        ty.name()
                    ),
                )
            };
            if portal.parameter_format.is_binary(i) {
                decode_binary(portal, i, &ty, raw).map_err(|e| bad(&e))
            } else {
                let text = std::str::from_utf8(raw).map_err(|_| bad("not valid UTF-8"))?;
                decode_text(&ty, text).ok_or_else(|| bad(&format!("\"{text}\"")))
            }
        })
        .collect()
}

/// A text-format value of type `ty` as availdb stores it; None when the
/// text does not spell one.
pub fn decode_text(ty: &Type, text: &str) -> Option<Value> {
    Some(match *ty {
        Type::INT2 | Type::INT4 | Type::INT8 | Type::OID => {
            Value::Integer(text.trim().parse().ok()?)
        }
        Type::FLOAT4 | Type::FLOAT8 => Value::Real(parse_float(text)?),
        Type::BOOL => Value::Integer(parse_bool(text)? as i64),
        Type::NUMERIC => {
            let d: Decimal = text.trim().parse().ok()?;
            decimal_value(d)
        }
        Type::BYTEA => Value::Blob(decode_bytea_text(text)?),
        Type::TIMESTAMPTZ => Value::Text(
            temporal::parse_timestamptz(text)
                .map(temporal::format_timestamptz)
                .unwrap_or_else(|| text.to_string()),
        ),
        Type::TIMESTAMP => Value::Text(
            temporal::parse_timestamp(text)
                .map(|(ts, _)| temporal::format_timestamp(ts))
                .unwrap_or_else(|| text.to_string()),
        ),
        Type::UUID => Value::Text(
            uuid::Uuid::parse_str(text.trim())
                .map(|u| u.hyphenated().to_string())
                .unwrap_or_else(|_| text.to_string()),
        ),
        _ => match ty.kind() {
            Kind::Array(element) => Value::Text(array_text_to_json(text, element)?),
            _ => Value::Text(text.to_string()),
        },
    })
}

/// A PostgreSQL array literal (`{1,2,"a b",NULL}`) as a JSON array, the
/// form availdb keeps arrays in (`= ANY($1)` reads it with `json_each`).
/// Nested arrays become nested JSON arrays.
fn array_text_to_json(text: &str, element: &Type) -> Option<String> {
    let t = text.trim();
    if t.starts_with('[') {
        return Some(t.to_string());
    }
    let mut chars = t.chars().peekable();
    let value = parse_array(&mut chars, element)?;
    Some(value.to_string())
}

fn parse_array(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    element: &Type,
) -> Option<serde_json::Value> {
    if chars.next()? != '{' {
        return None;
    }
    let mut items = Vec::new();
    loop {
        match chars.peek()? {
            '}' => {
                chars.next();
                return Some(serde_json::Value::Array(items));
            }
            ',' | ' ' => {
                chars.next();
            }
            '{' => items.push(parse_array(chars, element)?),
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next()? {
                        '\\' => s.push(chars.next()?),
                        '"' => break,
                        c => s.push(c),
                    }
                }
                items.push(json_element(&s, element, true));
            }
            _ => {
                let mut s = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ',' || c == '}' {
                        break;
                    }
                    s.push(c);
                    chars.next();
                }
                items.push(json_element(s.trim(), element, false));
            }
        }
    }
}

fn json_element(s: &str, element: &Type, quoted: bool) -> serde_json::Value {
    if !quoted && s.eq_ignore_ascii_case("null") {
        return serde_json::Value::Null;
    }
    match decode_text(element, s) {
        Some(Value::Integer(i)) => i.into(),
        Some(Value::Real(f)) => {
            serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, Into::into)
        }
        _ => serde_json::Value::String(s.to_string()),
    }
}

fn value_to_json(v: Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Integer(i) => i.into(),
        Value::Real(f) => {
            serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, Into::into)
        }
        Value::Text(s) => s.into(),
        Value::Blob(b) => String::from_utf8_lossy(&b).into_owned().into(),
    }
}

fn parse_float(text: &str) -> Option<f64> {
    match text.trim().to_ascii_lowercase().as_str() {
        "infinity" | "+infinity" => Some(f64::INFINITY),
        "-infinity" => Some(f64::NEG_INFINITY),
        "nan" => Some(f64::NAN),
        t => t.parse().ok(),
    }
}

/// An integral numeric is stored as INTEGER, others as REAL (SQLite's
/// NUMERIC affinity would do the same with text).
fn decimal_value(d: Decimal) -> Value {
    if d.fract().is_zero() {
        if let Some(i) = d.to_i64() {
            return Value::Integer(i);
        }
    }
    Value::Real(d.to_f64().unwrap_or(f64::NAN))
}

/// `\x0a0b` hex format (PostgreSQL's default output); anything else is taken
/// as the bytes of the text.
fn decode_bytea_text(text: &str) -> Option<Vec<u8>> {
    let Some(hex) = text.strip_prefix("\\x") else {
        return Some(text.as_bytes().to_vec());
    };
    if hex.len() % 2 != 0 {
        return None;
    }
    // Bytes, not `str` slices: a non-ASCII character would split.
    hex.as_bytes()
        .chunks(2)
        .map(|pair| {
            // from_str_radix alone would take a sign ("+f").
            if !pair.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()
        })
        .collect()
}

/// Refuses a binary NUMERIC whose trailing zero groups (weight beyond its
/// digits) reach past `Decimal`'s 28 digits: rust_decimal's conversion
/// panics on those instead of failing (found by `src/fuzz.rs`).
fn numeric_in_range(raw: &[u8]) -> Result<(), String> {
    let field = |at: usize| {
        raw.get(at..at + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
    };
    let (Some(ndigits), Some(weight)) = (field(0), field(2)) else {
        return Err("a binary numeric needs an 8-byte header".into());
    };
    if i32::from(weight) + 1 - i32::from(ndigits) > 7 {
        return Err("numeric value out of range: availdb keeps at most 28 digits".into());
    }
    Ok(())
}

fn decode_binary<S: Clone>(
    portal: &Portal<S>,
    i: usize,
    ty: &Type,
    raw: &[u8],
) -> Result<Value, String> {
    match ty.kind() {
        Kind::Array(element) => Ok(Value::Text(
            binary_array_to_json(portal, i, element, raw)?.to_string(),
        )),
        _ => decode_binary_field(ty, raw),
    }
}

/// A value in its type's binary form (a binary COPY's field); arrays are
/// not read here.
pub fn decode_binary_field(ty: &Type, raw: &[u8]) -> Result<Value, String> {
    let fixed = |n: usize| -> Result<&[u8], String> {
        if raw.len() == n {
            Ok(raw)
        } else {
            Err(format!("expected {n} bytes, got {}", raw.len()))
        }
    };
    Ok(match *ty {
        Type::NUMERIC => {
            numeric_in_range(raw)?;
            decimal_value(
                <Decimal as tokio_postgres::types::FromSql>::from_sql(ty, raw)
                    .map_err(|e| e.to_string())?,
            )
        }
        Type::BOOL => Value::Integer((fixed(1)?[0] != 0) as i64),
        Type::INT2 => {
            Value::Integer(i16::from_be_bytes(fixed(2)?.try_into().expect("2 bytes")) as i64)
        }
        Type::INT4 | Type::OID => {
            Value::Integer(i32::from_be_bytes(fixed(4)?.try_into().expect("4 bytes")) as i64)
        }
        Type::INT8 => Value::Integer(i64::from_be_bytes(fixed(8)?.try_into().expect("8 bytes"))),
        Type::FLOAT4 => {
            Value::Real(f32::from_be_bytes(fixed(4)?.try_into().expect("4 bytes")) as f64)
        }
        Type::FLOAT8 => Value::Real(f64::from_be_bytes(fixed(8)?.try_into().expect("8 bytes"))),
        Type::BYTEA => Value::Blob(raw.to_vec()),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::JSON => {
            Value::Text(String::from_utf8(raw.to_vec()).map_err(|_| "not valid UTF-8".to_string())?)
        }
        Type::JSONB => {
            let text = raw.strip_prefix(&[1]).ok_or("unknown jsonb version")?;
            Value::Text(
                String::from_utf8(text.to_vec()).map_err(|_| "not valid UTF-8".to_string())?,
            )
        }
        Type::DATE => Value::Text(temporal::date_from_binary(raw).ok_or("expected 4 bytes")?),
        Type::TIME => Value::Text(temporal::time_from_binary(raw).ok_or("expected 8 bytes")?),
        Type::TIMESTAMP => {
            Value::Text(temporal::timestamp_from_binary(raw).ok_or("expected 8 bytes")?)
        }
        Type::TIMESTAMPTZ => {
            Value::Text(temporal::timestamptz_from_binary(raw).ok_or("expected 8 bytes")?)
        }
        Type::INTERVAL => Value::Text(
            temporal::Interval::from_binary(raw)
                .ok_or("expected 16 bytes")?
                .format(),
        ),
        Type::UUID => Value::Text(temporal::uuid_from_binary(raw).ok_or("expected 16 bytes")?),
        _ => {
            return Err(format!(
                "binary format of type {} is not supported; send it as text",
                ty.name()
            ))
        }
    })
}

/// A binary array (dimensions, null flag, element OID, then each
/// element's length and bytes) as a JSON array; one dimension.
fn binary_array_to_json<S: Clone>(
    portal: &Portal<S>,
    i: usize,
    element: &Type,
    raw: &[u8],
) -> Result<serde_json::Value, String> {
    let word = |at: usize| -> Result<i32, String> {
        raw.get(at..at + 4)
            .map(|b| i32::from_be_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| "truncated array".to_string())
    };
    let ndim = word(0)?;
    if ndim == 0 {
        return Ok(serde_json::Value::Array(Vec::new()));
    }
    if ndim != 1 {
        return Err("only one-dimensional arrays are supported".into());
    }
    let len = word(12)?;
    let mut at = 20;
    let mut items = Vec::with_capacity(len.max(0) as usize);
    for _ in 0..len {
        let n = word(at)?;
        at += 4;
        if n < 0 {
            items.push(serde_json::Value::Null);
            continue;
        }
        let bytes = raw
            .get(at..at + n as usize)
            .ok_or_else(|| "truncated array".to_string())?;
        at += n as usize;
        items.push(value_to_json(decode_binary(portal, i, element, bytes)?));
    }
    Ok(serde_json::Value::Array(items))
}

/// 22003 for a stored integer wider than its column's announced int2 or
/// int4 (SQLite keeps any 64-bit integer in any integer column): never
/// wrapped, never truncated.
fn out_of_range(field: &FieldInfo, value: i64) -> PgWireError {
    let type_name = if *field.datatype() == Type::INT2 {
        "smallint"
    } else {
        "integer"
    };
    let err = Error::sql(
        "22003",
        format!(
            "value {value} of column \"{}\" is out of range for type {type_name}",
            field.name()
        ),
    )
    .with_hint(
        "declare the column bigint to hold 64-bit values, CAST it AS BIGINT in the query, \
         or request text format",
    );
    PgWireError::UserError(Box::new(to_user_error(&err)))
}

/// An engine error as the client sees it.
pub fn to_user_error(err: &Error) -> pgwire::error::ErrorInfo {
    let mut info =
        pgwire::error::ErrorInfo::new("ERROR".into(), err.sqlstate().into(), err.to_string());
    info.hint = err.hint();
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `src/fuzz.rs`: a binary NUMERIC of no digits and weight
    /// 8 (1e32) panicked inside rust_decimal; it is refused as out of range.
    #[test]
    fn binary_numeric_beyond_28_digits_is_refused_not_a_panic() {
        let raw = [0, 0, 0, 8, 0, 0, 0, 0];
        let err = decode_binary_field(&Type::NUMERIC, &raw).unwrap_err();
        assert!(err.contains("out of range"), "{err}");
        let twelve = [0, 1, 0, 0, 0, 0, 0, 0, 0, 12];
        assert_eq!(
            decode_binary_field(&Type::NUMERIC, &twelve),
            Ok(Value::Integer(12))
        );
    }

    /// Found by `src/fuzz.rs`: `\x°0ff` sliced the hex digits inside
    /// the `°` and panicked; it is not bytea hex, so the value is refused.
    #[test]
    fn bytea_hex_with_a_multibyte_character_is_refused_not_a_panic() {
        assert_eq!(decode_bytea_text("\\x\u{b0}0ff"), None);
        assert_eq!(decode_bytea_text("\\x00ff"), Some(vec![0, 0xff]));
        assert_eq!(
            decode_bytea_text("\\x+f"),
            None,
            "a sign is not a hex digit"
        );
    }

    #[test]
    fn text_parameters_decode_by_announced_type() {
        assert_eq!(decode_text(&Type::INT8, "42"), Some(Value::Integer(42)));
        assert_eq!(decode_text(&Type::INT4, "x"), None);
        assert_eq!(
            decode_text(&Type::FLOAT8, "-Infinity"),
            Some(Value::Real(f64::NEG_INFINITY))
        );
        assert_eq!(decode_text(&Type::BOOL, "t"), Some(Value::Integer(1)));
        assert_eq!(
            decode_text(&Type::NUMERIC, "12.50"),
            Some(Value::Real(12.5))
        );
        assert_eq!(decode_text(&Type::NUMERIC, "12"), Some(Value::Integer(12)));
        assert_eq!(
            decode_text(&Type::BYTEA, "\\x00ff"),
            Some(Value::Blob(vec![0, 255]))
        );
        assert_eq!(decode_text(&Type::BYTEA, "\\x0"), None);
        assert_eq!(
            decode_text(&Type::TEXT, "hi"),
            Some(Value::Text("hi".into()))
        );
        assert_eq!(
            decode_text(&Type::UNKNOWN, "7"),
            Some(Value::Text("7".into()))
        );
    }

    fn one(ty: Type, format: FieldFormat, v: Value) -> PgWireResult<DataRow> {
        let schema = Arc::new(vec![FieldInfo::new("c".into(), None, None, ty, format)]);
        encode_rows(&schema, vec![vec![v]]).map(|mut rows| rows.remove(0))
    }

    #[test]
    fn binary_results_convert_or_fail_with_22p02() {
        assert!(one(Type::INT8, FieldFormat::Binary, Value::Text("12".into())).is_ok());
        assert!(one(Type::INT8, FieldFormat::Binary, Value::Real(2.0)).is_ok());
        let err = one(Type::INT8, FieldFormat::Binary, Value::Text("abc".into())).unwrap_err();
        assert!(
            err.to_string().contains("22P02") || format!("{err:?}").contains("22P02"),
            "{err:?}"
        );
        assert!(one(Type::NUMERIC, FieldFormat::Binary, Value::Real(1.25)).is_ok());
        assert!(one(Type::BOOL, FieldFormat::Binary, Value::Integer(1)).is_ok());
    }

    /// An int4 column holds what SQLite stores, any 64-bit integer: one
    /// beyond int4 (int2) is refused with 22003 in binary, never wrapped,
    /// and sent as stored in text.
    #[test]
    fn integers_wider_than_their_int4_or_int2_column_fail_with_22003_in_binary() {
        let wide = i64::from(i32::MAX) + 1;
        for ty in [Type::INT4, Type::INT2] {
            let err = one(ty.clone(), FieldFormat::Binary, Value::Integer(wide)).unwrap_err();
            let PgWireError::UserError(info) = &err else {
                panic!("{err:?}")
            };
            assert_eq!(info.code, "22003", "{ty}: {info:?}");
            assert!(info.message.contains("out of range"), "{info:?}");
            assert!(one(ty, FieldFormat::Text, Value::Integer(wide)).is_ok());
        }
        assert!(one(
            Type::INT4,
            FieldFormat::Binary,
            Value::Integer(i64::from(i32::MIN))
        )
        .is_ok());
        assert!(one(Type::INT2, FieldFormat::Binary, Value::Integer(-32768)).is_ok());
        assert!(one(Type::INT2, FieldFormat::Binary, Value::Integer(32768)).is_err());
    }

    #[test]
    fn floats_print_as_postgres_prints_float8() {
        let cases = [
            (2.0, "2"),
            (1.5, "1.5"),
            (-0.25, "-0.25"),
            (0.0, "0"),
            (1e20, "1e+20"),
            (1.5e-5, "1.5e-05"),
            (123456789012345.0, "123456789012345"),
            (1e15, "1e+15"),
            (0.1 + 0.2, "0.30000000000000004"),
            (f64::NEG_INFINITY, "-Infinity"),
        ];
        for (f, want) in cases {
            assert_eq!(float_text(f), want, "{f}");
        }
    }

    #[test]
    fn text_results_render_any_stored_value() {
        for v in [
            Value::Text("abc".into()),
            Value::Real(1.5),
            Value::Blob(vec![1]),
            Value::Null,
        ] {
            assert!(one(Type::INT8, FieldFormat::Text, v).is_ok());
        }
    }
}
