//! The cluster manager: a Raft group (openraft) embedded in every node,
//! holding what the nodes must agree on to fail over safely.
//!
//! # What is replicated
//! Every node of the cluster (replica hosts and witnesses) is a Raft voter.
//! The state machine ([`ClusterState`], `state.rs`) holds, per
//! availability group: its definition
//! ([`GroupConfig`](crate::group::GroupConfig), including the
//! current primary and epoch), the primary's [`Lease`], and the
//! synchronized set of each database. It changes only through
//! [`Command`]s committed by a majority and applied in log order; each is
//! checked by deterministic rules and answered [`CommandResult::Ok`] or
//! [`CommandResult::Rejected`] with the reason (table in `state.rs`).
//!
//! # Invariants
//! * **One writer** (safety rule 2). Epochs only move by `Promote`, one at
//!   a time (`new_epoch = epoch + 1`), and a command naming an older epoch
//!   is rejected: a deposed primary can neither renew its lease nor change
//!   the synchronized set. The lease's *timing* is not replicated (clocks
//!   differ); the primary counts from when it sent a renewal, the leader
//!   from when it applied it ([`LeaseClock`], `lease.rs`), and a new leader
//!   restarts every count. [`Cluster::lease_expired`] is the leader's
//!   question before it promotes another replica.
//! * **RPO 0** (safety rule 1). The synchronized set changes only by the
//!   current epoch's `SetSynchronized`, so a primary removes a replica
//!   *through the cluster* before acknowledging commits that replica has
//!   not hardened. `Promote` empties the set: the new primary re-adds each
//!   secondary once it has caught up in the new epoch.
//! * **One cluster** (`identity.rs`). Every cluster has an id, minted by
//!   the node that forms it and adopted by each node from the first
//!   request that adds it; every request between nodes carries it, and one
//!   from another cluster is refused before Raft sees it. Node ids come
//!   from replica names, so without it two clusters with the same replica
//!   names would take each other's nodes for their own.
//! * **Durability** (`store.rs`). The log, the vote and the committed and
//!   purged markers are fsynced before openraft is told they are; the
//!   snapshot is written by temp file + fsync + rename + directory fsync.
//!   A torn last record is cut on open; any other damage stops the node.
//!
//! # Using it
//! * Start: [`Cluster::start`] on every node with its stable [`NodeId`],
//!   its [`NodeInfo`] and `DATA_DIR/cluster/`; serve RPCs with
//!   [`Cluster::listen`] on a port of their own, or hand accepted streams
//!   to [`serve_rpc`] (after reading a discriminator sent by
//!   [`TcpTransport::with_preamble`] when the port is shared).
//! * Form the cluster once: [`Cluster::initialize`] on one node with all
//!   first members, or with itself and then [`Cluster::add_voter`] for each
//!   other node. A restarted node rejoins from its files by itself.
//! * Change and read: [`Cluster::propose`] on the leader;
//!   [`Cluster::state`] / [`Cluster::subscribe`] anywhere (the applied copy
//!   on this node, possibly behind the leader's); [`Cluster::metrics`].
//! * Fail over: the primary renews its lease well within its duration and
//!   stops writing when its own [`LeaseClock`] runs out; the leader
//!   promotes another replica only once [`Cluster::lease_expired`] says so.
//!
//! # Protocol and timing
//! RPCs travel as checksummed JSON frames over TCP, one request per
//! connection (`network.rs`, [`serve_rpc`]). Timing ([`Cluster::raft_config`]):
//! heartbeat every 50 ms, election timeout 200–400 ms, so a dead leader is
//! replaced in well under a second on a healthy network. openraft waits at
//! most one heartbeat interval for an AppendEntries answer, which includes
//! the follower's fsync: a disk slower than that delays replication (the
//! leader retries) but never breaks safety. A disk stalled for longer than
//! a lease holds the primary's renewals uncommitted; the leader does not
//! fail over a primary whose renewals are reaching it meanwhile (`lease.rs`,
//! renewals on their way). An unreachable node is retried
//! every 500 ms. A snapshot is taken every 1000 entries and the log before
//! it purged (keeping 100 entries); a node too far behind gets the snapshot.
//!
//! # Files
//! `DATA_DIR/cluster/log` (log, vote, markers), `DATA_DIR/cluster/snapshot`
//! and `DATA_DIR/cluster/id` (the cluster id); formats in `store.rs`,
//! `frame.rs` and `identity.rs`. A directory with Raft state but no id
//! (from before cluster ids) is refused at start with what to do.
//!
//! # Known limits
//! * Commands reach the leader only: elsewhere [`Cluster::propose`] fails
//!   with [`Error::NotLeader`], naming the leader; forwarding is the caller's.
//! * A proposal's outcome is unknown after [`Error::Timeout`]. Retrying is
//!   safe: renewals, synchronized-set changes and an identical definition
//!   are idempotent, and a repeated `Promote` is rejected (its epoch is
//!   taken), so the caller reads the state to learn what happened.
//! * Nodes are only added ([`Cluster::add_voter`]); removal comes later.
//! * While a voter is down, the leader keeps the log entries that voter
//!   still needs (openraft 0.9 does not purge entries a replication stream
//!   has in flight), so the log grows until the voter returns.
//! * The state is in memory and every snapshot is all of it: sized for
//!   group definitions, not bulk data.
//! * A request names its target node id and its cluster, so a stale
//!   endpoint and another cluster's node are refused; but the id is not a
//!   secret (no authentication), and there is no TLS.

mod frame;
mod identity;
mod lease;
mod network;
mod state;
mod store;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{ChangeMembers, Config, Raft, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use frame::FrameError;
pub use identity::{ClusterId, Refusal};
pub use lease::LeaseClock;
pub use network::{
    serve_rpc, Envelope, RpcRequest, RpcResponse, RpcServer, TcpTransport, Transport,
    TransportError,
};
pub use state::{
    ClusterState, Command, CommandResult, FailoverEntry, FailoverKind, GroupRecord, Lease, Partner,
    HISTORY_LEN,
};
pub use store::StoreError;

use identity::Identity;
use lease::LeaseBook;

/// A node's id in the cluster: stable for the node's life, never reused.
pub type NodeId = u64;

/// The Raft handle of this crate's cluster.
pub type RaftHandle = openraft::Raft<TypeConfig>;

/// First bytes of a cluster RPC connection on a port shared with log
/// shipping (the replication endpoint).
pub const PREAMBLE: &[u8; 4] = b"AVRC";

/// A node's id, derived from its replica name (FNV-1a, case-insensitive):
/// the same name always gives the same id, on every node.
pub fn node_id(name: &str) -> NodeId {
    name.to_ascii_lowercase()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        })
}

/// How to reach a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Replica name of the node (its `--name`).
    pub name: String,
    /// Where it serves cluster RPCs.
    pub endpoint: SocketAddr,
}

/// openraft requires a default node; it is never used as an address.
impl Default for NodeInfo {
    fn default() -> NodeInfo {
        NodeInfo {
            name: String::new(),
            endpoint: SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}", self.name, self.endpoint)
    }
}

openraft::declare_raft_types!(
    /// The Raft types of availdb's cluster.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// How long [`Cluster::propose`] waits for its command to be applied.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`Cluster::add_voter`] waits for the new node to catch up and
/// become a voter.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(10);

/// Cluster manager result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the cluster manager can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Only the leader takes proposals and membership changes.
    #[error("this node is not the cluster leader; {}", leader_hint(.0))]
    NotLeader(Option<(NodeId, Option<NodeInfo>)>),
    /// No answer in time; a proposal may or may not have been applied.
    #[error(
        "the cluster did not answer within {0:?} (no quorum?); the command may or may not \
         have been applied: read the cluster state before retrying"
    )]
    Timeout(Duration),
    /// Another membership change is in progress, or the change is invalid.
    #[error("cluster membership change refused: {0}")]
    Membership(String),
    /// `initialize` on a node that already belongs to a cluster, or with
    /// members that do not include this node as it is.
    #[error("cannot initialize the cluster: {0}")]
    Initialize(String),
    /// The Raft configuration is inconsistent.
    #[error("invalid Raft configuration: {0}")]
    Config(String),
    /// The state holds no group of that name.
    #[error("no availability group \"{0}\" in the cluster")]
    UnknownGroup(String),
    /// The node's Raft files cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A proposal forwarded to the leader failed there (or on the way).
    #[error("the cluster leader did not apply the command: {0}")]
    Forwarded(String),
    /// The Raft node stopped (shut down, or a storage failure).
    #[error("the cluster manager on this node stopped ({0}); restart the node")]
    Stopped(String),
    /// A node refused this cluster's request: it belongs to another
    /// cluster (or to none, for a request that does not add it).
    #[error("cluster node {node} refused: {refusal}")]
    WrongCluster {
        /// The node, as the member list names it.
        node: String,
        /// Its refusal (names both clusters and what to fix).
        refusal: Refusal,
    },
}

fn leader_hint(leader: &Option<(NodeId, Option<NodeInfo>)>) -> String {
    match leader {
        Some((id, Some(info))) => format!("the leader is node {id} ({info}): send it there"),
        Some((id, None)) => format!("the leader is node {id}: send it there"),
        None => "no leader is elected right now: retry shortly".into(),
    }
}

impl Error {
    /// True when the same call may succeed later or elsewhere (another
    /// leader, a finished membership change, a restored quorum).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NotLeader(_) | Error::Timeout(_) | Error::Membership(_)
        )
    }
}

fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            Error::NotLeader(f.leader_id.map(|id| (id, f.leader_node)))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Error::Membership(e.to_string())
        }
        RaftError::Fatal(f) => Error::Stopped(f.to_string()),
    }
}

/// A node's view of the cluster, from its Raft metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMetrics {
    /// This node.
    pub id: NodeId,
    /// Leader, follower, candidate, learner or shutting down.
    pub state: ServerState,
    /// Current Raft term.
    pub term: u64,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// The voters and how to reach them.
    pub voters: BTreeMap<NodeId, NodeInfo>,
    /// Index of the last entry applied here.
    pub last_applied: Option<u64>,
    /// This node's name and the endpoint it listens on.
    pub local: NodeInfo,
    /// Members that follow the state without voting (stand-alone
    /// listeners).
    pub learners: BTreeMap<NodeId, NodeInfo>,
    /// The cluster this node belongs to; none before it joins one.
    pub cluster_id: Option<ClusterId>,
}

/// A change of the cluster's voters, made by the leader (forwarded to it
/// from any node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    /// Add a running node as a voter: it first catches up as a learner.
    Add(NodeId, NodeInfo),
    /// Add a running node that follows the state without voting (a
    /// stand-alone listener).
    AddLearner(NodeId, NodeInfo),
    /// Take a voter (or learner) out of the cluster.
    Remove(NodeId),
}

/// Makes `change` on this node's Raft, which must be the leader.
pub(crate) async fn change_members_here(
    raft: &Raft<TypeConfig>,
    identity: &Identity,
    change: MemberChange,
) -> Result<()> {
    let work = async {
        match change {
            MemberChange::Add(id, info) => {
                add_learner(raft, identity, id, info).await?;
                raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(write_error)?;
            }
            MemberChange::AddLearner(id, info) => add_learner(raft, identity, id, info).await?,
            MemberChange::Remove(id) => {
                let learner = raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .learner_ids()
                    .any(|l| l == id);
                let change = if learner {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                };
                raft.change_membership(change, false)
                    .await
                    .map_err(write_error)?;
            }
        }
        Ok(())
    };
    tokio::time::timeout(MEMBERSHIP_TIMEOUT, work)
        .await
        .unwrap_or(Err(Error::Timeout(MEMBERSHIP_TIMEOUT)))
}

/// Adds node `id` as a learner and waits until it caught up — or until it
/// refuses this cluster (it belongs to another): then the learner is taken
/// out again (when this call put it in) and the refusal returned at once.
async fn add_learner(
    raft: &Raft<TypeConfig>,
    identity: &Identity,
    id: NodeId,
    info: NodeInfo,
) -> Result<()> {
    let was_member = raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&id)
        .is_some();
    // Only a refusal to this attempt counts.
    identity.note_answered_by(id);
    let add = async {
        raft.add_learner(id, info.clone(), true)
            .await
            .map_err(write_error)?;
        // openraft's blocking add returns once the learner is within its
        // replication lag threshold (thousands of entries), answered or
        // not: wait for its first acknowledgement too, so that a node that
        // is not there, or refuses, never becomes a voter (whose joint
        // configuration could then never commit).
        let mut metrics = raft.metrics();
        let acknowledged = metrics.wait_for(|m| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(&id))
                .is_some_and(Option::is_some)
        });
        acknowledged
            .await
            .map(drop)
            .map_err(|_| Error::Stopped("the Raft node shut down".into()))
    };
    let refused = async {
        loop {
            if let Some(refusal) = identity.refused_by(id) {
                return refusal;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        added = add => added,
        refusal = refused => {
            if !was_member {
                remove_refused_learner(raft, id).await;
            }
            Err(Error::WrongCluster { node: info.to_string(), refusal })
        }
    }
}

/// Takes a learner that refused to join back out of the membership (best
/// effort: the change that added it may still be committing).
async fn remove_refused_learner(raft: &Raft<TypeConfig>, id: NodeId) {
    let mut last = None;
    for _ in 0..20 {
        let change = ChangeMembers::RemoveNodes(BTreeSet::from([id]));
        match raft.change_membership(change, false).await {
            Ok(_) => return,
            Err(e) => last = Some(write_error(e)),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(e) = last {
        tracing::warn!(
            "node {id} refused to join, and taking it out of the membership again failed: {e}; \
             remove it with ALTER CLUSTER REMOVE NODE"
        );
    }
}

/// This node's member of the cluster. Dropping it stops its listener; call
/// [`Cluster::shutdown`] to stop the Raft node too.
pub struct Cluster {
    id: NodeId,
    info: NodeInfo,
    raft: Raft<TypeConfig>,
    /// Which cluster this node belongs to (`identity.rs`).
    identity: Arc<Identity>,
    /// When each member last answered this node (`network.rs`).
    contacts: Arc<network::Contacts>,
    state: watch::Receiver<ClusterState>,
    leases: Arc<Mutex<LeaseBook>>,
    listener: Mutex<Option<JoinHandle<()>>>,
    /// Sends proposals to the leader when this node is not it.
    forward: TcpTransport,
    /// Stalls this node's log writes (tests).
    #[cfg(test)]
    staller: store::Staller,
}

/// Counts the term changes this node sees (`availdb_cluster_elections_total`)
/// until its Raft node stops.
fn count_elections(mut metrics: watch::Receiver<openraft::RaftMetrics<NodeId, NodeInfo>>) {
    tokio::spawn(async move {
        let mut term = metrics.borrow_and_update().current_term;
        while metrics.changed().await.is_ok() {
            let now = metrics.borrow_and_update().current_term;
            if now > term {
                crate::telemetry::get().elections.inc_by(now - term);
                term = now;
            }
        }
    });
}

impl Cluster {
    /// Starts this node's Raft member from the files in `dir` (created if
    /// missing), talking to the others over TCP. A new node does nothing
    /// until [`Cluster::initialize`] here or [`Cluster::add_voter`] on the
    /// leader; a known one rejoins its cluster. RPCs reach it only once the
    /// caller serves them ([`Cluster::listen`] or [`serve_rpc`]).
    pub async fn start(id: NodeId, info: NodeInfo, dir: &Path) -> Result<Cluster> {
        Cluster::start_with(
            id,
            info,
            dir,
            TcpTransport::default(),
            Cluster::raft_config(),
        )
        .await
    }

    /// [`Cluster::start`] with another transport and Raft configuration.
    pub async fn start_with<T: Transport>(
        id: NodeId,
        info: NodeInfo,
        dir: &Path,
        transport: T,
        config: Config,
    ) -> Result<Cluster> {
        let config = config
            .validate()
            .map_err(|e| Error::Config(e.to_string()))?;
        let leases = Arc::new(Mutex::new(LeaseBook::default()));
        let (log, state_machine) = store::open(dir, leases.clone())?;
        let cluster_id = identity::load(dir)?;
        if cluster_id.is_none() && (log.holds_state() || state_machine.has_snapshot()) {
            return Err(StoreError::NoClusterId {
                dir: dir.to_path_buf(),
            }
            .into());
        }
        let identity = Arc::new(Identity::new(dir, cluster_id));
        let state = state_machine.subscribe();
        let contacts = Arc::new(network::Contacts::default());
        let network =
            network::NetworkFactory::new(id, transport, identity.clone(), contacts.clone());
        #[cfg(test)]
        let staller = log.staller();
        let raft = Raft::new(id, Arc::new(config), network, log, state_machine)
            .await
            .map_err(|e| Error::Stopped(e.to_string()))?;
        count_elections(raft.metrics());
        Ok(Cluster {
            id,
            info,
            raft,
            identity,
            contacts,
            state,
            leases,
            listener: Mutex::new(None),
            forward: TcpTransport::default(),
            #[cfg(test)]
            staller,
        })
    }

    /// The Raft configuration of a node: timing for fast failover (see the
    /// module docs).
    pub fn raft_config() -> Config {
        Config {
            cluster_name: "availdb".into(),
            heartbeat_interval: 50,
            election_timeout_min: 200,
            election_timeout_max: 400,
            install_snapshot_timeout: 2000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(1000),
            max_in_snapshot_log_to_keep: 100,
            snapshot_max_chunk_size: 1 << 20,
            ..Config::default()
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The Raft node (its metrics, or tests).
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// When each other member last answered this node's Raft requests.
    /// On the leader, which sends every member a heartbeat every 50 ms,
    /// that is how recently it heard from each; elsewhere it says little.
    pub fn last_heard(&self) -> BTreeMap<NodeId, Instant> {
        self.contacts.last_heard()
    }

    /// The cluster this node belongs to; none before it forms or joins one.
    pub fn cluster_id(&self) -> Option<ClusterId> {
        self.identity.current()
    }

    /// Runs `change` (a change of the roles this node keeps of its own,
    /// [`crate::auth::local`], returning how many it keeps afterwards) if
    /// the node is in no cluster yet, with no join possible meanwhile:
    /// while it keeps roles, a cluster that adds it is refused
    /// ([`Refusal::KeepsOwnRoles`]). None: it is in a cluster.
    pub fn while_in_no_cluster<R>(&self, change: impl FnOnce() -> (R, usize)) -> Option<R> {
        self.identity.while_unjoined(change)
    }

    /// The receiving side of this node's cluster RPCs, to pass to
    /// [`serve_rpc`].
    pub fn rpc_server(&self) -> RpcServer {
        RpcServer::new(
            self.raft.clone(),
            self.identity.clone(),
            self.leases.clone(),
        )
    }

    /// The request frame of `request` to node `target`, from this node.
    fn envelope(&self, target: NodeId, request: RpcRequest) -> Envelope {
        Envelope {
            target,
            from: Some(self.id),
            cluster: self.identity.current(),
            request,
        }
    }

    /// Sends `request` to the leader `id` (at `info`) for this node.
    async fn forward_to(
        &self,
        id: NodeId,
        info: &NodeInfo,
        request: RpcRequest,
        timeout: Duration,
    ) -> Result<RpcResponse> {
        let kind = request.kind();
        let sent = self
            .forward
            .call(info, self.envelope(id, request), timeout)
            .await;
        match sent {
            Ok(RpcResponse::WrongCluster(refusal)) => {
                self.identity.note_refused_by(id, info, kind, &refusal);
                Err(Error::WrongCluster {
                    node: info.to_string(),
                    refusal,
                })
            }
            Ok(RpcResponse::Refused(reason)) => Err(Error::Forwarded(reason)),
            Ok(answer) => Ok(answer),
            Err(e) => Err(Error::Forwarded(e.to_string())),
        }
    }

    /// Serves cluster RPCs on `listener` until [`Cluster::shutdown`].
    pub fn listen(&self, listener: TcpListener) {
        let server = self.rpc_server();
        let task = tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster endpoint accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let server = server.clone();
                tokio::spawn(async move {
                    // A plain TCP port of its own (no partner TLS here).
                    if let Err(e) = serve_rpc(server, stream, Some(peer), || true).await {
                        tracing::debug!(error = %e, "cluster RPC connection ended");
                    }
                });
            }
        });
        let old = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(task);
        if let Some(old) = old {
            old.abort();
        }
    }

    /// Forms a new cluster of `members` (this node among them, as it was
    /// started). Call it on one node of a new cluster, once; the others
    /// learn the membership from the leader. The cluster's id is minted
    /// here (unless this node holds one already) and made durable first.
    pub async fn initialize(&self, members: BTreeMap<NodeId, NodeInfo>) -> Result<()> {
        // The members' endpoints are the addresses partners reach them at
        // (ENDPOINT_URL), which may differ from the address a node listens
        // on (a proxy, NAT, a wildcard listen address): only the identity
        // must match.
        if members.get(&self.id).map(|m| &m.name) != Some(&self.info.name) {
            return Err(Error::Initialize(format!(
                "the members must include this node as node {} (replica {:?})",
                self.id, self.info.name
            )));
        }
        let identity = self.identity.clone();
        let (cluster_id, minted) =
            tokio::task::spawn_blocking(move || identity.adopt(ClusterId::mint()))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
                .map_err(|source| StoreError::Io {
                    path: self.identity.path(),
                    source,
                })?;
        let formed = self.raft.initialize(members).await;
        if let (Err(RaftError::APIError(_)), true) = (&formed, minted) {
            // Refused before anything was written: no cluster was formed.
            self.identity.forget(&cluster_id);
        }
        formed.map_err(|e| match e {
            RaftError::APIError(InitializeError::NotAllowed(e)) => Error::Initialize(format!(
                "this node already belongs to a cluster ({e}); add new nodes with add_voter"
            )),
            RaftError::APIError(e) => Error::Initialize(e.to_string()),
            RaftError::Fatal(f) => Error::Stopped(f.to_string()),
        })?;
        if minted {
            tracing::info!("formed cluster {cluster_id}");
        }
        Ok(())
    }

    /// On the leader: adds node `id` as a voter once it has caught up with
    /// the log (it must be started and reachable at `info.endpoint`).
    pub async fn add_voter(&self, id: NodeId, info: NodeInfo) -> Result<()> {
        change_members_here(&self.raft, &self.identity, MemberChange::Add(id, info)).await
    }

    /// Changes the voters from any node: made here when this node leads,
    /// else forwarded to the leader.
    pub async fn change_members(&self, change: MemberChange) -> Result<()> {
        match change_members_here(&self.raft, &self.identity, change.clone()).await {
            Err(Error::NotLeader(Some((id, Some(info))))) => {
                let request = RpcRequest::ChangeMembers(change);
                let timeout = MEMBERSHIP_TIMEOUT + PROPOSE_TIMEOUT;
                match self.forward_to(id, &info, request, timeout).await? {
                    RpcResponse::MembersChanged(Ok(())) => Ok(()),
                    RpcResponse::MembersChanged(Err(reason)) => Err(Error::Forwarded(reason)),
                    other => Err(Error::Forwarded(format!("unexpected answer {other:?}"))),
                }
            }
            other => other,
        }
    }

    /// On the leader: commits `command` and returns how the state machine
    /// answered it.
    /// Sets how proposals reach the leader from this node (the same
    /// transport the node's Raft uses, preamble included).
    pub fn with_forwarding(mut self, transport: TcpTransport) -> Cluster {
        self.forward = transport;
        self
    }

    /// Proposes `command` wherever the leader is: here, or forwarded to it.
    pub async fn propose_anywhere(&self, command: Command) -> Result<CommandResult> {
        match self.propose(command.clone()).await {
            Err(Error::NotLeader(Some((id, Some(info))))) => {
                let request = RpcRequest::Propose(command);
                match self.forward_to(id, &info, request, PROPOSE_TIMEOUT).await? {
                    RpcResponse::Proposed(Ok(result)) => Ok(result),
                    RpcResponse::Proposed(Err(reason)) => Err(Error::Forwarded(reason)),
                    other => Err(Error::Forwarded(format!("unexpected answer {other:?}"))),
                }
            }
            other => other,
        }
    }

    pub async fn propose(&self, command: Command) -> Result<CommandResult> {
        let _on_its_way = LeaseBook::renewal_on_its_way(&self.leases, &command);
        let write = self.raft.client_write(command);
        match tokio::time::timeout(PROPOSE_TIMEOUT, write).await {
            Ok(Ok(response)) => Ok(response.data),
            Ok(Err(e)) => Err(write_error(e)),
            Err(_) => Err(Error::Timeout(PROPOSE_TIMEOUT)),
        }
    }

    /// The state as applied on this node (possibly behind the leader's).
    pub fn state(&self) -> ClusterState {
        self.state.borrow().clone()
    }

    /// The role called `name` in the applied state on this node.
    pub fn role(&self, name: &str) -> Option<crate::auth::RoleRecord> {
        self.state.borrow().role(name).cloned()
    }

    /// A receiver that sees the state change at every applied entry.
    pub fn subscribe(&self) -> watch::Receiver<ClusterState> {
        self.state.clone()
    }

    /// Leader, term and members as this node knows them.
    pub fn metrics(&self) -> ClusterMetrics {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters = membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id).map(|n| (id, n.clone())))
            .collect();
        let learners = membership
            .learner_ids()
            .filter_map(|id| membership.get_node(&id).map(|n| (id, n.clone())))
            .collect();
        ClusterMetrics {
            id: m.id,
            state: m.state,
            term: m.current_term,
            leader: m.current_leader,
            voters,
            last_applied: m.last_applied.map(|l| l.index),
            local: self.info.clone(),
            learners,
            cluster_id: self.identity.current(),
        }
    }

    /// On the leader: true once `group`'s lease has run out by this
    /// leader's clock plus `margin` (or the group has no lease), so another
    /// replica may be promoted without two primaries writing (safety rule
    /// 2). False while this leader has not yet applied the entries of
    /// earlier terms (it cannot know the latest renewal yet).
    pub fn lease_expired(&self, group: &str, margin: Duration) -> Result<bool> {
        let now = Instant::now();
        let m = self.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            let leader = m.current_leader.map(|id| {
                let node = m.membership_config.membership().get_node(&id).cloned();
                (id, node)
            });
            return Err(Error::NotLeader(leader));
        }
        // A copy, so the watch lock is not held with the lease book's (the
        // state machine takes them in the other order).
        let state = self.state();
        if state.last_applied.map(|l| l.leader_id.term) != Some(m.current_term) {
            return Ok(false);
        }
        self.leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expired(&state, m.current_term, group, now, margin)
            .ok_or_else(|| Error::UnknownGroup(group.to_string()))
    }

    /// Stops the Raft node and the listener. The files stay; start again
    /// from the same directory to rejoin.
    pub async fn shutdown(&self) -> Result<()> {
        let listener = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = listener {
            task.abort();
        }
        self.raft
            .shutdown()
            .await
            .map_err(|e| Error::Stopped(e.to_string()))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let listener = self.listener.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = listener.take() {
            task.abort();
        }
    }
}
