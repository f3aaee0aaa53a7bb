//! `availdb cert init | issue`: a certificate authority and the nodes'
//! TLS certificates (rcgen), for `--tls-cert`/`--tls-key` and clients'
//! `sslrootcert` (`sslmode=verify-full`).
//!
//! * `availdb cert init --dir DIR` makes `DIR/ca.pem` (the authority's
//!   certificate, which clients trust) and `DIR/ca.key` (its private key,
//!   mode 0600: keep it off the nodes). It refuses to replace an existing
//!   authority.
//! * `availdb cert issue --dir DIR --name NODE --host H [--host H2 …]`
//!   makes `DIR/NODE.pem` and `DIR/NODE.key` (0600), signed by the
//!   authority, valid for every host name or IP address given — the ones
//!   clients connect to, the node's listener addresses included.
//!
//! Keys are ECDSA P-256. Every authority availdb makes has the subject
//! `CN=availdb CA`; authorities are told apart by their keys, which is what
//! a client's signature check uses. Certificates are valid from now for
//! [`VALID_DAYS`] days; renew them by issuing again.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// How long an issued certificate (and the authority) is valid.
pub const VALID_DAYS: i64 = 825;
const CA_NAME: &str = "availdb CA";

/// `availdb cert` options.
#[derive(Debug, Args)]
pub struct CertArgs {
    /// What to make.
    #[command(subcommand)]
    pub command: CertCommand,
}

/// `availdb cert` subcommands.
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Make a certificate authority: DIR/ca.pem and DIR/ca.key.
    Init {
        /// Directory for the files (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Issue a node certificate signed by DIR's authority: OUT/NAME.pem
    /// and OUT/NAME.key.
    Issue {
        /// Directory holding ca.pem and ca.key.
        #[arg(long, visible_alias = "ca-dir", value_name = "DIR")]
        dir: PathBuf,
        /// The node's name (the files' names, and the certificate's CN).
        #[arg(long)]
        name: String,
        /// A host name or IP address clients or partners connect to
        /// (repeat for more).
        #[arg(long = "host", value_name = "HOST", required = true)]
        hosts: Vec<String>,
        /// Directory for the node's files (created if missing) [default:
        /// DIR].
        #[arg(long, value_name = "OUT")]
        out: Option<PathBuf>,
        /// Days the certificate is valid [default: 825].
        #[arg(long, value_name = "N", default_value_t = VALID_DAYS)]
        days: i64,
        /// Start the validity this many days before now [default: 0].
        #[arg(long, value_name = "N", default_value_t = 0)]
        backdate_days: i64,
    },
}

/// When a certificate is valid: from `backdate_days` before now, for
/// `days` days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Days from the start to the end.
    pub days: i64,
    /// Days before now the validity starts.
    pub backdate_days: i64,
}

impl Default for Validity {
    fn default() -> Validity {
        Validity {
            days: VALID_DAYS,
            backdate_days: 0,
        }
    }
}

/// Runs `availdb cert …`.
pub fn run(args: CertArgs) -> Result<(), String> {
    match args.command {
        CertCommand::Init { dir } => {
            let (cert, key) = init(&dir)?;
            println!(
                "certificate authority: {} (give it to clients as sslrootcert)\nits key: {} (keep it off the nodes)",
                cert.display(),
                key.display()
            );
        }
        CertCommand::Issue {
            dir,
            name,
            hosts,
            out,
            days,
            backdate_days,
        } => {
            let validity = Validity {
                days,
                backdate_days,
            };
            let out = out.as_deref().unwrap_or(&dir);
            let (cert, key) = issue_to(&dir, out, &name, &hosts, validity)?;
            let (cert, key, ca) = (
                cert.display(),
                key.display(),
                dir.join("ca.pem").display().to_string(),
            );
            println!(
                "node certificate: {cert} and key: {key}\n\
                 for clients: availdb server --tls-cert {cert} --tls-key {key}\n\
                 for partners: availdb server --partner-tls-cert {cert} --partner-tls-key {key} \
                 --partner-ca {ca}"
            );
        }
    }
    Ok(())
}

fn ca_params() -> Result<CertificateParams, String> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, Validity::default());
    Ok(params)
}

fn set_validity(params: &mut CertificateParams, validity: Validity) {
    let days = |n: i64| std::time::Duration::from_secs(n.unsigned_abs() * 86_400);
    let now = std::time::SystemTime::now();
    let start = if validity.backdate_days >= 0 {
        now - days(validity.backdate_days)
    } else {
        now + days(validity.backdate_days)
    };
    params.not_before = start.into();
    params.not_after = (start + days(validity.days)).into();
}

/// Makes the authority in `dir`; returns its certificate and key paths.
pub fn init(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    if cert_path.exists() || key_path.exists() {
        return Err(format!(
            "{} already holds a certificate authority: certificates it issued would stop \
             verifying if it were replaced; use another --dir",
            dir.display()
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = ca_params()?
        .self_signed(&key)
        .map_err(|e| format!("cannot sign the authority: {e}"))?;
    write_private(&key_path, &key.serialize_pem())?;
    write(&cert_path, &cert.pem())?;
    Ok((cert_path, key_path))
}

/// Issues `name`'s certificate for `hosts` from the authority in `dir`,
/// into `dir`, valid from now for [`VALID_DAYS`].
pub fn issue(dir: &Path, name: &str, hosts: &[String]) -> Result<(PathBuf, PathBuf), String> {
    issue_to(dir, dir, name, hosts, Validity::default())
}

/// Issues `name`'s certificate for `hosts` from the authority in `dir`,
/// into `out`; returns its certificate and key paths.
pub fn issue_to(
    dir: &Path,
    out: &Path,
    name: &str,
    hosts: &[String],
    validity: Validity,
) -> Result<(PathBuf, PathBuf), String> {
    if validity.days < 1 {
        return Err(format!(
            "--days {} is no validity: give at least 1",
            validity.days
        ));
    }
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "{name:?} is not a usable node name for file names: use letters, digits, '-', '_', '.'"
        ));
    }
    let ca_key_path = dir.join("ca.key");
    let ca_key_pem = std::fs::read_to_string(&ca_key_path).map_err(|e| {
        format!(
            "cannot read the authority's key {}: {e}; make one with availdb cert init --dir {}",
            ca_key_path.display(),
            dir.display()
        )
    })?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .map_err(|e| format!("{} is not a private key: {e}", ca_key_path.display()))?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let mut params = CertificateParams::new(hosts.to_vec())
        .map_err(|e| format!("a --host is not a host name or IP address: {e}"))?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    set_validity(&mut params, validity);
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| format!("cannot sign {name}'s certificate: {e}"))?;
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let (cert_path, key_path) = (
        out.join(format!("{name}.pem")),
        out.join(format!("{name}.key")),
    );
    write_private(&key_path, &key.serialize_pem())?;
    write(&cert_path, &cert.pem())?;
    Ok((cert_path, key_path))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_certificate_loads_as_the_nodes_tls_and_init_never_replaces_an_authority() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path()).unwrap();
        let err = init(dir.path()).unwrap_err();
        assert!(err.contains("already holds"), "{err}");
        let (cert, key) =
            issue(dir.path(), "r1", &["localhost".into(), "127.0.0.1".into()]).unwrap();
        assert!(crate::tls::acceptor(&cert, &key).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the key is the owner's only");
        }
        let err = issue(dir.path(), "../x", &["h".into()]).unwrap_err();
        assert!(err.contains("node name"), "{err}");
        let other = tempfile::tempdir().unwrap();
        let err = issue(other.path(), "r1", &["h".into()]).unwrap_err();
        assert!(err.contains("availdb cert init"), "{err}");
    }

    #[test]
    fn issue_writes_to_out_for_the_days_asked_and_refuses_no_validity() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path()).unwrap();
        let out = dir.path().join("nodes/r2");
        let validity = Validity {
            days: 2,
            backdate_days: 0,
        };
        let (cert, key) =
            issue_to(dir.path(), &out, "r2", &["127.0.0.1".into()], validity).unwrap();
        assert_eq!((cert.parent(), key.parent()), (Some(&*out), Some(&*out)));
        let files = crate::net::PartnerTlsFiles {
            cert,
            key,
            cas: vec![dir.path().join("ca.pem")],
        };
        assert!(crate::net::PartnerTls::load(&files).is_ok());
        let none = Validity {
            days: 0,
            backdate_days: 0,
        };
        let err = issue_to(dir.path(), &out, "r3", &["h".into()], none).unwrap_err();
        assert!(err.contains("--days"), "{err}");
    }

    #[test]
    fn a_corrupt_authority_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path()).unwrap();
        std::fs::write(dir.path().join("ca.key"), "not a key").unwrap();
        let err = issue(dir.path(), "r1", &["h".into()]).unwrap_err();
        assert!(
            err.contains("ca.key") && err.contains("not a private key"),
            "{err}"
        );
    }
}
