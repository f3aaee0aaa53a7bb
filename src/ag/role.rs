//! The role machine: this node's role in one availability group, as a state
//! machine without I/O. Events go in ([`RoleMachine::step`], with the time
//! passed in), actions come out; a thin driver (`ag::driver`) runs the
//! actions — starting and stopping the replication links, draining redo,
//! making databases writable, proposing to the cluster, saving the
//! definition — and feeds their outcomes back as events. The deterministic
//! simulation (`crate::sim`) drives the same machine with simulated actions.
//!
//! # States
//! ```text
//!            Join                  definition from a primary
//!  Absent ────────► Joined ───────────────────────────────────► Secondary
//!    │ Create                                                      │  ▲
//!    ▼                                  the cluster names this     │  │ drain or promotion
//!  Primary ◄──── TakingOffice ◄──────── node at a newer epoch ─────┘  │ failed: back, retried
//!   │  ▲  ▲       Draining → Promoting → AwaitingPredecessor ─────────┘
//!   │  │  └──────────────────────────────────────────────┘ start primary
//!   │  └── Changing (the cluster takes the new definition first)
//!   └────► Secondary   (the cluster or a primary names another at a newer epoch)
//! ```
//!
//! # Rules, and why
//! 1. **One transition at a time.** While `TakingOffice` or `Changing`,
//!    other role changes wait: a primary that connects is refused ("retry
//!    shortly") and operator requests get "a role change is in progress".
//!    Interleaved transitions started two receivers on one log and left
//!    groups half-promoted.
//! 2. **Level-triggered.** Whenever idle, the machine compares its role
//!    with the cluster's newest record of the group and starts the
//!    transition that closes the gap (take office, step down). A failed
//!    drain or promotion is retried after [`RETRY`]; nothing depends on
//!    catching one particular event.
//! 3. **Drain before promotion.** A secondary takes office only after its
//!    intake is closed and every record in its log is hardened and redone
//!    (never while its log restarted at a full image it has not wholly
//!    redone); the databases are then made writable *fenced*
//!    (`TakingOffice`).
//! 4. **No second writer.** After a planned or forced failover the old
//!    primary's lease may still run: the new primary opens its writes only
//!    once the cluster records that the old one stepped down, or a lease
//!    plus margin after this node learned of its promotion (the old lease
//!    was renewed before the promotion was committed). An automatic
//!    failover is decided only after the lease ran out, so it need not wait.
//! 5. **Step down at once.** A primary that learns of a newer epoch closes
//!    its writes, tells the cluster (`StepDown`), and becomes a secondary of
//!    the new primary; its divergent tail, if any, is rewound by the new
//!    primary when it connects.
//! 6. **Definitions go through the cluster first.** A clustered primary
//!    changes its definition only after the cluster took it (`PutGroup`),
//!    so the restarted primary's synchronized-set additions carry the
//!    version the cluster knows. A change that touches only settings
//!    (timeouts, routing, connection settings, policy) is applied in place
//!    without restarting the links.
//! 7. **Secondaries follow the newest epoch.** A secondary that learns of
//!    a newer epoch than its primary's raises its epoch floor: the older
//!    primary's link is closed, so it can neither ship records nor collect
//!    acknowledgements there.

use std::time::Duration;

use crate::cluster::{Command, GroupRecord};
use crate::group::{FailoverRecord, GroupConfig};

use super::clustered::{LEASE, MARGIN};
use super::store::Membership;

/// How long a failed drain or promotion waits before it is tried again.
pub const RETRY: Duration = Duration::from_millis(500);

/// The time, injected: the monotonic clock (µs) for waits and timers, and
/// the wall clock (µs since the Unix epoch) for what users read (the time
/// of a failover).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic microseconds.
    pub mono_us: u64,
    /// Microseconds since the Unix epoch.
    pub wall_us: i64,
}

impl From<u64> for Now {
    /// A test clock whose wall time equals its monotonic time.
    fn from(mono_us: u64) -> Now {
        Now {
            mono_us,
            wall_us: mono_us as i64,
        }
    }
}

/// Identifies a caller waiting for an answer (an operator statement, a
/// primary's connection).
pub type ReplyId = u64;

/// An operator's statement about the group, run on this node.
#[derive(Debug, Clone)]
pub enum Request {
    /// `CREATE AVAILABILITY GROUP` here: this node is the primary.
    Create(Box<GroupConfig>),
    /// `ALTER AVAILABILITY GROUP g JOIN`.
    Join,
    /// A definition change on the primary: the edited definition (its
    /// version is set by the machine).
    Change(Box<GroupConfig>),
    /// `FAILOVER` (planned, without data loss) on a secondary.
    Failover,
    /// `FORCE_FAILOVER_ALLOW_DATA_LOSS` on a secondary.
    ForceFailover,
    /// `DROP AVAILABILITY GROUP`.
    Drop,
    /// `ALTER DATABASE d SET HADR AVAILABILITY GROUP = g` on a secondary:
    /// a database restored here `WITH NORECOVERY` (manual seeding) joins,
    /// so the secondary starts again with it and the primary plans its
    /// link anew.
    JoinDatabase,
}

/// Work that finishes later, reported back in [`Event::Finished`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// [`Action::Drain`].
    Drain,
    /// [`Action::Promote`].
    Promote,
    /// [`Action::Propose`] of a promotion (planned or forced failover).
    ProposePromotion,
    /// [`Action::Propose`] of a new definition.
    ProposeDefinition,
    /// [`Action::Propose`] whose outcome does not matter (`StepDown`).
    ProposeNotice,
}

/// How a piece of work ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done (a proposal: committed and applied).
    Done,
    /// The cluster applied the proposal's check and refused it.
    Refused(String),
    /// It failed (a proposal: the cluster did not answer).
    Failed(String),
}

/// Something that happened.
#[derive(Debug, Clone)]
pub enum Event {
    /// The node starts with what it stored about the group.
    Start(Box<Membership>),
    /// The cluster's record of the group (clustered groups), as this node
    /// applied it.
    Cluster(Box<GroupRecord>),
    /// A primary connected with its definition; answer with
    /// [`Action::Accept`] or [`Action::Refuse`].
    PeerDefinition {
        /// Who waits.
        reply: ReplyId,
        /// The primary's definition.
        config: Box<GroupConfig>,
    },
    /// An operator's statement; answered with [`Action::Reply`].
    Request {
        /// Who waits.
        reply: ReplyId,
        /// What to do.
        request: Request,
    },
    /// Work started by an action ended.
    Finished {
        /// Which.
        work: Work,
        /// How.
        outcome: Outcome,
    },
    /// A replica that connected to this primary showed what a failover
    /// lost: `Some((start, end))` of `database`'s log was discarded there.
    Rejoined {
        /// The replica.
        replica: String,
        /// The database.
        database: String,
        /// The LSN range its log held that this primary's does not.
        lost: Option<(u64, u64)>,
    },
    /// Time passed (see [`Action::WakeAt`]).
    Tick,
}

/// Why an operator's statement failed; the front end chooses the SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    /// The group is not defined here.
    #[error("availability group \"{0}\" does not exist on this node")]
    NoGroup(String),
    /// A statement only the primary may run.
    #[error("availability group \"{0}\" can only be changed on its primary replica")]
    NotPrimary(String),
    /// Failover asked of the primary.
    #[error("this replica is already the primary of availability group \"{0}\"")]
    AlreadyPrimary(String),
    /// Joined, nothing received yet.
    #[error("this replica has joined availability group \"{0}\" but no primary has connected yet")]
    NoData(String),
    /// Another transition runs.
    #[error("availability group \"{0}\" is changing roles on this replica; retry in a moment")]
    Busy(String),
    /// Planned failover to a replica that may lack acknowledged commits.
    #[error("planned failover refused: this replica is not SYNCHRONIZED for database \"{0}\", so it may lack acknowledged commits")]
    NotSynchronized(String),
    /// Planned failover of a group no cluster manages.
    #[error("a CLUSTER_TYPE = NONE group has no planned failover")]
    NoPlannedFailover,
    /// The cluster refused.
    #[error("the cluster refused: {0}")]
    Refused(String),
    /// The cluster did not answer.
    #[error("the cluster did not answer, so no majority of its nodes decided: {0}")]
    Unavailable(String),
    /// Taking office failed; the replica stays a secondary.
    #[error("cannot take over: {0}")]
    TakeOver(String),
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start receiving as a secondary of `config.primary` (redo resumes
    /// from each file's applied LSN).
    StartSecondary(GroupConfig),
    /// A newer definition with the same primary, epoch and databases: the
    /// running secondary takes it without restarting.
    UpdateSecondary(GroupConfig),
    /// Stop receiving and redoing.
    StopSecondary,
    /// Close the secondary's intake, harden and redo everything in the
    /// logs ([`Work::Drain`]; on failure the intake opens again).
    Drain,
    /// Make the databases writable at `config.epoch`, fenced
    /// (`TakingOffice`) ([`Work::Promote`]).
    Promote(GroupConfig),
    /// Start the primary role: links, commit hook, the lease (clustered),
    /// with data movement of every database suspended when `suspend_all`.
    StartPrimary {
        /// The definition.
        config: GroupConfig,
        /// After a forced failover.
        suspend_all: bool,
    },
    /// A newer definition that changes only settings: the running primary
    /// takes it in place.
    UpdatePrimary(GroupConfig),
    /// Close writes (`SteppingDown`), stop the links, fail waiting commits.
    StopPrimary,
    /// The databases leave the group and are writable here again.
    Release,
    /// Propose to the cluster ([`Work`] names the outcome's event).
    Propose(Command, Work),
    /// Store what the node knows of the group.
    Save(Membership),
    /// Forget the group (files, the group's entry).
    Remove,
    /// Raise the epoch below which the secondary takes no primary.
    EpochFloor(u64),
    /// Answer an operator.
    Reply(ReplyId, Result<(), RoleError>),
    /// Accept a primary's connection (the running secondary serves it).
    Accept(ReplyId),
    /// Refuse a primary's connection, saying why.
    Refuse(ReplyId, String),
    /// Send [`Event::Tick`] at this time (µs, monotonic) or later.
    WakeAt(u64),
}

/// Where the machine is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Not defined here.
    Absent,
    /// Joined; waiting for the first primary.
    Joined {
        /// Learned from the first primary that connects.
        cluster_id: Option<String>,
    },
    /// Receiving from `config.primary`.
    Secondary {
        /// The definition.
        config: GroupConfig,
    },
    /// Becoming primary at `config.epoch`.
    TakingOffice {
        /// The definition it was a secondary under.
        from: GroupConfig,
        /// The definition it becomes primary under.
        config: GroupConfig,
        /// How far.
        step: Step,
        /// A forced failover (data movement starts suspended).
        forced: bool,
        /// When this node learned it was named (µs): the old primary's
        /// lease ends at most [`LEASE`] after.
        named_at: u64,
    },
    /// The primary.
    Primary {
        /// The definition.
        config: GroupConfig,
    },
    /// The primary, waiting for the cluster to take a new definition.
    Changing {
        /// The running definition.
        config: GroupConfig,
        /// The proposed one.
        next: GroupConfig,
    },
}

/// The steps of taking office.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Waiting for [`Work::Drain`].
    Draining,
    /// Waiting for [`Work::Promote`].
    Promoting,
    /// A promotion failed; it is tried again at this time.
    RetryPromotion(u64),
    /// Writable but fenced, until the old primary stopped or this time.
    AwaitingPredecessor(u64),
}

/// A failover asked for here, waiting for the cluster to name this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TakeOver {
    reply: ReplyId,
    forced: bool,
}

/// This node's role in one group.
#[derive(Debug, Clone)]
pub struct RoleMachine {
    node: String,
    group: String,
    state: State,
    /// The cluster's newest record of the group (clustered groups).
    cluster: Option<GroupRecord>,
    /// A statement waiting for the transition it started.
    waiting: Option<(ReplyId, Request)>,
    /// A failover asked here, until the cluster names this node.
    takeover: Option<TakeOver>,
    /// No transition starts before this time (after a failure).
    quiet_until: u64,
    /// The epoch floor last set on the secondary.
    floor: u64,
    /// The wall clock at the current step.
    wall_us: i64,
}

impl RoleMachine {
    /// A machine for `group` on node `node` (the group not defined yet).
    pub fn new(node: &str, group: &str) -> RoleMachine {
        RoleMachine {
            node: node.to_string(),
            group: group.to_string(),
            state: State::Absent,
            cluster: None,
            waiting: None,
            takeover: None,
            quiet_until: 0,
            floor: 0,
            wall_us: 0,
        }
    }

    /// Where the machine is.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The definition this node runs under, if any.
    pub fn config(&self) -> Option<&GroupConfig> {
        match &self.state {
            State::Secondary { config }
            | State::Primary { config }
            | State::Changing { config, .. } => Some(config),
            State::TakingOffice { from, .. } => Some(from),
            State::Absent | State::Joined { .. } => None,
        }
    }

    fn me(&self, name: &str) -> bool {
        name.eq_ignore_ascii_case(&self.node)
    }

    /// True when the cluster manages the group (its record was seen).
    fn clustered(config: &GroupConfig) -> bool {
        config.cluster_type != crate::group::ClusterType::None
    }

    /// Takes one event at time `now`; returns the actions.
    pub fn step(&mut self, now: impl Into<Now>, event: Event) -> Vec<Action> {
        let now = now.into();
        self.wall_us = now.wall_us;
        let now = now.mono_us;
        let mut out = Vec::new();
        match event {
            Event::Start(membership) => self.start(*membership, &mut out),
            Event::Cluster(record) => {
                let newer = self.cluster.as_ref().is_none_or(|c| {
                    (record.config.epoch, record.config.version)
                        >= (c.config.epoch, c.config.version)
                });
                if newer {
                    self.cluster = Some(*record);
                }
                self.on_cluster(now, &mut out);
            }
            Event::PeerDefinition { reply, config } => {
                self.peer_definition(reply, *config, &mut out)
            }
            Event::Request { reply, request } => self.request(now, reply, request, &mut out),
            Event::Finished { work, outcome } => self.finished(now, work, outcome, &mut out),
            Event::Rejoined {
                replica,
                database,
                lost,
            } => self.rejoined(&replica, &database, lost, &mut out),
            Event::Tick => {}
        }
        self.reconcile(now, &mut out);
        out
    }

    fn start(&mut self, membership: Membership, out: &mut Vec<Action>) {
        match membership {
            Membership::Joined { cluster_id, .. } => self.state = State::Joined { cluster_id },
            Membership::Defined(config) => {
                if self.me(&config.primary) {
                    out.push(Action::StartPrimary {
                        config: (*config).clone(),
                        suspend_all: false,
                    });
                    self.state = State::Primary { config: *config };
                } else {
                    out.push(Action::StartSecondary((*config).clone()));
                    self.state = State::Secondary { config: *config };
                }
            }
        }
    }

    /// The cluster's record changed: follow it where it names an epoch
    /// newer than ours (rule 2 does the rest when idle).
    fn on_cluster(&mut self, now: u64, out: &mut Vec<Action>) {
        let Some(record) = self.cluster.clone() else {
            return;
        };
        match &self.state {
            State::TakingOffice { config, .. } if record.config.epoch > config.epoch => {
                // Another replica was named while this one took office: it
                // never opened its writes, so it can simply follow.
                if self.me(&record.config.primary) {
                    return;
                }
                tracing::warn!(group = %self.group, epoch = record.config.epoch, "another replica was named primary while this one took office");
                out.push(Action::StopSecondary);
                self.become_secondary_of(record.config.clone(), out);
                self.fail_waiting(
                    RoleError::TakeOver("the cluster named another replica".into()),
                    out,
                );
            }
            State::Changing { config, .. } if record.config.epoch > config.epoch => {
                self.fail_waiting(RoleError::TakeOver("this replica was deposed".into()), out);
                self.step_down(record.config.clone(), out);
            }
            State::TakingOffice {
                step: Step::AwaitingPredecessor(until),
                ..
            } => {
                let until = *until;
                self.open_if_predecessor_stopped(now, until, out);
            }
            _ => {}
        }
    }

    /// Rule 2: when idle, close the gap between our role and the cluster's.
    fn reconcile(&mut self, now: u64, out: &mut Vec<Action>) {
        if let State::TakingOffice { step, .. } = &self.state {
            match *step {
                Step::RetryPromotion(at) if now >= at => {
                    if let State::TakingOffice { config, step, .. } = &mut self.state {
                        *step = Step::Promoting;
                        out.push(Action::Promote(config.clone()));
                    }
                }
                Step::RetryPromotion(at) => out.push(Action::WakeAt(at)),
                Step::AwaitingPredecessor(until) => {
                    self.open_if_predecessor_stopped(now, until, out)
                }
                Step::Draining | Step::Promoting => {}
            }
            return;
        }
        let Some(record) = self.cluster.clone() else {
            return;
        };
        let named = record.config.clone();
        match &self.state {
            State::Secondary { config }
                if named.epoch > config.epoch
                    && named.cluster_id == config.cluster_id
                    && Self::clustered(config) =>
            {
                if self.me(&named.primary) {
                    if now < self.quiet_until {
                        out.push(Action::WakeAt(self.quiet_until));
                        return;
                    }
                    // Rule 3: drain first.
                    let forced = self.takeover.is_some_and(|t| t.forced);
                    let mut next = named.clone();
                    next.last_failover = Some(FailoverRecord {
                        at_us: self.wall_us,
                        reason: if forced {
                            "FORCE_FAILOVER_ALLOW_DATA_LOSS".into()
                        } else {
                            "AUTOMATIC or PLANNED (the cluster named this replica)".into()
                        },
                        from: config.primary.clone(),
                        to: self.node.clone(),
                        epoch: named.epoch,
                        lost: Vec::new(),
                        checked: if forced {
                            Vec::new()
                        } else {
                            named.databases.clone()
                        },
                        loss_known: !forced,
                    });
                    tracing::info!(group = %self.group, epoch = named.epoch, "the cluster named this replica primary: draining redo");
                    self.state = State::TakingOffice {
                        from: config.clone(),
                        config: next,
                        step: Step::Draining,
                        forced,
                        named_at: now,
                    };
                    out.push(Action::Drain);
                } else if named.epoch > self.floor {
                    // Rule 7: the old primary may no longer ship here.
                    self.floor = named.epoch;
                    out.push(Action::EpochFloor(named.epoch));
                }
            }
            State::Primary { config }
                if named.epoch > config.epoch
                    && named.cluster_id == config.cluster_id
                    && !self.me(&named.primary) =>
            {
                self.step_down(named, out);
            }
            _ => {}
        }
    }

    /// Rule 5.
    fn step_down(&mut self, next: GroupConfig, out: &mut Vec<Action>) {
        let old = self.config().cloned();
        tracing::warn!(group = %self.group, new_primary = %next.primary, epoch = next.epoch, "another replica is primary at a newer epoch: stepping down");
        out.push(Action::StopPrimary);
        if let Some(old) = old.filter(Self::clustered) {
            out.push(Action::Propose(
                Command::StepDown {
                    group: old.name.clone(),
                    holder: self.node.clone(),
                    epoch: old.epoch,
                },
                Work::ProposeNotice,
            ));
        }
        self.become_secondary_of(next, out);
    }

    fn become_secondary_of(&mut self, config: GroupConfig, out: &mut Vec<Action>) {
        out.push(Action::Save(Membership::Defined(Box::new(config.clone()))));
        out.push(Action::StartSecondary(config.clone()));
        out.push(Action::EpochFloor(config.epoch));
        self.floor = config.epoch;
        self.state = State::Secondary { config };
    }

    /// Rule 4: open when the old primary stopped or its lease is over.
    fn open_if_predecessor_stopped(&mut self, now: u64, until: u64, out: &mut Vec<Action>) {
        let stopped = self
            .cluster
            .as_ref()
            .is_some_and(GroupRecord::predecessor_stopped);
        if stopped || now >= until {
            self.take_office(out);
        } else {
            out.push(Action::WakeAt(until));
        }
    }

    fn take_office(&mut self, out: &mut Vec<Action>) {
        let State::TakingOffice { config, forced, .. } = &self.state else {
            return;
        };
        let (config, forced) = (config.clone(), *forced);
        tracing::warn!(group = %self.group, epoch = config.epoch, "this replica is now the primary");
        out.push(Action::Save(Membership::Defined(Box::new(config.clone()))));
        out.push(Action::StartPrimary {
            config: config.clone(),
            suspend_all: forced,
        });
        self.state = State::Primary { config };
        self.answer_waiting(Ok(()), out);
    }

    fn peer_definition(&mut self, reply: ReplyId, config: GroupConfig, out: &mut Vec<Action>) {
        let refuse = |out: &mut Vec<Action>, why: String| out.push(Action::Refuse(reply, why));
        if self.me(&config.primary) {
            return refuse(out, "the definition names this node as primary".into());
        }
        if let Some(record) = &self.cluster {
            if config.cluster_id == record.config.cluster_id && config.epoch < record.config.epoch {
                return refuse(
                    out,
                    format!(
                        "epoch {} is older than epoch {} the cluster named",
                        config.epoch, record.config.epoch
                    ),
                );
            }
        }
        match self.state.clone() {
            State::Absent => refuse(
                out,
                format!(
                    "this node has not joined availability group \"{}\" (run ALTER AVAILABILITY GROUP {} JOIN here)",
                    self.group, self.group
                ),
            ),
            State::Joined { cluster_id } => {
                if cluster_id.as_ref().is_some_and(|known| *known != config.cluster_id) {
                    return refuse(out, foreign(&config.cluster_id, cluster_id.as_deref().unwrap_or("")));
                }
                self.become_secondary_of(config, out);
                out.push(Action::Accept(reply));
            }
            State::Secondary { config: current } => {
                if current.cluster_id != config.cluster_id {
                    return refuse(out, foreign(&config.cluster_id, &current.cluster_id));
                }
                if config.epoch < current.epoch {
                    return refuse(
                        out,
                        format!("epoch {} is older than epoch {} known here", config.epoch, current.epoch),
                    );
                }
                let seeding = |c: &GroupConfig| c.replica(&self.node).map(|r| r.seeding_mode);
                // A new SEEDING_MODE here changes which databases this
                // secondary holds (MANUAL creates none to be seeded).
                let same_shape = config.databases == current.databases
                    && config.primary.eq_ignore_ascii_case(&current.primary)
                    && config.epoch == current.epoch
                    && seeding(&config) == seeding(&current);
                if (config.epoch, config.version) <= (current.epoch, current.version) && same_shape {
                    out.push(Action::Accept(reply));
                } else if same_shape {
                    out.push(Action::Save(Membership::Defined(Box::new(config.clone()))));
                    out.push(Action::UpdateSecondary(config.clone()));
                    self.state = State::Secondary { config };
                    out.push(Action::Accept(reply));
                } else {
                    out.push(Action::StopSecondary);
                    self.become_secondary_of(config, out);
                    out.push(Action::Accept(reply));
                }
            }
            State::Primary { config: current } => {
                if current.cluster_id == config.cluster_id && config.epoch > current.epoch {
                    self.step_down(config, out);
                    out.push(Action::Accept(reply));
                } else {
                    refuse(
                        out,
                        format!(
                            "this replica is the primary of availability group \"{}\" at epoch {}",
                            self.group, current.epoch
                        ),
                    );
                }
            }
            State::TakingOffice { .. } | State::Changing { .. } => refuse(
                out,
                "this replica is changing its role in the group; retry shortly".into(),
            ),
        }
    }

    fn request(&mut self, now: u64, reply: ReplyId, request: Request, out: &mut Vec<Action>) {
        let group = self.group.clone();
        let busy = matches!(
            self.state,
            State::TakingOffice { .. } | State::Changing { .. }
        ) || self.takeover.is_some();
        match (&self.state.clone(), request) {
            (_, Request::Join) => {
                if self.state == State::Absent {
                    out.push(Action::Save(Membership::Joined {
                        name: group,
                        cluster_id: None,
                    }));
                    self.state = State::Joined { cluster_id: None };
                }
                out.push(Action::Reply(reply, Ok(())));
            }
            (State::Absent, Request::Create(config)) => {
                let config = *config;
                out.push(Action::Save(Membership::Defined(Box::new(config.clone()))));
                out.push(Action::StartPrimary {
                    config: config.clone(),
                    suspend_all: false,
                });
                self.state = State::Primary { config };
                out.push(Action::Reply(reply, Ok(())));
            }
            (State::Absent, _) => out.push(Action::Reply(reply, Err(RoleError::NoGroup(group)))),
            (_, _) if busy => out.push(Action::Reply(reply, Err(RoleError::Busy(group)))),
            (_, Request::Create(_)) => {
                out.push(Action::Reply(reply, Err(RoleError::Busy(group))));
            }
            (State::Joined { .. }, Request::Drop) => {
                out.push(Action::Remove);
                self.state = State::Absent;
                out.push(Action::Reply(reply, Ok(())));
            }
            (State::Joined { .. }, _) => {
                out.push(Action::Reply(reply, Err(RoleError::NoData(group))))
            }
            (State::Secondary { .. }, Request::Drop) => {
                out.push(Action::StopSecondary);
                out.push(Action::Release);
                out.push(Action::Remove);
                self.state = State::Absent;
                out.push(Action::Reply(reply, Ok(())));
            }
            (State::Primary { .. }, Request::Drop) => {
                out.push(Action::StopPrimary);
                out.push(Action::Release);
                out.push(Action::Remove);
                self.state = State::Absent;
                out.push(Action::Reply(reply, Ok(())));
            }
            (State::Secondary { config }, Request::JoinDatabase) => {
                out.push(Action::StopSecondary);
                out.push(Action::StartSecondary(config.clone()));
                out.push(Action::Reply(reply, Ok(())));
            }
            (State::Primary { .. }, Request::JoinDatabase) => {
                // The primary's copy is the group's: nothing to join.
                out.push(Action::Reply(reply, Ok(())));
            }
            (State::Secondary { .. }, Request::Change(_)) => {
                out.push(Action::Reply(reply, Err(RoleError::NotPrimary(group))))
            }
            (State::Primary { .. }, Request::Failover | Request::ForceFailover) => {
                out.push(Action::Reply(reply, Err(RoleError::AlreadyPrimary(group))))
            }
            (State::Primary { config }, Request::Change(next)) => {
                let mut next = *next;
                next.version = config.version + 1;
                if Self::clustered(config) {
                    out.push(Action::Propose(
                        Command::PutGroup(Box::new(next.clone())),
                        Work::ProposeDefinition,
                    ));
                    self.state = State::Changing {
                        config: config.clone(),
                        next,
                    };
                    self.waiting = Some((reply, Request::Change(Box::new(config.clone()))));
                } else {
                    let config = config.clone();
                    self.apply_change(config, next, out);
                    out.push(Action::Reply(reply, Ok(())));
                }
            }
            (State::Secondary { config }, Request::Failover) => {
                if !Self::clustered(config) {
                    return out.push(Action::Reply(reply, Err(RoleError::NoPlannedFailover)));
                }
                let Some(record) = &self.cluster else {
                    return out.push(Action::Reply(
                        reply,
                        Err(RoleError::Unavailable(
                            "this node has not learned the cluster's state yet".into(),
                        )),
                    ));
                };
                for db in &record.config.databases {
                    let synchronized = record
                        .synchronized
                        .get(db)
                        .is_some_and(|set| set.iter().any(|r| self.me(r)));
                    if !synchronized {
                        return out.push(Action::Reply(
                            reply,
                            Err(RoleError::NotSynchronized(db.clone())),
                        ));
                    }
                }
                out.push(Action::Propose(
                    Command::Promote {
                        group: record.config.name.clone(),
                        new_primary: self.node.clone(),
                        new_epoch: record.config.epoch + 1,
                        require_synchronized: true,
                        after_lease: false,
                        at_us: self.wall_us,
                        reason: format!(
                            "ALTER AVAILABILITY GROUP {} FAILOVER on {}",
                            record.config.name, self.node
                        ),
                    },
                    Work::ProposePromotion,
                ));
                self.takeover = Some(TakeOver {
                    reply,
                    forced: false,
                });
            }
            (State::Secondary { config }, Request::ForceFailover) => {
                if Self::clustered(config) {
                    let epoch = self
                        .cluster
                        .as_ref()
                        .map_or(config.epoch, |r| r.config.epoch.max(config.epoch));
                    out.push(Action::Propose(
                        Command::Promote {
                            group: config.name.clone(),
                            new_primary: self.node.clone(),
                            new_epoch: epoch + 1,
                            require_synchronized: false,
                            after_lease: false,
                            at_us: self.wall_us,
                            reason: format!(
                                "ALTER AVAILABILITY GROUP {} FORCE_FAILOVER_ALLOW_DATA_LOSS on {}",
                                config.name, self.node
                            ),
                        },
                        Work::ProposePromotion,
                    ));
                    self.takeover = Some(TakeOver {
                        reply,
                        forced: true,
                    });
                } else {
                    // A read-scale group: no cluster, this node decides.
                    let mut next = config.clone();
                    next.primary = self.node.clone();
                    next.epoch += 1;
                    next.version += 1;
                    next.last_failover = Some(FailoverRecord {
                        at_us: self.wall_us,
                        reason: "FORCE_FAILOVER_ALLOW_DATA_LOSS".into(),
                        from: config.primary.clone(),
                        to: self.node.clone(),
                        epoch: next.epoch,
                        lost: Vec::new(),
                        checked: Vec::new(),
                        loss_known: false,
                    });
                    self.state = State::TakingOffice {
                        from: config.clone(),
                        config: next,
                        step: Step::Draining,
                        forced: true,
                        named_at: now,
                    };
                    self.waiting = Some((reply, Request::ForceFailover));
                    out.push(Action::Drain);
                }
            }
            (State::TakingOffice { .. } | State::Changing { .. }, _) => {
                out.push(Action::Reply(reply, Err(RoleError::Busy(group))))
            }
        }
    }

    /// Rule 6: in place when only settings change, else restart the links.
    fn apply_change(&mut self, config: GroupConfig, next: GroupConfig, out: &mut Vec<Action>) {
        out.push(Action::Save(Membership::Defined(Box::new(next.clone()))));
        if settings_only(&config, &next) {
            out.push(Action::UpdatePrimary(next.clone()));
        } else {
            out.push(Action::StopPrimary);
            out.push(Action::StartPrimary {
                config: next.clone(),
                suspend_all: false,
            });
        }
        self.state = State::Primary { config: next };
    }

    fn finished(&mut self, now: u64, work: Work, outcome: Outcome, out: &mut Vec<Action>) {
        match (work, self.state.clone()) {
            (
                Work::Drain,
                State::TakingOffice {
                    config,
                    step: Step::Draining,
                    from,
                    forced,
                    named_at,
                },
            ) => {
                match outcome {
                    Outcome::Done => {
                        self.state = State::TakingOffice {
                            from,
                            config: config.clone(),
                            step: Step::Promoting,
                            forced,
                            named_at,
                        };
                        out.push(Action::Promote(config));
                    }
                    Outcome::Refused(why) | Outcome::Failed(why) => {
                        // The intake opened again: still a secondary.
                        tracing::warn!(group = %self.group, "cannot take over yet: {why}");
                        self.state = State::Secondary { config: from };
                        self.quiet_until = now + RETRY.as_micros() as u64;
                        self.fail_waiting(RoleError::TakeOver(why), out);
                    }
                }
            }
            (
                Work::Promote,
                State::TakingOffice {
                    config,
                    step: Step::Promoting,
                    from,
                    forced,
                    named_at,
                },
            ) => {
                let step = match outcome {
                    Outcome::Done if !Self::clustered(&config) => {
                        self.state = State::TakingOffice {
                            from,
                            config,
                            step: Step::Promoting,
                            forced,
                            named_at,
                        };
                        self.take_office(out);
                        return;
                    }
                    Outcome::Done => {
                        Step::AwaitingPredecessor(named_at + (LEASE + MARGIN).as_micros() as u64)
                    }
                    Outcome::Refused(why) | Outcome::Failed(why) => {
                        tracing::warn!(group = %self.group, "making the databases writable failed, retrying: {why}");
                        Step::RetryPromotion(now + RETRY.as_micros() as u64)
                    }
                };
                self.state = State::TakingOffice {
                    from,
                    config,
                    step,
                    forced,
                    named_at,
                };
            }
            (Work::ProposePromotion, _) => match outcome {
                Outcome::Done => {}
                Outcome::Refused(why) => {
                    if let Some(t) = self.takeover.take() {
                        out.push(Action::Reply(t.reply, Err(RoleError::Refused(why))));
                    }
                }
                Outcome::Failed(why) => {
                    if let Some(t) = self.takeover.take() {
                        out.push(Action::Reply(t.reply, Err(RoleError::Unavailable(why))));
                    }
                }
            },
            (Work::ProposeDefinition, State::Changing { config, next }) => match outcome {
                Outcome::Done => {
                    self.apply_change(config, next, out);
                    self.answer_waiting(Ok(()), out);
                }
                Outcome::Refused(why) => {
                    self.state = State::Primary { config };
                    self.fail_waiting(RoleError::Refused(why), out);
                }
                Outcome::Failed(why) => {
                    self.state = State::Primary { config };
                    self.fail_waiting(RoleError::Unavailable(why), out);
                }
            },
            // Late outcomes of abandoned work, and notices.
            _ => {}
        }
    }

    fn rejoined(
        &mut self,
        replica: &str,
        database: &str,
        lost: Option<(u64, u64)>,
        out: &mut Vec<Action>,
    ) {
        let State::Primary { config } = &mut self.state else {
            return;
        };
        let Some(record) = config.last_failover.as_mut() else {
            return;
        };
        if !record.from.eq_ignore_ascii_case(replica)
            || record.checked.iter().any(|d| d == database)
        {
            return;
        }
        if let Some((start, end)) = lost {
            tracing::warn!(group = %config.name, database, start, end, "the forced failover lost LSN {start}..{end} of {database}");
            record.lost.push((database.to_string(), start, end));
        }
        record.checked.push(database.to_string());
        record.loss_known = config.databases.iter().all(|d| record.checked.contains(d));
        let noted = Command::RecordFailoverLoss {
            group: config.name.clone(),
            epoch: record.epoch,
            lost: record.lost.clone(),
            loss_known: record.loss_known,
        };
        out.push(Action::Save(Membership::Defined(Box::new(config.clone()))));
        // The cluster's history keeps the loss past the next failover.
        if Self::clustered(config) {
            out.push(Action::Propose(noted, Work::ProposeNotice));
        }
    }

    fn answer_waiting(&mut self, result: Result<(), RoleError>, out: &mut Vec<Action>) {
        if let Some((reply, _)) = self.waiting.take() {
            out.push(Action::Reply(reply, result.clone()));
        }
        if let Some(t) = self.takeover.take() {
            out.push(Action::Reply(t.reply, result));
        }
    }

    fn fail_waiting(&mut self, error: RoleError, out: &mut Vec<Action>) {
        self.answer_waiting(Err(error), out);
    }
}

/// True when `next` differs from `current` only in settings the running
/// links can take in place: the same databases, the same replicas at the
/// same endpoints with the same availability modes, the same primary and
/// epoch.
pub fn settings_only(current: &GroupConfig, next: &GroupConfig) -> bool {
    let shape = |c: &GroupConfig| {
        let mut replicas: Vec<_> = c
            .replicas
            .iter()
            .map(|r| {
                (
                    r.name.to_ascii_lowercase(),
                    r.endpoint,
                    r.availability_mode,
                    // MANUAL → AUTOMATIC: the link plans seeding anew.
                    r.seeding_mode,
                )
            })
            .collect();
        replicas.sort_by(|a, b| a.0.cmp(&b.0));
        (
            c.databases.clone(),
            replicas,
            c.primary.to_ascii_lowercase(),
            c.epoch,
            c.cluster_id.clone(),
            c.required_synchronized_secondaries,
            // A database that becomes or stops being a geo-secondary
            // changes who writes it; a new source, who feeds it.
            c.databases
                .iter()
                .filter_map(|d| {
                    c.database_options(d)
                        .geo_source
                        .map(|s| (d.clone(), s.server.to_ascii_lowercase(), s.database))
                })
                .collect::<Vec<_>>(),
        )
    };
    shape(current) == shape(next)
}

fn foreign(theirs: &str, ours: &str) -> String {
    format!("peer belongs to cluster {theirs}, but this replica belongs to cluster {ours}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::fixtures;
    use std::collections::{BTreeMap, BTreeSet};

    const MS: u64 = 1000;

    fn config() -> GroupConfig {
        fixtures::group(&["r1", "r2", "r3"])
    }

    fn record(config: GroupConfig, synchronized: &[&str]) -> Box<GroupRecord> {
        let set: BTreeSet<String> = synchronized.iter().map(|s| s.to_string()).collect();
        let mut sets = BTreeMap::new();
        if !set.is_empty() {
            for db in &config.databases {
                sets.insert(db.clone(), set.clone());
            }
        }
        Box::new(GroupRecord {
            config,
            lease: None,
            synchronized: sets,
            previous: None,
            stopped_epoch: 0,
            backup_holds: Default::default(),
            history: Default::default(),
        })
    }

    fn promoted(
        mut c: GroupConfig,
        to: &str,
        previous: (&str, u64),
        stopped: bool,
    ) -> Box<GroupRecord> {
        c.primary = to.into();
        c.epoch += 1;
        c.version += 1;
        let mut r = record(c, &[]);
        r.previous = Some((previous.0.into(), previous.1));
        if stopped {
            r.stopped_epoch = previous.1;
        }
        r
    }

    fn secondary(node: &str) -> RoleMachine {
        let mut m = RoleMachine::new(node, "ag1");
        let actions = m.step(
            0,
            Event::Start(Box::new(Membership::Defined(Box::new(config())))),
        );
        assert_eq!(actions, [Action::StartSecondary(config())]);
        m
    }

    fn kinds(actions: &[Action]) -> Vec<&'static str> {
        actions
            .iter()
            .map(|a| match a {
                Action::StartSecondary(_) => "StartSecondary",
                Action::UpdateSecondary(_) => "UpdateSecondary",
                Action::StopSecondary => "StopSecondary",
                Action::Drain => "Drain",
                Action::Promote(_) => "Promote",
                Action::StartPrimary { .. } => "StartPrimary",
                Action::UpdatePrimary(_) => "UpdatePrimary",
                Action::StopPrimary => "StopPrimary",
                Action::Release => "Release",
                Action::Propose(..) => "Propose",
                Action::Save(_) => "Save",
                Action::Remove => "Remove",
                Action::EpochFloor(_) => "EpochFloor",
                Action::Reply(..) => "Reply",
                Action::Accept(_) => "Accept",
                Action::Refuse(..) => "Refuse",
                Action::WakeAt(_) => "WakeAt",
            })
            .collect()
    }

    #[test]
    fn a_named_secondary_drains_then_promotes_then_waits_out_the_old_lease() {
        let mut m = secondary("r2");
        let a = m.step(
            10 * MS,
            Event::Cluster(promoted(config(), "r2", ("r1", 1), false)),
        );
        assert_eq!(kinds(&a), ["Drain"]);
        // Nothing else starts while draining.
        let a = m.step(
            20 * MS,
            Event::Request {
                reply: 7,
                request: Request::ForceFailover,
            },
        );
        assert_eq!(a, [Action::Reply(7, Err(RoleError::Busy("ag1".into())))]);
        let a = m.step(
            30 * MS,
            Event::Finished {
                work: Work::Drain,
                outcome: Outcome::Done,
            },
        );
        assert_eq!(kinds(&a), ["Promote"]);
        let a = m.step(
            40 * MS,
            Event::Finished {
                work: Work::Promote,
                outcome: Outcome::Done,
            },
        );
        let until = 10 * MS + (LEASE + MARGIN).as_micros() as u64;
        assert_eq!(a, [Action::WakeAt(until)]);
        assert!(m
            .step(until - 1, Event::Tick)
            .iter()
            .all(|a| matches!(a, Action::WakeAt(_))));
        let a = m.step(until, Event::Tick);
        assert_eq!(kinds(&a), ["Save", "StartPrimary"]);
        assert!(matches!(m.state(), State::Primary { config } if config.epoch == 2));
    }

    #[test]
    fn a_new_primary_opens_as_soon_as_the_old_one_stepped_down() {
        let mut m = secondary("r2");
        m.step(
            0,
            Event::Cluster(promoted(config(), "r2", ("r1", 1), false)),
        );
        m.step(
            MS,
            Event::Finished {
                work: Work::Drain,
                outcome: Outcome::Done,
            },
        );
        m.step(
            2 * MS,
            Event::Finished {
                work: Work::Promote,
                outcome: Outcome::Done,
            },
        );
        let a = m.step(
            3 * MS,
            Event::Cluster(promoted(config(), "r2", ("r1", 1), true)),
        );
        assert_eq!(kinds(&a), ["Save", "StartPrimary"]);
    }

    #[test]
    fn an_automatic_failover_decided_after_the_lease_does_not_wait() {
        let mut m = secondary("r2");
        m.step(0, Event::Cluster(promoted(config(), "r2", ("r1", 1), true)));
        m.step(
            MS,
            Event::Finished {
                work: Work::Drain,
                outcome: Outcome::Done,
            },
        );
        let a = m.step(
            2 * MS,
            Event::Finished {
                work: Work::Promote,
                outcome: Outcome::Done,
            },
        );
        assert_eq!(kinds(&a), ["Save", "StartPrimary"]);
    }

    #[test]
    fn a_failed_drain_stays_secondary_and_is_retried() {
        let mut m = secondary("r2");
        m.step(0, Event::Cluster(promoted(config(), "r2", ("r1", 1), true)));
        let a = m.step(
            MS,
            Event::Finished {
                work: Work::Drain,
                outcome: Outcome::Failed("seeding".into()),
            },
        );
        assert!(matches!(m.state(), State::Secondary { .. }));
        assert_eq!(kinds(&a), ["WakeAt"]);
        let a = m.step(MS + RETRY.as_micros() as u64, Event::Tick);
        assert_eq!(kinds(&a), ["Drain"]);
    }

    #[test]
    fn a_failed_promotion_keeps_the_fence_closed_and_is_retried() {
        let mut m = secondary("r2");
        m.step(0, Event::Cluster(promoted(config(), "r2", ("r1", 1), true)));
        m.step(
            MS,
            Event::Finished {
                work: Work::Drain,
                outcome: Outcome::Done,
            },
        );
        let a = m.step(
            2 * MS,
            Event::Finished {
                work: Work::Promote,
                outcome: Outcome::Failed("busy".into()),
            },
        );
        assert_eq!(kinds(&a), ["WakeAt"]);
        let a = m.step(2 * MS + RETRY.as_micros() as u64, Event::Tick);
        assert_eq!(kinds(&a), ["Promote"]);
    }

    #[test]
    fn a_primary_that_learns_of_a_newer_epoch_steps_down_and_tells_the_cluster() {
        let mut m = RoleMachine::new("r1", "ag1");
        m.step(
            0,
            Event::Start(Box::new(Membership::Defined(Box::new(config())))),
        );
        let a = m.step(
            MS,
            Event::Cluster(promoted(config(), "r2", ("r1", 1), false)),
        );
        assert_eq!(
            kinds(&a),
            [
                "StopPrimary",
                "Propose",
                "Save",
                "StartSecondary",
                "EpochFloor"
            ]
        );
        assert!(a.contains(&Action::Propose(
            Command::StepDown {
                group: "ag1".into(),
                holder: "r1".into(),
                epoch: 1
            },
            Work::ProposeNotice
        )));
    }

    #[test]
    fn a_secondary_raises_its_epoch_floor_when_another_is_named() {
        let mut m = secondary("r3");
        let a = m.step(
            MS,
            Event::Cluster(promoted(config(), "r2", ("r1", 1), false)),
        );
        assert_eq!(a, [Action::EpochFloor(2)]);
        // The old primary may not connect any more.
        let a = m.step(
            2 * MS,
            Event::PeerDefinition {
                reply: 1,
                config: Box::new(config()),
            },
        );
        assert_eq!(kinds(&a), ["Refuse"]);
    }

    #[test]
    fn a_clustered_definition_change_waits_for_the_cluster_then_applies_in_place_or_restarts() {
        let mut m = RoleMachine::new("r1", "ag1");
        m.step(
            0,
            Event::Start(Box::new(Membership::Defined(Box::new(config())))),
        );
        let mut next = config();
        next.replicas[1].session_timeout_s = 20;
        let a = m.step(
            MS,
            Event::Request {
                reply: 3,
                request: Request::Change(Box::new(next)),
            },
        );
        assert_eq!(kinds(&a), ["Propose"]);
        assert!(matches!(m.state(), State::Changing { next, .. } if next.version == 2));
        let a = m.step(
            2 * MS,
            Event::Finished {
                work: Work::ProposeDefinition,
                outcome: Outcome::Done,
            },
        );
        assert_eq!(kinds(&a), ["Save", "UpdatePrimary", "Reply"]);
        let mut next = m.config().unwrap().clone();
        next.databases.push("shop".into());
        m.step(
            3 * MS,
            Event::Request {
                reply: 4,
                request: Request::Change(Box::new(next)),
            },
        );
        let a = m.step(
            4 * MS,
            Event::Finished {
                work: Work::ProposeDefinition,
                outcome: Outcome::Done,
            },
        );
        assert_eq!(kinds(&a), ["Save", "StopPrimary", "StartPrimary", "Reply"]);
        let mut next = m.config().unwrap().clone();
        next.replicas[2].session_timeout_s = 30;
        m.step(
            5 * MS,
            Event::Request {
                reply: 5,
                request: Request::Change(Box::new(next)),
            },
        );
        let a = m.step(
            6 * MS,
            Event::Finished {
                work: Work::ProposeDefinition,
                outcome: Outcome::Refused("no".into()),
            },
        );
        assert_eq!(a, [Action::Reply(5, Err(RoleError::Refused("no".into())))]);
        assert!(matches!(m.state(), State::Primary { config } if config.version == 3));
    }

    #[test]
    fn planned_failover_is_refused_up_front_unless_this_replica_is_synchronized() {
        let mut m = secondary("r2");
        m.step(0, Event::Cluster(record(config(), &["r3"])));
        let a = m.step(
            MS,
            Event::Request {
                reply: 1,
                request: Request::Failover,
            },
        );
        assert_eq!(
            a,
            [Action::Reply(
                1,
                Err(RoleError::NotSynchronized("app".into()))
            )]
        );
        m.step(2 * MS, Event::Cluster(record(config(), &["r2"])));
        let a = m.step(
            3 * MS,
            Event::Request {
                reply: 2,
                request: Request::Failover,
            },
        );
        assert_eq!(kinds(&a), ["Propose"]);
        // The answer comes once the cluster named this node and it took office.
        m.step(
            4 * MS,
            Event::Finished {
                work: Work::ProposePromotion,
                outcome: Outcome::Done,
            },
        );
        m.step(
            5 * MS,
            Event::Cluster(promoted(config(), "r2", ("r1", 1), true)),
        );
        m.step(
            6 * MS,
            Event::Finished {
                work: Work::Drain,
                outcome: Outcome::Done,
            },
        );
        let a = m.step(
            7 * MS,
            Event::Finished {
                work: Work::Promote,
                outcome: Outcome::Done,
            },
        );
        assert_eq!(kinds(&a), ["Save", "StartPrimary", "Reply"]);
        assert!(a.contains(&Action::Reply(2, Ok(()))));
    }

    #[test]
    fn a_peer_definition_with_only_new_settings_updates_the_secondary_in_place() {
        let mut m = secondary("r2");
        let mut next = config();
        next.version = 2;
        next.replicas[1].session_timeout_s = 30;
        let a = m.step(
            MS,
            Event::PeerDefinition {
                reply: 1,
                config: Box::new(next.clone()),
            },
        );
        assert_eq!(kinds(&a), ["Save", "UpdateSecondary", "Accept"]);
        next.version = 3;
        next.databases.push("shop".into());
        let a = m.step(
            2 * MS,
            Event::PeerDefinition {
                reply: 2,
                config: Box::new(next),
            },
        );
        assert_eq!(
            kinds(&a),
            [
                "StopSecondary",
                "Save",
                "StartSecondary",
                "EpochFloor",
                "Accept"
            ]
        );
    }

    #[test]
    fn settings_only_changes_leave_databases_replicas_and_modes_alone() {
        let c = config();
        let mut n = c.clone();
        n.replicas[1].session_timeout_s = 99;
        n.listener = None;
        n.failure_condition_level = 5;
        assert!(settings_only(&c, &n));
        let mut n = c.clone();
        n.replicas[1].availability_mode = crate::group::AvailabilityMode::AsynchronousCommit;
        assert!(!settings_only(&c, &n));
        let mut n = c.clone();
        n.replicas.pop();
        assert!(!settings_only(&c, &n));
    }
}
