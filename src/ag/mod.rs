//! Availability groups on this node: their definitions, this node's role in
//! each, and the statements that change them.
//!
//! # Lifecycle (without the cluster manager)
//! * `CREATE AVAILABILITY GROUP` runs on the node that becomes primary; its
//!   `--name` must be one of the replicas. The definition is stored in
//!   `DATA_DIR/ag/<group>.json` and the primary starts streaming to every
//!   secondary's `ENDPOINT_URL`.
//! * `ALTER AVAILABILITY GROUP g JOIN` on a secondary node records that the
//!   node accepts the group. The first primary that connects with the
//!   group's name, this replica's name and a cluster id (learned then, and
//!   required ever after) sends the definition; the group's databases
//!   become read-only secondaries here, created empty when missing and
//!   seeded by redo of a full image.
//! * Any change (`ADD/REMOVE DATABASE`, `ADD/REMOVE/MODIFY REPLICA`, `SET`)
//!   bumps the definition's version, is stored, and restarts the group's
//!   replication links so every secondary receives it.
//! * `FORCE_FAILOVER_ALLOW_DATA_LOSS` on a secondary makes it primary at
//!   the next epoch (after redoing what it hardened), with data movement to
//!   every secondary suspended until an operator resumes each database. A
//!   former primary meeting the newer epoch steps down; if its log holds
//!   records the new primary never received, the lost range is reported in
//!   `sys.availability_groups` and its database restarts from a full image.
//! * Automatic and planned failover need the quorum cluster manager
//!   (`FAILOVER` answers 0A000 until it is wired in); [`failover`] holds
//!   the decision rules it will apply.

pub mod clustered;
pub mod failover;
pub mod store;
pub mod views;

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::cluster::{Cluster, Command as ClusterCommand, CommandResult, NodeInfo};
use crate::engine::{Engine, Error, Fence, Result};
use crate::replication::primary::{PrimaryGroup, StartOptions};
use crate::replication::secondary::{Admission, SecondaryGroup};
use crate::sql::ag::{self as ddl, AgStatement};

use crate::group::{
    AvailabilityMode, ClusterType, FailoverMode, FailoverRecord, GroupConfig, ListenerConfig,
    ReplicaConfig, SecondaryConnections, DEFAULT_SESSION_TIMEOUT_S,
};
use store::{ConfigStore, Membership};

/// This node's part in one group.
enum Part {
    /// Joined; waiting for a primary to connect.
    Joined { cluster_id: Option<String> },
    /// This node is the primary.
    Primary(Arc<PrimaryGroup>),
    /// This node is a secondary.
    Secondary(Arc<SecondaryGroup>),
}

/// The availability groups of this node.
pub struct Manager {
    me: std::sync::Weak<Manager>,
    node: String,
    /// The quorum cluster manager, when this node takes part in one.
    cluster: Option<Arc<Cluster>>,
    engine: Arc<Engine>,
    store: ConfigStore,
    groups: Mutex<HashMap<String, Part>>,
    /// Held while this node changes role in a group (failover, following
    /// the cluster), so two changes never interleave.
    transitions: tokio::sync::Mutex<()>,
    /// Latest failover record per group, as losses become known.
    failovers: Mutex<HashMap<String, Option<FailoverRecord>>>,
    /// A witness node votes in the cluster and hosts no replica.
    witness: bool,
}

fn key(name: &str) -> String {
    name.to_ascii_lowercase()
}

impl Manager {
    /// Loads this node's groups and resumes its role in each.
    pub fn start(
        node: &str,
        engine: Arc<Engine>,
        data_dir: &Path,
        cluster: Option<Arc<Cluster>>,
        witness: bool,
    ) -> Result<Arc<Manager>> {
        let manager = Arc::new_cyclic(|me| Manager {
            me: me.clone(),
            node: node.to_string(),
            engine,
            cluster,
            store: ConfigStore::new(data_dir),
            groups: Mutex::new(HashMap::new()),
            failovers: Mutex::new(HashMap::new()),
            transitions: tokio::sync::Mutex::new(()),
            witness,
        });
        for membership in manager.store.load_all()? {
            let name = key(membership.name());
            let part = match membership {
                Membership::Joined { cluster_id, .. } => Part::Joined { cluster_id },
                Membership::Defined(config) => manager.run(*config)?,
            };
            manager.lock().insert(name, part);
        }
        Ok(manager)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Part>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This node's replica name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Starts this node's role in a defined group.
    fn run(&self, config: GroupConfig) -> Result<Part> {
        self.run_with(config, false)
    }

    /// Starts this node's role; a primary may start with data movement
    /// of every database suspended (after a forced failover). A primary
    /// keeps the suspensions it recorded (restart, definition change); a
    /// secondary drops them (the next primary decides its own).
    fn run_with(&self, config: GroupConfig, suspend_all: bool) -> Result<Part> {
        let mut suspended = self.store.load_suspended(&config.name)?;
        if config.primary.eq_ignore_ascii_case(&self.node) {
            if suspend_all {
                suspended.extend(config.databases.iter().cloned());
            }
            suspended.retain(|d| config.has_database(d));
            self.store.save_suspended(&config.name, &suspended)?;
            let me = self.me.clone();
            let group = config.name.clone();
            let clustered = self.clustered(&config);
            let cleared = tokio::sync::watch::channel(false).0;
            let options = StartOptions {
                suspended,
                on_divergence: Some(Arc::new(move |replica: &str, database: &str, range| {
                    if let Some(manager) = me.upgrade() {
                        manager.record_rejoin(&group, replica, database, range);
                    }
                })),
                leased: clustered.is_some(),
                arbiter: clustered.clone().map(|cluster| {
                    Arc::new(clustered::ClusterArbiter {
                        cluster,
                        group: config.name.clone(),
                        epoch: config.epoch,
                        version: config.version,
                        cleared: cleared.subscribe(),
                    }) as Arc<dyn crate::replication::primary::SyncArbiter>
                }),
            };
            let (name, epoch, version) = (config.name.clone(), config.epoch, config.version);
            let policy = failover::Policy {
                failure_condition_level: config.failure_condition_level,
                health_check_timeout_ms: config.health_check_timeout_ms,
            };
            let databases = self.open_databases(&config);
            let primary = PrimaryGroup::start(config, &self.node, &self.engine, options)?;
            if let Some(cluster) = clustered {
                clustered::spawn_lease(
                    cluster,
                    name,
                    self.node.clone(),
                    epoch,
                    version,
                    policy,
                    databases,
                    cleared,
                    primary.stopped(),
                );
            }
            Ok(Part::Primary(primary))
        } else {
            if !suspended.is_empty() {
                self.store
                    .save_suspended(&config.name, &Default::default())?;
            }
            let mut dbs = Vec::new();
            for name in &config.databases {
                dbs.push(self.ensure_database(name)?);
            }
            Ok(Part::Secondary(SecondaryGroup::start(config, dbs)))
        }
    }

    /// Makes this node's copies of the group's databases writable at the
    /// new epoch and records the definition and the failover.
    async fn take_office(&self, config: &GroupConfig) -> Result<()> {
        for name in &config.databases {
            self.engine
                .database(name)?
                .promote(&config.name, config.epoch)
                .await?;
        }
        self.store
            .save(&Membership::Defined(Box::new(config.clone())))?;
        self.failovers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key(&config.name), config.last_failover.clone());
        Ok(())
    }

    /// The group's databases that exist on this node.
    fn open_databases(&self, config: &GroupConfig) -> Vec<Arc<crate::engine::Database>> {
        config
            .databases
            .iter()
            .filter_map(|d| self.engine.database(d).ok())
            .collect()
    }

    fn ensure_database(&self, name: &str) -> Result<Arc<crate::engine::Database>> {
        match self.engine.database(name) {
            Ok(db) => Ok(db),
            Err(Error::NoSuchDatabase(_)) => {
                self.engine.create_database(name)?;
                self.engine.database(name)
            }
            Err(e) => Err(e),
        }
    }

    fn stop(part: &Part) {
        match part {
            Part::Primary(p) => p.stop(),
            Part::Secondary(s) => s.stop(),
            Part::Joined { .. } => {}
        }
    }

    /// Runs one availability-group statement; returns its command tag.
    pub async fn execute(self: &Arc<Self>, statement: AgStatement) -> Result<String> {
        let this = self.clone();
        if self.witness
            && matches!(
                statement,
                AgStatement::CreateGroup(_)
                    | AgStatement::Join { .. }
                    | AgStatement::JoinDatabase { .. }
            )
        {
            return Err(Error::sql(
                "55000",
                "this node is a witness: it votes in the cluster and hosts no replica",
            )
            .with_hint("run the statement on a replica host (a node started without --witness)"));
        }
        // Statements touch files and start tasks; none blocks for long.
        match statement {
            AgStatement::CreateGroup(spec) => {
                let config = this.create(spec)?;
                this.enter_cluster(config).await?;
                Ok("CREATE AVAILABILITY GROUP".into())
            }
            AgStatement::Join { group, .. } => this.join(&group).map(|_| "ALTER AVAILABILITY GROUP".into()),
            AgStatement::DropGroup { group } => this.drop_group(&group).map(|_| "DROP AVAILABILITY GROUP".into()),
            AgStatement::AddDatabases { group, databases } => this.change(&group, |c, m| {
                for d in databases {
                    m.engine.database(&d)?;
                    if !c.has_database(&d) {
                        c.databases.push(d);
                    }
                }
                Ok(())
            }).await,
            AgStatement::RemoveDatabase { group, database } => this.change(&group, |c, _| {
                let before = c.databases.len();
                c.databases.retain(|d| d != &database);
                if c.databases.len() == before {
                    return Err(Error::sql(
                        "42704",
                        format!("database \"{database}\" is not in availability group \"{}\"", c.name),
                    ));
                }
                Ok(())
            }).await,
            AgStatement::AddReplica { group, replica } => this.change(&group, |c, _| {
                if c.replica(&replica.name).is_some() {
                    return Err(Error::sql("42710", format!("replica \"{}\" is already in the group", replica.name)));
                }
                if c.replicas.len() >= ddl::MAX_REPLICAS {
                    return Err(Error::sql("54000", "a group has at most 9 replicas (1 primary and 8 secondaries)"));
                }
                c.replicas.push(replica_config(&replica.name, &replica.options, None)?);
                Ok(())
            }).await,
            AgStatement::RemoveReplica { group, replica } => this.change(&group, |c, _| {
                if c.primary.eq_ignore_ascii_case(&replica) {
                    return Err(Error::sql("55000", "the primary replica cannot be removed").with_hint("fail over first"));
                }
                let before = c.replicas.len();
                c.replicas.retain(|r| !r.name.eq_ignore_ascii_case(&replica));
                if c.replicas.len() == before {
                    return Err(no_replica(&replica, &c.name));
                }
                Ok(())
            }).await,
            AgStatement::ModifyReplica { group, replica, options } => this.change(&group, |c, _| {
                let group_name = c.name.clone();
                let current = c.replica_mut(&replica).ok_or_else(|| no_replica(&replica, &group_name))?;
                *current = replica_config(&current.name.clone(), &options, Some(current))?;
                Ok(())
            }).await,
            AgStatement::SetGroupOptions { group, options } => this.change(&group, |c, _| {
                if let Some(n) = options.required_synchronized_secondaries_to_commit {
                    c.required_synchronized_secondaries = n;
                }
                if let Some(level) = options.failure_condition_level {
                    c.failure_condition_level = level;
                }
                if let Some(ms) = options.health_check_timeout_ms {
                    c.health_check_timeout_ms = ms.into();
                }
                Ok(())
            }).await,
            AgStatement::SuspendDatabase { database } => this.set_suspended(&database, true).await.map(|_| "ALTER DATABASE".into()),
            AgStatement::ResumeDatabase { database } => this.set_suspended(&database, false).await.map(|_| "ALTER DATABASE".into()),
            AgStatement::JoinDatabase { database, group } => {
                let config = this.defined(&group)?;
                if !config.has_database(&database) {
                    return Err(Error::sql(
                        "42704",
                        format!("database \"{database}\" is not in availability group \"{group}\""),
                    )
                    .with_hint(format!("on the primary: ALTER AVAILABILITY GROUP {group} ADD DATABASE {database}")));
                }
                // Seeding is automatic: the database joined when the
                // primary's definition arrived.
                Ok("ALTER DATABASE".into())
            }
            AgStatement::ForceFailover { group } => this
                .force_failover(&group)
                .await
                .map(|_| "ALTER AVAILABILITY GROUP".into()),
            AgStatement::Failover { group } => this
                .planned_failover(&group)
                .await
                .map(|_| "ALTER AVAILABILITY GROUP".into()),
            AgStatement::AddListener { group, listener } => this.change(&group, |c, _| {
                if let Some(existing) = &c.listener {
                    return Err(Error::sql(
                        "42710",
                        format!("availability group \"{}\" already has listener '{}'", c.name, existing.name),
                    )
                    .with_hint("a group has one listener in this version"));
                }
                c.listener = Some(listener_config(&listener)?);
                Ok(())
            }).await,
            AgStatement::CreateCluster => this.create_cluster().await.map(|_| "CREATE CLUSTER".into()),
            AgStatement::AddClusterNode {
                name,
                endpoint_url,
                voter,
            } => this
                .add_cluster_node(&name, &endpoint_url, voter)
                .await
                .map(|_| "ALTER CLUSTER".into()),
            AgStatement::RemoveClusterNode { name } => this
                .remove_cluster_node(&name)
                .await
                .map(|_| "ALTER CLUSTER".into()),
            AgStatement::RemoveDatabaseFromHadr { database } => Err(Error::sql(
                "0A000",
                format!("SET HADR OFF is not available in this version; remove \"{database}\" on the primary with ALTER AVAILABILITY GROUP … REMOVE DATABASE"),
            )),
        }
    }

    /// This node's cluster member, or why it has none.
    fn cluster_member(&self) -> Result<&Arc<Cluster>> {
        self.cluster.as_ref().ok_or_else(|| {
            Error::sql(
                "55000",
                "this node takes no part in a cluster: it has no replication endpoint",
            )
            .with_hint(
                "restart it with --endpoint HOST:PORT (and --name) to make it a cluster node",
            )
        })
    }

    /// `CREATE CLUSTER`: a cluster whose one voter is this node; others
    /// join with `ALTER CLUSTER ADD NODE`.
    async fn create_cluster(&self) -> Result<()> {
        let cluster = self.cluster_member()?;
        let m = cluster.metrics();
        if !m.voters.is_empty() {
            return Err(Error::sql(
                "42710",
                format!(
                    "this node already belongs to a cluster of {} voters",
                    m.voters.len()
                ),
            )
            .with_hint("see availdb cluster status; a node leaves with availdb cluster leave"));
        }
        cluster
            .initialize(std::collections::BTreeMap::from([(m.id, m.local.clone())]))
            .await
            .map_err(|e| Error::sql("55000", e.to_string()))?;
        // Return once this node leads its cluster, so the next statement
        // (ADD NODE) finds it formed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let m = cluster.metrics();
            if m.leader == Some(m.id) && m.voters.contains_key(&m.id) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::sql(
                    "55000",
                    "the cluster was initialized but this node did not become its leader within 10 s",
                )
                .with_hint("see availdb cluster status; the node's log says why"));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// `ALTER CLUSTER ADD NODE`: the named node, running and reachable at
    /// `endpoint_url`, becomes a voter (a witness, or a future replica host).
    async fn add_cluster_node(&self, name: &str, endpoint_url: &str, voter: bool) -> Result<()> {
        let cluster = self.cluster_member()?;
        if cluster.metrics().voters.is_empty() {
            return Err(Error::sql("55000", "this node is in no cluster yet")
                .with_hint("run CREATE CLUSTER here first (availdb cluster init)"));
        }
        let endpoint = resolve_endpoint(endpoint_url).await?;
        let info = NodeInfo {
            name: name.to_string(),
            endpoint,
        };
        let id = crate::cluster::node_id(name);
        let change = if voter {
            crate::cluster::MemberChange::Add(id, info)
        } else {
            crate::cluster::MemberChange::AddLearner(id, info)
        };
        cluster
            .change_members(change)
            .await
            .map_err(|e| {
                Error::sql("55000", format!("cannot add node \"{name}\" to the cluster: {e}"))
                    .with_hint(format!("check that the node runs with --name {name} and that its endpoint {endpoint_url} is reachable from the cluster's leader"))
            })
    }

    /// `ALTER CLUSTER REMOVE NODE`: refused while the node hosts a replica
    /// of a group the cluster runs (its vote and its replica go together).
    async fn remove_cluster_node(&self, name: &str) -> Result<()> {
        let cluster = self.cluster_member()?;
        let m = cluster.metrics();
        let id = crate::cluster::node_id(name);
        if !m.voters.contains_key(&id) && !m.learners.contains_key(&id) {
            return Err(Error::sql(
                "42704",
                format!("node \"{name}\" is not a member of this node's cluster"),
            )
            .with_hint("see availdb cluster status for the members"));
        }
        for record in cluster.state().groups.values() {
            if record.config.replica(name).is_some() {
                return Err(Error::sql(
                    "55000",
                    format!("node \"{name}\" hosts replica \"{name}\" of availability group \"{}\"", record.config.name),
                )
                .with_hint(format!("remove the replica first: ALTER AVAILABILITY GROUP {} REMOVE REPLICA ON '{name}'", record.config.name)));
            }
        }
        cluster
            .change_members(crate::cluster::MemberChange::Remove(id))
            .await
            .map_err(|e| {
                Error::sql(
                    "55000",
                    format!("cannot remove node \"{name}\" from the cluster: {e}"),
                )
            })
    }

    /// FORCE_FAILOVER_ALLOW_DATA_LOSS, run on a secondary: it redoes what it
    /// has hardened, becomes primary at the next epoch, and starts with data
    /// movement to every secondary suspended (as SQL Server does) until an
    /// operator resumes each database. The former primary, when it meets
    /// the new epoch, becomes a secondary; the part of its log this node
    /// never received is reported lost, and its database restarts from a
    /// full image of this one.
    /// This node's secondary part in `group`, which a failover would
    /// promote; a clear error when this node cannot be the target.
    fn failover_target(&self, group: &str) -> Result<Arc<SecondaryGroup>> {
        match self.lock().get(&key(group)) {
            Some(Part::Secondary(s)) => Ok(s.clone()),
            Some(Part::Primary(_)) => Err(Error::sql(
                "55000",
                format!("this replica is already the primary of availability group \"{group}\""),
            )),
            Some(Part::Joined { .. }) => Err(Error::sql(
                "55000",
                format!(
                    "this replica has joined availability group \"{group}\" but has no data yet"
                ),
            )),
            None => Err(no_group(group)),
        }
    }

    async fn force_failover(&self, group: &str) -> Result<()> {
        let secondary = self.failover_target(group)?;
        let _transition = self.transitions.lock().await;
        if let Some(cluster) = self.clustered(&secondary.config()) {
            // In a cluster the new epoch is the cluster's decision (so no
            // other replica can be named for it), without the lease wait.
            let current = secondary.config();
            let promote = ClusterCommand::Promote {
                group: current.name.clone(),
                new_primary: self.node.clone(),
                new_epoch: current.epoch + 1,
                require_synchronized: false,
                after_lease: false,
            };
            match propose_retrying(&cluster, promote, std::time::Duration::from_secs(10)).await {
                Ok(CommandResult::Ok) => {}
                Ok(CommandResult::Rejected(reason)) => {
                    return Err(Error::sql("55000", format!("the cluster refused the failover: {reason}")))
                }
                Err(e) => {
                    return Err(Error::sql("55000", format!("cannot fail over without a cluster majority: {e}"))
                        .with_hint("bring a majority of the group's nodes back, or use a CLUSTER_TYPE = NONE group"))
                }
            }
        }
        secondary
            .drain_and_stop(std::time::Duration::from_secs(60))
            .await
            .map_err(|e| Error::sql("55000", format!("cannot fail over: {e}")))?;
        let old = secondary.config();
        let mut config = old.clone();
        config.primary = self.node.clone();
        config.epoch += 1;
        config.version += 1;
        config.last_failover = Some(FailoverRecord {
            at_us: now_us(),
            reason: "FORCE_FAILOVER_ALLOW_DATA_LOSS".into(),
            from: old.primary.clone(),
            to: self.node.clone(),
            epoch: config.epoch,
            lost: Vec::new(),
            checked: Vec::new(),
            loss_known: false,
        });
        self.take_office(&config).await?;
        tracing::warn!(
            group,
            from = %old.primary,
            epoch = config.epoch,
            "forced failover: this replica is now the primary; data movement to the secondaries is suspended until resumed"
        );
        let databases = self.open_databases(&config);
        let part = self.run_with(config, true)?;
        self.lock().insert(key(group), part);
        wait_for_lease(&databases).await
    }

    /// `FAILOVER` on a synchronized secondary: the cluster names this
    /// replica primary at the next epoch; it has hardened every commit the
    /// old primary acknowledged (it is in the synchronized set of every
    /// database), so nothing is lost. The old primary steps down as soon as
    /// it sees the new epoch and cannot acknowledge another commit: its
    /// lease is no longer renewed, and this replica stopped hardening for it.
    async fn planned_failover(&self, group: &str) -> Result<()> {
        let config = self.failover_target(group)?.config();
        let Some(cluster) = self.clustered(&config) else {
            return Err(Error::sql(
                "0A000",
                "a CLUSTER_TYPE = NONE group has no planned failover",
            )
            .with_hint("use ALTER AVAILABILITY GROUP … FORCE_FAILOVER_ALLOW_DATA_LOSS"));
        };
        let state = cluster.state();
        let record = state.group(&config.name).ok_or_else(|| no_group(group))?;
        for db in &config.databases {
            let synchronized = record
                .synchronized
                .get(db)
                .is_some_and(|set| set.iter().any(|r| r.eq_ignore_ascii_case(&self.node)));
            if !synchronized {
                return Err(Error::sql(
                    "55000",
                    format!(
                        "planned failover refused: this replica is not SYNCHRONIZED for database \"{db}\", so it may lack acknowledged commits"
                    ),
                )
                .with_hint("wait until sys.dm_hadr_database_replica_states shows SYNCHRONIZED, or use FORCE_FAILOVER_ALLOW_DATA_LOSS"));
            }
        }
        let promote = ClusterCommand::Promote {
            group: record.config.name.clone(),
            new_primary: self.node.clone(),
            new_epoch: record.config.epoch + 1,
            require_synchronized: true,
            after_lease: false,
        };
        match propose_retrying(&cluster, promote, std::time::Duration::from_secs(10)).await {
            Ok(CommandResult::Ok) => {}
            Ok(CommandResult::Rejected(reason)) => {
                return Err(Error::sql(
                    "55000",
                    format!("the cluster refused the failover: {reason}"),
                ))
            }
            Err(e) => {
                return Err(Error::sql(
                    "55000",
                    format!("the cluster did not answer: {e}"),
                ))
            }
        }
        // The follower task promotes this replica; wait for it and the lease.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if matches!(self.lock().get(&key(group)), Some(Part::Primary(_))) {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::sql("55000", "the cluster named this replica primary, but taking over did not finish in 30 s"));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let databases = self.open_databases(&config);
        wait_for_lease(&databases).await
    }

    /// A replica connected to this primary: if the group's last failover
    /// came from it, its log now tells what that failover lost.
    fn record_rejoin(&self, group: &str, replica: &str, database: &str, range: Option<(u64, u64)>) {
        let config = match self.lock().get(&key(group)) {
            Some(Part::Primary(p)) => p.config().clone(),
            _ => return,
        };
        let mut failovers = self.failovers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(record) = failovers
            .entry(key(group))
            .or_insert_with(|| config.last_failover.clone())
            .as_mut()
        else {
            return;
        };
        if !record.from.eq_ignore_ascii_case(replica)
            || record.checked.iter().any(|d| d == database)
        {
            return;
        }
        if let Some((start, end)) = range {
            tracing::warn!(
                group,
                database,
                start,
                end,
                "the forced failover lost LSN {start}..{end} of {database}"
            );
            record.lost.push((database.to_string(), start, end));
        }
        record.checked.push(database.to_string());
        record.loss_known = config.databases.iter().all(|d| record.checked.contains(d));
        let mut saved = config;
        saved.last_failover = Some(record.clone());
        if let Err(e) = self.store.save(&Membership::Defined(Box::new(saved))) {
            tracing::error!(group, "cannot save the failover record: {e}");
        }
    }

    /// The group's last failover as currently known (losses included).
    fn last_failover(&self, config: &GroupConfig) -> Option<FailoverRecord> {
        self.failovers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key(&config.name))
            .cloned()
            .unwrap_or_else(|| config.last_failover.clone())
    }

    /// Forms the cluster from the group's replicas (if this node's cluster
    /// is not formed yet) and puts the definition into it.
    async fn enter_cluster(&self, config: GroupConfig) -> Result<()> {
        let Some(cluster) = self.clustered(&config) else {
            return Ok(());
        };
        let members = members(&config);
        let known = cluster.metrics().voters;
        if known.is_empty() {
            cluster
                .initialize(members)
                .await
                .map_err(|e| Error::sql("55000", e.to_string()))?;
        } else {
            for (id, info) in members {
                if !known.contains_key(&id) {
                    let add = crate::cluster::MemberChange::Add(id, info.clone());
                    if let Err(e) = cluster.change_members(add).await {
                        tracing::warn!("cannot add {} to the cluster: {e}", info.name);
                    }
                }
            }
        }
        let databases = self.open_databases(&config);
        put_group(&cluster, config).await?;
        // The group is ready when its primary holds its first lease.
        wait_for_lease(&databases).await
    }

    fn create(&self, spec: ddl::GroupSpec) -> Result<GroupConfig> {
        if self.lock().contains_key(&key(&spec.name)) {
            return Err(Error::sql(
                "42710",
                format!(
                    "availability group \"{}\" already exists on this node",
                    spec.name
                ),
            ));
        }
        if !spec
            .replicas
            .iter()
            .any(|r| r.name.eq_ignore_ascii_case(&self.node))
        {
            return Err(Error::sql(
                "22023",
                format!(
                    "this node is replica \"{}\", which the group does not list",
                    self.node
                ),
            )
            .with_hint("run CREATE AVAILABILITY GROUP on the node that becomes primary, and list it under REPLICA ON"));
        }
        if spec
            .options
            .cluster_type
            .is_some_and(|t| t != ddl::ClusterType::None)
        {
            tracing::info!(
                "CLUSTER_TYPE noted; failover decisions arrive with the cluster manager"
            );
        }
        for db in &spec.databases {
            self.engine.database(db)?;
        }
        let mut replicas = Vec::new();
        for r in &spec.replicas {
            replicas.push(replica_config(&r.name, &r.options, None)?);
        }
        let config = GroupConfig {
            name: spec.name.clone(),
            cluster_id: new_cluster_id(),
            version: 1,
            epoch: 1,
            primary: self.node.clone(),
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
        };
        self.store
            .save(&Membership::Defined(Box::new(config.clone())))?;
        let part = self.run(config.clone())?;
        self.lock().insert(key(&spec.name), part);
        Ok(config)
    }

    fn join(&self, group: &str) -> Result<()> {
        let mut groups = self.lock();
        if groups.contains_key(&key(group)) {
            return Ok(());
        }
        self.store.save(&Membership::Joined {
            name: group.to_string(),
            cluster_id: None,
        })?;
        groups.insert(key(group), Part::Joined { cluster_id: None });
        Ok(())
    }

    fn drop_group(&self, group: &str) -> Result<()> {
        let part = self
            .lock()
            .remove(&key(group))
            .ok_or_else(|| no_group(group))?;
        Self::stop(&part);
        // The databases stay here, read-write, outside any group.
        let databases = match &part {
            Part::Secondary(s) => s.databases().iter().map(|d| d.database().clone()).collect(),
            Part::Primary(p) => self.open_databases(p.config()),
            Part::Joined { .. } => Vec::new(),
        };
        for db in databases {
            db.set_fence(Fence::Standalone)?;
        }
        self.store.remove(group)
    }

    fn defined(&self, group: &str) -> Result<GroupConfig> {
        match self.lock().get(&key(group)) {
            Some(Part::Primary(p)) => Ok(p.config().clone()),
            Some(Part::Secondary(s)) => Ok(s.config()),
            Some(Part::Joined { .. }) => Err(Error::sql(
                "55000",
                format!("availability group \"{group}\" is joined here but no primary has connected yet"),
            )),
            None => Err(no_group(group)),
        }
    }

    /// Applies a definition change on the primary and restarts its links.
    /// A clustered primary restarting fences its writes until it holds a
    /// lease again (its new links count no secondary as synchronized, and
    /// the cluster must agree first); the statement returns once it does,
    /// so the session that changed the group can write right away.
    async fn change(
        self: Arc<Self>,
        group: &str,
        edit: impl FnOnce(&mut GroupConfig, &Manager) -> Result<()>,
    ) -> Result<String> {
        let (config, databases) = self.change_now(group, edit)?;
        if self.clustered(&config).is_some() {
            wait_for_lease(&databases).await?;
        }
        Ok("ALTER AVAILABILITY GROUP".into())
    }

    fn change_now(
        self: &Arc<Self>,
        group: &str,
        edit: impl FnOnce(&mut GroupConfig, &Manager) -> Result<()>,
    ) -> Result<(GroupConfig, Vec<Arc<crate::engine::Database>>)> {
        let mut groups = self.lock();
        let part = groups.get(&key(group)).ok_or_else(|| no_group(group))?;
        let Part::Primary(primary) = part else {
            return Err(Error::sql(
                "25006",
                format!(
                    "availability group \"{group}\" can only be changed on its primary replica"
                ),
            ));
        };
        let mut config = primary.config().clone();
        edit(&mut config, self)?;
        config.version += 1;
        self.store
            .save(&Membership::Defined(Box::new(config.clone())))?;
        primary.stop();
        let part = self.run(config.clone())?;
        groups.insert(key(group), part);
        drop(groups);
        if let Some(cluster) = self.clustered(&config) {
            let config = config.clone();
            tokio::spawn(async move {
                if let Err(e) = put_group(&cluster, config).await {
                    tracing::error!("the cluster did not take the new definition: {e}");
                }
            });
        }
        let databases = self.open_databases(&config);
        Ok((config, databases))
    }

    /// The cluster, when `config`'s group is run by it (CLUSTER_TYPE other
    /// than NONE on a node with a cluster).
    fn clustered(&self, config: &GroupConfig) -> Option<Arc<Cluster>> {
        self.cluster
            .clone()
            .filter(|_| config.cluster_type != ClusterType::None)
    }

    /// Follows the cluster's definition of a group: becomes primary where
    /// it names this node at a newer epoch (automatic or planned failover),
    /// steps down where it names another.
    pub async fn follow(&self, config: &GroupConfig) -> Result<()> {
        let _transition = self.transitions.lock().await;
        let part = match self.lock().get(&key(&config.name)) {
            Some(Part::Primary(p)) => Part::Primary(p.clone()),
            Some(Part::Secondary(s)) => Part::Secondary(s.clone()),
            _ => return Ok(()),
        };
        let me = config.primary.eq_ignore_ascii_case(&self.node);
        match part {
            Part::Primary(p) if !me && config.epoch > p.config().epoch => {
                // Under the groups lock from check to insert: the entry may
                // have changed since it was read (a definition change on
                // this primary), and whatever runs there must be stopped
                // before the secondary starts on the same databases.
                let mut groups = self.lock();
                let current = match groups.get(&key(&config.name)) {
                    Some(Part::Primary(q)) if Arc::ptr_eq(q, &p) => q.clone(),
                    Some(Part::Primary(q)) if q.config().epoch < config.epoch => q.clone(),
                    _ => return Ok(()),
                };
                tracing::warn!(group = %config.name, new_primary = %config.primary, epoch = config.epoch, "the cluster named another primary: stepping down");
                p.stop();
                current.stop();
                self.store
                    .save(&Membership::Defined(Box::new(config.clone())))?;
                let part = self.run(config.clone())?;
                groups.insert(key(&config.name), part);
            }
            Part::Secondary(s) if me && config.epoch > s.config().epoch => {
                let old = s.config();
                s.drain_and_stop(std::time::Duration::from_secs(30))
                    .await
                    .map_err(|e| Error::sql("55000", format!("cannot take over: {e}")))?;
                let mut config = config.clone();
                config.last_failover = Some(FailoverRecord {
                    at_us: now_us(),
                    reason: "AUTOMATIC or PLANNED (the cluster named this replica)".into(),
                    from: old.primary.clone(),
                    to: self.node.clone(),
                    epoch: config.epoch,
                    lost: Vec::new(),
                    checked: config.databases.clone(),
                    loss_known: true,
                });
                self.take_office(&config).await?;
                tracing::warn!(group = %config.name, from = %old.primary, epoch = config.epoch, "this replica is now the primary");
                let part = self.run(config.clone())?;
                self.lock().insert(key(&config.name), part);
            }
            _ => {}
        }
        Ok(())
    }

    async fn set_suspended(&self, database: &str, suspended: bool) -> Result<()> {
        let mut primary = None;
        for part in self.lock().values() {
            if let Part::Primary(p) = part {
                if p.config().has_database(database) {
                    primary = Some(p.clone());
                }
            }
            if let Part::Secondary(s) = part {
                if s.config().has_database(database) {
                    // This secondary alone: the primary is told and stops
                    // sending (after taking it out of the synchronized set).
                    return s
                        .set_suspended_here(database, suspended)
                        .map_err(|e| Error::sql("55000", e));
                }
            }
        }
        match primary {
            Some(p) => {
                p.set_suspended(database, suspended).await?;
                let group = p.config().name.clone();
                let mut recorded = self.store.load_suspended(&group)?;
                if suspended {
                    recorded.insert(database.to_string());
                } else {
                    recorded.remove(database);
                }
                self.store.save_suspended(&group, &recorded)
            }
            None => Err(Error::sql(
                "42704",
                format!("database \"{database}\" is not in an availability group on this node"),
            )),
        }
    }

    /// The freshest definition of `group` this node knows: the cluster's,
    /// which names a new primary as soon as the cluster decides, or its own
    /// (a read-scale group, or a node outside the cluster). None when the
    /// group is not defined here.
    pub fn current_config(&self, group: &str) -> Option<GroupConfig> {
        let Ok(local) = self.defined(group) else {
            // A group this node has no part in (a witness, a stand-alone
            // listener): the cluster's definition, when it runs the group.
            return self
                .cluster
                .as_ref()
                .and_then(|c| c.state().group(group).map(|r| r.config.clone()));
        };
        let clustered = self
            .clustered(&local)
            .and_then(|c| c.state().group(group).map(|r| r.config.clone()));
        Some(match clustered {
            Some(c) if (c.epoch, c.version) > (local.epoch, local.version) => c,
            _ => local,
        })
    }

    /// [`Manager::current_config`] of every group defined here.
    pub fn current_configs(&self) -> Vec<GroupConfig> {
        let mut names: Vec<String> = self.lock().keys().cloned().collect();
        if let Some(cluster) = &self.cluster {
            for name in cluster.state().groups.keys() {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
        names
            .iter()
            .filter_map(|name| self.current_config(name))
            .collect()
    }

    /// For a database of a group here: the group's name and this node's
    /// role in it, with its connection settings.
    pub fn local_role(&self, database: &str) -> Option<(String, crate::listener::LocalRole)> {
        use crate::listener::LocalRole;
        let groups = self.lock();
        groups.values().find_map(|part| match part {
            Part::Primary(p) if p.config().has_database(database) => {
                let config = p.config();
                let allow = config
                    .replica(&self.node)
                    .map(|r| r.primary_allow_connections)
                    .unwrap_or_default();
                Some((config.name.clone(), LocalRole::Primary { allow }))
            }
            Part::Secondary(s) => {
                let config = s.config();
                config.has_database(database).then(|| {
                    let allow = config
                        .replica(&self.node)
                        .map_or(SecondaryConnections::All, |r| r.secondary_allow_connections);
                    (config.name.clone(), LocalRole::Secondary { allow })
                })
            }
            _ => None,
        })
    }

    /// Why this node cannot serve `group`'s sessions in the role the
    /// listener chose (primary: it is the primary and holds its lease;
    /// secondary: it is a secondary connected to its primary); None when
    /// it can.
    pub fn cannot_serve(&self, group: &str, as_primary: bool) -> Option<String> {
        let groups = self.lock();
        match (groups.get(&key(group)), as_primary) {
            (Some(Part::Primary(p)), true) => p
                .config()
                .databases
                .iter()
                .filter_map(|d| self.engine.database(d).ok())
                .any(|db| db.is_resolving())
                .then(|| {
                    format!(
                        "replica \"{}\" is the primary of availability group \"{group}\" but holds no lease (RESOLVING)",
                        self.node
                    )
                }),
            (Some(Part::Secondary(s)), false) if s.is_connected() => None,
            (Some(Part::Secondary(s)), true) => Some(format!(
                "replica \"{}\" is not the primary of availability group \"{group}\" (\"{}\" is, as far as it knows)",
                self.node,
                s.config().primary
            )),
            (Some(Part::Secondary(_)), false) => Some(format!(
                "replica \"{}\" is not connected to the primary of availability group \"{group}\" (NOT SYNCHRONIZING)",
                self.node
            )),
            (Some(Part::Primary(_)), false) => None,
            _ => Some(format!(
                "replica \"{}\" does not serve availability group \"{group}\"",
                self.node
            )),
        }
    }

    /// The redone LSN of `database`, followed, when it is a secondary here.
    pub fn redone_watch(&self, database: &str) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.lock().values().find_map(|part| match part {
            Part::Secondary(s) => s
                .databases()
                .into_iter()
                .find(|d| d.database().name() == database)
                .map(|d| d.watch_redone()),
            _ => None,
        })
    }

    /// A snapshot of everything the `sys` views show.
    pub fn snapshot(&self) -> views::Snapshot {
        let groups = self.lock();
        let mut out = views::Snapshot::default();
        for name in self.engine.names() {
            if let Ok(db) = self.engine.database(&name) {
                out.add_database(&db);
            }
        }
        for part in groups.values() {
            match part {
                Part::Primary(p) => {
                    out.add_primary(&self.node, p);
                    out.set_failover(&p.config().name, self.last_failover(p.config()).as_ref());
                }
                Part::Secondary(s) => out.add_secondary(&self.node, s),
                Part::Joined { .. } => {}
            }
        }
        if let Some(cluster) = &self.cluster {
            let state = cluster.state();
            for record in state.groups.values() {
                out.set_failover_ready(&record.config.name, &record.synchronized);
            }
            out.add_cluster(&cluster.metrics());
        }
        out
    }
}

impl Admission for Manager {
    fn check_hello(
        &self,
        cluster_id: &str,
        group: &str,
        to_replica: &str,
        epoch: u64,
    ) -> std::result::Result<(), String> {
        if !to_replica.eq_ignore_ascii_case(&self.node) {
            return Err(format!(
                "this node is replica \"{}\", not \"{to_replica}\"",
                self.node
            ));
        }
        match self.lock().get(&key(group)) {
            None => Err(format!(
                "this node has not joined availability group \"{group}\" (run ALTER AVAILABILITY GROUP {group} JOIN here)"
            )),
            Some(Part::Joined { cluster_id: None }) => Ok(()),
            Some(Part::Joined { cluster_id: Some(known) }) if known == cluster_id => Ok(()),
            Some(Part::Secondary(s)) => {
                let config = s.config();
                if config.cluster_id != cluster_id {
                    Err(format!(
                        "peer belongs to cluster {cluster_id}, but this replica belongs to cluster {}",
                        config.cluster_id
                    ))
                } else if epoch < config.epoch {
                    Err(format!("epoch {epoch} is older than epoch {} known here", config.epoch))
                } else {
                    Ok(())
                }
            }
            Some(Part::Joined { cluster_id: Some(known) }) => Err(format!(
                "peer belongs to cluster {cluster_id}, but this replica belongs to cluster {known}"
            )),
            // A newer epoch means another replica became primary (forced
            // failover): this one steps down when the definition arrives.
            Some(Part::Primary(p))
                if p.config().cluster_id == cluster_id && epoch > p.config().epoch =>
            {
                Ok(())
            }
            Some(Part::Primary(p)) => Err(format!(
                "this replica is the primary of availability group \"{group}\" at epoch {}",
                p.config().epoch
            )),
        }
    }

    fn accept_config(
        &self,
        config: GroupConfig,
    ) -> std::result::Result<Arc<SecondaryGroup>, String> {
        if self.witness {
            return Err(
                "this node is a witness: it votes in the cluster and hosts no replica".into(),
            );
        }
        // A role change in progress (failover, following the cluster) owns
        // the group's entry until it is done: starting a secondary here in
        // the middle of it would leave two receivers writing one log. The
        // primary retries its connection shortly.
        let Ok(_transition) = self.transitions.try_lock() else {
            return Err("this replica is changing its role in the group; retry shortly".into());
        };
        let mut groups = self.lock();
        let k = key(&config.name);
        match groups.get(&k) {
            Some(Part::Secondary(s)) => {
                let current = s.config();
                if current.epoch > config.epoch {
                    return Err(format!(
                        "epoch {} is older than epoch {} known here",
                        config.epoch, current.epoch
                    ));
                }
                if current.version >= config.version && current.databases == config.databases {
                    return Ok(s.clone());
                }
                s.stop();
            }
            Some(Part::Primary(p)) => {
                if config.epoch <= p.config().epoch
                    || config.primary.eq_ignore_ascii_case(&self.node)
                {
                    return Err("this replica is the primary of the group".into());
                }
                tracing::warn!(
                    group = %config.name,
                    new_primary = %config.primary,
                    epoch = config.epoch,
                    "another replica is primary at a newer epoch: stepping down to secondary"
                );
                p.stop();
            }
            _ => {}
        }
        self.store
            .save(&Membership::Defined(Box::new(config.clone())))
            .map_err(|e| e.to_string())?;
        let part = self.run(config).map_err(|e| e.to_string())?;
        let Part::Secondary(group) = &part else {
            return Err("the definition names this node as primary".into());
        };
        let group = group.clone();
        groups.insert(k, part);
        Ok(group)
    }
}

/// Waits (bounded) until the cluster has granted this primary its lease,
/// so the statement that made it primary returns a writable group.
async fn wait_for_lease(databases: &[Arc<crate::engine::Database>]) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while databases.iter().any(|db| db.is_resolving()) {
        if std::time::Instant::now() > deadline {
            return Err(Error::sql(
                "55000",
                "this replica is primary, but the cluster has not granted it a lease yet",
            )
            .with_hint(
                "check that a majority of the replicas' nodes are up (sys.availability_replicas)",
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Proposes a command, retrying while the cluster elects a leader (a
/// stale leader address, no leader yet) until `within` runs out.
async fn propose_retrying(
    cluster: &Cluster,
    command: ClusterCommand,
    within: std::time::Duration,
) -> std::result::Result<CommandResult, crate::cluster::Error> {
    let deadline = std::time::Instant::now() + within;
    loop {
        match cluster.propose_anywhere(command.clone()).await {
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::debug!("waiting for the cluster: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// Puts a group's definition into the cluster.
async fn put_group(cluster: &Cluster, config: GroupConfig) -> Result<()> {
    let put = ClusterCommand::PutGroup(Box::new(config));
    match propose_retrying(cluster, put, std::time::Duration::from_secs(15)).await {
        Ok(CommandResult::Ok) => Ok(()),
        Ok(CommandResult::Rejected(reason)) => Err(Error::sql(
            "55000",
            format!("the cluster refused the definition: {reason}"),
        )),
        Err(e) => Err(Error::sql(
            "55000",
            format!("the cluster did not answer: {e}"),
        )),
    }
}

/// The cluster members a group needs: every replica's node.
/// The address of a `tcp://host:port` URL (a host name is looked up).
async fn resolve_endpoint(url: &str) -> Result<std::net::SocketAddr> {
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

fn members(config: &GroupConfig) -> std::collections::BTreeMap<u64, NodeInfo> {
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

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn no_group(group: &str) -> Error {
    Error::sql(
        "42704",
        format!("availability group \"{group}\" does not exist on this node"),
    )
}

fn no_replica(replica: &str, group: &str) -> Error {
    Error::sql(
        "42704",
        format!("replica \"{replica}\" is not in availability group \"{group}\""),
    )
}

/// A replica's configuration from its options (over `base` for MODIFY).
fn replica_config(
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
    })
}

/// A listener's definition; `READ_ONLY_PORT` defaults to `PORT + 1`.
fn listener_config(spec: &ddl::ListenerSpec) -> Result<ListenerConfig> {
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
fn new_cluster_id() -> String {
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
