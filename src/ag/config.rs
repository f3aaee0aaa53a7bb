//! The definition of an availability group, as every replica stores it
//! (`DATA_DIR/ag/<group>.json`) and as the primary sends it to secondaries.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::{Error, Result};

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
}

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

    /// Serialized form (the wire's Config payload and the file's content).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a GroupConfig always serializes")
    }

    /// Parses [`GroupConfig::to_bytes`] output.
    pub fn from_bytes(bytes: &[u8]) -> Result<GroupConfig> {
        serde_json::from_slice(bytes).map_err(|e| {
            Error::sql(
                "XX000",
                format!("invalid availability group definition: {e}"),
            )
        })
    }
}

/// Where a node keeps the groups it belongs to.
#[derive(Debug, Clone)]
pub struct ConfigStore {
    dir: PathBuf,
}

/// What a node knows of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Membership {
    /// `ALTER AVAILABILITY GROUP g JOIN` ran here; no definition received yet.
    Joined {
        /// Group name.
        name: String,
        /// Cluster id learned from the first primary that connected.
        cluster_id: Option<String>,
    },
    /// The full definition (created here, or received from the primary).
    Defined(Box<GroupConfig>),
}

impl Membership {
    /// The group's name.
    pub fn name(&self) -> &str {
        match self {
            Membership::Joined { name, .. } => name,
            Membership::Defined(g) => &g.name,
        }
    }
}

impl ConfigStore {
    /// The store under `data_dir/ag`.
    pub fn new(data_dir: &Path) -> ConfigStore {
        ConfigStore {
            dir: data_dir.join("ag"),
        }
    }

    /// All groups this node belongs to.
    pub fn load_all(&self) -> Result<Vec<Membership>> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(source) => return Err(io(&self.dir, source)),
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
            let membership: Membership = serde_json::from_slice(&bytes).map_err(|e| {
                Error::sql(
                    "XX000",
                    format!("{} is not a valid group file: {e}", path.display()),
                )
            })?;
            out.push(membership);
        }
        out.sort_by(|a, b| a.name().cmp(b.name()));
        Ok(out)
    }

    /// Writes a group's membership durably (temp file, fsync, rename).
    pub fn save(&self, membership: &Membership) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(membership).expect("membership serializes");
        self.write_durably(&self.path(membership.name()), &bytes)
    }

    /// The databases of `group` whose data movement this node, as primary,
    /// keeps suspended (`ALTER DATABASE … SET HADR SUSPEND`, or a forced
    /// failover), so a restart or a definition change does not resume it.
    pub fn load_suspended(&self, group: &str) -> Result<std::collections::BTreeSet<String>> {
        let path = self.suspended_path(group);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::sql(
                    "XX000",
                    format!("{} is not a valid list of databases: {e}", path.display()),
                )
                .with_hint("delete the file to resume data movement of every database of the group")
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
            Err(e) => Err(io(&path, e)),
        }
    }

    /// Records which databases of `group` are suspended (none: the file goes).
    pub fn save_suspended(
        &self,
        group: &str,
        databases: &std::collections::BTreeSet<String>,
    ) -> Result<()> {
        let path = self.suspended_path(group);
        if databases.is_empty() {
            return match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io(&path, e)),
            };
        }
        let bytes = serde_json::to_vec(databases).expect("a list of names serializes");
        self.write_durably(&path, &bytes)
    }

    /// Temp file, fsync, rename, fsync of the directory.
    fn write_durably(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| io(path, e))
    }

    fn suspended_path(&self, group: &str) -> PathBuf {
        self.dir
            .join(format!("{}.suspended", group.to_ascii_lowercase()))
    }

    /// Forgets a group.
    pub fn remove(&self, name: &str) -> Result<()> {
        self.save_suspended(name, &Default::default())?;
        let path = self.path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path, e)),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{}.json", name.to_ascii_lowercase()))
    }
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        context: format!("availability group file {}", path.display()),
        source,
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
    fn memberships_persist_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConfigStore::new(dir.path());
        store.save(&Membership::Defined(Box::new(group()))).unwrap();
        store
            .save(&Membership::Joined {
                name: "ag2".into(),
                cluster_id: None,
            })
            .unwrap();
        let all = store.load_all().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0], Membership::Defined(Box::new(group())));
        store.remove("ag2").unwrap();
        assert_eq!(store.load_all().unwrap().len(), 1);
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
