//! The definition of an availability group: what every replica stores
//! (`DATA_DIR/ag/<group>.json`), what the primary sends its secondaries and
//! what the cluster replicates.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A group definition that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid availability group definition: {0}")]
pub struct DefinitionError(#[from] serde_json::Error);

/// SYNCHRONOUS_COMMIT or ASYNCHRONOUS_COMMIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AvailabilityMode {
    /// Commits wait for this replica once it is synchronized.
    SynchronousCommit,
    /// Commits never wait for this replica.
    AsynchronousCommit,
}

impl AvailabilityMode {
    /// SQL Server's spelling.
    pub fn name(self) -> &'static str {
        match self {
            AvailabilityMode::SynchronousCommit => "SYNCHRONOUS_COMMIT",
            AvailabilityMode::AsynchronousCommit => "ASYNCHRONOUS_COMMIT",
        }
    }
}

/// AUTOMATIC or MANUAL failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailoverMode {
    /// May become primary without an operator (cluster issue).
    Automatic,
    /// Only by an operator's FAILOVER.
    Manual,
}

/// SECONDARY_ROLE (ALLOW_CONNECTIONS = …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecondaryConnections {
    /// No client sessions on the secondary.
    No,
    /// Only sessions that declare read intent.
    ReadOnly,
    /// All sessions (reads only).
    All,
}

/// PRIMARY_ROLE (ALLOW_CONNECTIONS = …).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrimaryConnections {
    /// Sessions that declare read-only intent are refused.
    ReadWrite,
    /// All sessions (SQL Server's default).
    #[default]
    All,
}

/// SEEDING_MODE of a replica: how a database of the group first gets to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeedingMode {
    /// The primary streams a full image when the replica has no copy, or
    /// one older than the primary's log (the default, as in SQL Server
    /// since 2016).
    #[default]
    Automatic,
    /// The admin restores a backup there `WITH NORECOVERY` and joins it
    /// (`ALTER DATABASE … SET HADR AVAILABILITY GROUP`); the primary never
    /// sends it a full image to start from.
    Manual,
}

impl SeedingMode {
    /// The name SQL shows (`seeding_mode_desc`).
    pub fn name(self) -> &'static str {
        match self {
            SeedingMode::Automatic => "AUTOMATIC",
            SeedingMode::Manual => "MANUAL",
        }
    }
}

/// The group's listener: the address clients keep across failovers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerConfig {
    /// DNS name, as written in `LISTENER 'name'`.
    pub name: String,
    /// Sessions arriving here go to the primary, or along the read-only
    /// routing list when they declare read intent.
    pub port: u16,
    /// Sessions arriving here are read-intent (`READ_ONLY_PORT`, default
    /// `port + 1`).
    pub read_only_port: u16,
}

/// One replica of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaConfig {
    /// Replica name: the `--name` of the node hosting it.
    pub name: String,
    /// Replication endpoint (`ENDPOINT_URL = 'tcp://host:port'`).
    pub endpoint: SocketAddr,
    /// Commit mode.
    pub availability_mode: AvailabilityMode,
    /// Failover mode.
    pub failover_mode: FailoverMode,
    /// Seconds of silence after which a partner is DISCONNECTED.
    pub session_timeout_s: u32,
    /// Who may connect when this replica is a secondary.
    pub secondary_allow_connections: SecondaryConnections,
    /// Who may connect when this replica is the primary.
    #[serde(default)]
    pub primary_allow_connections: PrimaryConnections,
    /// `READ_ONLY_ROUTING_URL`.
    pub read_only_routing_url: Option<String>,
    /// `READ_ONLY_ROUTING_LIST`: priority order of load-balanced sets.
    pub read_only_routing_list: Vec<Vec<String>>,
    /// `BACKUP_PRIORITY`.
    pub backup_priority: u8,
    /// `SEEDING_MODE`.
    #[serde(default)]
    pub seeding_mode: SeedingMode,
}

/// A group's whole definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupConfig {
    /// Group name.
    pub name: String,
    /// Random identity fixed at CREATE; partners of another cluster are refused.
    pub cluster_id: String,
    /// Bumped at every change; a replica keeps the highest it has seen.
    pub version: u64,
    /// Failover generation; records carry it.
    pub epoch: u64,
    /// Name of the primary replica.
    pub primary: String,
    /// Availability databases.
    pub databases: Vec<String>,
    /// `REQUIRED_SYNCHRONIZED_SECONDARIES_TO_COMMIT`.
    pub required_synchronized_secondaries: u32,
    /// All replicas, the primary included.
    pub replicas: Vec<ReplicaConfig>,
    /// `CLUSTER_TYPE`: NONE is a read-scale group (no automatic failover).
    #[serde(default)]
    pub cluster_type: ClusterType,
    /// The most recent failover, if any.
    #[serde(default)]
    pub last_failover: Option<FailoverRecord>,
    /// `FAILURE_CONDITION_LEVEL` (1–5): which failures of the primary
    /// trigger automatic failover (see `ag::failover`).
    #[serde(default = "default_failure_condition_level")]
    pub failure_condition_level: u8,
    /// `HEALTH_CHECK_TIMEOUT` in milliseconds.
    #[serde(default = "default_health_check_timeout_ms")]
    pub health_check_timeout_ms: u64,
    /// The group's listener, if it has one.
    #[serde(default)]
    pub listener: Option<ListenerConfig>,
    /// Per database: properties that replicate with the definition (read
    /// only, geo-replication). A database without an entry has the defaults.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub database_options: BTreeMap<String, DatabaseOptions>,
    /// `AUTOMATED_BACKUP_PREFERENCE`.
    #[serde(default)]
    pub automated_backup_preference: BackupPreference,
}

/// Properties of one database of a group, kept with the definition so that
/// every replica has them and they survive failovers and restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseOptions {
    /// `ALTER DATABASE … SET READ_ONLY`: writes are refused on every replica.
    #[serde(default)]
    pub read_only: bool,
    /// `SET GEO_MAX_LAG`: commits wait (and in the end fail) while a
    /// geo-secondary is further behind than this, in milliseconds.
    #[serde(default)]
    pub geo_max_lag_ms: Option<u64>,
    /// This region's copy is a geo-secondary of this source: read-only
    /// here, written by redo of the source's log.
    #[serde(default)]
    pub geo_source: Option<GeoPartner>,
    /// The geo-secondaries this region's copy feeds (at most four).
    #[serde(default)]
    pub geo_secondaries: Vec<GeoPartner>,
    /// Added to the group's epoch for the epoch this database's records
    /// carry ([`GroupConfig::log_epoch`]): set when a geo-secondary becomes
    /// written here, so its new records' epochs are above every epoch of
    /// the region that wrote it before. Never lowered.
    #[serde(default)]
    pub epoch_offset: u64,
    /// The source this region took the database over from (a
    /// geo-failover): its links name it so that the old source and its
    /// other geo-secondaries take this region as their source.
    #[serde(default)]
    pub succeeded: Option<GeoPartner>,
}

/// A database in another region (a partner server).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeoPartner {
    /// The partner server's name (its cluster's `SERVER_NAME`).
    pub server: String,
    /// The database's name there.
    pub database: String,
    /// Who may read a geo-secondary (`ALLOW_CONNECTIONS = ALL | NO`).
    #[serde(default = "all_connections")]
    pub allow_connections: SecondaryConnections,
}

fn all_connections() -> SecondaryConnections {
    SecondaryConnections::All
}

/// The most geo-secondaries one database feeds.
pub const MAX_GEO_SECONDARIES: usize = 4;

fn default_failure_condition_level() -> u8 {
    3
}

fn default_health_check_timeout_ms() -> u64 {
    5_000
}

/// CLUSTER_TYPE.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterType {
    /// availdb's own quorum cluster manager decides (the default).
    #[default]
    External,
    /// Read-scale: no quorum, no automatic failover; forced failover only.
    None,
}

/// AUTOMATED_BACKUP_PREFERENCE: where backups of the group's databases
/// should run (`sys.fn_hadr_backup_is_preferred_replica`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackupPreference {
    /// On the primary only.
    Primary,
    /// On a secondary only, never the primary.
    SecondaryOnly,
    /// On a secondary; on the primary when no secondary is available (SQL
    /// Server's default).
    #[default]
    Secondary,
    /// Anywhere, by BACKUP_PRIORITY alone.
    None,
}

/// What happened at a failover (shown in `sys.availability_groups`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverRecord {
    /// When (µs since the Unix epoch).
    pub at_us: i64,
    /// FORCED, PLANNED or AUTOMATIC, and why.
    pub reason: String,
    /// The former primary.
    pub from: String,
    /// The new primary.
    pub to: String,
    /// The epoch the new primary started.
    pub epoch: u64,
    /// Per database, the LSN ranges `[start, end)` the former primary had
    /// and the new one did not: lost. Filled in when the former primary
    /// rejoins and its log is compared (empty until then, or none lost).
    pub lost: Vec<(String, u64, u64)>,
    /// Databases whose former-primary log has been compared.
    #[serde(default)]
    pub checked: Vec<String>,
    /// True once every database's former-primary log has been compared.
    pub loss_known: bool,
}

/// SQL Server's default and minimum SESSION_TIMEOUT, in seconds.
pub const DEFAULT_SESSION_TIMEOUT_S: u32 = 10;

impl GroupConfig {
    /// The replica called `name`.
    pub fn replica(&self, name: &str) -> Option<&ReplicaConfig> {
        self.replicas
            .iter()
            .find(|r| r.name.eq_ignore_ascii_case(name))
    }

    /// Mutable access to the replica called `name`.
    pub fn replica_mut(&mut self, name: &str) -> Option<&mut ReplicaConfig> {
        self.replicas
            .iter_mut()
            .find(|r| r.name.eq_ignore_ascii_case(name))
    }

    /// The secondaries (every replica but the primary).
    pub fn secondaries(&self) -> impl Iterator<Item = &ReplicaConfig> {
        self.replicas
            .iter()
            .filter(move |r| !r.name.eq_ignore_ascii_case(&self.primary))
    }

    /// True when `database` belongs to the group.
    pub fn has_database(&self, database: &str) -> bool {
        self.databases.iter().any(|d| d == database)
    }

    /// The properties of `database` (the defaults when it has none).
    pub fn database_options(&self, database: &str) -> DatabaseOptions {
        self.database_options
            .get(database)
            .cloned()
            .unwrap_or_default()
    }

    /// The epoch `database`'s new records carry when this group's primary
    /// writes it: the group's epoch plus the database's offset. Distinct
    /// for every primary of the group (the group's epoch is), and rising.
    pub fn log_epoch(&self, database: &str) -> u64 {
        self.epoch
            + self
                .database_options
                .get(database)
                .map_or(0, |o| o.epoch_offset)
    }

    /// True when this region's copy of `database` is a geo-secondary.
    pub fn is_geo_secondary(&self, database: &str) -> bool {
        self.database_options
            .get(database)
            .is_some_and(|o| o.geo_source.is_some())
    }

    /// Serialized form (the wire's Config payload and the file's content).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a GroupConfig always serializes")
    }

    /// Parses [`GroupConfig::to_bytes`] output.
    pub fn from_bytes(bytes: &[u8]) -> Result<GroupConfig, DefinitionError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// Group definitions for unit tests: every test starts from these and
/// changes only the fields its rule is about.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// A synchronous, AUTOMATIC replica at 127.0.0.1:7000 with defaults.
    pub(crate) fn replica(name: &str) -> ReplicaConfig {
        ReplicaConfig {
            name: name.into(),
            endpoint: SocketAddr::from(([127, 0, 0, 1], 7000)),
            availability_mode: AvailabilityMode::SynchronousCommit,
            failover_mode: FailoverMode::Automatic,
            session_timeout_s: DEFAULT_SESSION_TIMEOUT_S,
            secondary_allow_connections: SecondaryConnections::All,
            primary_allow_connections: PrimaryConnections::All,
            read_only_routing_url: None,
            read_only_routing_list: vec![],
            backup_priority: 50,
            seeding_mode: SeedingMode::Automatic,
        }
    }

    /// Group ag1 (cluster c1, version 1, epoch 1) of database app, primary
    /// r1, with `replicas` from [`replica`].
    pub(crate) fn group(replicas: &[&str]) -> GroupConfig {
        GroupConfig {
            name: "ag1".into(),
            cluster_id: "c1".into(),
            version: 1,
            epoch: 1,
            primary: "r1".into(),
            databases: vec!["app".into()],
            required_synchronized_secondaries: 0,
            replicas: replicas.iter().map(|r| replica(r)).collect(),
            cluster_type: ClusterType::External,
            last_failover: None,
            failure_condition_level: 3,
            health_check_timeout_ms: 5000,
            listener: None,
            database_options: BTreeMap::new(),
            automated_backup_preference: BackupPreference::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group() -> GroupConfig {
        fixtures::group(&["r1", "r2"])
    }

    #[test]
    fn definitions_written_before_listeners_still_load() {
        let mut json: serde_json::Value = serde_json::from_slice(&group().to_bytes()).unwrap();
        json.as_object_mut().unwrap().remove("listener");
        for r in json["replicas"].as_array_mut().unwrap() {
            r.as_object_mut()
                .unwrap()
                .remove("primary_allow_connections");
        }
        let old = GroupConfig::from_bytes(&serde_json::to_vec(&json).unwrap()).unwrap();
        assert_eq!(old, group());
    }

    #[test]
    fn secondaries_exclude_the_primary_and_names_ignore_case() {
        let g = group();
        assert_eq!(
            g.secondaries().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["r2"]
        );
        assert!(g.replica("R2").is_some());
        assert_eq!(GroupConfig::from_bytes(&g.to_bytes()).unwrap(), g);
    }
}
