//! Session settings: what `SET` remembers and `SHOW` answers, and the
//! ParameterStatus values clients read at start-up and after `SET`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::engine::{Error, Result, PG_VERSION};

use super::session::on_off;

/// A known setting: its canonical spelling, default, and whether PostgreSQL
/// reports it to clients with ParameterStatus (GUC_REPORT).
struct Known {
    name: &'static str,
    default: &'static str,
    reported: bool,
    read_only: bool,
}

const KNOWN: &[Known] = &[
    Known {
        name: "server_version",
        default: PG_VERSION,
        reported: true,
        read_only: true,
    },
    Known {
        name: "server_version_num",
        default: "160000",
        reported: false,
        read_only: true,
    },
    Known {
        name: "server_encoding",
        default: "UTF8",
        reported: true,
        read_only: true,
    },
    Known {
        name: "client_encoding",
        default: "UTF8",
        reported: true,
        read_only: false,
    },
    Known {
        name: "DateStyle",
        default: "ISO, MDY",
        reported: true,
        read_only: false,
    },
    Known {
        name: "TimeZone",
        default: "UTC",
        reported: true,
        read_only: false,
    },
    Known {
        name: "IntervalStyle",
        default: "postgres",
        reported: true,
        read_only: false,
    },
    Known {
        name: "integer_datetimes",
        default: "on",
        reported: true,
        read_only: true,
    },
    Known {
        name: "standard_conforming_strings",
        default: "on",
        reported: true,
        read_only: false,
    },
    Known {
        name: "is_superuser",
        default: "on",
        reported: true,
        read_only: true,
    },
    Known {
        name: "application_name",
        default: "",
        reported: true,
        read_only: false,
    },
    Known {
        name: "default_transaction_read_only",
        default: "off",
        reported: true,
        read_only: false,
    },
    Known {
        name: "in_hot_standby",
        default: "off",
        reported: true,
        read_only: true,
    },
    Known {
        name: "transaction_isolation",
        default: "read committed",
        reported: false,
        read_only: false,
    },
    Known {
        name: "default_transaction_isolation",
        default: "read committed",
        reported: false,
        read_only: false,
    },
    Known {
        name: "statement_timeout",
        default: "0",
        reported: false,
        read_only: false,
    },
    Known {
        name: "lock_timeout",
        default: "0",
        reported: false,
        read_only: false,
    },
    Known {
        name: "idle_in_transaction_session_timeout",
        default: "0",
        reported: false,
        read_only: false,
    },
    Known {
        name: "extra_float_digits",
        default: "1",
        reported: false,
        read_only: false,
    },
    Known {
        name: "search_path",
        default: "\"$user\", public",
        reported: false,
        read_only: false,
    },
    Known {
        name: "max_identifier_length",
        default: "63",
        reported: false,
        read_only: true,
    },
    Known {
        name: COMMIT_LSN,
        default: "0",
        reported: false,
        read_only: true,
    },
    Known {
        name: READ_AFTER_LSN,
        default: "0",
        reported: false,
        read_only: false,
    },
    Known {
        name: LAG_NOTICE_AFTER,
        default: "1s",
        reported: false,
        read_only: false,
    },
    Known {
        name: "synchronous_commit",
        default: "on",
        reported: false,
        read_only: false,
    },
];

/// The end LSN of the session's last commit: sent as ParameterStatus after
/// each commit, the token for [`READ_AFTER_LSN`] on a secondary.
pub const COMMIT_LSN: &str = "availdb.commit_lsn";
/// Statements on a secondary wait (bounded) until it has redone this LSN.
pub const READ_AFTER_LSN: &str = "availdb.read_after_lsn";
/// A read on a secondary further behind its primary than this (or cut off
/// from it) gets a NOTICE saying so, unless read-your-writes
/// ([`READ_AFTER_LSN`]) is asked; 0 turns the notice off.
pub const LAG_NOTICE_AFTER: &str = "availdb.lag_notice_after";
/// [`LAG_NOTICE_AFTER`]'s default.
pub const DEFAULT_LAG_NOTICE_AFTER: Duration = Duration::from_secs(1);

fn known(name: &str) -> Option<&'static Known> {
    KNOWN.iter().find(|k| k.name.eq_ignore_ascii_case(name))
}

/// The settings of one session.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Values set by the client, keyed by lower-case name.
    values: BTreeMap<String, String>,
    /// `default_transaction_read_only`.
    pub default_read_only: bool,
    /// `statement_timeout` (None: no limit).
    pub statement_timeout: Option<Duration>,
    /// `lock_timeout`: how long to wait for a database's write lock.
    pub lock_timeout: Option<Duration>,
    /// `idle_in_transaction_session_timeout`: how long the session may
    /// wait for the client inside a transaction block before it is ended
    /// (FATAL 25P03), its transaction rolled back and the write lock it
    /// holds freed. None: no limit.
    pub idle_in_transaction_timeout: Option<Duration>,
    /// The node's `--idle-in-transaction-session-timeout-ms`, which RESET
    /// goes back to.
    idle_in_transaction_default: Option<Duration>,
    /// `availdb.read_after_lsn` (None: 0, no wait).
    pub read_after_lsn: Option<u64>,
    /// `availdb.lag_notice_after` as set (None: not set, the default;
    /// Some(None): 0, off).
    lag_notice_after: Option<Option<Duration>>,
    /// The session's user name.
    pub user: String,
}

impl Settings {
    /// Applies the node's default `idle_in_transaction_session_timeout`
    /// unless the start-up packet set one.
    pub fn with_idle_in_transaction_default(mut self, default: Option<Duration>) -> Settings {
        self.idle_in_transaction_default = default;
        if !self
            .values
            .contains_key("idle_in_transaction_session_timeout")
        {
            self.idle_in_transaction_timeout = default;
        }
        self
    }

    /// Settings from the start-up packet: its parameters (`application_name`,
    /// `client_encoding`, …) and `options` (`-c name=value` pairs).
    pub fn from_startup(params: &HashMap<String, String>) -> Result<Settings> {
        let mut s = Settings {
            user: params
                .get("user")
                .cloned()
                .unwrap_or_else(|| super::USER.into()),
            ..Settings::default()
        };
        for (k, v) in params {
            match k.as_str() {
                "user" | "database" | "replication" | "options" => {}
                _ => {
                    s.set(k, Some(v))?;
                }
            }
        }
        if let Some(options) = params.get("options") {
            for (k, v) in parse_options(options) {
                s.set(&k, Some(&v))?;
            }
        }
        Ok(s)
    }

    /// `SET name = value` (None: DEFAULT). Returns the ParameterStatus to
    /// send when the setting is one clients track.
    pub fn set(&mut self, name: &str, value: Option<&str>) -> Result<Option<(String, String)>> {
        let key = name.to_ascii_lowercase();
        let Some(value) = value else {
            return Ok(self.reset(Some(&key)).pop());
        };
        if let Some(k) = known(&key) {
            if k.read_only {
                return Err(Error::sql(
                    "55P02",
                    format!("parameter \"{}\" cannot be changed", k.name),
                ));
            }
        }
        let value = match key.as_str() {
            "client_encoding" => {
                // asyncpg sends `'utf-8'`, quotes included.
                let v = value
                    .trim()
                    .trim_matches(|c| c == '\'' || c == '"')
                    .replace(['-', '_'], "")
                    .to_ascii_uppercase();
                if v != "UTF8" && v != "UNICODE" {
                    return Err(Error::sql(
                        "22023",
                        format!("availdb speaks UTF8 only, not \"{value}\""),
                    )
                    .with_hint("set client_encoding to UTF8"));
                }
                "UTF8".to_string()
            }
            "default_transaction_read_only" => {
                self.default_read_only = parse_bool(&key, value)?;
                on_off(self.default_read_only)
            }
            "statement_timeout" => {
                self.statement_timeout = parse_duration(&key, value)?;
                value.to_string()
            }
            "lock_timeout" => {
                self.lock_timeout = parse_duration(&key, value)?;
                value.to_string()
            }
            "idle_in_transaction_session_timeout" => {
                self.idle_in_transaction_timeout = parse_duration(&key, value)?;
                value.to_string()
            }
            LAG_NOTICE_AFTER => {
                self.lag_notice_after = Some(parse_duration(&key, value)?);
                value.to_string()
            }
            READ_AFTER_LSN => {
                let lsn: u64 = value.trim().parse().map_err(|_| {
                    Error::sql(
                        "22023",
                        format!("invalid value for parameter \"{READ_AFTER_LSN}\": \"{value}\""),
                    )
                    .with_hint(format!("use the number a commit reported in {COMMIT_LSN}"))
                })?;
                self.read_after_lsn = (lsn > 0).then_some(lsn);
                lsn.to_string()
            }
            _ => value.to_string(),
        };
        self.values.insert(key.clone(), value.clone());
        Ok(known(&key)
            .filter(|k| k.reported)
            .map(|k| (k.name.to_string(), value)))
    }

    /// How far behind its primary a secondary may be before a read there
    /// gets a NOTICE (None: never).
    pub fn lag_notice_after(&self) -> Option<Duration> {
        self.lag_notice_after
            .unwrap_or(Some(DEFAULT_LAG_NOTICE_AFTER))
    }

    /// Records a value the server sets (a read-only setting such as
    /// `availdb.commit_lsn`).
    pub fn record(&mut self, name: &str, value: String) {
        self.record_with(name, |held| *held = value);
    }

    /// [`Settings::record`], written into the value held: recorded at every
    /// commit, so neither the name (after the first time) nor the value
    /// needs an allocation.
    pub fn record_with(&mut self, name: &str, write: impl FnOnce(&mut String)) {
        let held = match self.values.get_mut(name) {
            Some(held) => held,
            None => self.values.entry(name.to_ascii_lowercase()).or_default(),
        };
        held.clear();
        write(held);
    }

    /// `RESET name` / `RESET ALL`; returns changed reported settings.
    pub fn reset(&mut self, name: Option<&str>) -> Vec<(String, String)> {
        let keys: Vec<String> = match name {
            Some(n) => vec![n.to_ascii_lowercase()],
            None => self.values.keys().cloned().collect(),
        };
        let mut changed = Vec::new();
        for key in keys {
            if self.values.remove(&key).is_none() {
                continue;
            }
            match key.as_str() {
                "default_transaction_read_only" => self.default_read_only = false,
                "statement_timeout" => self.statement_timeout = None,
                "lock_timeout" => self.lock_timeout = None,
                "idle_in_transaction_session_timeout" => {
                    self.idle_in_transaction_timeout = self.idle_in_transaction_default
                }
                READ_AFTER_LSN => self.read_after_lsn = None,
                LAG_NOTICE_AFTER => self.lag_notice_after = None,
                _ => {}
            }
            if let Some(k) = known(&key).filter(|k| k.reported) {
                changed.push((k.name.to_string(), k.default.to_string()));
            }
        }
        changed
    }

    /// `SHOW name`: a value set in this session, else the default; None for
    /// names we do not know and the client never set.
    pub fn show(&self, name: &str) -> Option<String> {
        let key = name.to_ascii_lowercase();
        if key == "session_authorization" || key == "current_user" {
            return Some(self.user.clone());
        }
        self.values
            .get(&key)
            .cloned()
            .or_else(|| known(&key).map(|k| k.default.to_string()))
    }

    /// `SHOW ALL`.
    pub fn all(&self, transaction_read_only: bool) -> Vec<(String, String)> {
        let mut out: BTreeMap<String, String> = KNOWN
            .iter()
            .map(|k| (k.name.to_string(), self.show(k.name).unwrap_or_default()))
            .collect();
        out.insert(
            "transaction_read_only".into(),
            on_off(transaction_read_only),
        );
        for (k, v) in &self.values {
            if known(k).is_none() {
                out.insert(k.clone(), v.clone());
            }
        }
        out.into_iter().collect()
    }

    /// ParameterStatus values sent after authentication.
    pub fn reported(&self, hot_standby: bool) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = KNOWN
            .iter()
            .filter(|k| k.reported)
            .map(|k| (k.name.to_string(), self.show(k.name).unwrap_or_default()))
            .collect();
        out.insert("in_hot_standby".into(), on_off(hot_standby));
        out.insert("session_authorization".into(), self.user.clone());
        if hot_standby {
            out.insert("default_transaction_read_only".into(), "on".into());
        }
        out
    }
}

/// `-c name=value -c other=value` (also `--name=value`), as libpq sends
/// PGOPTIONS. Backslash escapes a space.
pub fn parse_options(options: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut iter = words.into_iter();
    while let Some(w) = iter.next() {
        let pair = if w == "-c" {
            iter.next()
        } else {
            w.strip_prefix("--")
                .or_else(|| w.strip_prefix("-c"))
                .map(str::to_string)
        };
        if let Some((k, v)) = pair.as_deref().and_then(|p| p.split_once('=')) {
            out.push((k.replace('-', "_"), v.to_string()));
        }
    }
    out
}

fn parse_bool(name: &str, v: &str) -> Result<bool> {
    match v.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" | "t" => Ok(true),
        "off" | "false" | "no" | "0" | "f" => Ok(false),
        _ => Err(Error::sql(
            "22023",
            format!("parameter \"{name}\" requires a Boolean value"),
        )),
    }
}

/// PostgreSQL time units: a bare number is milliseconds; 0 means no limit.
fn parse_duration(name: &str, v: &str) -> Result<Option<Duration>> {
    let v = v.trim();
    let split = v
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let bad = || {
        Error::sql(
            "22023",
            format!("invalid value for parameter \"{name}\": \"{v}\""),
        )
        .with_hint("valid units are \"ms\", \"s\", \"min\", \"h\" and \"d\"")
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let ms = match unit.trim() {
        "" | "ms" => n,
        "s" => n * 1e3,
        "min" => n * 60e3,
        "h" => n * 3600e3,
        "d" => n * 86400e3,
        _ => return Err(bad()),
    };
    Ok((ms > 0.0).then(|| Duration::from_micros((ms * 1e3) as u64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_options_become_settings() {
        let params = HashMap::from([
            ("user".to_string(), "availdb".to_string()),
            ("application_name".to_string(), "psql".to_string()),
            (
                "options".to_string(),
                "-c application_intent=read_only --statement-timeout=5s".to_string(),
            ),
        ]);
        let s = Settings::from_startup(&params).unwrap();
        assert_eq!(s.show("application_name").as_deref(), Some("psql"));
        assert_eq!(s.show("application_intent").as_deref(), Some("read_only"));
        assert_eq!(s.statement_timeout, Some(Duration::from_secs(5)));
    }

    #[test]
    fn reported_settings_produce_parameter_status_on_set() {
        let mut s = Settings::default();
        assert_eq!(
            s.set("application_name", Some("x")).unwrap(),
            Some(("application_name".into(), "x".into()))
        );
        assert_eq!(s.set("extra_float_digits", Some("3")).unwrap(), None);
        assert_eq!(
            s.set("datestyle", Some("ISO")).unwrap(),
            Some(("DateStyle".into(), "ISO".into()))
        );
        assert_eq!(s.reset(None).len(), 2);
    }

    #[test]
    fn bad_values_are_refused_with_22023_and_fixed_ones_with_55p02() {
        let mut s = Settings::default();
        for spelling in ["UTF8", "utf8", "'utf-8'", "unicode", "UTF-8"] {
            s.set("client_encoding", Some(spelling)).unwrap();
        }
        assert_eq!(
            s.set("client_encoding", Some("LATIN1"))
                .unwrap_err()
                .sqlstate(),
            "22023"
        );
        assert_eq!(
            s.set("statement_timeout", Some("5 parsecs"))
                .unwrap_err()
                .sqlstate(),
            "22023"
        );
        assert_eq!(
            s.set("server_version", Some("9")).unwrap_err().sqlstate(),
            "55P02"
        );
        s.set("lock_timeout", Some("250")).unwrap();
        assert_eq!(s.lock_timeout, Some(Duration::from_millis(250)));
        s.set("lock_timeout", Some("0")).unwrap();
        assert_eq!(s.lock_timeout, None);
    }

    #[test]
    fn lag_notice_after_defaults_to_a_second_zero_turns_it_off_and_reset_restores_it() {
        let mut s = Settings::default();
        assert_eq!(s.lag_notice_after(), Some(Duration::from_secs(1)));
        assert_eq!(s.show(LAG_NOTICE_AFTER).as_deref(), Some("1s"));
        s.set(LAG_NOTICE_AFTER, Some("250ms")).unwrap();
        assert_eq!(s.lag_notice_after(), Some(Duration::from_millis(250)));
        s.set(LAG_NOTICE_AFTER, Some("0")).unwrap();
        assert_eq!(s.lag_notice_after(), None);
        s.reset(Some(LAG_NOTICE_AFTER));
        assert_eq!(s.lag_notice_after(), Some(Duration::from_secs(1)));
        assert!(s.set(LAG_NOTICE_AFTER, Some("soon")).is_err());
    }

    /// A commit writes its LSN into the value held: the next commit's
    /// replaces it, whatever its length.
    #[test]
    fn a_recorded_value_replaces_the_one_before() {
        use std::fmt::Write;
        let mut s = Settings::default();
        for lsn in [123_456_u64, 7, 80_000] {
            s.record_with(COMMIT_LSN, |held| write!(held, "{lsn}").unwrap());
            assert_eq!(s.show(COMMIT_LSN), Some(lsn.to_string()));
        }
        s.record("AvailDB.Commit_LSN", "9".into());
        assert_eq!(s.show(COMMIT_LSN).as_deref(), Some("9"));
    }

    #[test]
    fn read_after_lsn_takes_a_commit_lsn_and_zero_or_reset_clears_it() {
        let mut s = Settings::default();
        s.set(READ_AFTER_LSN, Some("4096")).unwrap();
        assert_eq!(s.read_after_lsn, Some(4096));
        assert_eq!(s.show(READ_AFTER_LSN).as_deref(), Some("4096"));
        s.set(READ_AFTER_LSN, Some("0")).unwrap();
        assert_eq!(s.read_after_lsn, None);
        s.set(READ_AFTER_LSN, Some("7")).unwrap();
        s.reset(Some(READ_AFTER_LSN));
        assert_eq!(s.read_after_lsn, None);
        let err = s.set(READ_AFTER_LSN, Some("0/16B3748")).unwrap_err();
        assert_eq!(err.sqlstate(), "22023");
        assert_eq!(
            s.set(COMMIT_LSN, Some("1")).unwrap_err().sqlstate(),
            "55P02"
        );
        s.record(COMMIT_LSN, "99".into());
        assert_eq!(s.show(COMMIT_LSN).as_deref(), Some("99"));
    }

    #[test]
    fn server_version_is_at_least_14_for_libpq() {
        let v = Settings::default().show("server_version").unwrap();
        let major: u32 = v.split('.').next().unwrap().parse().unwrap();
        assert!(major >= 14);
    }
}
