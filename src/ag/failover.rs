//! The automatic failover decision: given what the cluster knows about a
//! group, should its primary be replaced, and by whom? A pure function; the
//! cluster leader calls it on every tick with fresh observations and acts
//! on the answer through the cluster (a `Promote` at the next epoch).
//!
//! # The flexible failover policy (`FAILURE_CONDITION_LEVEL`)
//! Each level includes the ones below it, as in SQL Server:
//!
//! | level | availdb fails over when … |
//! |---|---|
//! | 1 | the primary is **down**: its lease expired (no renewal reached the cluster for the lease period plus the margin) — process killed, paused, partitioned away, or host down |
//! | 2 | … or **unresponsive**: it renews its lease but its own SQL health probe has not succeeded for `HEALTH_CHECK_TIMEOUT` |
//! | 3 (default) | … or a **critical internal error**: a database of the group stopped taking writes (capture or log write failed, corrupt log) |
//! | 4 | … or **resource exhaustion**: less than [`LOW_DISK_BYTES`] free on the file system of a database of the group, or its probe failed for lack of memory or disk (SQLITE_NOMEM, SQLITE_FULL) |
//! | 5 | … or **any qualified failure**: a database's health probe returned an error at all (I/O error, corruption, cannot open), at once rather than after HEALTH_CHECK_TIMEOUT |
//!
//! The primary observes itself ([`self_conditions`]) at every renewal and,
//! when a condition counts, stops renewing its lease.
//!
//! # Who may become primary
//! Only a replica that is SYNCHRONOUS_COMMIT with FAILOVER_MODE = AUTOMATIC
//! (and the primary must be AUTOMATIC too), that is in the synchronized set
//! of *every* database of the group — so it has hardened every
//! acknowledged commit (RPO 0) — and whose node the cluster currently hears
//! from. Ties go to the first by name, so every leader decides alike.
//! Read-scale groups (`CLUSTER_TYPE = NONE`) never fail over automatically.
//!
//! # Reachable
//! A replica is reachable when its node is the cluster leader's own, or
//! answered the leader within a bound ([`reachable`]; the caller passes the
//! lease duration, 16 heartbeats). The synchronized set alone does not
//! say a replica is alive: the primary takes a secondary out only once it
//! notices the loss, so a secondary that dies with the primary (or just
//! before it) stays in the set, and promoting it would leave the group with
//! a primary that never takes office. A synchronized replica that is not
//! reachable is never a target; when no other may take over, the decision
//! is [`Decision::Blocked`] with "is not reachable" for it, and the next
//! tick looks again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::group::{AvailabilityMode, ClusterType, FailoverMode, GroupConfig};

/// A failure the primary reports about itself with its lease renewals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The SQL health probe has not succeeded for this long (ms).
    ProbeFailing {
        /// Milliseconds since the last successful probe.
        since_ms: u64,
    },
    /// A database stopped taking writes after an internal error.
    DatabaseStopped {
        /// Which database.
        database: String,
    },
    /// Disk full or out of memory.
    ResourceExhausted {
        /// What ran out.
        what: String,
    },
    /// A database failed to open or recover.
    DatabaseFailed {
        /// Which database.
        database: String,
    },
}

impl Condition {
    /// The lowest FAILURE_CONDITION_LEVEL at which this condition counts
    /// (`ProbeFailing` counts only past the health check timeout).
    fn level(&self) -> u8 {
        match self {
            Condition::ProbeFailing { .. } => 2,
            Condition::DatabaseStopped { .. } => 3,
            Condition::ResourceExhausted { .. } => 4,
            Condition::DatabaseFailed { .. } => 5,
        }
    }
}

/// Below this many free bytes on the file system of a database's log, the
/// primary reports resource exhaustion (level 4): soon it could not log a
/// commit, and a replica on another disk can take over first.
pub const LOW_DISK_BYTES: u64 = 64 << 20;

/// What a database's latest health probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeError {
    /// Out of memory or disk (SQLITE_NOMEM, SQLITE_FULL).
    Exhausted(String),
    /// Any other error (I/O, corruption, cannot open).
    Other(String),
}

/// The primary's view of itself at one renewal: how long its probe has
/// been failing, databases that stopped taking writes, each database's
/// latest probe error, and free bytes on each database's file system.
pub fn self_conditions(
    probe_failing_ms: u64,
    stopped: &[String],
    probe_errors: &[(String, ProbeError)],
    free_bytes: &[(String, u64)],
) -> Vec<Condition> {
    let mut out = vec![Condition::ProbeFailing {
        since_ms: probe_failing_ms,
    }];
    out.extend(stopped.iter().map(|d| Condition::DatabaseStopped {
        database: d.clone(),
    }));
    for (database, free) in free_bytes {
        if *free < LOW_DISK_BYTES {
            out.push(Condition::ResourceExhausted {
                what: format!(
                    "disk space for database {database} ({} MiB free)",
                    free >> 20
                ),
            });
        }
    }
    for (database, error) in probe_errors {
        match error {
            ProbeError::Exhausted(why) => out.push(Condition::ResourceExhausted {
                what: format!("memory or disk for database {database} ({why})"),
            }),
            ProbeError::Other(_) => {}
        }
        out.push(Condition::DatabaseFailed {
            database: database.clone(),
        });
    }
    out
}

/// The policy knobs of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// FAILURE_CONDITION_LEVEL, 1..=5.
    pub failure_condition_level: u8,
    /// HEALTH_CHECK_TIMEOUT in milliseconds.
    pub health_check_timeout_ms: u64,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            failure_condition_level: 3,
            health_check_timeout_ms: 5_000,
        }
    }
}

/// What the cluster leader knows at one moment.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    /// The group's definition (its primary and epoch included).
    pub config: &'a GroupConfig,
    /// Per database, the replicas in the synchronized set (from the
    /// cluster's replicated state).
    pub synchronized: &'a BTreeMap<String, BTreeSet<String>>,
    /// The primary's lease expired by the leader's clock plus the margin.
    pub lease_expired: bool,
    /// Conditions in the primary's latest renewal.
    pub conditions: &'a [Condition],
    /// Replicas whose nodes the cluster hears from.
    pub reachable: &'a BTreeSet<String>,
}

/// What the cluster leader observed of the nodes, for [`reachable`].
#[derive(Debug, Clone)]
pub struct Contact<'a> {
    /// Name of the leader's own node (a replica of the group, or not).
    pub leader: &'a str,
    /// Per replica of the group, when its node last answered the leader.
    pub last_heard: &'a BTreeMap<String, Instant>,
    /// The leader's time now.
    pub now: Instant,
    /// How long since its last answer a node still counts as reachable.
    pub within: Duration,
}

/// The group's replicas whose node the leader has heard from within
/// `contact.within`, the leader's own replica included.
pub fn reachable(config: &GroupConfig, contact: &Contact<'_>) -> BTreeSet<String> {
    config
        .replicas
        .iter()
        .filter(|r| {
            r.name.eq_ignore_ascii_case(contact.leader)
                || contact
                    .last_heard
                    .get(&r.name)
                    .is_some_and(|at| contact.now.saturating_duration_since(*at) <= contact.within)
        })
        .map(|r| r.name.clone())
        .collect()
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do.
    Healthy,
    /// Promote `target` at the next epoch.
    Failover {
        /// The new primary.
        target: String,
        /// Why, for the failover record.
        reason: String,
    },
    /// The primary failed, but no replica may take over (the reason says
    /// which rule stops it); the group waits, unavailable for writes.
    Blocked {
        /// Why the failure is not acted on.
        reason: String,
    },
}

/// Decides whether the group's primary must be replaced.
pub fn decide(obs: &Observation<'_>, policy: Policy) -> Decision {
    let Some(failure) = failure(obs, policy) else {
        return Decision::Healthy;
    };
    let config = obs.config;
    if config.cluster_type == ClusterType::None {
        return Decision::Blocked {
            reason: format!("{failure}; CLUSTER_TYPE = NONE groups fail over only by FORCE_FAILOVER_ALLOW_DATA_LOSS"),
        };
    }
    let primary_automatic = config
        .replica(&config.primary)
        .is_some_and(|r| r.failover_mode == FailoverMode::Automatic);
    if !primary_automatic {
        return Decision::Blocked {
            reason: format!("{failure}; the primary's FAILOVER_MODE is MANUAL"),
        };
    }
    let mut why_not = Vec::new();
    for replica in config.secondaries() {
        let name = &replica.name;
        let blocker = if replica.availability_mode != AvailabilityMode::SynchronousCommit {
            Some("is ASYNCHRONOUS_COMMIT")
        } else if replica.failover_mode != FailoverMode::Automatic {
            Some("has FAILOVER_MODE = MANUAL")
        } else if !config.databases.iter().all(|db| {
            obs.synchronized
                .get(db)
                .is_some_and(|set| set.contains(name))
        }) {
            Some("is not SYNCHRONIZED for every database")
        } else if !obs.reachable.contains(name) {
            Some("is not reachable")
        } else {
            None
        };
        match blocker {
            None => {
                return Decision::Failover {
                    target: name.clone(),
                    reason: format!("AUTOMATIC: {failure}"),
                }
            }
            Some(b) => why_not.push(format!("{name} {b}")),
        }
    }
    Decision::Blocked {
        reason: format!(
            "{failure}; no replica may take over: {}",
            why_not.join(", ")
        ),
    }
}

/// The failure that counts at this policy level, described; None if none.
fn failure(obs: &Observation<'_>, policy: Policy) -> Option<String> {
    if obs.lease_expired {
        return Some(format!(
            "primary {} is down (its lease expired)",
            obs.config.primary
        ));
    }
    triggering(obs.conditions, &obs.config.primary, policy)
}

/// The first of `conditions` that counts at the policy's level, described.
/// The primary uses it on itself: it stops renewing its lease when one
/// does, which the cluster then sees as the primary being down.
pub fn triggering(conditions: &[Condition], primary: &str, policy: Policy) -> Option<String> {
    conditions
        .iter()
        .filter(|c| c.level() <= policy.failure_condition_level)
        .find_map(|c| match c {
            Condition::ProbeFailing { since_ms } if *since_ms >= policy.health_check_timeout_ms => {
                Some(format!(
                    "primary {primary} is unresponsive (no successful health probe for {since_ms} ms)"
                ))
            }
            Condition::ProbeFailing { .. } => None,
            Condition::DatabaseStopped { database } => Some(format!(
                "database {database} stopped taking writes on the primary"
            )),
            Condition::ResourceExhausted { what } => Some(format!("the primary ran out of {what}")),
            Condition::DatabaseFailed { database } => {
                Some(format!("database {database} failed on the primary"))
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::ReplicaConfig;

    fn replica(name: &str, sync: bool, automatic: bool) -> ReplicaConfig {
        let mut r = crate::group::fixtures::replica(name);
        if !sync {
            r.availability_mode = AvailabilityMode::AsynchronousCommit;
        }
        if !automatic {
            r.failover_mode = FailoverMode::Manual;
        }
        r
    }

    fn group(replicas: Vec<ReplicaConfig>) -> GroupConfig {
        let mut g = crate::group::fixtures::group(&[]);
        g.databases = vec!["app".into(), "billing".into()];
        g.replicas = replicas;
        g
    }

    struct World {
        config: GroupConfig,
        synchronized: BTreeMap<String, BTreeSet<String>>,
        reachable: BTreeSet<String>,
    }

    impl World {
        fn standard() -> World {
            let set: BTreeSet<String> = ["r2".to_string(), "r3".to_string()].into();
            World {
                config: group(vec![
                    replica("r1", true, true),
                    replica("r2", true, true),
                    replica("r3", true, true),
                ]),
                synchronized: [
                    ("app".to_string(), set.clone()),
                    ("billing".to_string(), set.clone()),
                ]
                .into(),
                reachable: set,
            }
        }

        fn decide(
            &self,
            lease_expired: bool,
            conditions: &[Condition],
            policy: Policy,
        ) -> Decision {
            decide(
                &Observation {
                    config: &self.config,
                    synchronized: &self.synchronized,
                    lease_expired,
                    conditions,
                    reachable: &self.reachable,
                },
                policy,
            )
        }
    }

    fn target(d: &Decision) -> Option<&str> {
        match d {
            Decision::Failover { target, .. } => Some(target),
            _ => None,
        }
    }

    #[test]
    fn each_self_observed_failure_counts_from_its_level_up() {
        let policy = |level| Policy {
            failure_condition_level: level,
            health_check_timeout_ms: 1_000,
        };
        let fires = |conditions: &[Condition], level| triggering(conditions, "r1", policy(level));
        let healthy = self_conditions(100, &[], &[], &[("app".into(), 10 << 30)]);
        assert!((1..=5).all(|l| fires(&healthy, l).is_none()));

        let unresponsive = self_conditions(1_500, &[], &[], &[]);
        assert!(fires(&unresponsive, 1).is_none());
        assert!(fires(&unresponsive, 2).unwrap().contains("unresponsive"));

        let stopped = self_conditions(0, &["app".into()], &[], &[]);
        assert!(fires(&stopped, 2).is_none());
        assert!(fires(&stopped, 3)
            .unwrap()
            .contains("stopped taking writes"));

        let low_disk = self_conditions(0, &[], &[], &[("app".into(), LOW_DISK_BYTES - 1)]);
        assert!(fires(&low_disk, 3).is_none());
        assert!(fires(&low_disk, 4).unwrap().contains("disk space"));

        let nomem = self_conditions(
            0,
            &[],
            &[("app".into(), ProbeError::Exhausted("out of memory".into()))],
            &[],
        );
        assert!(fires(&nomem, 3).is_none());
        assert!(fires(&nomem, 4).unwrap().contains("memory or disk"));

        let io = self_conditions(
            0,
            &[],
            &[("app".into(), ProbeError::Other("disk I/O error".into()))],
            &[],
        );
        assert!(fires(&io, 4).is_none());
        assert!(fires(&io, 5).unwrap().contains("database app failed"));
    }

    #[test]
    fn a_healthy_primary_is_left_alone() {
        assert_eq!(
            World::standard().decide(false, &[], Policy::default()),
            Decision::Healthy
        );
    }

    #[test]
    fn an_expired_lease_fails_over_to_the_first_synchronized_automatic_replica() {
        let d = World::standard().decide(true, &[], Policy::default());
        assert_eq!(target(&d), Some("r2"));
    }

    #[test]
    fn the_target_must_be_synchronized_for_every_database() {
        let mut w = World::standard();
        w.synchronized.get_mut("billing").unwrap().remove("r2");
        assert_eq!(target(&w.decide(true, &[], Policy::default())), Some("r3"));
        w.synchronized.get_mut("app").unwrap().remove("r3");
        match w.decide(true, &[], Policy::default()) {
            Decision::Blocked { reason } => {
                assert!(reason.contains("not SYNCHRONIZED"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn async_manual_and_unreachable_replicas_are_never_targets() {
        let mut w = World::standard();
        w.config.replicas = vec![
            replica("r1", true, true),
            replica("r2", false, true),
            replica("r3", true, false),
        ];
        assert!(matches!(
            w.decide(true, &[], Policy::default()),
            Decision::Blocked { .. }
        ));
        let mut w = World::standard();
        w.reachable.clear();
        assert!(matches!(
            w.decide(true, &[], Policy::default()),
            Decision::Blocked { .. }
        ));
    }

    #[test]
    fn a_replica_is_reachable_when_it_answered_the_leader_within_the_bound() {
        let w = World::standard();
        let t0 = Instant::now();
        let within = Duration::from_millis(800);
        let heard: BTreeMap<String, Instant> = [
            ("r1".to_string(), t0),
            ("r2".to_string(), t0 + Duration::from_millis(100)),
            ("r3".to_string(), t0 + Duration::from_millis(900)),
        ]
        .into();
        let at = |now_ms: u64, leader: &str| {
            let contact = Contact {
                leader,
                last_heard: &heard,
                now: t0 + Duration::from_millis(now_ms),
                within,
            };
            reachable(&w.config, &contact)
                .into_iter()
                .collect::<Vec<_>>()
        };
        assert_eq!(at(900, "w1"), ["r2", "r3"], "r1 last answered 900 ms ago");
        assert_eq!(at(800, "w1"), ["r1", "r2", "r3"], "the bound is inclusive");
        assert_eq!(at(1_000, "w1"), ["r3"]);
        assert_eq!(
            at(5_000, "w1"),
            Vec::<String>::new(),
            "nobody answered lately"
        );
        assert_eq!(
            at(5_000, "R2"),
            ["r2"],
            "the leader's own replica is reachable (names in any case)"
        );
        assert_eq!(
            at(0, "w1"),
            ["r1", "r2", "r3"],
            "an answer stamped after now counts"
        );
    }

    #[test]
    fn a_synchronized_replica_the_leader_does_not_hear_from_is_never_promoted() {
        let mut w = World::standard();
        let t0 = Instant::now();
        // r2 is first by name and synchronized, but its node went silent
        // with the primary's; r3 answers.
        let heard: BTreeMap<String, Instant> = [
            ("r2".to_string(), t0),
            ("r3".to_string(), t0 + Duration::from_secs(2)),
        ]
        .into();
        let contact = Contact {
            leader: "w1",
            last_heard: &heard,
            now: t0 + Duration::from_millis(2_100),
            within: Duration::from_millis(800),
        };
        w.reachable = reachable(&w.config, &contact);
        assert_eq!(target(&w.decide(true, &[], Policy::default())), Some("r3"));

        // r3 out of the synchronized set too: nobody may take over, and the
        // verdict says r2 is not reachable rather than promoting it.
        for set in w.synchronized.values_mut() {
            set.remove("r3");
        }
        match w.decide(true, &[], Policy::default()) {
            Decision::Blocked { reason } => {
                assert!(reason.contains("r2 is not reachable"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_manual_primary_or_a_read_scale_group_blocks_automatic_failover() {
        let mut w = World::standard();
        w.config.replicas[0].failover_mode = FailoverMode::Manual;
        assert!(matches!(
            w.decide(true, &[], Policy::default()),
            Decision::Blocked { .. }
        ));
        let mut w = World::standard();
        w.config.cluster_type = ClusterType::None;
        assert!(matches!(
            w.decide(true, &[], Policy::default()),
            Decision::Blocked { .. }
        ));
    }

    #[test]
    fn failure_condition_levels_include_the_ones_below() {
        let w = World::standard();
        let level = |n| Policy {
            failure_condition_level: n,
            health_check_timeout_ms: 5_000,
        };
        let probe = [Condition::ProbeFailing { since_ms: 6_000 }];
        let stopped = [Condition::DatabaseStopped {
            database: "app".into(),
        }];
        let disk = [Condition::ResourceExhausted {
            what: "disk".into(),
        }];
        let failed = [Condition::DatabaseFailed {
            database: "app".into(),
        }];
        let cases: [(&[Condition], u8); 4] = [(&probe, 2), (&stopped, 3), (&disk, 4), (&failed, 5)];
        for (conditions, from_level) in cases {
            for l in 1..=5 {
                let d = w.decide(false, conditions, level(l));
                assert_eq!(
                    target(&d).is_some(),
                    l >= from_level,
                    "{conditions:?} at level {l}"
                );
            }
        }
    }

    #[test]
    fn a_slow_probe_counts_only_past_the_health_check_timeout() {
        let w = World::standard();
        let d = w.decide(
            false,
            &[Condition::ProbeFailing { since_ms: 4_999 }],
            Policy::default(),
        );
        assert_eq!(d, Decision::Healthy);
    }
}
