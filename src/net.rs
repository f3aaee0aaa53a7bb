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
