//! Availability groups on this node: their definitions, this node's role in
//! each, and the statements that change them.
//!
//! # Parts
//! * [`role`]: the role machine of one group — every role change (join,
//!   seeding, definition change, planned, forced and automatic failover,
//!   stepping down, drop) as a state machine without I/O, with the rules
//!   that keep transitions safe.
//! * `driver`: one task per group that owns its machine and carries out
//!   its actions (starting and stopping `replication`'s primary and
//!   secondary parts, promoting databases, proposing to the cluster).
//! * [`Manager`] (this page): the node's groups — statements go to the
//!   group's driver, primaries that connect are admitted here, and the
//!   views read what the drivers publish.
//! * [`clustered`]: the lease, the synchronized set kept through the
//!   cluster, the leader's automatic failover and following the cluster.
//! * [`failover`]: the automatic failover decision; [`views`]: the `sys`
//!   views; `store`: the group files under `DATA_DIR/ag/`.
//!
//! # Lifecycle
//! * `CREATE AVAILABILITY GROUP` runs on the node that becomes primary; its
//!   `--name` must be one of the replicas. The definition is stored in
//!   `DATA_DIR/ag/<group>.json` and the primary starts streaming to every
//!   secondary's `ENDPOINT_URL`; under a cluster the statement returns once
//!   the primary holds its first lease.
//! * `ALTER AVAILABILITY GROUP g JOIN` on a secondary node records that the
//!   node accepts the group. The first primary that connects with the
//!   group's name, this replica's name and a cluster id (learned then, and
//!   required ever after) sends the definition; the group's databases
//!   become read-only secondaries here, created empty when missing and
//!   seeded by redo of a full image.
//! * Any change (`ADD/REMOVE DATABASE`, `ADD/REMOVE/MODIFY REPLICA`, `SET`)
//!   bumps the definition's version and goes through the cluster first; a
//!   change of settings only is applied in place, any other restarts the
//!   group's links (see [`role`], rule 6).
//! * Planned (`FAILOVER`) and forced (`FORCE_FAILOVER_ALLOW_DATA_LOSS`)
//!   failover run on the replica that becomes primary; automatic failover
//!   is the cluster leader's decision. Either way the new primary drains
//!   redo, makes its databases writable fenced, and opens them once the old
//!   primary cannot write any more. After a forced failover data movement
//!   to every secondary starts suspended; a former primary meeting the
//!   newer epoch steps down, and the part of its log the new primary never
//!   received is reported in `sys.availability_groups` and discarded.

pub mod clustered;

/// What an availability-group statement returns to its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executed {
    /// The command tag.
    pub tag: String,
    /// NOTICEs to send before it.
    pub notices: Vec<String>,
}
mod ddl;
mod driver;
pub mod failover;
mod geo;
pub mod operations;
pub mod role;
pub mod store;
pub mod views;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::cluster::{Cluster, NodeInfo};
use crate::engine::{Engine, Error, Result};
use crate::group::{ClusterType, GroupConfig, SecondaryConnections};
use crate::replication::primary::PrimaryGroup;
use crate::replication::secondary::{Admission, SecondaryGroup};
use crate::sql::ag::{self as ddl_syntax, AgStatement};

use ddl::{
    listener_config, members, new_group, no_group, no_replica, now_us, replica_config,
    resolve_endpoint,
};
use driver::{Inbox, Input};
use role::{Request, RoleError};

/// How long `ALTER DATABASE … SET HADR AVAILABILITY GROUP` waits for the
/// primary's verdict on a copy restored here.
const JOIN_WITHIN: Duration = Duration::from_secs(20);
use store::ConfigStore;

/// This node's running part in one group, as its driver published it.
#[derive(Clone)]
pub(crate) enum Part {
    /// Joined; waiting for a primary to connect.
    Joined {
        /// Learned from the first primary.
        cluster_id: Option<String>,
    },
    /// This node is the primary.
    Primary(Arc<PrimaryGroup>),
    /// This node is a secondary.
    Secondary(Arc<SecondaryGroup>),
}

/// One group of this node: its driver's inbox and what the driver published.
struct Slot {
    inbox: Inbox,
    part: Option<Part>,
    config: Option<GroupConfig>,
}

/// The availability groups of this node.
pub struct Manager {
    node: String,
    /// The quorum cluster manager, when this node takes part in one.
    cluster: Option<Arc<Cluster>>,
    /// The roles this node keeps while it is in no cluster
    /// ([`crate::auth::local`]).
    local_roles: crate::auth::local::LocalRoles,
    engine: Arc<Engine>,
    store: ConfigStore,
    groups: Mutex<HashMap<String, Slot>>,
    /// A witness node votes in the cluster and hosts no replica.
    witness: bool,
    /// Geo terminations and failovers started here, for
    /// `sys.dm_operation_status`.
    operations: operations::Operations,
    /// Automatic page repairs on this node (`sys.dm_hadr_auto_page_repair`).
    page_repairs: Arc<crate::repair::History>,
    /// Background scrubbing on this node (`sys.dm_hadr_page_scrub_status`).
    scrubs: Arc<crate::repair::ScrubStatus>,
    /// The scrub's rate, bytes a second (0: off).
    scrub_rate: std::sync::atomic::AtomicU64,
    /// The background proof of this node's backups ([`crate::backup::proof`]).
    prover: std::sync::OnceLock<crate::backup::Prover>,
    /// `--backup-kib-per-s`, bytes a second (unset: each role's default).
    backup_rate: std::sync::OnceLock<u64>,
    /// Seeds by streamed backup this node sent or took
    /// (`sys.dm_hadr_physical_seeding_stats`).
    pub(crate) seeding: Arc<crate::replication::seed::SeedingBoard>,
}

fn key(name: &str) -> String {
    name.to_ascii_lowercase()
}

impl Manager {
    /// Loads this node's groups and resumes its role in each; returns once
    /// every database of a group is fenced as its role says (before any
    /// client can connect, a secondary's copy is read-only).
    pub async fn start(
        node: &str,
        engine: Arc<Engine>,
        data_dir: &Path,
        cluster: Option<Arc<Cluster>>,
        witness: bool,
    ) -> Result<Arc<Manager>> {
        let local_roles = crate::auth::local::LocalRoles::load(data_dir)
            .map_err(|why| Error::sql("58030", why))?;
        let manager = Arc::new(Manager {
            node: node.to_string(),
            engine,
            cluster,
            local_roles,
            store: ConfigStore::new(data_dir),
            groups: Mutex::new(HashMap::new()),
            witness,
            operations: Default::default(),
            page_repairs: Default::default(),
            scrubs: Default::default(),
            scrub_rate: Default::default(),
            prover: Default::default(),
            backup_rate: Default::default(),
            seeding: Default::default(),
        });
        manager.settle_local_roles();
        manager.publish_roles();
        views::publish_catalog();
        for membership in manager.store.load_all()? {
            let inbox = manager.slot(membership.name());
            let (tx, rx) = tokio::sync::oneshot::channel();
            let _ = inbox.send(Input::Start(Box::new(membership), tx));
            let _ = rx.await;
        }
        Ok(manager)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The driver of `group`, started if there is none yet.
    fn slot(self: &Arc<Self>, group: &str) -> Inbox {
        let mut groups = self.lock();
        if let Some(slot) = groups.get(&key(group)) {
            return slot.inbox.clone();
        }
        let inbox = driver::spawn(self, group);
        groups.insert(
            key(group),
            Slot {
                inbox: inbox.clone(),
                part: None,
                config: None,
            },
        );
        inbox
    }

    /// The driver of `group`, if the group is known here.
    fn inbox(&self, group: &str) -> Option<Inbox> {
        self.lock().get(&key(group)).map(|s| s.inbox.clone())
    }

    /// A driver publishes its running part (and definition).
    fn publish(&self, group: &str, part: Part, config: Option<GroupConfig>) {
        if let Some(slot) = self.lock().get_mut(&key(group)) {
            slot.part = Some(part);
            if config.is_some() {
                slot.config = config;
            }
        }
    }

    /// Takes the group's part down (its definition stays): a secondary
    /// about to start with a seeded copy lets go of the old one first.
    fn unpublish(&self, group: &str) {
        if let Some(slot) = self.lock().get_mut(&key(group)) {
            slot.part = None;
        }
    }

    fn publish_config(&self, group: &str, config: GroupConfig) {
        if let Some(slot) = self.lock().get_mut(&key(group)) {
            slot.config = Some(config);
        }
    }

    fn part(&self, group: &str) -> Option<Part> {
        self.lock().get(&key(group)).and_then(|s| s.part.clone())
    }

    fn published_config(&self, group: &str) -> Option<GroupConfig> {
        self.lock().get(&key(group)).and_then(|s| s.config.clone())
    }

    /// A driver whose group was dropped.
    fn forget(&self, group: &str) {
        self.lock().remove(&key(group));
    }

    /// This node's long operations (`sys.dm_operation_status`).
    pub fn operations(&self) -> &operations::Operations {
        &self.operations
    }

    /// This node's replica name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The group's databases that exist on this node.
    fn open_databases(&self, config: &GroupConfig) -> Vec<Arc<crate::engine::Database>> {
        config
            .databases
            .iter()
            .filter_map(|d| self.engine.database(d).ok())
            .collect()
    }

    /// The secondary's copy of `name`: the one here, else a copy restored
    /// here `WITH NORECOVERY`, else a new empty one for automatic seeding —
    /// or none when this replica's SEEDING_MODE is MANUAL (`manual`): the
    /// database joins once restored (`JoinDatabase`).
    fn ensure_database(
        &self,
        name: &str,
        manual: bool,
    ) -> Result<Option<Arc<crate::engine::Database>>> {
        let fence = || crate::engine::Fence::Secondary {
            group: String::new(),
            primary: String::new(),
        };
        match self.engine.database(name) {
            Ok(db) if crate::backup::is_restoring(self.engine.data_dir(), name) => {
                // A copy seeded from a streamed backup replaces this one
                // (empty, or too old for the primary's log). The secondary
                // that used the old one has stopped; see `seed_replaces`.
                drop(db);
                match crate::backup::adopt_restoring(&self.engine, name, fence()) {
                    Ok(_) => {}
                    Err(e) => {
                        // The primary seeds it again; a stale copy must not
                        // replace a newer one at a later start.
                        tracing::warn!(database = name, "the seeded copy could not replace the old one ({e}); it is dropped and the primary will seed this replica again");
                        crate::backup::discard_restoring(self.engine.data_dir(), name);
                    }
                }
                self.engine.database(name).map(Some)
            }
            Ok(db) => Ok(Some(db)),
            Err(Error::NoSuchDatabase(_)) => {
                // A secondary's copy is fenced from its first moment:
                // nothing but redo writes it.
                let fence = crate::engine::Fence::Secondary {
                    group: String::new(),
                    primary: String::new(),
                };
                // Seeded manually: a restored copy is RESTORING here.
                let adopted = crate::backup::adopt_restoring(&self.engine, name, fence.clone())
                    .map_err(|e| Error::sql("55000", e.to_string()))?;
                if !adopted {
                    if manual {
                        return Ok(None);
                    }
                    self.engine.create_database_fenced(name, fence)?;
                }
                self.engine.database(name).map(Some)
            }
            Err(e) => Err(e),
        }
    }

    /// After a JoinDatabase: waits (bounded) until the restarted secondary
    /// holds `database` and a primary's handshake said whether it takes
    /// that copy. A refusal (too old for the primary's log) is the error;
    /// no primary within the bound is not one (it plans the link when it
    /// connects, and the views tell).
    async fn joined(
        &self,
        group: &str,
        database: &str,
        before: &std::sync::Weak<SecondaryGroup>,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + JOIN_WITHIN;
        while tokio::time::Instant::now() < deadline {
            if let Some(Part::Secondary(s)) = self.part(group) {
                if !std::ptr::eq(Arc::as_ptr(&s), before.as_ptr()) {
                    if !s.has_database(database) {
                        return Err(Error::sql(
                            "55000",
                            format!("the copy of \"{database}\" restored here could not join; see this node's log"),
                        ));
                    }
                    if let Some(why) = s.awaiting_restore(database) {
                        return Err(Error::sql("55000", why));
                    }
                    if *s.handshaken().borrow() {
                        return Ok(());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Whether `database`, of a group this node is a secondary of with
    /// SEEDING_MODE = MANUAL, waits for a restore here: it is not here yet,
    /// or the primary refused the copy here (too old for its log).
    /// RESTORE … WITH NORECOVERY (and REPLACE, for a refused copy) may then
    /// write it.
    pub fn awaits_restore(&self, database: &str) -> bool {
        self.lock()
            .values()
            .filter_map(|slot| slot.part.as_ref())
            .any(|part| match part {
                Part::Secondary(s) => {
                    let config = s.config();
                    config.has_database(database)
                        && config
                            .replica(&self.node)
                            .is_some_and(|r| r.seeding_mode == crate::group::SeedingMode::Manual)
                        && (!s.has_database(database) || s.awaiting_restore(database).is_some())
                }
                _ => false,
            })
    }

    /// Sends a statement to the group's driver and waits for its answer.
    async fn ask(self: &Arc<Self>, group: &str, request: Request, create: bool) -> Result<()> {
        let inbox = if create {
            self.slot(group)
        } else {
            self.inbox(group).ok_or_else(|| no_group(group))?
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        inbox
            .send(Input::Request(request, tx))
            .map_err(|_| no_group(group))?;
        rx.await
            .map_err(|_| no_group(group))?
            .map_err(|e| role_error(group, e))
    }

    /// Runs one availability-group statement; returns its command tag and
    /// the notices for the session (e.g. how far a removed geo-secondary
    /// got).
    pub async fn execute(self: &Arc<Self>, statement: AgStatement) -> Result<Executed> {
        if let AgStatement::RemoveGeoSecondary {
            database,
            server,
            forced,
        } = &statement
        {
            let operation = if *forced {
                "REMOVE SECONDARY (FORCED)"
            } else {
                "REMOVE SECONDARY (PLANNED)"
            };
            let notice = self
                .tracked(operation, database, server, || {
                    self.remove_geo_secondary(database, server, *forced)
                })
                .await?;
            return Ok(Executed {
                tag: "ALTER DATABASE".into(),
                notices: vec![notice],
            });
        }
        if let AgStatement::GeoFailover { database } | AgStatement::GeoForceFailover { database } =
            &statement
        {
            let forced = matches!(statement, AgStatement::GeoForceFailover { .. });
            let operation = if forced {
                "FORCE_FAILOVER_ALLOW_DATA_LOSS"
            } else {
                "FAILOVER"
            };
            let partner = self.geo_source_of(database).unwrap_or_default();
            let notice = self
                .tracked(operation, database, &partner, || {
                    self.geo_failover(database, forced)
                })
                .await?;
            return Ok(Executed {
                tag: "ALTER DATABASE".into(),
                notices: vec![notice],
            });
        }
        Ok(Executed {
            tag: self.execute_statement(statement).await?,
            notices: Vec::new(),
        })
    }

    async fn execute_statement(self: &Arc<Self>, statement: AgStatement) -> Result<String> {
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
        const ALTER: &str = "ALTER AVAILABILITY GROUP";
        match statement {
            AgStatement::CreateGroup(spec) => {
                if self.inbox(&spec.name).is_some() {
                    return Err(Error::sql(
                        "42710",
                        format!("availability group \"{}\" already exists on this node", spec.name),
                    ));
                }
                for db in &spec.databases {
                    self.engine.database(db)?;
                }
                let name = spec.name.clone();
                let config = new_group(spec, &self.node)?;
                self.ask(&name, Request::Create(Box::new(config.clone())), true)
                    .await?;
                self.enter_cluster(config).await?;
                Ok("CREATE AVAILABILITY GROUP".into())
            }
            AgStatement::Join { group, .. } => {
                self.ask(&group, Request::Join, true).await?;
                Ok(ALTER.into())
            }
            AgStatement::DropGroup { group } => {
                self.ask(&group, Request::Drop, false).await?;
                Ok("DROP AVAILABILITY GROUP".into())
            }
            AgStatement::AddDatabases { group, databases } => {
                self.change(&group, |c, m| {
                    for d in databases {
                        m.engine.database(&d)?;
                        if !c.has_database(&d) {
                            c.databases.push(d);
                        }
                    }
                    Ok(())
                })
                .await
            }
            AgStatement::RemoveDatabase { group, database } => {
                self.change(&group, |c, _| {
                    let before = c.databases.len();
                    c.databases.retain(|d| d != &database);
                    if c.databases.len() == before {
                        return Err(Error::sql(
                            "42704",
                            format!("database \"{database}\" is not in availability group \"{}\"", c.name),
                        ));
                    }
                    Ok(())
                })
                .await
            }
            AgStatement::AddReplica { group, replica } => {
                self.change(&group, |c, _| {
                    if c.replica(&replica.name).is_some() {
                        return Err(Error::sql("42710", format!("replica \"{}\" is already in the group", replica.name)));
                    }
                    if c.replicas.len() >= ddl_syntax::MAX_REPLICAS {
                        return Err(Error::sql("54000", "a group has at most 9 replicas (1 primary and 8 secondaries)"));
                    }
                    c.replicas.push(replica_config(&replica.name, &replica.options, None)?);
                    Ok(())
                })
                .await
            }
            AgStatement::RemoveReplica { group, replica } => {
                self.change(&group, |c, _| {
                    if c.primary.eq_ignore_ascii_case(&replica) {
                        return Err(Error::sql("55000", "the primary replica cannot be removed").with_hint("fail over first"));
                    }
                    let before = c.replicas.len();
                    c.replicas.retain(|r| !r.name.eq_ignore_ascii_case(&replica));
                    if c.replicas.len() == before {
                        return Err(no_replica(&replica, &c.name));
                    }
                    Ok(())
                })
                .await
            }
            AgStatement::ModifyReplica { group, replica, options } => {
                self.change(&group, |c, _| {
                    let group_name = c.name.clone();
                    let current = c.replica_mut(&replica).ok_or_else(|| no_replica(&replica, &group_name))?;
                    *current = replica_config(&current.name.clone(), &options, Some(current))?;
                    Ok(())
                })
                .await
            }
            AgStatement::SetGroupOptions { group, options } => {
                self.change(&group, |c, _| {
                    if let Some(n) = options.required_synchronized_secondaries_to_commit {
                        c.required_synchronized_secondaries = n;
                    }
                    if let Some(level) = options.failure_condition_level {
                        c.failure_condition_level = level;
                    }
                    if let Some(ms) = options.health_check_timeout_ms {
                        c.health_check_timeout_ms = ms.into();
                    }
                    if let Some(p) = options.automated_backup_preference {
                        c.automated_backup_preference = ddl::backup_preference(p);
                    }
                    Ok(())
                })
                .await
            }
            AgStatement::AddListener { group, listener } => {
                self.change(&group, |c, _| {
                    if let Some(existing) = &c.listener {
                        return Err(Error::sql(
                            "42710",
                            format!("availability group \"{}\" already has listener '{}'", c.name, existing.name),
                        )
                        .with_hint("a group has one listener in this version"));
                    }
                    c.listener = Some(listener_config(&listener)?);
                    Ok(())
                })
                .await
            }
            AgStatement::SuspendDatabase { database } => {
                self.set_suspended(&database, true).await?;
                Ok("ALTER DATABASE".into())
            }
            AgStatement::ResumeDatabase { database } => {
                self.set_suspended(&database, false).await?;
                Ok("ALTER DATABASE".into())
            }
            AgStatement::JoinDatabase { database, group } => {
                let config = self.published_config(&group).ok_or_else(|| match self.part(&group) {
                    Some(Part::Joined { .. }) => Error::sql(
                        "55000",
                        format!("availability group \"{group}\" is joined here but no primary has connected yet"),
                    ),
                    _ => no_group(&group),
                })?;
                if !config.has_database(&database) {
                    return Err(Error::sql(
                        "42704",
                        format!("database \"{database}\" is not in availability group \"{group}\""),
                    )
                    .with_hint(format!("on the primary: ALTER AVAILABILITY GROUP {group} ADD DATABASE {database}")));
                }
                // The database joined when the primary's definition arrived:
                // seeded automatically, or, when it was RESTORING here
                // (restored WITH NORECOVERY before JOIN), from that copy.
                // A MANUAL-seeding secondary without a copy the primary
                // takes joins it now, from a copy restored since.
                let Some(Part::Secondary(secondary)) = self.part(&group) else {
                    return Ok("ALTER DATABASE".into());
                };
                let restored = crate::backup::is_restoring(self.engine.data_dir(), &database);
                if secondary.has_database(&database) && !restored {
                    // Joined already; a copy the primary refused says why.
                    return match secondary.awaiting_restore(&database) {
                        Some(why) => Err(Error::sql("55000", why)),
                        None => Ok("ALTER DATABASE".into()),
                    };
                }
                if !restored {
                    return Err(Error::sql(
                        "55000",
                        format!("nothing to join: database \"{database}\" is not on this replica, whose SEEDING_MODE is MANUAL, and no copy of it was restored here"),
                    )
                    .with_hint(format!(
                        "RESTORE DATABASE {database} FROM DISK = '…' WITH NORECOVERY here (then RESTORE LOG … WITH NORECOVERY), and run this again"
                    )));
                }
                // Held weakly: the old secondary's copy is replaced as the
                // new one starts, which nothing may hold then.
                let before = Arc::downgrade(&secondary);
                drop(secondary);
                self.ask(&group, Request::JoinDatabase, false).await?;
                self.joined(&group, &database, &before).await?;
                Ok("ALTER DATABASE".into())
            }
            AgStatement::ForceFailover { group } => {
                self.ask(&group, Request::ForceFailover, false).await?;
                self.wait_writable(&group).await?;
                Ok(ALTER.into())
            }
            AgStatement::Failover { group } => {
                self.ask(&group, Request::Failover, false).await?;
                self.wait_writable(&group).await?;
                Ok(ALTER.into())
            }
            AgStatement::CreateCluster => {
                self.create_cluster().await?;
                Ok("CREATE CLUSTER".into())
            }
            AgStatement::AddClusterNode {
                name,
                endpoint_url,
                voter,
            } => {
                self.add_cluster_node(&name, &endpoint_url, voter).await?;
                Ok("ALTER CLUSTER".into())
            }
            AgStatement::RemoveClusterNode { name } => {
                self.remove_cluster_node(&name).await?;
                Ok("ALTER CLUSTER".into())
            }
            AgStatement::RemoveDatabaseFromHadr { database } => Err(Error::sql(
                "0A000",
                format!("SET HADR OFF is not available in this version; remove \"{database}\" on the primary with ALTER AVAILABILITY GROUP … REMOVE DATABASE"),
            )),
            AgStatement::SetServerName { name } => {
                self.propose_cluster(crate::cluster::Command::SetServerName(name))
                    .await?;
                Ok("ALTER CLUSTER".into())
            }
            AgStatement::AddPartner {
                server,
                endpoint_urls,
            } => {
                let partner = crate::cluster::Partner {
                    name: server,
                    endpoint_urls,
                };
                self.propose_cluster(crate::cluster::Command::PutPartner(partner))
                    .await?;
                Ok("ALTER CLUSTER".into())
            }
            AgStatement::RemovePartner { server } => {
                self.propose_cluster(crate::cluster::Command::RemovePartner(server))
                    .await?;
                Ok("ALTER CLUSTER".into())
            }
            AgStatement::SetReadOnly {
                database,
                read_only,
                open_transactions,
            } => {
                self.set_read_only(&database, read_only, open_transactions)
                    .await?;
                Ok("ALTER DATABASE".into())
            }
            AgStatement::SetGeoMaxLag { database, seconds } => {
                let group = self.primary_group_of(&database)?;
                self.change(&group, |c, _| {
                    c.database_options
                        .entry(database.clone())
                        .or_default()
                        .geo_max_lag_ms = seconds.map(|s| u64::from(s) * 1000);
                    Ok(())
                })
                .await?;
                Ok("ALTER DATABASE".into())
            }
            AgStatement::AddGeoSecondary {
                database,
                server,
                allow_connections,
                database_name,
            } => {
                self.add_geo_secondary(&database, &server, allow_connections, database_name)
                    .await?;
                Ok("ALTER DATABASE".into())
            }
            // `execute` runs it itself, to keep its notice.
            AgStatement::RemoveGeoSecondary {
                database,
                server,
                forced,
            } => {
                self.remove_geo_secondary(&database, &server, forced)
                    .await?;
                Ok("ALTER DATABASE".into())
            }
            // `execute` runs them itself, to keep their notices.
            AgStatement::GeoFailover { database } => {
                self.geo_failover(&database, false).await?;
                Ok("ALTER DATABASE".into())
            }
            AgStatement::GeoForceFailover { database } => {
                self.geo_failover(&database, true).await?;
                Ok("ALTER DATABASE".into())
            }
        }
    }

    /// Runs a geo operation, recorded for `sys.dm_operation_status`.
    async fn tracked<T, F>(
        &self,
        operation: &str,
        database: &str,
        partner: &str,
        run: impl FnOnce() -> F,
    ) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        let id = self
            .operations
            .start(operation, database, partner, views::wall_us());
        let outcome = run().await;
        self.operations.finish(
            id,
            outcome.as_ref().err().map(|e| e.to_string()),
            views::wall_us(),
        );
        outcome
    }

    /// The source server of a geo-secondary here, if `database` is one.
    fn geo_source_of(&self, database: &str) -> Option<String> {
        self.lock().values().find_map(|slot| {
            slot.config
                .as_ref()?
                .database_options(database)
                .geo_source
                .map(|s| s.server)
        })
    }

    /// The cluster this node is in, if it is in one (it has a cluster id:
    /// it formed a cluster or was added to one).
    fn in_cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref().filter(|c| c.cluster_id().is_some())
    }

    /// The role called `name`: in this node's copy of the cluster state,
    /// or for a node in no cluster, among its own ([`crate::auth::local`]).
    pub fn role(&self, name: &str) -> Option<crate::auth::RoleRecord> {
        match self.in_cluster() {
            Some(cluster) => cluster.role(name),
            None => self.local_roles.role(name),
        }
    }

    /// Every role, from the same place as [`Manager::role`].
    pub fn roles(&self) -> Vec<crate::auth::RoleRecord> {
        match self.in_cluster() {
            Some(cluster) => cluster.state().roles.into_values().collect(),
            None => self.local_roles.roles(),
        }
    }

    /// Shows the roles [`Manager::roles`] answers in pg_roles, pg_authid
    /// and pg_user ([`crate::engine::catalog::publish_roles`]).
    pub fn publish_roles(&self) {
        crate::engine::catalog::publish_roles(self.roles().iter());
    }

    /// Makes a change of roles or privileges ([`crate::auth`]): proposed
    /// to the cluster when this node is in one, else made in the node's
    /// own roles file — with no join of a cluster in between
    /// ([`Cluster::while_in_no_cluster`]).
    pub async fn change_roles(&self, command: crate::cluster::Command) -> Result<()> {
        let local = |command: &crate::cluster::Command| {
            let result = self.local_roles.apply(command);
            (result, self.local_roles.len())
        };
        let done_here = match &self.cluster {
            None => Some(local(&command).0),
            Some(cluster) => cluster.while_in_no_cluster(|| local(&command)),
        };
        match done_here {
            Some(result) => {
                self.publish_roles();
                result.map_err(|why| {
                    Error::sql("55000", format!("the role change was refused: {why}"))
                })
            }
            None => self.propose_cluster(command).await,
        }
    }

    /// Tells the cluster side how many roles this node keeps of its own
    /// (a cluster that adds it is refused while there are any), and
    /// carries roles left behind by a `CREATE CLUSTER` that stopped before
    /// it had carried them into the new cluster.
    fn settle_local_roles(self: &Arc<Self>) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let roles = self.local_roles.len();
        if cluster.while_in_no_cluster(|| ((), roles)).is_some() || roles == 0 {
            return;
        }
        tracing::warn!(
            "this node is in cluster {} and still keeps {roles} role(s) of its own from before: \
             carrying them into the cluster",
            cluster
                .cluster_id()
                .map(|c| c.to_string())
                .unwrap_or_default()
        );
        let manager = self.clone();
        tokio::spawn(async move {
            if let Err(e) = manager.carry_roles_into_cluster().await {
                tracing::error!("{e}");
            }
        });
    }

    /// Puts the roles this node kept of its own into the cluster it just
    /// formed, then forgets them here. A role the cluster has already
    /// (a second attempt) is left as the cluster has it.
    async fn carry_roles_into_cluster(&self) -> Result<()> {
        let Some(cluster) = self.in_cluster() else {
            return Ok(());
        };
        let roles = self.local_roles.roles();
        if roles.is_empty() {
            return Ok(());
        }
        let failed = |why: String| {
            Error::sql(
                "55000",
                format!(
                    "the cluster was formed, but this node's own roles could not be carried into it: {why}"
                ),
            )
            .with_hint(format!(
                "they are kept in {} until they are; restart the node to try again",
                crate::auth::local::FILE
            ))
        };
        for role in roles {
            if cluster.role(&role.name).is_some() {
                continue;
            }
            let name = role.name.clone();
            let create = crate::cluster::Command::CreateRole(role);
            match driver::propose_retrying(cluster, create, std::time::Duration::from_secs(15))
                .await
            {
                Ok(crate::cluster::CommandResult::Ok) => {}
                Ok(crate::cluster::CommandResult::Rejected(why))
                    if cluster.role(&name).is_some() =>
                {
                    tracing::info!("role {name} is in the cluster already ({why})");
                }
                Ok(crate::cluster::CommandResult::Rejected(why)) => {
                    return Err(failed(format!("role {name}: {why}")))
                }
                Err(e) => return Err(failed(format!("role {name}: {e}"))),
            }
        }
        self.local_roles
            .clear()
            .map_err(|why| failed(format!("the roles are in the cluster, but {why}")))?;
        self.publish_roles();
        tracing::info!("this node's own roles are in the cluster's state now");
        Ok(())
    }

    /// Proposes a cluster-wide command (naming, partners) from this node.
    async fn propose_cluster(&self, command: crate::cluster::Command) -> Result<()> {
        let cluster = self.cluster_member()?;
        match driver::propose_retrying(cluster, command, std::time::Duration::from_secs(10)).await {
            Ok(crate::cluster::CommandResult::Ok) => Ok(()),
            Ok(crate::cluster::CommandResult::Rejected(why)) => {
                Err(Error::sql("55000", format!("the cluster refused: {why}")))
            }
            Err(e) => Err(
                Error::sql("55000", format!("the cluster did not answer: {e}"))
                    .with_hint("check that a majority of the cluster's nodes are up"),
            ),
        }
    }

    /// The group in which this node is the primary of `database`; a clear
    /// error when it is a secondary here or in no group.
    fn primary_group_of(&self, database: &str) -> Result<String> {
        let groups = self.lock();
        for (name, slot) in groups.iter() {
            match &slot.part {
                Some(Part::Primary(p)) if p.config().has_database(database) => return Ok(name.clone()),
                Some(Part::Secondary(s)) if s.config().has_database(database) => {
                    return Err(Error::sql(
                        "25006",
                        format!("database \"{database}\" is a secondary on this replica of availability group \"{}\"", s.config().name),
                    )
                    .with_hint(format!("run the statement on the primary replica \"{}\"", s.config().primary)))
                }
                _ => {}
            }
        }
        Err(Error::sql(
            "42704",
            format!("database \"{database}\" is not in an availability group on this node"),
        ))
    }

    /// `ALTER DATABASE d SET READ_ONLY | READ_WRITE`: on a database of a
    /// group, run on the primary, kept in the definition (so every replica
    /// has it, across failovers and restarts); on a database outside any
    /// group, kept by the engine.
    async fn set_read_only(
        self: &Arc<Self>,
        database: &str,
        read_only: bool,
        open: ddl_syntax::OpenTransactions,
    ) -> Result<()> {
        let db = self.engine.database(database)?;
        let was = db.is_read_only();
        let group = match self.primary_group_of(database) {
            Ok(group) => Some(group),
            Err(e) if e.sqlstate() == "42704" => None,
            Err(e) => return Err(e),
        };
        if read_only {
            match open {
                ddl_syntax::OpenTransactions::Wait => {
                    db.quiesce_writes(None, || db.set_read_only(true)).await?
                }
                ddl_syntax::OpenTransactions::NoWait => {
                    db.quiesce_writes(Some(std::time::Duration::ZERO), || db.set_read_only(true))
                        .await?
                }
                ddl_syntax::OpenTransactions::RollbackImmediate => {
                    // Closed now: the statement running on the writer is
                    // interrupted, and an open transaction can no longer
                    // commit (the commit hook rolls it back).
                    db.set_read_only(true);
                    db.interrupt_writer();
                }
            }
        }
        let outcome = match &group {
            Some(group) => self
                .change(group, |c, _| {
                    c.database_options
                        .entry(database.to_string())
                        .or_default()
                        .read_only = read_only;
                    Ok(())
                })
                .await
                .map(|_| ()),
            None => self.engine.set_read_only(database, read_only),
        };
        match outcome {
            Ok(()) => {
                db.set_read_only(read_only);
                Ok(())
            }
            Err(e) => {
                // Not recorded: back to what it was.
                db.set_read_only(was);
                Err(e)
            }
        }
    }

    /// A definition change on the primary: `edit` runs on the definition
    /// the driver runs under (statements are serialized there), then the
    /// driver takes the change through the cluster and applies it. Returns
    /// once the primary takes writes again, so the session that changed the
    /// group can write at once.
    async fn change(
        self: &Arc<Self>,
        group: &str,
        edit: impl FnOnce(&mut GroupConfig, &Manager) -> Result<()>,
    ) -> Result<String> {
        let Some(Part::Primary(_)) = self.part(group) else {
            return match self.part(group) {
                None => Err(no_group(group)),
                Some(_) => Err(role_error(group, RoleError::NotPrimary(group.to_string()))),
            };
        };
        let mut config = self
            .published_config(group)
            .ok_or_else(|| no_group(group))?;
        edit(&mut config, self)?;
        self.ask(group, Request::Change(Box::new(config)), false)
            .await?;
        self.wait_writable(group).await?;
        Ok("ALTER AVAILABILITY GROUP".into())
    }

    /// Waits (bounded) until this node is the group's primary and takes
    /// writes (under a cluster: holds its lease).
    async fn wait_writable(&self, group: &str) -> Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            if let Some(Part::Primary(p)) = self.part(group) {
                let databases = self.open_databases(&p.config());
                if databases.iter().all(|db| !db.is_resolving()) {
                    return Ok(());
                }
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::sql(
                    "55000",
                    "this replica is primary, but the cluster has not granted it a lease yet",
                )
                .with_hint("check that a majority of the replicas' nodes are up (sys.availability_replicas)"));
            }
            // Short: the lease is usually granted a few ms after the
            // primary starts, and a planned termination's answer (inside an
            // upgrade's read-only window) waits for this.
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
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
        // (ADD NODE) finds it formed, and the roles it kept of its own are
        // the cluster's.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let m = cluster.metrics();
            if m.leader == Some(m.id) && m.voters.contains_key(&m.id) {
                return self.carry_roles_into_cluster().await;
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
                let hint = match e {
                    crate::cluster::Error::WrongCluster {
                        refusal: crate::cluster::Refusal::KeepsOwnRoles { .. },
                        ..
                    } => format!("on node \"{name}\": DROP ROLE its roles (and make them again here), or run CREATE CLUSTER there instead and add this cluster's other nodes to that one"),
                    crate::cluster::Error::WrongCluster { .. } => format!("the node at {endpoint_url} belongs to another cluster: name the endpoint of a node that is in no cluster yet"),
                    _ => format!("check that the node runs with --name {name} and that its endpoint {endpoint_url} is reachable from the cluster's leader"),
                };
                Error::sql("55000", format!("cannot add node \"{name}\" to the cluster: {e}"))
                    .with_hint(hint)
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
            self.carry_roles_into_cluster().await?;
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
        let name = config.name.clone();
        let put = crate::cluster::Command::PutGroup(Box::new(config));
        match driver::propose_retrying(&cluster, put, std::time::Duration::from_secs(15)).await {
            Ok(crate::cluster::CommandResult::Ok) => {}
            Ok(crate::cluster::CommandResult::Rejected(reason)) => {
                return Err(Error::sql(
                    "55000",
                    format!("the cluster refused the definition: {reason}"),
                ))
            }
            Err(e) => {
                return Err(Error::sql(
                    "55000",
                    format!("the cluster did not answer: {e}"),
                ))
            }
        }
        // The group is ready when its primary holds its first lease.
        self.wait_writable(&name).await
    }

    /// The cluster, when `config`'s group is run by it (CLUSTER_TYPE other
    /// than NONE on a node with a cluster).
    fn clustered(&self, config: &GroupConfig) -> Option<Arc<Cluster>> {
        self.cluster
            .clone()
            .filter(|_| config.cluster_type != ClusterType::None)
    }

    /// Passes the cluster's record of a group to its driver (the follower
    /// task calls this at every change of the cluster's state).
    pub fn follow(&self, record: &crate::cluster::GroupRecord) {
        if let Some(inbox) = self.inbox(&record.config.name) {
            let _ = inbox.send(Input::Event(role::Event::Cluster(Box::new(record.clone()))));
        }
        // The group's backup chain: every replica keeps its log from where
        // the next log backup starts, whichever replica takes it.
        for (database, &lsn) in &record.backup_holds {
            if !record.config.has_database(database) {
                continue;
            }
            if let Ok(db) = self.engine.database(database) {
                if db.log_backup_hold() != lsn {
                    db.hold_log_for_backups(lsn);
                }
            }
        }
    }

    /// After a backup of a chain (not COPY_ONLY) of `database` of `group`:
    /// records in the cluster where the next log backup starts, so every
    /// replica keeps its log from there ([`Manager::follow`]) and the chain
    /// continues without a gap after a failover. Nothing to do outside a
    /// cluster-managed group (the node's own hold is all there is).
    pub async fn share_backup_hold(&self, group: &str, database: &str, lsn: u64) -> Result<()> {
        let Some(config) = self.current_config(group) else {
            return Ok(());
        };
        if self.clustered(&config).is_none() {
            return Ok(());
        }
        self.propose_cluster(crate::cluster::Command::HoldLogForBackups {
            group: config.name.clone(),
            database: database.to_string(),
            lsn,
        })
        .await
    }

    async fn set_suspended(&self, database: &str, suspended: bool) -> Result<()> {
        let parts: Vec<Part> = self
            .lock()
            .values()
            .filter_map(|s| s.part.clone())
            .collect();
        let mut primary = None;
        for part in parts {
            match part {
                Part::Primary(p) if p.config().has_database(database) => primary = Some(p),
                Part::Secondary(s) if s.config().has_database(database) => {
                    // This secondary alone: the primary is told and stops
                    // sending (after taking it out of the synchronized set).
                    return s
                        .set_suspended_here(database, suspended)
                        .map_err(|e| Error::sql("55000", e));
                }
                _ => {}
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
        let Some(local) = self.published_config(group) else {
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
        groups
            .values()
            .filter_map(|slot| slot.part.as_ref())
            .find_map(|part| match part {
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

    /// For a database of a group here, what a backup needs to know: the
    /// group, whether this node is its primary, and, on a secondary that is
    /// NOT SYNCHRONIZING (disconnected from its primary, or suspended), why.
    /// None outside any group.
    pub fn backup_role(&self, database: &str) -> Option<(String, bool, Option<String>)> {
        let groups = self.lock();
        groups
            .values()
            .filter_map(|slot| slot.part.as_ref())
            .find_map(|part| match part {
                Part::Primary(p) if p.config().has_database(database) => {
                    Some((p.config().name.clone(), true, None))
                }
                Part::Secondary(s) if s.config().has_database(database) => {
                    let suspended = s
                        .databases()
                        .into_iter()
                        .any(|d| d.database().name() == database && d.is_suspended_here());
                    let why = if !s.is_connected() {
                        Some("it is not connected to its primary".to_string())
                    } else if suspended {
                        Some(
                            "data movement is suspended (ALTER DATABASE … SET HADR RESUME)"
                                .to_string(),
                        )
                    } else {
                        None
                    };
                    Some((s.config().name.clone(), false, why))
                }
                _ => None,
            })
    }

    /// `sys.fn_hadr_backup_is_preferred_replica(database)`: whether this
    /// replica is the one backups of `database` should run on
    /// ([`crate::backup::preferred`]); None outside any group. A primary
    /// knows which secondaries are connected; a secondary counts the other
    /// secondaries as available, and the primary when it is connected to it.
    pub fn is_preferred_backup_replica(&self, database: &str) -> Option<bool> {
        let groups = self.lock();
        let candidates = |config: &GroupConfig, available: &dyn Fn(&str) -> bool| {
            config
                .replicas
                .iter()
                .map(|r| crate::backup::Candidate {
                    name: r.name.clone(),
                    priority: r.backup_priority,
                    primary: r.name.eq_ignore_ascii_case(&config.primary),
                    available: available(&r.name),
                })
                .collect::<Vec<_>>()
        };
        let (config, candidates) = groups
            .values()
            .filter_map(|slot| slot.part.as_ref())
            .find_map(|part| match part {
                Part::Primary(p) if p.config().has_database(database) => {
                    let (config, links) = (p.config(), p.links());
                    let listed = candidates(&config, &|name| {
                        name.eq_ignore_ascii_case(&self.node)
                            || links.get(name).is_some_and(|l| l.connected)
                    });
                    Some((config, listed))
                }
                Part::Secondary(s) if s.config().has_database(database) => {
                    let (config, connected) = (s.config(), s.is_connected());
                    let listed = candidates(&config, &|name| {
                        !name.eq_ignore_ascii_case(&config.primary) || connected
                    });
                    Some((config, listed))
                }
                _ => None,
            })?;
        Some(
            crate::backup::preferred(config.automated_backup_preference, &candidates)
                .is_some_and(|name| name.eq_ignore_ascii_case(&self.node)),
        )
    }

    /// For a geo-secondary created `WITH (ALLOW_CONNECTIONS = NO)`: why
    /// sessions may not use `database` here (None: they may).
    pub fn geo_closed(&self, database: &str) -> Option<String> {
        let groups = self.lock();
        groups.values().find_map(|slot| {
            let source = slot.config.as_ref()?.database_options(database).geo_source?;
            (source.allow_connections == SecondaryConnections::No).then(|| {
                format!(
                    "database \"{database}\" is a geo-secondary of {} on server '{}' added WITH (ALLOW_CONNECTIONS = NO): it takes no sessions in this region",
                    source.database, source.server
                )
            })
        })
    }

    /// Why this node cannot serve `group`'s sessions in the role the
    /// listener chose (primary: it is the primary and holds its lease;
    /// secondary: it is a secondary connected to its primary); None when
    /// it can.
    pub fn cannot_serve(&self, group: &str, as_primary: bool) -> Option<String> {
        let groups = self.lock();
        match (groups.get(&key(group)).and_then(|s| s.part.as_ref()), as_primary) {
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

    /// The LSN read-your-writes may count on for `database`, followed, when
    /// it is a secondary here: redone, and vouched for by the connected
    /// primary (`SecondaryDb::watch_readable`).
    pub fn redone_watch(&self, database: &str) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.lock()
            .values()
            .filter_map(|slot| slot.part.as_ref())
            .find_map(|part| match part {
                Part::Secondary(s) => s
                    .databases()
                    .into_iter()
                    .find(|d| d.database().name() == database)
                    .map(|d| d.watch_readable()),
                _ => None,
            })
    }

    /// How far behind `database` may be, when it is a secondary here: what
    /// a read on it should be told (see [`Staleness`]). None on a primary
    /// or outside any group.
    pub fn staleness(&self, database: &str) -> Option<Staleness> {
        self.lock()
            .values()
            .filter_map(|slot| match slot.part.as_ref() {
                Some(Part::Secondary(s)) => Some(s),
                _ => None,
            })
            .find_map(|group| {
                let sdb = group
                    .databases()
                    .into_iter()
                    .find(|d| d.database().name() == database)?;
                Some(Staleness {
                    group: group.config().name,
                    connected: group.is_connected(),
                    suspended: sdb.is_suspended_here(),
                    redo_queue: sdb.hardened().saturating_sub(sdb.redone()),
                    newest_redone_commit_us: sdb.last_redone_commit_us(),
                })
            })
    }

    /// A snapshot of everything the `sys` views show.
    pub fn snapshot(&self) -> views::Snapshot {
        let groups = self.lock();
        let mut out = views::Snapshot::default();
        out.add_backup_history(
            &crate::backup::read_history(self.engine.data_dir()).unwrap_or_default(),
            &crate::backup::proof::read(self.engine.data_dir()),
            self.prover.get().is_some_and(|p| p.enabled()),
        );
        for name in self.engine.names() {
            if let Ok(db) = self.engine.database(&name) {
                out.add_database(&db);
            }
        }
        for slot in groups.values() {
            match &slot.part {
                Some(Part::Primary(p)) => {
                    out.add_primary(&self.node, p);
                    let config = slot.config.clone().unwrap_or_else(|| p.config());
                    out.set_failover(&config.name, config.last_failover.as_ref());
                }
                Some(Part::Secondary(s)) => out.add_secondary(&self.node, s),
                Some(Part::Joined { .. }) | None => {}
            }
        }
        let mut clustered = std::collections::BTreeSet::new();
        if let Some(cluster) = &self.cluster {
            let state = cluster.state();
            for record in state.groups.values() {
                out.set_failover_ready(&record.config.name, &record.synchronized);
                let history: Vec<_> = record.history.iter().cloned().collect();
                out.add_failover_history(&record.config.name, &history);
                clustered.insert(key(&record.config.name));
            }
            out.add_cluster(&cluster.metrics());
            out.add_geo(&state);
        }
        out.add_principals(&self.roles());
        // A group outside the cluster remembers only its last failover.
        for (name, config) in groups
            .iter()
            .filter_map(|(k, s)| Some((k, s.config.as_ref()?)))
        {
            if let (false, Some(record)) = (clustered.contains(name), &config.last_failover) {
                out.add_local_failover(&config.name, record);
            }
        }
        out.add_operations(&self.operations.list(), views::wall_us());
        out.add_memory(self.engine.memory());
        out.add_partner_refusals();
        out.add_page_repairs(&self.page_repairs.rows());
        out.add_seeding(&self.seeding.rows());
        out.add_page_scrubs(
            &self.scrubs.rows(),
            self.scrub_rate.load(std::sync::atomic::Ordering::Relaxed),
        );
        out
    }

    /// The availability database a partner replica's page repair or scrub
    /// asks about, after checking that it comes from this group's cluster.
    fn partner_database(
        &self,
        cluster_id: &str,
        group: &str,
        database: &str,
    ) -> std::result::Result<Arc<crate::engine::Database>, String> {
        let known = {
            let groups = self.lock();
            groups.get(&key(group)).and_then(|slot| {
                let config = slot.config.as_ref()?;
                let serves = matches!(slot.part, Some(Part::Primary(_) | Part::Secondary(_)));
                Some((
                    config.cluster_id == cluster_id,
                    serves && config.databases.iter().any(|d| d == database),
                ))
            })
        };
        match known {
            None => Err(format!(
                "this node holds no replica of availability group \"{group}\""
            )),
            Some((false, _)) => Err("the request comes from another cluster".to_string()),
            Some((true, false)) => Err(format!(
                "database \"{database}\" is not an availability database of group \"{group}\" on this replica"
            )),
            Some((true, true)) => self.engine.database(database).map_err(|e| e.to_string()),
        }
    }

    /// Starts the background proof of this node's backups, reading at most
    /// `rate` bytes a second (0: off).
    pub fn start_backup_proofs(&self, rate: u64) {
        let _ = self
            .prover
            .set(crate::backup::Prover::start(self.engine.data_dir(), rate));
    }

    /// Sets the read rate of every BACKUP on this node
    /// (`--backup-kib-per-s`), bytes a second, 0 for unlimited; without
    /// it, [`Manager::backup_rate`] is the default of the replica's role.
    pub fn set_backup_rate(&self, rate: u64) {
        let _ = self.backup_rate.set(rate);
    }

    /// The most bytes a second a BACKUP here reads
    /// ([`crate::backup::rate`]), on the primary of its database (or
    /// outside a group) or on a secondary; 0: unlimited.
    pub fn backup_rate(&self, primary: bool) -> u64 {
        self.backup_rate
            .get()
            .copied()
            .unwrap_or_else(|| crate::backup::rate::default_rate(primary))
    }

    /// True when this node sets its backups' read rate
    /// (`--backup-kib-per-s`), false when each role's default applies.
    pub fn backup_rate_is_set(&self) -> bool {
        self.backup_rate.get().is_some()
    }

    /// Queues the background proof of backup `id` (when proofs run).
    pub fn prove_backup(&self, id: &str) {
        if let Some(p) = self.prover.get() {
            p.submit(id);
        }
    }

    /// Starts automatic page repair and scrubbing on this node
    /// ([`crate::repair`]): scheduled passes at `scrub_rate` bytes a second
    /// (none when 0), passes at once on a file SQLite found malformed.
    pub fn start_page_repair(self: &Arc<Self>, scrub_rate: u64) {
        crate::repair::spawn(self.engine.clone(), self.clone(), self.page_repairs.clone());
        self.scrub_rate
            .store(scrub_rate, std::sync::atomic::Ordering::Relaxed);
        crate::repair::spawn_scrubber(
            self.engine.clone(),
            self.clone(),
            self.scrubs.clone(),
            scrub_rate,
        );
    }
}

impl crate::repair::Topology for Manager {
    fn partners(&self, database: &str) -> Option<crate::repair::Partners> {
        let groups = self.lock();
        for slot in groups.values() {
            let Some(config) = &slot.config else { continue };
            if !config.databases.iter().any(|d| d == database) {
                continue;
            }
            let endpoint = |name: &str| {
                config
                    .replicas
                    .iter()
                    .find(|r| r.name.eq_ignore_ascii_case(name))
                    .map(|r| (r.name.clone(), r.endpoint))
            };
            let (primary_here, replicas, others) = match &slot.part {
                Some(Part::Primary(p)) => {
                    let synchronized = p
                        .sync_states()
                        .into_iter()
                        .filter(|(name, _, _)| name == database)
                        .flat_map(|(_, sync, _)| {
                            sync.replicas()
                                .filter(|(_, r)| {
                                    r.state == crate::replication::sync::SyncState::Synchronized
                                })
                                .map(|(name, _)| name.clone())
                                .collect::<Vec<_>>()
                        })
                        .filter_map(|name| endpoint(&name))
                        .collect();
                    (true, synchronized, Vec::new())
                }
                Some(Part::Secondary(_)) => {
                    let others = config
                        .replicas
                        .iter()
                        .filter(|r| {
                            !r.name.eq_ignore_ascii_case(&config.primary)
                                && !r.name.eq_ignore_ascii_case(&self.node)
                        })
                        .map(|r| (r.name.clone(), r.endpoint))
                        .collect();
                    (
                        false,
                        endpoint(&config.primary).into_iter().collect(),
                        others,
                    )
                }
                _ => continue,
            };
            return Some(crate::repair::Partners {
                group: config.name.clone(),
                cluster_id: config.cluster_id.clone(),
                primary_here,
                replicas,
                others,
            });
        }
        None
    }

    fn suspend_for_page(&self, database: &str, why: Option<String>) {
        let groups = self.lock();
        let secondary = groups.values().find_map(|slot| match &slot.part {
            Some(Part::Secondary(s)) if s.config().has_database(database) => Some(s.clone()),
            _ => None,
        });
        drop(groups);
        let Some(secondary) = secondary else { return };
        let what = if why.is_some() {
            "suspended"
        } else {
            "resumed"
        };
        match secondary.suspend_for_page(database, why) {
            Ok(()) => tracing::debug!(database, "data movement {what} for automatic page repair"),
            Err(e) => tracing::warn!(
                database,
                "cannot change data movement for automatic page repair: {e}"
            ),
        }
    }
}

#[async_trait]
impl Admission for Manager {
    fn seed_staging(&self) -> std::path::PathBuf {
        self.engine.data_dir().join("backup").join("staging")
    }

    fn seeding_board(&self) -> Arc<crate::replication::seed::SeedingBoard> {
        self.seeding.clone()
    }

    async fn seeded(
        self: Arc<Self>,
        group: &str,
        database: &str,
        file: std::path::PathBuf,
    ) -> std::result::Result<(), String> {
        let request = crate::backup::RestoreRequest {
            database: database.to_string(),
            path: Some(file.clone()),
            kind: crate::backup::Kind::Full,
            recovery: false,
            // The group's copy here (empty, or too old) is replaced when
            // the secondary starts again with the restored one.
            replace: true,
            stop: None,
            progress: None,
            read: None,
        };
        let engine = self.engine.clone();
        let restored = tokio::task::spawn_blocking(move || {
            crate::backup::restore(&engine, engine.data_dir(), &request)
        })
        .await;
        let _ = std::fs::remove_file(&file);
        match restored {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("cannot restore the seed of {database}: {e}")),
            Err(e) => return Err(format!("cannot restore the seed of {database}: {e}")),
        }
        // The secondary starts again with the restored copy
        // (`ensure_database`), as after a manual restore's JOIN.
        self.ask(group, Request::JoinDatabase, false)
            .await
            .map_err(|e| format!("the seed of {database} is restored, but the secondary did not start again with it: {e}"))
    }

    async fn page_for_partner(
        &self,
        request: &crate::repair::PageRequest,
    ) -> std::result::Result<(crate::log::Lsn, Vec<u8>), String> {
        let db = self.partner_database(&request.cluster_id, &request.group, &request.database)?;
        crate::repair::answer(&db, request).await
    }

    async fn page_sums_for_partner(
        &self,
        request: &crate::repair::SumsRequest,
    ) -> std::result::Result<(crate::log::Lsn, Vec<u32>), String> {
        let db = self.partner_database(&request.cluster_id, &request.group, &request.database)?;
        crate::repair::answer_sums(&db, request, &self.scrubs).await
    }

    async fn geo_forwarder(
        self: Arc<Self>,
        request: &crate::replication::geo::GeoRequest,
    ) -> std::result::Result<Arc<crate::replication::geo::Forwarder>, String> {
        self.admit_geo_source(request).await
    }

    async fn end_geo_secondary(
        self: Arc<Self>,
        database: &str,
        source_server: &str,
        planned: bool,
        at: crate::log::Lsn,
        handover: Option<crate::replication::wire::Handover>,
    ) -> std::result::Result<crate::log::Lsn, String> {
        self.make_independent(database, source_server, planned, at, handover)
            .await
    }

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
        let (part, config) = {
            let groups = self.lock();
            match groups.get(&key(group)) {
                None => (None, None),
                Some(slot) => (slot.part.clone(), slot.config.clone()),
            }
        };
        let foreign = |known: &str| {
            let reason = format!(
                "peer belongs to cluster {cluster_id}, but this replica belongs to cluster {known}"
            );
            crate::net::count_refusal(crate::net::Partner::Replication, &reason);
            Err(reason)
        };
        match (part, config) {
            (None, None) => Err(format!(
                "this node has not joined availability group \"{group}\" (run ALTER AVAILABILITY GROUP {group} JOIN here)"
            )),
            (Some(Part::Joined { cluster_id: Some(known) }), _) if known != cluster_id => {
                foreign(&known)
            }
            (_, Some(config)) if config.cluster_id != cluster_id => foreign(&config.cluster_id),
            (Some(Part::Secondary(_)), Some(config)) if epoch < config.epoch => Err(format!(
                "epoch {epoch} is older than epoch {} known here",
                config.epoch
            )),
            // A newer epoch means another replica became primary: this one
            // steps down when the definition arrives.
            (Some(Part::Primary(_)), Some(config)) if epoch <= config.epoch => Err(format!(
                "this replica is the primary of availability group \"{group}\" at epoch {}",
                config.epoch
            )),
            _ => Ok(()),
        }
    }

    async fn accept_config(
        &self,
        config: GroupConfig,
    ) -> std::result::Result<Arc<SecondaryGroup>, String> {
        if self.witness {
            return Err(
                "this node is a witness: it votes in the cluster and hosts no replica".into(),
            );
        }
        let inbox = self.inbox(&config.name).ok_or_else(|| {
            format!(
                "this node has not joined availability group \"{}\" (run ALTER AVAILABILITY GROUP {} JOIN here)",
                config.name, config.name
            )
        })?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        inbox
            .send(Input::Peer(Box::new(config), tx))
            .map_err(|_| "the group was dropped here".to_string())?;
        rx.await
            .map_err(|_| "the group was dropped here".to_string())?
    }
}

/// The SQLSTATE and hint of a role machine's refusal (the edge of the
/// orchestrator: the front end shows these as they are).
fn role_error(group: &str, e: RoleError) -> Error {
    let message = e.to_string();
    match e {
        RoleError::NoGroup(_) => no_group(group),
        RoleError::NotPrimary(_) => Error::sql("25006", message),
        RoleError::AlreadyPrimary(_) | RoleError::NoData(_) => Error::sql("55000", message),
        RoleError::Busy(_) => Error::sql("55000", message)
            .with_hint("another failover or definition change of the group is in progress on this replica"),
        RoleError::NotSynchronized(_) => Error::sql("55000", message).with_hint(
            "wait until sys.dm_hadr_database_replica_states shows SYNCHRONIZED, or use FORCE_FAILOVER_ALLOW_DATA_LOSS",
        ),
        RoleError::NoPlannedFailover => Error::sql("0A000", message)
            .with_hint("use ALTER AVAILABILITY GROUP … FORCE_FAILOVER_ALLOW_DATA_LOSS"),
        RoleError::Refused(_) => Error::sql("55000", message),
        RoleError::Unavailable(_) => Error::sql("55000", message).with_hint(
            "bring a majority of the group's nodes back, or use a CLUSTER_TYPE = NONE group",
        ),
        RoleError::TakeOver(_) => Error::sql("55000", message)
            .with_hint("this replica stays a secondary; see its log, and retry the failover"),
    }
}

/// What a secondary database knows of how far behind its primary it is
/// ([`Manager::staleness`]): the log it received but has not redone, and
/// whether log still arrives. It cannot see log the primary has not sent
/// (a primary-side suspension, a slow link): those show on the primary.
#[derive(Debug, Clone, PartialEq)]
pub struct Staleness {
    /// The availability group.
    pub group: String,
    /// A primary is connected and shipping.
    pub connected: bool,
    /// Data movement is suspended from this side.
    pub suspended: bool,
    /// Bytes of log hardened here and not yet redone.
    pub redo_queue: u64,
    /// Commit time of the newest record redone here (µs since the Unix
    /// epoch).
    pub newest_redone_commit_us: Option<i64>,
}

impl Staleness {
    /// Seconds the reads here trail the primary by, as `/replica?lag=` and
    /// `sys.dm_hadr_database_replica_states` count it for a secondary: 0
    /// with nothing left to redo, else the age of the newest redone commit
    /// (None: no commit redone yet, so unknown).
    pub fn lag_seconds(&self, now_us: i64) -> Option<f64> {
        if self.redo_queue == 0 {
            return Some(0.0);
        }
        self.newest_redone_commit_us
            .map(|t| (now_us.saturating_sub(t)).max(0) as f64 / 1e6)
    }
}
