//! Which cluster a node belongs to, and the check every partner message
//! passes before it reaches Raft.
//!
//! Node ids are derived from replica names (`node_id`), so two clusters
//! whose replicas share names (`r1`, `r2`, …) also share node ids, and even
//! Raft's leader ids (term, node): without an identity of its own, a node
//! of one cluster would take another cluster's AppendEntries as its own
//! leader's and let it overwrite its log. So every cluster has an id, and
//! every request between nodes carries the sender's.
//!
//! # The id
//! * **Minted** (random, 32 hex digits) by the node that forms the cluster
//!   ([`super::Cluster::initialize`]), and written to `DATA_DIR/cluster/id`
//!   before its first Raft write.
//! * **Handed to joiners** by the requests that add them: a node with no id
//!   yet adopts the id of the first join-protocol request that reaches it
//!   (AppendEntries, Vote, InstallSnapshot: what the leader of a new
//!   cluster, or a leader adding a node, sends first), writes it durably and
//!   only then hands the request to Raft. Trust on first contact: a new node
//!   belongs to the first cluster that adds it, and every other cluster is
//!   refused from then on.
//! * **Never changes** afterwards. Raft state implies an id: the id is
//!   durable before anything is written to the Raft store.
//!
//! # The rule ([`admit`])
//! | this node | the request carries | request | outcome |
//! | --- | --- | --- | --- |
//! | id A | A | any | accepted |
//! | id A | B | any | refused: another cluster ([`Refusal::Foreign`]) |
//! | id A | none | any | refused: no cluster id ([`Refusal::Anonymous`]) |
//! | no id | B | AppendEntries, Vote, InstallSnapshot | B adopted, accepted (refused while the node keeps roles of its own: [`Refusal::KeepsOwnRoles`]) |
//! | no id | B | forwarded proposal, membership change | refused: not in a cluster ([`Refusal::NotJoined`]) |
//! | no id | none | any | refused: no cluster id |
//!
//! A refused request is answered with the [`Refusal`], never handed to
//! Raft. Both sides log it at `warn`: the receiver (naming both ids, the
//! sender node and its address) and the sender (naming the target, its
//! endpoint and both ids), at most once per peer per [`LOG_EVERY`], with a
//! count of the refusals not logged in between ([`Throttle`]). The sender
//! reports the target to openraft as unreachable (it backs off), and a
//! membership change that adds a node of another cluster fails at once
//! with the refusal instead of waiting for a catch-up that never comes.
//!
//! # File
//! `DATA_DIR/cluster/id`: the id and a newline, nothing else (so an operator
//! can write one, see below). Written to `id.tmp`, fsynced, renamed over
//! `id`, directory fsynced. Ids are 1 to 64 characters among ASCII letters,
//! digits, `-`, `_` and `.`.
//!
//! # Data directories from before cluster ids
//! A cluster directory that holds Raft state (a vote, log entries or a
//! snapshot) but no `id` was written by an availdb that had no cluster ids.
//! No id can be derived from one node's files alone that all the nodes of
//! that cluster would derive alike (the log's first entries are purged, and
//! everything else changes over time), and adopting whatever id arrives
//! first would let two nodes of one cluster pick different ones. So such a
//! node refuses to start ([`super::StoreError::NoClusterId`]) and says what
//! to do: choose one id and write it to `DATA_DIR/cluster/id` on every node
//! of that cluster, the same on all. Nodes can be given the file one at a
//! time while they are restarted on the new version.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::store::StoreError;
use super::{NodeId, NodeInfo};

/// Name of the id file in the cluster directory.
pub(crate) const ID_FILE: &str = "id";
/// Longest id accepted.
const MAX_ID_LEN: usize = 64;
/// A refusal is logged at most this often per peer (with a count of the
/// ones in between).
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// The identity of one cluster: minted once, carried by every request
/// between its nodes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClusterId(String);

impl ClusterId {
    /// A new random id (32 hex digits).
    pub fn mint() -> ClusterId {
        ClusterId(uuid::Uuid::new_v4().simple().to_string())
    }

    /// Checks an id's form: 1 to 64 of ASCII letters, digits, `-`, `_`, `.`.
    pub fn parse(text: &str) -> Result<ClusterId, String> {
        let ok = !text.is_empty()
            && text.len() <= MAX_ID_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if ok {
            Ok(ClusterId(text.to_string()))
        } else {
            Err(format!(
                "{text:?} is not a cluster id: use 1 to {MAX_ID_LEN} ASCII letters, digits, \
                 '-', '_' or '.'"
            ))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ClusterId {
    type Error = String;
    fn try_from(text: String) -> Result<ClusterId, String> {
        ClusterId::parse(&text)
    }
}

impl From<ClusterId> for String {
    fn from(id: ClusterId) -> String {
        id.0
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a node refused a request, as sent back to the sender. The text is
/// written for the sender's operator: it names both sides and what to fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The request came from another cluster.
    #[error(
        "the node belongs to cluster {mine}, and the request came from cluster {theirs}: \
         a member list of cluster {theirs} names an endpoint of cluster {mine}'s node \
         (replica names alone do not tell clusters apart); remove that member from cluster \
         {theirs} (ALTER CLUSTER REMOVE NODE) or correct its ENDPOINT_URL"
    )]
    Foreign {
        /// The receiving node's cluster.
        mine: ClusterId,
        /// The sender's cluster.
        theirs: ClusterId,
    },
    /// The request carried no cluster id: its sender runs an availdb from
    /// before cluster ids.
    #[error(
        "the request carried no cluster id{}: its sender runs an older availdb; upgrade it \
         (a node from before cluster ids also needs DATA_DIR/cluster/id, see its start-up error)",
        mine.as_ref().map(|m| format!(" (the node belongs to cluster {m})")).unwrap_or_default()
    )]
    Anonymous {
        /// The receiving node's cluster, if it has one.
        mine: Option<ClusterId>,
    },
    /// The node is in no cluster yet but keeps roles of its own (made
    /// while it ran without a cluster, [`crate::auth::local`]): joining
    /// would put them out of use, so it refuses to be added.
    #[error(
        "the node is in no cluster yet and keeps {roles} role(s) of its own, made while it ran \
         without a cluster; joining cluster {theirs} would put them out of use: on that node, \
         DROP ROLE them (and make them again in cluster {theirs}), or run CREATE CLUSTER there \
         instead (which carries them into the new cluster) and add the other nodes to it"
    )]
    KeepsOwnRoles {
        /// How many roles it keeps.
        roles: usize,
        /// The sender's cluster.
        theirs: ClusterId,
    },
    /// The node is in no cluster and the request is not one that adds it.
    #[error(
        "the node is in no cluster yet, and a {kind} request does not add it to one (cluster \
         {theirs} sent it): the sender's member list names a node that never joined; add it \
         with ALTER CLUSTER ADD NODE on the sender's cluster, or correct the ENDPOINT_URL"
    )]
    NotJoined {
        /// The request's kind.
        kind: String,
        /// The sender's cluster.
        theirs: ClusterId,
    },
}

impl Refusal {
    /// The sender's cluster, when the request carried one.
    fn theirs(&self) -> Option<&ClusterId> {
        match self {
            Refusal::Foreign { theirs, .. }
            | Refusal::NotJoined { theirs, .. }
            | Refusal::KeepsOwnRoles { theirs, .. } => Some(theirs),
            Refusal::Anonymous { .. } => None,
        }
    }
}

/// What to do with an incoming request ([`admit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Hand it to Raft.
    Accept,
    /// Record this id as the node's own (durably), then hand it to Raft.
    Adopt(ClusterId),
    /// Answer the refusal; Raft never sees the request.
    Refuse(Refusal),
}

/// The rule of the module docs: `mine` is this node's id, `theirs` the
/// request's, `kind` its name and `joins` whether it is part of the join
/// protocol (AppendEntries, Vote, InstallSnapshot).
pub(crate) fn admit(
    mine: Option<&ClusterId>,
    theirs: Option<&ClusterId>,
    kind: &str,
    joins: bool,
) -> Verdict {
    match (mine, theirs) {
        (Some(mine), Some(theirs)) if mine == theirs => Verdict::Accept,
        (Some(mine), Some(theirs)) => Verdict::Refuse(Refusal::Foreign {
            mine: mine.clone(),
            theirs: theirs.clone(),
        }),
        (mine, None) => Verdict::Refuse(Refusal::Anonymous {
            mine: mine.cloned(),
        }),
        (None, Some(theirs)) if joins => Verdict::Adopt(theirs.clone()),
        (None, Some(theirs)) => Verdict::Refuse(Refusal::NotJoined {
            kind: kind.to_string(),
            theirs: theirs.clone(),
        }),
    }
}

/// Keeps a repeated warning to one line per key per period, counting the
/// ones it held back. Pure: the caller passes the time.
#[derive(Debug)]
pub(crate) struct Throttle {
    every: Duration,
    /// Per key: when it was last let through, and how many were held back
    /// since.
    seen: HashMap<String, (Instant, u64)>,
}

impl Throttle {
    /// Keys are few (peer clusters, peer nodes); past this many the oldest
    /// state is simply dropped.
    const MAX_KEYS: usize = 1024;

    pub(crate) fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            seen: HashMap::new(),
        }
    }

    /// `Some(n)` when a line for `key` may be logged at `now`, `n` being the
    /// number held back since the last one; `None` to stay quiet.
    pub(crate) fn allow(&mut self, key: &str, now: Instant) -> Option<u64> {
        if let Some((last, held)) = self.seen.get_mut(key) {
            if now.saturating_duration_since(*last) < self.every {
                *held += 1;
                return None;
            }
            let n = *held;
            *last = now;
            *held = 0;
            return Some(n);
        }
        if self.seen.len() >= Self::MAX_KEYS {
            self.seen.clear();
        }
        self.seen.insert(key.to_string(), (now, 0));
        Some(0)
    }
}

fn held_back(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} more since the last report)")
    }
}

/// Reads the id file in `dir`: `None` when there is none.
pub(crate) fn load(dir: &Path) -> Result<Option<ClusterId>, StoreError> {
    let path = dir.join(ID_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::Io { path, source: e }),
    };
    let line = text.strip_suffix('\n').unwrap_or(&text);
    ClusterId::parse(line.trim_end_matches('\r'))
        .map(Some)
        .map_err(|cause| StoreError::Corrupt {
            path,
            offset: 0,
            cause,
        })
}

/// Writes `id` to the id file in `dir` durably (temp file, fsync, rename,
/// directory fsync).
fn save(dir: &Path, id: &ClusterId) -> io::Result<()> {
    let path = dir.join(ID_FILE);
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(format!("{id}\n").as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()
}

/// This node's cluster id and what it learned about refusals, shared by
/// the RPC server, the network clients and the [`super::Cluster`].
#[derive(Debug)]
pub(crate) struct Identity {
    dir: PathBuf,
    id: Mutex<Option<ClusterId>>,
    /// Warnings about refused requests, on both sides.
    throttle: Mutex<Throttle>,
    /// Per target node: the refusal its last answer carried (cleared by
    /// any other answer).
    refused_by: Mutex<BTreeMap<NodeId, Refusal>>,
    /// How many roles the node keeps of its own while it is in no cluster
    /// ([`crate::auth::local`]); changed only under `id`'s lock
    /// ([`Identity::while_unjoined`]), so that a join and a new role cannot
    /// cross.
    own_roles: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Identity {
    /// The identity of the node whose cluster directory is `dir`, holding
    /// `id` (from [`load`]).
    pub(crate) fn new(dir: &Path, id: Option<ClusterId>) -> Identity {
        Identity {
            dir: dir.to_path_buf(),
            id: Mutex::new(id),
            throttle: Mutex::new(Throttle::new(LOG_EVERY)),
            refused_by: Mutex::new(BTreeMap::new()),
            own_roles: AtomicUsize::new(0),
        }
    }

    /// This node's cluster id, if it has one yet.
    pub(crate) fn current(&self) -> Option<ClusterId> {
        lock(&self.id).clone()
    }

    /// Makes `id` this node's cluster id, durably, unless it has one
    /// already. Returns the id the node holds afterwards and whether this
    /// call set it.
    pub(crate) fn adopt(&self, id: ClusterId) -> io::Result<(ClusterId, bool)> {
        let mut current = lock(&self.id);
        if let Some(held) = &*current {
            return Ok((held.clone(), false));
        }
        save(&self.dir, &id)?;
        *current = Some(id.clone());
        Ok((id, true))
    }

    /// As [`Identity::adopt`], for the id of a cluster that adds this
    /// node: refused (`Err` with their number) while the node keeps roles
    /// of its own.
    pub(crate) fn adopt_joining(
        &self,
        id: ClusterId,
    ) -> io::Result<Result<(ClusterId, bool), usize>> {
        let mut current = lock(&self.id);
        if let Some(held) = &*current {
            return Ok(Ok((held.clone(), false)));
        }
        let roles = self.own_roles.load(Ordering::SeqCst);
        if roles > 0 {
            return Ok(Err(roles));
        }
        save(&self.dir, &id)?;
        *current = Some(id.clone());
        Ok(Ok((id, true)))
    }

    /// Runs `change` if the node is in no cluster yet, with no join
    /// possible meanwhile; `change` returns how many roles the node keeps
    /// of its own afterwards. None: the node is in a cluster.
    pub(crate) fn while_unjoined<R>(&self, change: impl FnOnce() -> (R, usize)) -> Option<R> {
        let current = lock(&self.id);
        if current.is_some() {
            return None;
        }
        let (result, roles) = change();
        self.own_roles.store(roles, Ordering::SeqCst);
        Some(result)
    }

    /// Undoes an [`Identity::adopt`] that `Cluster::initialize` made for a
    /// cluster that was then not formed (no Raft state refers to it).
    pub(crate) fn forget(&self, id: &ClusterId) {
        let mut current = lock(&self.id);
        if current.as_ref() == Some(id) {
            let _ = fs::remove_file(self.dir.join(ID_FILE));
            *current = None;
        }
    }

    /// The id file's path, for messages.
    pub(crate) fn path(&self) -> PathBuf {
        self.dir.join(ID_FILE)
    }

    /// Receiver side: logs (throttled) that a `kind` request from node
    /// `from` at `peer` was refused.
    pub(crate) fn log_refused_request(
        &self,
        refusal: &Refusal,
        kind: &str,
        from: Option<NodeId>,
        peer: Option<SocketAddr>,
    ) {
        crate::net::count_refusal(crate::net::Partner::Raft, &refusal.to_string());
        let key = format!("in:{}", refusal.theirs().map_or("-", ClusterId::as_str));
        let Some(held) = lock(&self.throttle).allow(&key, Instant::now()) else {
            return;
        };
        let from = from.map_or("an unknown node".into(), |id| format!("node {id}"));
        let peer = peer.map_or(String::new(), |p| format!(" at {p}"));
        match refusal {
            Refusal::Foreign { mine, theirs } => tracing::warn!(
                "refused a cluster {kind} request from {from}{peer} of cluster {theirs}: this node \
                 belongs to cluster {mine}; cluster {theirs} names this node's endpoint in its \
                 member list: remove that member there (ALTER CLUSTER REMOVE NODE) or correct its \
                 ENDPOINT_URL{}",
                held_back(held)
            ),
            other => tracing::warn!(
                "refused a cluster {kind} request from {from}{peer}: {other}{}",
                held_back(held)
            ),
        }
    }

    /// Sender side: records and logs (throttled) that `target` refused a
    /// `kind` request.
    pub(crate) fn note_refused_by(
        &self,
        target: NodeId,
        node: &NodeInfo,
        kind: &str,
        refusal: &Refusal,
    ) {
        lock(&self.refused_by).insert(target, refusal.clone());
        let key = format!("out:{target}");
        if let Some(held) = lock(&self.throttle).allow(&key, Instant::now()) {
            tracing::warn!(
                "cluster node {target} ({node}) refused this node's {kind} request: {refusal}{}",
                held_back(held)
            );
        }
    }

    /// Sender side: `target` answered a request without refusing it.
    pub(crate) fn note_answered_by(&self, target: NodeId) {
        let mut refused = lock(&self.refused_by);
        if !refused.is_empty() {
            refused.remove(&target);
        }
    }

    /// The refusal `target`'s latest answer carried, if it refused.
    pub(crate) fn refused_by(&self, target: NodeId) -> Option<Refusal> {
        lock(&self.refused_by).get(&target).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ClusterId {
        ClusterId::parse(s).unwrap()
    }

    #[test]
    fn a_request_from_another_cluster_is_refused_and_one_from_the_same_is_accepted() {
        let (a, b) = (id("aaaa"), id("bbbb"));
        assert_eq!(
            admit(Some(&a), Some(&a), "AppendEntries", true),
            Verdict::Accept
        );
        for kind in ["AppendEntries", "Vote", "InstallSnapshot", "Propose"] {
            match admit(Some(&a), Some(&b), kind, kind != "Propose") {
                Verdict::Refuse(r @ Refusal::Foreign { .. }) => {
                    let text = r.to_string();
                    assert!(
                        text.contains("cluster aaaa") && text.contains("cluster bbbb"),
                        "{text}"
                    );
                }
                other => panic!("{kind} from another cluster: {other:?}"),
            }
        }
    }

    #[test]
    fn a_request_without_a_cluster_id_is_refused() {
        let a = id("aaaa");
        for mine in [Some(&a), None] {
            assert!(matches!(
                admit(mine, None, "Vote", true),
                Verdict::Refuse(Refusal::Anonymous { .. })
            ));
        }
    }

    #[test]
    fn a_node_in_no_cluster_adopts_the_id_of_a_join_request_only() {
        let b = id("bbbb");
        for kind in ["AppendEntries", "Vote", "InstallSnapshot"] {
            assert_eq!(admit(None, Some(&b), kind, true), Verdict::Adopt(b.clone()));
        }
        for kind in ["Propose", "ChangeMembers"] {
            match admit(None, Some(&b), kind, false) {
                Verdict::Refuse(r @ Refusal::NotJoined { .. }) => {
                    assert!(r.to_string().contains(kind), "{r}")
                }
                other => panic!("{kind} to a node in no cluster: {other:?}"),
            }
        }
    }

    #[test]
    fn cluster_ids_have_a_checked_form_and_cross_the_wire_checked() {
        let minted = ClusterId::mint();
        assert_eq!(ClusterId::parse(minted.as_str()), Ok(minted.clone()));
        assert_ne!(minted, ClusterId::mint());
        for bad in ["", "a b", "x/y", &"z".repeat(65), "é"] {
            assert!(ClusterId::parse(bad).is_err(), "{bad:?}");
        }
        let json = serde_json::to_string(&minted).unwrap();
        assert_eq!(json, format!("\"{minted}\""));
        assert!(serde_json::from_str::<ClusterId>("\"a b\"").is_err());
    }

    #[test]
    fn a_repeated_refusal_is_logged_once_per_period_with_a_count() {
        let mut t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.allow("x", t0), Some(0));
        assert_eq!(t.allow("x", t0 + Duration::from_secs(1)), None);
        assert_eq!(t.allow("x", t0 + Duration::from_secs(9)), None);
        assert_eq!(
            t.allow("y", t0 + Duration::from_secs(9)),
            Some(0),
            "keys are apart"
        );
        assert_eq!(t.allow("x", t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(t.allow("x", t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn a_node_that_keeps_roles_of_its_own_refuses_to_join_and_joined_keeps_none() {
        let dir = tempfile::tempdir().unwrap();
        let identity = Identity::new(dir.path(), None);
        let b = id("bbbb");
        // Two roles made while in no cluster: a join is refused, the id
        // file untouched.
        assert_eq!(identity.while_unjoined(|| ("made", 2)), Some("made"));
        assert_eq!(identity.adopt_joining(b.clone()).unwrap(), Err(2));
        assert_eq!(identity.current(), None);
        assert_eq!(load(dir.path()).unwrap(), None);
        // Dropped: the join goes through, and from then on no role is
        // made here.
        assert_eq!(identity.while_unjoined(|| ((), 0)), Some(()));
        assert_eq!(
            identity.adopt_joining(b.clone()).unwrap(),
            Ok((b.clone(), true))
        );
        assert_eq!(identity.while_unjoined(|| ("made", 1)), None);
        assert_eq!(identity.adopt_joining(id("cccc")).unwrap(), Ok((b, false)));
    }

    #[test]
    fn the_id_file_round_trips_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let identity = Identity::new(dir.path(), None);
        let a = ClusterId::mint();
        assert_eq!(identity.adopt(a.clone()).unwrap(), (a.clone(), true));
        assert_eq!(
            identity.adopt(ClusterId::mint()).unwrap(),
            (a.clone(), false),
            "an id never changes"
        );
        assert_eq!(load(dir.path()).unwrap(), Some(a.clone()));
        // As an operator would write it.
        fs::write(dir.path().join(ID_FILE), "legacy-cluster-1\n").unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(id("legacy-cluster-1")));
        fs::write(dir.path().join(ID_FILE), "two words\n").unwrap();
        assert!(matches!(load(dir.path()), Err(StoreError::Corrupt { .. })));
    }
}
