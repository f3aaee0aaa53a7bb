//! When a lease runs out, by one node's monotonic clock.
//!
//! The replicated [`super::Lease`] says who holds a group's lease, at which
//! epoch and for how long after each renewal; *when* it was renewed is not
//! replicated, because clocks differ between nodes. Each side measures it
//! with its own monotonic clock instead, erring in the safe direction:
//!
//! * the **primary** counts from the moment it *sent* the renewal, so its
//!   own view ends first;
//! * every node of the cluster counts from the moment it *applied* the
//!   renewal (always later than it was sent), as follower and as leader;
//!   the **cluster leader** declares the lease expired only a safety margin
//!   after that — the margin covers the rate difference of the two clocks.
//!
//! A new leader keeps the counts it made as a follower. That is safe
//! because it answers only once it has applied every entry of earlier
//! terms ([`super::Cluster::lease_expired`] waits for an applied entry of
//! its own term): a renewal the primary counted as granted was committed,
//! so the new leader holds it (Raft's leader completeness) and has applied
//! it by then, at a time later than the primary sent it. Only a group it
//! has seen no renewal of (it joined by snapshot) is counted from the
//! first question, a whole lease.
//!
//! A live primary cannot renew while there is no leader, so after a long
//! election its lease may have run out although it is fine. A new leader
//! therefore also gives it a grace of half a lease plus the margin from
//! its first question to renew through the new leader, before declaring
//! the lease expired. So a primary that dies together with the leader is
//! replaced about as fast as one that dies alone, and a leader change by
//! itself (a node returning from a partition with a higher term) does not
//! fail a healthy primary over.
//!
//! So by the time the leader sees a lease expired, the primary has stopped
//! accepting writes (safety rule 2). [`LeaseClock`] is the pure bookkeeping
//! of either side; time is passed in, so tests never sleep.
//!
//! # Renewals on their way
//! A renewal commits only once a majority has written it to disk. A disk
//! that stalls (a node's own bulk writes, or, under `availdb up`, every
//! node's writes on one disk) can hold commits for hundreds of
//! milliseconds, at times seconds: longer than a lease. Counting only
//! applied renewals, the leader then saw the lease of a primary that was
//! renewing all along run out, and failed over a healthy primary — a
//! false alarm, measured under a read load on `up --replicas 4`.
//!
//! So the leader also counts renewals *on their way*: each renewal of the
//! group's current holder and epoch handed to this node's Raft (proposed
//! here, or forwarded here by another node) is noted when it arrives and
//! again when its proposal settles (committed, refused or timed out).
//! While one is on its way the lease is not expired; after the last one
//! settles, the count runs from that moment. This only ever makes the
//! leader's expiry *later* than the applied count alone, so safety rule 2
//! holds as argued above. What it costs: a primary that dies while the
//! cluster's log is stalled is declared dead a lease after its last
//! renewal settles, not after it was sent (at most the proposal's time-out
//! later). A renewal naming another holder or an older epoch (a deposed
//! primary) is not counted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::state::{ClusterState, Command};

/// One group's lease as seen by one node's monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaseClock {
    /// Start of the current term of the lease and its length; `None` until
    /// a renewal was seen or this node became leader.
    renewed: Option<(Instant, Duration)>,
}

impl LeaseClock {
    /// A clock that has seen nothing: never expired, since nothing is known.
    pub fn new() -> LeaseClock {
        LeaseClock::default()
    }

    /// A renewal of `duration_ms` was applied (leader) or sent (primary) at `now`.
    pub fn on_renewal_applied(&mut self, duration_ms: u64, now: Instant) {
        self.renewed = Some((now, Duration::from_millis(duration_ms)));
    }

    /// This node just became the cluster leader: it may not have applied the
    /// latest renewal yet, so it treats the lease as renewed right now, for
    /// the duration it last knew (`duration_ms` of the lease in its state).
    pub fn on_became_leader(&mut self, duration_ms: u64, now: Instant) {
        self.on_renewal_applied(duration_ms, now);
    }

    /// True once `margin` has passed after the end of the lease. A clock
    /// that has seen no renewal is never expired.
    pub fn expired(&self, now: Instant, margin: Duration) -> bool {
        self.renewed
            .is_some_and(|(at, duration)| now >= at + duration + margin)
    }

    /// For the primary: true while the lease is valid (`now` before its end).
    pub fn valid(&self, now: Instant) -> bool {
        self.renewed
            .is_some_and(|(at, duration)| now < at + duration)
    }
}

/// Renewals on their way through this node's Raft for one group, holder
/// and epoch (see the module docs).
#[derive(Debug, Default)]
struct OnTheirWay {
    /// Proposals taken and not yet settled.
    pending: usize,
    /// Counts from the latest arrival or settling.
    clock: LeaseClock,
}

/// Which renewals: group and holder (lower-case names) and epoch.
type RenewalKey = (String, String, u64);

/// A renewal on its way through this node's Raft: noted in the lease book
/// when made ([`LeaseBook::renewal_on_its_way`]), settled when dropped —
/// whether the proposal committed, was refused, timed out or was given up.
pub(crate) struct RenewalOnItsWay {
    book: Arc<Mutex<LeaseBook>>,
    key: RenewalKey,
    duration_ms: u64,
}

impl Drop for RenewalOnItsWay {
    fn drop(&mut self) {
        self.book
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .renewal_settled(&self.key, self.duration_ms, Instant::now());
    }
}

/// The lease clocks of every group on one node, kept by the state machine
/// as it applies commands and read by the leader ([`super::Cluster::lease_expired`]).
#[derive(Debug, Default)]
pub(crate) struct LeaseBook {
    /// Term in which this node last started answering as leader, and when.
    leader_since: Option<(u64, Instant)>,
    /// Per group (lower-case name).
    clocks: BTreeMap<String, LeaseClock>,
    /// Renewals on their way here.
    on_their_way: BTreeMap<RenewalKey, OnTheirWay>,
}

impl LeaseBook {
    /// The state machine applied `command` (accepted) at `now`.
    pub(crate) fn applied(&mut self, command: &Command, now: Instant) {
        match command {
            Command::RenewLease {
                group, duration_ms, ..
            } => self
                .clocks
                .entry(group.to_ascii_lowercase())
                .or_default()
                .on_renewal_applied(*duration_ms, now),
            Command::Promote { group, .. } | Command::RemoveGroup(group) => {
                let group = group.to_ascii_lowercase();
                self.clocks.remove(&group);
                self.on_their_way.retain(|(g, _, _), _| *g != group);
            }
            Command::PutGroup(_)
            | Command::SetSynchronized { .. }
            | Command::StepDown { .. }
            | Command::HoldLogForBackups { .. }
            | Command::RecordFailoverLoss { .. }
            | Command::SetServerName(_)
            | Command::PutPartner(_)
            | Command::RemovePartner(_)
            | Command::CreateRole(_)
            | Command::AlterRole { .. }
            | Command::DropRole(_)
            | Command::SetPrivileges { .. } => {}
        }
    }

    /// Whether `group`'s lease has expired for the leader, whose applied
    /// state is `state` (complete up to its own term); `None` for an
    /// unknown group. A group whose renewals this node never applied is
    /// counted from now (`on_became_leader`); a group without a lease has
    /// nothing to wait for.
    pub(crate) fn expired(
        &mut self,
        state: &ClusterState,
        term: u64,
        group: &str,
        now: Instant,
        margin: Duration,
    ) -> Option<bool> {
        let since = match self.leader_since {
            Some((t, since)) if t == term => since,
            _ => {
                self.leader_since = Some((term, now));
                now
            }
        };
        let record = state.group(group)?;
        let Some(lease) = &record.lease else {
            return Some(true);
        };
        let clock = self
            .clocks
            .entry(group.to_ascii_lowercase())
            .or_insert_with(|| {
                let mut clock = LeaseClock::new();
                clock.on_became_leader(lease.duration_ms, now);
                clock
            });
        let grace = Duration::from_millis(lease.duration_ms / 2) + margin;
        let key = (
            group.to_ascii_lowercase(),
            lease.holder.to_ascii_lowercase(),
            lease.epoch,
        );
        let renewing = self
            .on_their_way
            .get(&key)
            .is_some_and(|way| way.pending > 0 || !way.clock.expired(now, margin));
        Some(clock.expired(now, margin) && !renewing && now >= since + grace)
    }

    /// Notes `command`, when it is a lease renewal, on its way through
    /// this node's Raft from now on; the returned guard settles it when
    /// dropped. Other commands: `None`.
    pub(crate) fn renewal_on_its_way(
        book: &Arc<Mutex<LeaseBook>>,
        command: &Command,
    ) -> Option<RenewalOnItsWay> {
        let now = Instant::now();
        let (key, duration_ms) = book
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .renewal_arrived(command, now)?;
        Some(RenewalOnItsWay {
            book: book.clone(),
            key,
            duration_ms,
        })
    }

    /// `command`, if a lease renewal, arrived at `now` for this node's
    /// Raft; its key and duration, to settle it by.
    fn renewal_arrived(&mut self, command: &Command, now: Instant) -> Option<(RenewalKey, u64)> {
        let Command::RenewLease {
            group,
            holder,
            epoch,
            duration_ms,
        } = command
        else {
            return None;
        };
        let key = (
            group.to_ascii_lowercase(),
            holder.to_ascii_lowercase(),
            *epoch,
        );
        let way = self.on_their_way.entry(key.clone()).or_default();
        way.pending += 1;
        way.clock.on_renewal_applied(*duration_ms, now);
        Some((key, *duration_ms))
    }

    /// The proposal of a renewal that arrived settled at `now`.
    fn renewal_settled(&mut self, key: &RenewalKey, duration_ms: u64, now: Instant) {
        if let Some(way) = self.on_their_way.get_mut(key) {
            way.pending = way.pending.saturating_sub(1);
            way.clock.on_renewal_applied(duration_ms, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn renewal(holder: &str, epoch: u64, duration_ms: u64) -> Command {
        Command::RenewLease {
            group: "AG1".into(),
            holder: holder.into(),
            epoch,
            duration_ms,
        }
    }

    /// The state of group ag1, primary r1 at epoch 1, with a lease of
    /// `lease` ms held by r1 (none: no lease).
    fn state(lease: Option<u64>) -> ClusterState {
        use crate::cluster::state::{GroupRecord, Lease};
        let config: crate::group::GroupConfig = serde_json::from_value(serde_json::json!({
            "name": "ag1", "cluster_id": "c", "version": 1, "epoch": 1, "primary": "r1",
            "databases": [], "required_synchronized_secondaries": 0, "replicas": []
        }))
        .unwrap();
        let mut s = ClusterState::default();
        let lease = lease.map(|duration_ms| Lease {
            holder: "r1".into(),
            epoch: 1,
            duration_ms,
        });
        s.groups.insert(
            "ag1".into(),
            GroupRecord {
                config,
                lease,
                synchronized: Default::default(),
                previous: None,
                stopped_epoch: 0,
                backup_holds: Default::default(),
                history: Default::default(),
            },
        );
        s
    }

    #[test]
    fn a_lease_expires_a_margin_after_its_duration() {
        let t0 = Instant::now();
        let mut clock = LeaseClock::new();
        assert!(!clock.expired(t0 + ms(1_000_000), ms(0)), "nothing known");
        assert!(!clock.valid(t0), "no lease to write under");

        clock.on_renewal_applied(5000, t0);
        let cases = [
            (4999, 0, false, true),
            (5000, 0, true, false),
            (5000, 500, false, false),
            (5499, 500, false, false),
            (5500, 500, true, false),
        ];
        for (after, margin, expired, valid) in cases {
            let now = t0 + ms(after);
            assert_eq!(
                clock.expired(now, ms(margin)),
                expired,
                "{after} ms, margin {margin}"
            );
            assert_eq!(clock.valid(now), valid, "{after} ms");
        }
    }

    #[test]
    fn a_renewal_restarts_the_count_with_its_own_duration() {
        let t0 = Instant::now();
        let mut clock = LeaseClock::new();
        clock.on_renewal_applied(5000, t0);
        clock.on_renewal_applied(2000, t0 + ms(4000));
        assert!(!clock.expired(t0 + ms(5999), ms(0)));
        assert!(clock.expired(t0 + ms(6000), ms(0)));
    }

    #[test]
    fn a_new_leader_counts_the_whole_lease_from_its_election() {
        let t0 = Instant::now();
        let mut clock = LeaseClock::new();
        // As a follower it applied a renewal long ago…
        clock.on_renewal_applied(5000, t0);
        assert!(clock.expired(t0 + ms(10_000), ms(500)));
        // …but after becoming leader it cannot know whether a newer renewal
        // was granted just before, so it waits a full lease again.
        clock.on_became_leader(5000, t0 + ms(10_000));
        assert!(!clock.expired(t0 + ms(15_499), ms(500)));
        assert!(clock.expired(t0 + ms(15_500), ms(500)));
    }

    #[test]
    fn the_primary_stops_before_the_leader_may_promote() {
        // Safety rule 2 with the clocks as they are meant to be used: the
        // primary counts from sending, the leader from applying (later).
        let t0 = Instant::now();
        let (mut primary, mut leader) = (LeaseClock::new(), LeaseClock::new());
        primary.on_renewal_applied(3000, t0);
        leader.on_renewal_applied(3000, t0 + ms(40));
        for step in 0..400u64 {
            let now = t0 + ms(step * 10);
            assert!(
                !(primary.valid(now) && leader.expired(now, ms(200))),
                "both a writing primary and an expired lease at {step}0 ms"
            );
        }
    }

    #[test]
    fn the_leaders_book_counts_from_the_last_renewal_applied_here_in_any_role() {
        let t0 = Instant::now();
        let renew = |duration_ms| renewal("r1", 1, duration_ms);
        let with_lease = state(Some(1000));
        let mut book = LeaseBook::default();
        let margin = ms(100);

        // A group this node never saw a renewal of (it joined by snapshot):
        // counted from the first question, a whole lease.
        let t1 = t0 + ms(60_000);
        assert_eq!(book.expired(&with_lease, 5, "ag1", t1, margin), Some(false));
        assert_eq!(
            book.expired(&with_lease, 5, "ag1", t1 + ms(1099), margin),
            Some(false)
        );
        assert_eq!(
            book.expired(&with_lease, 5, "AG1", t1 + ms(1100), margin),
            Some(true)
        );
        // A renewal applied as a follower counts when this node leads
        // later: after a short election the lease ends a lease plus the
        // margin after that renewal (the grace, half a lease plus the
        // margin from the election, is over by then).
        let t2 = t1 + ms(10_000);
        book.applied(&renew(1000), t2);
        let elected = t2 + ms(400);
        assert_eq!(
            book.expired(&with_lease, 6, "ag1", elected, margin),
            Some(false)
        );
        assert_eq!(
            book.expired(&with_lease, 6, "ag1", t2 + ms(1099), margin),
            Some(false)
        );
        assert_eq!(
            book.expired(&with_lease, 6, "ag1", t2 + ms(1100), margin),
            Some(true)
        );
        // After a long election the lease has run out by the clock, but the
        // primary gets the grace to renew through the new leader…
        let t3 = t2 + ms(10_000);
        book.applied(&renew(1000), t3);
        let elected = t3 + ms(3_000);
        assert_eq!(
            book.expired(&with_lease, 7, "ag1", elected, margin),
            Some(false)
        );
        assert_eq!(
            book.expired(&with_lease, 7, "ag1", elected + ms(599), margin),
            Some(false)
        );
        assert_eq!(
            book.expired(&with_lease, 7, "ag1", elected + ms(600), margin),
            Some(true),
            "a primary that did not renew within the grace"
        );
        // …and a renewal within it keeps the primary.
        let elected = elected + ms(10_000);
        assert_eq!(
            book.expired(&with_lease, 8, "ag1", elected, margin),
            Some(false)
        );
        book.applied(&renew(1000), elected + ms(300));
        assert_eq!(
            book.expired(&with_lease, 8, "ag1", elected + ms(600), margin),
            Some(false)
        );
        assert_eq!(
            book.expired(&with_lease, 8, "ag1", elected + ms(1400), margin),
            Some(true)
        );

        assert_eq!(
            book.expired(&state(None), 8, "ag1", elected, margin),
            Some(true),
            "no lease"
        );
        assert_eq!(
            book.expired(&with_lease, 8, "ag2", elected, margin),
            None,
            "no group"
        );
        book.applied(&crate::cluster::tests::promotion(), t2);
        assert!(book.clocks.is_empty());
    }

    #[test]
    fn renewals_on_their_way_through_a_stalled_log_keep_a_live_primary_from_being_failed_over() {
        let with_lease = state(Some(1000));
        let mut book = LeaseBook::default();
        let margin = ms(100);
        let t0 = Instant::now();
        let expired = |book: &mut LeaseBook, at| book.expired(&with_lease, 5, "ag1", at, margin);

        // The leader applied a renewal; the next one arrives 150 ms later
        // and does not commit: the followers' disks stall for 3.2 s.
        assert_eq!(expired(&mut book, t0), Some(false));
        book.applied(&renewal("r1", 1, 1000), t0);
        let (stuck, _) = book
            .renewal_arrived(&renewal("r1", 1, 1000), t0 + ms(150))
            .unwrap();
        for after in [1100, 2000, 3349] {
            assert_eq!(
                expired(&mut book, t0 + ms(after)),
                Some(false),
                "a renewal on its way at {after} ms: the primary is renewing, only slowly"
            );
        }
        // It commits at last: applied and settled, the count restarts.
        let t1 = t0 + ms(3350);
        book.applied(&renewal("r1", 1, 1000), t1);
        book.renewal_settled(&stuck, 1000, t1);
        assert_eq!(expired(&mut book, t1 + ms(1099)), Some(false));
        assert_eq!(
            expired(&mut book, t1 + ms(1100)),
            Some(true),
            "a primary that stopped renewing is declared dead a lease plus the margin later"
        );

        // The primary dies with a renewal on its way that never commits:
        // the count runs from when the proposal settled (timed out).
        let t2 = t1 + ms(10_000);
        book.applied(&renewal("r1", 1, 1000), t2);
        let (lost, _) = book
            .renewal_arrived(&renewal("r1", 1, 1000), t2 + ms(150))
            .unwrap();
        let gave_up = t2 + ms(5150);
        assert_eq!(expired(&mut book, gave_up - ms(1)), Some(false));
        book.renewal_settled(&lost, 1000, gave_up);
        assert_eq!(expired(&mut book, gave_up + ms(1099)), Some(false));
        assert_eq!(expired(&mut book, gave_up + ms(1100)), Some(true));

        // Renewals of another holder or an older epoch (a deposed primary
        // still trying) hold nothing.
        let t3 = gave_up + ms(10_000);
        book.applied(&renewal("r1", 1, 1000), t3);
        let _deposed = book.renewal_arrived(&renewal("r1", 0, 1000), t3 + ms(900));
        let _other = book.renewal_arrived(&renewal("r2", 1, 1000), t3 + ms(900));
        assert_eq!(expired(&mut book, t3 + ms(1100)), Some(true));

        // A promotion forgets every count of the group.
        let _held = book.renewal_arrived(&renewal("r1", 1, 1000), t3 + ms(1200));
        book.applied(&crate::cluster::tests::promotion(), t3 + ms(1300));
        assert!(book.on_their_way.is_empty() && book.clocks.is_empty());
        assert_eq!(
            book.renewal_arrived(&Command::RemoveGroup("ag1".into()), t3),
            None
        );
    }

    #[test]
    fn a_renewal_on_its_way_is_settled_when_its_proposal_ends_however_it_ends() {
        let book = Arc::new(Mutex::new(LeaseBook::default()));
        let pending = |book: &Arc<Mutex<LeaseBook>>| {
            book.lock()
                .unwrap()
                .on_their_way
                .values()
                .map(|w| w.pending)
                .sum::<usize>()
        };
        let first = LeaseBook::renewal_on_its_way(&book, &renewal("r1", 1, 800)).unwrap();
        let second = LeaseBook::renewal_on_its_way(&book, &renewal("R1", 1, 800)).unwrap();
        assert!(
            LeaseBook::renewal_on_its_way(&book, &Command::RemoveGroup("ag1".into())).is_none()
        );
        assert_eq!(pending(&book), 2, "both on their way, under one key");
        drop(first);
        assert_eq!(pending(&book), 1);
        drop(second);
        assert_eq!(
            pending(&book),
            0,
            "a dropped proposal (time-out, refusal, commit) settles"
        );
    }
}
