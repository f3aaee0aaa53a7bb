//! Scheduled backups: SQL Server's "a backup job on every replica that
//! runs only where `sys.fn_hadr_backup_is_preferred_replica` says so",
//! built in.
//!
//! Every node of a group is given the same schedules (`--backup-schedule`
//! or `[[backup_schedule]]` in the config file). At each tick of a
//! schedule a node asks the preferred-replica decision
//! ([`super::preferred`]) and takes the backup only if it is the one; so
//! exactly one replica backs the database up, and after a failover the
//! group's preference picks the next one with no change to the schedules.
//! A node outside any group always runs its schedules.
//!
//! A scheduled full backup taken on a secondary is COPY_ONLY (a secondary
//! can take no other); one on the primary starts a chain. Each backup goes
//! to its own file in the schedule's directory,
//! `<database>-<full|log>-<UTC time>-<replica>.bak`, through the same code
//! as the BACKUP statement (history, proof, log hold). A tick that finds
//! the database missing or the replica not synchronizing is skipped and
//! logged; the next tick tries again.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// One schedule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// The database.
    pub database: String,
    /// `full` or `log`.
    pub kind: ScheduleKind,
    /// How often, e.g. `15m`, `1h`, `30s`.
    #[serde(deserialize_with = "de_every")]
    pub every: Duration,
    /// The directory the files go to.
    pub to: PathBuf,
}

/// What a schedule takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// BACKUP DATABASE (COPY_ONLY on a secondary).
    Full,
    /// BACKUP LOG.
    Log,
}

fn de_every<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_every(&text).map_err(serde::de::Error::custom)
}

/// Parses an interval: `30s`, `15m`, `2h` or `1d` (at least 1 s).
pub fn parse_every(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("\"{text}\" is not an interval: write e.g. 30s, 15m, 1h or 1d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => {
            return Err(format!(
                "\"{text}\" has no known unit: write e.g. 30s, 15m, 1h or 1d"
            ))
        }
    };
    if secs == 0 {
        return Err(format!(
            "\"{text}\": a schedule needs an interval of at least 1s"
        ));
    }
    Ok(Duration::from_secs(secs))
}

impl std::str::FromStr for Schedule {
    type Err = String;

    /// `database=app,kind=log,every=15m,to=/backups/app`.
    fn from_str(text: &str) -> Result<Schedule, String> {
        let (mut database, mut kind, mut every, mut to) = (None, None, None, None);
        for part in text.split(',') {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                format!("\"{part}\" in \"{text}\" is not key=value: write database=app,kind=log,every=15m,to=/backups/app")
            })?;
            let value = value.trim();
            match key.trim() {
                "database" => database = Some(value.to_string()),
                "kind" => {
                    kind = Some(match value.to_ascii_lowercase().as_str() {
                        "full" => ScheduleKind::Full,
                        "log" => ScheduleKind::Log,
                        _ => return Err(format!("kind \"{value}\": write full or log")),
                    })
                }
                "every" => every = Some(parse_every(value)?),
                "to" => to = Some(PathBuf::from(value)),
                other => {
                    return Err(format!(
                        "unknown key \"{other}\" in \"{text}\": the keys are database, kind, every and to"
                    ))
                }
            }
        }
        let missing = |what: &str| {
            format!("\"{text}\" has no {what}= (database=app,kind=log,every=15m,to=/backups/app)")
        };
        Ok(Schedule {
            database: database.ok_or_else(|| missing("database"))?,
            kind: kind.ok_or_else(|| missing("kind"))?,
            every: every.ok_or_else(|| missing("every"))?,
            to: to.ok_or_else(|| missing("to"))?,
        })
    }
}

/// What a tick does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Take the backup to this file (COPY_ONLY when `copy_only`).
    Take {
        /// The file.
        path: PathBuf,
        /// COPY_ONLY (a full backup on a secondary).
        copy_only: bool,
    },
    /// Another replica is the preferred one.
    NotPreferred,
}

/// The decision at one tick: `preferred` is this replica's answer to
/// `sys.fn_hadr_backup_is_preferred_replica` (None outside a group),
/// `primary` whether it is the database's primary, `now_us` the wall
/// clock (µs since the Unix epoch) that names the file.
pub fn decide(
    schedule: &Schedule,
    replica: &str,
    preferred: Option<bool>,
    primary: bool,
    now_us: i64,
) -> Decision {
    if preferred == Some(false) {
        return Decision::NotPreferred;
    }
    let kind = match schedule.kind {
        ScheduleKind::Full => "full",
        ScheduleKind::Log => "log",
    };
    let at = chrono::DateTime::from_timestamp_micros(now_us)
        .unwrap_or_default()
        .format("%Y%m%dT%H%M%S%6fZ");
    Decision::Take {
        path: schedule
            .to
            .join(format!("{}-{kind}-{at}-{replica}.bak", schedule.database)),
        copy_only: schedule.kind == ScheduleKind::Full && !primary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse_from_key_value_lists_and_say_what_is_wrong() {
        let s: Schedule = "database=app,kind=log,every=15m,to=/b/app".parse().unwrap();
        assert_eq!(
            s,
            Schedule {
                database: "app".into(),
                kind: ScheduleKind::Log,
                every: Duration::from_secs(900),
                to: "/b/app".into(),
            }
        );
        for (bad, says) in [
            ("database=app,kind=log,every=15m", "no to="),
            ("database=app,kind=diff,every=1h,to=/b", "write full or log"),
            ("database=app,kind=log,every=15,to=/b", "no known unit"),
            ("database=app,kind=log,every=0s,to=/b", "at least 1s"),
            ("database=app,kind=log,every=1h,to=/b,at=3", "unknown key"),
            ("app", "not key=value"),
        ] {
            let e = bad.parse::<Schedule>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn only_the_preferred_replica_backs_up_and_a_secondary_full_backup_is_copy_only() {
        let full: Schedule = "database=app,kind=full,every=1h,to=/b".parse().unwrap();
        let log: Schedule = "database=app,kind=log,every=1h,to=/b".parse().unwrap();
        let t = 1_764_846_000_123_456;
        assert_eq!(
            decide(&full, "r2", Some(false), false, t),
            Decision::NotPreferred
        );
        assert_eq!(
            decide(&full, "r2", Some(true), false, t),
            Decision::Take {
                path: "/b/app-full-20251204T110000123456Z-r2.bak".into(),
                copy_only: true
            }
        );
        assert!(matches!(
            decide(&full, "r1", Some(true), true, t),
            Decision::Take {
                copy_only: false,
                ..
            }
        ));
        assert!(matches!(
            decide(&log, "r2", Some(true), false, t),
            Decision::Take {
                copy_only: false,
                ..
            }
        ));
        assert!(
            matches!(decide(&log, "solo", None, true, t), Decision::Take { .. }),
            "outside a group the schedule always runs"
        );
    }
}
