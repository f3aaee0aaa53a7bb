//! Raft RPCs between nodes: openraft's [`RaftNetworkFactory`] and
//! [`RaftNetwork`] on top of a [`Transport`], the TCP transport, and the
//! server side ([`serve_rpc`]).
//!
//! # Conversation
//! The caller opens a TCP connection to the target's endpoint, sends one
//! request frame ([`super::frame`]: length, JSON, crc32c) and reads one
//! response frame, then closes the connection: **one request per
//! connection**. That costs a connect per heartbeat (10 per second per
//! follower at a 100 ms heartbeat), which is nothing on a LAN, and needs no
//! reconnect logic or request ids. [`serve_rpc`] answers any number of
//! requests on a connection, in order, so a pooled client can come later
//! without changing servers.
//!
//! A [`TcpTransport::with_preamble`] first sends its preamble (e.g. a
//! discriminator byte for a shared port), which the accepting side consumes
//! before handing the stream to [`serve_rpc`]. Snapshot chunks (1 MiB at
//! most) travel as JSON arrays of numbers, about four times their size:
//! fine for a state of group definitions, not for bulk data.
//!
//! ```text
//! request  = {"target": node id, "request": {"AppendEntries" | "Vote" | "InstallSnapshot": openraft's request}}
//! response = {"AppendEntries" | "Vote" | "InstallSnapshot": {"Ok": openraft's response} | {"Err": openraft's RaftError}}
//!          | {"Refused": reason}
//! ```
//! A request for another node id (a stale endpoint in the membership) or a
//! malformed frame is answered `Refused` with the reason; after a malformed
//! frame the server also closes the connection, since the stream has lost
//! its framing.
//!
//! # Errors to openraft
//! A refused connection is `Unreachable` (openraft backs off before
//! retrying), no answer within the RPC's time limit is `Timeout`, anything
//! else on the way is `Network`, and the target's own error is
//! `RemoteError`.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

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
}

/// What travels in a request frame.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    /// The node the sender means to reach.
    target: NodeId,
    request: RpcRequest,
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
}

/// Carries one RPC to a node and brings back its answer. [`TcpTransport`]
/// is the real one; tests plug in an in-process one.
pub trait Transport: Send + Sync + 'static {
    /// Sends `request` to node `target` (described by `node`) and waits at
    /// most `timeout` for the answer.
    fn call(
        &self,
        target: NodeId,
        node: &NodeInfo,
        request: RpcRequest,
        timeout: Duration,
    ) -> impl Future<Output = Result<RpcResponse, TransportError>> + Send;
}

/// One TCP connection per request (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct TcpTransport {
    /// Bytes sent on each new connection before the request frame.
    preamble: Vec<u8>,
}

impl TcpTransport {
    /// A transport that opens each connection with `preamble`, e.g. a
    /// discriminator byte when cluster RPCs share a port with another
    /// protocol; the server reads it before calling [`serve_rpc`].
    pub fn with_preamble(preamble: impl Into<Vec<u8>>) -> TcpTransport {
        TcpTransport {
            preamble: preamble.into(),
        }
    }
}

impl Transport for TcpTransport {
    async fn call(
        &self,
        target: NodeId,
        node: &NodeInfo,
        request: RpcRequest,
        timeout: Duration,
    ) -> Result<RpcResponse, TransportError> {
        let endpoint = node.endpoint;
        let frame_err = |source| TransportError::Frame { target, source };
        let exchange = async {
            let mut stream = crate::net::connect(endpoint).await.map_err(|source| {
                TransportError::Unreachable {
                    target,
                    endpoint,
                    source,
                }
            })?;
            let mut bytes = self.preamble.clone();
            frame::encode_into(&mut bytes, &Envelope { target, request });
            let sent = async {
                stream.set_nodelay(true)?;
                stream.write_all(&bytes).await?;
                stream.flush().await
            };
            sent.await.map_err(|e| frame_err(FrameError::Io(e)))?;
            match frame::read(&mut stream).await.map_err(frame_err)? {
                Some(response) => Ok(response),
                None => Err(frame_err(FrameError::Io(
                    io::ErrorKind::UnexpectedEof.into(),
                ))),
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(TransportError::Timeout {
                target,
                after: timeout,
            }))
    }
}

/// Serves the Raft RPCs arriving on one accepted connection until the peer
/// closes it. Works on any stream: a dedicated port's, or the replication
/// endpoint's after the caller has read its own discriminator.
pub async fn serve_rpc<S>(raft: Raft<TypeConfig>, mut stream: S) -> Result<(), FrameError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let me = raft.metrics().borrow().id;
    loop {
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
        let response = if envelope.target == me {
            handle(&raft, envelope.request).await
        } else {
            RpcResponse::Refused(format!(
                "this is cluster node {me}, not node {}; the membership names a stale endpoint",
                envelope.target
            ))
        };
        frame::write(&mut stream, &response).await?;
    }
}

/// Hands one request to the local Raft node.
pub(crate) async fn handle(raft: &Raft<TypeConfig>, request: RpcRequest) -> RpcResponse {
    match request {
        RpcRequest::Propose(command) => {
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
            super::change_members_here(raft, change)
                .await
                .map_err(|e| e.to_string()),
        ),
        RpcRequest::Vote(rpc) => RpcResponse::Vote(raft.vote(rpc).await),
        RpcRequest::InstallSnapshot(rpc) => {
            RpcResponse::InstallSnapshot(raft.install_snapshot(rpc).await)
        }
    }
}

/// Makes a [`Peer`] per target for openraft.
pub(crate) struct NetworkFactory<T> {
    me: NodeId,
    transport: Arc<T>,
}

impl<T> NetworkFactory<T> {
    pub(crate) fn new(me: NodeId, transport: T) -> NetworkFactory<T> {
        NetworkFactory {
            me,
            transport: Arc::new(transport),
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
        }
    }
}

/// openraft's client for one target node.
pub(crate) struct Peer<T> {
    me: NodeId,
    target: NodeId,
    node: NodeInfo,
    transport: Arc<T>,
}

impl<T: Transport> Peer<T> {
    async fn send<E: std::error::Error>(
        &self,
        request: RpcRequest,
        option: &RPCOption,
        action: RPCTypes,
    ) -> Result<RpcResponse, RPCError<NodeId, NodeInfo, E>> {
        let result = self
            .transport
            .call(self.target, &self.node, request, option.hard_ttl())
            .await;
        match result {
            Ok(RpcResponse::Refused(reason)) => {
                let e = TransportError::Refused {
                    target: self.target,
                    reason,
                };
                Err(RPCError::Network(NetworkError::new(&e)))
            }
            Ok(response) => Ok(response),
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
    use openraft::Vote;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::cluster::Cluster;

    async fn lone_node(dir: &std::path::Path) -> Cluster {
        let info = NodeInfo {
            name: "r7".into(),
            endpoint: "127.0.0.1:1".parse().unwrap(),
        };
        Cluster::start(7, info, dir).await.unwrap()
    }

    fn vote() -> RpcRequest {
        RpcRequest::Vote(VoteRequest::new(Vote::new(1, 1), None))
    }

    #[tokio::test]
    async fn requests_for_another_node_and_malformed_frames_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = lone_node(dir.path()).await;
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let serving = tokio::spawn(serve_rpc(cluster.raft().clone(), server));

        let misaddressed = Envelope {
            target: 8,
            request: vote(),
        };
        frame::write(&mut client, &misaddressed).await.unwrap();
        match frame::read(&mut client).await.unwrap() {
            Some(RpcResponse::Refused(why)) => assert!(why.contains("not node 8"), "{why}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        // The connection goes on: the next request is served.
        let envelope = Envelope {
            target: 7,
            request: vote(),
        };
        frame::write(&mut client, &envelope).await.unwrap();
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

    #[tokio::test]
    async fn a_preamble_lets_cluster_rpcs_share_a_port() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = lone_node(dir.path()).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let node = NodeInfo {
            name: "r7".into(),
            endpoint: listener.local_addr().unwrap(),
        };
        let raft = cluster.raft().clone();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            assert_eq!(stream.read_u8().await.unwrap(), 0xA5, "the discriminator");
            serve_rpc(raft, stream).await
        });
        let transport = TcpTransport::with_preamble([0xA5]);
        let answer = transport
            .call(7, &node, vote(), Duration::from_secs(10))
            .await;
        assert!(matches!(answer, Ok(RpcResponse::Vote(_))), "{answer:?}");
        server.await.unwrap().unwrap();

        // Nobody listens there any more.
        let answer = transport
            .call(7, &node, vote(), Duration::from_secs(10))
            .await;
        assert!(
            matches!(answer, Err(TransportError::Unreachable { .. })),
            "{answer:?}"
        );
        cluster.shutdown().await.unwrap();
    }
}
