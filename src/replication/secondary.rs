//! The secondary's side: the endpoint that primaries connect to, hardening
//! received records in the local log, and redo into the database file.
//!
//! # One connection from a primary
//! 1. `Hello` is checked by the [`Admission`] (group joined here, addressed
//!    to this replica, same cluster, epoch not older than known); a failed
//!    check is answered with `Refuse` and the reason, and nothing else.
//! 2. `Config` gives the group's definition: its databases become
//!    secondaries here (created empty if missing), and `Welcome` reports
//!    where each one's log ends.
//! 3. Each `Records` message is decoded and checked whole (checksums,
//!    epochs, LSN continuity) before any of it is appended; then it is
//!    appended and fsynced — *hardened* — and `Progress` reports the new end.
//!    A record that starts past the log's end is accepted only if it is a
//!    full image (seeding); the log then restarts at it.
//! 4. Who hardens: a small batch (≤ [`INLINE_BATCH_BYTES`]) is appended on
//!    the link's own task, and the link hardens it itself as soon as no
//!    further message waits to be read — one fsync covers every batch taken
//!    in meanwhile — and sends `Progress` right after, with no hop to
//!    another thread between receiving a commit and acknowledging it. A
//!    larger batch, or small ones piling up past [`INLINE_BATCH_BYTES`]
//!    while the stream never pauses, or any left when the link ends, go to
//!    the database's harden thread. A `Progress` that would repeat the
//!    last one is not sent.
//! 5. A redo task per database applies hardened records to the file, one
//!    SQLite transaction per batch of whole records, and reports the redone
//!    LSN. A small backlog waits until `REDO_PAUSE` (1 ms) after the previous
//!    redo, so at thousands of commits a second one redo covers several.
//!    Redo takes the records the intake decoded for its check (kept per
//!    database, at most 8 MiB of pages, as one contiguous run dropped where the log
//!    restarts or is cut: `Decoded`) when they start where the file
//!    stands, and reads the log otherwise: a record is decoded once.
//! 6. Reports: whoever moves a database's hardened or redone LSN (the link,
//!    a harden thread, a redo task) pings the group's one `moved` signal;
//!    the link, woken by it, sends a `Progress` for each database whose
//!    hardened or first LSN moved at once (commits wait for it), and lets a
//!    move of the redone LSN alone wait up to `REDO_REPORT_DELAY` (5 ms) for
//!    a hardened move to carry it: under load every redo is reported by the
//!    next acknowledgement, with no message of its own; when the stream goes
//!    quiet, within 5 ms. Nothing is reported that the primary heard already.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::codec::Framed;

use super::error::ReplicationError;
use super::link::{check_batch, Intake, LocalLog};
use super::primary::PING_INTERVAL;
use super::wire::{DatabasePosition, Message, WireCodec};
use crate::engine::monotonic_us;
use crate::engine::{Database, Fence};
use crate::group::GroupConfig;
use crate::log::{self, Lsn, Record};
use crate::net::PartnerStream;

/// Redo batches at most this many bytes of records.
const REDO_BATCH_BYTES: u64 = 8 << 20;
/// A backlog smaller than this waits for [`REDO_PAUSE`] after the previous
/// redo, so one redo transaction covers the commits hardened meanwhile.
const REDO_EAGER_BYTES: u64 = 256 << 10;
/// How long redo of a small backlog waits after the previous redo: the
/// redo lag it adds, against one SQLite transaction (and a hop to a
/// blocking thread) per commit at thousands of commits a second.
const REDO_PAUSE: Duration = Duration::from_millis(1);
/// How long a move of a database's redone LSN alone waits for a hardened
/// move to carry it to the primary (only views of redo lag, and waits for
/// redo there, read it) before it goes out in a `Progress` of its own.
const REDO_REPORT_DELAY: Duration = Duration::from_millis(5);
/// Memory the records the intake decoded take that a secondary keeps for
/// its redo, at most (see [`Decoded`]): their pages whole, not their
/// log bytes (a page's hole is left out of the log).
const DECODED_BYTES: u64 = 8 << 20;
/// Checkpoint the secondary's file after this many redone bytes.
const CHECKPOINT_BYTES: u64 = 16 << 20;

/// Bytes of records a secondary appends without a hop to a blocking
/// thread ([`SecondaryDb::receive`]).
pub const INLINE_BATCH_BYTES: usize = 64 << 10;

/// What decides whether a primary may connect, and sets databases up.
#[async_trait::async_trait]
pub trait Admission: Send + Sync + 'static {
    /// Checks a `Hello`; Err is the reason sent back in `Refuse`.
    fn check_hello(
        &self,
        cluster_id: &str,
        group: &str,
        to_replica: &str,
        epoch: u64,
    ) -> Result<(), String>;
    /// Takes the group's definition from the primary (at the start of a
    /// connection, or in-band when it changes); returns the group's
    /// receiver (its databases set up as secondaries here).
    async fn accept_config(&self, config: GroupConfig) -> Result<Arc<SecondaryGroup>, String>;
    /// A source region's primary opens a geo link: the forwarder of the
    /// database it names (created when asked and missing), or why not
    /// (sent back in `Refuse`: the source tries its partner's next node).
    async fn geo_forwarder(
        self: Arc<Self>,
        request: &super::geo::GeoRequest,
    ) -> Result<Arc<super::geo::Forwarder>, String>;
    /// A geo source ends the link (`Terminate`): the geo-secondary
    /// `database` here, fed by `source_server`, becomes an independent
    /// database of this region — planned: with its log ending exactly at
    /// `at`; forced: wherever it ends. Returns where its log ends.
    async fn end_geo_secondary(
        self: Arc<Self>,
        database: &str,
        source_server: &str,
        planned: bool,
        at: Lsn,
        handover: Option<super::wire::Handover>,
    ) -> Result<Lsn, String>;
    /// Where a seed streamed by the primary is written while it arrives
    /// (`super::seed`).
    fn seed_staging(&self) -> std::path::PathBuf;
    /// Where seeds are shown.
    fn seeding_board(&self) -> Arc<super::seed::SeedingBoard>;
    /// Automatic seeding: the backup of `database` at `file`, streamed by
    /// the primary, is whole. Restores it `WITH NORECOVERY` and starts the
    /// secondary of `group` again with it (the link ends; the primary
    /// reconnects and continues from the copy's end). `file` is removed.
    async fn seeded(
        self: Arc<Self>,
        group: &str,
        database: &str,
        file: std::path::PathBuf,
    ) -> Result<(), String>;
    /// A partner replica asks for page `request.pgno` of a database it
    /// found damaged (automatic page repair): the page as this replica's
    /// file holds it at `request.at_lsn` or later, and that LSN; or why not
    /// (sent back in `PageAnswer`).
    async fn page_for_partner(
        &self,
        request: &crate::repair::PageRequest,
    ) -> Result<(Lsn, Vec<u8>), String>;
    /// A secondary's scrub asks for the stored checksums of a run of pages
    /// (`PageSumsRequest`): at `request.at_lsn` or later, and that LSN.
    async fn page_sums_for_partner(
        &self,
        request: &crate::repair::SumsRequest,
    ) -> Result<(Lsn, Vec<u32>), String>;
}

/// Takes a client session an availability group listener handed over.
pub type SessionHandoff =
    Arc<dyn Fn(crate::net::PartnerStream, std::net::SocketAddr) + Send + Sync>;

/// Serves the replication endpoint until the process ends.
///
/// Every connection is first admitted by [`crate::net::accept`] (the
/// partner TLS handshake on a node with partner TLS). The port is shared
/// with the cluster manager and the listener: a connection that starts
/// with [`crate::cluster::PREAMBLE`] carries cluster RPCs and goes to
/// `cluster`; one that starts with [`crate::listener::PREAMBLE`] is a
/// client session a listener forwards, and goes to `sessions` (the node's
/// front end); any other is a primary's replication stream.
pub async fn serve_endpoint(
    listener: TcpListener,
    admission: Arc<dyn Admission>,
    cluster: Option<crate::cluster::RpcServer>,
    sessions: Option<SessionHandoff>,
) {
    loop {
        match listener.accept().await {
            Ok((socket, peer)) => {
                let admission = admission.clone();
                let cluster = cluster.clone();
                let sessions = sessions.clone();
                tokio::spawn(async move {
                    let admitted = crate::net::tls_generation();
                    let Some(mut socket) = crate::net::accept(socket, peer).await else {
                        return;
                    };
                    let mut first = [0u8; 4];
                    let read = tokio::time::timeout(
                        crate::net::HANDSHAKE_TIMEOUT,
                        tokio::io::AsyncReadExt::read_exact(&mut socket, &mut first),
                    )
                    .await;
                    if !matches!(read, Ok(Ok(_))) {
                        return;
                    }
                    if first == *crate::listener::PREAMBLE {
                        match sessions {
                            Some(handoff) => handoff(socket, peer),
                            None => {
                                tracing::warn!(%peer, "a listener session reached an endpoint that takes none (a node without a password takes them on loopback endpoints only)")
                            }
                        }
                        return;
                    }
                    let is_cluster = first == *crate::cluster::PREAMBLE;
                    match (is_cluster, cluster) {
                        (true, Some(server)) => {
                            if let Err(e) =
                                crate::cluster::serve_rpc(server, socket, Some(peer), || {
                                    crate::net::tls_generation() == admitted
                                })
                                .await
                            {
                                tracing::debug!(%peer, "cluster connection ended: {e}");
                            }
                        }
                        (true, None) => {
                            tracing::warn!(%peer, "a cluster RPC reached a node outside any cluster");
                        }
                        (false, _) => {
                            if let Err(reason) = serve_primary(socket, &first, admission).await {
                                tracing::info!(%peer, "replication connection closed: {reason}");
                            }
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "endpoint accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Who makes a received batch durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hardening {
    /// The database's harden thread (woken at once).
    ByThread,
    /// The caller, with [`SecondaryDb::harden_written`], when a batch was
    /// appended on its worker.
    ByCaller,
}

/// A batch taken in by [`SecondaryDb::receive`].
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// The log's new end.
    pub end: Lsn,
    /// The batch's size in bytes.
    pub bytes: usize,
    /// The caller must harden it ([`SecondaryDb::harden_written`]) or hand
    /// it to the harden thread ([`SecondaryDb::wake_harden`]).
    pub caller_hardens: bool,
}

/// A secondary database: its log, its redo task's progress.
pub struct SecondaryDb {
    db: Arc<Database>,
    hardened: watch::Sender<Lsn>,
    redone: watch::Sender<Lsn>,
    /// What read-your-writes may count on: redone records known to be the
    /// current primary's (see [`SecondaryDb::watch_readable`]).
    readable: watch::Sender<Lsn>,
    /// The local log up to here is the connected primary's: checked by its
    /// divergence check at the handshake, or received from it since. 0
    /// while no primary vouches for it (not connected, a rewind pending).
    confirmed: std::sync::atomic::AtomicU64,
    /// The log restarted at a full image whose last part is not redone
    /// yet: the file is old or part old, whatever the redone LSN says.
    image_pending: std::sync::atomic::AtomicBool,
    /// The batch check's state: the newest epoch in the local log (epochs
    /// never go down along a log) and a pending `Rewind`.
    intake: Mutex<Intake>,
    /// Last redo error, for views.
    last_error: Mutex<Option<String>>,
    /// Commit time of the last record redone (µs since the Unix epoch).
    last_redone_commit_us: AtomicI64,
    /// Everything before this LSN is written to the local log (maybe not
    /// yet durable).
    written: watch::Sender<Lsn>,
    /// Pages of the full image being received (0: none in progress).
    image_pages: std::sync::atomic::AtomicU64,
    /// Pages of that image in all.
    image_total: std::sync::atomic::AtomicU64,
    /// Where the newest full image taken in starts.
    images: watch::Sender<Option<Lsn>>,
    /// Pinged after `hardened` or `redone` moves: the signal the link
    /// reports on, one for every database of its group.
    moved: watch::Sender<()>,
    /// Records the intake decoded and appended, for redo to take without
    /// reading and decoding them again.
    decoded: Mutex<Decoded>,
    /// Data movement suspended from this side (`SET HADR SUSPEND` run on
    /// this secondary); the primary is told at every connection.
    suspended_here: std::sync::atomic::AtomicBool,
    /// Data movement suspended by automatic page repair, and why: a page of
    /// this copy is damaged and no partner gave a good copy of it. Lifted
    /// when the page is repaired (or by `SET HADR RESUME`).
    suspended_for_page: Mutex<Option<String>>,
}

impl SecondaryDb {
    /// Takes `db`'s log in from a primary: starts its harden and redo tasks
    /// (until `stop`). Where it starts comes from the database and its log,
    /// not from an earlier intake's bookkeeping: records hardened but not
    /// yet redone (an intake restarted by a definition change or a new
    /// primary while redo ran behind) are redone from the file's applied
    /// LSN on, and records written but not yet durable are hardened by the
    /// harden task before they count. `moved` is pinged whenever the
    /// hardened or redone LSN moves.
    pub fn start(
        db: Arc<Database>,
        stop: watch::Receiver<bool>,
        moved: watch::Sender<()>,
    ) -> Arc<SecondaryDb> {
        let end = db.log().end_lsn();
        let durable = db.log().durable_lsn().min(end);
        let applied = db.applied_lsn().max(db.log().first_lsn());
        let newest_epoch = db.epoch_history().last().map_or(0, |(e, _)| *e);
        let sdb = Arc::new(SecondaryDb {
            hardened: watch::channel(durable).0,
            redone: watch::channel(applied).0,
            readable: watch::channel(0).0,
            confirmed: std::sync::atomic::AtomicU64::new(0),
            image_pending: std::sync::atomic::AtomicBool::new(db.log().image_pending().is_some()),
            intake: Mutex::new(Intake {
                epoch: newest_epoch,
                rewind_to: None,
            }),
            last_error: Mutex::new(None),
            last_redone_commit_us: AtomicI64::new(0),
            written: watch::channel(end).0,
            image_pages: std::sync::atomic::AtomicU64::new(0),
            image_total: std::sync::atomic::AtomicU64::new(0),
            images: watch::channel(None).0,
            moved,
            decoded: Mutex::new(Decoded::default()),
            suspended_here: std::sync::atomic::AtomicBool::new(false),
            suspended_for_page: Mutex::new(None),
            db,
        });
        tokio::spawn(redo_task(sdb.clone(), stop.clone()));
        let hardening = sdb.clone();
        std::thread::Builder::new()
            .name("availdb-harden".into())
            .spawn(move || harden(hardening, stop))
            .expect("cannot start a thread to harden a secondary's log");
        sdb
    }

    /// Where this copy's log stands, for `Welcome`.
    pub fn position(&self) -> DatabasePosition {
        DatabasePosition {
            database: self.db.name().to_string(),
            epoch: self.intake().epoch,
            end_lsn: self.hardened(),
            redone_lsn: self.redone(),
            epoch_history: self.db.epoch_history(),
            last_record: self.db.log().last_record(),
        }
    }

    /// Makes everything in the local log durable, so the position sent to a
    /// primary covers every record this node holds: a record beyond the
    /// reported end (a former primary's last commit, appended as it
    /// stepped down) would otherwise escape the divergence check.
    pub async fn harden_everything(&self) -> Result<(), ReplicationError> {
        let end = self.db.log().end_lsn();
        self.db
            .log()
            .wait_durable(end)
            .await
            .map_err(ReplicationError::local)?;
        for lsn in [&self.written, &self.hardened] {
            lsn.send_if_modified(|h| {
                let moved = *h < end;
                *h = (*h).max(end);
                moved
            });
        }
        Ok(())
    }

    /// The primary announced a rewind: the next record is a full image at
    /// `lsn`, and the log restarts there.
    pub fn expect_image_at(&self, lsn: Lsn) {
        self.intake
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rewind_to = Some(lsn);
    }

    /// Follows the hardened LSN.
    pub fn watch_hardened(&self) -> watch::Receiver<Lsn> {
        self.hardened.subscribe()
    }

    /// Follows where the newest full image taken in starts.
    pub fn watch_images(&self) -> watch::Receiver<Option<Lsn>> {
        self.images.subscribe()
    }

    /// While a full image arrives: pages received so far, of how many.
    pub fn image_progress(&self) -> Option<(u64, u64)> {
        let pages = self.image_pages.load(Ordering::Relaxed);
        (pages > 0).then(|| (pages, self.image_total.load(Ordering::Relaxed)))
    }

    /// Checks and appends a batch of records (see [`IntakeGate`]); returns
    /// the log's new end. A batch of at most [`INLINE_BATCH_BYTES`] is
    /// appended on the calling task's own worker, a larger one on a
    /// blocking thread.
    ///
    /// With [`Hardening::ByCaller`] the harden thread is not woken for a
    /// batch appended on the caller's worker: the caller hardens it with
    /// [`SecondaryDb::harden_written`] (or hands it to the thread with
    /// [`SecondaryDb::wake_harden`]). A batch appended on a blocking thread
    /// always goes to the harden thread.
    pub async fn receive(
        self: &Arc<Self>,
        raw: Vec<Bytes>,
        link_epoch: u64,
        gate: &IntakeGate,
        hardening: Hardening,
    ) -> Result<Received, ReplicationError> {
        let database = self.db.name().to_string();
        if gate.is_closed() {
            return Err(ReplicationError::IntakeClosed);
        }
        let bytes: usize = raw.iter().map(Bytes::len).sum();
        let records = decode_all(&database, raw)?;
        let sdb = self.clone();
        let gate = gate.clone();
        let inline = bytes <= INLINE_BATCH_BYTES && crate::runtime::multi_thread();
        let by_caller = inline && hardening == Hardening::ByCaller;
        let append = move || {
            let _intake = sdb.db.intake();
            if gate.is_closed() {
                return Err(ReplicationError::IntakeClosed);
            }
            // Checked under the intake lock: once the floor is raised, no
            // batch of an older primary is appended (issue 9 cause 10).
            let newest = *gate.floor.borrow();
            if link_epoch < newest {
                return Err(ReplicationError::Superseded {
                    epoch: link_epoch,
                    newest,
                });
            }
            accept_batch(&sdb, &database, records, !by_caller)
        };
        // A small batch (a few commits) is appended here: writes into the
        // page cache, shorter than the hop to a blocking thread and back.
        let end = if inline {
            append()?
        } else {
            tokio::task::spawn_blocking(append)
                .await
                .map_err(ReplicationError::local)??
        };
        Ok(Received {
            end,
            bytes,
            caller_hardens: by_caller,
        })
    }

    /// Makes everything written to the local log durable on the calling
    /// task's worker (one fsync, shared with any other waiter by the log's
    /// group commit) and publishes the hardened LSN; returns it. The link
    /// hardens so what it appended when no more records are waiting to be
    /// read: the acknowledgement then goes out with no hop to the harden
    /// thread and back.
    pub async fn harden_written(&self) -> Result<Lsn, ReplicationError> {
        let target = *self.written.borrow();
        if target > self.hardened() {
            self.db
                .log()
                .wait_durable_here(target)
                .await
                .map_err(ReplicationError::local)?;
            self.publish_hardened(target);
        }
        Ok(self.hardened())
    }

    /// Hands whatever is written and not hardened to the harden thread.
    pub fn wake_harden(&self) {
        self.written.send_modify(|_| {});
    }

    /// Hardens and redoes everything the log holds (the intake must be
    /// closed already, so the log's end no longer moves), within
    /// `deadline`: the file and the log then agree, ready for this node to
    /// write on top of them.
    ///
    /// Refused while the log restarted at a full image (seeding, rewind)
    /// whose last part is not redone: the file is then part old, part new.
    /// That is the log's `image-pending`, which survives a restart of the
    /// intake or of the node. A full image that merely passes through a
    /// caught-up log (the primary appended it to seed or rewind another
    /// replica) is no reason: its pages are this file's own at its LSN.
    pub async fn drain(&self, deadline: Instant) -> Result<(), String> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || drop(db.intake()))
            .await
            .map_err(|e| e.to_string())?;
        let seeding = || {
            format!(
                "database \"{}\" is being seeded: its copy here is incomplete until the full image has arrived",
                self.db.name()
            )
        };
        if self.image_pages.load(Ordering::Relaxed) > 0 && self.db.log().image_pending().is_some() {
            return Err(seeding());
        }
        // Parts of a transaction whose last part never came are cut when
        // the database becomes writable.
        let log_end = self.db.log().end_lsn();
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(left, self.db.log().wait_durable(log_end))
            .await
            .map_err(|_| {
                format!(
                    "database \"{}\": the log did not become durable in time",
                    self.db.name()
                )
            })?
            .map_err(|e| e.to_string())?;
        self.publish_hardened(log_end);
        let log = self.db.log().clone();
        let applied = self.db.applied_lsn();
        let end = tokio::task::spawn_blocking(move || whole_end(&log, applied))
            .await
            .map_err(|e| e.to_string())??;
        let mut redone = self.redone.subscribe();
        while self.db.applied_lsn() < end {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "database \"{}\" has not redone LSN {}..{end} yet",
                    self.db.name(),
                    self.db.applied_lsn(),
                ));
            }
            let _ = tokio::time::timeout(left, redone.changed()).await;
        }
        // Redoing the image's last part ends `image-pending`.
        if self.db.log().image_pending().is_some() {
            return Err(seeding());
        }
        self.cut_passing_image().await
    }

    /// After a drain: a full image written for another replica may have
    /// been passing through when the intake closed (this copy, caught up
    /// before it began, was not restarted by it). Its pages redone so far
    /// are the file as it already was at the image's start, so the log is
    /// cut back to that start: a new primary must not keep half an image in
    /// its log, which a replica seeded from it would take for a whole one.
    async fn cut_passing_image(&self) -> Result<(), String> {
        if self.image_pages.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let Some(start) = *self.images.borrow() else {
            return Ok(());
        };
        // The intake is closed: nothing is kept from here on, and redo
        // reads whatever it redoes from the log, cut or not.
        self.decoded().clear();
        let db = self.db.clone();
        let cut = tokio::task::spawn_blocking(move || -> Result<bool, String> {
            // Only a log that ends inside an image holds half of one: an
            // image whose stream was abandoned (its primary failed over
            // and the new one cut it) is gone from this log already.
            let ends_inside_image = match db.log().last_record() {
                None => false,
                Some((lsn, _)) => db
                    .log()
                    .read_from(lsn)
                    .map_err(|e| e.to_string())?
                    .last()
                    .is_some_and(|r| r.image_continues()),
            };
            if !ends_inside_image {
                return Ok(false);
            }
            let dir = db.log_dir().to_path_buf();
            // The file held at the checkpoint what it held at `start`.
            if crate::log::read_checkpoint(&dir).map_err(|e| e.to_string())? > start {
                crate::log::write_checkpoint(&dir, start).map_err(|e| e.to_string())?;
            }
            db.log().truncate_from(start).map_err(|e| {
                format!(
                    "database \"{}\": cannot cut the unfinished full image at LSN {start} from the log: {e}",
                    db.name()
                )
            })?;
            Ok(true)
        })
        .await
        .map_err(|e| e.to_string())??;
        if !cut {
            self.image_pages.store(0, Ordering::Relaxed);
            return Ok(());
        }
        self.db.set_applied_lsn(start);
        for watch in [&self.written, &self.hardened, &self.redone] {
            watch.send_replace(start);
        }
        self.moved.send_replace(());
        self.image_pages.store(0, Ordering::Relaxed);
        tracing::info!(database = %self.db.name(), lsn = start, "cut an unfinished full image (written for another replica) from the log before taking over");
        Ok(())
    }

    fn intake(&self) -> Intake {
        *self.intake.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn decoded(&self) -> std::sync::MutexGuard<'_, Decoded> {
        self.decoded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Everything before `lsn` is durable here: moves the hardened LSN
    /// (never back) and pings `moved`.
    fn publish_hardened(&self, lsn: Lsn) {
        let moved = self.hardened.send_if_modified(|h| {
            let moved = *h < lsn;
            *h = (*h).max(lsn);
            moved
        });
        if moved {
            self.moved.send_replace(());
        }
    }

    /// The file holds everything before `lsn` (redo went on, or the file
    /// was moved under it): sets the redone LSN and pings `moved`.
    fn publish_redone(&self, lsn: Lsn) {
        self.redone.send_replace(lsn);
        self.moved.send_replace(());
    }

    /// Everything before this LSN is in the local log, durably.
    pub fn hardened(&self) -> Lsn {
        *self.hardened.borrow()
    }

    /// Everything before this LSN is redone into the file.
    pub fn redone(&self) -> Lsn {
        *self.redone.borrow()
    }

    /// Follows [`SecondaryDb::redone`].
    pub fn watch_redone(&self) -> watch::Receiver<Lsn> {
        self.redone.subscribe()
    }

    /// Follows the LSN read-your-writes waits for: the redone LSN, but only
    /// as far as the connected primary vouches for the local log, and 0
    /// while a restarted log's image is not wholly redone. A token is an
    /// LSN of the primary's log; records at that LSN here that a former
    /// primary wrote (a tail not yet rewound) or an old file under a new
    /// image must not pass for it.
    pub fn watch_readable(&self) -> watch::Receiver<Lsn> {
        self.readable.subscribe()
    }

    /// Recomputes [`SecondaryDb::watch_readable`]'s LSN.
    fn publish_readable(&self) {
        let lsn = if self.image_pending.load(Ordering::SeqCst) {
            0
        } else {
            self.redone().min(self.confirmed.load(Ordering::SeqCst))
        };
        self.readable.send_if_modified(|r| {
            let changed = *r != lsn;
            *r = lsn;
            changed
        });
    }

    /// The connected primary vouches for the local log up to `lsn` (None:
    /// no primary does).
    fn confirm(&self, lsn: Option<Lsn>) {
        match lsn {
            Some(lsn) => self.confirmed.fetch_max(lsn, Ordering::SeqCst),
            None => self.confirmed.swap(0, Ordering::SeqCst),
        };
        self.publish_readable();
    }

    /// The database.
    pub fn database(&self) -> &Arc<Database> {
        &self.db
    }

    /// Commit time of the last record redone here, if any.
    pub fn last_redone_commit_us(&self) -> Option<i64> {
        Some(self.last_redone_commit_us.load(Ordering::Relaxed)).filter(|t| *t != 0)
    }

    /// True while data movement is suspended from this side (by a user or
    /// by automatic page repair).
    pub fn is_suspended_here(&self) -> bool {
        self.suspend_reason().is_some()
    }

    /// Why data movement is suspended from this side, if it is: a user's
    /// `SET HADR SUSPEND` first.
    pub fn suspend_reason(&self) -> Option<SuspendReason> {
        if self.suspended_here.load(Ordering::SeqCst) {
            Some(SuspendReason::User)
        } else if self.page_suspension().is_some() {
            Some(SuspendReason::Redo)
        } else {
            None
        }
    }

    /// The page that automatic page repair could not get, and why, while it
    /// keeps data movement suspended.
    pub fn page_suspension(&self) -> Option<String> {
        self.suspended_for_page
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Last redo failure, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Why data movement of a secondary database is suspended, as SQL Server's
/// `suspend_reason_desc` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuspendReason {
    /// `ALTER DATABASE … SET HADR SUSPEND` (here, or on the primary).
    User,
    /// The secondary suspended it itself: a page of its copy is damaged and
    /// automatic page repair could not get a good copy.
    Redo,
    /// The secondary asked (seen from the primary).
    Partner,
}

impl SuspendReason {
    /// The name `sys.dm_hadr_database_replica_states` shows.
    pub fn desc(self) -> &'static str {
        match self {
            SuspendReason::User => "SUSPEND_FROM_USER",
            SuspendReason::Redo => "SUSPEND_FROM_REDO",
            SuspendReason::Partner => "SUSPEND_FROM_PARTNER",
        }
    }
}

/// Whether an intake still takes records, and from which epoch on: shared
/// by the connection tasks that feed it and whoever closes it.
#[derive(Clone)]
pub struct IntakeGate {
    /// Set when no more records are taken (a promotion drains the intake).
    pub closed: Arc<std::sync::atomic::AtomicBool>,
    /// True once the intake's owner stopped.
    pub stop: watch::Receiver<bool>,
    /// No primary of an older epoch may ship here.
    pub floor: watch::Receiver<u64>,
}

impl IntakeGate {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst) || *self.stop.borrow()
    }
}

/// The secondary's replication state for one group.
pub struct SecondaryGroup {
    config: Mutex<GroupConfig>,
    databases: HashMap<String, Arc<SecondaryDb>>,
    connected: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    /// Set when the group takes no more records (it is being drained to
    /// become primary); redo still runs until `stop`. Shared with the
    /// blocking intake of each batch.
    closed_flag: Arc<std::sync::atomic::AtomicBool>,
    /// No primary of an older epoch may ship here: raised when this node
    /// learns of a newer epoch (from the cluster, or a newer primary's
    /// Hello); a connection of an older epoch ends at its next batch.
    epoch_floor: watch::Sender<u64>,
    /// Suspensions and resumptions made here, for the primary's connection
    /// to pass on.
    announce: tokio::sync::mpsc::UnboundedSender<(String, bool)>,
    announcements: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<(String, bool)>>,
    /// Databases the primary does not send here until a restore joins
    /// them (SEEDING_MODE = MANUAL), with its reason.
    awaiting_restore: Mutex<HashMap<String, String>>,
    /// Set once a primary's handshake is over (its Rewinds and
    /// AwaitsRestores sent): every database it did not refuse is streamed.
    handshaken: watch::Sender<bool>,
    /// Pinged when a database's hardened or redone LSN moves: what the
    /// link reports on.
    moved: watch::Sender<()>,
}

impl SecondaryGroup {
    /// Makes `databases` secondaries of the group and starts their redo.
    pub fn start(config: GroupConfig, databases: Vec<Arc<Database>>) -> Arc<SecondaryGroup> {
        let stop = watch::channel(false).0;
        let moved = watch::channel(()).0;
        let mut map = HashMap::new();
        for db in databases {
            // A secondary's fence has no epoch: this cannot fail.
            let _ = db.set_fence(Fence::Secondary {
                group: config.name.clone(),
                primary: config.primary.clone(),
            });
            let sdb = SecondaryDb::start(db, stop.subscribe(), moved.clone());
            map.insert(sdb.db.name().to_string(), sdb);
        }
        let (announce, announcements) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(SecondaryGroup {
            config: Mutex::new(config),
            databases: map,
            connected: watch::channel(false).0,
            stop,
            closed_flag: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            epoch_floor: watch::channel(0).0,
            announce,
            announcements: tokio::sync::Mutex::new(announcements),
            awaiting_restore: Mutex::new(HashMap::new()),
            handshaken: watch::channel(false).0,
            moved,
        })
    }

    /// Why the primary sends nothing of `database` here, when it said so
    /// (SEEDING_MODE = MANUAL: restore it here, then join it).
    pub fn awaiting_restore(&self, database: &str) -> Option<String> {
        self.awaiting_restore
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(database)
            .cloned()
    }

    /// Turns true once a primary finished its handshake with this group.
    pub fn handshaken(&self) -> watch::Receiver<bool> {
        self.handshaken.subscribe()
    }

    /// Whether `database` is one of the group's databases here.
    pub fn has_database(&self, database: &str) -> bool {
        self.databases.contains_key(database)
    }

    /// The group's definition as last received.
    pub fn config(&self) -> GroupConfig {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Takes a newer definition of the same shape (same primary, epoch and
    /// databases) without restarting.
    pub fn set_config(&self, config: GroupConfig) {
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// No primary of an epoch below `epoch` may ship here any more.
    pub fn raise_epoch_floor(&self, epoch: u64) {
        self.epoch_floor.send_if_modified(|floor| {
            let raised = epoch > *floor;
            *floor = (*floor).max(epoch);
            raised
        });
    }

    /// True while a primary is connected.
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// The group's databases here.
    pub fn databases(&self) -> Vec<Arc<SecondaryDb>> {
        let mut out: Vec<_> = self.databases.values().cloned().collect();
        out.sort_by(|a, b| a.db.name().cmp(b.db.name()));
        out
    }

    /// Suspends or resumes data movement of `database` from this side: the
    /// primary is told (now if connected, else when it next connects) and
    /// stops sending it, after taking this replica out of the synchronized
    /// set. Not kept across a restart of this node.
    ///
    /// Resuming also lifts a suspension by automatic page repair, as SQL
    /// Server's `RESUME` does: data moves again, and a page still damaged
    /// suspends it again at the repair's next attempt.
    pub fn set_suspended_here(&self, database: &str, suspended: bool) -> Result<(), String> {
        let sdb = self
            .databases
            .get(database)
            .ok_or_else(|| format!("database \"{database}\" is not in this group here"))?;
        sdb.suspended_here.store(suspended, Ordering::SeqCst);
        if !suspended {
            *sdb.suspended_for_page
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = None;
        }
        let _ = self.announce.send((database.to_string(), suspended));
        Ok(())
    }

    /// Suspends data movement of `database` because automatic page repair
    /// could not get a page of it (`Some(why)`), or lifts that suspension
    /// (`None`: the page was repaired). The primary is told as for
    /// [`SecondaryGroup::set_suspended_here`] when the database's state
    /// changes; a user's suspension stays as it is.
    pub fn suspend_for_page(&self, database: &str, why: Option<String>) -> Result<(), String> {
        let sdb = self
            .databases
            .get(database)
            .ok_or_else(|| format!("database \"{database}\" is not in this group here"))?;
        let before = sdb.is_suspended_here();
        *sdb.suspended_for_page
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = why;
        let after = sdb.is_suspended_here();
        if before != after {
            let _ = self.announce.send((database.to_string(), after));
        }
        Ok(())
    }

    /// Stops redo (the group is dropped or reconfigured).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Waits (bounded) until every hardened record is redone, then stops
    /// redo: the databases then hold everything this node received, ready
    /// to become writable here.
    /// On failure the group takes records again, as before.
    pub async fn drain_and_stop(&self, within: Duration) -> Result<(), String> {
        let drained = self.drain(within).await;
        match &drained {
            Ok(()) => self.stop(),
            Err(_) => self.closed_flag.store(false, Ordering::SeqCst),
        }
        drained
    }

    async fn drain(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        // First take no more records, so "everything received" stops moving:
        // once the intake lock has been held after `closed` was set, no batch
        // is in flight (a batch checks `closed` under that lock).
        self.closed_flag.store(true, Ordering::SeqCst);
        for sdb in self.databases() {
            sdb.drain(deadline).await?;
        }
        Ok(())
    }

    /// Makes everything in every local log durable (see
    /// [`SecondaryDb::harden_everything`]).
    async fn harden_everything(&self) -> Result<(), ReplicationError> {
        for sdb in self.databases() {
            sdb.harden_everything().await?;
        }
        Ok(())
    }

    fn positions(&self) -> Vec<DatabasePosition> {
        self.databases().iter().map(|s| s.position()).collect()
    }

    fn gate(&self) -> IntakeGate {
        IntakeGate {
            closed: self.closed_flag.clone(),
            stop: self.stop.subscribe(),
            floor: self.epoch_floor.subscribe(),
        }
    }

    /// Hardens a batch of records of one database; returns the new end.
    ///
    /// The whole batch is checked and appended under the database's intake
    /// lock, after checking there that the group still takes records: a
    /// promotion that closed the intake and then took the lock knows that no
    /// batch is in flight and that the log's end no longer moves.
    async fn receive(
        &self,
        database: &str,
        raw: Vec<Bytes>,
        link_epoch: u64,
        hardening: Hardening,
    ) -> Result<Received, ReplicationError> {
        self.database(database)?
            .receive(raw, link_epoch, &self.gate(), hardening)
            .await
    }

    fn database(&self, name: &str) -> Result<&Arc<SecondaryDb>, ReplicationError> {
        self.databases
            .get(name)
            .ok_or_else(|| ReplicationError::UnknownDatabase(name.to_string()))
    }
}

/// Checks a decoded batch against the local log and appends it (the
/// caller holds the intake lock). Hardening (fsync) happens in the
/// database's harden task, so the connection goes on reading while one
/// fsync covers many batches.
fn accept_batch(
    sdb: &SecondaryDb,
    database: &str,
    arrived: Vec<Arrived>,
    wake_harden: bool,
) -> Result<Lsn, ReplicationError> {
    let log = sdb.db.log();
    let intake = sdb.intake();
    let (records, mut encodings): (Vec<Record>, Vec<(Lsn, Bytes)>) = arrived
        .into_iter()
        .map(|a| {
            let lsn = a.record.lsn;
            (a.record, (lsn, a.encoded))
        })
        .unzip();
    let plan = check_batch(intake, &LogView(log), database, records)?;
    if plan.append.is_empty() {
        return Ok(log.end_lsn());
    }
    report_image_progress(sdb, database, &plan.append);
    // The history's newest epoch, read from its file only when a record
    // of an epoch newer than the log's newest arrives: the history always
    // holds the epoch of every record in the log (it is written first).
    let mut history_epoch: Option<u64> = None;
    if let Some((lsn, epoch)) = plan.restart {
        tracing::info!(database, lsn, "restarting the log from a full image");
        sdb.image_pending.store(true, Ordering::SeqCst);
        sdb.publish_readable();
        sdb.decoded().clear();
        sdb.db
            .restart_log_at(lsn, epoch)
            .map_err(ReplicationError::Local)?;
        history_epoch = Some(epoch);
        sdb.hardened.send_replace(lsn);
        sdb.publish_redone(lsn);
        sdb.written.send_replace(lsn);
    }
    // Where the last record appended ends.
    let mut end = log.end_lsn();
    let mut appended = Vec::with_capacity(plan.append.len());
    for record in plan.append {
        // Where a new epoch starts goes into the history first.
        if record.epoch > history_epoch.unwrap_or(intake.epoch) {
            let newest = match history_epoch {
                Some(epoch) => epoch,
                None => sdb.db.epoch_history().last().map_or(0, |(e, _)| *e),
            };
            if record.epoch > newest {
                log::append_history(sdb.db.log_dir(), record.epoch, record.lsn)
                    .map_err(ReplicationError::local)?;
            }
            history_epoch = Some(newest.max(record.epoch));
        }
        // The plan takes the batch's records unchanged, in LSN order,
        // leaving out those the log holds already: a record's bytes are
        // found by its LSN.
        let at = encodings.partition_point(|(lsn, _)| *lsn < record.lsn);
        end = match encodings.get_mut(at).filter(|(lsn, _)| *lsn == record.lsn) {
            Some((_, encoded)) => log.append_encoded(&record, std::mem::take(encoded)),
            None => log.append_at(&record),
        }
        .map_err(ReplicationError::local)?;
        appended.push((record, end));
    }
    *sdb.intake.lock().unwrap_or_else(|e| e.into_inner()) = plan.intake;
    sdb.decoded().keep(appended);
    // Unannounced, the harden thread sees the new end the next time it
    // looks; the caller hardens it meanwhile.
    sdb.written.send_if_modified(|w| {
        *w = end;
        wake_harden
    });
    // Sent by the connected primary, contiguous with a log it checked.
    sdb.confirm(Some(end));
    Ok(end)
}

/// The local log as the batch check sees it.
struct LogView<'a>(&'a crate::log::Log);

impl LocalLog for LogView<'_> {
    fn first(&self) -> Lsn {
        self.0.first_lsn()
    }

    fn end(&self) -> Lsn {
        self.0.end_lsn()
    }

    fn same(&self, record: &Record) -> Result<Option<u64>, ReplicationError> {
        let local = self.0.read_some(record.lsn, 1).map_err(|e| {
            ReplicationError::Local(format!(
                "cannot read the local log at LSN {}: {e}",
                record.lsn
            ))
        })?;
        Ok(local
            .first()
            .filter(|ours| *ours == record)
            .map(|r| r.epoch))
    }
}

/// Seeding progress: pages of a full image received so far.
fn report_image_progress(sdb: &SecondaryDb, database: &str, accepted: &[Record]) {
    for record in accepted {
        if record.starts_image() {
            sdb.image_pages.store(0, Ordering::Relaxed);
            sdb.image_total
                .store(u64::from(record.db_size), Ordering::Relaxed);
            sdb.images.send_replace(Some(record.lsn));
            tracing::info!(
                database,
                lsn = record.lsn,
                "taking in a full image of {} pages",
                record.db_size
            );
        }
        if record.starts_image() || sdb.image_pages.load(Ordering::Relaxed) > 0 {
            let so_far = sdb
                .image_pages
                .fetch_add(record.pages.len() as u64, Ordering::Relaxed)
                + record.pages.len() as u64;
            tracing::info!(
                database,
                "receiving a full image: {so_far} of {} pages ({}%)",
                record.db_size,
                so_far * 100 / u64::from(record.db_size.max(1))
            );
            if !record.image_continues() {
                sdb.image_pages.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// A record as it arrived: decoded, and the bytes it was decoded from
/// (what the log appends: [`crate::log::Log::append_encoded`]).
struct Arrived {
    record: Record,
    encoded: Bytes,
}

/// Decodes received records, each kept with the bytes it came in.
fn decode_all(database: &str, raw: Vec<Bytes>) -> Result<Vec<Arrived>, ReplicationError> {
    let corrupt = |cause: String| ReplicationError::Corrupt {
        database: database.to_string(),
        cause,
    };
    raw.into_iter()
        .map(|bytes| match Record::decode(&bytes) {
            Ok((record, len)) if len == bytes.len() => Ok(Arrived {
                record,
                encoded: bytes,
            }),
            Ok((record, _)) => Err(corrupt(format!(
                "the record at LSN {} has trailing bytes",
                record.lsn
            ))),
            Err(e) => Err(corrupt(e.to_string())),
        })
        .collect()
}

/// One primary's connection, from Hello to close.
async fn serve_primary(
    socket: PartnerStream,
    first: &[u8],
    admission: Arc<dyn Admission>,
) -> Result<(), ReplicationError> {
    // The endpoint read the frame's first bytes to tell the protocols
    // apart: they are the start of the first frame.
    let mut parts = tokio_util::codec::FramedParts::new::<Message>(socket, WireCodec);
    parts.read_buf.extend_from_slice(first);
    let mut conn = Framed::from_parts(parts);
    let hello = next_message(&mut conn, Duration::from_secs(10)).await?;
    if let Message::GeoHello {
        from_server,
        cluster_id,
        source_database,
        database,
        epoch,
        create,
        readable,
        read_only,
        succeeds,
    } = hello
    {
        let request = super::geo::GeoRequest {
            from_server,
            cluster_id,
            source_database,
            database,
            epoch,
            create,
            readable,
            read_only,
            succeeds,
        };
        let forwarder = match admission.clone().geo_forwarder(&request).await {
            Ok(f) => f,
            Err(reason) => return refuse(&mut conn, reason).await,
        };
        let result =
            super::geo::serve_source(&mut conn, forwarder, admission, &request.from_server, epoch)
                .await;
        if let Err(reason) = &result {
            let _ = send(
                &mut conn,
                Message::Refuse {
                    reason: reason.to_string(),
                },
            )
            .await;
        }
        return result;
    }
    if let Message::PageRequest {
        cluster_id,
        group,
        database,
        pgno,
        at_lsn,
    } = hello
    {
        let request = crate::repair::PageRequest {
            cluster_id,
            group,
            database,
            pgno,
            at_lsn,
        };
        let answer = match admission.page_for_partner(&request).await {
            Ok((lsn, image)) => Message::PageAnswer {
                database: request.database,
                pgno,
                lsn,
                image: Some(image),
                reason: String::new(),
            },
            Err(reason) => Message::PageAnswer {
                database: request.database,
                pgno,
                lsn: 0,
                image: None,
                reason,
            },
        };
        return send(&mut conn, answer).await;
    }
    if let Message::PageSumsRequest {
        cluster_id,
        group,
        database,
        from_pgno,
        count,
        at_lsn,
    } = hello
    {
        let request = crate::repair::SumsRequest {
            cluster_id,
            group,
            database,
            from_pgno,
            count,
            at_lsn,
        };
        let (lsn, sums, reason) = match admission.page_sums_for_partner(&request).await {
            Ok((lsn, sums)) => (lsn, sums, String::new()),
            Err(reason) => (0, Vec::new(), reason),
        };
        let answer = Message::PageSums {
            database: request.database,
            lsn,
            sums,
            reason,
        };
        return send(&mut conn, answer).await;
    }
    let Message::Hello {
        cluster_id,
        group,
        from_replica,
        to_replica,
        epoch,
    } = hello
    else {
        return refuse(&mut conn, "the first message must be Hello".into()).await;
    };
    if let Err(reason) = admission.check_hello(&cluster_id, &group, &to_replica, epoch) {
        return refuse(&mut conn, reason).await;
    }
    let Message::Config { config, .. } = next_message(&mut conn, Duration::from_secs(10)).await?
    else {
        return refuse(
            &mut conn,
            "expected the group definition (Config) after Hello".into(),
        )
        .await;
    };
    let config = match GroupConfig::from_bytes(&config) {
        Ok(c) if c.cluster_id == cluster_id && c.name.eq_ignore_ascii_case(&group) => c,
        Ok(_) => {
            return refuse(
                &mut conn,
                "the group definition does not match Hello".into(),
            )
            .await
        }
        Err(e) => return refuse(&mut conn, e.to_string()).await,
    };
    let timeout = Duration::from_secs(
        config
            .replica(&to_replica)
            .map_or(10, |r| r.session_timeout_s.max(1) as u64),
    );
    let group = match admission.accept_config(config).await {
        Ok(g) => g,
        Err(reason) => return refuse(&mut conn, reason).await,
    };
    let newest = *group.epoch_floor.borrow();
    if epoch < newest {
        let superseded = ReplicationError::Superseded { epoch, newest };
        return refuse(&mut conn, superseded.to_string()).await;
    }
    group.raise_epoch_floor(epoch);
    if let Err(e) = group.harden_everything().await {
        return refuse(&mut conn, format!("cannot harden the local log: {e}")).await;
    }
    send(
        &mut conn,
        Message::Welcome {
            replica: to_replica.clone(),
            databases: group.positions(),
        },
    )
    .await?;
    group.connected.send_replace(true);
    tracing::info!(primary = %from_replica, group = %group.config().name, "primary connected");
    // Until this primary's handshake is over, nobody vouches for the logs.
    for sdb in group.databases() {
        sdb.confirm(None);
    }
    let result = stream_from(&mut conn, &group, &admission, epoch, timeout).await;
    group.connected.send_replace(false);
    for sdb in group.databases() {
        sdb.confirm(None);
    }
    if let Err(reason) = &result {
        let _ = send(
            &mut conn,
            Message::Refuse {
                reason: reason.to_string(),
            },
        )
        .await;
    }
    result
}

async fn stream_from(
    conn: &mut Framed<PartnerStream, WireCodec>,
    group: &Arc<SecondaryGroup>,
    admission: &Arc<dyn Admission>,
    epoch: u64,
    timeout: Duration,
) -> Result<(), ReplicationError> {
    let mut floor = group.epoch_floor.subscribe();
    // A group stopped here (dropped, or started again: a database restored
    // here joined) ends its connection; the primary reconnects to the one
    // serving now. A stop that came before this link began counts too:
    // `changed` would never see it.
    let mut stopped = group.stop.subscribe();
    if *stopped.borrow_and_update() {
        return Err(ReplicationError::IntakeClosed);
    }
    // Hardened and redone LSNs moved from here on, reported as Progress.
    let mut moved = group.moved.subscribe();
    // Suspensions made here hold on every connection; later changes follow.
    let mut announcements = group.announcements.lock().await;
    let mut changed = std::collections::BTreeSet::new();
    while let Ok((database, _)) = announcements.try_recv() {
        changed.insert(database);
    }
    for sdb in group.databases() {
        let database = sdb.db.name().to_string();
        let suspended = sdb.is_suspended_here();
        if suspended || changed.contains(&database) {
            send(
                conn,
                Message::DatabaseState {
                    database,
                    suspended,
                },
            )
            .await?;
        }
    }
    let board = admission.seeding_board();
    // A seed the primary is streaming here, and its row on the board.
    let mut seed: Option<(super::seed::SeedIntake, super::seed::SeedRow)> = None;
    let mut ping = tokio::time::interval(PING_INTERVAL);
    let mut last_heard = Instant::now();
    // The primary sends every Rewind of its handshake before anything
    // else: at its first other message, each log it did not rewind is a
    // prefix of its own (its divergence check said so).
    let mut vouched = false;
    // Small batches this link appended and hardens itself once nothing
    // more waits to be read; whatever is left goes to the harden threads
    // when the link ends.
    let mut unhardened = Unhardened::default();
    let mut reported = Reported::default();
    // Due when the redone LSNs not reported yet must go out: one timer,
    // set again only when a new due time comes.
    let redo_timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(redo_timer);
    let mut armed: Option<Instant> = None;
    loop {
        if reported.redo_due != armed {
            armed = reported.redo_due;
            if let Some(due) = armed {
                redo_timer.as_mut().reset(due.into());
            }
        }
        // Biased: a stop or a raised floor first; the branches that are
        // ready only now and then (progress, announcements, the ping)
        // before the next message, so a busy stream starves none of them;
        // hardening last, when no message is waiting.
        tokio::select! {
            biased;
            _ = stopped.changed() => {
                if *stopped.borrow() {
                    return Err(ReplicationError::IntakeClosed);
                }
            }
            _ = floor.changed() => {
                let newest = *floor.borrow();
                if newest > epoch {
                    return Err(ReplicationError::Superseded { epoch, newest });
                }
            }
            _ = moved.changed() => {
                moved.borrow_and_update();
                reported.send_all(conn, group, Instant::now(), false).await?;
            }
            _ = &mut redo_timer, if armed.is_some() => {
                reported.send_all(conn, group, Instant::now(), true).await?;
            }
            Some((database, suspended)) = announcements.recv() => {
                send(conn, Message::DatabaseState { database, suspended }).await?;
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > timeout {
                    return Err(ReplicationError::SessionTimeout(timeout));
                }
                send(conn, Message::Ping { sent_us: monotonic_us() }).await?;
            }
            incoming = conn.next() => {
                let message = match incoming {
                    None => return Err(ReplicationError::Closed),
                    Some(Err(e)) => return Err(ReplicationError::Wire(e.to_string())),
                    Some(Ok(m)) => m,
                };
                last_heard = Instant::now();
                // A Pong only says the primary is alive: it answers our
                // Pings while it plans where we start, within the handshake.
                let in_handshake = matches!(message, Message::Rewind { .. } | Message::Pong { .. });
                if !vouched && !in_handshake {
                    vouched = true;
                    for sdb in group.databases() {
                        if sdb.intake().rewind_to.is_none() {
                            sdb.confirm(Some(sdb.db.log().end_lsn()));
                        }
                    }
                }
                if !in_handshake && !matches!(message, Message::AwaitsRestore { .. }) {
                    // The primary sends a Ping after its handshake's
                    // Rewinds and AwaitsRestores: every refusal is known.
                    group.handshaken.send_replace(true);
                }
                match message {
                    Message::Records { database, records } => {
                        let received = group
                            .receive(&database, records, epoch, Hardening::ByCaller)
                            .await?;
                        unhardened.took(group.database(&database)?, received);
                    }
                    Message::Ping { sent_us } => send(conn, Message::Pong { echo_us: sent_us }).await?,
                    Message::Pong { .. } | Message::DatabaseState { .. } => {}
                    Message::AwaitsRestore { database, reason } => {
                        tracing::warn!(database = %database, "the primary sends nothing of this database here: {reason}");
                        if let Some(sdb) = group.databases.get(&database) {
                            *sdb.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
                        }
                        group
                            .awaiting_restore
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(database, reason);
                    }
                    Message::Seed { database, lsn, bytes } => {
                        tracing::info!(database = %database, lsn, bytes, "the primary seeds this replica's copy from a streamed backup");
                        let row = board.start(&database, &group.config().primary, "SECONDARY");
                        row.update(|r| {
                            r.backup_bytes = bytes;
                            r.lsn = lsn;
                        });
                        let intake = super::seed::SeedIntake::begin(&admission.seed_staging(), &database, lsn, bytes);
                        if let Err(e) = &intake {
                            row.finish(Err(e.to_string()));
                        }
                        seed = Some((intake?, row));
                    }
                    Message::SeedData { database, data } => {
                        let Some((intake, row)) = seed.as_mut().filter(|(i, _)| i.database == database) else {
                            return Err(ReplicationError::Unexpected {
                                expected: "Seed before its SeedData",
                                got: format!("SeedData of {database}"),
                            });
                        };
                        let whole = match intake.take(&data) {
                            Ok(whole) => whole,
                            Err(e) => {
                                row.finish(Err(e.to_string()));
                                return Err(e);
                            }
                        };
                        row.update(|r| r.transferred_bytes = intake.received);
                        if whole {
                            if let Some((intake, row)) = seed.take() {
                                row.update(|r| r.state = "RESTORING");
                                let file = intake.into_path();
                                let admission = admission.clone();
                                let group_name = group.config().name;
                                // Restored outside this loop: starting the
                                // secondary again with the copy ends it.
                                tokio::spawn(async move {
                                    let outcome = admission.seeded(&group_name, &database, file).await;
                                    if let Err(why) = &outcome {
                                        tracing::error!(database = %database, "{why}");
                                    }
                                    row.finish(outcome);
                                });
                            }
                        }
                    }
                    Message::Rewind { database, from_lsn } => {
                        let sdb = group.databases.get(&database).ok_or_else(|| {
                            ReplicationError::UnknownDatabase(database.clone())
                        })?;
                        tracing::warn!(database = %database, from_lsn, "the log here diverged from the primary's; restarting it from a full image");
                        sdb.expect_image_at(from_lsn);
                    }
                    Message::Config { config, .. } => {
                        // A definition the primary took in place: through
                        // the role machine, which keeps this group (same
                        // shape) or restarts it (then this link ends and the
                        // primary reconnects to the new one).
                        let config = GroupConfig::from_bytes(&config)
                            .map_err(|e| ReplicationError::Wire(e.to_string()))?;
                        let serving = admission
                            .accept_config(config)
                            .await
                            .map_err(ReplicationError::Refused)?;
                        if !Arc::ptr_eq(&serving, group) {
                            // The group restarted with the new definition:
                            // the primary reconnects to the new one.
                            return Err(ReplicationError::IntakeClosed);
                        }
                    }
                    Message::Refuse { reason } => return Err(ReplicationError::Refused(reason)),
                    other => return Err(ReplicationError::Unexpected {
                        expected: "Records, Ping, Pong, Rewind, AwaitsRestore, Seed, SeedData, Config or Refuse",
                        got: format!("{other:?}"),
                    }),
                }
            }
            // Nothing waits to be read: one fsync per database covers every
            // batch taken in meanwhile, and the primary hears of it at once.
            _ = std::future::ready(()), if !unhardened.is_empty() => {
                while let Some(sdb) = unhardened.first() {
                    sdb.harden_written().await?;
                    unhardened.hardened(&sdb);
                    reported.send(conn, &sdb, Instant::now(), false).await?;
                }
                // The moves made meanwhile (this link's own among them)
                // are reported now, from what each database says after
                // the mark: none is lost, and none wakes the link again.
                moved.borrow_and_update();
                reported.send_all(conn, group, Instant::now(), false).await?;
            }
        }
    }
}

/// The databases whose small batches a link appended on its own worker and
/// has not hardened yet ([`Hardening::ByCaller`]).
///
/// Bounded: once [`INLINE_BATCH_BYTES`] arrived since the oldest of them
/// (a stream that never pauses), or a batch of the same database went to
/// its harden thread, they are handed to the harden threads; so are those
/// left when the link ends. A record is never left unhardened.
#[derive(Default)]
struct Unhardened {
    databases: Vec<Arc<SecondaryDb>>,
    bytes_since: usize,
}

impl Unhardened {
    fn took(&mut self, sdb: &Arc<SecondaryDb>, received: Received) {
        if !received.caller_hardens {
            // Its harden thread hardens the whole written log.
            self.databases.retain(|d| !Arc::ptr_eq(d, sdb));
        } else if !self.databases.iter().any(|d| Arc::ptr_eq(d, sdb)) {
            self.databases.push(sdb.clone());
        }
        if !self.databases.is_empty() {
            self.bytes_since += received.bytes;
        }
        if self.bytes_since > INLINE_BATCH_BYTES {
            self.hand_over();
        }
    }

    fn is_empty(&self) -> bool {
        self.databases.is_empty()
    }

    fn first(&self) -> Option<Arc<SecondaryDb>> {
        self.databases.first().cloned()
    }

    fn hardened(&mut self, sdb: &Arc<SecondaryDb>) {
        self.databases.retain(|d| !Arc::ptr_eq(d, sdb));
        if self.databases.is_empty() {
            self.bytes_since = 0;
        }
    }

    fn hand_over(&mut self) {
        for sdb in self.databases.drain(..) {
            sdb.wake_harden();
        }
        self.bytes_since = 0;
    }
}

impl Drop for Unhardened {
    fn drop(&mut self) {
        self.hand_over();
    }
}

/// What the last `Progress` of each database said, and when a move of a
/// redone LSN alone is due to be reported: a wake-up that changed nothing
/// sends nothing, and a redo waits up to [`REDO_REPORT_DELAY`] for an
/// acknowledgement to carry it. Decides only; the link sends.
#[derive(Default)]
struct Reported {
    /// (hardened, redone, first) LSN of each database's last `Progress`.
    said: HashMap<String, (Lsn, Lsn, Lsn)>,
    /// When the redone LSNs not reported yet must go out.
    redo_due: Option<Instant>,
}

impl Reported {
    /// Whether a `Progress` of `database`, standing at `current`, goes out
    /// now: when its hardened or first LSN moved since the last one (or
    /// none was sent), or its redone LSN moved and `redo_now`. A move of
    /// the redone LSN alone otherwise sets `redo_due`, if not set yet.
    fn due(
        &mut self,
        database: &str,
        current: (Lsn, Lsn, Lsn),
        now: Instant,
        redo_now: bool,
    ) -> bool {
        match self.said.get_mut(database) {
            Some(said) if *said == current => false,
            Some(said) if !redo_now && (said.0, said.2) == (current.0, current.2) => {
                self.redo_due.get_or_insert(now + REDO_REPORT_DELAY);
                false
            }
            Some(said) => {
                *said = current;
                true
            }
            None => {
                self.said.insert(database.to_string(), current);
                true
            }
        }
    }

    /// Whether the redone LSNs not reported yet are due at `now` (then
    /// they no longer are: the caller reports them).
    fn take_redo_due(&mut self, now: Instant) -> bool {
        let due = self.redo_due.is_some_and(|due| due <= now);
        if due {
            self.redo_due = None;
        }
        due
    }

    /// Sends `sdb`'s `Progress` if [`Reported::due`].
    async fn send(
        &mut self,
        conn: &mut Framed<PartnerStream, WireCodec>,
        sdb: &SecondaryDb,
        now: Instant,
        redo_now: bool,
    ) -> Result<(), ReplicationError> {
        let current = (sdb.hardened(), sdb.redone(), sdb.db.log().first_lsn());
        let database = sdb.db.name();
        if !self.due(database, current, now, redo_now) {
            return Ok(());
        }
        send(
            conn,
            Message::Progress {
                database: database.to_string(),
                hardened_lsn: current.0,
                redone_lsn: current.1,
                first_lsn: current.2,
            },
        )
        .await
    }

    /// Sends every database's `Progress` that is due, with every redo not
    /// reported yet once `redo_due` has come (or at once, `redo_now`).
    async fn send_all(
        &mut self,
        conn: &mut Framed<PartnerStream, WireCodec>,
        group: &SecondaryGroup,
        now: Instant,
        redo_now: bool,
    ) -> Result<(), ReplicationError> {
        let redo_now = self.take_redo_due(now) || redo_now;
        if redo_now {
            self.redo_due = None;
        }
        for sdb in group.databases.values() {
            self.send(conn, sdb, now, redo_now).await?;
        }
        Ok(())
    }
}

/// Applies hardened records to the database file, in order, until stopped.
async fn redo_task(sdb: Arc<SecondaryDb>, mut stop: watch::Receiver<bool>) {
    let mut hardened = sdb.hardened.subscribe();
    let mut since_checkpoint = 0u64;
    let mut last_redo = tokio::time::Instant::now();
    loop {
        if *stop.borrow() {
            return;
        }
        let applied = sdb.db.applied_lsn();
        if applied != sdb.redone() {
            // Another group's redo (or a log restart) moved the file.
            sdb.publish_redone(applied);
            sdb.publish_readable();
        }
        if applied >= sdb.hardened() {
            tokio::select! {
                _ = hardened.changed() => continue,
                _ = stop.changed() => return,
            }
        }
        let resume = last_redo + REDO_PAUSE;
        if sdb.hardened().saturating_sub(applied) < REDO_EAGER_BYTES
            && tokio::time::Instant::now() < resume
        {
            tokio::select! {
                _ = tokio::time::sleep_until(resume) => {}
                _ = stop.changed() => return,
            }
        }
        last_redo = tokio::time::Instant::now();
        let worker = sdb.clone();
        let result = tokio::task::spawn_blocking(move || redo_batch(&worker))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        match result {
            Ok(Some(done)) => {
                sdb.last_redone_commit_us
                    .store(done.commit_time_us, Ordering::Relaxed);
                sdb.publish_redone(done.end);
                if !done.inside_image {
                    sdb.image_pending.store(false, Ordering::SeqCst);
                }
                sdb.publish_readable();
                since_checkpoint += done.bytes;
                if since_checkpoint >= CHECKPOINT_BYTES {
                    let db = sdb.db.clone();
                    let checkpointed = tokio::task::spawn_blocking(move || db.checkpoint_redone())
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()));
                    match checkpointed {
                        Ok(true) => since_checkpoint = 0,
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(database = %sdb.db.name(), "checkpoint after redo failed: {e}")
                        }
                    }
                }
            }
            Ok(None) => {
                // Nothing hardened beyond the file yet: wait for more.
                tokio::select! {
                    _ = hardened.changed() => {}
                    _ = stop.changed() => return,
                }
            }
            Err(message) => {
                tracing::error!(database = %sdb.db.name(), "redo failed: {message}");
                *sdb.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

/// Makes written records durable and publishes the hardened LSN: one fsync
/// covers everything written meanwhile (group commit on the secondary). A
/// thread of its own that syncs itself, so a batch is hardened without a
/// hop to another thread between the wake-up and the fsync.
fn harden(sdb: Arc<SecondaryDb>, mut stop: watch::Receiver<bool>) {
    use futures::executor::block_on;
    let mut written = sdb.written.subscribe();
    loop {
        let target = *written.borrow_and_update();
        if target > sdb.hardened() {
            match sdb.db.log().wait_durable_blocking(target) {
                Ok(()) => sdb.publish_hardened(target),
                Err(e) => {
                    tracing::error!(database = %sdb.db.name(), "cannot harden the log: {e}");
                    *sdb.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                    // A failed log refuses every later sync: nothing is
                    // hardened until the node restarts. Do not spin.
                    std::thread::sleep(Duration::from_millis(200));
                    if stop.has_changed().unwrap_or(true) {
                        return;
                    }
                }
            }
            continue;
        }
        let woke = block_on(async {
            tokio::select! {
                changed = written.changed() => changed.is_ok(),
                _ = stop.changed() => false,
            }
        });
        if !woke {
            return;
        }
    }
}

/// The records a secondary's intake decoded (for its batch check) and
/// appended, kept in log order for redo to take instead of reading the log
/// and decoding them a second time.
///
/// Rules: the records kept are a contiguous run of the log (a batch that
/// does not follow the last one kept replaces them all); at most
/// [`DECODED_BYTES`] of pages are kept (what does not fit is read from the
/// log), so a redo that runs behind holds no more than that; the run is dropped where the log restarts or is cut (the same LSNs
/// then hold other records). Redo takes from here only a run that starts
/// exactly where the file stands, so whatever is missing here, redo reads.
#[derive(Default)]
struct Decoded {
    /// Each record with where it ends in the log.
    records: VecDeque<(Record, Lsn)>,
    /// Bytes of pages the records kept hold.
    bytes: u64,
}

/// The memory a decoded record's pages take.
fn held(record: &Record) -> u64 {
    record.pages.len() as u64 * u64::from(record.page_size)
}

impl Decoded {
    /// Keeps `records` (appended to the log just now, in order, each with
    /// where it ends).
    fn keep(&mut self, records: Vec<(Record, Lsn)>) {
        for (record, end) in records {
            if self
                .records
                .back()
                .is_some_and(|(_, last)| *last != record.lsn)
            {
                self.clear();
            }
            let len = held(&record);
            if self.bytes + len > DECODED_BYTES {
                // Full: redo reads the rest from the log, and a later
                // batch (not contiguous with what is kept) starts again.
                return;
            }
            self.bytes += len;
            self.records.push_back((record, end));
        }
    }

    /// The kept records from `from` on that end by `until`, about
    /// `max_bytes` of them (at least one); None when the run kept does
    /// not start at `from` (the caller reads the log).
    fn take(&mut self, from: Lsn, max_bytes: u64, until: Lsn) -> Option<Vec<Record>> {
        while self.records.front().is_some_and(|(_, end)| *end <= from) {
            self.pop();
        }
        if self.records.front()?.0.lsn != from {
            return None;
        }
        let mut taken = Vec::new();
        let mut bytes = 0;
        while let Some((record, end)) = self.records.front() {
            if *end > until || (bytes >= max_bytes && !taken.is_empty()) {
                break;
            }
            bytes += end - record.lsn;
            taken.extend(self.pop());
        }
        Some(taken)
    }

    fn pop(&mut self) -> Option<Record> {
        let (record, _) = self.records.pop_front()?;
        self.bytes -= held(&record);
        Some(record)
    }

    fn clear(&mut self) {
        self.records.clear();
        self.bytes = 0;
    }
}

/// Redoes one batch of hardened records (blocking), from wherever the
/// file stands: the database's redo lock makes the read of the applied
/// LSN, the log read and the apply one step.
///
/// One read of the log at a time is in memory: a transaction larger than
/// one read is handed to redo only once its last part is hardened, and then
/// a read at a time (`Database::redo_next` redoes it part by part, in one
/// SQLite transaction, so readers never see part of it).
fn redo_batch(sdb: &SecondaryDb) -> Result<Option<crate::engine::Redone>, String> {
    let log = sdb.db.log();
    // Only hardened records: the file must never hold what the log may lose.
    let hardened = sdb.hardened();
    let mut whole_hardened = false;
    sdb.db.redo_next(|applied| {
        // After seeding or a rewind, the log restarts at a full image.
        let from = applied.max(log.first_lsn());
        if from >= hardened.min(log.end_lsn()) {
            return Ok(Vec::new());
        }
        let records = match sdb.decoded().take(from, REDO_BATCH_BYTES, hardened) {
            Some(records) => records,
            None => log
                .read_some_until(from, REDO_BATCH_BYTES, hardened)
                .map_err(|e| e.to_string())?,
        };
        if whole_hardened || crate::engine::whole_transactions(&records) > 0 {
            return Ok(records);
        }
        // The records start a transaction larger than one read.
        whole_hardened = transaction_ends_by(log, from, hardened)?;
        Ok(if whole_hardened { records } else { Vec::new() })
    })
}

/// Whether the transaction that starts at `from` ends at or before `until`:
/// from the log's remembered boundaries (every boundary appended after the
/// newest one remembered is remembered too), else — the log opened inside
/// a transaction and none was appended since — by reading its records, a
/// read at a time.
fn transaction_ends_by(log: &crate::log::Log, from: Lsn, until: Lsn) -> Result<bool, String> {
    if let Some(boundary) = log.boundary_at_or_before(until) {
        return Ok(boundary > from);
    }
    let mut at = from;
    while at < until.min(log.end_lsn()) {
        let records = log
            .read_some(at, REDO_BATCH_BYTES)
            .map_err(|e| e.to_string())?;
        let Some(last) = records.last() else { break };
        if let Some(end) = records.iter().find(|r| !r.continues_transaction()) {
            return Ok(end.end_lsn() <= until);
        }
        at = last.end_lsn();
    }
    Ok(false)
}

/// The end of the log's last whole transaction at or after `from` (the log
/// may end with parts of one whose last part has not arrived).
fn whole_end(log: &crate::log::Log, from: Lsn) -> Result<Lsn, String> {
    let mut at = from.max(log.first_lsn());
    let mut whole = at;
    while at < log.end_lsn() {
        let records = log
            .read_some(at, REDO_BATCH_BYTES)
            .map_err(|e| e.to_string())?;
        let Some(last) = records.last() else { break };
        if let Some(r) = records.iter().rfind(|r| !r.continues_transaction()) {
            whole = r.end_lsn();
        }
        at = last.end_lsn();
    }
    Ok(whole)
}

async fn next_message(
    conn: &mut Framed<PartnerStream, WireCodec>,
    within: Duration,
) -> Result<Message, ReplicationError> {
    match tokio::time::timeout(within, conn.next()).await {
        Err(_) => Err(ReplicationError::SessionTimeout(within)),
        Ok(None) => Err(ReplicationError::Closed),
        Ok(Some(Err(e))) => Err(ReplicationError::Wire(e.to_string())),
        Ok(Some(Ok(m))) => Ok(m),
    }
}

async fn refuse(
    conn: &mut Framed<PartnerStream, WireCodec>,
    reason: String,
) -> Result<(), ReplicationError> {
    tracing::warn!("refusing a primary: {reason}");
    let _ = send(
        conn,
        Message::Refuse {
            reason: reason.clone(),
        },
    )
    .await;
    Err(ReplicationError::NotAdmitted(reason))
}

async fn send(
    conn: &mut Framed<PartnerStream, WireCodec>,
    message: Message,
) -> Result<(), ReplicationError> {
    conn.send(message)
        .await
        .map_err(|e| ReplicationError::Wire(format!("send failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{run, Database};

    /// A primary database with `rows` committed rows.
    async fn primary(dir: &std::path::Path, rows: usize) -> Database {
        let db = Database::open("app", &dir.join("p.db"), &dir.join("plog")).unwrap();
        let cancel = tokio::sync::Notify::new();
        for sql in std::iter::once("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)".to_string())
            .chain((0..rows).map(|i| format!("INSERT INTO t VALUES ({i}, randomblob(3000))")))
        {
            let mut w = db.writer(None, &cancel).await.unwrap();
            run(w.conn().sqlite(), &sql, &[], false).unwrap();
            w.after_commit().unwrap();
        }
        db
    }

    /// A primary database with `rows` committed rows, and its log's records.
    async fn primary_with_rows(dir: &std::path::Path, rows: usize) -> Vec<Record> {
        primary(dir, rows).await.log().read_from(0).unwrap()
    }

    /// A primary database with `rows` committed rows, its log's records,
    /// and then a full image of it in parts of at most 64 KiB that it
    /// appends to its log (to seed or rewind some replica).
    async fn primary_with_rows_and_image(
        dir: &std::path::Path,
        rows: usize,
    ) -> (Vec<Record>, Vec<Record>) {
        let db = primary(dir, rows).await;
        let commits = db.log().read_from(0).unwrap();
        let cancel = tokio::sync::Notify::new();
        let w = db.writer(None, &cancel).await.unwrap();
        crate::engine::image::for_each_image_part_sized(w.conn().sqlite(), 1, 64 << 10, |part| {
            db.log().append(part).unwrap();
            Ok(())
        })
        .unwrap();
        let image = db
            .log()
            .read_from(commits.last().unwrap().end_lsn())
            .unwrap();
        assert!(image.len() >= 3, "{} image parts", image.len());
        (commits, image)
    }

    fn count_rows(db: &Database) -> i64 {
        db.reader()
            .unwrap()
            .conn()
            .sqlite()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_group_redoes_the_records_hardened_but_not_redone_before() {
        // Issue 9 cause 1: a group restarted by a definition change or a
        // new primary started with `redone = hardened = log end`, so records
        // hardened while redo ran behind never reached the file.
        let dir = tempfile::tempdir().unwrap();
        let records = primary_with_rows(dir.path(), 20).await;
        let db = Arc::new(
            Database::open("app", &dir.path().join("s.db"), &dir.path().join("slog")).unwrap(),
        );
        // An earlier group hardened every record, redid the first two (the
        // schema and one row) and stopped before redoing the rest.
        for r in &records {
            db.log().append_at(r).unwrap();
        }
        db.log().wait_durable(db.log().end_lsn()).await.unwrap();
        db.redo_next(|from| {
            Ok(records
                .iter()
                .filter(|r| r.lsn >= from)
                .take(2)
                .cloned()
                .collect())
        })
        .unwrap();
        assert_eq!(count_rows(&db), 1);
        let config = crate::group::fixtures::group(&["r1", "r2"]);
        let group = SecondaryGroup::start(config, vec![db.clone()]);
        let end = records.last().unwrap().end_lsn();
        let deadline = Instant::now() + Duration::from_secs(20);
        while db.applied_lsn() < end {
            assert!(
                Instant::now() < deadline,
                "redo stopped at {} of {end}",
                db.applied_lsn()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        group.stop();
        assert_eq!(count_rows(&db), 20);
    }

    fn raw(records: &[Record]) -> Vec<Bytes> {
        records
            .iter()
            .map(|r| {
                let mut bytes = Vec::new();
                r.encode_into(&mut bytes);
                bytes.into()
            })
            .collect()
    }

    /// A secondary group of a fresh copy that took `records` in and redid
    /// them.
    async fn secondary_with(dir: &std::path::Path, records: &[Record]) -> Arc<SecondaryGroup> {
        let db = Arc::new(Database::open("app", &dir.join("s.db"), &dir.join("slog")).unwrap());
        let group = SecondaryGroup::start(crate::group::fixtures::group(&["r1", "r2"]), vec![db]);
        let epoch = records[0].epoch;
        group
            .receive("app", raw(records), epoch, Hardening::ByThread)
            .await
            .unwrap();
        let sdb = group.databases()[0].clone();
        let end = records.last().unwrap().end_lsn();
        let deadline = Instant::now() + Duration::from_secs(20);
        while sdb.db.applied_lsn() < end {
            assert!(
                Instant::now() < deadline,
                "redo stopped at {}",
                sdb.db.applied_lsn()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        group
    }

    /// An admission that takes nothing: for a link that must end before
    /// it asks anything.
    struct Nothing;

    #[async_trait::async_trait]
    impl Admission for Nothing {
        fn check_hello(&self, _: &str, _: &str, _: &str, _: u64) -> Result<(), String> {
            Err("nothing is admitted here".into())
        }
        async fn accept_config(&self, _: GroupConfig) -> Result<Arc<SecondaryGroup>, String> {
            Err("nothing is admitted here".into())
        }
        async fn geo_forwarder(
            self: Arc<Self>,
            _: &super::super::geo::GeoRequest,
        ) -> Result<Arc<super::super::geo::Forwarder>, String> {
            Err("nothing is admitted here".into())
        }
        async fn end_geo_secondary(
            self: Arc<Self>,
            _: &str,
            _: &str,
            _: bool,
            _: Lsn,
            _: Option<super::super::wire::Handover>,
        ) -> Result<Lsn, String> {
            Err("nothing is admitted here".into())
        }
        fn seed_staging(&self) -> std::path::PathBuf {
            std::env::temp_dir()
        }
        fn seeding_board(&self) -> Arc<super::super::seed::SeedingBoard> {
            Arc::default()
        }
        async fn seeded(
            self: Arc<Self>,
            _: &str,
            _: &str,
            _: std::path::PathBuf,
        ) -> Result<(), String> {
            Err("nothing is admitted here".into())
        }
        async fn page_for_partner(
            &self,
            _: &crate::repair::PageRequest,
        ) -> Result<(Lsn, Vec<u8>), String> {
            Err("nothing is admitted here".into())
        }
        async fn page_sums_for_partner(
            &self,
            _: &crate::repair::SumsRequest,
        ) -> Result<(Lsn, Vec<u32>), String> {
            Err("nothing is admitted here".into())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_link_that_begins_after_its_group_stopped_ends_at_once() {
        // A group stopped (dropped, or started again for a restored
        // database) ends its links; a link whose streaming begins after the
        // stop must see it too, not wait for a change that already came.
        let dir = tempfile::tempdir().unwrap();
        let records = primary_with_rows(dir.path(), 1).await;
        let group = secondary_with(dir.path(), &records).await;
        group.stop();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let primary_side = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (socket, _) = listener.accept().await.unwrap();
        let mut conn = Framed::new(PartnerStream::Plain(socket), WireCodec);
        let admission: Arc<dyn Admission> = Arc::new(Nothing);
        let link = stream_from(
            &mut conn,
            &group,
            &admission,
            records[0].epoch,
            Duration::from_secs(600),
        );
        let ended = tokio::time::timeout(Duration::from_secs(10), link).await;
        assert!(
            matches!(ended, Ok(Err(ReplicationError::IntakeClosed))),
            "the link of a stopped group went on: {ended:?}"
        );
        drop(primary_side);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_the_link_hardens_counts_only_once_durable_and_a_dropped_link_hands_it_to_the_harden_thread(
    ) {
        // The link appends small batches and hardens them itself once no
        // message waits: nothing may count as hardened before its fsync,
        // and a link that ends before hardening leaves nothing unhardened.
        let dir = tempfile::tempdir().unwrap();
        let records = primary_with_rows(dir.path(), 6).await;
        let group = secondary_with(dir.path(), &records[..2]).await;
        let sdb = group.databases()[0].clone();
        let before = sdb.hardened();
        let epoch = records[0].epoch;

        let received = group
            .receive("app", raw(&records[2..4]), epoch, Hardening::ByCaller)
            .await
            .unwrap();
        assert!(received.caller_hardens);
        assert_eq!(sdb.hardened(), before, "appended is not hardened");
        let mut unhardened = Unhardened::default();
        unhardened.took(&sdb, received);
        assert_eq!(sdb.harden_written().await.unwrap(), received.end);
        assert!(sdb.db.log().durable_lsn() >= received.end);
        unhardened.hardened(&sdb);
        assert!(unhardened.is_empty());

        let received = group
            .receive("app", raw(&records[4..]), epoch, Hardening::ByCaller)
            .await
            .unwrap();
        unhardened.took(&sdb, received);
        drop(unhardened);
        let deadline = Instant::now() + Duration::from_secs(20);
        while sdb.hardened() < received.end {
            assert!(
                Instant::now() < deadline,
                "the harden thread was not handed the batch"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(sdb.db.log().durable_lsn() >= received.end);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_in_flight_when_a_promotion_closes_the_intake_is_refused_not_appended() {
        // Issue 9 cause 2: a batch that passed the intake's first check
        // before a promotion closed it was appended after the drain had
        // measured the log, so the promoted database wrote on top of records
        // it never redid. A batch in flight is now checked again under the
        // intake lock the drain takes after closing.
        let dir = tempfile::tempdir().unwrap();
        let records = primary_with_rows(dir.path(), 6).await;
        let group = secondary_with(dir.path(), &records[..3]).await;
        let db = group.databases()[0].db.clone();
        let before = db.log().end_lsn();

        // The intake lock is busy (another batch is being appended): the
        // next batch waits for it, past the check made before the lock.
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = {
            let db = db.clone();
            std::thread::spawn(move || {
                let _intake = db.intake();
                held_tx.send(()).unwrap();
                let _ = release_rx.recv();
            })
        };
        held_rx.recv().unwrap();
        let in_flight = {
            let group = group.clone();
            let rest = raw(&records[3..]);
            let epoch = records[0].epoch;
            tokio::spawn(
                async move { group.receive("app", rest, epoch, Hardening::ByThread).await },
            )
        };
        // Time for the batch to reach the lock.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let drain = {
            let group = group.clone();
            tokio::spawn(async move { group.drain_and_stop(Duration::from_secs(20)).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        release_tx.send(()).unwrap();
        holder.join().unwrap();

        drain.await.unwrap().expect("the drain succeeds");
        let received = in_flight.await.unwrap();
        assert!(
            matches!(received, Err(ReplicationError::IntakeClosed)),
            "a batch in flight when the intake closed must be refused: {received:?}"
        );
        assert_eq!(
            (db.log().end_lsn(), db.applied_lsn()),
            (before, before),
            "after the drain the log must end where the drain found it, all of it redone"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_secondary_that_knows_a_newer_epoch_refuses_the_old_primarys_records() {
        // Issue 9 cause 10: a deposed primary (its lease not yet over by
        // its own clock) must not get records hardened, and so
        // acknowledged, by a replica that knows a newer primary was named.
        let dir = tempfile::tempdir().unwrap();
        let records = primary_with_rows(dir.path(), 4).await;
        let old_epoch = records[0].epoch;
        let group = secondary_with(dir.path(), &records[..2]).await;
        let db = group.databases()[0].db.clone();
        let before = db.log().end_lsn();
        group.raise_epoch_floor(old_epoch + 1);
        let received = group
            .receive("app", raw(&records[2..]), old_epoch, Hardening::ByThread)
            .await;
        assert!(
            matches!(
                received,
                Err(ReplicationError::Superseded { epoch, newest })
                    if epoch == old_epoch && newest == old_epoch + 1
            ),
            "{received:?}"
        );
        assert_eq!(
            db.log().end_lsn(),
            before,
            "nothing of the batch is in the log"
        );
        // The new primary's link (the floor's epoch) is served.
        let received = group
            .receive(
                "app",
                raw(&records[2..]),
                old_epoch + 1,
                Hardening::ByThread,
            )
            .await;
        assert_eq!(received.unwrap().end, records.last().unwrap().end_lsn());
        group.stop();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caught_up_secondary_with_part_of_an_image_appended_for_another_replica_takes_office()
    {
        // Found by scripts/transitions-scenario: a primary that rewinds a
        // former primary appends a full image to its log, which every other
        // secondary takes in as ordinary records. A caught-up secondary
        // holding part of it refused to drain ("being seeded"), so a planned
        // failover the cluster had already committed failed, and the group
        // had no writable primary until the whole image was redone. Its
        // pages are the file's own at that LSN: such a secondary may drain.
        let dir = tempfile::tempdir().unwrap();
        let (commits, image) = primary_with_rows_and_image(dir.path(), 60).await;
        let group = secondary_with(dir.path(), &commits).await;
        let epoch = image[0].epoch;
        group
            .receive("app", raw(&image[..1]), epoch, Hardening::ByThread)
            .await
            .unwrap();
        let db = group.databases()[0].db.clone();
        group
            .drain_and_stop(Duration::from_secs(20))
            .await
            .expect("the drain succeeds");
        // The half image is cut from the log: a new primary never hands it
        // on as a whole one.
        assert_eq!(
            (db.log().end_lsn(), db.applied_lsn()),
            (image[0].lsn, image[0].lsn)
        );
        db.promote("ag1", 2, 2).await.unwrap();
        assert_eq!(count_rows(&db), 60);
        let check: String = db
            .reader()
            .unwrap()
            .conn()
            .sqlite()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replica_whose_log_restarted_at_an_image_it_holds_only_part_of_never_drains() {
        // A replica being seeded (its log restarted at a full image) holds
        // a file part old, part new until the image's last part is redone:
        // it must never become writable, even when its intake restarted (a
        // definition change) and no longer counts the image's pages.
        let dir = tempfile::tempdir().unwrap();
        let (_, image) = primary_with_rows_and_image(dir.path(), 60).await;
        let db = Arc::new(
            Database::open("app", &dir.path().join("s.db"), &dir.path().join("slog")).unwrap(),
        );
        let config = crate::group::fixtures::group(&["r1", "r2"]);
        let seeding = SecondaryGroup::start(config.clone(), vec![db.clone()]);
        let epoch = image[0].epoch;
        seeding
            .receive("app", raw(&image[..2]), epoch, Hardening::ByThread)
            .await
            .unwrap();
        assert_eq!(db.log().image_pending(), Some((image[0].lsn, epoch)));
        let refused = seeding.drain_and_stop(Duration::from_secs(20)).await;
        assert!(refused.is_err(), "while seeding: {refused:?}");
        seeding.stop();
        let restarted = SecondaryGroup::start(config, vec![db.clone()]);
        let refused = restarted.drain_and_stop(Duration::from_secs(20)).await;
        assert!(
            refused.as_ref().is_err_and(|e| e.contains("seeded")),
            "after the intake restarted: {refused:?}"
        );
        restarted.stop();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caught_up_secondary_takes_over_with_an_image_for_another_replica_half_received() {
        // Issue 9's scenario: a full image written for another replica (a
        // reseed after a rewind) passes through every secondary's stream.
        // A caught-up secondary named primary while half of it had arrived
        // refused to take over ("being seeded"), though its copy was whole;
        // it takes over now, its log cut back to the image's start so it
        // never hands half an image on as a whole one.
        let dir = tempfile::tempdir().unwrap();
        let primary =
            Database::open("app", &dir.path().join("p.db"), &dir.path().join("plog")).unwrap();
        let cancel = tokio::sync::Notify::new();
        for sql in [
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)",
            "INSERT INTO t SELECT value, randomblob(3000) FROM generate_series(1, 4000)",
        ] {
            let mut w = primary.writer(None, &cancel).await.unwrap();
            run(w.conn().sqlite(), sql, &[], false).unwrap();
            w.after_commit().unwrap();
        }
        let image_start = primary.write_base_image().await.unwrap();
        let records = primary.log().read_from(0).unwrap();
        let parts = records.iter().filter(|r| r.lsn >= image_start).count();
        assert!(parts >= 2, "the image takes more than one record ({parts})");
        // Everything up to the image, and its first part only.
        let received: Vec<&Record> = records
            .iter()
            .take_while(|r| r.lsn <= image_start)
            .collect();
        assert!(received.last().unwrap().starts_image());
        let raw = received
            .iter()
            .map(|r| {
                let mut bytes = Vec::new();
                r.encode_into(&mut bytes);
                Bytes::from(bytes)
            })
            .collect();
        let db = Arc::new(
            Database::open("app", &dir.path().join("s.db"), &dir.path().join("slog")).unwrap(),
        );
        let group = SecondaryGroup::start(
            crate::group::fixtures::group(&["r1", "r2"]),
            vec![db.clone()],
        );
        group
            .receive("app", raw, records[0].epoch, Hardening::ByThread)
            .await
            .expect("the records are taken in");
        let end = received.last().unwrap().end_lsn();
        let deadline = Instant::now() + Duration::from_secs(30);
        while db.applied_lsn() < end {
            assert!(
                Instant::now() < deadline,
                "redo stopped at {}",
                db.applied_lsn()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        group
            .drain_and_stop(Duration::from_secs(20))
            .await
            .expect("a caught-up copy takes over while another replica's image passes");
        assert_eq!(
            db.log().end_lsn(),
            image_start,
            "the half image is cut from the log"
        );
        assert_eq!(db.applied_lsn(), image_start);
        assert_eq!(count_rows(&db), 4000, "every row is there");
    }

    /// Reports: a move of the hardened LSN goes out at once (commits wait
    /// for it) and carries the redone LSN with it; a move of the redone LSN
    /// alone waits for it, and nothing is said twice.
    #[test]
    fn a_redo_alone_waits_for_the_next_acknowledgement_to_carry_it() {
        let t0 = Instant::now();
        let mut reported = Reported::default();
        assert!(
            reported.due("app", (100, 50, 1), t0, false),
            "the first report goes out"
        );
        assert!(
            !reported.due("app", (100, 50, 1), t0, false),
            "nothing moved"
        );
        assert!(
            !reported.due("app", (100, 80, 1), t0, false),
            "redo alone waits"
        );
        assert_eq!(reported.redo_due, Some(t0 + REDO_REPORT_DELAY));
        let later = t0 + Duration::from_millis(1);
        assert!(!reported.due("app", (100, 90, 1), later, false));
        assert_eq!(
            reported.redo_due,
            Some(t0 + REDO_REPORT_DELAY),
            "the first wait counts"
        );
        assert!(
            reported.due("app", (120, 90, 1), later, false),
            "a hardened move goes at once"
        );
        assert_eq!(reported.said["app"], (120, 90, 1), "and carries the redo");
        assert!(
            reported.due("app", (120, 90, 5), later, false),
            "so does a moved first LSN"
        );
        assert!(
            reported.due("other", (7, 7, 1), later, false),
            "each database its own"
        );
    }

    /// Reports: a redo no acknowledgement carried goes out once due, so the
    /// primary's view of redo lag settles within [`REDO_REPORT_DELAY`] of
    /// the last redo.
    #[test]
    fn a_redo_no_acknowledgement_carried_goes_out_once_due() {
        let t0 = Instant::now();
        let mut reported = Reported::default();
        assert!(reported.due("app", (100, 50, 1), t0, false));
        assert!(!reported.due("app", (100, 100, 1), t0, false));
        assert!(
            !reported.take_redo_due(t0 + Duration::from_millis(4)),
            "not yet"
        );
        let due = t0 + REDO_REPORT_DELAY;
        assert!(reported.take_redo_due(due));
        assert_eq!(reported.redo_due, None, "taken");
        assert!(
            reported.due("app", (100, 100, 1), due, true),
            "the redo goes out"
        );
        assert!(!reported.due("app", (100, 100, 1), due, true), "once");
        assert_eq!(reported.redo_due, None);
    }

    /// A record of `pages` pages of 512 bytes.
    fn kept_record_of(lsn: Lsn, pages: u32) -> Record {
        Record {
            lsn,
            epoch: 1,
            commit_time_us: 0,
            db_size: pages,
            page_size: 512,
            pages: (1..=pages).map(|p| (p, vec![0; 512])).collect(),
            flags: 0,
        }
    }

    fn kept_record(lsn: Lsn) -> Record {
        kept_record_of(lsn, 1)
    }

    /// A run of 100-byte records from `from`, each with its end.
    fn run_of(from: Lsn, n: u64) -> Vec<(Record, Lsn)> {
        (0..n)
            .map(|i| (kept_record(from + i * 100), from + (i + 1) * 100))
            .collect()
    }

    fn lsns(records: &[Record]) -> Vec<Lsn> {
        records.iter().map(|r| r.lsn).collect()
    }

    /// Decode once: redo takes the records the intake decoded only as a run
    /// that starts exactly where the file stands and ends by the hardened
    /// LSN; anything else it reads from the log.
    #[test]
    fn redo_takes_decoded_records_only_from_where_the_file_stands() {
        let mut kept = Decoded::default();
        kept.keep(run_of(1000, 5)); // 1000..1500
        assert_eq!(
            kept.take(900, u64::MAX, u64::MAX),
            None,
            "starts later than the file"
        );
        assert_eq!(
            kept.take(1050, u64::MAX, u64::MAX),
            None,
            "not a record boundary"
        );
        let taken = kept.take(1000, u64::MAX, 1300).expect("starts at the file");
        assert_eq!(
            lsns(&taken),
            [1000, 1100, 1200],
            "only what ends by the hardened LSN"
        );
        let taken = kept.take(1300, 150, u64::MAX).expect("the rest");
        assert_eq!(lsns(&taken), [1300, 1400], "about max_bytes, at least one");
        assert_eq!(kept.bytes, 0, "what was taken no longer counts");
        // Records the file already holds are dropped on the way.
        kept.keep(run_of(1500, 3)); // 1500..1800
        let taken = kept.take(1600, u64::MAX, u64::MAX).expect("from 1600");
        assert_eq!(lsns(&taken), [1600, 1700]);
        assert_eq!(kept.take(1800, u64::MAX, u64::MAX), None, "nothing kept");
    }

    /// Decode once: what is kept is one contiguous run of the log, bounded;
    /// a batch that does not follow it replaces it.
    #[test]
    fn decoded_records_are_kept_as_one_contiguous_bounded_run() {
        let mut kept = Decoded::default();
        kept.keep(run_of(1000, 2)); // 1000..1200
        kept.keep(run_of(5000, 2)); // a gap: replaces the run
        assert_eq!(kept.take(1000, u64::MAX, u64::MAX), None);
        assert_eq!(
            lsns(&kept.take(5000, u64::MAX, u64::MAX).unwrap()),
            [5000, 5100]
        );
        // Past the bound, the rest is not kept (redo reads it from the
        // log). The bound counts pages whole, not the few log bytes a
        // page with a large hole takes.
        let pages = (DECODED_BYTES / 4 / 512) as u32;
        let big: Vec<(Record, Lsn)> = (0..6)
            .map(|i| {
                (
                    kept_record_of(10_000 + i * 100, pages),
                    10_000 + (i + 1) * 100,
                )
            })
            .collect();
        kept.keep(big);
        assert_eq!(kept.bytes, DECODED_BYTES);
        assert_eq!(kept.records.len(), 4);
        kept.clear();
        assert_eq!((kept.bytes, kept.records.len()), (0, 0));
    }
}
