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
    /// Issue a node certificate signed by DIR's authority: DIR/NAME.pem
    /// and DIR/NAME.key.
    Issue {
        /// Directory holding ca.pem and ca.key.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The node's name (the files' names).
        #[arg(long)]
        name: String,
        /// A host name or IP address clients connect to (repeat for more).
        #[arg(long = "host", value_name = "HOST", required = true)]
        hosts: Vec<String>,
    },
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
        CertCommand::Issue { dir, name, hosts } => {
            let (cert, key) = issue(&dir, &name, &hosts)?;
            println!(
                "node certificate: {} and key: {} (availdb server --tls-cert {} --tls-key {})",
                cert.display(),
                key.display(),
                cert.display(),
                key.display()
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
    valid_from_now(&mut params);
    Ok(params)
}

fn valid_from_now(params: &mut CertificateParams) {
    let now = std::time::SystemTime::now();
    params.not_before = now.into();
    params.not_after = (now + std::time::Duration::from_secs(VALID_DAYS as u64 * 86_400)).into();
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

/// Issues `name`'s certificate for `hosts` from the authority in `dir`.
pub fn issue(dir: &Path, name: &str, hosts: &[String]) -> Result<(PathBuf, PathBuf), String> {
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
    valid_from_now(&mut params);
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| format!("cannot sign {name}'s certificate: {e}"))?;
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
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
}
