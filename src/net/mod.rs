//! Connections between nodes: where they leave from, how they are secured
//! (partner TLS), and the count of partners refused.
//!
//! Every partner connection — Raft RPCs, replication links, geo links,
//! listener forwards and cancels, page repair requests — is opened by
//! [`connect`] and, on the receiving node's endpoint, admitted by
//! [`accept`]. Both hand over a [`PartnerStream`], so the protocols above
//! never see whether the bytes travel in clear or under TLS.
//!
//! # Source address
//! A node listens for partners on its `--endpoint` address. When that
//! address is a specific IP rather than `0.0.0.0`, every connection the
//! node opens to a partner is bound to that IP before connecting, so
//! partners (and firewalls between them) see one stable source address per
//! node. On a multi-homed host this keeps node traffic on the interface
//! the operator chose; on one machine it lets each node have its own
//! loopback address (127.0.0.11, 127.0.0.12, …), which is how the fault
//! tests tell the nodes' connections apart. The source address is
//! process-wide and set once at start-up, before any partner connection is
//! made; without it the kernel picks, as usual.
//!
//! # Partner TLS (mutual)
//! A node started with `--partner-tls-cert`, `--partner-tls-key` and
//! `--partner-ca` (made by `availdb cert init | issue`; `rotate` starts a
//! change of CA) speaks TLS 1.2/1.3
//! (rustls, ring) on every partner connection, both ways:
//! * the node that connects presents its certificate and checks the
//!   other's: it must chain to a trusted CA and name the IP address
//!   connected to (a subject alternative name, `availdb cert issue --host`);
//! * the endpoint asks every connection for a client certificate and
//!   admits only one that chains to a trusted CA (rustls's
//!   `WebPkiClientVerifier`), before a single byte of any protocol is
//!   read. Who the partner is beyond that — which cluster — is still the
//!   cluster id every Raft RPC and replication `Hello` carries
//!   (`cluster/identity.rs`); TLS says the bytes come from a holder of a
//!   certificate of the cluster's CA.
//!
//! Several CAs may be trusted at once (`--partner-ca` repeated, or one PEM
//! file holding several): that is how certificates are rotated without
//! downtime — trust old and new, move each node to a certificate of the
//! new CA, then stop trusting the old. SIGHUP makes a node read its
//! partner TLS files again; connections open at that moment keep the
//! certificates they were made with, new ones use the files' new content
//! ([`tls_generation`] tells them apart: kept Raft RPC connections are not
//! used again across a reload). A reload that fails (a missing or mismatched file) is logged and the
//! node keeps what it had.
//!
//! `--partner-crl` lists revoked certificates (`availdb cert revoke`):
//! a partner presenting one is refused, whichever side it is on.
//!
//! A node without the options speaks plaintext, as before partner TLS
//! existed: anyone who reaches the endpoint can read the log records and
//! send requests that need only a cluster id. The node warns about that
//! at start-up unless its endpoint is on loopback.
//!
//! The two configurations never mix: a TLS endpoint refuses a plaintext
//! connection (reason `no TLS`), and a plaintext endpoint refuses a TLS
//! handshake (it tells one from the other by the first bytes,
//! [`tls::starts_tls`]). Each refusal is logged (`warn`) and counted.
//!
//! # Refusals
//! Partner requests refused for their identity (a node of another
//! cluster, or one without a cluster id: `cluster/identity.rs` for Raft
//! RPCs, the replication `Hello` check in `ag/`) and partner TLS
//! handshakes refused either way are counted here per kind, with the last
//! reason, and shown in `sys.dm_hadr_partner_refusals`, besides the `warn`
//! lines both sides log. A handshake's reason is one of `no certificate`,
//! `no TLS`, `TLS from a partner of a node without partner TLS`,
//! `unknown CA`, `expired certificate`, `revoked certificate`,
//! `certificate not valid yet`, `certificate not valid for the address`,
//! or rustls's own words.

mod stream;
pub mod tls;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub use stream::PartnerStream;
pub use tls::{PartnerTls, PartnerTlsFiles};

/// How long a partner has to finish the TLS handshake (and, on a
/// plaintext endpoint, to send its first bytes).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

static SOURCE: OnceLock<IpAddr> = OnceLock::new();

/// The node's partner TLS; None: plaintext. Replaced whole on a reload.
static TLS: RwLock<Option<Arc<PartnerTls>>> = RwLock::new(None);

/// Makes partner connections leave from the IP of `endpoint` (unless it is
/// unspecified, `0.0.0.0` / `::`). Only the first call counts.
pub fn set_source(endpoint: SocketAddr) {
    if !endpoint.ip().is_unspecified() {
        let _ = SOURCE.set(endpoint.ip());
    }
}

/// How many times the partner TLS configuration was set: a connection made
/// (or admitted) at one generation was made with the files of that
/// generation.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Makes every partner connection from now on mutual TLS with `tls`
/// (None: plaintext). Set at start-up, and again on a reload.
pub fn set_tls(tls: Option<PartnerTls>) {
    *TLS.write().unwrap_or_else(|e| e.into_inner()) = tls.map(Arc::new);
    GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// The partner TLS generation now. Read it *before* connecting or
/// admitting: a connection is then never taken for newer than it is.
pub fn tls_generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

fn current_tls() -> Option<Arc<PartnerTls>> {
    TLS.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Opens a connection to a partner, from this node's endpoint address when
/// one is set and of the same family as `to`, with `TCP_NODELAY`, and
/// with mutual TLS when the node has partner TLS. A refused handshake is
/// counted ([`Partner::TlsConnect`]) and is an error saying why.
pub async fn connect(to: SocketAddr) -> io::Result<PartnerStream> {
    secure(connect_tcp(to, true).await?, to, current_tls()).await
}

/// Like [`connect`], but from whichever address the kernel picks: for an
/// availability group listener's forwards, which carry a client's session
/// rather than the node's own traffic.
pub async fn connect_from_any(to: SocketAddr) -> io::Result<PartnerStream> {
    secure(connect_tcp(to, false).await?, to, current_tls()).await
}

/// The connecting side's handshake over `tcp` (to `to`) with `tls`.
async fn secure(
    tcp: TcpStream,
    to: SocketAddr,
    tls: Option<Arc<PartnerTls>>,
) -> io::Result<PartnerStream> {
    tcp.set_nodelay(true)?;
    let Some(tls) = tls else {
        return Ok(PartnerStream::Plain(tcp));
    };
    let name = rustls_pki_types::ServerName::IpAddress(to.ip().into());
    let handshake = TlsConnector::from(tls.client.clone()).connect(name, tcp);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(stream)) => Ok(PartnerStream::Tls(Box::new(stream.into()))),
        Ok(Err(e)) => {
            let reason = match tls::handshake_refusal(&e) {
                // A plaintext endpoint hangs up on a TLS handshake.
                why if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                ) =>
                {
                    format!(
                        "{why}: the partner closed the TLS handshake; does it run without \
                         partner TLS? every node of a cluster needs --partner-tls-cert, or none"
                    )
                }
                why => why,
            };
            let reason = format!("TLS handshake with {to} failed: {reason}");
            count_refusal(Partner::TlsConnect, &reason);
            Err(io::Error::new(e.kind(), reason))
        }
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("TLS handshake with {to} took longer than {HANDSHAKE_TIMEOUT:?}"),
        )),
    }
}

async fn connect_tcp(to: SocketAddr, from_source: bool) -> io::Result<TcpStream> {
    match SOURCE.get().filter(|_| from_source) {
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

/// Admits a connection that arrived on the endpoint: the TLS handshake
/// (its client certificate must chain to a trusted CA) on a node with
/// partner TLS, nothing on one without. None: refused (logged and counted
/// as [`Partner::TlsAccept`]) or gone before it said anything.
pub async fn accept(socket: TcpStream, peer: SocketAddr) -> Option<PartnerStream> {
    match admit(socket, current_tls()).await {
        Ok(stream) => stream,
        Err(reason) => {
            tracing::warn!(%peer, "partner connection refused: {reason}");
            count_refusal(Partner::TlsAccept, &format!("from {peer}: {reason}"));
            None
        }
    }
}

/// The endpoint's side of [`accept`] with `tls`: the stream, None when the
/// connection closed (before or during the handshake) or stayed silent,
/// or why it is refused.
async fn admit(
    socket: TcpStream,
    tls: Option<Arc<PartnerTls>>,
) -> Result<Option<PartnerStream>, String> {
    let _ = socket.set_nodelay(true);
    let Some(first) = first_bytes(&socket).await else {
        return Ok(None);
    };
    match (tls, tls::starts_tls(&first)) {
        (None, false) => Ok(Some(PartnerStream::Plain(socket))),
        (None, true) => Err(
            "TLS from a partner of a node without partner TLS: give this node \
             --partner-tls-cert, --partner-tls-key and --partner-ca like its partners"
                .into(),
        ),
        (Some(_), false) => Err(
            "no TLS: this endpoint requires mutual TLS; start the partner \
             with --partner-tls-cert, --partner-tls-key and --partner-ca"
                .into(),
        ),
        (Some(tls), true) => {
            let handshake = TlsAcceptor::from(tls.server.clone()).accept(socket);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(stream)) => Ok(Some(PartnerStream::Tls(Box::new(stream.into())))),
                // The partner closed the connection mid-handshake without
                // an alert: it went away (an RPC of its own gave up
                // waiting), it refused nothing and was refused nothing.
                Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
                Ok(Err(e)) => Err(tls::handshake_refusal(&e)),
                Err(_) => Err(format!(
                    "the TLS handshake took longer than {HANDSHAKE_TIMEOUT:?}"
                )),
            }
        }
    }
}

/// The connection's first bytes (at least three, or all it sent before
/// closing), left unread; None when it closes or waits too long.
async fn first_bytes(socket: &TcpStream) -> Option<Vec<u8>> {
    let mut first = [0u8; 3];
    let wait = async {
        loop {
            match socket.peek(&mut first).await {
                Ok(0) | Err(_) => return None,
                Ok(n) if n >= first.len() => return Some(first.to_vec()),
                // A partial segment: the rest is on its way.
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, wait)
        .await
        .ok()
        .flatten()
}

/// Logs, at start-up, how partner traffic is secured.
pub fn log_security(endpoint: SocketAddr) {
    match current_tls() {
        Some(tls) => tracing::info!(
            %endpoint,
            trusted_cas = tls.trusted_cas,
            "partner connections use mutual TLS"
        ),
        None if endpoint.ip().is_loopback() => {}
        None => tracing::warn!(
            %endpoint,
            "partner connections are plaintext and unauthenticated (insecure off loopback): \
             anyone who reaches the endpoint can read the log; give every node \
             --partner-tls-cert, --partner-tls-key and --partner-ca (availdb cert init | issue)"
        ),
    }
}

/// Partner traffic that carries a cluster id, and partner TLS handshakes,
/// for the count of refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partner {
    /// Raft RPCs of the cluster manager.
    Raft,
    /// A primary's replication link (`Hello`).
    Replication,
    /// TLS handshakes (or plaintext) refused by this node's endpoint.
    TlsAccept,
    /// TLS handshakes this node opened that failed (the partner's
    /// certificate refused here, or this node's refused there).
    TlsConnect,
}

impl Partner {
    /// Every kind, in the order the view lists them.
    pub const ALL: [Partner; 4] = [
        Partner::Raft,
        Partner::Replication,
        Partner::TlsAccept,
        Partner::TlsConnect,
    ];

    /// The kind's name in `sys.dm_hadr_partner_refusals`.
    pub fn name(self) -> &'static str {
        match self {
            Partner::Raft => "RAFT",
            Partner::Replication => "REPLICATION",
            Partner::TlsAccept => "TLS_ACCEPT",
            Partner::TlsConnect => "TLS_CONNECT",
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

const NONE_REFUSED: Refusals = Refusals {
    count: 0,
    last: None,
};

static REFUSALS: std::sync::Mutex<[Refusals; 4]> = std::sync::Mutex::new([NONE_REFUSED; 4]);

/// Counts a partner request or connection refused for its identity (a
/// node of another cluster, one without a cluster id, a failed TLS
/// handshake), with the reason.
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::cli::cert::{init, issue_to, Validity};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::rustls;

    /// A CA in `dir/name` with a certificate for 127.0.0.1 issued by it:
    /// (the CA's directory, the node's files).
    fn authority(dir: &std::path::Path, name: &str, validity: Validity) -> (PathBuf, PathBuf) {
        let ca = dir.join(name);
        if !ca.join("ca.pem").exists() {
            init(&ca).unwrap();
        }
        let out = dir.join(format!("{name}-node-{}", validity.backdate_days));
        issue_to(&ca, &out, "n", &["127.0.0.1".into()], validity).unwrap();
        (ca, out)
    }

    fn files(ca_dirs: &[&PathBuf], node: &std::path::Path) -> PartnerTlsFiles {
        PartnerTlsFiles {
            cert: node.join("n.pem"),
            key: node.join("n.key"),
            cas: ca_dirs.iter().map(|d| d.join("ca.pem")).collect(),
            crls: ca_dirs.iter().map(|d| d.join("crl.pem")).collect(),
        }
    }

    fn load(ca_dirs: &[&PathBuf], node: &std::path::Path) -> Arc<PartnerTls> {
        Arc::new(PartnerTls::load(&files(ca_dirs, node)).unwrap())
    }

    /// A connecting side that trusts `ca` and presents `cert` (or no
    /// certificate), whatever its validity: what a misconfigured or
    /// foreign partner would send.
    fn raw_client(ca: &std::path::Path, node: Option<&std::path::Path>) -> Arc<PartnerTls> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(ca.join("ca.pem")).unwrap())
            .unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let client = match node {
            Some(node) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_file(node.join("n.pem")).unwrap()],
                    PrivateKeyDer::from_pem_file(node.join("n.key")).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        let server = load_server_placeholder();
        Arc::new(PartnerTls {
            client: Arc::new(client),
            server,
            trusted_cas: 1,
        })
    }

    /// raw_client's server side is never used.
    fn load_server_placeholder() -> Arc<rustls::ServerConfig> {
        let dir = tempfile::tempdir().unwrap();
        let (ca, node) = authority(dir.path(), "p", Validity::default());
        load(&[&ca], &node).server.clone()
    }

    /// Runs one connection from `client` to an endpoint with `server`:
    /// what the endpoint decided, and the connecting side's first read.
    async fn handshake(
        client: Option<Arc<PartnerTls>>,
        server: Option<Arc<PartnerTls>>,
    ) -> (Result<bool, String>, io::Result<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let endpoint = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            match admit(socket, server).await {
                Ok(Some(mut stream)) => {
                    let mut hello = [0u8; 5];
                    stream.read_exact(&mut hello).await.unwrap();
                    stream.write_all(b"olleh").await.unwrap();
                    stream.flush().await.unwrap();
                    Ok(stream.is_tls())
                }
                Ok(None) => Err("gone".to_string()),
                Err(reason) => Err(reason),
            }
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let read = async {
            let mut stream = secure(tcp, addr, client).await?;
            stream.write_all(b"hello").await?;
            stream.flush().await?;
            let mut answer = vec![0u8; 5];
            stream.read_exact(&mut answer).await?;
            Ok(answer)
        }
        .await;
        (endpoint.await.unwrap(), read)
    }

    #[tokio::test]
    async fn partners_with_certificates_of_the_cluster_ca_speak_mutual_tls() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, node) = authority(dir.path(), "a", Validity::default());
        let tls = load(&[&ca], &node);
        let (endpoint, read) = handshake(Some(tls.clone()), Some(tls)).await;
        assert_eq!(endpoint, Ok(true));
        assert_eq!(read.unwrap(), b"olleh");
    }

    #[tokio::test]
    async fn a_second_connection_resumes_the_session_and_skips_the_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, node) = authority(dir.path(), "a", Validity::default());
        let tls = load(&[&ca], &node);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tls.clone();
        tokio::spawn(async move {
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                let server = server.clone();
                tokio::spawn(async move {
                    let mut stream = admit(socket, Some(server)).await.unwrap().unwrap();
                    let mut hello = [0u8; 5];
                    stream.read_exact(&mut hello).await.unwrap();
                    stream.write_all(b"olleh").await.unwrap();
                });
            }
        });
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let mut stream = secure(tcp, addr, Some(tls.clone())).await.unwrap();
            stream.write_all(b"hello").await.unwrap();
            let mut answer = [0u8; 5];
            stream.read_exact(&mut answer).await.unwrap();
            let PartnerStream::Tls(tls_stream) = &stream else {
                panic!("plaintext")
            };
            kinds.push(tls_stream.get_ref().1.handshake_kind());
        }
        assert_eq!(
            kinds,
            [
                Some(rustls::HandshakeKind::Full),
                Some(rustls::HandshakeKind::Resumed)
            ]
        );
    }

    #[tokio::test]
    async fn without_partner_tls_both_sides_stay_plaintext() {
        let (endpoint, read) = handshake(None, None).await;
        assert_eq!(endpoint, Ok(false));
        assert_eq!(read.unwrap(), b"olleh");
    }

    #[tokio::test]
    async fn a_certificate_of_another_ca_is_refused_as_unknown_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (a, a_node) = authority(dir.path(), "a", Validity::default());
        let (b, b_node) = authority(dir.path(), "b", Validity::default());
        // The foreign node trusts the endpoint's CA, so only its own
        // certificate is in question.
        let foreign = load(&[&b, &a], &b_node);
        let (endpoint, read) = handshake(Some(foreign), Some(load(&[&a], &a_node))).await;
        let why = endpoint.unwrap_err();
        assert!(why.starts_with("unknown CA"), "{why}");
        let err = read.unwrap_err().to_string();
        assert!(err.contains("refused this node's certificate"), "{err}");
    }

    #[tokio::test]
    async fn a_partner_without_a_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, a_node) = authority(dir.path(), "a", Validity::default());
        let (endpoint, _) = handshake(Some(raw_client(&a, None)), Some(load(&[&a], &a_node))).await;
        assert_eq!(endpoint, Err("no certificate".to_string()));
    }

    #[tokio::test]
    async fn an_expired_certificate_is_refused_at_the_endpoint_and_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let (a, a_node) = authority(dir.path(), "a", Validity::default());
        let expired = Validity {
            days: 1,
            backdate_days: 3,
        };
        let (_, old_node) = authority(dir.path(), "a", expired);
        let (endpoint, _) = handshake(
            Some(raw_client(&a, Some(&old_node))),
            Some(load(&[&a], &a_node)),
        )
        .await;
        let why = endpoint.unwrap_err();
        assert!(why.starts_with("expired certificate"), "{why}");
        let err = PartnerTls::load(&files(&[&a], &old_node)).unwrap_err();
        assert!(
            err.contains("expired") && err.contains("availdb cert issue"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_revoked_certificate_is_refused_at_the_endpoint_and_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let (a, node) = authority(dir.path(), "a", Validity::default());
        let endpoint_dir = dir.path().join("endpoint");
        issue_to(
            &a,
            &endpoint_dir,
            "e",
            &["127.0.0.1".into()],
            Validity::default(),
        )
        .unwrap();
        let endpoint_files = PartnerTlsFiles {
            cert: endpoint_dir.join("e.pem"),
            key: endpoint_dir.join("e.key"),
            cas: vec![a.join("ca.pem")],
            crls: vec![a.join("crl.pem")],
        };
        let before = Arc::new(PartnerTls::load(&endpoint_files).unwrap());
        let (admitted, _) = handshake(Some(raw_client(&a, Some(&node))), Some(before)).await;
        assert_eq!(admitted, Ok(true), "not revoked yet");
        crate::cli::cert::revoke(&a, "n").unwrap();
        let after = Arc::new(PartnerTls::load(&endpoint_files).unwrap());
        let (admitted, _) = handshake(Some(raw_client(&a, Some(&node))), Some(after)).await;
        let why = admitted.unwrap_err();
        assert!(why.starts_with("revoked certificate"), "{why}");
        let err = PartnerTls::load(&files(&[&a], &node)).unwrap_err();
        assert!(err.contains("revoked certificate"), "{err}");
    }

    #[tokio::test]
    async fn mixed_configurations_are_refused_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let (a, a_node) = authority(dir.path(), "a", Validity::default());
        let tls = load(&[&a], &a_node);
        let (endpoint, _) = handshake(None, Some(tls.clone())).await;
        let why = endpoint.unwrap_err();
        assert!(why.starts_with("no TLS"), "{why}");
        let (endpoint, read) = handshake(Some(tls), None).await;
        let why = endpoint.unwrap_err();
        assert!(why.contains("node without partner TLS"), "{why}");
        let err = read.unwrap_err().to_string();
        assert!(err.contains("TLS handshake with 127.0.0.1"), "{err}");
    }

    #[tokio::test]
    async fn the_endpoints_certificate_must_name_the_address_connected_to() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = authority(dir.path(), "a", Validity::default());
        let elsewhere = dir.path().join("elsewhere");
        issue_to(
            &a,
            &elsewhere,
            "n",
            &["10.9.9.9".into()],
            Validity::default(),
        )
        .unwrap();
        let server = load(&[&a], &elsewhere);
        let (_, client_node) = authority(dir.path(), "a", Validity::default());
        let (_, read) = handshake(Some(load(&[&a], &client_node)), Some(server)).await;
        let err = read.unwrap_err().to_string();
        assert!(err.contains("not valid for the address"), "{err}");
    }

    #[tokio::test]
    async fn while_two_cas_are_trusted_certificates_of_either_are_admitted() {
        let dir = tempfile::tempdir().unwrap();
        let (a, a_node) = authority(dir.path(), "a", Validity::default());
        let (b, b_node) = authority(dir.path(), "b", Validity::default());
        let endpoint = load(&[&a, &b], &b_node);
        for node in [&a_node, &b_node] {
            let (admitted, read) =
                handshake(Some(load(&[&a, &b], node)), Some(endpoint.clone())).await;
            assert_eq!(admitted, Ok(true), "{}", node.display());
            assert_eq!(read.unwrap(), b"olleh");
        }
        // Once the old CA is dropped, its certificates are refused.
        let (admitted, _) =
            handshake(Some(load(&[&a, &b], &a_node)), Some(load(&[&b], &b_node))).await;
        assert!(admitted.unwrap_err().starts_with("unknown CA"));
    }

    #[test]
    fn tls_is_told_from_every_partner_protocol_by_its_first_bytes() {
        // (first bytes, TLS)
        let table: [(&[u8], bool); 6] = [
            (&[0x16, 0x03, 0x01, 0x02, 0x00], true),
            (&[0x16, 0x03, 0x03], true),
            (b"AVRC", false),
            (b"AVPG", false),
            // A replication frame of length 0x316 (little-endian).
            (&[0x16, 0x03, 0x00, 0x00, 0x01], false),
            (&[0x16], false),
        ];
        for (first, is_tls) in table {
            assert_eq!(tls::starts_tls(first), is_tls, "{first:?}");
        }
    }

    #[test]
    fn missing_or_partial_partner_tls_files_say_which_option_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        let (a, node) = authority(dir.path(), "a", Validity::default());
        let mut f = files(&[&a], &node);
        f.cas.clear();
        assert!(PartnerTls::load(&f).unwrap_err().contains("--partner-ca"));
        let mut f = files(&[&a], &node);
        f.key = dir.path().join("missing.key");
        assert!(PartnerTls::load(&f)
            .unwrap_err()
            .contains("--partner-tls-key"));
        let mut f = files(&[&a], &node);
        std::fs::write(dir.path().join("empty.pem"), "").unwrap();
        f.cas = vec![dir.path().join("empty.pem")];
        let err = PartnerTls::load(&f).unwrap_err();
        assert!(err.contains("holds no certificate"), "{err}");
        let (b, _) = authority(dir.path(), "b", Validity::default());
        let err = PartnerTls::load(&files(&[&b], &node)).unwrap_err();
        assert!(err.contains("unknown CA"), "{err}");
    }
}
