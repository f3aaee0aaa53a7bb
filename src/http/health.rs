//! What the health endpoints answer: a node's view of its groups, read from
//! the same `sys` views SQL clients see, and the checks over it — pure
//! functions, so each answer is tested without a server.
//!
//! # Meanings (Patroni's, per availability group)
//! | endpoint | 200 when |
//! | --- | --- |
//! | `/health` | the node runs and has not stopped itself (fail-stop) |
//! | `/liveness` | the node answers at all |
//! | `/readiness` | `/health`, and every database is writable here (primary) or moving (secondary: connected, not suspended) |
//! | `/primary`, `/read-write` | the node is the primary and its lease is valid (not RESOLVING) |
//! | `/replica` | the node is a secondary, connected, no database suspended; with `?lag=` every database within it |
//! | `/read-only` | `/primary` or `/replica` (lag included) |
//! | `/sync`, `/async` | `/replica`, and this replica commits synchronously (asynchronously) |
//! | `/failover-readiness?max_loss=` | a failover now would lose at most `max_loss` of commits (below) |
//!
//! Every other answer is 503 with the reason in the body. `?group=g`
//! narrows the answer to one group; without it every group the node hosts
//! must pass (a node that hosts none passes only `/health`, `/liveness`
//! and `/readiness`).
//!
//! # Lag
//! `lag` is bytes (`1048576`, `16kB`, `64MB`, `1GB`) or a duration
//! (`250ms`, `5s`, `2min`). A secondary measures what it knows: the log it
//! has received and not yet redone (bytes), and how long ago the newest
//! commit it redid was committed while such log waits (time; 0 when
//! nothing waits). A secondary that is disconnected or suspended has an
//! unknown lag and fails every lag check. Records the primary has not yet
//! sent are not counted — with synchronous commit there are none beyond
//! commits in flight.
//!
//! # Failover readiness
//! Per database, the smallest estimated loss over the secondaries: 0 for
//! one the cluster lists as synchronized (failover-ready), otherwise the
//! time between the primary's last commit and the newest commit that
//! secondary redid (SQL Server's "estimated data loss"), unknown when
//! either is. Only the primary knows the secondaries' positions: on a
//! secondary the answer is 200 only when every database of the group has a
//! failover-ready replica (which loses nothing).

use std::time::Duration;

use rusqlite::types::Value;
use serde::Serialize;

use crate::ag::views::Snapshot;

/// The role of this node in one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    /// Takes writes.
    Primary,
    /// Was primary, its lease ran out: takes no writes.
    Resolving,
    /// Receives the log.
    Secondary,
}

/// One database of a group, as this node sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatabaseHealth {
    /// The database.
    pub name: String,
    /// `synchronization_state_desc` of this replica.
    pub state: String,
    /// Data movement is suspended here.
    pub suspended: bool,
    /// Log received and not redone here, bytes.
    pub redo_queue_bytes: u64,
    /// How far behind this replica's redo is, seconds; `None` when unknown.
    pub lag_seconds: Option<f64>,
    /// Some replica of the database is failover-ready (cluster's
    /// synchronized set), as far as this node can see.
    pub has_failover_ready_replica: bool,
    /// Smallest estimated loss over the secondaries, seconds (primary
    /// only; `None` when unknown or not the primary).
    pub estimated_data_loss_seconds: Option<f64>,
}

/// One group, as this node sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupHealth {
    /// The group.
    pub name: String,
    /// This node's role.
    pub role: Role,
    /// This replica's AVAILABILITY_MODE is SYNCHRONOUS_COMMIT.
    pub synchronous: bool,
    /// Connected to the primary (a secondary) or serving (a primary).
    pub connected: bool,
    /// The group's databases.
    pub databases: Vec<DatabaseHealth>,
}

/// The node's view of everything the checks need.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeHealth {
    /// Why the node stopped itself, if it did.
    pub failed: Vec<String>,
    /// The groups it hosts.
    pub groups: Vec<GroupHealth>,
}

/// A replica's allowed lag.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lag {
    /// Log not yet redone.
    Bytes(u64),
    /// Time behind.
    Time(Duration),
}

/// What a health endpoint asks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Check {
    /// `/health`.
    Health,
    /// `/liveness`.
    Liveness,
    /// `/readiness`.
    Readiness,
    /// `/primary`, `/read-write`.
    Primary,
    /// `/replica`.
    Replica(Option<Lag>),
    /// `/read-only`.
    ReadOnly(Option<Lag>),
    /// `/sync` (true) or `/async` (false).
    Commit {
        /// Synchronous commit wanted.
        synchronous: bool,
        /// Allowed lag.
        lag: Option<Lag>,
    },
    /// `/failover-readiness`.
    FailoverReadiness(Duration),
}

/// Parses a `lag=` value: bytes with an optional unit (`B`, `kB`, `MB`,
/// `GB`, powers of 1024 as PostgreSQL's memory units) or a duration (`ms`,
/// `s`, `min`, `h`).
pub fn parse_lag(value: &str) -> Result<Lag, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad_lag(value))?;
    if !number.is_finite() || number < 0.0 {
        return Err(bad_lag(value));
    }
    let bytes = |scale: f64| Ok(Lag::Bytes((number * scale) as u64));
    let time = |secs: f64| Ok(Lag::Time(Duration::from_secs_f64(number * secs)));
    match unit.trim() {
        "" | "B" => bytes(1.0),
        "kB" | "KB" => bytes(1024.0),
        "MB" => bytes(1024.0 * 1024.0),
        "GB" => bytes(1024.0 * 1024.0 * 1024.0),
        "ms" => time(0.001),
        "s" => time(1.0),
        "min" => time(60.0),
        "h" => time(3600.0),
        _ => Err(bad_lag(value)),
    }
}

/// Parses a duration (`max_loss=`): `ms`, `s`, `min`, `h`.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    match parse_lag(value) {
        Ok(Lag::Time(d)) => Ok(d),
        _ => Err(format!(
            "\"{value}\" is not a duration: write it as 500ms, 5s, 2min or 1h"
        )),
    }
}

fn bad_lag(value: &str) -> String {
    format!("\"{value}\" is not a lag: write bytes (1048576, 16kB, 64MB, 1GB) or a duration (250ms, 5s, 2min)")
}

/// Answers `check` for `group` (every group when `None`): `Ok(())` is 200,
/// `Err(reason)` is 503.
pub fn answer(check: Check, node: &NodeHealth, group: Option<&str>) -> Result<(), String> {
    match check {
        Check::Liveness => return Ok(()),
        Check::Health => return healthy(node),
        _ => {}
    }
    healthy(node)?;
    let groups: Vec<&GroupHealth> = match group {
        Some(name) => {
            let found: Vec<_> = node
                .groups
                .iter()
                .filter(|g| g.name.eq_ignore_ascii_case(name))
                .collect();
            if found.is_empty() {
                return Err(format!("this node hosts no replica of group {name}"));
            }
            found
        }
        None => node.groups.iter().collect(),
    };
    if groups.is_empty() {
        return match check {
            Check::Readiness => Ok(()),
            _ => Err("this node hosts no availability group".to_string()),
        };
    }
    for g in groups {
        check_group(check, g).map_err(|e| format!("group {}: {e}", g.name))?;
    }
    Ok(())
}

fn healthy(node: &NodeHealth) -> Result<(), String> {
    match node.failed.first() {
        Some(reason) => Err(format!("the node stopped itself: {reason}")),
        None => Ok(()),
    }
}

fn check_group(check: Check, g: &GroupHealth) -> Result<(), String> {
    match check {
        Check::Health | Check::Liveness => Ok(()),
        Check::Readiness => match g.role {
            Role::Primary => Ok(()),
            Role::Resolving => Err("the primary's lease ran out (RESOLVING)".to_string()),
            Role::Secondary => replica(g, None),
        },
        Check::Primary => primary(g),
        Check::Replica(lag) => replica(g, lag),
        Check::ReadOnly(lag) => primary(g).or_else(|_| replica(g, lag)),
        Check::Commit { synchronous, lag } => {
            replica(g, lag)?;
            match (synchronous, g.synchronous) {
                (true, false) => Err("this replica commits asynchronously".to_string()),
                (false, true) => Err("this replica commits synchronously".to_string()),
                _ => Ok(()),
            }
        }
        Check::FailoverReadiness(max_loss) => failover_ready(g, max_loss),
    }
}

fn primary(g: &GroupHealth) -> Result<(), String> {
    match g.role {
        Role::Primary => Ok(()),
        Role::Resolving => Err("the primary's lease ran out (RESOLVING)".to_string()),
        Role::Secondary => Err("this node is a secondary".to_string()),
    }
}

fn replica(g: &GroupHealth, lag: Option<Lag>) -> Result<(), String> {
    if g.role != Role::Secondary {
        return Err("this node is the primary, not a replica".to_string());
    }
    if !g.connected {
        return Err("this replica is not connected to the primary".to_string());
    }
    for db in &g.databases {
        if db.suspended {
            return Err(format!("data movement of {} is suspended", db.name));
        }
        match lag {
            None => {}
            Some(Lag::Bytes(max)) if db.redo_queue_bytes > max => {
                return Err(format!(
                    "{} has {} bytes of log not yet redone (allowed: {max})",
                    db.name, db.redo_queue_bytes
                ))
            }
            Some(Lag::Time(max)) => match db.lag_seconds {
                Some(s) if s <= max.as_secs_f64() => {}
                Some(s) => {
                    return Err(format!(
                        "{} is {s:.3} s behind (allowed: {:.3} s)",
                        db.name,
                        max.as_secs_f64()
                    ))
                }
                None => return Err(format!("the lag of {} is unknown", db.name)),
            },
            Some(Lag::Bytes(_)) => {}
        }
    }
    Ok(())
}

fn failover_ready(g: &GroupHealth, max_loss: Duration) -> Result<(), String> {
    for db in &g.databases {
        if db.has_failover_ready_replica {
            continue;
        }
        match (g.role, db.estimated_data_loss_seconds) {
            (Role::Primary, Some(loss)) if loss <= max_loss.as_secs_f64() => {}
            (Role::Primary, Some(loss)) => {
                return Err(format!(
                    "a failover now would lose about {loss:.3} s of commits of {} (allowed: {:.3} s): no secondary is synchronized",
                    db.name,
                    max_loss.as_secs_f64()
                ))
            }
            (Role::Primary, None) => {
                return Err(format!(
                    "no secondary of {} is synchronized and the loss of a failover is unknown",
                    db.name
                ))
            }
            _ => {
                return Err(format!(
                    "no replica of {} is failover-ready; ask the primary for the estimated loss",
                    db.name
                ))
            }
        }
    }
    Ok(())
}

/// Reads the node's view from a snapshot of the `sys` views (the same
/// values SQL clients see), with the reasons the node stopped itself.
pub fn read(snapshot: &Snapshot, failed: Vec<String>) -> Result<NodeHealth, String> {
    let q = |sql: &str| {
        snapshot
            .query(sql, &[])
            .map(|o| o.rows)
            .map_err(|e| format!("cannot read the node's state: {e}"))
    };
    let groups = q("SELECT rs.group_id, rs.role_desc, rs.connected_state_desc,
                COALESCE(ar.availability_mode_desc, '')
         FROM sys.dm_hadr_availability_replica_states rs
         LEFT JOIN sys.availability_replicas ar
           ON ar.group_id = rs.group_id AND ar.replica_server_name = rs.replica
         WHERE rs.is_local ORDER BY rs.group_id")?;
    let databases = q("SELECT l.group_id, l.database_name, l.synchronization_state_desc,
                l.is_suspended, COALESCE(l.redo_queue_size, 0),
                CASE WHEN l.is_primary_replica THEN 0.0
                     WHEN COALESCE(l.redo_queue_size, 0) = 0 THEN 0.0
                     WHEN l.last_commit_time IS NULL THEN NULL
                     ELSE max(0.0, (julianday('now') - julianday(l.last_commit_time)) * 86400.0)
                END,
                l.is_failover_ready OR EXISTS (
                    SELECT 1 FROM sys.dm_hadr_database_replica_states s
                    WHERE s.group_id = l.group_id AND s.database_name = l.database_name
                      AND NOT s.is_local AND s.is_failover_ready),
                CASE WHEN l.is_primary_replica THEN (
                    SELECT min(CASE WHEN s.is_failover_ready THEN 0.0
                                    WHEN s.last_commit_time IS NULL OR l.last_commit_time IS NULL THEN NULL
                                    ELSE max(0.0, (julianday(l.last_commit_time) - julianday(s.last_commit_time)) * 86400.0)
                               END)
                    FROM sys.dm_hadr_database_replica_states s
                    WHERE s.group_id = l.group_id AND s.database_name = l.database_name
                      AND NOT s.is_local)
                END
         FROM sys.dm_hadr_database_replica_states l
         WHERE l.is_local ORDER BY l.group_id, l.database_name")?;
    let mut out = NodeHealth {
        failed,
        groups: Vec::new(),
    };
    for row in groups {
        let name = text(&row[0]);
        let role = match text(&row[1]).as_str() {
            "PRIMARY" => Role::Primary,
            "RESOLVING" => Role::Resolving,
            _ => Role::Secondary,
        };
        out.groups.push(GroupHealth {
            databases: databases
                .iter()
                .filter(|d| text(&d[0]) == name)
                .map(|d| DatabaseHealth {
                    name: text(&d[1]),
                    state: text(&d[2]),
                    suspended: int(&d[3]) != 0,
                    redo_queue_bytes: int(&d[4]).max(0) as u64,
                    lag_seconds: real(&d[5]),
                    has_failover_ready_replica: int(&d[6]) != 0,
                    estimated_data_loss_seconds: real(&d[7]),
                })
                .collect(),
            name,
            role,
            synchronous: text(&row[3]) == "SYNCHRONOUS_COMMIT",
            connected: text(&row[2]) == "CONNECTED",
        });
    }
    Ok(out)
}

fn text(v: &Value) -> String {
    match v {
        Value::Text(s) => s.clone(),
        Value::Integer(n) => n.to_string(),
        _ => String::new(),
    }
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Integer(n) => *n,
        Value::Real(r) => *r as i64,
        _ => 0,
    }
}

fn real(v: &Value) -> Option<f64> {
    match v {
        Value::Real(r) => Some(*r),
        Value::Integer(n) => Some(*n as f64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(name: &str) -> DatabaseHealth {
        DatabaseHealth {
            name: name.to_string(),
            state: "SYNCHRONIZED".to_string(),
            suspended: false,
            redo_queue_bytes: 0,
            lag_seconds: Some(0.0),
            has_failover_ready_replica: true,
            estimated_data_loss_seconds: Some(0.0),
        }
    }

    fn group(role: Role, synchronous: bool) -> GroupHealth {
        GroupHealth {
            name: "ag1".to_string(),
            role,
            synchronous,
            connected: true,
            databases: vec![db("app")],
        }
    }

    fn node(groups: Vec<GroupHealth>) -> NodeHealth {
        NodeHealth {
            failed: Vec::new(),
            groups,
        }
    }

    #[test]
    fn each_role_passes_exactly_its_endpoints() {
        let lag = Some(Lag::Bytes(0));
        let cases = [
            (Role::Primary, true, [true, true, false, true, false, false]),
            (
                Role::Secondary,
                true,
                [true, false, true, true, true, false],
            ),
            (
                Role::Secondary,
                false,
                [true, false, true, true, false, true],
            ),
            (
                Role::Resolving,
                true,
                [false, false, false, false, false, false],
            ),
        ];
        for (role, sync, want) in cases {
            let n = node(vec![group(role, sync)]);
            let got = [
                Check::Readiness,
                Check::Primary,
                Check::Replica(lag),
                Check::ReadOnly(None),
                Check::Commit {
                    synchronous: true,
                    lag: None,
                },
                Check::Commit {
                    synchronous: false,
                    lag: None,
                },
            ]
            .map(|c| answer(c, &n, None).is_ok());
            assert_eq!(got, want, "{role:?} sync={sync}");
            assert!(answer(Check::Health, &n, None).is_ok());
        }
    }

    #[test]
    fn a_replica_beyond_its_lag_or_suspended_or_disconnected_is_not_a_replica() {
        let mut g = group(Role::Secondary, true);
        g.databases[0].redo_queue_bytes = 2 << 20;
        g.databases[0].lag_seconds = Some(3.0);
        let n = node(vec![g.clone()]);
        assert!(answer(Check::Replica(Some(Lag::Bytes(1 << 20))), &n, None).is_err());
        assert!(answer(Check::Replica(Some(Lag::Bytes(4 << 20))), &n, None).is_ok());
        assert!(answer(
            Check::Replica(Some(Lag::Time(Duration::from_secs(1)))),
            &n,
            None
        )
        .is_err());
        assert!(answer(
            Check::Replica(Some(Lag::Time(Duration::from_secs(5)))),
            &n,
            None
        )
        .is_ok());
        let mut suspended = g.clone();
        suspended.databases[0].suspended = true;
        assert!(answer(Check::Replica(None), &node(vec![suspended]), None).is_err());
        let mut cut = g.clone();
        cut.connected = false;
        assert!(answer(Check::ReadOnly(None), &node(vec![cut]), None).is_err());
        let mut unknown = g;
        unknown.databases[0].lag_seconds = None;
        let n = node(vec![unknown]);
        assert!(answer(
            Check::Replica(Some(Lag::Time(Duration::from_secs(60)))),
            &n,
            None
        )
        .is_err());
    }

    #[test]
    fn failover_readiness_needs_a_synchronized_replica_or_a_small_enough_estimated_loss() {
        let max = Duration::from_secs(5);
        let mut g = group(Role::Primary, true);
        assert!(answer(Check::FailoverReadiness(max), &node(vec![g.clone()]), None).is_ok());
        g.databases[0].has_failover_ready_replica = false;
        g.databases[0].estimated_data_loss_seconds = Some(2.0);
        assert!(answer(Check::FailoverReadiness(max), &node(vec![g.clone()]), None).is_ok());
        g.databases[0].estimated_data_loss_seconds = Some(9.0);
        assert!(answer(Check::FailoverReadiness(max), &node(vec![g.clone()]), None).is_err());
        g.databases[0].estimated_data_loss_seconds = None;
        assert!(answer(Check::FailoverReadiness(max), &node(vec![g]), None).is_err());
        let mut s = group(Role::Secondary, true);
        s.databases[0].has_failover_ready_replica = false;
        s.databases[0].estimated_data_loss_seconds = None;
        assert!(answer(Check::FailoverReadiness(max), &node(vec![s]), None).is_err());
    }

    #[test]
    fn the_group_parameter_narrows_and_unknown_groups_fail() {
        let mut other = group(Role::Secondary, true);
        other.name = "ag2".to_string();
        let n = node(vec![group(Role::Primary, true), other]);
        assert!(
            answer(Check::Primary, &n, None).is_err(),
            "not primary of both"
        );
        assert!(answer(Check::Primary, &n, Some("AG1")).is_ok());
        assert!(answer(Check::Replica(None), &n, Some("ag2")).is_ok());
        assert!(answer(Check::Primary, &n, Some("nope")).is_err());
        let empty = node(Vec::new());
        assert!(answer(Check::Readiness, &empty, None).is_ok());
        assert!(answer(Check::Primary, &empty, None).is_err());
    }

    #[test]
    fn a_node_that_stopped_itself_fails_everything_but_liveness() {
        let mut n = node(vec![group(Role::Primary, true)]);
        n.failed.push("the log disk failed".to_string());
        assert!(answer(Check::Liveness, &n, None).is_ok());
        assert!(answer(Check::Health, &n, None).is_err());
        assert!(answer(Check::Primary, &n, None).is_err());
    }

    #[test]
    fn lags_parse_as_bytes_or_durations_and_bad_ones_say_how_to_write_them() {
        assert_eq!(parse_lag("1048576"), Ok(Lag::Bytes(1 << 20)));
        assert_eq!(parse_lag("16kB"), Ok(Lag::Bytes(16 << 10)));
        assert_eq!(parse_lag("64MB"), Ok(Lag::Bytes(64 << 20)));
        assert_eq!(
            parse_lag("250ms"),
            Ok(Lag::Time(Duration::from_millis(250)))
        );
        assert_eq!(parse_lag("2min"), Ok(Lag::Time(Duration::from_secs(120))));
        assert!(parse_lag("fast").unwrap_err().contains("16kB"));
        assert!(parse_lag("5 parsecs").is_err());
        assert!(parse_duration("1MB").unwrap_err().contains("5s"));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
    }
}
