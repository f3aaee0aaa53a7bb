//! Raft RPCs between nodes: openraft's [`RaftNetworkFactory`] and
//! [`RaftNetwork`] on top of a [`Transport`], the TCP transport, and the
//! server side ([`serve_rpc`]).
//!
//! # Conversation
//! The caller sends one request frame ([`super::frame`]: length, JSON,
//! crc32c) on a connection to the target's endpoint and reads one response
//! frame: **one request at a time per connection**, no request ids.
//! [`serve_rpc`] answers any number of requests on a connection, in order.
//!
//! [`TcpTransport`] keeps the connections it is done with (a few per
//! target, [`POOL_PER_TARGET`]) and uses them again: a leader sends each
//! follower a heartbeat every 50 ms, and under partner TLS a connection per
//! heartbeat was a full mutual handshake each time, enough on a loaded
//! machine to make heartbeats miss their 50 ms limit. A kept connection
//! is not used again once it has been idle for [`POOL_IDLE`] (the other
//! side may have gone), nor once the node's partner TLS files were read
//! again (it was made with the old ones). When a kept connection fails
//! before its answer, a Raft RPC (AppendEntries, Vote, InstallSnapshot:
//! Raft tolerates them twice) is sent again on a new connection within the
//! same time limit; a forwarded proposal or membership change is not (it
//! may have been applied), and its caller sees the error.
//!
//! The serving side ends a connection after answering a request when the
//! node's partner TLS files were read again since the connection was
//! admitted (`still_admitted` of [`serve_rpc`]): a revoked certificate, or
//! a CA no longer trusted, has at most one more answer on a kept
//! connection, and its next connection is refused at the handshake.
//!
//! A [`TcpTransport::with_preamble`] first sends its preamble (e.g. a
//! discriminator byte for a shared port), which the accepting side consumes
//! before handing the stream to [`serve_rpc`]. Snapshot chunks (1 MiB at
//! most) travel as JSON arrays of numbers, about four times their size:
//! fine for a state of group definitions, not for bulk data.
//!
//! ```text
//! request  = {"target": node id, "from": node id, "cluster": cluster id,
//!             "request": {"AppendEntries" | "Vote" | "InstallSnapshot" | "Propose" | "ChangeMembers": …}}
//! response = {"AppendEntries" | "Vote" | "InstallSnapshot": {"Ok": openraft's response} | {"Err": openraft's RaftError}}
//!          | {"Proposed": …} | {"MembersChanged": …}
//!          | {"Refused": reason} | {"WrongCluster": Refusal}
//! ```
//! A request for another node id (a stale endpoint in the membership) or a
//! malformed frame is answered `Refused` with the reason; after a malformed
//! frame the server also closes the connection, since the stream has lost
//! its framing. Every request then passes the cluster identity check
//! (`identity.rs`): one from another cluster, or without a cluster id, is
//! answered `WrongCluster` and never reaches Raft; a node in no cluster yet
//! adopts the id of the first AppendEntries, Vote or InstallSnapshot it
//! gets.
//!
//! # Errors to openraft
//! A refused connection is `Unreachable` (openraft backs off before
//! retrying), and so is a `WrongCluster` answer (the endpoint is another
//! cluster's node; the refusal is logged, throttled); no answer within the
//! RPC's time limit is `Timeout`, anything else on the way is `Network`,
//! and the target's own error is `RemoteError`.
//!
//! # Who answers ([`Contacts`])
//! Every answer a node gets to its Raft requests (any answer but a
//! refusal, a `RemoteError` included: the target is up and talking) is
//! stamped with the time it arrived. On the leader, which sends every
//! member a heartbeat every 50 ms, that is when each member was last heard
//! from: the automatic failover's reachability (`ag/failover.rs`).
//! openraft 0.9's metrics do not say it: per follower they hold only the
//! matched log id, and only for the quorum the time of the last
//! acknowledgement.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RPCTypes, Raft};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::frame::{self, FrameError};
use super::identity::{admit, ClusterId, Identity, Refusal, Verdict};
use super::lease::LeaseBook;
use super::{NodeId, NodeInfo, TypeConfig};

/// A Raft RPC.
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcRequest {
    /// A command forwarded to the leader by a node that is not (only the
    /// leader takes proposals).
    Propose(super::Command),
    /// Log replication and heartbeat.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Election.
    Vote(VoteRequest<NodeId>),
    /// One chunk of a snapshot.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A change of the voters forwarded to the leader.
    ChangeMembers(super::MemberChange),
}

impl RpcRequest {
    /// The request's name, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            RpcRequest::Propose(_) => "Propose",
            RpcRequest::AppendEntries(_) => "AppendEntries",
            RpcRequest::Vote(_) => "Vote",
            RpcRequest::InstallSnapshot(_) => "InstallSnapshot",
            RpcRequest::ChangeMembers(_) => "ChangeMembers",
        }
    }

    /// True for Raft's own RPCs, which Raft tolerates receiving twice: a
    /// kept connection that failed may send them again on a new one.
    fn may_repeat(&self) -> bool {
        matches!(
            self,
            RpcRequest::AppendEntries(_) | RpcRequest::Vote(_) | RpcRequest::InstallSnapshot(_)
        )
    }

    /// True for the requests that add a node to a cluster (what a new
    /// cluster's leader, or a leader adding a node, sends it first).
    fn joins(&self) -> bool {
        matches!(
            self,
            RpcRequest::AppendEntries(_) | RpcRequest::Vote(_) | RpcRequest::InstallSnapshot(_)
        )
    }
}

/// The answer to an [`RpcRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcResponse {
    /// Answer to `AppendEntries`.
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// Answer to `Vote`.
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// Answer to `InstallSnapshot`.
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// The request was not handled, and why.
    Refused(String),
    /// The outcome of a forwarded proposal, or why it was not applied.
    Proposed(Result<super::CommandResult, String>),
    /// The outcome of a forwarded change of the voters.
    MembersChanged(Result<(), String>),
    /// The request was refused by the cluster identity check: it came from
    /// another cluster, or carried no cluster id (`identity.rs`).
    WrongCluster(Refusal),
}

/// What travels in a request frame.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// The node the sender means to reach.
    pub target: NodeId,
    /// The sending node, for the receiver's log.
    #[serde(default)]
    pub from: Option<NodeId>,
    /// The sender's cluster (none only from a node in no cluster, or from
    /// an availdb older than cluster ids: refused either way).
    #[serde(default)]
    pub cluster: Option<ClusterId>,
    /// The request.
    pub request: RpcRequest,
}

/// Why an RPC got no answer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Nobody accepts connections at the endpoint.
    #[error("cannot connect to cluster node {target} at {endpoint}: {source}")]
    Unreachable {
        /// Target node.
        target: NodeId,
        /// Its endpoint.
        endpoint: std::net::SocketAddr,
        /// Cause.
        source: io::Error,
    },
    /// No answer in time.
    #[error("no answer from cluster node {target} within {after:?}")]
    Timeout {
        /// Target node.
        target: NodeId,
        /// The time limit.
        after: Duration,
    },
    /// The connection failed or carried a bad frame.
    #[error("cluster RPC to node {target} failed: {source}")]
    Frame {
        /// Target node.
        target: NodeId,
        /// Cause.
        source: FrameError,
    },
    /// The target refused the request.
    #[error("cluster node {target} refused the request: {reason}")]
    Refused {
        /// Target node.
        target: NodeId,
        /// Its reason.
        reason: String,
    },
    /// The target belongs to another cluster (or to none, or runs an
    /// availdb from before cluster ids).
    #[error("cluster node {target} at {endpoint} refused the request: {refusal}")]
    WrongCluster {
        /// Target node.
        target: NodeId,
        /// Its endpoint.
        endpoint: SocketAddr,
        /// Why.
        refusal: Refusal,
    },
}

/// Carries one RPC to a node and brings back its answer. [`TcpTransport`]
/// is the real one; tests plug in an in-process one.
pub trait Transport: Send + Sync + 'static {
    /// Sends `envelope` to node `envelope.target` (described by `node`) and
    /// waits at most `timeout` for the answer.
    fn call(
        &self,
        node: &NodeInfo,
        envelope: Envelope,
        timeout: Duration,
    ) -> impl Future<Output = Result<RpcResponse, TransportError>> + Send;
}

/// Connections kept per target for later requests.
pub const POOL_PER_TARGET: usize = 4;
/// A kept connection idle longer than this is closed, not used again.
pub const POOL_IDLE: Duration = Duration::from_secs(5);

/// RPCs over TCP (or partner TLS), on kept connections where it can (see
/// the module docs). Clones share the kept connections.
#[derive(Debug, Clone, Default)]
pub struct TcpTransport {
    /// Bytes sent on each new connection before its first request frame.
    preamble: Vec<u8>,
    /// Per endpoint: connections done with, and connections being opened.
    pools: Arc<Mutex<BTreeMap<SocketAddr, Pool>>>,
}

/// The connections to one endpoint that no request holds.
#[derive(Debug, Default)]
struct Pool {
    /// Done with, newest last.
    idle: Vec<Kept>,
    /// Being opened (connect and handshake) at the moment.
    opening: usize,
}

/// A connection kept for another request.
#[derive(Debug)]
struct Kept {
    stream: crate::net::PartnerStream,
    /// The partner TLS generation it was made with
    /// ([`crate::net::tls_generation`]).
    generation: u64,
    /// When its last answer arrived.
    since: Instant,
}

impl TcpTransport {
    /// A transport that opens each connection with `preamble`, e.g. a
    /// discriminator byte when cluster RPCs share a port with another
    /// protocol; the server reads it before calling [`serve_rpc`].
    pub fn with_preamble(preamble: impl Into<Vec<u8>>) -> TcpTransport {
        TcpTransport {
            preamble: preamble.into(),
            ..TcpTransport::default()
        }
    }

    fn lock_pools(&self) -> std::sync::MutexGuard<'_, BTreeMap<SocketAddr, Pool>> {
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A kept connection to `endpoint` that may be used again, if any.
    fn take(&self, endpoint: SocketAddr) -> Option<Kept> {
        let generation = crate::net::tls_generation();
        let mut pools = self.lock_pools();
        let idle = &mut pools.get_mut(&endpoint)?.idle;
        let now = Instant::now();
        idle.retain(|k| k.generation == generation && now.duration_since(k.since) < POOL_IDLE);
        idle.pop()
    }

    /// Keeps `kept` for a later request to `endpoint`, unless enough are.
    fn keep(&self, endpoint: SocketAddr, kept: Kept) {
        let mut pools = self.lock_pools();
        let idle = &mut pools.entry(endpoint).or_default().idle;
        if idle.len() < POOL_PER_TARGET {
            idle.push(kept);
        }
    }

    /// A new connection to `target` at `endpoint`, its preamble sent.
    ///
    /// The connect and handshake run in a task of their own, bounded by
    /// [`crate::net::HANDSHAKE_TIMEOUT`]: when the RPC's own limit (50 ms
    /// for a heartbeat) runs out first, the connection is still made and
    /// kept for the next RPC, so a handshake slower than a heartbeat's
    /// limit (a loaded machine) delays one RPC, not all of them. At most
    /// [`POOL_PER_TARGET`] are opened at once per endpoint; past that the
    /// target counts as unreachable for now.
    async fn open(&self, target: NodeId, endpoint: SocketAddr) -> Result<Kept, TransportError> {
        let unreachable = |source| TransportError::Unreachable {
            target,
            endpoint,
            source,
        };
        {
            let mut pools = self.lock_pools();
            let pool = pools.entry(endpoint).or_default();
            if pool.opening >= POOL_PER_TARGET {
                return Err(unreachable(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("{POOL_PER_TARGET} connections to it are being opened already"),
                )));
            }
            pool.opening += 1;
        }
        let (made, wanted) = tokio::sync::oneshot::channel();
        let transport = self.clone();
        tokio::spawn(async move {
            let opened =
                tokio::time::timeout(crate::net::HANDSHAKE_TIMEOUT, transport.connect(endpoint))
                    .await
                    .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()));
            if let Some(pool) = transport.lock_pools().get_mut(&endpoint) {
                pool.opening -= 1;
            }
            if let Err(Ok(kept)) = made.send(opened) {
                transport.keep(endpoint, kept);
            }
        });
        match wanted.await {
            Ok(opened) => opened.map_err(unreachable),
            Err(_) => Err(unreachable(io::Error::other("the connecting task ended"))),
        }
    }

    /// Connects to `endpoint` and sends the preamble.
    async fn connect(&self, endpoint: SocketAddr) -> io::Result<Kept> {
        let generation = crate::net::tls_generation();
        let mut stream = crate::net::connect(endpoint).await?;
        if !self.preamble.is_empty() {
            stream.write_all(&self.preamble).await?;
        }
        Ok(Kept {
            stream,
            generation,
            since: Instant::now(),
        })
    }
}

/// Sends `request` (an encoded frame) on `stream` and reads the answer.
async fn exchange(
    stream: &mut crate::net::PartnerStream,
    request: &[u8],
) -> Result<RpcResponse, FrameError> {
    stream.write_all(request).await?;
    stream.flush().await?;
    match frame::read(stream).await? {
        Some(response) => Ok(response),
        None => Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
    }
}

impl Transport for TcpTransport {
    async fn call(
        &self,
        node: &NodeInfo,
        envelope: Envelope,
        timeout: Duration,
    ) -> Result<RpcResponse, TransportError> {
        let (target, endpoint) = (envelope.target, node.endpoint);
        let frame_err = |source| TransportError::Frame { target, source };
        let again = envelope.request.may_repeat();
        let mut request = Vec::new();
        frame::encode_into(&mut request, &envelope);
        let call = async {
            if let Some(mut kept) = self.take(endpoint) {
                match exchange(&mut kept.stream, &request).await {
                    Ok(response) => {
                        kept.since = Instant::now();
                        self.keep(endpoint, kept);
                        return Ok(response);
                    }
                    // The kept connection had gone stale: a Raft RPC is
                    // sent again on a new one, anything else fails.
                    Err(_) if again => {}
                    Err(e) => return Err(frame_err(e)),
                }
            }
            let mut kept = self.open(target, endpoint).await?;
            let response = exchange(&mut kept.stream, &request)
                .await
                .map_err(frame_err)?;
            kept.since = Instant::now();
            self.keep(endpoint, kept);
            Ok(response)
        };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or(Err(TransportError::Timeout {
                target,
                after: timeout,
            }))
    }
}

/// The receiving side of cluster RPCs on one node: checks each request's
/// target and cluster identity, then hands it to the local Raft node.
#[derive(Clone)]
pub struct RpcServer {
    me: NodeId,
    raft: Raft<TypeConfig>,
    identity: Arc<Identity>,
    /// Notes the lease renewals forwarded here on their way.
    leases: Arc<Mutex<LeaseBook>>,
}

impl RpcServer {
    pub(crate) fn new(
        raft: Raft<TypeConfig>,
        identity: Arc<Identity>,
        leases: Arc<Mutex<LeaseBook>>,
    ) -> RpcServer {
        let me = raft.metrics().borrow().id;
        RpcServer {
            me,
            raft,
            identity,
            leases,
        }
    }

    /// The answer to one request that arrived from `peer` (for the log).
    pub(crate) async fn answer(&self, envelope: Envelope, peer: Option<SocketAddr>) -> RpcResponse {
        let me = self.me;
        if envelope.target != me {
            return RpcResponse::Refused(format!(
                "this is cluster node {me}, not node {}; the membership names a stale endpoint",
                envelope.target
            ));
        }
        let (kind, joins) = (envelope.request.kind(), envelope.request.joins());
        let theirs = envelope.cluster.as_ref();
        let mut verdict = admit(self.identity.current().as_ref(), theirs, kind, joins);
        if let Verdict::Adopt(id) = verdict {
            let identity = self.identity.clone();
            let offered = id.clone();
            let adopted = tokio::task::spawn_blocking(move || identity.adopt_joining(id))
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
            let held = match adopted {
                Ok(Err(roles)) => {
                    let refusal = Refusal::KeepsOwnRoles {
                        roles,
                        theirs: offered,
                    };
                    self.identity
                        .log_refused_request(&refusal, kind, envelope.from, peer);
                    return RpcResponse::WrongCluster(refusal);
                }
                Ok(Ok((held, true))) => {
                    let from = envelope.from.map_or("?".into(), |n| n.to_string());
                    let at = peer.map_or(String::new(), |p| format!(" at {p}"));
                    tracing::info!(
                        "this node joined cluster {held}: its first {kind} request came from                          node {from}{at}; requests of other clusters are refused from now on"
                    );
                    held
                }
                Ok(Ok((held, false))) => held,
                Err(e) => {
                    return RpcResponse::Refused(format!(
                        "this node cannot record its cluster id in {} ({e}): fix its disk",
                        self.identity.path().display()
                    ))
                }
            };
            verdict = admit(Some(&held), theirs, kind, joins);
        }
        match verdict {
            Verdict::Accept => handle(self, envelope.request).await,
            Verdict::Refuse(refusal) => {
                self.identity
                    .log_refused_request(&refusal, kind, envelope.from, peer);
                RpcResponse::WrongCluster(refusal)
            }
            // Not after an adoption: the node holds an id then.
            Verdict::Adopt(id) => {
                RpcResponse::Refused(format!("this node could not take cluster id {id}; retry"))
            }
        }
    }
}

/// Serves the Raft RPCs arriving on one accepted connection (from `peer`,
/// for the log) until the peer closes it, or until `still_admitted`
/// (asked before each request) says the connection's admission no longer
/// holds (see the module docs). Works on any stream: a dedicated port's,
/// or the replication endpoint's after the caller has read its own
/// discriminator.
pub async fn serve_rpc<S>(
    server: RpcServer,
    mut stream: S,
    peer: Option<SocketAddr>,
    still_admitted: impl Fn() -> bool,
) -> Result<(), FrameError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while still_admitted() {
        let envelope: Envelope = match frame::read(&mut stream).await {
            Ok(Some(envelope)) => envelope,
            Ok(None) => return Ok(()),
            Err(e) => {
                let reason = format!("malformed cluster request: {e}");
                // Best effort: the peer may be gone already.
                let _ = frame::write(&mut stream, &RpcResponse::Refused(reason)).await;
                return Err(e);
            }
        };
        let response = server.answer(envelope, peer).await;
        frame::write(&mut stream, &response).await?;
    }
    Ok(())
}

/// Hands one request to the local Raft node.
async fn handle(server: &RpcServer, request: RpcRequest) -> RpcResponse {
    let (raft, identity) = (&server.raft, &*server.identity);
    match request {
        RpcRequest::Propose(command) => {
            let _on_its_way = LeaseBook::renewal_on_its_way(&server.leases, &command);
            let write = raft.client_write(command);
            RpcResponse::Proposed(
                match tokio::time::timeout(super::PROPOSE_TIMEOUT, write).await {
                    Ok(Ok(response)) => Ok(response.data),
                    Ok(Err(e)) => Err(super::write_error(e).to_string()),
                    Err(_) => Err(super::Error::Timeout(super::PROPOSE_TIMEOUT).to_string()),
                },
            )
        }
        RpcRequest::AppendEntries(rpc) => {
            RpcResponse::AppendEntries(raft.append_entries(rpc).await)
        }
        RpcRequest::ChangeMembers(change) => RpcResponse::MembersChanged(
            super::change_members_here(raft, identity, change)
                .await
                .map_err(|e| e.to_string()),
        ),
        RpcRequest::Vote(rpc) => RpcResponse::Vote(raft.vote(rpc).await),
        RpcRequest::InstallSnapshot(rpc) => {
            RpcResponse::InstallSnapshot(raft.install_snapshot(rpc).await)
        }
    }
}

/// When each node last answered this node's Raft requests (see the module
/// docs).
#[derive(Debug, Default)]
pub(crate) struct Contacts {
    heard: Mutex<BTreeMap<NodeId, Instant>>,
}

impl Contacts {
    /// Node `id` answered at `at`.
    fn heard(&self, id: NodeId, at: Instant) {
        let mut heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        let last = heard.entry(id).or_insert(at);
        *last = (*last).max(at);
    }

    /// Per node, when it last answered.
    pub(crate) fn last_heard(&self) -> BTreeMap<NodeId, Instant> {
        self.heard.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Makes a [`Peer`] per target for openraft.
pub(crate) struct NetworkFactory<T> {
    me: NodeId,
    transport: Arc<T>,
    identity: Arc<Identity>,
    contacts: Arc<Contacts>,
}

impl<T> NetworkFactory<T> {
    pub(crate) fn new(
        me: NodeId,
        transport: T,
        identity: Arc<Identity>,
        contacts: Arc<Contacts>,
    ) -> NetworkFactory<T> {
        NetworkFactory {
            me,
            transport: Arc::new(transport),
            identity,
            contacts,
        }
    }
}

impl<T: Transport> RaftNetworkFactory<TypeConfig> for NetworkFactory<T> {
    type Network = Peer<T>;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Peer<T> {
        Peer {
            me: self.me,
            target,
            node: node.clone(),
            transport: self.transport.clone(),
            identity: self.identity.clone(),
            contacts: self.contacts.clone(),
        }
    }
}

/// openraft's client for one target node.
pub(crate) struct Peer<T> {
    me: NodeId,
    target: NodeId,
    node: NodeInfo,
    transport: Arc<T>,
    identity: Arc<Identity>,
    contacts: Arc<Contacts>,
}

impl<T: Transport> Peer<T> {
    async fn send<E: std::error::Error>(
        &self,
        request: RpcRequest,
        option: &RPCOption,
        action: RPCTypes,
    ) -> Result<RpcResponse, RPCError<NodeId, NodeInfo, E>> {
        let kind = request.kind();
        let envelope = Envelope {
            target: self.target,
            from: Some(self.me),
            cluster: self.identity.current(),
            request,
        };
        let result = self
            .transport
            .call(&self.node, envelope, option.hard_ttl())
            .await;
        match result {
            Ok(RpcResponse::WrongCluster(refusal)) => {
                // Not a passing network fault: said loudly (throttled), and
                // openraft backs off as from a node that is not there.
                self.identity
                    .note_refused_by(self.target, &self.node, kind, &refusal);
                let e = TransportError::WrongCluster {
                    target: self.target,
                    endpoint: self.node.endpoint,
                    refusal,
                };
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Ok(RpcResponse::Refused(reason)) => {
                let e = TransportError::Refused {
                    target: self.target,
                    reason,
                };
                Err(RPCError::Network(NetworkError::new(&e)))
            }
            Ok(response) => {
                self.contacts.heard(self.target, Instant::now());
                self.identity.note_answered_by(self.target);
                Ok(response)
            }
            Err(e @ TransportError::Unreachable { .. }) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(TransportError::Timeout { after, .. }) => Err(RPCError::Timeout(Timeout {
                action,
                id: self.me,
                target: self.target,
                timeout: after,
            })),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }

    fn remote<E: std::error::Error>(&self, e: E) -> RPCError<NodeId, NodeInfo, E> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target,
            self.node.clone(),
            e,
        ))
    }

    fn mismatch<E: std::error::Error>(
        &self,
        response: RpcResponse,
    ) -> RPCError<NodeId, NodeInfo, E> {
        let e = io::Error::other(format!(
            "cluster node {} answered with the wrong kind of response: {response:?}",
            self.target
        ));
        RPCError::Network(NetworkError::new(&e))
    }
}

impl<T: Transport> RaftNetwork<TypeConfig> for Peer<T> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let request = RpcRequest::AppendEntries(rpc);
        match self.send(request, &option, RPCTypes::AppendEntries).await? {
            RpcResponse::AppendEntries(result) => result.map_err(|e| self.remote(e)),
            other => Err(self.mismatch(other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let request = RpcRequest::InstallSnapshot(rpc);
        match self
            .send(request, &option, RPCTypes::InstallSnapshot)
            .await?
        {
            RpcResponse::InstallSnapshot(result) => result.map_err(|e| self.remote(e)),
            other => Err(self.mismatch(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        match self
            .send(RpcRequest::Vote(rpc), &option, RPCTypes::Vote)
            .await?
        {
            RpcResponse::Vote(result) => result.map_err(|e| self.remote(e)),
            other => Err(self.mismatch(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use openraft::Vote;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::cluster::{Cluster, Command};

    fn info7() -> NodeInfo {
        NodeInfo {
            name: "r7".into(),
            endpoint: "127.0.0.1:1".parse().unwrap(),
        }
    }

    /// A node in no cluster yet.
    async fn new_node(dir: &std::path::Path) -> Cluster {
        Cluster::start(7, info7(), dir).await.unwrap()
    }

    /// A node that formed a cluster of its own.
    async fn lone_node(dir: &std::path::Path) -> (Cluster, ClusterId) {
        let cluster = new_node(dir).await;
        cluster
            .initialize(BTreeMap::from([(7, info7())]))
            .await
            .unwrap();
        let id = cluster.cluster_id().expect("an id once formed");
        (cluster, id)
    }

    fn vote() -> RpcRequest {
        RpcRequest::Vote(VoteRequest::new(Vote::new(1, 1), None))
    }

    /// A heartbeat from a leader of a term far above the node's own:
    /// taken, it moves the node's term there.
    fn heartbeat() -> RpcRequest {
        RpcRequest::AppendEntries(AppendEntriesRequest {
            vote: Vote::new_committed(50, 8),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        })
    }

    fn envelope(cluster: Option<&ClusterId>, request: RpcRequest) -> Envelope {
        Envelope {
            target: 7,
            from: Some(8),
            cluster: cluster.cloned(),
            request,
        }
    }

    async fn ask(server: &RpcServer, envelope: Envelope) -> RpcResponse {
        server.answer(envelope, None).await
    }

    fn term(cluster: &Cluster) -> u64 {
        cluster.raft().metrics().borrow().current_term
    }

    #[tokio::test]
    async fn requests_for_another_node_and_malformed_frames_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cluster, id) = lone_node(dir.path()).await;
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let serving = tokio::spawn(serve_rpc(cluster.rpc_server(), server, None, || true));

        let misaddressed = Envelope {
            target: 8,
            ..envelope(Some(&id), vote())
        };
        frame::write(&mut client, &misaddressed).await.unwrap();
        match frame::read(&mut client).await.unwrap() {
            Some(RpcResponse::Refused(why)) => assert!(why.contains("not node 8"), "{why}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        // The connection goes on: the next request is served.
        frame::write(&mut client, &envelope(Some(&id), vote()))
            .await
            .unwrap();
        let answer: Option<RpcResponse> = frame::read(&mut client).await.unwrap();
        assert!(matches!(answer, Some(RpcResponse::Vote(_))), "{answer:?}");

        // Safety rule 6: garbage gets a clear refusal and the connection closes.
        client
            .write_all(&[1, 0, 0, 0, b'x', 0, 0, 0, 0])
            .await
            .unwrap();
        match frame::read(&mut client).await.unwrap() {
            Some(RpcResponse::Refused(why)) => assert!(why.contains("malformed"), "{why}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(serving.await.unwrap().is_err());
        cluster.shutdown().await.unwrap();
    }

    /// Safety rule 6: a peer from another cluster is refused — whatever
    /// the request, before Raft sees it — and one without a cluster id
    /// too; the same cluster's requests are served.
    #[tokio::test]
    async fn a_request_from_another_cluster_is_refused_and_one_from_the_same_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let (cluster, mine) = lone_node(dir.path()).await;
        let server = cluster.rpc_server();
        let theirs = ClusterId::mint();
        let before = term(&cluster);
        let requests = || {
            vec![
                heartbeat(),
                vote(),
                RpcRequest::Propose(Command::RemoveGroup("ag1".into())),
                RpcRequest::ChangeMembers(super::super::MemberChange::Remove(9)),
            ]
        };
        for request in requests() {
            let kind = request.kind();
            match ask(&server, envelope(Some(&theirs), request)).await {
                RpcResponse::WrongCluster(refusal) => {
                    assert_eq!(
                        refusal,
                        Refusal::Foreign {
                            mine: mine.clone(),
                            theirs: theirs.clone()
                        }
                    );
                    let text = refusal.to_string();
                    assert!(
                        text.contains(mine.as_str()) && text.contains(theirs.as_str()),
                        "the refusal names both clusters: {text}"
                    );
                }
                other => panic!("{kind} from another cluster: {other:?}"),
            }
        }
        for request in requests() {
            let answer = ask(&server, envelope(None, request)).await;
            assert!(
                matches!(answer, RpcResponse::WrongCluster(Refusal::Anonymous { .. })),
                "{answer:?}"
            );
        }
        assert_eq!(
            term(&cluster),
            before,
            "Raft never saw the refused heartbeat"
        );
        assert_eq!(cluster.cluster_id(), Some(mine.clone()));

        let answer = ask(&server, envelope(Some(&mine), heartbeat())).await;
        assert!(
            matches!(answer, RpcResponse::AppendEntries(Ok(_))),
            "{answer:?}"
        );
        cluster
            .raft()
            .wait(Some(Duration::from_secs(10)))
            .metrics(
                |m| m.current_term == 50,
                "the same cluster's heartbeat taken",
            )
            .await
            .unwrap();
        cluster.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_node_in_no_cluster_adopts_the_id_of_the_first_request_that_adds_it() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = new_node(dir.path()).await;
        let server = cluster.rpc_server();
        let (a, b) = (ClusterId::mint(), ClusterId::mint());

        let propose = RpcRequest::Propose(Command::RemoveGroup("ag1".into()));
        match ask(&server, envelope(Some(&a), propose)).await {
            RpcResponse::WrongCluster(Refusal::NotJoined { kind, theirs }) => {
                assert_eq!((kind.as_str(), &theirs), ("Propose", &a))
            }
            other => panic!("a proposal to a node in no cluster: {other:?}"),
        }
        assert_eq!(cluster.cluster_id(), None, "a proposal does not add a node");

        let answer = ask(&server, envelope(Some(&a), vote())).await;
        assert!(matches!(answer, RpcResponse::Vote(Ok(_))), "{answer:?}");
        assert_eq!(cluster.cluster_id(), Some(a.clone()));
        let answer = ask(&server, envelope(Some(&b), vote())).await;
        assert!(
            matches!(answer, RpcResponse::WrongCluster(Refusal::Foreign { .. })),
            "once in cluster a, cluster b is refused: {answer:?}"
        );
        cluster.shutdown().await.unwrap();
        drop(cluster);

        // The id is durable: the node restarts in cluster a.
        let cluster = new_node(dir.path()).await;
        assert_eq!(cluster.cluster_id(), Some(a));
        cluster.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_preamble_lets_cluster_rpcs_share_a_port_and_a_kept_connection_serves_the_next_rpc() {
        let dir = tempfile::tempdir().unwrap();
        let (cluster, id) = lone_node(dir.path()).await;
        let (listener, node) = node7_listening().await;
        let rpc = cluster.rpc_server();
        // One connection only: the second RPC has to come on the first's.
        let server = tokio::spawn(async move {
            let (mut stream, peer) = listener.accept().await.unwrap();
            assert_eq!(stream.read_u8().await.unwrap(), 0xA5, "the discriminator");
            serve_rpc(rpc, stream, Some(peer), || true).await
        });
        let transport = TcpTransport::with_preamble([0xA5]);
        for n in 0..2 {
            let answer = transport
                .call(&node, envelope(Some(&id), vote()), Duration::from_secs(10))
                .await;
            assert!(
                matches!(answer, Ok(RpcResponse::Vote(_))),
                "{n}: {answer:?}"
            );
        }
        drop(transport);
        server.await.unwrap().unwrap();

        // Nobody listens there any more.
        let answer = TcpTransport::with_preamble([0xA5])
            .call(&node, envelope(Some(&id), vote()), Duration::from_secs(10))
            .await;
        assert!(
            matches!(answer, Err(TransportError::Unreachable { .. })),
            "{answer:?}"
        );
        cluster.shutdown().await.unwrap();
    }

    /// A listener on a free loopback port, and node 7 described there.
    async fn node7_listening() -> (TcpListener, NodeInfo) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let node = NodeInfo {
            name: "r7".into(),
            endpoint: listener.local_addr().unwrap(),
        };
        (listener, node)
    }

    /// A server that serves each connection it accepts for one answer and
    /// then finds its admission gone (as after a reload of the partner TLS
    /// files), counting the connections.
    fn one_answer_per_connection(
        listener: TcpListener,
        rpc: RpcServer,
        accepted: Arc<std::sync::atomic::AtomicUsize>,
    ) -> tokio::task::JoinHandle<()> {
        use std::sync::atomic::{AtomicBool, Ordering};
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let admitted = AtomicBool::new(true);
                let _ = serve_rpc(rpc.clone(), stream, Some(peer), || {
                    admitted.swap(false, Ordering::SeqCst)
                })
                .await;
            }
        })
    }

    #[tokio::test]
    async fn a_raft_rpc_on_a_connection_the_server_ended_goes_again_on_a_new_one_a_proposal_does_not(
    ) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let (cluster, id) = lone_node(dir.path()).await;
        let (listener, node) = node7_listening().await;
        let accepted = Arc::new(AtomicUsize::new(0));
        let server = one_answer_per_connection(listener, cluster.rpc_server(), accepted.clone());
        let transport = TcpTransport::default();
        let limit = Duration::from_secs(10);
        for n in 1..=3 {
            let answer = transport
                .call(&node, envelope(Some(&id), vote()), limit)
                .await;
            assert!(
                matches!(answer, Ok(RpcResponse::Vote(_))),
                "{n}: {answer:?}"
            );
            assert_eq!(
                accepted.load(Ordering::SeqCst),
                n,
                "a new connection each time"
            );
        }
        let proposal = RpcRequest::Propose(super::super::Command::SetServerName("x".into()));
        let answer = transport
            .call(&node, envelope(Some(&id), proposal), limit)
            .await;
        assert!(
            matches!(answer, Err(TransportError::Frame { .. })),
            "a proposal is not sent twice: {answer:?}"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        server.abort();
        cluster.shutdown().await.unwrap();
    }
}
