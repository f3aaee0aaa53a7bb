//! Partner TLS: the node's certificate and key and the cluster CAs it
//! trusts, made into one rustls client configuration (for the connections
//! the node opens) and one server configuration (for its endpoint), and
//! the words a refused handshake is reported in.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{CertificateError, RootCertStore};

/// Where a node's partner TLS comes from: `--partner-tls-cert`,
/// `--partner-tls-key` and one or more `--partner-ca`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerTlsFiles {
    /// PEM: the node's certificate first, intermediates after it.
    pub cert: PathBuf,
    /// PEM: the certificate's private key.
    pub key: PathBuf,
    /// PEM files of the CAs whose certificates partners may present (every
    /// certificate in every file is trusted: old and new CA during a
    /// rotation).
    pub cas: Vec<PathBuf>,
    /// PEM revocation lists (`crl.pem` of `availdb cert init | revoke`):
    /// a partner certificate they list is refused. A certificate of a CA
    /// with no list here is not checked for revocation.
    pub crls: Vec<PathBuf>,
}

/// The loaded partner TLS of a node.
#[derive(Clone)]
pub struct PartnerTls {
    pub(super) client: Arc<rustls::ClientConfig>,
    pub(super) server: Arc<rustls::ServerConfig>,
    /// How many CA certificates are trusted, for the start-up log.
    pub trusted_cas: usize,
}

impl std::fmt::Debug for PartnerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartnerTls")
            .field("trusted_cas", &self.trusted_cas)
            .finish_non_exhaustive()
    }
}

impl PartnerTls {
    /// Reads the files and builds both configurations. Refuses a
    /// certificate that its own CAs and lists would refuse (not signed by
    /// any of them, expired, not valid yet, revoked): partners would refuse
    /// it too, so the node says so at start rather than on every
    /// connection.
    pub fn load(files: &PartnerTlsFiles) -> Result<PartnerTls, String> {
        let chain = read_certs(&files.cert, "--partner-tls-cert")?;
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
            format!(
                "cannot read the partner TLS key {}: {e}: give --partner-tls-key the PEM \
                 private key of --partner-tls-cert",
                files.key.display()
            )
        })?;
        if files.cas.is_empty() {
            return Err(
                "partner TLS needs the cluster CA: give --partner-ca FILE (the ca.pem of \
                 availdb cert init; repeat it to trust an old and a new CA)"
                    .into(),
            );
        }
        let mut roots = RootCertStore::empty();
        for path in &files.cas {
            for ca in read_certs(path, "--partner-ca")? {
                roots.add(ca).map_err(|e| {
                    format!(
                        "{} holds a certificate that cannot be a trusted CA: {e}",
                        path.display()
                    )
                })?;
            }
        }
        let trusted_cas = roots.len();
        let roots = Arc::new(roots);
        let mut crls = Vec::new();
        for path in &files.crls {
            let list = CertificateRevocationListDer::pem_file_iter(path)
                .and_then(|lists| lists.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    format!(
                        "cannot read {} (--partner-crl): {e}: give it the crl.pem of availdb \
                         cert init or revoke",
                        path.display()
                    )
                })?;
            if list.is_empty() {
                return Err(format!(
                    "{} (--partner-crl) holds no revocation list",
                    path.display()
                ));
            }
            crls.extend(list);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .with_crls(crls.clone())
            .allow_unknown_revocation_status()
            .only_check_end_entity_revocation()
            .build()
            .map_err(|e| format!("partner TLS: {e}"))?;
        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                .with_crls(crls)
                .allow_unknown_revocation_status()
                .only_check_end_entity_revocation()
                .build()
                .map_err(|e| format!("partner TLS: {e}"))?;
        verifier
            .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
            .map_err(|e| {
                format!(
                    "the partner TLS certificate {} would be refused by partners trusting \
                     the given --partner-ca and --partner-crl ({}): issue the node a \
                     certificate from the cluster CA with availdb cert issue",
                    files.cert.display(),
                    certificate_refusal(&e)
                )
            })?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("partner TLS: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| pair_error(&files.cert, e))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("partner TLS: {e}"))?
            .with_webpki_verifier(server_verifier)
            .with_client_auth_cert(chain, key)
            .map_err(|e| pair_error(&files.cert, e))?;
        Ok(PartnerTls {
            client: Arc::new(client),
            server: Arc::new(server),
            trusted_cas,
        })
    }
}

fn read_certs(path: &Path, option: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "cannot read {} ({option}): {e}: give it a PEM file",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{} ({option}) holds no certificate: give it a PEM file from availdb cert",
            path.display()
        ));
    }
    Ok(certs)
}

fn pair_error(cert: &Path, e: rustls::Error) -> String {
    format!(
        "the partner TLS certificate {} and --partner-tls-key do not make a usable pair: {e}",
        cert.display()
    )
}

/// What was wrong with a certificate, in the words of the refusal view:
/// `no certificate`, `unknown CA`, `expired`, `not valid yet`, `revoked`,
/// `not valid for the address`, or rustls's own text.
pub fn certificate_refusal(e: &rustls::Error) -> String {
    match e {
        rustls::Error::NoCertificatesPresented => "no certificate".into(),
        rustls::Error::InvalidCertificate(c) => match c {
            // Authorities made before each had a name of its own share
            // one (`CN=availdb CA`): a certificate of another such CA finds
            // a trust anchor by name and fails its signature check. Both
            // mean "not our CA".
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                "unknown CA: not signed by a CA this node trusts (--partner-ca)".into()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "expired certificate: issue a new one with availdb cert issue".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate not valid yet: check the clocks of both nodes".into()
            }
            CertificateError::Revoked => {
                "revoked certificate: listed by --partner-crl (availdb cert revoke)".into()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "certificate not valid for the address connected to: issue it with --host \
                 for every address partners use"
                    .into()
            }
            other => format!("invalid certificate: {other:?}"),
        },
        rustls::Error::AlertReceived(alert) => {
            format!("the partner refused this node's certificate (TLS alert {alert:?})")
        }
        other => other.to_string(),
    }
}

/// The reason of a failed handshake (an I/O error that may carry a rustls
/// error).
pub fn handshake_refusal(e: &io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => certificate_refusal(tls),
        None => e.to_string(),
    }
}

/// Whether the first bytes of a connection are a TLS handshake record
/// (content type 22, version 3.x). No other partner protocol starts so:
/// the cluster and listener preambles start with `A`, and a replication
/// frame's third byte is 0 for any frame under 64 KiB (every first
/// message).
pub fn starts_tls(first: &[u8]) -> bool {
    matches!(first, [0x16, 0x03, 1..=4, ..])
}
