//! Turning AG DDL into definitions: replica and listener settings from
//! their options (over the current ones for `MODIFY`), new group
//! definitions, endpoint resolution, and the errors these statements give.

use std::net::{SocketAddr, ToSocketAddrs};

use crate::cluster::NodeInfo;
use crate::engine::{Error, Result};
use crate::group::{
    AvailabilityMode, ClusterType, FailoverMode, GroupConfig, ListenerConfig, ReplicaConfig,
    SecondaryConnections, SeedingMode, DEFAULT_SESSION_TIMEOUT_S,
};
use crate::sql::ag as ddl;

/// The address of a `tcp://host:port` URL (a host name is looked up).
pub(super) async fn resolve_endpoint(url: &str) -> Result<std::net::SocketAddr> {
    let (host, port) = ddl::parse_tcp_url(url)
        .map_err(|why| Error::sql("22023", format!("ENDPOINT_URL '{url}': {why}")))?;
    tokio::net::lookup_host((host, port))
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| {
            Error::sql(
                "22023",
                format!("ENDPOINT_URL '{url}': cannot resolve host \"{host}\""),
            )
        })
}

/// The cluster members a group needs: every replica's node.
pub(super) fn members(config: &GroupConfig) -> std::collections::BTreeMap<u64, NodeInfo> {
    config
        .replicas
        .iter()
        .map(|r| {
            (
                crate::cluster::node_id(&r.name),
                NodeInfo {
                    name: r.name.clone(),
                    endpoint: r.endpoint,
                },
            )
        })
        .collect()
}

/// Microseconds since the Unix epoch.
pub(super) fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

pub(super) fn no_group(group: &str) -> Error {
    Error::sql(
        "42704",
        format!("availability group \"{group}\" does not exist on this node"),
    )
}

pub(super) fn no_replica(replica: &str, group: &str) -> Error {
    Error::sql(
        "42704",
        format!("replica \"{replica}\" is not in availability group \"{group}\""),
    )
}

/// A replica's configuration from its options (over `base` for MODIFY).
pub(super) fn replica_config(
    name: &str,
    o: &ddl::ReplicaOptions,
    base: Option<&ReplicaConfig>,
) -> Result<ReplicaConfig> {
    let endpoint = match (&o.endpoint_url, base) {
        (Some(url), _) => resolve(url)?,
        (None, Some(b)) => b.endpoint,
        (None, None) => {
            return Err(Error::sql(
                "42601",
                format!("replica \"{name}\" needs ENDPOINT_URL = 'tcp://host:port'"),
            ))
        }
    };
    let availability_mode = match o.availability_mode {
        Some(ddl::AvailabilityMode::SynchronousCommit) => AvailabilityMode::SynchronousCommit,
        Some(ddl::AvailabilityMode::AsynchronousCommit) => AvailabilityMode::AsynchronousCommit,
        Some(ddl::AvailabilityMode::ConfigurationOnly) => {
            return Err(Error::sql(
                "0A000",
                "CONFIGURATION_ONLY replicas are not supported",
            ))
        }
        None => base.map_or(AvailabilityMode::SynchronousCommit, |b| b.availability_mode),
    };
    let failover_mode = match o.failover_mode {
        Some(ddl::FailoverMode::Automatic) => FailoverMode::Automatic,
        Some(_) => FailoverMode::Manual,
        None => base.map_or(FailoverMode::Manual, |b| b.failover_mode),
    };
    let secondary_allow_connections = o
        .secondary_allow_connections
        .or(base.map(|b| b.secondary_allow_connections))
        .unwrap_or(SecondaryConnections::All);
    let primary_allow_connections = o
        .primary_allow_connections
        .or(base.map(|b| b.primary_allow_connections))
        .unwrap_or_default();
    Ok(ReplicaConfig {
        name: name.to_string(),
        endpoint,
        availability_mode,
        failover_mode,
        session_timeout_s: o
            .session_timeout_s
            .or(base.map(|b| b.session_timeout_s))
            .unwrap_or(DEFAULT_SESSION_TIMEOUT_S),
        secondary_allow_connections,
        primary_allow_connections,
        read_only_routing_url: o
            .read_only_routing_url
            .clone()
            .or_else(|| base.and_then(|b| b.read_only_routing_url.clone())),
        read_only_routing_list: o
            .read_only_routing_list
            .clone()
            .or_else(|| base.map(|b| b.read_only_routing_list.clone()))
            .unwrap_or_default(),
        backup_priority: o
            .backup_priority
            .or(base.map(|b| b.backup_priority))
            .unwrap_or(50),
        seeding_mode: match o.seeding_mode {
            Some(ddl::SeedingMode::Automatic) => SeedingMode::Automatic,
            Some(ddl::SeedingMode::Manual) => SeedingMode::Manual,
            None => base.map_or(SeedingMode::Automatic, |b| b.seeding_mode),
        },
    })
}

/// A listener's definition; `READ_ONLY_PORT` defaults to `PORT + 1`.
pub(super) fn listener_config(spec: &ddl::ListenerSpec) -> Result<ListenerConfig> {
    let read_only_port = match spec.read_only_port {
        Some(port) => port,
        None => spec.port.checked_add(1).ok_or_else(|| {
            Error::sql(
                "22023",
                format!(
                    "listener '{}': PORT 65535 leaves no room for the read-only port",
                    spec.name
                ),
            )
            .with_hint("give READ_ONLY_PORT = n")
        })?,
    };
    Ok(ListenerConfig {
        name: spec.name.clone(),
        port: spec.port,
        read_only_port,
    })
}

fn resolve(url: &str) -> Result<SocketAddr> {
    let (host, port) = ddl::parse_tcp_url(url)
        .map_err(|why| Error::sql("42601", format!("ENDPOINT_URL '{url}': {why}")))?;
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| {
            Error::sql(
                "22023",
                format!("ENDPOINT_URL '{url}': cannot resolve host \"{host}\""),
            )
        })
}

/// A random cluster id (time and process entropy; uniqueness, not secrecy).
pub(super) fn new_cluster_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let a = h.finish();
    let mut h2 = std::collections::hash_map::RandomState::new().build_hasher();
    h2.write_u64(a);
    format!("{a:016x}{:016x}", h2.finish())
}

/// A new group's definition from `CREATE AVAILABILITY GROUP`, with this
/// node (`node`) as its primary.
pub(super) fn new_group(spec: ddl::GroupSpec, node: &str) -> Result<GroupConfig> {
    if !spec
        .replicas
        .iter()
        .any(|r| r.name.eq_ignore_ascii_case(node))
    {
        return Err(Error::sql(
            "22023",
            format!("this node is replica \"{node}\", which the group does not list"),
        )
        .with_hint("run CREATE AVAILABILITY GROUP on the node that becomes primary, and list it under REPLICA ON"));
    }
    let mut replicas = Vec::new();
    for r in &spec.replicas {
        replicas.push(replica_config(&r.name, &r.options, None)?);
    }
    Ok(GroupConfig {
        name: spec.name.clone(),
        cluster_id: new_cluster_id(),
        version: 1,
        epoch: 1,
        primary: node.to_string(),
        databases: spec.databases,
        required_synchronized_secondaries: spec
            .options
            .required_synchronized_secondaries_to_commit
            .unwrap_or(0),
        replicas,
        cluster_type: match spec.options.cluster_type {
            Some(ddl::ClusterType::None) => ClusterType::None,
            _ => ClusterType::External,
        },
        last_failover: None,
        failure_condition_level: spec.options.failure_condition_level.unwrap_or(3),
        health_check_timeout_ms: spec
            .options
            .health_check_timeout_ms
            .map_or(5_000, u64::from),
        listener: spec.listener.as_ref().map(listener_config).transpose()?,
        database_options: Default::default(),
        automated_backup_preference: spec
            .options
            .automated_backup_preference
            .map(backup_preference)
            .unwrap_or_default(),
    })
}

/// The group vocabulary's AUTOMATED_BACKUP_PREFERENCE for the parser's.
pub(crate) fn backup_preference(p: ddl::BackupPreference) -> crate::group::BackupPreference {
    use crate::group::BackupPreference as B;
    match p {
        ddl::BackupPreference::Primary => B::Primary,
        ddl::BackupPreference::SecondaryOnly => B::SecondaryOnly,
        ddl::BackupPreference::Secondary => B::Secondary,
        ddl::BackupPreference::None => B::None,
    }
}
