//! Dates, times, timestamps, intervals and UUIDs between their stored text
//! and PostgreSQL's binary format (chrono and uuid do the calendar work).
//!
//! availdb stores these types as text: dates `YYYY-MM-DD`, times
//! `HH:MM:SS[.ffffff]`, timestamps `YYYY-MM-DD HH:MM:SS[.ffffff]`,
//! timestamps with time zone the same in UTC with `+00`, intervals in
//! PostgreSQL's output form (`1 year 2 mons 3 days 04:05:06`), UUIDs
//! hyphenated. PostgreSQL's binary format counts from 2000-01-01 in
//! microseconds (days for `date`); an interval is microseconds, days and
//! months.

use chrono::{DateTime, Duration, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Utc};

fn epoch() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2000, 1, 1)
        .expect("valid date")
        .and_hms_opt(0, 0, 0)
        .expect("valid time")
}

/// `YYYY-MM-DD` (also the date part of a timestamp).
pub fn parse_date(text: &str) -> Option<NaiveDate> {
    let t = text.trim();
    let t = t.get(..10).unwrap_or(t);
    NaiveDate::parse_from_str(t, "%Y-%m-%d").ok()
}

/// `HH:MM[:SS[.f]]`.
pub fn parse_time(text: &str) -> Option<NaiveTime> {
    let t = text.trim();
    NaiveTime::parse_from_str(t, "%H:%M:%S%.f")
        .or_else(|_| NaiveTime::parse_from_str(t, "%H:%M"))
        .ok()
}

/// A timestamp with or without an offset: `YYYY-MM-DD[ T]HH:MM:SS[.f][Z|±HH[:MM]]`.
/// Returns the local date-time and the offset when one was given.
pub fn parse_timestamp(text: &str) -> Option<(NaiveDateTime, Option<FixedOffset>)> {
    let t = text.trim();
    if t.len() == 10 {
        return parse_date(t).map(|d| (d.and_hms_opt(0, 0, 0).expect("midnight"), None));
    }
    let (date, rest) = (t.get(..10)?, t.get(11..)?);
    let date = NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    let split = rest.find(['+', '-', 'Z', 'z', ' ']).unwrap_or(rest.len());
    let (time, zone) = rest.split_at(split);
    let time = parse_time(time)?;
    let zone = zone.trim();
    let offset = match zone {
        "" => None,
        "Z" | "z" | "UTC" | "utc" => FixedOffset::east_opt(0),
        z => Some(parse_offset(z)?),
    };
    Some((date.and_time(time), offset))
}

fn parse_offset(z: &str) -> Option<FixedOffset> {
    let sign = match z.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits: String = z[1..].chars().filter(|c| c.is_ascii_digit()).collect();
    let (h, m, s) = match digits.len() {
        1 | 2 => (digits.parse::<i32>().ok()?, 0, 0),
        4 => (digits[..2].parse().ok()?, digits[2..].parse().ok()?, 0),
        6 => (
            digits[..2].parse().ok()?,
            digits[2..4].parse().ok()?,
            digits[4..].parse().ok()?,
        ),
        _ => return None,
    };
    FixedOffset::east_opt(sign * (h * 3600 + m * 60 + s))
}

/// A timestamp with time zone as an instant (no offset given: UTC).
pub fn parse_timestamptz(text: &str) -> Option<DateTime<Utc>> {
    let (local, offset) = parse_timestamp(text)?;
    let offset = offset.unwrap_or(FixedOffset::east_opt(0)?);
    Some(
        local
            .and_local_timezone(offset)
            .single()?
            .with_timezone(&Utc),
    )
}

fn fraction(micros: u32) -> String {
    if micros == 0 {
        String::new()
    } else {
        let s = format!(".{micros:06}");
        s.trim_end_matches('0').to_string()
    }
}

/// PostgreSQL's output form of a timestamp.
pub fn format_timestamp(ts: NaiveDateTime) -> String {
    format!(
        "{}{}",
        ts.format("%Y-%m-%d %H:%M:%S"),
        fraction(ts.and_utc().timestamp_subsec_micros())
    )
}

/// PostgreSQL's output form of a timestamp with time zone, in UTC.
pub fn format_timestamptz(ts: DateTime<Utc>) -> String {
    format!("{}+00", format_timestamp(ts.naive_utc()))
}

/// PostgreSQL's output form of a time.
pub fn format_time(t: NaiveTime) -> String {
    let micros = (t - NaiveTime::MIN).num_microseconds().unwrap_or(0) % 1_000_000;
    format!("{}{}", t.format("%H:%M:%S"), fraction(micros as u32))
}

/// Binary `date`: days since 2000-01-01.
pub fn date_to_binary(d: NaiveDate) -> Vec<u8> {
    let days = (d - epoch().date()).num_days() as i32;
    days.to_be_bytes().to_vec()
}

/// Binary `timestamp` / `timestamptz`: microseconds since 2000-01-01.
pub fn timestamp_to_binary(ts: NaiveDateTime) -> Option<Vec<u8>> {
    let micros = (ts - epoch()).num_microseconds()?;
    Some(micros.to_be_bytes().to_vec())
}

/// Binary `time`: microseconds since midnight.
pub fn time_to_binary(t: NaiveTime) -> Vec<u8> {
    let micros = (t - NaiveTime::MIN).num_microseconds().unwrap_or(0);
    micros.to_be_bytes().to_vec()
}

fn be_i64(raw: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(raw.try_into().ok()?))
}

fn be_i32(raw: &[u8]) -> Option<i32> {
    Some(i32::from_be_bytes(raw.try_into().ok()?))
}

/// Binary `date` → `YYYY-MM-DD`.
pub fn date_from_binary(raw: &[u8]) -> Option<String> {
    let days = be_i32(raw)?;
    // Out-of-range values from a client are not dates (chrono's `+` panics).
    let d = epoch()
        .date()
        .checked_add_signed(Duration::days(days.into()))?;
    Some(d.format("%Y-%m-%d").to_string())
}

/// Binary `timestamp` → text.
pub fn timestamp_from_binary(raw: &[u8]) -> Option<String> {
    let ts = epoch().checked_add_signed(Duration::microseconds(be_i64(raw)?))?;
    Some(format_timestamp(ts))
}

/// Binary `timestamptz` → text in UTC.
pub fn timestamptz_from_binary(raw: &[u8]) -> Option<String> {
    let ts = epoch().checked_add_signed(Duration::microseconds(be_i64(raw)?))?;
    Some(format_timestamptz(ts.and_utc()))
}

/// Binary `time` → text.
pub fn time_from_binary(raw: &[u8]) -> Option<String> {
    let t = NaiveTime::MIN + Duration::microseconds(be_i64(raw)?);
    Some(format_time(t))
}

/// An interval: microseconds, days, months.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Interval {
    /// The time part.
    pub micros: i64,
    /// Days.
    pub days: i32,
    /// Months (a year is 12).
    pub months: i32,
}

impl Interval {
    /// PostgreSQL's output form (`1 year 2 mons 3 days 04:05:06.5`).
    pub fn format(&self) -> String {
        let mut parts = Vec::new();
        let (years, months) = (self.months / 12, self.months % 12);
        let plural = |n: i32, one: &str, many: &str| {
            // unsigned_abs: i32::MIN days has no `abs` (found by src/fuzz.rs).
            format!("{n} {}", if n.unsigned_abs() == 1 { one } else { many })
        };
        if years != 0 {
            parts.push(plural(years, "year", "years"));
        }
        if months != 0 {
            parts.push(plural(months, "mon", "mons"));
        }
        if self.days != 0 {
            parts.push(plural(self.days, "day", "days"));
        }
        if self.micros != 0 || parts.is_empty() {
            let sign = if self.micros < 0 { "-" } else { "" };
            let m = self.micros.unsigned_abs();
            let secs = m / 1_000_000;
            parts.push(format!(
                "{sign}{:02}:{:02}:{:02}{}",
                secs / 3600,
                secs / 60 % 60,
                secs % 60,
                fraction((m % 1_000_000) as u32)
            ));
        }
        parts.join(" ")
    }

    /// Reads PostgreSQL's output form, the verbose `@ 1 day ago`-less
    /// forms with units (`3 days`, `2 hours 5 minutes`), `HH:MM:SS`, and a
    /// bare number of seconds.
    pub fn parse(text: &str) -> Option<Interval> {
        let mut out = Interval::default();
        let words: Vec<&str> = text.split_whitespace().collect();
        let mut i = 0;
        if words.is_empty() {
            return None;
        }
        while i < words.len() {
            let w = words[i];
            if w.contains(':') {
                let (neg, w) = match w.strip_prefix('-') {
                    Some(rest) => (true, rest),
                    None => (false, w.trim_start_matches('+')),
                };
                let mut fields = w.split(':');
                let h: i64 = fields.next()?.parse().ok()?;
                let m: i64 = fields.next()?.parse().ok()?;
                let s: f64 = fields.next().unwrap_or("0").parse().ok()?;
                let micros = (h * 3600 + m * 60) * 1_000_000 + (s * 1e6).round() as i64;
                out.micros += if neg { -micros } else { micros };
                i += 1;
                continue;
            }
            let n: f64 = w.parse().ok()?;
            let unit = words.get(i + 1).map(|u| u.to_ascii_lowercase());
            let unit = unit.as_deref().unwrap_or("seconds");
            let unit = unit.trim_end_matches(',');
            let unit = if unit == "ms" {
                "millisecond"
            } else {
                unit.trim_end_matches('s')
            };
            match unit {
                "year" | "yr" | "y" => out.months += (n * 12.0) as i32,
                "mon" | "month" => out.months += n as i32,
                "week" | "w" => out.days += (n * 7.0) as i32,
                "day" | "d" => out.days += n as i32,
                "hour" | "hr" | "h" => out.micros += (n * 3.6e9) as i64,
                "minute" | "min" | "m" => out.micros += (n * 6e7) as i64,
                "second" | "sec" | "" => out.micros += (n * 1e6) as i64,
                "millisecond" => out.micros += (n * 1e3) as i64,
                "microsecond" => out.micros += n as i64,
                _ => return None,
            }
            i += 2;
        }
        Some(out)
    }

    /// Binary form: microseconds, days, months (big endian).
    pub fn to_binary(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        out.extend_from_slice(&self.micros.to_be_bytes());
        out.extend_from_slice(&self.days.to_be_bytes());
        out.extend_from_slice(&self.months.to_be_bytes());
        out
    }

    /// Reads the binary form.
    pub fn from_binary(raw: &[u8]) -> Option<Interval> {
        if raw.len() != 16 {
            return None;
        }
        Some(Interval {
            micros: be_i64(&raw[..8])?,
            days: be_i32(&raw[8..12])?,
            months: be_i32(&raw[12..])?,
        })
    }
}

/// Binary `uuid` (16 bytes) → hyphenated text.
pub fn uuid_from_binary(raw: &[u8]) -> Option<String> {
    Some(uuid::Uuid::from_slice(raw).ok()?.hyphenated().to_string())
}

/// Hyphenated (or simple) UUID text → 16 bytes.
pub fn uuid_to_binary(text: &str) -> Option<Vec<u8>> {
    Some(uuid::Uuid::parse_str(text.trim()).ok()?.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `src/fuzz.rs` (a binary `date` of 0xca15fef1 days panicked
    /// in chrono's `+`): values outside chrono's range are not dates.
    /// Found by `src/fuzz.rs`: an interval of i32::MIN days or months
    /// overflowed `abs` while being formatted.
    #[test]
    fn intervals_at_the_integer_limits_format_without_overflow() {
        let days = Interval {
            micros: 0,
            days: i32::MIN,
            months: 0,
        };
        assert_eq!(days.format(), "-2147483648 days");
        let months = Interval {
            micros: i64::MIN,
            days: 0,
            months: i32::MIN,
        };
        assert!(
            months.format().starts_with("-178956970 years -8 mons -"),
            "{}",
            months.format()
        );
    }

    #[test]
    fn binary_dates_and_timestamps_out_of_range_are_refused_not_a_panic() {
        assert_eq!(date_from_binary(&[0xca, 0x15, 0xfe, 0xf1]), None);
        assert_eq!(date_from_binary(&i32::MAX.to_be_bytes()), None);
        assert_eq!(timestamp_from_binary(&i64::MIN.to_be_bytes()), None);
        assert_eq!(timestamptz_from_binary(&i64::MAX.to_be_bytes()), None);
        assert_eq!(
            date_from_binary(&0i32.to_be_bytes()).as_deref(),
            Some("2000-01-01")
        );
    }

    #[test]
    fn timestamps_round_trip_through_the_binary_format() {
        let (ts, off) = parse_timestamp("2024-02-29 13:45:01.250").unwrap();
        assert_eq!(off, None);
        let bin = timestamp_to_binary(ts).unwrap();
        assert_eq!(
            timestamp_from_binary(&bin).unwrap(),
            "2024-02-29 13:45:01.25"
        );
        let utc = parse_timestamptz("2024-02-29T15:45:01+02:00").unwrap();
        assert_eq!(format_timestamptz(utc), "2024-02-29 13:45:01+00");
        assert_eq!(
            date_from_binary(&date_to_binary(parse_date("1999-12-31").unwrap())).unwrap(),
            "1999-12-31"
        );
        assert_eq!(
            date_to_binary(parse_date("2000-01-02").unwrap()),
            1i32.to_be_bytes()
        );
        let t = parse_time("04:05:06.5").unwrap();
        assert_eq!(time_from_binary(&time_to_binary(t)).unwrap(), "04:05:06.5");
    }

    #[test]
    fn intervals_read_postgres_output_and_units() {
        let cases = [
            (
                "1 year 2 mons 3 days 04:05:06.5",
                "1 year 2 mons 3 days 04:05:06.5",
            ),
            ("3 days", "3 days"),
            ("2 hours 5 minutes", "02:05:00"),
            ("-00:00:01", "-00:00:01"),
            ("90", "00:01:30"),
            ("00:00:00", "00:00:00"),
        ];
        for (input, want) in cases {
            let iv = Interval::parse(input).unwrap_or_else(|| panic!("{input}"));
            assert_eq!(iv.format(), want, "{input}");
            assert_eq!(Interval::from_binary(&iv.to_binary()), Some(iv));
        }
        assert_eq!(Interval::parse("soon"), None);
    }

    #[test]
    fn uuids_convert_both_ways() {
        let text = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        let bin = uuid_to_binary(text).unwrap();
        assert_eq!(bin.len(), 16);
        assert_eq!(uuid_from_binary(&bin).unwrap(), text);
    }
}
