//! Connections between nodes leave from the node's own endpoint address.
//!
//! A node listens for partners (replication and cluster traffic) on its
//! `--endpoint` address. When that address is a specific IP rather than
//! `0.0.0.0`, every connection the node opens to a partner is bound to that
//! IP before connecting, so partners (and firewalls between them) see one
//! stable source address per node. On a multi-homed host this keeps node
//! traffic on the interface the operator chose; on one machine it lets each
//! node have its own loopback address (127.0.0.11, 127.0.0.12, …), which is
//! how the fault tests tell the nodes' connections apart.
//!
//! The source address is process-wide and set once at start-up, before any
//! partner connection is made; without it the kernel picks, as usual.
//!
//! Partner requests refused for their identity (a node of another cluster,
//! or one without a cluster id: `cluster/identity.rs` for Raft RPCs, the
//! replication `Hello` check in `ag/`) are counted here per kind, with the
//! last reason, and shown in `sys.dm_hadr_partner_refusals`, besides the
//! `warn` lines both sides log.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

use tokio::net::{TcpSocket, TcpStream};

static SOURCE: OnceLock<IpAddr> = OnceLock::new();

/// Makes partner connections leave from the IP of `endpoint` (unless it is
/// unspecified, `0.0.0.0` / `::`). Only the first call counts.
pub fn set_source(endpoint: SocketAddr) {
    if !endpoint.ip().is_unspecified() {
        let _ = SOURCE.set(endpoint.ip());
    }
}

/// Opens a TCP connection to a partner, from this node's endpoint address
/// when one is set and of the same family as `to`.
pub async fn connect(to: SocketAddr) -> io::Result<TcpStream> {
    match SOURCE.get() {
        Some(ip) if ip.is_ipv4() == to.is_ipv4() => {
            let socket = if to.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.bind(SocketAddr::new(*ip, 0))?;
            socket.connect(to).await
        }
        _ => TcpStream::connect(to).await,
    }
}

/// Partner traffic that carries a cluster id, for the count of refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partner {
    /// Raft RPCs of the cluster manager.
    Raft,
    /// A primary's replication link (`Hello`).
    Replication,
}

impl Partner {
    /// Every kind, in the order the view lists them.
    pub const ALL: [Partner; 2] = [Partner::Raft, Partner::Replication];

    /// The kind's name in `sys.dm_hadr_partner_refusals`.
    pub fn name(self) -> &'static str {
        match self {
            Partner::Raft => "RAFT",
            Partner::Replication => "REPLICATION",
        }
    }
}

/// The refusals of one kind of partner traffic since the node started.
#[derive(Debug, Clone, Default)]
pub struct Refusals {
    /// How many requests or connections were refused.
    pub count: u64,
    /// When the last one was, and why.
    pub last: Option<(std::time::SystemTime, String)>,
}

static REFUSALS: std::sync::Mutex<[Refusals; 2]> = std::sync::Mutex::new([
    Refusals {
        count: 0,
        last: None,
    },
    Refusals {
        count: 0,
        last: None,
    },
]);

/// Counts a partner request or connection refused for its identity (a
/// node of another cluster, or one without a cluster id), with the reason.
pub fn count_refusal(kind: Partner, reason: &str) {
    let mut all = REFUSALS.lock().unwrap_or_else(|e| e.into_inner());
    let entry = &mut all[kind as usize];
    entry.count += 1;
    entry.last = Some((std::time::SystemTime::now(), reason.to_string()));
}

/// The refusals counted so far, per kind.
pub fn refusals() -> Vec<(Partner, Refusals)> {
    let all = REFUSALS.lock().unwrap_or_else(|e| e.into_inner());
    Partner::ALL
        .iter()
        .map(|&kind| (kind, all[kind as usize].clone()))
        .collect()
}
