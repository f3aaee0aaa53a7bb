//! The primary's side: one sender task per secondary, and the commit hook
//! that makes commits wait for synchronized synchronous secondaries.
//!
//! # A sender's life
//! 1. Connect to the secondary's endpoint; send `Hello` (cluster id, group,
//!    both replica names, epoch) and the group definition (`Config`).
//! 2. Read `Welcome`: where each database's log ends on the secondary.
//!    Streaming starts there; a secondary with an empty log, or one behind
//!    what the primary still holds, is seeded from a full image record that
//!    the primary appends to its log for that purpose. Planning a start can
//!    wait (for a geo source's records or a fresh image from it: seconds,
//!    or more): meanwhile the primary answers the secondary's `Ping`s, so
//!    a long plan is not taken for a dead primary, and keeps whatever else
//!    the secondary sends for after the handshake. The handshake ends with
//!    the primary's first `Ping` (a `Pong` does not end it).
//! 3. Stream records as they are appended (before the local fsync: the
//!    secondary hardens in parallel), ping every second, and feed every
//!    `Progress` into the database's [`DbSync`].
//! 4. On disconnect or session timeout, the replica leaves the synchronized
//!    set of every database, and the sender reconnects: after 200 ms, the
//!    pause doubling up to 1 s while connects fail; a link that was up
//!    starts over at 200 ms (`next_backoff`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_util::codec::Framed;

use super::error::ReplicationError;
use super::geo::{
    run_geo_sender, Forwarder, GeoDirectory, GeoLinkStatus, GeoLinkView, GeoRole, GeoSource,
    IMAGE_WITHIN,
};
use super::link::{ahead_only, plan_start, OwnLog, Start};
use super::seed::{seed_by_backup_from, Prepared, SeedHolds, SeedSource, SeedingBoard};
use super::sync::{DbSync, LeaveReason, SyncState};
use super::wire::{DatabasePosition, Message, WireCodec};
use crate::engine::{
    monotonic_us, Closed, CommitHook, Database, Engine, Error, Fence, PrimaryFence, Result, Writes,
};
use crate::group::{AvailabilityMode, GeoPartner, GroupConfig, ReplicaConfig, SeedingMode};
use crate::log::{Lsn, LsnWaiter, LsnWaiters};

/// Most record bytes sent in one `Records` message.
const BATCH_BYTES: u64 = 4 << 20;
/// How often partners ping.
pub const PING_INTERVAL: Duration = Duration::from_secs(1);
/// How long a new primary waits for its geo source's records to cover a
/// secondary's copy that is only ahead of its own (a former forwarder's),
/// before it rewinds that copy from a fresh image instead. The source's
/// sender finds this region's new primary within a few of its retries.
const AHEAD_PATIENCE: Duration = Duration::from_secs(15);

/// Synchronization of one database of the group, shared by the senders
/// (which feed it) and the commit hook (which reads it).
pub struct SyncCell {
    state: Mutex<DbSync>,
    changed: watch::Sender<u64>,
    /// Commits waiting for the secondaries ([`SyncHook`]), by LSN: a
    /// secondary's progress wakes only the commits it releases; any other
    /// change of the state (a replica joins or leaves, the definition
    /// changes) wakes every one, since it may also change what a commit
    /// waits for. No wake-up is lost: a commit registers under the state's
    /// lock, in the same critical section as its check, and each change
    /// computes how far it releases under that lock before it wakes.
    waiting: LsnWaiters,
    metrics: Mutex<HashMap<String, ReplicaMetrics>>,
}

/// Measured movement of one database to one secondary (for the views).
#[derive(Debug, Clone, Default)]
pub struct ReplicaMetrics {
    /// Bytes of log sent per second (smoothed).
    pub send_rate: f64,
    /// Bytes of log redone per second on the secondary (smoothed).
    pub redo_rate: f64,
    /// Age of the oldest commit the secondary has not redone (0 when
    /// caught up); None until known.
    pub lag_seconds: Option<f64>,
    /// Commit time (µs since the Unix epoch) of the last record redone there.
    pub last_redone_commit_us: Option<i64>,
    sent_at: Option<Instant>,
    progress_at: Option<Instant>,
    last_redone: Lsn,
    /// (end LSN, commit time) of records sent and not yet redone.
    in_flight: std::collections::VecDeque<(Lsn, i64)>,
}

/// At most this many unredone records are remembered for lag.
const IN_FLIGHT_LIMIT: usize = 100_000;

fn smooth(old: f64, sample: f64) -> f64 {
    if old == 0.0 {
        sample
    } else {
        0.7 * old + 0.3 * sample
    }
}

impl ReplicaMetrics {
    pub(crate) fn sent(&mut self, records: &[crate::log::RawRecord], bytes: u64) {
        let now = Instant::now();
        if let Some(at) = self.sent_at {
            let secs = now.duration_since(at).as_secs_f64().max(1e-3);
            self.send_rate = smooth(self.send_rate, bytes as f64 / secs);
        }
        self.sent_at = Some(now);
        for r in records {
            if self.in_flight.len() >= IN_FLIGHT_LIMIT {
                self.in_flight.pop_front();
            }
            self.in_flight.push_back((r.end_lsn(), r.commit_time_us));
        }
    }

    /// Age of the oldest commit sent and not yet redone (0: none).
    pub(crate) fn lag_now(&self) -> f64 {
        self.in_flight.front().map_or(0.0, |&(_, commit_us)| {
            (now_us() - commit_us).max(0) as f64 / 1e6
        })
    }

    pub(crate) fn progressed(&mut self, redone: Lsn, primary_end: Lsn) {
        let now = Instant::now();
        if let Some(at) = self.progress_at {
            let secs = now.duration_since(at).as_secs_f64().max(1e-3);
            let bytes = redone.saturating_sub(self.last_redone);
            self.redo_rate = smooth(self.redo_rate, bytes as f64 / secs);
        }
        self.progress_at = Some(now);
        self.last_redone = self.last_redone.max(redone);
        while let Some(&(end, commit_us)) = self.in_flight.front() {
            if end > redone {
                break;
            }
            self.last_redone_commit_us = Some(commit_us);
            self.in_flight.pop_front();
        }
        self.lag_seconds = if redone >= primary_end {
            Some(0.0)
        } else {
            self.in_flight
                .front()
                .map(|&(_, commit_us)| (now_us() - commit_us).max(0) as f64 / 1e6)
        };
    }
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl SyncCell {
    fn new(sync: DbSync) -> Arc<SyncCell> {
        Arc::new(SyncCell {
            state: Mutex::new(sync),
            changed: watch::channel(0).0,
            waiting: LsnWaiters::default(),
            metrics: Mutex::new(HashMap::new()),
        })
    }

    /// Applies `f` to the state and wakes every waiting commit (any change
    /// but a secondary's progress may change what a commit waits for).
    pub fn update<T>(&self, f: impl FnOnce(&mut DbSync) -> T) -> T {
        let out = f(&mut self.lock_state());
        self.changed.send_modify(|n| *n += 1);
        self.waiting.wake_all();
        out
    }

    /// Applies a secondary's progress report `f` to the state and wakes the
    /// waiting commits it releases, and only those.
    fn progress<T>(&self, f: impl FnOnce(&mut DbSync) -> T) -> T {
        let (out, released) = {
            let mut state = self.lock_state();
            let out = f(&mut state);
            (out, state.released_upto())
        };
        self.changed.send_modify(|n| *n += 1);
        if let Some(upto) = released {
            self.waiting.wake_upto(upto);
        }
        out
    }

    /// Checks whether a commit ending at `lsn` may be acknowledged; when
    /// not, registers it to be woken and says why it waits: for replicas
    /// to harden it (None), or for enough replicas to be synchronized
    /// (`(have, required)`).
    fn check_or_wait(&self, lsn: Lsn) -> Option<(LsnWaiter<'_>, Option<(usize, usize)>)> {
        let mut state = self.lock_state();
        state.appended(lsn);
        let released = state.released_upto();
        if released.is_some_and(|upto| upto >= lsn) {
            return None;
        }
        let too_few = state.too_few_synchronized();
        Some((self.waiting.register(lsn), too_few))
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, DbSync> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `f` without waking waiting commits: for changes that can
    /// never release one (a higher primary end only makes catching up harder).
    fn inspect<T>(&self, f: impl FnOnce(&mut DbSync) -> T) -> T {
        f(&mut self.lock_state())
    }

    /// A copy of the state, for views.
    pub fn snapshot(&self) -> DbSync {
        self.lock_state().clone()
    }

    /// Measured movement to `replica`.
    pub fn metrics(&self, replica: &str) -> ReplicaMetrics {
        self.lock_metrics()
            .get(replica)
            .cloned()
            .unwrap_or_default()
    }

    fn lock_metrics(&self) -> std::sync::MutexGuard<'_, HashMap<String, ReplicaMetrics>> {
        self.metrics.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Makes a commit wait for the synchronized synchronous secondaries.
struct SyncHook {
    cell: Arc<SyncCell>,
    /// How long a commit waits for too few synchronized secondaries.
    patience: Duration,
    /// Turns true when this primary stops: waiting commits then fail.
    stopped: watch::Receiver<bool>,
}

#[async_trait]
impl CommitHook for SyncHook {
    async fn wait(&self, lsn: Lsn) -> Result<()> {
        let mut stopped = self.stopped.clone();
        let deadline = Instant::now() + self.patience;
        loop {
            if *stopped.borrow() {
                return Err(stopped_waiting());
            }
            // Checking wakes no other waiting commit: only changes of the
            // state release them.
            let Some((waiter, too_few)) = self.cell.check_or_wait(lsn) else {
                return Ok(());
            };
            match too_few {
                None => {
                    // Replicas either harden or leave the set on timeout.
                    tokio::select! {
                        _ = waiter.woken() => {}
                        _ = stopped.changed() => return Err(stopped_waiting()),
                    }
                }
                Some((have, required)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Error::sql(
                            "40003",
                            format!(
                                "the commit is durable on the primary but not acknowledged: \
                                 REQUIRED_SYNCHRONIZED_SECONDARIES_TO_COMMIT is {required}, \
                                 and {have} secondaries are synchronized"
                            ),
                        )
                        .with_hint("check the secondaries (sys.dm_hadr_database_replica_states); the transaction may be visible"));
                    }
                    tokio::select! {
                        _ = tokio::time::timeout(left, waiter.woken()) => {}
                        _ = stopped.changed() => return Err(stopped_waiting()),
                    }
                }
            }
        }
    }
}

/// Called for every database of every replica that connects: (replica,
/// database, `Some((first divergent LSN, its end))` when its log diverged
/// and restarts from a full image). A diverged range is what a failover lost.
pub type DivergenceReport = Arc<dyn Fn(&str, &str, Option<(Lsn, Lsn)>) + Send + Sync>;

/// How a primary starts.
#[derive(Clone, Default)]
pub struct StartOptions {
    /// Databases whose data movement to every secondary starts suspended
    /// (after a forced failover, or a suspension from before a restart),
    /// until an operator resumes each.
    pub suspended: std::collections::BTreeSet<String>,
    /// Told about every divergent replica log found.
    pub on_divergence: Option<DivergenceReport>,
    /// Where synchronized-set changes are recorded before they take
    /// effect (the cluster); None outside a cluster.
    pub arbiter: Option<Arc<dyn SyncArbiter>>,
    /// Writes need the cluster's lease: they stay closed until the lease
    /// task holds one (false: no cluster manages the group).
    pub leased: bool,
    /// This region's name and its partner servers, for geo-replication
    /// links (None: the node takes part in no cluster, so in no region).
    pub geo: Option<Arc<dyn GeoDirectory>>,
    /// Where seeds by streamed backup are shown (the node's board, kept
    /// across roles; None: a board of this group's own).
    pub seeding: Option<Arc<SeedingBoard>>,
}

/// Records synchronized-set changes where failover decisions read them.
#[async_trait]
pub trait SyncArbiter: Send + Sync {
    /// Records that `replica` is (`true`) or is no longer in the
    /// synchronized set of `database`. Err: refused or not recorded.
    async fn set(
        &self,
        database: &str,
        replica: &str,
        synchronized: bool,
    ) -> std::result::Result<(), String>;
}

/// Pause between two tries of recording a synchronized-set change.
const RECORD_RETRY: Duration = Duration::from_millis(100);

/// Tries `record` every [`RECORD_RETRY`] until it succeeds (true) or the
/// primary stops (false). A primary that stopped before the first try —
/// its link to the replica ended because it was stopping — stops it at
/// once: waiting for the next *change* of `stop` there retried forever,
/// and a deposed primary's tries are refused forever.
async fn until_recorded_or_stopped<F, Fut>(stop: &mut watch::Receiver<bool>, mut record: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<(), String>>,
{
    loop {
        if *stop.borrow_and_update() {
            return false;
        }
        if record().await.is_ok() {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(RECORD_RETRY) => {}
            _ = stop.wait_for(|stopped| *stopped) => return false,
        }
    }
}

fn stopped_waiting() -> Error {
    Error::sql(
        "40003",
        "the commit is durable here, but this replica stopped being primary before the secondaries confirmed it",
    )
    .with_hint("reconnect to the primary and check whether the transaction is there")
}

/// Called with every definition a primary takes in place.
pub type UpdateHook = Box<dyn Fn(&GroupConfig) + Send + Sync>;

/// The primary's replication state for one group.
pub struct PrimaryGroup {
    /// Serializes synchronized-set changes sent to the arbiter with the
    /// local changes they go with.
    arbiter_lock: Arc<tokio::sync::Mutex<()>>,
    on_divergence: Option<DivergenceReport>,
    arbiter: Option<Arc<dyn SyncArbiter>>,
    /// The definition; a newer one with the same shape replaces it in place
    /// ([`PrimaryGroup::update_config`]) and goes out on every live link.
    config: watch::Sender<GroupConfig>,
    /// Called with every definition taken in place.
    on_update: Mutex<Vec<UpdateHook>>,
    /// The epoch this primary writes in (fixed for its life).
    epoch: u64,
    node: String,
    databases: HashMap<String, (Arc<Database>, Arc<SyncCell>)>,
    /// Per secondary: connected now, last message time.
    links: Mutex<HashMap<String, LinkState>>,
    stop: watch::Sender<bool>,
    /// The geo-secondary databases of this region, each taking its log in
    /// from its source region.
    forwarders: HashMap<String, Arc<Forwarder>>,
    /// This region's name and partners.
    geo: Option<Arc<dyn GeoDirectory>>,
    /// Running geo senders, by (database, partner server).
    geo_senders: Mutex<HashMap<(String, String), GeoSender>>,
    /// The LSN each geo-secondary still needs, by (database, partner).
    geo_holds: Mutex<HashMap<(String, String), Lsn>>,
    /// Why a MANUAL-seeding replica gets nothing of a database, by
    /// (database, replica).
    awaiting_restore: Mutex<HashMap<(String, String), String>>,
    /// `(database, replica)` whose data movement the secondary suspended
    /// itself (`DatabaseState`), as opposed to a suspension made here.
    suspended_by_partner: Mutex<std::collections::BTreeSet<(String, String)>>,
    /// Counts resumptions of data movement: a sender that skipped a
    /// suspended database sends again at once, not at its next ping.
    resumed: watch::Sender<u64>,
    /// The newest full image written here to seed replicas, by database:
    /// (its start, the log's end just after it). Replicas seeded while it
    /// is fresh start from it too, rather than each from an image of its own.
    images: Mutex<HashMap<String, (Lsn, Lsn)>>,
    /// One seeding image written at a time: links that need one together
    /// wait for the first and share it.
    image_turn: tokio::sync::Mutex<()>,
    /// The node's data directory (seed backups are staged under it).
    data_dir: std::path::PathBuf,
    /// The log kept for replicas being seeded by a streamed backup.
    seed_holds: SeedHolds,
    /// Seeds by streamed backup sent from here.
    seeding: Arc<SeedingBoard>,
}

/// A seeding image is shared while the log written after it is at most
/// this many times its size (or [`IMAGE_REUSE_MIN_BYTES`]): past that, a
/// replica would redo more log than a new image costs.
const IMAGE_REUSE_FACTOR: u64 = 1;
/// See [`IMAGE_REUSE_FACTOR`].
const IMAGE_REUSE_MIN_BYTES: u64 = 16 << 20;
/// Parts of a seed backup sent per turn of a link's loop, between the
/// batches of its other databases (4 MiB).
const SEED_PARTS_PER_TURN: usize = 4;

/// `GEO_MAX_LAG`: a write transaction waits while a geo-secondary of its
/// database is further behind than the bound, and is refused (retryable)
/// once it has waited that long.
struct GeoLagGate {
    group: std::sync::Weak<PrimaryGroup>,
}

#[async_trait]
impl crate::engine::WriteGate for GeoLagGate {
    async fn admit(&self, database: &str) -> Result<()> {
        let started = Instant::now();
        loop {
            let Some(group) = self.group.upgrade() else {
                return Ok(());
            };
            let bound_ms = group
                .config
                .borrow()
                .database_options
                .get(database)
                .and_then(|options| options.geo_max_lag_ms);
            let Some(bound_ms) = bound_ms else {
                return Ok(());
            };
            let bound = Duration::from_millis(bound_ms);
            let worst = group
                .geo_senders
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|((d, _), _)| d == database)
                .map(|(_, sender)| {
                    let mut lag = sender.status.lag_now();
                    // A link that is down with records the partner lacks
                    // falls behind from the last time it was heard from.
                    let view = sender.status.view();
                    let end = group.database(database).map_or(0, |db| db.log().end_lsn());
                    if !view.connected && view.redone_lsn < end {
                        if let Some(heard) = view.last_contact_us {
                            lag = lag.max((now_us() - heard).max(0) as f64 / 1e6);
                        }
                    }
                    (lag, view.partner.server)
                })
                .max_by(|a, b| a.0.total_cmp(&b.0));
            let Some((lag, server)) = worst.filter(|(lag, _)| *lag > bound.as_secs_f64()) else {
                return Ok(());
            };
            drop(group);
            // Throttle for at most the bound itself, then refuse.
            if started.elapsed() >= bound.min(Duration::from_secs(5)) {
                return Err(Error::sql(
                    "40001",
                    format!(
                        "database \"{database}\": the geo-secondary on server '{server}' is {lag:.1} s behind, more than GEO_MAX_LAG ({} s); the write was not started",
                        bound.as_secs_f64()
                    ),
                )
                .with_hint("retry the transaction later; see sys.dm_geo_replication_link_status, or ALTER DATABASE … SET GEO_MAX_LAG = OFF"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A running geo sender: its status and its stop switch.
struct GeoSender {
    status: Arc<GeoLinkStatus>,
    stop: watch::Sender<bool>,
}

/// What the primary knows of its connection to one secondary.
#[derive(Debug, Clone, Default)]
pub struct LinkState {
    /// Connected and past the handshake.
    pub connected: bool,
    /// Last error, for views and logs.
    pub last_error: Option<String>,
}

impl PrimaryGroup {
    /// Takes the primary role for `config`'s databases on this node and
    /// starts one sender per secondary.
    pub fn start(
        config: GroupConfig,
        node: &str,
        engine: &Engine,
        options: StartOptions,
    ) -> Result<Arc<PrimaryGroup>> {
        let secondaries: Vec<(String, bool)> = config
            .secondaries()
            .map(|r| {
                (
                    r.name.clone(),
                    r.availability_mode == AvailabilityMode::SynchronousCommit,
                )
            })
            .collect();
        let mut databases = HashMap::new();
        for name in &config.databases {
            let db = engine.database(name)?;
            let mut sync = DbSync::new(
                db.log().end_lsn(),
                &secondaries,
                config.required_synchronized_secondaries as usize,
            );
            if options.suspended.contains(name) {
                for (replica, _) in &secondaries {
                    sync.leave(replica, LeaveReason::Suspended);
                }
            }
            databases.insert(name.clone(), (db, SyncCell::new(sync)));
        }
        let patience = Duration::from_secs(
            config
                .replica(node)
                .map_or(10, |r| r.session_timeout_s as u64),
        );
        let stop = watch::channel(false).0;
        let mut forwarders = HashMap::new();
        for (name, (db, cell)) in &databases {
            // Until each secondary reports, keep everything it may need.
            db.set_retain_from(0);
            if let Some(source) = config.database_options(name).geo_source {
                // Written in another region: read-only here, fed by the
                // geo link, shipped on to this region's secondaries.
                db.set_fence(Fence::GeoSecondary {
                    server: source.server.clone(),
                    database: source.database.clone(),
                })?;
                forwarders.insert(name.clone(), Forwarder::start(db.clone(), source));
                continue;
            }
            // One step: the epoch, the commit hook and the writes. Under a
            // cluster, writes stay closed until the lease task holds the
            // epoch's first lease.
            db.set_fence(Fence::Primary(PrimaryFence {
                group: config.name.clone(),
                epoch: config.epoch,
                log_epoch: config.log_epoch(name),
                writes: if options.leased {
                    Writes::Closed(Closed::AwaitingLease)
                } else {
                    Writes::Unleased
                },
                hook: Some(Arc::new(SyncHook {
                    cell: cell.clone(),
                    patience,
                    stopped: stop.subscribe(),
                })),
            }))?;
        }
        let group = Arc::new(PrimaryGroup {
            node: node.to_string(),
            databases,
            links: Mutex::new(HashMap::new()),
            stop,
            epoch: config.epoch,
            config: watch::channel(config).0,
            on_update: Mutex::new(Vec::new()),
            arbiter_lock: Arc::new(tokio::sync::Mutex::new(())),
            on_divergence: options.on_divergence,
            arbiter: options.arbiter,
            forwarders,
            geo: options.geo,
            geo_senders: Mutex::new(HashMap::new()),
            geo_holds: Mutex::new(HashMap::new()),
            awaiting_restore: Mutex::new(HashMap::new()),
            suspended_by_partner: Mutex::new(std::collections::BTreeSet::new()),
            resumed: watch::channel(0).0,
            images: Mutex::new(HashMap::new()),
            image_turn: tokio::sync::Mutex::new(()),
            data_dir: engine.data_dir().to_path_buf(),
            seed_holds: SeedHolds::default(),
            seeding: options.seeding.unwrap_or_default(),
        });
        group.start_geo_senders();
        for (name, (db, _)) in &group.databases {
            if !group.forwarders.contains_key(name) {
                db.set_write_gate(Some(Arc::new(GeoLagGate {
                    group: Arc::downgrade(&group),
                })));
            }
        }
        let secondaries: Vec<String> = group
            .config()
            .secondaries()
            .map(|r| r.name.clone())
            .collect();
        for replica in secondaries {
            tokio::spawn(sender(group.clone(), replica));
        }
        Ok(group)
    }

    /// The group's definition.
    pub fn config(&self) -> GroupConfig {
        self.config.borrow().clone()
    }

    /// Takes a newer definition that changes only settings (the same
    /// databases, replicas, modes, primary and epoch: see
    /// `ag::role::settings_only`) without restarting: senders use the new
    /// settings and send it to their secondaries.
    pub fn update_config(self: &Arc<Self>, config: GroupConfig) {
        for hook in self
            .on_update
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            hook(&config);
        }
        self.config.send_replace(config);
        self.start_geo_senders();
    }

    /// Starts a geo sender for every geo-secondary the definition names
    /// that has none, and stops those of links it no longer names.
    fn start_geo_senders(self: &Arc<Self>) {
        let Some(directory) = self.geo.clone() else {
            return;
        };
        let config = self.config();
        let mut wanted = std::collections::BTreeSet::new();
        for (name, (db, _)) in &self.databases {
            for partner in config.database_options(name).geo_secondaries {
                wanted.insert((name.clone(), partner.server.to_ascii_lowercase()));
                let key = (name.clone(), partner.server.to_ascii_lowercase());
                let mut senders = self.geo_senders.lock().unwrap_or_else(|e| e.into_inner());
                if senders.contains_key(&key) {
                    continue;
                }
                let status = GeoLinkStatus::new(name, partner.clone(), GeoRole::Primary);
                // Stopped with the group (see `stop`) or when the link is
                // removed.
                let stop = watch::channel(*self.stop.borrow()).0;
                tokio::spawn(run_geo_sender(
                    self.clone() as Arc<dyn GeoSource>,
                    directory.clone(),
                    db.clone(),
                    partner.server.clone(),
                    status.clone(),
                    stop.subscribe(),
                ));
                senders.insert(key, GeoSender { status, stop });
            }
        }
        let mut senders = self.geo_senders.lock().unwrap_or_else(|e| e.into_inner());
        senders.retain(|key, sender| {
            let keep = wanted.contains(key);
            if !keep {
                sender.stop.send_replace(true);
            }
            keep
        });
        let mut holds = self.geo_holds.lock().unwrap_or_else(|e| e.into_inner());
        holds.retain(|key, _| wanted.contains(key));
    }

    /// The status of every geo link of this primary: its geo senders and
    /// its forwarders.
    pub fn geo_links(&self) -> Vec<GeoLinkView> {
        let mut out: Vec<GeoLinkView> = self
            .geo_senders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|sender| sender.status.view())
            .collect();
        out.extend(self.forwarders.values().map(|f| f.status().view()));
        out.sort_by(|a, b| (&a.database, &a.partner.server).cmp(&(&b.database, &b.partner.server)));
        out
    }

    /// The status (and termination handle) of the link feeding `database`'s
    /// geo-secondary on `server`.
    pub fn geo_link(&self, database: &str, server: &str) -> Option<Arc<GeoLinkStatus>> {
        self.geo_senders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(database.to_string(), server.to_ascii_lowercase()))
            .map(|sender| sender.status.clone())
    }

    /// The forwarder of a geo-secondary database of this region.
    pub fn forwarder(&self, database: &str) -> Option<Arc<Forwarder>> {
        self.forwarders.get(database).cloned()
    }

    /// Keeps the log from the LSN the slowest replica — a local secondary
    /// or a geo-secondary — still needs.
    fn retain(&self, database: &str) {
        let Some((db, cell)) = self.databases.get(database) else {
            return;
        };
        let local = cell.inspect(|s| s.lowest_hardened());
        let geo = self
            .geo_holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|((d, _), _)| d == database)
            .map(|(_, lsn)| *lsn)
            .min()
            .unwrap_or(u64::MAX);
        let seeds = self.seed_holds.lowest(database);
        db.set_retain_from(local.min(geo).min(seeds));
    }

    /// A full image of `db` in the log to seed a replica from: written here
    /// when this region writes the database, else asked of its source.
    ///
    /// With `shared`, replicas seeded together share one image: an image
    /// this primary wrote is reused while the log still holds it and what
    /// was written after it is small next to it ([`IMAGE_REUSE_FACTOR`]).
    /// An image at `start` followed by the log from there is the database
    /// as it is, for any replica that redoes it (the same holds for the
    /// first one). The geo paths ask for a new image (`shared` false): a
    /// forwarder that requested one waits for it to come down its link.
    async fn seed_image(&self, db: &Arc<Database>, shared: bool) -> Result<Lsn> {
        if let Some(forwarder) = self.forwarders.get(db.name()) {
            return forwarder
                .fresh_image(IMAGE_WITHIN)
                .await
                .map_err(|why| Error::sql("55000", why));
        }
        let _turn = self.image_turn.lock().await;
        let known = self
            .images
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(db.name())
            .copied();
        let log = db.log();
        if let Some((start, end)) = known.filter(|_| shared) {
            let since = log.end_lsn().saturating_sub(end);
            let size = end.saturating_sub(start);
            if start >= log.first_lsn()
                && since <= (size * IMAGE_REUSE_FACTOR).max(IMAGE_REUSE_MIN_BYTES)
            {
                tracing::info!(database = %db.name(), lsn = start, "seeding from the full image already in the log");
                return Ok(start);
            }
        }
        let start = db.write_base_image().await?;
        self.images
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(db.name().to_string(), (start, log.end_lsn()));
        Ok(start)
    }
}

#[async_trait]
impl GeoSource for PrimaryGroup {
    fn succeeds(&self, database: &str) -> Option<GeoPartner> {
        self.config().database_options(database).succeeded
    }

    fn cluster_id(&self) -> String {
        self.config().cluster_id
    }

    fn epoch(&self, db: &Database) -> u64 {
        let newest = db.epoch_history().last().map_or(0, |(e, _)| *e);
        if self.forwarders.contains_key(db.name()) {
            newest
        } else {
            newest.max(self.config().log_epoch(db.name()))
        }
    }

    async fn seed_image(&self, db: &Arc<Database>) -> Result<Lsn> {
        PrimaryGroup::seed_image(self, db, false).await
    }

    fn hold_log(&self, database: &str, partner: &str, lsn: Lsn) {
        self.geo_holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((database.to_string(), partner.to_ascii_lowercase()), lsn);
        self.retain(database);
    }

    fn partner(&self, database: &str, server: &str) -> Option<GeoPartner> {
        self.config()
            .database_options(database)
            .geo_secondaries
            .into_iter()
            .find(|p| p.server.eq_ignore_ascii_case(server))
    }

    fn read_only(&self, database: &str) -> bool {
        self.config().database_options(database).read_only
    }

    fn shippable(&self, db: &Database) -> Lsn {
        let durable = db.log().durable_lsn();
        let synchronized = self
            .databases
            .get(db.name())
            .and_then(|(_, cell)| cell.inspect(|s| s.synchronized_hardened()));
        let limit = synchronized.map_or(durable, |h| h.min(durable));
        // Never part of a transaction: a new primary cuts one whose last
        // part it lacks, and the geo-secondary would be ahead of it.
        db.log().boundary_at_or_before(limit).unwrap_or(0)
    }

    fn progress_changes(&self, database: &str) -> Option<watch::Receiver<u64>> {
        let (_, cell) = self.databases.get(database)?;
        Some(cell.changed.subscribe())
    }
}

impl PrimaryGroup {
    /// Calls `hook` with every definition taken in place.
    pub fn on_update(&self, hook: UpdateHook) {
        self.on_update
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(hook);
    }

    /// Synchronization state of each database, with its cell for metrics.
    pub fn sync_states(&self) -> Vec<(String, DbSync, Arc<SyncCell>)> {
        let mut out: Vec<_> = self
            .databases
            .iter()
            .map(|(name, (_, cell))| (name.clone(), cell.snapshot(), cell.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// One of the group's databases.
    pub fn database(&self, name: &str) -> Option<Arc<Database>> {
        self.databases.get(name).map(|(db, _)| db.clone())
    }

    /// Connection state of each secondary.
    pub fn links(&self) -> HashMap<String, LinkState> {
        self.links.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Suspends or resumes data movement of `database` to every secondary.
    ///
    /// Suspending takes each synchronized replica out of the synchronized
    /// set in the cluster first (RPO 0: it may not be a failover target
    /// once commits stop waiting for it); resuming lets it back once it has
    /// caught up, as after any reconnection.
    pub async fn set_suspended(&self, database: &str, suspended: bool) -> Result<()> {
        self.set_suspended_for(database, None, suspended).await
    }

    /// Suspends or resumes data movement of `database` to one secondary
    /// (`Some(replica)`: the secondary asked, `SET HADR SUSPEND` run there)
    /// or to every secondary (`None`), with the same RPO-0 ordering.
    pub async fn set_suspended_for(
        &self,
        database: &str,
        replica: Option<&str>,
        suspended: bool,
    ) -> Result<()> {
        let (_, cell) = self
            .databases
            .get(database)
            .ok_or_else(|| Error::NoSuchDatabase(database.to_string()))?;
        let names: Vec<String> = cell
            .snapshot()
            .replicas()
            .map(|(n, _)| n.clone())
            .filter(|n| replica.is_none_or(|r| r.eq_ignore_ascii_case(n)))
            .collect();
        if replica.is_none() {
            // Suspended or resumed here, for every secondary: no longer
            // the secondaries' own doing.
            self.suspended_by_partner
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|(d, _)| d != database);
        }
        if suspended {
            for name in &names {
                let synchronized = cell
                    .snapshot()
                    .replica(name)
                    .is_some_and(|r| r.state == SyncState::Synchronized);
                let _serial = self.arbiter_lock.lock().await;
                if let (true, Some(arbiter)) = (synchronized, &self.arbiter) {
                    arbiter.set(database, name, false).await.map_err(|e| {
                        Error::sql("55000", format!("cannot suspend: the cluster did not record that {name} left the synchronized set: {e}"))
                    })?;
                }
                cell.update(|s| s.leave(name, LeaveReason::Suspended));
            }
        } else {
            let links = self.links();
            for name in &names {
                let joined = cell.update(|s| {
                    s.resume(name, links.get(name).is_some_and(|l| l.connected));
                    s.replica(name).map(|r| r.state) == Some(SyncState::Synchronized)
                });
                if joined {
                    self.announce_synchronized(database, name);
                }
            }
            self.resumed.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    /// Stops the senders and releases the databases' commit hooks.
    ///
    /// Writes are fenced first: the databases turn RESOLVING, so nothing
    /// is written or acknowledged between this primary stopping and
    /// whatever runs next (a secondary, or this primary restarted with a new
    /// definition, which takes its own lease). Commits still waiting for
    /// secondaries fail with 40003 rather than being acknowledged.
    pub fn stop(&self) {
        for (db, _) in self.databases.values() {
            db.close_writes(self.epoch, Closed::SteppingDown);
        }
        self.stop.send_replace(true);
        for forwarder in self.forwarders.values() {
            forwarder.close();
        }
        for sender in self
            .geo_senders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            sender.stop.send_replace(true);
        }
        for (db, _) in self.databases.values() {
            db.set_retain_from(u64::MAX);
            db.set_write_gate(None);
        }
    }

    /// A secondary's progress report for one database.
    fn take_progress(&self, replica: &str, database: &str, hardened: Lsn, redone: Lsn) {
        let Some((db, cell)) = self.databases.get(database) else {
            return;
        };
        let (_, end, joined) = cell.progress(|s| {
            let before = s.replica(replica).map(|r| r.state);
            s.progress(replica, hardened, redone);
            let after = s.replica(replica).map(|r| r.state);
            let joined = after == Some(SyncState::Synchronized) && before != after;
            (s.lowest_hardened(), s.primary_end(), joined)
        });
        if joined {
            self.announce_synchronized(database, replica);
        }
        cell.lock_metrics()
            .entry(replica.to_string())
            .or_default()
            .progressed(redone, end.max(db.log().end_lsn()));
        // The log is kept from the LSN the slowest secondary (connected or
        // not, local or in another region) still needs.
        self.retain(database);
    }

    /// Whether the link to `replica` finished its handshake and is up.
    fn link_connected(&self, replica: &str) -> bool {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.get(replica).is_some_and(|l| l.connected)
    }

    fn set_link(&self, replica: &str, connected: bool, error: Option<String>) {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let link = links.entry(replica.to_string()).or_default();
        link.connected = connected;
        if error.is_some() || connected {
            link.last_error = error;
        }
    }

    /// The replica leaves the synchronized set of every database: first in
    /// the cluster (retried until recorded or refused), then here, which
    /// releases the commits waiting for it. Never the other way round: a
    /// commit acknowledged without it must not let it become primary.
    async fn leave_all(&self, replica: &str, reason: LeaveReason) {
        let mut stop = self.stop.subscribe();
        for (name, (_, cell)) in &self.databases {
            // Held until the local leave: a pending announcement cannot
            // re-add the replica in the cluster after it left there.
            let _serial = self.arbiter_lock.lock().await;
            let was_synchronized = cell
                .snapshot()
                .replica(replica)
                .is_some_and(|r| r.state == SyncState::Synchronized);
            if let (true, Some(arbiter)) = (was_synchronized, &self.arbiter) {
                let recorded = until_recorded_or_stopped(&mut stop, || async {
                    arbiter.set(name, replica, false).await.inspect_err(|e| {
                        tracing::warn!(database = %name, replica, "cannot record that the replica left the synchronized set, retrying: {e}")
                    })
                })
                .await;
                if !recorded {
                    return;
                }
            }
            cell.update(|s| s.leave(replica, reason));
        }
    }

    /// After a replica became SYNCHRONIZED here (commits already wait for
    /// it), records it in the cluster so it may be a failover target.
    fn announce_synchronized(&self, database: &str, replica: &str) {
        let Some(arbiter) = self.arbiter.clone() else {
            return;
        };
        let Some((_, cell)) = self.databases.get(database) else {
            return;
        };
        let (cell, serial) = (cell.clone(), self.arbiter_lock.clone());
        let (database, replica) = (database.to_string(), replica.to_string());
        tokio::spawn(async move {
            for _ in 0..20 {
                let _serial = serial.lock().await;
                // It may have left since: then it must not be re-added.
                let still = cell
                    .snapshot()
                    .replica(&replica)
                    .is_some_and(|r| r.state == SyncState::Synchronized);
                if !still {
                    return;
                }
                match arbiter.set(&database, &replica, true).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::debug!(%database, %replica, "cannot record the synchronized replica yet: {e}")
                    }
                }
                drop(_serial);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }

    /// A receiver that turns true when the group stops.
    pub fn stopped(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    fn set_awaiting_restore(&self, database: &str, replica: &str, reason: Option<String>) {
        let mut map = self
            .awaiting_restore
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let key = (database.to_string(), replica.to_string());
        match reason {
            Some(reason) => map.insert(key, reason),
            None => map.remove(&key),
        };
    }

    /// Why replica `replica` (SEEDING_MODE = MANUAL) gets nothing of
    /// `database`: what must be restored there, with the LSNs involved.
    pub fn awaiting_restore(&self, database: &str, replica: &str) -> Option<String> {
        self.awaiting_restore
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(database.to_string(), replica.to_string()))
            .cloned()
    }

    /// Why data movement of `database` to `replica` is suspended, if it
    /// is: the secondary asked, or a user suspended it here.
    pub fn suspend_reason(
        &self,
        database: &str,
        replica: &str,
    ) -> Option<super::secondary::SuspendReason> {
        use super::secondary::SuspendReason;
        if !self.is_suspended(database, replica) {
            return None;
        }
        let partner = self
            .suspended_by_partner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(database.to_string(), replica.to_string()));
        Some(if partner {
            SuspendReason::Partner
        } else {
            SuspendReason::User
        })
    }

    fn is_suspended(&self, database: &str, replica: &str) -> bool {
        self.databases.get(database).is_some_and(|(_, cell)| {
            cell.inspect(|s| s.replica(replica).is_some_and(|r| r.suspended))
        })
    }
}

/// The first pause before a sender connects again.
const RETRY_FIRST: Duration = Duration::from_millis(200);
/// The longest pause between a sender's tries: a secondary that restarts
/// is reconnected at most this long after its endpoint is back (with 2 s,
/// a restart that took 2 s was reconnected 1.9 s after it was ready). A
/// refused connect on the network costs next to nothing.
const RETRY_MAX: Duration = Duration::from_secs(1);

/// The pause before a sender's next try, after one that ended with an
/// error or not (`failed`), and had reached the secondary's handshake or
/// not (`was_up`): failed tries in a row double it up to [`RETRY_MAX`]; a
/// link that was up, or ended without an error, starts again at
/// [`RETRY_FIRST`].
fn next_backoff(previous: Duration, failed: bool, was_up: bool) -> Duration {
    if failed && !was_up {
        (previous * 2).min(RETRY_MAX)
    } else {
        RETRY_FIRST
    }
}

/// Keeps one secondary connected and fed, until the group stops.
async fn sender(group: Arc<PrimaryGroup>, replica: String) {
    let mut stop = group.stop.subscribe();
    let mut backoff = RETRY_FIRST;
    loop {
        if *stop.borrow() {
            return;
        }
        // The replica's settings as the definition has them now.
        let Some(replica) = group.config().replica(&replica).cloned() else {
            return;
        };
        let result = tokio::select! {
            r = stream_to(&group, &replica) => r,
            _ = stop.changed() => return,
        };
        let (reason, message) = match result {
            Ok(reason) => (reason, None),
            Err(e) => (LeaveReason::Disconnected, Some(e)),
        };
        if let Some(m) = &message {
            tracing::info!(group = %group.config().name, replica = %replica.name, "replication link down: {m}");
        }
        // A link that was up starts its retries over: a secondary that
        // restarts is reconnected within the first step, however often
        // its links failed before.
        let was_up = group.link_connected(&replica.name);
        group.set_link(
            &replica.name,
            false,
            message.as_ref().map(|m| m.to_string()),
        );
        group.leave_all(&replica.name, reason).await;
        backoff = next_backoff(backoff, message.is_some(), was_up);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One connection's life; returns why it ended.
async fn stream_to(
    group: &Arc<PrimaryGroup>,
    replica: &ReplicaConfig,
) -> std::result::Result<LeaveReason, ReplicationError> {
    let timeout = Duration::from_secs(replica.session_timeout_s.max(1) as u64);
    let connect_error = |cause: String| ReplicationError::Connect {
        endpoint: replica.endpoint,
        cause,
    };
    let socket = tokio::time::timeout(
        Duration::from_secs(2),
        crate::net::connect(replica.endpoint),
    )
    .await
    .map_err(|_| connect_error("timed out".into()))?
    .map_err(|e| connect_error(e.to_string()))?;
    let _ = socket.set_nodelay(true);
    let mut conn = Framed::new(socket, WireCodec);
    let mut configs = group.config.subscribe();
    let config = configs.borrow_and_update().clone();
    let mut timeout = timeout;
    send(
        &mut conn,
        Message::Hello {
            cluster_id: config.cluster_id.clone(),
            group: config.name.clone(),
            from_replica: group.node.clone(),
            to_replica: replica.name.clone(),
            epoch: config.epoch,
        },
        timeout,
    )
    .await?;
    send(
        &mut conn,
        Message::Config {
            version: config.version,
            config: config.to_bytes(),
        },
        timeout,
    )
    .await?;
    let positions = match tokio::time::timeout(timeout, conn.next()).await {
        Err(_) => return Err(ReplicationError::SessionTimeout(timeout)),
        Ok(None) => return Err(ReplicationError::Closed),
        Ok(Some(Err(e))) => return Err(ReplicationError::Wire(e.to_string())),
        Ok(Some(Ok(Message::Welcome { databases, .. }))) => databases,
        Ok(Some(Ok(Message::Refuse { reason }))) => return Err(ReplicationError::Refused(reason)),
        Ok(Some(Ok(other))) => {
            return Err(ReplicationError::Unexpected {
                expected: "Welcome or Refuse",
                got: format!("{other:?}"),
            })
        }
    };
    let mut next: HashMap<String, Lsn> = HashMap::new();
    // What the secondary sent while a start was being planned, other than
    // its Pings: the reader takes it in first.
    let mut early: Vec<Message> = Vec::new();
    let manual = config
        .replica(&replica.name)
        .is_some_and(|r| r.seeding_mode == SeedingMode::Manual)
        .then_some(replica.name.as_str());
    // Databases this replica must restore itself (MANUAL seeding), told
    // after every Rewind of the handshake.
    let mut awaiting: Vec<(String, String)> = Vec::new();
    // Databases seeded here by a streamed backup (`super::seed`).
    let mut seeds: Vec<Arc<Database>> = Vec::new();
    // Databases that start from a full image here, and where its log starts.
    let mut restarts: HashMap<String, Lsn> = HashMap::new();
    // The log each start was planned from (see `Log::generation`).
    let mut generations: HashMap<String, u64> = HashMap::new();
    for (name, (db, cell)) in &group.databases {
        generations.insert(name.clone(), db.log().generation());
        let position = positions.iter().find(|p| &p.database == name);
        let planning = start_lsn(group, db, position, AHEAD_PATIENCE, manual);
        let planned = answering_pings(&mut conn, &mut early, timeout, planning)
            .await?
            .map_err(ReplicationError::local)?;
        let (start, rewind) = match planned {
            Planned::Stream(start, rewind) => (start, rewind),
            Planned::AwaitsRestore(reason) => {
                tracing::warn!(group = %config.name, replica = %replica.name, database = %name, "{reason}");
                cell.update(|s| s.leave(&replica.name, LeaveReason::AwaitingRestore));
                group.set_awaiting_restore(name, &replica.name, Some(reason.clone()));
                // It no longer holds the log (see `SyncState::lowest_hardened`).
                group.retain(name);
                awaiting.push((name.clone(), reason));
                continue;
            }
            Planned::Backup => {
                // Its old position holds nothing now; the seed holds the
                // log from where the backup starts.
                cell.update(|s| s.leave(&replica.name, LeaveReason::Seeding));
                group.set_awaiting_restore(name, &replica.name, None);
                group.seed_holds.hold(name, &replica.name, db.applied_lsn());
                group.retain(name);
                seeds.push(db.clone());
                continue;
            }
        };
        group.set_awaiting_restore(name, &replica.name, None);
        if let Some(report) = &group.on_divergence {
            report(&replica.name, name, rewind);
        }
        if let Some((diverged_at, their_end)) = rewind {
            tracing::warn!(
                group = %config.name, replica = %replica.name, database = %name,
                diverged_at, their_end,
                "the replica's log diverged; it restarts from a full image (LSN {diverged_at}..{their_end} discarded there)"
            );
            send(
                &mut conn,
                Message::Rewind {
                    database: name.clone(),
                    from_lsn: start,
                },
                timeout,
            )
            .await?;
        }
        // A seeded or diverged log's positions count for nothing: it
        // restarts at the image.
        let seeded = rewind.is_some() || position.is_none_or(|p| p.end_lsn != start);
        if seeded {
            restarts.insert(name.clone(), start);
        }
        let (hardened, redone) = match (seeded, position) {
            (false, Some(p)) => (p.end_lsn, p.redone_lsn),
            _ => (0, 0),
        };
        // Caught up means caught up with the log as it is now, a full image
        // written for this replica included: the rule must not count a
        // replica that has hardened only the first part of its seed.
        let log_end = db.log().end_lsn();
        let joined = cell.update(|s| {
            s.appended(log_end);
            s.connected(&replica.name, hardened, redone);
            s.replica(&replica.name).map(|r| r.state) == Some(SyncState::Synchronized)
        });
        // A copy seeded from a backup came back: its position holds the
        // log from here on.
        group.seed_holds.release(name, &replica.name);
        group.retain(name);
        if joined {
            group.announce_synchronized(name, &replica.name);
        }
        next.insert(name.clone(), start);
    }
    for (database, reason) in &awaiting {
        send(
            &mut conn,
            Message::AwaitsRestore {
                database: database.clone(),
                reason: reason.clone(),
            },
            timeout,
        )
        .await?;
    }
    // The handshake is over: the secondary now knows every refusal.
    send(
        &mut conn,
        Message::Ping {
            sent_us: monotonic_us(),
        },
        timeout,
    )
    .await?;
    group.set_link(&replica.name, true, None);
    tracing::info!(group = %config.name, replica = %replica.name, "replication link up");

    // Seeds by streamed backup: each backup is taken on a task of its own
    // while the link streams the other databases, then sent part by part
    // between their batches (`super::seed`).
    let (seed_tx, mut seed_rx) =
        tokio::sync::mpsc::unbounded_channel::<std::result::Result<Prepared, ReplicationError>>();
    let mut seeds_preparing = seeds.len();
    let mut seed_tasks = Vec::new();
    for db in &seeds {
        let hold: Arc<dyn Fn(Lsn) + Send + Sync> = {
            let (group, name, replica) =
                (group.clone(), db.name().to_string(), replica.name.clone());
            Arc::new(move |lsn| {
                group.seed_holds.hold(&name, &replica, lsn);
                group.retain(&name);
            })
        };
        let source = SeedSource {
            db: db.clone(),
            data_dir: group.data_dir.clone(),
            group: config.name.clone(),
            node: group.node.clone(),
            replica: replica.name.clone(),
            hold,
            board: group.seeding.clone(),
        };
        let tx = seed_tx.clone();
        seed_tasks.push(AbortOnDrop(tokio::spawn(async move {
            let _ = tx.send(super::seed::prepare(source).await);
        })));
    }
    let mut seeds_sending: std::collections::VecDeque<Prepared> = Default::default();

    let mut ends: Vec<(String, watch::Receiver<Lsn>)> = group
        .databases
        .iter()
        .map(|(name, (db, _))| (name.clone(), db.log().subscribe_end()))
        .collect();
    // Incoming messages are handled by their own task, so progress is
    // taken in as it arrives even while this loop is busy sending.
    let (mut sink, mut stream) = conn.split();
    let (control, mut controls) =
        tokio::sync::mpsc::unbounded_channel::<std::result::Result<u64, ReplicationError>>();
    let heard = Arc::new(std::sync::atomic::AtomicU64::new(monotonic_us()));
    let reader = {
        let group = group.clone();
        let replica = replica.name.clone();
        let heard = heard.clone();
        let mut restarts = restarts;
        // Nor do those of a copy being replaced by a seed.
        let awaiting: std::collections::HashSet<String> = awaiting
            .iter()
            .map(|(d, _)| d.clone())
            .chain(seeds.iter().map(|db| db.name().to_string()))
            .collect();
        let mut early = early.into_iter();
        tokio::spawn(async move {
            let outcome = loop {
                let message = match next_message(&mut early, &mut stream).await {
                    None => break ReplicationError::Closed,
                    Some(Err(e)) => break ReplicationError::Wire(e.to_string()),
                    Some(Ok(m)) => m,
                };
                heard.store(monotonic_us(), std::sync::atomic::Ordering::Relaxed);
                match message {
                    Message::Progress {
                        database,
                        hardened_lsn,
                        redone_lsn,
                        first_lsn,
                    } => {
                        // A seeded or rewound replica reports about its
                        // old log until the full image restarted it there:
                        // such reports count for nothing (they could claim
                        // positions the new log does not hold).
                        let restarted = restarts.get(&database).is_none_or(|at| *at == first_lsn);
                        // A copy that awaits a restore is not streamed:
                        // its reports do not make it SYNCHRONIZING.
                        if restarted && !awaiting.contains(&database) {
                            restarts.remove(&database);
                            group.take_progress(&replica, &database, hardened_lsn, redone_lsn)
                        }
                    }
                    Message::Ping { sent_us } => {
                        if control.send(Ok(sent_us)).is_err() {
                            return;
                        }
                    }
                    Message::Pong { .. } => {}
                    Message::DatabaseState {
                        database,
                        suspended,
                    } => {
                        // The secondary suspended or resumed its copy.
                        let what = if suspended { "suspended" } else { "resumed" };
                        {
                            let mut by_partner = group
                                .suspended_by_partner
                                .lock()
                                .unwrap_or_else(|e| e.into_inner());
                            let key = (database.clone(), replica.clone());
                            if suspended {
                                by_partner.insert(key);
                            } else {
                                by_partner.remove(&key);
                            }
                        }
                        match group
                            .set_suspended_for(&database, Some(&replica), suspended)
                            .await
                        {
                            Ok(()) => {
                                tracing::info!(replica, database = %database, "data movement {what} by the secondary")
                            }
                            Err(e) => {
                                break ReplicationError::Local(format!(
                                    "cannot record that the secondary {what} {database}: {e}"
                                ))
                            }
                        }
                    }
                    Message::Refuse { reason } => break ReplicationError::Refused(reason),
                    other => {
                        break ReplicationError::Unexpected {
                            expected: "Progress, Ping, Pong, DatabaseState or Refuse",
                            got: format!("{other:?}"),
                        }
                    }
                }
            };
            let _ = control.send(Err(outcome));
        })
    };
    let _reader = AbortOnDrop(reader);
    let mut ping = tokio::time::interval(PING_INTERVAL);
    let mut resumed = group.resumed.subscribe();
    loop {
        resumed.borrow_and_update();
        // Send whatever is new, database by database.
        let mut sent_any = false;
        for (name, (db, _)) in &group.databases {
            if group.is_suspended(name, &replica.name) || !next.contains_key(name) {
                continue;
            }
            if db.log().generation() != generations[name] {
                // A forwarder's log restarted at a full image from its geo
                // source (or was cut): where this replica starts must be
                // decided again, else it would keep a log that diverged.
                return Err(ReplicationError::Local(format!(
                    "the log of {name} was replaced here (a full image from the geo source): the link starts over"
                )));
            }
            let from = next[name];
            if from >= db.log().end_lsn() {
                continue;
            }
            // Recent records come from memory; older ones from disk, on a
            // blocking thread.
            let records = match db.log().read_recent(from, BATCH_BYTES) {
                Some(records) => records,
                None => {
                    let log = db.log().clone();
                    tokio::task::spawn_blocking(move || log.read_raw(from, BATCH_BYTES))
                        .await
                        .map_err(ReplicationError::local)?
                        .map_err(ReplicationError::local)?
                }
            };
            let Some(last) = records.last() else { continue };
            if let Some(next) = next.get_mut(name) {
                *next = last.end_lsn();
            }
            if let Some((_, cell)) = group.databases.get(name) {
                // Whatever was appended (commits, and full images that
                // no commit waits for) counts before any replica catches up.
                cell.inspect(|s| s.appended(last.end_lsn()));
                let bytes = last.end_lsn() - from;
                let mut metrics = cell.lock_metrics();
                match metrics.get_mut(&replica.name) {
                    Some(m) => m.sent(&records, bytes),
                    None => metrics
                        .entry(replica.name.clone())
                        .or_default()
                        .sent(&records, bytes),
                }
            }
            let encoded = records.iter().map(|r| r.bytes.clone()).collect();
            send(
                &mut sink,
                Message::Records {
                    database: name.clone(),
                    records: encoded,
                },
                timeout,
            )
            .await?;
            sent_any = true;
        }
        // A replica still behind the log's end gets its next batch at once
        // (the socket paces it): the end may not move again — a bulk load's
        // last part is appended, its commit waits for this replica — and
        // waiting for it left a replica behind one batch per ping, ≈ 6 MB/s
        // of catch-up. Only after a turn that sent something, so a log
        // whose end is not readable yet never makes this loop spin.
        let behind = sent_any
            && group.databases.iter().any(|(name, (db, _))| {
                !group.is_suspended(name, &replica.name)
                    && next
                        .get(name)
                        .is_some_and(|&from| from < db.log().end_lsn())
            });
        // Then a few parts of the seed being sent, so batches of the
        // other databases keep flowing between them.
        for _ in 0..SEED_PARTS_PER_TURN {
            let Some(seed) = seeds_sending.front_mut() else {
                break;
            };
            match seed.next_message().await {
                Ok(Some(message)) => {
                    if let Err(e) = send(&mut sink, message, timeout).await {
                        seed.abandon(&e.to_string());
                        return Err(e);
                    }
                }
                Ok(None) => {
                    seeds_sending.pop_front();
                }
                Err(e) => {
                    seed.abandon(&e.to_string());
                    return Err(e);
                }
            }
        }
        let any_end_changed = async {
            let waits = ends.iter_mut().map(|(_, rx)| Box::pin(rx.changed()));
            let _ = futures::future::select_all(waits).await;
        };
        tokio::select! {
            _ = any_end_changed => {}
            _ = std::future::ready(()), if behind || !seeds_sending.is_empty() => {}
            _ = resumed.changed() => {}
            prepared = seed_rx.recv(), if seeds_preparing > 0 => {
                seeds_preparing -= 1;
                match prepared {
                    Some(Ok(prepared)) => seeds_sending.push_back(prepared),
                    Some(Err(e)) => return Err(e),
                    None => {}
                }
            }
            _ = ping.tick() => {
                let silent = monotonic_us().saturating_sub(heard.load(std::sync::atomic::Ordering::Relaxed));
                if silent > timeout.as_micros() as u64 {
                    return Ok(LeaveReason::SessionTimeout);
                }
                send(&mut sink, Message::Ping { sent_us: monotonic_us() }, timeout).await?;
            }
            control = controls.recv() => match control {
                Some(Ok(sent_us)) => send(&mut sink, Message::Pong { echo_us: sent_us }, timeout).await?,
                Some(Err(reason)) => return Err(reason),
                None => return Err(ReplicationError::Closed),
            },
            changed = configs.changed() => {
                if changed.is_err() {
                    return Err(ReplicationError::PrimaryStopped);
                }
                // A definition taken in place: the secondary takes it too,
                // and this link uses the new session timeout.
                let config = configs.borrow_and_update().clone();
                if let Some(r) = config.replica(&replica.name) {
                    timeout = Duration::from_secs(r.session_timeout_s.max(1) as u64);
                }
                send(&mut sink, Message::Config { version: config.version, config: config.to_bytes() }, timeout).await?;
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How one database of a link starts (see [`start_lsn`]).
enum Planned {
    /// Stream the log from this LSN; for a log that diverged, the
    /// discarded range `[first divergent LSN, its end)`.
    Stream(Lsn, Option<(Lsn, Lsn)>),
    /// MANUAL seeding: nothing is sent until a restore there joins it; what
    /// its admin must restore.
    AwaitsRestore(String),
    /// AUTOMATIC seeding of a large database this region writes: a backup
    /// is streamed to the replica (`super::seed`).
    Backup,
}

/// Where streaming to a secondary starts for one database: where its log
/// ends, if that log agrees with ours and we still hold what follows;
/// otherwise at a fresh full image, or — for a database of at least
/// [`seed_by_backup_from`] bytes that this region writes — by a streamed
/// backup ([`Planned::Backup`]). Also returns, for a log that diverged
/// (its tail holds records we never had: a former primary's unshipped
/// commits), the discarded range `[first divergent LSN, its end)`.
///
/// A geo-secondary database's copy that is only ahead of ours (see
/// `link::ahead_only`) is waited for, up to `patience`, before it is
/// planned: it holds records of the source that our copy is still taking.
///
/// A replica whose SEEDING_MODE is MANUAL (`manual`) is never seeded: where
/// it would be, the answer is [`Planned::AwaitsRestore`].
async fn start_lsn(
    group: &PrimaryGroup,
    db: &Arc<Database>,
    position: Option<&DatabasePosition>,
    patience: Duration,
    manual: Option<&str>,
) -> Result<Planned> {
    let copied = group
        .config()
        .database_options(db.name())
        .geo_source
        .is_some();
    let deadline = tokio::time::Instant::now() + patience;
    let log = db.log();
    let mut told = false;
    let start = loop {
        let history = db.epoch_history();
        let ours = OwnLog {
            first: log.first_lsn(),
            end: log.end_lsn(),
            history: &history,
        };
        let waits = copied && position.is_some_and(|p| ahead_only(ours, p));
        if !waits || tokio::time::Instant::now() >= deadline {
            let checksum_at = |lsn| log.record_checksum_at(lsn).ok().flatten();
            break plan_start(ours, checksum_at, position);
        }
        if !told {
            told = true;
            tracing::info!(
                database = %db.name(), ours = ours.end, theirs = position.map_or(0, |p| p.end_lsn),
                "a secondary's copy of this geo-secondary database is ahead of ours: waiting for the source's records before planning its start"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let theirs = position.map_or(0, |p| p.end_lsn);
    if let (Some(replica), Start::Continue(_) | Start::Seed) = (manual, start) {
        // A copy restored there ends past 0; no copy is a seed too, even
        // where the log still starts at 0 and could be sent whole.
        if theirs == 0 || start == Start::Seed {
            let group_name = group.config().name;
            return Ok(Planned::AwaitsRestore(awaits_restore(
                &group_name,
                db.name(),
                replica,
                log.first_lsn(),
                theirs,
            )));
        }
    }
    let by_backup = !copied
        && !group.forwarders.contains_key(db.name())
        && db.file_bytes() >= seed_by_backup_from();
    match start {
        Start::Continue(from) => Ok(Planned::Stream(from, None)),
        Start::Seed if by_backup => Ok(Planned::Backup),
        Start::Seed => Ok(Planned::Stream(group.seed_image(db, true).await?, None)),
        Start::Rewind {
            diverged,
            their_end,
        } => Ok(Planned::Stream(
            group.seed_image(db, true).await?,
            Some((diverged, their_end)),
        )),
    }
}

/// What the admin of a MANUAL-seeding replica must restore there.
fn awaits_restore(group: &str, database: &str, replica: &str, first: Lsn, theirs: Lsn) -> String {
    let join = format!("ALTER DATABASE {database} SET HADR AVAILABILITY GROUP = {group}");
    if theirs == 0 {
        format!(
            "database \"{database}\" has no copy on replica \"{replica}\", whose SEEDING_MODE is MANUAL: \
             restore it there WITH NORECOVERY from a full backup and log backups that reach at least LSN {first} \
             (where the primary's log starts), then run {join} there"
        )
    } else {
        format!(
            "the copy of database \"{database}\" on replica \"{replica}\" (SEEDING_MODE = MANUAL) ends at LSN {theirs}, \
             older than the primary's log, which starts at LSN {first}: it cannot catch up. Restore it there again \
             WITH NORECOVERY, REPLACE from a full backup and log backups that reach at least LSN {first}, then run {join} \
             there; or let the primary seed it: ALTER AVAILABILITY GROUP {group} MODIFY REPLICA ON '{replica}' WITH (SEEDING_MODE = AUTOMATIC)"
        )
    }
}

/// Runs `work` — planning where a secondary starts, which can wait for a
/// geo source or for a full image to be written — while answering the
/// secondary's `Ping`s on `conn`, so the wait does not run into the
/// secondary's session timeout. Anything else the secondary sends meanwhile
/// is kept, in order, in `early`. Fails if the secondary closes the
/// connection or is silent for `timeout`. Used by local and geo links.
pub(super) async fn answering_pings<S, E, T>(
    conn: &mut S,
    early: &mut Vec<Message>,
    timeout: Duration,
    work: impl std::future::Future<Output = T>,
) -> std::result::Result<T, ReplicationError>
where
    S: futures::Sink<Message> + futures::Stream<Item = std::result::Result<Message, E>> + Unpin,
    <S as futures::Sink<Message>>::Error: std::fmt::Display,
    E: std::fmt::Display,
{
    tokio::pin!(work);
    let mut heard = tokio::time::Instant::now();
    let mut check = tokio::time::interval(PING_INTERVAL.min(timeout / 4));
    loop {
        tokio::select! {
            done = &mut work => return Ok(done),
            incoming = conn.next() => {
                heard = tokio::time::Instant::now();
                match incoming {
                    None => return Err(ReplicationError::Closed),
                    Some(Err(e)) => return Err(ReplicationError::Wire(e.to_string())),
                    Some(Ok(Message::Ping { sent_us })) => {
                        send(conn, Message::Pong { echo_us: sent_us }, timeout).await?
                    }
                    Some(Ok(other)) => early.push(other),
                }
            }
            _ = check.tick() => {
                if heard.elapsed() > timeout {
                    return Err(ReplicationError::SessionTimeout(timeout));
                }
            }
        }
    }
}

/// The next message a link's reader takes in: those kept while the start
/// was planned ([`answering_pings`]) first, then the connection's.
pub(super) async fn next_message<S, E>(
    early: &mut std::vec::IntoIter<Message>,
    stream: &mut S,
) -> Option<std::result::Result<Message, E>>
where
    S: futures::Stream<Item = std::result::Result<Message, E>> + Unpin,
{
    match early.next() {
        Some(m) => Some(Ok(m)),
        None => stream.next().await,
    }
}

/// Sends within the session timeout: a partner that stops reading (paused,
/// wedged) must not stall the sender past it, or its timeout would never
/// be noticed and commits would wait for it forever.
pub(super) async fn send<S>(
    sink: &mut S,
    message: Message,
    within: Duration,
) -> std::result::Result<(), ReplicationError>
where
    S: futures::Sink<Message> + Unpin,
    S::Error: std::fmt::Display,
{
    match tokio::time::timeout(within, sink.send(message)).await {
        Ok(sent) => sent.map_err(|e| ReplicationError::Wire(format!("send failed: {e}"))),
        // A partner that stopped reading is as silent as one that stopped
        // writing.
        Err(_) => Err(ReplicationError::SessionTimeout(within)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The waiting commits: a secondary's progress wakes the commits it releases and
    /// no other; any other change wakes every one (it may change what they
    /// wait for); a commit that stops waiting leaves no entry behind.
    #[test]
    fn progress_wakes_only_the_commits_it_releases() {
        let cell = SyncCell::new(DbSync::new(0, &[("r2".to_string(), true)], 0));
        cell.update(|s| s.connected("r2", 0, 0));
        assert_eq!(cell.snapshot().released_upto(), Some(0), "r2 synchronized");
        let wait = |lsn| cell.check_or_wait(lsn).expect("not hardened yet").0;
        let (w100, w200, w300) = (wait(100), wait(200), wait(300));
        cell.progress(|s| s.progress("r2", 200, 0));
        assert!(
            w100.was_woken() && w200.was_woken(),
            "released by the progress"
        );
        assert!(!w300.was_woken(), "300 is not hardened: not woken");
        assert!(cell.check_or_wait(150).is_none(), "released commits return");
        drop((w100, w200));
        assert_eq!(cell.waiting.len(), 1, "only 300 waits");
        let w400 = wait(400);
        cell.update(|s| s.leave("r2", LeaveReason::Disconnected));
        assert!(
            w300.was_woken() && w400.was_woken(),
            "a replica leaving wakes every commit"
        );
        drop((w300, w400));
        assert!(cell.check_or_wait(400).is_none(), "nobody to wait for");
        cell.update(|s| s.set_required(1));
        let (w500, too_few) = cell.check_or_wait(500).expect("too few synchronized");
        assert_eq!(too_few, Some((0, 1)));
        drop(w500);
        assert!(cell.waiting.is_empty(), "no entry left behind");
    }

    #[test]
    fn a_sender_backs_off_failed_connects_but_retries_a_link_that_was_up_at_once() {
        // Tries that never reach the handshake double the pause, up to the cap.
        let mut pause = RETRY_FIRST;
        let mut pauses = Vec::new();
        for _ in 0..6 {
            pause = next_backoff(pause, true, false);
            pauses.push(pause.as_millis());
        }
        assert_eq!(pauses, [400, 800, 1000, 1000, 1000, 1000]);
        // A link that was up and then failed (the secondary was killed)
        // starts over, whatever came before: found when each restart of a
        // secondary in `scripts/bench seeding` waited longer to reconnect
        // (0.2, 0.5, 1.5, 1.7 s).
        assert_eq!(next_backoff(RETRY_MAX, true, true), RETRY_FIRST);
        // A link that ended without an error (the replica left) too.
        assert_eq!(next_backoff(RETRY_MAX, false, false), RETRY_FIRST);
    }

    #[tokio::test]
    async fn a_primary_that_stopped_before_its_leave_is_recorded_stops_trying() {
        // Found in the transitions test: a link ended because its primary
        // was stopping (deposed), and the leave that followed retried the
        // cluster's refusal ("the sender was deposed") every 100 ms for
        // good, waiting for a change of `stop` that had come already.
        let (stop, _) = watch::channel(true);
        let tries = std::sync::atomic::AtomicU32::new(0);
        let refused = || async {
            tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err::<(), _>("epoch 3 is older than the group's epoch 5".to_string())
        };
        let mut seen = stop.subscribe();
        let recorded = tokio::time::timeout(
            Duration::from_secs(5),
            until_recorded_or_stopped(&mut seen, refused),
        )
        .await
        .expect("a stopped primary does not retry");
        assert!(!recorded);
        assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 0);

        // Stopping while it retries ends the tries too.
        let (stop, mut seen) = watch::channel(false);
        let retrying = tokio::spawn(async move {
            until_recorded_or_stopped(&mut seen, || async {
                Err::<(), _>("no leader".to_string())
            })
            .await
        });
        tokio::time::sleep(3 * RECORD_RETRY).await;
        stop.send_replace(true);
        let recorded = tokio::time::timeout(Duration::from_secs(5), retrying)
            .await
            .expect("stopping ends the retries")
            .unwrap();
        assert!(!recorded);

        // A refusal that clears is recorded.
        let (_stop, mut seen) = watch::channel(false);
        let tries = std::sync::atomic::AtomicU32::new(0);
        let recorded = until_recorded_or_stopped(&mut seen, || async {
            match tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 | 1 => Err("no leader".to_string()),
                _ => Ok(()),
            }
        })
        .await;
        assert!(recorded);
        assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    /// The two ends of a replication connection, in memory.
    fn connection() -> (
        Framed<tokio::io::DuplexStream, WireCodec>,
        Framed<tokio::io::DuplexStream, WireCodec>,
    ) {
        let (a, b) = tokio::io::duplex(1 << 16);
        (Framed::new(a, WireCodec), Framed::new(b, WireCodec))
    }

    #[tokio::test]
    async fn a_start_planned_for_longer_than_the_session_timeout_keeps_the_secondary_answered() {
        let timeout = Duration::from_millis(300);
        let (mut primary, mut secondary) = connection();
        let mut early = Vec::new();
        let secondary = tokio::spawn(async move {
            secondary
                .send(Message::DatabaseState {
                    database: "app".into(),
                    suspended: true,
                })
                .await
                .unwrap();
            // The secondary pings for three session timeouts and hears a
            // Pong for each Ping.
            for n in 0..9u64 {
                secondary.send(Message::Ping { sent_us: n }).await.unwrap();
                match secondary.next().await {
                    Some(Ok(Message::Pong { echo_us })) => assert_eq!(echo_us, n),
                    other => panic!("expected a Pong for Ping {n}, got {other:?}"),
                }
                tokio::time::sleep(timeout / 3).await;
            }
            secondary
        });
        let planning = tokio::time::sleep(3 * timeout);
        answering_pings(&mut primary, &mut early, timeout, planning)
            .await
            .expect("the plan finishes while the secondary is answered");
        // What else it sent waits for the reader, in order.
        assert_eq!(
            early,
            vec![Message::DatabaseState {
                database: "app".into(),
                suspended: true
            }]
        );
        secondary.await.unwrap();
    }

    #[tokio::test]
    async fn a_secondary_gone_while_its_start_is_planned_ends_the_wait() {
        let timeout = Duration::from_millis(300);
        // Closed: the wait ends at once, not when the plan does.
        let (mut primary, secondary) = connection();
        drop(secondary);
        let mut early = Vec::new();
        let planning = tokio::time::sleep(Duration::from_secs(10));
        let err = answering_pings(&mut primary, &mut early, timeout, planning)
            .await
            .unwrap_err();
        assert!(matches!(err, ReplicationError::Closed), "{err}");
        // Silent (stopped, wedged): the wait ends after the session timeout.
        let (mut primary, _silent) = connection();
        let started = tokio::time::Instant::now();
        let planning = tokio::time::sleep(Duration::from_secs(10));
        let err = answering_pings(&mut primary, &mut early, timeout, planning)
            .await
            .unwrap_err();
        assert!(matches!(err, ReplicationError::SessionTimeout(_)), "{err}");
        assert!(started.elapsed() >= timeout);
    }
}
