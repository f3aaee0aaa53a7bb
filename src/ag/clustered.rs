//! Availability groups under the quorum cluster manager: the primary's
//! lease, the synchronized set kept through the cluster, the leader's
//! automatic failover, and each node following the cluster's decisions.
//!
//! # Timing (defaults)
//! * The primary renews its lease every [`RENEW_EVERY`] for [`LEASE`]; it
//!   counts the lease from when it *sent* the renewal, on its own monotonic
//!   clock, and stops writing (RESOLVING) when it runs out.
//! * The cluster leader counts from when it *applied* the renewal (a new
//!   leader from when it applied it as a follower, see
//!   `cluster/lease.rs`) and promotes another replica only when [`LEASE`]
//!   plus [`MARGIN`] passed without one. So the old primary has stopped
//!   writing before a new one is named: one writer.
//! * The leader looks every [`TICK`]. A dead primary is replaced after at
//!   most LEASE + MARGIN + TICK after its last renewal — when it was also
//!   the cluster leader, or the election took longer than that, once the
//!   new leader has applied its first entry.
//! * A replica is a failover target only while its node answers the
//!   leader: it answered a Raft request within [`REACHABLE_WITHIN`] (the
//!   leader heartbeats every member every 50 ms), or it is the leader's
//!   own. The observation comes from the cluster ([`Cluster::last_heard`]),
//!   the decision from `failover.rs` ([`reachable`], [`decide`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::watch;

use super::failover::{
    decide, reachable, self_conditions, triggering, Contact, Decision, Observation, Policy,
    ProbeError,
};
use super::Manager;
use crate::cluster::{node_id, Cluster, Command, CommandResult};
use crate::engine::{monotonic_us, Closed, Database};
use crate::group::ClusterType;
use crate::replication::primary::SyncArbiter;

/// How long a renewal lets the primary write.
pub const LEASE: Duration = Duration::from_millis(800);
/// How often the primary renews.
pub const RENEW_EVERY: Duration = Duration::from_millis(150);
/// Extra time the leader waits past a lease before promoting.
pub const MARGIN: Duration = Duration::from_millis(200);
/// How often the leader checks primaries.
pub const TICK: Duration = Duration::from_millis(100);
/// How long a new primary has to take its first lease before the leader
/// looks for another.
pub const TAKE_OFFICE: Duration = Duration::from_secs(5);
/// A replica whose node has not answered the cluster leader for this long
/// (a lease: 16 heartbeats) is not a failover target.
pub const REACHABLE_WITHIN: Duration = LEASE;
/// How often the leader repeats that a failed primary cannot be replaced,
/// while the reason stays the same.
const BLOCKED_LOG_EVERY: Duration = Duration::from_secs(10);

/// Keeps the primary's lease alive through the cluster until `stop`, and
/// sets how long its databases may take writes.
///
/// The primary judges its own health by the group's flexible failover
/// policy: while a failure that counts at FAILURE_CONDITION_LEVEL lasts
/// (its SQL probe failing past HEALTH_CHECK_TIMEOUT, a database that
/// stopped taking writes), it does not renew, so the cluster sees its lease
/// run out and fails over.
#[allow(clippy::too_many_arguments)]
pub fn spawn_lease(
    cluster: Arc<Cluster>,
    group: String,
    holder: String,
    epoch: u64,
    version: u64,
    policy: Policy,
    databases: Vec<Arc<Database>>,
    cleared: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let probed = spawn_probe(databases.clone(), stop.clone());
    tokio::spawn(async move {
        // A primary (re)starting counts no secondary as synchronized yet:
        // the cluster must not either, or it could promote a replica that
        // commits did not wait for. Writes stay fenced until this is done.
        clear_synchronized(&cluster, &group, epoch, version).await;
        cleared.send_replace(true);
        let mut tick = tokio::time::interval(RENEW_EVERY);
        let mut withholding = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            let since_ms = monotonic_us()
                .saturating_sub(probed.last_ok.load(std::sync::atomic::Ordering::Relaxed))
                / 1000;
            let stopped: Vec<String> = databases
                .iter()
                .filter(|db| db.failure().is_some())
                .map(|db| db.name().to_string())
                .collect();
            let errors = probed
                .errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let free: Vec<(String, u64)> = databases
                .iter()
                .filter_map(|db| Some((db.name().to_string(), free_bytes(db.log_dir())?)))
                .collect();
            let conditions = self_conditions(since_ms, &stopped, &errors, &free);
            if let Some(failure) = triggering(&conditions, &holder, policy) {
                if !withholding {
                    tracing::error!(
                        group,
                        "{failure}: no longer renewing the lease, so the cluster fails over"
                    );
                    withholding = true;
                }
                continue;
            }
            withholding = false;
            let sent = monotonic_us();
            let renewal = Command::RenewLease {
                group: group.clone(),
                holder: holder.clone(),
                epoch,
                duration_ms: LEASE.as_millis() as u64,
            };
            let renewed = cluster.propose_anywhere(renewal).await;
            let telemetry = crate::telemetry::get();
            match &renewed {
                Ok(CommandResult::Ok) => telemetry.lease_renewals.inc(),
                _ => telemetry.lease_renewal_misses.inc(),
            };
            match renewed {
                Ok(CommandResult::Ok) => {
                    let until = sent + LEASE.as_micros() as u64;
                    for db in &databases {
                        db.renew_lease(epoch, until);
                    }
                }
                Ok(CommandResult::Rejected(reason)) => {
                    let state = cluster.state();
                    let deposed = state.group(&group).is_some_and(|r| {
                        r.config.epoch > epoch || !r.config.primary.eq_ignore_ascii_case(&holder)
                    });
                    if deposed {
                        // Another epoch began: writes stop at once.
                        tracing::warn!(group, "lease renewal refused: {reason}");
                        for db in &databases {
                            db.close_writes(epoch, Closed::LeaseLost);
                        }
                        return;
                    }
                    // Not in the cluster yet (its definition is on the way).
                    tracing::debug!(group, "lease renewal not taken yet: {reason}");
                }
                Err(e) => tracing::debug!(group, "lease renewal failed: {e}"),
            }
        }
    });
}

/// Empties the cluster's synchronized sets of `group` (retrying until the
/// cluster answers), for a primary that starts counting from nothing.
async fn clear_synchronized(cluster: &Cluster, group: &str, epoch: u64, version: u64) {
    let entries: Vec<(String, String)> = cluster
        .state()
        .group(group)
        .map(|r| {
            r.synchronized
                .iter()
                .flat_map(|(db, set)| set.iter().map(move |replica| (db.clone(), replica.clone())))
                .collect()
        })
        .unwrap_or_default();
    for (database, replica) in entries {
        let command = Command::SetSynchronized {
            group: group.to_string(),
            database,
            replica,
            synchronized: false,
            epoch,
            version,
        };
        for _ in 0..100 {
            match cluster.propose_anywhere(command.clone()).await {
                Ok(_) => break,
                Err(e) => tracing::debug!(group, "clearing the synchronized set: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Probes every database with a read every [`RENEW_EVERY`]; the returned
/// time (µs, monotonic) is when the last probe of all succeeded.
/// What the primary's health probe found: when it last succeeded for
/// every database, and each database's error in the latest round.
struct Probed {
    last_ok: std::sync::atomic::AtomicU64,
    errors: std::sync::Mutex<Vec<(String, ProbeError)>>,
}

fn spawn_probe(databases: Vec<Arc<Database>>, mut stop: watch::Receiver<bool>) -> Arc<Probed> {
    let probed = Arc::new(Probed {
        last_ok: std::sync::atomic::AtomicU64::new(monotonic_us()),
        errors: std::sync::Mutex::new(Vec::new()),
    });
    let out = probed.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RENEW_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let dbs = databases.clone();
            let probe = tokio::task::spawn_blocking(move || {
                dbs.iter()
                    .filter_map(|db| probe_one(db).err().map(|e| (db.name().to_string(), e)))
                    .collect::<Vec<_>>()
            });
            // A probe that hangs past its bound counts as failing (level 2,
            // after HEALTH_CHECK_TIMEOUT), not as an error.
            if let Ok(Ok(errors)) = tokio::time::timeout(Duration::from_secs(5), probe).await {
                if errors.is_empty() {
                    probed
                        .last_ok
                        .store(monotonic_us(), std::sync::atomic::Ordering::Relaxed);
                }
                *probed.errors.lock().unwrap_or_else(|e| e.into_inner()) = errors;
            }
        }
    });
    out
}

/// One database's probe: a read of its schema through a reader connection.
fn probe_one(db: &Database) -> std::result::Result<(), ProbeError> {
    let read = db.reader().map_err(|e| ProbeError::Other(e.to_string()))?;
    read.conn()
        .sqlite()
        .query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
        .map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::OutOfMemory | rusqlite::ErrorCode::DiskFull) => {
                ProbeError::Exhausted(e.to_string())
            }
            _ => ProbeError::Other(e.to_string()),
        })
}

/// Free bytes for an unprivileged writer on the file system holding `path`.
fn free_bytes(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a NUL-terminated string that outlives the call,
    // and `stat` points to writable memory of the right type; statvfs
    // fills it completely when it returns 0.
    let stat = unsafe {
        if libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return None;
        }
        stat.assume_init()
    };
    Some(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Records synchronized-set changes through the cluster (RPO 0: a
/// replica leaves the set in the cluster before commits stop waiting).
pub struct ClusterArbiter {
    /// The cluster.
    pub cluster: Arc<Cluster>,
    /// Group name.
    pub group: String,
    /// The primary's epoch.
    pub epoch: u64,
    /// The definition version the primary runs under (a definition taken
    /// in place moves it).
    pub version: std::sync::atomic::AtomicU64,
    /// True once the starting primary emptied the cluster's sets; no
    /// replica is added before that (its removal would follow the add).
    pub cleared: watch::Receiver<bool>,
}

#[async_trait]
impl SyncArbiter for ClusterArbiter {
    async fn set(&self, database: &str, replica: &str, synchronized: bool) -> Result<(), String> {
        if synchronized {
            let mut cleared = self.cleared.clone();
            if cleared.wait_for(|c| *c).await.is_err() {
                return Err("the primary stopped".into());
            }
        }
        let command = Command::SetSynchronized {
            group: self.group.clone(),
            database: database.to_string(),
            replica: replica.to_string(),
            synchronized,
            epoch: self.epoch,
            version: self.version.load(std::sync::atomic::Ordering::SeqCst),
        };
        match self.cluster.propose_anywhere(command).await {
            Ok(CommandResult::Ok) => Ok(()),
            Ok(CommandResult::Rejected(reason)) => Err(reason),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// On the cluster leader: replaces primaries whose lease ran out (or that
/// report failures the policy counts), by the rules of [`decide`], with a
/// replica whose node answers the leader ([`reachable`]).
pub fn spawn_failover_decider(cluster: Arc<Cluster>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        // Groups whose primary has not taken a lease yet (new, or just
        // promoted), and since when: it gets time to do so.
        let mut unleased: HashMap<String, Instant> = Default::default();
        // Per group, the last "cannot fail over" said, and when.
        let mut blocked: HashMap<String, (String, Instant)> = Default::default();
        let me = cluster.metrics().local.name;
        loop {
            tick.tick().await;
            let state = cluster.state();
            for (name, record) in &state.groups {
                let config = &record.config;
                if config.cluster_type == ClusterType::None {
                    continue;
                }
                let Ok(expired) = cluster.lease_expired(name, MARGIN) else {
                    unleased.clear();
                    continue; // not the leader
                };
                if record.lease.is_none() {
                    let since = *unleased.entry(name.clone()).or_insert_with(Instant::now);
                    if since.elapsed() < TAKE_OFFICE {
                        continue;
                    }
                } else {
                    unleased.remove(name);
                }
                if !expired {
                    blocked.remove(name);
                    continue;
                }
                let heard = cluster.last_heard();
                let last_heard: BTreeMap<String, Instant> = config
                    .replicas
                    .iter()
                    .filter_map(|r| Some((r.name.clone(), *heard.get(&node_id(&r.name))?)))
                    .collect();
                let contact = Contact {
                    leader: &me,
                    last_heard: &last_heard,
                    now: Instant::now(),
                    within: REACHABLE_WITHIN,
                };
                let reachable = reachable(config, &contact);
                let observation = Observation {
                    config,
                    synchronized: &record.synchronized,
                    lease_expired: true,
                    conditions: &[],
                    reachable: &reachable,
                };
                let policy = Policy {
                    failure_condition_level: config.failure_condition_level,
                    health_check_timeout_ms: config.health_check_timeout_ms,
                };
                match decide(&observation, policy) {
                    Decision::Failover { target, reason } => {
                        blocked.remove(name);
                        tracing::warn!(group = %name, from = %config.primary, to = %target, "{reason}: promoting");
                        let promote = Command::Promote {
                            group: name.clone(),
                            new_primary: target,
                            new_epoch: config.epoch + 1,
                            require_synchronized: true,
                            after_lease: true,
                            at_us: super::views::wall_us(),
                            reason,
                        };
                        if let Err(e) = cluster.propose(promote).await {
                            tracing::warn!(group = %name, "promotion not committed: {e}");
                        }
                    }
                    Decision::Blocked { reason } => {
                        let repeat = blocked.get(name).is_some_and(|(said, at)| {
                            *said == reason && at.elapsed() < BLOCKED_LOG_EVERY
                        });
                        if !repeat {
                            tracing::warn!(group = %name, "primary failed, no automatic failover: {reason}");
                            blocked.insert(name.clone(), (reason, Instant::now()));
                        }
                    }
                    Decision::Healthy => {
                        blocked.remove(name);
                    }
                }
            }
        }
    });
}

/// Makes this node follow the cluster's state: become primary where the
/// cluster named it, step down where it named another.
pub fn spawn_follower(cluster: Arc<Cluster>, manager: std::sync::Weak<Manager>) {
    tokio::spawn(async move {
        let mut states = cluster.subscribe();
        // Per group, the newest failover already counted (or already there
        // when this node started: counted by the process that saw it).
        let mut counted: HashMap<String, u64> = HashMap::new();
        let me = cluster.metrics().local.name;
        loop {
            let state = states.borrow_and_update().clone();
            let Some(manager) = manager.upgrade() else {
                return;
            };
            // The cluster's roles, or a node's own while it is in none.
            manager.publish_roles();
            for (name, record) in &state.groups {
                manager.follow(record);
                let newest = record.history.back().map_or(0, |e| e.epoch);
                let seen = *counted.entry(name.clone()).or_insert(newest);
                for entry in record.history.iter().filter(|e| e.epoch > seen) {
                    if entry.to.eq_ignore_ascii_case(&me) {
                        crate::telemetry::get().failover(entry.kind.name());
                    }
                }
                counted.insert(name.clone(), newest.max(seen));
            }
            drop(manager);
            if states.changed().await.is_err() {
                return;
            }
        }
    });
}
