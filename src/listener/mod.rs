//! The availability group listener: one address per group that clients
//! keep across failovers, with read-only routing.
//!
//! # What runs where
//! Every node runs a listener for every group it knows with a `LISTENER`
//! clause (`CREATE AVAILABILITY GROUP … LISTENER 'name' (PORT = n)`,
//! `ALTER AVAILABILITY GROUP … ADD LISTENER`): it binds `PORT` (read-write)
//! and `READ_ONLY_PORT` (default `PORT + 1`, read-intent) on the node's
//! `--host`. The sockets are bound with `SO_REUSEPORT`, so several nodes on
//! one machine (`availdb up`, the tests) all listen on the same port and
//! the kernel spreads connections over the live ones; a node whose bind
//! fails (another program holds the port) logs it once and retries every
//! [`RECONCILE_EVERY`] while the other nodes serve.
//!
//! # One session
//! 1. The listener reads the client's first packet (bounded by
//!    [`STARTUP_TIMEOUT`], at most 10 000 bytes): an SSLRequest is
//!    answered `S` and TLS ended here with the node's certificate when the
//!    node has one ([`crate::tls`]; the listener must read the start-up
//!    packet, so it cannot pass TLS through), `N` otherwise; a
//!    GSSENCRequest is answered `N`, a
//!    CancelRequest is passed to every replica of the group, anything
//!    malformed gets a FATAL ErrorResponse (08P01 / 0A000) and the
//!    connection closes. Each connection is its own task, so a slow or
//!    broken client never holds up another.
//! 2. The start-up packet says the intent (`application_intent` as a
//!    parameter or in `options`, or the read-only port). The listener
//!    chooses a replica with [`route`] from the freshest definition this
//!    node knows ([`crate::ag::Manager::current_config`]: the cluster's,
//!    which names a new primary as soon as the cluster decides).
//! 3. It adds `availdb.listener = <group>`, `availdb.route =
//!    primary|secondary`, and the client's address and TLS
//!    ([`CLIENT_ADDR_PARAM`], [`CLIENT_TLS_PARAM`], which the replica's
//!    TLS policy judges) to the start-up packet and sends it to the chosen
//!    replica: to its `READ_ONLY_ROUTING_URL` when routed there as a
//!    secondary, otherwise through its replication endpoint, which hands
//!    connections that open with [`PREAMBLE`] to its front end. The
//!    replica checks, before authentication, that it is what the route
//!    claims (the primary with a lease; a secondary connected to its
//!    primary) and answers FATAL 57P03 otherwise.
//! 4. The listener reads the replica's first message. A 57P03 or a
//!    connection failure marks the replica unavailable for
//!    [`UNAVAILABLE_FOR`] and the listener chooses again; it **holds** the
//!    session this way for up to the node's `--listener-hold-ms` (default
//!    15 s) — a failover in progress — before refusing it with 57P03. Any
//!    other first message goes to the client, and from then on the
//!    listener relays bytes both ways until either side closes.
//!
//! # Sessions for this node
//! When the replica chosen is the listener's own node, the listener does
//! not relay the session to its own endpoint over loopback: it asks the
//! node's front end whether it would refuse the session with 57P03 (the
//! same check the replica makes, [`LocalSessions::refusal`]; a refusal
//! makes the listener choose again, as above) and otherwise hands it the
//! client's connection with the amended start-up packet
//! ([`HandedOver`]). The session is then the front end's alone, as a
//! direct one, with no relay and no second connection. A role change in
//! the instant between the check and the front end's own reaches the
//! client as the front end's 57P03, as on a direct connection. A node
//! whose endpoint takes no listener sessions (no password and an endpoint
//! off loopback) hands none over either.
//!
//! # Sessions for another node on this host
//! When the chosen replica is another node's process on the same host
//! (`availdb up`, the tests), the listener passes it the client's socket
//! itself over a Unix socket named after the replica's endpoint
//! ([`handoff`]), after the same 57P03 check made there. The session then
//! runs as a direct one, without the relay's two extra socket hops per
//! round trip. A replica on another host (no such socket), a session whose
//! TLS ended at the listener, or any failure before the receiver took the
//! session: the listener relays it as above.
//!
//! # Invariants
//! * The listener never authenticates and never reads past the start-up
//!   packet: authentication and every connection setting (`ALLOW_CONNECTIONS`,
//!   [`admit`]) are the replica's, so a direct connection and one through
//!   the listener get the same answers.
//! * A replica refuses a session routed to it in a role it no longer has,
//!   so a stale definition on the listener's node costs a retry, never a
//!   write on a former primary.
//!
//! # Known limits
//! * The hop from the listener to the replica is partner traffic
//!   ([`crate::net::connect_from_any`]): mutual TLS with partner TLS,
//!   plaintext without. A replica trusts the client
//!   address and TLS a listener reports only on its replication endpoint;
//!   a session sent to a `READ_ONLY_ROUTING_URL` is a plaintext client of
//!   that port, which `--require-tls remote` refuses across hosts.
//! * A cancel request through the listener goes to every replica of the
//!   group; the random secret key picks the session.
//! * Connections the kernel queued on a node that is then killed are reset;
//!   clients reconnect.

pub mod handoff;
pub(crate) mod packet;
mod routing;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use crate::ag::Manager;
use crate::group::GroupConfig;
use crate::net::PartnerStream;
use crate::sql::ag::parse_tcp_url;

pub use crate::group::LocalRole;
pub use packet::PacketError;
pub use routing::{admit, route, Intent, Refusal, Route};

/// A connection to a replication endpoint that opens with these bytes is a
/// client session the listener hands over, not replication.
pub const PREAMBLE: &[u8; 4] = b"AVPG";
/// Start-up parameter naming the listener's group.
pub const GROUP_PARAM: &str = "availdb.listener";
/// Start-up parameter saying which role the listener chose the replica
/// for: `primary` or `secondary`.
pub const ROUTE_PARAM: &str = "availdb.route";
/// The start-up parameter (or `-c` option) that declares read intent.
pub const INTENT_PARAM: &str = "application_intent";

/// How long a client has to send its start-up packet.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on connecting to a replica and reading its first answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a replica that failed is passed over.
pub const UNAVAILABLE_FOR: Duration = Duration::from_millis(500);
/// Pause between attempts while a session is held.
pub const RETRY: Duration = Duration::from_millis(100);
/// How often the node compares the listeners it runs with the definitions.
pub const RECONCILE_EVERY: Duration = Duration::from_millis(500);
/// Default of `--listener-hold-ms`.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(15);

/// The read intent of a start-up packet: its `application_intent`
/// parameter and any `-c application_intent=…` in `options`; read-only if
/// either says so.
pub fn intent_of(param: Option<&str>, options: Option<&str>) -> Result<Intent, String> {
    let mut intent = Intent::parse(param)?;
    for (name, value) in options
        .map(crate::frontend::parse_options)
        .unwrap_or_default()
    {
        if name.eq_ignore_ascii_case(INTENT_PARAM)
            && Intent::parse(Some(&value))? == Intent::ReadOnly
        {
            intent = Intent::ReadOnly;
        }
    }
    Ok(intent)
}

/// Start-up parameter a listener adds to a session it forwards: the
/// client's IP address, which the replica's TLS policy judges
/// ([`crate::tls::TlsPolicy`]).
pub const CLIENT_ADDR_PARAM: &str = "availdb.client_addr";
/// Start-up parameter a listener adds to a session it forwards: `on` when
/// the client's connection to the listener used TLS, else `off`.
pub const CLIENT_TLS_PARAM: &str = "availdb.client_tls";

/// What a node's listeners need.
#[derive(Clone)]
pub struct ListenerOptions {
    /// Address to bind (the node's `--host`).
    pub host: IpAddr,
    /// How long a session waits for a primary (or a readable secondary)
    /// before it is refused.
    pub hold: Duration,
    /// The node's TLS for clients that ask for it; None answers `N`.
    pub tls: Option<crate::tls::TlsAcceptor>,
}

/// A client's connection to a listener: plain TCP, or TLS over it.
trait ClientIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync {
    /// The TCP connection itself when nothing runs over it in this
    /// process, so that it can be passed to another ([`handoff`]).
    fn plain_tcp(&self) -> Option<&TcpStream> {
        None
    }
}
impl ClientIo for TcpStream {
    fn plain_tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }
}
impl ClientIo for tokio::io::Empty {}
impl ClientIo for tokio_rustls::server::TlsStream<Box<dyn ClientIo>> {}

/// This node's front end, as its listeners see it: when the replica a
/// session is routed to is this node, the listener hands the client's
/// connection over instead of relaying it to its own endpoint over
/// loopback (see "Sessions for this node").
pub trait LocalSessions: Send + Sync {
    /// The message of the 57P03 refusal this node would give a session
    /// with these start-up parameters (the listener then chooses again, as
    /// for a replica's answer), or None if it would take it.
    fn refusal(&self, params: &HashMap<String, String>) -> Option<String>;
    /// Serves the session from its start-up packet on, as one forwarded by
    /// a listener: the client's address and TLS are the ones the start-up
    /// packet reports.
    fn serve(self: Arc<Self>, session: HandedOver, peer: SocketAddr);
}

/// A client connection handed to this node's front end: the start-up
/// packet the listener read and amended is read first, then the client's
/// own bytes; writes go to the client.
pub struct HandedOver {
    head: Vec<u8>,
    at: usize,
    client: Box<dyn ClientIo>,
    /// Counts it in `availdb_listener_handed_over_sessions` while it lives.
    _open: crate::telemetry::Open,
}

impl HandedOver {
    /// The session of a client of `group`'s listener whose amended
    /// start-up packet is `head`; counted open until it is dropped.
    fn new(head: Vec<u8>, client: Box<dyn ClientIo>, group: &str) -> HandedOver {
        HandedOver {
            head,
            at: 0,
            client,
            _open: crate::telemetry::get().listener_handed_over_session(group),
        }
    }
}

impl tokio::io::AsyncRead for HandedOver {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.at < this.head.len() {
            let n = buf.remaining().min(this.head.len() - this.at);
            buf.put_slice(&this.head[this.at..this.at + n]);
            this.at += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut this.client).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for HandedOver {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.client).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.client).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.client.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.client).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.client).poll_shutdown(cx)
    }
}

/// One bound listener port.
struct Running {
    group: String,
    read_only: bool,
    task: JoinHandle<()>,
}

/// The listeners of one node.
pub struct Listeners {
    manager: Arc<Manager>,
    options: ListenerOptions,
    /// This node's front end, for sessions routed to this node; None
    /// relays them to its endpoint like any other.
    local: Option<Arc<dyn LocalSessions>>,
    running: Mutex<HashMap<u16, Running>>,
    /// Ports whose bind failure was already logged.
    failed_binds: Mutex<HashSet<u16>>,
    /// Replicas passed over until the instant (they failed lately).
    unavailable: Mutex<HashMap<String, Instant>>,
    /// Round-robin counter for load-balanced routing sets. Every node of a
    /// group runs a listener and the kernel hands each connection to any
    /// of them, so each starts at its own random point: otherwise every
    /// node's first session would go to the same replica.
    turn: AtomicUsize,
}

/// A start for the round-robin counter that differs between processes.
fn random_start() -> usize {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (nanos ^ std::process::id().rotate_left(16)) as usize
}

impl Listeners {
    /// Starts following the node's group definitions: binds and unbinds
    /// listener ports as they appear and change.
    pub fn spawn(
        manager: Arc<Manager>,
        options: ListenerOptions,
        local: Option<Arc<dyn LocalSessions>>,
    ) -> Arc<Listeners> {
        let listeners = Arc::new(Listeners {
            manager,
            options,
            local,
            running: Mutex::new(HashMap::new()),
            failed_binds: Mutex::new(HashSet::new()),
            unavailable: Mutex::new(HashMap::new()),
            turn: AtomicUsize::new(random_start()),
        });
        let weak = Arc::downgrade(&listeners);
        tokio::spawn(async move {
            while let Some(listeners) = weak.upgrade() {
                listeners.reconcile();
                drop(listeners);
                tokio::time::sleep(RECONCILE_EVERY).await;
            }
        });
        listeners
    }

    /// Binds the ports the definitions ask for and closes the others.
    fn reconcile(self: &Arc<Self>) {
        let mut wanted: HashMap<u16, (String, bool)> = HashMap::new();
        for config in self.manager.current_configs() {
            if let Some(l) = &config.listener {
                wanted.entry(l.port).or_insert((config.name.clone(), false));
                wanted
                    .entry(l.read_only_port)
                    .or_insert((config.name.clone(), true));
            }
        }
        let mut running = lock(&self.running);
        running.retain(|port, r| {
            let keep =
                wanted.get(port) == Some(&(r.group.clone(), r.read_only)) && !r.task.is_finished();
            if !keep {
                tracing::info!(port, group = %r.group, "listener port closed");
                r.task.abort();
            }
            keep
        });
        for (port, (group, read_only)) in wanted {
            if running.contains_key(&port) {
                continue;
            }
            let addr = SocketAddr::new(self.options.host, port);
            match bind_shared(addr) {
                Ok(listener) => {
                    lock(&self.failed_binds).remove(&port);
                    tracing::info!(%addr, %group, read_only, "listener ready");
                    let task =
                        tokio::spawn(self.clone().accept_loop(listener, group.clone(), read_only));
                    running.insert(
                        port,
                        Running {
                            group,
                            read_only,
                            task,
                        },
                    );
                }
                Err(e) => {
                    if lock(&self.failed_binds).insert(port) {
                        tracing::warn!(%addr, %group, "cannot listen for availability group {group} on {addr}: {e}; the group's other nodes serve its listener, and this node retries");
                    }
                }
            }
        }
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, group: String, read_only: bool) {
        loop {
            match listener.accept().await {
                Ok((socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    let this = self.clone();
                    let group = group.clone();
                    tokio::spawn(async move {
                        this.session(socket, peer, &group, read_only).await;
                        tracing::debug!(%peer, %group, "listener session ended");
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listener accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn available(&self, replica: &str) -> bool {
        let now = Instant::now();
        let mut map = lock(&self.unavailable);
        map.retain(|_, until| *until > now);
        !map.contains_key(&replica.to_ascii_lowercase())
    }

    fn mark_unavailable(&self, replica: &str) {
        lock(&self.unavailable).insert(
            replica.to_ascii_lowercase(),
            Instant::now() + UNAVAILABLE_FOR,
        );
    }

    /// Serves one client connection from its first byte to its last.
    async fn session(
        &self,
        socket: TcpStream,
        peer: SocketAddr,
        group: &str,
        read_only_port: bool,
    ) {
        let mut client: Box<dyn ClientIo> = Box::new(socket);
        let mut secure = false;
        let opening = read_opening(&mut client, self.options.tls.as_ref(), &mut secure);
        let mut startup = match tokio::time::timeout(STARTUP_TIMEOUT, opening).await {
            Err(_) => {
                let _ = refuse(&mut client, "08P01", "no start-up packet within 10 s", None).await;
                return;
            }
            Ok(Err(OpeningError::Io(e))) => {
                tracing::debug!(error = %e, "a client left before its start-up packet was complete");
                return;
            }
            Ok(Err(OpeningError::Packet(e))) => {
                let _ = refuse(&mut client, e.sqlstate(), &e.to_string(), None).await;
                return;
            }
            Ok(Ok(Opening::Cancel(packet))) => {
                self.pass_cancel(group, packet).await;
                return;
            }
            Ok(Ok(Opening::Startup(startup))) => startup,
        };
        let intent = match intent_of(startup.get(INTENT_PARAM), startup.get("options")) {
            Ok(_) if read_only_port => {
                startup.set(INTENT_PARAM, "read_only");
                Intent::ReadOnly
            }
            Ok(intent) => intent,
            Err(message) => {
                let _ = refuse(&mut client, "22023", &message, None).await;
                return;
            }
        };
        let database = startup
            .database()
            .unwrap_or(crate::frontend::USER)
            .to_string();
        crate::telemetry::get().listener_session(group);
        startup.set(GROUP_PARAM, group);
        startup.set(CLIENT_ADDR_PARAM, &peer.ip().to_string());
        startup.set(CLIENT_TLS_PARAM, if secure { "on" } else { "off" });
        let deadline = Instant::now() + self.options.hold;
        let mut last;
        loop {
            let Some(config) = self.manager.current_config(group) else {
                let message =
                    format!("availability group \"{group}\" is no longer defined on this node");
                let _ = refuse(&mut client, "57P03", &message, None).await;
                return;
            };
            let turn = self.turn.fetch_add(1, Ordering::Relaxed);
            let chosen = route(
                &config,
                intent,
                config.has_database(&database),
                &|name| self.available(name),
                turn,
            );
            let decision = match &chosen {
                Route::Primary(_) => "primary",
                Route::Secondary(_) => "secondary",
                Route::Wait(_) => "wait",
                Route::Refuse(_) => "refuse",
            };
            crate::telemetry::get().routed(group, decision);
            let (replica, as_primary) = match chosen {
                Route::Primary(name) => (name, true),
                Route::Secondary(name) => (name, false),
                Route::Refuse(why) => {
                    let hint = "check SECONDARY_ROLE (ALLOW_CONNECTIONS) of the replicas in the routing list, or connect without read intent";
                    let _ = refuse(&mut client, "08004", &why, Some(hint)).await;
                    return;
                }
                Route::Wait(why) => {
                    last = why;
                    if Instant::now() >= deadline {
                        break;
                    }
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            startup.set(
                ROUTE_PARAM,
                if as_primary { "primary" } else { "secondary" },
            );
            // The amended start-up packet, as the chosen replica reads it.
            let head = startup.encode();
            let local = self
                .local
                .as_ref()
                .filter(|_| replica.eq_ignore_ascii_case(self.manager.node()));
            // Why this replica did not take the session; it is passed over.
            last = match local {
                Some(local) => {
                    let params: HashMap<String, String> = startup.params.iter().cloned().collect();
                    match local.refusal(&params) {
                        None => {
                            crate::telemetry::get().listener_handover(group);
                            let session = HandedOver::new(head, client, group);
                            local.clone().serve(session, peer);
                            return;
                        }
                        Some(why) => why,
                    }
                }
                None => match self.pass(&config, &replica, &*client, &head).await {
                    Some(handoff::Offer::Taken) => {
                        crate::telemetry::get().listener_handover(group);
                        return;
                    }
                    Some(handoff::Offer::Refused(why)) => why,
                    Some(handoff::Offer::NotHere(_)) | None => {
                        match relay(&config, &replica, as_primary, &head, &mut client).await {
                            None => return,
                            Some(why) => why,
                        }
                    }
                },
            };
            self.mark_unavailable(&replica);
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(RETRY).await;
        }
        let message = format!(
            "no replica of availability group \"{group}\" took the session within {} ms: {last}",
            self.options.hold.as_millis()
        );
        let hint = "the group may be failing over: retry; sys.availability_groups on any replica names the primary";
        let _ = refuse(&mut client, "57P03", &message, Some(hint)).await;
    }

    /// Offers a plaintext client's connection to `replica`'s process when
    /// it runs on this host ([`handoff`]); None for a session whose TLS
    /// ended here.
    async fn pass(
        &self,
        config: &GroupConfig,
        replica: &str,
        client: &dyn ClientIo,
        startup: &[u8],
    ) -> Option<handoff::Offer> {
        let tcp = client.plain_tcp()?;
        let endpoint = config.replica(replica)?.endpoint;
        let offer = handoff::offer(endpoint, tcp, startup).await;
        if let handoff::Offer::NotHere(e) = &offer {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                tracing::warn!(%endpoint, error = %e, "not passing sessions to this handover socket, relaying them");
            } else {
                tracing::trace!(%endpoint, error = %e, "replica not on this host or not taking sessions: relaying");
            }
        }
        Some(offer)
    }

    /// Passes a cancel request to every replica of the group: only the one
    /// running the session with that key acts on it.
    async fn pass_cancel(&self, group: &str, packet: Vec<u8>) {
        let Some(config) = self.manager.current_config(group) else {
            return;
        };
        let sends = config.replicas.iter().map(|r| {
            let mut bytes = PREAMBLE.to_vec();
            bytes.extend_from_slice(&packet);
            let endpoint = r.endpoint;
            async move {
                let send = async {
                    let mut s = crate::net::connect_from_any(endpoint).await?;
                    s.write_all(&bytes).await?;
                    s.shutdown().await
                };
                let _ = tokio::time::timeout(CONNECT_TIMEOUT, send).await;
            }
        });
        futures::future::join_all(sends).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Binds `addr` so that other nodes on this machine can bind it too.
fn bind_shared(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// What opens a client connection.
enum Opening {
    Cancel(Vec<u8>),
    Startup(packet::Startup),
}

enum OpeningError {
    Io(std::io::Error),
    Packet(PacketError),
}

impl From<std::io::Error> for OpeningError {
    fn from(e: std::io::Error) -> Self {
        OpeningError::Io(e)
    }
}

/// Reads the client's first packets and returns the start-up packet or
/// cancel request that follows them. An SSLRequest is answered `S` and the
/// TLS handshake run when the node has a certificate (`client` becomes the
/// TLS stream and `secure` true), `N` otherwise; a GSSENCRequest `N`. A
/// client sends each at most once.
async fn read_opening(
    client: &mut Box<dyn ClientIo>,
    tls: Option<&crate::tls::TlsAcceptor>,
    secure: &mut bool,
) -> Result<Opening, OpeningError> {
    let mut negotiated = 0;
    loop {
        let len = client.read_u32().await?;
        let body_len = packet::body_len(len).map_err(OpeningError::Packet)?;
        let mut body = vec![0; body_len];
        client.read_exact(&mut body).await?;
        match packet::decode_first(&body).map_err(OpeningError::Packet)? {
            packet::FirstPacket::SslRequest if negotiated < 2 && !*secure && tls.is_some() => {
                negotiated += 1;
                client.write_all(b"S").await?;
                let plain = std::mem::replace(client, Box::new(tokio::io::empty()));
                if let Some(tls) = tls {
                    *client = Box::new(tls.accept(plain).await?);
                    *secure = true;
                }
            }
            packet::FirstPacket::SslRequest | packet::FirstPacket::GssEncRequest
                if negotiated < 2 =>
            {
                negotiated += 1;
                client.write_all(b"N").await?;
            }
            packet::FirstPacket::SslRequest | packet::FirstPacket::GssEncRequest => {
                return Err(OpeningError::Packet(PacketError::Malformed(
                    "more encryption requests than a client sends",
                )))
            }
            packet::FirstPacket::Cancel(bytes) => return Ok(Opening::Cancel(bytes)),
            packet::FirstPacket::Startup(s) => return Ok(Opening::Startup(s)),
        }
    }
}

/// Sends a FATAL ErrorResponse and closes.
async fn refuse(
    client: &mut Box<dyn ClientIo>,
    sqlstate: &str,
    message: &str,
    hint: Option<&str>,
) -> std::io::Result<()> {
    tracing::debug!(sqlstate, message, "listener refused a session");
    client
        .write_all(&packet::error_response("FATAL", sqlstate, message, hint))
        .await?;
    client.shutdown().await
}

/// Relays the session to `replica` until either side closes; None once
/// the replica took it, or why it did not (a 57P03, a failed connection):
/// the listener then chooses again.
async fn relay(
    config: &GroupConfig,
    replica: &str,
    as_primary: bool,
    startup: &[u8],
    client: &mut Box<dyn ClientIo>,
) -> Option<String> {
    let (mut server, first) = match open(config, replica, as_primary, startup).await {
        Ok(opened) => opened,
        Err(e) => return Some(format!("replica \"{replica}\": {e}")),
    };
    let refused = first.first() == Some(&b'E')
        && packet::error_sqlstate(&first[5..]).as_deref() == Some("57P03");
    if refused {
        return Some(
            packet::error_fields(&first[5..])
                .into_iter()
                .find(|(code, _)| *code == b'M')
                .map_or_else(
                    || format!("replica \"{replica}\" refused the session"),
                    |(_, m)| m,
                ),
        );
    }
    let _relayed = crate::telemetry::get().listener_relayed_session(&config.name, replica);
    if client.write_all(&first).await.is_ok() {
        let _ = tokio::io::copy_bidirectional(client, &mut server).await;
    }
    None
}

/// Connects to `replica` (its routing URL as a secondary, else its
/// endpoint), sends the start-up packet and reads the first answer.
async fn open(
    config: &GroupConfig,
    replica: &str,
    as_primary: bool,
    startup: &[u8],
) -> std::io::Result<(PartnerStream, Vec<u8>)> {
    let r = config.replica(replica).ok_or_else(|| {
        std::io::Error::other(format!("no replica \"{replica}\" in the definition"))
    })?;
    let url = r.read_only_routing_url.as_deref().filter(|_| !as_primary);
    let attempt = async {
        let (mut server, mut bytes) = match url {
            Some(url) => {
                let (host, port) = parse_tcp_url(url).map_err(std::io::Error::other)?;
                let server = TcpStream::connect((host, port)).await?;
                server.set_nodelay(true)?;
                (PartnerStream::Plain(server), Vec::new())
            }
            None => (
                crate::net::connect_from_any(r.endpoint).await?,
                PREAMBLE.to_vec(),
            ),
        };
        bytes.extend_from_slice(startup);
        server.write_all(&bytes).await?;
        let first = read_message(&mut server).await?;
        Ok((server, first))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"))?
}

/// Reads one typed backend message (type byte and length included).
async fn read_message(server: &mut PartnerStream) -> std::io::Result<Vec<u8>> {
    let mut header = [0u8; 5];
    server.read_exact(&mut header).await?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if !(4..=packet::MAX_ANSWER_LEN).contains(&len) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("first answer of length {len}"),
        ));
    }
    let mut message = header.to_vec();
    message.resize(len as usize + 1, 0);
    server.read_exact(&mut message[5..]).await?;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_relayed_session_is_counted_while_it_lasts() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // The replica: takes the preamble and the start-up packet, answers
        // AuthenticationOk, echoes one byte, then ends the session.
        let replica = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = crate::group::fixtures::group(&["r1", "r2"]);
        config.name = "relay-count".into();
        config.replicas[0].endpoint = replica.local_addr().unwrap();
        let startup = b"startup!".to_vec();
        let (go_on, mut went_on) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(async move {
            let (mut s, _) = replica.accept().await.unwrap();
            let mut first = [0u8; 12];
            s.read_exact(&mut first).await.unwrap();
            assert_eq!(
                &first, b"AVPGstartup!",
                "preamble, then the start-up packet"
            );
            s.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0]).await.unwrap();
            let mut byte = [0u8; 1];
            s.read_exact(&mut byte).await.unwrap();
            s.write_all(&byte).await.unwrap();
            let _ = (&mut went_on).await;
        });
        let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(front.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = front.accept().await.unwrap();
        let mut accepted: Box<dyn ClientIo> = Box::new(accepted);
        let relaying = tokio::spawn(async move {
            let relayed = relay(&config, "r1", true, &startup, &mut accepted);
            tokio::time::timeout(Duration::from_secs(20), relayed).await
        });
        let open = || {
            crate::telemetry::get()
                .listener_relayed
                .get_or_create(&vec![
                    ("group".to_string(), "relay-count".to_string()),
                    ("replica".to_string(), "r1".to_string()),
                ])
                .get()
        };
        let mut answer = [0u8; 10];
        client.write_all(b"x").await.unwrap();
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(
            &answer, b"R\0\0\0\x08\0\0\0\0x",
            "the replica's answer, then its echo"
        );
        assert_eq!(open(), 1, "one relayed session open");
        // Both leave: the relay ends once each side has closed.
        drop(client);
        go_on.send(()).unwrap();
        served.await.unwrap();
        let relayed = relaying
            .await
            .unwrap()
            .expect("the relay ends with its sides");
        assert_eq!(relayed, None, "the replica took the session");
        assert_eq!(open(), 0, "the session ended");
    }

    #[test]
    fn read_intent_comes_from_the_parameter_or_the_options() {
        assert_eq!(intent_of(None, None), Ok(Intent::ReadWrite));
        assert_eq!(intent_of(Some("read_only"), None), Ok(Intent::ReadOnly));
        assert_eq!(
            intent_of(None, Some("-c application_intent=read_only")),
            Ok(Intent::ReadOnly)
        );
        assert_eq!(
            intent_of(
                Some("read_write"),
                Some("--application-intent=ReadOnly -c x=y")
            ),
            Ok(Intent::ReadOnly)
        );
        assert_eq!(
            intent_of(None, Some("-c statement_timeout=5s")),
            Ok(Intent::ReadWrite)
        );
        assert!(intent_of(None, Some("-c application_intent=maybe")).is_err());
    }
}
