//! Geo-replication: one database's log shipped asynchronously from the
//! primary of one region (an independent availdb cluster) to the primary of
//! another, its *forwarder*, which ships it on to its own region's
//! secondaries as if it were its own log.
//!
//! # Parts
//! * The **geo sender** ([`run_geo_sender`]) runs on the source region's
//!   primary, one task per geo-secondary of a database (at most
//!   [`crate::group::MAX_GEO_SECONDARIES`]): it finds the partner region's
//!   primary among the partner server's registered endpoints, opens the link
//!   with `GeoHello`, decides where the geo-secondary starts with the same
//!   core as a local link ([`super::link::plan_start`]: continue, seed from a
//!   full image, or rewind a diverged copy; while it writes the image it
//!   answers the forwarder's pings) and streams records as they
//!   become shippable (see the invariants). Nothing waits for it: commits
//!   are acknowledged without the geo-secondary (asynchronous).
//! * The **forwarder** ([`Forwarder`]) is the geo-secondary region's primary
//!   for that database: the database is in its region's availability group
//!   with a `geo_source`, fenced [`crate::engine::Fence::GeoSecondary`]
//!   (read-only to clients), and its log is taken in by a
//!   [`SecondaryDb`] — hardened, checked and redone exactly as on a local
//!   secondary. The region's own primary group streams that log to the
//!   region's secondaries unchanged, so a local failover in either region
//!   keeps the geo link: the new primary on either side re-attaches and
//!   continues from where the logs agree, without a reseed.
//! * [`serve_source`]: the forwarder's end of one link.
//!
//! # Invariants
//! * The forwarder's log is the source's log: same records at the same LSNs,
//!   same epochs (the region's own epochs never enter it), so
//!   [`super::link::plan_start`] compares the two like any pair of replicas.
//!   The forwarder therefore never writes its own records — a replica of its
//!   region that needs seeding gets a full image **from the source**: the
//!   forwarder asks for one (`ImageRequest`), the source appends it to its
//!   log, and it arrives down the link like any record.
//! * A forwarder takes records from one source at a time and never from a
//!   source whose epoch is older than the newest it has seen (a deposed
//!   source primary cannot feed it).
//! * A source ships a record only once it is durable in its log, hardened
//!   by every SYNCHRONIZED secondary of its region, and its transaction is
//!   whole there ([`GeoSource::shippable`]): a local failover that loses no
//!   acknowledged commit then never leaves a geo-secondary ahead of its
//!   region's new primary (it would show a transaction that region
//!   discards, and need a rewind).
//! * A source never takes a link to its own cluster (same cluster id).
//! * The link ends by `Terminate` from the source (termination, or the
//!   last step of a planned geo-failover with a [`Handover`]): the
//!   geo-secondary answers `Terminated` only once its region has made the
//!   copy independent. A geo-secondary asks for a planned geo-failover with
//!   `FailoverRequest`; the source decides.
//! * A new source after a geo-failover names the one it succeeds in
//!   `GeoHello` (`succeeds`); the region decides whether to follow it
//!   (`Admission::geo_forwarder`).
//!
//! # Status
//! Both ends keep a [`GeoLinkStatus`] for `sys.geo_replication_links` and
//! `sys.dm_geo_replication_link_status`: PENDING until the first handshake,
//! SEEDING while the geo-secondary takes a full image, CATCH_UP after; the
//! lag is the age of the oldest commit the partner has not redone (0 when it
//! has redone everything: never unknown on a live idle link).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::codec::Framed;

use super::error::ReplicationError;
use super::link::{plan_start, OwnLog, Start};
use super::primary::{answering_pings, next_message, send, ReplicaMetrics};
use super::secondary::{Admission, IntakeGate, SecondaryDb};
use super::wire::{Handover, Message, WireCodec};
use crate::engine::{monotonic_us, Database};
use crate::group::GeoPartner;
use crate::log::Lsn;
use crate::net::PartnerStream;

/// How long either end of a geo link waits for a message before it counts
/// the partner as gone (regions are far apart: longer than a local link).
pub const GEO_SESSION_TIMEOUT: Duration = Duration::from_secs(30);
/// How often either end pings.
const GEO_PING: Duration = Duration::from_secs(1);
/// Most record bytes in one `Records` message.
const BATCH_BYTES: u64 = 4 << 20;
/// How long a forwarder waits for the full image it asked its source for.
pub const IMAGE_WITHIN: Duration = Duration::from_secs(120);

/// The role of this end of a geo link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeoRole {
    /// This region writes the database; the partner is its geo-secondary.
    Primary,
    /// This region's copy is the geo-secondary; the partner is its source.
    Secondary,
}

/// Azure's `replication_state_desc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GeoState {
    /// No handshake yet.
    #[default]
    Pending,
    /// The geo-secondary is taking a full image.
    Seeding,
    /// The geo-secondary follows the log.
    CatchUp,
}

impl GeoState {
    /// The name the views show.
    pub fn desc(self) -> &'static str {
        match self {
            GeoState::Pending => "PENDING",
            GeoState::Seeding => "SEEDING",
            GeoState::CatchUp => "CATCH_UP",
        }
    }
}

/// What one end knows of one geo link (for the views).
#[derive(Debug, Clone)]
pub struct GeoLinkView {
    /// This region's database.
    pub database: String,
    /// The partner region's server name and database.
    pub partner: GeoPartner,
    /// This end's role.
    pub role: GeoRole,
    /// Handshake and seeding state.
    pub state: GeoState,
    /// Connected now.
    pub connected: bool,
    /// Why the link is down, if it is.
    pub last_error: Option<String>,
    /// Where the geo-secondary's log ends, durably.
    pub hardened_lsn: Lsn,
    /// Where the geo-secondary has redone to.
    pub redone_lsn: Lsn,
    /// Wall time (µs since the Unix epoch) of the last message heard.
    pub last_contact_us: Option<i64>,
    /// Commit time (µs since the Unix epoch) of the last transaction the
    /// geo-secondary has redone.
    pub last_replication_us: Option<i64>,
    /// Age of the oldest commit the geo-secondary has not redone (0 when
    /// caught up); None until the first report.
    pub lag_seconds: Option<f64>,
    /// Full-image pages received so far while seeding, and of how many.
    pub seeding: Option<(u64, u64)>,
    /// The LSN range the geo-secondary discarded when it rejoined with a
    /// log that had diverged (an old source after a forced geo-failover:
    /// its transactions there are lost).
    pub discarded: Option<(Lsn, Lsn)>,
}

/// Shared status of one geo link, and the way to end it.
pub struct GeoLinkStatus {
    view: Mutex<GeoLinkView>,
    metrics: Mutex<ReplicaMetrics>,
    /// A termination asked for and not yet sent (see
    /// [`GeoLinkStatus::terminate`]).
    termination: Mutex<Option<Termination>>,
    /// Wakes the link's connection to send it (a permit waits for the next
    /// connection when none is up).
    terminate_now: tokio::sync::Notify,
}

/// A termination of a geo link, asked for by the source's SQL.
struct Termination {
    planned: bool,
    at: Lsn,
    handover: Option<Handover>,
    reply: TerminationReply,
}

/// Where the geo-secondary's log ends once it is independent, or why not.
type TerminationReply = tokio::sync::oneshot::Sender<Result<Lsn, TerminateError>>;

/// Why a termination did not (knowingly) happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TerminateError {
    /// The geo-secondary refused: it is still a geo-secondary, unchanged.
    #[error("the geo-secondary refused: {0}")]
    Refused(String),
    /// No answer: the geo-secondary may or may not have become independent.
    #[error("{0}")]
    NoAnswer(String),
}

impl GeoLinkStatus {
    /// A link not connected yet.
    pub fn new(database: &str, partner: GeoPartner, role: GeoRole) -> Arc<GeoLinkStatus> {
        Arc::new(GeoLinkStatus {
            view: Mutex::new(GeoLinkView {
                database: database.to_string(),
                partner,
                role,
                state: GeoState::Pending,
                connected: false,
                last_error: None,
                hardened_lsn: 0,
                redone_lsn: 0,
                last_contact_us: None,
                last_replication_us: None,
                lag_seconds: None,
                seeding: None,
                discarded: None,
            }),
            metrics: Mutex::new(ReplicaMetrics::default()),
            termination: Mutex::new(None),
            terminate_now: tokio::sync::Notify::new(),
        })
    }

    /// Ends the link from the source's side: the geo-secondary becomes an
    /// independent database of its region — `planned`: once it has redone
    /// exactly up to `at` (the caller holds the source's writes, so its log
    /// ends there); forced: wherever its log ends. Returns where the
    /// geo-secondary's log ends, or why it did not answer within `within`.
    pub async fn terminate(
        &self,
        planned: bool,
        at: Lsn,
        handover: Option<Handover>,
        within: Duration,
    ) -> Result<Lsn, TerminateError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        *self.termination.lock().unwrap_or_else(|e| e.into_inner()) = Some(Termination {
            planned,
            at,
            handover,
            reply,
        });
        self.terminate_now.notify_one();
        let outcome = match tokio::time::timeout(within, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(TerminateError::NoAnswer(
                "the link went down before the geo-secondary answered".into(),
            )),
            Err(_) => Err(TerminateError::NoAnswer(format!(
                "the geo-secondary did not answer within {} s{}",
                within.as_secs(),
                match self.view().last_error {
                    Some(why) => format!(" (the link is down: {why})"),
                    None => String::new(),
                }
            ))),
        };
        // Not sent by now: never sent.
        self.termination
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        outcome
    }

    /// Age of the oldest commit sent to the geo-secondary that it has not
    /// redone yet, now (0 when it has redone everything sent).
    pub fn lag_now(&self) -> f64 {
        self.metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lag_now()
    }

    /// A copy of the status.
    pub fn view(&self) -> GeoLinkView {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut GeoLinkView)) {
        f(&mut self.view.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn down(&self, why: String) {
        self.update(|v| {
            v.connected = false;
            v.last_error = Some(why);
        });
    }
}

/// What the source's primary needs from its surroundings (the cluster's
/// partner registry and the group): names and addresses.
pub trait GeoDirectory: Send + Sync {
    /// This region's server name (`ALTER CLUSTER SET (SERVER_NAME = …)`).
    fn server_name(&self) -> Option<String>;
    /// The registered endpoints (`tcp://host:port`) of a partner server.
    fn partner_endpoints(&self, server: &str) -> Option<Vec<String>>;
    /// The geo-secondary on `server` asks for `database` (a planned
    /// geo-failover): the region hands it over (in the background).
    fn hand_over(&self, database: &str, server: &str);
}

/// What a geo sender needs of the primary group it runs in.
#[async_trait::async_trait]
pub trait GeoSource: Send + Sync {
    /// The group's cluster id.
    fn cluster_id(&self) -> String;
    /// The epoch the source writes in (for a forwarder: the newest epoch
    /// of its source that its log holds).
    fn epoch(&self, db: &Database) -> u64;
    /// A full image of `db` in the log, for a partner that needs seeding;
    /// returns where it starts.
    async fn seed_image(&self, db: &Arc<Database>) -> crate::engine::Result<Lsn>;
    /// The geo-secondary needs the log from `lsn` on (log retention).
    fn hold_log(&self, database: &str, partner: &str, lsn: Lsn);
    /// The geo-secondary's settings as the definition has them now (None:
    /// the link was removed).
    fn partner(&self, database: &str, server: &str) -> Option<GeoPartner>;
    /// Whether the database is READ_ONLY here.
    fn read_only(&self, database: &str) -> bool;
    /// The source this region took the database over from (a
    /// geo-failover), named in `GeoHello` so that it — and its other
    /// geo-secondaries — take this region as their source.
    fn succeeds(&self, database: &str) -> Option<GeoPartner>;
    /// How far the log of `db` may go to a geo-secondary: durable here,
    /// hardened by every SYNCHRONIZED secondary of this region, and at a
    /// transaction boundary (a new primary cuts a transaction whose last
    /// part it lacks), so a local failover that loses no acknowledged
    /// commit never leaves the geo-secondary ahead of the new primary.
    fn shippable(&self, db: &Database) -> Lsn;
    /// Changes whenever a secondary's progress may move
    /// [`GeoSource::shippable`] (None: no secondary is tracked).
    fn progress_changes(&self, database: &str) -> Option<watch::Receiver<u64>>;
}

/// Keeps one geo-secondary of `db` linked and fed, until `stop`.
pub async fn run_geo_sender(
    source: Arc<dyn GeoSource>,
    directory: Arc<dyn GeoDirectory>,
    db: Arc<Database>,
    server: String,
    status: Arc<GeoLinkStatus>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        if *stop.borrow() {
            return;
        }
        let result = tokio::select! {
            r = link_once(&source, &directory, &db, &server, &status) => r,
            _ = stop.changed() => return,
        };
        if let Err(e) = result {
            // A link that was up retries from the shortest pause: the
            // partner region's new primary (after a local failover there)
            // is found within a fraction of a second, not after the pause
            // that earlier failures had grown to.
            if status.view().connected {
                backoff = Duration::from_millis(100);
            }
            tracing::info!(database = %db.name(), partner = %server, "geo-replication link down: {e}");
            status.down(e.to_string());
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Tries every endpoint of the partner until one is its region's primary
/// and takes the link.
async fn link_once(
    source: &Arc<dyn GeoSource>,
    directory: &Arc<dyn GeoDirectory>,
    db: &Arc<Database>,
    server: &str,
    status: &Arc<GeoLinkStatus>,
) -> Result<(), ReplicationError> {
    let Some(partner) = source.partner(db.name(), server) else {
        return Ok(());
    };
    let Some(own) = directory.server_name() else {
        return Err(ReplicationError::Local(
            "this cluster has no server name: run ALTER CLUSTER SET (SERVER_NAME = '…')".into(),
        ));
    };
    let Some(urls) = directory.partner_endpoints(server) else {
        return Err(ReplicationError::Local(format!(
            "partner server \"{server}\" is not registered: run ALTER CLUSTER ADD PARTNER SERVER '{server}' WITH (ENDPOINT_URL = 'tcp://…')"
        )));
    };
    let mut refusals = Vec::new();
    for url in urls {
        let Ok((host, port)) = crate::sql::ag::parse_tcp_url(&url) else {
            refusals.push(format!("{url}: not a tcp://host:port address"));
            continue;
        };
        let Some(addr) = tokio::net::lookup_host((host, port))
            .await
            .ok()
            .and_then(|mut a| a.next())
        else {
            refusals.push(format!("{url}: cannot resolve {host}"));
            continue;
        };
        let socket =
            match tokio::time::timeout(Duration::from_secs(3), crate::net::connect(addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    refusals.push(format!("{url}: {e}"));
                    continue;
                }
                Err(_) => {
                    refusals.push(format!("{url}: connect timed out"));
                    continue;
                }
            };
        let _ = socket.set_nodelay(true);
        match stream_geo(source, directory, db, &own, &partner, socket, status).await {
            // Not that region's primary (or not yet): try the next node.
            Err(ReplicationError::Refused(why)) => refusals.push(format!("{url}: {why}")),
            other => return other,
        }
    }
    Err(ReplicationError::Refused(format!(
        "no node of partner server \"{server}\" took the link ({})",
        refusals.join("; ")
    )))
}

/// One connection of a geo sender, from `GeoHello` to close.
async fn stream_geo(
    source: &Arc<dyn GeoSource>,
    directory: &Arc<dyn GeoDirectory>,
    db: &Arc<Database>,
    own: &str,
    partner: &GeoPartner,
    socket: PartnerStream,
    status: &Arc<GeoLinkStatus>,
) -> Result<(), ReplicationError> {
    let timeout = GEO_SESSION_TIMEOUT;
    let mut conn = Framed::new(socket, WireCodec);
    let name = db.name().to_string();
    send(
        &mut conn,
        Message::GeoHello {
            from_server: own.to_string(),
            cluster_id: source.cluster_id(),
            source_database: name.clone(),
            database: partner.database.clone(),
            epoch: source.epoch(db),
            create: true,
            readable: partner.allow_connections != crate::group::SecondaryConnections::No,
            read_only: source.read_only(&name),
            succeeds: source.succeeds(&name).map(|s| (s.server, s.database)),
        },
        timeout,
    )
    .await?;
    let position = match tokio::time::timeout(timeout, conn.next()).await {
        Err(_) => return Err(ReplicationError::SessionTimeout(timeout)),
        Ok(None) => return Err(ReplicationError::Closed),
        Ok(Some(Err(e))) => return Err(ReplicationError::Wire(e.to_string())),
        Ok(Some(Ok(Message::Welcome { databases, .. }))) => databases.into_iter().next(),
        Ok(Some(Ok(Message::Refuse { reason }))) => return Err(ReplicationError::Refused(reason)),
        Ok(Some(Ok(other))) => {
            return Err(ReplicationError::Unexpected {
                expected: "Welcome or Refuse",
                got: format!("{other:?}"),
            })
        }
    };
    let log = db.log().clone();
    // The log this start is planned from (see `Log::generation`).
    let generation = log.generation();
    let history = db.epoch_history();
    let plan = plan_start(
        OwnLog {
            first: log.first_lsn(),
            end: log.end_lsn(),
            history: &history,
        },
        |lsn| log.record_checksum_at(lsn).ok().flatten(),
        position.as_ref(),
    );
    // What the geo-secondary sends while an image is written for it, other
    // than its Pings (answered meanwhile, so a large image does not run
    // into its session timeout): the reader takes it in first.
    let mut early = Vec::new();
    let (start, seeded) = match plan {
        Start::Continue(from) => (from, false),
        Start::Seed => {
            source.hold_log(&name, &partner.server, log.end_lsn());
            let at = answering_pings(&mut conn, &mut early, timeout, source.seed_image(db))
                .await?
                .map_err(ReplicationError::local)?;
            (at, true)
        }
        Start::Rewind {
            diverged,
            their_end,
        } => {
            tracing::warn!(
                database = %name, partner = %partner.server, diverged, their_end,
                "the geo-secondary's log diverged; it restarts from a full image (LSN {diverged}..{their_end} discarded there)"
            );
            status.update(|v| v.discarded = Some((diverged, their_end)));
            source.hold_log(&name, &partner.server, log.end_lsn());
            let at = answering_pings(&mut conn, &mut early, timeout, source.seed_image(db))
                .await?
                .map_err(ReplicationError::local)?;
            send(
                &mut conn,
                Message::Rewind {
                    database: name.clone(),
                    from_lsn: at,
                },
                timeout,
            )
            .await?;
            (at, true)
        }
    };
    source.hold_log(&name, &partner.server, start);
    let (hardened, redone) = match (&position, seeded) {
        (Some(p), false) => (p.end_lsn, p.redone_lsn),
        _ => (0, 0),
    };
    status.update(|v| {
        v.connected = true;
        v.last_error = None;
        v.state = if seeded {
            GeoState::Seeding
        } else {
            GeoState::CatchUp
        };
        v.hardened_lsn = hardened;
        v.redone_lsn = redone;
        v.last_contact_us = Some(wall_us());
        v.seeding = None;
    });
    tracing::info!(database = %name, partner = %partner.server, start, seeded, "geo-replication link up");

    let (mut sink, mut stream) = conn.split();
    let (control, mut controls) = tokio::sync::mpsc::unbounded_channel::<Control>();
    let heard = Arc::new(AtomicU64::new(monotonic_us()));
    // The answer a sent `Terminate` waits for.
    let awaiting: Arc<Mutex<Option<TerminationReply>>> = Arc::default();
    let reader = {
        let (heard, status, source, db) =
            (heard.clone(), status.clone(), source.clone(), db.clone());
        let awaiting = awaiting.clone();
        let directory = directory.clone();
        let partner = partner.server.clone();
        let mut restarted_at = seeded.then_some(start);
        let mut early = early.into_iter();
        tokio::spawn(async move {
            let outcome = loop {
                let message = match next_message(&mut early, &mut stream).await {
                    None => break ReplicationError::Closed,
                    Some(Err(e)) => break ReplicationError::Wire(e.to_string()),
                    Some(Ok(m)) => m,
                };
                heard.store(monotonic_us(), Ordering::Relaxed);
                status.update(|v| v.last_contact_us = Some(wall_us()));
                match message {
                    Message::Progress {
                        hardened_lsn,
                        redone_lsn,
                        first_lsn,
                        ..
                    } => {
                        // Reports about the log the image has not restarted
                        // yet count for nothing (as on a local link).
                        if restarted_at.is_some_and(|at| at != first_lsn) {
                            continue;
                        }
                        restarted_at = None;
                        let end = db.log().end_lsn();
                        let (lag, last) = {
                            let mut m = status.metrics.lock().unwrap_or_else(|e| e.into_inner());
                            m.progressed(redone_lsn, end);
                            (m.lag_seconds, m.last_redone_commit_us)
                        };
                        source.hold_log(db.name(), &partner, hardened_lsn);
                        status.update(|v| {
                            v.hardened_lsn = hardened_lsn;
                            v.redone_lsn = redone_lsn;
                            v.state = GeoState::CatchUp;
                            v.lag_seconds = lag;
                            v.last_replication_us = last.or(v.last_replication_us);
                        });
                    }
                    Message::ImageRequest { .. } => {
                        // The forwarder seeds a replica of its region: the
                        // image goes into our log and down the link.
                        let (source, db, link) = (source.clone(), db.clone(), control.clone());
                        tokio::spawn(async move {
                            write_asked_image(db.name(), || source.seed_image(&db), &link).await
                        });
                    }
                    Message::Ping { sent_us } => {
                        if control.send(Control::Pong(sent_us)).is_err() {
                            return;
                        }
                    }
                    Message::Pong { .. } => {}
                    Message::FailoverRequest { .. } => {
                        tracing::info!(database = %db.name(), partner = %partner, "the geo-secondary asks for a planned geo-failover");
                        directory.hand_over(db.name(), &partner);
                    }
                    Message::Terminated { end_lsn, .. } => {
                        if let Some(reply) =
                            awaiting.lock().unwrap_or_else(|e| e.into_inner()).take()
                        {
                            let _ = reply.send(Ok(end_lsn));
                        }
                        break ReplicationError::Terminated;
                    }
                    Message::Refuse { reason } => {
                        if let Some(reply) =
                            awaiting.lock().unwrap_or_else(|e| e.into_inner()).take()
                        {
                            let _ = reply.send(Err(TerminateError::Refused(reason.clone())));
                        }
                        break ReplicationError::Refused(reason);
                    }
                    other => {
                        break ReplicationError::Unexpected {
                            expected: "Progress, ImageRequest, FailoverRequest, Ping, Pong, Terminated or Refuse",
                            got: format!("{other:?}"),
                        }
                    }
                }
            };
            let _ = control.send(Control::End(outcome));
        })
    };
    let _reader = AbortOnDrop(reader);
    // Records go out once shippable (see `GeoSource::shippable`): the
    // durable LSN and the synchronized secondaries' progress move it.
    let mut durable = db.log().subscribe_durable();
    let mut progress = source.progress_changes(&name);
    let mut ping = tokio::time::interval(GEO_PING);
    let mut next = start;
    loop {
        if db.log().generation() != generation {
            // A forwarder's own log restarted at a full image from its
            // source (or was cut): the chained geo-secondary's start must be
            // decided again.
            return Err(ReplicationError::Local(format!(
                "the log of {name} was replaced here (a full image from its geo source): the link starts over"
            )));
        }
        let limit = source.shippable(db);
        while next < limit {
            let log = db.log().clone();
            let from = next;
            let mut records = tokio::task::spawn_blocking(move || log.read_raw(from, BATCH_BYTES))
                .await
                .map_err(ReplicationError::local)?
                .map_err(ReplicationError::local)?;
            records.retain(|r| r.end_lsn() <= limit);
            let Some(last) = records.last() else { break };
            next = last.end_lsn();
            status
                .metrics
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .sent(&records, next - from);
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
        }
        let due = status
            .termination
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|t| !t.planned || next >= t.at);
        if due {
            status.terminate_now.notify_one();
        }
        let progressed = async {
            match progress.as_mut() {
                Some(progress) => progress.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = durable.changed() => if changed.is_err() {
                return Err(ReplicationError::PrimaryStopped);
            },
            alive = progressed => if !alive {
                return Err(ReplicationError::PrimaryStopped);
            },
            _ = ping.tick() => {
                let silent = monotonic_us().saturating_sub(heard.load(Ordering::Relaxed));
                if silent > timeout.as_micros() as u64 {
                    return Err(ReplicationError::SessionTimeout(timeout));
                }
                send(&mut sink, Message::Ping { sent_us: monotonic_us() }, timeout).await?;
            }
            control = controls.recv() => match control {
                Some(Control::Pong(sent_us)) => send(&mut sink, Message::Pong { echo_us: sent_us }, timeout).await?,
                Some(Control::End(ReplicationError::Terminated)) => return Ok(()),
                Some(Control::End(reason)) => return Err(reason),
                None => return Err(ReplicationError::Closed),
            },
            _ = status.terminate_now.notified() => {
                let asked = status.termination.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(t) = asked {
                    if t.planned && next < t.at {
                        // Not everything shipped yet: once it is (`due`).
                        *status.termination.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
                        continue;
                    }
                    tracing::info!(database = %name, partner = %partner.server, planned = t.planned, at = t.at, "ending the geo link");
                    *awaiting.lock().unwrap_or_else(|e| e.into_inner()) = Some(t.reply);
                    send(
                        &mut sink,
                        Message::Terminate { database: name.clone(), planned: t.planned, at_lsn: t.at, handover: t.handover },
                        timeout,
                    )
                    .await?;
                }
            }
        }
        if source.partner(&name, &partner.server).is_none() {
            // The link was removed from the definition.
            return Ok(());
        }
    }
}

enum Control {
    Pong(u64),
    End(ReplicationError),
}

/// Writes the full image a forwarder asked for (`ImageRequest`) into the
/// log with `write`, from where the link sends it. The forwarder asks once
/// and waits (see [`Forwarder::fresh_image`]), so a write that fails for a
/// while — a primary whose lease ran out is RESOLVING until it renews it —
/// is tried again, for as long as the forwarder waits and the link (`link`)
/// lasts.
async fn write_asked_image<F, W>(
    database: &str,
    mut write: F,
    link: &tokio::sync::mpsc::UnboundedSender<Control>,
) where
    F: FnMut() -> W,
    W: std::future::Future<Output = crate::engine::Result<Lsn>>,
{
    let deadline = tokio::time::Instant::now() + IMAGE_WITHIN;
    let mut pause = Duration::from_millis(100);
    let mut told = false;
    loop {
        let Err(e) = write().await else {
            return;
        };
        let last = link.is_closed() || tokio::time::Instant::now() + pause >= deadline;
        if last || !told {
            told = true;
            let what = if last { "giving up" } else { "trying again" };
            tracing::warn!(
                database,
                "cannot write the full image a geo-secondary asked for ({what}): {e}"
            );
        }
        if last {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// A source's `GeoHello`, as the forwarder's region decides on it.
#[derive(Debug, Clone)]
pub struct GeoRequest {
    /// The source region's server name.
    pub from_server: String,
    /// The source region's cluster id.
    pub cluster_id: String,
    /// The database's name in the source region.
    pub source_database: String,
    /// The database's name here.
    pub database: String,
    /// The source's epoch.
    pub epoch: u64,
    /// Create the geo-secondary when it does not exist here.
    pub create: bool,
    /// Sessions may read it.
    pub readable: bool,
    /// READ_ONLY in the source region.
    pub read_only: bool,
    /// The source took the database over from this (server, database).
    pub succeeds: Option<(String, String)>,
}

/// A geo-secondary's intake on its region's primary.
pub struct Forwarder {
    /// The source region's server and database.
    pub source: GeoPartner,
    sdb: Arc<SecondaryDb>,
    gate: IntakeGate,
    closed: Arc<std::sync::atomic::AtomicBool>,
    stop: watch::Sender<bool>,
    /// The newest source epoch seen: older sources are refused.
    floor: watch::Sender<u64>,
    /// Bumped to ask the source for a full image.
    image_requests: watch::Sender<u64>,
    /// The last request an image answered: every connection sends the
    /// requests above it (one made while no source was connected, or sent
    /// on a connection that dropped before the source acted on it, goes out
    /// again when the next connects).
    requests_answered: AtomicU64,
    /// Each connection takes a number; an older one stops taking records.
    generation: AtomicU64,
    /// The source's `Terminate` (planned, at LSN, handover), for
    /// [`serve_source`].
    termination: Mutex<Option<(bool, Lsn, Option<Handover>)>>,
    /// Bumped to ask the source for a planned geo-failover.
    failover_requests: watch::Sender<u64>,
    status: Arc<GeoLinkStatus>,
}

impl Forwarder {
    /// Starts taking `db`'s log in from `source` (the caller has fenced the
    /// database as a geo-secondary).
    pub fn start(db: Arc<Database>, source: GeoPartner) -> Arc<Forwarder> {
        let stop = watch::channel(false).0;
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let newest = db.epoch_history().last().map_or(0, |(e, _)| *e);
        let floor = watch::channel(newest).0;
        let gate = IntakeGate {
            closed: closed.clone(),
            stop: stop.subscribe(),
            floor: floor.subscribe(),
        };
        let status = GeoLinkStatus::new(db.name(), source.clone(), GeoRole::Secondary);
        // The geo link watches the hardened and redone LSNs themselves
        // (one database): the moves' signal has no one to wake.
        let sdb = SecondaryDb::start(db, stop.subscribe(), watch::channel(()).0);
        Arc::new(Forwarder {
            source,
            sdb,
            gate,
            closed,
            stop,
            floor,
            image_requests: watch::channel(0).0,
            requests_answered: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            termination: Mutex::new(None),
            failover_requests: watch::channel(0).0,
            status,
        })
    }

    /// The intake (hardened and redone positions).
    pub fn intake(&self) -> &Arc<SecondaryDb> {
        &self.sdb
    }

    /// The link's status, for the views.
    pub fn status(&self) -> &Arc<GeoLinkStatus> {
        &self.status
    }

    /// Stops taking records (this node stops being its region's primary,
    /// or the link ends); redo of what arrived goes on until `stop`.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.stop.send_replace(true);
    }

    /// A full image in the log, from the source, for seeding a replica of
    /// this region: asks the source for one and waits until its first
    /// record is here; returns where it starts.
    pub async fn fresh_image(&self, within: Duration) -> Result<Lsn, String> {
        let asked_at = self.sdb.database().log().end_lsn();
        let mut images = self.sdb.watch_images();
        self.image_requests.send_modify(|n| *n += 1);
        let wait = async {
            loop {
                if let Some(at) = *images.borrow_and_update() {
                    if at >= asked_at {
                        return Ok(at);
                    }
                }
                if images.changed().await.is_err() {
                    return Err("the geo-secondary's intake stopped".to_string());
                }
            }
        };
        let found = tokio::time::timeout(within, wait).await.map_err(|_| {
            format!(
                "the source ({} on server \"{}\") sent no full image within {} s; is the geo link up (sys.dm_geo_replication_link_status)?",
                self.source.database,
                self.source.server,
                within.as_secs()
            )
        })?;
        // An image arrived: every request made so far is answered.
        self.requests_answered
            .fetch_max(*self.image_requests.borrow(), Ordering::SeqCst);
        found
    }

    /// Updates this end's view of the link: positions, and the lag as this
    /// region sees it — 0 when everything received is redone, else the age
    /// of the last transaction redone (the source's commits not yet sent
    /// are unknown here; the source's view counts them).
    fn note_progress(&self) {
        let (hardened, redone) = (self.sdb.hardened(), self.sdb.redone());
        let last = self.sdb.last_redone_commit_us();
        let lag = if redone >= hardened {
            0.0
        } else {
            last.map_or(0.0, |t| (wall_us() - t).max(0) as f64 / 1e6)
        };
        self.status.update(|v| {
            v.hardened_lsn = hardened;
            v.redone_lsn = redone;
            v.lag_seconds = Some(lag);
            v.last_replication_us = last.or(v.last_replication_us);
        });
    }

    /// Asks the connected source to hand the database over (a planned
    /// geo-failover); the source answers with `Terminate` and a handover.
    pub fn request_failover(&self) -> Result<(), String> {
        let view = self.status.view();
        if !view.connected {
            return Err(format!(
                "the geo link from {} on server '{}' is down{}",
                self.source.database,
                self.source.server,
                view.last_error
                    .map(|why| format!(" ({why})"))
                    .unwrap_or_default()
            ));
        }
        self.failover_requests.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Waits until everything received is hardened and redone (the intake
    /// must be closed first).
    pub async fn drain(&self, within: Duration) -> Result<(), String> {
        self.closed.store(true, Ordering::SeqCst);
        self.sdb.drain(std::time::Instant::now() + within).await
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.close();
    }
}

/// The forwarder's end of one geo link, after `GeoHello` named `forwarder`.
pub async fn serve_source(
    conn: &mut Framed<PartnerStream, WireCodec>,
    forwarder: Arc<Forwarder>,
    admission: Arc<dyn Admission>,
    from_server: &str,
    epoch: u64,
) -> Result<(), ReplicationError> {
    let timeout = GEO_SESSION_TIMEOUT;
    let newest = *forwarder.floor.borrow();
    if epoch < newest {
        return Err(ReplicationError::Superseded { epoch, newest });
    }
    forwarder.floor.send_if_modified(|f| {
        let raised = epoch > *f;
        *f = (*f).max(epoch);
        raised
    });
    let generation = forwarder.generation.fetch_add(1, Ordering::SeqCst) + 1;
    let sdb = forwarder.sdb.clone();
    sdb.harden_everything().await?;
    let mut position = sdb.position();
    position.database = forwarder.source.database.clone();
    send(
        conn,
        Message::Welcome {
            replica: from_server.to_string(),
            databases: vec![position],
        },
        timeout,
    )
    .await?;
    let status = forwarder.status.clone();
    status.update(|v| {
        v.connected = true;
        v.last_error = None;
        v.state = GeoState::CatchUp;
        v.last_contact_us = Some(wall_us());
    });
    forwarder.note_progress();
    tracing::info!(source = %from_server, database = %sdb.database().name(), "geo-replication source connected");
    let result = serve_loop(conn, &forwarder, generation, epoch, timeout).await;
    let result = match result {
        Err(ReplicationError::Terminated) => {
            end_here(conn, &forwarder, admission, from_server, timeout).await
        }
        other => other,
    };
    if let Err(e) = &result {
        status.down(e.to_string());
    } else {
        status.update(|v| v.connected = false);
    }
    result
}

async fn serve_loop(
    conn: &mut Framed<PartnerStream, WireCodec>,
    forwarder: &Arc<Forwarder>,
    generation: u64,
    epoch: u64,
    timeout: Duration,
) -> Result<(), ReplicationError> {
    let sdb = forwarder.sdb.clone();
    let source_db = forwarder.source.database.clone();
    let mut hardened = sdb.watch_hardened();
    let mut redone = sdb.watch_redone();
    let mut requests = forwarder.image_requests.subscribe();
    let mut failovers = forwarder.failover_requests.subscribe();
    let mut stop = forwarder.gate.stop.clone();
    let mut ping = tokio::time::interval(GEO_PING);
    let mut heard = monotonic_us();
    let report = |sdb: &SecondaryDb| Message::Progress {
        database: source_db.clone(),
        hardened_lsn: sdb.hardened(),
        redone_lsn: sdb.redone(),
        first_lsn: sdb.database().log().first_lsn(),
    };
    send(conn, report(&sdb), timeout).await?;
    // Requests not answered yet go out on this connection, whatever an
    // earlier one did with them.
    let mut sent = forwarder.requests_answered.load(Ordering::SeqCst);
    loop {
        let asked = *requests.borrow_and_update();
        if asked > sent.max(forwarder.requests_answered.load(Ordering::SeqCst)) {
            send(
                conn,
                Message::ImageRequest {
                    database: source_db.clone(),
                },
                timeout,
            )
            .await?;
        }
        sent = sent.max(asked);
        if forwarder.generation.load(Ordering::SeqCst) != generation {
            return Err(ReplicationError::Local(
                "another connection of the source took the link".into(),
            ));
        }
        tokio::select! {
            message = conn.next() => {
                heard = monotonic_us();
                forwarder.status.update(|v| v.last_contact_us = Some(wall_us()));
                match message {
                    None => return Err(ReplicationError::Closed),
                    Some(Err(e)) => return Err(ReplicationError::Wire(e.to_string())),
                    Some(Ok(Message::Records { records, .. })) => {
                        sdb.receive(records, epoch, &forwarder.gate, super::secondary::Hardening::ByThread)
                            .await?;
                        let pages = sdb.image_progress();
                        forwarder.status.update(|v| {
                            v.seeding = pages;
                            v.state = if pages.is_some() { GeoState::Seeding } else { GeoState::CatchUp };
                        });
                    }
                    Some(Ok(Message::Rewind { from_lsn, .. })) => sdb.expect_image_at(from_lsn),
                    Some(Ok(Message::Ping { sent_us })) => send(conn, Message::Pong { echo_us: sent_us }, timeout).await?,
                    Some(Ok(Message::Pong { .. })) => {}
                    Some(Ok(Message::Terminate { planned, at_lsn, handover, .. })) => {
                        *forwarder.termination.lock().unwrap_or_else(|e| e.into_inner()) = Some((planned, at_lsn, handover));
                        return Err(ReplicationError::Terminated);
                    }
                    Some(Ok(Message::Refuse { reason })) => return Err(ReplicationError::Refused(reason)),
                    Some(Ok(other)) => return Err(ReplicationError::Unexpected {
                        expected: "Records, Rewind, Ping, Pong, Terminate or Refuse",
                        got: format!("{other:?}"),
                    }),
                }
            }
            _ = hardened.changed() => {
                forwarder.note_progress();
                send(conn, report(&sdb), timeout).await?
            }
            _ = redone.changed() => {
                forwarder.note_progress();
                send(conn, report(&sdb), timeout).await?
            }
            _ = requests.changed() => {}
            _ = failovers.changed() => send(conn, Message::FailoverRequest { database: source_db.clone() }, timeout).await?,
            _ = ping.tick() => {
                if monotonic_us().saturating_sub(heard) > timeout.as_micros() as u64 {
                    return Err(ReplicationError::SessionTimeout(timeout));
                }
                send(conn, Message::Ping { sent_us: monotonic_us() }, timeout).await?;
            }
            _ = stop.changed() => return Err(ReplicationError::IntakeClosed),
        }
    }
}

/// The source ended the link (`Terminate`): this region makes its copy an
/// independent database, then says where its log ends (`Terminated`).
async fn end_here(
    conn: &mut Framed<PartnerStream, WireCodec>,
    forwarder: &Arc<Forwarder>,
    admission: Arc<dyn Admission>,
    from_server: &str,
    timeout: Duration,
) -> Result<(), ReplicationError> {
    let Some((planned, at, handover)) = forwarder
        .termination
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    else {
        return Err(ReplicationError::Closed);
    };
    let database = forwarder.sdb.database().name().to_string();
    tracing::info!(database, source = %from_server, planned, at, "the source ends the geo link");
    match admission
        .end_geo_secondary(&database, from_server, planned, at, handover)
        .await
    {
        Ok(end_lsn) => {
            tracing::info!(
                database,
                end_lsn,
                "the geo-secondary is an independent database now"
            );
            send(
                conn,
                Message::Terminated {
                    database: forwarder.source.database.clone(),
                    end_lsn,
                },
                timeout,
            )
            .await
        }
        Err(reason) => {
            tracing::warn!(database, "cannot end the geo link here: {reason}");
            Err(ReplicationError::Refused(reason))
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn wall_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A writer that fails `failures` times (RESOLVING), then writes.
    fn writer(
        failures: usize,
        calls: &AtomicUsize,
    ) -> impl FnMut() -> std::future::Ready<crate::engine::Result<Lsn>> + '_ {
        move || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(if n < failures {
                Err(crate::engine::Error::sql(
                    "25006",
                    "database \"app\" is RESOLVING on this replica",
                ))
            } else {
                Ok(4096)
            })
        }
    }

    #[tokio::test]
    async fn an_asked_image_that_cannot_be_written_yet_is_tried_again_until_it_is() {
        let (link, _open) = tokio::sync::mpsc::unbounded_channel();
        let calls = AtomicUsize::new(0);
        write_asked_image("app", writer(2, &calls), &link).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "two failures, then the image"
        );
    }

    #[tokio::test]
    async fn an_asked_image_is_not_tried_again_once_its_link_has_ended() {
        let (link, ended) = tokio::sync::mpsc::unbounded_channel();
        drop(ended);
        let calls = AtomicUsize::new(0);
        write_asked_image("app", writer(usize::MAX, &calls), &link).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
