//! The driver of one group's [`RoleMachine`]: a task that owns the machine,
//! takes its events from one inbox (operator statements, the cluster's
//! state, primaries that connect, outcomes of its own work, timers), and
//! carries out the actions — the only place that starts and stops this
//! node's replication parts of the group. Being one task, it runs one
//! transition at a time by construction.
//!
//! Long work (draining redo, proposals to the cluster) runs in tasks of its
//! own that report back through the inbox, so the machine keeps answering;
//! making the databases writable (a checkpoint and a file append) runs
//! inline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::role::{Action, Event, Outcome, Request, RoleError, RoleMachine, Work};
use super::store::Membership;
use super::{clustered, failover, Manager, Part};
use crate::cluster::{Cluster, Command, CommandResult};
use crate::engine::{monotonic_us, Database, Fence};
use crate::group::{ClusterType, GroupConfig, SeedingMode};
use crate::replication::primary::{PrimaryGroup, StartOptions, SyncArbiter};
use crate::replication::secondary::SecondaryGroup;

/// How long a drain may take before the takeover is given up (and
/// retried by the machine).
const DRAIN_WITHIN: Duration = Duration::from_secs(60);
/// How long a proposal is retried while the cluster elects a leader.
const PROPOSE_WITHIN: Duration = Duration::from_secs(10);

/// What reaches a group's driver.
pub(crate) enum Input {
    /// An event for the machine.
    Event(Event),
    /// An operator's statement and where its answer goes.
    Request(Request, oneshot::Sender<Result<(), RoleError>>),
    /// A primary connected with this definition; the answer is the
    /// secondary that serves it, or why not.
    Peer(
        Box<GroupConfig>,
        oneshot::Sender<Result<Arc<SecondaryGroup>, String>>,
    ),
    /// The node starts with what it stored; answered once the role runs.
    Start(Box<Membership>, oneshot::Sender<()>),
}

/// A running group's driver: its inbox.
pub(crate) type Inbox = mpsc::UnboundedSender<Input>;

/// Starts the driver of `group`; events go to the returned inbox.
pub(crate) fn spawn(manager: &Arc<Manager>, group: &str) -> Inbox {
    let (tx, rx) = mpsc::unbounded_channel();
    let driver = Driver {
        manager: Arc::downgrade(manager),
        machine: RoleMachine::new(manager.node(), group),
        group: group.to_string(),
        inbox: tx.clone(),
        next_reply: 0,
        requests: HashMap::new(),
        peers: HashMap::new(),
        wake_at: None,
    };
    tokio::spawn(driver.run(rx));
    tx
}

struct Driver {
    manager: std::sync::Weak<Manager>,
    machine: RoleMachine,
    group: String,
    inbox: Inbox,
    next_reply: u64,
    requests: HashMap<u64, oneshot::Sender<Result<(), RoleError>>>,
    peers: HashMap<u64, oneshot::Sender<Result<Arc<SecondaryGroup>, String>>>,
    wake_at: Option<u64>,
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Input>) {
        loop {
            let input = match self.wake_at {
                Some(at) => {
                    let wait = Duration::from_micros(at.saturating_sub(monotonic_us()));
                    tokio::select! {
                        input = rx.recv() => input,
                        _ = tokio::time::sleep(wait) => {
                            self.wake_at = None;
                            Some(Input::Event(Event::Tick))
                        }
                    }
                }
                None => rx.recv().await,
            };
            let Some(input) = input else { return };
            let mut started = None;
            let event = match input {
                Input::Start(membership, done) => {
                    started = Some(done);
                    Event::Start(membership)
                }
                Input::Event(e) => e,
                Input::Request(request, answer) => {
                    let reply = self.reply_id();
                    self.requests.insert(reply, answer);
                    Event::Request { reply, request }
                }
                Input::Peer(config, answer) => {
                    let reply = self.reply_id();
                    self.peers.insert(reply, answer);
                    Event::PeerDefinition { reply, config }
                }
            };
            let mut pending = vec![event];
            while let Some(event) = pending.pop() {
                let now = super::role::Now {
                    mono_us: monotonic_us(),
                    wall_us: super::now_us(),
                };
                let actions = self.machine.step(now, event);
                for action in actions {
                    if let Some(next) = self.act(action).await {
                        pending.push(next);
                    }
                }
            }
            if let Some(done) = started {
                let _ = done.send(());
            }
            let Some(manager) = self.manager.upgrade() else {
                return;
            };
            if let super::role::State::Joined { cluster_id } = self.machine.state() {
                if !matches!(manager.part(&self.group), Some(Part::Joined { .. })) {
                    let part = Part::Joined {
                        cluster_id: cluster_id.clone(),
                    };
                    manager.publish(&self.group, part, None);
                }
            }
            drop(manager);
            if matches!(self.machine.state(), super::role::State::Absent) {
                if let Some(manager) = self.manager.upgrade() {
                    manager.forget(&self.group);
                }
                return;
            }
        }
    }

    fn reply_id(&mut self) -> u64 {
        self.next_reply += 1;
        self.next_reply
    }

    /// Carries out one action; an inline piece of work returns its outcome
    /// as the next event.
    async fn act(&mut self, action: Action) -> Option<Event> {
        let manager = self.manager.upgrade()?;
        match action {
            Action::StartSecondary(config) => {
                if let Err(e) = manager
                    .store
                    .save_suspended(&config.name, &Default::default())
                {
                    tracing::warn!(group = %self.group, "cannot forget recorded suspensions: {e}");
                }
                let mut databases = Vec::new();
                let manual = config
                    .replica(manager.node())
                    .is_some_and(|r| r.seeding_mode == SeedingMode::Manual);
                // A copy seeded from a streamed backup replaces the old one:
                // the stopped secondary's part (which holds it) goes first.
                if config.databases.iter().any(|name| {
                    crate::backup::is_restoring(manager.engine.data_dir(), name)
                        && manager.engine.database(name).is_ok()
                }) {
                    manager.unpublish(&self.group);
                }
                for name in &config.databases {
                    let retired = seed_replaces(&manager.engine, name).await;
                    let ensured = manager.ensure_database(name, manual);
                    if let Some(old) = retired.and_then(|w| w.upgrade()) {
                        if manager
                            .engine
                            .database(name)
                            .is_ok_and(|now| Arc::ptr_eq(&now, &old))
                        {
                            tracing::warn!(group = %self.group, database = %name, "the seeded copy did not replace this replica's copy: its sessions are admitted again");
                            old.keep();
                        }
                    }
                    match ensured {
                        Ok(Some(db)) => databases.push(db),
                        Ok(None) => {
                            tracing::info!(
                                group = %self.group, database = %name,
                                "database {name} is not here and this replica's SEEDING_MODE is MANUAL: restore it here WITH NORECOVERY (RESTORE DATABASE, then RESTORE LOG), then ALTER DATABASE {name} SET HADR AVAILABILITY GROUP = {}",
                                self.group
                            )
                        }
                        Err(e) => {
                            tracing::error!(group = %self.group, database = %name, "cannot create the secondary database: {e}")
                        }
                    }
                }
                apply_read_only(&databases, &config);
                let secondary = SecondaryGroup::start(config.clone(), databases);
                manager.publish(&self.group, Part::Secondary(secondary), Some(config));
            }
            Action::UpdateSecondary(config) => {
                if let Some(Part::Secondary(s)) = manager.part(&self.group) {
                    let databases: Vec<_> =
                        s.databases().iter().map(|d| d.database().clone()).collect();
                    apply_read_only(&databases, &config);
                    s.set_config(config.clone());
                }
                manager.publish_config(&self.group, config);
            }
            Action::StopSecondary => {
                if let Some(Part::Secondary(s)) = manager.part(&self.group) {
                    s.stop();
                }
            }
            Action::Drain => {
                let Some(Part::Secondary(s)) = manager.part(&self.group) else {
                    return Some(Event::Finished {
                        work: Work::Drain,
                        outcome: Outcome::Failed("no secondary runs here".into()),
                    });
                };
                let inbox = self.inbox.clone();
                tokio::spawn(async move {
                    let outcome = match s.drain_and_stop(DRAIN_WITHIN).await {
                        Ok(()) => Outcome::Done,
                        Err(e) => Outcome::Failed(e),
                    };
                    let _ = inbox.send(Input::Event(Event::Finished {
                        work: Work::Drain,
                        outcome,
                    }));
                });
            }
            Action::Promote(config) => {
                crate::crashpoint::hit("ag.promote.before");
                let mut outcome = Outcome::Done;
                for name in &config.databases {
                    if config.is_geo_secondary(name) {
                        // Written in another region: this node becomes its
                        // forwarder, never its writer.
                        continue;
                    }
                    let promoted = match manager.engine.database(name) {
                        Ok(db) => {
                            db.promote(&config.name, config.epoch, config.log_epoch(name))
                                .await
                        }
                        Err(e) => Err(e),
                    };
                    if let Err(e) = promoted {
                        outcome = Outcome::Failed(format!("database \"{name}\": {e}"));
                        break;
                    }
                    crate::crashpoint::hit("ag.promote.one_database");
                }
                return Some(Event::Finished {
                    work: Work::Promote,
                    outcome,
                });
            }
            Action::StartPrimary {
                config,
                suspend_all,
            } => {
                // A geo-secondary that became independent (its source
                // ended the link) is written here from now on: its file is
                // made writable first, as in a promotion. Its forwarder
                // drained it before the change was proposed.
                for name in &config.databases {
                    let Ok(db) = manager.engine.database(name) else {
                        continue;
                    };
                    if config.is_geo_secondary(name)
                        || !matches!(db.fence(), crate::engine::Fence::GeoSecondary { .. })
                    {
                        continue;
                    }
                    if let Err(e) = db
                        .promote(&config.name, config.epoch, config.log_epoch(name))
                        .await
                    {
                        tracing::error!(group = %self.group, database = %name, "the former geo-secondary cannot become writable: {e}");
                    }
                }
                match self.start_primary(&manager, config.clone(), suspend_all) {
                    Ok(primary) => {
                        manager.publish(&self.group, Part::Primary(primary), Some(config))
                    }
                    Err(e) => {
                        tracing::error!(group = %self.group, "cannot start the primary role: {e}")
                    }
                }
            }
            Action::UpdatePrimary(config) => {
                apply_read_only(&manager.open_databases(&config), &config);
                if let Some(Part::Primary(p)) = manager.part(&self.group) {
                    p.update_config(config.clone());
                }
                manager.publish_config(&self.group, config);
            }
            Action::StopPrimary => {
                if let Some(Part::Primary(p)) = manager.part(&self.group) {
                    p.stop();
                }
            }
            Action::Release => {
                if let Some(config) = self
                    .machine
                    .config()
                    .cloned()
                    .or_else(|| manager.published_config(&self.group))
                {
                    for db in manager.open_databases(&config) {
                        if let Err(e) = db.set_fence(Fence::Standalone) {
                            tracing::warn!(database = %db.name(), "cannot release the database: {e}");
                        }
                    }
                }
            }
            Action::Propose(command, work) => {
                let Some(cluster) = manager.cluster.clone() else {
                    return Some(Event::Finished {
                        work,
                        outcome: Outcome::Failed("this node takes part in no cluster".into()),
                    });
                };
                let inbox = self.inbox.clone();
                tokio::spawn(async move {
                    let outcome = match propose_retrying(&cluster, command, PROPOSE_WITHIN).await {
                        Ok(CommandResult::Ok) => Outcome::Done,
                        Ok(CommandResult::Rejected(why)) => Outcome::Refused(why),
                        Err(e) => Outcome::Failed(e.to_string()),
                    };
                    let _ = inbox.send(Input::Event(Event::Finished { work, outcome }));
                });
            }
            Action::Save(membership) => {
                if let Membership::Defined(config) = &membership {
                    manager.publish_config(&self.group, (**config).clone());
                }
                if let Membership::Joined { cluster_id, .. } = &membership {
                    manager.publish(
                        &self.group,
                        Part::Joined {
                            cluster_id: cluster_id.clone(),
                        },
                        None,
                    );
                }
                if let Err(e) = manager.store.save(&membership) {
                    tracing::error!(group = %self.group, "cannot save the group's definition: {e}");
                }
            }
            Action::Remove => {
                if let Err(e) = manager.store.remove(&self.group) {
                    tracing::error!(group = %self.group, "cannot remove the group's files: {e}");
                }
            }
            Action::EpochFloor(epoch) => {
                if let Some(Part::Secondary(s)) = manager.part(&self.group) {
                    s.raise_epoch_floor(epoch);
                }
            }
            Action::Reply(reply, result) => {
                if let Some(answer) = self.requests.remove(&reply) {
                    let _ = answer.send(result);
                }
            }
            Action::Accept(reply) => {
                let serving = match manager.part(&self.group) {
                    Some(Part::Secondary(s)) => Ok(s),
                    _ => Err("this replica runs no secondary for the group".to_string()),
                };
                if let Some(answer) = self.peers.remove(&reply) {
                    let _ = answer.send(serving);
                }
            }
            Action::Refuse(reply, why) => {
                if let Some(answer) = self.peers.remove(&reply) {
                    let _ = answer.send(Err(why));
                }
            }
            Action::WakeAt(at) => {
                self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
            }
        }
        None
    }

    /// The primary's links, commit hook and (under a cluster) lease.
    fn start_primary(
        &self,
        manager: &Arc<Manager>,
        config: GroupConfig,
        suspend_all: bool,
    ) -> crate::engine::Result<Arc<PrimaryGroup>> {
        let mut suspended = manager.store.load_suspended(&config.name)?;
        if suspend_all {
            suspended.extend(config.databases.iter().cloned());
        }
        suspended.retain(|d| config.has_database(d));
        manager.store.save_suspended(&config.name, &suspended)?;
        let clustered = manager
            .cluster
            .clone()
            .filter(|_| config.cluster_type != ClusterType::None);
        let cleared = tokio::sync::watch::channel(false).0;
        let arbiter = clustered.clone().map(|cluster| {
            Arc::new(clustered::ClusterArbiter {
                cluster,
                group: config.name.clone(),
                epoch: config.epoch,
                version: std::sync::atomic::AtomicU64::new(config.version),
                cleared: cleared.subscribe(),
            })
        });
        let inbox = self.inbox.clone();
        let options = StartOptions {
            suspended,
            on_divergence: Some(Arc::new(move |replica: &str, database: &str, lost| {
                let _ = inbox.send(Input::Event(Event::Rejoined {
                    replica: replica.to_string(),
                    database: database.to_string(),
                    lost,
                }));
            })),
            leased: clustered.is_some(),
            arbiter: arbiter.clone().map(|a| a as Arc<dyn SyncArbiter>),
            seeding: Some(manager.seeding.clone()),
            geo: manager.cluster.clone().map(|c| {
                Arc::new(super::geo::ClusterDirectory {
                    cluster: c,
                    manager: self.manager.clone(),
                }) as Arc<dyn crate::replication::geo::GeoDirectory>
            }),
        };
        let databases: Vec<Arc<Database>> = manager.open_databases(&config);
        apply_read_only(&databases, &config);
        let policy = failover::Policy {
            failure_condition_level: config.failure_condition_level,
            health_check_timeout_ms: config.health_check_timeout_ms,
        };
        let (name, epoch, version) = (config.name.clone(), config.epoch, config.version);
        let primary = PrimaryGroup::start(config, manager.node(), &manager.engine, options)?;
        if let Some(arbiter) = arbiter {
            primary.on_update(Box::new(move |c: &GroupConfig| {
                arbiter
                    .version
                    .store(c.version, std::sync::atomic::Ordering::SeqCst)
            }));
        }
        if let Some(cluster) = clustered {
            clustered::spawn_lease(
                cluster,
                name,
                manager.node().to_string(),
                epoch,
                version,
                policy,
                databases,
                cleared,
                primary.stopped(),
            );
        }
        Ok(primary)
    }
}

/// Sets each database's READ_ONLY as the definition says.
fn apply_read_only(databases: &[Arc<Database>], config: &GroupConfig) {
    for db in databases {
        db.set_read_only(config.database_options(db.name()).read_only);
    }
}

/// Proposes a command, retrying while the cluster elects a leader (a
/// stale leader address, no leader yet) until `within` runs out.
pub(crate) async fn propose_retrying(
    cluster: &Cluster,
    command: Command,
    within: Duration,
) -> std::result::Result<CommandResult, crate::cluster::Error> {
    let deadline = std::time::Instant::now() + within;
    loop {
        match cluster.propose_anywhere(command.clone()).await {
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::debug!("waiting for the cluster: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// How long a secondary starting with a seeded copy waits for the old
/// copy's users (the stopped secondary's tasks, sessions) to let go.
const SEED_REPLACES_WITHIN: Duration = Duration::from_secs(20);

/// How often a secondary starting with a seeded copy asks again that the
/// sessions on the old copy end (a busy one ends at its next message; a
/// session that connected just before the first request is ended by the
/// next).
const SEED_RETIRE_EVERY: Duration = Duration::from_millis(200);

/// Before a secondary starts with a copy seeded from a streamed backup
/// (`crate::replication::seed`): ends the sessions on the copy it replaces
/// (`Database::retire`; a client that keeps a connection open, or polls,
/// held the seeding up for as long as it stayed) and waits, bounded, until
/// nothing holds that copy. Returns the copy retired, which the caller
/// keeps (`Database::keep`) if the seeded one did not replace it.
async fn seed_replaces(
    engine: &crate::engine::Engine,
    name: &str,
) -> Option<std::sync::Weak<crate::engine::Database>> {
    if !crate::backup::is_restoring(engine.data_dir(), name) {
        return None;
    }
    let retired = engine.database(name).ok().map(|old| Arc::downgrade(&old));
    let retire = || {
        if let Some(old) = retired.as_ref().and_then(std::sync::Weak::upgrade) {
            old.retire();
        }
    };
    retire();
    let start = tokio::time::Instant::now();
    let deadline = start + SEED_REPLACES_WITHIN;
    let mut asked = start;
    while engine.in_use(name) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if asked.elapsed() >= SEED_RETIRE_EVERY {
            retire();
            asked = tokio::time::Instant::now();
        }
    }
    if engine.in_use(name) {
        tracing::warn!(
            database = name,
            "the copy a seeded one replaces is still in use after {} s: replacing it anyway",
            SEED_REPLACES_WITHIN.as_secs()
        );
    } else {
        tracing::info!(
            database = name,
            waited_ms = start.elapsed().as_millis() as u64,
            "the copy a seeded one replaces is let go"
        );
    }
    retired
}
