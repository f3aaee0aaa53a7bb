//! A TCP proxy between nodes that can partition them.
//!
//! Every node gets its own loopback address (`127.0.0.11` for node 0,
//! `127.0.0.12` for node 1, …) for its replication endpoint; availdb opens
//! its partner connections from that address (src/net/mod.rs). The group's
//! `ENDPOINT_URL`s name this proxy instead of the nodes, one proxy port per
//! node, so every connection between two nodes — Raft and replication alike
//! — passes here, and its source address says which node opened it.
//!
//! * `partition(side_a, side_b)` cuts every link between the two sides, in
//!   both directions, like a switch dropping packets: established
//!   connections go silent (nothing is forwarded; the sockets stay open),
//!   and new connections are accepted but never reach the other side.
//! * `heal()` lifts every cut; the silent connections are then closed, as
//!   their TCP timeouts would have, and the nodes reconnect.
//! * Client connections (the tests' PostgreSQL sessions) do not go through
//!   the proxy: a test can watch both sides of a partition.
#![allow(dead_code)]

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The loopback address node `i` sends from and listens on.
pub fn node_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11 + i as u8))
}

fn node_of(ip: IpAddr) -> Option<usize> {
    match ip {
        IpAddr::V4(v4) if v4.octets()[..3] == [127, 0, 0] && v4.octets()[3] >= 11 => {
            Some(v4.octets()[3] as usize - 11)
        }
        _ => None,
    }
}

#[derive(Default)]
struct Rules {
    /// Cut links, as (from node, to node): both directions are listed.
    cut: HashSet<(usize, usize)>,
    /// Every link cut, whoever opened it (e.g. another region's nodes,
    /// which do not send from a node address).
    isolated: bool,
}

/// The proxies of one group.
pub struct Proxy {
    rules: Arc<Mutex<Rules>>,
    /// Bumped at every change of the rules; connections re-check on it.
    changed: watch::Sender<u64>,
    /// Proxy port of each node (what its ENDPOINT_URL names).
    ports: Vec<u16>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// Starts one proxy port per node, forwarding to `upstream[i]`.
    pub async fn start(upstream: &[SocketAddr]) -> Proxy {
        let rules = Arc::new(Mutex::new(Rules::default()));
        let changed = watch::channel(0u64).0;
        let mut ports = Vec::new();
        let mut tasks = Vec::new();
        for (to, addr) in upstream.iter().copied().enumerate() {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind a proxy port");
            ports.push(listener.local_addr().unwrap().port());
            let rules = rules.clone();
            let changed = changed.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let Ok((inbound, peer)) = listener.accept().await else {
                        return;
                    };
                    let from = node_of(peer.ip());
                    tokio::spawn(relay(
                        inbound,
                        from,
                        to,
                        addr,
                        rules.clone(),
                        changed.subscribe(),
                    ));
                }
            }));
        }
        Proxy {
            rules,
            changed,
            ports,
            tasks,
        }
    }

    /// The port node `i`'s ENDPOINT_URL names.
    pub fn port(&self, i: usize) -> u16 {
        self.ports[i]
    }

    /// Cuts every link between a node of `a` and a node of `b`.
    pub fn partition(&self, a: &[usize], b: &[usize]) {
        {
            let mut rules = self.rules.lock().unwrap();
            for &x in a {
                for &y in b {
                    rules.cut.insert((x, y));
                    rules.cut.insert((y, x));
                }
            }
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// Cuts every link through this proxy, whoever opened it.
    pub fn isolate(&self) {
        self.rules.lock().unwrap().isolated = true;
        self.changed.send_modify(|n| *n += 1);
    }

    /// Lifts every cut.
    pub fn heal(&self) {
        let mut rules = self.rules.lock().unwrap();
        rules.cut.clear();
        rules.isolated = false;
        drop(rules);
        self.changed.send_modify(|n| *n += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Once the acceptors are gone, the last sender of `changed` goes
        // with this struct, and every relayed connection closes.
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn is_cut(rules: &Mutex<Rules>, from: Option<usize>, to: usize) -> bool {
    let rules = rules.lock().unwrap();
    rules.isolated || from.is_some_and(|f| rules.cut.contains(&(f, to)))
}

/// One connection from node `from` to node `to`: relayed while the link is
/// up; silent while it is cut; closed when a cut is healed.
async fn relay(
    mut inbound: TcpStream,
    from: Option<usize>,
    to: usize,
    upstream: SocketAddr,
    rules: Arc<Mutex<Rules>>,
    mut changed: watch::Receiver<u64>,
) {
    let _ = inbound.set_nodelay(true);
    if is_cut(&rules, from, to) {
        hold_until_healed(&rules, from, to, &mut changed).await;
        return;
    }
    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = outbound.set_nodelay(true);
    // One copy for the connection's life: dropping it midway could lose
    // bytes it has read but not yet written.
    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
    tokio::pin!(copy);
    loop {
        tokio::select! {
            _ = &mut copy => return,
            seen = changed.changed() => {
                if seen.is_err() {
                    return;
                }
                if is_cut(&rules, from, to) {
                    // Silent from now on: the copy is no longer polled, both
                    // sockets stay open, nothing moves, until the cut is
                    // healed; then both close.
                    hold_until_healed(&rules, from, to, &mut changed).await;
                    return;
                }
            }
        }
    }
}

async fn hold_until_healed(
    rules: &Mutex<Rules>,
    from: Option<usize>,
    to: usize,
    changed: &mut watch::Receiver<u64>,
) {
    while is_cut(rules, from, to) {
        if changed.changed().await.is_err() {
            return;
        }
    }
}
