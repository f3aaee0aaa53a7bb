//! Who a commit waits for: the synchronization state of each secondary
//! replica of one database, as the primary sees it. Pure state machine: the
//! connection tasks feed it events; commits ask it whether they may return.
//!
//! # States (per secondary replica of a database), as SQL Server names them
//! ```text
//!                connect                 hardened ≥ primary end (sync mode)
//!  NOT SYNCHRONIZING ────► SYNCHRONIZING ──────────────────────► SYNCHRONIZED
//!         ▲                     ▲   │ disconnect, session timeout,     │
//!         └─────────────────────┴───┴── suspend ◄────────────────────┘
//! ```
//! An asynchronous-commit replica never becomes SYNCHRONIZED: it stays
//! SYNCHRONIZING while connected, and commits never wait for it.
//!
//! # The commit rule (RPO 0 for synchronous commit)
//! A commit whose record ends at LSN `l` may be acknowledged when every
//! SYNCHRONIZED replica has hardened `l`, and at least
//! `REQUIRED_SYNCHRONIZED_SECONDARIES_TO_COMMIT` replicas are SYNCHRONIZED.
//! A replica leaves the synchronized set only through [`DbSync::leave`]
//! (disconnect, session timeout, suspend) — the one place the cluster
//! manager will later route through quorum — and rejoins only by catching up
//! to the primary's end, after which every later commit waits for it again.

use std::collections::BTreeMap;

use crate::log::Lsn;

/// Synchronization state of one database on one secondary replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    /// Not connected, suspended, or timed out.
    NotSynchronizing,
    /// Connected and receiving, not (yet) counted for commits.
    Synchronizing,
    /// Caught up; commits wait for it.
    Synchronized,
}

impl SyncState {
    /// The name SQL Server's views use.
    pub fn name(self) -> &'static str {
        match self {
            SyncState::NotSynchronizing => "NOT SYNCHRONIZING",
            SyncState::Synchronizing => "SYNCHRONIZING",
            SyncState::Synchronized => "SYNCHRONIZED",
        }
    }
}

/// Why a replica left the synchronized set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// The connection closed.
    Disconnected,
    /// No message within SESSION_TIMEOUT.
    SessionTimeout,
    /// Data movement suspended (ALTER DATABASE … SET HADR SUSPEND).
    Suspended,
    /// The replica seeds manually and its copy is missing or older than
    /// the primary's log: nothing is sent until a restore there joins it.
    AwaitingRestore,
    /// Being seeded automatically from a full backup the primary streams
    /// to it: its old copy's position holds nothing (the seed's own log
    /// hold does), until it starts again with the restored copy.
    Seeding,
}

impl LeaveReason {
    /// The replica's old position holds no log: it awaits a restore or a
    /// seed, and starts over from a copy of its own.
    pub fn restarts_from_a_copy(self) -> bool {
        matches!(self, LeaveReason::AwaitingRestore | LeaveReason::Seeding)
    }
}

/// What the primary knows of one secondary for one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaProgress {
    /// SYNCHRONOUS_COMMIT (true) or ASYNCHRONOUS_COMMIT.
    pub sync_commit: bool,
    /// Current state.
    pub state: SyncState,
    /// Everything before this LSN is on the replica's disk.
    pub hardened: Lsn,
    /// Everything before this LSN is redone into the replica's database.
    pub redone: Lsn,
    /// Data movement suspended for this database.
    pub suspended: bool,
    /// Why it last left the synchronized set, if it did.
    pub left: Option<LeaveReason>,
}

/// The answer to "may this commit return?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitCheck {
    /// Hardened where it must be.
    Ready,
    /// Waiting for these replicas to harden the commit.
    Waiting(Vec<String>),
    /// Fewer synchronized replicas than required; waits until enough are.
    TooFewSynchronized {
        /// How many are synchronized.
        have: usize,
        /// REQUIRED_SYNCHRONIZED_SECONDARIES_TO_COMMIT.
        required: usize,
    },
}

/// Synchronization of one database with all its secondaries.
#[derive(Debug, Clone, Default)]
pub struct DbSync {
    /// End of the primary's log.
    primary_end: Lsn,
    replicas: BTreeMap<String, ReplicaProgress>,
    required: usize,
}

impl DbSync {
    /// A database whose log ends at `primary_end`, with these secondaries
    /// (name, synchronous commit?) and the required synchronized count.
    pub fn new(primary_end: Lsn, secondaries: &[(String, bool)], required: usize) -> DbSync {
        let replicas = secondaries
            .iter()
            .map(|(name, sync_commit)| {
                (
                    name.clone(),
                    ReplicaProgress {
                        sync_commit: *sync_commit,
                        state: SyncState::NotSynchronizing,
                        hardened: 0,
                        redone: 0,
                        suspended: false,
                        left: None,
                    },
                )
            })
            .collect();
        DbSync {
            primary_end,
            replicas,
            required,
        }
    }

    /// End of the primary's log.
    pub fn primary_end(&self) -> Lsn {
        self.primary_end
    }

    /// A replica's progress.
    pub fn replica(&self, name: &str) -> Option<&ReplicaProgress> {
        self.replicas.get(name)
    }

    /// All replicas, by name.
    pub fn replicas(&self) -> impl Iterator<Item = (&String, &ReplicaProgress)> {
        self.replicas.iter()
    }

    /// Changes a replica's availability mode. Switching to asynchronous
    /// takes it out of the synchronized set at once (commits stop waiting);
    /// switching to synchronous makes it count only after it catches up.
    pub fn set_mode(&mut self, name: &str, sync_commit: bool) {
        if let Some(r) = self.replicas.get_mut(name) {
            r.sync_commit = sync_commit;
            if !sync_commit && r.state == SyncState::Synchronized {
                r.state = SyncState::Synchronizing;
            }
        }
        self.promote(name);
    }

    /// Sets REQUIRED_SYNCHRONIZED_SECONDARIES_TO_COMMIT.
    pub fn set_required(&mut self, required: usize) {
        self.required = required;
    }

    /// The primary appended records up to `end`.
    pub fn appended(&mut self, end: Lsn) {
        self.primary_end = self.primary_end.max(end);
    }

    /// The replica connected (and is not suspended): it starts receiving.
    ///
    /// A replica still SYNCHRONIZED here stays so: only [`DbSync::leave`]
    /// takes it out of the set (after the cluster recorded it), so a link
    /// that comes back before its loss was recorded cannot let commits stop
    /// waiting for a replica that may still become primary.
    pub fn connected(&mut self, name: &str, hardened: Lsn, redone: Lsn) {
        if let Some(r) = self.replicas.get_mut(name) {
            if r.state == SyncState::Synchronized {
                r.hardened = r.hardened.max(hardened);
                r.redone = r.redone.max(redone);
                return;
            }
            r.hardened = hardened;
            r.redone = redone;
            if r.left.is_some_and(LeaveReason::restarts_from_a_copy) {
                // Streamed again: its position holds the log once more.
                r.left = None;
            }
            if !r.suspended {
                r.state = SyncState::Synchronizing;
            }
        }
        self.promote(name);
    }

    /// The replica reported progress.
    pub fn progress(&mut self, name: &str, hardened: Lsn, redone: Lsn) {
        if let Some(r) = self.replicas.get_mut(name) {
            r.hardened = r.hardened.max(hardened);
            r.redone = r.redone.max(redone);
        }
        self.promote(name);
    }

    /// The replica leaves the synchronized set: commits stop waiting for it.
    /// This is the single decision point for that (see the module docs).
    pub fn leave(&mut self, name: &str, reason: LeaveReason) {
        if let Some(r) = self.replicas.get_mut(name) {
            r.state = SyncState::NotSynchronizing;
            // A replica that awaits a restore or a seed still does when its
            // link drops: it keeps not holding the log.
            let awaiting = r.left.is_some_and(LeaveReason::restarts_from_a_copy)
                && matches!(
                    reason,
                    LeaveReason::Disconnected | LeaveReason::SessionTimeout
                );
            if !awaiting {
                r.left = Some(reason);
            }
            if reason == LeaveReason::Suspended {
                r.suspended = true;
            }
        }
    }

    /// Data movement resumed (the connection, if any, goes on).
    pub fn resume(&mut self, name: &str, connected: bool) {
        if let Some(r) = self.replicas.get_mut(name) {
            r.suspended = false;
            if connected {
                r.state = SyncState::Synchronizing;
            }
        }
        self.promote(name);
    }

    /// SYNCHRONIZING → SYNCHRONIZED once a sync replica has caught up.
    fn promote(&mut self, name: &str) {
        let end = self.primary_end;
        if let Some(r) = self.replicas.get_mut(name) {
            if r.sync_commit && r.state == SyncState::Synchronizing && r.hardened >= end {
                r.state = SyncState::Synchronized;
                r.left = None;
            }
        }
    }

    /// The lowest LSN any secondary has hardened: the log must be kept
    /// from there for it (its end when there are no secondaries).
    pub fn lowest_hardened(&self) -> Lsn {
        // A replica that awaits a restore (MANUAL seeding) takes nothing
        // from this log: it does not hold it, as in SQL Server, where a
        // database not joined on a replica holds no log. One being seeded
        // is held for by its seed (`PrimaryGroup::retain`).
        self.replicas
            .values()
            .filter(|r| !r.left.is_some_and(LeaveReason::restarts_from_a_copy))
            .map(|r| r.hardened)
            .min()
            .unwrap_or(self.primary_end)
    }

    /// The lowest LSN a SYNCHRONIZED replica has hardened (None: none is
    /// synchronized). Every replica an automatic failover may pick holds
    /// the log up to here, so a record before it survives any failover
    /// that loses no acknowledged commit.
    pub fn synchronized_hardened(&self) -> Option<Lsn> {
        self.synchronized().map(|(_, r)| r.hardened).min()
    }

    /// How far commits may be acknowledged now, by the commit rule: every
    /// commit whose record ends at or before the answer may (the lowest LSN
    /// a SYNCHRONIZED replica hardened; `Lsn::MAX` with none); None while
    /// fewer than REQUIRED_SYNCHRONIZED_SECONDARIES_TO_COMMIT replicas are
    /// synchronized. The rule's one statement: [`DbSync::check_commit`]
    /// answers from it. Allocates nothing.
    pub fn released_upto(&self) -> Option<Lsn> {
        self.too_few_synchronized()
            .is_none()
            .then(|| self.synchronized_hardened().unwrap_or(Lsn::MAX))
    }

    /// `(synchronized, required)` while fewer replicas are SYNCHRONIZED
    /// than REQUIRED_SYNCHRONIZED_SECONDARIES_TO_COMMIT (no commit may be
    /// acknowledged); None otherwise.
    pub fn too_few_synchronized(&self) -> Option<(usize, usize)> {
        let have = self.synchronized().count();
        (have < self.required).then_some((have, self.required))
    }

    /// May a commit whose record ends at `lsn` be acknowledged? (By
    /// [`DbSync::released_upto`]; when not, who or what it waits for.)
    pub fn check_commit(&self, lsn: Lsn) -> CommitCheck {
        if let Some((have, required)) = self.too_few_synchronized() {
            return CommitCheck::TooFewSynchronized { have, required };
        }
        if self.released_upto().is_some_and(|upto| upto >= lsn) {
            return CommitCheck::Ready;
        }
        CommitCheck::Waiting(
            self.synchronized()
                .filter(|(_, r)| r.hardened < lsn)
                .map(|(name, _)| name.clone())
                .collect(),
        )
    }

    /// The SYNCHRONIZED replicas.
    fn synchronized(&self) -> impl Iterator<Item = (&String, &ReplicaProgress)> {
        self.replicas
            .iter()
            .filter(|(_, r)| r.state == SyncState::Synchronized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_sync_one_async() -> DbSync {
        DbSync::new(
            100,
            &[
                ("r2".into(), true),
                ("r3".into(), true),
                ("r4".into(), false),
            ],
            0,
        )
    }

    /// The commit hook wakes a waiting commit when `released_upto` reaches
    /// its LSN: that must be exactly when the commit rule (`check_commit`)
    /// lets it return, in every state the transitions lead to.
    #[test]
    fn a_commit_is_released_exactly_when_the_commit_rule_lets_it_return() {
        let agree = |s: &DbSync, what: &str| {
            for lsn in [0, 1, 50, 99, 100, 101, 150, 199, 200, 201, 300, Lsn::MAX] {
                let ready = s.check_commit(lsn) == CommitCheck::Ready;
                let released = s.released_upto().is_some_and(|upto| upto >= lsn);
                assert_eq!(ready, released, "{what}: commit ending at {lsn}");
            }
            assert_eq!(
                s.too_few_synchronized().is_some(),
                s.released_upto().is_none(),
                "{what}"
            );
        };
        let mut s = two_sync_one_async();
        agree(&s, "nobody connected");
        s.appended(200);
        s.connected("r2", 100, 100);
        agree(&s, "r2 synchronizing");
        s.progress("r2", 200, 150);
        agree(&s, "r2 synchronized");
        s.connected("r3", 200, 200);
        s.appended(300);
        s.progress("r3", 250, 200);
        agree(&s, "both synchronized, r3 ahead");
        s.set_required(2);
        agree(&s, "two required, two synchronized");
        s.leave("r2", LeaveReason::SessionTimeout);
        agree(&s, "two required, one synchronized");
        s.set_required(0);
        agree(&s, "none required, one synchronized");
        s.leave("r3", LeaveReason::Disconnected);
        agree(&s, "none synchronized, none required");
        s.set_required(1);
        agree(&s, "none synchronized, one required");
    }

    #[test]
    fn the_synchronized_hardened_lsn_is_the_slowest_synchronized_replica() {
        let mut s = two_sync_one_async();
        assert_eq!(s.synchronized_hardened(), None, "none synchronized");
        s.connected("r2", 100, 100);
        s.connected("r3", 100, 100);
        s.connected("r4", 10, 10);
        s.appended(200);
        s.progress("r2", 180, 150);
        assert_eq!(
            s.synchronized_hardened(),
            Some(100),
            "r3 is the slowest; the asynchronous r4 does not count"
        );
        s.leave("r3", LeaveReason::SessionTimeout);
        assert_eq!(s.synchronized_hardened(), Some(180), "r3 left the set");
    }

    #[test]
    fn a_sync_replica_counts_only_after_catching_up() {
        let mut s = two_sync_one_async();
        s.connected("r2", 40, 40);
        assert_eq!(s.replica("r2").unwrap().state, SyncState::Synchronizing);
        assert_eq!(
            s.check_commit(150),
            CommitCheck::Ready,
            "not yet in the set: not waited for"
        );
        s.progress("r2", 100, 90);
        assert_eq!(s.replica("r2").unwrap().state, SyncState::Synchronized);
        s.appended(150);
        assert_eq!(s.check_commit(150), CommitCheck::Waiting(vec!["r2".into()]));
        s.progress("r2", 150, 100);
        assert_eq!(s.check_commit(150), CommitCheck::Ready);
    }

    #[test]
    fn asynchronous_replicas_are_never_waited_for() {
        let mut s = two_sync_one_async();
        s.connected("r4", 100, 100);
        s.appended(500);
        assert_eq!(s.replica("r4").unwrap().state, SyncState::Synchronizing);
        assert_eq!(s.check_commit(500), CommitCheck::Ready);
    }

    #[test]
    fn session_timeout_removes_the_replica_before_commits_stop_waiting() {
        let mut s = two_sync_one_async();
        s.connected("r2", 100, 100);
        s.connected("r3", 100, 100);
        s.appended(200);
        assert_eq!(
            s.check_commit(200),
            CommitCheck::Waiting(vec!["r2".into(), "r3".into()])
        );
        s.progress("r3", 200, 200);
        assert_eq!(s.check_commit(200), CommitCheck::Waiting(vec!["r2".into()]));
        s.leave("r2", LeaveReason::SessionTimeout);
        assert_eq!(s.check_commit(200), CommitCheck::Ready);
        assert_eq!(
            s.replica("r2").unwrap().left,
            Some(LeaveReason::SessionTimeout)
        );
        // It comes back: counted again only after catching up.
        s.connected("r2", 150, 150);
        assert_eq!(s.check_commit(200), CommitCheck::Ready);
        s.progress("r2", 200, 180);
        s.appended(300);
        assert_eq!(
            s.check_commit(300),
            CommitCheck::Waiting(vec!["r2".into(), "r3".into()])
        );
    }

    #[test]
    fn required_synchronized_secondaries_block_commits_until_met() {
        let mut s = two_sync_one_async();
        s.set_required(1);
        assert_eq!(
            s.check_commit(100),
            CommitCheck::TooFewSynchronized {
                have: 0,
                required: 1
            }
        );
        s.connected("r3", 100, 100);
        assert_eq!(s.check_commit(100), CommitCheck::Ready);
    }

    #[test]
    fn suspended_databases_stay_out_until_resumed_and_caught_up() {
        let mut s = two_sync_one_async();
        s.connected("r2", 100, 100);
        s.leave("r2", LeaveReason::Suspended);
        s.progress("r2", 100, 100);
        assert_eq!(s.replica("r2").unwrap().state, SyncState::NotSynchronizing);
        s.connected("r2", 100, 100);
        assert_eq!(
            s.replica("r2").unwrap().state,
            SyncState::NotSynchronizing,
            "suspended wins"
        );
        s.resume("r2", true);
        assert_eq!(s.replica("r2").unwrap().state, SyncState::Synchronized);
    }

    #[test]
    fn the_log_is_kept_for_the_slowest_secondary() {
        let mut s = two_sync_one_async();
        assert_eq!(s.lowest_hardened(), 0, "never heard from: keep everything");
        s.connected("r2", 100, 100);
        s.connected("r3", 70, 60);
        s.connected("r4", 90, 90);
        assert_eq!(s.lowest_hardened(), 70);
        s.leave("r3", LeaveReason::Disconnected);
        assert_eq!(
            s.lowest_hardened(),
            70,
            "a disconnected replica still needs its tail"
        );
        assert_eq!(DbSync::new(500, &[], 0).lowest_hardened(), 500);
    }

    #[test]
    fn a_replica_awaiting_a_restore_holds_no_log_until_it_is_streamed_again() {
        let mut s = two_sync_one_async();
        s.connected("r2", 100, 100);
        s.connected("r3", 100, 100);
        s.connected("r4", 40, 40);
        assert_eq!(s.lowest_hardened(), 40);
        // r4 seeds manually and its copy is too old: it holds nothing…
        s.leave("r4", LeaveReason::AwaitingRestore);
        assert_eq!(s.lowest_hardened(), 100);
        // …even once its link drops…
        s.leave("r4", LeaveReason::Disconnected);
        assert_eq!(s.lowest_hardened(), 100);
        assert_eq!(
            s.replica("r4").unwrap().left,
            Some(LeaveReason::AwaitingRestore)
        );
        // …and holds the log again from where a restored copy starts.
        s.connected("r4", 90, 90);
        assert_eq!(s.lowest_hardened(), 90);
        s.leave("r4", LeaveReason::Disconnected);
        assert_eq!(
            s.lowest_hardened(),
            90,
            "an ordinary disconnection holds the log"
        );
    }

    #[test]
    fn switching_to_async_releases_waiting_commits() {
        let mut s = two_sync_one_async();
        s.connected("r2", 100, 100);
        s.appended(200);
        assert_eq!(s.check_commit(200), CommitCheck::Waiting(vec!["r2".into()]));
        s.set_mode("r2", false);
        assert_eq!(s.check_commit(200), CommitCheck::Ready);
    }

    #[test]
    fn a_link_back_before_its_loss_was_recorded_keeps_the_replica_synchronized() {
        // Safety rule 1: only `leave` (after the cluster recorded it) takes a
        // replica out of the set. A reconnection that reset it to
        // SYNCHRONIZING let commits go on without a replica the cluster
        // still listed as a failover target (found by the simulation).
        let mut s = DbSync::new(100, &[("r2".into(), true)], 0);
        s.connected("r2", 100, 100);
        assert_eq!(s.replica("r2").unwrap().state, SyncState::Synchronized);
        s.appended(200);
        s.connected("r2", 0, 0);
        assert_eq!(s.replica("r2").unwrap().state, SyncState::Synchronized);
        assert_eq!(s.check_commit(200), CommitCheck::Waiting(vec!["r2".into()]));
        s.leave("r2", LeaveReason::Disconnected);
        s.connected("r2", 150, 150);
        assert_eq!(s.replica("r2").unwrap().state, SyncState::Synchronizing);
    }
}
