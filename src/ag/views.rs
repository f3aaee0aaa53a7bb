//! The `sys` catalog views (`sys.availability_groups`,
//! `sys.availability_replicas`, `sys.availability_group_listeners`,
//! `sys.availability_read_only_routing_lists`,
//! `sys.dm_hadr_availability_replica_states`,
//! `sys.dm_hadr_database_replica_states`, `sys.dm_os_process_memory`,
//! `sys.backup_history` (the backups taken on this node),
//! `sys.dm_hadr_auto_page_repair` (the page repairs of this node),
//! `sys.dm_hadr_physical_seeding_stats` (seeds by streamed backup sent or
//! taken here),
//! `sys.dm_hadr_failover_history` (each group's last failovers, from the
//! cluster's replicated state), `sys.server_principals` (the administrator
//! and the cluster's roles with what they were granted), …), answered with
//! plain SELECT.
//!
//! A statement that names `sys.` runs on a private in-memory SQLite
//! database holding a snapshot of the node's state as tables, so any SELECT
//! (filters, joins between views, aggregates) works; a view cannot be joined
//! with a user table. Columns follow SQL Server's names; LSNs are byte
//! positions in the database's log. The catalog (`pg_class`,
//! `pg_attribute`) lists the views and tables with their columns
//! ([`publish_catalog`]), so tools can describe them.

use rusqlite::types::Value;
use rusqlite::Connection;

use crate::engine::{self, Outcome, Result};
use crate::replication::primary::PrimaryGroup;
use crate::replication::secondary::SecondaryGroup;
use crate::replication::sync::{LeaveReason, SyncState};

/// Everything the views show, taken at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    groups: Vec<Vec<Value>>,
    replicas: Vec<Vec<Value>>,
    listeners: Vec<Vec<Value>>,
    routing: Vec<Vec<Value>>,
    replica_states: Vec<Vec<Value>>,
    database_states: Vec<Vec<Value>>,
    databases: Vec<Vec<Value>>,
    cluster: Vec<Vec<Value>>,
    members: Vec<Vec<Value>>,
    partners: Vec<Vec<Value>>,
    geo_links: Vec<Vec<Value>>,
    operations: Vec<Vec<Value>>,
    memory: Vec<Vec<Value>>,
    backups: Vec<Vec<Value>>,
    refusals: Vec<Vec<Value>>,
    page_repairs: Vec<Vec<Value>>,
    page_scrubs: Vec<Vec<Value>>,
    failovers: Vec<Vec<Value>>,
    seeding: Vec<Vec<Value>>,
    principals: Vec<Vec<Value>>,
}

const SCHEMA: &str = "
CREATE TABLE sys.availability_groups(
    group_id TEXT, name TEXT, required_synchronized_secondaries_to_commit BIGINT,
    version BIGINT, epoch BIGINT, primary_replica TEXT, cluster_id TEXT,
    cluster_type_desc TEXT, automated_backup_preference_desc TEXT,
    last_failover_time TEXT, last_failover_reason TEXT,
    last_failover_from TEXT, last_failover_to TEXT, last_failover_data_lost TEXT,
    last_failover_loss_known BOOLEAN);
CREATE TABLE sys.availability_replicas(
    group_id TEXT, replica_server_name TEXT, endpoint_url TEXT,
    availability_mode_desc TEXT, failover_mode_desc TEXT, session_timeout BIGINT,
    secondary_role_allow_connections_desc TEXT, read_only_routing_url TEXT,
    backup_priority BIGINT, primary_role_allow_connections_desc TEXT,
    seeding_mode_desc TEXT);
CREATE TABLE sys.availability_group_listeners(
    group_id TEXT, dns_name TEXT, port BIGINT, read_only_port BIGINT);
CREATE TABLE sys.availability_read_only_routing_lists(
    group_id TEXT, replica_server_name TEXT, routing_priority BIGINT,
    read_only_replica_server_name TEXT);
CREATE TABLE sys.dm_hadr_availability_replica_states(
    group_id TEXT, replica TEXT, role_desc TEXT, connected_state_desc TEXT,
    synchronization_health_desc TEXT, is_local BOOLEAN, last_connect_error_description TEXT);
CREATE TABLE sys.dm_hadr_cluster(
    cluster_name TEXT, quorum_type_desc TEXT, quorum_state_desc TEXT,
    leader TEXT, term BIGINT, local_state_desc TEXT,
    local_member_name TEXT, local_endpoint_url TEXT, cluster_id TEXT);
CREATE TABLE sys.dm_hadr_partner_refusals(
    partner_type_desc TEXT, refused_count BIGINT, last_refused_time TEXT,
    last_refused_reason TEXT);
CREATE TABLE sys.dm_hadr_cluster_members(
    member_name TEXT, member_type_desc TEXT, endpoint_url TEXT,
    number_of_quorum_votes BIGINT, is_leader BOOLEAN, is_local BOOLEAN);
CREATE TABLE sys.partner_servers(
    name TEXT, endpoint_urls TEXT);
CREATE TABLE sys.geo_replication_links(
    database_name TEXT, partner_server TEXT, partner_database TEXT,
    role BIGINT, role_desc TEXT, replication_state BIGINT, replication_state_desc TEXT,
    secondary_allow_connections BIGINT, secondary_allow_connections_desc TEXT,
    is_connected BOOLEAN, last_replication TEXT, replication_lag_sec REAL,
    hardened_lsn BIGINT, redone_lsn BIGINT, percent_complete REAL,
        last_contact TEXT, last_error TEXT, discarded_lsn_range TEXT);
CREATE VIEW sys.dm_geo_replication_link_status AS
    SELECT database_name, partner_server, partner_database, last_replication,
           replication_lag_sec, replication_state, replication_state_desc, role, role_desc,
           secondary_allow_connections, secondary_allow_connections_desc, is_connected,
                      hardened_lsn, redone_lsn, percent_complete, last_contact, last_error,
           discarded_lsn_range
    FROM sys.geo_replication_links;
CREATE TABLE sys.availdb_operations(
    operation_id BIGINT, resource_type_desc TEXT, major_resource_id TEXT,
    minor_resource_id TEXT, operation TEXT, state_desc TEXT, percent_complete REAL,
    error_desc TEXT, start_time TEXT, last_modify_time TEXT,
    estimated_completion_time BIGINT, bytes_processed BIGINT, bytes_per_second BIGINT,
    rate_limit_bytes_per_second BIGINT);
CREATE VIEW sys.dm_operation_status AS
    SELECT operation_id, resource_type_desc, major_resource_id, minor_resource_id,
           operation, state_desc, percent_complete, error_desc, start_time,
           last_modify_time
    FROM sys.availdb_operations;
CREATE VIEW sys.dm_exec_requests AS
    SELECT operation_id AS request_id, operation AS command,
           major_resource_id AS database_name, 'running' AS status,
           percent_complete, start_time, estimated_completion_time, bytes_processed,
           bytes_per_second, rate_limit_bytes_per_second
    FROM sys.availdb_operations WHERE state_desc = 'IN_PROGRESS';
CREATE TABLE sys.dm_os_process_memory(
    physical_memory_in_use_bytes BIGINT, peak_physical_memory_in_use_bytes BIGINT,
    buffer_memory_in_use_bytes BIGINT, peak_buffer_memory_in_use_bytes BIGINT,
    buffer_memory_limit_bytes BIGINT, session_buffer_memory_limit_bytes BIGINT);
CREATE TABLE sys.databases(
    name TEXT, is_read_only BOOLEAN, log_first_lsn BIGINT, log_end_lsn BIGINT,
    log_durable_lsn BIGINT, checkpoint_lsn BIGINT, log_reuse_wait_desc TEXT);
CREATE TABLE sys.backup_history(
    backup_id TEXT, database_name TEXT, type TEXT, is_copy_only BOOLEAN,
    is_compressed BOOLEAN, physical_device_name TEXT, first_lsn BIGINT,
    last_lsn BIGINT, backup_size BIGINT, backup_start_date TEXT,
    duration_ms BIGINT, group_name TEXT, replica_name TEXT,
    verification_state TEXT, verification_desc TEXT, verified_at TEXT,
    restorable_lsn BIGINT, restorable_time TEXT);
CREATE TABLE sys.dm_hadr_auto_page_repair(
    database_name TEXT, file_id BIGINT, page_id BIGINT, error_type BIGINT,
    error_type_desc TEXT, page_status BIGINT, page_status_desc TEXT,
    modification_time TEXT, partner_replica TEXT, detail TEXT);
CREATE TABLE sys.dm_hadr_page_scrub_status(
    database_name TEXT, page_count BIGINT, pages_verified BIGINT,
    percent_complete REAL, passes_completed BIGINT, last_full_pass_time TEXT,
    damaged_pages_found BIGINT, mismatched_pages_found BIGINT,
    rate_bytes_per_second BIGINT, last_full_pass_seconds REAL, immediate_passes BIGINT,
    last_immediate_pass_reason TEXT, last_immediate_pass_time TEXT);
CREATE TABLE sys.dm_hadr_physical_seeding_stats(
    local_database_name TEXT, remote_machine_name TEXT, role_desc TEXT,
    internal_state_desc TEXT, database_size_bytes BIGINT, pages BIGINT,
    pages_read BIGINT, transfer_size_bytes BIGINT, transferred_size_bytes BIGINT,
    percent_complete REAL, start_time_utc TEXT, end_time_utc TEXT,
    start_lsn BIGINT, failure_message TEXT);
CREATE TABLE sys.server_principals(
    name TEXT, principal_id BIGINT, type TEXT, type_desc TEXT, is_disabled BOOLEAN,
    has_password BOOLEAN, is_admin BOOLEAN, permissions TEXT);
CREATE TABLE sys.dm_hadr_failover_history(
    group_id TEXT, epoch BIGINT, failover_time TEXT, kind_desc TEXT, reason TEXT,
    from_replica TEXT, to_replica TEXT, data_lost TEXT, loss_known BOOLEAN);
CREATE TABLE sys.dm_hadr_database_replica_states(
    database_name TEXT, group_id TEXT, replica TEXT, is_local BOOLEAN,
    is_primary_replica BOOLEAN, synchronization_state_desc TEXT,
    synchronization_health_desc TEXT, is_suspended BOOLEAN, suspend_reason_desc TEXT,
    last_hardened_lsn BIGINT, last_redone_lsn BIGINT, last_commit_lsn BIGINT,
    last_commit_time TEXT, log_send_queue_size BIGINT, log_send_rate REAL,
    redo_queue_size BIGINT, redo_rate REAL, secondary_lag_seconds REAL, last_error TEXT,
    is_failover_ready BOOLEAN);
";

fn text(s: impl Into<String>) -> Value {
    Value::Text(s.into())
}

fn int(n: u64) -> Value {
    Value::Integer(n.min(i64::MAX as u64) as i64)
}

fn boolean(b: bool) -> Value {
    Value::Integer(b as i64)
}

fn failover_columns(record: Option<&crate::group::FailoverRecord>) -> Vec<Value> {
    let Some(r) = record else {
        return vec![Value::Null; 6];
    };
    vec![
        time(Some(r.at_us)),
        text(&r.reason),
        text(&r.from),
        text(&r.to),
        data_lost(&r.lost, r.loss_known),
        boolean(r.loss_known),
    ]
}

/// `none`, the lost ranges (`app: LSN 10..20; shop: LSN 5..9`), or NULL
/// while unknown.
fn data_lost(lost: &[(String, u64, u64)], known: bool) -> Value {
    let ranges = lost
        .iter()
        .map(|(db, start, end)| format!("{db}: LSN {start}..{end}"))
        .collect::<Vec<_>>()
        .join("; ");
    if known && ranges.is_empty() {
        text("none")
    } else if ranges.is_empty() {
        Value::Null
    } else {
        text(ranges)
    }
}

/// Now, in microseconds since the Unix epoch.
pub(crate) fn wall_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// `YYYY-MM-DD HH:MM:SS.ffffff` (UTC) for microseconds since the Unix epoch.
fn time(us: Option<i64>) -> Value {
    let Some(us) = us else {
        return Value::Null;
    };
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    text(format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{micros:06}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

impl Snapshot {
    fn add_config(&mut self, config: &crate::group::GroupConfig) {
        let mut row = vec![
            text(&config.name),
            text(&config.name),
            int(config.required_synchronized_secondaries as u64),
            int(config.version),
            int(config.epoch),
            text(&config.primary),
            text(&config.cluster_id),
            text(match config.cluster_type {
                crate::group::ClusterType::External => "EXTERNAL",
                crate::group::ClusterType::None => "NONE",
            }),
            text(match config.automated_backup_preference {
                crate::group::BackupPreference::Primary => "PRIMARY",
                crate::group::BackupPreference::SecondaryOnly => "SECONDARY_ONLY",
                crate::group::BackupPreference::Secondary => "SECONDARY",
                crate::group::BackupPreference::None => "NONE",
            }),
        ];
        row.extend(failover_columns(config.last_failover.as_ref()));
        self.groups.push(row);
        for r in &config.replicas {
            self.replicas.push(vec![
                text(&config.name),
                text(&r.name),
                text(format!("tcp://{}", r.endpoint)),
                text(r.availability_mode.name()),
                text(match r.failover_mode {
                    crate::group::FailoverMode::Automatic => "AUTOMATIC",
                    crate::group::FailoverMode::Manual => "MANUAL",
                }),
                int(r.session_timeout_s as u64),
                text(match r.secondary_allow_connections {
                    crate::group::SecondaryConnections::No => "NO",
                    crate::group::SecondaryConnections::ReadOnly => "READ_ONLY",
                    crate::group::SecondaryConnections::All => "ALL",
                }),
                r.read_only_routing_url
                    .clone()
                    .map_or(Value::Null, Value::Text),
                int(r.backup_priority as u64),
                text(match r.primary_allow_connections {
                    crate::group::PrimaryConnections::ReadWrite => "READ_WRITE",
                    crate::group::PrimaryConnections::All => "ALL",
                }),
                text(r.seeding_mode.name()),
            ]);
            // Members of one load-balanced set share a priority, as in
            // SQL Server.
            for (priority, set) in r.read_only_routing_list.iter().enumerate() {
                for member in set {
                    self.routing.push(vec![
                        text(&config.name),
                        text(&r.name),
                        int(priority as u64 + 1),
                        text(member),
                    ]);
                }
            }
        }
        if let Some(l) = &config.listener {
            self.listeners.push(vec![
                text(&config.name),
                text(&l.name),
                int(l.port.into()),
                int(l.read_only_port.into()),
            ]);
        }
    }

    /// Adds a database of the node, with why its log cannot be truncated
    /// (SQL Server's `log_reuse_wait_desc`): the next log backup needs
    /// records (`LOG_BACKUP`), a replica still needs records
    /// (`AVAILABILITY_REPLICA`), records wait for a checkpoint
    /// (`CHECKPOINT`), or `NOTHING`.
    pub fn add_database(&mut self, db: &crate::engine::Database) {
        let log = db.log();
        let checkpoint = crate::log::read_checkpoint(db.log_dir()).unwrap_or(0);
        let first = log.first_lsn();
        let hold = db.log_backup_hold();
        let wait = if hold < checkpoint && hold <= db.retain_from() {
            "LOG_BACKUP"
        } else if db.retain_from() < checkpoint {
            "AVAILABILITY_REPLICA"
        } else if log.end_lsn() > checkpoint {
            "CHECKPOINT"
        } else {
            "NOTHING"
        };
        self.databases.push(vec![
            text(db.name()),
            // The READ_ONLY property (a secondary is read-only by role,
            // which sys.dm_hadr_* shows).
            boolean(db.is_read_only()),
            int(first),
            int(log.end_lsn()),
            int(log.durable_lsn()),
            int(checkpoint),
            text(wait),
        ]);
    }

    /// Adds a group this node is primary of.
    pub fn add_primary(&mut self, node: &str, group: &PrimaryGroup) {
        let config = group.config();
        self.add_config(&config);
        for link in group.geo_links() {
            self.add_geo_link(&link);
        }
        let links = group.links();
        // A primary whose lease ran out is RESOLVING: it takes no writes.
        let resolving = config
            .databases
            .iter()
            .filter_map(|d| group.database(d))
            .any(|db| db.is_resolving());
        self.replica_states.push(vec![
            text(&config.name),
            text(node),
            text(if resolving { "RESOLVING" } else { "PRIMARY" }),
            text("CONNECTED"),
            text("HEALTHY"),
            boolean(true),
            Value::Null,
        ]);
        let states = group.sync_states();
        for r in config.secondaries() {
            let link = links.get(&r.name).cloned().unwrap_or_default();
            let healthy = states.iter().all(|(_, s, _)| {
                s.replica(&r.name).is_some_and(|p| {
                    p.state == SyncState::Synchronized
                        || (!p.sync_commit && p.state == SyncState::Synchronizing)
                })
            });
            self.replica_states.push(vec![
                text(&config.name),
                text(&r.name),
                text("SECONDARY"),
                text(if link.connected {
                    "CONNECTED"
                } else {
                    "DISCONNECTED"
                }),
                text(if healthy { "HEALTHY" } else { "NOT_HEALTHY" }),
                boolean(false),
                link.last_error.map_or(Value::Null, Value::Text),
            ]);
        }
        for (database, sync, cell) in &states {
            // The log's end, not only the last commit's: a full image written
            // for seeding holds no commit, but a replica has not caught up
            // until it has redone it.
            let end = sync
                .primary_end()
                .max(group.database(database).map_or(0, |db| db.log().end_lsn()));
            let last_commit = group
                .database(database)
                .and_then(|db| db.log().last_commit_us());
            self.database_states.push(vec![
                text(database),
                text(&config.name),
                text(node),
                boolean(true),
                boolean(true),
                text("SYNCHRONIZED"),
                text("HEALTHY"),
                boolean(false),
                Value::Null,
                int(end),
                int(end),
                int(end),
                time(last_commit),
                int(0),
                Value::Null,
                int(0),
                Value::Null,
                Value::Null,
                Value::Null,
                boolean(false),
            ]);
            for (replica, p) in sync.replicas() {
                let m = cell.metrics(replica);
                self.database_states.push(vec![
                    text(database),
                    text(&config.name),
                    text(replica),
                    boolean(false),
                    boolean(false),
                    text(p.state.name()),
                    text(match p.state {
                        SyncState::Synchronized => "HEALTHY",
                        SyncState::Synchronizing if !p.sync_commit => "HEALTHY",
                        SyncState::Synchronizing => "PARTIALLY_HEALTHY",
                        SyncState::NotSynchronizing => "NOT_HEALTHY",
                    }),
                    boolean(p.suspended),
                    group
                        .suspend_reason(database, replica)
                        .map_or(Value::Null, |r| text(r.desc())),
                    int(p.hardened),
                    int(p.redone),
                    int(end),
                    time(m.last_redone_commit_us),
                    int(end.saturating_sub(p.hardened)),
                    Value::Real(m.send_rate),
                    int(p.hardened.saturating_sub(p.redone)),
                    Value::Real(m.redo_rate),
                    // A replica that redid the whole log is not behind, even
                    // before its first progress of this primary was measured
                    // (a new primary with no write yet).
                    m.lag_seconds
                        .or((p.redone >= end).then_some(0.0))
                        .map_or(Value::Null, Value::Real),
                    match p.left {
                        Some(LeaveReason::AwaitingRestore) => group
                            .awaiting_restore(database, replica)
                            .map_or(Value::Null, Value::Text),
                        other => other.map_or(Value::Null, |l| text(format!("{l:?}"))),
                    },
                    boolean(false),
                ]);
            }
        }
    }

    /// Adds a group this node is a secondary of.
    pub fn add_secondary(&mut self, node: &str, group: &SecondaryGroup) {
        let config = group.config();
        self.add_config(&config);
        let connected = group.is_connected();
        self.replica_states.push(vec![
            text(&config.name),
            text(node),
            text("SECONDARY"),
            text(if connected {
                "CONNECTED"
            } else {
                "DISCONNECTED"
            }),
            text(if connected { "HEALTHY" } else { "NOT_HEALTHY" }),
            boolean(true),
            Value::Null,
        ]);
        for sdb in group.databases() {
            let (hardened, redone) = (sdb.hardened(), sdb.redone());
            let moving = connected && !sdb.is_suspended_here();
            self.database_states.push(vec![
                text(sdb.database().name()),
                text(&config.name),
                text(node),
                boolean(true),
                boolean(false),
                text(if moving {
                    "SYNCHRONIZING"
                } else {
                    "NOT SYNCHRONIZING"
                }),
                text(if moving { "HEALTHY" } else { "NOT_HEALTHY" }),
                boolean(sdb.is_suspended_here()),
                sdb.suspend_reason().map_or(Value::Null, |r| text(r.desc())),
                int(hardened),
                int(redone),
                int(hardened),
                time(sdb.last_redone_commit_us()),
                Value::Null,
                Value::Null,
                int(hardened.saturating_sub(redone)),
                Value::Null,
                Value::Null,
                sdb.page_suspension()
                    .or_else(|| sdb.last_error())
                    .map_or(Value::Null, Value::Text),
                boolean(false),
            ]);
        }
    }

    /// Adds the failover history of `group`, as the cluster keeps it.
    pub fn add_failover_history(&mut self, group: &str, history: &[crate::cluster::FailoverEntry]) {
        for e in history {
            self.failovers.push(vec![
                text(group),
                int(e.epoch),
                if e.at_us == 0 {
                    Value::Null
                } else {
                    time(Some(e.at_us))
                },
                text(e.kind.name()),
                text(&e.reason),
                text(&e.from),
                text(&e.to),
                data_lost(&e.lost, e.loss_known),
                boolean(e.loss_known),
            ]);
        }
    }

    /// Adds the one failover a group outside the cluster (CLUSTER_TYPE =
    /// NONE: forced failovers only) remembers: its definition's last.
    pub fn add_local_failover(&mut self, group: &str, record: &crate::group::FailoverRecord) {
        self.failovers.push(vec![
            text(group),
            int(record.epoch),
            time(Some(record.at_us)),
            text("FORCED"),
            text(&record.reason),
            text(&record.from),
            text(&record.to),
            data_lost(&record.lost, record.loss_known),
            boolean(record.loss_known),
        ]);
    }

    /// Shows `record` as the last failover of `group` (fresher than the
    /// definition's copy while losses are being found).
    pub fn set_failover(&mut self, group: &str, record: Option<&crate::group::FailoverRecord>) {
        for row in &mut self.groups {
            if row[0] == text(group) {
                row.truncate(9);
                row.extend(failover_columns(record));
            }
        }
    }

    /// Marks which database replicas the cluster would let take over
    /// (`is_failover_ready`: in the cluster's synchronized set).
    pub fn set_failover_ready(
        &mut self,
        group: &str,
        synchronized: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
    ) {
        for row in &mut self.database_states {
            if row[1] != text(group) {
                continue;
            }
            let (Value::Text(db), Value::Text(replica)) = (&row[0], &row[2]) else {
                continue;
            };
            let ready = synchronized
                .get(db)
                .is_some_and(|set| set.iter().any(|r| r.eq_ignore_ascii_case(replica)));
            let last = row.len() - 1;
            row[last] = boolean(ready);
            // A secondary learns from the cluster that it is synchronized.
            if ready && row[5] == text("SYNCHRONIZING") {
                row[5] = text("SYNCHRONIZED");
            }
        }
    }

    /// The cluster manager as this node sees it.
    pub fn add_cluster(&mut self, m: &crate::cluster::ClusterMetrics) {
        let name_of = |id: u64| m.voters.get(&id).map_or(id.to_string(), |n| n.name.clone());
        let majority = m.voters.len() / 2 + 1;
        self.cluster.push(vec![
            text("availdb"),
            text("NODE_MAJORITY"),
            text(if m.leader.is_some() {
                "NORMAL_QUORUM"
            } else {
                "NO_QUORUM"
            }),
            m.leader.map_or(Value::Null, |id| text(name_of(id))),
            int(m.term),
            text(format!("{:?}", m.state).to_ascii_uppercase()),
            text(&m.local.name),
            text(format!("tcp://{}", m.local.endpoint)),
            m.cluster_id
                .as_ref()
                .map_or(Value::Null, |id| text(id.as_str())),
        ]);
        let members = m
            .voters
            .iter()
            .map(|(id, node)| (id, node, "VOTER", 1))
            .chain(
                m.learners
                    .iter()
                    .map(|(id, node)| (id, node, "NON_VOTER", 0)),
            );
        for (id, node, kind, votes) in members {
            self.members.push(vec![
                text(&node.name),
                text(kind),
                text(format!("tcp://{}", node.endpoint)),
                int(votes),
                boolean(m.leader == Some(*id)),
                boolean(*id == m.id),
            ]);
        }
        let _ = majority;
    }

    /// Logins: the built-in administrator and the cluster's roles, with
    /// what each was granted (never a password or verifier).
    pub fn add_principals(&mut self, roles: &[crate::auth::RoleRecord]) {
        self.principals.push(vec![
            text(crate::auth::ADMIN_USER),
            int(10),
            text("S"),
            text("SQL_LOGIN"),
            boolean(false),
            boolean(true),
            boolean(true),
            text("ADMIN (built-in)"),
        ]);
        for role in roles {
            let granted: Vec<String> = role.privileges.iter().map(|p| p.describe()).collect();
            self.principals.push(vec![
                text(&role.name),
                int(crate::engine::catalog::object_oid("o", &role.name) as u64),
                text(if role.login { "S" } else { "R" }),
                text(if role.login {
                    "SQL_LOGIN"
                } else {
                    "SERVER_ROLE"
                }),
                boolean(!role.login),
                boolean(role.verifier.is_some()),
                boolean(role.privileges.contains(&crate::auth::Privilege::Admin)),
                text(granted.join(", ")),
            ]);
        }
    }

    /// Partner requests refused for their identity (a node of another
    /// cluster), per kind: one row each, zero included.
    pub fn add_partner_refusals(&mut self) {
        for (kind, refusals) in crate::net::refusals() {
            let (when, why) = match refusals.last {
                Some((at, why)) => (
                    text(chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339()),
                    text(why),
                ),
                None => (Value::Null, Value::Null),
            };
            self.refusals
                .push(vec![text(kind.name()), int(refusals.count), when, why]);
        }
    }

    /// The cluster's server name (its `SERVER_NAME`, which other regions
    /// use) and the partner servers it knows.
    pub fn add_geo(&mut self, state: &crate::cluster::ClusterState) {
        if let (Some(name), Some(row)) = (&state.server_name, self.cluster.first_mut()) {
            row[0] = text(name);
        }
        for partner in state.partners.values() {
            self.partners.push(vec![
                text(&partner.name),
                text(partner.endpoint_urls.join(", ")),
            ]);
        }
    }

    /// Adds the long operations started on this node (geo operations,
    /// backups) as of `now_us` (their estimates and rates).
    pub fn add_operations(&mut self, operations: &[super::operations::Operation], now_us: i64) {
        for op in operations {
            self.operations.push(vec![
                int(op.id),
                text("Database"),
                text(&op.database),
                text(&op.partner),
                text(&op.operation),
                text(op.state.desc()),
                Value::Real(op.percent_complete),
                op.error.clone().map_or(Value::Null, Value::Text),
                time(Some(op.start_us)),
                time(Some(op.last_modify_us)),
                op.estimated_completion_ms(now_us).map_or(Value::Null, int),
                op.bytes_processed.map_or(Value::Null, int),
                op.bytes_per_second(now_us).map_or(Value::Null, int),
                op.rate_limit.map_or(Value::Null, int),
            ]);
        }
    }

    fn add_geo_link(&mut self, link: &crate::replication::geo::GeoLinkView) {
        use crate::replication::geo::{GeoRole, GeoState};
        let (role, role_desc) = match link.role {
            GeoRole::Primary => (0, "PRIMARY"),
            GeoRole::Secondary => (1, "SECONDARY"),
        };
        let state = match link.state {
            GeoState::Pending => 0,
            GeoState::Seeding => 1,
            GeoState::CatchUp => 2,
        };
        let (allow, allow_desc) = match link.partner.allow_connections {
            crate::group::SecondaryConnections::No => (0, "NO"),
            _ => (2, "ALL"),
        };
        let percent = match (link.state, link.seeding) {
            (GeoState::CatchUp, _) => Value::Real(100.0),
            (GeoState::Seeding, Some((done, all))) if all > 0 => {
                Value::Real(done as f64 * 100.0 / all as f64)
            }
            _ => Value::Real(0.0),
        };
        if link.state == GeoState::Seeding {
            // Seeding runs for as long as the image takes: an operation
            // of its own while it does.
            self.operations.push(vec![
                Value::Null,
                text("Database"),
                text(&link.database),
                text(&link.partner.server),
                text("SEEDING"),
                text("IN_PROGRESS"),
                percent.clone(),
                Value::Null,
                Value::Null,
                time(link.last_contact_us),
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
            ]);
        }
        self.geo_links.push(vec![
            text(&link.database),
            text(&link.partner.server),
            text(&link.partner.database),
            int(role),
            text(role_desc),
            int(state),
            text(link.state.desc()),
            int(allow),
            text(allow_desc),
            boolean(link.connected),
            time(link.last_replication_us),
            link.lag_seconds.map_or(Value::Null, Value::Real),
            int(link.hardened_lsn),
            int(link.redone_lsn),
            percent,
            time(link.last_contact_us),
            link.last_error.clone().map_or(Value::Null, Value::Text),
            link.discarded
                .map_or(Value::Null, |(from, to)| text(format!("{from}..{to}"))),
        ]);
    }

    /// The node's memory (`sys.dm_os_process_memory`, one row): the
    /// process's resident set now and at its peak (`VmRSS`, `VmHWM`; NULL
    /// where `/proc` has none), and what availdb's own buffers hold against
    /// their budget ([`crate::engine::memory`]).
    pub fn add_memory(&mut self, memory: &engine::memory::NodeMemory) {
        let (rss, peak) = engine::memory::process_memory()
            .map_or((Value::Null, Value::Null), |(r, p)| (int(r), int(p)));
        self.memory.push(vec![
            rss,
            peak,
            int(memory.used()),
            int(memory.peak()),
            int(memory.limit()),
            int(memory.session_limit()),
        ]);
    }

    /// The backups taken on this node (`sys.backup_history`, oldest
    /// first): what, where, the LSN range it restores, its size, how long
    /// it took and which replica took it.
    /// With each backup, its proof ([`crate::backup::proof`]): the newest
    /// outcome recorded for it, else PENDING (NOT_VERIFIED when proofs
    /// are off).
    pub fn add_backup_history(
        &mut self,
        entries: &[crate::backup::HistoryEntry],
        proofs: &[crate::backup::proof::Outcome],
        proving: bool,
    ) {
        for e in entries {
            let proof = proofs.iter().rev().find(|p| p.id == e.id);
            let state = match proof {
                Some(p) => p.state.as_str(),
                None if proving => "PENDING",
                None => "NOT_VERIFIED",
            };
            self.backups.push(vec![
                text(&e.id),
                text(&e.database),
                text(&e.kind),
                boolean(e.copy_only),
                boolean(e.compressed),
                text(&e.path),
                int(e.first_lsn),
                int(e.end_lsn),
                int(e.size),
                time(Some(e.started_us)),
                int(e.duration_ms),
                text(&e.group),
                text(&e.replica),
                text(state),
                proof.map_or(Value::Null, |p| text(&p.detail)),
                time(proof.map(|p| p.verified_us)),
                proof
                    .and_then(|p| p.restorable_lsn)
                    .map_or(Value::Null, int),
                time(proof.and_then(|p| p.restorable_us)),
            ]);
        }
    }

    /// The seeds by streamed backup this node sent or took
    /// (`sys.dm_hadr_physical_seeding_stats`, SQL Server's name; newest 64).
    /// `percent_complete` counts the pages read into the backup, then the
    /// bytes sent or received, half each on the primary.
    pub fn add_seeding(&mut self, rows: &[crate::replication::seed::SeedingStats]) {
        for r in rows {
            let read = r.pages_read as f64 / r.pages.max(1) as f64;
            let moved = r.transferred_bytes as f64 / r.backup_bytes.max(1) as f64;
            let percent = match (r.state, r.role) {
                ("COMPLETED", _) => 100.0,
                (_, "PRIMARY") => 50.0 * read + 50.0 * moved,
                _ => 100.0 * moved,
            };
            self.seeding.push(vec![
                text(&r.database),
                text(&r.remote),
                text(r.role),
                text(r.state),
                int(r.database_bytes),
                int(r.pages),
                int(r.pages_read),
                int(r.backup_bytes),
                int(r.transferred_bytes),
                Value::Real(percent),
                time(Some(r.started_us)),
                time((r.finished_us > 0).then_some(r.finished_us)),
                int(r.lsn),
                r.failure.as_deref().map_or(Value::Null, text),
            ]);
        }
    }

    /// The page repairs of this node (`sys.dm_hadr_auto_page_repair`,
    /// oldest first, at most 100 per database). `error_type` is SQL
    /// Server's: 2, a bad checksum (the only kind availdb detects);
    /// `file_id` is 1, the database's one file.
    pub fn add_page_repairs(&mut self, rows: &[crate::repair::RepairRow]) {
        for r in rows {
            self.page_repairs.push(vec![
                text(&r.database),
                int(1),
                int(u64::from(r.pgno)),
                int(2),
                text("BAD_CHECKSUM"),
                Value::Integer(r.status.code()),
                text(r.status.name()),
                time(Some(r.modified_us)),
                r.partner.as_deref().map_or(Value::Null, text),
                text(&r.detail),
            ]);
        }
    }

    /// Background scrubbing on this node (`sys.dm_hadr_page_scrub_status`):
    /// per database, the pages verified in the current pass, passes done,
    /// when the last ended, damaged pages found, the rate, and the passes
    /// started at once on a file SQLite found malformed.
    pub fn add_page_scrubs(&mut self, rows: &[crate::repair::ScrubRow], rate: u64) {
        for r in rows {
            let percent = if r.pages == 0 {
                0.0
            } else {
                100.0 * f64::from(r.verified.min(r.pages)) / f64::from(r.pages)
            };
            self.page_scrubs.push(vec![
                text(&r.database),
                int(u64::from(r.pages)),
                int(u64::from(r.verified)),
                Value::Real(percent),
                int(r.passes),
                time(r.last_pass_end_us),
                int(r.damaged_found),
                int(r.mismatches_found),
                int(rate),
                r.last_pass_us
                    .map_or(Value::Null, |us| Value::Real(us as f64 / 1e6)),
                int(r.immediate_passes),
                r.last_immediate_reason.as_deref().map_or(Value::Null, text),
                time(r.last_immediate_end_us),
            ]);
        }
    }

    /// Runs `sql` over the snapshot.
    pub fn query(&self, sql: &str, params: &[Value]) -> Result<Outcome> {
        engine::run(&self.connection()?, sql, params, true)
    }

    /// Describes `sql` over the snapshot (extended protocol).
    pub fn describe(&self, sql: &str) -> Result<engine::Described> {
        engine::describe(&self.connection()?, sql)
    }

    fn connection(&self) -> Result<Connection> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch("ATTACH ':memory:' AS sys;")?;
        conn.execute_batch(SCHEMA)?;
        for (table, rows) in [
            ("availability_groups", &self.groups),
            ("availability_replicas", &self.replicas),
            ("availability_group_listeners", &self.listeners),
            ("availability_read_only_routing_lists", &self.routing),
            ("dm_hadr_availability_replica_states", &self.replica_states),
            ("dm_hadr_database_replica_states", &self.database_states),
            ("databases", &self.databases),
            ("dm_hadr_cluster", &self.cluster),
            ("dm_hadr_cluster_members", &self.members),
            ("partner_servers", &self.partners),
            ("geo_replication_links", &self.geo_links),
            ("availdb_operations", &self.operations),
            ("dm_os_process_memory", &self.memory),
            ("backup_history", &self.backups),
            ("dm_hadr_partner_refusals", &self.refusals),
            ("dm_hadr_auto_page_repair", &self.page_repairs),
            ("dm_hadr_page_scrub_status", &self.page_scrubs),
            ("dm_hadr_failover_history", &self.failovers),
            ("dm_hadr_physical_seeding_stats", &self.seeding),
            ("server_principals", &self.principals),
        ] {
            let Some(first) = rows.first() else { continue };
            let marks = vec!["?"; first.len()].join(", ");
            let mut stmt = conn.prepare(&format!("INSERT INTO sys.{table} VALUES ({marks})"))?;
            for row in rows {
                stmt.execute(rusqlite::params_from_iter(row.iter()))?;
            }
        }
        conn.execute_batch("PRAGMA query_only = ON;")?;
        Ok(conn)
    }
}

/// Tells the catalog (`pg_class`, `pg_attribute`, `pg_namespace`) what the
/// `sys` views and tables are, once, so that psql's `\d sys.…` and other
/// tools describe them ([`crate::engine::catalog::publish_sys_relations`]).
pub fn publish_catalog() {
    crate::engine::catalog::publish_sys_relations(|| {
        sys_relations().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the sys views are not listed in pg_class");
            Vec::new()
        })
    });
}

/// The `sys` views and tables with their columns, read from [`SCHEMA`].
fn sys_relations() -> rusqlite::Result<Vec<crate::engine::catalog::SysRelation>> {
    let conn = Connection::open_in_memory()?;
    conn.execute_batch("ATTACH ':memory:' AS sys;")?;
    conn.execute_batch(SCHEMA)?;
    let mut names = conn.prepare(
        "SELECT name, type = 'view' FROM sys.sqlite_schema WHERE type IN ('table', 'view') ORDER BY name",
    )?;
    let mut columns =
        conn.prepare("SELECT name, type FROM pragma_table_info(?1, 'sys') ORDER BY cid")?;
    let relations = names
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    relations
        .into_iter()
        .map(|(name, view)| {
            let columns = columns
                .query_map([&name], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(crate::engine::catalog::SysRelation {
                name,
                view,
                columns,
            })
        })
        .collect()
}

/// True when `sql` reads the `sys` views. Asked of every statement, so it
/// looks at the text where it lies: only where `sys.` appears (in any case)
/// are the views' names compared.
pub fn mentions_sys(sql: &str) -> bool {
    const VIEWS: [&str; 12] = [
        "sys.availability_",
        "sys.databases",
        "sys.dm_hadr_cluster",
        "sys.dm_hadr_",
        "sys.partner_servers",
        "sys.geo_replication_links",
        "sys.dm_geo_replication_link_status",
        "sys.dm_operation_status",
        "sys.dm_exec_requests",
        "sys.dm_os_process_memory",
        "sys.backup_history",
        "sys.server_principals",
    ];
    let bytes = sql.as_bytes();
    (0..bytes.len()).any(|at| {
        let rest = &bytes[at..];
        rest.len() >= 4
            && rest[..4].eq_ignore_ascii_case(b"sys.")
            && VIEWS.iter().any(|view| {
                rest.len() >= view.len() && rest[..view.len()].eq_ignore_ascii_case(view.as_bytes())
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_backup_shows_its_pace_in_dm_exec_requests_and_dm_operation_status_keeps_its_columns(
    ) {
        let ops = super::super::operations::Operations::default();
        let backup = ops.start("BACKUP DATABASE", "app", "", 0);
        ops.reads(backup, 256 << 10);
        ops.read(backup, 1 << 20, 1_000_000);
        ops.progress(backup, 25.0, 1_000_000);
        let done = ops.start("FAILOVER", "app", "B", 0);
        ops.finish(done, None, 1);
        let mut snap = Snapshot::default();
        snap.add_operations(&ops.list(), 2_000_000);
        let out = snap
            .query(
                "SELECT command, estimated_completion_time, bytes_processed, bytes_per_second, \
                 rate_limit_bytes_per_second FROM sys.dm_exec_requests",
                &[],
            )
            .unwrap();
        // A quarter in 2 s: 6 s left; 1 MiB in 2 s.
        assert_eq!(
            out.rows,
            vec![vec![
                text("BACKUP DATABASE"),
                int(6_000),
                int(1 << 20),
                int(1 << 19),
                int(256 << 10)
            ]]
        );
        let out = snap
            .query("SELECT * FROM sys.dm_operation_status", &[])
            .unwrap();
        let names: Vec<_> = out.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "operation_id",
                "resource_type_desc",
                "major_resource_id",
                "minor_resource_id",
                "operation",
                "state_desc",
                "percent_complete",
                "error_desc",
                "start_time",
                "last_modify_time"
            ]
        );
        assert_eq!(out.rows.len(), 2);
    }

    #[test]
    fn views_answer_plain_selects_with_filters_and_joins() {
        let mut snap = Snapshot::default();
        let mut row = vec![
            text("ag1"),
            text("ag1"),
            int(0),
            int(1),
            int(1),
            text("r1"),
            text("c"),
            text("NONE"),
            text("SECONDARY"),
        ];
        row.extend(failover_columns(None));
        snap.groups.push(row);
        snap.replica_states.push(vec![
            text("ag1"),
            text("r1"),
            text("PRIMARY"),
            text("CONNECTED"),
            text("HEALTHY"),
            boolean(true),
            Value::Null,
        ]);
        let out = snap
            .query(
                "SELECT g.name, s.role_desc FROM sys.availability_groups g \
                 JOIN sys.dm_hadr_availability_replica_states s ON s.group_id = g.group_id WHERE s.is_local",
                &[],
            )
            .unwrap();
        assert_eq!(out.rows, vec![vec![text("ag1"), text("PRIMARY")]]);
        assert!(snap
            .query("DELETE FROM sys.availability_groups", &[])
            .is_err());
        assert!(mentions_sys(
            "select * from SYS.DM_HADR_DATABASE_REPLICA_STATES"
        ));
        assert!(!mentions_sys("select 'system'"));
        assert!(mentions_sys("SELECT 1 FROM sys.Server_Principals"));
        assert!(!mentions_sys("select * from sys.tables; -- sys."));
        assert!(!mentions_sys("insert into t values ('sys.databas')"));
    }

    #[test]
    fn times_print_as_utc_timestamps() {
        assert_eq!(time(Some(0)), text("1970-01-01 00:00:00.000000"));
        assert_eq!(
            time(Some(1_795_307_625_123_456)),
            text("2026-11-22 00:33:45.123456")
        );
        assert_eq!(
            time(Some(951_782_400_000_001)),
            text("2000-02-29 00:00:00.000001")
        );
        assert_eq!(time(None), Value::Null);
    }
    #[test]
    fn the_sys_views_are_listed_in_pg_class_with_their_columns_but_not_visible() {
        publish_catalog();
        let c = Connection::open_in_memory().unwrap();
        c.create_scalar_function(
            "current_database",
            0,
            rusqlite::functions::FunctionFlags::SQLITE_UTF8,
            |_| Ok("t".to_string()),
        )
        .unwrap();
        crate::engine::catalog::install(&c, std::path::Path::new("/nonexistent"), 7).unwrap();
        crate::engine::sequence::install(&c, &Default::default()).unwrap();
        let one = |sql: &str| -> String { c.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(
            one("SELECT c.relkind || ' ' || n.nspname || ' ' || CAST(pg_table_is_visible(c.oid) AS TEXT) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relname = 'dm_exec_requests'"),
            "v sys 0"
        );
        assert_eq!(
            one(
                "SELECT group_concat(attname, ',') FROM (SELECT a.attname FROM pg_attribute a \
                 JOIN pg_class c ON c.oid = a.attrelid WHERE c.relname = 'dm_operation_status' \
                 AND a.attnum BETWEEN 1 AND 3 ORDER BY a.attnum)"
            ),
            "operation_id,resource_type_desc,major_resource_id"
        );
        // Every view and table of the schema is there, with all its columns.
        let listed: i64 = c
            .query_row(
                "SELECT count(*) FROM pg_class WHERE relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = 'sys')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(listed as usize, sys_relations().unwrap().len());
        assert!(listed >= 20, "{listed}");
    }
}
