//! TLS for client connections: the node's certificate and key, and the
//! policy that says which clients must use TLS.
//!
//! # What is encrypted
//! A node started with `--tls-cert FILE --tls-key FILE` answers a client's
//! SSLRequest with `S` and runs a TLS handshake (rustls, TLS 1.2 and 1.3,
//! ring's algorithms) before the start-up packet; without them it answers
//! `N`, as before, and clients that require TLS cannot connect. The same
//! certificate serves the node's availability group listeners, which end
//! TLS themselves: a listener must read the start-up packet to choose a
//! replica, so it cannot pass TLS through. The hop from a listener to the
//! replica it chose is partner traffic (the replication endpoint), not
//! client traffic: mutual TLS between the two nodes when they have
//! partner TLS (`--partner-tls-cert`, [`crate::net`]), plaintext
//! otherwise.
//!
//! PostgreSQL 17's direct TLS negotiation (`sslnegotiation=direct`) works
//! too: the acceptor announces the `postgresql` ALPN protocol it requires.
//!
//! # The policy (`--require-tls`)
//! | policy | a client on loopback | a client elsewhere |
//! | --- | --- | --- |
//! | `none` (default) | TLS or not | TLS or not |
//! | `remote` | TLS or not | TLS only |
//! | `all` | TLS only | TLS only |
//!
//! `remote` is PostgreSQL's `hostssl` for every non-local address: a
//! plaintext session from another host is refused at start-up, before
//! authentication (so no password crosses the network in clear), with FATAL
//! 28000 and a hint to connect with `sslmode=require`. A policy other than
//! `none` needs a certificate. A session a listener forwards is judged by
//! the client's own address and TLS as the listener saw them, which the
//! listener adds to the start-up packet (trusted only on connections that
//! arrive through the replication endpoint).
//!
//! # Files
//! `--tls-cert` is a PEM file with the node's certificate first and any
//! intermediate certificates after it; `--tls-key` a PEM file with its
//! private key (PKCS#8, PKCS#1 or SEC1). They are read once at start.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;

pub use tokio_rustls::TlsAcceptor;

/// The ALPN protocol name of PostgreSQL's direct TLS negotiation.
const POSTGRESQL_ALPN: &[u8] = b"postgresql";

/// Builds the TLS acceptor of client connections from a PEM certificate
/// chain and a PEM private key.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "cannot read the TLS certificate {}: {e}: give --tls-cert a PEM file",
                cert.display()
            )
        })?;
    if chain.is_empty() {
        return Err(format!(
            "the TLS certificate file {} holds no certificate: give --tls-cert a PEM file \
             with the node's certificate first",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "cannot read the TLS private key {}: {e}: give --tls-key a PEM file with the \
             certificate's private key",
            key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            format!(
                "the TLS certificate {} and key do not make a usable pair: {e}",
                cert.display()
            )
        })?;
    config.alpn_protocols = vec![POSTGRESQL_ALPN.to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Which clients must use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsPolicy {
    /// TLS is offered (when the node has a certificate), never required.
    #[default]
    None,
    /// Clients not on loopback must use TLS.
    Remote,
    /// Every client must use TLS.
    All,
}

impl FromStr for TlsPolicy {
    type Err = String;
    fn from_str(text: &str) -> Result<TlsPolicy, String> {
        match text.to_ascii_lowercase().as_str() {
            "none" => Ok(TlsPolicy::None),
            "remote" => Ok(TlsPolicy::Remote),
            "all" => Ok(TlsPolicy::All),
            _ => Err(format!(
                "{text:?} is not a TLS policy: use none, remote (clients not on loopback \
                 must use TLS) or all"
            )),
        }
    }
}

impl fmt::Display for TlsPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsPolicy::None => "none",
            TlsPolicy::Remote => "remote",
            TlsPolicy::All => "all",
        })
    }
}

impl TlsPolicy {
    /// Whether a session from `client` that did (`secure`) or did not use
    /// TLS may go on; the refusal's message when not.
    pub fn admit(self, client: IpAddr, secure: bool) -> Result<(), String> {
        let required = match self {
            TlsPolicy::None => false,
            TlsPolicy::Remote => !client.is_loopback(),
            TlsPolicy::All => true,
        };
        if required && !secure {
            let whom = match self {
                TlsPolicy::All => "every client".to_string(),
                _ => "clients not on loopback".to_string(),
            };
            return Err(format!(
                "connection from {client} without TLS refused: this node requires TLS of {whom} \
                 (--require-tls {self})"
            ));
        }
        Ok(())
    }
}

/// The hint sent with a refusal by [`TlsPolicy::admit`].
pub const REFUSAL_HINT: &str =
    "connect with sslmode=require, or sslmode=verify-full and sslrootcert=<the CA that signed the node's certificate>";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_table() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let local6: IpAddr = "::1".parse().unwrap();
        let remote: IpAddr = "10.1.2.3".parse().unwrap();
        // (policy, client, secure, admitted)
        let table = [
            (TlsPolicy::None, remote, false, true),
            (TlsPolicy::None, local, false, true),
            (TlsPolicy::Remote, local, false, true),
            (TlsPolicy::Remote, local6, false, true),
            (TlsPolicy::Remote, remote, false, false),
            (TlsPolicy::Remote, remote, true, true),
            (TlsPolicy::All, local, false, false),
            (TlsPolicy::All, local, true, true),
            (TlsPolicy::All, remote, true, true),
        ];
        for (policy, client, secure, admitted) in table {
            assert_eq!(
                policy.admit(client, secure).is_ok(),
                admitted,
                "{policy} {client} secure={secure}"
            );
        }
        let why = TlsPolicy::Remote.admit(remote, false).unwrap_err();
        assert!(
            why.contains("10.1.2.3") && why.contains("--require-tls remote"),
            "{why}"
        );
    }

    #[test]
    fn policies_parse_from_their_names() {
        for policy in [TlsPolicy::None, TlsPolicy::Remote, TlsPolicy::All] {
            assert_eq!(policy.to_string().parse::<TlsPolicy>(), Ok(policy));
        }
        assert!("hostssl"
            .parse::<TlsPolicy>()
            .unwrap_err()
            .contains("remote"));
    }

    #[test]
    fn unreadable_or_mismatched_files_are_refused_with_the_option_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        let refusal = |cert: &Path, key: &Path| match acceptor(cert, key) {
            Ok(_) => panic!("{} and {} were accepted", cert.display(), key.display()),
            Err(why) => why,
        };
        let missing = dir.path().join("missing.pem");
        let err = refusal(&missing, &missing);
        assert!(err.contains("--tls-cert"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = refusal(&empty, &empty);
        assert!(err.contains("no certificate"), "{err}");
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, ca.cert.pem()).unwrap();
        std::fs::write(&key, other.serialize_pem()).unwrap();
        let err = refusal(&cert, &key);
        assert!(err.contains("usable pair"), "{err}");
        std::fs::write(&key, ca.signing_key.serialize_pem()).unwrap();
        assert!(acceptor(&cert, &key).is_ok());
    }
}
