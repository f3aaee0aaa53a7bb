//! `/metrics`: the node's state in Prometheus' text format with the
//! `prometheus-client` crate, in three parts:
//!
//! * gauges of the moment, built at each scrape from a snapshot of the
//!   `sys` views (the values SQL clients see): the table below;
//! * counters and histograms of what happened since the process started,
//!   registered once per process and counted by the layers themselves
//!   ([`crate::telemetry`]: commits, commit latency, sync-commit waits,
//!   lease renewals, elections, failovers, listener sessions and routing,
//!   page repairs, backups);
//! * the process's own, read from `/proc/self` at the scrape
//!   (Prometheus' standard names: `process_cpu_seconds_total`,
//!   `process_open_fds`, `process_max_fds`, `process_threads`,
//!   `process_start_time_seconds`).
//!
//! The gauges:
//!
//! | metric | labels | value |
//! | --- | --- | --- |
//! | `availdb_up` | `node` | 1 |
//! | `availdb_node_failed` | `node` | 1 once the node stopped itself (fail-stop) |
//! | `availdb_group_role` | `group`, `role` | 1 for this node's role (`PRIMARY`, `RESOLVING`, `SECONDARY`) |
//! | `availdb_database_synchronization_state` | `group`, `database`, `replica`, `state` | 1 for each replica's state |
//! | `availdb_database_failover_ready` | `group`, `database`, `replica` | 1 when the cluster would let it take over |
//! | `availdb_log_send_queue_bytes`, `availdb_redo_queue_bytes` | `group`, `database`, `replica` | queues |
//! | `availdb_log_send_rate_bytes`, `availdb_redo_rate_bytes` | `group`, `database`, `replica` | bytes per second |
//! | `availdb_secondary_lag_seconds` | `group`, `database`, `replica` | as `sys.dm_hadr_database_replica_states` |
//! | `availdb_estimated_data_loss_seconds` | `group`, `database` | on the primary: the smallest over its secondaries (0 with a synchronized one) |
//! | `availdb_estimated_recovery_time_seconds` | `group`, `database`, `replica` | SQL Server's dashboard's estimate: redo queue / redo rate (0 with an empty queue; absent while the queue waits and nothing is redone) |
//! | `availdb_log_end_lsn`, `availdb_log_durable_lsn`, `availdb_checkpoint_lsn` | `database` | byte positions |
//! | `availdb_cluster_term`, `availdb_cluster_is_leader` | — | this node's view of the cluster |
//! | `availdb_process_resident_memory_bytes`, `availdb_buffer_memory_bytes` | — | `sys.dm_os_process_memory` |
//! | `availdb_backup_restorable_timestamp_seconds`, `availdb_backup_restorable_lsn`, `availdb_backup_proofs_failed` | `database` | `sys.backup_history` (the background proofs, `backup::proof`) |
//!
//! A replica row appears where this node knows it: a primary reports every
//! replica of its groups, a secondary itself.

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rusqlite::types::Value;
use std::sync::atomic::AtomicU64;

use super::health::NodeHealth;
use crate::ag::views::Snapshot;

type Labels = Vec<(String, String)>;
type Gauges = Family<Labels, Gauge<f64, AtomicU64>>;

/// Renders the metrics of `node` (named `name`) from `snapshot` and its
/// health view.
pub fn render(name: &str, snapshot: &Snapshot, health: &NodeHealth) -> Result<String, String> {
    let q = |sql: &str| {
        snapshot
            .query(sql, &[])
            .map(|o| o.rows)
            .map_err(|e| format!("cannot read the node's state: {e}"))
    };
    let mut registry = Registry::default();
    let mut family = |name: &str, help: &str| {
        let f = Gauges::default();
        registry.register(name, help, f.clone());
        f
    };
    let up = family("availdb_up", "The node answers");
    let failed = family("availdb_node_failed", "The node stopped itself (fail-stop)");
    let role = family("availdb_group_role", "This node's role in the group");
    let state = family(
        "availdb_database_synchronization_state",
        "A database replica's synchronization state",
    );
    let ready = family(
        "availdb_database_failover_ready",
        "The cluster would let this database replica take over",
    );
    let send_queue = family(
        "availdb_log_send_queue_bytes",
        "Log not yet hardened by the replica",
    );
    let redo_queue = family(
        "availdb_redo_queue_bytes",
        "Log hardened but not yet redone by the replica",
    );
    let send_rate = family(
        "availdb_log_send_rate_bytes",
        "Log shipped per second to the replica",
    );
    let redo_rate = family(
        "availdb_redo_rate_bytes",
        "Log redone per second by the replica",
    );
    let lag = family(
        "availdb_secondary_lag_seconds",
        "How far behind the replica is",
    );
    let loss = family(
        "availdb_estimated_data_loss_seconds",
        "Commits a failover now would lose, in seconds (primary only)",
    );
    let recovery = family(
        "availdb_estimated_recovery_time_seconds",
        "Redo queue over redo rate: how long the replica would take to catch up its redo",
    );
    let end = family("availdb_log_end_lsn", "End of the database's log");
    let durable = family(
        "availdb_log_durable_lsn",
        "End of the durable part of the log",
    );
    let checkpoint = family(
        "availdb_checkpoint_lsn",
        "Log position the file holds for sure",
    );
    let term = family(
        "availdb_cluster_term",
        "The cluster's term as this node sees it",
    );
    let leader = family("availdb_cluster_is_leader", "This node leads the cluster");
    let rss = family(
        "availdb_process_resident_memory_bytes",
        "Resident memory of the process",
    );
    let buffers = family(
        "availdb_buffer_memory_bytes",
        "Memory held by sessions' buffers",
    );
    let restorable_time = family(
        "availdb_backup_restorable_timestamp_seconds",
        "Newest point a backup chain taken here was restored to and verified (its last commit, Unix time)",
    );
    let restorable_lsn = family(
        "availdb_backup_restorable_lsn",
        "LSN of that newest verified restorable point",
    );
    let proofs_failed = family(
        "availdb_backup_proofs_failed",
        "Backups taken here whose background restore failed",
    );

    let node = vec![("node".to_string(), name.to_string())];
    up.get_or_create(&node).set(1.0);
    failed
        .get_or_create(&node)
        .set(if health.failed.is_empty() { 0.0 } else { 1.0 });
    for g in &health.groups {
        let labels = vec![
            ("group".to_string(), g.name.clone()),
            ("role".to_string(), role_name(g.role).to_string()),
        ];
        role.get_or_create(&labels).set(1.0);
        for db in &g.databases {
            if let Some(l) = db.estimated_data_loss_seconds {
                loss.get_or_create(&vec![
                    ("group".to_string(), g.name.clone()),
                    ("database".to_string(), db.name.clone()),
                ])
                .set(l);
            }
        }
    }
    for row in q(
        "SELECT group_id, database_name, replica, synchronization_state_desc,
                         is_failover_ready, log_send_queue_size, redo_queue_size,
                         log_send_rate, redo_rate, secondary_lag_seconds
                  FROM sys.dm_hadr_database_replica_states",
    )? {
        let labels = vec![
            ("group".to_string(), text(&row[0])),
            ("database".to_string(), text(&row[1])),
            ("replica".to_string(), text(&row[2])),
        ];
        let mut with_state = labels.clone();
        with_state.push(("state".to_string(), text(&row[3])));
        state.get_or_create(&with_state).set(1.0);
        ready
            .get_or_create(&labels)
            .set(number(&row[4]).unwrap_or(0.0));
        for (family, value) in [
            (&send_queue, &row[5]),
            (&redo_queue, &row[6]),
            (&send_rate, &row[7]),
            (&redo_rate, &row[8]),
            (&lag, &row[9]),
        ] {
            if let Some(v) = number(value) {
                family.get_or_create(&labels).set(v);
            }
        }
        if let Some(rto) = recovery_time(number(&row[6]), number(&row[8])) {
            recovery.get_or_create(&labels).set(rto);
        }
    }
    for row in q("SELECT database_name,
                max(CASE WHEN verification_state = 'VERIFIED'
                         THEN unixepoch(restorable_time, 'subsec') END),
                max(CASE WHEN verification_state = 'VERIFIED' THEN restorable_lsn END),
                sum(verification_state = 'FAILED')
         FROM sys.backup_history GROUP BY database_name")?
    {
        let labels = vec![("database".to_string(), text(&row[0]))];
        for (family, value) in [
            (&restorable_time, &row[1]),
            (&restorable_lsn, &row[2]),
            (&proofs_failed, &row[3]),
        ] {
            if let Some(v) = number(value) {
                family.get_or_create(&labels).set(v);
            }
        }
    }
    for row in q("SELECT name, log_end_lsn, log_durable_lsn, checkpoint_lsn FROM sys.databases")? {
        let labels = vec![("database".to_string(), text(&row[0]))];
        for (family, value) in [(&end, &row[1]), (&durable, &row[2]), (&checkpoint, &row[3])] {
            if let Some(v) = number(value) {
                family.get_or_create(&labels).set(v);
            }
        }
    }
    for row in q("SELECT term, leader = local_member_name FROM sys.dm_hadr_cluster")? {
        if let Some(t) = number(&row[0]) {
            term.get_or_create(&Vec::new()).set(t);
        }
        leader
            .get_or_create(&Vec::new())
            .set(number(&row[1]).unwrap_or(0.0));
    }
    for row in q(
        "SELECT physical_memory_in_use_bytes, buffer_memory_in_use_bytes
                  FROM sys.dm_os_process_memory",
    )? {
        if let Some(v) = number(&row[0]) {
            rss.get_or_create(&Vec::new()).set(v);
        }
        if let Some(v) = number(&row[1]) {
            buffers.get_or_create(&Vec::new()).set(v);
        }
    }
    if let Some(p) = process() {
        registry.register(
            "process_cpu_seconds",
            "User and system CPU time of the process",
            ConstCounter::new(p.cpu_seconds),
        );
        let mut one = |name: &str, help: &str, v: f64| {
            let g = Gauge::<f64, AtomicU64>::default();
            g.set(v);
            registry.register(name, help, g);
        };
        one("process_open_fds", "Open file descriptors", p.open_fds);
        one(
            "process_max_fds",
            "Limit of open file descriptors",
            p.max_fds,
        );
        one("process_threads", "Threads of the process", p.threads);
        one(
            "process_start_time_seconds",
            "When the process started, seconds since the Unix epoch",
            p.start_time_seconds,
        );
    }
    let mut out = String::new();
    encode_registry(&mut out, &registry)
        .and_then(|()| encode_registry(&mut out, crate::telemetry::registry()))
        .and_then(|()| encode_eof(&mut out))
        .map_err(|e| format!("cannot encode the metrics: {e}"))?;
    Ok(out)
}

/// SQL Server's estimated recovery time: the redo queue over the redo
/// rate; 0 with nothing to redo, unknown while log waits and no rate is
/// measured.
pub fn recovery_time(redo_queue: Option<f64>, redo_rate: Option<f64>) -> Option<f64> {
    match (redo_queue?, redo_rate) {
        (q, _) if q <= 0.0 => Some(0.0),
        (q, Some(r)) if r > 0.0 => Some(q / r),
        _ => None,
    }
}

/// The process as `/proc/self` tells it.
struct Process {
    cpu_seconds: f64,
    open_fds: f64,
    max_fds: f64,
    threads: f64,
    start_time_seconds: f64,
}

fn process() -> Option<Process> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields = stat_fields(&stat)?;
    // SAFETY: sysconf and getrlimit only read process-wide values.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for the call to fill.
    let max_fds = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur as f64
    } else {
        f64::NAN
    };
    let boot_time = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
    Some(Process {
        cpu_seconds: (fields.utime + fields.stime) as f64 / ticks,
        open_fds,
        max_fds,
        threads: fields.threads as f64,
        start_time_seconds: boot_time + fields.start_ticks as f64 / ticks,
    })
}

/// The fields of `/proc/self/stat` the metrics use.
#[derive(Debug, PartialEq)]
struct StatFields {
    utime: u64,
    stime: u64,
    threads: u64,
    start_ticks: u64,
}

/// Parses `/proc/PID/stat` (proc(5)): fields after the command name,
/// which is in parentheses and may itself hold spaces and parentheses.
fn stat_fields(stat: &str) -> Option<StatFields> {
    let after = &stat[stat.rfind(')')? + 1..];
    // `after` starts at field 3 (state): field n is index n - 3.
    let f: Vec<&str> = after.split_whitespace().collect();
    let at = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(StatFields {
        utime: at(14)?,
        stime: at(15)?,
        threads: at(20)?,
        start_ticks: at(22)?,
    })
}

fn role_name(role: super::health::Role) -> &'static str {
    match role {
        super::health::Role::Primary => "PRIMARY",
        super::health::Role::Resolving => "RESOLVING",
        super::health::Role::Secondary => "SECONDARY",
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Text(s) => s.clone(),
        Value::Integer(n) => n.to_string(),
        _ => String::new(),
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Integer(n) => Some(*n as f64),
        Value::Real(r) => Some(*r),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (availdb (r1) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    250 75 0 0 20 0 17 0 123456 1000000 2000 18446744073709551615";
        assert_eq!(
            stat_fields(stat),
            Some(StatFields {
                utime: 250,
                stime: 75,
                threads: 17,
                start_ticks: 123456,
            })
        );
        assert_eq!(stat_fields("garbage"), None);
        assert!(process().is_some_and(|p| p.open_fds > 0.0 && p.threads >= 1.0));
    }

    #[test]
    fn recovery_time_is_the_redo_queue_over_the_redo_rate() {
        assert_eq!(recovery_time(Some(0.0), None), Some(0.0));
        assert_eq!(recovery_time(Some(1000.0), Some(500.0)), Some(2.0));
        assert_eq!(recovery_time(Some(1000.0), Some(0.0)), None);
        assert_eq!(recovery_time(Some(1000.0), None), None);
        assert_eq!(recovery_time(None, Some(1.0)), None);
    }
}
