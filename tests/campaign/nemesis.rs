//! The nemesis: one fault at a time, chosen by the seeded generator, each
//! injected, held and healed by itself, with a short and sometimes no pause
//! before the next, so faults land while the previous transition (a
//! failover, a rejoin, a rewind, a seeding, redo catching up) is still
//! under way.
//!
//! It only does what an operator or the environment could do and that
//! must not lose an acknowledged commit: in particular a forced failover
//! goes only to a replica that is in the cluster's synchronized set at
//! that moment, and a replica's data is wiped only while another node is
//! the writable primary. What happened to each fault is recorded
//! ([`FaultRecord`]); anything unexpected — a statement failing in a way
//! it should not, a node exiting by itself, a node that cannot restart, no
//! primary for a minute — is a [`Finding`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::net::{first, query_at, Endpoint, Rows};
use super::rng::Rng;
use super::workload::Recorder;
use crate::common::group::{name, Group, APP, GROUP};
use crate::common::DEFAULT_DB;

/// What the nemesis can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// kill -9 of the primary, restarted after a new primary was named or
    /// after a random delay (sometimes before the failover finished).
    KillPrimary,
    /// kill -9 of a secondary, restarted after a random delay.
    KillSecondary,
    /// SIGSTOP of the primary past its lease, then SIGCONT.
    PausePrimary,
    /// SIGSTOP of a secondary (sometimes past its session timeout).
    PauseSecondary,
    /// The primary cut off from both secondaries, then healed.
    PartitionPrimary,
    /// A secondary cut off from everyone, or from the primary only.
    PartitionSecondary,
    /// `ALTER AVAILABILITY GROUP ag1 FAILOVER` on a secondary.
    PlannedFailover,
    /// `FORCE_FAILOVER_ALLOW_DATA_LOSS` on a replica of the cluster's
    /// synchronized set, then `SET HADR RESUME` on the new primary.
    ForcedFailover,
    /// `MODIFY REPLICA … SESSION_TIMEOUT`.
    SessionTimeout,
    /// `MODIFY REPLICA … AVAILABILITY_MODE` of a secondary, sync ↔ async.
    AvailabilityMode,
    /// `SET (REQUIRED_SYNCHRONIZED_SECONDARIES_TO_COMMIT = 0 | 1)`.
    RequiredSecondaries,
    /// `SET HADR SUSPEND` then `RESUME`, on the primary or one secondary.
    SuspendResume,
    /// A secondary loses its copy and log, restarts, is killed while it
    /// is being seeded (at a `log.restart.*` crash point, or at a random
    /// moment), and restarts again.
    KillDuringSeeding,
    /// The primary is cut off until another is named, healed, and killed
    /// while it rejoins with a divergent tail (rewind; at a `log.restart.*`
    /// crash point, or at a random moment), then restarted.
    KillDuringRewind,
    /// A secondary restarted with `AVAILDB_CRASH_AT=ag.promote.*` is made
    /// primary by a planned failover and dies taking office.
    CrashDuringPromotion,
    /// A secondary restarted with `AVAILDB_CRASH_AT=capture.part_appended:K`
    /// is made primary and dies after appending its K-th record, before it
    /// is durable or shipped.
    CrashAfterCommitRecord,
    /// One node's disk (a tmpfs) is filled for a few seconds; root only.
    DiskFull,
}

impl Kind {
    pub const ALL: [Kind; 17] = [
        Kind::KillPrimary,
        Kind::KillSecondary,
        Kind::PausePrimary,
        Kind::PauseSecondary,
        Kind::PartitionPrimary,
        Kind::PartitionSecondary,
        Kind::PlannedFailover,
        Kind::ForcedFailover,
        Kind::SessionTimeout,
        Kind::AvailabilityMode,
        Kind::RequiredSecondaries,
        Kind::SuspendResume,
        Kind::KillDuringSeeding,
        Kind::KillDuringRewind,
        Kind::CrashDuringPromotion,
        Kind::CrashAfterCommitRecord,
        Kind::DiskFull,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::KillPrimary => "kill_primary",
            Kind::KillSecondary => "kill_secondary",
            Kind::PausePrimary => "pause_primary",
            Kind::PauseSecondary => "pause_secondary",
            Kind::PartitionPrimary => "partition_primary",
            Kind::PartitionSecondary => "partition_secondary",
            Kind::PlannedFailover => "planned_failover",
            Kind::ForcedFailover => "forced_failover",
            Kind::SessionTimeout => "session_timeout",
            Kind::AvailabilityMode => "availability_mode",
            Kind::RequiredSecondaries => "required_secondaries",
            Kind::SuspendResume => "suspend_resume",
            Kind::KillDuringSeeding => "kill_during_seeding",
            Kind::KillDuringRewind => "kill_during_rewind",
            Kind::CrashDuringPromotion => "crash_during_promotion",
            Kind::CrashAfterCommitRecord => "crash_after_commit_record",
            Kind::DiskFull => "disk_full",
        }
    }
}

/// One injected fault.
#[derive(Clone, Debug)]
pub struct FaultRecord {
    pub n: usize,
    pub kind: Kind,
    /// The replica it hit (or "-").
    pub target: String,
    /// The primary when it started.
    pub primary: String,
    /// From injection to heal, in ms since the campaign started.
    pub start_ms: u64,
    pub end_ms: u64,
    /// What happened, in words.
    pub outcome: String,
}

/// Something that should not have happened, short of a lost commit.
#[derive(Clone, Debug)]
pub struct Finding {
    pub at_ms: u64,
    /// `unexpected_error`, `node_exited`, `cannot_restart`, `no_primary`.
    pub what: &'static str,
    pub detail: String,
}

/// Statement errors that are a normal answer to what the nemesis asked in
/// the state the group was in (the target not synchronized, a node busy
/// with another transition, the cluster without a majority for a moment).
const EXPECTED_REFUSALS: &[&str] = &[
    "not SYNCHRONIZED",
    "synchronized set",
    "majority",
    "already the primary",
    "is the primary",
    "not a secondary",
    "not the primary",
    "another transition",
    "no session within",
    "suspended",
    "not suspended",
];

const ONE_QUERY: Duration = Duration::from_secs(3);
/// Bound on a new primary after a fault of the primary.
const NEW_PRIMARY_WITHIN: Duration = Duration::from_secs(20);
/// Bound on any primary before a fault (a liveness violation past it).
const PRIMARY_WITHIN: Duration = Duration::from_secs(60);
const DDL_WITHIN: Duration = Duration::from_secs(60);

/// The crash points between the steps of a log restart at a full image
/// (seeding, rewind): `src/log/store.rs`.
const LOG_RESTART_POINTS: [&str; 5] = [
    "log.restart.intent",
    "log.restart.new_segment",
    "log.restart.old_removed",
    "log.restart.history",
    "log.restart.checkpoint",
];

/// The file that fills the disk of [`Kind::DiskFull`]'s node.
const FILLER: &str = "campaign-disk-filler";

pub struct Nemesis<'g> {
    pub group: &'g mut Group,
    nodes: Vec<Endpoint>,
    rec: Arc<Recorder>,
    rng: Rng,
    /// The node whose data directory is a tmpfs (root only).
    disk_node: Option<usize>,
    /// A secondary the nemesis made ASYNCHRONOUS_COMMIT.
    async_replica: Option<usize>,
    /// REQUIRED_SYNCHRONIZED_SECONDARIES_TO_COMMIT as the nemesis set it.
    required: u32,
    pub faults: Vec<FaultRecord>,
    pub findings: Vec<Finding>,
    /// Why the campaign cannot go on (a node that does not restart, no
    /// primary): the nemesis stops and the checks say the rest.
    pub broken: Option<String>,
}

impl<'g> Nemesis<'g> {
    pub fn new(
        group: &'g mut Group,
        nodes: Vec<Endpoint>,
        rec: Arc<Recorder>,
        rng: Rng,
        disk_node: Option<usize>,
    ) -> Nemesis<'g> {
        Nemesis {
            group,
            nodes,
            rec,
            rng,
            disk_node,
            async_replica: None,
            required: 0,
            faults: Vec::new(),
            findings: Vec::new(),
            broken: None,
        }
    }

    fn all(&self) -> Vec<usize> {
        (0..self.group.nodes.len()).collect()
    }

    fn others(&self, i: usize) -> Vec<usize> {
        self.all().into_iter().filter(|&j| j != i).collect()
    }

    fn finding(&mut self, what: &'static str, detail: String) {
        eprintln!("campaign: finding: {what}: {}", first_line(&detail));
        self.findings.push(Finding {
            at_ms: self.rec.now_ms(),
            what,
            detail,
        });
    }

    async fn on(&self, i: usize, db: &str, sql: &str, bound: Duration) -> Result<Rows, String> {
        query_at(&self.nodes[i], db, sql, bound).await
    }

    /// Node `i`'s own account: (primary its definition names, epoch, its
    /// role), and whether `app` takes writes there.
    async fn own_view(&self, i: usize) -> Result<(String, u64, String, bool), String> {
        let sql = format!(
            "SELECT g.primary_replica, g.epoch, (SELECT role_desc FROM \
             sys.dm_hadr_availability_replica_states WHERE is_local) \
             FROM sys.availability_groups g WHERE g.name = '{GROUP}'"
        );
        let rows = self.on(i, DEFAULT_DB, &sql, ONE_QUERY).await?;
        let row = rows.first().ok_or("no definition of ag1")?;
        let ro = self
            .on(i, APP, "SHOW transaction_read_only", ONE_QUERY)
            .await?;
        Ok((
            row[0].clone().unwrap_or_default(),
            row[1].as_deref().and_then(|e| e.parse().ok()).unwrap_or(0),
            row[2].clone().unwrap_or_default(),
            first(&ro).as_deref() == Some("off"),
        ))
    }

    /// Waits until one of `among` is the writable primary its own
    /// definition names (the highest epoch wins); (node, epoch).
    pub async fn find_primary(
        &self,
        among: &[usize],
        within: Duration,
    ) -> Result<(usize, u64), String> {
        let deadline = Instant::now() + within;
        loop {
            let mut best: Option<(usize, u64)> = None;
            let mut seen = Vec::new();
            for &i in among {
                match self.own_view(i).await {
                    Ok((primary, epoch, role, writable)) => {
                        if primary == name(i)
                            && role == "PRIMARY"
                            && writable
                            && best.is_none_or(|(_, e)| epoch > e)
                        {
                            best = Some((i, epoch));
                        }
                        seen.push(format!(
                            "{}: names {primary} at epoch {epoch}, role {role}, writable {writable}",
                            name(i)
                        ));
                    }
                    Err(e) => seen.push(format!("{}: {}", name(i), first_line(&e))),
                }
            }
            if let Some(found) = best {
                return Ok(found);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no writable primary among {:?} within {within:?}: {}",
                    among.iter().map(|&i| name(i)).collect::<Vec<_>>(),
                    seen.join("; ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The secondaries in the cluster's synchronized set, as `primary`
    /// shows it (`is_failover_ready`).
    async fn failover_ready(&self, primary: usize) -> Vec<usize> {
        let sql = format!(
            "SELECT replica, is_failover_ready FROM sys.dm_hadr_database_replica_states \
             WHERE database_name = '{APP}' AND NOT is_local"
        );
        let Ok(rows) = self.on(primary, DEFAULT_DB, &sql, ONE_QUERY).await else {
            return Vec::new();
        };
        self.all()
            .into_iter()
            .filter(|&i| {
                rows.iter().any(|r| {
                    r[0].as_deref() == Some(name(i).as_str())
                        && matches!(r[1].as_deref(), Some("t" | "true" | "1"))
                })
            })
            .collect()
    }

    async fn wait_failover_ready(&self, primary: usize, target: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.failover_ready(primary).await.contains(&target) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    /// Runs an AG statement on node `i`; an error that is not an
    /// [`EXPECTED_REFUSALS`] is a finding. The outcome in words.
    async fn ddl(&mut self, i: usize, sql: &str) -> Result<(), String> {
        let result = self.on(i, DEFAULT_DB, sql, DDL_WITHIN).await.map(|_| ());
        if let Err(e) = &result {
            if !EXPECTED_REFUSALS.iter().any(|x| e.contains(x)) {
                self.finding("unexpected_error", format!("{sql} on {}: {e}", name(i)));
            }
        }
        result
    }

    /// Restarts node `i` (SIGTERM first if it runs); a node that cannot
    /// start breaks the campaign (safety rule 7).
    async fn restart(&mut self, i: usize) -> bool {
        match self.group.nodes[i].try_restart().await {
            Ok(()) => true,
            Err(e) => {
                self.finding("cannot_restart", format!("{}: {e}", name(i)));
                self.broken = Some(format!("{} cannot restart", name(i)));
                false
            }
        }
    }

    /// Kills node `i` (SIGKILL) and starts it again.
    async fn kill_restart(&mut self, i: usize) -> bool {
        self.group.nodes[i].kill9();
        self.restart(i).await
    }

    /// Every node that exited by itself is a finding, and restarted.
    async fn revive(&mut self) {
        for i in self.all() {
            let running = self.group.nodes[i].is_running();
            if !running {
                let status = self.group.nodes[i].exit_status();
                let tail = self.group.nodes[i].log_tail();
                self.finding(
                    "node_exited",
                    format!("{} exited by itself ({status:?})\n{tail}", name(i)),
                );
                self.group.nodes[i].set_env("AVAILDB_CRASH_AT", None);
                self.restart(i).await;
            }
        }
    }

    /// Injects, holds and heals one fault of `kind`.
    pub async fn inject(&mut self, n: usize, kind: Kind) {
        self.revive().await;
        if self.broken.is_some() {
            return;
        }
        let (p, _) = match self.find_primary(&self.all(), PRIMARY_WITHIN).await {
            Ok(found) => found,
            Err(e) => {
                self.finding("no_primary", e.clone());
                self.broken = Some(e);
                return;
            }
        };
        let start_ms = self.rec.now_ms();
        let others = self.others(p);
        let secondary = self.rng.pick(&others);
        // Automatic failover needs a synchronized synchronous-commit
        // secondary: without one before a primary fault, the group waits
        // for its primary by design.
        let ready = match kind {
            Kind::KillPrimary | Kind::PausePrimary | Kind::PartitionPrimary => {
                self.failover_ready(p).await
            }
            _ => Vec::new(),
        };
        let (target, outcome) = match kind {
            Kind::KillPrimary => (p, self.kill_primary(p, &ready).await),
            Kind::KillSecondary => {
                self.group.nodes[secondary].kill9();
                let hold = self.rng.millis(0, 3000);
                tokio::time::sleep(hold).await;
                self.restart(secondary).await;
                (secondary, format!("down {hold:?}"))
            }
            Kind::PausePrimary => {
                self.group.nodes[p].pause();
                let outcome = self.hold_until_new_primary(p, &ready, 1200, 4000).await;
                self.group.nodes[p].resume();
                (p, outcome)
            }
            Kind::PauseSecondary => {
                self.group.nodes[secondary].pause();
                let hold = self.rng.millis(500, 7000);
                tokio::time::sleep(hold).await;
                self.group.nodes[secondary].resume();
                (secondary, format!("paused {hold:?}"))
            }
            Kind::PartitionPrimary => {
                self.proxy().partition(&[p], &others);
                let outcome = self.hold_until_new_primary(p, &ready, 1000, 4000).await;
                self.proxy().heal();
                (p, outcome)
            }
            Kind::PartitionSecondary => {
                let alone = self.rng.chance(0.5);
                let rest = self.others(secondary);
                if alone {
                    self.proxy().partition(&[secondary], &rest);
                } else {
                    self.proxy().partition(&[secondary], &[p]);
                }
                let hold = self.rng.millis(500, 7000);
                tokio::time::sleep(hold).await;
                self.proxy().heal();
                let from = if alone { "everyone" } else { "the primary" };
                (secondary, format!("cut from {from} for {hold:?}"))
            }
            Kind::PlannedFailover => {
                let ready = self.failover_ready(p).await;
                let target = if ready.is_empty() {
                    secondary
                } else {
                    self.rng.pick(&ready)
                };
                let sql = format!("ALTER AVAILABILITY GROUP {GROUP} FAILOVER");
                let result = self.ddl(target, &sql).await;
                (
                    target,
                    format!("ready {}: {}", ready.contains(&target), words(&result)),
                )
            }
            Kind::ForcedFailover => self.forced_failover(p).await,
            Kind::SessionTimeout => {
                let replica = self.rng.pick(&self.all());
                let seconds = self.rng.pick(&[5u32, 6, 8, 10, 12]);
                let sql = format!(
                    "ALTER AVAILABILITY GROUP {GROUP} MODIFY REPLICA ON '{}' WITH (SESSION_TIMEOUT = {seconds})",
                    name(replica)
                );
                let result = self.ddl(p, &sql).await;
                (replica, format!("{seconds} s: {}", words(&result)))
            }
            Kind::AvailabilityMode => self.toggle_availability_mode(p, secondary).await,
            Kind::RequiredSecondaries => {
                let value = 1 - self.required.min(1);
                let sql = format!(
                    "ALTER AVAILABILITY GROUP {GROUP} SET (REQUIRED_SYNCHRONIZED_SECONDARIES_TO_COMMIT = {value})"
                );
                let result = self.ddl(p, &sql).await;
                if result.is_ok() {
                    self.required = value;
                }
                (p, format!("= {value}: {}", words(&result)))
            }
            Kind::SuspendResume => {
                let at = if self.rng.chance(0.5) { p } else { secondary };
                let suspend = format!("ALTER DATABASE {APP} SET HADR SUSPEND");
                let result = self.ddl(at, &suspend).await;
                let hold = self.rng.millis(300, 3000);
                tokio::time::sleep(hold).await;
                let resume = format!("ALTER DATABASE {APP} SET HADR RESUME");
                let resumed = self.ddl(at, &resume).await;
                let side = if at == p { "primary" } else { "secondary" };
                (
                    at,
                    format!(
                        "on the {side}: suspend {}, {hold:?}, resume {}",
                        words(&result),
                        words(&resumed)
                    ),
                )
            }
            Kind::KillDuringSeeding => (secondary, self.kill_during_seeding(secondary).await),
            Kind::KillDuringRewind => (p, self.kill_during_rewind(p).await),
            Kind::CrashDuringPromotion => {
                let point = self
                    .rng
                    .pick(&["ag.promote.before", "ag.promote.one_database"]);
                self.crash_on_failover(p, point.to_string()).await
            }
            Kind::CrashAfterCommitRecord => {
                let k = 1 + self.rng.below(40);
                self.crash_on_failover(p, format!("capture.part_appended:{k}"))
                    .await
            }
            Kind::DiskFull => self.disk_full().await,
        };
        let record = FaultRecord {
            n,
            kind,
            target: name(target),
            primary: name(p),
            start_ms,
            end_ms: self.rec.now_ms(),
            outcome,
        };
        eprintln!(
            "campaign: fault {n} {} on {} (primary {}) at {:.1} s, {} ms: {}",
            kind.name(),
            record.target,
            record.primary,
            start_ms as f64 / 1000.0,
            record.end_ms - start_ms,
            record.outcome
        );
        self.faults.push(record);
    }

    fn proxy(&self) -> &crate::common::proxy::Proxy {
        self.group.proxy.as_ref().expect("a partitionable group")
    }

    /// Holds a fault of primary `p` until another node is primary (60% of
    /// the time, bounded) or for a random time between `lo_ms` and
    /// `hi_ms`. `ready` are the secondaries that were failover-ready just
    /// before the fault: with none, no replica may take over and the fault
    /// is held for the random time; with some, a group that does not fail
    /// over within the bound is a finding.
    async fn hold_until_new_primary(
        &mut self,
        p: usize,
        ready: &[usize],
        lo_ms: u64,
        hi_ms: u64,
    ) -> String {
        if !ready.is_empty() && self.rng.chance(0.6) {
            let t = Instant::now();
            match self.find_primary(&self.others(p), NEW_PRIMARY_WITHIN).await {
                Ok((new, epoch)) => format!(
                    "{} primary at epoch {epoch} after {:?}",
                    name(new),
                    t.elapsed()
                ),
                Err(e) => {
                    let ready: Vec<String> = ready.iter().map(|&i| name(i)).collect();
                    self.finding(
                        "no_failover",
                        format!("{ready:?} were failover-ready, yet {e}"),
                    );
                    format!("no new primary: {}", first_line(&e))
                }
            }
        } else {
            let hold = self.rng.millis(lo_ms, hi_ms);
            tokio::time::sleep(hold).await;
            if ready.is_empty() {
                format!("held {hold:?} (no secondary was failover-ready: none may take over)")
            } else {
                format!("held {hold:?}")
            }
        }
    }

    async fn kill_primary(&mut self, p: usize, ready: &[usize]) -> String {
        self.group.nodes[p].kill9();
        let outcome = self.hold_until_new_primary(p, ready, 200, 2500).await;
        self.restart(p).await;
        outcome
    }

    async fn forced_failover(&mut self, p: usize) -> (usize, String) {
        // A secondary rejoining after the previous fault is in the set
        // again within seconds.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut ready = self.failover_ready(p).await;
        while ready.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            ready = self.failover_ready(p).await;
        }
        if ready.is_empty() {
            return (
                p,
                "skipped: no secondary in the synchronized set for 30 s".into(),
            );
        }
        let target = self.rng.pick(&ready);
        let sql = format!("ALTER AVAILABILITY GROUP {GROUP} FORCE_FAILOVER_ALLOW_DATA_LOSS");
        let result = self.ddl(target, &sql).await;
        if result.is_err() {
            return (target, format!("force: {}", words(&result)));
        }
        // Data movement starts suspended after a forced failover.
        let resume = format!("ALTER DATABASE {APP} SET HADR RESUME");
        let deadline = Instant::now() + Duration::from_secs(30);
        let resumed = loop {
            let r = self.on(target, DEFAULT_DB, &resume, DDL_WITHIN).await;
            if r.is_ok() || Instant::now() > deadline {
                break r.map(|_| ());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if let Err(e) = &resumed {
            self.finding(
                "unexpected_error",
                format!("{resume} on {} after FORCE: {e}", name(target)),
            );
        }
        (target, format!("forced; resume {}", words(&resumed)))
    }

    async fn toggle_availability_mode(&mut self, p: usize, secondary: usize) -> (usize, String) {
        let (replica, mode, failover) = match self.async_replica {
            Some(r) => (r, "SYNCHRONOUS_COMMIT", "AUTOMATIC"),
            None => (secondary, "ASYNCHRONOUS_COMMIT", "MANUAL"),
        };
        let sql = format!(
            "ALTER AVAILABILITY GROUP {GROUP} MODIFY REPLICA ON '{}' WITH \
             (AVAILABILITY_MODE = {mode}, FAILOVER_MODE = {failover})",
            name(replica)
        );
        let result = self.ddl(p, &sql).await;
        if result.is_ok() {
            self.async_replica = match self.async_replica {
                Some(_) => None,
                None => Some(replica),
            };
        }
        (replica, format!("{mode}: {}", words(&result)))
    }

    async fn kill_during_seeding(&mut self, s: usize) -> String {
        self.group.nodes[s].kill9();
        // Its copy goes only while another node is the writable primary,
        // which holds every acknowledged commit.
        let primary = match self.find_primary(&self.others(s), PRIMARY_WITHIN).await {
            Ok((primary, _)) => primary,
            Err(e) => {
                self.restart(s).await;
                return format!("not wiped: {}", first_line(&e));
            }
        };
        let data = self.group.nodes[s].data_dir();
        for f in ["app.db", "app.db-wal", "app.db-shm"] {
            let _ = std::fs::remove_file(data.join("databases").join(f));
        }
        let _ = std::fs::remove_dir_all(data.join("log").join(APP));
        // Two of three times at a step of the log restart (crash point),
        // else at a random moment of the seeding.
        if self.rng.below(3) < 2 {
            let point = self.rng.pick(&LOG_RESTART_POINTS);
            return self
                .crash_at_point(s, primary, point, "wiped; seeding")
                .await;
        }
        if !self.restart(s).await {
            return "wiped; restart failed".into();
        }
        let seeding = self.rng.millis(20, 1000);
        tokio::time::sleep(seeding).await;
        let state = self.local_state(s).await;
        self.group.nodes[s].kill9();
        let down = self.rng.millis(0, 1000);
        tokio::time::sleep(down).await;
        self.restart(s).await;
        format!("wiped, killed {seeding:?} into seeding ({state}), down {down:?}")
    }

    /// Restarts node `i` with `AVAILDB_CRASH_AT=point`, waits (bounded)
    /// until it dies there, and restarts it without: the window between
    /// the steps of a transition, reached deterministically.
    async fn crash_at_point(
        &mut self,
        i: usize,
        primary: usize,
        point: &str,
        what: &str,
    ) -> String {
        self.group.nodes[i].kill9();
        self.group.nodes[i].set_env("AVAILDB_CRASH_AT", Some(point));
        let crashes_before = self.group.nodes[i].log().matches("crash point").count();
        if !self.restart(i).await {
            self.group.nodes[i].set_env("AVAILDB_CRASH_AT", None);
            return format!("{what}: restart with {point} failed");
        }
        let how = self.until_crash_or_ready(i, primary, crashes_before).await;
        let down = self.rng.millis(0, 1000);
        tokio::time::sleep(down).await;
        self.kill_restart(i).await;
        format!("{what}: {point} {how}, down {down:?}")
    }

    /// Waits (bounded) until node `i`, started with a crash point, dies
    /// there or joins `primary`'s synchronized set without reaching it (no
    /// log restart was needed: the primary still held everything from the
    /// node's end on). Clears the crash point; says which.
    async fn until_crash_or_ready(
        &mut self,
        i: usize,
        primary: usize,
        crashes_before: usize,
    ) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut how = "neither crashed nor synchronized within 30 s".to_string();
        while Instant::now() < deadline {
            if !self.group.nodes[i].is_running() {
                how = if self.group.nodes[i].log().matches("crash point").count() > crashes_before {
                    "crashed there".into()
                } else {
                    "exited without reaching it".into()
                };
                break;
            }
            if self.failover_ready(primary).await.contains(&i) {
                how = "not reached: synchronized without a log restart".into();
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.group.nodes[i].set_env("AVAILDB_CRASH_AT", None);
        let _ = self.group.nodes[i].exit_status();
        how
    }

    /// Node `i`'s own row of `app`: sync state, hardened and redone LSNs.
    async fn local_state(&self, i: usize) -> String {
        let sql = format!(
            "SELECT synchronization_state_desc, last_hardened_lsn, last_redone_lsn \
             FROM sys.dm_hadr_database_replica_states WHERE is_local AND database_name = '{APP}'"
        );
        match self.on(i, DEFAULT_DB, &sql, ONE_QUERY).await {
            Ok(rows) => rows
                .first()
                .map(|r| {
                    r.iter()
                        .map(|v| v.clone().unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_else(|| "no row".into()),
            Err(e) => first_line(&e).to_string(),
        }
    }

    async fn kill_during_rewind(&mut self, p: usize) -> String {
        let others = self.others(p);
        self.proxy().partition(&[p], &others);
        // A commit on the cut-off primary is logged there but never
        // acknowledged: the divergent tail its rejoin has to rewind.
        let cut_off = self.nodes[p].clone();
        let orphan = tokio::spawn(async move {
            let sql = "INSERT INTO orphans(note) VALUES ('written while cut off')";
            query_at(&cut_off, APP, sql, Duration::from_secs(10)).await
        });
        let new = self.find_primary(&others, NEW_PRIMARY_WITHIN).await;
        orphan.abort();
        let Ok((new, epoch)) = new else {
            self.proxy().heal();
            return "no failover while cut off: nothing to rewind".into();
        };
        let newly = format!("{} primary at epoch {epoch}", name(new));
        // Two of three times at a step of the log restart (crash point),
        // restarted while still cut off so the rejoin hits it; else killed
        // at a random moment of the rejoin.
        if self.rng.below(3) < 2 {
            let point = self.rng.pick(&LOG_RESTART_POINTS);
            let crashes_before = self.group.nodes[p].log().matches("crash point").count();
            self.group.nodes[p].kill9();
            self.group.nodes[p].set_env("AVAILDB_CRASH_AT", Some(point));
            let restarted = self.restart(p).await;
            self.proxy().heal();
            if !restarted {
                self.group.nodes[p].set_env("AVAILDB_CRASH_AT", None);
                return format!("{newly}; restart with {point} failed");
            }
            // It dies at the point, or catches up without a rewind (its
            // log was a prefix of the new primary's).
            let how = self.until_crash_or_ready(p, new, crashes_before).await;
            let down = self.rng.millis(0, 500);
            tokio::time::sleep(down).await;
            self.kill_restart(p).await;
            return format!("{newly}; rejoin: {point} {how}, down {down:?}");
        }
        self.proxy().heal();
        let rejoining = self.rng.millis(0, 1500);
        tokio::time::sleep(rejoining).await;
        let state = self.local_state(p).await;
        self.group.nodes[p].kill9();
        let down = self.rng.millis(0, 500);
        tokio::time::sleep(down).await;
        self.restart(p).await;
        format!("{newly}; killed {rejoining:?} into the rejoin ({state}), down {down:?}")
    }

    async fn crash_on_failover(&mut self, p: usize, point: String) -> (usize, String) {
        // A secondary rejoining after the previous fault is in the
        // synchronized set again within seconds.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut ready = self.failover_ready(p).await;
        while ready.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            ready = self.failover_ready(p).await;
        }
        let s = if ready.is_empty() {
            self.rng.pick(&self.others(p))
        } else {
            self.rng.pick(&ready)
        };
        let crashes_before = self.group.nodes[s].log().matches("crash point").count();
        self.group.nodes[s].set_env("AVAILDB_CRASH_AT", Some(&point));
        if !self.kill_restart(s).await {
            return (s, format!("{point}: restart failed"));
        }
        let ready = self
            .wait_failover_ready(p, s, Duration::from_secs(30))
            .await;
        // The target's own view of its synchronization can trail the
        // primary's by a moment: a refusal for that is retried.
        let sql = format!("ALTER AVAILABILITY GROUP {GROUP} FAILOVER");
        let deadline = Instant::now() + Duration::from_secs(15);
        let result = loop {
            let r = self.on(s, DEFAULT_DB, &sql, DDL_WITHIN).await.map(|_| ());
            match &r {
                Err(e) if e.contains("not SYNCHRONIZED") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(300)).await
                }
                _ => break r,
            }
        };
        let mut crashed = false;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if !self.group.nodes[s].is_running() {
                crashed = self.group.nodes[s].log().matches("crash point").count() > crashes_before;
                break;
            }
            if result
                .as_ref()
                .is_err_and(|e| e.contains("not SYNCHRONIZED"))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.group.nodes[s].set_env("AVAILDB_CRASH_AT", None);
        let _ = self.group.nodes[s].exit_status();
        let down = self.rng.millis(0, 2000);
        tokio::time::sleep(down).await;
        self.kill_restart(s).await;
        (
            s,
            format!(
                "{point}: ready {ready}, failover {}, crashed {crashed}, down {down:?}",
                words(&result)
            ),
        )
    }

    async fn disk_full(&mut self) -> (usize, String) {
        let Some(d) = self.disk_node else {
            return (0, "skipped: not root".into());
        };
        let filler = self.group.nodes[d].data_dir().join(FILLER);
        let written = tokio::task::spawn_blocking({
            let filler = filler.clone();
            move || fill(&filler)
        })
        .await
        .expect("the filler task");
        let hold = self.rng.millis(1000, 4000);
        tokio::time::sleep(hold).await;
        let _ = std::fs::remove_file(&filler);
        // A node whose cluster store hit the full disk stops (fail-stop):
        // give it a moment to say so.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let running = self.group.nodes[d].is_running();
        let after = if !running {
            self.restart(d).await;
            "it exited; restarted".to_string()
        } else if self.rng.chance(0.5) {
            self.kill_restart(d).await;
            "killed and restarted after".to_string()
        } else {
            "left running".to_string()
        };
        (
            d,
            format!("filled {} MiB for {hold:?}; {after}", written >> 20),
        )
    }

    /// Lifts every fault and undoes every definition change the nemesis
    /// made: heal the network, restart what is down, free the disk, then on
    /// the primary make every replica synchronous and automatic again,
    /// REQUIRED_SYNCHRONIZED_SECONDARIES_TO_COMMIT = 0, and resume data
    /// movement.
    pub async fn heal_all(&mut self) -> Result<(), String> {
        self.proxy().heal();
        if let Some(d) = self.disk_node {
            let _ = std::fs::remove_file(self.group.nodes[d].data_dir().join(FILLER));
        }
        self.revive().await;
        if let Some(broken) = &self.broken {
            return Err(broken.clone());
        }
        let (p, _) = self.find_primary(&self.all(), PRIMARY_WITHIN).await?;
        if let Some(r) = self.async_replica {
            let sql = format!(
                "ALTER AVAILABILITY GROUP {GROUP} MODIFY REPLICA ON '{}' WITH \
                 (AVAILABILITY_MODE = SYNCHRONOUS_COMMIT, FAILOVER_MODE = AUTOMATIC)",
                name(r)
            );
            self.ddl(p, &sql).await?;
            self.async_replica = None;
        }
        if self.required != 0 {
            let sql = format!(
                "ALTER AVAILABILITY GROUP {GROUP} SET (REQUIRED_SYNCHRONIZED_SECONDARIES_TO_COMMIT = 0)"
            );
            self.ddl(p, &sql).await?;
            self.required = 0;
        }
        let (p, _) = self.find_primary(&self.all(), PRIMARY_WITHIN).await?;
        let resume = format!("ALTER DATABASE {APP} SET HADR RESUME");
        let _ = self.on(p, DEFAULT_DB, &resume, DDL_WITHIN).await;
        Ok(())
    }
}

/// Writes zeros to `path` until the file system is full; the bytes written.
fn fill(path: &PathBuf) -> u64 {
    use std::io::Write;
    let Ok(mut f) = std::fs::File::create(path) else {
        return 0;
    };
    let mut written = 0u64;
    for chunk in [1usize << 20, 64 << 10, 4 << 10, 512] {
        let zeros = vec![0u8; chunk];
        while f.write_all(&zeros).is_ok() {
            written += chunk as u64;
        }
    }
    let _ = f.sync_all();
    written
}

fn words(result: &Result<(), String>) -> String {
    match result {
        Ok(()) => "ok".into(),
        Err(e) => format!("refused: {}", first_line(e)),
    }
}

pub fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}
