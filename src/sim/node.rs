//! A simulated node: its role machine and what its driver runs — the
//! primary's links, lease and commit rule, the secondary's intake, hardening
//! and redo — over a simulated database, as `ag::driver`,
//! `replication::primary` and `replication::secondary` run them in a real
//! node.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use crate::ag::clustered::{LEASE, RENEW_EVERY};
use crate::ag::role::{Action, Event, Outcome, ReplyId, RoleMachine, State, Work};
use crate::ag::store::Membership;
use crate::cluster::{Command, CommandResult};
use crate::engine::{Closed, Fence, PrimaryFence, Writes};
use crate::group::{AvailabilityMode, ClusterType, GroupConfig};
use crate::log::{Lsn, Record};
use crate::replication::link::{
    check_batch, plan_start, Intake, Liveness, LocalLog, OwnLog, Start,
};
use crate::replication::sync::{CommitCheck, DbSync, LeaveReason, SyncState};
use crate::replication::wire::DatabasePosition;
use crate::replication::ReplicationError;

use super::db::{payload, record, Db, FileState, Payload};
use super::{Sim, DB, GROUP, MS};

/// How long a primary waits before it tries a link again.
const RECONNECT: u64 = 200 * MS;
/// Records a primary sends in one step.
const BATCH: usize = 64;
/// How long a commit waits for too few synchronized replicas.
const PATIENCE: u64 = 10_000 * MS;
/// How long a drain may take.
const DRAIN_WITHIN: u64 = 60_000 * MS;
/// How often partners ping.
const PING: u64 = 1000 * MS;

/// A message between nodes.
#[derive(Debug, Clone)]
pub(crate) enum Msg {
    Hello {
        epoch: u64,
        config: Box<GroupConfig>,
    },
    Welcome(Box<DatabasePosition>),
    Refuse(String),
    Records {
        epoch: u64,
        records: Vec<Record>,
    },
    Rewind(Lsn),
    Progress {
        hardened: Lsn,
        redone: Lsn,
        first: Lsn,
    },
    Config(Box<GroupConfig>),
    Ping,
}

/// The primary's view of one link.
#[derive(Debug, Clone)]
pub(crate) enum PLink {
    Down {
        retry_at: u64,
    },
    Connecting {
        since: u64,
    },
    Up {
        next: Lsn,
        live: Liveness,
        pinged: u64,
        /// Seeded or rewound: reports count once the log restarted here.
        restart: Option<Lsn>,
    },
}

/// The primary role's running part.
#[derive(Debug, Clone)]
pub(crate) struct Primary {
    pub config: GroupConfig,
    pub sync: DbSync,
    pub links: BTreeMap<usize, PLink>,
    pub cleared: bool,
    pub last_renew: u64,
    /// Commits waiting: (transaction, end LSN, since).
    pub commits: Vec<(u64, Lsn, u64)>,
    /// Replicas the cluster knows as synchronized (this primary's view).
    pub announced: BTreeSet<String>,
    /// Replicas that must leave the synchronized set in the cluster
    /// before they leave it here.
    pub leaving: BTreeMap<String, LeaveReason>,
}

/// The secondary role's running part.
#[derive(Debug, Clone)]
pub(crate) struct Secondary {
    pub config: GroupConfig,
    pub intake: Intake,
    pub closed: bool,
    pub floor: u64,
    /// The connected primary: node, epoch, liveness, last ping sent.
    pub link: Option<(usize, u64, Liveness, u64)>,
    pub reported: (Lsn, Lsn),
    pub draining_since: Option<u64>,
}

/// A node.
pub(crate) struct Node {
    pub name: String,
    pub up: bool,
    pub paused: bool,
    pub machine: RoleMachine,
    pub stored: Option<Membership>,
    pub db: Db,
    pub fence: Fence,
    pub primary: Option<Primary>,
    pub secondary: Option<Secondary>,
    pub wake_at: Option<u64>,
    pub queue: VecDeque<Event>,
    /// Records redone per step (0: redo stopped).
    pub redo_rate: usize,
    next_reply: u64,
    /// Primaries waiting for an answer to their Hello, by reply id.
    peers: BTreeMap<ReplyId, usize>,
    /// The cluster version this node has applied.
    seen: u64,
}

/// A short name for a machine state.
pub(crate) fn state_name(state: &State) -> &'static str {
    match state {
        State::Absent => "Absent",
        State::Joined { .. } => "Joined",
        State::Secondary { .. } => "Secondary",
        State::TakingOffice { .. } => "TakingOffice",
        State::Primary { .. } => "Primary",
        State::Changing { .. } => "Changing",
    }
}

impl Node {
    pub fn new(name: &str) -> Node {
        Node {
            name: name.to_string(),
            up: true,
            paused: false,
            machine: RoleMachine::new(name, GROUP),
            stored: None,
            db: Db::default(),
            fence: Fence::Standalone,
            primary: None,
            secondary: None,
            wake_at: None,
            queue: VecDeque::new(),
            redo_rate: 16,
            next_reply: 0,
            peers: BTreeMap::new(),
            seen: 0,
        }
    }

    pub fn reply_id(&mut self) -> ReplyId {
        self.next_reply += 1;
        self.next_reply
    }

    /// Commits transaction `tx` of `parts` records if writes are open.
    pub fn commit(&mut self, now: u64, tx: u64, parts: u32) -> bool {
        let Some(epoch) = self.fence.epoch() else {
            return false;
        };
        if self.fence.check(now).is_err() {
            return false;
        }
        let Some(p) = self.primary.as_mut() else {
            return false;
        };
        let mut end = 0;
        for part in 1..=parts {
            end = self.db.append(record(
                epoch,
                Payload::Tx {
                    id: tx,
                    part,
                    parts,
                },
            ));
        }
        self.db.file.insert(tx);
        self.db.applied = end;
        p.sync.appended(end);
        p.commits.push((tx, end, now));
        true
    }

    pub fn kill(&mut self) -> Vec<u64> {
        let lost: Vec<u64> = self
            .primary
            .as_ref()
            .map(|p| p.commits.iter().map(|c| c.0).collect())
            .unwrap_or_default();
        self.up = false;
        self.paused = false;
        self.primary = None;
        self.secondary = None;
        self.wake_at = None;
        self.queue.clear();
        self.peers.clear();
        self.fence = Fence::Standalone;
        let durable = self.db.durable;
        self.db.truncate_from(durable);
        lost
    }

    pub fn restart(&mut self, images: &[FileState]) {
        self.up = true;
        let before = if self.db.first == 0 {
            FileState::new()
        } else {
            self.db.file.clone()
        };
        self.db.recover(images, &before);
        self.db.durable = self.db.end();
        self.machine = RoleMachine::new(&self.name, GROUP);
        self.seen = 0;
        if let Some(m) = self.stored.clone() {
            self.queue.push_back(Event::Start(Box::new(m)));
        }
    }

    fn positions(&self) -> DatabasePosition {
        DatabasePosition {
            database: DB.into(),
            epoch: self.secondary.as_ref().map_or(0, |s| s.intake.epoch),
            end_lsn: self.db.durable.max(self.db.first),
            redone_lsn: self.db.applied,
            epoch_history: self.db.history.clone(),
            last_record: self.db.last_record(),
        }
    }
}

/// The simulated log as the real batch check sees it.
struct View<'a>(&'a Db);

impl LocalLog for View<'_> {
    fn first(&self) -> Lsn {
        self.0.first
    }
    fn end(&self) -> Lsn {
        self.0.end()
    }
    fn same(&self, record: &Record) -> Result<Option<u64>, ReplicationError> {
        Ok(self
            .0
            .at(record.lsn)
            .filter(|r| *r == record)
            .map(|r| r.epoch))
    }
}

impl Sim {
    /// Feeds node `i`'s queued events to its machine and carries out the
    /// actions, until nothing is queued.
    pub(crate) fn run_machine(&mut self, i: usize) {
        let mut guard = 0;
        while let Some(event) = self.nodes[i].queue.pop_front() {
            guard += 1;
            assert!(
                guard < 10_000,
                "{}: the role machine does not settle",
                self.nodes[i].name
            );
            let before = state_name(self.nodes[i].machine.state());
            let now = crate::ag::role::Now {
                mono_us: self.now,
                wall_us: self.now as i64,
            };
            let actions = self.nodes[i].machine.step(now, event);
            let after = state_name(self.nodes[i].machine.state());
            if before != after {
                self.note(format!("{}: {before} -> {after}", self.nodes[i].name));
            }
            for action in actions {
                self.act(i, action);
            }
        }
    }

    fn act(&mut self, i: usize, action: Action) {
        let now = self.now;
        match action {
            Action::StartSecondary(config) => {
                let node = &mut self.nodes[i];
                node.fence = Fence::Secondary {
                    group: GROUP.into(),
                    primary: config.primary.clone(),
                };
                node.secondary = Some(Secondary {
                    config,
                    intake: Intake {
                        epoch: node.db.newest_epoch(),
                        rewind_to: None,
                    },
                    closed: false,
                    floor: 0,
                    link: None,
                    reported: (0, 0),
                    draining_since: None,
                });
            }
            Action::UpdateSecondary(config) => {
                if let Some(s) = self.nodes[i].secondary.as_mut() {
                    s.config = config;
                }
            }
            Action::StopSecondary => self.nodes[i].secondary = None,
            Action::Drain => match self.nodes[i].secondary.as_mut() {
                Some(s) => {
                    s.closed = true;
                    s.draining_since = Some(now);
                }
                None => self.nodes[i].queue.push_back(Event::Finished {
                    work: Work::Drain,
                    outcome: Outcome::Failed("no secondary runs here".into()),
                }),
            },
            Action::Promote(config) => {
                let node = &mut self.nodes[i];
                let whole = node.db.whole_end();
                let outcome = if node.db.applied < whole {
                    Outcome::Failed("redo is behind".into())
                } else {
                    let applied = node.db.applied;
                    node.db.truncate_from(applied);
                    node.db.begin_epoch(config.epoch);
                    node.fence = Fence::Primary(PrimaryFence {
                        group: GROUP.into(),
                        epoch: config.epoch,
                        log_epoch: config.epoch,
                        writes: Writes::Closed(Closed::TakingOffice),
                        hook: None,
                    });
                    node.secondary = None;
                    Outcome::Done
                };
                node.queue.push_back(Event::Finished {
                    work: Work::Promote,
                    outcome,
                });
            }
            Action::StartPrimary {
                config,
                suspend_all,
            } => {
                let node = &mut self.nodes[i];
                let clustered = config.cluster_type != ClusterType::None;
                node.db.begin_epoch(config.epoch);
                node.db.applied = node.db.end();
                node.fence = Fence::Primary(PrimaryFence {
                    group: GROUP.into(),
                    epoch: config.epoch,
                    log_epoch: config.epoch,
                    writes: if clustered {
                        Writes::Closed(Closed::AwaitingLease)
                    } else {
                        Writes::Unleased
                    },
                    hook: None,
                });
                let secondaries: Vec<(String, bool)> = config
                    .secondaries()
                    .map(|r| {
                        (
                            r.name.clone(),
                            r.availability_mode == AvailabilityMode::SynchronousCommit,
                        )
                    })
                    .collect();
                let mut sync = DbSync::new(
                    node.db.end(),
                    &secondaries,
                    config.required_synchronized_secondaries as usize,
                );
                if suspend_all {
                    for (r, _) in &secondaries {
                        sync.leave(r, LeaveReason::Suspended);
                    }
                }
                let links = config
                    .secondaries()
                    .filter_map(|r| self.index(&r.name))
                    .map(|j| (j, PLink::Down { retry_at: now }))
                    .collect();
                self.nodes[i].primary = Some(Primary {
                    config,
                    sync,
                    links,
                    cleared: !clustered,
                    last_renew: 0,
                    commits: Vec::new(),
                    announced: BTreeSet::new(),
                    leaving: BTreeMap::new(),
                });
                self.nodes[i].secondary = None;
            }
            Action::UpdatePrimary(config) => {
                let targets: Vec<usize> = match self.nodes[i].primary.as_mut() {
                    Some(p) => {
                        p.config = config.clone();
                        p.links
                            .iter()
                            .filter(|(_, l)| matches!(l, PLink::Up { .. }))
                            .map(|(j, _)| *j)
                            .collect()
                    }
                    None => Vec::new(),
                };
                for j in targets {
                    self.send(i, j, Msg::Config(Box::new(config.clone())));
                }
            }
            Action::StopPrimary => {
                let node = &mut self.nodes[i];
                if let Some(epoch) = node.fence.epoch() {
                    if let Fence::Primary(p) = &mut node.fence {
                        if p.epoch == epoch {
                            p.writes = Writes::Closed(Closed::SteppingDown);
                        }
                    }
                }
                if let Some(p) = node.primary.take() {
                    for (tx, _, _) in p.commits {
                        self.failed.insert(tx);
                        self.note(format!(
                            "{}: commit of tx {tx} fails (stepping down)",
                            self.nodes[i].name
                        ));
                    }
                }
            }
            Action::Release => self.nodes[i].fence = Fence::Standalone,
            Action::Propose(command, work) => {
                let outcome = match self.propose(i, &command) {
                    Ok(CommandResult::Ok) => Outcome::Done,
                    Ok(CommandResult::Rejected(why)) => Outcome::Refused(why),
                    Err(why) => Outcome::Failed(why),
                };
                self.nodes[i]
                    .queue
                    .push_back(Event::Finished { work, outcome });
            }
            Action::Save(m) => self.nodes[i].stored = Some(m),
            Action::Remove => self.nodes[i].stored = None,
            Action::EpochFloor(epoch) => {
                if let Some(s) = self.nodes[i].secondary.as_mut() {
                    s.floor = s.floor.max(epoch);
                    if s.link.is_some_and(|(_, e, _, _)| e < s.floor) {
                        s.link = None;
                    }
                }
            }
            Action::Reply(_, result) => {
                if let Err(e) = result {
                    self.note(format!("{}: {e}", self.nodes[i].name));
                }
            }
            Action::Accept(reply) => {
                // usize::MAX: a definition that came in-band on a running link.
                if let Some(from) = self.nodes[i]
                    .peers
                    .remove(&reply)
                    .filter(|&f| f != usize::MAX)
                {
                    self.accept_link(i, from);
                }
            }
            Action::Refuse(reply, why) => match self.nodes[i].peers.remove(&reply) {
                Some(usize::MAX) => {
                    if let Some(s) = self.nodes[i].secondary.as_mut() {
                        s.link = None;
                    }
                }
                Some(from) => self.send(i, from, Msg::Refuse(why)),
                None => {}
            },
            Action::WakeAt(at) => {
                let node = &mut self.nodes[i];
                node.wake_at = Some(node.wake_at.map_or(at, |w| w.min(at)));
            }
        }
    }

    /// The secondary of node `i` takes the link from primary `from`.
    fn accept_link(&mut self, i: usize, from: usize) {
        let epoch = self.nodes[from]
            .primary
            .as_ref()
            .map_or(0, |p| p.config.epoch);
        let now = self.now;
        let node = &mut self.nodes[i];
        let Some(s) = node.secondary.as_mut() else {
            return;
        };
        if s.closed || epoch < s.floor {
            self.send(i, from, Msg::Refuse("not taking records".into()));
            return;
        }
        s.floor = s.floor.max(epoch);
        let timeout = Duration::from_secs(u64::from(
            s.config
                .replica(&node.name)
                .map_or(5, |r| r.session_timeout_s),
        ));
        s.link = Some((from, epoch, Liveness::new(now, timeout), now));
        node.db.durable = node.db.end();
        let position = node.positions();
        self.send(i, from, Msg::Welcome(Box::new(position)));
    }

    pub(crate) fn deliver(&mut self, from: usize, to: usize, msg: Msg) {
        let now = self.now;
        match msg {
            Msg::Hello { epoch, config } => {
                let node = &mut self.nodes[to];
                if node.secondary.as_ref().is_some_and(|s| epoch < s.floor) {
                    self.send(
                        to,
                        from,
                        Msg::Refuse(format!("epoch {epoch} is older than one known here")),
                    );
                    return;
                }
                let reply = node.reply_id();
                node.peers.insert(reply, from);
                node.queue
                    .push_back(Event::PeerDefinition { reply, config });
                let _ = epoch;
                self.run_machine(to);
            }
            Msg::Welcome(position) => {
                let Some(p) = self.nodes[to].primary.as_ref() else {
                    return;
                };
                if !matches!(p.links.get(&from), Some(PLink::Connecting { .. })) {
                    return;
                }
                let db = &self.nodes[to].db;
                let ours = OwnLog {
                    first: db.first,
                    end: db.end(),
                    history: &db.history,
                };
                let start = plan_start(ours, |lsn| db.checksum_at(lsn), Some(&position));
                let name = self.nodes[from].name.clone();
                let (next, hardened, redone) = match start {
                    Start::Continue(at) => (at, position.end_lsn, position.redone_lsn),
                    Start::Seed | Start::Rewind { .. } => {
                        if let Start::Rewind {
                            diverged,
                            their_end,
                        } = start
                        {
                            self.note(format!(
                                "{} -> {name}: rewind (discards LSN {diverged}..{their_end} there)",
                                self.nodes[to].name
                            ));
                        } else {
                            self.note(format!(
                                "{} -> {name}: seed from a full image",
                                self.nodes[to].name
                            ));
                        }
                        let image = self.images.len() as u64;
                        self.images.push(self.nodes[to].db.file.clone());
                        let epoch = self.nodes[to].fence.epoch().unwrap_or(1);
                        let at = self.nodes[to].db.end();
                        self.nodes[to]
                            .db
                            .append(record(epoch, Payload::Image(image)));
                        self.nodes[to].db.applied = self.nodes[to].db.end();
                        if matches!(start, Start::Rewind { .. }) {
                            self.send(to, from, Msg::Rewind(at));
                        }
                        (at, 0, 0)
                    }
                };
                let end = self.nodes[to].db.end();
                let p = self.nodes[to].primary.as_mut().expect("checked above");
                p.sync.appended(end);
                p.sync.connected(&name, hardened, redone);
                let timeout = Duration::from_secs(u64::from(
                    p.config.replica(&name).map_or(5, |r| r.session_timeout_s),
                ));
                let restart = (!matches!(start, Start::Continue(_))).then_some(next);
                p.links.insert(
                    from,
                    PLink::Up {
                        next,
                        live: Liveness::new(now, timeout),
                        pinged: now,
                        restart,
                    },
                );
                let state = p.sync.replica(&name).map(|r| r.state);
                self.note(format!(
                    "{} -> {name}: link up from LSN {next} ({state:?})",
                    self.nodes[to].name
                ));
            }
            Msg::Refuse(why) => {
                if let Some(p) = self.nodes[to].primary.as_mut() {
                    if let Some(link) = p.links.get_mut(&from) {
                        *link = PLink::Down {
                            retry_at: now + RECONNECT,
                        };
                        let name = self.nodes[from].name.clone();
                        self.link_down(to, &name, LeaveReason::Disconnected);
                    }
                }
                if let Some(s) = self.nodes[to].secondary.as_mut() {
                    if s.link.is_some_and(|(p, _, _, _)| p == from) {
                        s.link = None;
                    }
                }
                let _ = why;
            }
            Msg::Records { epoch, records } => self.receive(to, from, epoch, records),
            Msg::Rewind(lsn) => {
                if let Some(s) = self.nodes[to].secondary.as_mut() {
                    if s.link.is_some_and(|(p, _, _, _)| p == from) {
                        s.intake.rewind_to = Some(lsn);
                    }
                }
            }
            Msg::Progress {
                hardened,
                redone,
                first,
            } => {
                let name = self.nodes[from].name.clone();
                if let Some(p) = self.nodes[to].primary.as_mut() {
                    if let Some(PLink::Up { live, restart, .. }) = p.links.get_mut(&from) {
                        live.heard(now);
                        if restart.is_none_or(|at| at == first) {
                            *restart = None;
                            p.sync.progress(&name, hardened, redone);
                        }
                    }
                }
            }
            Msg::Config(config) => {
                let node = &mut self.nodes[to];
                if node
                    .secondary
                    .as_ref()
                    .is_some_and(|s| s.link.is_some_and(|(p, _, _, _)| p == from))
                {
                    let reply = node.reply_id();
                    node.peers.insert(reply, usize::MAX);
                    node.queue
                        .push_back(Event::PeerDefinition { reply, config });
                    self.run_machine(to);
                }
            }
            Msg::Ping => {
                if let Some(p) = self.nodes[to].primary.as_mut() {
                    if let Some(PLink::Up { live, .. }) = p.links.get_mut(&from) {
                        live.heard(now);
                    }
                }
                if let Some(s) = self.nodes[to].secondary.as_mut() {
                    if let Some((p, _, live, _)) = s.link.as_mut() {
                        if *p == from {
                            live.heard(now);
                        }
                    }
                }
            }
        }
    }

    /// A secondary hardens a batch (the real check decides).
    fn receive(&mut self, i: usize, from: usize, epoch: u64, records: Vec<Record>) {
        let now = self.now;
        let node = &mut self.nodes[i];
        let Some(s) = node.secondary.as_mut() else {
            return;
        };
        let Some((p, link_epoch, live, _)) = s.link.as_mut() else {
            return;
        };
        if *p != from || *link_epoch != epoch {
            return;
        }
        live.heard(now);
        if s.closed || epoch < s.floor {
            s.link = None;
            self.send(i, from, Msg::Refuse("not taking records".into()));
            return;
        }
        match check_batch(s.intake, &View(&node.db), DB, records) {
            Ok(plan) => {
                if let Some((lsn, e)) = plan.restart {
                    node.db.restart_at(lsn, e);
                }
                for r in plan.append {
                    node.db.append(r);
                }
                s.intake = plan.intake;
            }
            Err(e) => {
                s.link = None;
                let line = format!("{}: {e}", node.name);
                self.send(i, from, Msg::Refuse(e.to_string()));
                self.note(line);
            }
        }
    }

    /// One step of node `i`'s driver and parts.
    pub(crate) fn node_step(&mut self, i: usize) {
        let now = self.now;
        // The cluster's newest state reaches a node in the majority.
        if self.majority().is_some_and(|m| m.contains(&i))
            && self.nodes[i].seen < self.cluster.version
        {
            self.nodes[i].seen = self.cluster.version;
            if let Some(record) = self.cluster.record(GROUP).cloned() {
                self.nodes[i]
                    .queue
                    .push_back(Event::Cluster(Box::new(record)));
            }
        }
        if self.nodes[i].wake_at.is_some_and(|at| at <= now) {
            self.nodes[i].wake_at = None;
            self.nodes[i].queue.push_back(Event::Tick);
        }
        // fsync.
        if !self.nodes[i].db.no_sync {
            self.nodes[i].db.durable = self.nodes[i].db.end();
        }
        self.secondary_step(i);
        self.primary_step(i);
        self.run_machine(i);
    }

    fn secondary_step(&mut self, i: usize) {
        let now = self.now;
        let images = self.images.clone();
        let node = &mut self.nodes[i];
        let Some(s) = node.secondary.as_mut() else {
            return;
        };
        let hardened = node.db.durable;
        node.db.redo(hardened, node.redo_rate, &images);
        if let Some(since) = s.draining_since {
            let whole = node.db.whole_end();
            if node.db.applied >= whole && node.db.durable >= node.db.end() {
                s.draining_since = None;
                node.queue.push_back(Event::Finished {
                    work: Work::Drain,
                    outcome: Outcome::Done,
                });
            } else if now > since + DRAIN_WITHIN {
                s.draining_since = None;
                s.closed = false;
                node.queue.push_back(Event::Finished {
                    work: Work::Drain,
                    outcome: Outcome::Failed("redo is behind".into()),
                });
            }
        }
        let mut out = Vec::new();
        if let Some((p, _, live, pinged)) = s.link.as_mut() {
            if live.timed_out(now) {
                s.link = None;
            } else {
                let progress = (node.db.durable, node.db.applied);
                if progress != s.reported {
                    s.reported = progress;
                    out.push((
                        *p,
                        Msg::Progress {
                            hardened: progress.0,
                            redone: progress.1,
                            first: node.db.first,
                        },
                    ));
                }
                if now >= *pinged + PING {
                    *pinged = now;
                    out.push((*p, Msg::Ping));
                }
            }
        }
        for (to, msg) in out {
            self.send(i, to, msg);
        }
    }

    fn link_down(&mut self, i: usize, replica: &str, reason: LeaveReason) {
        self.note(format!(
            "{} -> {replica}: link down ({reason:?})",
            self.nodes[i].name
        ));
        if let Some(p) = self.nodes[i].primary.as_mut() {
            let synchronized = p
                .sync
                .replica(replica)
                .is_some_and(|r| r.state == SyncState::Synchronized);
            if synchronized && p.config.cluster_type != ClusterType::None {
                // RPO 0: out of the cluster's set before commits stop waiting.
                p.leaving.insert(replica.to_string(), reason);
            } else {
                p.sync.leave(replica, reason);
            }
        }
    }

    fn primary_step(&mut self, i: usize) {
        let now = self.now;
        let Some(mut p) = self.nodes[i].primary.take() else {
            return;
        };
        let epoch = p.config.epoch;
        let clustered = p.config.cluster_type != ClusterType::None;
        // A starting primary empties the cluster's sets, then leases.
        if !p.cleared {
            let entries: Vec<String> = self
                .cluster
                .record(GROUP)
                .and_then(|r| r.synchronized.get(DB))
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default();
            let mut all = true;
            for replica in entries {
                let leave = Command::SetSynchronized {
                    group: GROUP.into(),
                    database: DB.into(),
                    replica,
                    synchronized: false,
                    epoch,
                    version: p.config.version,
                };
                all &= matches!(self.propose(i, &leave), Ok(CommandResult::Ok));
            }
            p.cleared = all;
        }
        if clustered && p.cleared && now >= p.last_renew + RENEW_EVERY.as_micros() as u64 {
            p.last_renew = now;
            let renew = Command::RenewLease {
                group: GROUP.into(),
                holder: self.nodes[i].name.clone(),
                epoch,
                duration_ms: LEASE.as_millis() as u64,
            };
            match self.propose(i, &renew) {
                Ok(CommandResult::Ok) => {
                    if let Fence::Primary(f) = &mut self.nodes[i].fence {
                        if f.epoch == epoch
                            && matches!(
                                f.writes,
                                Writes::Until(_)
                                    | Writes::Closed(Closed::AwaitingLease | Closed::LeaseLost)
                            )
                        {
                            f.writes = Writes::Until(now + LEASE.as_micros() as u64);
                        }
                    }
                }
                Ok(CommandResult::Rejected(_)) => {
                    let deposed = self.cluster.record(GROUP).is_some_and(|r| {
                        r.config.epoch > epoch
                            || !r.config.primary.eq_ignore_ascii_case(&self.nodes[i].name)
                    });
                    if let (true, Fence::Primary(f)) = (deposed, &mut self.nodes[i].fence) {
                        if f.epoch == epoch {
                            f.writes = Writes::Closed(Closed::LeaseLost);
                        }
                    }
                }
                Err(_) => {}
            }
        }
        // Leaving the synchronized set: the cluster first.
        for (replica, reason) in p.leaving.clone() {
            let leave = Command::SetSynchronized {
                group: GROUP.into(),
                database: DB.into(),
                replica: replica.clone(),
                synchronized: false,
                epoch,
                version: p.config.version,
            };
            if !clustered || matches!(self.propose(i, &leave), Ok(CommandResult::Ok)) {
                p.sync.leave(&replica, reason);
                p.announced.remove(&replica);
                p.leaving.remove(&replica);
            }
        }
        // Joining: after the primary counts it, the cluster is told.
        if clustered && p.cleared {
            let joined: Vec<String> = p
                .sync
                .replicas()
                .filter(|(n, r)| {
                    r.state == SyncState::Synchronized
                        && !p.announced.contains(*n)
                        && !p.leaving.contains_key(*n)
                })
                .map(|(n, _)| n.clone())
                .collect();
            for replica in joined {
                let join = Command::SetSynchronized {
                    group: GROUP.into(),
                    database: DB.into(),
                    replica: replica.clone(),
                    synchronized: true,
                    epoch,
                    version: p.config.version,
                };
                if matches!(self.propose(i, &join), Ok(CommandResult::Ok)) {
                    p.announced.insert(replica);
                }
            }
        }
        // Links.
        let mut sends = Vec::new();
        let mut downs = Vec::new();
        for (&j, link) in p.links.iter_mut() {
            let replica = &self.nodes[j].name;
            match link {
                // As the sender does: a link comes back only after the
                // replica's departure was recorded.
                PLink::Down { .. } if p.leaving.contains_key(replica) => {}
                PLink::Down { retry_at } if *retry_at <= now => {
                    *link = PLink::Connecting { since: now };
                    sends.push((
                        j,
                        Msg::Hello {
                            epoch,
                            config: Box::new(p.config.clone()),
                        },
                    ));
                }
                PLink::Connecting { since } if now > *since + 5_000 * MS => {
                    *link = PLink::Down { retry_at: now };
                }
                PLink::Up {
                    next, live, pinged, ..
                } => {
                    if live.timed_out(now) {
                        downs.push((j, LeaveReason::SessionTimeout));
                        *link = PLink::Down {
                            retry_at: now + RECONNECT,
                        };
                        continue;
                    }
                    let start = self.nodes[i].db.log.partition_point(|r| r.lsn < *next);
                    let batch: Vec<Record> = self.nodes[i].db.log[start..]
                        .iter()
                        .take(BATCH)
                        .cloned()
                        .collect();
                    if let Some(last) = batch.last() {
                        *next = last.end_lsn();
                        sends.push((
                            j,
                            Msg::Records {
                                epoch,
                                records: batch,
                            },
                        ));
                    }
                    if now >= *pinged + PING {
                        *pinged = now;
                        sends.push((j, Msg::Ping));
                    }
                }
                _ => {}
            }
        }
        let end = self.nodes[i].db.end();
        p.sync.appended(end);
        // Commits.
        let durable = self.nodes[i].db.durable;
        let open = self.nodes[i].fence.check(now).is_ok();
        let mut waiting = Vec::new();
        for (tx, lsn, since) in std::mem::take(&mut p.commits) {
            match p.sync.check_commit(lsn) {
                CommitCheck::Ready if durable >= lsn && open => {
                    self.acked.insert(tx, i);
                }
                _ if !open => {
                    self.failed.insert(tx);
                    self.note(format!(
                        "{}: commit of tx {tx} fails: writes closed",
                        self.nodes[i].name
                    ))
                }
                CommitCheck::TooFewSynchronized { .. } if now > since + PATIENCE => {
                    self.failed.insert(tx);
                    self.note(format!(
                        "{}: commit of tx {tx} fails: too few synchronized",
                        self.nodes[i].name
                    ))
                }
                _ => waiting.push((tx, lsn, since)),
            }
        }
        p.commits = waiting;
        self.nodes[i].primary = Some(p);
        for (j, reason) in downs {
            let name = self.nodes[j].name.clone();
            self.link_down(i, &name, reason);
        }
        for (j, msg) in sends {
            self.send(i, j, msg);
        }
    }
}

impl Db {
    /// Every transaction the log holds (whole or not).
    pub(crate) fn log_txs(&self) -> BTreeSet<u64> {
        let mut out = self.file.clone();
        for r in &self.log {
            if let Payload::Tx { id, .. } = payload(r) {
                out.insert(id);
            }
        }
        out
    }
}
