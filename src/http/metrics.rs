//! `/metrics`: the node's state in Prometheus' text format, built at each
//! scrape from a snapshot of the `sys` views (the values SQL clients see)
//! with the `prometheus-client` crate.
//!
//! Every metric is a gauge of the moment of the scrape:
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
//! | `availdb_log_end_lsn`, `availdb_log_durable_lsn`, `availdb_checkpoint_lsn` | `database` | byte positions |
//! | `availdb_cluster_term`, `availdb_cluster_is_leader` | — | this node's view of the cluster |
//! | `availdb_process_resident_memory_bytes`, `availdb_buffer_memory_bytes` | — | `sys.dm_os_process_memory` |
//!
//! A replica row appears where this node knows it: a primary reports every
//! replica of its groups, a secondary itself.

use prometheus_client::encoding::text::encode;
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
    let mut out = String::new();
    encode(&mut out, &registry).map_err(|e| format!("cannot encode the metrics: {e}"))?;
    Ok(out)
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
