//! The replicated state machine: what the cluster agrees on about every
//! availability group, and the rules every command is checked against.
//!
//! Pure and deterministic: [`ClusterState::apply`] depends only on the
//! state and the command, never on clocks, files or the node it runs on,
//! so every node that applies the same log reaches the same state and the
//! same [`CommandResult`]s. A rejected command changes nothing.
//!
//! # Rules
//! | command | accepted when | effect |
//! | --- | --- | --- |
//! | `PutGroup` | new group: a valid definition. Existing group: same cluster id, epoch and primary, and a higher version (the same version with the same content is an idempotent retry) | stores the definition; drops synchronized entries of removed databases or replicas |
//! | `RemoveGroup` | the group exists | forgets it |
//! | `RenewLease` | epoch = the group's epoch, holder = its primary, duration > 0 | records the lease |
//! | `SetSynchronized` | epoch = the group's epoch, the database is in the group, the replica is a secondary; joining also needs synchronous commit and the definition's current version | adds or removes the replica |
//! | `Promote` | new_epoch = epoch + 1, new_primary is a replica of the group | new primary and epoch, version + 1, lease cleared, synchronized set emptied; the old primary is remembered, and marked as stopped when the leader promoted only after its lease ran out |
//! | `StepDown` | holder and epoch name the primary the last `Promote` replaced | records that it stopped writing |
//! | `SetServerName` | no name yet, or the same one | names this cluster for other regions |
//! | `PutPartner` | the cluster is named, the partner's name is not its own, at least one endpoint | registers or updates a partner server (another region) |
//! | `RemovePartner` | the partner exists and no database is geo-replicated with it | forgets it |
//! | `RecordFailoverLoss` | the group's history holds a failover at that epoch | sets that failover's lost LSN ranges and whether the loss is known |
//! | `CreateRole` | the name is free and not `availdb` (the built-in administrator) | stores the role (its verifier, never a password) |
//! | `AlterRole` | the role exists | sets LOGIN, the verifier (or clears it), the connection limit |
//! | `DropRole` | the role exists | forgets it and its privileges |
//! | `SetPrivileges` | the role exists | adds (GRANT) or removes (REVOKE) the privileges; granting one held or revoking one not held changes nothing |
//!
//! An epoch older than the group's means the sender was deposed: it may
//! neither renew its lease nor change the synchronized set (safety rules 1
//! and 2). `Promote` does not check that its target is synchronized: the
//! caller decides (automatic and planned failover must check it, forced
//! failover does not), and the state machine only keeps epochs in order.
//! `Promote` empties the synchronized set because the old secondaries were
//! synchronized with the old primary, not the new one: the new primary adds
//! each back once it has caught up in the new epoch.
//!
//! A replica joins the synchronized set only with the definition version it
//! runs under: a primary restarted by a definition change empties the set
//! and adds replicas back as they catch up, and an addition still on its way
//! from before the change (a retry of the old primary instance) is refused
//! rather than re-adding a replica that commits no longer wait for.
//!
//! A new primary takes writes only once the old one cannot: after the old
//! primary's lease ran out, or once the old primary recorded that it stopped
//! (`StepDown`, which a deposed primary sends as soon as it has closed its
//! writes). [`GroupRecord::stopped_epoch`] is the newest epoch known to have
//! stopped.
//!
//! # Failover history
//! Every accepted `Promote` appends a [`FailoverEntry`] to its group's
//! [`GroupRecord::history`] (the last [`HISTORY_LEN`] are kept): its kind
//! follows from the command's flags (forced: no synchronized target
//! required; automatic: the leader promoted after the lease ran out;
//! planned: otherwise), its time and reason come with the command (the
//! proposer's clock: apply reads none). A planned or automatic failover
//! loses nothing (its target was synchronized); a forced one's loss is
//! known once the old primary rejoined and its log was compared, which the
//! new primary records with `RecordFailoverLoss`. Being part of the
//! replicated state, the history survives leader changes, failovers and
//! restarts, and reads the same on every member.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use openraft::{LogId, StoredMembership};
use serde::{Deserialize, Serialize};

use super::{NodeId, NodeInfo};
use crate::auth::{Privilege, RoleRecord, ADMIN_USER};
use crate::group::{AvailabilityMode, GroupConfig};

/// Everything the cluster agrees on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Availability groups, keyed by name in lower case (names are
    /// case-insensitive, as in `DATA_DIR/ag/`).
    pub groups: BTreeMap<String, GroupRecord>,
    /// Last Raft log entry applied to this state.
    pub last_applied: Option<LogId<NodeId>>,
    /// Last membership (voters and their addresses) applied to this state.
    pub membership: StoredMembership<NodeId, NodeInfo>,
    /// This cluster's name as other regions call it (`SERVER_NAME`).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Other regions this one geo-replicates with, by lower-case name.
    #[serde(default)]
    pub partners: BTreeMap<String, Partner>,
    /// Roles, by name (exact: names were folded when the roles were made).
    /// They hold verifiers, never passwords ([`crate::auth`]).
    #[serde(default)]
    pub roles: BTreeMap<String, RoleRecord>,
}

/// Another region: a cluster reachable at any of its nodes' endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partner {
    /// Its `SERVER_NAME`, as written.
    pub name: String,
    /// Its nodes' replication endpoints (`tcp://host:port`).
    pub endpoint_urls: Vec<String>,
}

/// What the cluster knows of one availability group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// The definition, including the current primary and epoch.
    pub config: GroupConfig,
    /// The primary's lease, if it holds one in the current epoch.
    pub lease: Option<Lease>,
    /// Per database: the replicas commits wait for (the synchronized set).
    pub synchronized: BTreeMap<String, BTreeSet<String>>,
    /// The primary the last `Promote` replaced, and its epoch.
    #[serde(default)]
    pub previous: Option<(String, u64)>,
    /// The newest epoch whose primary is known to take no more writes:
    /// promoted away from after its lease ran out, or stepped down.
    #[serde(default)]
    pub stopped_epoch: u64,
    /// Per database: where every replica keeps its log from for the next
    /// log backup (a backup chain is in use), so that the chain continues
    /// without a gap whichever replica is primary after a failover.
    #[serde(default)]
    pub backup_holds: BTreeMap<String, u64>,
    /// The group's failovers, oldest first (at most [`HISTORY_LEN`]).
    #[serde(default)]
    pub history: VecDeque<FailoverEntry>,
}

/// How many failovers a group's history keeps.
pub const HISTORY_LEN: usize = 100;

/// Why the primary changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailoverKind {
    /// An operator asked a synchronized secondary to take over
    /// (`ALTER AVAILABILITY GROUP … FAILOVER`).
    Planned,
    /// The leader replaced a primary whose lease ran out.
    Automatic,
    /// An operator forced a secondary to take over, whatever it missed
    /// (`FORCE_FAILOVER_ALLOW_DATA_LOSS`).
    Forced,
}

impl FailoverKind {
    /// `PLANNED`, `AUTOMATIC` or `FORCED`.
    pub fn name(self) -> &'static str {
        match self {
            FailoverKind::Planned => "PLANNED",
            FailoverKind::Automatic => "AUTOMATIC",
            FailoverKind::Forced => "FORCED",
        }
    }
}

/// One failover of a group's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverEntry {
    /// The epoch the new primary started.
    pub epoch: u64,
    /// When it was proposed, µs since the Unix epoch (the proposer's clock;
    /// 0 when the proposer did not say).
    pub at_us: i64,
    /// Planned, automatic or forced.
    pub kind: FailoverKind,
    /// Why, in the proposer's words.
    pub reason: String,
    /// The former primary.
    pub from: String,
    /// The new primary.
    pub to: String,
    /// Per database, the LSN ranges `[start, end)` the former primary had
    /// and the new one did not (forced failovers, once known).
    pub lost: Vec<(String, u64, u64)>,
    /// True once the loss is known: at once for a planned or automatic
    /// failover (none), after the former primary rejoined for a forced one.
    pub loss_known: bool,
}

impl GroupRecord {
    /// True when the primary of the epoch before the current one can no
    /// longer write (the current epoch's primary may then open its writes
    /// without waiting for the old lease to run out).
    pub fn predecessor_stopped(&self) -> bool {
        self.previous
            .as_ref()
            .is_none_or(|(_, epoch)| self.stopped_epoch >= *epoch)
    }
}

/// A primary's right to accept writes. Only who holds it, at which epoch
/// and for how long is replicated; when it was renewed is measured by each
/// node's own monotonic clock ([`super::LeaseClock`]), because clocks differ
/// between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Replica name of the primary holding it.
    pub holder: String,
    /// Epoch in which it was granted.
    pub epoch: u64,
    /// How long it lasts after each renewal, in milliseconds.
    pub duration_ms: u64,
}

/// A change proposed to the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Creates a group or replaces its definition (boxed: a definition is
    /// much larger than the other commands).
    PutGroup(Box<GroupConfig>),
    /// Forgets a group.
    RemoveGroup(String),
    /// The primary renews its lease.
    RenewLease {
        /// Group name.
        group: String,
        /// Replica name of the primary.
        holder: String,
        /// The primary's epoch.
        epoch: u64,
        /// Lease length, in milliseconds.
        duration_ms: u64,
    },
    /// The primary adds a replica to, or removes it from, a database's
    /// synchronized set.
    SetSynchronized {
        /// Group name.
        group: String,
        /// Database of the group.
        database: String,
        /// Secondary replica.
        replica: String,
        /// True to add, false to remove.
        synchronized: bool,
        /// The primary's epoch.
        epoch: u64,
        /// The definition version the primary runs under; an addition must
        /// name the current one (0: an entry from before versions were
        /// checked, taken as current).
        #[serde(default)]
        version: u64,
    },
    /// Makes another replica (or the same one, in a new epoch) the primary.
    Promote {
        /// Group name.
        group: String,
        /// Replica that becomes primary.
        new_primary: String,
        /// Must be the group's epoch + 1.
        new_epoch: u64,
        /// Refuse unless the new primary is in the synchronized set of every
        /// database (planned and automatic failover; not forced). Checked
        /// when the command is applied, so a stale copy of the state on the
        /// proposing node cannot let an unsynchronized replica through.
        #[serde(default)]
        require_synchronized: bool,
        /// The proposer (the leader's failover decider) promotes only after
        /// the old primary's lease ran out: it has stopped writing.
        #[serde(default)]
        after_lease: bool,
        /// When the proposer decided, µs since the Unix epoch (for the
        /// history).
        #[serde(default)]
        at_us: i64,
        /// Why, for the history.
        #[serde(default)]
        reason: String,
    },
    /// The new primary of a forced failover records what it lost, once the
    /// former primary's log has been compared.
    RecordFailoverLoss {
        /// Group name.
        group: String,
        /// The epoch the failover started.
        epoch: u64,
        /// Per database, the lost LSN ranges `[start, end)`.
        lost: Vec<(String, u64, u64)>,
        /// Every database has been compared.
        loss_known: bool,
    },
    /// Names this cluster (`ALTER CLUSTER SET (SERVER_NAME = …)`).
    SetServerName(String),
    /// Registers or updates a partner server.
    PutPartner(Partner),
    /// Forgets a partner server.
    RemovePartner(String),
    /// A replica took a backup of a chain (not COPY_ONLY): every replica
    /// keeps its log of `database` from `lsn` until the next log backup.
    HoldLogForBackups {
        /// Group name.
        group: String,
        /// Database of the group.
        database: String,
        /// Where the next log backup starts.
        lsn: u64,
    },
    /// Makes a role (`CREATE ROLE`).
    CreateRole(RoleRecord),
    /// Changes a role's LOGIN or password (`ALTER ROLE`).
    AlterRole {
        /// The role.
        name: String,
        /// New LOGIN, if changed.
        login: Option<bool>,
        /// New verifier (PostgreSQL's text form), if changed.
        verifier: Option<String>,
        /// Forget the password (`PASSWORD NULL`).
        clear_password: bool,
        /// New `CONNECTION LIMIT`, if changed: `Some(None)` lifts it.
        #[serde(default)]
        connection_limit: Option<Option<u32>>,
    },
    /// Forgets a role (`DROP ROLE`).
    DropRole(String),
    /// Grants or revokes privileges (`GRANT`, `REVOKE`).
    SetPrivileges {
        /// The role.
        role: String,
        /// The privileges.
        privileges: Vec<Privilege>,
        /// Grant (true) or revoke (false).
        granted: bool,
    },
    /// A deposed primary records that it closed its writes.
    StepDown {
        /// Group name.
        group: String,
        /// Replica name of the deposed primary.
        holder: String,
        /// The epoch it was primary in.
        epoch: u64,
    },
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Applied.
    Ok,
    /// Not applied; the state is unchanged. Says why.
    Rejected(String),
}

impl ClusterState {
    /// The group called `name` (any case).
    pub fn group(&self, name: &str) -> Option<&GroupRecord> {
        self.groups.get(&name.to_ascii_lowercase())
    }

    /// The role called `name` (exactly).
    pub fn role(&self, name: &str) -> Option<&RoleRecord> {
        self.roles.get(name)
    }

    fn role_mut(&mut self, name: &str) -> Result<&mut RoleRecord, String> {
        self.roles
            .get_mut(name)
            .ok_or_else(|| format!("role \"{name}\" does not exist"))
    }

    /// Applies one command (see the module docs for the rules).
    pub fn apply(&mut self, command: &Command) -> CommandResult {
        match self.check_and_apply(command) {
            Ok(()) => CommandResult::Ok,
            Err(why) => CommandResult::Rejected(why),
        }
    }

    fn check_and_apply(&mut self, command: &Command) -> Result<(), String> {
        match command {
            Command::PutGroup(config) => self.put_group(config),
            Command::RemoveGroup(name) => self
                .groups
                .remove(&name.to_ascii_lowercase())
                .map(drop)
                .ok_or_else(|| no_group(name)),
            Command::RenewLease {
                group,
                holder,
                epoch,
                duration_ms,
            } => {
                let record = self.group_mut(group)?;
                check_epoch(&record.config, *epoch, "renew the lease")?;
                let primary = &record.config.primary;
                if !holder.eq_ignore_ascii_case(primary) {
                    return Err(format!(
                        "replica \"{holder}\" is not the primary of group \"{group}\" \
                         (\"{primary}\" is, at epoch {epoch}); only the primary holds the lease"
                    ));
                }
                if *duration_ms == 0 {
                    return Err("a lease must last at least 1 ms".into());
                }
                record.lease = Some(Lease {
                    holder: primary.clone(),
                    epoch: *epoch,
                    duration_ms: *duration_ms,
                });
                Ok(())
            }
            Command::SetSynchronized {
                group,
                database,
                replica,
                synchronized,
                epoch,
                version,
            } => {
                let record = self.group_mut(group)?;
                let config = &record.config;
                check_epoch(config, *epoch, "change the synchronized set")?;
                if *synchronized && *version != 0 && *version != config.version {
                    return Err(format!(
                        "the definition of group \"{group}\" is at version {}, not {version}: \
                         a primary adds replicas to the synchronized set only under the current \
                         definition",
                        config.version
                    ));
                }
                if !config.has_database(database) {
                    return Err(format!(
                        "database \"{database}\" is not in group \"{group}\""
                    ));
                }
                let Some(r) = config.replica(replica) else {
                    return Err(format!("replica \"{replica}\" is not in group \"{group}\""));
                };
                if r.name.eq_ignore_ascii_case(&config.primary) {
                    return Err(format!(
                        "replica \"{replica}\" is the primary of group \"{group}\"; \
                         only secondaries are synchronized"
                    ));
                }
                if *synchronized && r.availability_mode != AvailabilityMode::SynchronousCommit {
                    return Err(format!(
                        "replica \"{replica}\" is {}; only SYNCHRONOUS_COMMIT replicas \
                         join the synchronized set",
                        r.availability_mode.name()
                    ));
                }
                let name = r.name.clone();
                let set = record.synchronized.entry(database.clone()).or_default();
                if *synchronized {
                    set.insert(name);
                } else {
                    set.remove(&name);
                    if set.is_empty() {
                        record.synchronized.remove(database);
                    }
                }
                Ok(())
            }
            Command::Promote {
                group,
                new_primary,
                new_epoch,
                require_synchronized,
                after_lease,
                at_us,
                reason,
            } => {
                let record = self.group_mut(group)?;
                if *require_synchronized {
                    for db in &record.config.databases {
                        let ready = record.synchronized.get(db).is_some_and(|set| {
                            set.iter().any(|r| r.eq_ignore_ascii_case(new_primary))
                        });
                        if !ready {
                            return Err(format!(
                                "replica \"{new_primary}\" is not SYNCHRONIZED for database \"{db}\": \
                                 promoting it could lose acknowledged commits"
                            ));
                        }
                    }
                }
                let config = &mut record.config;
                let expected = config.epoch + 1;
                if *new_epoch != expected {
                    return Err(format!(
                        "group \"{group}\" is at epoch {}: a promotion must name epoch \
                         {expected}, not {new_epoch}; read the cluster state and retry",
                        config.epoch
                    ));
                }
                let Some(r) = config.replica(new_primary) else {
                    return Err(format!(
                        "replica \"{new_primary}\" is not in group \"{group}\"; \
                         only a replica of the group can become its primary"
                    ));
                };
                let old = (config.primary.clone(), config.epoch);
                config.primary = r.name.clone();
                config.epoch = *new_epoch;
                config.version += 1;
                let kind = match (*require_synchronized, *after_lease) {
                    (false, _) => FailoverKind::Forced,
                    (true, true) => FailoverKind::Automatic,
                    (true, false) => FailoverKind::Planned,
                };
                let entry = FailoverEntry {
                    epoch: *new_epoch,
                    at_us: *at_us,
                    kind,
                    reason: reason.clone(),
                    from: old.0.clone(),
                    to: config.primary.clone(),
                    lost: Vec::new(),
                    loss_known: kind != FailoverKind::Forced,
                };
                if *after_lease {
                    record.stopped_epoch = record.stopped_epoch.max(old.1);
                }
                record.previous = Some(old);
                record.lease = None;
                record.synchronized.clear();
                record.history.push_back(entry);
                while record.history.len() > HISTORY_LEN {
                    record.history.pop_front();
                }
                Ok(())
            }
            Command::RecordFailoverLoss {
                group,
                epoch,
                lost,
                loss_known,
            } => {
                let record = self.group_mut(group)?;
                let Some(entry) = record.history.iter_mut().find(|e| e.epoch == *epoch) else {
                    return Err(format!(
                        "group \"{group}\" has no failover at epoch {epoch} in its history \
                         (it keeps the last {HISTORY_LEN})"
                    ));
                };
                entry.lost = lost.clone();
                entry.loss_known = *loss_known;
                Ok(())
            }
            Command::SetServerName(name) => match &self.server_name {
                Some(current) if !current.eq_ignore_ascii_case(name) => Err(format!(
                    "this cluster is already named '{current}'; other regions know it by that name"
                )),
                _ if name.trim().is_empty() => Err("a server name cannot be empty".into()),
                _ => {
                    self.server_name = Some(name.clone());
                    Ok(())
                }
            },
            Command::PutPartner(partner) => {
                let Some(own) = &self.server_name else {
                    return Err(
                        "name this cluster first: ALTER CLUSTER SET (SERVER_NAME = 'name')".into(),
                    );
                };
                if own.eq_ignore_ascii_case(&partner.name) {
                    return Err(format!(
                        "'{}' is this cluster's own name: a partner is another region",
                        partner.name
                    ));
                }
                if partner.endpoint_urls.is_empty() {
                    return Err(format!("partner '{}' has no endpoint", partner.name));
                }
                self.partners
                    .insert(partner.name.to_ascii_lowercase(), partner.clone());
                Ok(())
            }
            Command::RemovePartner(name) => {
                let key = name.to_ascii_lowercase();
                if !self.partners.contains_key(&key) {
                    return Err(format!("no partner server '{name}' in this cluster"));
                }
                for record in self.groups.values() {
                    for (db, options) in &record.config.database_options {
                        let linked = options
                            .geo_source
                            .iter()
                            .chain(&options.geo_secondaries)
                            .any(|p| p.server.eq_ignore_ascii_case(name));
                        if linked {
                            return Err(format!(
                                "database \"{db}\" is geo-replicated with '{name}'; remove that link first"
                            ));
                        }
                    }
                }
                self.partners.remove(&key);
                Ok(())
            }
            Command::HoldLogForBackups {
                group,
                database,
                lsn,
            } => {
                let record = self.group_mut(group)?;
                if !record.config.has_database(database) {
                    return Err(format!(
                        "database \"{database}\" is not in availability group \"{group}\""
                    ));
                }
                record.backup_holds.insert(database.clone(), *lsn);
                Ok(())
            }
            Command::CreateRole(role) => {
                if role.name.eq_ignore_ascii_case(ADMIN_USER) {
                    return Err(format!(
                        "role name \"{}\" is reserved for the built-in administrator",
                        role.name
                    ));
                }
                if self.roles.contains_key(&role.name) {
                    return Err(format!("role \"{}\" already exists", role.name));
                }
                self.roles.insert(role.name.clone(), role.clone());
                Ok(())
            }
            Command::AlterRole {
                name,
                login,
                verifier,
                clear_password,
                connection_limit,
            } => {
                let role = self.role_mut(name)?;
                if let Some(login) = login {
                    role.login = *login;
                }
                if let Some(limit) = connection_limit {
                    role.connection_limit = *limit;
                }
                if *clear_password {
                    role.verifier = None;
                }
                if let Some(verifier) = verifier {
                    role.verifier = Some(verifier.clone());
                }
                Ok(())
            }
            Command::DropRole(name) => {
                self.role_mut(name)?;
                self.roles.remove(name);
                Ok(())
            }
            Command::SetPrivileges {
                role,
                privileges,
                granted,
            } => {
                let role = self.role_mut(role)?;
                for privilege in privileges {
                    if *granted {
                        role.privileges.insert(privilege.clone());
                    } else {
                        role.privileges.remove(privilege);
                    }
                }
                Ok(())
            }
            Command::StepDown {
                group,
                holder,
                epoch,
            } => {
                let record = self.group_mut(group)?;
                match &record.previous {
                    Some((previous, e)) if previous.eq_ignore_ascii_case(holder) && e == epoch => {
                        record.stopped_epoch = record.stopped_epoch.max(*epoch);
                        Ok(())
                    }
                    _ => Err(format!(
                        "replica \"{holder}\" was not the primary of group \"{group}\" that the \
                         last promotion replaced (epoch {epoch})"
                    )),
                }
            }
        }
    }

    fn group_mut(&mut self, name: &str) -> Result<&mut GroupRecord, String> {
        self.groups
            .get_mut(&name.to_ascii_lowercase())
            .ok_or_else(|| no_group(name))
    }

    fn put_group(&mut self, config: &GroupConfig) -> Result<(), String> {
        validate(config)?;
        let key = config.name.to_ascii_lowercase();
        let Some(record) = self.groups.get_mut(&key) else {
            self.groups.insert(
                key,
                GroupRecord {
                    config: config.clone(),
                    lease: None,
                    synchronized: BTreeMap::new(),
                    previous: None,
                    stopped_epoch: 0,
                    backup_holds: BTreeMap::new(),
                    history: VecDeque::new(),
                },
            );
            return Ok(());
        };
        let current = &record.config;
        let name = &config.name;
        if config.cluster_id != current.cluster_id {
            return Err(format!(
                "group \"{name}\" belongs to cluster {}, not {}",
                current.cluster_id, config.cluster_id
            ));
        }
        check_epoch(current, config.epoch, "change the definition")?;
        if !config.primary.eq_ignore_ascii_case(&current.primary) {
            return Err(format!(
                "the primary of group \"{name}\" is \"{}\"; a definition cannot change it \
                 (use Promote)",
                current.primary
            ));
        }
        if config.version == current.version && config == current {
            return Ok(());
        }
        if config.version <= current.version {
            return Err(format!(
                "group \"{name}\" is at version {}; a new definition needs a higher version \
                 than {}",
                current.version, config.version
            ));
        }
        record.config = config.clone();
        let config = &record.config;
        record.synchronized.retain(|database, replicas| {
            replicas.retain(|r| config.replica(r).is_some());
            config.has_database(database) && !replicas.is_empty()
        });
        record
            .backup_holds
            .retain(|database, _| config.has_database(database));
        Ok(())
    }
}

fn no_group(name: &str) -> String {
    format!("no availability group \"{name}\" in the cluster")
}

/// Commands of a primary carry its epoch; only the current one may act.
fn check_epoch(config: &GroupConfig, epoch: u64, action: &str) -> Result<(), String> {
    let (name, current) = (&config.name, config.epoch);
    if epoch < current {
        return Err(format!(
            "epoch {epoch} is older than group \"{name}\"'s epoch {current}: the sender was \
             deposed and may not {action}"
        ));
    }
    if epoch > current {
        return Err(format!(
            "epoch {epoch} is newer than group \"{name}\"'s epoch {current}; only Promote \
             starts an epoch"
        ));
    }
    Ok(())
}

fn validate(config: &GroupConfig) -> Result<(), String> {
    let name = &config.name;
    if name.is_empty() {
        return Err("a group needs a name".into());
    }
    let mut seen = BTreeSet::new();
    for r in &config.replicas {
        if !seen.insert(r.name.to_ascii_lowercase()) {
            return Err(format!(
                "group \"{name}\" names replica \"{}\" twice",
                r.name
            ));
        }
    }
    if config.replica(&config.primary).is_none() {
        return Err(format!(
            "the primary \"{}\" of group \"{name}\" is not one of its replicas",
            config.primary
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::fixtures;

    /// ag1: r1 (primary), r2 (sync), r3 (async); databases app, shop; epoch 3.
    fn group() -> GroupConfig {
        let mut g = fixtures::group(&["r1", "r2", "r3"]);
        g.version = 5;
        g.epoch = 3;
        g.databases = vec!["app".into(), "shop".into()];
        g.replicas[2].availability_mode = AvailabilityMode::AsynchronousCommit;
        g
    }

    /// A state holding `group()` with r2 synchronized for app and a lease.
    fn state() -> ClusterState {
        let mut s = ClusterState::default();
        for c in [
            Command::PutGroup(Box::new(group())),
            renew("r1", 3),
            sync("app", "r2", true, 3),
        ] {
            assert_eq!(s.apply(&c), CommandResult::Ok, "{c:?}");
        }
        s
    }

    fn renew(holder: &str, epoch: u64) -> Command {
        Command::RenewLease {
            group: "ag1".into(),
            holder: holder.into(),
            epoch,
            duration_ms: 5000,
        }
    }

    fn sync(database: &str, replica: &str, synchronized: bool, epoch: u64) -> Command {
        Command::SetSynchronized {
            group: "ag1".into(),
            database: database.into(),
            replica: replica.into(),
            synchronized,
            epoch,
            version: 0,
        }
    }

    fn promote(new_primary: &str, new_epoch: u64) -> Command {
        Command::Promote {
            group: "ag1".into(),
            new_primary: new_primary.into(),
            new_epoch,
            require_synchronized: false,
            after_lease: false,
            at_us: 0,
            reason: String::new(),
        }
    }

    fn put(edit: impl FnOnce(&mut GroupConfig)) -> Command {
        let mut g = group();
        edit(&mut g);
        Command::PutGroup(Box::new(g))
    }

    #[test]
    fn every_rejection_leaves_the_state_unchanged_and_says_why() {
        let cases: Vec<(&str, Command, &str)> = vec![
            // Safety rule 2: a deposed primary cannot renew.
            ("stale epoch renewal", renew("r1", 2), "older than"),
            ("future epoch renewal", renew("r1", 4), "newer than"),
            ("renewal by a secondary", renew("r2", 3), "not the primary"),
            (
                "zero-length lease",
                Command::RenewLease {
                    group: "ag1".into(),
                    holder: "r1".into(),
                    epoch: 3,
                    duration_ms: 0,
                },
                "at least 1 ms",
            ),
            (
                "renewal in an unknown group",
                {
                    Command::RenewLease {
                        group: "nope".into(),
                        holder: "r1".into(),
                        epoch: 3,
                        duration_ms: 1,
                    }
                },
                "no availability group",
            ),
            // Safety rule 1: a deposed primary cannot shrink the synchronized set.
            (
                "stale epoch leave",
                sync("app", "r2", false, 2),
                "older than",
            ),
            (
                "stale epoch join",
                sync("shop", "r2", true, 2),
                "older than",
            ),
            (
                "unknown database",
                sync("other", "r2", true, 3),
                "not in group",
            ),
            (
                "unknown replica",
                sync("app", "r9", true, 3),
                "not in group",
            ),
            (
                "primary in its own set",
                sync("app", "r1", true, 3),
                "is the primary",
            ),
            (
                "async replica joins",
                sync("shop", "r3", true, 3),
                "ASYNCHRONOUS_COMMIT",
            ),
            (
                "promotion skipping an epoch",
                promote("r2", 5),
                "must name epoch 4",
            ),
            (
                "promotion at the current epoch",
                promote("r2", 3),
                "must name epoch 4",
            ),
            ("promotion of a stranger", promote("r9", 4), "not in group"),
            (
                "removal of an unknown group",
                Command::RemoveGroup("nope".into()),
                "no availability group",
            ),
            (
                "definition from another cluster",
                put(|g| {
                    g.cluster_id = "c2".into();
                    g.version = 6;
                }),
                "belongs to cluster",
            ),
            (
                "definition at an old epoch",
                put(|g| {
                    g.epoch = 2;
                    g.version = 6;
                }),
                "older than",
            ),
            (
                "definition changing the primary",
                put(|g| {
                    g.primary = "r2".into();
                    g.version = 6;
                }),
                "use Promote",
            ),
            (
                "definition at an old version",
                put(|g| {
                    g.version = 4;
                }),
                "higher version",
            ),
            (
                "same version, other content",
                put(|g| {
                    g.databases.pop();
                }),
                "higher version",
            ),
            (
                "primary not a replica",
                put(|g| {
                    g.primary = "r9".into();
                }),
                "not one of its replicas",
            ),
            (
                "duplicate replica",
                put(|g| {
                    g.replicas.push(fixtures::replica("R2"));
                }),
                "twice",
            ),
            ("nameless group", put(|g| g.name.clear()), "needs a name"),
        ];
        for (what, command, needle) in cases {
            let mut s = state();
            let before = s.clone();
            match s.apply(&command) {
                CommandResult::Rejected(why) => {
                    assert!(why.contains(needle), "{what}: {why:?} lacks {needle:?}")
                }
                CommandResult::Ok => panic!("{what}: accepted"),
            }
            assert_eq!(s, before, "{what}: state changed");
        }
    }

    #[test]
    fn accepted_commands_do_what_they_say() {
        let mut s = state();
        let g = s.group("AG1").unwrap();
        assert_eq!(
            g.lease,
            Some(Lease {
                holder: "r1".into(),
                epoch: 3,
                duration_ms: 5000
            })
        );
        assert_eq!(g.synchronized["app"], BTreeSet::from(["r2".to_string()]));

        // Names are case-insensitive; the stored names are the definition's.
        assert_eq!(s.apply(&sync("shop", "R2", true, 3)), CommandResult::Ok);
        assert_eq!(s.apply(&renew("R1", 3)), CommandResult::Ok);
        let g = s.group("ag1").unwrap();
        assert_eq!(g.synchronized["shop"], BTreeSet::from(["r2".to_string()]));
        assert_eq!(g.lease.as_ref().unwrap().holder, "r1");

        // Leaving twice is harmless; an empty set disappears.
        assert_eq!(s.apply(&sync("shop", "r2", false, 3)), CommandResult::Ok);
        assert_eq!(s.apply(&sync("shop", "r2", false, 3)), CommandResult::Ok);
        assert!(!s.group("ag1").unwrap().synchronized.contains_key("shop"));

        // The same definition again is an idempotent retry.
        assert_eq!(
            s.apply(&Command::PutGroup(Box::new(group()))),
            CommandResult::Ok
        );
    }

    #[test]
    fn promotion_moves_the_primary_and_deposes_the_old_one() {
        let mut s = state();
        assert_eq!(s.apply(&promote("R2", 4)), CommandResult::Ok);
        let g = s.group("ag1").unwrap();
        assert_eq!(g.config.primary, "r2");
        assert_eq!(g.config.epoch, 4);
        assert_eq!(g.config.version, 6, "replicas must take the new definition");
        assert_eq!(g.lease, None);
        assert!(g.synchronized.is_empty());

        // Safety rule 2: the old primary can no longer renew or change the set.
        for stale in [renew("r1", 3), sync("app", "r2", false, 3)] {
            assert!(matches!(s.apply(&stale), CommandResult::Rejected(_)));
        }
        // The new one can.
        assert_eq!(s.apply(&renew("r2", 4)), CommandResult::Ok);
        assert_eq!(s.apply(&sync("app", "r1", true, 4)), CommandResult::Ok);
        // A second promotion to the same epoch loses the race.
        assert!(matches!(
            s.apply(&promote("r3", 4)),
            CommandResult::Rejected(_)
        ));
    }

    #[test]
    fn a_new_definition_prunes_the_synchronized_set() {
        let mut s = state();
        assert_eq!(s.apply(&sync("shop", "r2", true, 3)), CommandResult::Ok);
        let edit = put(|g| {
            g.version = 6;
            g.databases.retain(|d| d != "shop");
        });
        assert_eq!(s.apply(&edit), CommandResult::Ok);
        let g = s.group("ag1").unwrap();
        assert!(!g.synchronized.contains_key("shop"));
        assert!(g.synchronized.contains_key("app"));
        assert!(g.lease.is_some(), "the lease survives a definition change");

        let edit = put(|g| {
            g.version = 7;
            g.databases.retain(|d| d != "shop");
            g.replicas.retain(|r| r.name != "r2");
        });
        assert_eq!(s.apply(&edit), CommandResult::Ok);
        assert!(s.group("ag1").unwrap().synchronized.is_empty());

        assert_eq!(
            s.apply(&Command::RemoveGroup("AG1".into())),
            CommandResult::Ok
        );
        assert!(s.groups.is_empty());
    }

    #[test]
    fn a_backup_hold_is_kept_only_for_a_database_of_the_group() {
        let hold = |database: &str, lsn| Command::HoldLogForBackups {
            group: "ag1".into(),
            database: database.into(),
            lsn,
        };
        let mut s = state();
        let before = s.clone();
        assert!(matches!(
            s.apply(&hold("other", 10)),
            CommandResult::Rejected(why) if why.contains("not in availability group")
        ));
        assert_eq!(s, before, "a refused hold changes nothing");
        for c in [hold("app", 10), hold("shop", 20), hold("shop", 30)] {
            assert_eq!(s.apply(&c), CommandResult::Ok, "{c:?}");
        }
        let holds = &s.group("ag1").unwrap().backup_holds;
        assert_eq!(holds.get("shop"), Some(&30), "the last backup's hold wins");
        let edit = put(|g| {
            g.version = 6;
            g.databases.retain(|d| d != "shop");
        });
        assert_eq!(s.apply(&edit), CommandResult::Ok);
        let holds = &s.group("ag1").unwrap().backup_holds;
        assert_eq!(
            holds.keys().collect::<Vec<_>>(),
            ["app"],
            "a database that left the group keeps no hold"
        );
    }

    #[test]
    fn roles_are_made_changed_granted_and_dropped_by_the_rules() {
        let mut s = ClusterState::default();
        let role = |name: &str| RoleRecord {
            name: name.into(),
            login: true,
            verifier: Some("SCRAM-SHA-256$4096:c2FsdA==$a:b".into()),
            privileges: Default::default(),
            connection_limit: None,
        };
        let rejected = |r: CommandResult, what: &str| {
            assert!(
                matches!(&r, CommandResult::Rejected(why) if why.contains(what)),
                "{r:?}"
            );
        };
        assert_eq!(s.apply(&Command::CreateRole(role("u"))), CommandResult::Ok);
        rejected(s.apply(&Command::CreateRole(role("u"))), "already exists");
        rejected(s.apply(&Command::CreateRole(role("AvailDB"))), "reserved");
        let grant = |granted| Command::SetPrivileges {
            role: "u".into(),
            privileges: vec![Privilege::Read("app".into()), Privilege::Admin],
            granted,
        };
        assert_eq!(s.apply(&grant(true)), CommandResult::Ok);
        assert_eq!(s.role("u").unwrap().privileges.len(), 2);
        assert_eq!(s.apply(&grant(false)), CommandResult::Ok);
        assert!(s.role("u").unwrap().privileges.is_empty());
        let alter = Command::AlterRole {
            name: "u".into(),
            login: Some(false),
            verifier: None,
            clear_password: true,
            connection_limit: Some(Some(3)),
        };
        assert_eq!(s.apply(&alter), CommandResult::Ok);
        assert!(!s.role("u").unwrap().login);
        assert_eq!(s.role("u").unwrap().connection_limit, Some(3));
        assert_eq!(s.role("u").unwrap().verifier, None);
        assert_eq!(s.apply(&Command::DropRole("u".into())), CommandResult::Ok);
        let before = s.clone();
        rejected(s.apply(&Command::DropRole("u".into())), "does not exist");
        rejected(s.apply(&grant(true)), "does not exist");
        rejected(s.apply(&alter), "does not exist");
        assert_eq!(s, before);
    }

    #[test]
    fn a_state_from_before_roles_reads_with_no_roles() {
        let mut json = serde_json::to_value(state()).unwrap();
        json.as_object_mut().unwrap().remove("roles");
        let read: ClusterState = serde_json::from_value(json).unwrap();
        assert!(read.roles.is_empty());
    }

    #[test]
    fn the_state_round_trips_through_json() {
        let s = state();
        let bytes = serde_json::to_vec(&s).unwrap();
        assert_eq!(serde_json::from_slice::<ClusterState>(&bytes).unwrap(), s);
    }

    #[test]
    fn a_replica_joins_the_synchronized_set_only_under_the_current_definition_version() {
        // Issue 9 cause 4: an addition still in flight from before a
        // definition change must not re-add a replica the restarted primary
        // took out of the set.
        let mut s = state();
        let versioned = |version, synchronized| Command::SetSynchronized {
            group: "ag1".into(),
            database: "shop".into(),
            replica: "r2".into(),
            synchronized,
            epoch: 3,
            version,
        };
        assert!(
            matches!(s.apply(&versioned(4, true)), CommandResult::Rejected(why) if why.contains("version 5"))
        );
        assert_eq!(s.apply(&versioned(5, true)), CommandResult::Ok);
        assert!(s.group("ag1").unwrap().synchronized["shop"].contains("r2"));
        // Leaving is always allowed in the epoch: it only makes commits wait less
        // after the cluster knows.
        assert_eq!(s.apply(&versioned(4, false)), CommandResult::Ok);
        assert!(!s.group("ag1").unwrap().synchronized.contains_key("shop"));
    }

    #[test]
    fn a_new_primary_knows_its_predecessor_stopped_only_after_the_lease_or_its_step_down() {
        let mut s = state();
        assert!(
            s.group("ag1").unwrap().predecessor_stopped(),
            "no predecessor"
        );
        assert_eq!(s.apply(&promote("r2", 4)), CommandResult::Ok);
        let record = s.group("ag1").unwrap();
        assert_eq!(record.previous, Some(("r1".into(), 3)));
        assert!(!record.predecessor_stopped(), "r1's lease may still run");
        let step_down = |holder: &str, epoch| Command::StepDown {
            group: "ag1".into(),
            holder: holder.into(),
            epoch,
        };
        assert!(matches!(
            s.apply(&step_down("r3", 3)),
            CommandResult::Rejected(_)
        ));
        assert!(matches!(
            s.apply(&step_down("r1", 2)),
            CommandResult::Rejected(_)
        ));
        assert_eq!(s.apply(&step_down("r1", 3)), CommandResult::Ok);
        assert!(s.group("ag1").unwrap().predecessor_stopped());
        // The leader's decider promotes only after the lease ran out.
        let after_lease = Command::Promote {
            group: "ag1".into(),
            new_primary: "r1".into(),
            new_epoch: 5,
            require_synchronized: false,
            after_lease: true,
            at_us: 0,
            reason: String::new(),
        };
        assert_eq!(s.apply(&after_lease), CommandResult::Ok);
        assert!(s.group("ag1").unwrap().predecessor_stopped());
    }

    #[test]
    fn each_promotion_enters_the_bounded_history_with_its_kind_and_a_forced_ones_loss_comes_later()
    {
        let mut s = state();
        let promote = |to: &str, epoch, require_synchronized, after_lease| Command::Promote {
            group: "ag1".into(),
            new_primary: to.into(),
            new_epoch: epoch,
            require_synchronized,
            after_lease,
            at_us: 1_000 * epoch as i64,
            reason: format!("test {epoch}"),
        };
        assert_eq!(s.apply(&sync("shop", "r2", true, 3)), CommandResult::Ok);
        assert_eq!(s.apply(&promote("r2", 4, true, false)), CommandResult::Ok);
        for db in ["app", "shop"] {
            assert_eq!(s.apply(&sync(db, "r1", true, 4)), CommandResult::Ok);
        }
        assert_eq!(s.apply(&promote("r1", 5, true, true)), CommandResult::Ok);
        assert_eq!(s.apply(&promote("r2", 6, false, false)), CommandResult::Ok);
        let history = &s.group("ag1").unwrap().history;
        let got: Vec<_> = history
            .iter()
            .map(|e| {
                (
                    e.epoch,
                    e.kind,
                    e.from.as_str(),
                    e.to.as_str(),
                    e.loss_known,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (4, FailoverKind::Planned, "r1", "r2", true),
                (5, FailoverKind::Automatic, "r2", "r1", true),
                (6, FailoverKind::Forced, "r1", "r2", false),
            ]
        );
        assert_eq!(
            (history[2].at_us, history[2].reason.as_str()),
            (6_000, "test 6")
        );
        let loss = |epoch| Command::RecordFailoverLoss {
            group: "ag1".into(),
            epoch,
            lost: vec![("app".into(), 10, 20)],
            loss_known: true,
        };
        assert!(
            matches!(s.apply(&loss(9)), CommandResult::Rejected(why) if why.contains("no failover at epoch 9"))
        );
        assert_eq!(s.apply(&loss(6)), CommandResult::Ok);
        let forced = &s.group("ag1").unwrap().history[2];
        assert!(forced.loss_known && forced.lost == vec![("app".to_string(), 10, 20)]);
        // Only the last HISTORY_LEN stay.
        for epoch in 7..(7 + HISTORY_LEN as u64) {
            let to = if epoch % 2 == 0 { "r2" } else { "r1" };
            assert_eq!(
                s.apply(&promote(to, epoch, false, false)),
                CommandResult::Ok
            );
        }
        let history = &s.group("ag1").unwrap().history;
        assert_eq!(history.len(), HISTORY_LEN);
        assert_eq!(history.front().unwrap().epoch, 7);
        // An old state (no history field) still loads.
        let mut json = serde_json::to_value(state()).unwrap();
        json["groups"]["ag1"]
            .as_object_mut()
            .unwrap()
            .remove("history");
        let old: ClusterState = serde_json::from_value(json).unwrap();
        assert!(old.group("ag1").unwrap().history.is_empty());
    }

    #[test]
    fn partners_need_a_named_cluster_another_name_and_no_links_to_be_removed() {
        let mut s = state();
        let partner = |name: &str| {
            Command::PutPartner(Partner {
                name: name.into(),
                endpoint_urls: vec!["tcp://10.0.0.2:7001".into()],
            })
        };
        assert!(
            matches!(s.apply(&partner("B")), CommandResult::Rejected(why) if why.contains("SERVER_NAME"))
        );
        assert_eq!(
            s.apply(&Command::SetServerName("A".into())),
            CommandResult::Ok
        );
        assert_eq!(
            s.apply(&Command::SetServerName("a".into())),
            CommandResult::Ok,
            "the same name again"
        );
        assert!(matches!(
            s.apply(&Command::SetServerName("Z".into())),
            CommandResult::Rejected(_)
        ));
        assert!(
            matches!(s.apply(&partner("a")), CommandResult::Rejected(why) if why.contains("own name"))
        );
        assert_eq!(s.apply(&partner("B")), CommandResult::Ok);
        let mut g = group();
        g.version = 6;
        g.database_options.insert(
            "app".into(),
            crate::group::DatabaseOptions {
                geo_secondaries: vec![crate::group::GeoPartner {
                    server: "b".into(),
                    database: "app".into(),
                    allow_connections: crate::group::SecondaryConnections::All,
                }],
                ..Default::default()
            },
        );
        assert_eq!(s.apply(&Command::PutGroup(Box::new(g))), CommandResult::Ok);
        assert!(
            matches!(s.apply(&Command::RemovePartner("B".into())), CommandResult::Rejected(why) if why.contains("geo-replicated"))
        );
        assert!(matches!(
            s.apply(&Command::RemovePartner("C".into())),
            CommandResult::Rejected(_)
        ));
    }
}
