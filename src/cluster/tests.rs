//! Whole clusters in one process: three nodes over real loopback TCP, and
//! three over an in-process transport that can cut a node off. Every wait
//! is bounded by a generous deadline; nothing measures speed.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::{ServerState, SnapshotPolicy};
use tempfile::TempDir;
use tokio::net::TcpListener;

use super::*;
use crate::group::GroupConfig;

/// Longest any condition may take to come true.
const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `check` until it holds; fails the test after [`DEADLINE`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let give_up = tokio::time::Instant::now() + DEADLINE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < give_up,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The node every live voter agrees is the leader (which knows it is).
fn agreed_leader(nodes: &[Option<Cluster>]) -> Option<NodeId> {
    let live: Vec<_> = nodes
        .iter()
        .flatten()
        .map(Cluster::metrics)
        .filter(|m| m.voters.contains_key(&m.id))
        .collect();
    let leader = live.first()?.leader?;
    let leads = live
        .iter()
        .any(|m| m.id == leader && m.state == ServerState::Leader);
    (leads && live.iter().all(|m| m.leader == Some(leader))).then_some(leader)
}

fn node(nodes: &[Option<Cluster>], id: NodeId) -> &Cluster {
    nodes[id as usize - 1].as_ref().expect("a live node")
}

fn group() -> GroupConfig {
    crate::group::fixtures::group(&["r1", "r2", "r3"])
}

fn renew(holder: &str, epoch: u64, duration_ms: u64) -> Command {
    Command::RenewLease {
        group: "ag1".into(),
        holder: holder.into(),
        epoch,
        duration_ms,
    }
}

/// r2 promoted in group ag1, epoch 2 (the lease book's tests use it too).
pub(super) fn promotion() -> Command {
    Command::Promote {
        group: "ag1".into(),
        new_primary: "r2".into(),
        new_epoch: 2,
        require_synchronized: false,
        after_lease: false,
        at_us: 0,
        reason: String::new(),
    }
}

fn info(id: NodeId, endpoint: SocketAddr) -> NodeInfo {
    NodeInfo {
        name: format!("r{id}"),
        endpoint,
    }
}

/// Proposes on whichever node leads, retrying while leadership moves.
async fn propose_on_leader(nodes: &[Option<Cluster>], command: Command) -> CommandResult {
    let give_up = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(leader) = agreed_leader(nodes) {
            match node(nodes, leader).propose(command.clone()).await {
                Ok(result) => return result,
                Err(e) => assert!(e.is_retryable(), "{e}"),
            }
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "no leader took {command:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Adds `id` as a voter through whichever node leads, retrying while
/// leadership moves.
async fn add_voter_on_leader(nodes: &[Option<Cluster>], id: NodeId, info: NodeInfo) {
    let give_up = tokio::time::Instant::now() + DEADLINE;
    loop {
        assert!(
            tokio::time::Instant::now() < give_up,
            "node {id} never joined"
        );
        if let Some(leader) = agreed_leader(nodes) {
            match node(nodes, leader).add_voter(id, info.clone()).await {
                Ok(()) => return,
                Err(e) => assert!(e.is_retryable(), "{e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Snapshots often, and purges everything they cover, so a node that was
/// down must be sent a snapshot.
fn test_config() -> Config {
    Config {
        snapshot_policy: SnapshotPolicy::LogsSinceLast(10),
        max_in_snapshot_log_to_keep: 0,
        ..Cluster::raft_config()
    }
}

async fn start_tcp(id: NodeId, dir: &Path, listener: TcpListener) -> Cluster {
    let endpoint = listener.local_addr().unwrap();
    let cluster = Cluster::start_with(
        id,
        info(id, endpoint),
        dir,
        TcpTransport::default(),
        test_config(),
    )
    .await
    .unwrap();
    cluster.listen(listener);
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_tcp_fail_over_keep_their_state_and_refuse_stale_epochs() {
    let dirs: Vec<TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes: Vec<Option<Cluster>> = Vec::new();
    let mut endpoints = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        endpoints.push(listener.local_addr().unwrap());
        nodes.push(Some(start_tcp(i as u64 + 1, dir.path(), listener).await));
    }
    let members: BTreeMap<_, _> = (1..=3)
        .map(|id| (id, info(id, endpoints[id as usize - 1])))
        .collect();
    // Members that leave this node out, or give its id another name, are
    // refused; its advertised endpoint may differ from where it listens.
    for wrong in [
        BTreeMap::from([(2, info(2, endpoints[1]))]),
        BTreeMap::from([(1, info(2, endpoints[0]))]),
    ] {
        assert!(matches!(
            node(&nodes, 1).initialize(wrong).await,
            Err(Error::Initialize(_))
        ));
    }
    node(&nodes, 1).initialize(members.clone()).await.unwrap();
    assert!(matches!(
        node(&nodes, 1).initialize(members.clone()).await,
        Err(Error::Initialize(_))
    ));

    eventually("a leader", || agreed_leader(&nodes).is_some()).await;
    let voters = node(&nodes, 1).metrics().voters;
    assert_eq!(voters, members, "every node is a voter");

    for command in [
        Command::PutGroup(Box::new(group())),
        renew("r1", 1, 400),
        Command::SetSynchronized {
            group: "ag1".into(),
            database: "app".into(),
            replica: "r2".into(),
            synchronized: true,
            epoch: 1,
            version: 0,
        },
    ] {
        assert_eq!(propose_on_leader(&nodes, command).await, CommandResult::Ok);
    }
    eventually("every node to apply all three commands", || {
        nodes.iter().flatten().all(|n| {
            n.state()
                .group("ag1")
                .is_some_and(|g| g.lease.is_some() && !g.synchronized.is_empty())
        })
    })
    .await;
    let applied = node(&nodes, 1).state();
    assert_eq!(
        applied.group("ag1").unwrap().lease.as_ref().unwrap().holder,
        "r1"
    );

    let first = agreed_leader(&nodes).expect("a leader");
    let follower = (1..=3).find(|&id| id != first).unwrap();
    match node(&nodes, follower).propose(renew("r1", 1, 400)).await {
        Err(e @ Error::NotLeader(Some((id, Some(_))))) => {
            assert_eq!(id, first);
            assert!(e.is_retryable());
            let hint = format!("the leader is node {first}");
            assert!(e.to_string().contains(&hint), "{e}");
        }
        other => panic!("a follower took a proposal: {other:?}"),
    }
    assert!(matches!(
        node(&nodes, follower).lease_expired("ag1", Duration::ZERO),
        Err(Error::NotLeader(_))
    ));

    // The leader dies; the two others elect a new one and still hold the state.
    let old = nodes[first as usize - 1].take().unwrap();
    old.shutdown().await.unwrap();
    drop(old);
    eventually("a new leader", || {
        agreed_leader(&nodes).is_some_and(|l| l != first)
    })
    .await;
    let second = agreed_leader(&nodes).unwrap();
    let leader = node(&nodes, second);
    assert_eq!(leader.state().groups, applied.groups);

    // The new leader counts r1's lease from the last renewal it applied (as
    // a follower): it expires without a renewal, once the leader has
    // applied its own term's entry.
    eventually("r1's lease to expire on a caught-up leader", || {
        agreed_leader(&nodes).is_some_and(|l| {
            let (n, margin) = (node(&nodes, l), Duration::from_millis(100));
            n.lease_expired("ag1", margin).unwrap_or(false)
                && matches!(n.lease_expired("nope", margin), Err(Error::UnknownGroup(_)))
        })
    })
    .await;

    let promote = promotion();
    assert_eq!(
        propose_on_leader(&nodes, promote.clone()).await,
        CommandResult::Ok
    );
    // Safety rule 2: the deposed primary's renewal and set changes are refused.
    let stale = [
        renew("r1", 1, 400),
        Command::SetSynchronized {
            group: "ag1".into(),
            database: "app".into(),
            replica: "r3".into(),
            synchronized: true,
            epoch: 1,
            version: 0,
        },
        promote,
    ];
    for command in stale {
        match propose_on_leader(&nodes, command).await {
            CommandResult::Rejected(why) => assert!(why.contains("epoch"), "{why}"),
            CommandResult::Ok => panic!("a stale-epoch command was applied"),
        }
    }
    let record = node(&nodes, second).state().group("ag1").unwrap().clone();
    assert_eq!(
        (record.config.primary.as_str(), record.config.epoch),
        ("r2", 2)
    );
    assert!(record.synchronized.is_empty());

    // The old leader restarts from its files and catches up. Leadership may
    // move from here on (the restarted node may start an election), so
    // proposals go to whichever node leads.
    let listener = TcpListener::bind(endpoints[first as usize - 1])
        .await
        .unwrap();
    let dir = dirs[first as usize - 1].path();
    nodes[first as usize - 1] = Some(start_tcp(first, dir, listener).await);
    let target = node(&nodes, second).state();
    eventually("the restarted node to catch up", || {
        node(&nodes, first).state().groups == target.groups
    })
    .await;

    // Enough entries for snapshots and purges everywhere; then a new node can
    // only catch up from a snapshot, sent over TCP.
    for _ in 0..25 {
        let renewal = renew("r2", 2, 400);
        assert_eq!(propose_on_leader(&nodes, renewal).await, CommandResult::Ok);
    }
    eventually("every node to purge its log", || {
        nodes
            .iter()
            .flatten()
            .all(|n| n.raft().metrics().borrow().purged.is_some())
    })
    .await;
    let dir4 = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let info4 = info(4, listener.local_addr().unwrap());
    nodes.push(Some(start_tcp(4, dir4.path(), listener).await));
    add_voter_on_leader(&nodes, 4, info4).await;
    eventually("the new node to catch up and see itself a voter", || {
        let Some(leader) = agreed_leader(&nodes) else {
            return false;
        };
        let new = node(&nodes, 4);
        new.state().groups == node(&nodes, leader).state().groups && new.metrics().voters.len() == 4
    })
    .await;
    let snapshot = node(&nodes, 4).raft().metrics().borrow().snapshot;
    assert!(snapshot.is_some(), "the new node installed a snapshot");

    for n in nodes.iter().flatten() {
        n.shutdown().await.unwrap();
    }
}

/// The false alarm of a stalled disk: while the followers' cluster logs
/// cannot write, no renewal commits, yet the primary keeps renewing. The
/// leader must not count the lease out while a renewal of the holder is on
/// its way (here forwarded from another node, its proposal waiting for a
/// majority); once the primary stops, it counts the lease out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_renewing_through_a_stalled_log_is_counted_out_only_once_it_stops() {
    const LEASE_MS: u64 = 800;
    const MARGIN: Duration = Duration::from_millis(200);
    let dirs: Vec<TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes: Vec<Option<Cluster>> = Vec::new();
    let mut members = BTreeMap::new();
    for (i, dir) in dirs.iter().enumerate() {
        let id = i as u64 + 1;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        members.insert(id, info(id, listener.local_addr().unwrap()));
        nodes.push(Some(start_tcp(id, dir.path(), listener).await));
    }
    node(&nodes, 1).initialize(members).await.unwrap();
    eventually("a leader", || agreed_leader(&nodes).is_some()).await;
    for command in [
        Command::PutGroup(Box::new(group())),
        renew("r1", 1, LEASE_MS),
    ] {
        assert_eq!(propose_on_leader(&nodes, command).await, CommandResult::Ok);
    }
    let leader = agreed_leader(&nodes).expect("a leader");
    let followers: Vec<NodeId> = (1..=3).filter(|&id| id != leader).collect();
    let (leads, primary) = (node(&nodes, leader), node(&nodes, followers[0]));
    // Every node applied the renewal, so every follower has stored the
    // commit index too: heartbeats write nothing while the logs stall, and
    // the followers' Raft stays free to send proposals to the leader.
    eventually(
        "every node to apply the renewal, the leader to count it",
        || {
            nodes
                .iter()
                .flatten()
                .all(|n| n.state().group("ag1").is_some_and(|g| g.lease.is_some()))
                && leads
                    .lease_expired("ag1", MARGIN)
                    .is_ok_and(|expired| !expired)
        },
    )
    .await;

    // Both followers' disks stop answering: nothing commits from now on.
    let stalls: Vec<_> = followers
        .iter()
        .map(|&id| node(&nodes, id).staller.stall())
        .collect();
    let renewing = async {
        loop {
            let renewed = primary.propose_anywhere(renew("r1", 1, LEASE_MS)).await;
            assert!(
                !matches!(renewed, Ok(CommandResult::Ok)),
                "a renewal committed through a stalled majority: {renewed:?}"
            );
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    };
    let watching = async {
        // Three leases and more without a commit.
        let until = tokio::time::Instant::now() + Duration::from_millis(3 * LEASE_MS);
        while tokio::time::Instant::now() < until {
            assert!(
                !leads.lease_expired("ag1", MARGIN).unwrap(),
                "the leader counted out a primary whose renewal was on its way"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        () = renewing => unreachable!("the renewals go on until the watch ends"),
        () = watching => {}
    }
    // The primary stopped: its last renewal is still on its way on the
    // leader (the proposal waits until its time-out), then the count runs.
    assert!(!leads.lease_expired("ag1", MARGIN).unwrap());
    eventually(
        "the leader to count out a primary that stopped renewing",
        || leads.lease_expired("ag1", MARGIN).unwrap(),
    )
    .await;

    drop(stalls);
    for n in nodes.iter().flatten() {
        n.shutdown().await.unwrap();
    }
}

/// Routes RPCs between in-process nodes; a cut-off node reaches nobody and
/// nobody reaches it.
#[derive(Default)]
struct Router {
    nodes: Mutex<BTreeMap<NodeId, RpcServer>>,
    cut_off: Mutex<BTreeSet<NodeId>>,
}

struct LocalTransport {
    me: NodeId,
    router: Arc<Router>,
}

/// Sends a value through its JSON form, as the TCP transport would.
fn through_json<T: Serialize + serde::de::DeserializeOwned>(value: T) -> T {
    serde_json::from_slice(&serde_json::to_vec(&value).unwrap()).unwrap()
}

impl Transport for LocalTransport {
    async fn call(
        &self,
        node: &NodeInfo,
        envelope: Envelope,
        timeout: Duration,
    ) -> Result<RpcResponse, TransportError> {
        let target = envelope.target;
        let server = {
            let cut_off = self.router.cut_off.lock().unwrap();
            let server = self.router.nodes.lock().unwrap().get(&target).cloned();
            server.filter(|_| !cut_off.contains(&self.me) && !cut_off.contains(&target))
        };
        let Some(server) = server else {
            return Err(TransportError::Unreachable {
                target,
                endpoint: node.endpoint,
                source: io::ErrorKind::ConnectionRefused.into(),
            });
        };
        let answer = server.answer(through_json(envelope), None);
        match tokio::time::timeout(timeout, answer).await {
            Ok(response) => Ok(through_json(response)),
            Err(_) => Err(TransportError::Timeout {
                target,
                after: timeout,
            }),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_leader_commits_nothing_while_the_majority_fails_over() {
    let router = Arc::new(Router::default());
    let dirs: Vec<TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let transport = LocalTransport {
            me: id,
            router: router.clone(),
        };
        let dir: PathBuf = dirs[id as usize - 1].path().into();
        let endpoint = SocketAddr::from(([127, 0, 0, 1], 1000 + id as u16));
        let cluster = Cluster::start_with(
            id,
            info(id, endpoint),
            &dir,
            transport,
            Cluster::raft_config(),
        )
        .await
        .unwrap();
        router
            .nodes
            .lock()
            .unwrap()
            .insert(id, cluster.rpc_server());
        nodes.push(Some(cluster));
    }
    let seed = node(&nodes, 1);
    seed.initialize(BTreeMap::from([(1, seed.info.clone())]))
        .await
        .unwrap();
    for id in 2..=3 {
        add_voter_on_leader(&nodes, id, node(&nodes, id).info.clone()).await;
    }
    let put = Command::PutGroup(Box::new(group()));
    assert_eq!(propose_on_leader(&nodes, put).await, CommandResult::Ok);
    eventually("all three nodes to agree on a leader", || {
        agreed_leader(&nodes).is_some()
            && nodes
                .iter()
                .flatten()
                .all(|n| n.metrics().voters.len() == 3)
    })
    .await;

    // Cut the leader off: its change cannot commit, the others elect a new
    // leader and promote r2 (safety rule 2: one writer).
    let first = agreed_leader(&nodes).unwrap();
    router.cut_off.lock().unwrap().insert(first);
    let cut = nodes[first as usize - 1].take().unwrap();
    let mut change = group();
    change.version = 2;
    change.databases.push("lost".into());
    let pending = tokio::spawn(async move {
        let result = cut.propose(Command::PutGroup(Box::new(change))).await;
        (cut, result)
    });
    let promote = promotion();
    assert_eq!(propose_on_leader(&nodes, promote).await, CommandResult::Ok);

    router.cut_off.lock().unwrap().clear();
    let (cut, result) = pending.await.unwrap();
    assert!(
        matches!(result, Err(Error::NotLeader(_) | Error::Timeout(_))),
        "the cut-off leader's proposal must not succeed: {result:?}"
    );
    nodes[first as usize - 1] = Some(cut);
    eventually("every node to hold the promotion", || {
        nodes
            .iter()
            .flatten()
            .all(|n| n.state().group("ag1").is_some_and(|g| g.config.epoch == 2))
    })
    .await;
    for n in nodes.iter().flatten() {
        let state = n.state();
        let record = state.group("ag1").unwrap();
        assert_eq!(record.config.primary, "r2");
        assert_eq!(
            record.config.databases,
            ["app"],
            "the cut-off change was lost"
        );
    }

    for n in nodes.iter().flatten() {
        n.shutdown().await.unwrap();
    }
}

/// Safety rule 6, the cause 9: two clusters whose nodes have the
/// same names have the same node ids and the same Raft leader ids. A
/// cluster told to add the other's node gets its refusal at once (naming
/// both clusters) and keeps no such member; the other cluster's node takes
/// nothing from it and stays in its own cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_cluster_with_the_same_ids_is_refused_and_left_untouched() {
    let dirs: Vec<TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let endpoints: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let mut listeners = listeners.into_iter();
    // Cluster x: node 1 alone. Cluster y: nodes 1 and 2.
    let x1 = start_tcp(1, dirs[0].path(), listeners.next().unwrap()).await;
    let y1 = start_tcp(1, dirs[1].path(), listeners.next().unwrap()).await;
    let y2 = start_tcp(2, dirs[2].path(), listeners.next().unwrap()).await;
    x1.initialize(BTreeMap::from([(1, info(1, endpoints[0]))]))
        .await
        .unwrap();
    let y_members = BTreeMap::from([(1, info(1, endpoints[1])), (2, info(2, endpoints[2]))]);
    y1.initialize(y_members.clone()).await.unwrap();
    let y = [Some(y1), Some(y2)];
    eventually("cluster y's leader", || agreed_leader(&y).is_some()).await;
    let put = Command::PutGroup(Box::new(group()));
    assert_eq!(propose_on_leader(&y, put).await, CommandResult::Ok);
    eventually("both of y's nodes to hold the group", || {
        y.iter().flatten().all(|n| n.state().group("ag1").is_some())
    })
    .await;
    let (x_id, y_id) = (
        x1.cluster_id().unwrap(),
        y[0].as_ref().unwrap().cluster_id().unwrap(),
    );
    assert_ne!(x_id, y_id);
    assert_eq!(y[1].as_ref().unwrap().cluster_id(), Some(y_id.clone()));
    let y2_before = y[1].as_ref().unwrap().state();

    let started = std::time::Instant::now();
    match x1.add_voter(2, info(2, endpoints[2])).await {
        Err(e @ Error::WrongCluster { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains(x_id.as_str()) && text.contains(y_id.as_str()),
                "the refusal names both clusters: {text}"
            );
            assert!(!e.is_retryable());
        }
        other => panic!("cluster x added cluster y's node: {other:?}"),
    }
    assert!(
        started.elapsed() < MEMBERSHIP_TIMEOUT,
        "the refusal came at once, not after a catch-up timeout"
    );
    eventually("cluster x to drop the refused learner", || {
        let m = x1.metrics();
        m.voters.len() == 1 && m.learners.is_empty()
    })
    .await;

    // Give a wrongly accepted leader time to do harm, then look.
    tokio::time::sleep(Duration::from_millis(500)).await;
    eventually("cluster y to still agree on a leader", || {
        agreed_leader(&y).is_some()
    })
    .await;
    for n in y.iter().flatten() {
        assert_eq!(n.metrics().voters, y_members, "cluster y's members");
        assert_eq!(n.cluster_id(), Some(y_id.clone()));
    }
    assert_eq!(y[1].as_ref().unwrap().state().groups, y2_before.groups);
    assert!(x1.state().groups.is_empty(), "x took nothing from y either");

    x1.shutdown().await.unwrap();
    for n in y.iter().flatten() {
        n.shutdown().await.unwrap();
    }
}

/// A cluster directory from before cluster ids (Raft state, no `id`) is
/// refused with what to do; once given an id, the node starts in it.
#[tokio::test]
async fn a_store_from_before_cluster_ids_refuses_to_start_until_given_one() {
    let dir = tempfile::tempdir().unwrap();
    let me = info(1, "127.0.0.1:1".parse().unwrap());
    let node = Cluster::start(1, me.clone(), dir.path()).await.unwrap();
    node.initialize(BTreeMap::from([(1, me.clone())]))
        .await
        .unwrap();
    node.shutdown().await.unwrap();
    drop(node);
    std::fs::remove_file(dir.path().join("id")).unwrap();

    match Cluster::start(1, me.clone(), dir.path()).await {
        Err(e @ Error::Store(StoreError::NoClusterId { .. })) => {
            let text = e.to_string();
            let path = dir.path().join("id").display().to_string();
            assert!(
                text.contains(&path) && text.contains("the same on every node"),
                "says what to do: {text}"
            );
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("a store without an id started"),
    }
    std::fs::write(dir.path().join("id"), "old-cluster-7\n").unwrap();
    let node = Cluster::start(1, me, dir.path()).await.unwrap();
    assert_eq!(node.cluster_id().unwrap().as_str(), "old-cluster-7");
    node.shutdown().await.unwrap();

    // A node that never joined a cluster has no Raft state and needs no id.
    let fresh = tempfile::tempdir().unwrap();
    let me = info(2, "127.0.0.1:1".parse().unwrap());
    for _ in 0..2 {
        let node = Cluster::start(2, me.clone(), fresh.path()).await.unwrap();
        assert_eq!(node.cluster_id(), None);
        node.shutdown().await.unwrap();
    }
}
